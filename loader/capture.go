// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/spiwatch/spiwatch/maps"
)

// Capture returns the capture maps of the loaded object.
func (o *Objects) Capture() (*maps.Capture, error) {
	return maps.CaptureFrom(o.coll.Maps)
}

// CaptureSupported says whether this kernel runs the program's capture code
// (bpf_xdp_load_bytes, Linux 5.18).
func CaptureSupported() bool { return captureSupported() == 1 }

// ProgramOn returns the ID of the XDP program attached to the interface, if any.
func ProgramOn(ifindex int) (ebpf.ProgramID, bool) {
	x := xdpState(ifindex)
	if x == nil {
		return 0, false
	}
	return ebpf.ProgramID(x.ProgId), true
}

// RunningMaps opens the maps of a spiwatch program already loaded (found on an
// interface by ProgramOn), pinned or not: spiwatch capture uses the maps of the
// spiwatch run beside it, so both count into one set. It fails, naming the
// program, when the program is not spiwatch's.
func RunningMaps(id ebpf.ProgramID) (map[string]*ebpf.Map, func(), error) {
	prog, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return nil, nil, fmt.Errorf("opening XDP program %d: %w", id, err)
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return nil, nil, fmt.Errorf("reading XDP program %d: %w", id, err)
	}
	if info.Name != progName {
		return nil, nil, fmt.Errorf("the XDP program there is %s, not spiwatch's", describeProg(id))
	}
	ids, ok := info.MapIDs()
	if !ok {
		return nil, nil, fmt.Errorf("the kernel does not list the maps of program %d (Linux 4.15+)", id)
	}
	out := map[string]*ebpf.Map{}
	closeAll := func() {
		for _, m := range out {
			m.Close()
		}
	}
	for _, mid := range ids {
		m, err := ebpf.NewMapFromID(mid)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("opening map %d of program %d: %w", mid, id, err)
		}
		mi, err := m.Info()
		if err != nil {
			m.Close()
			closeAll()
			return nil, nil, fmt.Errorf("reading map %d of program %d: %w", mid, id, err)
		}
		if _, dup := out[mi.Name]; dup || mi.Name == "" {
			m.Close()
			continue
		}
		out[mi.Name] = m
	}
	return out, closeAll, nil
}
