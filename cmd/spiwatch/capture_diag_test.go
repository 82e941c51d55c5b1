// SPDX-License-Identifier: Apache-2.0

package main

import (
	"net/netip"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/maps"
)

// TestCaptureComments: each kept packet's comment carries what the reports say of
// it: the collision verdict with its sources (unknown SPI and known SA), the ICMP
// error and the SPI it quotes, the IKE exchange.
func TestCaptureComments(t *testing.T) {
	d := newCaptureDiag(nil, []uint16{4500}, report.DefaultCollisionWindow)
	d.read = time.Now() // collisions as set below, not read from maps
	gw := frames.DefaultDst4
	a, b := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.8")
	d.unknown = map[report.SPIDst][]maps.SASource{{SPI: 0xc011, Dst: gw}: {{Addr: a}, {Addr: b}}}
	d.known = map[maps.SA][]maps.SASource{{SPI: 0x5000}: {{Addr: a, Port: 4500}, {Addr: a, Port: 4501}}}
	head := func(cl classify.Class, out classify.Outcome, spi uint32) maps.SampleHeader {
		return maps.SampleHeader{Class: uint8(cl), Outcome: uint8(out), SPI: spi, Action: 2, Reason: maps.ReasonFirst, RowPackets: 1}
	}
	esp := frames.Frame{Src: a}.ESP(0x1234, 1, 20)
	quoted := frames.Quote(frames.Frame{Src: gw, Dst: a}.ESP(0xfeed, 9, 1400), -1)
	for _, c := range []struct {
		name  string
		h     maps.SampleHeader
		frame []byte
		want  string
	}{
		{"unknown", head(classify.ClassESP, classify.OutcomeUnknown, 0x1234), esp,
			"spiwatch: class=esp spi=0x00001234 verdict=unknown action=pass kept=first-1/3"},
		{"unknown collision", head(classify.ClassESP, classify.OutcomeUnknown, 0xc011), frames.Frame{Src: a}.ESP(0xc011, 1, 20),
			"spiwatch: class=esp spi=0x0000c011 verdict=unknown,collision sources=198.51.100.7,198.51.100.8 action=pass kept=first-1/3"},
		{"known collision", head(classify.ClassESPInUDP, classify.OutcomeKnown, 0x5000), frames.Frame{Src: a}.ESPInUDP(4501, 4500, 0x5000, 1, 20),
			"spiwatch: class=esp-in-udp spi=0x00005000 verdict=known,collision sources=198.51.100.7:4500,198.51.100.7:4501 action=pass kept=first-1/3"},
		{"frag needed", head(classify.ClassICMPESP, 0, 0), frames.Frame{Src: netip.MustParseAddr("192.0.2.254")}.ICMP(frames.ICMPUnreachable, frames.ICMPCodeFragNeeded, 1400, quoted),
			"spiwatch: class=icmp-esp error=frag-needed quote=esp spi=0x0000feed quoted=" + gw.String() + "->" + a.String() + " mtu=1400 action=pass kept=first-1/3"},
		{"ike", head(classify.ClassIKE, 0, 0), frames.Frame{Src: a}.IKEMessage(500, 500, false,
			frames.IKEHeader{ISPI: 1, Version: 0x20, Exchange: frames.IKEv2SAInit, Flags: frames.IKEFlagInitiator}.Message(40)),
			"spiwatch: class=ike ike=v2 exchange=IKE_SA_INIT dir=request msgid=0 action=pass kept=first-1/3"},
	} {
		if got := d.comment(c.h, c.frame, 3); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}
}

// TestCaptureCommentsSharedSPI: two known SAs share an SPI, one for the gateway's
// address and one for any destination, and only one of them is in collision. A
// packet's comment follows the SA the program counted it into: its destination's
// SA first, then the any-destination one.
func TestCaptureCommentsSharedSPI(t *testing.T) {
	gw, other := frames.DefaultDst4, netip.MustParseAddr("203.0.113.99")
	gw6 := netip.MustParseAddr("2001:db8::2")
	a, b := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.8")
	a6 := netip.MustParseAddr("2001:db8::7")
	pair := []maps.SASource{{Addr: a}, {Addr: b}}
	h := maps.SampleHeader{Class: uint8(classify.ClassESP), Outcome: uint8(classify.OutcomeKnown), SPI: 0x6000, Action: 2, Reason: maps.ReasonFirst, RowPackets: 1}
	const (
		plain     = "spiwatch: class=esp spi=0x00006000 verdict=known action=pass kept=first-1/3"
		collision = "spiwatch: class=esp spi=0x00006000 verdict=known,collision sources=198.51.100.7,198.51.100.8 action=pass kept=first-1/3"
	)
	for _, c := range []struct {
		name  string
		known map[maps.SA][]maps.SASource
		frame []byte
		want  string
	}{
		{"the gateway's SA in collision, packet to the gateway", map[maps.SA][]maps.SASource{{SPI: 0x6000, Dst: gw}: pair, {SPI: 0x6000}: nil},
			frames.Frame{Src: a, Dst: gw}.ESP(0x6000, 1, 20), collision},
		{"the gateway's SA in collision, packet to another address", map[maps.SA][]maps.SASource{{SPI: 0x6000, Dst: gw}: pair, {SPI: 0x6000}: nil},
			frames.Frame{Src: a, Dst: other}.ESP(0x6000, 1, 20), plain},
		{"the any-destination SA in collision, packet to the gateway", map[maps.SA][]maps.SASource{{SPI: 0x6000, Dst: gw}: nil, {SPI: 0x6000}: pair},
			frames.Frame{Src: a, Dst: gw}.ESP(0x6000, 1, 20), plain},
		{"the any-destination SA in collision, packet to another address", map[maps.SA][]maps.SASource{{SPI: 0x6000, Dst: gw}: nil, {SPI: 0x6000}: pair},
			frames.Frame{Src: a, Dst: other}.ESP(0x6000, 1, 20), collision},
		{"IPv6: the gateway's SA in collision", map[maps.SA][]maps.SASource{{SPI: 0x6000, Dst: gw6}: pair, {SPI: 0x6000}: nil},
			frames.Frame{Src: a6, Dst: gw6}.ESP(0x6000, 1, 20), collision},
		{"IPv6: the any-destination SA in collision, packet to the gateway", map[maps.SA][]maps.SASource{{SPI: 0x6000, Dst: gw6}: nil, {SPI: 0x6000}: pair},
			frames.Frame{Src: a6, Dst: gw6}.ESP(0x6000, 1, 20), plain},
		{"kept bytes end before the destination", map[maps.SA][]maps.SASource{{SPI: 0x6000}: pair},
			frames.Frame{Src: a, Dst: gw}.ESP(0x6000, 1, 20)[:20], plain},
	} {
		d := newCaptureDiag(nil, nil, report.DefaultCollisionWindow)
		d.read = time.Now()
		d.known = c.known
		if got := d.comment(h, c.frame, 3); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}
}

// TestCaptureCommentManySources: an SPI seen from thousands of sources (a flood,
// a big NAT) gives a comment of a bounded size, naming how many are left out.
func TestCaptureCommentManySources(t *testing.T) {
	d := newCaptureDiag(nil, nil, report.DefaultCollisionWindow)
	d.read = time.Now()
	gw := frames.DefaultDst4
	var srcs []maps.SASource
	for i := range 5000 {
		srcs = append(srcs, maps.SASource{Addr: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})})
	}
	d.unknown = map[report.SPIDst][]maps.SASource{{SPI: 0xc011, Dst: gw}: srcs}
	h := maps.SampleHeader{Class: uint8(classify.ClassESP), Outcome: uint8(classify.OutcomeUnknown), SPI: 0xc011, Action: 2, Reason: maps.ReasonRate}
	got := d.comment(h, frames.Frame{Src: srcs[0].Addr}.ESP(0xc011, 1, 20), 3)
	want := "spiwatch: class=esp spi=0x0000c011 verdict=unknown,collision sources=10.0.0.0,10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5,10.0.0.6,10.0.0.7,+4992 action=pass kept=rate"
	if got != want {
		t.Errorf("comment of %d bytes:\n got %.300s\nwant %s", len(got), got, want)
	}
}
