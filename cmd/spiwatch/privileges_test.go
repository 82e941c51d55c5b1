// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/privdrop"
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
	lab := newLab(t, "swcaps")
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

// procStatus reads fields of /proc/PID/status.
func procStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return ""
}

// TestDropsPrivileges reads the running spiwatch's capability sets: after attaching
// it keeps none (with --wait-iface, only what attaching again needs; following xfrm,
// CAP_NET_ADMIN; on kernels that need it for map reads, CAP_BPF), with --user it
// runs as that user, and it still counts.
func TestDropsPrivileges(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	for _, c := range []struct {
		name    string
		args    []string
		capEff  uint64
		uidWant string
	}{
		{"default", nil, 0, "0"},
		// Attaching again uses the program already loaded: CAP_BPF and
		// CAP_NET_ADMIN, not CAP_PERFMON (which with CAP_BPF loads tracing programs).
		{"wait-iface", []string{"--wait-iface"}, 1<<12 | 1<<39, "0"},
		{"user", []string{"--user", "nobody"}, 0, "65534"},
		// The xfrm source dumps again after lost events: CAP_NET_ADMIN stays, also as another user.
		{"user xfrm", []string{"--user", "nobody", "--known-from", "xfrm"}, 1 << 12, "65534"},
	} {
		t.Run(c.name, func(t *testing.T) {
			lab := newLab(t, "swdrop")
			s := startSpiwatch(t, spiwatch, lab.NSB, append([]string{"-i", lab.Receiver, "--json", "--interval", "100ms"}, c.args...)...)
			pid := s.cmd.Process.Pid
			want := c.capEff
			// Before 5.19 with kernel.unprivileged_bpf_disabled set, map reads need
			// CAP_BPF: it stays, also as another user, and spiwatch says why.
			if keep, why := privdrop.KeepBPFHere(); keep && want&(1<<39) == 0 {
				want |= 1 << 39
				if !strings.Contains(s.stderr.String(), "spiwatch: keeping CAP_BPF: "+why) {
					t.Errorf("stderr does not say why CAP_BPF is kept (%s):\n%s", why, s.stderr.String())
				}
			}
			for _, set := range []string{"CapEff", "CapPrm"} {
				if got := procStatus(t, pid, set); got != fmt.Sprintf("%016x", want) {
					t.Errorf("%s %s, want %016x", set, got, want)
				}
			}
			if uid := strings.Fields(procStatus(t, pid, "Uid")); uid[0] != c.uidWant || uid[1] != c.uidWant || uid[2] != c.uidWant {
				t.Errorf("Uid %v, want %s", uid, c.uidWant)
			}
			runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xdead count=25"})
			s.waitTotal(t, 25)
			if o := s.stop(t); o.Total.Packets != 25 {
				t.Errorf("counted %d without privileges, want 25", o.Total.Packets)
			}
			if xdpAttached(t, lab.NSB, lab.Receiver) {
				t.Error("still attached after exit")
			}
		})
	}
	var out, errOut strings.Builder
	if code := run([]string{"-i", "lo", "--user", "nobody", "--wait-iface"}, &out, &errOut); code != exitUsage || !strings.Contains(errOut.String(), "--user and --wait-iface") {
		t.Errorf("--user with --wait-iface: %d %s", code, errOut.String())
	}
}
