// SPDX-License-Identifier: Apache-2.0

package knownset

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/maps"
)

// fakeMap records what the Set applies, and can fail.
type fakeMap struct {
	sas    []maps.SA
	fail   error
	during func() // called while the map changes (a test's clock goes on)
}

func (f *fakeMap) ReplaceKnown(sas []maps.SA) error {
	if f.during != nil {
		f.during()
	}
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
	seen := func(spi uint32, at time.Time) string { return s.Verdict(spi, gw, at, at) }
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
	// Re-added after its removal left the history: not stale (TestReaddedSAKeepsVerdicts
	// for one back sooner).
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
	if v := s.Verdict(0x3000, gw, first, removed.Add(500*time.Millisecond)); v != Stale {
		t.Errorf("a rekey-race row with packets after the removal: %s, want stale", v)
	}
}

// Two SAs share an SPI at two destinations (the gateway's own inbound SPIs are
// unique per destination only). One goes: packets still sent to it are stale,
// while the other's destination is known and a third never was.
func TestVerdictPerDestination(t *testing.T) {
	s, _, now := newSet(t)
	other := netip.MustParseAddr("203.0.113.99")
	a, b := maps.SA{SPI: 0x7000, Dst: gw}, maps.SA{SPI: 0x7000, Dst: other}
	if err := s.Update("xfrm", []maps.SA{a, b}); err != nil {
		t.Fatal(err)
	}
	*now = now.Add(time.Minute)
	if err := s.Update("xfrm", []maps.SA{a}); err != nil {
		t.Fatal(err)
	}
	after := now.Add(time.Second)
	*now = after.Add(time.Second)
	if v := s.Verdict(0x7000, other, after, after); v != Stale {
		t.Errorf("packets to the removed SA's destination: %s, want stale", v)
	}
	if v := s.Verdict(0x7000, netip.MustParseAddr("203.0.113.42"), after, after); v != Unknown {
		t.Errorf("packets to a destination that never had the SPI: %s, want unknown", v)
	}
	// An any-destination SA's removal covers every destination.
	anyDst := maps.SA{SPI: 0x7100}
	s.Update("flags", []maps.SA{anyDst})
	*now = now.Add(time.Second)
	s.Update("flags", nil)
	at := now.Add(time.Second)
	*now = at.Add(time.Second)
	if v := s.Verdict(0x7100, other, at, at); v != Stale {
		t.Errorf("packets on a removed any-destination SA: %s, want stale", v)
	}
	// A row seen just before its SA at that destination was installed is a race.
	seen := *now
	*now = seen.Add(2 * time.Second)
	s.Update("xfrm", []maps.SA{a, {SPI: 0x7200, Dst: other}})
	if v := s.Verdict(0x7200, other, seen, seen); v != RekeyRace {
		t.Errorf("installed 2 s after first seen at that destination: %s, want rekey-race", v)
	}
	if v := s.Verdict(0x7200, gw, seen, seen); v != Unknown {
		t.Errorf("the same SPI to another destination: %s, want unknown", v)
	}
}

func TestHistoryBounded(t *testing.T) {
	s, _, now := newSet(t)
	for i := 0; i < maxHistory+100; i++ {
		sa := maps.SA{SPI: 0x100000 + uint32(i)}
		s.Update("churn", []maps.SA{sa})
		*now = now.Add(time.Millisecond)
	}
	if len(s.removed) > maxHistory {
		t.Errorf("history holds %d removals, cap %d", len(s.removed), maxHistory)
	}
}

func TestSourcesOf(t *testing.T) {
	s, m, _ := newSet(t)
	v6any := maps.SA{SPI: 0x4000, Dst: netip.IPv6Unspecified()} // :: is the map's any-destination key
	mapped := maps.SA{SPI: 0x5000, Dst: netip.MustParseAddr("::ffff:203.0.113.1")}
	for _, u := range []struct {
		src string
		sas []maps.SA
	}{
		{"xfrm", []maps.SA{sa1, sa3, v6any}},
		{"--known-spi", []maps.SA{sa1, sa2, sa2}}, // an SA given twice names its source once
		{"file /etc/known", []maps.SA{sa1, mapped}},
	} {
		if err := s.Update(u.src, u.sas); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		sa   maps.SA
		want []string
	}{
		{sa1, []string{"--known-spi", "file /etc/known", "xfrm"}},
		{sa2, []string{"--known-spi"}},
		{sa3, []string{"xfrm"}},
		{maps.SA{SPI: 0x4000}, []string{"xfrm"}}, // as ListKnown gives it back
		{maps.SA{SPI: 0x5000, Dst: netip.MustParseAddr("203.0.113.1")}, []string{"file /etc/known"}}, // likewise
		{maps.SA{SPI: 0x1000}, nil}, // sa1's SPI to any destination is another SA
		{maps.SA{SPI: 0x9999}, nil},
	} {
		if got := s.SourcesOf(tc.sa); !slices.Equal(got, tc.want) {
			t.Errorf("sources of %v: %q, want %q", tc.sa, got, tc.want)
		}
	}
	// The answer is the caller's: changing it changes nothing in the Set.
	s.SourcesOf(sa3)[0] = "changed"
	if got := s.SourcesOf(sa3); !slices.Equal(got, []string{"xfrm"}) {
		t.Errorf("after the caller changed its copy: %q", got)
	}
	// A source that drops an SA is no longer named; a failed update changes nothing.
	if err := s.Update("xfrm", []maps.SA{sa3}); err != nil {
		t.Fatal(err)
	}
	if got := s.SourcesOf(sa1); !slices.Equal(got, []string{"--known-spi", "file /etc/known"}) {
		t.Errorf("sa1 after xfrm dropped it: %q", got)
	}
	m.fail = errors.New("map full")
	if err := s.Update("--known-spi", nil); err == nil {
		t.Fatal("no error from a failing map")
	}
	if got := s.SourcesOf(sa2); !slices.Equal(got, []string{"--known-spi"}) {
		t.Errorf("sa2 after a failed update: %q", got)
	}
}

// BenchmarkSourcesOf asks for every SA of a large set, as a report does: an index
// lookup each, not a scan of every source.
func BenchmarkSourcesOf(b *testing.B) {
	s := New(&fakeMap{}, DefaultHistory, DefaultRekeyGrace)
	sas := make([]maps.SA, 50_000)
	for i := range sas {
		sas[i] = maps.SA{SPI: 0x10000 + uint32(i), Dst: gw}
	}
	if err := s.Update("xfrm", sas); err != nil {
		b.Fatal(err)
	}
	if err := s.Update("--known-spi", sas[:10]); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		for _, sa := range sas {
			if len(s.SourcesOf(sa)) == 0 {
				b.Fatal("no source")
			}
		}
	}
}

// TestReaddedSAKeepsVerdicts: an SA removed and added again is not a new SPI.
// The rows its peer sent while it was gone stay stale (a rekey race is a new
// SPI used just before it was installed), and a rekey race of its first
// install stays one. Once the removal is older than the history the gap's rows
// are unknown, and a later removal does not make them stale again.
func TestReaddedSAKeepsVerdicts(t *testing.T) {
	s, _, now := newSet(t)
	start := *now
	at := func(d time.Duration) time.Time { return start.Add(d) }
	race := at(-2 * time.Second) // 0x3000 seen 2 s before its first install
	if err := s.Update("xfrm", []maps.SA{sa1, sa3}); err != nil {
		t.Fatal(err)
	}
	*now = at(time.Minute)
	s.Update("xfrm", nil) // both removed
	gapFirst, gapLast := at(time.Minute+time.Second), at(time.Minute+2*time.Second)
	*now = gapLast
	if v := s.Verdict(0x1000, gw, gapFirst, gapLast); v != Stale {
		t.Fatalf("sent on the removed SA: %s, want stale", v)
	}
	*now = at(time.Minute + 3*time.Second) // back within --rekey-grace of the gap's first packet
	s.Update("xfrm", []maps.SA{sa1, sa3})
	if v := s.Verdict(0x1000, gw, gapFirst, gapLast); v != Stale {
		t.Errorf("the gap's row after the SA came back: %s, want stale", v)
	}
	if v := s.Verdict(0x3000, gw, race, race); v != RekeyRace {
		t.Errorf("a rekey race of the first install after a removal and re-add: %s, want rekey-race", v)
	}
	// Past the history, the gap's row is unknown (not a rekey race)...
	*now = at(time.Minute + DefaultHistory + time.Second)
	if v := s.Verdict(0x1000, gw, gapFirst, gapLast); v != Unknown {
		t.Errorf("the gap's row past the history: %s, want unknown", v)
	}
	// ...and stays so when the SA goes again: only packets after that are stale.
	s.Update("xfrm", nil)
	later := now.Add(time.Second)
	*now = later
	if v := s.Verdict(0x1000, gw, gapFirst, gapLast); v != Unknown {
		t.Errorf("the old gap's row after a new removal: %s, want unknown", v)
	}
	if v := s.Verdict(0x1000, gw, later, later); v != Stale {
		t.Errorf("sent after the new removal: %s, want stale", v)
	}
}

// TestRekeyRaceDuringSlowUpdate: updating the known-SA map takes a while on a
// big gateway (it reads the whole map: measured 35 ms for 10,000 SAs, 200 ms for
// 50,000), and a new SA is in the map only at the end. A row the peer began in
// the meantime, on the new SPI, was counted unknown for the same reason as one
// begun just before the update: the SA was not in the map yet. It is a rekey
// race, not an unknown SPI (its SA was once dated from the start of the update,
// so every row of that window, typically most of a rekeying's, was "unknown").
// A removal still dates from the start: a row with packets during the update is
// stale.
func TestRekeyRaceDuringSlowUpdate(t *testing.T) {
	s, m, now := newSet(t)
	if err := s.Update("xfrm", []maps.SA{sa1}); err != nil {
		t.Fatal(err)
	}
	m.during = func() { *now = now.Add(200 * time.Millisecond) }
	began := *now
	if err := s.Update("xfrm", []maps.SA{sa3}); err != nil { // rekeyed: sa3 in, sa1 out
		t.Fatal(err)
	}
	*now = now.Add(time.Second)
	firstSeen := began.Add(100 * time.Millisecond) // while the map was being updated
	if v := s.Verdict(sa3.SPI, gw, firstSeen, firstSeen); v != RekeyRace {
		t.Errorf("a row first seen during the update that installed its SA: %s, want rekey-race", v)
	}
	if v := s.Verdict(sa1.SPI, gw, firstSeen, firstSeen); v != Stale {
		t.Errorf("a row seen during the update that removed its SA: %s, want stale", v)
	}
	if v := s.Verdict(sa3.SPI, gw, began.Add(-time.Second), began.Add(-time.Second)); v != RekeyRace {
		t.Errorf("a row first seen a second before the update: %s, want rekey-race", v)
	}
}
