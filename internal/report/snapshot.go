// SPDX-License-Identifier: Apache-2.0

// Package report turns the BPF maps into per-interval snapshots with rates, and
// renders them as text or JSON lines.
package report

import (
	"cmp"
	"fmt"
	"hash/maphash"
	"net/netip"
	"slices"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/sasource"
	"github.com/spiwatch/spiwatch/maps"
)

// Source is what a Reporter reads: *maps.Maps.
type Source interface {
	Counters(slot int) (maps.Counters, error)
	// UnknownTable reads the unknown-SPI table into buf[:0], with its figures
	// as of that read.
	UnknownTable(buf []maps.Unknown) ([]maps.Unknown, maps.TableStats, error)
	ListKnown() ([]maps.KnownSA, error)
}

// Iface is a watched interface.
type Iface struct {
	Name    string
	Ifindex int
	Mode    string
	Slot    int
	// Problem is empty while the program is attached, else what happened to the
	// interface ("deleted", "program detached by someone else"); its counts stay.
	Problem string
	// LinkDown: attached, but the link is down (or has no carrier): nothing arrives.
	LinkDown bool
}

// IfaceCounts is one interface's counters at a snapshot, with the change since the
// previous one.
type IfaceCounts struct {
	Iface
	Now, Delta maps.Counters
	// Dropped are the unknown-SPI packets the program dropped (--action drop),
	// per class: part of the class's unknown count; the rest passed.
	Dropped, DroppedDelta [classify.NumClasses]maps.Count
}

// UnknownRow is an unknown-SPI table row with its rate.
type UnknownRow struct {
	maps.Unknown
	Iface     string
	Rate      float64 // packets per second over the last interval
	FirstSeen time.Time
	LastSeen  time.Time
	Verdict   string // reserved, unknown, collision, or with known-SA history stale or rekey-race
	// Sources are every source of the row's SPI towards its destination within
	// the collision window, when there are several (verdict collision).
	Sources []maps.SASource
}

// KnownRow is a known SA with wall-clock last-seen time.
type KnownRow struct {
	maps.KnownSA
	LastSeen time.Time // zero if never seen
	// Collision: packets from two or more sources within the collision window
	// (ActiveSources): someone else's traffic lands in this SA.
	Collision     bool
	ActiveSources []maps.SASource
	// From names the known-SA sources that gave the SA ("xfrm", "vici SOCKET",
	// "file PATH", "--known-spi"), sorted; empty when unknown (spiwatch read).
	From []string
}

// Snapshot is everything one report shows.
type Snapshot struct {
	Time     time.Time
	Mono     uint64        // CLOCK_MONOTONIC at Time: BPF stamps convert against it (0: the clock now)
	Interval time.Duration // since the previous snapshot (or the start)
	Action   string        // "pass" or "drop" (unknown-SPI packets)
	Source   string        // a capture file, for spiwatch read; empty when live
	Partial  string        // why the capture was not read to its end; empty if it was
	Ifaces   []IfaceCounts
	Total    IfaceCounts  // all interfaces
	Unknown  []UnknownRow // the top rows (Reporter.Top) by rate, then packets
	// UnknownRows is how many rows the unknown table held.
	UnknownRows int
	// UnknownByVerdict are the packets of every row of the unknown table (not
	// only the top ones) by verdict: rekey races apart from the peers' faults. A
	// sum over the rows as read, so an evicted row's packets leave it.
	UnknownByVerdict map[string]uint64
	// NewUnknown are the rows that appeared since the previous snapshot.
	NewUnknown []UnknownRow
	// VerdictChanges are rows whose verdict changed since the previous snapshot.
	VerdictChanges []VerdictChange
	// MoreEvents counts new rows and verdict changes past maxEvents per snapshot
	// (a flood makes tens of thousands per second; the event log is rate-limited
	// far below that anyway, and counts these as held back).
	MoreEvents int
	Table      maps.TableStats
	Known      []KnownRow
	// KnownEvents are known SAs that became collisions, restarted or showed
	// replay suspects since the previous snapshot.
	KnownEvents []KnownEvent
	// Collisions counts the SPIs (per destination) in collision: known SAs and
	// unknown-table groups.
	Collisions int
	// CollisionWindow is the window the collisions were judged over.
	CollisionWindow time.Duration
	// DropAbove is the --drop-above rate (0: none); Rate its buckets' table, read
	// when DropAbove is set.
	DropAbove uint32
	Rate      *maps.RateStats
	// Sources are the known-SA sources' health (none for spiwatch read).
	Sources []sasource.Stats
	// ICMP are the ICMP errors quoting ESP (class icmp-esp), highest rate first.
	ICMP      []ICMPRow
	ICMPTable maps.TableStats
	// IKE is the IKE activity per peer, version, exchange and direction.
	IKE      []IKERow
	IKETable maps.TableStats
	// NewICMP are the ICMP-error rows that appeared since the previous snapshot
	// (at most maxEvents; more count in MoreEvents).
	NewICMP []ICMPRow
	// IKEInitStorms are the peers whose IKE_SA_INIT request rate is above
	// Reporter.IKEInitRate: in every snapshot while it stays above.
	IKEInitStorms []IKEInitStorm
	// NewIKEInitStorms are those of IKEInitStorms that went above since the
	// previous snapshot (the event log's news).
	NewIKEInitStorms []IKEInitStorm
}

// maxEvents bounds NewUnknown and VerdictChanges per snapshot.
const maxEvents = 1024

// VerdictChange is a row whose verdict changed (say rekey-race, then stale).
type VerdictChange struct {
	Row  UnknownRow
	From string
}

// rowState is what a Reporter remembers of a row between snapshots: 16 bytes,
// so that two maps of a full table's 65,536 rows stay small.
type rowState struct {
	packets uint64
	first   uint32 // the row's first-seen ns, low half: a row evicted and made again has another
	verdict uint8  // Reporter.verdictNames index + 1; 0: none yet
}

// rowKey is a row's identity hashed to 64 bits (maphash of its unknownID): a map
// keyed by it is a third of one keyed by the 44-byte identity. Two of 65,536
// rows colliding is a 1-in-10^10 chance per report, and would only mix up their
// rates for one interval.
type rowKey uint64

// unknownID identifies a row across snapshots.
type unknownID struct {
	src, dst     [16]byte
	spi, ifindex uint32
	sport, dport uint16
}

// Reporter takes snapshots and remembers the previous one for rates.
type Reporter struct {
	// Action is what the program does with unknown-SPI packets ("pass" or
	// "drop"), shown in every report so nobody wonders whether traffic is dropped.
	Action string
	// Top limits Snapshot.Unknown to the highest-rate rows; 0 keeps all.
	Top int

	src      Source
	ifaces   []Iface
	names    map[uint32]string
	prevTime time.Time
	prev     map[int]maps.Counters
	prevUnk  map[rowKey]rowState
	spareUnk map[rowKey]rowState // the map before prevUnk, reused
	seed     maphash.Seed
	// verdictNames are the verdicts seen so far; rowState holds their index.
	verdictNames []string
	// Verdict diagnoses a row seen from firstSeen to lastSeen; nil: VerdictOf (unknown or
	// reserved by the SPI alone).
	Verdict func(spi uint32, dst netip.Addr, firstSeen, lastSeen time.Time) string
	// Sources reports the known-SA sources' health (nil: none to show).
	Sources func() []sasource.Stats
	// KnownFrom names the sources of a known SA (nil: not shown).
	KnownFrom func(sa maps.SA) []string
	// IKEInitRate is the IKE_SA_INIT requests per second (over IKEInitWindow)
	// from one peer above which a snapshot reports an IKEInitStorm; 0: never.
	IKEInitRate float64
	diag        diagState
	// CollisionWindow: how recently two sources must both have sent an SPI for
	// a collision; 0: DefaultCollisionWindow.
	CollisionWindow time.Duration
	// DropAbove is the --drop-above rate, shown in reports (0: none).
	DropAbove   uint32
	prevDropped map[int][classify.NumClasses]maps.Count
	prevKnown   map[maps.SA]knownState
	snapBuf     []maps.Unknown // the table as last read, reused
	// now returns wall time and CLOCK_MONOTONIC in ns (the BPF timestamps' clock).
	now func() (time.Time, uint64)
}

// SetIface updates the watched interface of counter slot i.Slot: its name (after a
// rename), ifindex and mode (after a re-attach), problem and link state.
func (r *Reporter) SetIface(i Iface) {
	for k := range r.ifaces {
		if r.ifaces[k].Slot == i.Slot {
			// Rows of a re-created interface's old ifindex are not its: "ifN".
			delete(r.names, uint32(r.ifaces[k].Ifindex))
			r.ifaces[k] = i
			r.names[uint32(i.Ifindex)] = i.Name
		}
	}
}

// New starts a Reporter; rates of the first snapshot are since now.
func New(src Source, ifaces []Iface) (*Reporter, error) {
	r := &Reporter{src: src, ifaces: slices.Clone(ifaces), names: map[uint32]string{}, prev: map[int]maps.Counters{}, now: clockNow, seed: maphash.MakeSeed(),
		prevDropped: map[int][classify.NumClasses]maps.Count{}, prevKnown: map[maps.SA]knownState{}}
	for _, i := range ifaces {
		r.names[uint32(i.Ifindex)] = i.Name
		c, err := src.Counters(i.Slot)
		if err != nil {
			return nil, err
		}
		r.prev[i.Slot] = c
		if d, ok := src.(Dropper); ok {
			if r.prevDropped[i.Slot], err = d.Dropped(i.Slot); err != nil {
				return nil, err
			}
		}
	}
	r.prevTime, _ = r.now()
	if d, ok := src.(DiagSource); ok { // counts so far are no rate
		if err := r.primeDiag(d); err != nil {
			return nil, err
		}
	}
	snap, _, err := src.UnknownTable(nil)
	if err != nil {
		return nil, err
	}
	r.prevUnk = make(map[rowKey]rowState, len(snap))
	for _, u := range snap {
		r.prevUnk[r.keyOf(u)] = rowState{packets: u.Packets, first: uint32(u.FirstSeenNs)}
	}
	// Pinned maps keep a previous run's restarts and replays: not news. A
	// collision still is, so it is not remembered.
	known, err := src.ListKnown()
	if err != nil {
		return nil, err
	}
	for _, k := range known {
		r.prevKnown[k.SA] = knownState{restarts: k.Seq.Restarts, replays: k.Seq.Replays}
	}
	return r, nil
}

// MonoToWall turns a BPF timestamp (CLOCK_MONOTONIC ns) into wall-clock time.
func MonoToWall(ns uint64) time.Time {
	wall, mono := clockNow()
	if ns == 0 {
		return time.Time{}
	}
	return wall.Add(-time.Duration(int64(mono - ns)))
}

// WallOf turns a BPF timestamp into wall-clock time as of the snapshot, as its
// rows were: the same stamp gives the same time wherever it is shown.
func (s *Snapshot) WallOf(ns uint64) time.Time {
	if s.Mono == 0 {
		return MonoToWall(ns)
	}
	if ns == 0 {
		return time.Time{}
	}
	return s.Time.Add(-time.Duration(int64(s.Mono - ns)))
}

// MonoNow is CLOCK_MONOTONIC in ns, the clock of the BPF timestamps.
func MonoNow() uint64 {
	_, mono := clockNow()
	return mono
}

func clockNow() (time.Time, uint64) {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Now(), uint64(ts.Nano())
}

func idOf(u maps.Unknown) unknownID {
	return unknownID{u.Src.As16(), u.Dst.As16(), u.SPI, u.Ifindex, u.SrcPort, u.DstPort}
}

func (r *Reporter) keyOf(u maps.Unknown) rowKey {
	return rowKey(maphash.Comparable(r.seed, idOf(u)))
}

// verdictCode is v's index in verdictNames + 1, adding it when new.
func (r *Reporter) verdictCode(v string) uint8 {
	for i, n := range r.verdictNames {
		if n == v {
			return uint8(i + 1)
		}
	}
	if len(r.verdictNames) == 255 {
		return 0 // never: verdicts are a handful of names
	}
	r.verdictNames = append(r.verdictNames, v)
	return uint8(len(r.verdictNames))
}

// TopIndices returns the indices of the top rows (all when top is 0) by rate,
// then packets, then SPI and addresses. With a limit it keeps only the best top while scanning,
// so a 65,536-row table costs one pass, not a sort.
func TopIndices(rows []maps.Unknown, rates []float64, top int) []int32 {
	before := func(a, b int32) int { // <0: a ranks above b
		switch {
		case rates[a] != rates[b]:
			return cmp.Compare(rates[b], rates[a])
		case rows[a].Packets != rows[b].Packets:
			return cmp.Compare(rows[b].Packets, rows[a].Packets)
		}
		x, y := &rows[a], &rows[b] // ties: a stable order, for reports that compare
		return cmp.Or(cmp.Compare(x.SPI, y.SPI), x.Dst.Compare(y.Dst), x.Src.Compare(y.Src),
			cmp.Compare(x.DstPort, y.DstPort), cmp.Compare(x.SrcPort, y.SrcPort), cmp.Compare(x.Ifindex, y.Ifindex))
	}
	if top <= 0 || top >= len(rows) {
		idx := make([]int32, len(rows))
		for i := range idx {
			idx[i] = int32(i)
		}
		slices.SortFunc(idx, before)
		return idx
	}
	best := make([]int32, 0, top+1) // sorted, best first
	for i := range rows {
		j := int32(i)
		if len(best) == top && before(j, best[top-1]) >= 0 {
			continue
		}
		at, _ := slices.BinarySearchFunc(best, j, before)
		best = slices.Insert(best, at, j)
		if len(best) > top {
			best = best[:top]
		}
	}
	return best
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
	window := r.CollisionWindow
	if window <= 0 {
		window = DefaultCollisionWindow
	}
	s := &Snapshot{Time: wall, Mono: mono, Interval: wall.Sub(r.prevTime), Action: r.Action, CollisionWindow: window, DropAbove: r.DropAbove}
	if r.Sources != nil {
		s.Sources = r.Sources()
	}
	secs := s.Interval.Seconds()
	s.Total.Name = "all"
	for _, i := range r.ifaces {
		c, err := r.src.Counters(i.Slot)
		if err != nil {
			return nil, fmt.Errorf("reading counters of %s: %w", i.Name, err)
		}
		ic := IfaceCounts{Iface: i, Now: c, Delta: sub(c, r.prev[i.Slot])}
		r.prev[i.Slot] = c
		if d, ok := r.src.(Dropper); ok {
			if ic.Dropped, err = d.Dropped(i.Slot); err != nil {
				return nil, fmt.Errorf("reading drop counts of %s: %w", i.Name, err)
			}
			prev := r.prevDropped[i.Slot]
			for cl := range ic.Dropped {
				ic.DroppedDelta[cl] = maps.Count{Packets: ic.Dropped[cl].Packets - min(ic.Dropped[cl].Packets, prev[cl].Packets),
					Bytes: ic.Dropped[cl].Bytes - min(ic.Dropped[cl].Bytes, prev[cl].Bytes)}
				s.Total.Dropped[cl] = s.Total.Dropped[cl].Add(ic.Dropped[cl])
				s.Total.DroppedDelta[cl] = s.Total.DroppedDelta[cl].Add(ic.DroppedDelta[cl])
			}
			r.prevDropped[i.Slot] = ic.Dropped
		}
		s.Ifaces = append(s.Ifaces, ic)
		s.Total.Now = add(s.Total.Now, ic.Now)
		s.Total.Delta = add(s.Total.Delta, ic.Delta)
	}

	snap, table, err := r.src.UnknownTable(r.snapBuf)
	if err != nil {
		return nil, err
	}
	r.snapBuf = snap
	s.Table = table
	if rl, ok := r.src.(RateLimited); ok && r.DropAbove > 0 {
		rs, err := rl.RateTableStats()
		if err != nil {
			return nil, err
		}
		s.Rate = &rs
	}
	coll := UnknownCollisions(snap, mono, window)
	groups := map[spiDst]bool{}
	// Rates need the previous packet counts; two maps take turns so a flood's
	// 65,536 rows are not reallocated every interval.
	cur := r.spareUnk
	if cur == nil {
		cur = make(map[rowKey]rowState, len(snap))
	}
	clear(cur)
	rates := make([]float64, len(snap))
	verdicts := make([]string, len(snap))
	s.UnknownByVerdict = make(map[string]uint64, len(Verdicts))
	row := func(i int) UnknownRow {
		u := snap[i]
		return UnknownRow{Unknown: u, Iface: r.ifaceName(u.Ifindex), Rate: rates[i],
			FirstSeen: toWall(u.FirstSeenNs), LastSeen: toWall(u.LastSeenNs), Verdict: verdicts[i], Sources: coll[i]}
	}
	for i, u := range snap {
		id := r.keyOf(u)
		prev, seen := r.prevUnk[id]
		if seen && prev.first != uint32(u.FirstSeenNs) {
			prev.packets = 0 // evicted and made again between two reports: all its packets are new
		}
		if secs > 0 {
			rates[i] = float64(u.Packets-min(u.Packets, prev.packets)) / secs
		}
		verdicts[i] = VerdictOf(u.SPI)
		if r.Verdict != nil {
			verdicts[i] = r.Verdict(u.SPI, u.Dst, toWall(u.FirstSeenNs), toWall(u.LastSeenNs))
		}
		if _, ok := coll[i]; ok {
			verdicts[i] = Collision // says more than stale or unknown: two peers use it
			groups[spiDst{u.SPI, u.Dst.As16()}] = true
		}
		s.UnknownByVerdict[verdicts[i]] += u.Packets
		code := r.verdictCode(verdicts[i])
		cur[id] = rowState{packets: u.Packets, first: uint32(u.FirstSeenNs), verdict: code}
		switch {
		case !seen && len(s.NewUnknown) < maxEvents:
			s.NewUnknown = append(s.NewUnknown, row(i))
		case !seen:
			s.MoreEvents++
		case prev.verdict != 0 && prev.verdict != code && len(s.VerdictChanges) < maxEvents:
			s.VerdictChanges = append(s.VerdictChanges, VerdictChange{Row: row(i), From: r.verdictNames[prev.verdict-1]})
		case prev.verdict != 0 && prev.verdict != code:
			s.MoreEvents++
		}
	}
	r.spareUnk, r.prevUnk = r.prevUnk, cur
	prevTime := r.prevTime
	r.prevTime = wall
	s.UnknownRows = len(snap)
	// Full rows only for what the report shows.
	for _, i := range TopIndices(snap, rates, r.Top) {
		s.Unknown = append(s.Unknown, row(int(i)))
	}

	known, err := r.src.ListKnown()
	if err != nil {
		return nil, err
	}
	s.Collisions = len(groups)
	seen := make(map[maps.SA]knownState, len(known))
	for _, k := range known {
		row := KnownRow{KnownSA: k, LastSeen: toWall(k.LastSeenNs)}
		if r.KnownFrom != nil {
			row.From = r.KnownFrom(k.SA)
		}
		if act := k.ActiveSources(mono, uint64(window)); len(act) >= 2 {
			row.Collision, row.ActiveSources = true, act
			s.Collisions++
		}
		s.Known = append(s.Known, row)
		st := knownState{collision: row.Collision, restarts: k.Seq.Restarts, replays: k.Seq.Replays}
		prev, had := r.prevKnown[k.SA]
		seen[k.SA] = st
		if row.Collision && !prev.collision {
			s.KnownEvents = append(s.KnownEvents, KnownEvent{Row: row, What: "collision"})
		}
		if had && st.restarts > prev.restarts || !had && st.restarts > 0 {
			s.KnownEvents = append(s.KnownEvents, KnownEvent{Row: row, What: "restart", New: st.restarts - min(st.restarts, prev.restarts)})
		}
		if had && st.replays > prev.replays || !had && st.replays > 0 {
			s.KnownEvents = append(s.KnownEvents, KnownEvent{Row: row, What: "replay", New: st.replays - min(st.replays, prev.replays)})
		}
	}
	r.prevKnown = seen
	SortKnown(s.Known)
	if d, ok := r.src.(DiagSource); ok {
		if err := r.takeDiag(s, d, prevTime, toWall); err != nil {
			return nil, err
		}
	}
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

// Verdicts are the verdicts of unknown-table rows, in the order reports list them
// (knownset gives the first three and reserved, UnknownCollisions collision).
var Verdicts = []string{"unknown", "stale", "rekey-race", Collision, "reserved"}

// VerdictOf says why an SPI is in the unknown table.
func VerdictOf(spi uint32) string {
	if spi < 256 {
		return classify.OutcomeReserved.String()
	}
	return classify.OutcomeUnknown.String()
}

// SortKnown orders known SAs by SPI, then destination.
func SortKnown(k []KnownRow) {
	sort.Slice(k, func(a, b int) bool {
		if k[a].SPI != k[b].SPI {
			return k[a].SPI < k[b].SPI
		}
		return k[a].Dst.Less(k[b].Dst)
	})
}
