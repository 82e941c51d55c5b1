// SPDX-License-Identifier: Apache-2.0

package report

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/maps"
)

// TestReattachNamesRows: after an interface is re-created and attached again
// (new ifindex, same name), its old rows are not named like the new ones: the
// Prometheus series of both must differ, and the reports name them alike.
func TestReattachNamesRows(t *testing.T) {
	src := newFake()
	clk := &fakeClock{wall: t0, mono: 1e12}
	r := newReporter(t, src, clk, eth0)
	moved := eth0
	moved.Ifindex = 9
	r.SetIface(moved)
	src.unknown = []maps.Unknown{
		{SPI: 0x5000, Src: netip.MustParseAddr("198.51.100.1"), Dst: netip.MustParseAddr("192.0.2.1"), Ifindex: 2, Packets: 4},
		{SPI: 0x5000, Src: netip.MustParseAddr("198.51.100.1"), Dst: netip.MustParseAddr("192.0.2.1"), Ifindex: 9, Packets: 3},
	}
	clk.advance(time.Second)
	s := take(t, r)
	names := map[uint32]string{}
	for _, u := range s.Unknown {
		names[u.Ifindex] = u.Iface
	}
	if names[2] != "if2" || names[9] != "eth0" {
		t.Errorf("rows named %v, want ifindex 2 if2 and 9 eth0", names)
	}
}

// TestSourcesLastSeenSameClock: a collision row's sources are stamped with the
// snapshot's clock, like the row itself: the source that sent the row's last
// packet has the row's last_seen, whenever the line is written.
func TestSourcesLastSeenSameClock(t *testing.T) {
	src := newFake()
	clk := &fakeClock{wall: t0, mono: 1e12}
	r := newReporter(t, src, clk)
	clk.advance(2 * time.Second)
	seen := clk.mono - uint64(time.Second)
	for _, a := range []string{"198.51.100.1", "198.51.100.2"} {
		src.unknown = append(src.unknown, maps.Unknown{SPI: 0x5000, Src: netip.MustParseAddr(a), Dst: netip.MustParseAddr("192.0.2.1"),
			Packets: 5, FirstSeenNs: seen, LastSeenNs: seen})
	}
	s := take(t, r)
	var out struct {
		UnknownSPIs []struct {
			LastSeen string `json:"last_seen"`
			Sources  []struct {
				LastSeen string `json:"last_seen"`
			} `json:"sources"`
		} `json:"unknown_spis"`
	}
	decodeJSON(t, s, &out)
	want := t0.Add(time.Second).Format(time.RFC3339Nano)
	for _, u := range out.UnknownSPIs {
		if u.LastSeen != want || len(u.Sources) != 2 {
			t.Fatalf("row last_seen %s with %d sources, want %s and 2", u.LastSeen, len(u.Sources), want)
		}
		for _, x := range u.Sources {
			if x.LastSeen != want {
				t.Errorf("source last_seen %s, want %s (the row's)", x.LastSeen, want)
			}
		}
	}
}

func decodeJSON(t *testing.T, s *Snapshot, v any) {
	t.Helper()
	var b strings.Builder
	if err := WriteJSON(&b, s, 0); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(b.String()), v); err != nil {
		t.Fatal(err)
	}
}

// TestPinnedRestartNoOldKnownEvents: spiwatch run --pin started again finds the
// known SAs' counts of the previous run; their past restarts and replay suspects
// are not news (no event), as the unknown rows already there are not.
func TestPinnedRestartNoOldKnownEvents(t *testing.T) {
	src := newFake()
	sa := maps.SA{SPI: 0xc0ffee, Dst: netip.MustParseAddr("192.0.2.1")}
	src.known = []maps.KnownSA{{SA: sa, Packets: 1000, Seq: maps.SeqHealth{Restarts: 2, Replays: 5}}}
	clk := &fakeClock{wall: t0, mono: 1e12}
	r := newReporter(t, src, clk)
	clk.advance(time.Second)
	if s := take(t, r); len(s.KnownEvents) != 0 {
		t.Errorf("events at the first report for counts from before the start: %+v", s.KnownEvents)
	}
	src.known[0].Seq.Restarts = 3
	clk.advance(time.Second)
	if s := take(t, r); len(s.KnownEvents) != 1 || s.KnownEvents[0].What != "restart" || s.KnownEvents[0].New != 1 {
		t.Errorf("events %+v, want one restart", s.KnownEvents)
	}
}
