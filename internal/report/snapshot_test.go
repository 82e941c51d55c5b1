// SPDX-License-Identifier: Apache-2.0

package report

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/knownset"
	"github.com/spiwatch/spiwatch/maps"
)

// fakeSource is a Source whose contents the test sets between snapshots.
type fakeSource struct {
	counters map[int]maps.Counters
	unknown  []maps.Unknown
	stats    maps.TableStats
	known    []maps.KnownSA

	err         error // returned by every method when set
	statsCalled []int // the table entries of each UnknownTable read
}

func newFake() *fakeSource { return &fakeSource{counters: map[int]maps.Counters{}} }

func (f *fakeSource) Counters(slot int) (maps.Counters, error) {
	return f.counters[slot], f.err
}

func (f *fakeSource) UnknownTable(buf []maps.Unknown) ([]maps.Unknown, maps.TableStats, error) {
	rows := append(buf[:0], f.unknown...)
	entries := maps.TableRows(rows)
	f.statsCalled = append(f.statsCalled, entries)
	s := f.stats
	s.Entries = entries
	return rows, s, f.err
}

func (f *fakeSource) ListKnown() ([]maps.KnownSA, error) { return slices.Clone(f.known), f.err }

// set puts count c into slot's class and outcome.
func (f *fakeSource) set(slot int, cl classify.Class, o classify.Outcome, packets, bytes uint64) {
	c := f.counters[slot]
	c[cl][o] = maps.Count{Packets: packets, Bytes: bytes}
	f.counters[slot] = c
}

// fakeClock is wall time plus CLOCK_MONOTONIC, advanced by the test.
type fakeClock struct {
	wall time.Time
	mono uint64
}

func (c *fakeClock) now() (time.Time, uint64) { return c.wall, c.mono }

func (c *fakeClock) advance(d time.Duration) {
	c.wall = c.wall.Add(d)
	c.mono += uint64(d)
}

var (
	t0   = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	eth0 = Iface{Name: "eth0", Ifindex: 2, Mode: "native", Slot: 0}
	eth1 = Iface{Name: "eth1", Ifindex: 3, Mode: "generic", Slot: 1}
)

// newReporter makes a Reporter on src whose clock is clk. New reads the real clock
// for the start of the first interval, so that start is set again from clk, as New
// would have with clk.
func newReporter(t *testing.T, src Source, clk *fakeClock, ifaces ...Iface) *Reporter {
	t.Helper()
	r, err := New(src, ifaces)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	r.now = clk.now
	r.prevTime, _ = clk.now()
	return r
}

func take(t *testing.T, r *Reporter) *Snapshot {
	t.Helper()
	s, err := r.Take()
	if err != nil {
		t.Fatalf("Take: %v", err)
	}
	return s
}

func unk(spi uint32, src string, sport uint16, ifindex uint32, packets uint64) maps.Unknown {
	return maps.Unknown{SPI: spi, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("192.0.2.2"),
		SrcPort: sport, DstPort: sport, Ifindex: ifindex, Packets: packets, Bytes: 100 * packets}
}

// rowFor finds the row of the unknown with the same key as u.
func rowFor(t *testing.T, s *Snapshot, u maps.Unknown) UnknownRow {
	t.Helper()
	for _, r := range s.Unknown {
		if idOf(r.Unknown) == idOf(u) {
			return r
		}
	}
	t.Fatalf("no row for SPI 0x%x from %s in %+v", u.SPI, u.Src, s.Unknown)
	return UnknownRow{}
}

func TestClassRates(t *testing.T) {
	src := newFake()
	src.set(0, classify.ClassESP, classify.OutcomeUnknown, 100, 10_000)
	src.set(0, classify.ClassIKE, classify.OutcomeNone, 7, 700)
	src.set(1, classify.ClassOther, classify.OutcomeNone, 50, 5_000)
	clk := &fakeClock{wall: t0, mono: 1e12}
	r := newReporter(t, src, clk, eth0, eth1)

	clk.advance(2 * time.Second)
	src.set(0, classify.ClassESP, classify.OutcomeUnknown, 300, 30_000)
	src.set(0, classify.ClassESP, classify.OutcomeKnown, 40, 4_000) // new since the start
	src.set(0, classify.ClassIKE, classify.OutcomeNone, 7, 700)     // unchanged
	src.set(1, classify.ClassOther, classify.OutcomeNone, 20, 2_000)
	s := take(t, r)

	if s.Interval != 2*time.Second || !s.Time.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("interval %v at %v, want 2s at %v", s.Interval, s.Time, t0.Add(2*time.Second))
	}
	if len(s.Ifaces) != 2 || s.Ifaces[0].Iface != eth0 || s.Ifaces[1].Iface != eth1 {
		t.Fatalf("interfaces %+v, want eth0, eth1 in order", s.Ifaces)
	}
	e0, e1 := s.Ifaces[0], s.Ifaces[1]
	for _, c := range []struct {
		name      string
		got, want maps.Count
	}{
		{"eth0 esp/unknown now", e0.Now[classify.ClassESP][classify.OutcomeUnknown], maps.Count{Packets: 300, Bytes: 30_000}},
		{"eth0 esp/unknown delta", e0.Delta[classify.ClassESP][classify.OutcomeUnknown], maps.Count{Packets: 200, Bytes: 20_000}},
		{"eth0 esp/known delta", e0.Delta[classify.ClassESP][classify.OutcomeKnown], maps.Count{Packets: 40, Bytes: 4_000}},
		{"eth0 ike delta", e0.Delta[classify.ClassIKE][classify.OutcomeNone], maps.Count{}},
		// The counter went down (a slot reused): the change is 0, never a wrapped
		// uint64.
		{"eth1 other now", e1.Now[classify.ClassOther][classify.OutcomeNone], maps.Count{Packets: 20, Bytes: 2_000}},
		{"eth1 other delta", e1.Delta[classify.ClassOther][classify.OutcomeNone], maps.Count{}},
		{"total esp delta", s.Total.Delta.Class(classify.ClassESP), maps.Count{Packets: 240, Bytes: 24_000}},
		{"total now", s.Total.Now.Total(), maps.Count{Packets: 367, Bytes: 36_700}},
		{"total delta", s.Total.Delta.Total(), maps.Count{Packets: 240, Bytes: 24_000}},
	} {
		if c.got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, c.got, c.want)
		}
	}
	if s.Total.Name != "all" {
		t.Errorf("total named %q, want all", s.Total.Name)
	}

	// The next interval is measured from this snapshot, not from the start.
	clk.advance(500 * time.Millisecond)
	src.set(0, classify.ClassESP, classify.OutcomeUnknown, 310, 31_000)
	src.set(1, classify.ClassOther, classify.OutcomeNone, 25, 2_500)
	s = take(t, r)
	if s.Interval != 500*time.Millisecond {
		t.Errorf("second interval %v, want 500ms", s.Interval)
	}
	if got := s.Ifaces[0].Delta[classify.ClassESP][classify.OutcomeUnknown]; got != (maps.Count{Packets: 10, Bytes: 1_000}) {
		t.Errorf("second eth0 esp/unknown delta %+v, want 10 packets", got)
	}
	if got := s.Ifaces[1].Delta[classify.ClassOther][classify.OutcomeNone]; got != (maps.Count{Packets: 5, Bytes: 500}) {
		t.Errorf("second eth1 other delta %+v, want 5 packets (from 20, not from 50)", got)
	}
}

func TestUnknownRates(t *testing.T) {
	src := newFake()
	steady := unk(0x1000, "198.51.100.1", 0, 2, 10)
	back := unk(0x2000, "198.51.100.2", 4500, 2, 100)
	down := unk(0x3000, "198.51.100.3", 0, 2, 50)
	src.unknown = []maps.Unknown{steady, back, down}
	clk := &fakeClock{wall: t0, mono: 1e12}
	r := newReporter(t, src, clk, eth0)

	// Interval 1 (2s): steady +20; back vanished (evicted); down went down; fresh is
	// new and all its packets are new.
	clk.advance(2 * time.Second)
	steady.Packets, down.Packets = 30, 40
	fresh := unk(0x4000, "198.51.100.4", 4500, 2, 8)
	src.unknown = []maps.Unknown{steady, down, fresh}
	s := take(t, r)
	if len(s.Unknown) != 3 {
		t.Fatalf("%d rows, want 3: %+v", len(s.Unknown), s.Unknown)
	}
	for _, c := range []struct {
		u    maps.Unknown
		want float64
	}{{steady, 10}, {down, 0}, {fresh, 4}} {
		if got := rowFor(t, s, c.u).Rate; got != c.want {
			t.Errorf("interval 1: SPI 0x%x rate %v, want %v", c.u.SPI, got, c.want)
		}
	}

	// Interval 2 (4s): back returns with 6 packets, all new although it had 100
	// before it vanished; fresh, gone now, is not reported.
	clk.advance(4 * time.Second)
	back.Packets = 6
	steady.Packets = 30
	src.unknown = []maps.Unknown{steady, back}
	s = take(t, r)
	if len(s.Unknown) != 2 {
		t.Fatalf("%d rows, want 2: %+v", len(s.Unknown), s.Unknown)
	}
	if got := rowFor(t, s, back).Rate; got != 1.5 {
		t.Errorf("returned row: rate %v, want 6/4s = 1.5", got)
	}
	if got := rowFor(t, s, steady).Rate; got != 0 {
		t.Errorf("unchanged row: rate %v, want 0", got)
	}
	if got := src.statsCalled; !slices.Equal(got, []int{3, 3, 2}) { // the first primes the rates
		t.Errorf("UnknownTable read %v entries, want the snapshot lengths [3 3 2]", got)
	}
	if s.Table.Entries != 2 {
		t.Errorf("table entries %d, want 2", s.Table.Entries)
	}

	// Interval 3 (2s): steady is evicted and made again between the reports (a
	// new first-seen) and has 12 packets, fewer than the 30 before: all new.
	clk.advance(2 * time.Second)
	steady.Packets, steady.FirstSeenNs = 12, steady.FirstSeenNs+uint64(5*time.Second)
	src.unknown = []maps.Unknown{steady, back}
	if got := rowFor(t, take(t, r), steady).Rate; got != 6 {
		t.Errorf("a row made again: rate %v, want 12/2s = 6", got)
	}
}

// TestUnknownRowKey checks that rows differing in any key field are rated apart.
func TestUnknownRowKey(t *testing.T) {
	base := unk(0x1000, "198.51.100.1", 4500, 2, 10)
	for name, change := range map[string]func(*maps.Unknown){
		"spi":     func(u *maps.Unknown) { u.SPI++ },
		"src":     func(u *maps.Unknown) { u.Src = netip.MustParseAddr("198.51.100.9") },
		"dst":     func(u *maps.Unknown) { u.Dst = netip.MustParseAddr("192.0.2.9") },
		"sport":   func(u *maps.Unknown) { u.SrcPort++ },
		"dport":   func(u *maps.Unknown) { u.DstPort++ },
		"ifindex": func(u *maps.Unknown) { u.Ifindex++ },
	} {
		t.Run(name, func(t *testing.T) {
			src := newFake()
			src.unknown = []maps.Unknown{base}
			clk := &fakeClock{wall: t0, mono: 1e12}
			r := newReporter(t, src, clk, eth0)
			clk.advance(time.Second)
			other := base
			change(&other)
			src.unknown = []maps.Unknown{other}
			s := take(t, r)
			if got := s.Unknown[0].Rate; got != 10 {
				t.Errorf("a row differing in %s took the old row's count: rate %v, want 10", name, got)
			}
		})
	}
}

func TestUnknownOrder(t *testing.T) {
	// At the start only a exists, with 10 packets; one second later:
	a := unk(0x900, "198.51.100.1", 0, 2, 10)
	src0 := []maps.Unknown{a}
	a.Packets = 20                            // rate 10, 20 packets
	b := unk(0x800, "198.51.100.2", 0, 2, 10) // rate 10, 10 packets
	c := unk(0x700, "198.51.100.3", 0, 2, 5)  // rate 5, 5 packets, SPI lower than d
	d := unk(0x701, "198.51.100.4", 0, 2, 5)  // rate 5, 5 packets
	e := unk(0x100, "198.51.100.5", 0, 2, 50) // rate 50
	want := []uint32{0x100, 0x900, 0x800, 0x700, 0x701}
	rows := []maps.Unknown{a, b, c, d, e}

	// Every order of input gives the same output.
	perm := []int{0, 1, 2, 3, 4}
	for {
		src := newFake()
		src.unknown = src0
		clk := &fakeClock{wall: t0, mono: 1e12}
		r := newReporter(t, src, clk, eth0)
		clk.advance(time.Second)
		src.unknown = nil
		for _, p := range perm {
			src.unknown = append(src.unknown, rows[p])
		}
		s := take(t, r)
		var got []uint32
		for _, u := range s.Unknown {
			got = append(got, u.SPI)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("input order %v: SPIs in order %x, want %x (rate, then packets, then SPI)", perm, got, want)
		}
		if !nextPerm(perm) {
			break
		}
	}
}

// nextPerm steps p to the next permutation in lexical order; false after the last.
func nextPerm(p []int) bool {
	i := len(p) - 2
	for i >= 0 && p[i] >= p[i+1] {
		i--
	}
	if i < 0 {
		return false
	}
	j := len(p) - 1
	for p[j] <= p[i] {
		j--
	}
	p[i], p[j] = p[j], p[i]
	slices.Reverse(p[i+1:])
	return true
}

func TestRowFields(t *testing.T) {
	src := newFake()
	clk := &fakeClock{wall: t0, mono: 5_000 * uint64(time.Second)}
	r := newReporter(t, src, clk, eth0, eth1)
	clk.advance(time.Second)
	mono := clk.mono

	seen := unk(0x1234, "198.51.100.1", 0, 3, 1)
	seen.FirstSeenNs = mono - uint64(90*time.Second)
	seen.LastSeenNs = mono - uint64(1500*time.Millisecond)
	// Stamped after our clock read (the program raced the snapshot): slightly in the
	// future, not 584 years ago.
	future := unk(0x100, "198.51.100.2", 0, 99, 1)
	future.FirstSeenNs = mono - uint64(time.Second)
	future.LastSeenNs = mono + uint64(3*time.Millisecond)
	never := unk(0xff, "198.51.100.3", 0, 2, 1) // a zero timestamp means unset
	zero := unk(0, "198.51.100.4", 0, 2, 1)
	top := unk(0xffffffff, "198.51.100.5", 0, 2, 1)
	src.unknown = []maps.Unknown{seen, future, never, zero, top}
	src.known = []maps.KnownSA{
		{SA: maps.SA{SPI: 0x5000, Dst: netip.MustParseAddr("192.0.2.7")}, Packets: 3, LastSeenNs: mono - uint64(10*time.Second)},
		{SA: maps.SA{SPI: 0x5000}, Packets: 1, LastSeenNs: mono - uint64(time.Minute)},
		{SA: maps.SA{SPI: 0x4000}},
	}
	s := take(t, r)
	now := t0.Add(time.Second)

	for _, c := range []struct {
		u                   maps.Unknown
		iface, verdict      string
		firstSeen, lastSeen time.Time
	}{
		{seen, "eth1", "unknown", now.Add(-90 * time.Second), now.Add(-1500 * time.Millisecond)},
		{future, "if99", "unknown", now.Add(-time.Second), now.Add(3 * time.Millisecond)},
		{never, "eth0", "reserved", time.Time{}, time.Time{}},
		{zero, "eth0", "reserved", time.Time{}, time.Time{}},
		{top, "eth0", "unknown", time.Time{}, time.Time{}},
	} {
		row := rowFor(t, s, c.u)
		if row.Iface != c.iface || row.Verdict != c.verdict {
			t.Errorf("SPI 0x%x: iface %q verdict %q, want %q %q", c.u.SPI, row.Iface, row.Verdict, c.iface, c.verdict)
		}
		if !row.FirstSeen.Equal(c.firstSeen) || !row.LastSeen.Equal(c.lastSeen) {
			t.Errorf("SPI 0x%x: seen %v - %v, want %v - %v", c.u.SPI, row.FirstSeen, row.LastSeen, c.firstSeen, c.lastSeen)
		}
		if row.Unknown != c.u {
			t.Errorf("SPI 0x%x: row %+v does not carry the map's %+v", c.u.SPI, row.Unknown, c.u)
		}
	}

	// Known SAs: sorted by SPI then destination ("any" first), last seen in wall time.
	if len(s.Known) != 3 {
		t.Fatalf("%d known rows, want 3", len(s.Known))
	}
	wantKnown := []struct {
		spi      uint32
		dst      netip.Addr
		lastSeen time.Time
	}{
		{0x4000, netip.Addr{}, time.Time{}},
		{0x5000, netip.Addr{}, now.Add(-time.Minute)},
		{0x5000, netip.MustParseAddr("192.0.2.7"), now.Add(-10 * time.Second)},
	}
	for i, w := range wantKnown {
		k := s.Known[i]
		if k.SPI != w.spi || k.Dst != w.dst || !k.LastSeen.Equal(w.lastSeen) {
			t.Errorf("known row %d: SPI 0x%x dst %v last seen %v, want 0x%x %v %v", i, k.SPI, k.Dst, k.LastSeen, w.spi, w.dst, w.lastSeen)
		}
	}
}

func TestVerdictBoundary(t *testing.T) {
	for spi, want := range map[uint32]string{0: "reserved", 1: "reserved", 255: "reserved", 256: "unknown", 0xffffffff: "unknown"} {
		if got := VerdictOf(spi); got != want {
			t.Errorf("VerdictOf(%d) = %q, want %q", spi, got, want)
		}
	}
}

func TestSourceErrors(t *testing.T) {
	boom := errors.New("boom")
	src := newFake()
	src.err = boom
	if _, err := New(src, []Iface{eth0}); !errors.Is(err, boom) {
		t.Errorf("New with a failing source: %v, want boom", err)
	}
	src.err = nil
	clk := &fakeClock{wall: t0, mono: 1e12}
	r := newReporter(t, src, clk, eth0)
	src.err = boom
	if _, err := r.Take(); !errors.Is(err, boom) || err.Error() != "reading counters of eth0: boom" {
		t.Errorf("Take with a failing source: %v, want reading counters of eth0: boom", err)
	}
}

// TestZeroInterval: two snapshots at the same instant have no rates, not NaN or +Inf.
func TestZeroInterval(t *testing.T) {
	src := newFake()
	clk := &fakeClock{wall: t0, mono: 1e12}
	r := newReporter(t, src, clk, eth0)
	src.unknown = []maps.Unknown{unk(0x1000, "198.51.100.1", 0, 2, 10)}
	s := take(t, r)
	if s.Interval != 0 || s.Unknown[0].Rate != 0 {
		t.Errorf("interval %v, rate %v: want 0, 0", s.Interval, s.Unknown[0].Rate)
	}
}

func TestTopIndices(t *testing.T) {
	rows := []maps.Unknown{{SPI: 0x300, Packets: 5}, {SPI: 0x100, Packets: 9}, {SPI: 0x200, Packets: 8}, {SPI: 0x050, Packets: 8}, {SPI: 0x400, Packets: 1}}
	rates := []float64{1, 7, 7, 7, 0}
	want := []uint32{0x100, 0x050, 0x200, 0x300, 0x400} // rate, then packets, then SPI
	for _, top := range []int{0, 1, 3, 5, 9} {
		got := TopIndices(rows, rates, top)
		n := len(want)
		if top > 0 && top < n {
			n = top
		}
		if len(got) != n {
			t.Fatalf("top %d: %d rows, want %d", top, len(got), n)
		}
		for i, j := range got {
			if rows[j].SPI != want[i] {
				t.Errorf("top %d: row %d is 0x%x, want 0x%x", top, i, rows[j].SPI, want[i])
			}
		}
	}
}

// TestEventsCapped: a flood of new rows gives at most maxEvents rows to log per
// snapshot, and the rest is counted, not lost.
func TestEventsCapped(t *testing.T) {
	src := newFake()
	clk := &fakeClock{wall: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC), mono: 1e12}
	r := newReporter(t, src, clk)
	for i := 0; i < maxEvents+76; i++ {
		src.unknown = append(src.unknown, maps.Unknown{SPI: 0x10000 + uint32(i), Packets: 1, FirstSeenNs: clk.mono})
	}
	clk.advance(time.Second)
	s, err := r.Take()
	if err != nil {
		t.Fatal(err)
	}
	if len(s.NewUnknown) != maxEvents || s.MoreEvents != 76 {
		t.Errorf("%d new rows and %d more, want %d and 76", len(s.NewUnknown), s.MoreEvents, maxEvents)
	}
}

// discardKnown is a knownset.Target that keeps nothing.
type discardKnown struct{}

func (discardKnown) ReplaceKnown([]maps.SA) error { return nil }

// TestKnownFrom: each known row names the known-SA sources of its SA, looked up
// with the SA as the map gives it back, as spiwatch wires it (knownset.SourcesOf).
func TestKnownFrom(t *testing.T) {
	src := newFake()
	clk := &fakeClock{wall: t0, mono: 5_000 * uint64(time.Second)}
	r := newReporter(t, src, clk, eth0)
	set := knownset.New(discardKnown{}, knownset.DefaultHistory, knownset.DefaultRekeyGrace)
	gw := netip.MustParseAddr("192.0.2.7")
	if err := set.Update("--known-spi", []maps.SA{{SPI: 0x5000, Dst: gw}, {SPI: 0x4000}}); err != nil {
		t.Fatal(err)
	}
	if err := set.Update("xfrm", []maps.SA{{SPI: 0x5000, Dst: netip.MustParseAddr("::ffff:192.0.2.7")}}); err != nil {
		t.Fatal(err)
	}
	src.known = []maps.KnownSA{
		{SA: maps.SA{SPI: 0x5000, Dst: gw}, Packets: 3},
		{SA: maps.SA{SPI: 0x4000}},
		{SA: maps.SA{SPI: 0x6000}}, // in the map but in no source (put there by something else)
	}
	r.KnownFrom = set.SourcesOf
	s := take(t, r)
	want := map[uint32][]string{0x4000: {"--known-spi"}, 0x5000: {"--known-spi", "xfrm"}, 0x6000: nil}
	for _, k := range s.Known {
		if !slices.Equal(k.From, want[k.SPI]) {
			t.Errorf("known SA %s from %q, want %q", k.SA, k.From, want[k.SPI])
		}
	}
	if len(s.Known) != 3 {
		t.Errorf("%d known rows, want 3", len(s.Known))
	}
	if got := FromString(nil); got != "-" {
		t.Errorf("FromString(nil) = %q, want -", got)
	}

	// Without the hook (spiwatch read): no sources named.
	r.KnownFrom = nil
	for _, k := range take(t, r).Known {
		if k.From != nil {
			t.Errorf("known SA %s from %q without KnownFrom", k.SA, k.From)
		}
	}
}

// TestUnknownByVerdict: the packets of every row, not only the top ones, summed
// by verdict, collisions over the row's own verdict; an evicted row's leave.
func TestUnknownByVerdict(t *testing.T) {
	src := newFake()
	clk := &fakeClock{wall: t0, mono: 5_000 * uint64(time.Second)}
	r := newReporter(t, src, clk, eth0)
	r.Top = 1
	r.Verdict = func(spi uint32, _ netip.Addr, _, _ time.Time) string { // as knownset would
		switch spi {
		case 0x2000:
			return "stale"
		case 0x3000, 0x3001:
			return "rekey-race"
		}
		return VerdictOf(spi)
	}
	clk.advance(time.Second)
	stamp := func(u maps.Unknown) maps.Unknown { u.FirstSeenNs, u.LastSeenNs = clk.mono, clk.mono; return u }
	stale := stamp(unk(0x2000, "198.51.100.2", 0, 2, 40))
	src.unknown = []maps.Unknown{
		stamp(unk(0x1000, "198.51.100.1", 0, 2, 100)),
		stale,
		stamp(unk(0x3000, "198.51.100.3", 0, 2, 7)),
		stamp(unk(0x3000, "198.51.100.4", 0, 2, 5)), // two sources of one SPI: a collision, not a rekey race
		stamp(unk(0x3001, "198.51.100.3", 0, 2, 9)),
		stamp(unk(0x42, "198.51.100.5", 4500, 2, 3)),
	}
	s := take(t, r)
	want := map[string]uint64{"unknown": 100, "stale": 40, "rekey-race": 9, "collision": 12, "reserved": 3}
	if !reflect.DeepEqual(s.UnknownByVerdict, want) {
		t.Errorf("by verdict %v, want %v", s.UnknownByVerdict, want)
	}
	if len(s.Unknown) != 1 {
		t.Errorf("%d rows shown, want 1 (--top): the totals are over every row", len(s.Unknown))
	}
	// The stale row is evicted: its packets are no longer in any total.
	src.unknown = slices.DeleteFunc(src.unknown, func(u maps.Unknown) bool { return u.SPI == stale.SPI })
	clk.advance(time.Second)
	if got := take(t, r).UnknownByVerdict; got["stale"] != 0 || got["unknown"] != 100 {
		t.Errorf("after the stale row was evicted: %v", got)
	}
}
