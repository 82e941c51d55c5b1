// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/spiwatch/spiwatch/bpf"
)

// PinnedAction is what a pinned link's program does with unknown-SPI packets, as
// it was loaded: readers of the pins (spiwatch stats, a later run) say it, since
// a program left attached by another run may drop.
type PinnedAction struct {
	DropUnknown bool
	DropAbove   uint32 // with DropUnknown: per-source packets/s passed before dropping (0: none)
}

// String is the report's action: "pass" or "drop".
func (a PinnedAction) String() string {
	if a.DropUnknown {
		return "drop"
	}
	return "pass"
}

// ReadPinnedAction reads the settings of the program behind the link pinned at
// path from its read-only data (.rodata), laid out as this build's object lays
// it out; a program from another build is refused rather than misread.
func ReadPinnedAction(path string) (PinnedAction, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return PinnedAction{}, fmt.Errorf("opening pinned link %s: %w", path, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return PinnedAction{}, fmt.Errorf("reading pinned link %s: %w", path, err)
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return PinnedAction{}, fmt.Errorf("opening the program of pinned link %s: %w", path, err)
	}
	defer prog.Close()
	rodata, err := programRodata(prog)
	if err != nil {
		return PinnedAction{}, fmt.Errorf("pinned link %s: %w", path, err)
	}
	return decodeAction(rodata)
}

// programRodata reads the value of the program's .rodata map.
func programRodata(prog *ebpf.Program) ([]byte, error) {
	pi, err := prog.Info()
	if err != nil {
		return nil, fmt.Errorf("reading program info: %w", err)
	}
	ids, ok := pi.MapIDs()
	if !ok {
		return nil, fmt.Errorf("the kernel does not list the program's maps")
	}
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue // gone meanwhile, or not ours to open
		}
		mi, err := m.Info()
		if err != nil || !strings.HasSuffix(mi.Name, ".rodata") {
			m.Close()
			continue
		}
		buf := make([]byte, mi.ValueSize)
		err = m.Lookup(uint32(0), &buf)
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("reading the program's .rodata: %w", err)
		}
		return buf, nil
	}
	return nil, fmt.Errorf("the program has no .rodata map: not spiwatch's program")
}

// decodeAction reads drop_unknown and drop_cost_ns at this build's offsets.
func decodeAction(rodata []byte) (PinnedAction, error) {
	spec, err := bpf.LoadSpiwatch()
	if err != nil {
		return PinnedAction{}, err
	}
	ms := spec.Maps[".rodata"]
	if ms == nil || int(ms.ValueSize) != len(rodata) {
		return PinnedAction{}, fmt.Errorf("the program's settings are %d bytes, this build's %d: it was loaded by another spiwatch version (spiwatch detach, then run again)", len(rodata), valueSize(ms))
	}
	drop, err := rodataUint(spec, rodata, "drop_unknown")
	if err != nil {
		return PinnedAction{}, err
	}
	cost, err := rodataUint(spec, rodata, "drop_cost_ns")
	if err != nil {
		return PinnedAction{}, err
	}
	a := PinnedAction{DropUnknown: drop != 0}
	if a.DropUnknown && cost > 0 {
		a.DropAbove = uint32(1e9 / cost) // the loader's cost is 1e9 / rate
	}
	return a, nil
}

func valueSize(ms *ebpf.MapSpec) uint32 {
	if ms == nil {
		return 0
	}
	return ms.ValueSize
}

// rodataUint reads the named 4- or 8-byte variable from a .rodata value.
func rodataUint(spec *ebpf.CollectionSpec, rodata []byte, name string) (uint64, error) {
	v, ok := spec.Variables[name]
	if !ok {
		return 0, fmt.Errorf("BPF object has no setting %q: rebuild with make generate", name)
	}
	off, size := uint64(v.Offset), uint64(v.Size())
	if off+size > uint64(len(rodata)) {
		return 0, fmt.Errorf("setting %s lies past the program's settings", name)
	}
	b := rodata[off : off+size]
	switch size {
	case 4:
		return uint64(binary.NativeEndian.Uint32(b)), nil
	case 8:
		return binary.NativeEndian.Uint64(b), nil
	}
	return 0, fmt.Errorf("setting %s is %d bytes", name, size)
}
