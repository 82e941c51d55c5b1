// SPDX-License-Identifier: Apache-2.0

package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

// TestLeastPrivilege runs spiwatch with only the capabilities docs/spiwatch.service
// grants (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN): it must attach and count. With one
// of them missing it must refuse with a message naming it, and attach nothing.
func TestLeastPrivilege(t *testing.T) {
	testenv.RequireNetns(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		testenv.Unavailable(t, "needs setpriv (util-linux) to drop capabilities")
	}
	spiwatch, gen := buildBinaries(t)
	lab, err := netlab.New("swcaps")
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	withCaps := func(caps string, args ...string) *exec.Cmd {
		return netlab.Command(lab.NSB, "setpriv", append([]string{"--bounding-set=-all," + caps, "--inh-caps=-all", spiwatch}, args...)...)
	}

	s := startCmd(t, withCaps("+bpf,+perfmon,+net_admin", "-i", lab.Receiver, "--json", "--interval", "100ms"))
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xdead count=100"})
	s.waitTotal(t, 100)
	o := s.stop(t)
	if o.Total.Packets != 100 {
		t.Errorf("counted %d packets with the unit's capabilities, want 100", o.Total.Packets)
	}

	// The unit's pinned mode with the same capabilities: pins made, then removed.
	pins := testBPFFS(t)
	if out, err := withCaps("+bpf,+perfmon,+net_admin", "run", "--pin", "--pin-path", pins, "-i", lab.Receiver, "--count", "1", "--interval", "10ms").CombinedOutput(); err != nil {
		t.Errorf("run --pin with the unit's capabilities: %v: %s", err, out)
	}
	if !xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Error("run --pin left nothing attached")
	}
	if out, err := withCaps("+bpf,+perfmon,+net_admin", "detach", "--pin-path", pins).CombinedOutput(); err != nil || xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Errorf("detach with the unit's capabilities: %v: %s", err, out)
	}

	for caps, missing := range map[string]string{
		"+perfmon,+net_admin": "CAP_BPF",
		"+bpf,+perfmon":       "CAP_NET_ADMIN",
		"+bpf,+net_admin":     "CAP_PERFMON",
	} {
		out, err := withCaps(caps, "-i", lab.Receiver).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "missing "+missing) || !strings.Contains(string(out), "setcap") {
			t.Errorf("with %s: %v: %s; want a refusal naming %s and how to grant it", caps, err, out, missing)
		}
		if xdpAttached(t, lab.NSB, lab.Receiver) {
			t.Errorf("with %s: an XDP program is attached", caps)
		}
	}
}
