// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestPinnedStatsAction: spiwatch stats says what the program left attached does
// with unknown SPIs and how it is attached, read from the kernel: a program left
// dropping must not be reported as passing (or as nothing).
func TestPinnedStatsAction(t *testing.T) {
	p := newPinLab(t, "swpst")
	pins, lab, run := p.pins, p.Lab, p.run
	type stats struct {
		Action     string `json:"action"`
		DropAbove  uint32 `json:"drop_above_pps"`
		Interfaces []struct {
			Name string `json:"name"`
			Mode string `json:"mode"`
		} `json:"interfaces"`
	}
	read := func() stats {
		t.Helper()
		out, errOut, err := run("stats", "--pin-path", pins, "--json", "--interval", "50ms")
		if err != nil {
			t.Fatalf("stats: %v\n%s", err, errOut)
		}
		var s stats
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &s); err != nil {
			t.Fatalf("stats output %q: %v", out, err)
		}
		return s
	}

	if _, errOut, err := run("run", "-i", lab.Receiver, "--pin", "--pin-path", pins, "--xdp-mode", "native",
		"--action", "drop", "--drop-above", "100", "--json", "--interval", "50ms", "--count", "1"); err != nil {
		t.Fatalf("run --pin --action drop: %v\n%s", err, errOut)
	}
	s := read()
	if s.Action != "drop" || s.DropAbove != 100 || len(s.Interfaces) != 1 || s.Interfaces[0].Name != lab.Receiver || s.Interfaces[0].Mode != "native" {
		t.Errorf("stats after run --action drop: %+v; want action drop above 100/s, %s native", s, lab.Receiver)
	}

	if _, errOut, err := run("detach", "--pin-path", pins); err != nil {
		t.Fatalf("detach: %v\n%s", err, errOut)
	}
	if _, errOut, err := run("run", "-i", lab.Receiver, "--pin", "--pin-path", pins, "--xdp-mode", "generic",
		"--json", "--interval", "50ms", "--count", "1"); err != nil {
		t.Fatalf("run --pin: %v\n%s", err, errOut)
	}
	if s := read(); s.Action != "pass" || len(s.Interfaces) != 1 || s.Interfaces[0].Mode != "generic" {
		t.Errorf("stats after run: %+v; want action pass, generic", s)
	}
}

// TestPinnedNotices: a run --pin says when a pinned link it takes over keeps the
// mode it was pinned in against an explicit --xdp-mode, and names what earlier
// runs left attached that it does not watch, with what those programs do.
func TestPinnedNotices(t *testing.T) {
	p := newPinLab(t, "swpno")
	lab := p.Lab
	run := func(args ...string) string {
		t.Helper()
		_, errOut, err := p.run(append(args, "--pin", "--pin-path", p.pins, "--json", "--interval", "50ms", "--count", "1")...)
		if err != nil {
			t.Fatalf("spiwatch %v: %v\n%s", args, err, errOut)
		}
		return errOut
	}

	run("run", "-i", lab.Receiver, "--xdp-mode", "generic", "--action", "drop")
	errOut := run("run", "-i", lab.Receiver, "--xdp-mode", "native", "--action", "drop")
	if want := lab.Receiver + ": kept in generic XDP as an earlier run pinned it, not --xdp-mode native"; !strings.Contains(errOut, want) {
		t.Errorf("taking over a generic pin with --xdp-mode native, stderr:\n%s\nwant %q", errOut, want)
	}
	errOut = run("run", "-i", "lo", "--xdp-mode", "generic")
	if want := "not reported by this one: " + lab.Receiver + " (drop)"; !strings.Contains(errOut, want) {
		t.Errorf("a run on lo beside a pinned %s, stderr:\n%s\nwant %q", lab.Receiver, errOut, want)
	}
}

// TestPinnedUnderNetnsExec: ip netns exec gives the command a mount namespace of
// its own, with a /sys where no BPF filesystem is mounted. spiwatch mounts one
// there for --pin, and it goes when spiwatch ends, the pins and the program with
// it: spiwatch must say so, and not claim to leave anything attached.
func TestPinnedUnderNetnsExec(t *testing.T) {
	p := newPinLab(t, "swpne")
	_, errOut, err := p.run("run", "-i", p.Receiver, "--pin", "--pin-path", "/sys/fs/bpf/spiwatch-test-netns-exec",
		"--json", "--interval", "50ms", "--count", "1")
	if err != nil {
		t.Fatalf("run --pin: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut, "goes when spiwatch ends, and the pins and the program with it") || strings.Contains(errOut, "left attached") {
		t.Errorf("stderr:\n%s\nwant the pins said to go, and nothing said to be left attached", errOut)
	}
	if xdpAttached(t, p.NSB, p.Receiver) {
		t.Errorf("%s still has an XDP program after spiwatch ended", p.Receiver)
	}
}
