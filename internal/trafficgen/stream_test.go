// SPDX-License-Identifier: Apache-2.0

package trafficgen

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
)

var (
	defSrc  = netip.MustParseAddr("198.51.100.1")
	defDst  = netip.MustParseAddr("203.0.113.1")
	defSrc6 = netip.MustParseAddr("2001:db8::1")
	defDst6 = netip.MustParseAddr("2001:db8::2")
)

// defaults is the stream "KIND" alone must give.
func defaults(kind string) Stream {
	s := Stream{Kind: kind, Count: 1, Seq: 1, Len: 64, Frame: frames.Frame{Src: defSrc, Dst: defDst}}
	switch kind {
	case "esp-in-udp", "keepalive":
		s.Sport, s.Dport = 4500, 4500
	case "ike":
		s.Sport, s.Dport = 500, 500
	case "tcp":
		s.Sport, s.Dport = 40000, 443
	case "udp":
		s.Sport, s.Dport = 40000, 53
	case "fragment":
		s.Frame.Frag = &frames.Frag{Offset: 185, ID: 7}
	case "icmp-error":
		s.Sport, s.Dport, s.Quote, s.QuoteLen, s.SPI = 4500, 4500, "esp", 8, 0xc0ffee01
		s.ICMPType, s.ICMPCode, s.MTU, s.QuotedDst = 3, 4, 1400, defSrc
	}
	return s
}

func TestParseStreamDefaults(t *testing.T) {
	for _, kind := range []string{"esp", "esp-in-udp", "ike", "keepalive", "fragment", "tcp", "udp", "icmp-error"} {
		in, want := kind, defaults(kind)
		if kind == "esp-in-udp" {
			in += " spi=0x100" // there is no default SPI: see TestParseStreamErrors
			want.SPI = 0x100
		}
		got, err := ParseStream(in)
		if err != nil {
			t.Errorf("%s: %v", kind, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", kind, got, want)
		}
	}
	if len(kinds) != 8 {
		t.Errorf("kinds %v: a kind was added; add its defaults here", kinds)
	}
}

func TestParseStreamKeys(t *testing.T) {
	for _, c := range []struct {
		in   string
		want func(*Stream)
	}{
		{"esp src=10.0.0.1 dst=10.0.0.2", func(s *Stream) {
			s.Frame.Src, s.Frame.Dst = netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
		}},
		{"esp src=10.0.0.1", func(s *Stream) { s.Frame.Src = netip.MustParseAddr("10.0.0.1") }},
		{"esp dst=10.0.0.2", func(s *Stream) { s.Frame.Dst = netip.MustParseAddr("10.0.0.2") }},
		// One IPv6 address: the other defaults to IPv6 too.
		{"esp src=2001:db8::5", func(s *Stream) { s.Frame.Src, s.Frame.Dst = netip.MustParseAddr("2001:db8::5"), defDst6 }},
		{"esp dst=2001:db8::6", func(s *Stream) { s.Frame.Src, s.Frame.Dst = defSrc6, netip.MustParseAddr("2001:db8::6") }},
		{"esp src=2001:db8::5 dst=2001:db8::6", func(s *Stream) {
			s.Frame.Src, s.Frame.Dst = netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("2001:db8::6")
		}},
		{"esp spi=0x1000", func(s *Stream) { s.SPI = 0x1000 }},
		{"esp spi=4096", func(s *Stream) { s.SPI = 4096 }},
		{"esp spi=0xffffffff", func(s *Stream) { s.SPI = 0xffffffff }},
		{"esp seq=0", func(s *Stream) { s.Seq = 0 }},
		{"esp seq=0x10", func(s *Stream) { s.Seq = 16 }},
		{"esp spis=100 srcs=10", func(s *Stream) { s.SPIs, s.Srcs = 100, 10 }},
		{"esp seq=7 seqinc=true", func(s *Stream) { s.Seq, s.SeqInc = 7, true }},
		{"udp sport=1 dport=65535", func(s *Stream) { s.Sport, s.Dport = 1, 65535 }},
		{"esp-in-udp spi=1 sport=4501", func(s *Stream) { s.SPI, s.Sport, s.Dport = 1, 4501, 4500 }},
		{"esp spi=0", func(s *Stream) { s.SPI = 0 }}, // reserved, but ESP all the same
		{"esp spi=0xfffffff0 spis=16", func(s *Stream) { s.SPI, s.SPIs = 0xfffffff0, 16 }},
		{"esp-in-udp spi=0xffffffff spis=1", func(s *Stream) { s.SPI, s.SPIs = 0xffffffff, 1 }},
		{"ike dport=4500 marker=true", func(s *Stream) { s.Sport, s.Dport, s.Marker = 500, 4500, true }},
		{"ike marker=false", func(s *Stream) { s.Sport, s.Dport = 500, 500 }},
		{"esp len=0", func(s *Stream) { s.Len = 0 }},
		{"esp len=9000", func(s *Stream) { s.Len = 9000 }},
		{"esp count=0", func(s *Stream) { s.Count = 0 }},
		{"esp count=1000000", func(s *Stream) { s.Count = 1000000 }},
		{"esp vlan=100", func(s *Stream) { s.Frame.VLANs = []frames.VLAN{{TPID: 0x8100, ID: 100}} }},
		{"esp vlan=0", func(s *Stream) { s.Frame.VLANs = []frames.VLAN{{TPID: 0x8100, ID: 0}} }},
		{"esp vlan=4095", func(s *Stream) { s.Frame.VLANs = []frames.VLAN{{TPID: 0x8100, ID: 4095}} }},
		{"esp vlan=100,200", func(s *Stream) {
			s.Frame.VLANs = []frames.VLAN{{TPID: 0x88a8, ID: 100}, {TPID: 0x8100, ID: 200}}
		}},
		// A key given twice: the last one wins, vlan= too.
		{"esp spi=1 spi=0x2000", func(s *Stream) { s.SPI = 0x2000 }},
		{"esp vlan=100,200 vlan=300", func(s *Stream) { s.Frame.VLANs = []frames.VLAN{{TPID: 0x8100, ID: 300}} }},
		{"  esp\tspi=0x1000   count=5 ", func(s *Stream) { s.SPI, s.Count = 0x1000, 5 }},
	} {
		got, err := ParseStream(c.in)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		want := defaults(strings.Fields(c.in)[0])
		c.want(&want)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%q:\n got %+v\nwant %+v", c.in, got, want)
		}
	}
}

func TestParseStreamErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "empty stream: want KIND key=value ..., KIND one of esp, esp-in-udp, ike, keepalive, fragment, tcp, udp"},
		{"   ", "empty stream"},
		{"ah spi=1", `stream "ah spi=1": unknown kind "ah", want one of esp, esp-in-udp, ike, keepalive, fragment, tcp, udp`},
		{"ESP", `unknown kind "ESP"`},
		{"spi=1", `unknown kind "spi=1"`},
		{"esp ttl=3", `stream "esp ttl=3": unknown key "ttl"`},
		{"esp SPI=1", `unknown key "SPI"`},
		{"esp spi", `stream "esp spi": "spi" is not key=value`},
		{"esp src=bogus", `stream "esp src=bogus": src=bogus: `},
		{"esp dst=10.0.0", "dst=10.0.0: "},
		{"esp src=", "src=: "},
		{"esp spi=abc", "spi=abc: "},
		{"esp spi=0x100000000", "spi=0x100000000: "},
		{"esp spi=-1", "spi=-1: "},
		{"esp seq=x", "seq=x: "},
		{"esp spis=-1", "spis=-1: "},
		{"esp srcs=1.5", "srcs=1.5: "},
		{"udp sport=65536", "sport=65536: "},
		{"udp dport=-1", "dport=-1: "},
		{"udp dport=", "dport=: "},
		{"esp len=-1", "len=-1: out of range 0-9000"},
		{"esp len=9001", "len=9001: out of range 0-9000"},
		{"esp len=ten", "len=ten: "},
		{"esp count=-1", "count=-1: negative"},
		{"esp count=1e3", "count=1e3: "},
		{"ike marker=maybe", "marker=maybe: "},
		{"esp vlan=4096", "vlan=4096: "},
		{"esp vlan=-1", "vlan=-1: "},
		{"esp vlan=abc", "vlan=abc: "},
		{"esp vlan=", "vlan=: "},
		{"esp vlan=1,", "vlan=1,: "},
		{"esp vlan=1,2,3", "vlan=1,2,3: at most two tags"},
		{"esp vlan=1,2,3,4", "vlan=1,2,3,4: at most two tags"},
		{"esp spi=0xfffffff0 spis=17", "spi + spis - 1 does not fit in 32 bits"},
		{"esp-in-udp spi=0xffffffff spis=2", "spi + spis - 1 does not fit in 32 bits"},
		{"esp-in-udp", `stream "esp-in-udp": esp-in-udp needs spi= other than 0`},
		{"esp-in-udp spi=0 spis=5", "esp-in-udp needs spi= other than 0"},
		{"esp src=10.0.0.1 dst=2001:db8::1", `stream "esp src=10.0.0.1 dst=2001:db8::1": src and dst must be the same IP version`},
		{"esp src=2001:db8::1 dst=10.0.0.1", "src and dst must be the same IP version"},
	} {
		got, err := ParseStream(c.in)
		if err == nil {
			t.Errorf("%q: accepted as %+v, want an error containing %q", c.in, got, c.want)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %q, want it to contain %q", c.in, err, c.want)
		}
	}
}

// TestBuild checks that each kind builds the frame it names, with the stream's fields.
func TestBuild(t *testing.T) {
	for _, c := range []struct {
		in    string
		class classify.Class
		spi   uint32
	}{
		{"esp spi=0x1000 seq=7", classify.ClassESP, 0x1000},
		{"esp-in-udp spi=0xc0ffee vlan=100", classify.ClassESPInUDP, 0xc0ffee},
		{"esp-in-udp spi=1 src=2001:db8::1 vlan=1,2", classify.ClassESPInUDP, 1},
		{"ike", classify.ClassIKE, 0},
		{"ike dport=4500 marker=true", classify.ClassIKE, 0},
		{"keepalive", classify.ClassNATKeepalive, 0},
		{"fragment src=2001:db8::1", classify.ClassFragment, 0},
		{"fragment", classify.ClassFragment, 0},
		{"tcp", classify.ClassOther, 0},
		{"udp", classify.ClassOther, 0},
	} {
		st, err := ParseStream(c.in)
		if err != nil {
			t.Fatalf("%q: %v", c.in, err)
		}
		r := classify.Classify(st.Build(), nil)
		if r.Class != c.class || r.SPI != c.spi {
			t.Errorf("%q: classified %v SPI 0x%x, want %v 0x%x", c.in, r.Class, r.SPI, c.class, c.spi)
		}
		if c.class == classify.ClassESP && r.Seq != 7 {
			t.Errorf("%q: sequence %d, want 7", c.in, r.Seq)
		}
	}
}

// withLow returns a with its last 4 bytes replaced by low.
func withLow(a netip.Addr, low uint32) netip.Addr {
	b := a.AsSlice()
	binary.BigEndian.PutUint32(b[len(b)-4:], low)
	r, _ := netip.AddrFromSlice(b)
	return r
}

func lowOf(a netip.Addr) uint32 {
	b := a.AsSlice()
	return binary.BigEndian.Uint32(b[len(b)-4:])
}

// TestVary checks the rewrite offsets for every ESP kind, IP version and tag count:
// the i-th frame must classify as SPI+i%spis from the source with low word
// base+i%srcs, and differ from the first frame in nowhere else.
func TestVary(t *testing.T) {
	for _, kind := range []string{"esp", "esp-in-udp"} {
		// Bases just below a carry: the rewrite is a 32-bit add, not a byte write.
		for _, ip := range []string{"src=10.1.2.254 dst=10.9.9.9", "src=2001:db8::a:fffe dst=2001:db8::ffff"} {
			for _, vlan := range []string{"", "vlan=100", "vlan=100,200"} {
				in := fmt.Sprintf("%s %s %s spi=0x00ffffe0 spis=37 srcs=5 len=20", kind, ip, vlan)
				t.Run(in, func(t *testing.T) {
					st, err := ParseStream(in)
					if err != nil {
						t.Fatal(err)
					}
					v, err := st.Vary()
					if err != nil {
						t.Fatalf("Vary: %v", err)
					}
					first := st.Build()
					want0 := classify.Classify(first, nil)
					class := classify.ClassESP
					if kind == "esp-in-udp" {
						class = classify.ClassESPInUDP
					}
					for i := range uint64(200) {
						f := v.Apply(first, i)
						if len(f) != len(first) {
							t.Fatalf("frame %d: %d bytes, want %d", i, len(f), len(first))
						}
						r := classify.Classify(f, nil)
						wantSPI := 0x00ffffe0 + uint32(i%37)
						wantSrc := withLow(st.Frame.Src, lowOf(st.Frame.Src)+uint32(i%5))
						if r.Class != class || r.SPI != wantSPI || r.Src != wantSrc || r.Dst != want0.Dst || r.Seq != want0.Seq ||
							r.SrcPort != want0.SrcPort || r.DstPort != want0.DstPort {
							t.Fatalf("frame %d: %v SPI 0x%x seq %d from %v:%d to %v:%d, want %v SPI 0x%x seq %d from %v:%d to %v:%d",
								i, r.Class, r.SPI, r.Seq, r.Src, r.SrcPort, r.Dst, r.DstPort,
								class, wantSPI, want0.Seq, wantSrc, want0.SrcPort, want0.Dst, want0.DstPort)
						}
						diff := 0
						for j := range f {
							if f[j] != first[j] {
								diff++
							}
						}
						if diff > 8 {
							t.Fatalf("frame %d: %d bytes changed, at most 8 (SPI and source low word) may", i, diff)
						}
					}
					// Apply leaves its input alone.
					if again := st.Build(); string(again) != string(first) {
						t.Errorf("Apply changed the frame it was given")
					}
				})
			}
		}
	}
}

func TestVaryFixed(t *testing.T) {
	// Nothing to vary: no rewrites, Apply returns the frame unchanged.
	for _, in := range []string{"esp spi=0x1000", "esp spi=0x1000 spis=1 srcs=1", "udp", "ike spis=0", "udp spis=1"} {
		st, err := ParseStream(in)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		v, err := st.Vary()
		if err != nil || v != (Vary{}) {
			t.Errorf("%q: Vary %+v, %v; want no rewrites", in, v, err)
		}
		f := st.Build()
		if got := v.Apply(f, 12345); string(got) != string(f) {
			t.Errorf("%q: Apply with no rewrites changed the frame", in)
		}
	}
}

func TestVarySourcesOnly(t *testing.T) {
	// srcs= works on any kind: only the source changes.
	for _, in := range []string{"udp srcs=3", "tcp src=2001:db8::1 srcs=3 vlan=7", "ike srcs=3", "keepalive srcs=3"} {
		st, err := ParseStream(in)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		v, err := st.Vary()
		if err != nil {
			t.Fatalf("%q: Vary: %v", in, err)
		}
		first := st.Build()
		want0 := classify.Classify(first, nil)
		for i := range uint64(7) {
			r := classify.Classify(v.Apply(first, i), nil)
			if want := withLow(st.Frame.Src, lowOf(st.Frame.Src)+uint32(i%3)); r.Src != want || r.Class != want0.Class || r.Dst != want0.Dst {
				t.Errorf("%q frame %d: %v from %v to %v, want %v from %v to %v", in, i, r.Class, r.Src, r.Dst, want0.Class, want, want0.Dst)
			}
		}
	}
}

func TestVaryErrors(t *testing.T) {
	for _, in := range []string{"udp spis=2", "ike spis=10", "keepalive spis=2", "fragment spis=2", "tcp spis=100 srcs=10"} {
		st, err := ParseStream(in)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if _, err := st.Vary(); err == nil || !strings.Contains(err.Error(), "spis= needs an esp or esp-in-udp stream, not "+st.Kind) {
			t.Errorf("%q: Vary error %v, want spis= needs an esp or esp-in-udp stream", in, err)
		}
	}
	if _, err := mustParse(t, "ike seqinc=true").Vary(); err == nil || !strings.Contains(err.Error(), "seqinc= needs an esp or esp-in-udp stream, not ike") {
		t.Errorf("ike seqinc=true: Vary error %v", err)
	}
	// Options move the SPI: refuse rather than rewrite the wrong bytes.
	st := mustParse(t, "esp spi=0x100 spis=2")
	if _, err := st.Vary(); err != nil {
		t.Fatalf("Vary: %v", err)
	}
	st.Frame.IPv4Options = []byte{1, 1, 1, 1}
	if _, err := st.Vary(); err == nil {
		t.Errorf("spis= with IPv4 options accepted")
	}
	st = mustParse(t, "esp-in-udp src=2001:db8::1 spi=0x100 spis=2")
	if _, err := st.Vary(); err != nil {
		t.Fatalf("Vary: %v", err)
	}
	st.Frame.IPv6Ext = []frames.IPv6Ext{{Type: 60}}
	if _, err := st.Vary(); err == nil {
		t.Errorf("spis= with IPv6 extension headers accepted")
	}
}

func mustParse(t *testing.T, in string) Stream {
	t.Helper()
	st, err := ParseStream(in)
	if err != nil {
		t.Fatalf("%q: %v", in, err)
	}
	return st
}

func TestApplyBounds(t *testing.T) {
	// An offset past the end of the frame is ignored, not a panic.
	v := Vary{SPIOffset: 60, SPIBase: 1, SPISpan: 2, SrcOffset: 58, SrcBase: 1}
	f := make([]byte, 61)
	if got := v.Apply(f, 1); string(got) != string(f) {
		t.Errorf("Apply wrote past the end: %x", got)
	}
	// Span 0 means fixed.
	v = Vary{SPIOffset: 2, SPIBase: 0xa0b0c0d0}
	if got := v.Apply(make([]byte, 8), 5); binary.BigEndian.Uint32(got[2:]) != 0xa0b0c0d0 {
		t.Errorf("span 0: %x, want base", got)
	}
}

// TestStreamDiag: icmp-error and ike streams build what the classifier reads as
// such, with the keys' values.
func TestStreamDiag(t *testing.T) {
	for _, c := range []struct {
		in   string
		want classify.ICMPError
	}{
		{"icmp-error src=192.0.2.254 qdst=198.51.100.9", classify.ICMPError{Family: 4, Type: 3, Code: 4, Quote: classify.QuoteESP,
			SPI: 0xc0ffee01, Src: defDst, Dst: netip.MustParseAddr("198.51.100.9"), MTU: 1400}},
		{"icmp-error type=3 code=3 quote=esp-in-udp spi=0x77 qlen=64", classify.ICMPError{Family: 4, Type: 3, Code: 3,
			Quote: classify.QuoteESPInUDP, SPI: 0x77, Src: defDst, Dst: defSrc, SrcPort: 4500, DstPort: 4500}},
		{"icmp-error type=3 code=3 quote=esp-in-udp", classify.ICMPError{Family: 4, Type: 3, Code: 3,
			Quote: classify.QuoteNATTNoSPI, Src: defDst, Dst: defSrc, SrcPort: 4500, DstPort: 4500}},
		{"icmp-error src=2001:db8::1", classify.ICMPError{Family: 6, Type: 2, Quote: classify.QuoteESP, SPI: 0xc0ffee01, Src: defDst6, Dst: defSrc6, MTU: 1280}},
		{"icmp-error src=2001:db8::1 type=1 code=4 quote=esp-in-udp qlen=100", classify.ICMPError{Family: 6, Type: 1, Code: 4,
			Quote: classify.QuoteESPInUDP, SPI: 0xc0ffee01, Src: defDst6, Dst: defSrc6, SrcPort: 4500, DstPort: 4500}},
	} {
		st, err := ParseStream(c.in)
		if err != nil {
			t.Fatalf("%q: %v", c.in, err)
		}
		r := classify.Classify(st.Build(), nil)
		if r.Class != classify.ClassICMPESP || r.ICMP != c.want {
			t.Errorf("%q: %v %+v, want icmp-esp %+v", c.in, r.Class, r.ICMP, c.want)
		}
	}
	for _, c := range []struct {
		in   string
		want classify.IKEHeader
	}{
		{"ike exchange=IKE_AUTH response=true msgid=1", classify.IKEHeader{Version: 2, Exchange: classify.IKEAuth, Dir: classify.IKEResponse}},
		{"ike exchange=quick sport=4500 dport=4500 marker=true", classify.IKEHeader{Version: 1, Exchange: classify.IKEQuick, Dir: classify.IKENoDir}},
		{"ike exchange=43", classify.IKEHeader{Version: 2, Exchange: classify.IKEOther, Dir: classify.IKERequest}},
		{"ike exchange=INFORMATIONAL len=20", classify.IKEHeader{Exchange: classify.IKEMalformed, Dir: classify.IKENoDir}},
		{"ike", classify.IKEHeader{Version: 2, Exchange: classify.IKESAInit, Dir: classify.IKERequest}},
	} {
		st, err := ParseStream(c.in)
		if err != nil {
			t.Fatalf("%q: %v", c.in, err)
		}
		r := classify.Classify(st.Build(), nil)
		if r.Class != classify.ClassIKE || r.IKE.Version != c.want.Version || r.IKE.Exchange != c.want.Exchange || r.IKE.Dir != c.want.Dir {
			t.Errorf("%q: %v %+v, want ike %+v", c.in, r.Class, r.IKE, c.want)
		}
	}
	for _, bad := range []string{"esp exchange=IKE_AUTH", "ike exchange=bogus", "icmp-error quote=ah", "esp qdst=10.0.0.1",
		"icmp-error qdst=2001:db8::9", "ike version=3", "tcp type=3"} {
		if _, err := ParseStream(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
