// SPDX-License-Identifier: Apache-2.0

package capwrite

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket/pcapgo"

	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

var twoIfaces = []Interface{{Name: "eth0", SnapLen: 128}, {Name: "eth1", SnapLen: 128}}

func packets(n int) []Packet {
	base := time.Date(2026, 11, 27, 1, 2, 3, 456789123, time.UTC)
	var out []Packet
	for i := range n {
		f := frames.Frame{}.ESP(0xdead0000+uint32(i), uint32(i), 100+i)
		out = append(out, Packet{
			Time: base.Add(time.Duration(i) * time.Millisecond), Iface: i % 2,
			Data: f[:min(len(f), 128)], Length: len(f),
			Comment: fmt.Sprintf("class=esp spi=0x%08x verdict=unknown action=pass kept=first-%d/5", 0xdead0000+i, i%5+1),
		})
	}
	return out
}

// readBack reads a pcapng file with gopacket's reader: interfaces and packets.
func readBack(t *testing.T, data []byte) ([]string, []Packet) {
	t.Helper()
	r, err := pcapgo.NewNgReader(bytes.NewReader(data), pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatalf("reading back: %v", err)
	}
	var pkts []Packet
	for {
		d, ci, err := r.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading packet %d back: %v", len(pkts), err)
		}
		pkts = append(pkts, Packet{Time: ci.Timestamp, Iface: ci.InterfaceIndex, Data: d, Length: ci.Length})
	}
	var names []string
	for i := range r.NInterfaces() {
		ifc, _ := r.Interface(i)
		names = append(names, ifc.Name)
	}
	return names, pkts
}

// writeAll writes ps to a new file on the two interfaces: its path and bytes.
func writeAll(t *testing.T, ps []Packet) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.pcapng")
	w, err := Create(path, nil, Options{Interfaces: twoIfaces})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if err := w.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, data
}

func TestWriteReadBack(t *testing.T) {
	want := packets(7)
	path, data := writeAll(t, want)
	names, got := readBack(t, data)
	if strings.Join(names, ",") != "eth0,eth1" {
		t.Errorf("interfaces %v, want eth0,eth1", names)
	}
	if len(got) != len(want) {
		t.Fatalf("%d packets read back, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if !g.Time.Equal(w.Time) || g.Iface != w.Iface || !bytes.Equal(g.Data, w.Data) || g.Length != w.Length {
			t.Errorf("packet %d: got %v if%d len %d/%d, want %v if%d len %d/%d", i, g.Time, g.Iface, len(g.Data), g.Length, w.Time, w.Iface, len(w.Data), w.Length)
		}
	}
	// The comments, as Wireshark's dissector reads them.
	tshark := testenv.RequireTool(t, "tshark", "tshark")
	out, err := exec.Command(tshark, "-r", path, "-T", "fields", "-e", "frame.comment", "-e", "esp.spi", "-e", "frame.interface_name").Output()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(want) {
		t.Fatalf("tshark shows %d packets, want %d:\n%s", len(lines), len(want), out)
	}
	for i, l := range lines {
		f := strings.Split(l, "\t")
		if len(f) != 3 || f[0] != want[i].Comment || f[1] != fmt.Sprintf("0x%08x", 0xdead0000+i) || f[2] != twoIfaces[i%2].Name {
			t.Errorf("tshark packet %d: %q, want comment %q, SPI 0x%08x, interface %s", i, l, want[i].Comment, 0xdead0000+i, twoIfaces[i%2].Name)
		}
	}
}

func TestStream(t *testing.T) {
	var buf bytes.Buffer
	w, err := Create("-", &buf, Options{Interfaces: twoIfaces[:1]})
	if err != nil {
		t.Fatal(err)
	}
	p := packets(1)[0]
	if err := w.Write(p); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, got := readBack(t, buf.Bytes()); len(got) != 1 || !bytes.Equal(got[0].Data, p.Data) {
		t.Fatalf("stream holds %d packets, want the one written", len(got))
	}
	if _, err := Create("-", &buf, Options{Interfaces: twoIfaces, RotateBytes: 1000, Keep: 2}); err == nil {
		t.Error("rotating stdout accepted")
	}
}

func TestRotate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.pcapng")
	w, err := Create(path, nil, Options{Interfaces: twoIfaces, RotateBytes: 2000, Keep: 3})
	if err != nil {
		t.Fatal(err)
	}
	want := packets(60) // about 300 bytes each: 7 per file, 9 files started
	for _, p := range want {
		if err := w.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "c.pcapng c.pcapng.1 c.pcapng.2" {
		t.Fatalf("files %v, want c.pcapng c.pcapng.1 c.pcapng.2", names)
	}
	// Oldest to newest, the kept files hold the last packets in order, each file
	// complete with both interfaces.
	var got []Packet
	for _, n := range []string{"c.pcapng.2", "c.pcapng.1", "c.pcapng"} {
		data, _ := os.ReadFile(filepath.Join(dir, n))
		ifs, p := readBack(t, data)
		if len(ifs) != 2 || len(p) == 0 {
			t.Fatalf("%s: %d interfaces, %d packets", n, len(ifs), len(p))
		}
		if st, _ := os.Stat(filepath.Join(dir, n)); n != "c.pcapng" && st.Size() < 2000 {
			t.Errorf("%s rotated at %d bytes, before 2000", n, st.Size())
		}
		got = append(got, p...)
	}
	tail := want[len(want)-len(got):]
	for i := range got {
		if !bytes.Equal(got[i].Data, tail[i].Data) {
			t.Fatalf("kept packet %d is not packet %d written", i, len(want)-len(got)+i)
		}
	}
	if w.Files() < 4 {
		t.Errorf("%d files started, want rotation past the 3 kept", w.Files())
	}
}

// TestDiskFull writes into a 64 KiB tmpfs until it is full: the error says so
// (ENOSPC), the file left behind is valid, holding whole packets only, and
// Packets counts those.
func TestDiskFull(t *testing.T) {
	dir := testenv.SmallTmpfs(t, 64<<10)
	path := filepath.Join(dir, "c.pcapng")
	w, err := Create(path, nil, Options{Interfaces: twoIfaces})
	if err != nil {
		t.Fatal(err)
	}
	var werr error
	n := 0
	for _, p := range packets(2000) {
		if werr = w.Write(p); werr != nil {
			break
		}
		n++
	}
	if werr == nil {
		werr = w.Flush()
	}
	if !errors.Is(werr, syscall.ENOSPC) || !strings.Contains(werr.Error(), path) {
		t.Fatalf("error %v, want ENOSPC naming %s", werr, path)
	}
	w.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, got := readBack(t, data)
	if len(got) == 0 || len(got) > n {
		t.Fatalf("full disk: %d packets readable, %d written before the error", len(got), n)
	}
	// what it says it wrote is what the file holds, not what it had buffered
	if w.Packets() != uint64(len(got)) {
		t.Errorf("Packets() = %d, the file holds %d", w.Packets(), len(got))
	}
	t.Logf("disk full after %d packets accepted, %d in the file (%d bytes)", n, len(got), len(data))
}
