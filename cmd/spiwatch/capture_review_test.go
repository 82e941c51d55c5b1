// SPDX-License-Identifier: Apache-2.0

package main

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/testenv"
)

// TestCaptureTimesAndLengths: a frame cut to --snaplen keeps its real length in
// the file, and its time is the wall-clock time it arrived (ns, Unix epoch).
func TestCaptureTimesAndLengths(t *testing.T) {
	testenv.RequireNetns(t)
	tshark := testenv.RequireTool(t, "tshark", "tshark")
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcapl")
	file := filepath.Join(t.TempDir(), "len.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", file, "--class", "esp", "--snaplen", "64", "--rate", "1000")
	c.waitFor(t, "to "+file)
	before := time.Now()
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0x1234 len=1000 count=5"})
	after := time.Now()
	time.Sleep(300 * time.Millisecond)
	if code := c.stop(t); code != 0 {
		t.Fatalf("capture exited %d: %s", code, c.stderr)
	}
	out, err := exec.Command(tshark, "-r", file, "-T", "fields", "-E", "separator=|", "-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.cap_len").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 5 {
		t.Fatalf("tshark reads %d packets, want 5: %q", len(lines), out)
	}
	for i, l := range lines {
		f := strings.Split(l, "|")
		secs, _ := strconv.ParseFloat(f[0], 64)
		ts := time.Unix(0, int64(secs*1e9))
		if ts.Before(before.Add(-time.Second)) || ts.After(after.Add(time.Second)) {
			t.Errorf("packet %d at %s, sent between %s and %s", i, ts, before, after)
		}
		if n, _ := strconv.Atoi(f[1]); n < 1000 || f[2] != "64" {
			t.Errorf("packet %d: length %s, captured %s; want 1000+ and 64", i, f[1], f[2])
		}
	}
}

// TestCaptureDiskFullCount: when the disk fills, the packets capture says it
// wrote are the packets the file holds.
func TestCaptureDiskFullCount(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	dir := testenv.SmallTmpfs(t, 48<<10)
	lab := newLab(t, "swcapn")
	file := filepath.Join(dir, "full.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", file, "--class", "esp", "--snaplen", "0", "--rate", "1000000")
	c.waitFor(t, "to "+file)
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0x1234 len=1000 count=300"})
	c.waitFor(t, "no space left on device: capture stopped after")
	if code := c.stop(t); code != 1 {
		t.Errorf("capture exited %d after a full disk, want 1", code)
	}
	inFile := len(readTshark(t, file, nil))
	m := regexp.MustCompile(`capture stopped after (\d+) packets`).FindStringSubmatch(c.stderr.String())
	if n, _ := strconv.Atoi(m[1]); n != inFile {
		t.Errorf("capture says it stopped after %d packets, the file holds %d", n, inFile)
	}
	m = regexp.MustCompile(`(\d+) packets written to`).FindStringSubmatch(c.stderr.String())
	if m == nil {
		t.Fatalf("no summary: %s", c.stderr)
	}
	if n, _ := strconv.Atoi(m[1]); n != inFile {
		t.Errorf("summary says %d packets written, the file holds %d", n, inFile)
	}
	t.Logf("capture said:\n%s", c.stderr)
}

// TestCaptureDiskFullAtExit: the disk fills while the last packets are written
// out as capture ends (here at --duration): capture says so (not only exit 1),
// and does not count the lost packets as written.
func TestCaptureDiskFullAtExit(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	dir := testenv.SmallTmpfs(t, 48<<10)
	lab := newLab(t, "swcape")
	file := filepath.Join(dir, "exit.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", file, "--class", "esp", "--snaplen", "0", "--rate", "1000000", "--duration", "2s")
	c.waitFor(t, "to "+file)
	// The samples wait in the ring buffer while capture is stopped, and
	// --duration has passed when it goes on: it ends after at most one packet,
	// with the rest still to write. Nothing here races the flush every 200 ms
	// (an end at --count or Ctrl-C did, on a loaded machine: the disk then filled
	// while capture ran, a different path).
	if err := c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0x1234 len=1000 count=150"})
	time.Sleep(time.Until(stopped.Add(2500 * time.Millisecond)))
	if err := c.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	code := c.waitExit(t, 20*time.Second)
	out := c.stderr.String()
	t.Logf("capture said:\n%s", out)
	if code != 1 || !strings.Contains(out, "no space left on device") || !strings.Contains(out, "packets kept") {
		t.Errorf("capture exited %d, want 1 and a message saying the disk filled as it ended", code)
	}
	inFile := len(readTshark(t, file, nil))
	m := regexp.MustCompile(`(\d+) packets written to`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no summary: %s", out)
	}
	if n, _ := strconv.Atoi(m[1]); n != inFile {
		t.Errorf("summary says %d packets written, the file holds %d", n, inFile)
	}
}

// TestCaptureSIGHUP: the terminal going away (ssh dropped) ends a capture like
// Ctrl-C: the packets it holds reach the file and sampling is turned off.
func TestCaptureSIGHUP(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcaph")
	file := filepath.Join(t.TempDir(), "hup.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", file, "--class", "esp", "--rate", "1000")
	c.waitFor(t, "to "+file)
	if err := c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0x1234 count=20"})
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGCONT} {
		if err := c.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
	}
	code := c.waitExit(t, 20*time.Second)
	out := c.stderr.String()
	if code != 0 || !strings.Contains(out, "20 packets written") {
		t.Errorf("capture exited %d on SIGHUP, want 0 and its summary: %s", code, out)
	}
	if n := len(readTshark(t, file, nil)); n != 20 {
		t.Errorf("the file holds %d packets, 20 were sampled", n)
	}
}

// TestCaptureEndsWhenRunGoes: a capture beside spiwatch run ends, saying why,
// when the run exits and takes its program away: nothing more could arrive,
// and it must not look as if nothing more was sent. The file keeps what was
// sampled before.
func TestCaptureEndsWhenRunGoes(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcapg")
	r := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--json", "--interval", "100ms")
	file := filepath.Join(t.TempDir(), "gone.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", file, "--class", "esp", "--rate", "1000")
	c.waitFor(t, "beside spiwatch run")
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0x1234 count=7"})
	r.waitTotal(t, 7)
	r.stop(t)
	code := c.waitExit(t, 10*time.Second)
	out := c.stderr.String()
	if code != 1 || !strings.Contains(out, lab.Receiver+" has no XDP program any more") || !strings.Contains(out, "start capture again") {
		t.Errorf("capture exited %d after spiwatch run went: %s\nwant 1 and why", code, out)
	}
	if n := len(readTshark(t, file, nil)); n != 7 {
		t.Errorf("the file holds %d packets, 7 were sampled before the run went", n)
	}
}

// TestCaptureEndsOnTakeover: a capture beside a pinned program ends, saying
// why, when a new spiwatch run --pin takes the link over with its own program
// (whose capture switch and ring buffer are not the capture's).
func TestCaptureEndsOnTakeover(t *testing.T) {
	p := newPinLab(t, "swcapt")
	if _, errOut, err := p.run("run", "-i", p.Receiver, "--pin", "--pin-path", p.pins, "--json", "--interval", "100ms", "--count", "1"); err != nil {
		t.Fatalf("first run --pin: %v: %s", err, errOut)
	}
	c := startCapture(t, p.bin, p.NSB, "-i", p.Receiver, "-w", filepath.Join(t.TempDir(), "t.pcapng"))
	c.waitFor(t, "beside spiwatch run")
	if _, errOut, err := p.run("run", "-i", p.Receiver, "--pin", "--pin-path", p.pins, "--json", "--interval", "100ms", "--count", "1"); err != nil {
		t.Fatalf("second run --pin: %v: %s", err, errOut)
	}
	code := c.waitExit(t, 10*time.Second)
	if out := c.stderr.String(); code != 1 || !strings.Contains(out, p.Receiver+" now runs XDP program id") {
		t.Errorf("capture exited %d after a takeover: %s\nwant 1 and why", code, out)
	}
}
