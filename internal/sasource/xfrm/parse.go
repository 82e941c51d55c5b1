// SPDX-License-Identifier: Apache-2.0

package xfrm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Message types and attributes of NETLINK_XFRM (linux/xfrm.h). Kept here, not taken
// from netlink/nl, so the parser builds and is fuzzed on any OS.
const (
	msgNewSA   = 0x10 // XFRM_MSG_NEWSA
	msgDelSA   = 0x11 // XFRM_MSG_DELSA
	msgGetSA   = 0x12 // XFRM_MSG_GETSA
	msgExpire  = 0x18 // XFRM_MSG_EXPIRE
	msgUpdSA   = 0x1a // XFRM_MSG_UPDSA
	msgFlushSA = 0x1c // XFRM_MSG_FLUSHSA
	msgMigrate = 0x21 // XFRM_MSG_MIGRATE

	attrAlgAuth      = 1  // XFRMA_ALG_AUTH
	attrAlgCrypt     = 2  // XFRMA_ALG_CRYPT
	attrEncap        = 4  // XFRMA_ENCAP
	attrSA           = 6  // XFRMA_SA
	attrAlgAEAD      = 18 // XFRMA_ALG_AEAD
	attrAlgAuthTrunc = 20 // XFRMA_ALG_AUTH_TRUNC
	attrMark         = 21 // XFRMA_MARK
	attrIfID         = 31 // XFRMA_IF_ID

	protoESP    = 50  // IPPROTO_ESP
	protoAny    = 255 // IPSEC_PROTO_ANY
	afInet      = 2   // AF_INET
	afInet6     = 10  // AF_INET6
	nlaTypeMask = 0x3fff

	// struct sizes on Linux, the same on every architecture spiwatch builds for
	// (the kernel's xfrm_user compat layer exists only for 32-bit x86 users).
	sizeUsersaInfo  = 224 // struct xfrm_usersa_info
	sizeUsersaID    = 24  // struct xfrm_usersa_id
	sizeUserExpire  = 232 // struct xfrm_user_expire: usersa_info, hard, pad
	sizeUsersaFlush = 1   // struct xfrm_usersa_flush
	offID           = 56  // xfrm_usersa_info.id (after the selector)
	offFamily       = 212 // xfrm_usersa_info.family
)

// Kind is what an xfrm message does to the SA table.
type Kind int

// Kinds of events.
const (
	Ignore   Kind = iota // not an ESP state change: another protocol, a soft expire, a policy
	Add                  // NEWSA, UPDSA or a dumped state: the state exists now
	Remove               // DELSA or a hard EXPIRE: the state is gone
	FlushAll             // FLUSHSA covering ESP: every state is gone
	Reread               // MIGRATE: states moved to new addresses, with no SA event: read them all again
)

func (k Kind) String() string {
	return [...]string{"ignore", "add", "remove", "flush", "reread"}[k]
}

// ID names one kernel state. The kernel's lookup key is destination, SPI, protocol
// and mark (and the xfrm interface id): two states may share SPI and destination and
// differ in mark, so the table counts them apart and the known SA stays until both go.
type ID struct {
	Dst          netip.Addr
	SPI          uint32
	Mark, MarkMs uint32 // XFRMA_MARK value and mask; 0 when absent
	IfID         uint32 // XFRMA_IF_ID; 0 when absent
}

// State is one ESP state as a message describes it.
type State struct {
	ID
	Src    netip.Addr
	Encap  bool // UDP-encapsulated (NAT-T, ESP-in-UDP)
	Larval bool // no cipher yet: an SPI reserved with ALLOCSPI, not installed
}

// Event is one parsed message.
type Event struct {
	Kind  Kind
	State State // for Add and Remove
}

// ErrTruncated says a message is shorter than its type needs.
var ErrTruncated = errors.New("truncated xfrm message")

// Parse reads one NETLINK_XFRM message (type and payload, without the netlink
// header) as the kernel sends it in a dump or on the SA and EXPIRE groups. It never
// panics on any input; bad input is an error naming the message type.
func Parse(typ uint16, data []byte) (Event, error) {
	switch typ {
	case msgNewSA, msgUpdSA:
		st, esp, err := parseInfo(data)
		if err != nil || !esp {
			return Event{}, wrap(typ, err)
		}
		if err := parseAttrs(data[sizeUsersaInfo:], &st); err != nil {
			return Event{}, wrap(typ, err)
		}
		return Event{Kind: Add, State: st}, nil
	case msgDelSA:
		// struct xfrm_usersa_id, then XFRMA_SA (the whole state) and the extras.
		if len(data) < sizeUsersaID {
			return Event{}, wrap(typ, ErrTruncated)
		}
		if data[22] != protoESP {
			return Event{}, nil
		}
		family := binary.NativeEndian.Uint16(data[20:])
		dst, err := addr(family, data[0:16])
		if err != nil {
			return Event{}, wrap(typ, err)
		}
		st := State{ID: ID{Dst: dst, SPI: binary.BigEndian.Uint32(data[16:20])}}
		if err := parseAttrs(data[sizeUsersaID:], &st); err != nil {
			return Event{}, wrap(typ, err)
		}
		return Event{Kind: Remove, State: st}, nil
	case msgExpire:
		if len(data) < sizeUserExpire {
			return Event{}, wrap(typ, ErrTruncated)
		}
		st, esp, err := parseInfo(data)
		if err != nil || !esp {
			return Event{}, wrap(typ, err)
		}
		if data[sizeUsersaInfo] == 0 {
			return Event{}, nil // soft expire: the state stays until rekeyed or hard-expired
		}
		if err := parseAttrs(data[sizeUserExpire:], &st); err != nil {
			return Event{}, wrap(typ, err)
		}
		return Event{Kind: Remove, State: st}, nil
	case msgFlushSA:
		if len(data) < sizeUsersaFlush {
			return Event{}, wrap(typ, ErrTruncated)
		}
		// The kernel flushes states whose protocol matches: 0 and IPSEC_PROTO_ANY
		// match ESP (xfrm_id_proto_match).
		switch data[0] {
		case 0, protoESP, protoAny:
			return Event{Kind: FlushAll}, nil
		}
		return Event{}, nil
	case msgMigrate:
		// The kernel moved states (and policies) to new addresses: it adds
		// each moved copy and deletes the original without a NEWSA or DELSA
		// (xfrm_migrate), so the source can only read the states again. The
		// message names addresses, not SPIs, and may move no ESP state at all:
		// nothing in it is needed.
		return Event{Kind: Reread}, nil
	}
	return Event{}, nil
}

func wrap(typ uint16, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("xfrm message type %#x: %w", typ, err)
}

// parseInfo reads struct xfrm_usersa_info; esp is false for other protocols.
func parseInfo(b []byte) (st State, esp bool, err error) {
	if len(b) < sizeUsersaInfo {
		return State{}, false, ErrTruncated
	}
	if b[offID+20] != protoESP {
		return State{}, false, nil
	}
	family := binary.NativeEndian.Uint16(b[offFamily:])
	dst, err := addr(family, b[offID:offID+16])
	if err != nil {
		return State{}, false, err
	}
	src, err := addr(family, b[offID+24:offID+40])
	if err != nil {
		return State{}, false, err
	}
	// Until parseAttrs finds a cipher, assume none: a state without one is larval.
	return State{ID: ID{Dst: dst, SPI: binary.BigEndian.Uint32(b[offID+16:])}, Src: src, Larval: true}, true, nil
}

func addr(family uint16, b []byte) (netip.Addr, error) {
	switch family {
	case afInet:
		return netip.AddrFrom4([4]byte(b[:4])), nil
	case afInet6:
		return netip.AddrFrom16([16]byte(b[:16])), nil
	}
	return netip.Addr{}, fmt.Errorf("address family %d is neither IPv4 nor IPv6", family)
}

// parseAttrs walks the netlink attributes after the fixed part.
func parseAttrs(b []byte, st *State) error {
	for len(b) >= 4 {
		n := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask
		if n < 4 || n > len(b) {
			return fmt.Errorf("attribute %d: length %d does not fit the %d bytes left", typ, n, len(b))
		}
		v := b[4:n]
		switch typ {
		case attrAlgCrypt, attrAlgAEAD:
			st.Larval = false
		case attrEncap:
			st.Encap = true
		case attrMark:
			if len(v) < 8 {
				return fmt.Errorf("attribute XFRMA_MARK: %d bytes, want 8", len(v))
			}
			st.Mark, st.MarkMs = binary.NativeEndian.Uint32(v), binary.NativeEndian.Uint32(v[4:])
		case attrIfID:
			if len(v) < 4 {
				return fmt.Errorf("attribute XFRMA_IF_ID: %d bytes, want 4", len(v))
			}
			st.IfID = binary.NativeEndian.Uint32(v)
		case attrSA:
			// DELSA's copy of the whole state: its source address and protocol.
			if inner, esp, err := parseInfo(v); err == nil && esp {
				st.Src = inner.Src
			}
		}
		adv := (n + 3) &^ 3
		if adv > len(b) {
			break
		}
		b = b[adv:]
	}
	return nil
}
