// SPDX-License-Identifier: Apache-2.0

package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/spiwatch/spiwatch/internal/netlab"
)

// TestPinnedStartFails: run --pin on two interfaces where the second cannot be
// attached (lo has no native XDP) fails with status 1 and leaves nothing behind:
// the first interface is not left attached and pinned, and spiwatch does not say
// it left anything counting.
func TestPinnedStartFails(t *testing.T) {
	p := newPinLab(t, "swpinf")
	spiwatch, pins, lab := p.bin, p.pins, p.Lab

	out, err := netlab.Command(lab.NSB, spiwatch, "-i", lab.Receiver, "-i", "lo", "--xdp-mode", "native",
		"--pin", "--pin-path", pins, "--count", "1", "--interval", "10ms").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitError || !strings.Contains(string(out), "lo") {
		t.Fatalf("run --pin with lo in native mode: %v: %s; want status 1 naming lo", err, out)
	}
	if strings.Contains(string(out), "left attached") {
		t.Errorf("a failed start says it left something attached: %s", out)
	}
	if xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Errorf("%s left attached after the start failed: %s", lab.Receiver, out)
	}
	if ents, err := os.ReadDir(pins); err == nil && len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("pins left in %s after the start failed: %v", pins, names)
	}
}
