// SPDX-License-Identifier: Apache-2.0

package report

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/maps"
)

// fakeDiag is a fakeSource with ICMP-error and IKE tables.
type fakeDiag struct {
	*fakeSource
	icmp []maps.ICMPRow
	ike  []maps.IKERow
}

func (f *fakeDiag) ICMPSnapshot() ([]maps.ICMPRow, error) {
	return append([]maps.ICMPRow(nil), f.icmp...), f.err
}
func (f *fakeDiag) IKESnapshot() ([]maps.IKERow, error) {
	return append([]maps.IKERow(nil), f.ike...), f.err
}
func (f *fakeDiag) DiagTableStats(icmp, ike int) (maps.TableStats, maps.TableStats, error) {
	return maps.TableStats{Entries: icmp, Capacity: 4096, Inserts: uint64(icmp) + 2, Evictions: 2},
		maps.TableStats{Entries: ike, Capacity: 16384, Inserts: uint64(ike)}, f.err
}

var (
	peerA  = netip.MustParseAddr("198.51.100.7")
	peerB  = netip.MustParseAddr("2001:db8::7")
	router = netip.MustParseAddr("192.0.2.254")
	gwAddr = netip.MustParseAddr("192.0.2.2")
)

func initRow(peer netip.Addr, n uint64) maps.IKERow {
	return maps.IKERow{Peer: peer, Ifindex: 2, Version: 2, Exchange: classify.IKESAInit, Dir: classify.IKERequest,
		Packets: n, Bytes: 300 * n, LastExchangeType: 34}
}

func TestDiagRatesAndKnownSA(t *testing.T) {
	f := &fakeDiag{fakeSource: newFake()}
	f.known = []maps.KnownSA{{SA: maps.SA{SPI: 0xc0ffee01, Dst: peerA}}}
	frag := maps.ICMPRow{Reporter: router, Ifindex: 2, Packets: 10, ICMPError: classify.ICMPError{Family: 4, Type: 3, Code: 4,
		Quote: classify.QuoteESP, SPI: 0xc0ffee01, Src: gwAddr, Dst: peerA, MTU: 1400}}
	port := maps.ICMPRow{Reporter: peerA, Ifindex: 2, Packets: 1, ICMPError: classify.ICMPError{Family: 4, Type: 3, Code: 3,
		Quote: classify.QuoteNATTNoSPI, Src: gwAddr, Dst: peerA, SrcPort: 4500, DstPort: 4500}}
	f.icmp = []maps.ICMPRow{port, frag}
	f.ike = []maps.IKERow{initRow(peerA, 4)}
	clk := &fakeClock{wall: t0, mono: 1e12}
	r := newReporter(t, f, clk, eth0) // counts so far are no rate
	clk.advance(2 * time.Second)
	frag.Packets, port.Packets = 30, 1
	f.icmp = []maps.ICMPRow{port, frag}
	f.ike = []maps.IKERow{initRow(peerA, 6)}
	f.unknown = []maps.Unknown{unk(0xdeadbeef, "198.51.100.7", 0, 2, 10), unk(0xdeadbef0, "198.51.100.7", 0, 2, 10), unk(0xbad, "198.51.100.8", 0, 2, 1)}
	s := take(t, r)
	if len(s.ICMP) != 2 || s.ICMP[0].SPI != 0xc0ffee01 || s.ICMP[0].Rate != 10 || !s.ICMP[0].KnownSA || s.ICMP[1].Rate != 0 || s.ICMP[1].KnownSA {
		t.Fatalf("ICMP rows %+v: want the frag-needed first at 10/s on a known SA, then port-unreachable at 0/s", s.ICMP)
	}
	if s.ICMP[0].Iface != "eth0" || s.ICMPTable.Entries != 2 || s.ICMPTable.Evictions != 2 {
		t.Fatalf("iface %q table %+v", s.ICMP[0].Iface, s.ICMPTable)
	}
	if len(s.IKE) != 1 || s.IKE[0].Rate != 1 || s.IKETable.Entries != 1 || s.IKE[0].PeerUnknown != 2 {
		t.Fatalf("IKE rows %+v table %+v: want one at 1/s", s.IKE, s.IKETable)
	}

	var b bytes.Buffer
	if err := WriteText(&b, s, 0); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ICMP errors about ESP: 2 of 2 by rate (table 2/4096, 2 evicted)",
		"192.0.2.254   frag-needed       esp          0xc0ffee01  192.0.2.2       198.51.100.7",
		"1400", "known",
		"198.51.100.7  port-unreachable  natt-no-spi  -           192.0.2.2:4500",
		"IKE activity: 1 row (table 1/16384, 0 evicted)",
		"198.51.100.7  eth0   v2   IKE_SA_INIT  request  6",
		"peer's unknown SPIs",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, b.String())
		}
	}
	m, js := writeJSON(t, s, 0)
	wantKeys(t, "icmp_errors[0]", m["icmp_errors"].([]any)[0], "reporter", "family", "type", "code", "name", "quote", "spi",
		"src", "sport", "dst", "dport", "interface", "packets", "bytes", "pps", "mtu", "first_seen", "last_seen", "known_sa")
	wantKeys(t, "ike[0]", m["ike"].([]any)[0], "peer", "interface", "version", "exchange", "exchange_type", "dir", "packets",
		"bytes", "pps", "first_seen", "last_seen", "last_ispi", "last_rspi", "last_msgid", "last_flags", "peer_unknown_spis")
	if e := js.ICMPErrors[1]; e.SPI != "" || e.Quote != "natt-no-spi" || e.Name != "port-unreachable" || e.Family != "icmp" {
		t.Errorf("natt-no-spi row %+v", e)
	}
	if x := js.IKE[0]; x.Exchange != "IKE_SA_INIT" || x.Dir != "request" || x.Version != 2 || x.PeerUnknownSPIs != 2 {
		t.Errorf("IKE row %+v", x)
	}
}

// TestIKEInitStorm: a peer's IKE_SA_INIT requests above the rate over the window
// are news (NewIKEInitStorms, the event log's) once when the rate goes above,
// again only after it went below.
func TestIKEInitStorm(t *testing.T) {
	f := &fakeDiag{fakeSource: newFake()}
	clk := &fakeClock{wall: t0, mono: 1e12}
	r := newReporter(t, f, clk, eth0)
	r.IKEInitRate = DefaultIKEInitRate
	var a, b uint64 // peer A: a COOKIE round trip, 3 requests at once; peer B: 5/s
	var storms []string
	for sec := 1; sec <= 30; sec++ {
		clk.advance(time.Second)
		if sec == 1 {
			a = 3
		}
		if sec <= 6 || sec >= 25 {
			b += 5
		}
		f.ike = []maps.IKERow{initRow(peerA, a), initRow(peerB, b)}
		// responses and other exchanges do not count
		f.ike = append(f.ike, maps.IKERow{Peer: peerA, Ifindex: 2, Version: 2, Exchange: classify.IKESAInit, Dir: classify.IKEResponse, Packets: 100 * uint64(sec)})
		s := take(t, r)
		for _, st := range s.NewIKEInitStorms {
			storms = append(storms, st.Peer.String()+"@"+time.Duration(sec*int(time.Second)).String())
			if st.Rate <= 1 || st.Iface != "eth0" || st.Requests != b {
				t.Errorf("storm %+v at %ds", st, sec)
			}
		}
	}
	// B: 15 requests in 10 s at 3 s; quiet from 7 s, below again once the window
	// has passed; 5/s again from 25 s: above at 27 s.
	want := []string{"2001:db8::7@3s", "2001:db8::7@27s"}
	if strings.Join(storms, " ") != strings.Join(want, " ") {
		t.Fatalf("storms %v, want %v", storms, want)
	}
}

// TestIKEInitStormLasts: a storm is in every report while the peer's rate stays
// above --ike-init-rate, as a collision is, not only in the one where it began.
func TestIKEInitStormLasts(t *testing.T) {
	f := &fakeDiag{fakeSource: newFake()}
	clk := &fakeClock{wall: t0, mono: 1e12}
	r := newReporter(t, f, clk, eth0)
	r.IKEInitRate = DefaultIKEInitRate
	var n uint64
	var shown []int
	for sec := 1; sec <= 30; sec++ {
		clk.advance(time.Second)
		if sec <= 6 || sec >= 25 {
			n += 5
		}
		f.ike = []maps.IKERow{initRow(peerB, n)}
		s := take(t, r)
		if len(s.IKEInitStorms) > 0 {
			shown = append(shown, sec)
		}
		out := writeText(t, s, 0)
		if got := strings.Contains(out, "IKE_SA_INIT STORM: 2001:db8::7"); got != (len(s.IKEInitStorms) > 0) {
			t.Errorf("at %ds: storm line %v, storms %v", sec, got, s.IKEInitStorms)
		}
	}
	// Over the 10 s window: 15 requests at 3 s, back to 10 at 14 s; again above
	// at 27 s (1.5/s) and on.
	want := []int{3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 27, 28, 29, 30}
	if fmt.Sprint(shown) != fmt.Sprint(want) {
		t.Errorf("storm shown at %v s, want %v", shown, want)
	}
}
