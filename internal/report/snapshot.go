// SPDX-License-Identifier: Apache-2.0

// Package report turns the BPF maps into per-interval snapshots with rates, and
// renders them as text or JSON lines.
package report

import (
	"fmt"
	"net/netip"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/maps"
)

// Source is what a Reporter reads: *maps.Maps.
type Source interface {
	Counters(slot int) (maps.Counters, error)
	UnknownSnapshot() ([]maps.Unknown, error)
	UnknownTableStats(entries int) (maps.TableStats, error)
	ListKnown() ([]maps.KnownSA, error)
}

// Iface is a watched interface.
type Iface struct {
	Name    string
	Ifindex int
	Mode    string
	Slot    int
}

// IfaceCounts is one interface's counters at a snapshot, with the change since the
// previous one.
type IfaceCounts struct {
	Iface
	Now, Delta maps.Counters
}

// UnknownRow is an unknown-SPI table row with its rate.
type UnknownRow struct {
	maps.Unknown
	Iface     string
	Rate      float64 // packets per second over the last interval
	FirstSeen time.Time
	LastSeen  time.Time
	Verdict   string // "reserved" (SPI 0-255) or "unknown"
}

// KnownRow is a known SA with wall-clock last-seen time.
type KnownRow struct {
	maps.KnownSA
	LastSeen time.Time // zero if never seen
}

// Snapshot is everything one report shows.
type Snapshot struct {
	Time     time.Time
	Interval time.Duration // since the previous snapshot (or the start)
	Action   string        // "pass" or "drop" (unknown-SPI packets)
	Ifaces   []IfaceCounts
	Total    IfaceCounts  // all interfaces
	Unknown  []UnknownRow // sorted by rate, then packets, highest first
	Table    maps.TableStats
	Known    []KnownRow
}

type unknownID struct {
	spi          uint32
	src, dst     netip.Addr
	sport, dport uint16
	ifindex      uint32
}

// Reporter takes snapshots and remembers the previous one for rates.
type Reporter struct {
	// Action is what the program does with unknown-SPI packets ("pass" or
	// "drop"), shown in every report so nobody wonders whether traffic is dropped.
	Action string

	src      Source
	ifaces   []Iface
	names    map[uint32]string
	prevTime time.Time
	prev     map[int]maps.Counters
	prevUnk  map[unknownID]uint64
	// now returns wall time and CLOCK_MONOTONIC in ns (the BPF timestamps' clock).
	now func() (time.Time, uint64)
}

// New starts a Reporter; rates of the first snapshot are since now.
func New(src Source, ifaces []Iface) (*Reporter, error) {
	r := &Reporter{src: src, ifaces: ifaces, names: map[uint32]string{}, prev: map[int]maps.Counters{}, now: clockNow}
	for _, i := range ifaces {
		r.names[uint32(i.Ifindex)] = i.Name
		c, err := src.Counters(i.Slot)
		if err != nil {
			return nil, err
		}
		r.prev[i.Slot] = c
	}
	r.prevTime, _ = r.now()
	snap, err := src.UnknownSnapshot()
	if err != nil {
		return nil, err
	}
	r.prevUnk = make(map[unknownID]uint64, len(snap))
	for _, u := range snap {
		r.prevUnk[idOf(u)] = u.Packets
	}
	return r, nil
}

func clockNow() (time.Time, uint64) {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Now(), uint64(ts.Nano())
}

func idOf(u maps.Unknown) unknownID {
	return unknownID{u.SPI, u.Src, u.Dst, u.SrcPort, u.DstPort, u.Ifindex}
}

// Take reads the maps and returns a snapshot with rates since the previous one.
func (r *Reporter) Take() (*Snapshot, error) {
	wall, mono := r.now()
	toWall := func(ns uint64) time.Time {
		if ns == 0 {
			return time.Time{}
		}
		return wall.Add(-time.Duration(int64(mono - ns)))
	}
	s := &Snapshot{Time: wall, Interval: wall.Sub(r.prevTime), Action: r.Action}
	secs := s.Interval.Seconds()
	s.Total.Name = "all"
	for _, i := range r.ifaces {
		c, err := r.src.Counters(i.Slot)
		if err != nil {
			return nil, fmt.Errorf("reading counters of %s: %w", i.Name, err)
		}
		ic := IfaceCounts{Iface: i, Now: c, Delta: sub(c, r.prev[i.Slot])}
		r.prev[i.Slot] = c
		s.Ifaces = append(s.Ifaces, ic)
		s.Total.Now = add(s.Total.Now, ic.Now)
		s.Total.Delta = add(s.Total.Delta, ic.Delta)
	}

	snap, err := r.src.UnknownSnapshot()
	if err != nil {
		return nil, err
	}
	if s.Table, err = r.src.UnknownTableStats(len(snap)); err != nil {
		return nil, err
	}
	cur := make(map[unknownID]uint64, len(snap))
	s.Unknown = make([]UnknownRow, 0, len(snap))
	for _, u := range snap {
		id := idOf(u)
		cur[id] = u.Packets
		row := UnknownRow{Unknown: u, Iface: r.ifaceName(u.Ifindex), FirstSeen: toWall(u.FirstSeenNs), LastSeen: toWall(u.LastSeenNs),
			Verdict: verdictOf(u.SPI)}
		if secs > 0 {
			row.Rate = float64(u.Packets-min(u.Packets, r.prevUnk[id])) / secs
		}
		s.Unknown = append(s.Unknown, row)
	}
	r.prevUnk = cur
	r.prevTime = wall
	sort.Slice(s.Unknown, func(a, b int) bool {
		x, y := s.Unknown[a], s.Unknown[b]
		if x.Rate != y.Rate {
			return x.Rate > y.Rate
		}
		if x.Packets != y.Packets {
			return x.Packets > y.Packets
		}
		return x.SPI < y.SPI
	})

	known, err := r.src.ListKnown()
	if err != nil {
		return nil, err
	}
	for _, k := range known {
		s.Known = append(s.Known, KnownRow{KnownSA: k, LastSeen: toWall(k.LastSeenNs)})
	}
	sort.Slice(s.Known, func(a, b int) bool {
		if s.Known[a].SPI != s.Known[b].SPI {
			return s.Known[a].SPI < s.Known[b].SPI
		}
		return s.Known[a].Dst.Less(s.Known[b].Dst)
	})
	return s, nil
}

func (r *Reporter) ifaceName(ifindex uint32) string {
	if n, ok := r.names[ifindex]; ok {
		return n
	}
	return fmt.Sprintf("if%d", ifindex)
}

func sub(a, b maps.Counters) maps.Counters {
	var d maps.Counters
	for cl := range a {
		for oc := range a[cl] {
			d[cl][oc] = maps.Count{Packets: a[cl][oc].Packets - min(a[cl][oc].Packets, b[cl][oc].Packets),
				Bytes: a[cl][oc].Bytes - min(a[cl][oc].Bytes, b[cl][oc].Bytes)}
		}
	}
	return d
}

func add(a, b maps.Counters) maps.Counters {
	for cl := range a {
		for oc := range a[cl] {
			a[cl][oc] = a[cl][oc].Add(b[cl][oc])
		}
	}
	return a
}

// outcomesOf lists the outcomes a class can have.
func outcomesOf(c classify.Class) []classify.Outcome {
	if c == classify.ClassESP || c == classify.ClassESPInUDP {
		return []classify.Outcome{classify.OutcomeKnown, classify.OutcomeUnknown, classify.OutcomeReserved}
	}
	return []classify.Outcome{classify.OutcomeNone}
}

// verdictOf says why an SPI is in the unknown table.
func verdictOf(spi uint32) string {
	if spi < 256 {
		return classify.OutcomeReserved.String()
	}
	return classify.OutcomeUnknown.String()
}
