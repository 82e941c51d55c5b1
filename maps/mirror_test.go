// SPDX-License-Identifier: Apache-2.0

package maps

import (
	"encoding/binary"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/spiwatch/spiwatch/bpf"
	"github.com/spiwatch/spiwatch/internal/classify"
)

// TestMirrors checks every Go mirror against the map specs of the committed object:
// type, sizes, and the offset of every field the C struct has (by name, from BTF).
// It needs no privileges: only the ELF is read.
func TestMirrors(t *testing.T) {
	spec, err := bpf.LoadSpiwatch()
	if err != nil {
		t.Fatalf("reading embedded object: %v", err)
	}
	for _, tc := range []struct {
		name       string
		typ        ebpf.MapType
		key, value any
	}{
		{KnownName, ebpf.PerCPUHash, uint32(0), knownSPI{}},
		{KnownMultiName, ebpf.PerCPUHash, saKey{}, saStats{}},
		{UnknownName, ebpf.LRUHash, unknownKey{}, unknownStats{}},
		{UnknownHotName, ebpf.PerCPUArray, uint32(0), unknownHot{}},
		{CountersName, ebpf.PerCPUArray, uint32(0), swCount{}},
		{TallyName, ebpf.PerCPUArray, uint32(0), uint64(0)},
		{CapCfgName, ebpf.Array, uint32(0), capCfg{}},
		{CapStateName, ebpf.PerCPUArray, uint32(0), capState{}},
		{CapOwnerName, ebpf.Hash, uint32(0), CapOwner{}},
		{ICMPName, ebpf.LRUHash, icmpKey{}, icmpStats{}},
		{IKEName, ebpf.LRUHash, ikeKey{}, ikeStats{}},
		{DiagTallyName, ebpf.PerCPUArray, uint32(0), uint64(0)},
		{DroppedName, ebpf.PerCPUArray, uint32(0), swCount{}},
		{RateName, ebpf.LRUCPUHash, rateKey{}, rateBucket{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms, ok := spec.Maps[tc.name]
			if !ok {
				t.Fatalf("object has no map %s", tc.name)
			}
			if ms.Type != tc.typ {
				t.Errorf("map type %v, maps/ assumes %v", ms.Type, tc.typ)
			}
			if got := binary.Size(tc.key); got != int(ms.KeySize) {
				t.Errorf("key mirror %T is %d bytes, map key is %d", tc.key, got, ms.KeySize)
			}
			if got := binary.Size(tc.value); got != int(ms.ValueSize) {
				t.Errorf("value mirror %T is %d bytes, map value is %d", tc.value, got, ms.ValueSize)
			}
			checkLayout(t, "key", tc.key, ms.Key)
			checkLayout(t, "value", tc.value, ms.Value)
		})
	}

	if bss, ok := spec.Maps[CapOnName]; !ok || bss.ValueSize != 4 {
		t.Errorf("the object's .bss must hold capture_on only (4 bytes): %v", bss)
	}
	// The ring-buffer record's header has no map of its own: it is the head of
	// struct sw_capbuf.
	if buf, ok := spec.Maps["sw_capbuf"]; !ok {
		t.Error("object has no map sw_capbuf")
	} else if st, ok := btf.UnderlyingType(buf.Value).(*btf.Struct); !ok || len(st.Members) != 2 {
		t.Errorf("sw_capbuf's value is %v, want struct {hdr; data}", buf.Value)
	} else {
		if got := binary.Size(SampleHeader{}); got != SampleHeaderSize {
			t.Errorf("SampleHeader is %d bytes, SampleHeaderSize says %d", got, SampleHeaderSize)
		}
		if off := st.Members[1].Offset.Bytes(); off != SampleHeaderSize {
			t.Errorf("sw_capbuf data at offset %d, SampleHeaderSize is %d", off, SampleHeaderSize)
		}
		checkLayout(t, "sample header", SampleHeader{}, st.Members[0].Type)
		if got, want := buf.ValueSize, uint32(SampleHeaderSize+SnapMax); got != want {
			t.Errorf("sw_capbuf value is %d bytes, want header + SnapMax = %d", got, want)
		}
	}
	if got, want := spec.Maps[CountersName].MaxEntries, uint32(MaxIfaces*classify.NumClasses*classify.NumOutcomes); got != want {
		t.Errorf("%s has %d entries, want MaxIfaces*NumClasses*NumOutcomes = %d", CountersName, got, want)
	}
	if got := spec.Maps[DiagTallyName].MaxEntries; got != uint32(reflect.TypeFor[DiagTally]().NumField()) {
		t.Errorf("%s has %d entries, DiagTally reads %d", DiagTallyName, got, reflect.TypeFor[DiagTally]().NumField())
	}
	if got, want := spec.Maps[DroppedName].MaxEntries, uint32(MaxIfaces*classify.NumClasses); got != want {
		t.Errorf("%s has %d entries, want MaxIfaces*NumClasses = %d", DroppedName, got, want)
	}
	if got := spec.Maps[TallyName].MaxEntries; got != uint32(reflect.TypeFor[Tally]().NumField()) {
		t.Errorf("%s has %d entries, Tally reads %d", TallyName, got, reflect.TypeFor[Tally]().NumField())
	}
}

// checkLayout compares a mirror struct's fields with the BTF struct's members: each
// named member (padding excepted) must have a Go field of the same name (ignoring
// case and underscores) at the same offset and of the same size.
func checkLayout(t *testing.T, what string, mirror any, typ btf.Type) {
	t.Helper()
	if typ == nil {
		t.Errorf("%s: map spec has no BTF type", what)
		return
	}
	st, ok := btf.UnderlyingType(typ).(*btf.Struct)
	mt := reflect.TypeOf(mirror)
	if !ok {
		if mt.Kind() == reflect.Struct {
			t.Errorf("%s: mirror %v is a struct, BTF type is %v", what, mt, typ)
		}
		return
	}
	if mt.Kind() != reflect.Struct {
		t.Fatalf("%s: BTF type is struct %s, mirror is %v", what, st.Name, mt)
	}
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "")) }
	fields := map[string]reflect.StructField{}
	for i := range mt.NumField() {
		f := mt.Field(i)
		fields[norm(f.Name)] = f
	}
	for _, m := range st.Members {
		if strings.HasPrefix(m.Name, "_") {
			continue
		}
		f, ok := fields[norm(m.Name)]
		if !ok {
			t.Errorf("%s: struct %s member %s has no field in %v", what, st.Name, m.Name, mt)
			continue
		}
		if off := m.Offset.Bytes(); uint32(f.Offset) != off {
			t.Errorf("%s: %s.%s at offset %d, %v.%s at %d", what, st.Name, m.Name, off, mt, f.Name, f.Offset)
		}
		size, err := btf.Sizeof(m.Type)
		if err != nil {
			t.Errorf("%s: size of %s.%s: %v", what, st.Name, m.Name, err)
			continue
		}
		if int(f.Type.Size()) != size {
			t.Errorf("%s: %s.%s is %d bytes, %v.%s is %d", what, st.Name, m.Name, size, mt, f.Name, f.Type.Size())
		}
	}
}

// TestSAKey checks the address forms of a known-SA key: IPv4 becomes v4-mapped in
// the map and comes back as IPv4, IPv6 stays, and an invalid address means any.
func TestSAKey(t *testing.T) {
	for _, tc := range []struct {
		sa    SA
		daddr [16]byte
		str   string
	}{
		{SA{SPI: 0x1001, Dst: netip.MustParseAddr("192.0.2.2")}, netip.MustParseAddr("::ffff:192.0.2.2").As16(), "0x00001001@192.0.2.2"},
		{SA{SPI: 0xc0ffee01, Dst: netip.MustParseAddr("2001:db8::2")}, netip.MustParseAddr("2001:db8::2").As16(), "0xc0ffee01@2001:db8::2"},
		{SA{SPI: 0x100}, [16]byte{}, "0x00000100@any"},
	} {
		k := tc.sa.key()
		if k.SPI != tc.sa.SPI || k.Daddr != tc.daddr {
			t.Errorf("key of %v = %#x %x, want %#x %x", tc.sa, k.SPI, k.Daddr, tc.sa.SPI, tc.daddr)
		}
		if back := k.sa(); back != tc.sa {
			t.Errorf("key of %v reads back as %v (Is4 %v)", tc.sa, back, back.Dst.Is4())
		}
		if s := tc.sa.String(); s != tc.str {
			t.Errorf("String() = %q, want %q", s, tc.str)
		}
	}
}
