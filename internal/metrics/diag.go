// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/maps"
)

// MaxDiagSeries caps the labelled series of ICMP-error rows and of per-peer IKE
// rows per scrape (each, most packets first): both tables are keyed by whoever
// sends, so they must not flood Prometheus.
const MaxDiagSeries = 200

var (
	icmpDesc = prometheus.NewDesc("spiwatch_icmp_esp_packets_total",
		"ICMP and ICMPv6 errors quoting ESP, by reporter, error, what is quoted, quoted SPI and addresses (at most 200 series, most packets first).",
		[]string{"reporter", "family", "type", "code", "error", "quote", "spi", "src", "sport", "dst", "dport", "interface"}, nil)
	icmpMTUDesc = prometheus.NewDesc("spiwatch_icmp_esp_mtu",
		"The MTU the last fragmentation-needed or packet-too-big quoting ESP reported, by reporter and quoted SPI and addresses.",
		[]string{"reporter", "family", "spi", "src", "dst", "interface"}, nil)
	icmpDroppedDesc = prometheus.NewDesc("spiwatch_icmp_esp_series_dropped",
		"ICMP-error rows left out of spiwatch_icmp_esp_packets_total by the cardinality cap.", nil, nil)
	ikeDesc = prometheus.NewDesc("spiwatch_ike_messages_total",
		"IKE messages by interface, IKE version, exchange and direction (request, response, or - for IKEv1), over all peers.",
		[]string{"interface", "version", "exchange", "dir"}, nil)
	ikePeerDesc = prometheus.NewDesc("spiwatch_ike_peer_messages_total",
		"IKE messages per peer, version, exchange and direction (at most 200 series, most messages first).",
		[]string{"peer", "interface", "version", "exchange", "dir"}, nil)
	ikeDroppedDesc = prometheus.NewDesc("spiwatch_ike_peer_series_dropped",
		"Per-peer IKE rows left out of spiwatch_ike_peer_messages_total by the cardinality cap.", nil, nil)
	diagEntriesDesc = prometheus.NewDesc("spiwatch_diag_table_entries",
		"Rows in the ICMP-error (icmp) and IKE (ike) tables.", []string{"table"}, nil)
	diagCapDesc = prometheus.NewDesc("spiwatch_diag_table_capacity",
		"Size of the ICMP-error and IKE tables.", []string{"table"}, nil)
	diagInsertsDesc = prometheus.NewDesc("spiwatch_diag_table_inserts_total",
		"Rows the XDP program created in the ICMP-error and IKE tables.", []string{"table"}, nil)
	diagEvictionsDesc = prometheus.NewDesc("spiwatch_diag_table_evictions_total",
		"Rows evicted from the full ICMP-error and IKE tables, with their counts.", []string{"table"}, nil)
	diagFailsDesc = prometheus.NewDesc("spiwatch_diag_table_insert_failures_total",
		"Packets whose ICMP-error or IKE row could not be created.", []string{"table"}, nil)
)

var diagDescs = []*prometheus.Desc{icmpDesc, icmpMTUDesc, icmpDroppedDesc, ikeDesc, ikePeerDesc, ikeDroppedDesc,
	diagEntriesDesc, diagCapDesc, diagInsertsDesc, diagEvictionsDesc, diagFailsDesc}

// collectDiag exports the ICMP-error and IKE tables when the source has them.
func (c *Collector) collectDiag(ch chan<- prometheus.Metric, names map[uint32]string, fail func(error)) {
	src, ok := c.src.(report.DiagSource)
	if !ok {
		return
	}
	icmp, err := src.ICMPSnapshot()
	if err != nil {
		fail(err)
		return
	}
	ike, err := src.IKESnapshot()
	if err != nil {
		fail(err)
		return
	}
	ts, tk, err := src.DiagTableStats(len(icmp), len(ike))
	if err != nil {
		fail(err)
		return
	}
	for _, t := range []struct {
		name string
		s    maps.TableStats
	}{{"icmp", ts}, {"ike", tk}} {
		ch <- prometheus.MustNewConstMetric(diagEntriesDesc, prometheus.GaugeValue, float64(t.s.Entries), t.name)
		ch <- prometheus.MustNewConstMetric(diagCapDesc, prometheus.GaugeValue, float64(t.s.Capacity), t.name)
		ch <- prometheus.MustNewConstMetric(diagInsertsDesc, prometheus.CounterValue, float64(t.s.Inserts), t.name)
		ch <- prometheus.MustNewConstMetric(diagEvictionsDesc, prometheus.CounterValue, c.atLeast("evictions/"+t.name, float64(t.s.Evictions)), t.name)
		ch <- prometheus.MustNewConstMetric(diagFailsDesc, prometheus.CounterValue, float64(t.s.InsertFails), t.name)
	}
	iface := func(ifindex uint32) string {
		if n := names[ifindex]; n != "" {
			return n
		}
		return fmt.Sprintf("if%d", ifindex)
	}

	slices.SortFunc(icmp, func(a, b maps.ICMPRow) int {
		return cmp.Or(cmp.Compare(b.Packets, a.Packets), cmp.Compare(a.SPI, b.SPI), a.Reporter.Compare(b.Reporter),
			a.Dst.Compare(b.Dst), a.Src.Compare(b.Src), cmp.Compare(a.Type, b.Type), cmp.Compare(a.Code, b.Code),
			cmp.Compare(a.Family, b.Family), cmp.Compare(a.Quote, b.Quote), cmp.Compare(a.SrcPort, b.SrcPort),
			cmp.Compare(a.DstPort, b.DstPort), cmp.Compare(a.Ifindex, b.Ifindex)) // the whole key: ties at the cap
	})
	shown := min(len(icmp), MaxDiagSeries)
	type mtuKey struct{ reporter, family, spi, src, dst, iface string }
	mtus := map[mtuKey]bool{}
	for _, e := range icmp[:shown] {
		fam, spi := report.ICMPFamily(e.Family), report.ICMPSPI(e.ICMPError)
		ch <- prometheus.MustNewConstMetric(icmpDesc, prometheus.CounterValue, float64(e.Packets),
			e.Reporter.String(), fam, strconv.Itoa(int(e.Type)), strconv.Itoa(int(e.Code)),
			classify.ICMPTypeName(e.Family, e.Type, e.Code), e.Quote.String(), spi,
			e.Src.String(), strconv.Itoa(int(e.SrcPort)), e.Dst.String(), strconv.Itoa(int(e.DstPort)), iface(e.Ifindex))
		k := mtuKey{e.Reporter.String(), fam, spi, e.Src.String(), e.Dst.String(), iface(e.Ifindex)}
		if e.MTU != 0 && !mtus[k] { // one per flow (rows differing in ports or code share it)
			mtus[k] = true
			ch <- prometheus.MustNewConstMetric(icmpMTUDesc, prometheus.GaugeValue, float64(e.MTU), k.reporter, k.family, k.spi, k.src, k.dst, k.iface)
		}
	}
	ch <- prometheus.MustNewConstMetric(icmpDroppedDesc, prometheus.GaugeValue, float64(len(icmp)-shown))

	agg := c.ikeTotals(ike, iface)
	for k, n := range agg {
		ch <- prometheus.MustNewConstMetric(ikeDesc, prometheus.CounterValue, float64(n), k.iface, k.version, k.exchange, k.dir)
	}
	slices.SortFunc(ike, func(a, b maps.IKERow) int {
		return cmp.Or(cmp.Compare(b.Packets, a.Packets), a.Peer.Compare(b.Peer), cmp.Compare(a.Version, b.Version),
			cmp.Compare(a.Exchange, b.Exchange), cmp.Compare(a.Dir, b.Dir), cmp.Compare(a.Ifindex, b.Ifindex))
	})
	shown = min(len(ike), MaxDiagSeries)
	for _, x := range ike[:shown] {
		ch <- prometheus.MustNewConstMetric(ikePeerDesc, prometheus.CounterValue, float64(x.Packets),
			x.Peer.String(), iface(x.Ifindex), ikeVersion(x), x.Exchange.Name(x.Version), x.Dir.String())
	}
	ch <- prometheus.MustNewConstMetric(ikeDroppedDesc, prometheus.GaugeValue, float64(len(ike)-shown))
}

// ikeRowKey is an IKE table row's identity; ikeAggKey its series of
// spiwatch_ike_messages_total.
type ikeRowKey struct {
	peer                   netip.Addr
	ifindex                uint32
	version, exchange, dir uint8
}

type ikeAggKey struct {
	iface, version, exchange, dir string
}

// ikeTotals sums the IKE rows per series, plus the packets of rows evicted
// since start (as of the last scrape that saw them): the sum is a counter, and a
// row leaving the table must not lower it. A row counting less than at the
// previous scrape, or with another first-seen stamp, was evicted and made again.
func (c *Collector) ikeTotals(ike []maps.IKERow, iface func(uint32) string) map[ikeAggKey]uint64 {
	c.floorMu.Lock()
	defer c.floorMu.Unlock()
	if c.ikeGone == nil {
		c.ikeGone = map[ikeAggKey]uint64{}
	}
	aggOf := func(k ikeRowKey) ikeAggKey {
		x := maps.IKERow{Version: k.version, Exchange: classify.IKEExchange(k.exchange), Dir: classify.IKEDir(k.dir)}
		return ikeAggKey{iface(k.ifindex), ikeVersion(x), x.Exchange.Name(x.Version), x.Dir.String()}
	}
	cur := make(map[ikeRowKey]ikeSeen, len(ike))
	for _, x := range ike {
		k := ikeRowKey{x.Peer, x.Ifindex, x.Version, uint8(x.Exchange), uint8(x.Dir)}
		cur[k] = ikeSeen{x.Packets, x.FirstSeenNs, aggOf(k)}
	}
	// A row renamed (its interface renamed or re-created) leaves its old series
	// too: that one keeps the row's packets. A row made again may already count
	// more than the old one did: its first-seen stamp tells.
	for k, prev := range c.ikeRows {
		if now, ok := cur[k]; !ok || now.packets < prev.packets || now.first != prev.first || now.agg != prev.agg {
			c.ikeGone[prev.agg] += prev.packets
		}
	}
	c.ikeRows = cur
	agg := make(map[ikeAggKey]uint64, len(c.ikeGone))
	for k, n := range c.ikeGone {
		agg[k] = n
	}
	for _, x := range cur {
		agg[x.agg] += x.packets
	}
	return agg
}

// ikeSeen is an IKE row as the last scrape counted it.
type ikeSeen struct {
	packets uint64
	first   uint64 // FirstSeenNs: changes when the row is evicted and made again
	agg     ikeAggKey
}

// ikeVersion is the version label: "1", "2", ..., "-" for malformed messages.
func ikeVersion(x maps.IKERow) string {
	if x.Exchange == classify.IKEMalformed {
		return "-"
	}
	return strconv.Itoa(int(x.Version))
}
