// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

// testBPFFS mounts a BPF filesystem of the test's own (ip netns exec hides the
// host's /sys/fs/bpf behind a fresh /sys) and returns a pin path on it.
func testBPFFS(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		testenv.Unavailable(t, "cannot mount a BPF filesystem: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return filepath.Join(dir, "spiwatch")
}

// pinLab is a lab for the --pin tests: the binaries, a pin directory of its own,
// and what spiwatch pinned there detached at cleanup.
type pinLab struct {
	*netlab.Lab
	bin, gen, pins string
}

func newPinLab(t *testing.T, prefix string) *pinLab {
	testenv.RequireNetns(t)
	bin, gen := buildBinaries(t)
	p := &pinLab{Lab: newLab(t, prefix), bin: bin, gen: gen, pins: testBPFFS(t)}
	t.Cleanup(func() { netlab.Command(p.NSB, p.bin, "detach", "--pin-path", p.pins).Run() })
	return p
}

// run runs spiwatch with args in the receiving namespace.
func (p *pinLab) run(args ...string) (stdout, stderr string, err error) {
	var out, errOut strings.Builder
	cmd := netlab.Command(p.NSB, p.bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// TestPinnedRestart: with --pin, counting goes on in the kernel after spiwatch
// exits, a restarted spiwatch continues from the pinned counts, status and stats
// read the pins without attaching anything, and detach removes it all.
func TestPinnedRestart(t *testing.T) {
	p := newPinLab(t, "swpin")
	spiwatch, gen, pins, lab, run := p.bin, p.gen, p.pins, p.Lab, p.run
	total := func(jsonLine string) uint64 {
		var o output
		lines := strings.Split(strings.TrimSpace(jsonLine), "\n")
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &o); err != nil {
			t.Fatalf("report %q: %v", jsonLine, err)
		}
		return o.Total.Packets
	}

	s := startSpiwatch(t, spiwatch, lab.NSB, "run", "-i", lab.Receiver, "--pin", "--pin-path", pins, "--json", "--interval", "100ms")
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xdead count=100"})
	s.waitTotal(t, 100)
	if o := s.stop(t); o.Total.Packets != 100 {
		t.Fatalf("first run counted %d, want 100", o.Total.Packets)
	}
	if !xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Fatal("with --pin the program must stay attached after spiwatch exits")
	}
	for _, f := range []string{"sw_known", "sw_unknown", "sw_counters", "sw_tally"} {
		st, err := os.Stat(filepath.Join(pins, f))
		if err != nil || st.Mode().Perm()&0o077 != 0 {
			t.Errorf("pinned map %s: %v, mode %v: want readable by root only", f, err, st.Mode())
		}
	}

	// No spiwatch runs: the kernel keeps counting.
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xdead count=50"})
	out, errOut, err := run("status", "--pin-path", pins)
	if err != nil || !strings.Contains(out, lab.Receiver) || !strings.Contains(out, "spiwatch_xdp") || !strings.Contains(out, " 150\n") {
		t.Errorf("status: %v\n%s%s", err, out, errOut)
	}
	out, errOut, err = run("stats", "--pin-path", pins, "--json", "--interval", "50ms")
	if err != nil || total(out) != 150 {
		t.Errorf("stats: %v, %s %s; want 150 packets", err, out, errOut)
	}

	// A restarted spiwatch takes the link over and continues the counts.
	out, errOut, err = run("run", "-i", lab.Receiver, "--pin", "--pin-path", pins, "--json", "--interval", "100ms", "--count", "1")
	if err != nil || total(out) != 150 {
		t.Errorf("restart: %v, %s %s; want the 150 packets counted so far", err, out, errOut)
	}

	out, errOut, err = run("detach", "--pin-path", pins)
	if err != nil || !strings.Contains(out, "detached from "+lab.Receiver) {
		t.Errorf("detach: %v\n%s%s", err, out, errOut)
	}
	if xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Error("program still attached after detach")
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("pin directory still there after detach: %v", err)
	}
	if _, errOut, err = run("stats", "--pin-path", pins); err == nil || !strings.Contains(errOut, "nothing pinned") {
		t.Errorf("stats after detach: %v %s", err, errOut)
	}
}

// TestPinnedIncompatible: pins made with another table size are not silently
// replaced: spiwatch names the problem and the fix, and attaches nothing.
func TestPinnedIncompatible(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, _ := buildBinaries(t)
	pins := testBPFFS(t)
	lab := newLab(t, "swpinx")
	defer netlab.Command(lab.NSB, spiwatch, "detach", "--pin-path", pins).Run()
	if out, err := netlab.Command(lab.NSB, spiwatch, "-i", lab.Receiver, "--pin", "--pin-path", pins, "--count", "1", "--interval", "10ms").CombinedOutput(); err != nil {
		t.Fatalf("first run: %v: %s", err, out)
	}
	out, err := netlab.Command(lab.NSB, spiwatch, "-i", lab.Receiver, "--pin", "--pin-path", pins, "--unknown-table-size", "1024", "--count", "1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "incompatible") || !strings.Contains(string(out), "spiwatch detach --pin-path "+pins) {
		t.Errorf("second run with another table size: %v: %s", err, out)
	}

	// The same sizes but another layout (as a build that reorders a map's fields
	// would record it): refused naming the map, and status and stats refuse to
	// read it too. The record is a symlink whose target lists a hash per map.
	record := filepath.Join(pins, "layout")
	text, err := os.Readlink(record)
	if err != nil {
		t.Fatalf("no layout record in the pin directory: %v", err)
	}
	changed := regexp.MustCompile(`sw_unknown=[0-9a-f]+`).ReplaceAllString(text, "sw_unknown=0123456789abcdef")
	if changed == text {
		t.Fatalf("layout record %q names no sw_unknown", text)
	}
	if err := os.Remove(record); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(changed, record); err != nil {
		t.Fatal(err)
	}
	id := xdpProgID(t, lab.NSB, lab.Receiver)
	want := "the layout of pinned map sw_unknown in " + pins + " differs from this build's (made by an incompatible build): remove them with spiwatch detach --pin-path " + pins
	for _, args := range [][]string{
		{"-i", lab.Receiver, "--pin", "--pin-path", pins, "--count", "1"},
		{"stats", "--pin-path", pins, "--json"},
		{"status", "--pin-path", pins},
	} {
		out, err := netlab.Command(lab.NSB, spiwatch, args...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitError || !strings.Contains(string(out), want) {
			t.Errorf("%q with another layout recorded: %v: %s\nwant status 1 and %q", args, err, out, want)
		}
	}
	if now := xdpProgID(t, lab.NSB, lab.Receiver); now != id {
		t.Errorf("the refused run changed the program on %s: id %d, was %d", lab.Receiver, now, id)
	}
}

// TestPinnedTwice: a live spiwatch run --pin owns its pin directory. A second one
// is refused (status 1) naming the directory and the first's pid, and changes
// nothing: the first keeps its program and its counts. Once the first is killed
// (SIGKILL: no chance to clean up), a new one starts and continues the counts.
func TestPinnedTwice(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	pins := testBPFFS(t)
	lab := newLab(t, "swpin2")
	defer netlab.Command(lab.NSB, spiwatch, "detach", "--pin-path", pins).Run()

	first := startSpiwatch(t, spiwatch, lab.NSB, "run", "-i", lab.Receiver, "--pin", "--pin-path", pins, "--json", "--interval", "100ms")
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xdead count=20"})
	first.waitTotal(t, 20)
	id := xdpProgID(t, lab.NSB, lab.Receiver)

	out, err := netlab.Command(lab.NSB, spiwatch, "run", "-i", lab.Receiver, "--pin", "--pin-path", pins, "--json", "--count", "1", "--interval", "50ms").CombinedOutput()
	want := fmt.Sprintf("spiwatch: pin directory %s is in use by another spiwatch run --pin (pid %d): stop that one first, or give this one another --pin-path\n",
		pins, first.cmd.Process.Pid)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitError || string(out) != want {
		t.Errorf("second run --pin: %v: %q\nwant status 1 and %q", err, out, want)
	}
	if now := xdpProgID(t, lab.NSB, lab.Receiver); now != id {
		t.Errorf("the second run changed the program on %s: id %d, was %d", lab.Receiver, now, id)
	}
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xdead count=30"})
	first.waitTotal(t, 50)
	if strings.Contains(first.stderr.String(), "program replaced") || strings.Contains(first.stderr.String(), "detached") {
		t.Errorf("the first run lost its program: %s", first.stderr)
	}

	first.cmd.Process.Signal(syscall.SIGKILL)
	for range first.lines {
	}
	<-first.done
	out, err = netlab.Command(lab.NSB, spiwatch, "run", "-i", lab.Receiver, "--pin", "--pin-path", pins, "--json", "--count", "1", "--interval", "50ms").Output()
	if err != nil || !strings.Contains(string(out), `"total":{"packets":50,`) {
		t.Errorf("run --pin after the first was killed: %v: %s; want the 50 packets counted so far", err, out)
	}
}

// xdpProgID is the id of the XDP program on iface in namespace ns; 0 if none.
func xdpProgID(t *testing.T, ns, iface string) uint32 {
	t.Helper()
	var id uint32
	err := netlab.In(ns, func() error {
		l, err := netlink.LinkByName(iface)
		if err == nil && l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached {
			id = l.Attrs().Xdp.ProgId
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}
