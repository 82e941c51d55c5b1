// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/maps"
)

// diagSource is a fakeSource with ICMP-error and IKE tables and drop counts.
type diagSource struct {
	fakeSource
	icmp       []maps.ICMPRow
	ike        []maps.IKERow
	counters   maps.Counters
	dropped    [classify.NumClasses]maps.Count
	droppedErr error
}

func (f *diagSource) Counters(int) (maps.Counters, error) { return f.counters, nil }
func (f *diagSource) ICMPSnapshot() ([]maps.ICMPRow, error) {
	return append([]maps.ICMPRow(nil), f.icmp...), nil
}
func (f *diagSource) IKESnapshot() ([]maps.IKERow, error) {
	return append([]maps.IKERow(nil), f.ike...), nil
}
func (f *diagSource) Dropped(int) ([classify.NumClasses]maps.Count, error) {
	if f.droppedErr != nil {
		return [classify.NumClasses]maps.Count{}, f.droppedErr
	}
	return f.dropped, nil
}
func (f *diagSource) DiagTableStats(icmp, ike int) (maps.TableStats, maps.TableStats, error) {
	return maps.TableStats{Entries: icmp, Capacity: 4096}, maps.TableStats{Entries: ike, Capacity: 16384}, nil
}

// value finds the sample of family name whose labels include want.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	t.Helper()
	for _, m := range fams[name].GetMetric() {
		match := 0
		for _, l := range m.Label {
			if v, ok := want[l.GetName()]; ok && v == l.GetValue() {
				match++
			}
		}
		if match == len(want) {
			return m.GetGauge().GetValue() + m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

// TestIKEMessagesTotalSurvivesEviction: spiwatch_ike_messages_total is a counter
// summed over the IKE table's rows; a row evicted (or evicted and created again)
// must not make it go down, or Prometheus takes the drop for a reset and
// rate() sees the whole sum again (a false rekey storm).
func TestIKEMessagesTotalSurvivesEviction(t *testing.T) {
	peer := func(s string, n uint64) maps.IKERow {
		return maps.IKERow{Peer: netip.MustParseAddr(s), Ifindex: 2, Version: 2, Exchange: classify.IKECreateChildSA,
			Dir: classify.IKERequest, Packets: n}
	}
	src := &diagSource{ike: []maps.IKERow{peer("198.51.100.1", 1000), peer("198.51.100.2", 10)}}
	c := NewCollector(src, []report.Iface{{Name: "eth0", Ifindex: 2}}, 0)
	labels := map[string]string{"exchange": "CREATE_CHILD_SA", "dir": "request", "interface": "eth0"}
	first, _ := value(t, gather(t, c), "spiwatch_ike_messages_total", labels)
	if first != 1010 {
		t.Fatalf("first scrape %v, want 1010", first)
	}
	// The small row is evicted; the big one grows by 5.
	src.ike = []maps.IKERow{peer("198.51.100.1", 1005)}
	second, _ := value(t, gather(t, c), "spiwatch_ike_messages_total", labels)
	if second < first {
		t.Errorf("after an eviction the counter went from %v to %v: a counter must not go down", first, second)
	}
	// The evicted peer comes back as a new row, counting from 1.
	src.ike = []maps.IKERow{peer("198.51.100.1", 1006), peer("198.51.100.2", 1)}
	third, _ := value(t, gather(t, c), "spiwatch_ike_messages_total", labels)
	if third < second {
		t.Errorf("after a row came back the counter went from %v to %v", second, third)
	}
	if third != 1017 {
		t.Errorf("third scrape %v, want 1017 (1006 + 10 evicted + 1)", third)
	}
}

// TestPassedNeverGoesDown: spiwatch_unknown_passed_packets_total is unknown −
// dropped, two counters read one after the other while packets are dropped; a
// later read of dropped (more drops than the unknown count read before shows)
// must not lower the counter. And a failed read of the drop counts must not
// export dropped as 0.
func TestPassedNeverGoesDown(t *testing.T) {
	src := &diagSource{}
	c := NewCollector(src, []report.Iface{{Name: "eth0", Ifindex: 2}}, 0)
	esp := map[string]string{"interface": "eth0", "class": "esp"}
	src.counters[classify.ClassESP][classify.OutcomeUnknown] = maps.Count{Packets: 1000}
	src.dropped[classify.ClassESP] = maps.Count{Packets: 900}
	p1, _ := value(t, gather(t, c), "spiwatch_unknown_passed_packets_total", esp)
	if p1 != 100 {
		t.Fatalf("passed %v, want 100", p1)
	}
	// 50 more unknown packets, all dropped; the drop count read 30 later ones too.
	src.counters[classify.ClassESP][classify.OutcomeUnknown] = maps.Count{Packets: 1050}
	src.dropped[classify.ClassESP] = maps.Count{Packets: 980}
	p2, _ := value(t, gather(t, c), "spiwatch_unknown_passed_packets_total", esp)
	if p2 < p1 {
		t.Errorf("passed went from %v to %v", p1, p2)
	}

	src.droppedErr = errors.New("map read failed")
	fams := gatherAll(t, c)
	if d, ok := value(t, fams, "spiwatch_unknown_dropped_packets_total", esp); ok && d < 980 {
		t.Errorf("failed read exported dropped = %v, below the 980 exported before", d)
	}
}

// gatherAll is gather that keeps what a scrape with errors still serves.
func gatherAll(t *testing.T, c *Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	fams, _ := reg.Gather()
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// evictSource reports the unknown table's evictions the test sets.
type evictSource struct {
	fakeSource
	evictions uint64
}

func (f *evictSource) UnknownTable(buf []maps.Unknown) ([]maps.Unknown, maps.TableStats, error) {
	return buf[:0], maps.TableStats{Capacity: 1024, Inserts: 2000, Evictions: f.evictions}, nil
}

// TestEvictionsNeverGoDown: evictions are inserts − entries from two reads
// while rows are inserted; a row counted in entries but not yet in inserts
// lowers them for one read, which must not show as a counter reset.
func TestEvictionsNeverGoDown(t *testing.T) {
	src := &evictSource{evictions: 50}
	c := NewCollector(src, nil, 0)
	e1, _ := value(t, gather(t, c), "spiwatch_unknown_table_evictions_total", nil)
	src.evictions = 45
	e2, _ := value(t, gather(t, c), "spiwatch_unknown_table_evictions_total", nil)
	if e1 != 50 || e2 < e1 {
		t.Errorf("evictions %v then %v, want 50 then at least 50", e1, e2)
	}
}

// TestTopSeriesTiesDeterministic: rows tied on packets that differ only in
// port or interface (two NAT-T ports of one peer: a collision) must give the
// same labelled series whatever order the table is read in, or the series at the
// cap flap between scrapes.
func TestTopSeriesTiesDeterministic(t *testing.T) {
	row := func(sport uint16, ifindex uint32) maps.Unknown {
		return maps.Unknown{SPI: 0x5000, Src: netip.MustParseAddr("198.51.100.1"), Dst: netip.MustParseAddr("192.0.2.1"),
			SrcPort: sport, DstPort: 4500, Ifindex: ifindex, Packets: 10}
	}
	pick := func(rows ...maps.Unknown) string {
		c := NewCollector(&fakeSource{unknown: rows}, []report.Iface{{Name: "eth0", Ifindex: 2}, {Name: "eth1", Ifindex: 3}}, 1)
		m := gather(t, c)["spiwatch_unknown_spi_packets_total"].GetMetric()
		if len(m) != 1 {
			t.Fatalf("%d series, want 1", len(m))
		}
		return m[0].String()
	}
	a, b := row(4500, 2), row(4501, 2)
	if x, y := pick(a, b), pick(b, a); x != y {
		t.Errorf("the top series depends on the read order:\n%s\n%s", x, y)
	}
	a, b = row(4500, 2), row(4500, 3)
	if x, y := pick(a, b), pick(b, a); x != y {
		t.Errorf("the top series depends on the read order:\n%s\n%s", x, y)
	}

	icmp := func(sport uint16, quote classify.Quote) maps.ICMPRow {
		return maps.ICMPRow{Reporter: netip.MustParseAddr("192.0.2.254"), Ifindex: 2, Packets: 3,
			ICMPError: classify.ICMPError{Family: 4, Type: 3, Code: 3, Quote: quote, SPI: 0x10,
				Src: netip.MustParseAddr("203.0.113.1"), Dst: netip.MustParseAddr("198.51.100.7"), SrcPort: sport, DstPort: 4500}}
	}
	pickICMP := func(rows ...maps.ICMPRow) string {
		var many []maps.ICMPRow
		for i := 0; i < MaxDiagSeries-1; i++ { // all but one place to busier rows
			r := icmp(1, classify.QuoteESPInUDP)
			r.Packets, r.SPI = 100, uint32(0x1000+i)
			many = append(many, r)
		}
		c := NewCollector(&diagSource{icmp: append(many, rows...)}, []report.Iface{{Name: "eth0", Ifindex: 2}}, 0)
		fams := gather(t, c)
		if v, _ := value(t, fams, "spiwatch_icmp_esp_series_dropped", nil); v != 1 {
			t.Fatalf("dropped %v, want 1", v)
		}
		for _, m := range fams["spiwatch_icmp_esp_packets_total"].GetMetric() {
			if m.GetCounter().GetValue() == 3 {
				return m.String()
			}
		}
		return ""
	}
	i1, i2 := icmp(4500, classify.QuoteESPInUDP), icmp(4501, classify.QuoteESPInUDP)
	if x, y := pickICMP(i1, i2), pickICMP(i2, i1); x != y {
		t.Errorf("the ICMP series at the cap depends on the read order:\n%s\n%s", x, y)
	}
}

// TestReattachNoDuplicateSeries: after --wait-iface attaches again to a
// re-created interface (same name, new ifindex), rows of the old ifindex stay in
// the LRU table; labelled with the same name as the new rows, a peer still on its
// stale SPI gives two series with the same labels, and the scrape fails.
func TestReattachNoDuplicateSeries(t *testing.T) {
	row := func(ifindex uint32, packets uint64) maps.Unknown {
		return maps.Unknown{SPI: 0x5000, Src: netip.MustParseAddr("198.51.100.1"), Dst: netip.MustParseAddr("192.0.2.1"),
			Ifindex: ifindex, Packets: packets}
	}
	eth0 := report.Iface{Name: "eth0", Ifindex: 2, Mode: "native", Slot: 0}
	c := NewCollector(&fakeSource{unknown: []maps.Unknown{row(2, 10), row(7, 3)}}, []report.Iface{eth0}, 20)
	eth0.Ifindex = 7
	c.SetIface(eth0)
	got := series(t, gather(t, c), "spiwatch_unknown_spi_packets_total", "interface")
	if got["eth0"] != 3 || got["if2"] != 10 {
		t.Errorf("rows by interface %v, want eth0 (ifindex 7) 3 and if2 10", got)
	}
}

// TestIKEMessagesTotalReattach: rows of a re-created interface's old ifindex
// are named ifN from then on; the interface's series must not lose their packets.
func TestIKEMessagesTotalReattach(t *testing.T) {
	src := &diagSource{ike: []maps.IKERow{{Peer: netip.MustParseAddr("198.51.100.1"), Ifindex: 2, Version: 2,
		Exchange: classify.IKESAInit, Dir: classify.IKERequest, Packets: 40}}}
	eth0 := report.Iface{Name: "eth0", Ifindex: 2}
	c := NewCollector(src, []report.Iface{eth0}, 0)
	labels := map[string]string{"interface": "eth0", "exchange": "IKE_SA_INIT"}
	before, _ := value(t, gather(t, c), "spiwatch_ike_messages_total", labels)
	eth0.Ifindex = 7
	c.SetIface(eth0)
	after, _ := value(t, gather(t, c), "spiwatch_ike_messages_total", labels)
	if before != 40 || after < before {
		t.Errorf("eth0 IKE_SA_INIT %v, then %v after the re-attach: want 40, then no less", before, after)
	}
}
