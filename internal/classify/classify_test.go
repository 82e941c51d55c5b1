// SPDX-License-Identifier: Apache-2.0

package classify_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"

	. "github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
)

const (
	spi = 0x12345678
	seq = 7
)

var (
	v4  = frames.Frame{}
	v6  = frames.Frame{Src: frames.DefaultSrc6, Dst: frames.DefaultDst6}
	tag = frames.VLAN{TPID: frames.TPID8021Q, ID: 10}
	qnq = frames.VLAN{TPID: frames.TPID8021AD, ID: 20}
)

// ipOff is where the IP header starts in a frame built from f.
func ipOff(f frames.Frame) int { return 14 + 4*len(f.VLANs) }

// patch returns a copy of b with vals written at off.
func patch(b []byte, off int, vals ...byte) []byte {
	b = bytes.Clone(b)
	copy(b[off:], vals)
	return b
}

// put16 returns a copy of b with v written big-endian at off.
func put16(b []byte, off int, v uint16) []byte {
	return patch(b, off, byte(v>>8), byte(v))
}

// withFrag returns f made into a fragment.
func withFrag(f frames.Frame, offset uint16, more bool) frames.Frame {
	f.Frag = &frames.Frag{Offset: offset, More: more, ID: 99}
	return f
}

func withVLANs(f frames.Frame, v ...frames.VLAN) frames.Frame {
	f.VLANs = v
	return f
}

func withExt(f frames.Frame, types ...uint8) frames.Frame {
	for _, t := range types {
		f.IPv6Ext = append(f.IPv6Ext, frames.IPv6Ext{Type: t})
	}
	return f
}

func withUDPLen(f frames.Frame, n uint16) frames.Frame {
	f.UDPLength = n
	return f
}

func withPad(f frames.Frame, n int) frames.Frame {
	f.PadTo = n
	return f
}

// natt returns a NAT-T frame whose UDP payload is n bytes starting with a
// non-zero byte (so neither a marker nor a keepalive).
func natt(f frames.Frame, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(0x10 + i)
	}
	return f.UDP(4500, 4500, p)
}

// extChain is a chain of n hop-by-hop/routing/destination-options headers.
func extChain(n int) []uint8 {
	types := []uint8{0, 43, 60}
	out := make([]uint8, n)
	for i := range out {
		out[i] = types[i%3]
	}
	out[0] = 0 // hop-by-hop first, as RFC 8200 asks
	return out
}

type classCase struct {
	name  string
	frame []byte
	cfg   *Config
	class Class
	// For esp and esp-in-udp: the SPI (Seq is always seq) and, for UDP
	// classes, the ports. Addresses are the frame's defaults unless src is set.
	spi          uint32
	sport, dport uint16
	wantSeq      uint32 // 0 means seq
}

func classCases() []classCase {
	esp4 := v4.ESP(spi, seq, 32)
	esp6 := v6.ESP(spi, seq, 32)
	o4 := ipOff(v4)
	opts := v4
	opts.IPv4Options = []byte{0x94, 0x04, 0, 0, 0x01, 0x01, 0x01} // router alert, NOPs; padded to 8
	ihl7esp := opts.ESP(spi, seq, 0)                              // IHL 7: 28-byte header
	ihl7udp := opts.UDP(4500, 4500, []byte{1, 2, 3, 4, 5, 6, 7, 8, 9})
	v6long := v6
	v6long.IPv6Ext = []frames.IPv6Ext{{Type: 60, Len8: 3}}
	udpMagic := []byte{0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 7, 0xee}

	cases := []classCase{
		// Layer 2.
		{name: "l2/empty", frame: nil, class: ClassOther},
		{name: "l2/13 bytes", frame: esp4[:13], class: ClassOther},
		{name: "l2/14 bytes ipv4 no ip header", frame: esp4[:14], class: ClassOther},
		{name: "l2/arp", frame: put16(esp4, 12, 0x0806), class: ClassOther},
		{name: "l2/vlan 8100", frame: withVLANs(v4, tag).ESP(spi, seq, 16), class: ClassESP, spi: spi},
		{name: "l2/vlan 88a8", frame: withVLANs(v4, qnq).ESP(spi, seq, 16), class: ClassESP, spi: spi},
		{name: "l2/two tags", frame: withVLANs(v6, qnq, tag).ESPInUDP(4500, 4500, spi, seq, 16), class: ClassESPInUDP, spi: spi, sport: 4500, dport: 4500},
		{name: "l2/two 8100 tags", frame: withVLANs(v4, tag, tag).ESP(spi, seq, 16), class: ClassESP, spi: spi},
		{name: "l2/third tag", frame: withVLANs(v4, qnq, tag, tag).ESP(spi, seq, 16), class: ClassOther},
		{name: "l2/tag cut at tpid", frame: withVLANs(v4, tag).ESP(spi, seq, 16)[:14], class: ClassOther},
		{name: "l2/tag cut at tci", frame: withVLANs(v4, tag).ESP(spi, seq, 16)[:17], class: ClassOther},
		{name: "l2/tag whole no ip", frame: withVLANs(v4, tag).ESP(spi, seq, 16)[:18], class: ClassOther},
		{name: "l2/second tag cut", frame: withVLANs(v4, qnq, tag).ESP(spi, seq, 16)[:20], class: ClassOther},

		// IPv4.
		{name: "v4/esp", frame: esp4, class: ClassESP, spi: spi},
		{name: "v4/avail 19", frame: esp4[:o4+19], class: ClassOther},
		{name: "v4/avail 20 esp", frame: esp4[:o4+20], class: ClassMalformed}, // total length past the frame
		{name: "v4/version 6 in 0800", frame: patch(esp4, o4, 0x65), class: ClassOther},
		{name: "v4/ihl 4 esp", frame: patch(esp4, o4, 0x44), class: ClassMalformed},
		{name: "v4/ihl 0 esp", frame: patch(esp4, o4, 0x40), class: ClassMalformed},
		{name: "v4/ihl 4 tcp", frame: patch(v4.TCP(1, 2, 10), o4, 0x44), class: ClassOther},
		{name: "v4/ihl 4 udp 4500", frame: patch(v4.ESPInUDP(4500, 4500, spi, seq, 16), o4, 0x44), class: ClassOther},
		{name: "v4/ihl 4 non-first fragment tcp", frame: patch(withFrag(v4, 10, false).TCP(1, 2, 10), o4, 0x44), class: ClassOther},
		{name: "v4/ihl 4 non-first fragment esp", frame: patch(withFrag(v4, 10, false).ESP(spi, seq, 10), o4, 0x44), class: ClassMalformed},
		{name: "v4/options esp", frame: ihl7esp, class: ClassESP, spi: spi},
		{name: "v4/options esp-in-udp", frame: ihl7udp, class: ClassESPInUDP, spi: 0x01020304, sport: 4500, dport: 4500, wantSeq: 0x05060708},
		{name: "v4/ihl past frame esp", frame: ihl7esp[:o4+24], class: ClassMalformed},
		{name: "v4/ihl past frame udp", frame: ihl7udp[:o4+24], class: ClassOther},
		{name: "v4/ihl 15 esp", frame: patch(esp4, o4, 0x4f), class: ClassMalformed},
		{name: "v4/total < ihl esp", frame: put16(esp4, o4+2, 19), class: ClassMalformed},
		{name: "v4/total > avail esp", frame: put16(esp4, o4+2, uint16(len(esp4)-o4+1)), class: ClassMalformed},
		{name: "v4/total > avail esp-in-udp", frame: put16(v4.ESPInUDP(4500, 4500, spi, seq, 16), o4+2, 1000), class: ClassMalformed},
		{name: "v4/total > avail ike 500", frame: put16(v4.IKE(500, 500, false, 40), o4+2, 1000), class: ClassMalformed},
		{name: "v4/total > avail udp 53", frame: put16(v4.UDP(53, 53, udpMagic), o4+2, 1000), class: ClassOther},
		{name: "v4/total > avail tcp", frame: put16(v4.TCP(1, 2, 10), o4+2, 1000), class: ClassOther},
		{name: "v4/padding ignored esp", frame: withPad(v4, 60).ESP(spi, seq, 0), class: ClassESP, spi: spi},
		{name: "v4/padding ignored keepalive", frame: withPad(v4, 60).Keepalive(4500, 4500), class: ClassNATKeepalive, sport: 4500, dport: 4500},
		{name: "v4/padding ignored short natt", frame: withPad(v4, 60).UDP(4500, 4500, []byte{1, 2, 3}), class: ClassMalformed},

		// IPv4 fragments.
		{name: "v4/non-first fragment esp", frame: withFrag(v4, 185, true).ESP(spi, seq, 32), class: ClassFragment},
		{name: "v4/last fragment esp", frame: withFrag(v4, 185, false).ESP(spi, seq, 32), class: ClassFragment},
		{name: "v4/non-first fragment udp", frame: withFrag(v4, 1, false).ESPInUDP(4500, 4500, spi, seq, 32), class: ClassFragment},
		{name: "v4/non-first fragment tcp", frame: withFrag(v4, 1, true).TCP(1, 2, 3), class: ClassFragment},
		{name: "v4/non-first fragment bad total", frame: put16(withFrag(v4, 1, true).ESP(spi, seq, 3), o4+2, 9999), class: ClassFragment},
		{name: "v4/first fragment esp", frame: withFrag(v4, 0, true).ESP(spi, seq, 32), class: ClassESP, spi: spi},
		{name: "v4/first fragment esp 8 bytes", frame: withFrag(v4, 0, true).ESP(spi, seq, 0), class: ClassESP, spi: spi},
		{name: "v4/first fragment esp 7 bytes", frame: withFrag(v4, 0, true).IP(50, []byte{1, 2, 3, 4, 5, 6, 7}), class: ClassFragment},
		{name: "v4/esp 7 bytes", frame: v4.IP(50, []byte{1, 2, 3, 4, 5, 6, 7}), class: ClassMalformed},
		{name: "v4/esp 0 bytes", frame: v4.IP(50, nil), class: ClassMalformed},
		{name: "v4/first fragment esp bad total", frame: put16(withFrag(v4, 0, true).ESP(spi, seq, 8), o4+2, 1000), class: ClassMalformed},
		{name: "v4/first fragment udp 7 bytes", frame: withFrag(v4, 0, true).IP(17, []byte{0x11, 0x94, 0x11, 0x94, 0, 7, 0}), class: ClassFragment},
		{name: "v4/udp 7 bytes", frame: v4.IP(17, []byte{0x11, 0x94, 0x11, 0x94, 0, 7, 0}), class: ClassOther},
		{name: "v4/first fragment esp-in-udp", frame: withUDPLen(withFrag(v4, 0, true), 1400).ESPInUDP(4500, 4500, spi, seq, 9), class: ClassESPInUDP, spi: spi, sport: 4500, dport: 4500},
		{name: "v4/first fragment natt 9 bytes", frame: natt(withUDPLen(withFrag(v4, 0, true), 1400), 9), class: ClassESPInUDP, spi: 0x10111213, sport: 4500, dport: 4500, wantSeq: 0x14151617},
		{name: "v4/first fragment natt 8 bytes", frame: natt(withUDPLen(withFrag(v4, 0, true), 1400), 8), class: ClassFragment},
		{name: "v4/first fragment natt 3 bytes", frame: natt(withFrag(v4, 0, true), 3), class: ClassFragment},
		{name: "v4/first fragment natt 0 bytes", frame: natt(withFrag(v4, 0, true), 0), class: ClassFragment},
		{name: "v4/first fragment keepalive byte", frame: withFrag(v4, 0, true).Keepalive(4500, 4500), class: ClassFragment},
		{name: "v4/first fragment marker", frame: withFrag(v4, 0, true).IKE(4500, 4500, true, 0), class: ClassIKE, sport: 4500, dport: 4500},
		{name: "v4/first fragment ike 500", frame: withFrag(v4, 0, true).IKE(500, 500, false, 2), class: ClassIKE, sport: 500, dport: 500},
		{name: "v4/first fragment udp 53", frame: withFrag(v4, 0, true).UDP(53, 53, nil), class: ClassOther},

		// UDP: ports, lengths and payloads.
		{name: "udp/dns", frame: v4.UDP(53, 53, udpMagic), class: ClassOther},
		{name: "udp/tcp 4500", frame: v4.TCP(4500, 4500, 20), class: ClassOther},
		{name: "udp/ike 500", frame: v4.IKE(500, 500, false, 100), class: ClassIKE, sport: 500, dport: 500},
		{name: "udp/ike 500 sport only", frame: v4.IKE(500, 33000, false, 100), class: ClassIKE, sport: 500, dport: 33000},
		{name: "udp/ike 500 dport only", frame: v4.IKE(33000, 500, false, 100), class: ClassIKE, sport: 33000, dport: 500},
		{name: "udp/500 empty payload", frame: v4.UDP(500, 500, nil), class: ClassIKE, sport: 500, dport: 500},
		{name: "udp/500 beats 4500 esp-like", frame: v4.ESPInUDP(500, 4500, spi, seq, 32), class: ClassIKE, sport: 500, dport: 4500},
		{name: "udp/500 dport beats 4500 sport", frame: v4.ESPInUDP(4500, 500, spi, seq, 32), class: ClassIKE, sport: 4500, dport: 500},
		{name: "udp/500 keepalive byte", frame: v4.Keepalive(500, 4500), class: ClassIKE, sport: 500, dport: 4500},
		{name: "udp/natt sport only", frame: v4.ESPInUDP(4500, 33000, spi, seq, 32), class: ClassESPInUDP, spi: spi, sport: 4500, dport: 33000},
		{name: "udp/natt dport only", frame: v4.ESPInUDP(33000, 4500, spi, seq, 32), class: ClassESPInUDP, spi: spi, sport: 33000, dport: 4500},
		{name: "udp/natt marker ike", frame: v4.IKE(4500, 4500, true, 200), class: ClassIKE, sport: 4500, dport: 4500},
		{name: "udp/natt ike without marker is esp", frame: v4.IKE(4500, 4500, false, 200), class: ClassESPInUDP, spi: 0x8a3f5c1e, sport: 4500, dport: 4500, wantSeq: 0x27d94b60},
		{name: "udp/natt marker only", frame: v4.IKE(4500, 4500, true, 0), class: ClassIKE, sport: 4500, dport: 4500},
		{name: "udp/natt 3 zero bytes", frame: v4.UDP(4500, 4500, []byte{0, 0, 0}), class: ClassMalformed},
		{name: "udp/keepalive", frame: v4.Keepalive(4500, 4500), class: ClassNATKeepalive, sport: 4500, dport: 4500},
		{name: "udp/keepalive one side", frame: v4.Keepalive(33000, 4500), class: ClassNATKeepalive, sport: 33000, dport: 4500},
		{name: "udp/one byte not ff", frame: v4.UDP(4500, 4500, []byte{0xfe}), class: ClassMalformed},
		{name: "udp/two bytes ff ff", frame: v4.UDP(4500, 4500, []byte{0xff, 0xff}), class: ClassMalformed},
		{name: "udp/one byte 0", frame: v4.UDP(4500, 4500, []byte{0}), class: ClassMalformed},
		{name: "udp/esp spi 0 is marker", frame: v4.ESPInUDP(4500, 4500, 0, seq, 32), class: ClassIKE, sport: 4500, dport: 4500},
		{name: "udp/udp length 7", frame: put16(v4.ESPInUDP(4500, 4500, spi, seq, 32), o4+24, 7), class: ClassMalformed},
		{name: "udp/udp length 0", frame: put16(v4.ESPInUDP(4500, 4500, spi, seq, 32), o4+24, 0), class: ClassMalformed},
		{name: "udp/udp length past ip", frame: withUDPLen(v4, 8+41).ESPInUDP(4500, 4500, spi, seq, 32), class: ClassMalformed},
		{name: "udp/udp length exact", frame: withUDPLen(v4, 8+40).ESPInUDP(4500, 4500, spi, seq, 32), class: ClassESPInUDP, spi: spi, sport: 4500, dport: 4500},
		{name: "udp/udp length wins: keepalive", frame: withUDPLen(v4, 9).UDP(4500, 4500, []byte{0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9}), class: ClassNATKeepalive, sport: 4500, dport: 4500},
		{name: "udp/udp length wins: short", frame: withUDPLen(v4, 16).ESPInUDP(4500, 4500, spi, seq, 32), class: ClassMalformed},
		{name: "udp/udp length 8 on 500", frame: withUDPLen(v4, 8).IKE(500, 500, false, 40), class: ClassIKE, sport: 500, dport: 500},
		{name: "udp/udp length 7 on 500", frame: withUDPLen(v4, 7).IKE(500, 500, false, 40), class: ClassMalformed},
		{name: "udp/udp length bad on dns", frame: withUDPLen(v4, 3).UDP(53, 53, nil), class: ClassOther},

		// Custom NAT-T ports.
		{name: "natt/custom port hit", frame: v4.ESPInUDP(4501, 4501, spi, seq, 16), cfg: &Config{NATTPorts: []uint16{4501}}, class: ClassESPInUDP, spi: spi, sport: 4501, dport: 4501},
		{name: "natt/custom replaces 4500", frame: v4.ESPInUDP(4500, 4500, spi, seq, 16), cfg: &Config{NATTPorts: []uint16{4501}}, class: ClassOther},
		{name: "natt/default without custom", frame: v4.ESPInUDP(4501, 4501, spi, seq, 16), class: ClassOther},
		{name: "natt/empty list is default", frame: v4.ESPInUDP(4500, 4500, spi, seq, 16), cfg: &Config{NATTPorts: []uint16{}}, class: ClassESPInUDP, spi: spi, sport: 4500, dport: 4500},
		{name: "natt/eighth port", frame: v4.Keepalive(40000, 1008), cfg: &Config{NATTPorts: []uint16{1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008}}, class: ClassNATKeepalive, sport: 40000, dport: 1008},
		{name: "natt/ninth port ignored", frame: v4.Keepalive(40000, 1009), cfg: &Config{NATTPorts: []uint16{1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009}}, class: ClassOther},
		{name: "natt/custom 500 still ike", frame: v4.ESPInUDP(500, 4501, spi, seq, 16), cfg: &Config{NATTPorts: []uint16{4501}}, class: ClassIKE, sport: 500, dport: 4501},
		{name: "natt/custom marker", frame: v4.IKE(4501, 4501, true, 40), cfg: &Config{NATTPorts: []uint16{4501}}, class: ClassIKE, sport: 4501, dport: 4501},

		// SPI values.
		{name: "spi/0", frame: v4.ESP(0, seq, 8), class: ClassESP, spi: 0},
		{name: "spi/255", frame: v4.ESP(255, seq, 8), class: ClassESP, spi: 255},
		{name: "spi/256", frame: v4.ESP(256, seq, 8), class: ClassESP, spi: 256},
		{name: "spi/max", frame: v4.ESP(0xffffffff, seq, 8), class: ClassESP, spi: 0xffffffff},

		// IPv6.
		{name: "v6/esp", frame: esp6, class: ClassESP, spi: spi},
		{name: "v6/esp-in-udp", frame: v6.ESPInUDP(4500, 4500, spi, seq, 32), class: ClassESPInUDP, spi: spi, sport: 4500, dport: 4500},
		{name: "v6/ike marker", frame: v6.IKE(4500, 4500, true, 60), class: ClassIKE, sport: 4500, dport: 4500},
		{name: "v6/keepalive", frame: v6.Keepalive(4500, 4500), class: ClassNATKeepalive, sport: 4500, dport: 4500},
		{name: "v6/avail 39", frame: esp6[:14+39], class: ClassOther},
		{name: "v6/avail 40 esp", frame: esp6[:14+40], class: ClassMalformed},
		{name: "v6/version 4 in 86dd", frame: patch(esp6, 14, 0x45), class: ClassOther},
		{name: "v6/payload length past frame", frame: put16(esp6, 18, 41), class: ClassMalformed},
		{name: "v6/payload length short", frame: put16(esp6, 18, 7), class: ClassMalformed},
		{name: "v6/payload length short udp", frame: put16(v6.ESPInUDP(4500, 4500, spi, seq, 32), 18, 7), class: ClassOther},
		{name: "v6/padding ignored", frame: withPad(v6, 100).ESP(spi, seq, 0), class: ClassESP, spi: spi},
		{name: "v6/hop-by-hop esp", frame: withExt(v6, 0).ESP(spi, seq, 8), class: ClassESP, spi: spi},
		{name: "v6/8 ext headers ok", frame: withExt(v6, extChain(8)...).ESP(spi, seq, 8), class: ClassESP, spi: spi},
		{name: "v6/9 ext headers", frame: withExt(v6, extChain(9)...).ESP(spi, seq, 8), class: ClassMalformed},
		{name: "v6/9 ext headers tcp", frame: withExt(v6, extChain(9)...).TCP(1, 2, 3), class: ClassMalformed},
		{name: "v6/7 ext + fragment ok", frame: withFrag(withExt(v6, extChain(7)...), 0, true).ESP(spi, seq, 8), class: ClassESP, spi: spi},
		{name: "v6/8 ext + fragment", frame: withFrag(withExt(v6, extChain(8)...), 0, true).ESP(spi, seq, 8), class: ClassMalformed},
		{name: "v6/7 ext + non-first fragment", frame: withFrag(withExt(v6, extChain(7)...), 3, true).ESP(spi, seq, 8), class: ClassFragment},
		{name: "v6/32-byte dest options", frame: v6long.ESP(spi, seq, 8), class: ClassESP, spi: spi},
		{name: "v6/ext truncated at 1 byte", frame: withExt(v6, 0).ESP(spi, seq, 8)[:14+41], class: ClassOther},
		{name: "v6/ext start past l3_end", frame: put16(withExt(v6, 0).ESP(spi, seq, 8), 18, 1), class: ClassOther},
		{name: "v6/ext length jumps past end", frame: patch(withExt(v6, 0, 60).ESP(spi, seq, 8), 14+41, 200), class: ClassOther},
		{name: "v6/ext length eats esp", frame: patch(withExt(v6, 0).ESP(spi, seq, 0), 14+41, 1), class: ClassMalformed},
		{name: "v6/ext length eats udp", frame: patch(withExt(v6, 0).Keepalive(4500, 4500), 14+41, 1), class: ClassOther},
		{name: "v6/fragment header truncated", frame: withFrag(v6, 0, true).ESP(spi, seq, 8)[:14+47], class: ClassOther},
		{name: "v6/fragment header past l3_end", frame: put16(withFrag(v6, 0, true).ESP(spi, seq, 8), 18, 7), class: ClassOther},
		{name: "v6/first fragment esp", frame: withFrag(v6, 0, true).ESP(spi, seq, 100), class: ClassESP, spi: spi},
		{name: "v6/first fragment esp 4 bytes", frame: withFrag(v6, 0, true).IP(50, []byte{1, 2, 3, 4}), class: ClassFragment},
		{name: "v6/first fragment natt 5 bytes", frame: natt(withFrag(v6, 0, true), 5), class: ClassFragment},
		{name: "v6/first fragment esp-in-udp", frame: withUDPLen(withFrag(v6, 0, true), 2000).ESPInUDP(4500, 4500, spi, seq, 100), class: ClassESPInUDP, spi: spi, sport: 4500, dport: 4500},
		{name: "v6/non-first fragment", frame: withFrag(v6, 1, true).ESP(spi, seq, 100), class: ClassFragment},
		{name: "v6/last fragment udp", frame: withFrag(v6, 100, false).ESPInUDP(4500, 4500, spi, seq, 100), class: ClassFragment},
		{name: "v6/atomic fragment", frame: withFrag(v6, 0, false).ESP(spi, seq, 8), class: ClassESP, spi: spi},
		{name: "v6/atomic fragment in chain", frame: withExt(v6, 0, 44, 60).Keepalive(4500, 4500), class: ClassNATKeepalive, sport: 4500, dport: 4500},
		{name: "v6/no next header", frame: v6.IP(59, nil), class: ClassOther},
		{name: "v6/tcp", frame: v6.TCP(1, 2, 3), class: ClassOther},
	}

	// Every NAT-T payload length from 0 to 10 with a non-zero first byte.
	for n, c := range []Class{
		ClassMalformed, ClassMalformed, ClassMalformed, ClassMalformed, ClassMalformed,
		ClassMalformed, ClassMalformed, ClassMalformed, ClassMalformed, ClassESPInUDP, ClassESPInUDP,
	} {
		cc := classCase{name: fmt.Sprintf("udp/natt payload %d", n), frame: natt(v4, n), class: c}
		if c == ClassESPInUDP {
			cc.spi, cc.wantSeq, cc.sport, cc.dport = 0x10111213, 0x14151617, 4500, 4500
		}
		cases = append(cases, cc)
	}
	return cases
}

func TestClassify(t *testing.T) {
	for _, tc := range classCases() {
		t.Run(tc.name, func(t *testing.T) {
			in := bytes.Clone(tc.frame)
			r := Classify(tc.frame, tc.cfg)
			if !bytes.Equal(in, tc.frame) {
				t.Fatal("Classify changed its input")
			}
			if r.Class != tc.class {
				t.Fatalf("class = %v, want %v (result %+v)", r.Class, tc.class, r)
			}
			hasSPI := tc.class == ClassESP || tc.class == ClassESPInUDP
			if r.HasSPI != hasSPI {
				t.Fatalf("HasSPI = %v, want %v", r.HasSPI, hasSPI)
			}
			if hasSPI {
				wantSeq := uint32(seq)
				if tc.wantSeq != 0 {
					wantSeq = tc.wantSeq
				}
				if r.SPI != tc.spi || r.Seq != wantSeq {
					t.Errorf("spi, seq = %#x, %d; want %#x, %d", r.SPI, r.Seq, tc.spi, wantSeq)
				}
				src, dst := frames.DefaultSrc4, frames.DefaultDst4
				if r.Src.Is6() {
					src, dst = frames.DefaultSrc6, frames.DefaultDst6
				}
				if r.Src != src || r.Dst != dst {
					t.Errorf("addresses = %v → %v, want %v → %v", r.Src, r.Dst, src, dst)
				}
			}
			if hasSPI || tc.class == ClassIKE || tc.class == ClassNATKeepalive {
				if r.SrcPort != tc.sport || r.DstPort != tc.dport {
					t.Errorf("ports = %d → %d, want %d → %d", r.SrcPort, r.DstPort, tc.sport, tc.dport)
				}
			}
		})
	}
}

// TestClassifyAddresses checks that non-default addresses, IPv4 and IPv6,
// reach the result.
func TestClassifyAddresses(t *testing.T) {
	for _, f := range []frames.Frame{
		{Src: netip.MustParseAddr("10.1.2.3"), Dst: netip.MustParseAddr("172.16.0.9")},
		{Src: netip.MustParseAddr("fe80::1"), Dst: netip.MustParseAddr("2001:db8:ffff::42")},
	} {
		for _, b := range [][]byte{f.ESP(spi, seq, 8), f.ESPInUDP(4500, 4500, spi, seq, 8)} {
			r := Classify(b, nil)
			if r.Src != f.Src || r.Dst != f.Dst {
				t.Errorf("addresses = %v → %v, want %v → %v", r.Src, r.Dst, f.Src, f.Dst)
			}
		}
	}
}

// samples are well-formed frames of every class the builders make, without
// Ethernet padding: cutting any of them short must never look valid.
func samples() [][]byte {
	opts := v4
	opts.IPv4Options = []byte{1, 1, 1, 1}
	var out [][]byte
	for _, f := range []frames.Frame{
		v4, v6, opts,
		withVLANs(v4, tag), withVLANs(v6, qnq, tag),
		withExt(v6, 0, 43, 60), withExt(v6, extChain(8)...),
		withFrag(v4, 0, true), withFrag(v6, 0, true), withFrag(v4, 3, false), withFrag(v6, 3, true),
	} {
		out = append(out,
			f.ESP(spi, seq, 40),
			f.ESP(spi, seq, 0),
			f.ESPInUDP(4500, 4500, spi, seq, 40),
			f.ESPInUDP(4500, 4500, spi, seq, 1),
			f.IKE(500, 500, false, 60),
			f.IKE(4500, 4500, true, 60),
			f.IKE(4500, 4500, true, 0),
			f.Keepalive(4500, 4500),
			f.UDP(53, 53, []byte("query")),
			f.TCP(443, 50000, 20),
			// ICMP errors quoting ESP and ESP-in-UDP, and IKE headers.
			f.ICMP(3, 4, 1400, frames.Quote(f.ESP(spi, seq, 40), 8)),
			f.ICMP(2, 0, 1280, frames.Quote(f.ESPInUDP(4500, 4500, spi, seq, 40), 64)),
			f.IKEMessage(500, 500, false, frames.IKEHeader{Version: 0x10, Exchange: 2}.Message(8)),
		)
	}
	return out
}

func TestTruncation(t *testing.T) {
	for i, b := range samples() {
		full := Classify(b, nil)
		for n := range len(b) {
			r := Classify(b[:n:n], nil)
			switch r.Class {
			case ClassMalformed, ClassFragment, ClassOther:
			default:
				t.Fatalf("sample %d (%v) cut to %d of %d bytes: class %v, want malformed, fragment or other",
					i, full.Class, n, len(b), r.Class)
			}
			if r.HasSPI {
				t.Fatalf("sample %d cut to %d bytes: HasSPI set", i, n)
			}
		}
	}
}

func TestOutcomeOf(t *testing.T) {
	dst4 := netip.MustParseAddr("192.0.2.2")
	dst6 := netip.MustParseAddr("2001:db8::2")
	known := SASet{}
	known.Add(0x1000, dst4)
	known.Add(0x2000, dst6)
	known.Add(0x3000, netip.Addr{}) // any destination
	known.Add(0, dst4)              // reserved SPIs are never looked up
	known.Add(255, netip.Addr{})
	known.Add(256, dst4)

	esp := func(spi uint32, dst netip.Addr) Result {
		return Result{Class: ClassESP, HasSPI: true, SPI: spi, Dst: dst}
	}
	for _, tc := range []struct {
		name string
		r    Result
		want Outcome
	}{
		{"no spi", Result{Class: ClassIKE, Dst: dst4}, OutcomeNone},
		{"spi 0", esp(0, dst4), OutcomeReserved},
		{"spi 255", esp(255, dst4), OutcomeReserved},
		{"spi 256 known", esp(256, dst4), OutcomeKnown},
		{"spi 256 other dst", esp(256, netip.MustParseAddr("192.0.2.3")), OutcomeUnknown},
		{"v4 exact", esp(0x1000, dst4), OutcomeKnown},
		{"v4 as mapped v6", esp(0x1000, netip.MustParseAddr("::ffff:192.0.2.2")), OutcomeKnown},
		{"v4 wrong dst", esp(0x1000, dst6), OutcomeUnknown},
		{"v6 exact", Result{Class: ClassESPInUDP, HasSPI: true, SPI: 0x2000, Dst: dst6}, OutcomeKnown},
		{"any dst v4", esp(0x3000, dst4), OutcomeKnown},
		{"any dst v6", esp(0x3000, dst6), OutcomeKnown},
		{"unknown", esp(0x4000, dst4), OutcomeUnknown},
		{"nil set", Result{Class: ClassESP, HasSPI: true, SPI: 0x1000, Dst: dst4}, OutcomeKnown},
	} {
		set := known
		if tc.name == "nil set" {
			set, tc.want = nil, OutcomeUnknown
		}
		if got := OutcomeOf(tc.r, set); got != tc.want {
			t.Errorf("%s: OutcomeOf = %v, want %v", tc.name, got, tc.want)
		}
	}
	if k := MakeSAKey(1, dst4); k.Dst != [16]byte{10: 0xff, 11: 0xff, 12: 192, 13: 0, 14: 2, 15: 2} {
		t.Errorf("MakeSAKey(v4).Dst = %x, want ::ffff:192.0.2.2", k.Dst)
	}
}

func TestVerdict(t *testing.T) {
	for o := range Outcome(NumOutcomes) {
		for _, drop := range []bool{false, true} {
			want := uint32(XDPPass)
			if o == OutcomeUnknown && drop {
				want = XDPDrop
			}
			if got := Verdict(o, drop); got != want {
				t.Errorf("Verdict(%v, %v) = %d, want %d", o, drop, got, want)
			}
		}
	}
}

func TestNames(t *testing.T) {
	want := []string{"other", "esp", "esp-in-udp", "ike", "nat-keepalive", "fragment", "malformed", "icmp-esp"}
	for i, n := range want {
		if got := Class(i).String(); got != n {
			t.Errorf("Class(%d) = %q, want %q", i, got, n)
		}
		if c, err := ParseClass(n); err != nil || c != Class(i) {
			t.Errorf("ParseClass(%q) = %v, %v", n, c, err)
		}
	}
	if len(want) != NumClasses {
		t.Errorf("NumClasses = %d, want %d", NumClasses, len(want))
	}
	if _, err := ParseClass("bogus"); err == nil {
		t.Error("ParseClass(bogus): no error")
	}
	if got := Class(8).String(); got != "class(8)" {
		t.Errorf("Class(8) = %q", got)
	}
	for i, n := range []string{"none", "known", "unknown", "reserved"} {
		if got := Outcome(i).String(); got != n {
			t.Errorf("Outcome(%d) = %q, want %q", i, got, n)
		}
		if o, err := ParseOutcome(n); err != nil || o != Outcome(i) {
			t.Errorf("ParseOutcome(%q) = %v, %v", n, o, err)
		}
	}
	if _, err := ParseOutcome("bogus"); err == nil {
		t.Error("ParseOutcome(bogus): no error")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg *Config
		ok  bool
	}{
		{nil, true},
		{&Config{}, true},
		{&Config{NATTPorts: []uint16{4500, 4501, 1, 2, 3, 4, 5, 6}}, true},
		{&Config{NATTPorts: []uint16{4500, 4501, 1, 2, 3, 4, 5, 6, 7}}, false},
		{&Config{NATTPorts: []uint16{0}}, false},
	} {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok %v", tc.cfg, err, tc.ok)
		}
	}
}

func FuzzClassify(f *testing.F) {
	for _, b := range samples() {
		f.Add(b, uint16(0))
	}
	f.Add(v4.ESPInUDP(4501, 4501, spi, seq, 9), uint16(4501))
	f.Fuzz(func(t *testing.T, frame []byte, port uint16) {
		var cfg *Config
		if port != 0 {
			cfg = &Config{NATTPorts: []uint16{port}}
		}
		in := bytes.Clone(frame)
		r := Classify(frame, cfg)
		if !bytes.Equal(in, frame) {
			t.Fatal("Classify changed its input")
		}
		if r.Class >= NumClasses {
			t.Fatalf("class %d out of range", r.Class)
		}
		hasSPI := r.Class == ClassESP || r.Class == ClassESPInUDP
		if r.HasSPI != hasSPI {
			t.Fatalf("HasSPI = %v for class %v", r.HasSPI, r.Class)
		}
		if !hasSPI && (r.SPI != 0 || r.Seq != 0) {
			t.Fatalf("class %v has spi %#x seq %d", r.Class, r.SPI, r.Seq)
		}
		if hasSPI && !r.Dst.IsValid() {
			t.Fatalf("class %v without addresses", r.Class)
		}
		if (r.Class == ClassICMPESP) != (r.ICMP.Family != 0) || r.Class != ClassIKE && r.IKE != (IKEHeader{}) {
			t.Fatalf("class %v with ICMP %+v IKE %+v", r.Class, r.ICMP, r.IKE)
		}
		if r.Class == ClassESP && (r.SrcPort != 0 || r.DstPort != 0) {
			t.Fatalf("esp with ports %d → %d", r.SrcPort, r.DstPort)
		}
		o := OutcomeOf(r, SASet{MakeSAKey(r.SPI, r.Dst): {}})
		if (o == OutcomeNone) == hasSPI {
			t.Fatalf("outcome %v for class %v", o, r.Class)
		}
	})
}
