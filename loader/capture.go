// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/spiwatch/spiwatch/bpf"
	"github.com/spiwatch/spiwatch/maps"
)

// Capture returns the capture maps of the loaded object.
func (o *Objects) Capture() (*maps.Capture, error) {
	return maps.CaptureFrom(o.coll.Maps)
}

// CaptureSupported says whether this kernel runs the program's capture code
// (bpf_xdp_load_bytes, bpf_loop, bpf_map_lookup_percpu_elem: Linux 5.19).
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

// RunningNATTPorts returns the NAT-T ports a running spiwatch program was loaded
// with (the volatile consts natt_ports and natt_port_count in its .rodata), from
// the maps RunningMaps opened: spiwatch capture decodes its samples with them.
// Where the constants lie comes from the map's own BTF, so any build of spiwatch
// is read right; without that BTF (reading it needs CAP_SYS_ADMIN), from this
// build's object, if the .rodata sizes agree.
func RunningNATTPorts(ms map[string]*ebpf.Map) ([]uint16, error) {
	var rodata *ebpf.Map
	for name, m := range ms {
		if strings.HasSuffix(name, ".rodata") {
			rodata = m
		}
	}
	if rodata == nil {
		return nil, errors.New("the program has no .rodata map: not a spiwatch build that can be read")
	}
	vars, err := rodataVars(rodata)
	if err != nil {
		return nil, err
	}
	val := make([]byte, rodata.ValueSize())
	if err := rodata.Lookup(uint32(0), val); err != nil {
		return nil, fmt.Errorf("reading the program's .rodata: %w", err)
	}
	ports, okP := vars["natt_ports"]
	count, okC := vars["natt_port_count"]
	switch {
	case !okP || !okC:
		return nil, errors.New("the program's .rodata has no natt_ports or natt_port_count")
	case count.size != 4 || ports.size%2 != 0 || uint64(count.off)+4 > uint64(len(val)) || uint64(ports.off)+uint64(ports.size) > uint64(len(val)):
		return nil, fmt.Errorf("natt_ports (%d bytes at %d) or natt_port_count (%d bytes at %d) do not fit the program's %d-byte .rodata",
			ports.size, ports.off, count.size, count.off, len(val))
	}
	n := binary.NativeEndian.Uint32(val[count.off:])
	if n == 0 || n > ports.size/2 {
		return nil, fmt.Errorf("the program says it has %d NAT-T ports, room for %d", n, ports.size/2)
	}
	out := make([]uint16, n)
	for i := range out {
		out[i] = binary.NativeEndian.Uint16(val[ports.off+uint32(2*i):])
	}
	return out, nil
}

// rodataVar is where a constant lies in .rodata.
type rodataVar struct{ off, size uint32 }

// rodataVars lists the constants of a .rodata map by name: from the map's BTF,
// else from this build's object when its .rodata has the map's size.
func rodataVars(m *ebpf.Map) (map[string]rodataVar, error) {
	info, err := m.Info()
	if err != nil {
		return nil, fmt.Errorf("reading the .rodata map's info: %w", err)
	}
	btfErr := errors.New("the map has no BTF")
	if id, ok := info.BTFID(); ok {
		vars, err := btfVars(id)
		if err == nil {
			return vars, nil
		}
		btfErr = err
	}
	vars, err := embeddedVars(m.ValueSize())
	if err != nil {
		return nil, fmt.Errorf("laying out the program's .rodata: %v; %w", btfErr, err)
	}
	return vars, nil
}

// embeddedVars lists the constants of this build's .rodata, if it has size bytes.
func embeddedVars(size uint32) (map[string]rodataVar, error) {
	spec, err := bpf.LoadSpiwatch()
	if err != nil {
		return nil, fmt.Errorf("reading embedded BPF object: %w", err)
	}
	if ms, ok := spec.Maps[".rodata"]; !ok || ms.ValueSize != size {
		return nil, fmt.Errorf("its %d bytes are not this build's .rodata", size)
	}
	vars := map[string]rodataVar{}
	for name, v := range spec.Variables {
		if v.SectionName == ".rodata" {
			vars[name] = rodataVar{v.Offset, v.Size()}
		}
	}
	return vars, nil
}

func btfVars(id btf.ID) (map[string]rodataVar, error) {
	h, err := btf.NewHandleFromID(id)
	if err != nil {
		return nil, fmt.Errorf("opening the map's BTF: %w", err)
	}
	defer h.Close()
	spec, err := h.Spec(nil)
	if err != nil {
		return nil, fmt.Errorf("reading the map's BTF: %w", err)
	}
	var sec *btf.Datasec
	if err := spec.TypeByName(".rodata", &sec); err != nil {
		return nil, fmt.Errorf("finding .rodata in the map's BTF: %w", err)
	}
	vars := map[string]rodataVar{}
	for _, vs := range sec.Vars {
		if v, ok := vs.Type.(*btf.Var); ok {
			vars[v.Name] = rodataVar{vs.Offset, vs.Size}
		}
	}
	return vars, nil
}
