// SPDX-License-Identifier: Apache-2.0

package knownset

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/maps"
)

// fakeMap records what the Set applies, and can fail.
type fakeMap struct {
	sas  []maps.SA
	fail error
}

func (f *fakeMap) ReplaceKnown(sas []maps.SA) error {
	if f.fail != nil {
		return f.fail
	}
	f.sas = sas
	return nil
}

func newSet(t *testing.T) (*Set, *fakeMap, *time.Time) {
	t.Helper()
	m := &fakeMap{}
	s := New(m, DefaultHistory, DefaultRekeyGrace)
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	return s, m, &now
}

var (
	gw  = netip.MustParseAddr("203.0.113.1")
	sa1 = maps.SA{SPI: 0x1000, Dst: gw}
	sa2 = maps.SA{SPI: 0x2000}
	sa3 = maps.SA{SPI: 0x3000, Dst: gw}
)

func TestMerge(t *testing.T) {
	s, m, _ := newSet(t)
	if err := s.Update("flags", []maps.SA{sa1, sa2}); err != nil {
		t.Fatal(err)
	}
	if err := s.Update("file:/etc/known", []maps.SA{sa2, sa3}); err != nil {
		t.Fatal(err)
	}
	if len(m.sas) != 3 || s.Len() != 3 {
		t.Fatalf("union %v, want the 3 distinct SAs", m.sas)
	}
	if got := s.SourcesOf(sa2); len(got) != 2 || got[0] != "file:/etc/known" || got[1] != "flags" {
		t.Errorf("sources of sa2: %v", got)
	}
	// A source emptied removes only what no other source has.
	if err := s.Update("file:/etc/known", nil); err != nil {
		t.Fatal(err)
	}
	if len(m.sas) != 2 || s.Len() != 2 {
		t.Errorf("after emptying the file source: %v", m.sas)
	}
	// A failing map keeps the previous state.
	m.fail = errors.New("map full")
	if err := s.Update("flags", nil); err == nil {
		t.Fatal("no error from a failing map")
	}
	if s.Len() != 2 || len(s.SourcesOf(sa1)) != 1 {
		t.Errorf("a failed update changed the set: %d SAs", s.Len())
	}
}

func TestVerdicts(t *testing.T) {
	s, _, now := newSet(t)
	if err := s.Update("xfrm", []maps.SA{sa1}); err != nil {
		t.Fatal(err)
	}
	start := *now
	// seen is a row seen only at one instant.
	seen := func(spi uint32, at time.Time) string { return s.Verdict(spi, at, at) }
	if v := seen(7, start); v != Reserved {
		t.Errorf("SPI 7: %s", v)
	}
	if v := seen(0xbeef, start); v != Unknown {
		t.Errorf("never known: %s", v)
	}

	// Removed: stale while in the history window, unknown after.
	*now = start.Add(time.Minute)
	s.Update("xfrm", nil)
	*now = start.Add(2 * time.Minute)
	if v := seen(0x1000, start.Add(90*time.Second)); v != Stale {
		t.Errorf("removed SA's SPI: %s, want stale", v)
	}
	// A row whose packets all came before the removal is not stale.
	if v := seen(0x1000, start.Add(30*time.Second)); v != Unknown {
		t.Errorf("a row last seen before the removal: %s, want unknown", v)
	}
	// The kernel's per-jiffy clock may put a packet just after the removal a
	// few milliseconds before it.
	if v := seen(0x1000, start.Add(time.Minute-5*time.Millisecond)); v != Stale {
		t.Errorf("a row last seen 5 ms before the removal (clock granularity): %s, want stale", v)
	}
	*now = start.Add(time.Minute + DefaultHistory + time.Second)
	if v := seen(0x1000, start.Add(90*time.Second)); v != Unknown {
		t.Errorf("removed longer than the history ago: %s, want unknown", v)
	}

	// Rekey race: seen unknown, installed 3 s later.
	first := *now
	*now = first.Add(3 * time.Second)
	s.Update("xfrm", []maps.SA{sa3})
	if v := seen(0x3000, first); v != RekeyRace {
		t.Errorf("known 3 s after first seen: %s, want rekey-race", v)
	}
	// Installed long after it was first seen: not a race.
	s.Update("xfrm", []maps.SA{sa3, sa2})
	if v := seen(0x2000, first.Add(-time.Minute)); v != Unknown {
		t.Errorf("known 63 s after first seen: %s, want unknown", v)
	}
	// Re-added after removal: no longer stale.
	s.Update("xfrm", []maps.SA{sa3, sa2, sa1})
	if v := seen(0x1000, *now); v == Stale {
		t.Error("an SA back in the database is still stale")
	}

	// The rekeyed SA goes (charon deletes it a few seconds after the next
	// rekeying): the packets counted before it was installed stay a rekey race...
	*now = now.Add(10 * time.Second)
	removed := *now
	s.Update("xfrm", []maps.SA{sa2, sa1})
	*now = now.Add(time.Second)
	if v := seen(0x3000, first); v != RekeyRace {
		t.Errorf("a rekey race after its SA was removed: %s, want rekey-race", v)
	}
	// ...until the peer sends on it after the removal: then it is stale.
	if v := s.Verdict(0x3000, first, removed.Add(500*time.Millisecond)); v != Stale {
		t.Errorf("a rekey-race row with packets after the removal: %s, want stale", v)
	}
}

func TestHistoryBounded(t *testing.T) {
	s, _, now := newSet(t)
	for i := 0; i < maxHistory+100; i++ {
		sa := maps.SA{SPI: 0x100000 + uint32(i)}
		s.Update("churn", []maps.SA{sa})
		*now = now.Add(time.Millisecond)
	}
	if len(s.removedAt) > maxHistory {
		t.Errorf("history holds %d removals, cap %d", len(s.removedAt), maxHistory)
	}
}
