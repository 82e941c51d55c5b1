// SPDX-License-Identifier: Apache-2.0

package trafficgen

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spiwatch/spiwatch/internal/frames"
)

// Kinds of stream a generator can send.
var kinds = []string{"esp", "esp-in-udp", "ike", "keepalive", "fragment", "tcp", "udp", "icmp-error"}

// Stream is count copies of one frame, optionally varying its SPI and source.
type Stream struct {
	Kind         string
	Frame        frames.Frame
	SPI, Seq     uint32
	Sport, Dport uint16
	Len          int  // payload bytes after the ESP or IKE header
	Marker       bool // ike on a NAT-T port: prefix the non-ESP marker
	Count        int
	SPIs, Srcs   uint32 // distinct SPIs / source addresses to cycle through (0 or 1: fixed)
	SeqInc       bool   // the ESP sequence number grows by one per frame from Seq

	// ike: the header, when any of version=, exchange=, response=, msgid= is
	// given (otherwise an IKEv2 IKE_SA_INIT request); the message is Len bytes
	// from the header on, cut inside the header when Len < 28.
	IKE *frames.IKEHeader

	// icmp-error: an ICMP (IPv4) or ICMPv6 error from src (a router or the
	// peer) to dst (the gateway) quoting the gateway's own outbound ESP (quote=esp)
	// or ESP-in-UDP (quote=esp-in-udp) to qdst, with SPI spi, cut to qlen bytes after
	// the quoted IP header (RFC 792: 8).
	ICMPType, ICMPCode uint8
	MTU                uint32
	Quote              string
	QuoteLen           int
	QuotedDst          netip.Addr
}

// ikeExchanges are the exchange= names (or give the number).
var ikeExchanges = map[string]struct{ version, typ uint8 }{
	"IKE_SA_INIT": {0x20, frames.IKEv2SAInit}, "IKE_AUTH": {0x20, frames.IKEv2Auth},
	"CREATE_CHILD_SA": {0x20, frames.IKEv2CreateChildSA}, "INFORMATIONAL": {0x20, frames.IKEv2Informational},
	"main": {0x10, frames.IKEv1Main}, "aggressive": {0x10, frames.IKEv1Aggressive},
	"quick": {0x10, frames.IKEv1Quick}, "informational": {0x10, frames.IKEv1Informational},
}

// ParseStream reads "KIND key=value ...", for example
//
//	esp spi=0x1000 src=10.0.0.1 dst=10.0.0.2 count=1000
//	esp-in-udp spi=0xc0ffee sport=4500 dport=4500 vlan=100 count=10
//	ike dport=4500 marker=true
//	ike exchange=CREATE_CHILD_SA response=true
//	icmp-error type=3 code=4 mtu=1400 quote=esp spi=0xc0ffee01 src=192.0.2.254 qdst=198.51.100.1
//
// Keys: src, dst (IPv4 or IPv6), spi, seq, sport, dport, len, count, vlan (IDs,
// outermost first: one tag is 802.1Q, two are 802.1ad + 802.1Q), marker, spis, srcs;
// for ike: version (1, 2), exchange (IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA,
// INFORMATIONAL, main, aggressive, quick, informational, or a number), response,
// msgid; for icmp-error: type, code, mtu, quote (esp, esp-in-udp), qlen (quoted
// bytes after the quoted IP header, default 8), qdst (the quoted packet's
// destination; its source is dst); sport and dport are then the quoted ports.
func ParseStream(s string) (Stream, error) {
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return Stream{}, fmt.Errorf("empty stream: want KIND key=value ..., KIND one of %s", strings.Join(kinds, ", "))
	}
	st := Stream{Kind: fields[0], Count: 1, Seq: 1, Len: 64}
	switch st.Kind {
	case "esp", "fragment":
	case "esp-in-udp", "keepalive":
		st.Sport, st.Dport = 4500, 4500
	case "ike":
		st.Sport, st.Dport = 500, 500
	case "tcp":
		st.Sport, st.Dport = 40000, 443
	case "udp":
		st.Sport, st.Dport = 40000, 53
	case "icmp-error":
		st.Sport, st.Dport, st.Quote, st.QuoteLen, st.SPI = 4500, 4500, "esp", frames.ICMPRFC792QuoteBytes, 0xc0ffee01
	default:
		return Stream{}, fmt.Errorf("stream %q: unknown kind %q, want one of %s", s, st.Kind, strings.Join(kinds, ", "))
	}
	st.Frame.Src = netip.MustParseAddr("198.51.100.1")
	st.Frame.Dst = netip.MustParseAddr("203.0.113.1")
	srcSet, dstSet, icmpSet := false, false, false
	for _, kv := range fields[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return Stream{}, fmt.Errorf("stream %q: %q is not key=value", s, kv)
		}
		var err error
		switch k {
		case "src", "dst":
			var a netip.Addr
			if a, err = netip.ParseAddr(v); err == nil {
				if k == "src" {
					st.Frame.Src, srcSet = a, true
				} else {
					st.Frame.Dst, dstSet = a, true
				}
			}
		case "spi":
			st.SPI, err = parseU32(v)
		case "seq":
			st.Seq, err = parseU32(v)
		case "seqinc":
			st.SeqInc, err = strconv.ParseBool(v)
		case "spis":
			st.SPIs, err = parseU32(v)
		case "srcs":
			st.Srcs, err = parseU32(v)
		case "sport", "dport":
			var p uint64
			if p, err = strconv.ParseUint(v, 10, 16); err == nil {
				if k == "sport" {
					st.Sport = uint16(p)
				} else {
					st.Dport = uint16(p)
				}
			}
		case "len":
			st.Len, err = strconv.Atoi(v)
			if err == nil && (st.Len < 0 || st.Len > 9000) {
				err = fmt.Errorf("out of range 0-9000")
			}
		case "count":
			st.Count, err = strconv.Atoi(v)
			if err == nil && st.Count < 0 {
				err = fmt.Errorf("negative")
			}
		case "marker":
			st.Marker, err = strconv.ParseBool(v)
		case "version", "exchange", "response", "msgid":
			err = st.setIKE(k, v)
		case "type", "code":
			var n uint64
			if n, err = strconv.ParseUint(v, 10, 8); err == nil {
				if k == "type" {
					st.ICMPType = uint8(n)
				} else {
					st.ICMPCode = uint8(n)
				}
				icmpSet = true
			}
		case "mtu":
			st.MTU, err = parseU32(v)
		case "quote":
			if v != "esp" && v != "esp-in-udp" {
				err = fmt.Errorf("want esp or esp-in-udp")
			}
			st.Quote = v
		case "qlen":
			st.QuoteLen, err = strconv.Atoi(v)
			if err == nil && (st.QuoteLen < 0 || st.QuoteLen > 1400) {
				err = fmt.Errorf("out of range 0-1400")
			}
		case "qdst":
			st.QuotedDst, err = netip.ParseAddr(v)
		case "vlan":
			ids := strings.Split(v, ",")
			if len(ids) > 2 {
				err = fmt.Errorf("at most two tags")
				break
			}
			st.Frame.VLANs = nil // the last vlan= wins, like every other key
			for i, id := range ids {
				var n uint64
				if n, err = strconv.ParseUint(id, 10, 12); err != nil {
					break
				}
				tpid := uint16(0x8100)
				if len(ids) == 2 && i == 0 {
					tpid = 0x88a8
				}
				st.Frame.VLANs = append(st.Frame.VLANs, frames.VLAN{TPID: tpid, ID: uint16(n)})
			}
		default:
			return Stream{}, fmt.Errorf("stream %q: unknown key %q", s, k)
		}
		if err != nil {
			return Stream{}, fmt.Errorf("stream %q: %s=%s: %v", s, k, v, err)
		}
	}
	// One address given as IPv6: default the other to IPv6 too.
	if srcSet != dstSet {
		if srcSet && st.Frame.Src.Is6() {
			st.Frame.Dst = netip.MustParseAddr("2001:db8::2")
		}
		if dstSet && st.Frame.Dst.Is6() {
			st.Frame.Src = netip.MustParseAddr("2001:db8::1")
		}
	}
	if st.Frame.Src.Is4() != st.Frame.Dst.Is4() {
		return Stream{}, fmt.Errorf("stream %q: src and dst must be the same IP version", s)
	}
	if (st.Kind == "esp" || st.Kind == "esp-in-udp") && uint64(st.SPI)+uint64(max(st.SPIs, 1))-1 > 0xFFFFFFFF {
		return Stream{}, fmt.Errorf("stream %q: spi + spis - 1 does not fit in 32 bits", s)
	}
	if st.Kind == "esp-in-udp" && st.SPI == 0 {
		// Four zero bytes after a NAT-T UDP header are the non-ESP marker: IKE.
		return Stream{}, fmt.Errorf("stream %q: esp-in-udp needs spi= other than 0 (a zero SPI is the non-ESP marker of IKE)", s)
	}
	if st.Kind == "fragment" {
		st.Frame.Frag = &frames.Frag{Offset: 185, ID: 7}
	}
	if st.IKE != nil && st.Kind != "ike" || st.Kind != "icmp-error" && (icmpSet || st.QuotedDst.IsValid()) {
		return Stream{}, fmt.Errorf("stream %q: version, exchange, response and msgid are for ike; type, code, qdst for icmp-error", s)
	}
	if st.Kind == "icmp-error" {
		if !icmpSet { // fragmentation needed / packet too big
			st.ICMPType, st.ICMPCode = frames.ICMPUnreachable, frames.ICMPCodeFragNeeded
			if st.Frame.Src.Is6() {
				st.ICMPType, st.ICMPCode = frames.ICMPv6PacketTooBig, 0
			}
			if st.MTU == 0 {
				st.MTU = 1400
				if st.Frame.Src.Is6() {
					st.MTU = 1280
				}
			}
		}
		if !st.QuotedDst.IsValid() {
			st.QuotedDst = st.Frame.Src // the peer itself reports
		}
		if st.QuotedDst.Is4() != st.Frame.Src.Is4() {
			return Stream{}, fmt.Errorf("stream %q: qdst must be the same IP version as src and dst", s)
		}
		if st.SPI == 0 && st.Quote == "esp-in-udp" {
			return Stream{}, fmt.Errorf("stream %q: quote=esp-in-udp needs spi= other than 0", s)
		}
	}
	return st, nil
}

func parseU32(v string) (uint32, error) {
	n, err := strconv.ParseUint(v, 0, 32)
	return uint32(n), err
}

// Build returns the stream's frame (its first one, when it varies).
func (s Stream) Build() []byte {
	f := s.Frame
	switch s.Kind {
	case "esp":
		return f.ESP(s.SPI, s.Seq, s.Len)
	case "fragment":
		return f.IP(frames.ProtoESP, make([]byte, max(s.Len, 8)))
	case "esp-in-udp":
		return f.ESPInUDP(s.Sport, s.Dport, s.SPI, s.Seq, s.Len)
	case "ike":
		if s.IKE == nil {
			return f.IKE(s.Sport, s.Dport, s.Marker, s.Len)
		}
		msg := s.IKE.Message(max(s.Len-frames.IKEHeaderLen, 0))
		return f.IKEMessage(s.Sport, s.Dport, s.Marker, msg[:min(len(msg), s.Len)])
	case "icmp-error":
		out := frames.Frame{Src: f.Dst, Dst: s.QuotedDst} // the gateway's own outbound packet
		var quoted []byte
		if s.Quote == "esp-in-udp" {
			quoted = out.ESPInUDP(s.Sport, s.Dport, s.SPI, s.Seq, max(s.Len, 8))
		} else {
			quoted = out.ESP(s.SPI, s.Seq, max(s.Len, 8))
		}
		return f.ICMP(s.ICMPType, s.ICMPCode, s.MTU, frames.Quote(quoted, s.QuoteLen))
	case "keepalive":
		return f.Keepalive(s.Sport, s.Dport)
	case "tcp":
		return f.TCP(s.Sport, s.Dport, s.Len)
	default:
		return f.UDP(s.Sport, s.Dport, make([]byte, s.Len))
	}
}

// l3Offset is where the IP header starts.
func (s Stream) l3Offset() uint32 { return 14 + 4*uint32(len(s.Frame.VLANs)) }

// Vary returns the rewrites that make the stream's frames carry SPIs SPI..SPI+SPIs-1
// and sources cycling through Srcs addresses.
func (s Stream) Vary() (Vary, error) {
	var v Vary
	frame := s.Build()
	if s.SPIs > 1 || s.SeqInc {
		key := "spis="
		if s.SeqInc {
			key = "seqinc="
		}
		if s.Kind != "esp" && s.Kind != "esp-in-udp" {
			return v, fmt.Errorf("%s needs an esp or esp-in-udp stream, not %s", key, s.Kind)
		}
		if len(s.Frame.IPv6Ext) > 0 || len(s.Frame.IPv4Options) > 0 {
			return v, fmt.Errorf("%s does not support IP options or extension headers", key)
		}
		off := s.l3Offset() + 20 // the SPI, then the sequence number
		if s.Frame.Src.Is6() {
			off = s.l3Offset() + 40
		}
		if s.Kind == "esp-in-udp" {
			off += 8
		}
		if s.SPIs > 1 {
			v.SPIOffset, v.SPIBase, v.SPISpan = off, s.SPI, s.SPIs
		}
		if s.SeqInc {
			v.SeqOffset, v.SeqBase = off+4, s.Seq
		}
	}
	if s.Srcs > 1 {
		off := s.l3Offset() + 12 // IPv4 source
		if s.Frame.Src.Is6() {
			off = s.l3Offset() + 8 + 12 // low word of the IPv6 source
		}
		b := frame[off : off+4]
		v.SrcOffset, v.SrcBase, v.SrcSpan = off, uint32(b[0])<<24|uint32(b[1])<<16|uint32(b[2])<<8|uint32(b[3]), s.Srcs
	}
	return v, nil
}

// setIKE applies an ike key: the header starts as an IKEv2 IKE_SA_INIT request
// from the initiator.
func (s *Stream) setIKE(k, v string) error {
	if s.IKE == nil {
		s.IKE = &frames.IKEHeader{ISPI: 0x8a3f5c1e27d94b60, RSPI: 0x1c7e9a0f3b5d2468, NextPayload: 33, Version: 0x20,
			Exchange: frames.IKEv2SAInit, Flags: frames.IKEFlagInitiator}
	}
	switch k {
	case "version":
		switch v {
		case "1":
			s.IKE.Version = 0x10
		case "2":
			s.IKE.Version = 0x20
		default:
			return fmt.Errorf("want 1 or 2")
		}
	case "exchange":
		if x, ok := ikeExchanges[v]; ok {
			s.IKE.Version, s.IKE.Exchange = x.version, x.typ
			return nil
		}
		n, err := strconv.ParseUint(v, 0, 8)
		if err != nil {
			return fmt.Errorf("want an exchange name (IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL, main, aggressive, quick, informational) or a number")
		}
		s.IKE.Exchange = uint8(n)
	case "response":
		r, err := strconv.ParseBool(v)
		if err != nil {
			return err
		}
		s.IKE.Flags = frames.IKEFlagInitiator
		if r {
			s.IKE.Flags = frames.IKEFlagResponse
		}
	case "msgid":
		n, err := parseU32(v)
		if err != nil {
			return err
		}
		s.IKE.MsgID = n
	}
	return nil
}
