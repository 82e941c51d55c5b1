// SPDX-License-Identifier: Apache-2.0

package frames

import (
	"encoding/binary"
	"fmt"
)

// ICMP and ICMPv6 error types and codes (RFC 792, RFC 4443).
const (
	ICMPUnreachable      = 3
	ICMPCodePortUnreach  = 3
	ICMPCodeFragNeeded   = 4
	ICMPTimeExceeded     = 11
	ICMPParamProblem     = 12
	ICMPEchoRequest      = 8
	ICMPv6Unreachable    = 1
	ICMPv6CodePortUnrch  = 4
	ICMPv6PacketTooBig   = 2
	ICMPv6TimeExceeded   = 3
	ICMPv6ParamProblem   = 4
	ICMPv6EchoRequest    = 128
	ICMPRFC792QuoteBytes = 8 // RFC 792: the IP header and 8 bytes of its payload
)

// ICMP builds an ICMP message (IPv4 frames) or ICMPv6 message (IPv6 frames):
// type, code, the 4 bytes after the checksum (rest: the MTU of a
// fragmentation-needed or packet-too-big, else 0) and body, normally a quoted
// IP packet (see Quote). The checksum is valid (ICMPv6's over the pseudo-header).
func (f Frame) ICMP(typ, code uint8, rest uint32, body []byte) []byte {
	msg := make([]byte, 8+len(body))
	msg[0], msg[1] = typ, code
	binary.BigEndian.PutUint32(msg[4:8], rest)
	copy(msg[8:], body)
	src, dst := f.addrs()
	if src.Is4() {
		binary.BigEndian.PutUint16(msg[2:4], checksum(nil, msg))
		return f.IP(ProtoICMP, msg)
	}
	binary.BigEndian.PutUint16(msg[2:4], checksum(pseudoHeader(src, dst, ProtoICMPv6, len(msg)), msg))
	return f.IP(ProtoICMPv6, msg)
}

// Quote returns the IP packet of frame (built by these builders: Ethernet, VLAN
// tags) cut to its IP header plus after bytes of what follows it (after < 0:
// all of it), as an ICMP error quotes it. The IPv6 header counts as 40 bytes
// (extension headers are part of what follows).
func Quote(frame []byte, after int) []byte {
	off := 12
	for binary.BigEndian.Uint16(frame[off:]) == TPID8021Q || binary.BigEndian.Uint16(frame[off:]) == TPID8021AD {
		off += 4
	}
	et := binary.BigEndian.Uint16(frame[off:])
	ip := frame[off+2:]
	var hl int
	switch et {
	case EtherTypeIPv4:
		hl = int(ip[0]&0x0f) * 4
		ip = ip[:binary.BigEndian.Uint16(ip[2:4])]
	case EtherTypeIPv6:
		hl = 40
		ip = ip[:40+int(binary.BigEndian.Uint16(ip[4:6]))]
	default:
		panic(fmt.Sprintf("frames: quoting a frame of EtherType %#04x", et))
	}
	if after >= 0 && hl+after < len(ip) {
		ip = ip[:hl+after]
	}
	return append([]byte(nil), ip...)
}

// IKEHeader is an IKEv1 or IKEv2 message header (RFC 2408 3.1, RFC 7296 3.1).
type IKEHeader struct {
	ISPI, RSPI  uint64
	NextPayload uint8
	Version     uint8 // major << 4 | minor: 0x20 IKEv2, 0x10 IKEv1
	Exchange    uint8 // IKEv2: 34 IKE_SA_INIT ... 37 INFORMATIONAL; IKEv1: 2 main, 4 aggressive, 5 informational, 32 quick
	Flags       uint8 // IKEv2: 0x08 initiator, 0x20 response
	MsgID       uint32
}

// IKE exchange types and flags.
const (
	IKEv2SAInit        = 34
	IKEv2Auth          = 35
	IKEv2CreateChildSA = 36
	IKEv2Informational = 37
	IKEv1Main          = 2
	IKEv1Aggressive    = 4
	IKEv1Informational = 5
	IKEv1Quick         = 32
	IKEFlagInitiator   = 0x08
	IKEFlagResponse    = 0x20
)

// Message returns the header with bodyLen bytes of deterministic body; the
// length field counts both.
func (h IKEHeader) Message(bodyLen int) []byte {
	m := make([]byte, IKEHeaderLen+bodyLen)
	binary.BigEndian.PutUint64(m[0:8], h.ISPI)
	binary.BigEndian.PutUint64(m[8:16], h.RSPI)
	m[16], m[17], m[18], m[19] = h.NextPayload, h.Version, h.Exchange, h.Flags
	binary.BigEndian.PutUint32(m[20:24], h.MsgID)
	binary.BigEndian.PutUint32(m[24:28], uint32(len(m)))
	fill(m[IKEHeaderLen:], 0x4b)
	return m
}

// IKEMessage builds a UDP frame carrying msg, after the 4-byte non-ESP marker
// when nonESPMarker is set (IKE on a NAT-T port).
func (f Frame) IKEMessage(sport, dport uint16, nonESPMarker bool, msg []byte) []byte {
	if nonESPMarker {
		msg = append(make([]byte, 4), msg...)
	}
	return f.UDP(sport, dport, msg)
}
