// SPDX-License-Identifier: Apache-2.0

package liveview

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/maps"
)

func TestRenderDiag(t *testing.T) {
	s := snapshot()
	gw, peer := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("198.51.100.1")
	s.ICMP = []report.ICMPRow{{ICMPRow: maps.ICMPRow{Reporter: netip.MustParseAddr("192.0.2.254"), Packets: 12,
		ICMPError: classify.ICMPError{Family: 4, Type: 3, Code: 4, Quote: classify.QuoteESP, SPI: 0xc0ffee01, Src: gw, Dst: peer, MTU: 1400}}, Rate: 3}}
	for i, x := range []classify.IKEExchange{classify.IKESAInit, classify.IKEAuth, classify.IKECreateChildSA, classify.IKEInformational,
		classify.IKEMain, classify.IKEQuick, classify.IKEMalformed} {
		v := uint8(2)
		if x >= classify.IKEMain {
			v = 1
		}
		s.IKE = append(s.IKE, report.IKERow{IKERow: maps.IKERow{Peer: peer, Version: v, Exchange: x, Packets: uint64(10 + i)},
			Rate: float64(i), LastSeen: s.Time, PeerUnknown: 2})
	}
	s.IKEInitStorms = []report.IKEInitStorm{{Peer: peer, Iface: "eth0", Rate: 4.5}}
	v := &View{info: Info{Started: time.Now()}, last: s}
	screen := v.Render(200, 60)
	for _, w := range []string{"ICMP errors about ESP: 1", "frag-needed", "0xc0ffee01", "1400",
		"IKE activity: 7 rows", "IKE_SA_INIT STORM: 198.51.100.1 on eth0, 4.5 requests/s", "CREATE_CHILD_SA", "quick", "... 1 more", "(peer has 2 unknown SPIs)"} {
		if !strings.Contains(screen, w) {
			t.Errorf("screen lacks %q:\n%s", w, screen)
		}
	}
	// Busiest first: the malformed row (rate 6) is shown, the IKE_SA_INIT one (rate 0) is the one left out.
	for _, l := range strings.Split(screen, "\n") {
		if strings.Contains(l, "IKE_SA_INIT") && !strings.Contains(l, "STORM") {
			t.Errorf("the idlest IKE row is shown: %q", l)
		}
	}
	if !strings.Contains(screen, "malformed") {
		t.Errorf("the busiest IKE row is not shown:\n%s", screen)
	}
	// A short terminal still shows the unknown SPIs' header and cuts, saying so.
	short := v.Render(200, 26)
	if n := len(strings.Split(short, "\n")); n > 26 {
		t.Errorf("%d lines on a 26-line terminal", n)
	}
	if !strings.Contains(short, "more (make the terminal taller)") {
		t.Errorf("unknown rows cut without saying so:\n%s", short)
	}
}
