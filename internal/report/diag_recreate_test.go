// SPDX-License-Identifier: Apache-2.0

package report

import (
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/maps"
)

// TestDiagRateOfRecreatedRow: a row evicted and made again between two
// snapshots counts from zero (its first-seen stamp changed), even when it
// already counts more than the old row did.
func TestDiagRateOfRecreatedRow(t *testing.T) {
	f := &fakeDiag{fakeSource: newFake()}
	icmp := maps.ICMPRow{Reporter: router, Ifindex: 2, Packets: 20, FirstSeenNs: 1e9, ICMPError: classify.ICMPError{Family: 4,
		Type: 3, Code: 4, Quote: classify.QuoteESP, SPI: 0xc0ffee01, Src: gwAddr, Dst: peerA, MTU: 1400}}
	ike := initRow(peerA, 20)
	ike.FirstSeenNs = 1e9
	f.icmp, f.ike = []maps.ICMPRow{icmp}, []maps.IKERow{ike}
	clk := &fakeClock{wall: t0, mono: 10e9}
	r := newReporter(t, f, clk, eth0)
	clk.advance(2 * time.Second)
	icmp.Packets, icmp.FirstSeenNs = 30, 11e9
	ike.Packets, ike.FirstSeenNs = 30, 11e9
	f.icmp, f.ike = []maps.ICMPRow{icmp}, []maps.IKERow{ike}
	s := take(t, r)
	if s.ICMP[0].Rate != 15 || s.IKE[0].Rate != 15 {
		t.Errorf("rates ICMP %v IKE %v, want 15/s: 30 packets in 2 s of a new row, not 30 - 20 of the evicted one",
			s.ICMP[0].Rate, s.IKE[0].Rate)
	}
}

// TestIKEInitStormRowRecreated: a storming peer whose IKE_SA_INIT row is evicted
// and made again (an IKE flood fills the table) storms on: one storm, not a
// false end and a second one.
func TestIKEInitStormRowRecreated(t *testing.T) {
	f := &fakeDiag{fakeSource: newFake()}
	clk := &fakeClock{wall: t0, mono: 1e12}
	r := newReporter(t, f, clk, eth0)
	r.IKEInitRate = DefaultIKEInitRate
	var n, first uint64 = 0, 1
	var storms []int
	for sec := 1; sec <= 30; sec++ {
		clk.advance(time.Second)
		n += 5
		if sec == 12 { // evicted and made again: 3 requests since
			n, first = 3, 2
		}
		row := initRow(peerA, n)
		row.FirstSeenNs = first
		f.ike = []maps.IKERow{row}
		s := take(t, r)
		for range s.NewIKEInitStorms {
			storms = append(storms, sec)
		}
	}
	if len(storms) != 1 || storms[0] != 3 {
		t.Errorf("storms at %v s, want one at 3 s", storms)
	}
}
