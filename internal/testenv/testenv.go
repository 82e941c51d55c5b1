// SPDX-License-Identifier: Apache-2.0

// Package testenv decides whether a privileged test can run here. With CI=true a
// missing privilege or kernel feature is a failure, never a skip: CI must prove the
// BPF tests ran.
package testenv

import (
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// CI reports whether the tests run in CI (CI=true).
func CI() bool { return os.Getenv("CI") == "true" }

// Unavailable skips the test, or fails it under CI, with the reason.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if CI() {
		t.Fatalf("CI=true, but: "+format, args...)
	}
	t.Skipf("skipped: "+format, args...)
}

var (
	bpfOnce sync.Once
	bpfErr  error
)

// RequireBPF needs root and a kernel that loads an XDP program.
func RequireBPF(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root to load BPF programs (run go test as root)")
		return
	}
	bpfOnce.Do(func() {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type:         ebpf.XDP,
			License:      "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
		})
		if err == nil {
			p.Close()
		}
		bpfErr = err
	})
	if bpfErr != nil {
		Unavailable(t, "this kernel does not load XDP programs: %v", bpfErr)
	}
}

// RequireNetns needs root, BPF and the ip command for network namespaces.
func RequireNetns(t testing.TB) {
	t.Helper()
	RequireBPF(t)
	if _, err := exec.LookPath("ip"); err != nil {
		Unavailable(t, "needs the ip command (iproute2) for network namespaces")
	}
}
