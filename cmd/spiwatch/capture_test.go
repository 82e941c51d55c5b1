// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
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
	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/maps"
)

func TestCaptureUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-w", "x.pcapng"}, "-i IFACE is required"},
		{[]string{"-i", "lo"}, "-w FILE is required (- for stdout)"},
		{[]string{"-i", "lo", "-w", "x", "--class", "bogus"}, "--class bogus: unknown class"},
		{[]string{"-i", "lo", "-w", "x", "--spi", "0xzz"}, "--spi 0xzz: not a 32-bit SPI"},
		{[]string{"-i", "lo", "-w", "x", "--spi", "0x1234", "--class", "ike"}, "--spi selects frames with an SPI"},
		{[]string{"-i", "lo", "-w", "x", "--snaplen", "10000"}, "--snaplen 10000: at most 9216 bytes"},
		{[]string{"-i", "lo", "-w", "-", "--rotate", "100MB"}, "--rotate needs a file"},
		{[]string{"-i", "lo", "-w", "x", "--rotate", "lots"}, "--rotate lots: not a size"},
		{[]string{"-i", "lo", "-w", "x", "--rotate", "1MB", "--rotate-keep", "0"}, "--rotate-keep 0: keep at least 1 file"},
		{[]string{"-i", "lo", "-i", "lo", "-w", "x"}, "interface lo is given twice"},
		{[]string{"-i", "lo", "-w", "x", "--rate", "20000000"}, "--rate 20000000: at most 10000000"},
		{[]string{"-i", "lo", "-w", "x", "--collision-window", "0s"}, "--collision-window 0s: must be more than 0"},
		{[]string{"-i", "lo", "-w", "x", "--collision-window", "-5s"}, "--collision-window -5s: must be more than 0"},
		{[]string{"-i", "lo", "-w", "x", "--known-spi", "7"}, "--known-spi 7: SPI 7 is reserved"},
		{[]string{"-i", "nosuchif0", "-w", "x"}, "interface nosuchif0 not found"},
		{[]string{"-i", "lo", "-w", "x", "--per-spi", "0", "--rate", "0"}, "--per-spi 0 with --rate 0 keeps no packet"},
		{[]string{"-i", "lo", "-w", "x", "--rotate", "inf"}, "--rotate inf: not a size"},
		{[]string{"-i", "lo", "-w", "x", "--rotate", "NaN"}, "--rotate NaN: not a size"},
		{[]string{"-i", "lo", "-w", "x", "--rotate", "1e30GB"}, "--rotate 1e30GB: over 1 PiB"},
		{[]string{"-i", "lo", "-w", "x", "extra"}, `unexpected argument "extra"`},
	} {
		var stdout, stderr bytes.Buffer
		code := run(append([]string{"capture"}, tc.args...), &stdout, &stderr)
		if code != exitUsage || !strings.HasPrefix(stderr.String(), "spiwatch capture: "+tc.want) || stdout.Len() != 0 {
			t.Errorf("capture %q: exit %d, stderr %q; want exit 2 and %q", tc.args, code, stderr.String(), tc.want)
		}
	}
	if _, err := os.Stat("x"); err == nil {
		t.Error("a rejected capture created its file")
	}
	for in, want := range map[string]int64{"100MB": 100e6, "1.5GB": 15e8, "512KiB": 512 << 10, "1000000": 1e6, "2m": 2e6} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}

// capRun is a running spiwatch capture.
type capRun struct {
	cmd    *exec.Cmd
	stderr *syncBuilder
	stdout *bytes.Buffer
	done   chan error
}

func startCapture(t *testing.T, bin, ns string, args ...string) *capRun {
	t.Helper()
	c := &capRun{cmd: netlab.Command(ns, bin, append([]string{"capture"}, args...)...), stderr: &syncBuilder{}, stdout: &bytes.Buffer{}, done: make(chan error, 1)}
	c.cmd.Stdout = c.stdout
	errPipe, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			<-c.done
		}
	})
	go func() {
		sc := bufio.NewScanner(errPipe)
		for sc.Scan() {
			c.stderr.WriteString(sc.Text() + "\n")
		}
		c.done <- c.cmd.Wait()
	}()
	return c
}

// waitFor waits for text on the capture's stderr.
func (c *capRun) waitFor(t *testing.T, text string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(c.stderr.String(), text) {
			return
		}
	}
	t.Fatalf("capture never said %q: %s", text, c.stderr)
}

// stop interrupts the capture and returns its exit status.
func (c *capRun) stop(t *testing.T) int {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-c.done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(20 * time.Second):
		t.Fatalf("capture did not stop on SIGINT: %s", c.stderr)
	}
	return -1
}

// tsharkPacket is one packet as tshark shows it.
type tsharkPacket struct {
	comment, src, dst, espSPI, espSeq string
}

// readTshark opens a capture with tshark (a file, or stdin with data).
func readTshark(t *testing.T, path string, data []byte) []tsharkPacket {
	t.Helper()
	tshark := testenv.RequireTool(t, "tshark", "tshark")
	cmd := exec.Command(tshark, "-r", path, "-T", "fields", "-E", "separator=|",
		"-e", "frame.comment", "-e", "ip.src", "-e", "ipv6.src", "-e", "ip.dst", "-e", "ipv6.dst", "-e", "esp.spi", "-e", "esp.sequence")
	if data != nil {
		cmd.Stdin = bytes.NewReader(data)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark -r %s: %v: %s", path, err, stderr.String())
	}
	var pkts []tsharkPacket
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l == "" {
			continue
		}
		f := strings.Split(l, "|")
		if len(f) != 7 {
			t.Fatalf("tshark line %q", l)
		}
		pkts = append(pkts, tsharkPacket{comment: f[0], src: f[1] + f[2], dst: f[3] + f[4], espSPI: f[5], espSeq: f[6]})
	}
	return pkts
}

// commentRE matches the comment of an esp or esp-in-udp packet: a known or
// unknown SPI may be in collision, with two or more sources; a reserved one never
// is. Only unknown and reserved SPIs have rows, so only they are kept as first-N.
var commentRE = regexp.MustCompile(`^spiwatch: class=(?P<class>esp|esp-in-udp) spi=(?P<spi>0x[0-9a-f]{8}) ` +
	`verdict=(?:(?P<verdict>unknown|known)(?:,collision sources=(?P<sources>[^ ,]+(?:,[^ ,]+)+))?|(?P<reserved>reserved)) ` +
	`action=(?P<action>pass|drop) kept=(?:first-(?P<n>\d+)/(?P<of>\d+)|(?P<rate>rate))$`)

// commentField is a named group of a commentRE match.
func commentField(m []string, name string) string { return m[commentRE.SubexpIndex(name)] }

// checkSampled checks a capture of unknown SPIs with --per-spi n and --rate 0:
// exactly the first n packets of every unknown row, each with its comment, and
// the SPIs are the unknown SPIs of the expectation.
func checkSampled(t *testing.T, pkts []tsharkPacket, e expectation, n uint64) {
	t.Helper()
	want := map[string]uint64{} // spi src dst
	var total uint64
	for k, v := range e.unknown {
		want[k.spi+" "+k.src+" "+k.dst] += min(v, n)
		total += min(v, n)
	}
	got := map[string]uint64{}
	for i, p := range pkts {
		m := commentRE.FindStringSubmatch(p.comment)
		if m == nil {
			t.Fatalf("packet %d: comment %q does not say why it was kept", i, p.comment)
		}
		spi := commentField(m, "spi")
		if commentField(m, "verdict") == "known" || commentField(m, "action") != "pass" || commentField(m, "rate") != "" {
			t.Errorf("packet %d: comment %q, want an unknown or reserved SPI passed and kept as one of the first", i, p.comment)
		}
		if p.espSPI != spi { // every kept frame is ESP or ESP-in-UDP: tshark must read its SPI
			t.Errorf("packet %d: tshark reads SPI %q, comment says %s", i, p.espSPI, spi)
		}
		if k, _ := strconv.Atoi(commentField(m, "n")); k < 1 || uint64(k) > n || commentField(m, "of") != strconv.FormatUint(n, 10) {
			t.Errorf("packet %d kept as %s of %s: want 1..%d of %d", i, commentField(m, "n"), commentField(m, "of"), n, n)
		}
		got[spi+" "+p.src+" "+p.dst]++
	}
	if uint64(len(pkts)) != total {
		t.Errorf("%d packets in the file, the sampling rules allow exactly %d", len(pkts), total)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("row %s: %d packets in the file, want %d", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("row %s in the file is not an unknown row", k)
		}
	}
}

// summarySPIs reads the unknown SPIs and their packets from capture's summary
// (the kernel's counters).
func summarySPIs(t *testing.T, stderr string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	re := regexp.MustCompile(`(?m)^  (0x[0-9a-f]{8})  (\S+)\s+(\S+)\s+\S+\s+(\d+)$`)
	for _, m := range re.FindAllStringSubmatch(stderr, -1) {
		n, _ := strconv.ParseUint(m[4], 10, 64)
		out[m[1]] += n
	}
	return out
}

func expectedSPIs(e expectation) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range e.unknown {
		out[k.spi] += v
	}
	return out
}

// captureMix has known SAs, stale SPIs over ESP and NAT-T, a reserved SPI, IPv6
// with VLANs, other traffic, and 10 new SPIs from 2 sources.
var captureMix = []string{
	"esp spi=0x1000 src=198.51.100.1 dst=203.0.113.1 count=2000",
	"esp-in-udp spi=0x2000 src=198.51.100.2 dst=203.0.113.1 sport=4500 dport=4500 count=1000",
	"esp spi=0xdeadbeef src=198.51.100.3 dst=203.0.113.1 count=1500",
	"esp-in-udp spi=0xbad0 src=198.51.100.4 dst=203.0.113.1 sport=31000 dport=4500 count=700",
	"esp spi=7 src=198.51.100.5 dst=203.0.113.1 count=3",
	"esp spi=0x3001 src=2001:db8::1 dst=2001:db8::2 vlan=10 count=50",
	"ike src=198.51.100.1 dst=203.0.113.1 count=40",
	"tcp src=198.51.100.9 dst=203.0.113.1 count=333",
	"esp spi=0x100000 spis=10 srcs=2 src=192.0.2.100 dst=203.0.113.1 count=200",
}

var captureKnown = []string{"--known-spi", "0x1000", "--known-spi", "0x2000@203.0.113.1"}

// TestCaptureStandalone: capture loads spiwatch itself; the file opens in
// tshark, holds exactly the first --per-spi packets of every unknown row, and
// their SPIs are the kernel's unknown SPIs. At exit nothing stays attached.
func TestCaptureStandalone(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcap")
	file := filepath.Join(t.TempDir(), "unknown.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, append([]string{"-i", lab.Receiver, "-w", file, "--per-spi", "5", "--rate", "0"}, captureKnown...)...)
	c.waitFor(t, "to "+file)
	if !xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Fatal("capture started without attaching")
	}
	runGen(t, gen, lab.NSA, lab.Sender, captureMix)
	e := expect(t, captureMix, captureKnown, false)
	time.Sleep(500 * time.Millisecond)
	if code := c.stop(t); code != 0 {
		t.Fatalf("capture exited %d: %s", code, c.stderr)
	}
	t.Logf("capture said:\n%s", c.stderr)
	checkSampled(t, readTshark(t, file, nil), e, 5)
	if got, want := summarySPIs(t, c.stderr.String()), expectedSPIs(e); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("kernel's unknown SPIs in the summary %v, want %v", got, want)
	}
	if !strings.Contains(c.stderr.String(), " 0 lost (ring buffer full)") {
		t.Errorf("summary does not report the ring buffer's losses (0): %s", c.stderr)
	}
	if xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Error("XDP program still attached after capture exited")
	}
}

// TestCaptureBesideRun: capture uses the maps of a running spiwatch run (no second
// program), a second capture is refused naming the first, -w - feeds tshark, and
// run's report and capture's summary count the same unknown SPIs.
func TestCaptureBesideRun(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcapr")
	r := startSpiwatch(t, spiwatch, lab.NSB, append([]string{"-i", lab.Receiver, "--json", "--interval", "100ms", "--top", "0"}, captureKnown...)...)
	// A capture killed without stopping leaves sampling on and itself as the
	// owner: the next capture takes over.
	killed := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", "-", "--class", "all", "--rate", "1000")
	killed.waitFor(t, "beside spiwatch run")
	killed.cmd.Process.Kill()
	<-killed.done
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", "-", "--per-spi", "3", "--rate", "0")
	c.waitFor(t, "beside spiwatch run")
	if !strings.Contains(c.stderr.String(), fmt.Sprintf("the previous capture (pid %d) is gone without stopping: taking over", killed.cmd.Process.Pid)) {
		t.Errorf("capture after a killed one did not say it takes over: %s", c.stderr)
	}

	secondFile := filepath.Join(t.TempDir(), "second.pcapng")
	second := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", secondFile)
	select {
	case err := <-second.done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(second.stderr.String(), fmt.Sprintf("another capture is running on these maps: pid %d", c.cmd.Process.Pid)) {
			t.Errorf("second capture: %v, %q; want exit 1 naming pid %d", err, second.stderr, c.cmd.Process.Pid)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a second capture on the same program was not refused")
	}
	if _, err := os.Stat(secondFile); err == nil {
		t.Error("the refused capture created its file")
	}

	runGen(t, gen, lab.NSA, lab.Sender, captureMix)
	e := expect(t, captureMix, captureKnown, false)
	r.waitTotal(t, e.total)
	time.Sleep(300 * time.Millisecond)
	if code := c.stop(t); code != 0 {
		t.Fatalf("capture exited %d: %s", code, c.stderr)
	}
	if !xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Fatal("capture detached spiwatch run's program")
	}
	o := r.stop(t)
	checkReport(t, o, e, lab.Receiver) // run counted every packet, with capture beside it
	checkSampled(t, readTshark(t, "-", c.stdout.Bytes()), e, 3)
	runSPIs := map[string]uint64{}
	for _, u := range o.UnknownSPIs {
		runSPIs[u.SPI] += u.Packets
	}
	if got := summarySPIs(t, c.stderr.String()); fmt.Sprint(got) != fmt.Sprint(runSPIs) {
		t.Errorf("capture's summary %v, spiwatch run's report %v: not the same maps", got, runSPIs)
	}
}

// TestCaptureDiagComments: capture beside spiwatch run, with --collision-window,
// reads the collisions from run's maps (refresh) and decodes the rest from the
// frames. An unknown SPI from two sources and a known SA receiving from a second
// source are commented as collisions with both sources, an ICMP
// fragmentation-needed with the SPI it quotes, an IKE_SA_INIT with its exchange;
// once the second source has been silent for the window, the comments say no
// collision any more.
func TestCaptureDiagComments(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcapx")
	const window = 6 * time.Second
	r := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--json", "--interval", "100ms", "--top", "0", "--known-spi", "0x5000@203.0.113.1")
	file := filepath.Join(t.TempDir(), "diag.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", file, "--class", "esp,icmp-esp,ike",
		"--rate", "1000000", "--collision-window", window.String())
	c.waitFor(t, "beside spiwatch run")

	const a, b = "198.51.100.7", "198.51.100.8"
	// phase: the unknown SPI 0xc0110001 and the known SA 0x5000, 3 packets from
	// each source, the phase's number as their sequence number
	phase := func(seq int, srcs ...string) []string {
		var out []string
		for _, src := range srcs {
			for _, spi := range []string{"0xc0110001", "0x5000"} {
				out = append(out, fmt.Sprintf("esp spi=%s src=%s dst=203.0.113.1 seq=%d count=3", spi, src, seq))
			}
		}
		return out
	}
	// 1: both sources; capture reads the maps at most once a second, so these
	// comments may or may not say collision yet.
	runGen(t, gen, lab.NSA, lab.Sender, phase(1, a, b))
	time.Sleep(2 * time.Second)
	// 2: read again, both sources within the window: collisions; and an ICMP error
	// about our ESP, and an IKE_SA_INIT.
	runGen(t, gen, lab.NSA, lab.Sender, append(phase(2, a, b),
		"icmp-error src=192.0.2.254 dst=203.0.113.1 qdst=198.51.100.1 spi=0xc0ffee01 mtu=1400 count=2",
		"ike src=198.51.100.1 dst=203.0.113.1 exchange=IKE_SA_INIT msgid=7 count=2"))
	time.Sleep(window + time.Second)
	// 3: only a; b has been silent for longer than the window.
	runGen(t, gen, lab.NSA, lab.Sender, phase(3, a))
	r.waitTotal(t, 12+4+12+6)
	time.Sleep(300 * time.Millisecond)
	if code := c.stop(t); code != 0 {
		t.Fatalf("capture exited %d: %s", code, c.stderr)
	}
	r.stop(t)

	pkts := readTshark(t, file, nil)
	got := map[string]int{}
	for i, p := range pkts {
		switch {
		case strings.HasPrefix(p.comment, "spiwatch: class=icmp-esp "), strings.HasPrefix(p.comment, "spiwatch: class=ike "):
			got[p.comment]++
			continue
		}
		m := commentRE.FindStringSubmatch(p.comment)
		if m == nil {
			t.Fatalf("packet %d: comment %q", i, p.comment)
		}
		verdict, spi, srcs := commentField(m, "verdict"), commentField(m, "spi"), commentField(m, "sources")
		if want := map[string]string{"0x00005000": "known", "0xc0110001": "unknown"}[spi]; verdict != want || p.espSPI != spi {
			t.Errorf("packet %d (tshark: SPI %s): comment %q, want SPI 0x00005000 known or 0xc0110001 unknown", i, p.espSPI, p.comment)
		}
		got[fmt.Sprintf("%s %s phase %s", spi, p.src, p.espSeq)]++
		switch p.espSeq {
		case "1": // before capture read the maps with both sources: either
		case "2":
			if srcs != a+","+b && srcs != b+","+a {
				t.Errorf("packet %d of phase 2 from %s: comment %q, want a collision of %s and %s", i, p.src, p.comment, a, b)
			}
		case "3":
			if srcs != "" {
				t.Errorf("packet %d of phase 3, %s after %s's last: comment %q, want no collision", i, window+time.Second, b, p.comment)
			}
		default:
			t.Errorf("packet %d: sequence number %q", i, p.espSeq)
		}
	}
	want := map[string]int{
		"spiwatch: class=icmp-esp error=frag-needed quote=esp spi=0xc0ffee01 quoted=203.0.113.1->198.51.100.1 mtu=1400 action=pass kept=rate": 2,
		"spiwatch: class=ike ike=v2 exchange=IKE_SA_INIT dir=request msgid=7 action=pass kept=rate":                                           2,
	}
	for _, spi := range []string{"0xc0110001", "0x00005000"} {
		for _, src := range []string{a, b} {
			want[fmt.Sprintf("%s %s phase 1", spi, src)] = 3
			want[fmt.Sprintf("%s %s phase 2", spi, src)] = 3
		}
		want[fmt.Sprintf("%s %s phase 3", spi, a)] = 3
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("packets in the file\n got %v\nwant %v", got, want)
	}
}

// TestCaptureDiskFull: the file's disk fills while capturing; capture stops
// writing with a clear message, the file stays readable, and counting goes on
// (the summary at Ctrl-C has every packet).
func TestCaptureDiskFull(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	dir := testenv.SmallTmpfs(t, 48<<10)
	lab := newLab(t, "swcapf")
	file := filepath.Join(dir, "full.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, append([]string{"-i", lab.Receiver, "-w", file, "--class", "all", "--snaplen", "0", "--rate", "1000000"}, captureKnown...)...)
	c.waitFor(t, "to "+file)
	runGen(t, gen, lab.NSA, lab.Sender, captureMix)
	e := expect(t, captureMix, captureKnown, false)
	c.waitFor(t, "no space left on device: capture stopped after")
	c.waitFor(t, "counting goes on")
	runGen(t, gen, lab.NSA, lab.Sender, captureMix) // after the disk filled: still counted
	time.Sleep(300 * time.Millisecond)
	if code := c.stop(t); code != 1 {
		t.Errorf("capture exited %d after a full disk, want 1", code)
	}
	want := expectedSPIs(e)
	for k := range want {
		want[k] *= 2
	}
	if got := summarySPIs(t, c.stderr.String()); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after the disk filled, the kernel's unknown SPIs %v, want %v", got, want)
	}
	if pkts := readTshark(t, file, nil); len(pkts) == 0 {
		t.Error("the file left on the full disk holds no packet")
	}
	t.Logf("capture said:\n%s", c.stderr)
}

// TestCaptureBesidePinned: with spiwatch run --pin gone, the pinned program keeps
// counting; capture finds it on the interface, samples into the pinned maps' rows,
// and leaves it attached.
func TestCaptureBesidePinned(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	pins := testBPFFS(t)
	lab := newLab(t, "swcapp")
	defer netlab.Command(lab.NSB, spiwatch, "detach", "--pin-path", pins).Run()
	s := startSpiwatch(t, spiwatch, lab.NSB, "run", "-i", lab.Receiver, "--pin", "--pin-path", pins, "--json", "--interval", "100ms")
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xdead count=100"})
	s.waitTotal(t, 100)
	s.stop(t)

	file := filepath.Join(t.TempDir(), "pinned.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", file, "--per-spi", "2", "--rate", "0")
	c.waitFor(t, "beside spiwatch run")
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xdead count=50", "esp spi=0xbeef count=50"})
	time.Sleep(300 * time.Millisecond)
	if code := c.stop(t); code != 0 {
		t.Fatalf("capture exited %d: %s", code, c.stderr)
	}
	// 0xdead's row was past its first 2 packets before the capture: only 0xbeef's
	// first 2 are kept.
	pkts := readTshark(t, file, nil)
	if len(pkts) != 2 || pkts[0].espSPI != "0x0000beef" || pkts[1].espSPI != "0x0000beef" {
		t.Errorf("file holds %+v, want the first 2 packets of 0xbeef", pkts)
	}
	if got := summarySPIs(t, c.stderr.String()); got["0x0000dead"] != 150 || got["0x0000beef"] != 50 {
		t.Errorf("summary %v: want the pinned counts, 0xdead 150 and 0xbeef 50", got)
	}
	if !xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Error("capture detached the pinned program")
	}
}

// TestCaptureRingFull stops the capture process while frames arrive, so the ring
// buffer fills: every selected frame is either in the file or counted as lost,
// and capture says so.
func TestCaptureRingFull(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcapq")
	file := filepath.Join(t.TempDir(), "ring.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", file, "--class", "esp", "--snaplen", "0", "--rate", "10000000")
	c.waitFor(t, "to "+file)
	if err := c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	const frames = 8000 // 8000 x 1 KB: twice the 4 MiB ring
	runGen(t, gen, lab.NSA, lab.Sender, []string{fmt.Sprintf("esp spi=0x1234 len=1000 count=%d", frames)})
	if err := c.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	c.waitFor(t, "samples lost: the ring buffer was full")
	if code := c.stop(t); code != 0 {
		t.Fatalf("capture exited %d: %s", code, c.stderr)
	}
	m := regexp.MustCompile(`(\d+) packets written .* kernel: (\d+) samples, (\d+) lost \(ring buffer full\)`).FindStringSubmatch(c.stderr.String())
	if m == nil {
		t.Fatalf("no summary: %s", c.stderr)
	}
	written, _ := strconv.Atoi(m[1])
	samples, _ := strconv.Atoi(m[2])
	lost, _ := strconv.Atoi(m[3])
	if lost == 0 || samples+lost != frames || written != samples {
		t.Errorf("sent %d: %d written, %d samples, %d lost; want written = samples, samples + lost = sent, some lost", frames, written, samples, lost)
	}
	if n := len(readTshark(t, file, nil)); n != written {
		t.Errorf("tshark reads %d packets, capture says it wrote %d", n, written)
	}
	t.Logf("%d frames: %d written, %d lost", frames, written, lost)
}

// TestCaptureCountDuration: --count ends the capture after that many packets,
// --duration after that long, both with status 0 and a complete file.
func TestCaptureCountDuration(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcapc")
	dir := t.TempDir()
	wait := func(c *capRun) int {
		select {
		case err := <-c.done:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return ee.ExitCode()
			}
			return 0
		case <-time.After(20 * time.Second):
			t.Fatalf("capture did not end by itself: %s", c.stderr)
		}
		return -1
	}
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", filepath.Join(dir, "count.pcapng"), "--class", "esp", "--rate", "1000", "--count", "3")
	c.waitFor(t, "count.pcapng")
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0x1234 count=100"})
	if code := wait(c); code != 0 || len(readTshark(t, filepath.Join(dir, "count.pcapng"), nil)) != 3 {
		t.Errorf("--count 3: exit %d, want 0 and 3 packets: %s", code, c.stderr)
	}
	start := time.Now()
	c = startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", filepath.Join(dir, "duration.pcapng"), "--duration", "1s")
	if code := wait(c); code != 0 || time.Since(start) > 10*time.Second || !strings.Contains(c.stderr.String(), "0 packets written") {
		t.Errorf("--duration 1s: exit %d after %s: %s", code, time.Since(start), c.stderr)
	}
	if pkts := readTshark(t, filepath.Join(dir, "duration.pcapng"), nil); len(pkts) != 0 {
		t.Errorf("an empty capture holds %d packets", len(pkts))
	}
}

// The start-up line says what the kernel keeps: the first packets of each
// unknown row also when unknown SPIs are selected by their class alone.
func TestKeepRule(t *testing.T) {
	for _, tc := range []struct {
		classes      string
		perSPI, rate uint32
		want         string
	}{
		{"unknown", 10, 100, "the first 10 packets of each unknown SPI and peer, then up to 100 packets per second per CPU"},
		{"esp", 3, 0, "the first 3 packets of each unknown SPI and peer"},
		{"esp-in-udp", 3, 5, "the first 3 packets of each unknown SPI and peer, then up to 5 packets per second per CPU"},
		{"ike", 10, 7, "up to 7 packets per second per CPU"},
		{"unknown", 1, 1, "the first 1 packet of each unknown SPI and peer, then up to 1 packet per second per CPU"},
	} {
		set := maps.CaptureSettings{ClassMask: captureClasses[tc.classes], PerSPI: tc.perSPI, Rate: tc.rate}
		if got := keepRule(set); got != tc.want {
			t.Errorf("--class %s --per-spi %d --rate %d: %q, want %q", tc.classes, tc.perSPI, tc.rate, got, tc.want)
		}
	}
}
