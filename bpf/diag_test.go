// SPDX-License-Identifier: Apache-2.0

package bpf_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/loader"
)

var (
	router4 = netip.MustParseAddr("192.0.2.254")
	router6 = netip.MustParseAddr("2001:db8:ffff::fe")
	// Our own outbound ESP (gateway to peer), which routers on the path answer.
	out4 = frames.Frame{Src: gw4, Dst: peer4}
	out6 = frames.Frame{Src: gw6, Dst: peer6}
	// The ICMP errors about it, from a router on the path, and from the peer.
	fromRouter4 = frames.Frame{Src: router4, Dst: gw4}
	fromRouter6 = frames.Frame{Src: router6, Dst: gw6}
	fromPeer4   = frames.Frame{Src: peer4, Dst: gw4}
	fromPeer6   = frames.Frame{Src: peer6, Dst: gw6}
)

// icmpCase is an ICMP frame and what the program must make of it.
type icmpCase struct {
	name  string
	frame []byte
	class classify.Class // icmp-esp or other
	// for icmp-esp:
	typ, code uint8
	quote     classify.Quote
	spi       uint32
	mtu       uint32
}

func icmpCases() []icmpCase {
	const (
		icmpESP, other           = classify.ClassICMPESP, classify.ClassOther
		qESP, qUDP, qNoSPI       = classify.QuoteESP, classify.QuoteESPInUDP, classify.QuoteNATTNoSPI
		unreach, fragNeeded      = frames.ICMPUnreachable, frames.ICMPCodeFragNeeded
		portUnreach, rfc792      = frames.ICMPCodePortUnreach, frames.ICMPRFC792QuoteBytes
		unreach6, tooBig6, port6 = frames.ICMPv6Unreachable, frames.ICMPv6PacketTooBig, frames.ICMPv6CodePortUnrch
	)
	esp4 := out4.ESP(0xc0ffee01, 77, 1400)
	udp4 := out4.ESPInUDP(4500, 4500, 0xc0ffee02, 78, 1400)
	esp6 := out6.ESP(0xc0ffee03, 79, 1400)
	udp6 := out6.ESPInUDP(4500, 4500, 0xc0ffee04, 80, 1400)
	opts := with(out4, func(f *frames.Frame) { f.IPv4Options = []byte{1, 1, 1, 1} })
	laterFrag := with(out4, func(f *frames.Frame) { f.Frag = &frames.Frag{Offset: 100, ID: 4} })
	hbh6 := with(out6, func(f *frames.Frame) { f.IPv6Ext = exts(1) })
	outerHBH6 := with(fromRouter6, func(f *frames.Frame) { f.IPv6Ext = exts(1) })
	vlan4 := with(fromRouter4, func(f *frames.Frame) { f.VLANs = tags(2) })
	fragNeeded4 := fromRouter4.ICMP(unreach, fragNeeded, 1400, frames.Quote(esp4, rfc792))
	return []icmpCase{
		// IPv4: path MTU problems on our own outbound ESP, RFC 792 and RFC 1812 quotes.
		{"v4 frag-needed quoting our esp, 8 bytes (RFC 792)", fragNeeded4, icmpESP, unreach, fragNeeded, qESP, 0xc0ffee01, 1400},
		{"v4 frag-needed quoting our esp, 548 bytes (RFC 1812)", fromRouter4.ICMP(unreach, fragNeeded, 1280, frames.Quote(esp4, 528)), icmpESP, unreach, fragNeeded, qESP, 0xc0ffee01, 1280},
		{"v4 frag-needed quoting our esp-in-udp", fromRouter4.ICMP(unreach, fragNeeded, 1400, frames.Quote(udp4, 64)), icmpESP, unreach, fragNeeded, qUDP, 0xc0ffee02, 1400},
		{"v4 frag-needed, 4 quoted bytes: the SPI", fromRouter4.ICMP(unreach, fragNeeded, 1400, frames.Quote(esp4, 4)), icmpESP, unreach, fragNeeded, qESP, 0xc0ffee01, 1400},
		{"v4 frag-needed, 3 quoted bytes", fromRouter4.ICMP(unreach, fragNeeded, 1400, frames.Quote(esp4, 3)), other, 0, 0, 0, 0, 0},
		{"v4 frag-needed, quoted ip header cut", fromRouter4.ICMP(unreach, fragNeeded, 1400, frames.Quote(esp4, 0)[:19]), other, 0, 0, 0, 0, 0},
		{"v4 frag-needed, nothing quoted", fromRouter4.ICMP(unreach, fragNeeded, 1400, nil), other, 0, 0, 0, 0, 0},
		{"v4 frag-needed in two vlan tags", vlan4.ICMP(unreach, fragNeeded, 1400, frames.Quote(esp4, rfc792)), icmpESP, unreach, fragNeeded, qESP, 0xc0ffee01, 1400},
		{"v4 quoted ip options", fromRouter4.ICMP(unreach, fragNeeded, 1400, frames.Quote(opts.ESP(0xc0ffee05, 1, 100), rfc792)), icmpESP, unreach, fragNeeded, qESP, 0xc0ffee05, 1400},
		{"v4 quoted later fragment", fromRouter4.ICMP(unreach, fragNeeded, 1400, frames.Quote(laterFrag.ESP(0xc0ffee01, 1, 100), rfc792)), other, 0, 0, 0, 0, 0},
		// The peer's IKE daemon is gone: port unreachable quoting our ESP-in-UDP.
		{"v4 port-unreachable quoting esp-in-udp", fromPeer4.ICMP(unreach, portUnreach, 0, frames.Quote(udp4, 520)), icmpESP, unreach, portUnreach, qUDP, 0xc0ffee02, 0},
		{"v4 port-unreachable quoting esp-in-udp, 8 bytes: no SPI", fromPeer4.ICMP(unreach, portUnreach, 0, frames.Quote(udp4, rfc792)), icmpESP, unreach, portUnreach, qNoSPI, 0, 0},
		// ... or quoting our plain ESP (a peer without NAT-T).
		{"v4 port-unreachable quoting esp", fromPeer4.ICMP(unreach, portUnreach, 0, frames.Quote(esp4, 64)), icmpESP, unreach, portUnreach, qESP, 0xc0ffee01, 0},
		{"v4 port-unreachable quoting esp, 8 bytes (RFC 792)", fromPeer4.ICMP(unreach, portUnreach, 0, frames.Quote(esp4, rfc792)), icmpESP, unreach, portUnreach, qESP, 0xc0ffee01, 0},
		{"v4 port-unreachable quoting a keepalive, 8 bytes", fromPeer4.ICMP(unreach, portUnreach, 0, frames.Quote(out4.Keepalive(4500, 4500), rfc792)), other, 0, 0, 0, 0, 0},
		{"v4 port-unreachable quoting a keepalive", fromPeer4.ICMP(unreach, portUnreach, 0, frames.Quote(out4.Keepalive(4500, 4500), -1)), other, 0, 0, 0, 0, 0},
		{"v4 port-unreachable quoting ike with marker", fromPeer4.ICMP(unreach, portUnreach, 0, frames.Quote(out4.IKE(4500, 4500, true, 200), 64)), other, 0, 0, 0, 0, 0},
		{"v4 port-unreachable quoting ike on 500", fromPeer4.ICMP(unreach, portUnreach, 0, frames.Quote(out4.IKE(500, 500, false, 200), 64)), other, 0, 0, 0, 0, 0},
		{"v4 port-unreachable quoting udp 500 to 4500", fromPeer4.ICMP(unreach, portUnreach, 0, frames.Quote(out4.ESPInUDP(500, 4500, 0xc0ffee02, 1, 64), 64)), other, 0, 0, 0, 0, 0},
		{"v4 port-unreachable quoting dns", fromPeer4.ICMP(unreach, portUnreach, 0, frames.Quote(out4.UDP(40000, 53, make([]byte, 30)), 64)), other, 0, 0, 0, 0, 0},
		{"v4 host-unreachable quoting tcp", fromRouter4.ICMP(unreach, 1, 0, frames.Quote(out4.TCP(40000, 443, 100), 64)), other, 0, 0, 0, 0, 0},
		{"v4 host-unreachable quoting esp", fromRouter4.ICMP(unreach, 1, 0, frames.Quote(esp4, 64)), icmpESP, unreach, 1, qESP, 0xc0ffee01, 0},
		{"v4 time-exceeded quoting esp", fromRouter4.ICMP(frames.ICMPTimeExceeded, 0, 0, frames.Quote(esp4, rfc792)), icmpESP, 11, 0, qESP, 0xc0ffee01, 0},
		{"v4 parameter-problem quoting esp-in-udp", fromRouter4.ICMP(frames.ICMPParamProblem, 0, 0x14000000, frames.Quote(udp4, 64)), icmpESP, 12, 0, qUDP, 0xc0ffee02, 0},
		{"v4 time-exceeded quoting reserved spi 0", fromRouter4.ICMP(frames.ICMPTimeExceeded, 0, 0, frames.Quote(out4.ESP(0, 1, 40), rfc792)), icmpESP, 11, 0, qESP, 0, 0},
		{"v4 echo request stays other", fromPeer4.ICMP(frames.ICMPEchoRequest, 0, 0x00010001, frames.Quote(esp4, 64)), other, 0, 0, 0, 0, 0},
		{"v4 echo reply stays other", fromPeer4.ICMP(0, 0, 0x00010001, make([]byte, 56)), other, 0, 0, 0, 0, 0},
		{"v4 redirect stays other", fromRouter4.ICMP(5, 1, 0, frames.Quote(esp4, rfc792)), other, 0, 0, 0, 0, 0},
		{"v4 icmp header only", fromRouter4.ICMP(unreach, fragNeeded, 1400, nil)[:14+20+8], other, 0, 0, 0, 0, 0},
		{"v4 icmp total length past frame", patch(fragNeeded4, 14+2, 0x05, 0xdc), other, 0, 0, 0, 0, 0},
		{"v4 icmp quoting ipv6", fromRouter4.ICMP(unreach, fragNeeded, 1400, frames.Quote(esp6, rfc792)), other, 0, 0, 0, 0, 0},
		{"v4 later fragment of an icmp error", patch(fragNeeded4, 14+6, 0x00, 0x10), classify.ClassFragment, 0, 0, 0, 0, 0},

		// IPv6.
		{"v6 packet-too-big quoting our esp", fromRouter6.ICMP(tooBig6, 0, 1280, frames.Quote(esp6, 1232-40)), icmpESP, tooBig6, 0, qESP, 0xc0ffee03, 1280},
		{"v6 packet-too-big quoting our esp-in-udp", fromRouter6.ICMP(tooBig6, 0, 1400, frames.Quote(udp6, 100)), icmpESP, tooBig6, 0, qUDP, 0xc0ffee04, 1400},
		{"v6 packet-too-big, 8 bytes of esp", fromRouter6.ICMP(tooBig6, 0, 1280, frames.Quote(esp6, rfc792)), icmpESP, tooBig6, 0, qESP, 0xc0ffee03, 1280},
		{"v6 port-unreachable quoting esp-in-udp", fromPeer6.ICMP(unreach6, port6, 0, frames.Quote(udp6, 200)), icmpESP, unreach6, port6, qUDP, 0xc0ffee04, 0},
		{"v6 port-unreachable quoting esp-in-udp, 8 bytes: no SPI", fromPeer6.ICMP(unreach6, port6, 0, frames.Quote(udp6, rfc792)), icmpESP, unreach6, port6, qNoSPI, 0, 0},
		{"v6 time-exceeded quoting esp", fromRouter6.ICMP(frames.ICMPv6TimeExceeded, 0, 0, frames.Quote(esp6, 64)), icmpESP, 3, 0, qESP, 0xc0ffee03, 0},
		{"v6 parameter-problem quoting esp", fromRouter6.ICMP(frames.ICMPv6ParamProblem, 0, 6, frames.Quote(esp6, 64)), icmpESP, 4, 0, qESP, 0xc0ffee03, 0},
		{"v6 behind an outer hop-by-hop header", outerHBH6.ICMP(tooBig6, 0, 1280, frames.Quote(esp6, 64)), icmpESP, tooBig6, 0, qESP, 0xc0ffee03, 1280},
		{"v6 quote with an extension header", fromRouter6.ICMP(tooBig6, 0, 1280, frames.Quote(hbh6.ESP(0xc0ffee03, 1, 100), 64)), other, 0, 0, 0, 0, 0},
		{"v6 quoted esp, 3 bytes", fromRouter6.ICMP(tooBig6, 0, 1280, frames.Quote(esp6, 3)), other, 0, 0, 0, 0, 0},
		{"v6 quoted ipv6 header cut", fromRouter6.ICMP(tooBig6, 0, 1280, frames.Quote(esp6, 0)[:39]), other, 0, 0, 0, 0, 0},
		{"v6 quoting ipv4", fromRouter6.ICMP(tooBig6, 0, 1280, frames.Quote(esp4, 64)), other, 0, 0, 0, 0, 0},
		{"v6 echo request stays other", fromPeer6.ICMP(frames.ICMPv6EchoRequest, 0, 0x00010001, frames.Quote(esp6, 64)), other, 0, 0, 0, 0, 0},
		{"v6 mld report stays other", fromPeer6.ICMP(143, 0, 1, make([]byte, 20)), other, 0, 0, 0, 0, 0},
		{"v6 icmp (v4's protocol 1) stays other", fromRouter6.IP(frames.ProtoICMP, frames.Quote(fromRouter4.ICMP(unreach, fragNeeded, 1400, frames.Quote(esp4, 8)), -1)[20:]), other, 0, 0, 0, 0, 0},
		{"v6 payload length past frame", patch(fromRouter6.ICMP(tooBig6, 0, 1280, frames.Quote(esp6, 64)), 14+4, 0x05, 0xdc), other, 0, 0, 0, 0, 0},
	}
}

// ikeCase is an IKE frame and the row the program must count it in.
type ikeCase struct {
	name     string
	frame    []byte
	version  uint8
	exchange classify.IKEExchange
	dir      classify.IKEDir
}

func ikeMsg(version, exch, flags uint8, body int) []byte {
	return frames.IKEHeader{ISPI: 0x1122334455667788, RSPI: 0x99aabbccddeeff00, NextPayload: 46,
		Version: version, Exchange: exch, Flags: flags, MsgID: 3}.Message(body)
}

func ikeCases() []ikeCase {
	const (
		i, r = frames.IKEFlagInitiator, frames.IKEFlagResponse
		req  = classify.IKERequest
		resp = classify.IKEResponse
		nod  = classify.IKENoDir
	)
	var out []ikeCase
	type ex struct {
		version, typ uint8
		want         classify.IKEExchange
	}
	for _, e := range []ex{
		{0x20, frames.IKEv2SAInit, classify.IKESAInit},
		{0x20, frames.IKEv2Auth, classify.IKEAuth},
		{0x20, frames.IKEv2CreateChildSA, classify.IKECreateChildSA},
		{0x20, frames.IKEv2Informational, classify.IKEInformational},
		{0x20, 43, classify.IKEOther}, // IKE_INTERMEDIATE
		{0x10, frames.IKEv1Main, classify.IKEMain},
		{0x10, frames.IKEv1Aggressive, classify.IKEAggressive},
		{0x10, frames.IKEv1Quick, classify.IKEQuick},
		{0x10, frames.IKEv1Informational, classify.IKEInformational},
		{0x10, 33, classify.IKEOther},                 // new group mode
		{0x10, frames.IKEv2SAInit, classify.IKEOther}, // an IKEv2 number in IKEv1
		{0x20, frames.IKEv1Main, classify.IKEOther},   // and the other way round
		{0x30, frames.IKEv2SAInit, classify.IKEOther}, // no IKEv3
	} {
		for _, natt := range []bool{false, true} {
			port := uint16(500)
			if natt {
				port = 4500
			}
			for _, flags := range []uint8{i, r} {
				dir := req
				if flags == r {
					dir = resp
				}
				if e.version != 0x20 {
					dir = nod
				}
				for _, f := range []frames.Frame{v4, v6} {
					fam := "v4"
					if f.Src.Is6() {
						fam = "v6"
					}
					out = append(out, ikeCase{fmt.Sprintf("ike %#x type %d flags %#x port %d %s", e.version, e.typ, flags, port, fam),
						f.IKEMessage(port, port, natt, ikeMsg(e.version, e.typ, flags, 40)), e.version >> 4, e.want, dir})
				}
			}
		}
	}
	return append(out,
		ikeCase{"ike header only", v4.IKEMessage(500, 500, false, ikeMsg(0x20, frames.IKEv2SAInit, i, 0)), 2, classify.IKESAInit, req},
		ikeCase{"ike 500 to 4500, no marker", v4.IKEMessage(500, 4500, false, ikeMsg(0x20, frames.IKEv2Auth, r, 10)), 2, classify.IKEAuth, resp},
		ikeCase{"ike 27 bytes on 500: malformed", v4.UDP(500, 500, ikeMsg(0x20, frames.IKEv2SAInit, i, 0)[:27]), 0, classify.IKEMalformed, nod},
		ikeCase{"ike 27 bytes after the marker: malformed", v4.IKEMessage(4500, 4500, true, ikeMsg(0x20, frames.IKEv2SAInit, i, 0)[:27]), 0, classify.IKEMalformed, nod},
		ikeCase{"ike marker alone: malformed", v6.UDP(4500, 4500, make([]byte, 4)), 0, classify.IKEMalformed, nod},
		ikeCase{"ike empty on 500: malformed", v4.UDP(500, 500, nil), 0, classify.IKEMalformed, nod},
	)
}

// diagTableCases are the ICMP and IKE cases as rows of the main table (so the
// truncation, drop and differential tests cover them too).
func diagTableCases() []tcase {
	var out []tcase
	for _, c := range icmpCases() {
		out = append(out, tcase{name: "icmp/" + c.name, frame: c.frame, class: c.class})
	}
	for _, c := range ikeCases() {
		out = append(out, tcase{name: "ike/" + c.name, frame: c.frame, class: classify.ClassIKE})
	}
	return out
}

// TestProgramICMP checks every ICMP case's class and row against the case's own
// expectations (compare checks them against the reference classifier too).
func TestProgramICMP(t *testing.T) {
	h := newHarness(t, loader.Settings{}, tableKnown...)
	for _, c := range icmpCases() {
		t.Run(c.name, func(t *testing.T) {
			got := h.compare(t, c.frame)
			if got.Class != c.class || got.Verdict != pass || got.Unknown != nil || got.Known != nil {
				t.Fatalf("got %s verdict %d unknown row %v known %v, want %s, pass, no SPI counted", got.Class, got.Verdict, got.Unknown, got.Known, c.class)
			}
			if c.class != classify.ClassICMPESP {
				if got.ICMP != nil {
					t.Fatalf("ICMP row %+v for class %s", got.ICMP, got.Class)
				}
				return
			}
			e := got.ICMP
			if e.Type != c.typ || e.Code != c.code || e.Quote != c.quote || e.SPI != c.spi || e.MTU != c.mtu {
				t.Fatalf("row %+v, want type %d code %d quote %s SPI %#x MTU %d", e, c.typ, c.code, c.quote, c.spi, c.mtu)
			}
			wantFam, src, dst := uint8(4), gw4, peer4
			if e.Reporter.Is6() {
				wantFam, src, dst = 6, gw6, peer6
			}
			if e.Family != wantFam || e.Src != src || e.Dst != dst {
				t.Fatalf("row %+v: want family %d, quoted %v → %v", e, wantFam, src, dst)
			}
			if e.Quote != classify.QuoteESP && (e.SrcPort != 4500 || e.DstPort != 4500) {
				t.Fatalf("row %+v: quoted ports %d → %d, want 4500 → 4500", e, e.SrcPort, e.DstPort)
			}
		})
	}
}

// TestProgramIKE checks every IKE case's row.
func TestProgramIKE(t *testing.T) {
	h := newHarness(t, loader.Settings{}, tableKnown...)
	for _, c := range ikeCases() {
		t.Run(c.name, func(t *testing.T) {
			got := h.compare(t, c.frame)
			if got.Class != classify.ClassIKE || got.IKE == nil {
				t.Fatalf("class %s, IKE row %v; want ike with a row", got.Class, got.IKE)
			}
			x := got.IKE
			if x.Version != c.version || x.Exchange != c.exchange || x.Dir != c.dir {
				t.Fatalf("row v%d %s %s, want v%d %s %s", x.Version, x.Exchange, x.Dir, c.version, c.exchange, c.dir)
			}
			if c.exchange != classify.IKEMalformed && (x.LastISPI != 0x1122334455667788 || x.LastRSPI != 0x99aabbccddeeff00 || x.LastMsgID != 3 || x.LastNextPay != 46) {
				t.Fatalf("row %+v: header fields not those sent", x)
			}
		})
	}
}
