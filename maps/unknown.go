// SPDX-License-Identifier: Apache-2.0

package maps

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/cilium/ebpf"
)

// batchSize is how many entries one batch syscall reads.
const batchSize = 4096

// UnknownSnapshot reads the whole unknown-SPI table with batch lookups (one syscall
// per batchSize entries); where the kernel lacks batch ops it falls back to
// iterating. The table keeps changing while it is read, so a snapshot is
// consistent per entry, not across entries.
func (m *Maps) UnknownSnapshot() ([]Unknown, error) {
	return m.UnknownSnapshotInto(nil)
}

// UnknownSnapshotInto is UnknownSnapshot appending to buf[:0], so that a caller
// reading a full table every interval reuses one buffer instead of growing a new
// one (a 65,536-row table is 6 MiB of rows).
func (m *Maps) UnknownSnapshotInto(buf []Unknown) ([]Unknown, error) {
	out := buf[:0]
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
			return m.unknownIterate()
		}
		if err != nil {
			return nil, fmt.Errorf("reading unknown-SPI table: %w", err)
		}
	}
}

func (m *Maps) unknownIterate() ([]Unknown, error) {
	var out []Unknown
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
