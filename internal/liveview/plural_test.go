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

// TestRenderSingular: counts of one take the singular noun.
func TestRenderSingular(t *testing.T) {
	s := snapshot()
	s.Rate = &maps.RateStats{Sources: 1, Capacity: 65536}
	s.IKE = []report.IKERow{{IKERow: maps.IKERow{Peer: netip.MustParseAddr("198.51.100.1"), Version: 2, Exchange: classify.IKESAInit,
		Dir: classify.IKERequest, Packets: 1}, LastSeen: s.Time, PeerUnknown: 1}}
	v := &View{info: Info{Started: time.Now()}, last: s}
	screen := v.Render(250, 60)
	for _, w := range []string{"rate limit: 1 source with a bucket", "IKE activity: 1 row, busiest first", "(peer has 1 unknown SPI)"} {
		if !strings.Contains(screen, w) {
			t.Errorf("no %q in\n%s", w, screen)
		}
	}
}
