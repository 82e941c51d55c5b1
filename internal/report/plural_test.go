// SPDX-License-Identifier: Apache-2.0

package report

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/sasource"
	"github.com/spiwatch/spiwatch/maps"
)

// TestSingularCounts: a count of one takes the singular ("1 row", not "1 rows");
// other counts, zero included, the plural.
func TestSingularCounts(t *testing.T) {
	a, b := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")
	s := &Snapshot{Time: time.Unix(0, 0), CollisionWindow: 10 * time.Second,
		Rate:    &maps.RateStats{Sources: 1, Capacity: 64},
		Sources: []sasource.Stats{{Name: "xfrm", SAs: 1, Connected: true, Resyncs: 1, Reconnects: 1, Errors: 1}},
		Known: []KnownRow{{KnownSA: maps.KnownSA{SA: maps.SA{SPI: 0xc0ffee}, Packets: 2, OtherPackets: 1},
			Collision: true, ActiveSources: []maps.SASource{{Addr: a, Port: 4500}, {Addr: b, Port: 4500}}}},
		IKE: []IKERow{{IKERow: maps.IKERow{Peer: a, Version: 2, Exchange: classify.IKESAInit, Dir: classify.IKERequest, Packets: 1}}},
	}
	out := writeText(t, s, 0)
	for _, want := range []string{
		"rate limit: 1 source with a bucket (of 64)",
		"xfrm 1, 1 resync after lost events, 1 reconnect, 1 error",
		"(1 packet from other than the first)",
		"IKE activity: 1 row (table",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
}

func TestCounted(t *testing.T) {
	for _, c := range []struct {
		n    int
		want string
	}{{0, "0 rows"}, {1, "1 row"}, {2, "2 rows"}} {
		if got := Counted(c.n, "row"); got != c.want {
			t.Errorf("Counted(%d, row) = %q, want %q", c.n, got, c.want)
		}
	}
	if got := Counted(uint64(1), "known SA"); got != "1 known SA" {
		t.Errorf("Counted(1, known SA) = %q", got)
	}
}

// TestEmptyCaptureText: a capture file without packets has no time: the
// report says so instead of printing the zero time (0001-01-01).
func TestEmptyCaptureText(t *testing.T) {
	var b strings.Builder
	if err := WriteText(&b, &Snapshot{Source: "empty.pcap"}, 10); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); strings.Contains(out, "0001-01-01") || !strings.Contains(out, "capture empty.pcap: no packets") || !strings.HasPrefix(out, "no packets  ") {
		t.Errorf("report of an empty capture:\n%s", out)
	}
}
