// SPDX-License-Identifier: Apache-2.0

// Package classify is the pure-Go reference classifier: it puts an Ethernet
// frame in exactly one class following docs/CLASSES.md step by step, the
// same procedure as the XDP program, so the two can be fuzzed against each
// other and pcap files can be read offline with the same answers.
package classify

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Class is the class of a frame. The numbers are shared with the BPF
// program's counters: never renumber them.
type Class uint8

// Classes, in the order of docs/CLASSES.md.
const (
	ClassOther Class = iota
	ClassESP
	ClassESPInUDP
	ClassIKE
	ClassNATKeepalive
	ClassFragment
	ClassMalformed
	ClassICMPESP // an ICMP or ICMPv6 error quoting ESP or ESP-in-UDP

	// NumClasses is the number of classes (the size of per-class tables).
	NumClasses = 8
)

var classNames = [NumClasses]string{
	"other", "esp", "esp-in-udp", "ike", "nat-keepalive", "fragment", "malformed", "icmp-esp",
}

// String returns the name used in reports and flags, e.g. "esp-in-udp".
func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return fmt.Sprintf("class(%d)", uint8(c))
}

// ParseClass is the inverse of Class.String.
func ParseClass(s string) (Class, error) {
	for i, n := range classNames {
		if n == s {
			return Class(i), nil
		}
	}
	return 0, fmt.Errorf("parsing class %q: unknown class", s)
}

// Outcome says whether the SPI of an esp or esp-in-udp frame belongs to a
// known SA. Every other class has OutcomeNone.
type Outcome uint8

// Outcomes; the numbers are shared with the BPF program.
const (
	OutcomeNone Outcome = iota
	OutcomeKnown
	OutcomeUnknown
	OutcomeReserved

	// NumOutcomes is the number of outcomes (the size of per-outcome tables).
	NumOutcomes = 4
)

var outcomeNames = [NumOutcomes]string{"none", "known", "unknown", "reserved"}

// String returns the outcome's name, e.g. "unknown".
func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// ParseOutcome is the inverse of Outcome.String.
func ParseOutcome(s string) (Outcome, error) {
	for i, n := range outcomeNames {
		if n == s {
			return Outcome(i), nil
		}
	}
	return 0, fmt.Errorf("parsing outcome %q: unknown outcome", s)
}

const (
	// DefaultNATTPort is the NAT-T port used when Config names none (RFC 3948).
	DefaultNATTPort = 4500
	// MaxNATTPorts is how many NAT-T ports the BPF program has room for.
	MaxNATTPorts = 8
	// MaxIPv6Ext is MAX_IPV6_EXT: the longest IPv6 extension chain walked.
	MaxIPv6Ext = 8
	// MaxVLANTags is how many 802.1Q/802.1ad tags are skipped.
	MaxVLANTags = 2
	// IKEPort is the IKE port; it wins over NAT-T ports.
	IKEPort = 500
)

// Config holds the load-time settings that change classification.
type Config struct {
	// NATTPorts is the set of UDP ports carrying ESP-in-UDP and IKE with the
	// non-ESP marker. Nil or empty means {DefaultNATTPort}. Only the first
	// MaxNATTPorts are used, as in the BPF program; Validate rejects more.
	NATTPorts []uint16
}

// Validate reports a setting the BPF program could not hold.
func (c *Config) Validate() error {
	if c == nil {
		return nil
	}
	if len(c.NATTPorts) > MaxNATTPorts {
		return fmt.Errorf("validating nat-t ports: %d given, at most %d", len(c.NATTPorts), MaxNATTPorts)
	}
	for _, p := range c.NATTPorts {
		if p == 0 {
			return fmt.Errorf("validating nat-t ports: port 0 is not a port")
		}
	}
	return nil
}

// isNATT reports whether port p is in the NAT-T set.
func (c *Config) isNATT(p uint16) bool {
	if c == nil || len(c.NATTPorts) == 0 {
		return p == DefaultNATTPort
	}
	ports := c.NATTPorts
	if len(ports) > MaxNATTPorts {
		ports = ports[:MaxNATTPorts]
	}
	for _, q := range ports {
		if q == p {
			return true
		}
	}
	return false
}

// Result is what Classify found in a frame.
type Result struct {
	Class  Class
	HasSPI bool // true exactly for esp and esp-in-udp
	SPI    uint32
	Seq    uint32
	// Src and Dst are the outer IP addresses, set as soon as the IP header
	// was long enough and of the right version (always for esp and
	// esp-in-udp). IPv4 addresses are 4-byte addresses.
	Src, Dst netip.Addr
	// SrcPort and DstPort are set once a UDP header could be read (always
	// for esp-in-udp, ike and nat-keepalive); 0 for plain esp.
	SrcPort, DstPort uint16
	// ICMP is what an icmp-esp error says (zero for other classes); the
	// reporter is Src.
	ICMP ICMPError
	// IKE is the IKE header of an ike frame (zero for other classes).
	IKE IKEHeader
}

const (
	ethHdrLen  = 14
	vlanTagLen = 4

	etherTypeIPv4  = 0x0800
	etherTypeIPv6  = 0x86dd
	etherTypeVLAN  = 0x8100
	etherTypeQinQ  = 0x88a8
	ipv4MinHdrLen  = 20
	ipv6HdrLen     = 40
	ipv6FragHdrLen = 8

	protoHopByHop = 0
	protoICMP     = 1
	protoUDP      = 17
	protoRouting  = 43
	protoFragment = 44
	protoESP      = 50
	protoICMPv6   = 58
	protoDstOpts  = 60

	udpHdrLen = 8
	espHdrLen = 8 // SPI and sequence number
)

// l3 is what the IP layer hands to layer 4.
type l3 struct {
	family    uint8 // 4 or 6
	proto     uint8
	badLen    bool
	firstFrag bool
	l4        []byte // bytes from the L4 start to l4_end; may be empty
}

// Classify puts frame (starting at the Ethernet header) in one class. A nil
// cfg means the defaults. It never panics and never reads past frame.
func Classify(frame []byte, cfg *Config) Result {
	var r Result

	// Layer 2.
	if len(frame) < ethHdrLen {
		return r // other
	}
	typeOff := 12
	etherType := binary.BigEndian.Uint16(frame[typeOff:])
	for tags := 0; etherType == etherTypeVLAN || etherType == etherTypeQinQ; tags++ {
		// A tag is 4 bytes: TCI, then the next EtherType.
		if tags == MaxVLANTags || typeOff+2+vlanTagLen > len(frame) {
			return r
		}
		typeOff += vlanTagLen
		etherType = binary.BigEndian.Uint16(frame[typeOff:])
	}
	ip := frame[typeOff+2:] // "the frame": IP header to the end of the buffer

	var (
		l     l3
		class Class
		done  bool
	)
	switch etherType {
	case etherTypeIPv4:
		l, class, done = parseIPv4(ip, &r)
	case etherTypeIPv6:
		l, class, done = parseIPv6(ip, &r)
	default:
		return r
	}
	if done {
		r.Class = class
		return r
	}
	classifyL4(l, cfg, &r)
	return r
}

// parseIPv4 follows the IPv4 steps. done means the class is decided.
func parseIPv4(ip []byte, r *Result) (l l3, c Class, done bool) {
	avail := len(ip)
	if avail < ipv4MinHdrLen {
		return l, ClassOther, true
	}
	if ip[0]>>4 != 4 {
		return l, ClassOther, true
	}
	r.Src = netip.AddrFrom4([4]byte(ip[12:16]))
	r.Dst = netip.AddrFrom4([4]byte(ip[16:20]))
	proto := ip[9]
	hdrLen := int(ip[0]&0x0f) * 4
	if hdrLen < ipv4MinHdrLen || hdrLen > avail {
		// For UDP the ports cannot be located, so only ESP claims IPsec.
		if proto == protoESP {
			return l, ClassMalformed, true
		}
		return l, ClassOther, true
	}
	flagsFrag := binary.BigEndian.Uint16(ip[6:8])
	if flagsFrag&0x1fff != 0 {
		return l, ClassFragment, true
	}
	totalLen := int(binary.BigEndian.Uint16(ip[2:4]))
	l.family = 4
	l.proto = proto
	l.badLen = totalLen < hdrLen || totalLen > avail
	l.firstFrag = flagsFrag&0x2000 != 0
	end := totalLen // Ethernet padding after the packet is ignored
	if l.badLen {
		end = avail
	}
	l.l4 = ip[hdrLen:end]
	return l, 0, false
}

// parseIPv6 follows the IPv6 steps, walking at most MaxIPv6Ext extension
// headers. done means the class is decided.
func parseIPv6(ip []byte, r *Result) (l l3, c Class, done bool) {
	avail := len(ip)
	if avail < ipv6HdrLen {
		return l, ClassOther, true
	}
	if ip[0]>>4 != 6 {
		return l, ClassOther, true
	}
	r.Src = netip.AddrFrom16([16]byte(ip[8:24]))
	r.Dst = netip.AddrFrom16([16]byte(ip[24:40]))
	l3End := ipv6HdrLen + int(binary.BigEndian.Uint16(ip[4:6]))
	if l3End > avail {
		l.badLen = true
		l3End = avail
	}
	nh := ip[6]
	off := ipv6HdrLen
walk:
	for range MaxIPv6Ext {
		switch nh {
		case protoHopByHop, protoRouting, protoDstOpts:
			if off+2 > l3End {
				return l, ClassOther, true
			}
			nh = ip[off]
			off += (int(ip[off+1]) + 1) * 8
		case protoFragment:
			if off+ipv6FragHdrLen > l3End {
				return l, ClassOther, true
			}
			fo := binary.BigEndian.Uint16(ip[off+2 : off+4])
			if fo>>3 != 0 {
				return l, ClassFragment, true
			}
			if fo&1 != 0 {
				l.firstFrag = true
			}
			nh = ip[off]
			off += ipv6FragHdrLen
		default:
			break walk // the upper-layer protocol
		}
	}
	if isIPv6Ext(nh) {
		return l, ClassMalformed, true // chain too long: fail closed
	}
	l.family = 6
	l.proto = nh
	if off < l3End {
		l.l4 = ip[off:l3End]
	}
	return l, 0, false
}

func isIPv6Ext(nh uint8) bool {
	return nh == protoHopByHop || nh == protoRouting || nh == protoFragment || nh == protoDstOpts
}

// classifyL4 follows the Layer 4 steps and fills r.
func classifyL4(l l3, cfg *Config, r *Result) {
	present := len(l.l4)
	switch l.proto {
	case protoESP:
		switch {
		case l.badLen:
			r.Class = ClassMalformed
		case present < espHdrLen:
			r.Class = shortClass(l.firstFrag, ClassMalformed)
		default:
			setSPI(r, ClassESP, l.l4)
		}
	case protoUDP:
		if present < udpHdrLen {
			r.Class = shortClass(l.firstFrag, ClassOther)
			return
		}
		r.SrcPort = binary.BigEndian.Uint16(l.l4[0:2])
		r.DstPort = binary.BigEndian.Uint16(l.l4[2:4])
		is500 := r.SrcPort == IKEPort || r.DstPort == IKEPort
		natt := cfg.isNATT(r.SrcPort) || cfg.isNATT(r.DstPort)
		if !is500 && !natt {
			r.Class = ClassOther
			return
		}
		if l.badLen {
			r.Class = ClassMalformed
			return
		}
		var plen int
		if l.firstFrag {
			plen = present - udpHdrLen // what this fragment holds
		} else {
			udpLen := int(binary.BigEndian.Uint16(l.l4[4:6]))
			if udpLen < udpHdrLen || udpLen-udpHdrLen > present-udpHdrLen {
				r.Class = ClassMalformed
				return
			}
			plen = udpLen - udpHdrLen // the length field wins over trailing bytes
		}
		payload := l.l4[udpHdrLen : udpHdrLen+plen]
		switch {
		case is500:
			r.Class = ClassIKE // port 500 wins, as in tshark
			r.IKE = readIKE(payload)
		case !l.firstFrag && plen == 1 && payload[0] == 0xff:
			r.Class = ClassNATKeepalive
		case plen >= 4 && binary.BigEndian.Uint32(payload) == 0:
			r.Class = ClassIKE // non-ESP marker
			r.IKE = readIKE(payload[4:])
		case plen > espHdrLen:
			setSPI(r, ClassESPInUDP, payload) // xfrm4_udp_encap_rcv's test
		default:
			r.Class = shortClass(l.firstFrag, ClassMalformed)
		}
	case protoICMP, protoICMPv6:
		if (l.proto == protoICMP) == (l.family == 4) { // ICMP in IPv4, ICMPv6 in IPv6
			classifyICMP(l, cfg, r)
		}
	default:
		r.Class = ClassOther
	}
}

// shortClass is the class of a header cut short: a first fragment holds
// only part of the datagram, anything else is the fallback.
func shortClass(firstFrag bool, fallback Class) Class {
	if firstFrag {
		return ClassFragment
	}
	return fallback
}

// setSPI records an ESP header at the start of b (at least 8 bytes).
func setSPI(r *Result, c Class, b []byte) {
	r.Class = c
	r.HasSPI = true
	r.SPI = binary.BigEndian.Uint32(b[0:4])
	r.Seq = binary.BigEndian.Uint32(b[4:8])
}

// SAKey is a known-SA map key: an SPI and a destination as an IPv6 or
// IPv4-mapped address (netip.Addr.As16). An all-zero Dst matches any
// destination.
type SAKey struct {
	SPI uint32
	Dst [16]byte
}

// SASet is the set of known SAs.
type SASet map[SAKey]struct{}

// Add puts (spi, dst) in the set; an invalid dst means any destination.
func (s SASet) Add(spi uint32, dst netip.Addr) {
	s[MakeSAKey(spi, dst)] = struct{}{}
}

// MakeSAKey builds the key for (spi, dst); an invalid dst gives the
// any-destination key.
func MakeSAKey(spi uint32, dst netip.Addr) SAKey {
	k := SAKey{SPI: spi}
	if dst.IsValid() {
		k.Dst = dst.As16() // IPv4 becomes ::ffff:a.b.c.d
	}
	return k
}

// reservedSPIMax is the highest SPI reserved by IANA (RFC 4303).
const reservedSPIMax = 255

// OutcomeOf follows "Outcome of an SPI": reserved SPIs are not looked up;
// then the exact destination, then the any-destination entry.
func OutcomeOf(r Result, known SASet) Outcome {
	if !r.HasSPI {
		return OutcomeNone
	}
	if r.SPI <= reservedSPIMax {
		return OutcomeReserved
	}
	if _, ok := known[MakeSAKey(r.SPI, r.Dst)]; ok {
		return OutcomeKnown
	}
	if _, ok := known[SAKey{SPI: r.SPI}]; ok {
		return OutcomeKnown
	}
	return OutcomeUnknown
}

// XDP actions, as in the kernel's enum xdp_action.
const (
	XDPDrop = 1
	XDPPass = 2
)

// Verdict is the XDP action for an outcome: pass, except drop for unknown
// SPIs when the load-time action is drop.
func Verdict(o Outcome, dropUnknown bool) uint32 {
	if o == OutcomeUnknown && dropUnknown {
		return XDPDrop
	}
	return XDPPass
}
