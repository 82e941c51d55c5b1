// SPDX-License-Identifier: Apache-2.0

package bpf_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

var (
	peer4  = netip.MustParseAddr("198.51.100.1")
	gw4    = netip.MustParseAddr("203.0.113.1")
	other4 = netip.MustParseAddr("203.0.113.7")
	peer6  = netip.MustParseAddr("2001:db8::1")
	gw6    = netip.MustParseAddr("2001:db8::2")

	v4 = frames.Frame{Src: peer4, Dst: gw4}
	v6 = frames.Frame{Src: peer6, Dst: gw6}
)

// tableKnown is the known-SA set of the test tables: an any-destination entry and
// exact ones for IPv4 and IPv6.
var tableKnown = []maps.SA{
	{SPI: 0x1000},
	{SPI: 0x2000, Dst: gw4},
	{SPI: 0x3000, Dst: gw6},
	{SPI: 0x4000, Dst: other4},
}

const (
	pass = classify.XDPPass
	drop = classify.XDPDrop
)

type tcase struct {
	name    string
	frame   []byte
	class   classify.Class
	outcome classify.Outcome
	spi     uint32 // for rows that record one
}

func with(f frames.Frame, edit func(*frames.Frame)) frames.Frame {
	edit(&f)
	return f
}

// patch returns frame with bytes changed at off (from the frame start).
func patch(frame []byte, off int, b ...byte) []byte {
	out := append([]byte(nil), frame...)
	copy(out[off:], b)
	return out
}

func tags(n int) []frames.VLAN {
	var v []frames.VLAN
	for i := 0; i < n; i++ {
		v = append(v, frames.VLAN{TPID: 0x8100, ID: uint16(100 + i)})
	}
	return v
}

func exts(n int) []frames.IPv6Ext {
	types := []uint8{frames.ProtoHopByHop, frames.ProtoDstOpts, frames.ProtoRouting}
	var e []frames.IPv6Ext
	for i := 0; i < n; i++ {
		e = append(e, frames.IPv6Ext{Type: types[i%len(types)], Len8: uint8(i % 2)})
	}
	return e
}

func tableCases() []tcase {
	const (
		esp, espudp, ike, ka = classify.ClassESP, classify.ClassESPInUDP, classify.ClassIKE, classify.ClassNATKeepalive
		frag, bad, other     = classify.ClassFragment, classify.ClassMalformed, classify.ClassOther
		none, known, unknown = classify.OutcomeNone, classify.OutcomeKnown, classify.OutcomeUnknown
		reserved             = classify.OutcomeReserved
	)
	toOther := with(v4, func(f *frames.Frame) { f.Dst = other4 })
	v4opts := func(n int) frames.Frame {
		return with(v4, func(f *frames.Frame) { f.IPv4Options = make([]byte, n); f.IPv4Options[0] = 1 })
	}
	fragFirst := with(v4, func(f *frames.Frame) { f.Frag = &frames.Frag{More: true, ID: 9} })
	fragLater := with(v4, func(f *frames.Frame) { f.Frag = &frames.Frag{Offset: 185, ID: 9} })
	frag6First := with(v6, func(f *frames.Frame) { f.Frag = &frames.Frag{More: true, ID: 9} })
	frag6Later := with(v6, func(f *frames.Frame) { f.Frag = &frames.Frag{Offset: 10, More: true, ID: 9} })
	espFrame := v4.ESP(0xdead, 7, 64)
	tcp := v4.TCP(40000, 443, 20)
	return append([]tcase{
		{"esp v4 known any-destination", v4.ESP(0x1000, 1, 64), esp, known, 0x1000},
		{"esp v4 known exact destination", v4.ESP(0x2000, 1, 64), esp, known, 0x2000},
		{"esp v4 exact entry of another destination", toOther.ESP(0x2000, 1, 64), esp, unknown, 0x2000},
		{"esp v4 exact entry only for other4", v4.ESP(0x4000, 1, 64), esp, unknown, 0x4000},
		{"esp v4 exact entry for other4 matches", toOther.ESP(0x4000, 1, 64), esp, known, 0x4000},
		{"esp v4 unknown", espFrame, esp, unknown, 0xdead},
		{"esp spi 0 reserved", v4.ESP(0, 1, 64), esp, reserved, 0},
		{"esp spi 1 reserved", v4.ESP(1, 1, 64), esp, reserved, 1},
		{"esp spi 255 reserved", v4.ESP(255, 1, 64), esp, reserved, 255},
		{"esp spi 256 unknown", v4.ESP(256, 1, 64), esp, unknown, 256},
		{"esp spi 0xffffffff unknown", v4.ESP(0xffffffff, 0xffffffff, 64), esp, unknown, 0xffffffff},
		{"esp bare header (8 bytes)", v4.ESP(0x1000, 1, 0), esp, known, 0x1000},
		{"esp 7 bytes", v4.IP(frames.ProtoESP, make([]byte, 7)), bad, none, 0},
		{"esp v6 known exact", v6.ESP(0x3000, 5, 100), esp, known, 0x3000},
		{"esp v6 known any", v6.ESP(0x1000, 5, 100), esp, known, 0x1000},
		{"esp v6 v4 entry does not match", v6.ESP(0x2000, 5, 100), esp, unknown, 0x2000},
		{"esp v6 reserved", v6.ESP(42, 5, 100), esp, reserved, 42},
		{"esp-in-udp known", v4.ESPInUDP(4500, 4500, 0x1000, 3, 80), espudp, known, 0x1000},
		{"esp-in-udp unknown", v4.ESPInUDP(4500, 4500, 0xbeef, 3, 80), espudp, unknown, 0xbeef},
		{"esp-in-udp from 4500 only", v4.ESPInUDP(4500, 33000, 0xbeef, 3, 80), espudp, unknown, 0xbeef},
		{"esp-in-udp to 4500 only", v4.ESPInUDP(33000, 4500, 0xbeef, 3, 80), espudp, unknown, 0xbeef},
		{"esp-in-udp reserved", v4.ESPInUDP(4500, 4500, 7, 3, 80), espudp, reserved, 7},
		{"esp-in-udp v6 known", v6.ESPInUDP(4500, 4500, 0x3000, 3, 80), espudp, known, 0x3000},
		{"esp-in-udp 9-byte payload", v4.UDP(4500, 4500, []byte{0, 0, 0x12, 0x34, 0, 0, 0, 1, 9}), espudp, unknown, 0x1234},
		{"natt 8-byte payload", v4.UDP(4500, 4500, []byte{0, 0, 0x12, 0x34, 0, 0, 0, 1}), bad, none, 0},
		{"natt 8 bytes marker", v4.UDP(4500, 4500, []byte{0, 0, 0, 0, 0, 0, 0, 1}), ike, none, 0},
		{"natt empty payload", v4.UDP(4500, 4500, nil), bad, none, 0},
		{"natt 3-byte payload", v4.UDP(4500, 4500, []byte{1, 2, 3}), bad, none, 0},
		{"ike 500", v4.IKE(500, 500, false, 200), ike, none, 0},
		{"ike 500 to 4500", v4.IKE(500, 4500, false, 200), ike, none, 0},
		{"ike natt marker", v4.IKE(4500, 4500, true, 200), ike, none, 0},
		{"ike v6", v6.IKE(500, 500, false, 100), ike, none, 0},
		{"keepalive", v4.Keepalive(4500, 4500), ka, none, 0},
		{"keepalive v6", v6.Keepalive(4500, 4500), ka, none, 0},
		{"keepalive wrong byte", v4.UDP(4500, 4500, []byte{0xfe}), bad, none, 0},
		{"udp length past packet", patch(v4.ESPInUDP(4500, 4500, 0xbeef, 1, 40), 14+20+4, 0x04, 0x00), bad, none, 0},
		{"udp length below 8", patch(v4.ESPInUDP(4500, 4500, 0xbeef, 1, 40), 14+20+4, 0, 7), bad, none, 0},
		{"one vlan tag", with(v4, func(f *frames.Frame) { f.VLANs = tags(1) }).ESP(0x1000, 1, 64), esp, known, 0x1000},
		{"two tags 802.1ad", with(v4, func(f *frames.Frame) {
			f.VLANs = []frames.VLAN{{TPID: 0x88a8, ID: 10}, {TPID: 0x8100, ID: 20}}
		}).ESP(0xdead, 1, 64), esp, unknown, 0xdead},
		{"three tags", with(v4, func(f *frames.Frame) { f.VLANs = tags(3) }).ESP(0x1000, 1, 64), other, none, 0},
		{"vlan v6 esp-in-udp", with(v6, func(f *frames.Frame) { f.VLANs = tags(2) }).ESPInUDP(4500, 4500, 0xbeef, 1, 64), espudp, unknown, 0xbeef},
		{"ipv4 options ihl 6", v4opts(4).ESP(0x2000, 1, 64), esp, known, 0x2000},
		{"ipv4 options ihl 15", v4opts(40).ESPInUDP(4500, 4500, 0xbeef, 1, 64), espudp, unknown, 0xbeef},
		{"ihl 4 esp", patch(espFrame, 14, 0x44), bad, none, 0},
		{"ihl 0 tcp", patch(tcp, 14, 0x40), other, none, 0},
		{"ihl past frame esp", patch(v4.ESP(0xdead, 1, 8), 14, 0x4f), bad, none, 0},
		{"ip version 6 in ipv4 ethertype", patch(espFrame, 14, 0x65), other, none, 0},
		{"ipv4 total length past frame", patch(espFrame, 16, 0x05, 0xdc), bad, none, 0},
		{"ipv4 total length below header", patch(espFrame, 16, 0, 19), bad, none, 0},
		{"ipv4 total length past frame tcp", patch(tcp, 16, 0x05, 0xdc), other, none, 0},
		{"ipv4 later fragment", fragLater.ESP(0xdead, 1, 64), frag, none, 0},
		{"ipv4 later fragment tcp", fragLater.TCP(1, 2, 20), frag, none, 0},
		{"ipv4 first fragment esp", fragFirst.ESP(0xdead, 1, 64), esp, unknown, 0xdead},
		{"ipv4 first fragment 4 esp bytes", fragFirst.IP(frames.ProtoESP, []byte{0, 0, 0x12, 0x34}), frag, none, 0},
		{"ipv4 first fragment esp-in-udp", with(fragFirst, func(f *frames.Frame) { f.UDPLength = 1400 }).ESPInUDP(4500, 4500, 0xbeef, 1, 64), espudp, unknown, 0xbeef},
		{"ipv4 first fragment natt 5 bytes", with(fragFirst, func(f *frames.Frame) { f.UDPLength = 1400 }).UDP(4500, 4500, []byte{1, 2, 3, 4, 5}), frag, none, 0},
		{"ipv4 first fragment udp header cut", fragFirst.IP(frames.ProtoUDP, []byte{0x11, 0x94, 0x11}), frag, none, 0},
		{"ipv6 later fragment", frag6Later.ESP(0xdead, 1, 64), frag, none, 0},
		{"ipv6 first fragment esp-in-udp", with(frag6First, func(f *frames.Frame) { f.UDPLength = 1400 }).ESPInUDP(4500, 4500, 0xbeef, 1, 64), espudp, unknown, 0xbeef},
		{"ipv6 atomic fragment esp", with(v6, func(f *frames.Frame) { f.Frag = &frames.Frag{ID: 3} }).ESP(0x3000, 1, 64), esp, known, 0x3000},
		{"ipv6 hop-by-hop, dstopts, routing", with(v6, func(f *frames.Frame) { f.IPv6Ext = exts(3) }).ESP(0x3000, 1, 64), esp, known, 0x3000},
		{"ipv6 8 extension headers", with(v6, func(f *frames.Frame) { f.IPv6Ext = exts(8) }).ESP(0xdead, 1, 64), esp, unknown, 0xdead},
		{"ipv6 7 extension headers + fragment", with(v6, func(f *frames.Frame) {
			f.IPv6Ext = exts(7)
			f.Frag = &frames.Frag{More: true, ID: 1}
		}).ESP(0xdead, 1, 64), esp, unknown, 0xdead},
		{"ipv6 9 extension headers", with(v6, func(f *frames.Frame) { f.IPv6Ext = exts(9) }).ESP(0xdead, 1, 64), bad, none, 0},
		{"ipv6 payload length past frame", patch(v6.ESP(0xdead, 1, 64), 14+4, 0x05, 0xdc), bad, none, 0},
		{"ipv6 extension header past payload", patch(with(v6, func(f *frames.Frame) { f.IPv6Ext = exts(1) }).ESP(0xdead, 1, 64), 14+40+1, 200), bad, none, 0},
		{"ipv6 no next header", v6.IP(frames.ProtoNoNext, nil), other, none, 0},
		// AH (51) and other next headers end the walk (CLASSES.md IPv6 step 4):
		// ESP behind them is not seen.
		{"ipv6 ah before esp", with(v6, func(f *frames.Frame) { f.IPv6Ext = []frames.IPv6Ext{{Type: 51}} }).ESP(0xdead, 1, 64), other, none, 0},
		{"ipv6 mobility header before esp", with(v6, func(f *frames.Frame) { f.IPv6Ext = []frames.IPv6Ext{{Type: 135}} }).ESP(0xdead, 1, 64), other, none, 0},
		{"ipv4 ah before esp", v4.IP(51, append([]byte{frames.ProtoESP, 0, 0, 0, 0, 0, 0x10, 0x01}, v4.ESP(0xdead, 1, 64)[14+20:]...)), other, none, 0},
		{"ipv4 df+mf first fragment esp", patch(fragFirst.ESP(0xdead, 1, 64), 14+6, 0x60, 0x00), esp, unknown, 0xdead},
		{"ipv6 first fragment udp header cut", frag6First.IP(frames.ProtoUDP, []byte{0x11, 0x94, 0x11, 0x94}), frag, none, 0},
		{"ipv6 fragment header then hop-by-hop then esp", with(v6, func(f *frames.Frame) {
			f.IPv6Ext = []frames.IPv6Ext{{Type: frames.ProtoFragment}, {Type: frames.ProtoHopByHop}}
		}).ESP(0x3000, 1, 64), esp, known, 0x3000},
		{"natt marker only", v4.UDP(4500, 4500, []byte{0, 0, 0, 0}), ike, none, 0},
		{"natt marker and 4 bytes", v6.UDP(4500, 4500, []byte{0, 0, 0, 0, 1, 2, 3, 4}), ike, none, 0},
		{"natt 5 bytes", v4.UDP(4500, 4500, []byte{1, 2, 3, 4, 5}), bad, none, 0},
		{"udp length wins: keepalive with trailing bytes", with(v4, func(f *frames.Frame) { f.UDPLength = 9 }).UDP(4500, 4500, []byte{0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9}), ka, none, 0},
		{"udp length wins: 16 of 48 bytes", with(v4, func(f *frames.Frame) { f.UDPLength = 16 }).ESPInUDP(4500, 4500, 0xbeef, 1, 32), bad, none, 0},
		{"udp length wins: 17 of 48 bytes", with(v6, func(f *frames.Frame) { f.UDPLength = 17 }).ESPInUDP(4500, 4500, 0xbeef, 1, 32), espudp, unknown, 0xbeef},
		{"esp-in-udp spi 1 reserved", v6.ESPInUDP(33000, 4500, 1, 3, 80), espudp, reserved, 1},
		{"vlan tag cut short", with(v4, func(f *frames.Frame) { f.VLANs = tags(2) }).ESP(0x1000, 1, 64)[:20], other, none, 0},
		{"tcp", tcp, other, none, 0},
		{"tcp v6", v6.TCP(1, 443, 0), other, none, 0},
		{"udp dns", v4.UDP(40000, 53, make([]byte, 30)), other, none, 0},
		{"arp", patch(make([]byte, 42), 12, 0x08, 0x06), other, none, 0},
		{"runt", []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}, other, none, 0},
	}, diagTableCases()...)
}

func TestProgramTable(t *testing.T) {
	h := newHarness(t, loader.Settings{}, tableKnown...)
	for _, c := range tableCases() {
		t.Run(c.name, func(t *testing.T) {
			got := h.compare(t, c.frame)
			if got.Class != c.class || got.Outcome != c.outcome || got.Verdict != pass {
				t.Fatalf("got %s/%s verdict %d, want %s/%s pass", got.Class, got.Outcome, got.Verdict, c.class, c.outcome)
			}
			switch {
			case c.outcome == classify.OutcomeKnown && got.Known.SPI != c.spi:
				t.Fatalf("counted in known SA %v, want SPI 0x%x", got.Known, c.spi)
			case (c.outcome == classify.OutcomeUnknown || c.outcome == classify.OutcomeReserved) && got.Unknown.SPI != c.spi:
				t.Fatalf("unknown row SPI 0x%x, want 0x%x", got.Unknown.SPI, c.spi)
			}
		})
	}
}

// TestProgramMultiBuffer: frames longer than the first buffer (a test run puts
// what does not fit in about 3.5 KiB into fragments, as a jumbo-MTU driver does)
// are counted with their whole length, on the common shape's path and on the full
// one, and so is a short IP packet whose frame goes on into the fragments.
func TestProgramMultiBuffer(t *testing.T) {
	h := newHarness(t, loader.Settings{}, tableKnown...)
	vlan := with(v4, func(f *frames.Frame) { f.VLANs = tags(1) })
	trailer := append(v4.ESP(0x2000, 7, 64), make([]byte, 6000)...)
	cases := map[string][]byte{"esp known, 6,000 bytes of trailer": trailer}
	for _, n := range []int{3000, 5000, 9000} {
		cases[fmt.Sprintf("tcp %d", n)] = v4.TCP(40000, 443, n)
		cases[fmt.Sprintf("udp 53 %d", n)] = v4.UDP(40000, 53, make([]byte, n))
		cases[fmt.Sprintf("esp known %d", n)] = v4.ESP(0x2000, 1, n)
		cases[fmt.Sprintf("esp unknown %d", n)] = v4.ESP(0xbad0, 1, n)
		cases[fmt.Sprintf("esp-in-udp known %d", n)] = v4.ESPInUDP(4500, 4500, 0x1000, 1, n)
		cases[fmt.Sprintf("vlan esp known %d", n)] = vlan.ESP(0x2000, 1, n)
		cases[fmt.Sprintf("ipv6 esp known %d", n)] = v6.ESP(0x3000, 1, n)
	}
	for name, frame := range cases {
		t.Run(name, func(t *testing.T) {
			got := h.compare(t, frame) // counted with len(frame) bytes, as the reference says
			if got.Class == classify.ClassOther && !strings.HasPrefix(name, "tcp") && !strings.HasPrefix(name, "udp") {
				t.Fatalf("counted as other")
			}
		})
	}
}

// TestProgramDropUnknown: with --action drop only unknown SPIs are dropped.
func TestProgramDropUnknown(t *testing.T) {
	h := newHarness(t, loader.Settings{DropUnknown: true}, tableKnown...)
	dropped := 0
	for _, c := range tableCases() {
		got := h.compare(t, c.frame)
		want := uint32(pass)
		if c.outcome == classify.OutcomeUnknown {
			want = drop
			dropped++
		}
		if got.Verdict != want {
			t.Errorf("%s: verdict %d, want %d", c.name, got.Verdict, want)
		}
	}
	if dropped < 10 {
		t.Fatalf("only %d unknown-SPI cases: the table lost coverage", dropped)
	}
	d, err := h.m.Dropped(0)
	if err != nil {
		t.Fatal(err)
	}
	if got := d[classify.ClassESP].Packets + d[classify.ClassESPInUDP].Packets; got != uint64(dropped) {
		t.Fatalf("drop counts say %d, %d were dropped", got, dropped)
	}
}

// TestProgramNATTPorts: the NAT-T port set is a load-time setting.
func TestProgramNATTPorts(t *testing.T) {
	h := newHarness(t, loader.Settings{NATTPorts: []uint16{4501, 10000, 65535}})
	for _, c := range []struct {
		sport, dport uint16
		want         classify.Class
	}{
		{4501, 4501, classify.ClassESPInUDP},
		{33000, 10000, classify.ClassESPInUDP},
		{65535, 1, classify.ClassESPInUDP},
		{4500, 4500, classify.ClassOther},
		{500, 10000, classify.ClassIKE},
	} {
		got := h.compare(t, v4.ESPInUDP(c.sport, c.dport, 0xbeef, 1, 40))
		if got.Class != c.want {
			t.Errorf("%d→%d: %s, want %s", c.sport, c.dport, got.Class, c.want)
		}
	}
}

// TestProgramTruncation cuts every table frame at every byte: the program must
// agree with the reference, never crash, and never call a cut frame anything but
// malformed, fragment or other.
func TestProgramTruncation(t *testing.T) {
	h := newHarness(t, loader.Settings{}, tableKnown...)
	runs := 0
	for _, c := range tableCases() {
		for cut := 14; cut < len(c.frame); cut++ {
			got := h.compare(t, c.frame[:cut])
			runs++
			switch got.Class {
			case classify.ClassMalformed, classify.ClassFragment, classify.ClassOther:
			default:
				t.Fatalf("%s cut to %d bytes: class %s", c.name, cut, got.Class)
			}
		}
	}
	t.Logf("%d truncated frames", runs)
}

// differentialSeeds is the seed corpus of the differential fuzz target: the table
// frames plus every NAT-T payload length and IPv6 chain length, without repeats.
func differentialSeeds() [][]byte {
	var all [][]byte
	for _, c := range tableCases() {
		all = append(all, c.frame)
	}
	all = append(all, moreSeeds()...)
	seen := map[string]bool{}
	var out [][]byte
	for _, s := range all {
		if !seen[string(s)] {
			seen[string(s)] = true
			out = append(out, s)
		}
	}
	return out
}

func moreSeeds() [][]byte {
	var out [][]byte
	for n := 0; n <= 12; n++ {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(i + 1)
		}
		out = append(out, v4.UDP(4500, 4500, p), v6.UDP(4500, 4500, p))
	}
	for n := 0; n <= 10; n++ {
		out = append(out, with(v6, func(f *frames.Frame) { f.IPv6Ext = exts(n) }).ESPInUDP(4500, 4500, 0x1000+uint32(n), 1, 16))
	}
	// ICMP errors with every quote length around the SPI, and IKE messages of every
	// length around the header.
	for n := 0; n <= 14; n++ {
		out = append(out,
			fromRouter4.ICMP(3, 4, 1400, frames.Quote(out4.ESP(0xc0ffee01, 1, 40), n)),
			fromPeer4.ICMP(3, 3, 0, frames.Quote(out4.ESPInUDP(4500, 4500, 0xc0ffee02, 1, 40), n)),
			fromRouter6.ICMP(2, 0, 1280, frames.Quote(out6.ESPInUDP(4500, 4500, 0xc0ffee04, 1, 40), n)))
	}
	for n := 24; n <= 32; n++ {
		msg := ikeMsg(0x20, 37, 0x20, 8)
		out = append(out, v4.UDP(500, 500, msg[:n]), v6.IKEMessage(4500, 4500, true, msg[:n]))
	}
	return out
}

func FuzzDifferential(f *testing.F) {
	for _, s := range differentialSeeds() {
		f.Add(s)
	}
	h := newHarness(f, loader.Settings{}, tableKnown...)
	f.Fuzz(func(t *testing.T, frame []byte) {
		// The kernel refuses test runs below an Ethernet header, and puts bytes past
		// about 3.5 KiB in fragments the program (not multi-buffer aware) does not see.
		if len(frame) < 14 || len(frame) > 3072 {
			return
		}
		h.compare(t, frame)
	})
}

// headersPastFirstBuffer are frames whose headers lie past the first buffer of a
// multi-buffer frame (a test run keeps about 3.5 KiB in the first): an IPv6 chain
// of 4,096 bytes of extension headers, legal per RFC 8200 (hop-by-hop and
// destination options take up to 2,048 bytes each) on an interface with a jumbo
// MTU, moves ESP, UDP and ICMPv6 there. The program reads headers from the first
// buffer only (docs/CLASSES.md, "Multi-buffer frames"); want is the class it
// gives then, where the Go reference, reading the whole frame, gives the real one.
func headersPastFirstBuffer() []struct {
	name  string
	frame []byte
	want  classify.Class
} {
	chain := func(total int) []frames.IPv6Ext { // extension headers of total bytes (a multiple of 8)
		var e []frames.IPv6Ext
		types := []uint8{frames.ProtoHopByHop, frames.ProtoDstOpts, frames.ProtoRouting, frames.ProtoDstOpts}
		for i := 0; total > 0; i++ {
			n := min(total, 2048)
			e = append(e, frames.IPv6Ext{Type: types[i%len(types)], Len8: uint8(n/8 - 1)})
			total -= n
		}
		return e
	}
	long := with(v6, func(f *frames.Frame) { f.IPv6Ext = chain(4096) })
	return []struct {
		name  string
		frame []byte
		want  classify.Class
	}{
		{"esp", long.ESP(0xdead, 1, 64), classify.ClassMalformed},
		{"esp of a known SA", long.ESP(0x3000, 1, 64), classify.ClassMalformed},
		{"esp-in-udp", long.ESPInUDP(4500, 4500, 0xbeef, 1, 64), classify.ClassOther},
		{"ike", long.IKEMessage(4500, 4500, true, ikeMsg(0x20, 37, 0x20, 8)), classify.ClassOther},
		{"keepalive", long.Keepalive(4500, 4500), classify.ClassOther},
		{"an extension header", with(v6, func(f *frames.Frame) { f.IPv6Ext = append(chain(4096), frames.IPv6Ext{Type: frames.ProtoDstOpts}) }).ESP(0xdead, 1, 64), classify.ClassOther},
		{"packet-too-big", with(fromRouter6, func(f *frames.Frame) { f.IPv6Ext = chain(4096) }).ICMP(frames.ICMPv6PacketTooBig, 0, 1280,
			frames.Quote(out6.ESP(0xc0ffee03, 1, 100), 64)), classify.ClassOther},
	}
}

// TestProgramHeadersPastFirstBuffer holds the program to what CLASSES.md says of
// headers past a multi-buffer frame's first buffer: not read, the frame counted
// in the class above, never as an SPI, and passed (also with --action drop, which
// such a frame thus escapes). The reference must see the real class, or the
// frame would not be past the first buffer.
func TestProgramHeadersPastFirstBuffer(t *testing.T) {
	for _, drop := range []bool{false, true} {
		h := newHarness(t, loader.Settings{DropUnknown: drop}, tableKnown...)
		for _, c := range headersPastFirstBuffer() {
			t.Run(fmt.Sprintf("%s, drop %v", c.name, drop), func(t *testing.T) {
				if len(c.frame) <= 4096 {
					t.Fatalf("a %d-byte frame fits in one buffer", len(c.frame))
				}
				got := h.run(t, c.frame)
				want, _ := h.expect(c.frame)
				if got.Class != c.want || got.Outcome != classify.OutcomeNone || got.Verdict != 2 || got.Unknown != nil || got.Known != nil {
					t.Errorf("bpf %+v; want class %s, no SPI, XDP_PASS", got, c.want)
				}
				if want.Class == c.want {
					t.Errorf("the reference also says %s: the headers are not past the first buffer", want.Class)
				}
			})
		}
	}
}
