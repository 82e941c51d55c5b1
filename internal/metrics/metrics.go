// SPDX-License-Identifier: Apache-2.0

// Package metrics exposes spiwatch's BPF maps to Prometheus. Every value is read
// from the maps when Prometheus scrapes, not copied on a timer, so a scrape sees the
// kernel's counts of that moment.
package metrics

import (
	"cmp"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/internal/sasource"
	"github.com/spiwatch/spiwatch/maps"
)

// Source is what the collector reads: *maps.Maps, as for reports, and the size
// of the known-SA map.
type Source interface {
	report.Source
	KnownCapacity() int
}

// MaxUnknownSeries is the hard cap on labelled unknown-SPI series per scrape,
// whatever TopUnknown says: a flood of random SPIs must not flood Prometheus.
const MaxUnknownSeries = 200

var (
	packetsDesc = prometheus.NewDesc("spiwatch_packets_total",
		"Frames seen by the XDP program, by interface, class and SPI outcome.", []string{"interface", "class", "outcome"}, nil)
	bytesDesc = prometheus.NewDesc("spiwatch_bytes_total",
		"Bytes of the frames seen by the XDP program, by interface, class and SPI outcome.", []string{"interface", "class", "outcome"}, nil)
	knownDesc = prometheus.NewDesc("spiwatch_known_sas",
		"Security Associations in the known-SA map.", nil, nil)
	knownCapDesc = prometheus.NewDesc("spiwatch_known_sas_capacity",
		"Size of the known-SA map.", nil, nil)
	saPacketsDesc = prometheus.NewDesc("spiwatch_sa_packets_total",
		"Packets of each known SA (SPI in hex, destination or \"any\").", []string{"spi", "dst"}, nil)
	saBytesDesc = prometheus.NewDesc("spiwatch_sa_bytes_total",
		"Bytes of each known SA.", []string{"spi", "dst"}, nil)
	saSeqDesc = prometheus.NewDesc("spiwatch_sa_highest_sequence",
		"Highest ESP sequence number seen on each known SA.", []string{"spi", "dst"}, nil)
	entriesDesc = prometheus.NewDesc("spiwatch_unknown_table_entries",
		"Rows in the unknown-SPI table.", nil, nil)
	capacityDesc = prometheus.NewDesc("spiwatch_unknown_table_capacity",
		"Size of the unknown-SPI table.", nil, nil)
	insertsDesc = prometheus.NewDesc("spiwatch_unknown_table_inserts_total",
		"Rows the XDP program created in the unknown-SPI table.", nil, nil)
	evictionsDesc = prometheus.NewDesc("spiwatch_unknown_table_evictions_total",
		"Rows evicted from the full unknown-SPI table, with their counts.", nil, nil)
	insertFailsDesc = prometheus.NewDesc("spiwatch_unknown_table_insert_failures_total",
		"Packets with an unknown or reserved SPI whose row could not be created.", nil, nil)
	unknownDesc = prometheus.NewDesc("spiwatch_unknown_spi_packets_total",
		"Packets of the unknown-SPI rows with the most packets (at most --metrics-top-unknown, hard cap 200).",
		[]string{"spi", "src", "sport", "dst", "dport", "interface", "verdict"}, nil)
	unknownShownDesc = prometheus.NewDesc("spiwatch_unknown_spi_series_dropped",
		"Unknown-SPI rows left out of spiwatch_unknown_spi_packets_total by the cardinality cap.", nil, nil)
	verdictDesc = prometheus.NewDesc("spiwatch_unknown_verdict_packets",
		"Packets of the rows now in the unknown-SPI table, by verdict (rekey-race: not the peer's fault). "+
			"A gauge of the current table: it drops when rows are evicted.", []string{"verdict"}, nil)
	sourceErrDesc = prometheus.NewDesc("spiwatch_known_source_errors_total",
		"Failed reads of a known-SA source (the previous SAs were kept), by source.", []string{"source"}, nil)
	sourceSAsDesc = prometheus.NewDesc("spiwatch_known_source_sas",
		"Known SAs each known-SA source gave in its last good read, by source.", []string{"source"}, nil)
	sourceResyncDesc = prometheus.NewDesc("spiwatch_known_source_resyncs_total",
		"Full re-reads of a known-SA source because change events were lost (netlink ENOBUFS), by source.", []string{"source"}, nil)
	sourceReconnDesc = prometheus.NewDesc("spiwatch_known_source_reconnects_total",
		"Connections to a known-SA source re-established after a loss (charon restarted), by source.", []string{"source"}, nil)
	sourceUpDesc = prometheus.NewDesc("spiwatch_known_source_up",
		"1 while a known-SA source is followed, 0 while spiwatch is cut off from it (retrying), by source.", []string{"source"}, nil)
	droppedDesc = prometheus.NewDesc("spiwatch_unknown_dropped_packets_total",
		"Unknown-SPI packets dropped (--action drop, above --drop-above per source), by interface and class.", []string{"interface", "class"}, nil)
	passedDesc = prometheus.NewDesc("spiwatch_unknown_passed_packets_total",
		"Unknown-SPI packets passed: all of them without --action drop, those under --drop-above with it; by interface and class.", []string{"interface", "class"}, nil)
	rateSourcesDesc = prometheus.NewDesc("spiwatch_drop_rate_sources",
		"Source addresses with a --drop-above token bucket.", nil, nil)
	rateCapDesc = prometheus.NewDesc("spiwatch_drop_rate_capacity",
		"Size of the --drop-above bucket table.", nil, nil)
	rateEvictDesc = prometheus.NewDesc("spiwatch_drop_rate_evictions_total",
		"--drop-above buckets evicted from the full table (an evicted source starts again with a full bucket).", nil, nil)
	rateFailDesc = prometheus.NewDesc("spiwatch_drop_rate_failures_total",
		"Unknown-SPI packets dropped because their source could not get a --drop-above bucket.", nil, nil)
	saLostDesc = prometheus.NewDesc("spiwatch_sa_lost_packets",
		"Estimated packets of each known SA lost before the gateway (sequence numbers skipped and not arriving later).", []string{"spi", "dst"}, nil)
	saLateDesc = prometheus.NewDesc("spiwatch_sa_late_packets_total",
		"Packets of each known SA that arrived behind the highest sequence number, within a 64-number window (reordered).", []string{"spi", "dst"}, nil)
	saDupDesc = prometheus.NewDesc("spiwatch_sa_duplicate_packets_total",
		"Packets of each known SA whose sequence number was seen before, within a 64-number window.", []string{"spi", "dst"}, nil)
	saReplayDesc = prometheus.NewDesc("spiwatch_sa_replay_suspect_packets_total",
		"Packets of each known SA 64 or more sequence numbers behind the highest (replays or duplicated paths).", []string{"spi", "dst"}, nil)
	saRestartDesc = prometheus.NewDesc("spiwatch_sa_restarts_total",
		"Times the sequence numbers of each known SA dropped back to a low number: the peer made a new SA with an SPI still held.", []string{"spi", "dst"}, nil)
	saOtherDesc = prometheus.NewDesc("spiwatch_sa_other_source_packets_total",
		"Packets of each known SA from another source (address or UDP port) than the first one seen.", []string{"spi", "dst"}, nil)
	saCollisionDesc = prometheus.NewDesc("spiwatch_sa_collision",
		"1 while a known SA receives packets from two or more sources within the collision window: someone else's traffic lands in the SA.", []string{"spi", "dst"}, nil)
	collisionsDesc = prometheus.NewDesc("spiwatch_spi_collisions",
		"SPIs (per destination) seen from two or more sources within the collision window, known and unknown.", nil, nil)
	ifaceUpDesc = prometheus.NewDesc("spiwatch_interface_up",
		"1 while a watched interface has the XDP program attached and its link up, 0 otherwise (deleted, detached, link down), "+
			"as of the check before the last report.", []string{"interface"}, nil)
	ifaceProblemDesc = prometheus.NewDesc("spiwatch_interface_problem",
		"1 for a watched interface that is not watched any more, or whose link is down, with why; absent while it is up.",
		[]string{"interface", "problem"}, nil)
	scrapeErrDesc = prometheus.NewDesc("spiwatch_scrape_errors_total",
		"Scrapes in which reading a BPF map failed.", nil, nil)
)

// Collector reads the maps at each scrape.
type Collector struct {
	src        Source
	ifMu       sync.Mutex // ifaces and names change on a rename or re-attach
	ifaces     []report.Iface
	names      map[uint32]string
	topUnknown int
	errors     atomic.Uint64 // scrapes with a failed map read
	bufMu      sync.Mutex
	buf        []maps.Unknown // the unknown table as last read, reused across scrapes
	// floorMu guards what keeps derived counters from going down between scrapes
	// (Prometheus takes any drop for a reset and counts the whole value again).
	floorMu sync.Mutex
	floor   map[string]float64 // highest value exported per derived counter series
	ikeRows map[ikeRowKey]ikeSeen
	ikeGone map[ikeAggKey]uint64 // packets of IKE rows evicted since start
	// Verdict diagnoses a row (nil: by its SPI alone), as in the reports.
	Verdict func(spi uint32, dst netip.Addr, firstSeen, lastSeen time.Time) string
	// Sources returns the known-SA sources' health (nil: none).
	Sources func() []sasource.Stats
	// CollisionWindow as in the reports (0: report.DefaultCollisionWindow).
	CollisionWindow time.Duration
	// DropAbove: the --drop-above buckets are exported when set.
	DropAbove uint32
}

// NewCollector exposes src for the watched interfaces; topUnknown rows of the
// unknown table (capped at MaxUnknownSeries) become labelled series.
func NewCollector(src Source, ifaces []report.Iface, topUnknown int) *Collector {
	c := &Collector{src: src, ifaces: slices.Clone(ifaces), names: map[uint32]string{}, topUnknown: min(max(topUnknown, 0), MaxUnknownSeries)}
	for _, i := range ifaces {
		c.names[uint32(i.Ifindex)] = i.Name
	}
	return c
}

// SetIface follows a watched interface's rename or re-attach (by counter slot).
func (c *Collector) SetIface(i report.Iface) {
	c.ifMu.Lock()
	defer c.ifMu.Unlock()
	for k := range c.ifaces {
		if c.ifaces[k].Slot == i.Slot {
			// A re-created interface's old rows keep its old ifindex: named alike,
			// a row of each would be two series with the same labels.
			delete(c.names, uint32(c.ifaces[k].Ifindex))
			c.ifaces[k] = i
			c.names[uint32(i.Ifindex)] = i.Name
		}
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{packetsDesc, bytesDesc, knownDesc, knownCapDesc, saPacketsDesc, saBytesDesc, saSeqDesc,
		entriesDesc, capacityDesc, insertsDesc, evictionsDesc, insertFailsDesc, unknownDesc, unknownShownDesc, verdictDesc, sourceErrDesc, sourceSAsDesc, sourceResyncDesc, sourceReconnDesc, sourceUpDesc, scrapeErrDesc,
		droppedDesc, passedDesc, rateSourcesDesc, rateCapDesc, rateEvictDesc, rateFailDesc, saLostDesc, saLateDesc, saDupDesc, saReplayDesc,
		saRestartDesc, saOtherDesc, saCollisionDesc, collisionsDesc, ifaceUpDesc, ifaceProblemDesc} {
		ch <- d
	}
	for _, d := range diagDescs {
		ch <- d
	}
}

// Collect implements prometheus.Collector: one read of every map.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	failed := false
	fail := func(err error) {
		if !failed {
			c.errors.Add(1)
			failed = true
		}
		ch <- prometheus.NewInvalidMetric(scrapeErrDesc, err)
	}
	defer func() {
		ch <- prometheus.MustNewConstMetric(scrapeErrDesc, prometheus.CounterValue, float64(c.errors.Load()))
	}()
	if c.Sources != nil {
		for _, s := range c.Sources() {
			up := 0.0
			if s.Connected {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(sourceErrDesc, prometheus.CounterValue, float64(s.Errors), s.Name)
			ch <- prometheus.MustNewConstMetric(sourceSAsDesc, prometheus.GaugeValue, float64(s.SAs), s.Name)
			ch <- prometheus.MustNewConstMetric(sourceResyncDesc, prometheus.CounterValue, float64(s.Resyncs), s.Name)
			ch <- prometheus.MustNewConstMetric(sourceReconnDesc, prometheus.CounterValue, float64(s.Reconnects), s.Name)
			ch <- prometheus.MustNewConstMetric(sourceUpDesc, prometheus.GaugeValue, up, s.Name)
		}
	}

	c.ifMu.Lock()
	ifaces := slices.Clone(c.ifaces)
	names := make(map[uint32]string, len(c.names))
	for k, v := range c.names {
		names[k] = v
	}
	c.ifMu.Unlock()
	for _, i := range ifaces {
		// Before the counters, which stay readable (and exported) after a loss.
		up, problem := 1.0, i.Problem
		if problem == "" && i.LinkDown {
			problem = "link down"
		}
		if problem != "" {
			up = 0
			ch <- prometheus.MustNewConstMetric(ifaceProblemDesc, prometheus.GaugeValue, 1, i.Name, problem)
		}
		ch <- prometheus.MustNewConstMetric(ifaceUpDesc, prometheus.GaugeValue, up, i.Name)
		cnt, err := c.src.Counters(i.Slot)
		if err != nil {
			fail(fmt.Errorf("reading counters of %s: %w", i.Name, err))
			continue
		}
		var dropped [classify.NumClasses]maps.Count
		droppedOK := true
		if d, ok := c.src.(report.Dropper); ok {
			if dropped, err = d.Dropped(i.Slot); err != nil {
				fail(fmt.Errorf("reading drop counts of %s: %w", i.Name, err))
				droppedOK = false // not 0: a counter that drops reads as a reset
			}
		}
		for _, cl := range []classify.Class{classify.ClassESP, classify.ClassESPInUDP} {
			if !droppedOK {
				break
			}
			u := cnt[cl][classify.OutcomeUnknown].Packets
			// Read after the class counters, dropped may hold packets u does not yet:
			// passed is kept from going back by that.
			passed := c.atLeast("passed/"+i.Name+"/"+cl.String(), float64(u-min(u, dropped[cl].Packets)))
			ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(dropped[cl].Packets), i.Name, cl.String())
			ch <- prometheus.MustNewConstMetric(passedDesc, prometheus.CounterValue, passed, i.Name, cl.String())
		}
		for cl := classify.Class(0); cl < classify.NumClasses; cl++ {
			for o := classify.Outcome(0); o < classify.NumOutcomes; o++ {
				if (o == classify.OutcomeNone) == (cl == classify.ClassESP || cl == classify.ClassESPInUDP) {
					continue // esp classes have known/unknown/reserved, the others none
				}
				v := cnt[cl][o]
				ch <- prometheus.MustNewConstMetric(packetsDesc, prometheus.CounterValue, float64(v.Packets), i.Name, cl.String(), o.String())
				ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(v.Bytes), i.Name, cl.String(), o.String())
			}
		}
	}

	if rl, ok := c.src.(report.RateLimited); ok && c.DropAbove > 0 {
		if rs, err := rl.RateTableStats(); err != nil {
			fail(err)
		} else {
			ch <- prometheus.MustNewConstMetric(rateSourcesDesc, prometheus.GaugeValue, float64(rs.Sources))
			ch <- prometheus.MustNewConstMetric(rateCapDesc, prometheus.GaugeValue, float64(rs.Capacity))
			ch <- prometheus.MustNewConstMetric(rateEvictDesc, prometheus.CounterValue, float64(rs.Evictions))
			ch <- prometheus.MustNewConstMetric(rateFailDesc, prometheus.CounterValue, float64(rs.Fails))
		}
	}
	window := c.CollisionWindow
	if window <= 0 {
		window = report.DefaultCollisionWindow
	}
	mono := report.MonoNow()
	wall := time.Now() // with mono: one conversion of BPF timestamps for every row
	toWall := func(ns uint64) time.Time {
		if ns == 0 {
			return time.Time{}
		}
		return wall.Add(-time.Duration(int64(mono - ns)))
	}
	collisions := 0
	if known, err := c.src.ListKnown(); err != nil {
		fail(err)
	} else {
		ch <- prometheus.MustNewConstMetric(knownDesc, prometheus.GaugeValue, float64(len(known)))
		ch <- prometheus.MustNewConstMetric(knownCapDesc, prometheus.GaugeValue, float64(c.src.KnownCapacity()))
		for _, k := range known {
			spi, dst := fmt.Sprintf("0x%08x", k.SPI), "any"
			if k.Dst.IsValid() {
				dst = k.Dst.String()
			}
			ch <- prometheus.MustNewConstMetric(saPacketsDesc, prometheus.CounterValue, float64(k.Packets), spi, dst)
			ch <- prometheus.MustNewConstMetric(saBytesDesc, prometheus.CounterValue, float64(k.Bytes), spi, dst)
			ch <- prometheus.MustNewConstMetric(saSeqDesc, prometheus.GaugeValue, float64(k.MaxSeq), spi, dst)
			ch <- prometheus.MustNewConstMetric(saLostDesc, prometheus.GaugeValue, float64(k.Seq.Lost), spi, dst)
			ch <- prometheus.MustNewConstMetric(saLateDesc, prometheus.CounterValue, float64(k.Seq.Late), spi, dst)
			ch <- prometheus.MustNewConstMetric(saDupDesc, prometheus.CounterValue, float64(k.Seq.Dups), spi, dst)
			ch <- prometheus.MustNewConstMetric(saReplayDesc, prometheus.CounterValue, float64(k.Seq.Replays), spi, dst)
			ch <- prometheus.MustNewConstMetric(saRestartDesc, prometheus.CounterValue, float64(k.Seq.Restarts), spi, dst)
			ch <- prometheus.MustNewConstMetric(saOtherDesc, prometheus.CounterValue, float64(k.OtherPackets), spi, dst)
			coll := 0.0
			if k.Collision(mono, uint64(window)) {
				coll = 1
				collisions++
			}
			ch <- prometheus.MustNewConstMetric(saCollisionDesc, prometheus.GaugeValue, coll, spi, dst)
		}
	}

	c.collectDiag(ch, names, fail)

	c.bufMu.Lock()
	defer c.bufMu.Unlock()
	snap, ts, err := c.src.UnknownTable(c.buf)
	if err != nil {
		fail(err)
		return
	}
	c.buf = snap
	ch <- prometheus.MustNewConstMetric(entriesDesc, prometheus.GaugeValue, float64(ts.Entries))
	ch <- prometheus.MustNewConstMetric(capacityDesc, prometheus.GaugeValue, float64(ts.Capacity))
	ch <- prometheus.MustNewConstMetric(insertsDesc, prometheus.CounterValue, float64(ts.Inserts))
	ch <- prometheus.MustNewConstMetric(evictionsDesc, prometheus.CounterValue, c.atLeast("evictions/unknown", float64(ts.Evictions)))
	ch <- prometheus.MustNewConstMetric(insertFailsDesc, prometheus.CounterValue, float64(ts.InsertFails))

	// Collisions before the rows are sorted: the result is by row index.
	type rowID struct {
		spi, ifindex uint32
		src, dst     netip.Addr
		sport, dport uint16
	}
	type spiDst struct {
		spi uint32
		dst netip.Addr
	}
	colliding := map[rowID]bool{}
	groups := map[spiDst]bool{}
	coll := report.UnknownCollisions(snap, mono, window)
	for i := range coll {
		u := &snap[i]
		colliding[rowID{u.SPI, u.Ifindex, u.Src, u.Dst, u.SrcPort, u.DstPort}] = true
		groups[spiDst{u.SPI, u.Dst}] = true
	}
	ch <- prometheus.MustNewConstMetric(collisionsDesc, prometheus.GaugeValue, float64(collisions+len(groups)))
	// Every row's verdict, as the reports sum them: a collision over the row's own.
	byVerdict := make(map[string]uint64, len(report.Verdicts))
	for i := range snap {
		v := report.Collision
		if _, ok := coll[i]; !ok {
			v = c.verdict(snap[i], toWall)
		}
		byVerdict[v] += snap[i].Packets
	}
	for _, v := range report.Verdicts {
		ch <- prometheus.MustNewConstMetric(verdictDesc, prometheus.GaugeValue, float64(byVerdict[v]), v)
	}

	// The rows with the most packets: a stable choice between scrapes, unlike rates.
	slices.SortFunc(snap, func(a, b maps.Unknown) int {
		return cmp.Or(cmp.Compare(b.Packets, a.Packets), cmp.Compare(a.SPI, b.SPI), a.Src.Compare(b.Src), a.Dst.Compare(b.Dst),
			cmp.Compare(a.SrcPort, b.SrcPort), cmp.Compare(a.DstPort, b.DstPort), cmp.Compare(a.Ifindex, b.Ifindex)) // the whole key: ties at the cap
	})
	shown := min(len(snap), c.topUnknown)
	for _, u := range snap[:shown] {
		verdict := c.verdict(u, toWall)
		if colliding[rowID{u.SPI, u.Ifindex, u.Src, u.Dst, u.SrcPort, u.DstPort}] {
			verdict = report.Collision
		}
		iface := names[u.Ifindex]
		if iface == "" {
			iface = fmt.Sprintf("if%d", u.Ifindex)
		}
		ch <- prometheus.MustNewConstMetric(unknownDesc, prometheus.CounterValue, float64(u.Packets),
			fmt.Sprintf("0x%08x", u.SPI), u.Src.String(), strconv.Itoa(int(u.SrcPort)), u.Dst.String(), strconv.Itoa(int(u.DstPort)),
			iface, verdict)
	}
	ch <- prometheus.MustNewConstMetric(unknownShownDesc, prometheus.GaugeValue, float64(len(snap)-shown))
}

// atLeast returns v, or the highest value returned before for series key: for
// counters derived from several reads (a difference of two counters, inserts −
// entries), which can come out a little lower when packets arrive between them.
func (c *Collector) atLeast(key string, v float64) float64 {
	c.floorMu.Lock()
	defer c.floorMu.Unlock()
	if c.floor == nil {
		c.floor = map[string]float64{}
	}
	if f := c.floor[key]; f > v {
		return f
	}
	c.floor[key] = v
	return v
}

// ListenAddr completes ADDR: a port alone (":9101" or "9101") binds 127.0.0.1, so
// metrics are not exposed to the network unless asked.
func ListenAddr(addr string) (string, error) {
	if _, err := strconv.Atoi(addr); err == nil {
		addr = ":" + addr
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--metrics-addr %q: want HOST:PORT or :PORT (%v)", addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("--metrics-addr %q: port must be 1-65535", addr)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// Listen opens the metrics port: done before anything is attached, so a port in
// use is an error at start, not after the program is on the interface.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listening on %s: %w", addr, err)
	}
	return ln, nil
}

// Serve serves /metrics from c on ln in the background. Close the returned server
// to stop.
func Serve(ln net.Listener, c *Collector) (*http.Server, error) {
	reg := prometheus.NewRegistry()
	// The process's own memory, fds, CPU and goroutines, next to what it counts:
	// a tool on a gateway should show that it stays small.
	for _, col := range []prometheus.Collector{c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "spiwatch: metrics are at /metrics", http.StatusNotFound)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return srv, nil
}

func (c *Collector) verdict(u maps.Unknown, toWall func(uint64) time.Time) string {
	if c.Verdict == nil {
		return report.VerdictOf(u.SPI)
	}
	return c.Verdict(u.SPI, u.Dst, toWall(u.FirstSeenNs), toWall(u.LastSeenNs))
}
