// SPDX-License-Identifier: Apache-2.0

package xfrm

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/spiwatch/spiwatch/maps"
)

// Constructed messages laid out as linux/xfrm.h says, the way the kernel sends them.

func putAddr(b []byte, a netip.Addr) {
	if a.Is4() {
		v := a.As4()
		copy(b, v[:])
		return
	}
	v := a.As16()
	copy(b, v[:])
}

func family(a netip.Addr) uint16 {
	if a.Is4() {
		return afInet
	}
	return afInet6
}

// info is struct xfrm_usersa_info.
func info(src, dst netip.Addr, spi uint32, proto byte) []byte {
	b := make([]byte, sizeUsersaInfo)
	putAddr(b[offID:], dst)
	binary.BigEndian.PutUint32(b[offID+16:], spi)
	b[offID+20] = proto
	putAddr(b[offID+24:], src)
	binary.NativeEndian.PutUint16(b[offFamily:], family(dst))
	return b
}

func attr(typ uint16, v []byte) []byte {
	n := 4 + len(v)
	b := make([]byte, (n+3)&^3)
	binary.NativeEndian.PutUint16(b, uint16(n))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[4:], v)
	return b
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func u32s(vs ...uint32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.NativeEndian.PutUint32(b[4*i:], v)
	}
	return b
}

var (
	v4a   = netip.MustParseAddr("198.51.100.1")
	v4b   = netip.MustParseAddr("198.51.100.2")
	v6a   = netip.MustParseAddr("2001:db8::1")
	v6b   = netip.MustParseAddr("2001:db8::2")
	crypt = attr(attrAlgCrypt, make([]byte, 68+16)) // struct xfrm_algo: name[64], key_len, key
	aead  = attr(attrAlgAEAD, make([]byte, 72+20))
	encap = attr(attrEncap, make([]byte, 24)) // struct xfrm_encap_tmpl
)

func newSA(typ uint16, src, dst netip.Addr, spi uint32, attrs ...[]byte) []byte {
	return cat(append([][]byte{info(src, dst, spi, protoESP)}, attrs...)...)
}

func delSA(src, dst netip.Addr, spi uint32, attrs ...[]byte) []byte {
	id := make([]byte, sizeUsersaID)
	putAddr(id, dst)
	binary.BigEndian.PutUint32(id[16:], spi)
	binary.NativeEndian.PutUint16(id[20:], family(dst))
	id[22] = protoESP
	return cat(append([][]byte{id, attr(attrSA, info(src, dst, spi, protoESP))}, attrs...)...)
}

func expire(src, dst netip.Addr, spi uint32, hard bool, attrs ...[]byte) []byte {
	b := make([]byte, sizeUserExpire)
	copy(b, info(src, dst, spi, protoESP))
	if hard {
		b[sizeUsersaInfo] = 1
	}
	return cat(append([][]byte{b}, attrs...)...)
}

func TestParse(t *testing.T) {
	ah := info(v4a, v4b, 0x1234, 51) // AH
	for _, tc := range []struct {
		name string
		typ  uint16
		data []byte
		want Event
	}{
		{"newsa v4 plain", msgNewSA, newSA(msgNewSA, v4a, v4b, 0xc0ffee01, crypt),
			Event{Add, State{ID: ID{Dst: v4b, SPI: 0xc0ffee01}, Src: v4a}}},
		{"updsa v6 aead encap", msgUpdSA, newSA(msgUpdSA, v6a, v6b, 0x1001, aead, encap),
			Event{Add, State{ID: ID{Dst: v6b, SPI: 0x1001}, Src: v6a, Encap: true}}},
		{"newsa with mark and if_id", msgNewSA, newSA(msgNewSA, v4a, v4b, 0x2002, crypt, attr(attrMark, u32s(7, 0xff)), attr(attrIfID, u32s(42))),
			Event{Add, State{ID: ID{Dst: v4b, SPI: 0x2002, Mark: 7, MarkMs: 0xff, IfID: 42}, Src: v4a}}},
		{"larval: no cipher", msgNewSA, newSA(msgNewSA, v4a, v4b, 0x3003),
			Event{Add, State{ID: ID{Dst: v4b, SPI: 0x3003}, Src: v4a, Larval: true}}},
		{"newsa AH ignored", msgNewSA, ah, Event{}},
		{"delsa v6", msgDelSA, delSA(v6a, v6b, 0x1001, attr(attrMark, u32s(7, 0xff))),
			Event{Remove, State{ID: ID{Dst: v6b, SPI: 0x1001, Mark: 7, MarkMs: 0xff}, Src: v6a}}},
		{"hard expire", msgExpire, expire(v4a, v4b, 0x4004, true),
			Event{Remove, State{ID: ID{Dst: v4b, SPI: 0x4004}, Src: v4a, Larval: true}}},
		{"soft expire ignored", msgExpire, expire(v4a, v4b, 0x4004, false), Event{}},
		{"flush any", msgFlushSA, []byte{protoAny}, Event{Kind: FlushAll}},
		{"flush esp", msgFlushSA, []byte{protoESP}, Event{Kind: FlushAll}},
		{"flush 0", msgFlushSA, []byte{0, 0, 0, 0}, Event{Kind: FlushAll}},
		{"flush AH only", msgFlushSA, []byte{51}, Event{}},
		{"policy ignored", 0x13, make([]byte, 8), Event{}},
		{"migrate: read again", msgMigrate, make([]byte, 64), Event{Kind: Reread}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.typ, tc.data)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	bad := info(v4a, v4b, 1, protoESP)
	binary.NativeEndian.PutUint16(bad[offFamily:], 7)
	for _, tc := range []struct {
		name string
		typ  uint16
		data []byte
		want string
	}{
		{"short newsa", msgNewSA, make([]byte, sizeUsersaInfo-1), "truncated"},
		{"short delsa", msgDelSA, make([]byte, 10), "truncated"},
		{"short expire", msgExpire, info(v4a, v4b, 1, protoESP), "truncated"},
		{"empty flush", msgFlushSA, nil, "truncated"},
		{"bad family", msgNewSA, bad, "address family 7"},
		{"attribute past the end", msgNewSA, cat(info(v4a, v4b, 1, protoESP), []byte{200, 0, 2, 0, 0, 0, 0, 0}), "does not fit"},
		{"attribute shorter than its header", msgNewSA, cat(info(v4a, v4b, 1, protoESP), []byte{2, 0, 2, 0}), "does not fit"},
		{"short mark", msgNewSA, cat(info(v4a, v4b, 1, protoESP), attr(attrMark, u32s(1))), "XFRMA_MARK"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.typ, tc.data)
			if err == nil || !contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if tc.want == "truncated" && !errors.Is(err, ErrTruncated) {
				t.Fatalf("error %v is not ErrTruncated", err)
			}
		})
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func mustParse(t *testing.T, typ uint16, data []byte) Event {
	t.Helper()
	ev, err := Parse(typ, data)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestTable(t *testing.T) {
	local := func(a netip.Addr) bool { return a == v4b || a == v6b }
	tb := NewTable()
	steps := []struct {
		typ     uint16
		data    []byte
		changed bool
		want    []maps.SA
	}{
		{msgNewSA, newSA(msgNewSA, v4a, v4b, 0x1000, crypt), true, []maps.SA{{SPI: 0x1000, Dst: v4b}}},
		// outbound (destination is the peer): kept, never known
		{msgNewSA, newSA(msgNewSA, v4b, v4a, 0x2000, crypt), true, []maps.SA{{SPI: 0x1000, Dst: v4b}}},
		// the same state again: nothing changes
		{msgUpdSA, newSA(msgUpdSA, v4a, v4b, 0x1000, crypt), false, []maps.SA{{SPI: 0x1000, Dst: v4b}}},
		{msgNewSA, newSA(msgNewSA, v6a, v6b, 0x0fff, aead, encap), true, []maps.SA{{SPI: 0x0fff, Dst: v6b}, {SPI: 0x1000, Dst: v4b}}},
		// larval (ALLOCSPI): not known until UPDSA gives it a cipher
		{msgNewSA, newSA(msgNewSA, v4a, v4b, 0x3000), true, []maps.SA{{SPI: 0x0fff, Dst: v6b}, {SPI: 0x1000, Dst: v4b}}},
		{msgUpdSA, newSA(msgUpdSA, v4a, v4b, 0x3000, crypt), true, []maps.SA{{SPI: 0x0fff, Dst: v6b}, {SPI: 0x1000, Dst: v4b}, {SPI: 0x3000, Dst: v4b}}},
		// a second state with the same SPI and destination but another mark
		{msgNewSA, newSA(msgNewSA, v4a, v4b, 0x1000, crypt, attr(attrMark, u32s(1, 1))), true, []maps.SA{{SPI: 0x0fff, Dst: v6b}, {SPI: 0x1000, Dst: v4b}, {SPI: 0x3000, Dst: v4b}}},
		{msgDelSA, delSA(v4a, v4b, 0x1000), true, []maps.SA{{SPI: 0x0fff, Dst: v6b}, {SPI: 0x1000, Dst: v4b}, {SPI: 0x3000, Dst: v4b}}},
		{msgExpire, expire(v4a, v4b, 0x1000, true, attr(attrMark, u32s(1, 1))), true, []maps.SA{{SPI: 0x0fff, Dst: v6b}, {SPI: 0x3000, Dst: v4b}}},
		{msgExpire, expire(v4a, v4b, 0x3000, false), false, []maps.SA{{SPI: 0x0fff, Dst: v6b}, {SPI: 0x3000, Dst: v4b}}},
		{msgDelSA, delSA(v4a, v4b, 0x9999), false, []maps.SA{{SPI: 0x0fff, Dst: v6b}, {SPI: 0x3000, Dst: v4b}}},
		{msgFlushSA, []byte{protoAny}, true, nil},
		{msgFlushSA, []byte{protoAny}, false, nil},
	}
	for i, s := range steps {
		if got := tb.Apply(mustParse(t, s.typ, s.data)); got != s.changed {
			t.Errorf("step %d: changed %v, want %v", i, got, s.changed)
		}
		if got := tb.Inbound(local); !reflect.DeepEqual(got, s.want) {
			t.Errorf("step %d: inbound %v, want %v", i, got, s.want)
		}
	}
	tb.Reset([]State{{ID: ID{Dst: v4b, SPI: 5}}, {ID: ID{Dst: v4a, SPI: 6}}})
	if got, want := tb.Inbound(local), []maps.SA{{SPI: 5, Dst: v4b}}; !reflect.DeepEqual(got, want) || tb.Len() != 2 {
		t.Errorf("after Reset: inbound %v (of %d), want %v (of 2)", got, tb.Len(), want)
	}
}

// FuzzParse: no input makes Parse panic, and what it accepts is self-consistent.
func FuzzParse(f *testing.F) {
	f.Add(uint16(msgNewSA), newSA(msgNewSA, v4a, v4b, 0x1000, crypt, encap, attr(attrMark, u32s(1, 2))))
	f.Add(uint16(msgUpdSA), newSA(msgUpdSA, v6a, v6b, 0x1000, aead))
	f.Add(uint16(msgDelSA), delSA(v6a, v6b, 0x1000, attr(attrIfID, u32s(3))))
	f.Add(uint16(msgExpire), expire(v4a, v4b, 0x1000, true))
	f.Add(uint16(msgFlushSA), []byte{protoAny})
	f.Fuzz(func(t *testing.T, typ uint16, data []byte) {
		ev, err := Parse(typ, data)
		if err != nil {
			if ev != (Event{}) {
				t.Fatalf("error %v with a non-empty event %+v", err, ev)
			}
			return
		}
		switch ev.Kind {
		case Add, Remove:
			if !ev.State.Dst.IsValid() || (!ev.State.Dst.Is4() && !ev.State.Dst.Is6()) {
				t.Fatalf("%v event without a destination: %+v", ev.Kind, ev)
			}
		case FlushAll, Ignore, Reread:
			if ev.State != (State{}) {
				t.Fatalf("%v event with a state: %+v", ev.Kind, ev)
			}
		}
		tb := NewTable()
		tb.Apply(ev)
		_ = tb.Inbound(func(netip.Addr) bool { return true })
	})
}
