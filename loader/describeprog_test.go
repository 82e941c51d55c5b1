// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/spiwatch/spiwatch/internal/testenv"
)

// TestDescribeProg: a program is named with its id; one that cannot be read
// (gone, or spiwatch without CAP_SYS_ADMIN after dropping privileges) is still
// given by id, with why its name is missing, never as "?".
func TestDescribeProg(t *testing.T) {
	testenv.RequireBPF(t)
	load := func(name string) ebpf.ProgramID {
		t.Helper()
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ebpf.XDP, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, ok := info.ID()
		if !ok {
			t.Fatal("the kernel gives no program id")
		}
		return id
	}
	named, unnamed := load("sw_describe"), load("")
	if got, want := describeProg(named), fmt.Sprintf(`"sw_describe" (id %d)`, named); got != want {
		t.Errorf("named program: %q, want %q", got, want)
	}
	if got, want := describeProg(unnamed), fmt.Sprintf("id %d (no name)", unnamed); got != want {
		t.Errorf("unnamed program: %q, want %q", got, want)
	}
	// An id no program has: opening it fails as it does for a program gone.
	const gone = ebpf.ProgramID(0xfffffff0)
	got := describeProg(gone)
	for _, want := range []string{"id 4294967280", "not readable", "no such file or directory", "bpftool prog show id 4294967280"} {
		if !strings.Contains(got, want) {
			t.Errorf("unreadable program: %q lacks %q", got, want)
		}
	}
	if strings.Contains(got, `"?"`) {
		t.Errorf("unreadable program: %q", got)
	}
}
