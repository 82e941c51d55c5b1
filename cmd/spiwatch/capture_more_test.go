// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testcaps"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

// genRun is a generator sending in the background (spiwatch-gen --duration).
type genRun struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
}

// startGen sends streams from iface for d, count= being frames per second.
func startGen(t *testing.T, bin, ns, iface string, d time.Duration, streams ...string) *genRun {
	t.Helper()
	args := []string{"-i", iface, "--duration", d.String()}
	for _, s := range streams {
		args = append(args, "--send", s)
	}
	g := &genRun{cmd: netlab.Command(ns, bin, args...), done: make(chan error, 1)}
	g.cmd.Stdout, g.cmd.Stderr = &g.out, &g.out
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { g.done <- g.cmd.Wait() }()
	t.Cleanup(func() { g.stop() })
	return g
}

// running says whether the generator still sends.
func (g *genRun) running() bool {
	select {
	case err := <-g.done:
		g.done <- err
		return false
	default:
		return true
	}
}

// stop interrupts the generator (ip netns exec execs it: the signal reaches it)
// and waits for it.
func (g *genRun) stop() {
	if g.running() {
		g.cmd.Process.Signal(syscall.SIGINT)
	}
	select {
	case err := <-g.done:
		g.done <- err
	case <-time.After(10 * time.Second):
		g.cmd.Process.Kill()
	}
}

// TestCaptureLossUnderLoad: the ring buffer fills while the capture process is
// stopped, and the generator goes on sending after it resumes. The loss is
// reported while the samples still stream in (reads never time out then), not
// only once traffic pauses.
func TestCaptureLossUnderLoad(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcapl")
	file := filepath.Join(t.TempDir(), "load.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", file, "--class", "esp", "--snaplen", "0", "--rate", "10000000")
	c.waitFor(t, "to "+file)
	if err := c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// 20,000 frames of 1 KB a second, paced every 5 ms: the 4 MiB ring is full
	// within a quarter of a second, and no read waits 200 ms for a sample.
	g := startGen(t, gen, lab.NSA, lab.Sender, 30*time.Second, "esp spi=0x1234 len=1000 count=20000")
	time.Sleep(time.Second)
	if err := c.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	for !strings.Contains(c.stderr.String(), "samples lost: the ring buffer was full") {
		if !g.running() {
			t.Fatalf("the generator ended before capture reported the loss: %s\ncapture: %s", g.out.String(), c.stderr)
		}
		if time.Since(resumed) > 10*time.Second {
			t.Fatalf("no loss reported within 10 s of resuming, samples streaming in: %s", c.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !g.running() {
		t.Fatalf("the generator ended before the loss was seen: %s", g.out.String())
	}
	t.Logf("loss reported %s after resuming, generator still sending", time.Since(resumed).Round(time.Millisecond))
	g.stop()
	if code := c.stop(t); code != 0 {
		t.Fatalf("capture exited %d: %s", code, c.stderr)
	}
}

// TestCaptureBesideRunNATTPort: capture beside a spiwatch run loaded with
// --natt-port 4501 decodes its samples with that port (read from the running
// program's .rodata): IKE with the non-ESP marker on 4501 has its exchange in
// the comment, as on 4500.
func TestCaptureBesideRunNATTPort(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcapn")
	r := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--natt-port", "4501", "--json", "--interval", "100ms")
	file := filepath.Join(t.TempDir(), "natt.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", file, "--class", "ike,esp-in-udp", "--rate", "1000")
	c.waitFor(t, "beside spiwatch run")
	runGen(t, gen, lab.NSA, lab.Sender, []string{
		"ike src=198.51.100.1 dst=203.0.113.1 sport=4501 dport=4501 marker=true count=3",
		"esp-in-udp spi=0xc0ffee src=198.51.100.2 dst=203.0.113.1 sport=4501 dport=4501 count=2",
	})
	r.waitTotal(t, 5)
	time.Sleep(300 * time.Millisecond)
	if code := c.stop(t); code != 0 {
		t.Fatalf("capture exited %d: %s", code, c.stderr)
	}
	r.stop(t)
	if strings.Contains(c.stderr.String(), "reading the NAT-T ports") {
		t.Errorf("capture could not read the running program's ports: %s", c.stderr)
	}
	var ike, esp int
	for _, p := range readTshark(t, file, nil) {
		switch {
		case strings.HasPrefix(p.comment, "spiwatch: class=ike ike=v2 exchange=IKE_SA_INIT dir=request "):
			ike++
		case strings.HasPrefix(p.comment, "spiwatch: class=esp-in-udp spi=0x00c0ffee verdict=unknown "):
			esp++
		default:
			t.Errorf("comment %q: want an IKE_SA_INIT on 4501 or ESP-in-UDP of 0xc0ffee", p.comment)
		}
	}
	if ike != 3 || esp != 2 {
		t.Errorf("%d IKE and %d ESP-in-UDP comments, want 3 and 2", ike, esp)
	}
}

// waitExit waits for a capture that ends by itself and returns its exit status.
func (c *capRun) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case err := <-c.done:
		c.done <- err
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(within):
		t.Fatalf("capture did not end by itself within %s: %s", within, c.stderr)
	}
	return -1
}

// TestCapturePipeEndsEarly: spiwatch capture -w - | tshark -r - -c 3. tshark
// leaves after 3 packets while traffic goes on: capture stops by itself, exit
// status 0, without an error.
func TestCapturePipeEndsEarly(t *testing.T) {
	testenv.RequireNetns(t)
	tshark := testenv.RequireTool(t, "tshark", "tshark")
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcapt")
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ts := exec.Command(tshark, "-r", "-", "-c", "3", "-T", "fields", "-e", "esp.spi")
	ts.Stdin = pr
	var tsOut, tsErr bytes.Buffer
	ts.Stdout, ts.Stderr = &tsOut, &tsErr
	if err := ts.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	tsDone := make(chan error, 1)
	go func() { tsDone <- ts.Wait() }()
	t.Cleanup(func() {
		ts.Process.Kill()
		<-tsDone
	})

	c := &capRun{cmd: netlab.Command(lab.NSB, spiwatch, "capture", "-i", lab.Receiver, "-w", "-", "--class", "esp", "--rate", "1000"),
		stderr: &syncBuilder{}, done: make(chan error, 1)}
	c.cmd.Stdout = pw
	var errBuf bytes.Buffer
	c.cmd.Stderr = &errBuf
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close() // the capture holds the only write end
	go func() {
		err := c.cmd.Wait()
		c.stderr.WriteString(errBuf.String())
		c.done <- err
	}()
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
		}
	})
	g := startGen(t, gen, lab.NSA, lab.Sender, 20*time.Second, "esp spi=0x1234 src=198.51.100.1 dst=203.0.113.1 count=200")
	select {
	case err := <-tsDone:
		tsDone <- err
		if err != nil {
			t.Fatalf("tshark: %v: %s", err, tsErr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("tshark did not end after 3 packets")
	}
	if got := strings.Fields(tsOut.String()); len(got) != 3 || got[0] != "0x00001234" {
		t.Errorf("tshark read %q, want 3 packets of SPI 0x00001234", got)
	}
	code := c.waitExit(t, 10*time.Second)
	if !g.running() {
		t.Error("the generator ended before capture: the test proves nothing")
	}
	out := c.stderr.String()
	if code != 0 || strings.Contains(out, "broken pipe") || strings.Contains(out, "capture stopped after") {
		t.Errorf("capture exited %d after its reader left: %s", code, out)
	}
	t.Logf("capture said:\n%s", out)
	if !regexp.MustCompile(`spiwatch capture: \d+ packets written to - in `).MatchString(out) {
		t.Errorf("no summary after the reader left: %s", out)
	}
}

// addVeth adds a second veth pair to a lab: send on the first name in NSA,
// receive on the second in NSB. The namespaces' removal removes it.
func addVeth(t *testing.T, lab *netlab.Lab, send, recv string) {
	t.Helper()
	for _, args := range [][]string{
		{"link", "add", send, "netns", lab.NSA, "type", "veth", "peer", "name", recv, "netns", lab.NSB},
		{"-n", lab.NSA, "link", "set", send, "up"},
		{"-n", lab.NSB, "link", "set", recv, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	if out, err := netlab.Command(lab.NSB, "ethtool", "-K", recv, "gro", "on").CombinedOutput(); err != nil {
		t.Fatalf("ethtool -K %s gro on: %v: %s", recv, err, out)
	}
}

// pcapngBlocks counts the blocks of each type in a little-endian pcapng file.
func pcapngBlocks(t *testing.T, path string) map[uint32]int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint32]int{}
	for off := 0; off+12 <= len(b); {
		n := int(binary.LittleEndian.Uint32(b[off+4:]))
		if n < 12 || off+n > len(b) {
			t.Fatalf("%s: block at %d of %d bytes, file of %d", path, off, n, len(b))
		}
		out[binary.LittleEndian.Uint32(b[off:])]++
		off += n
	}
	return out
}

// TestCaptureTwoInterfaces: -i A -i B writes one interface block for each, and
// tshark names each packet's interface.
func TestCaptureTwoInterfaces(t *testing.T) {
	testenv.RequireNetns(t)
	tshark := testenv.RequireTool(t, "tshark", "tshark")
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcap2")
	addVeth(t, lab, "swgen1", "swmon1")
	file := filepath.Join(t.TempDir(), "two.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-i", "swmon1", "-w", file, "--per-spi", "4", "--rate", "0")
	c.waitFor(t, "to "+file)
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xa0a0 src=198.51.100.1 dst=203.0.113.1 count=10"})
	runGen(t, gen, lab.NSA, "swgen1", []string{"esp spi=0xb0b0 src=198.51.100.2 dst=203.0.113.1 count=10"})
	time.Sleep(300 * time.Millisecond)
	if code := c.stop(t); code != 0 {
		t.Fatalf("capture exited %d: %s", code, c.stderr)
	}
	if blocks := pcapngBlocks(t, file); blocks[1] != 2 || blocks[6] != 8 {
		t.Errorf("blocks by type %v: want 2 interface blocks (type 1) and 8 packets (type 6)", blocks)
	}
	out, err := exec.Command(tshark, "-r", file, "-T", "fields", "-E", "separator=|", "-e", "frame.interface_name", "-e", "esp.spi").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	got := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		got[l]++
	}
	want := map[string]int{lab.Receiver + "|0x0000a0a0": 4, "swmon1|0x0000b0b0": 4}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("tshark reads interface|SPI %v, want %v", got, want)
	}
	if !strings.Contains(c.stderr.String(), "on "+lab.Receiver+",swmon1 ") {
		t.Errorf("capture does not name both interfaces: %s", c.stderr)
	}
}

// TestCaptureRotate: --rotate through the command line: files of about the size
// given, the newest at FILE, the --rotate-keep last kept, every one readable, and
// the summary says how many were started.
func TestCaptureRotate(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcapo")
	dir := t.TempDir()
	file := filepath.Join(dir, "rot.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", file, "--class", "esp", "--snaplen", "0", "--rate", "100000", "--rotate", "8KB", "--rotate-keep", "3")
	c.waitFor(t, "to "+file)
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0x1234 len=1000 count=100"}) // about 110 KB
	time.Sleep(300 * time.Millisecond)
	if code := c.stop(t); code != 0 {
		t.Fatalf("capture exited %d: %s", code, c.stderr)
	}
	m := regexp.MustCompile(`(\d+) packets written to \S+ \((\d+) files started, the last (\d+) kept\)`).FindStringSubmatch(c.stderr.String())
	if m == nil {
		t.Fatalf("no rotation in the summary: %s", c.stderr)
	}
	written, _ := strconv.Atoi(m[1])
	started, _ := strconv.Atoi(m[2])
	if written != 100 || started < 10 || m[3] != "3" {
		t.Errorf("summary: %s packets in %s files, the last %s kept; want 100 packets in 10 or more files (8 KB each), 3 kept", m[1], m[2], m[3])
	}
	names, err := filepath.Glob(file + "*")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(names) != fmt.Sprint([]string{file, file + ".1", file + ".2"}) {
		t.Errorf("files %v, want %s, .1 and .2", names, file)
	}
	kept := 0
	for _, n := range names {
		st, err := os.Stat(n)
		if err != nil {
			t.Fatal(err)
		}
		pkts := readTshark(t, n, nil)
		kept += len(pkts)
		if n != file && (st.Size() < 8000 || st.Size() > 8000+2000) {
			t.Errorf("%s: %d bytes, want the 8 KB given and at most one packet more", n, st.Size())
		}
	}
	// The last files hold the last packets: 3 files of about 7 packets.
	if kept < 15 || kept > 3*8 {
		t.Errorf("the 3 kept files hold %d packets, want 15..24", kept)
	}
}

// TestReadKnownFile: spiwatch read --known-file takes its known SAs from the
// file (comments, SPI@DESTINATION and SPI alone), and both engines print the
// same report.
func TestReadKnownFile(t *testing.T) {
	testenv.RequireBPF(t)
	path := filepath.Join(testcaps.Dir(t), "tcpdump/isakmp4500.pcap")
	known := writeFile(t, "known", "# the one SA of isakmp4500.pcap\n0xf4dc0ae5@192.1.2.23\n\n0x1000 # not in the capture\n")
	var outs []string
	for _, engine := range [][]string{nil, {"--no-bpf"}} {
		var out, errOut strings.Builder
		if code := run(append([]string{"read", "--json", "--known-file", known, path}, engine...), &out, &errOut); code != exitOK {
			t.Fatalf("read %v: status %d: %s", engine, code, errOut.String())
		}
		var o output
		if err := json.Unmarshal([]byte(out.String()), &o); err != nil {
			t.Fatalf("%v: %s", err, out.String())
		}
		sas := map[string]uint64{}
		for _, k := range o.KnownSAs {
			sas[k.SPI+"@"+k.Dst] = k.Packets
		}
		if len(o.UnknownSPIs) != 0 || len(sas) != 2 || sas["0xf4dc0ae5@192.1.2.23"] != 8 {
			t.Errorf("read %v: known SAs %v and %d unknown rows; want 0xf4dc0ae5@192.1.2.23 with 8 packets, 0x1000 with none, no unknown row", engine, sas, len(o.UnknownSPIs))
		}
		// the engines differ in the name they give
		outs = append(outs, strings.ReplaceAll(out.String(), `"mode":"bpf"`, `"mode":"reference"`))
	}
	if outs[0] != outs[1] {
		t.Errorf("engines differ:\n bpf %s\n  go %s", outs[0], outs[1])
	}
}
