// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/maps"
)

// fakeSource is a Source whose contents the test sets.
type fakeSource struct {
	unknown []maps.Unknown
	known   []maps.KnownSA
}

func (f *fakeSource) Counters(int) (maps.Counters, error) { return maps.Counters{}, nil }
func (f *fakeSource) UnknownSnapshotInto(buf []maps.Unknown) ([]maps.Unknown, error) {
	return append(buf[:0], f.unknown...), nil
}
func (f *fakeSource) UnknownTableStats(entries int) (maps.TableStats, error) {
	return maps.TableStats{Entries: entries, Capacity: 1024}, nil
}
func (f *fakeSource) ListKnown() ([]maps.KnownSA, error) { return slices.Clone(f.known), nil }
func (f *fakeSource) KnownCapacity() int                 { return 1024 }

// gather scrapes c as Prometheus would: every family by name.
func gather(t *testing.T, c *Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry() // also checks Describe against Collect
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// series returns family name's samples by the value of label.
func series(t *testing.T, fams map[string]*dto.MetricFamily, name, label string) map[string]float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no metric %s", name)
	}
	out := map[string]float64{}
	for _, m := range f.Metric {
		for _, l := range m.Label {
			if l.GetName() == label {
				out[l.GetValue()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// TestUnknownVerdictPackets: every row of the table counts, not only the labelled
// top ones; a collision over the row's own verdict; every verdict has a series.
func TestUnknownVerdictPackets(t *testing.T) {
	now := report.MonoNow()
	row := func(spi uint32, src string, packets uint64) maps.Unknown {
		return maps.Unknown{SPI: spi, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("192.0.2.1"),
			Packets: packets, FirstSeenNs: now, LastSeenNs: now}
	}
	src := &fakeSource{unknown: []maps.Unknown{
		row(0x1000, "198.51.100.1", 100),
		row(0x2000, "198.51.100.2", 40),
		row(0x3000, "198.51.100.3", 7),
		row(0x3000, "198.51.100.4", 5), // two sources of one SPI: a collision
		row(0x3001, "198.51.100.3", 9),
		row(0x42, "198.51.100.5", 3),
	}}
	c := NewCollector(src, nil, 1)
	c.Verdict = func(spi uint32, first, last time.Time) string {
		if first.IsZero() || last.Before(first) {
			t.Errorf("SPI 0x%x: seen %v..%v, want the rows' times", spi, first, last)
		}
		switch spi {
		case 0x2000:
			return "stale"
		case 0x3000, 0x3001:
			return "rekey-race"
		}
		return report.VerdictOf(spi)
	}
	fams := gather(t, c)
	want := map[string]float64{"unknown": 100, "stale": 40, "rekey-race": 9, "collision": 12, "reserved": 3}
	got := series(t, fams, "spiwatch_unknown_verdict_packets", "verdict")
	if len(got) != len(want) {
		t.Errorf("verdict series %v, want %v", got, want)
	}
	for v, n := range want {
		if got[v] != n {
			t.Errorf("spiwatch_unknown_verdict_packets{verdict=%q} = %v, want %v", v, got[v], n)
		}
	}
	if f := fams["spiwatch_unknown_verdict_packets"]; f.GetType() != dto.MetricType_GAUGE {
		t.Errorf("type %v, want a gauge: rows are evicted", f.GetType())
	}
	if n := len(fams["spiwatch_unknown_spi_packets_total"].GetMetric()); n != 1 {
		t.Errorf("%d labelled rows, want 1 (the top one)", n)
	}

	// An empty table: every verdict at 0, so a query never sees the series vanish.
	src.unknown = nil
	got = series(t, gather(t, c), "spiwatch_unknown_verdict_packets", "verdict")
	for _, v := range report.Verdicts {
		if n, ok := got[v]; !ok || n != 0 {
			t.Errorf("empty table: %s %v (present %v), want 0", v, n, ok)
		}
	}
}
