// SPDX-License-Identifier: Apache-2.0

package offline

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
)

// cutFrames are frames of every class and of the parse paths that lead to
// them: VLAN tags, IPv4 options, IPv6 extension headers, first and later
// fragments, NAT-T on a second port, ICMP errors quoting ESP, ESP-in-UDP and
// IKE, and length fields that do not fit.
func cutFrames() [][]byte {
	fs, _ := cutMix()
	a := frames.Frame{Src: netip.MustParseAddr("198.51.100.1"), Dst: netip.MustParseAddr("203.0.113.1")}
	v6 := frames.Frame{Src: netip.MustParseAddr("2001:db8::2"), Dst: netip.MustParseAddr("2001:db8::1")}
	opts := a
	opts.IPv4Options = []byte{1, 1, 1, 1, 1, 1, 1, 1}
	vlan := a
	vlan.VLANs = []frames.VLAN{{ID: 5}}
	first := a
	first.Frag = &frames.Frag{More: true, ID: 9}
	first6 := v6
	first6.Frag = &frames.Frag{More: true, ID: 9}
	later6 := v6
	later6.Frag = &frames.Frag{Offset: 3, ID: 9}
	chain := v6
	chain.IPv6Ext = []frames.IPv6Ext{{Type: frames.ProtoHopByHop}, {Type: frames.ProtoRouting, Len8: 2}, {Type: frames.ProtoDstOpts, Len8: 1}}
	long := v6
	for range classify.MaxIPv6Ext + 1 {
		long.IPv6Ext = append(long.IPv6Ext, frames.IPv6Ext{Type: frames.ProtoDstOpts})
	}
	badUDP := a
	badUDP.UDPLength = 4000
	quoteNATT := frames.Quote(a.ESPInUDP(4500, 4500, 0x5000, 1, 200), frames.ICMPRFC792QuoteBytes)
	fs = append(fs,
		opts.ESP(0x1000, 1, 300), vlan.ESPInUDP(4500, 4500, 0x2000, 1, 300), vlan.ESPInUDP(4501, 4501, 0x2001, 1, 300),
		first.ESP(0x1000, 1, 300), first.ESPInUDP(4500, 4500, 0x2000, 1, 300), first.IKE(500, 500, false, 300),
		first6.ESP(0x3000, 1, 300), first6.ESPInUDP(4500, 4500, 0x3001, 1, 300), later6.ESP(0x3000, 2, 300),
		chain.ESP(0x3000, 1, 300), chain.ESPInUDP(4500, 4500, 0x3002, 1, 300), long.ESP(0x3000, 1, 300),
		badUDP.ESPInUDP(4500, 4500, 0x2000, 1, 300), a.UDP(4500, 4500, []byte{1, 2, 3}), a.UDP(4500, 4500, nil),
		a.Keepalive(4501, 4501), a.IKE(4501, 4501, true, 100), a.IKE(4500, 500, true, 100),
		a.ICMP(frames.ICMPUnreachable, frames.ICMPCodePortUnreach, 0, quoteNATT),
		a.ICMP(frames.ICMPUnreachable, frames.ICMPCodePortUnreach, 0, frames.Quote(a.ESPInUDP(4500, 4500, 0x5000, 1, 200), 16)),
		a.ICMP(frames.ICMPUnreachable, frames.ICMPCodePortUnreach, 0, frames.Quote(a.IKE(4500, 4500, true, 100), 40)),
		a.ICMP(frames.ICMPTimeExceeded, 0, 0, frames.Quote(opts.ESP(0x1000, 1, 300), 8)),
		a.ICMP(frames.ICMPEchoRequest, 0, 0, make([]byte, 56)),
		v6.ICMP(frames.ICMPv6Unreachable, frames.ICMPv6CodePortUnrch, 0, frames.Quote(v6.ESPInUDP(4500, 4500, 0x5001, 1, 200), 16)),
		v6.ICMP(frames.ICMPv6PacketTooBig, 0, 1280, frames.Quote(chain.ESP(0x3000, 1, 300), 40)),
		v6.ICMP(frames.ICMPv6EchoRequest, 0, 0, make([]byte, 56)),
		v6.TCP(443, 50000, 100), a.TCP(4500, 500, 100),
	)
	return fs
}

// sameClass compares what a report is made of: class, SPI, addresses, ports
// and the ICMP error's key. Sequence numbers, IKE headers and MTUs are read
// past the class's own bytes and may be cut.
func sameClass(a, b classify.Result) bool {
	a.Seq, b.Seq = 0, 0
	a.IKE, b.IKE = classify.IKEHeader{}, classify.IKEHeader{}
	a.ICMP.MTU, b.ICMP.MTU = 0, 0
	return a == b
}

// TestCutDecides: for every frame of cutFrames cut at every byte, and for two
// sets of NAT-T ports, where cutDecides says the captured bytes decide, the
// frame with anything in place of the missing bytes (zeros, 0xff, random) is
// classified as the whole frame. And it says so once the headers are there:
// for a frame whole but for its last byte of payload.
func TestCutDecides(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	decided, cuts := 0, 0
	for _, cfg := range []*classify.Config{{}, {NATTPorts: []uint16{4501, 4500}}} {
		for i, f := range cutFrames() {
			want := classify.Classify(f, cfg)
			if !cutDecides(f, len(f)-1, cfg) && len(f) > 100 {
				t.Errorf("frame %d (%s): not decided without its last byte", i, want.Class)
			}
			full := make([]byte, len(f))
			for k := range len(f) {
				cuts++
				copy(full, f[:k])
				clear(full[k:])
				if !cutDecides(full, k, cfg) {
					continue
				}
				decided++
				for fill := range 5 {
					for j := k; j < len(full); j++ {
						switch fill {
						case 0:
							full[j] = 0
						case 1:
							full[j] = 0xff
						default:
							full[j] = byte(rng.Uint32())
						}
					}
					if got := classify.Classify(full, cfg); !sameClass(got, want) {
						t.Fatalf("ports %v, frame %d cut at %d of %d bytes, fill %d: decided, but %+v, whole frame %+v",
							cfg.NATTPorts, i, k, len(f), fill, got, want)
					}
				}
			}
		}
	}
	t.Logf("%d of %d cuts decided", decided, cuts)
}

// TestCutNeeds: the fewest bytes a capture must hold of a frame for its class
// to be decided, as the README gives them.
func TestCutNeeds(t *testing.T) {
	v4 := frames.Frame{Src: netip.MustParseAddr("198.51.100.1"), Dst: netip.MustParseAddr("203.0.113.1")}
	v6 := frames.Frame{Src: netip.MustParseAddr("2001:db8::2"), Dst: netip.MustParseAddr("2001:db8::1")}
	qinq := []frames.VLAN{{TPID: frames.TPID8021AD, ID: 1}, {ID: 2}}
	icmp := func(f frames.Frame, q []byte) []byte {
		if f.Src.Is4() {
			return f.ICMP(frames.ICMPUnreachable, frames.ICMPCodePortUnreach, 0, q)
		}
		return f.ICMP(frames.ICMPv6Unreachable, frames.ICMPv6CodePortUnrch, 0, q)
	}
	tagged := func(f frames.Frame) frames.Frame { f.VLANs = qinq; return f }
	for _, c := range []struct {
		name  string
		frame []byte
		need  int
	}{
		{"ipv4 esp", v4.ESP(0x1000, 1, 1000), 38},
		{"ipv4 esp-in-udp", v4.ESPInUDP(4500, 4500, 0x1000, 1, 1000), 46},
		{"ipv4 icmp quoting esp-in-udp", icmp(v4, frames.Quote(v4.ESPInUDP(4500, 4500, 0x1000, 1, 1000), 500)), 74},
		{"ipv6 esp", v6.ESP(0x1000, 1, 1000), 58},
		{"ipv6 esp-in-udp", v6.ESPInUDP(4500, 4500, 0x1000, 1, 1000), 66},
		{"ipv6 icmp quoting esp-in-udp", icmp(v6, frames.Quote(v6.ESPInUDP(4500, 4500, 0x1000, 1, 1000), 500)), 114},
		{"qinq ipv6 icmp quoting esp-in-udp", icmp(tagged(v6), frames.Quote(v6.ESPInUDP(4500, 4500, 0x1000, 1, 1000), 500)), 122},
	} {
		need := 0
		for need < len(c.frame) && !cutDecides(append(slices.Clone(c.frame[:need]), make([]byte, len(c.frame)-need)...), need, nil) {
			need++
		}
		if need != c.need {
			t.Errorf("%s: decided from %d bytes, want %d", c.name, need, c.need)
		}
	}
}
