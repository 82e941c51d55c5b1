// SPDX-License-Identifier: Apache-2.0

package maps

import (
	"errors"
	"fmt"
	"slices"
	"syscall"

	"github.com/cilium/ebpf"
)

// batchSize is how many entries one batch syscall reads.
const batchSize = 4096

// UnknownSnapshot reads the whole unknown-SPI table with batch lookups (one syscall
// per batchSize entries); where the kernel lacks batch ops it falls back to
// iterating. The table keeps changing while it is read, so a snapshot is
// consistent per row, not across rows. The counts the per-CPU front holds for
// rows (sw_unknown_hot) are added in.
func (m *Maps) UnknownSnapshot() ([]Unknown, error) {
	return m.UnknownSnapshotInto(nil)
}

// UnknownSnapshotInto is UnknownSnapshot appending to buf[:0], so that a caller
// reading a full table every interval reuses one buffer instead of growing a new
// one (a 65,536-row table is 6 MiB of rows).
func (m *Maps) UnknownSnapshotInto(buf []Unknown) ([]Unknown, error) {
	rows, _, err := m.UnknownTable(buf)
	return rows, err
}

// UnknownTable is UnknownSnapshotInto with the table's figures as of the same
// read: the kernel's insert count is taken before the table, so a row inserted
// while the table is read is not taken for an eviction (it may be missing from
// both until the next read: evictions are then low by it, never high).
func (m *Maps) UnknownTable(buf []Unknown) ([]Unknown, TableStats, error) {
	m.hotMu.Lock() // one reader at a time: the reporter and the metrics share the maps
	defer m.hotMu.Unlock()
	t, err := m.Tally()
	if err != nil {
		return nil, TableStats{}, err
	}
	// The front before and after the table: a row's counts are consistent when
	// no CPU handed its front to the table in between (a hand-over empties the
	// front, then adds to the row: read across one, counts would be missed or
	// seen twice). mergeHot reads the others again.
	before, err := m.readHot()
	if err != nil {
		return nil, TableStats{}, err
	}
	out, err := m.readTable(buf[:0])
	if err != nil {
		return nil, TableStats{}, err
	}
	hot, err := m.readHot()
	if err != nil {
		return nil, TableStats{}, err
	}
	out, err = m.mergeHot(out, before, hot)
	if err != nil {
		return nil, TableStats{}, err
	}
	for i := range out {
		out[i].tick = 0 // the read's own: rows compare equal across reads
	}
	return out, m.tableStats(t, TableRows(out)), nil
}

func (m *Maps) readTable(out []Unknown) ([]Unknown, error) {
	keys := make([]unknownKey, batchSize)
	vals := make([]unknownStats, batchSize)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.unknown.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			out = append(out, unknownFrom(keys[i], vals[i]))
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, syscall.EINVAL) {
			return m.unknownIterate(out[:0])
		}
		if err != nil {
			return nil, fmt.Errorf("reading unknown-SPI table: %w", err)
		}
	}
}

func (m *Maps) unknownIterate(out []Unknown) ([]Unknown, error) {
	var k unknownKey
	var v unknownStats
	it := m.unknown.Iterate()
	for it.Next(&k, &v) {
		out = append(out, unknownFrom(k, v))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading unknown-SPI table: %w", err)
	}
	return out, nil
}

// hotRow is what the CPUs' fronts hold for one row, summed.
type hotRow struct {
	key            unknownKey
	packets, bytes uint64
	first, last    uint64
	lastSeq        uint32
	// ticks is, per CPU, the tick of the slot's last hand-over to the table (or
	// of its taking the slot); 0 where the CPU's slot holds another row. Equal
	// in two reads: no CPU handed the row over in between.
	ticks []uint64
	found bool
}

func (h *hotRow) sameTicks(o *hotRow) bool { return o != nil && slices.Equal(h.ticks, o.ticks) }

// readHot sums the per-CPU front's counts by row: slots holding counts not yet
// handed to their row.
func (m *Maps) readHot() (map[unknownKey]*hotRow, error) {
	vals := make([]unknownHot, m.ncpu)
	rows := map[unknownKey]*hotRow{}
	for slot := uint32(0); slot < hotSlots; slot++ {
		if err := m.unknownHot.Lookup(slot, vals); err != nil {
			return nil, fmt.Errorf("reading the unknown-SPI table's per-CPU front, slot %d: %w", slot, err)
		}
		m.addHot(rows, vals)
	}
	return rows, nil
}

// readHotRow reads the front's slot of one row.
func (m *Maps) readHotRow(k unknownKey) (*hotRow, error) {
	vals := make([]unknownHot, m.ncpu)
	slot := hotSlotOf(k)
	if err := m.unknownHot.Lookup(slot, vals); err != nil {
		return nil, fmt.Errorf("reading the unknown-SPI table's per-CPU front, slot %d: %w", slot, err)
	}
	rows := map[unknownKey]*hotRow{}
	m.addHot(rows, vals)
	if h := rows[k]; h != nil {
		return h, nil
	}
	return &hotRow{key: k, ticks: make([]uint64, m.ncpu)}, nil
}

// addHot adds one slot's per-CPU values to rows.
func (m *Maps) addHot(rows map[unknownKey]*hotRow, vals []unknownHot) {
	for cpu, v := range vals {
		if v.Used == 0 {
			continue
		}
		r := rows[v.Key]
		if r == nil {
			r = &hotRow{key: v.Key, first: v.FirstSeenNs, ticks: make([]uint64, len(vals))}
			rows[v.Key] = r
		}
		r.ticks[cpu] = v.LastJiffies
		r.packets += v.Packets
		r.bytes += v.Bytes
		if v.FirstSeenNs != 0 && (r.first == 0 || v.FirstSeenNs < r.first) {
			r.first = v.FirstSeenNs
		}
		if v.LastSeenNs >= r.last {
			r.last, r.lastSeq = v.LastSeenNs, v.LastSeq
		}
	}
}

// hotSlotOf is the front slot of a row: hot_slot() in bpf/spiwatch.c.
func hotSlotOf(k unknownKey) uint32 {
	le := func(b []byte) uint32 { return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24 }
	h := le(k.Saddr[12:]) ^ (le(k.Daddr[12:]) * 0x85ebca6b) ^ k.SPI ^ (uint32(k.Sport)<<16 | uint32(k.Dport))
	return (h * 0x9e3779b1) >> (32 - 8)
}

// mergeHot adds the fronts' counts (hot, read after the table) to the table's
// rows. A row some CPU handed over between the two front reads (before, hot) is
// read again, table and front, until no hand-over falls between; a row counted
// in a front but not in the table as read is looked up (inserted since), else
// appended as Evicted.
func (m *Maps) mergeHot(out []Unknown, before, hot map[unknownKey]*hotRow) ([]Unknown, error) {
	if len(hot) == 0 && len(before) == 0 {
		return out, nil
	}
	bySPI := map[uint32]bool{} // a cheap first test for 65,536 rows
	for k := range hot {
		bySPI[k.SPI] = true
	}
	for k := range before {
		bySPI[k.SPI] = true
	}
	for i := range out {
		if !bySPI[out[i].SPI] {
			continue
		}
		u := &out[i]
		k := keyOf(u)
		h, b := hot[k], before[k]
		if h == nil && b == nil {
			continue
		}
		if h != nil {
			h.found = true
		}
		if h == nil || !h.sameTicks(b) {
			var err error
			if h, _, err = m.rereadRow(u); err != nil {
				return nil, err
			}
		}
		h.addTo(u)
	}
	for k, h := range hot {
		if h.found || h.packets == 0 {
			continue
		}
		u := unknownFrom(k, unknownStats{})
		h, found, err := m.rereadRow(&u)
		if err != nil {
			return nil, err
		}
		u.Evicted = !found
		h.addTo(&u)
		if u.Packets > 0 {
			out = append(out, u)
		}
	}
	return out, nil
}

// rereadRow reads u's table entry (into u; false if the table has none) and its
// front slot until no hand-over falls between the two, at most a few times: a
// CPU hands a row over once a tick.
func (m *Maps) rereadRow(u *Unknown) (*hotRow, bool, error) {
	k := keyOf(u)
	h, err := m.readHotRow(k)
	if err != nil {
		return nil, false, err
	}
	for try := 0; ; try++ {
		v := *u
		found, err := m.lookupRow(&v)
		if err != nil {
			return nil, false, err
		}
		after, err := m.readHotRow(k)
		if err != nil {
			return nil, false, err
		}
		if after.sameTicks(h) || try == 3 {
			if found {
				*u = v
			}
			return after, found, nil
		}
		h = after
	}
}

func (h *hotRow) addTo(u *Unknown) {
	u.Packets += h.packets
	u.Bytes += h.bytes
	if h.first != 0 && (u.FirstSeenNs == 0 || h.first < u.FirstSeenNs) {
		u.FirstSeenNs = h.first
	}
	if h.last >= u.LastSeenNs {
		u.LastSeenNs, u.LastSeq = h.last, h.lastSeq
	}
}

// lookupRow reads u's table entry into u; false if the table has none.
func (m *Maps) lookupRow(u *Unknown) (bool, error) {
	var v unknownStats
	if err := m.unknown.Lookup(keyOf(u), &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("reading unknown-SPI row 0x%08x from %s: %w", u.SPI, u.Src, err)
	}
	*u = unknownFrom(keyOf(u), v)
	return true, nil
}

// keyOf is the table key of a row.
func keyOf(u *Unknown) unknownKey {
	return unknownKey{Saddr: u.Src.As16(), Daddr: u.Dst.As16(), SPI: u.SPI, Ifindex: u.Ifindex, Sport: u.SrcPort, Dport: u.DstPort}
}

func unknownFrom(k unknownKey, v unknownStats) Unknown {
	return Unknown{
		SPI: k.SPI, Src: addrFrom16(k.Saddr), Dst: addrFrom16(k.Daddr),
		SrcPort: k.Sport, DstPort: k.Dport, Ifindex: k.Ifindex,
		Packets: v.Packets, Bytes: v.Bytes,
		FirstSeenNs: v.FirstSeenNs, LastSeenNs: v.LastSeenNs, LastSeq: v.LastSeq,
		tick: v.LastJiffies,
	}
}

// ClearUnknown empties the unknown-SPI table, counting what it removed so that
// eviction figures stay exact.
func (m *Maps) ClearUnknown() error {
	var k unknownKey
	var v unknownStats
	var keys []unknownKey
	it := m.unknown.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("clearing unknown-SPI table: %w", err)
	}
	// The front first, so that no hand-over puts a cleared row back.
	zero := make([]unknownHot, m.ncpu)
	for slot := uint32(0); slot < hotSlots; slot++ {
		if err := m.unknownHot.Put(slot, zero); err != nil {
			return fmt.Errorf("clearing the unknown-SPI table's per-CPU front, slot %d: %w", slot, err)
		}
	}
	for _, k := range keys {
		err := m.unknown.Delete(k)
		if err == nil {
			m.deleted.Add(1)
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clearing unknown-SPI table: %w", err)
		}
	}
	return nil
}

// TableStats describes the unknown table's fill and losses.
type TableStats struct {
	Entries     int
	Capacity    int
	Inserts     uint64
	InsertFails uint64
	Evictions   uint64 // inserts - entries - deleted by us
}

// UnknownTableStats combines a snapshot's length with the kernel's tallies read
// now: exact while nothing is inserted (a capture read offline, a table at rest);
// UnknownTable gives the figures of a table in use.
func (m *Maps) UnknownTableStats(entries int) (TableStats, error) {
	t, err := m.Tally()
	if err != nil {
		return TableStats{}, err
	}
	return m.tableStats(t, entries), nil
}

func (m *Maps) tableStats(t Tally, entries int) TableStats {
	s := TableStats{Entries: entries, Capacity: m.UnknownCapacity(), Inserts: t.Inserts, InsertFails: t.InsertFails}
	if gone := uint64(entries) + m.deleted.Load(); t.Inserts > gone {
		s.Evictions = t.Inserts - gone
	}
	s.Evictions = m.unknownEvicted.atLeast(s.Evictions)
	return s
}

func isE2BIG(err error) bool { return errors.Is(err, syscall.E2BIG) }
