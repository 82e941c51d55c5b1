// SPDX-License-Identifier: Apache-2.0

// Package offline classifies a packet capture the way spiwatch classifies live
// traffic, and builds the same report. By default every frame goes through the real
// XDP program with BPF_PROG_TEST_RUN (root); the Go reference classifier does it
// without privileges. Both must agree on every frame.
//
// The unknown-SPI table holds Settings.UnknownMax rows in both engines: the
// program runs on one CPU, so its table is loaded that many times the possible
// CPUs (the kernel gives each CPU an even share of an LRU with one list per CPU),
// and the reference keeps an LRU of that many rows. While a capture's rows fit,
// both report the same, row for row. Past that both evict, count evictions
// (inserts - table rows) and keep every packet in the class counts, but the rows
// kept can differ: the reference evicts the least recently seen row, one at a
// time; the kernel's LRU is approximate (a second chance for rows looked up since
// the last pass, up to 4 rows freed at once), and the program's per-CPU front
// goes on counting a row the table has just evicted (such rows are reported, not
// counted as table entries). The ICMP-error and IKE tables do the same with
// their 4,096 and 16,384 rows. Memory is bounded by the tables' sizes, not the
// capture's length.
//
// Frames cut by the capture's snap length are classified and counted as they
// were on the wire where the captured bytes decide their class: see cut.go.
package offline

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/capread"
	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

// ifindex is the interface every row is recorded on: BPF test runs without a
// context run as if received on the namespace's loopback.
const ifindex = 1

// Options say how to classify.
type Options struct {
	Settings loader.Settings // NAT-T ports, table sizes; the action does not apply
	Known    []maps.SA
	NoBPF    bool // use the Go reference classifier
	Top      int  // unknown rows in the report (0: all)
}

// Read classifies every packet of the capture at path and returns the report. A
// capture that ends early (truncated, corrupt, a pcapng interface of a link type
// that cannot be read) still gives a report of what was read, marked partial,
// together with the error; one whose first packet cannot be read for its link
// type gives only the error.
func Read(path string, o Options) (*report.Snapshot, error) {
	r, err := capread.Open(path)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return ReadFrom(r, filepath.Base(path), o)
}

// acc accumulates what the capture holds, in the report's terms. Its memory
// is bounded by the tables' sizes, whatever the capture's length.
type acc struct {
	counters maps.Counters
	// unknown, icmp and ike are the reference's tables: LRUs of the program's
	// sizes, with each row's capture times. With the program counting, they
	// hold only the capture times of rows its tables may hold: pruned to the
	// rows they do hold whenever they grow past twice the tables' size.
	unknown *lru[rowKey, unknownRow]
	icmp    *lru[icmpKey, report.ICMPRow]
	ike     *lru[ikeKey, report.IKERow]
	// rows, icmpRows and ikeRows are the tables' rows at the end of the
	// capture, from the reference's tables or the program's maps.
	rows        map[rowKey]*maps.Unknown
	icmpRows    map[icmpKey]*report.ICMPRow
	ikeRows     map[ikeKey]*report.IKERow
	known       map[maps.SA]*report.KnownRow
	states      map[maps.SA]*maps.SAState // the reference's per-SA state (without BPF)
	first, last time.Time
	packets     int
	// wireExtra is, per class, the bytes on the wire of the frames classified
	// as captured (cut before their class's bytes, or runts) beyond the bytes
	// classified, which the classifiers count.
	wireExtra [classify.NumClasses]int64
	capacity  int // of the unknown-SPI table
	tableRows int // with BPF: the rows that are table entries (maps.TableRows)
	// pruneAt is, for the unknown, ICMP and IKE times with BPF, how many rows
	// they may have before they are pruned.
	pruneAt [3]int
}

// unknownRow is a row of the reference's unknown-SPI table.
type unknownRow struct {
	maps.Unknown
	first, last time.Time // capture times
}

// icmpKey and ikeKey are the program's keys of the ICMP-error and IKE tables.
type icmpKey struct {
	reporter netip.Addr
	classify.ICMPError
}

type ikeKey struct {
	peer                   netip.Addr
	version, exchange, dir uint8
}

func icmpKeyOf(reporter netip.Addr, e classify.ICMPError) icmpKey {
	e.MTU = 0 // a value, not part of the key
	return icmpKey{reporter, e}
}

type rowKey struct {
	spi          uint32
	src, dst     netip.Addr
	sport, dport uint16
}

// ReadFrom is Read on an open capture; name labels the report.
func ReadFrom(r *capread.Reader, name string, o Options) (*report.Snapshot, error) {
	capacity := o.Settings.UnknownMax
	if capacity == 0 {
		capacity = loader.DefaultUnknownMax
	}
	a := &acc{known: map[maps.SA]*report.KnownRow{}, states: map[maps.SA]*maps.SAState{}, capacity: int(capacity)}
	if o.NoBPF {
		a.unknown = newLRU[rowKey, unknownRow](a.capacity)
		a.icmp = newLRU[icmpKey, report.ICMPRow](loader.DefaultICMPMax)
		a.ike = newLRU[ikeKey, report.IKERow](loader.DefaultIKEMax)
	} else {
		a.unknown = newLRU[rowKey, unknownRow](0)
		a.icmp = newLRU[icmpKey, report.ICMPRow](0)
		a.ike = newLRU[ikeKey, report.IKERow](0)
		for i, n := range []int{a.capacity, loader.DefaultICMPMax, loader.DefaultIKEMax} {
			a.pruneAt[i] = 2*n + 1024
		}
	}
	cfg := classify.Config{NATTPorts: o.Settings.NATTPorts}
	set := classify.SASet{}
	for _, sa := range o.Known {
		set.Add(sa.SPI, sa.Dst)
		// Every known SA is reported, with traffic or not, as the program's map
		// lists them.
		sa.Dst = sa.Dst.Unmap()
		a.known[sa] = &report.KnownRow{KnownSA: maps.KnownSA{SA: sa}}
	}

	var run func([]byte) error
	mode := "reference"
	var objs *loader.Objects
	if !o.NoBPF {
		// The run is on one CPU, which gets its share of the table: the table is
		// made that many times larger, so that the share is the size asked for.
		ncpu, err := ebpf.PossibleCPU()
		if err != nil {
			return nil, fmt.Errorf("counting possible CPUs: %w", err)
		}
		settings := o.Settings
		if uint64(capacity)*uint64(ncpu) > math.MaxUint32 {
			return nil, fmt.Errorf("an unknown-SPI table of %d rows on one of %d CPUs needs more than 2^32 entries", capacity, ncpu)
		}
		settings.UnknownMax = capacity * uint32(ncpu)
		settings.ICMPMax = loader.DefaultICMPMax * uint32(ncpu) // the same for the diagnosis tables
		settings.IKEMax = loader.DefaultIKEMax * uint32(ncpu)
		if objs, err = loader.Load(settings); err != nil {
			return nil, fmt.Errorf("%w (or use --no-bpf for the Go reference classifier)", err)
		}
		defer objs.Close()
		if err := objs.Maps.AddKnown(o.Known...); err != nil {
			return nil, err
		}
		prog, err := objs.Program(0)
		if err != nil {
			return nil, err
		}
		mode = "bpf"
		// One CPU for the whole capture: the program's per-SA state is per CPU, and
		// a capture's sequence numbers are to be followed in order, as one stream.
		unpin, err := onOneCPU()
		if err != nil {
			return nil, err
		}
		defer unpin()
		run = func(frame []byte) error {
			_, err := prog.Run(&ebpf.RunOptions{Data: frame})
			return err
		}
	}

	fr := &framer{cfg: &cfg}
	var readErr error
	for {
		p, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if a.packets == 0 && errors.Is(err, capread.ErrUnsupportedLinkType) {
				return nil, err // nothing of it can be read
			}
			readErr = err
			break
		}
		frame, wire := fr.frame(p)
		if run != nil {
			if err := run(frame); err != nil {
				return nil, fmt.Errorf("%s: packet %d: running the classifier: %w", name, p.Index, err)
			}
		}
		// The reference pass gives the capture's own timestamps per row (the
		// kernel's clock means nothing offline) and, without BPF, the counts.
		a.add(frame, wire, p.Time, &cfg, set, run == nil)
		if objs != nil {
			if err := a.prune(objs.Maps); err != nil {
				return nil, err
			}
		}
	}

	s := &report.Snapshot{Time: a.last, Interval: a.last.Sub(a.first), Action: "pass", Source: name}
	if readErr != nil {
		s.Partial = readErr.Error()
	}
	if objs != nil {
		if err := a.fromMaps(objs.Maps); err != nil {
			return nil, err
		}
	} else {
		a.fromReference()
	}
	for cl, d := range a.wireExtra {
		c := &a.counters[cl][classify.OutcomeNone]
		c.Bytes = uint64(int64(c.Bytes) + d)
	}
	a.fill(s, mode, o.Top)
	if objs != nil {
		// Rows the front counted after the table evicted them are not entries.
		ts, err := objs.Maps.UnknownTableStats(a.tableRows)
		if err != nil {
			return nil, err
		}
		ts.Capacity = int(capacity) // the one CPU's share, not the whole table
		s.Table = ts
		if s.ICMPTable, s.IKETable, err = objs.Maps.DiagTableStats(len(a.icmpRows), len(a.ikeRows)); err != nil {
			return nil, err
		}
		s.ICMPTable.Capacity, s.IKETable.Capacity = loader.DefaultICMPMax, loader.DefaultIKEMax // the one CPU's share
	} else {
		s.Table = lruStats(a.unknown, int(capacity))
		s.ICMPTable = lruStats(a.icmp, loader.DefaultICMPMax)
		s.IKETable = lruStats(a.ike, loader.DefaultIKEMax)
	}
	return s, readErr
}

// onOneCPU keeps the calling goroutine on its thread and the thread on the first
// CPU it may use, until the returned function is called.
func onOneCPU() (func(), error) {
	runtime.LockOSThread()
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("reading CPU affinity: %w", err)
	}
	cpu := 0
	for cpu < 1024 && !old.IsSet(cpu) {
		cpu++
	}
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("pinning to CPU %d: %w", cpu, err)
	}
	return func() {
		unix.SchedSetaffinity(0, &old)
		runtime.UnlockOSThread()
	}, nil
}

// add classifies frame, wire bytes long on the wire, with the reference
// classifier; counts only when count is set (otherwise the maps count),
// timestamps always. A zero ts (a pcapng simple packet block has none) is no
// time.
func (a *acc) add(frame []byte, wire int, ts time.Time, cfg *classify.Config, set classify.SASet, count bool) {
	stampRange(&a.first, &a.last, ts)
	a.packets++
	res := classify.Classify(frame, cfg)
	oc := classify.OutcomeOf(res, set)
	n := uint64(len(frame))
	if wire != len(frame) {
		switch res.Class {
		case classify.ClassOther, classify.ClassMalformed, classify.ClassFragment, classify.ClassNATKeepalive:
			// Only a class without rows can be classified short of its wire length.
			a.wireExtra[res.Class] += int64(wire) - int64(len(frame))
		}
	}
	if count {
		a.counters[res.Class][oc] = a.counters[res.Class][oc].Add(maps.Count{Packets: 1, Bytes: n})
	}
	a.addDiag(res, n, ts, count)
	switch oc {
	case classify.OutcomeUnknown, classify.OutcomeReserved:
		// As in the program's keys, an IPv4-mapped address is the IPv4 one.
		res.Src, res.Dst = res.Src.Unmap(), res.Dst.Unmap()
		k := rowKey{res.SPI, res.Src, res.Dst, res.SrcPort, res.DstPort}
		u, fresh := a.unknown.use(k)
		if fresh {
			u.Unknown = maps.Unknown{SPI: res.SPI, Src: res.Src, Dst: res.Dst, SrcPort: res.SrcPort, DstPort: res.DstPort, Ifindex: ifindex}
		}
		stampRange(&u.first, &u.last, ts)
		if count {
			u.Packets++
			u.Bytes += n
			u.LastSeq = res.Seq
		}
	case classify.OutcomeKnown:
		sa := maps.SA{SPI: res.SPI, Dst: res.Dst.Unmap()}
		if _, ok := set[classify.MakeSAKey(res.SPI, res.Dst)]; !ok {
			sa.Dst = netip.Addr{}
		}
		k := a.known[sa]
		if k == nil {
			k = &report.KnownRow{KnownSA: maps.KnownSA{SA: sa}}
			a.known[sa] = k
		}
		if ts.After(k.LastSeen) { // capture times may go back
			k.LastSeen = ts
		}
		if count {
			st := a.states[sa]
			if st == nil {
				st = &maps.SAState{}
				a.states[sa] = st
			}
			st.Count(res.Src, res.SrcPort, res.Seq, uint32(n), 0)
			k.KnownSA = st.Known(sa)
		}
	}
}

// stampRange widens the time range first..last to hold ts, unless ts is zero
// (no time).
func stampRange(first, last *time.Time, ts time.Time) {
	if ts.IsZero() {
		return
	}
	if first.IsZero() || ts.Before(*first) {
		*first = ts
	}
	if ts.After(*last) {
		*last = ts
	}
}

// lruStats gives the figures of a reference table of the given capacity.
func lruStats[K comparable, V any](l *lru[K, V], capacity int) maps.TableStats {
	return maps.TableStats{Entries: l.len(), Capacity: capacity, Inserts: l.inserts, Evictions: l.inserts - uint64(l.len())}
}

// prune keeps the capture times of the rows the program's tables hold once
// there are times for more than twice as many rows as they can hold: memory
// stays bounded by the tables' sizes, and every row the program reports has
// its times.
func (a *acc) prune(m *maps.Maps) error {
	err := pruneTo(a.unknown, &a.pruneAt[0], m.UnknownSnapshot, func(u maps.Unknown) rowKey {
		return rowKey{u.SPI, u.Src, u.Dst, u.SrcPort, u.DstPort}
	})
	if err == nil {
		err = pruneTo(a.icmp, &a.pruneAt[1], m.ICMPSnapshot, func(e maps.ICMPRow) icmpKey { return icmpKeyOf(e.Reporter, e.ICMPError) })
	}
	if err == nil {
		err = pruneTo(a.ike, &a.pruneAt[2], m.IKESnapshot, func(x maps.IKERow) ikeKey {
			return ikeKey{x.Peer, x.Version, uint8(x.Exchange), uint8(x.Dir)}
		})
	}
	return err
}

// pruneTo keeps the rows of l that the program's table (read by snap) holds,
// once l has more than *at of them; *at grows if the table holds more than
// half of that, so that pruning stays rare.
func pruneTo[K comparable, V, R any](l *lru[K, V], at *int, snap func() ([]R, error), key func(R) K) error {
	if l.len() <= *at {
		return nil
	}
	rows, err := snap()
	if err != nil {
		return err
	}
	in := make(map[K]bool, len(rows))
	for _, r := range rows {
		in[key(r)] = true
	}
	l.keep(in)
	*at = max(*at, 2*l.len())
	return nil
}

// fromReference takes the rows from the reference's tables.
func (a *acc) fromReference() {
	a.rows = make(map[rowKey]*maps.Unknown, a.unknown.len())
	a.unknown.each(func(k rowKey, u *unknownRow) { a.rows[k] = &u.Unknown })
	a.icmpRows = make(map[icmpKey]*report.ICMPRow, a.icmp.len())
	a.icmp.each(func(k icmpKey, r *report.ICMPRow) { a.icmpRows[k] = r })
	a.ikeRows = make(map[ikeKey]*report.IKERow, a.ike.len())
	a.ike.each(func(k ikeKey, r *report.IKERow) { a.ikeRows[k] = r })
}

// fromMaps takes the counts from the program's maps.
func (a *acc) fromMaps(m *maps.Maps) error {
	var err error
	if a.counters, err = m.Counters(0); err != nil {
		return err
	}
	snap, err := m.UnknownSnapshot()
	if err != nil {
		return err
	}
	a.tableRows = maps.TableRows(snap)
	a.rows = map[rowKey]*maps.Unknown{}
	for i := range snap {
		u := snap[i]
		a.rows[rowKey{u.SPI, u.Src, u.Dst, u.SrcPort, u.DstPort}] = &u
	}
	if err := a.diagFromMaps(m); err != nil {
		return err
	}
	known, err := m.ListKnown()
	if err != nil {
		return err
	}
	seen := a.known
	a.known = map[maps.SA]*report.KnownRow{}
	for _, k := range known {
		row := &report.KnownRow{KnownSA: k}
		if r := seen[k.SA]; r != nil {
			row.LastSeen = r.LastSeen
		}
		a.known[k.SA] = row
	}
	return nil
}

// fill puts the totals, rows and known SAs into the snapshot. Rates are averages
// over the capture's duration.
func (a *acc) fill(s *report.Snapshot, mode string, top int) {
	ic := report.IfaceCounts{Iface: report.Iface{Name: s.Source, Ifindex: ifindex, Mode: mode}, Now: a.counters, Delta: a.counters}
	s.Ifaces = []report.IfaceCounts{ic}
	s.Total = ic
	s.Total.Name = "all"
	secs := s.Interval.Seconds()
	var rows []maps.Unknown
	var rates []float64
	for _, u := range a.rows {
		rows = append(rows, *u)
		rate := 0.0
		if secs > 0 {
			rate = float64(u.Packets) / secs
		}
		rates = append(rates, rate)
	}
	s.UnknownRows = len(rows)
	// The whole capture is the collision window: every row counts, whatever its
	// timestamps (0 here, or the test runs' clock).
	for i := range rows {
		rows[i].LastSeenNs = 0
	}
	coll := report.UnknownCollisions(rows, 0, 1)
	groups := map[report.SPIDst]bool{}
	for i := range coll {
		groups[report.SPIDst{SPI: rows[i].SPI, Dst: rows[i].Dst}] = true
	}
	s.Collisions = len(groups)
	s.CollisionWindow = s.Interval
	verdict := func(i int) string {
		if coll[i] != nil {
			return report.Collision
		}
		return report.VerdictOf(rows[i].SPI) // no SA history in a capture
	}
	s.UnknownByVerdict = make(map[string]uint64, len(report.Verdicts))
	for i := range rows {
		s.UnknownByVerdict[verdict(i)] += rows[i].Packets
	}
	for _, i := range report.TopIndices(rows, rates, top) {
		u := rows[i]
		var first, last time.Time
		if t := a.unknown.peek(rowKey{u.SPI, u.Src, u.Dst, u.SrcPort, u.DstPort}); t != nil {
			first, last = t.first, t.last
		}
		s.Unknown = append(s.Unknown, report.UnknownRow{Unknown: u, Iface: s.Source, Rate: rates[i],
			FirstSeen: first, LastSeen: last, Verdict: verdict(int(i)), Sources: coll[int(i)]})
	}
	for _, k := range a.known {
		// The kernel's clock means nothing for a capture: no source times.
		k.Sources = slices.Clone(k.Sources)
		for i := range k.Sources {
			k.Sources[i].LastSeenNs = 0
		}
		if len(k.Sources) >= 2 {
			k.Collision, k.ActiveSources = true, k.Sources
			s.Collisions++
		}
		s.Known = append(s.Known, *k)
	}
	report.SortKnown(s.Known)
	a.fillDiag(s, secs)
}

// addDiag records an icmp-esp or ike frame's row: times always, counts when
// count is set (else the program's maps count).
func (a *acc) addDiag(res classify.Result, n uint64, ts time.Time, count bool) {
	switch res.Class {
	case classify.ClassICMPESP:
		e := res.ICMP
		e.Src, e.Dst = e.Src.Unmap(), e.Dst.Unmap() // as the program's keys
		k := icmpKeyOf(res.Src.Unmap(), e)
		r, fresh := a.icmp.use(k)
		if fresh {
			*r = report.ICMPRow{ICMPRow: maps.ICMPRow{Reporter: k.reporter, Ifindex: ifindex, ICMPError: e}}
		}
		stampRange(&r.FirstSeen, &r.LastSeen, ts)
		if count {
			r.Packets++
			r.Bytes += n
			r.MTU = e.MTU
		}
	case classify.ClassIKE:
		x := res.IKE
		k := ikeKey{res.Src.Unmap(), x.Version, uint8(x.Exchange), uint8(x.Dir)}
		r, fresh := a.ike.use(k)
		if fresh {
			*r = report.IKERow{IKERow: maps.IKERow{Peer: k.peer, Ifindex: ifindex, Version: x.Version, Exchange: x.Exchange, Dir: x.Dir}}
		}
		stampRange(&r.FirstSeen, &r.LastSeen, ts)
		if count {
			r.Packets++
			r.Bytes += n
			if x.Exchange != classify.IKEMalformed {
				r.LastISPI, r.LastRSPI, r.LastMsgID = x.ISPI, x.RSPI, x.MsgID
				r.LastFlags, r.LastExchangeType, r.LastNextPay = x.Flags, x.ExchangeType, x.NextPayload
			}
		}
	}
}

// diagFromMaps takes the ICMP-error and IKE rows from the program's maps, with
// the capture times the reference pass found for them.
func (a *acc) diagFromMaps(m *maps.Maps) error {
	icmp, err := m.ICMPSnapshot()
	if err != nil {
		return err
	}
	ike, err := m.IKESnapshot()
	if err != nil {
		return err
	}
	a.icmpRows, a.ikeRows = map[icmpKey]*report.ICMPRow{}, map[ikeKey]*report.IKERow{}
	for _, e := range icmp {
		k := icmpKeyOf(e.Reporter, e.ICMPError)
		r := &report.ICMPRow{ICMPRow: e}
		if p := a.icmp.peek(k); p != nil {
			r.FirstSeen, r.LastSeen = p.FirstSeen, p.LastSeen
		}
		a.icmpRows[k] = r
	}
	for _, x := range ike {
		k := ikeKey{x.Peer, x.Version, uint8(x.Exchange), uint8(x.Dir)}
		r := &report.IKERow{IKERow: x}
		if p := a.ike.peek(k); p != nil {
			r.FirstSeen, r.LastSeen = p.FirstSeen, p.LastSeen
		}
		a.ikeRows[k] = r
	}
	return nil
}

// fillDiag puts the ICMP-error and IKE rows into the snapshot, rates averaged
// over the capture.
func (a *acc) fillDiag(s *report.Snapshot, secs float64) {
	known := map[maps.SA]bool{}
	for _, k := range s.Known {
		known[k.SA] = true
	}
	for _, r := range a.icmpRows {
		row := *r
		row.Iface, row.FirstSeenNs, row.LastSeenNs = s.Source, 0, 0
		if secs > 0 {
			row.Rate = float64(row.Packets) / secs
		}
		row.KnownSA = row.Quote != classify.QuoteNATTNoSPI && (known[maps.SA{SPI: row.SPI, Dst: row.Dst}] || known[maps.SA{SPI: row.SPI}])
		s.ICMP = append(s.ICMP, row)
	}
	report.SortICMP(s.ICMP)
	var unknown []maps.Unknown
	for _, u := range a.rows {
		unknown = append(unknown, *u)
	}
	peerUnknown := report.PeerUnknownCounts(unknown)
	for _, r := range a.ikeRows {
		row := *r
		row.PeerUnknown = peerUnknown[row.Peer]
		row.Iface, row.FirstSeenNs, row.LastSeenNs = s.Source, 0, 0
		if secs > 0 {
			row.Rate = float64(row.Packets) / secs
		}
		s.IKE = append(s.IKE, row)
	}
	report.SortIKE(s.IKE)
}
