// SPDX-License-Identifier: Apache-2.0

package privdrop_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiwatch/spiwatch/internal/privdrop"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

func TestKeepBPF(t *testing.T) {
	unreadable := errors.New("open /proc/sys/kernel/unprivileged_bpf_disabled: permission denied")
	for _, c := range []struct {
		release, sysctl string
		readErr         error
		keep            bool
		why             string // part of the reason, when kept
	}{
		// Ubuntu 22.04: every bpf() command needs CAP_BPF.
		{"5.15.0-91-generic", "2\n", nil, true, "Linux 5.15.0-91-generic refuses map reads without it while kernel.unprivileged_bpf_disabled is 2 (fixed in 5.19)"},
		{"5.18.19", "1\n", nil, true, "is 1"},
		{"5.15.0", "0\n", nil, false, ""}, // unprivileged bpf() allowed
		{"5.19.0", "2\n", nil, false, ""},
		{"5.19.0-rc1", "2", nil, false, ""},
		{"6.1.0", "1\n", nil, false, ""},
		{"6.18.44-fc-v669", "2\n", nil, false, ""},
		{"10.0.0", "2\n", nil, false, ""},
		{"5.4.0-150-generic", "2\n", nil, true, "Linux 5.4.0-150-generic"},
		// What cannot be told keeps it.
		{"5.15.0", "", unreadable, true, "reading that setting failed: open /proc/sys/kernel/unprivileged_bpf_disabled: permission denied"},
		{"5.15.0", "two", nil, true, "is two"},
		{"", "2\n", nil, true, `kernel release "" (not understood, so taken as older than 5.19)`},
		{"linux", "2\n", nil, true, "not understood"},
		// New kernels need nothing, whatever the setting says.
		{"6.1.0", "", unreadable, false, ""},
	} {
		t.Run(fmt.Sprintf("%s/%q/%v", c.release, c.sysctl, c.readErr != nil), func(t *testing.T) {
			keep, why := privdrop.KeepBPF(c.release, c.sysctl, c.readErr)
			if keep != c.keep {
				t.Errorf("keep %v (%s), want %v", keep, why, c.keep)
			}
			if !strings.Contains(why, c.why) || (c.why == "") != (why == "") {
				t.Errorf("reason %q, want one with %q", why, c.why)
			}
		})
	}
}

// TestDropKeepsAsUser switches to nobody keeping CAP_BPF, as spiwatch --user does
// on a kernel that needs it for map reads: the capability must survive the switch
// (the kernel clears them all when the uid leaves 0, unless told to keep them), and
// a map made before must still be read. The dropper is built without cgo, as make
// build builds spiwatch: with cgo, Go cannot change every thread's credentials.
func TestDropKeepsAsUser(t *testing.T) {
	testenv.RequireBPF(t)
	if _, err := user.Lookup("nobody"); err != nil {
		testenv.Unavailable(t, "needs the user nobody: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "dropper")
	build := exec.Command("go", "build", "-o", bin, "./testdata/dropper")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the dropper: %v\n%s", err, out)
	}
	for _, c := range []struct {
		name   string
		caps   []int
		capEff string
	}{
		{"CAP_BPF", []int{privdrop.CapBPF}, fmt.Sprintf("%016x", uint64(1)<<39)},
		{"CAP_NET_ADMIN and CAP_BPF", []int{privdrop.CapNetAdmin, privdrop.CapBPF}, fmt.Sprintf("%016x", uint64(1)<<12|uint64(1)<<39)},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"nobody"}
			for _, cp := range c.caps {
				args = append(args, fmt.Sprint(cp))
			}
			out, err := exec.Command(bin, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("dropper: %v\n%s", err, out)
			}
			want := fmt.Sprintf("Uid 65534 65534 65534\nCapPrm %s\nCapEff %s\nmap read\n", c.capEff, c.capEff)
			if string(out) != want {
				t.Errorf("dropper said\n%s\nwant\n%s", out, want)
			}
		})
	}
}
