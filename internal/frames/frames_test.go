// SPDX-License-Identifier: Apache-2.0

package frames_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/spiwatch/spiwatch/internal/classify"
	. "github.com/spiwatch/spiwatch/internal/frames"
)

var (
	src4 = netip.MustParseAddr("198.51.100.7")
	dst4 = netip.MustParseAddr("203.0.113.9")
	src6 = netip.MustParseAddr("2001:db8:1::7")
	dst6 = netip.MustParseAddr("2001:db8:2::9")
)

// descriptions covers both IP versions, tags, options and extension headers.
func descriptions() map[string]Frame {
	return map[string]Frame{
		"v4 defaults": {},
		"v4":          {Src: src4, Dst: dst4, TTL: 9},
		"v4 options":  {Src: src4, Dst: dst4, IPv4Options: []byte{0x94, 0x04, 0, 0, 1}},
		"v4 qinq":     {VLANs: []VLAN{{TPID: TPID8021AD, ID: 100}, {TPID: TPID8021Q, ID: 200}}},
		"v6":          {Src: src6, Dst: dst6},
		"v6 ext":      {Src: src6, Dst: dst6, IPv6Ext: []IPv6Ext{{Type: 0}, {Type: 43, Len8: 2}, {Type: 60, Len8: 1}}},
		"v6 vlan":     {Dst: dst6, VLANs: []VLAN{{ID: 5}}},
		"v6 macs":     {Src: src6, Dst: dst6, SrcMAC: net.HardwareAddr{2, 1, 1, 1, 1, 1}, DstMAC: net.HardwareAddr{2, 2, 2, 2, 2, 2}},
	}
}

// decoded is what gopacket found in a frame.
type decoded struct {
	pkt      gopacket.Packet
	src, dst netip.Addr
}

func decode(t *testing.T, b []byte) decoded {
	t.Helper()
	p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("decoding frame: %v", el.Error())
	}
	var d decoded
	d.pkt = p
	switch ip := p.NetworkLayer().(type) {
	case *layers.IPv4:
		d.src, _ = netip.AddrFromSlice(ip.SrcIP.To4())
		d.dst, _ = netip.AddrFromSlice(ip.DstIP.To4())
		// A header whose checksum is right sums to zero.
		h := b[len(b)-len(ip.Contents)-len(ip.Payload):][:ip.IHL*4]
		if sum := onesSum(h); sum != 0xffff {
			t.Errorf("ipv4 header checksum invalid (sum %#04x)", sum)
		}
		if int(ip.Length) != len(ip.Contents)+len(ip.Payload) {
			t.Errorf("ipv4 total length %d, want %d", ip.Length, len(ip.Contents)+len(ip.Payload))
		}
	case *layers.IPv6:
		d.src, _ = netip.AddrFromSlice(ip.SrcIP)
		d.dst, _ = netip.AddrFromSlice(ip.DstIP)
	default:
		t.Fatalf("no ip layer in %v", p)
	}
	return d
}

// onesSum is the one's-complement sum of b, folded to 16 bits.
func onesSum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// checkUDP checks the ports, length and checksum of the frame's UDP layer
// and returns its payload.
func checkUDP(t *testing.T, d decoded, sport, dport uint16) []byte {
	t.Helper()
	udp, ok := d.pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if !ok {
		t.Fatalf("no udp layer in %v", d.pkt)
	}
	if uint16(udp.SrcPort) != sport || uint16(udp.DstPort) != dport {
		t.Errorf("udp ports %d → %d, want %d → %d", udp.SrcPort, udp.DstPort, sport, dport)
	}
	if int(udp.Length) != 8+len(udp.Payload) {
		t.Errorf("udp length %d, want %d", udp.Length, 8+len(udp.Payload))
	}
	if udp.Checksum == 0 {
		t.Error("udp checksum missing")
	}
	checkL4Sum(t, d, layers.IPProtocolUDP, append(udp.Contents, udp.Payload...))
	return udp.Payload
}

// checkL4Sum verifies a transport checksum over the pseudo-header.
func checkL4Sum(t *testing.T, d decoded, proto layers.IPProtocol, seg []byte) {
	t.Helper()
	var ph []byte
	if d.src.Is4() {
		a, b := d.src.As4(), d.dst.As4()
		ph = append(append(ph, a[:]...), b[:]...)
		ph = append(ph, 0, byte(proto))
		ph = binary.BigEndian.AppendUint16(ph, uint16(len(seg)))
	} else {
		a, b := d.src.As16(), d.dst.As16()
		ph = append(append(ph, a[:]...), b[:]...)
		ph = binary.BigEndian.AppendUint32(ph, uint32(len(seg)))
		ph = append(ph, 0, 0, 0, byte(proto))
	}
	if sum := onesSum(append(ph, seg...)); sum != 0xffff {
		t.Errorf("%v checksum invalid (sum %#04x)", proto, sum)
	}
}

func wantAddrs(f Frame) (netip.Addr, netip.Addr) {
	src, dst := f.Src, f.Dst
	if !src.IsValid() {
		src = DefaultSrc4
		if dst.Is6() {
			src = DefaultSrc6
		}
	}
	if !dst.IsValid() {
		dst = DefaultDst4
		if src.Is6() {
			dst = DefaultDst6
		}
	}
	return src, dst
}

func TestBuilders(t *testing.T) {
	for name, f := range descriptions() {
		t.Run(name, func(t *testing.T) {
			src, dst := wantAddrs(f)
			check := func(t *testing.T, b []byte, want classify.Class) decoded {
				t.Helper()
				d := decode(t, b)
				if d.src != src || d.dst != dst {
					t.Errorf("addresses %v → %v, want %v → %v", d.src, d.dst, src, dst)
				}
				eth := d.pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
				wantSrcMAC, wantDstMAC := DefaultSrcMAC, DefaultDstMAC
				if f.SrcMAC != nil {
					wantSrcMAC, wantDstMAC = f.SrcMAC, f.DstMAC
				}
				if !bytes.Equal(eth.SrcMAC, wantSrcMAC) || !bytes.Equal(eth.DstMAC, wantDstMAC) {
					t.Errorf("macs %v → %v, want %v → %v", eth.SrcMAC, eth.DstMAC, wantSrcMAC, wantDstMAC)
				}
				if n := len(d.pkt.Layers()) - len(f.VLANs); n < 3 {
					t.Errorf("only %d layers", n)
				}
				var tags []VLAN
				for _, l := range d.pkt.Layers() {
					if v, ok := l.(*layers.Dot1Q); ok {
						tags = append(tags, VLAN{ID: v.VLANIdentifier})
					}
				}
				if len(tags) != len(f.VLANs) {
					t.Errorf("%d vlan tags, want %d", len(tags), len(f.VLANs))
				}
				if r := classify.Classify(b, nil); r.Class != want {
					t.Errorf("classified %v, want %v", r.Class, want)
				}
				return d
			}

			t.Run("esp", func(t *testing.T) {
				b := f.ESP(0xdeadbeef, 42, 64)
				d := check(t, b, classify.ClassESP)
				esp, ok := d.pkt.Layer(layers.LayerTypeIPSecESP).(*layers.IPSecESP)
				if !ok {
					t.Fatalf("no esp layer in %v", d.pkt)
				}
				if esp.SPI != 0xdeadbeef || esp.Seq != 42 || len(esp.Encrypted) != 64 {
					t.Errorf("esp spi %#x seq %d len %d", esp.SPI, esp.Seq, len(esp.Encrypted))
				}
				if bytes.Count(esp.Encrypted, []byte{0}) != 0 {
					t.Error("payload has zero bytes")
				}
				r := classify.Classify(b, nil)
				if r.SPI != 0xdeadbeef || r.Seq != 42 || r.Src != src || r.Dst != dst {
					t.Errorf("classify result %+v", r)
				}
			})
			t.Run("esp-in-udp", func(t *testing.T) {
				b := f.ESPInUDP(4500, 4501, 0xcafe0001, 3, 100)
				d := check(t, b, classify.ClassESPInUDP)
				p := checkUDP(t, d, 4500, 4501)
				if binary.BigEndian.Uint32(p) != 0xcafe0001 || binary.BigEndian.Uint32(p[4:]) != 3 || len(p) != 108 {
					t.Errorf("udp payload % x...", p[:8])
				}
				r := classify.Classify(b, nil)
				if r.SPI != 0xcafe0001 || r.SrcPort != 4500 || r.DstPort != 4501 {
					t.Errorf("classify result %+v", r)
				}
			})
			t.Run("ike 500", func(t *testing.T) {
				d := check(t, f.IKE(500, 500, false, 80), classify.ClassIKE)
				p := checkUDP(t, d, 500, 500)
				if len(p) != 80 || binary.BigEndian.Uint32(p[24:28]) != 80 || p[17] != 0x20 {
					t.Errorf("ike header % x", p[:28])
				}
			})
			t.Run("ike 4500 marker", func(t *testing.T) {
				d := check(t, f.IKE(4500, 4500, true, 80), classify.ClassIKE)
				p := checkUDP(t, d, 4500, 4500)
				if len(p) != 84 || binary.BigEndian.Uint32(p) != 0 || binary.BigEndian.Uint64(p[4:]) == 0 {
					t.Errorf("ike with marker % x", p[:12])
				}
			})
			t.Run("ike short", func(t *testing.T) {
				d := check(t, f.IKE(4500, 4500, true, 2), classify.ClassIKE)
				if p := checkUDP(t, d, 4500, 4500); len(p) != 6 {
					t.Errorf("payload %d bytes, want 6", len(p))
				}
			})
			t.Run("keepalive", func(t *testing.T) {
				d := check(t, f.Keepalive(4500, 4500), classify.ClassNATKeepalive)
				if p := checkUDP(t, d, 4500, 4500); !bytes.Equal(p, []byte{0xff}) {
					t.Errorf("keepalive payload % x", p)
				}
			})
			t.Run("udp", func(t *testing.T) {
				d := check(t, f.UDP(40000, 40001, []byte("hello")), classify.ClassOther)
				if p := checkUDP(t, d, 40000, 40001); string(p) != "hello" {
					t.Errorf("udp payload %q", p)
				}
			})
			t.Run("tcp", func(t *testing.T) {
				d := check(t, f.TCP(443, 50000, 33), classify.ClassOther)
				tcp, ok := d.pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
				if !ok {
					t.Fatalf("no tcp layer in %v", d.pkt)
				}
				if tcp.SrcPort != 443 || tcp.DstPort != 50000 || len(tcp.Payload) != 33 || !tcp.ACK || !tcp.PSH {
					t.Errorf("tcp %+v", tcp)
				}
				checkL4Sum(t, d, layers.IPProtocolTCP, append(tcp.Contents, tcp.Payload...))
			})
		})
	}
}

func TestIPv6ExtHeaders(t *testing.T) {
	f := Frame{Src: src6, Dst: dst6, IPv6Ext: []IPv6Ext{{Type: 0}, {Type: 43, Len8: 2}, {Type: 60, Len8: 1}}}
	p := gopacket.NewPacket(f.ESP(0x1000, 1, 8), layers.LayerTypeEthernet, gopacket.Default)
	want := []gopacket.LayerType{
		layers.LayerTypeEthernet, layers.LayerTypeIPv6, layers.LayerTypeIPv6HopByHop,
		layers.LayerTypeIPv6Routing, layers.LayerTypeIPv6Destination, layers.LayerTypeIPSecESP,
	}
	got := p.Layers()
	if len(got) != len(want) {
		t.Fatalf("layers %v, want %v", got, want)
	}
	for i, l := range got {
		if l.LayerType() != want[i] {
			t.Errorf("layer %d is %v, want %v", i, l.LayerType(), want[i])
		}
	}
	if rt := p.Layer(layers.LayerTypeIPv6Routing).(*layers.IPv6Routing); len(rt.Contents) != 24 || rt.SegmentsLeft != 0 {
		t.Errorf("routing header %d bytes, segments left %d", len(rt.Contents), rt.SegmentsLeft)
	}
}

func TestFragments(t *testing.T) {
	// IPv4: flags and offset.
	f := Frame{Frag: &Frag{Offset: 185, More: true, ID: 0x12345}}
	p := gopacket.NewPacket(f.ESP(0x1000, 1, 8), layers.LayerTypeEthernet, gopacket.Default)
	ip4 := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if ip4.FragOffset != 185 || ip4.Flags != layers.IPv4MoreFragments || ip4.Id != 0x2345 {
		t.Errorf("ipv4 fragment offset %d flags %v id %#x", ip4.FragOffset, ip4.Flags, ip4.Id)
	}
	if r := classify.Classify(f.ESP(0x1000, 1, 8), nil); r.Class != classify.ClassFragment {
		t.Errorf("non-first v4 fragment classified %v", r.Class)
	}
	f.Frag.Offset = 0
	if r := classify.Classify(f.ESP(0x1000, 1, 8), nil); r.Class != classify.ClassESP {
		t.Errorf("first v4 fragment classified %v", r.Class)
	}

	// IPv6: the fragment header comes after the other extension headers.
	f = Frame{Dst: dst6, IPv6Ext: []IPv6Ext{{Type: 0}}, Frag: &Frag{Offset: 7, More: false, ID: 0xabcdef01}}
	b := f.ESP(0x1000, 1, 8)
	p = gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	fr, ok := p.Layer(layers.LayerTypeIPv6Fragment).(*layers.IPv6Fragment)
	if !ok {
		t.Fatalf("no fragment header in %v", p)
	}
	if fr.FragmentOffset != 7 || fr.MoreFragments || fr.Identification != 0xabcdef01 || fr.NextHeader != layers.IPProtocolESP {
		t.Errorf("ipv6 fragment %+v", fr)
	}
	if _, ok := p.Layer(layers.LayerTypeIPv6HopByHop).(*layers.IPv6HopByHop); !ok {
		t.Error("no hop-by-hop header")
	}
	if r := classify.Classify(b, nil); r.Class != classify.ClassFragment {
		t.Errorf("non-first v6 fragment classified %v", r.Class)
	}
	f.Frag = &Frag{More: true}
	if r := classify.Classify(f.ESPInUDP(4500, 4500, 0x1000, 1, 0), nil); r.Class != classify.ClassFragment {
		t.Errorf("first v6 fragment with an 8-byte udp payload classified %v", r.Class)
	}
}

func TestPaddingAndUDPLength(t *testing.T) {
	f := Frame{PadTo: 60}
	b := f.Keepalive(4500, 4500)
	if len(b) != 60 {
		t.Fatalf("padded frame is %d bytes, want 60", len(b))
	}
	if ipLen := binary.BigEndian.Uint16(b[16:18]); ipLen != 29 {
		t.Errorf("ipv4 total length %d, want 29", ipLen)
	}
	f = Frame{UDPLength: 1400, Frag: &Frag{More: true}}
	b = f.ESPInUDP(4500, 4500, 0x1000, 1, 100)
	if l := binary.BigEndian.Uint16(b[38:40]); l != 1400 {
		t.Errorf("udp length %d, want 1400", l)
	}
	if r := classify.Classify(b, nil); r.Class != classify.ClassESPInUDP {
		t.Errorf("first fragment classified %v", r.Class)
	}
}

func TestDeterministic(t *testing.T) {
	f := Frame{Dst: dst6, VLANs: []VLAN{{ID: 1}}}
	if !bytes.Equal(f.ESP(1, 2, 300), f.ESP(1, 2, 300)) || !bytes.Equal(f.IKE(500, 500, true, 90), f.IKE(500, 500, true, 90)) {
		t.Error("builders are not deterministic")
	}
}

func TestPanics(t *testing.T) {
	for name, f := range map[string]Frame{
		"mixed families": {Src: src4, Dst: dst6},
		"long options":   {IPv4Options: make([]byte, 41)},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f.ESP(1, 1, 1)
		}()
	}
}
