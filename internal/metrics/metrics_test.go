// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"net/netip"
	"reflect"
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
func (f *fakeSource) UnknownTable(buf []maps.Unknown) ([]maps.Unknown, maps.TableStats, error) {
	rows := append(buf[:0], f.unknown...)
	return rows, maps.TableStats{Entries: maps.TableRows(rows), Capacity: 1024}, nil
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
	c.Verdict = func(spi uint32, _ netip.Addr, first, last time.Time) string {
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

// TestInterfaceUp: each watched interface is up until the reports learn (SetIface)
// that it is gone or its link is down; then a problem series says why, and its
// counters stay.
func TestInterfaceUp(t *testing.T) {
	eth0 := report.Iface{Name: "eth0", Ifindex: 2, Mode: "native", Slot: 0}
	eth1 := report.Iface{Name: "eth1", Ifindex: 3, Mode: "generic", Slot: 1}
	wan0 := report.Iface{Name: "wan0", Ifindex: 4, Mode: "native", Slot: 2}
	c := NewCollector(&fakeSource{}, []report.Iface{eth0, eth1, wan0}, 0)
	fams := gather(t, c)
	if got := series(t, fams, "spiwatch_interface_up", "interface"); !reflect.DeepEqual(got, map[string]float64{"eth0": 1, "eth1": 1, "wan0": 1}) {
		t.Errorf("interfaces up %v, want all 1", got)
	}
	if f := fams["spiwatch_interface_problem"]; f != nil {
		t.Errorf("problems while all are up: %v", f)
	}

	eth0.Problem = "interface deleted"
	eth1.LinkDown = true
	c.SetIface(eth0)
	c.SetIface(eth1)
	fams = gather(t, c)
	if got := series(t, fams, "spiwatch_interface_up", "interface"); !reflect.DeepEqual(got, map[string]float64{"eth0": 0, "eth1": 0, "wan0": 1}) {
		t.Errorf("interfaces up %v, want eth0 and eth1 at 0", got)
	}
	problems := map[string]string{}
	for _, m := range fams["spiwatch_interface_problem"].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		if m.GetGauge().GetValue() != 1 {
			t.Errorf("problem %v = %v, want 1", labels, m.GetGauge().GetValue())
		}
		problems[labels["interface"]] = labels["problem"]
	}
	if want := map[string]string{"eth0": "interface deleted", "eth1": "link down"}; !reflect.DeepEqual(problems, want) {
		t.Errorf("problems %v, want %v", problems, want)
	}
	if got := series(t, fams, "spiwatch_packets_total", "interface"); len(got) != 3 {
		t.Errorf("packet counters of %v, want all three interfaces' (counts stay after a loss)", got)
	}
}
