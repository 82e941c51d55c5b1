// SPDX-License-Identifier: Apache-2.0

package classify_test

import (
	"testing"

	. "github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
)

// The reference's own ICMP and IKE cases (bpf/diag_test.go has the full tables,
// run against the program too).
func TestClassifyICMP(t *testing.T) {
	gw := frames.Frame{Src: frames.DefaultDst4, Dst: frames.DefaultSrc4} // our outbound ESP
	gw6 := frames.Frame{Src: frames.DefaultDst6, Dst: frames.DefaultSrc6}
	esp := gw.ESP(spi, seq, 1000)
	udp := gw.ESPInUDP(4500, 4500, spi, seq, 1000)
	for _, tc := range []struct {
		name  string
		frame []byte
		cfg   *Config
		want  ICMPError // Family 0: other
	}{
		{"frag-needed, 8 bytes", v4.ICMP(3, 4, 1400, frames.Quote(esp, 8)), nil,
			ICMPError{Family: 4, Type: 3, Code: 4, Quote: QuoteESP, SPI: spi, Src: frames.DefaultDst4, Dst: frames.DefaultSrc4, MTU: 1400}},
		{"port-unreachable, esp-in-udp", v4.ICMP(3, 3, 0, frames.Quote(udp, 100)), nil,
			ICMPError{Family: 4, Type: 3, Code: 3, Quote: QuoteESPInUDP, SPI: spi, Src: frames.DefaultDst4, Dst: frames.DefaultSrc4, SrcPort: 4500, DstPort: 4500}},
		{"port-unreachable, esp-in-udp, 8 bytes", v4.ICMP(3, 3, 0, frames.Quote(udp, 8)), nil,
			ICMPError{Family: 4, Type: 3, Code: 3, Quote: QuoteNATTNoSPI, Src: frames.DefaultDst4, Dst: frames.DefaultSrc4, SrcPort: 4500, DstPort: 4500}},
		{"esp-in-udp on a port not in the set", v4.ICMP(3, 3, 0, frames.Quote(udp, 100)), &Config{NATTPorts: []uint16{4501}}, ICMPError{}},
		{"packet-too-big", v6.ICMP(2, 0, 1280, frames.Quote(gw6.ESP(spi, seq, 1400), 100)), nil,
			ICMPError{Family: 6, Type: 2, Quote: QuoteESP, SPI: spi, Src: frames.DefaultDst6, Dst: frames.DefaultSrc6, MTU: 1280}},
		{"echo request", v4.ICMP(8, 0, 0, frames.Quote(esp, 100)), nil, ICMPError{}},
		{"quoted tcp", v4.ICMP(3, 4, 1400, frames.Quote(gw.TCP(1, 2, 40), 20)), nil, ICMPError{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Classify(tc.frame, tc.cfg)
			if tc.want.Family == 0 {
				if r.Class != ClassOther || r.ICMP != (ICMPError{}) {
					t.Fatalf("class %v ICMP %+v, want other", r.Class, r.ICMP)
				}
				return
			}
			if r.Class != ClassICMPESP || r.ICMP != tc.want || r.HasSPI {
				t.Fatalf("class %v ICMP %+v HasSPI %v, want icmp-esp %+v", r.Class, r.ICMP, r.HasSPI, tc.want)
			}
			if r.Src != frames.DefaultSrc4 && r.Src != frames.DefaultSrc6 {
				t.Fatalf("reporter %v", r.Src)
			}
		})
	}
}

func TestClassifyIKE(t *testing.T) {
	h := frames.IKEHeader{ISPI: 1, RSPI: 2, NextPayload: 33, Version: 0x20, Exchange: 34, Flags: 0x28, MsgID: 9}
	r := Classify(v4.IKEMessage(4500, 4500, true, h.Message(20)), nil)
	want := IKEHeader{Version: 2, Exchange: IKESAInit, Dir: IKEResponse, ExchangeType: 34, Flags: 0x28, NextPayload: 33, ISPI: 1, RSPI: 2, MsgID: 9}
	if r.Class != ClassIKE || r.IKE != want {
		t.Fatalf("class %v IKE %+v, want ike %+v", r.Class, r.IKE, want)
	}
	h.Version, h.Exchange = 0x10, 32
	if r := Classify(v6.IKEMessage(500, 500, false, h.Message(0)), nil); r.IKE.Exchange != IKEQuick || r.IKE.Dir != IKENoDir || r.IKE.Version != 1 {
		t.Fatalf("IKEv1 quick: %+v", r.IKE)
	}
	if r := Classify(v4.UDP(500, 500, h.Message(0)[:27]), nil); r.Class != ClassIKE || r.IKE != (IKEHeader{Exchange: IKEMalformed, Dir: IKENoDir}) {
		t.Fatalf("27 bytes: class %v IKE %+v", r.Class, r.IKE)
	}
	if got := IKEInformational.Name(1); got != "informational" {
		t.Errorf("IKEv1 informational named %q", got)
	}
	if got := ICMPTypeName(4, 3, 4); got != "frag-needed" {
		t.Errorf("ICMP 3/4 named %q", got)
	}
	if got := ICMPTypeName(6, 1, 4); got != "port-unreachable" {
		t.Errorf("ICMPv6 1/4 named %q", got)
	}
}
