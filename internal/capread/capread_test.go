// SPDX-License-Identifier: Apache-2.0

package capread

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/spiwatch/spiwatch/internal/testenv"
)

// t0 is the timestamp of the first packet the helpers write.
var t0 = time.Date(2026, 5, 4, 3, 2, 1, 123456789, time.UTC)

// pcapFile returns a pcap of frames with link type lt (patched in, as
// pcapgo can only write 8-bit link types). Packet i is sent at t0 + i ms
// and was 10 bytes longer on the wire than captured.
func pcapFile(t testing.TB, lt LinkType, snaplen uint32, nanos bool, frames ...[]byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w := pcapgo.NewWriter(&b)
	if nanos {
		w = pcapgo.NewWriterNanos(&b)
	}
	if err := w.WriteFileHeader(snaplen, layers.LinkType(lt)); err != nil {
		t.Fatalf("writing pcap header: %v", err)
	}
	for i, f := range frames {
		ci := gopacket.CaptureInfo{Timestamp: t0.Add(time.Duration(i) * time.Millisecond), CaptureLength: len(f), Length: len(f) + 10}
		if err := w.WritePacket(ci, f); err != nil {
			t.Fatalf("writing packet: %v", err)
		}
	}
	out := b.Bytes()
	binary.LittleEndian.PutUint32(out[20:24], uint32(lt))
	return out
}

// ngPacket is a packet for ngFile: its interface and frame.
type ngPacket struct {
	iface int
	data  []byte
}

// ngFile returns a pcapng file with one interface per link type and the
// packets, followed by an interface statistics block if stats is set.
// Link types are patched in after writing; patch, if set, may change
// each interface description block further.
func ngFile(t testing.TB, lts []LinkType, stats bool, patch func(idb []byte), pkts ...ngPacket) []byte {
	t.Helper()
	var b bytes.Buffer
	intf := pcapgo.DefaultNgInterface
	intf.LinkType = layers.LinkType(lts[0])
	w, err := pcapgo.NewNgWriterInterface(&b, intf, pcapgo.DefaultNgWriterOptions)
	if err != nil {
		t.Fatalf("writing pcapng header: %v", err)
	}
	for _, lt := range lts[1:] {
		intf.LinkType = layers.LinkType(lt)
		if _, err := w.AddInterface(intf); err != nil {
			t.Fatalf("adding interface: %v", err)
		}
	}
	for i, p := range pkts {
		ci := gopacket.CaptureInfo{Timestamp: t0.Add(time.Duration(i) * time.Millisecond), CaptureLength: len(p.data), Length: len(p.data) + 10, InterfaceIndex: p.iface}
		if err := w.WritePacket(ci, p.data); err != nil {
			t.Fatalf("writing packet: %v", err)
		}
	}
	if stats {
		if err := w.WriteInterfaceStats(0, pcapgo.NgInterfaceStatistics{LastUpdate: t0, PacketsReceived: uint64(len(pkts))}); err != nil {
			t.Fatalf("writing statistics: %v", err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatalf("flushing pcapng: %v", err)
	}
	out := b.Bytes()
	iface := 0
	for off := 0; off+8 <= len(out); off += int(binary.LittleEndian.Uint32(out[off+4:])) {
		if binary.LittleEndian.Uint32(out[off:]) != ngInterface {
			continue
		}
		idb := out[off : off+int(binary.LittleEndian.Uint32(out[off+4:]))]
		binary.LittleEndian.PutUint16(idb[8:], uint16(lts[iface]))
		if patch != nil {
			patch(idb)
		}
		iface++
	}
	return out
}

// blockOffsets returns where each block of a little-endian pcapng file
// starts.
func blockOffsets(ng []byte) []int {
	var offs []int
	for off := 0; off+8 <= len(ng); off += int(binary.LittleEndian.Uint32(ng[off+4:])) {
		offs = append(offs, off)
	}
	return offs
}

// write stores data in a file of the test's temporary directory.
func write(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// readAll opens path and returns every converted packet (with cloned
// data) and the error that ended reading (nil for io.EOF).
func readAll(t *testing.T, path string) ([]Packet, error) {
	t.Helper()
	r, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var pkts []Packet
	for {
		p, err := r.Next()
		if err == io.EOF {
			return pkts, nil
		}
		if err != nil {
			return pkts, err
		}
		p.Data = slices.Clone(p.Data)
		pkts = append(pkts, p)
	}
}

// eth returns a 14-byte Ethernet header with zero MACs and EtherType et,
// followed by payload.
func eth(et uint16, payload ...byte) []byte {
	return append([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(et >> 8), byte(et)}, payload...)
}

// Payloads: the first bytes of an IPv4 and an IPv6 header (not complete:
// capread does not parse beyond the version nibble).
var (
	ipv4 = []byte{0x45, 0x00, 0x00, 0x54, 0xde, 0xad}
	ipv6 = []byte{0x60, 0x0a, 0xbc, 0xde, 0x00, 0x08}
)

func cat(parts ...[]byte) []byte { return slices.Concat(parts...) }

// sll returns a Linux cooked v1 header with protocol proto.
func sll(proto uint16) []byte {
	h := []byte{0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(h[14:], proto)
	return h
}

// sll2 returns a Linux cooked v2 header with protocol proto.
func sll2(proto uint16) []byte {
	h := []byte{0, 0, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0}
	binary.BigEndian.PutUint16(h[0:], proto)
	return h
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

var vlan = []byte{0x00, 0x64, 0x08, 0x00} // VID 100, then IPv4

func TestConvert(t *testing.T) {
	ethFrame := cat([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x08, 0x00}, ipv4)
	tests := []struct {
		name string
		lt   LinkType
		in   []byte
		want []byte
	}{
		{"ethernet", LinkTypeEthernet, ethFrame, ethFrame},
		{"ethernet short", LinkTypeEthernet, []byte{1, 2, 3}, []byte{1, 2, 3}},
		{"raw ipv4", LinkTypeRaw, ipv4, eth(0x0800, ipv4...)},
		{"raw ipv6", LinkTypeRaw, ipv6, eth(0x86dd, ipv6...)},
		{"raw version 5", LinkTypeRaw, []byte{0x50, 1, 2}, eth(0, 0x50, 1, 2)},
		{"raw empty", LinkTypeRaw, nil, eth(0)},
		{"dlt raw 12", LinkTypeRawDLT12, ipv4, eth(0x0800, ipv4...)},
		{"dlt raw 14", LinkTypeRawDLT14, ipv6, eth(0x86dd, ipv6...)},
		{"ipv4", LinkTypeIPv4, ipv4, eth(0x0800, ipv4...)},
		{"ipv6", LinkTypeIPv6, ipv6, eth(0x86dd, ipv6...)},
		{"sll ipv4", LinkTypeLinuxSLL, cat(sll(0x0800), ipv4), eth(0x0800, ipv4...)},
		{"sll ipv6", LinkTypeLinuxSLL, cat(sll(0x86dd), ipv6), eth(0x86dd, ipv6...)},
		{"sll vlan", LinkTypeLinuxSLL, cat(sll(0x8100), vlan, ipv4), eth(0x8100, cat(vlan, ipv4)...)},
		{"sll arp", LinkTypeLinuxSLL, cat(sll(0x0806), []byte{0, 1}), eth(0x0806, 0, 1)},
		{"sll 802.2", LinkTypeLinuxSLL, cat(sll(0x0004), []byte{0xaa, 0xaa}), eth(0, 0xaa, 0xaa)},
		{"sll short", LinkTypeLinuxSLL, sll(0x0800)[:15], eth(0)},
		{"sll header only", LinkTypeLinuxSLL, sll(0x0800), eth(0x0800)},
		{"sll2 ipv6", LinkTypeSLL2, cat(sll2(0x86dd), ipv6), eth(0x86dd, ipv6...)},
		{"sll2 vlan", LinkTypeSLL2, cat(sll2(0x8100), vlan, ipv4), eth(0x8100, cat(vlan, ipv4)...)},
		{"sll2 can", LinkTypeSLL2, cat(sll2(0x000c), []byte{1}), eth(0, 1)},
		{"sll2 short", LinkTypeSLL2, sll2(0x0800)[:19], eth(0)},
		{"null inet le", LinkTypeNull, cat(le32(2), ipv4), eth(0x0800, ipv4...)},
		{"null inet be", LinkTypeNull, cat(be32(2), ipv4), eth(0x0800, ipv4...)},
		{"null inet6 linux", LinkTypeNull, cat(le32(10), ipv6), eth(0x86dd, ipv6...)},
		{"null inet6 bsd", LinkTypeNull, cat(le32(24), ipv6), eth(0x86dd, ipv6...)},
		{"null inet6 freebsd be", LinkTypeNull, cat(be32(28), ipv6), eth(0x86dd, ipv6...)},
		{"null inet6 darwin", LinkTypeNull, cat(le32(30), ipv6), eth(0x86dd, ipv6...)},
		{"null unknown family", LinkTypeNull, cat(le32(7), ipv4), eth(0, ipv4...)},
		{"null short", LinkTypeNull, []byte{2, 0, 0}, eth(0)},
		{"loop inet", LinkTypeLoop, cat(be32(2), ipv4), eth(0x0800, ipv4...)},
		{"loop inet6", LinkTypeLoop, cat(be32(24), ipv6), eth(0x86dd, ipv6...)},
		{"loop host order", LinkTypeLoop, cat(le32(2), ipv4), eth(0, ipv4...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Twice, so that the second frame reuses the conversion buffer.
			pkts, err := readAll(t, write(t, "c.pcap", pcapFile(t, tt.lt, 65535, false, tt.in, tt.in)))
			if err != nil {
				t.Fatalf("reading: %v", err)
			}
			if len(pkts) != 2 {
				t.Fatalf("got %d packets, want 2", len(pkts))
			}
			for i, p := range pkts {
				if !bytes.Equal(p.Data, tt.want) {
					t.Errorf("packet %d: data\n got % x\nwant % x", i+1, p.Data, tt.want)
				}
				if p.Index != i+1 || p.CapLen != len(tt.in) || p.OrigLen != len(tt.in)+10 || p.LinkType != tt.lt || p.Interface != 0 {
					t.Errorf("packet %d: index %d caplen %d origlen %d link type %v interface %d", i+1, p.Index, p.CapLen, p.OrigLen, p.LinkType, p.Interface)
				}
				// The frames were 10 bytes longer on the wire: so is the converted one.
				if p.WireLen != len(tt.want)+10 {
					t.Errorf("packet %d: wire length %d, want %d", i+1, p.WireLen, len(tt.want)+10)
				}
				if want := t0.Add(time.Duration(i) * time.Millisecond).Truncate(time.Microsecond); !p.Time.Equal(want) {
					t.Errorf("packet %d: time %v, want %v", i+1, p.Time, want)
				}
			}
		})
	}
}

func TestToEthernetKnown(t *testing.T) {
	for _, tt := range []struct {
		lt    LinkType
		frame []byte
		known bool
	}{
		{LinkTypeEthernet, nil, true},
		{LinkTypeNull, cat(le32(2), ipv4), true},
		{LinkTypeNull, cat(le32(99), ipv4), false},
		{LinkTypeNull, []byte{2}, false},
		{LinkTypeLinuxSLL, sll(0x0001), false},
		{LinkTypeRaw, nil, false},
	} {
		if _, known, err := ToEthernet(nil, tt.lt, tt.frame); err != nil || known != tt.known {
			t.Errorf("ToEthernet(%v, % x): known %v, err %v; want known %v", tt.lt, tt.frame, known, err, tt.known)
		}
	}
	if _, _, err := ToEthernet(nil, 105, []byte{1}); !errors.Is(err, ErrUnsupportedLinkType) {
		t.Errorf("ToEthernet(802.11): err %v, want ErrUnsupportedLinkType", err)
	}
}

func TestBigEndianPcap(t *testing.T) {
	frame := cat(sll(0x0800), ipv4)
	var b []byte
	b = binary.BigEndian.AppendUint32(b, 0xa1b2c3d4)
	b = binary.BigEndian.AppendUint16(b, 2)
	b = binary.BigEndian.AppendUint16(b, 4)
	b = append(b, make([]byte, 8)...)
	b = binary.BigEndian.AppendUint32(b, 0) // snap length 0
	b = binary.BigEndian.AppendUint32(b, uint32(LinkTypeLinuxSLL))
	b = binary.BigEndian.AppendUint32(b, 1700000000)
	b = binary.BigEndian.AppendUint32(b, 250000) // µs
	b = binary.BigEndian.AppendUint32(b, uint32(len(frame)))
	b = binary.BigEndian.AppendUint32(b, uint32(len(frame)))
	b = append(b, frame...)
	r, err := NewReader(bytes.NewReader(b), "be.pcap")
	if err != nil {
		t.Fatal(err)
	}
	if lts := r.LinkTypes(); !slices.Equal(lts, []LinkType{LinkTypeLinuxSLL}) {
		t.Errorf("link types %v", lts)
	}
	p, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	if want := eth(0x0800, ipv4...); !bytes.Equal(p.Data, want) {
		t.Errorf("data % x, want % x", p.Data, want)
	}
	if want := time.Unix(1700000000, 250000000); !p.Time.Equal(want) {
		t.Errorf("time %v, want %v", p.Time, want)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("after the last packet: %v, want io.EOF", err)
	}
}

func TestNanosecondTimestamps(t *testing.T) {
	pkts, err := readAll(t, write(t, "ns.pcap", pcapFile(t, LinkTypeRaw, 65535, true, ipv4, ipv6)))
	if err != nil || len(pkts) != 2 {
		t.Fatalf("read %d packets: %v", len(pkts), err)
	}
	for i, p := range pkts {
		if want := t0.Add(time.Duration(i) * time.Millisecond); !p.Time.Equal(want) {
			t.Errorf("packet %d: time %v, want %v", i+1, p.Time, want)
		}
	}
}

func TestSnaplenZero(t *testing.T) {
	big := cat(ipv4, make([]byte, 9000))
	pkts, err := readAll(t, write(t, "s0.pcap", pcapFile(t, LinkTypeRaw, 0, false, ipv4, big)))
	if err != nil || len(pkts) != 2 || len(pkts[1].Data) != len(big)+14 {
		t.Fatalf("read %d packets: %v", len(pkts), err)
	}
}

func TestGzip(t *testing.T) {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(pcapFile(t, LinkTypeRaw, 65535, false, ipv4, ipv6))
	zw.Close()
	pkts, err := readAll(t, write(t, "c.pcap.gz", b.Bytes()))
	if err != nil || len(pkts) != 2 || !bytes.Equal(pkts[1].Data, eth(0x86dd, ipv6...)) {
		t.Fatalf("read %d packets: %v", len(pkts), err)
	}
	// Cut inside the compressed data.
	_, err = readAll(t, write(t, "cut.pcap.gz", b.Bytes()[:b.Len()-12]))
	if !errors.Is(err, ErrTruncated) {
		t.Errorf("cut gzip: %v, want ErrTruncated", err)
	}
}

func TestPcapngInterfaces(t *testing.T) {
	ef := cat([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x86, 0xdd}, ipv6)
	path := write(t, "two.pcapng", ngFile(t, []LinkType{LinkTypeEthernet, LinkTypeRaw, LinkTypeSLL2}, true, nil,
		ngPacket{0, ef}, ngPacket{1, ipv4}, ngPacket{1, ipv6}, ngPacket{2, cat(sll2(0x0800), ipv4)}, ngPacket{0, ef}))
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if lts, want := r.LinkTypes(), []LinkType{LinkTypeEthernet, LinkTypeRaw, LinkTypeSLL2}; !slices.Equal(lts, want) {
		t.Errorf("link types %v, want %v", lts, want)
	}
	want := []struct {
		iface int
		lt    LinkType
		data  []byte
	}{
		{0, LinkTypeEthernet, ef},
		{1, LinkTypeRaw, eth(0x0800, ipv4...)},
		{1, LinkTypeRaw, eth(0x86dd, ipv6...)},
		{2, LinkTypeSLL2, eth(0x0800, ipv4...)},
		{0, LinkTypeEthernet, ef},
	}
	for i, w := range want {
		p, err := r.Next()
		if err != nil {
			t.Fatalf("packet %d: %v", i+1, err)
		}
		if p.Index != i+1 || p.Interface != w.iface || p.LinkType != w.lt || !bytes.Equal(p.Data, w.data) || p.WireLen != len(w.data)+10 {
			t.Errorf("packet %d: index %d interface %d link type %v data % x wire length %d; want interface %d link type %v data % x, 10 bytes more on the wire",
				i+1, p.Index, p.Interface, p.LinkType, p.Data, p.WireLen, w.iface, w.lt, w.data)
		}
		if want := t0.Add(time.Duration(i) * time.Millisecond); !p.Time.Equal(want) {
			t.Errorf("packet %d: time %v, want %v", i+1, p.Time, want)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("after the last packet (and a statistics block): %v, want io.EOF", err)
	}
}

// TestPcapgoSuite reads the pcapng test suite that comes with pcapgo
// (both byte orders, several sections, odd blocks and options) and checks
// that capread returns the packets pcapgo does, with their link types.
func TestPcapgoSuite(t *testing.T) {
	dir := pcapgoDir(t)
	files, _ := filepath.Glob(filepath.Join(dir, "tests", "*", "*.pcapng"))
	if len(files) == 0 {
		testenv.Unavailable(t, "no pcapgo test files in %s/tests", dir)
	}
	total := 0
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var want []gopacket.CaptureInfo
		var wantErr error
		ng, err := pcapgo.NewNgReader(bytes.NewReader(data), pcapgo.NgReaderOptions{WantMixedLinkType: true})
		if err == nil {
			for {
				_, ci, err := ng.ReadPacketData()
				if err != nil {
					wantErr = err
					break
				}
				want = append(want, ci)
			}
		}
		r, err := NewReader(bytes.NewReader(data), path)
		if err != nil {
			t.Errorf("%v (pcapgo: %v)", err, wantErr)
			continue
		}
		var n int
		for {
			p, err := r.NextRaw()
			if err == io.EOF {
				if wantErr != io.EOF {
					t.Errorf("%s: clean end after %d packets; pcapgo: %v", path, n, wantErr)
				}
				break
			}
			if err != nil {
				if wantErr == io.EOF {
					t.Errorf("%v (pcapgo read %d packets)", err, len(want))
				}
				break
			}
			if n >= len(want) {
				t.Errorf("%s: more packets than pcapgo's %d", path, len(want))
				break
			}
			w := want[n]
			if p.Index != n+1 || !p.Time.Equal(w.Timestamp) || p.CapLen != w.CaptureLength || p.Interface != w.InterfaceIndex || layers.LinkType(p.LinkType) != w.AncillaryData[0] {
				t.Errorf("%s: packet %d: %+v, pcapgo %+v", path, n+1, p, w)
			}
			n++
		}
		if n != len(want) {
			t.Errorf("%s: %d packets, pcapgo %d", path, n, len(want))
		}
		total += n
	}
	t.Logf("%d files, %d packets", len(files), total)
	if total == 0 {
		t.Error("no packets read")
	}
}

// pcapgoDir returns the directory of the pcapgo sources: gopacket's module, at
// the version go.mod names, as the go command finds it (module cache or vendor).
func pcapgoDir(t *testing.T) string {
	t.Helper()
	goCmd := testenv.RequireTool(t, "go", "golang-go")
	out, err := exec.Command(goCmd, "list", "-m", "-f", "{{.Dir}}", "github.com/google/gopacket").Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		testenv.Unavailable(t, "locating the gopacket module (go list -m): %v (go mod download fetches it)", err)
	}
	dir = filepath.Join(dir, "pcapgo")
	if _, err := os.Stat(dir); err != nil {
		testenv.Unavailable(t, "pcapgo sources not found: %v", err)
	}
	return dir
}

func TestTruncated(t *testing.T) {
	frame := cat([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x08, 0x00}, ipv4, make([]byte, 78)) // 98 bytes
	full := pcapFile(t, LinkTypeEthernet, 65535, false, frame, frame, frame)
	rec3 := pcapHeaderLen + 2*(pcapRecordLen+len(frame))
	ng := ngFile(t, []LinkType{LinkTypeEthernet}, true, nil, ngPacket{0, frame}, ngPacket{0, frame}, ngPacket{0, frame})
	blocks := blockOffsets(ng)
	ngRec3, ngStats := blocks[len(blocks)-2], blocks[len(blocks)-1]
	if binary.LittleEndian.Uint32(ng[ngStats:]) != 5 || ngStats-ngRec3 != 132 {
		t.Fatalf("blocks at %v: want a 132-byte packet block, then statistics", blocks)
	}
	statsLen := len(ng) - ngStats
	tests := []struct {
		name string
		data []byte
		n    int // packets read before the error
		msg  string
	}{
		{"pcap mid data", full[:rec3+pcapRecordLen+12], 2, "packet 3: truncated record (12 of 98 bytes)"},
		{"pcap no data", full[:rec3+pcapRecordLen], 2, "packet 3: truncated record (0 of 98 bytes)"},
		{"pcap mid record header", full[:rec3+5], 2, "packet 3: truncated record header (5 of 16 bytes)"},
		{"pcap file header", full[:10], 0, "truncated pcap file header (10 of 24 bytes)"},
		{"pcapng mid packet", ng[:ngRec3+40], 2, "packet 3: truncated record (40 of 132 bytes)"},
		{"pcapng mid block header", ng[:ngRec3+6], 2, "packet 3: truncated block header (6 of 12 bytes)"},
		{"pcapng mid statistics", ng[:ngStats+20], 3, fmt.Sprintf("after packet 3: truncated interface statistics block (20 of %d bytes)", statsLen)},
		{"pcapng mid section header", ng[:20], 0, "truncated section header block (20 of "},
		{"pcapng magic only", ng[:4], 0, "truncated pcapng section header (4 bytes)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := write(t, "cut.cap", tt.data)
			pkts, err := readAll(t, path)
			if len(pkts) != tt.n {
				t.Errorf("read %d packets before the error, want %d", len(pkts), tt.n)
			}
			if !errors.Is(err, ErrTruncated) || !strings.HasPrefix(err.Error(), path+": "+tt.msg) {
				t.Fatalf("error %v, want ErrTruncated %q", err, tt.msg)
			}
		})
	}
	// The error stays.
	r, err := NewReader(bytes.NewReader(full[:rec3+1]), "cut.pcap")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		r.Next()
	}
	_, err1 := r.Next()
	_, err2 := r.Next()
	if err1 == nil || err1 != err2 {
		t.Errorf("errors %v then %v, want the same error", err1, err2)
	}
	// A whole statistics block at the end is a clean end.
	if pkts, err := readAll(t, write(t, "ok.pcapng", ng)); err != nil || len(pkts) != 3 {
		t.Errorf("whole pcapng: %d packets, %v", len(pkts), err)
	}
}

func TestNotCapture(t *testing.T) {
	for _, tt := range []struct {
		name, data, msg string
	}{
		{"html", "<html><body>", "not a pcap or pcapng file (magic 0x3c68746d)"},
		{"empty", "", "empty file, not a pcap or pcapng capture"},
		{"short", "\xd4\xc3", "file too short (2 bytes) to be a pcap or pcapng capture"},
		{"kuznetsov", "\x34\xcd\xb2\xa1" + strings.Repeat("\x00", 20), "modified (Kuznetsov) pcap format (magic 0x34cdb2a1) is not supported"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := write(t, "x.pcap", []byte(tt.data))
			_, err := Open(path)
			if !errors.Is(err, ErrNotCapture) || !strings.HasPrefix(err.Error(), path+": "+tt.msg) {
				t.Errorf("error %v, want ErrNotCapture %q", err, tt.msg)
			}
		})
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing.pcap")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestCorrupt(t *testing.T) {
	frame := cat(le32(2), ipv4)
	p := pcapFile(t, LinkTypeNull, 65535, false, frame, frame)
	rec2 := pcapHeaderLen + pcapRecordLen + len(frame)
	binary.LittleEndian.PutUint32(p[rec2+12:], 1) // wire length below the captured length
	huge := slices.Clone(p)
	binary.LittleEndian.PutUint32(huge[rec2+8:], 1<<30)
	binary.LittleEndian.PutUint32(huge[rec2+12:], 1<<30)

	ng := ngFile(t, []LinkType{LinkTypeRaw}, false, nil, ngPacket{0, ipv4}, ngPacket{0, ipv4})
	pkt2 := blockOffsets(ng)[3] // section, interface, packet, packet
	shortBlock := slices.Clone(ng)
	binary.LittleEndian.PutUint32(shortBlock[pkt2+4:], 4) // block length 4
	hugeCap := slices.Clone(ng)
	binary.LittleEndian.PutUint32(hugeCap[pkt2+20:], 0xffffff00) // captured length
	noBOM := slices.Clone(ng)
	noBOM[8] = 0
	badIface := slices.Clone(ng)
	binary.LittleEndian.PutUint32(badIface[pkt2+8:], 3) // interface 3
	// A timestamp resolution of 2^-64 makes pcapgo divide by zero.
	badRes := ngFile(t, []LinkType{LinkTypeRaw}, false, func(idb []byte) {
		for o := 16; o+4 <= len(idb)-4; {
			code, n := binary.LittleEndian.Uint16(idb[o:]), int(binary.LittleEndian.Uint16(idb[o+2:]))
			if code == 9 {
				idb[o+4] = 0x80 | 64
			}
			o += 4 + (n+3)&^3
		}
	}, ngPacket{0, ipv4})

	for _, tt := range []struct {
		name string
		data []byte
		n    int
		msg  string
	}{
		{"pcap caplen over wire length", p, 1, "packet 2: corrupt record header: captured length 10 is over the length on the wire 1"},
		{"pcap huge caplen", huge, 1, "packet 2: corrupt record header: captured length 1073741824 is over the maximum of 262144"},
		{"pcapng block length 4", shortBlock, 1, "packet 2: corrupt pcapng: block at offset"},
		{"pcapng huge caplen", hugeCap, 1, fmt.Sprintf("packet 2: corrupt pcapng: packet block at offset %d has 4294967040 captured bytes, more than its length of 40 allows", pkt2)},
		{"pcapng no byte-order magic", noBOM, 0, "corrupt pcapng: section header block at offset 0 has no byte-order magic"},
		{"pcapng unknown interface", badIface, 1, "packet 2: corrupt pcapng block: Interface id 3 not present"},
		{"pcapng timestamp resolution", badRes, 0, "packet 1: corrupt capture (runtime error: integer divide by zero)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := write(t, "bad.cap", tt.data)
			pkts, err := readAll(t, path)
			if len(pkts) != tt.n {
				t.Errorf("read %d packets before the error, want %d", len(pkts), tt.n)
			}
			if !errors.Is(err, ErrCorrupt) || !strings.HasPrefix(err.Error(), path+": "+tt.msg) {
				t.Errorf("error %v, want ErrCorrupt %q", err, tt.msg)
			}
		})
	}
}

const wantUnsupported = "link type 105 (IEEE 802.11) is not supported: spiwatch reads Ethernet, raw IP, Linux cooked (SLL, SLL2) and BSD loopback captures"

func TestUnsupportedLinkType(t *testing.T) {
	path := write(t, "capture.pcap", pcapFile(t, 105, 65535, false, []byte{8, 0, 1, 2}))
	_, err := readAll(t, path)
	if !errors.Is(err, ErrUnsupportedLinkType) || err.Error() != path+": "+wantUnsupported {
		t.Errorf("error %q, want ErrUnsupportedLinkType %q", err, path+": "+wantUnsupported)
	}
	// Even without packets.
	_, err = readAll(t, write(t, "empty.pcap", pcapFile(t, 105, 65535, false)))
	if !errors.Is(err, ErrUnsupportedLinkType) {
		t.Errorf("empty 802.11 capture: %v, want ErrUnsupportedLinkType", err)
	}
	// NextRaw reads any link type.
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if p, err := r.NextRaw(); err != nil || p.LinkType != 105 || !bytes.Equal(p.Data, []byte{8, 0, 1, 2}) {
		t.Errorf("NextRaw: %+v, %v", p, err)
	}
	// In pcapng, the packets of supported interfaces before it are read.
	path = write(t, "mixed.pcapng", ngFile(t, []LinkType{LinkTypeRaw, 105}, false, nil, ngPacket{0, ipv4}, ngPacket{1, []byte{8, 0}}))
	pkts, err := readAll(t, path)
	if len(pkts) != 1 || !errors.Is(err, ErrUnsupportedLinkType) || err.Error() != path+": packet 2 (interface 1): "+wantUnsupported {
		t.Errorf("mixed pcapng: %d packets, error %v", len(pkts), err)
	}
}

func TestClose(t *testing.T) {
	r, err := Open(write(t, "c.pcap", pcapFile(t, LinkTypeRaw, 65535, false, ipv4)))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Next(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Next after Close: %v, want os.ErrClosed", err)
	}
}

func TestLinkTypeString(t *testing.T) {
	for lt, want := range map[LinkType]string{105: "IEEE 802.11", LinkTypeSLL2: "Linux cooked v2 (SLL2)", 4711: "4711"} {
		if got := lt.String(); got != want {
			t.Errorf("%d: %q, want %q", uint32(lt), got, want)
		}
	}
}

// FuzzReader checks that no input makes the reader panic or loop, and
// that packets are numbered in order.
func FuzzReader(f *testing.F) {
	f.Add(pcapFile(f, LinkTypeLinuxSLL, 0, false, cat(sll(0x0800), ipv4), []byte{1}))
	f.Add(pcapFile(f, LinkTypeNull, 65535, true, cat(le32(2), ipv4)))
	f.Add(ngFile(f, []LinkType{LinkTypeEthernet, LinkTypeRaw}, true, nil, ngPacket{0, make([]byte, 20)}, ngPacket{1, ipv6}))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewReader(bytes.NewReader(data), "fuzz")
		if err != nil {
			return
		}
		for i := 1; ; i++ {
			p, err := r.Next()
			if err != nil {
				return
			}
			if p.Index != i {
				t.Fatalf("packet %d has index %d", i, p.Index)
			}
			if i > len(data) {
				t.Fatalf("%d packets from %d bytes", i, len(data))
			}
		}
	})
}
