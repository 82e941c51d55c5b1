// SPDX-License-Identifier: Apache-2.0

// Package frames builds complete Ethernet frames from a declarative
// description, so that tests, the traffic generator, the demo and the
// benchmarks all send the same well-formed bytes (valid IPv4 header, UDP and
// TCP checksums) and only break them on purpose.
//
// The builders panic on a description that cannot be encoded (mixed address
// families, over-long IPv4 options): that is a bug in the caller, not input.
package frames

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// Default addresses, used when a Frame leaves them unset: locally
// administered MACs and documentation prefixes (RFC 5737, RFC 3849).
var (
	DefaultSrcMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	DefaultDstMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	DefaultSrc4   = netip.MustParseAddr("192.0.2.1")
	DefaultDst4   = netip.MustParseAddr("192.0.2.2")
	DefaultSrc6   = netip.MustParseAddr("2001:db8::1")
	DefaultDst6   = netip.MustParseAddr("2001:db8::2")
)

// EtherTypes and IP protocol numbers used by the builders.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeIPv6 = 0x86dd
	TPID8021Q     = 0x8100
	TPID8021AD    = 0x88a8

	ProtoHopByHop = 0
	ProtoICMP     = 1
	ProtoTCP      = 6
	ProtoUDP      = 17
	ProtoRouting  = 43
	ProtoFragment = 44
	ProtoESP      = 50
	ProtoICMPv6   = 58
	ProtoNoNext   = 59
	ProtoDstOpts  = 60

	IKEHeaderLen = 28 // RFC 7296 section 3.1
)

// VLAN is one 802.1Q (TPID 0x8100) or 802.1ad (0x88a8) tag.
type VLAN struct {
	TPID uint16 // 0 means 0x8100
	ID   uint16 // VLAN ID, low 12 bits
}

// Frag makes the packet an IP fragment (IPv4 flags and offset, or an IPv6
// fragment header after the other extension headers). The L4 bytes are
// written as given: the builder does not split anything.
type Frag struct {
	Offset uint16 // in 8-byte units
	More   bool   // the MF / M flag
	ID     uint32 // IPv4 uses the low 16 bits
}

// IPv6Ext is one IPv6 extension header.
type IPv6Ext struct {
	// Type is 0 (hop-by-hop), 43 (routing: type 0 with segments left 0,
	// skipped by every node; keep Len8 even for decoders) or 60
	// (destination options). Options are filled with one PadN.
	// 44 writes an atomic fragment header (offset 0, M clear) and ignores
	// Len8; use Frame.Frag for a real fragment. Other types are written as
	// opaque headers with the same 2-byte layout.
	Type uint8
	// Len8 is the header length in 8-byte units, not counting the first
	// 8 bytes: the header is (Len8+1)*8 bytes.
	Len8 uint8
}

// Frame describes a frame. The zero value is an IPv4 frame between the
// default addresses with TTL 64.
type Frame struct {
	SrcMAC, DstMAC net.HardwareAddr // default DefaultSrcMAC → DefaultDstMAC
	VLANs          []VLAN           // outermost first
	// Src and Dst decide the IP version; an unset one takes the default of
	// the other's family (IPv4 when both are unset).
	Src, Dst    netip.Addr
	IPv4Options []byte    // padded with zeros (end of options) to 4 bytes; at most 40
	IPv6Ext     []IPv6Ext // in order, before the fragment header if any
	Frag        *Frag
	TTL         uint8 // TTL or hop limit; 0 means 64
	// UDPLength, if non-zero, is written as the UDP length instead of the
	// real one (a first fragment announces the whole datagram; malformed
	// tests). The checksum is still computed over the bytes written.
	UDPLength uint16
	// PadTo, if larger than the frame, appends zero bytes up to that many
	// (60 is the Ethernet minimum without FCS). The IP lengths do not
	// count the padding, as on the wire.
	PadTo int
}

// ESP builds an ESP-over-IP frame: SPI, sequence number and payloadLen
// bytes of deterministic payload.
func (f Frame) ESP(spi, seq uint32, payloadLen int) []byte {
	return f.IP(ProtoESP, espHeader(spi, seq, payloadLen))
}

// ESPInUDP builds a UDP-encapsulated ESP frame (RFC 3948).
func (f Frame) ESPInUDP(sport, dport uint16, spi, seq uint32, payloadLen int) []byte {
	return f.UDP(sport, dport, espHeader(spi, seq, payloadLen))
}

// IKE builds a UDP frame carrying payloadLen bytes of an IKE message after
// the 4-byte zero non-ESP marker when nonESPMarker is set. The message starts
// with an IKEv2 header (deterministic, non-zero SPIs) cut to payloadLen, so
// small lengths make boundary cases.
func (f Frame) IKE(sport, dport uint16, nonESPMarker bool, payloadLen int) []byte {
	msg := make([]byte, max(payloadLen, IKEHeaderLen))
	binary.BigEndian.PutUint64(msg[0:8], 0x8a3f5c1e27d94b60)  // initiator SPI
	binary.BigEndian.PutUint64(msg[8:16], 0x1c7e9a0f3b5d2468) // responder SPI
	msg[16] = 33                                              // next payload: SA
	msg[17] = 0x20                                            // version 2.0
	msg[18] = 34                                              // IKE_SA_INIT
	msg[19] = 0x08                                            // initiator
	binary.BigEndian.PutUint32(msg[24:28], uint32(len(msg)))
	fill(msg[IKEHeaderLen:], 0x49)
	msg = msg[:payloadLen]
	if nonESPMarker {
		msg = append(make([]byte, 4), msg...)
	}
	return f.UDP(sport, dport, msg)
}

// Keepalive builds a NAT-T keepalive: a 1-byte 0xFF UDP payload (RFC 3948).
func (f Frame) Keepalive(sport, dport uint16) []byte {
	return f.UDP(sport, dport, []byte{0xff})
}

// UDP builds a UDP frame with a valid checksum.
func (f Frame) UDP(sport, dport uint16, payload []byte) []byte {
	seg := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(seg[0:2], sport)
	binary.BigEndian.PutUint16(seg[2:4], dport)
	length := uint16(len(seg))
	if f.UDPLength != 0 {
		length = f.UDPLength
	}
	binary.BigEndian.PutUint16(seg[4:6], length)
	copy(seg[8:], payload)
	src, dst := f.addrs()
	sum := checksum(pseudoHeader(src, dst, ProtoUDP, len(seg)), seg)
	if sum == 0 {
		sum = 0xffff // 0 means "no checksum" in UDP
	}
	binary.BigEndian.PutUint16(seg[6:8], sum)
	return f.IP(ProtoUDP, seg)
}

// TCP builds a TCP segment (ACK|PSH, no options) with a valid checksum and
// payloadLen bytes of deterministic payload.
func (f Frame) TCP(sport, dport uint16, payloadLen int) []byte {
	seg := make([]byte, 20+payloadLen)
	binary.BigEndian.PutUint16(seg[0:2], sport)
	binary.BigEndian.PutUint16(seg[2:4], dport)
	binary.BigEndian.PutUint32(seg[4:8], 0x1000)  // sequence
	binary.BigEndian.PutUint32(seg[8:12], 0x2000) // acknowledgement
	seg[12] = 5 << 4                              // data offset
	seg[13] = 0x18                                // ACK|PSH
	binary.BigEndian.PutUint16(seg[14:16], 0xffff)
	fill(seg[20:], 0x54)
	src, dst := f.addrs()
	binary.BigEndian.PutUint16(seg[16:18], checksum(pseudoHeader(src, dst, ProtoTCP, len(seg)), seg))
	return f.IP(ProtoTCP, seg)
}

// IP builds a frame carrying l4 as IP protocol proto, unchanged.
func (f Frame) IP(proto uint8, l4 []byte) []byte {
	src, dst := f.addrs()
	b := f.ethernet(src.Is4())
	if src.Is4() {
		b = f.appendIPv4(b, src, dst, proto, l4)
	} else {
		b = f.appendIPv6(b, src, dst, proto, l4)
	}
	if len(b) < f.PadTo {
		b = append(b, make([]byte, f.PadTo-len(b))...)
	}
	return b
}

// addrs returns the source and destination with defaults applied.
func (f Frame) addrs() (src, dst netip.Addr) {
	src, dst = f.Src, f.Dst
	switch {
	case !src.IsValid() && !dst.IsValid():
		return DefaultSrc4, DefaultDst4
	case !src.IsValid():
		src = DefaultSrc4
		if dst.Is6() {
			src = DefaultSrc6
		}
	case !dst.IsValid():
		dst = DefaultDst4
		if src.Is6() {
			dst = DefaultDst6
		}
	}
	if src.Is4() != dst.Is4() {
		panic(fmt.Sprintf("frames: building frame: mixed address families %v → %v", src, dst))
	}
	return src, dst
}

func (f Frame) ethernet(v4 bool) []byte {
	b := make([]byte, 0, 128)
	b = append(b, orDefault(f.DstMAC, DefaultDstMAC)...)
	b = append(b, orDefault(f.SrcMAC, DefaultSrcMAC)...)
	for _, v := range f.VLANs {
		tpid := v.TPID
		if tpid == 0 {
			tpid = TPID8021Q
		}
		b = binary.BigEndian.AppendUint16(b, tpid)
		b = binary.BigEndian.AppendUint16(b, v.ID&0x0fff)
	}
	if v4 {
		return binary.BigEndian.AppendUint16(b, EtherTypeIPv4)
	}
	return binary.BigEndian.AppendUint16(b, EtherTypeIPv6)
}

func (f Frame) ttl() uint8 {
	if f.TTL == 0 {
		return 64
	}
	return f.TTL
}

func (f Frame) appendIPv4(b []byte, src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	opts := f.IPv4Options
	if pad := len(opts) % 4; pad != 0 {
		opts = append(append([]byte(nil), opts...), make([]byte, 4-pad)...)
	}
	if len(opts) > 40 {
		panic(fmt.Sprintf("frames: building ipv4 header: %d bytes of options, at most 40", len(opts)))
	}
	hdrLen := 20 + len(opts)
	h := make([]byte, hdrLen)
	h[0] = 0x40 | byte(hdrLen/4)
	binary.BigEndian.PutUint16(h[2:4], uint16(hdrLen+len(l4)))
	if fr := f.Frag; fr != nil {
		binary.BigEndian.PutUint16(h[4:6], uint16(fr.ID))
		ff := fr.Offset & 0x1fff
		if fr.More {
			ff |= 0x2000
		}
		binary.BigEndian.PutUint16(h[6:8], ff)
	} else {
		binary.BigEndian.PutUint16(h[4:6], 0x4d2)
		binary.BigEndian.PutUint16(h[6:8], 0x4000) // DF, as Linux sends
	}
	h[8] = f.ttl()
	h[9] = proto
	a, d := src.As4(), dst.As4()
	copy(h[12:16], a[:])
	copy(h[16:20], d[:])
	copy(h[20:], opts)
	binary.BigEndian.PutUint16(h[10:12], checksum(nil, h))
	b = append(b, h...)
	return append(b, l4...)
}

func (f Frame) appendIPv6(b []byte, src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	// Extension headers are built first: each one's next header is the
	// type of the following one.
	var ext []byte
	types := make([]uint8, 0, len(f.IPv6Ext)+1)
	for _, e := range f.IPv6Ext {
		types = append(types, e.Type)
	}
	if f.Frag != nil {
		types = append(types, ProtoFragment)
	}
	for i, e := range f.IPv6Ext {
		ext = append(ext, ipv6ExtHeader(e, nextOf(types, i, proto))...)
	}
	if fr := f.Frag; fr != nil {
		h := make([]byte, 8)
		h[0] = proto
		off := fr.Offset << 3
		if fr.More {
			off |= 1
		}
		binary.BigEndian.PutUint16(h[2:4], off)
		binary.BigEndian.PutUint32(h[4:8], fr.ID)
		ext = append(ext, h...)
	}
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:6], uint16(len(ext)+len(l4)))
	h[6] = nextOf(types, -1, proto)
	h[7] = f.ttl()
	a, d := src.As16(), dst.As16()
	copy(h[8:24], a[:])
	copy(h[24:40], d[:])
	b = append(b, h...)
	b = append(b, ext...)
	return append(b, l4...)
}

// nextOf is the next-header value after position i of the chain.
func nextOf(types []uint8, i int, proto uint8) uint8 {
	if i+1 < len(types) {
		return types[i+1]
	}
	return proto
}

// ipv6ExtHeader builds one extension header whose content is valid padding,
// so that decoders accept it.
func ipv6ExtHeader(e IPv6Ext, next uint8) []byte {
	if e.Type == ProtoFragment {
		return []byte{next, 0, 0, 0, 0, 0, 0, 0} // atomic fragment
	}
	h := make([]byte, (int(e.Len8)+1)*8)
	h[0], h[1] = next, e.Len8
	switch e.Type {
	case ProtoHopByHop, ProtoDstOpts:
		h[2], h[3] = 1, byte(len(h)-4) // one PadN option filling the rest
	case ProtoRouting:
		// Type 0 with segments left 0: every node skips it (RFC 5095
		// section 3), and decoders know the type (with an even Len8).
		h[2], h[3] = 0, 0
	}
	return h
}

// espHeader is an ESP header followed by payloadLen bytes of payload.
func espHeader(spi, seq uint32, payloadLen int) []byte {
	b := make([]byte, 8+payloadLen)
	binary.BigEndian.PutUint32(b[0:4], spi)
	binary.BigEndian.PutUint32(b[4:8], seq)
	fill(b[8:], byte(spi)^byte(seq))
	return b
}

// fill writes a deterministic, never-zero pattern seeded by seed, so that
// payloads look like data and are reproducible.
func fill(b []byte, seed byte) {
	x := uint32(seed) | 0x100
	for i := range b {
		x = x*1103515245 + 12345
		b[i] = byte(x>>16) | 1
	}
}

func orDefault(mac, def net.HardwareAddr) net.HardwareAddr {
	if len(mac) == 6 {
		return mac
	}
	return def
}

// pseudoHeader is the IPv4 (RFC 768) or IPv6 (RFC 8200 section 8.1)
// pseudo-header for the transport checksum.
func pseudoHeader(src, dst netip.Addr, proto uint8, length int) []byte {
	if src.Is4() {
		a, d := src.As4(), dst.As4()
		p := append(a[:], d[:]...)
		p = append(p, 0, proto)
		return binary.BigEndian.AppendUint16(p, uint16(length))
	}
	a, d := src.As16(), dst.As16()
	p := append(a[:], d[:]...)
	p = binary.BigEndian.AppendUint32(p, uint32(length))
	return append(p, 0, 0, 0, proto)
}

// checksum is the Internet checksum (RFC 1071) of pseudo followed by data;
// pseudo has an even length.
func checksum(pseudo, data []byte) uint16 {
	var sum uint32
	for _, b := range [][]byte{pseudo, data} {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
