// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

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

// TestPinnedRestart: with --pin, counting goes on in the kernel after spiwatch
// exits, a restarted spiwatch continues from the pinned counts, status and stats
// read the pins without attaching anything, and detach removes it all.
func TestPinnedRestart(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	pins := testBPFFS(t)
	lab := newLab(t, "swpin")
	defer netlab.Command(lab.NSB, spiwatch, "detach", "--pin-path", pins).Run() // on failure

	run := func(args ...string) (string, string, error) {
		var out, errOut strings.Builder
		cmd := netlab.Command(lab.NSB, spiwatch, args...)
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		return out.String(), errOut.String(), err
	}
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
}
