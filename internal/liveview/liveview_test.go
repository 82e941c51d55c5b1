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

func snapshot() *report.Snapshot {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	var c maps.Counters
	c[classify.ClassESP][classify.OutcomeKnown] = maps.Count{Packets: 1000, Bytes: 100_000}
	c[classify.ClassESP][classify.OutcomeUnknown] = maps.Count{Packets: 30, Bytes: 3000}
	ic := report.IfaceCounts{Iface: report.Iface{Name: "eth0", Mode: "native"}, Now: c, Delta: c}
	row := func(spi uint32, src string, pkts uint64, rate float64, first, last time.Duration) report.UnknownRow {
		return report.UnknownRow{Unknown: maps.Unknown{SPI: spi, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("203.0.113.1"), Packets: pkts},
			Iface: "eth0", Rate: rate, FirstSeen: now.Add(-first), LastSeen: now.Add(-last), Verdict: report.VerdictOf(spi)}
	}
	return &report.Snapshot{Time: now, Interval: time.Second, Ifaces: []report.IfaceCounts{ic}, Total: ic,
		Unknown: []report.UnknownRow{
			row(0xaaaa0001, "198.51.100.1", 10, 5, 10*time.Second, 3*time.Second),
			row(0xaaaa0002, "198.51.100.2", 15, 1, 20*time.Second, 0),
			row(0x00000007, "2001:db8::77", 5, 9, 5*time.Second, 2*time.Second),
		}, UnknownRows: 3, Table: maps.TableStats{Entries: 3, Capacity: 65536},
		UnknownByVerdict: map[string]uint64{"unknown": 25, "reserved": 5}}
}

func spiOrder(t *testing.T, screen string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(screen, "\n") {
		if strings.HasPrefix(l, "0x") {
			out = append(out, l[:10])
		}
	}
	return out
}

func TestRenderSorts(t *testing.T) {
	v := &View{info: Info{Started: time.Now(), KnownSources: "file"}, last: snapshot()}
	want := map[string][]string{
		"rate":       {"0x00000007", "0xaaaa0001", "0xaaaa0002"},
		"packets":    {"0xaaaa0002", "0xaaaa0001", "0x00000007"},
		"last seen":  {"0xaaaa0002", "0x00000007", "0xaaaa0001"},
		"first seen": {"0x00000007", "0xaaaa0001", "0xaaaa0002"},
		"SPI":        {"0x00000007", "0xaaaa0001", "0xaaaa0002"},
	}
	for i, name := range sorts {
		v.sort = i
		screen := v.Render(200, 40)
		if got := spiOrder(t, screen); strings.Join(got, " ") != strings.Join(want[name], " ") {
			t.Errorf("sorted by %s: %v, want %v", name, got, want[name])
		}
		if !strings.Contains(screen, "sorted by "+name) {
			t.Errorf("screen does not say it is sorted by %s", name)
		}
	}
	screen := v.Render(200, 40)
	for _, w := range []string{"eth0 (native)", "known SAs 0 (file)", "unknown table 3/65536, 0 evicted", "2001:db8::77", "reserved", "3s ago", "now",
		"\npackets by verdict: unknown 25, stale 0, rekey-race 0, collision 0, reserved 5\nSPI "} {
		if !strings.Contains(screen, w) {
			t.Errorf("screen lacks %q:\n%s", w, screen)
		}
	}
}

func TestRenderFits(t *testing.T) {
	v := &View{info: Info{Started: time.Now()}, last: snapshot()}
	screen := v.Render(40, 13)
	lines := strings.Split(screen, "\n")
	if len(lines) > 13 {
		t.Errorf("%d lines on a 13-line terminal", len(lines))
	}
	for _, l := range lines {
		if len(l) > 40 {
			t.Errorf("line wider than 40: %q", l)
		}
	}
	if !strings.Contains(screen, "more (make the terminal taller)") {
		t.Errorf("rows cut without saying so:\n%s", screen)
	}
	v.paused = true
	if !strings.Contains(v.Render(200, 40), "PAUSED") {
		t.Error("pause not shown")
	}
}

// TestRenderDiagnosis: a known SA in collision is the second line after the
// header, known SAs with concerns are listed, and drops are split from passes.
func TestRenderDiagnosis(t *testing.T) {
	s := snapshot()
	s.Action, s.DropAbove = "drop", 500
	s.Rate = &maps.RateStats{Sources: 2, Capacity: 65536}
	s.Total.Dropped[classify.ClassESP] = maps.Count{Packets: 20, Bytes: 2000}
	s.CollisionWindow = 30 * time.Second
	a, b := maps.SASource{Addr: netip.MustParseAddr("198.51.100.1"), Port: 4500}, maps.SASource{Addr: netip.MustParseAddr("198.51.100.1"), Port: 4501}
	s.Known = []report.KnownRow{
		{KnownSA: maps.KnownSA{SA: maps.SA{SPI: 0x1000}, Packets: 100, OtherPackets: 7, Sources: []maps.SASource{a, b}},
			Collision: true, ActiveSources: []maps.SASource{a, b}},
		{KnownSA: maps.KnownSA{SA: maps.SA{SPI: 0x2000}, Packets: 90, Seq: maps.SeqHealth{Lost: 10, Replays: 3}}, From: []string{"xfrm"}},
		{KnownSA: maps.KnownSA{SA: maps.SA{SPI: 0x3000}, Packets: 50}},
	}
	v := &View{info: Info{Started: time.Now()}, last: s}
	screen := v.Render(250, 40)
	lines := strings.Split(screen, "\n")
	if !strings.Contains(lines[0], "DROPPING unknown-SPI packets above 500 pkt/s per source") {
		t.Errorf("header %q", lines[0])
	}
	want := "COLLISION: known SA 0x00001000@any receives ESP from 2 sources within 30s: 198.51.100.1:4500, 198.51.100.1:4501 (7 packets from other than the first)"
	if lines[3] != want {
		t.Errorf("line 4 %q, want %q\n%s", lines[3], want, screen)
	}
	for _, w := range []string{"known SAs with concerns: 2", "COLLISION: 198.51.100.1:4500", "10.0%", "xfrm         replay-suspect,loss",
		"esp            dropped", "esp            passed"} {
		if !strings.Contains(screen, w) {
			t.Errorf("no %q in\n%s", w, screen)
		}
	}
	if strings.Contains(screen, "0x00003000@any") {
		t.Errorf("an SA without concerns is listed:\n%s", screen)
	}
}
