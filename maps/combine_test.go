// SPDX-License-Identifier: Apache-2.0

package maps_test

import (
	"net/netip"
	"testing"

	"github.com/spiwatch/spiwatch/maps"
)

func v4mapped(s string) [16]byte { return netip.MustParseAddr(s).As16() }

// TestCombineOneCPU: an SA seen on one CPU keeps that CPU's exact figures.
func TestCombineOneCPU(t *testing.T) {
	sa := maps.SA{SPI: 0x100}
	per := []maps.SAStats{{}, {Packets: 100, Bytes: 1000, LastSeenNs: 50, MaxSeq: 110, FirstSeq: 1,
		Src: v4mapped("198.51.100.1"), Gaps: 12, Late: 2, Dups: 3, Replays: 4, Restarts: 1}}
	k := maps.Combine(sa, per)
	if k.CPUs != 1 || k.Seq.Spread || k.Seq.Lost != 10 || k.Seq.Late != 2 || k.Seq.Dups != 3 || k.Seq.Replays != 4 || k.Seq.Restarts != 1 {
		t.Fatalf("%+v", k)
	}
	if len(k.Sources) != 1 || k.Sources[0].Addr != netip.MustParseAddr("198.51.100.1") || k.Sources[0].Port != 0 {
		t.Fatalf("sources %v", k.Sources)
	}
	if r := k.LossRatio(); r != 10.0/110 {
		t.Errorf("loss ratio %v, want 10/110", r)
	}
	if k.Collision(60, 100) {
		t.Error("one source is no collision")
	}
}

// TestCombineSpread: one source's packets spread over two CPUs. Each CPU sees
// the other's packets as gaps; the span of numbers gives the loss instead.
func TestCombineSpread(t *testing.T) {
	src := v4mapped("198.51.100.1")
	// seq 1..100, 7 lost: the odd ones on CPU 0, the even ones on CPU 1.
	per := []maps.SAStats{
		{Packets: 47, MaxSeq: 99, FirstSeq: 1, Src: src, Gaps: 52, LastSeenNs: 5},
		{Packets: 46, MaxSeq: 100, FirstSeq: 2, Src: src, Gaps: 52, LastSeenNs: 6},
	}
	k := maps.Combine(maps.SA{SPI: 0x100}, per)
	if !k.Seq.Spread || k.Seq.Lost != 7 || k.CPUs != 2 {
		t.Fatalf("%+v: want spread, 7 lost", k)
	}
	// A restart makes the span meaningless: per-CPU figures are summed.
	per[1].Restarts = 1
	if k := maps.Combine(maps.SA{SPI: 0x100}, per); k.Seq.Spread || k.Seq.Lost != 104 {
		t.Fatalf("with a restart: %+v, want per-CPU sum 104", k)
	}
}

// TestCombineSources: two CPUs with different first sources are a collision, as is
// another source counted on one CPU; sources age out of the window.
func TestCombineSources(t *testing.T) {
	a, b, c := v4mapped("198.51.100.1"), v4mapped("198.51.100.2"), v4mapped("198.51.100.3")
	per := []maps.SAStats{
		{Packets: 10, Src: a, SrcPort: 4500, LastSeenNs: 1000},
		{Packets: 5, Src: b, SrcPort: 4500, LastSeenNs: 900, OtherPackets: 2, OtherSrc: a, OtherPort: 4501, OtherLastNs: 950},
		{Packets: 3, Src: a, SrcPort: 4500, LastSeenNs: 400, OtherPackets: 1, OtherSrc: c, OtherLastNs: 100},
	}
	k := maps.Combine(maps.SA{SPI: 0x100}, per)
	var got []string
	for _, s := range k.Sources {
		got = append(got, s.String())
	}
	want := []string{"198.51.100.1:4500", "198.51.100.1:4501", "198.51.100.2:4500", "198.51.100.3"}
	if len(got) != len(want) {
		t.Fatalf("sources %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("sources %v, want %v (most recent first)", got, want)
		}
	}
	if k.OtherPackets != 3 || k.LastSeenNs != 1000 {
		t.Errorf("other packets %d, last seen %d", k.OtherPackets, k.LastSeenNs)
	}
	if !k.Collision(1000, 100) || len(k.ActiveSources(1000, 100)) != 3 {
		t.Errorf("active within 100 of 1000: %v", k.ActiveSources(1000, 100))
	}
	if k.Collision(1100, 50) {
		t.Errorf("nothing within 50 of 1100 is no collision: %v", k.ActiveSources(1100, 50))
	}
	if len(k.ActiveSources(1000, 1000)) != 4 {
		t.Errorf("all four within 1000: %v", k.ActiveSources(1000, 1000))
	}
}
