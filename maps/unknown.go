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
// consistent per entry, not across entries. The counts the per-CPU front holds
// for rows (sw_unknown_hot) are added in; a row's counts never go back between
// snapshots.
func (m *Maps) UnknownSnapshot() ([]Unknown, error) {
	return m.UnknownSnapshotInto(nil)
}

// UnknownSnapshotInto is UnknownSnapshot appending to buf[:0], so that a caller
// reading a full table every interval reuses one buffer instead of growing a new
// one (a 65,536-row table is 6 MiB of rows).
func (m *Maps) UnknownSnapshotInto(buf []Unknown) ([]Unknown, error) {
	out, err := m.readTable(buf[:0])
	if err != nil {
		return nil, err
	}
	// The front after the table: a hand-over in between (the front emptied
	// first, then the row added to) can hide counts for one read, never count
	// them twice; mergeHot keeps the hidden ones from showing as a drop.
	hot, err := m.readHot()
	if err != nil {
		return nil, err
	}
	return m.mergeHot(out, hot), nil
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
	found          bool
}

// readHot sums the per-CPU front's counts by row: slots holding counts not yet
// handed to their row.
func (m *Maps) readHot() (map[unknownKey]*hotRow, error) {
	vals := make([]unknownHot, m.ncpu)
	rows := map[unknownKey]*hotRow{}
	for slot := uint32(0); slot < hotSlots; slot++ {
		if err := m.unknownHot.Lookup(slot, vals); err != nil {
			return nil, fmt.Errorf("reading the unknown-SPI table's per-CPU front, slot %d: %w", slot, err)
		}
		for _, v := range vals {
			if v.Used == 0 || v.Packets == 0 {
				continue
			}
			r := rows[v.Key]
			if r == nil {
				r = &hotRow{key: v.Key, first: v.FirstSeenNs}
				rows[v.Key] = r
			}
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
	return rows, nil
}

// mergeHot adds the fronts' counts to the table's rows (and appends rows the
// table evicted meanwhile, marked Evicted), then keeps every row the fronts
// counted for from going back below what the last snapshot said.
func (m *Maps) mergeHot(out []Unknown, hot map[unknownKey]*hotRow) []Unknown {
	m.hotMu.Lock()
	defer m.hotMu.Unlock()
	if len(hot) == 0 && len(m.hotLast) == 0 {
		return out
	}
	// Rows to find: counted in a front now, or last time (their counts may be
	// in flight). Matched by SPI first: a cheap test for 65,536 rows.
	bySPI := map[uint32][]unknownKey{}
	for k := range hot {
		bySPI[k.SPI] = append(bySPI[k.SPI], k)
	}
	for k := range m.hotLast {
		if hot[k] == nil {
			bySPI[k.SPI] = append(bySPI[k.SPI], k)
		}
	}
	next := make(map[unknownKey]Count, len(hot))
	for i := range out {
		cands, ok := bySPI[out[i].SPI]
		if !ok {
			continue
		}
		u := &out[i]
		k := keyOf(u)
		if !slices.Contains(cands, k) {
			continue
		}
		if h := hot[k]; h != nil {
			h.found = true
			u.Packets += h.packets
			u.Bytes += h.bytes
			if h.last >= u.LastSeenNs {
				u.LastSeenNs, u.LastSeq = h.last, h.lastSeq
			}
		}
		if prev, ok := m.hotLast[k]; ok && prev.Packets > u.Packets {
			u.Packets, u.Bytes = prev.Packets, max(prev.Bytes, u.Bytes)
			next[k] = prev // in flight: hold until the row has them
		} else if hot[k] != nil {
			next[k] = Count{Packets: u.Packets, Bytes: u.Bytes}
		}
	}
	for k, h := range hot {
		if h.found {
			continue
		}
		u := unknownFrom(k, unknownStats{Packets: h.packets, Bytes: h.bytes, FirstSeenNs: h.first, LastSeenNs: h.last, LastSeq: h.lastSeq})
		u.Evicted = true
		out = append(out, u)
	}
	m.hotLast = next
	return out
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
	m.hotMu.Lock()
	m.hotLast = nil
	m.hotMu.Unlock()
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

// UnknownTableStats combines a snapshot's length with the kernel's tallies.
func (m *Maps) UnknownTableStats(entries int) (TableStats, error) {
	t, err := m.Tally()
	if err != nil {
		return TableStats{}, err
	}
	s := TableStats{Entries: entries, Capacity: m.UnknownCapacity(), Inserts: t.Inserts, InsertFails: t.InsertFails}
	if gone := uint64(entries) + m.deleted.Load(); t.Inserts > gone {
		s.Evictions = t.Inserts - gone
	}
	return s, nil
}

func isE2BIG(err error) bool { return errors.Is(err, syscall.E2BIG) }
