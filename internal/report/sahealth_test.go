// SPDX-License-Identifier: Apache-2.0

package report

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/maps"
)

// dropSource is a fakeSource that also counts drops and rate-limit buckets.
type dropSource struct {
	*fakeSource
	dropped map[int][classify.NumClasses]maps.Count
	rate    maps.RateStats
}

func (d *dropSource) Dropped(slot int) ([classify.NumClasses]maps.Count, error) {
	return d.dropped[slot], nil
}

func (d *dropSource) RateTableStats() (maps.RateStats, error) { return d.rate, nil }

func TestUnknownCollisions(t *testing.T) {
	const now = uint64(100 * time.Second)
	at := func(u maps.Unknown, ago time.Duration) maps.Unknown { u.LastSeenNs = now - uint64(ago); return u }
	rows := []maps.Unknown{
		at(unk(0x1000, "198.51.100.1", 0, 2, 5), time.Second),     // 0: two addresses, plain ESP
		at(unk(0x1000, "198.51.100.2", 0, 2, 5), 2*time.Second),   // 1
		at(unk(0x2000, "198.51.100.1", 4500, 2, 5), time.Second),  // 2: two ports of one address
		at(unk(0x2000, "198.51.100.1", 4501, 2, 5), time.Second),  // 3
		at(unk(0x3000, "198.51.100.1", 0, 2, 5), time.Second),     // 4: the other source is too old
		at(unk(0x3000, "198.51.100.2", 0, 2, 5), time.Minute),     // 5
		at(unk(0x4000, "198.51.100.1", 0, 2, 5), time.Second),     // 6: same source on two interfaces
		at(unk(0x4000, "198.51.100.1", 0, 3, 5), time.Second),     // 7
		at(unk(42, "198.51.100.1", 0, 2, 5), time.Second),         // 8: reserved: never
		at(unk(42, "198.51.100.2", 0, 2, 5), time.Second),         // 9
		at(unk(0x5000, "2001:db8::1", 4500, 2, 5), time.Second),   // 10: v6
		at(unk(0x5000, "2001:db8::2", 4500, 2, 5), 3*time.Second), // 11
	}
	rows[11].Dst = rows[10].Dst
	// One SPI towards two destinations: only the rows towards one destination
	// from two sources collide, whichever destination the SPI's first row has.
	other := netip.MustParseAddr("203.0.113.9")
	for _, u := range []maps.Unknown{
		at(unk(0x6000, "198.51.100.1", 0, 2, 5), time.Second), // 12: alone towards its destination
		at(unk(0x6000, "198.51.100.1", 0, 2, 5), time.Second), // 13: towards other, two sources
		at(unk(0x6000, "198.51.100.2", 0, 2, 5), time.Second), // 14
		at(unk(0x7000, "198.51.100.1", 0, 2, 5), time.Second), // 15: two sources, two destinations
		at(unk(0x7000, "198.51.100.2", 0, 2, 5), time.Second), // 16
	} {
		rows = append(rows, u)
	}
	rows[13].Dst, rows[14].Dst, rows[16].Dst = other, other, other
	got := UnknownCollisions(rows, now, 30*time.Second)
	for i, want := range map[int]string{
		0: "198.51.100.1, 198.51.100.2", 1: "198.51.100.1, 198.51.100.2",
		2: "198.51.100.1:4500, 198.51.100.1:4501", 3: "198.51.100.1:4500, 198.51.100.1:4501",
		10: "[2001:db8::1]:4500, [2001:db8::2]:4500", 11: "[2001:db8::1]:4500, [2001:db8::2]:4500",
		13: "198.51.100.1, 198.51.100.2", 14: "198.51.100.1, 198.51.100.2",
	} {
		if s := SourcesString(got[i]); s != want {
			t.Errorf("row %d: sources %q, want %q", i, s, want)
		}
	}
	if len(got) != 8 {
		t.Errorf("%d rows in collision, want 8: %v", len(got), got)
	}
}

func TestTakeCollisionsAndDrops(t *testing.T) {
	f := newFake()
	src := &dropSource{fakeSource: f, dropped: map[int][classify.NumClasses]maps.Count{}, rate: maps.RateStats{Sources: 3, Capacity: 64, Evictions: 1}}
	clk := &fakeClock{wall: t0, mono: uint64(time.Hour)}
	r := newReporter(t, src, clk, eth0)
	r.Action, r.DropAbove, r.CollisionWindow = "drop", 100, 10*time.Second
	clk.advance(time.Second)

	a, b := netip.MustParseAddr("198.51.100.1").As16(), netip.MustParseAddr("198.51.100.2").As16()
	_ = a
	sa := maps.SA{SPI: 0xc0ffee}
	f.known = []maps.KnownSA{{SA: sa, Packets: 10, OtherPackets: 3, Seq: maps.SeqHealth{Lost: 2, Restarts: 1, Replays: 4},
		Sources: []maps.SASource{
			{Addr: netip.MustParseAddr("198.51.100.1"), Port: 4500, LastSeenNs: clk.mono - uint64(time.Second)},
			{Addr: netip.AddrFrom16(b).Unmap(), Port: 4500, LastSeenNs: clk.mono - uint64(2*time.Second)}}}}
	u1, u2 := unk(0xbad, "198.51.100.1", 0, 2, 5), unk(0xbad, "198.51.100.3", 0, 2, 7)
	u1.LastSeenNs, u2.LastSeenNs = clk.mono, clk.mono
	f.unknown = []maps.Unknown{u1, u2}
	f.set(0, classify.ClassESP, classify.OutcomeUnknown, 12, 1200)
	src.dropped[0] = [classify.NumClasses]maps.Count{classify.ClassESP: {Packets: 9, Bytes: 900}}

	s := take(t, r)
	if s.Collisions != 2 {
		t.Fatalf("%d collisions, want the known SA and the unknown SPI", s.Collisions)
	}
	for _, u := range s.Unknown {
		if u.Verdict != Collision || len(u.Sources) != 2 {
			t.Errorf("unknown row %v: verdict %s sources %v", u.Src, u.Verdict, u.Sources)
		}
	}
	if !s.Known[0].Collision || len(s.Known[0].ActiveSources) != 2 {
		t.Fatalf("known row %+v: want a collision of 2 sources", s.Known[0])
	}
	whats := map[string]uint64{}
	for _, e := range s.KnownEvents {
		whats[e.What] = e.New
	}
	if len(whats) != 3 || whats["restart"] != 1 || whats["replay"] != 4 {
		t.Fatalf("known events %v, want collision, restart 1, replay 4", s.KnownEvents)
	}
	if d := s.Total.Dropped[classify.ClassESP]; d.Packets != 9 || s.Total.DroppedDelta[classify.ClassESP].Packets != 9 {
		t.Fatalf("dropped %+v", s.Total.Dropped)
	}
	if s.Rate == nil || s.Rate.Sources != 3 {
		t.Fatalf("rate table %+v", s.Rate)
	}

	out := writeText(t, s, 0)
	for _, want := range []string{
		"DROPPING unknown-SPI packets above 100 pkt/s per source",
		"rate limit: 3 sources with a bucket (of 64), 1 evicted",
		"COLLISION: known SA 0x00c0ffee@any receives ESP from 2 sources within 10s: 198.51.100.1:4500, 198.51.100.2:4500 (3 packets from other than the first)",
		"collision",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
	if f := fieldsOf(t, out, "esp            dropped"); len(f) < 5 || f[4] != "9" {
		t.Errorf("dropped row %v, want 9 packets", f)
	}
	if f := fieldsOf(t, out, "esp            passed"); len(f) < 5 || f[4] != "3" {
		t.Errorf("passed row %v, want 3 packets", f)
	}
	if f := fieldsOf(t, out, "0x00c0ffee@any"); len(f) < 10 || f[1] != "10" || f[2] != "22.2%" || f[5] != "4" || f[6] != "1" ||
		f[len(f)-1] != "COLLISION,restarted,replay-suspect,loss" {
		t.Errorf("known row %v: want 10 packets, 2 lost of 7+2 (22.2%%), 4 replay-suspect, 1 restart", f)
	}

	_, js := writeJSON(t, s, 0)
	if js.Collisions != 2 || js.DropAbovePPS != 100 || js.RateLimit == nil || js.RateLimit.Evictions != 1 {
		t.Errorf("json collisions %d drop_above %d rate %+v", js.Collisions, js.DropAbovePPS, js.RateLimit)
	}
	if c := js.Classes[classify.ClassESP]; c.Dropped == nil || c.Dropped.Packets != 9 || c.Passed.Packets != 3 {
		t.Errorf("json esp dropped/passed %+v %+v", c.Dropped, c.Passed)
	}
	k := js.KnownSAs[0]
	if !k.Collision || k.ReplaySuspect != 4 || k.Restarts != 1 || k.Lost != 2 || len(k.Sources) != 2 || k.OtherSourcePackets != 3 {
		t.Errorf("json known %+v", k)
	}
	if u := js.UnknownSPIs[0]; u.Verdict != Collision || len(u.Sources) != 2 {
		t.Errorf("json unknown %+v", u)
	}

	// Nothing new: no events the second time.
	clk.advance(time.Second)
	if s := take(t, r); len(s.KnownEvents) != 0 {
		t.Errorf("events again: %v", s.KnownEvents)
	}
}
