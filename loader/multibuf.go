// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// The classifier is multi-buffer aware (section xdp.frags): drivers refuse an MTU
// above about one page to XDP programs that are not, so without it attaching would
// fail on a jumbo-frame interface, and a jumbo MTU change would be refused while
// spiwatch is attached. Linux before 5.18 knows no such flag: there the program
// loads without it, and MultiBuffer says why.

var (
	mbOnce sync.Once
	mbErr  error
)

// MultiBufferSupported tells whether the kernel loads multi-buffer XDP programs
// (BPF_F_XDP_HAS_FRAGS, Linux 5.18); the error says why not.
func MultiBufferSupported() error {
	mbOnce.Do(func() {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type:         ebpf.XDP,
			Flags:        unix.BPF_F_XDP_HAS_FRAGS,
			License:      "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
		})
		switch {
		case err == nil:
			p.Close()
		case errors.Is(err, unix.EINVAL):
			mbErr = errors.New("this kernel has no multi-buffer XDP (Linux 5.18 or later): interfaces with an MTU above about 3,500 bytes cannot be watched in native mode")
		default:
			mbErr = fmt.Errorf("probing multi-buffer XDP: %w", err)
		}
	})
	return mbErr
}

// dropMultiBuffer loads the program without the multi-buffer flag where the kernel
// lacks it; the reason is kept for Objects.MultiBuffer.
func dropMultiBuffer(spec *ebpf.CollectionSpec) error {
	err := MultiBufferSupported()
	if err != nil {
		if p := spec.Programs[progName]; p != nil {
			p.Flags &^= unix.BPF_F_XDP_HAS_FRAGS
		}
	}
	return err
}
