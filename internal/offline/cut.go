// SPDX-License-Identifier: Apache-2.0

package offline

import (
	"encoding/binary"

	"github.com/spiwatch/spiwatch/internal/capread"
	"github.com/spiwatch/spiwatch/internal/classify"
)

// Frames cut by the capture's snap length (tcpdump -s 128, the usual way to
// capture a busy gateway) hold fewer bytes than were on the wire, but the XDP
// program sees whole frames: it checks the IP and UDP length fields against the
// frame's length, and counts that length. Read as they are, cut frames would
// all be malformed (a length field past the end of the frame) and counted at
// their captured length. So a cut frame is classified as the frame on the wire:
// its captured bytes followed by zeros up to its length on the wire, provided
// that every byte its class is decided by was captured (cutDecides). Where one
// was not (a NAT-T datagram cut before its first payload bytes: ESP, IKE or a
// keepalive?), nothing is guessed: the frame is classified as captured, which
// gives other, malformed or fragment, and counted at its length on the wire.
//
// Bytes read past the class's own (an ESP sequence number, an IKE header, an
// ICMP error's MTU) that were not captured read as zero.

// maxFrame is the longest frame classified, and the most bytes counted for one:
// an IPv6 packet of the largest payload its length field gives, behind
// Ethernet and two VLAN tags. No link carries a longer frame, and the XDP
// program never sees one; a longer frame in a capture is a GRO aggregate or a
// corrupt length.
const maxFrame = ethHdrLen + 2*4 + 40 + 0xffff

// ethHdrLen is the shortest frame a BPF test run takes: an Ethernet header.
const ethHdrLen = 14

// framer turns captured packets into the frames classified.
type framer struct {
	cfg  *classify.Config
	fill []byte
	runt [ethHdrLen]byte
}

// frame returns the frame to classify for p and the bytes to count for it,
// which differ only for a frame classified as captured (or padded to an
// Ethernet header): its class is then other, malformed or fragment. The frame
// is valid until the next call.
func (fr *framer) frame(p capread.Packet) (frame []byte, wire int) {
	data := p.Data
	wire = min(max(p.WireLen, len(data)), maxFrame)
	if len(data) >= wire {
		frame = data[:wire]
	} else {
		if cap(fr.fill) < wire {
			fr.fill = make([]byte, max(wire, 2*cap(fr.fill)))
		}
		full := fr.fill[:wire]
		clear(full[copy(full, data):])
		frame = data
		if cutDecides(full, len(data), fr.cfg) {
			frame = full
		}
	}
	if len(frame) < ethHdrLen {
		// BPF test runs need an Ethernet header; such a runt is other either way.
		clear(fr.runt[copy(fr.runt[:], frame):])
		frame = fr.runt[:]
	}
	return frame, wire
}

// cutDecides reports whether the class of frame f (a frame on the wire whose
// first captured bytes only are real) is decided by those bytes and f's
// length: it follows classify.Classify's steps (docs/CLASSES.md) on f and
// fails at the first byte it reads past the captured ones. The SPI of esp and
// esp-in-udp, and the quoted SPI of icmp-esp, count as part of the class.
func cutDecides(f []byte, captured int, cfg *classify.Config) bool {
	have := func(off, n int) bool { return off+n <= captured }
	be16 := func(off int) int { return int(binary.BigEndian.Uint16(f[off:])) }

	// Layer 2.
	if len(f) < ethHdrLen {
		return true // other, by length
	}
	typeOff := 12
	if !have(typeOff, 2) {
		return false
	}
	for tags := 0; be16(typeOff) == 0x8100 || be16(typeOff) == 0x88a8; tags++ {
		if tags == classify.MaxVLANTags || typeOff+2+4 > len(f) {
			return true // other
		}
		typeOff += 4
		if !have(typeOff, 2) {
			return false
		}
	}
	l3 := typeOff + 2
	avail := len(f) - l3

	var (
		family        int
		proto         uint8
		badLen, first bool
		l4, l4End     int
	)
	switch be16(typeOff) {
	case 0x0800:
		if avail < 20 {
			return true // other
		}
		// Version, IHL, total length, flags and offset, protocol, addresses.
		if !have(l3, 20) {
			return false
		}
		if f[l3]>>4 != 4 {
			return true
		}
		hdrLen := int(f[l3]&0x0f) * 4
		if hdrLen < 20 || hdrLen > avail || be16(l3+6)&0x1fff != 0 {
			return true // malformed, other or fragment, by the header
		}
		total := be16(l3 + 2)
		family, proto = 4, f[l3+9]
		badLen = total < hdrLen || total > avail
		first = be16(l3+6)&0x2000 != 0
		l4, l4End = l3+hdrLen, l3+total
		if badLen {
			l4End = len(f)
		}
	case 0x86dd:
		if avail < 40 {
			return true
		}
		if !have(l3, 40) {
			return false
		}
		if f[l3]>>4 != 6 {
			return true
		}
		end := 40 + be16(l3+4)
		if end > avail {
			badLen, end = true, avail
		}
		nh, off := f[l3+6], 40
		walked := 0
	walk:
		for ; walked < classify.MaxIPv6Ext; walked++ {
			switch nh {
			case 0, 43, 60:
				if off+2 > end {
					return true // other
				}
				if !have(l3+off, 2) {
					return false
				}
				nh = f[l3+off]
				off += (int(f[l3+off+1]) + 1) * 8
			case 44:
				if off+8 > end {
					return true
				}
				if !have(l3+off, 4) {
					return false
				}
				fo := be16(l3 + off + 2)
				if fo>>3 != 0 {
					return true // fragment
				}
				first = first || fo&1 != 0
				nh = f[l3+off]
				off += 8
			default:
				break walk
			}
		}
		if nh == 0 || nh == 43 || nh == 44 || nh == 60 {
			return true // malformed: chain too long
		}
		family, proto = 6, nh
		l4, l4End = l3+off, l3+end
	default:
		return true // other
	}
	present := max(l4End-l4, 0)

	// Layer 4.
	switch proto {
	case 50: // ESP
		if badLen || present < 8 {
			return true // malformed or fragment
		}
		return have(l4, 4) // the SPI
	case 17: // UDP
		if present < 8 {
			return true
		}
		if !have(l4, 4) {
			return false
		}
		sport, dport := uint16(be16(l4)), uint16(be16(l4+2))
		is500 := sport == classify.IKEPort || dport == classify.IKEPort
		if !is500 && !natt(cfg, sport) && !natt(cfg, dport) {
			return true // other
		}
		if badLen {
			return true // malformed
		}
		plen := present - 8
		if !first {
			if !have(l4+4, 2) {
				return false
			}
			udpLen := be16(l4 + 4)
			if udpLen < 8 || udpLen-8 > present-8 {
				return true // malformed
			}
			plen = udpLen - 8
		}
		switch {
		case is500:
			return true // ike, whatever its header holds
		case !first && plen == 1:
			return have(l4+8, 1) // keepalive or malformed
		case plen >= 4:
			return have(l4+8, 4) // the non-ESP marker or the SPI
		}
		return true // malformed or fragment, by length
	case 1, 58: // ICMP, ICMPv6
		if (proto == 1) != (family == 4) || badLen || present < 8 {
			return true // other
		}
		return icmpDecides(f, l4, present, family, cfg, have, be16)
	}
	return true // other
}

// icmpDecides is cutDecides for an ICMP or ICMPv6 message of present bytes at
// l4: whether it quotes ESP (icmp-esp, with the quoted SPI) or not (other).
func icmpDecides(f []byte, l4, present, family int, cfg *classify.Config, have func(off, n int) bool, be16 func(off int) int) bool {
	if !have(l4, 2) {
		return false
	}
	typ := f[l4]
	q, qlen := l4+8, present-8
	var proto uint8
	if family == 4 {
		if typ != 3 && typ != 11 && typ != 12 {
			return true
		}
		if qlen < 20 {
			return true
		}
		if !have(q, 20) {
			return false
		}
		if f[q]>>4 != 4 {
			return true
		}
		hl := int(f[q]&0x0f) * 4
		if hl < 20 || hl > qlen || be16(q+6)&0x1fff != 0 {
			return true
		}
		proto = f[q+9]
		q, qlen = q+hl, qlen-hl
	} else {
		if typ < 1 || typ > 4 || qlen < 40 {
			return true
		}
		if !have(q, 40) {
			return false
		}
		if f[q]>>4 != 6 {
			return true
		}
		proto = f[q+6]
		q, qlen = q+40, qlen-40
	}
	switch proto {
	case 50:
		if qlen < 4 {
			return true
		}
		return have(q, 4)
	case 17:
		if qlen < 8 {
			return true
		}
		if !have(q, 4) {
			return false
		}
		sp, dp := uint16(be16(q)), uint16(be16(q+2))
		if sp == classify.IKEPort || dp == classify.IKEPort || !natt(cfg, sp) && !natt(cfg, dp) {
			return true
		}
		if qlen >= 12 {
			return have(q+8, 4)
		}
		return have(q+4, 2) // the UDP length: natt-no-spi or other
	}
	return true
}

// natt reports whether port p is a NAT-T port of cfg (nil: the defaults), as
// the classifier has it.
func natt(cfg *classify.Config, p uint16) bool {
	var ports []uint16
	if cfg != nil {
		ports = cfg.NATTPorts
	}
	if len(ports) == 0 {
		return p == classify.DefaultNATTPort
	}
	for _, q := range ports[:min(len(ports), classify.MaxNATTPorts)] {
		if q == p {
			return true
		}
	}
	return false
}
