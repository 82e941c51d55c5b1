// SPDX-License-Identifier: Apache-2.0

package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/cilium/ebpf"

	"github.com/spiwatch/spiwatch/internal/classify"
)

// icmpKey mirrors struct icmp_key.
type icmpKey struct {
	Reporter [16]byte
	Qsaddr   [16]byte
	Qdaddr   [16]byte
	SPI      uint32
	Ifindex  uint32
	Qsport   uint16
	Qdport   uint16
	Family   uint8
	Type     uint8
	Code     uint8
	Quote    uint8
}

// icmpStats mirrors struct icmp_stats.
type icmpStats struct {
	Packets     uint64
	Bytes       uint64
	FirstSeenNs uint64
	LastSeenNs  uint64
	MTU         uint32
	_           uint32
}

// ikeKey mirrors struct ike_key.
type ikeKey struct {
	Peer     [16]byte
	Ifindex  uint32
	Version  uint8
	Exchange uint8
	Dir      uint8
	_        uint8
}

// ikeStats mirrors struct ike_stats.
type ikeStats struct {
	Packets         uint64
	Bytes           uint64
	FirstSeenNs     uint64
	LastSeenNs      uint64
	LastISPI        uint64
	LastRSPI        uint64
	LastMsgid       uint32
	LastFlags       uint8
	LastExchange    uint8
	LastNextPayload uint8
	_               uint8
}

// ICMPRow is one row of the ICMP-error table: ICMP errors quoting ESP from one
// reporter about one quoted flow and SPI, of one ICMP type and code.
type ICMPRow struct {
	Reporter netip.Addr // the ICMP packet's source
	Ifindex  uint32
	classify.ICMPError
	Packets     uint64
	Bytes       uint64
	FirstSeenNs uint64 // CLOCK_MONOTONIC
	LastSeenNs  uint64
}

// IKERow is one row of the IKE table: IKE messages from one peer of one version,
// exchange and direction, with the last message's header.
type IKERow struct {
	Peer        netip.Addr // the frame's source
	Ifindex     uint32
	Version     uint8 // major version; 0 for malformed
	Exchange    classify.IKEExchange
	Dir         classify.IKEDir
	Packets     uint64
	Bytes       uint64
	FirstSeenNs uint64 // CLOCK_MONOTONIC
	LastSeenNs  uint64
	// The last message's header (not updated by malformed ones).
	LastISPI, LastRSPI                       uint64
	LastMsgID                                uint32
	LastFlags, LastExchangeType, LastNextPay uint8
}

// DiagTally is the ICMP and IKE tables' bookkeeping (enum sw_diag_tally).
type DiagTally struct {
	ICMPInserts     uint64
	ICMPInsertFails uint64
	IKEInserts      uint64
	IKEInsertFails  uint64
}

func icmpFrom(k icmpKey, v icmpStats) ICMPRow {
	return ICMPRow{
		Reporter: addrFrom16(k.Reporter), Ifindex: k.Ifindex,
		ICMPError: classify.ICMPError{Family: k.Family, Type: k.Type, Code: k.Code, Quote: classify.Quote(k.Quote),
			SPI: k.SPI, Src: addrFrom16(k.Qsaddr), Dst: addrFrom16(k.Qdaddr), SrcPort: k.Qsport, DstPort: k.Qdport, MTU: v.MTU},
		Packets: v.Packets, Bytes: v.Bytes, FirstSeenNs: v.FirstSeenNs, LastSeenNs: v.LastSeenNs,
	}
}

func ikeFrom(k ikeKey, v ikeStats) IKERow {
	return IKERow{
		Peer: addrFrom16(k.Peer), Ifindex: k.Ifindex, Version: k.Version,
		Exchange: classify.IKEExchange(k.Exchange), Dir: classify.IKEDir(k.Dir),
		Packets: v.Packets, Bytes: v.Bytes, FirstSeenNs: v.FirstSeenNs, LastSeenNs: v.LastSeenNs,
		LastISPI: v.LastISPI, LastRSPI: v.LastRSPI, LastMsgID: v.LastMsgid,
		LastFlags: v.LastFlags, LastExchangeType: v.LastExchange, LastNextPay: v.LastNextPayload,
	}
}

// ICMPSnapshot reads the whole ICMP-error table (batch lookups, as UnknownSnapshot).
func (m *Maps) ICMPSnapshot() ([]ICMPRow, error) {
	return snapshot(m.icmp, "ICMP-error table", icmpFrom)
}

// IKESnapshot reads the whole IKE table.
func (m *Maps) IKESnapshot() ([]IKERow, error) {
	return snapshot(m.ike, "IKE table", ikeFrom)
}

func snapshot[K, V, R any](mp *ebpf.Map, what string, conv func(K, V) R) ([]R, error) {
	var out []R
	keys := make([]K, 256)
	vals := make([]V, 256)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := mp.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			out = append(out, conv(keys[i], vals[i]))
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, syscall.EINVAL) {
			out = out[:0]
			var k K
			var v V
			it := mp.Iterate()
			for it.Next(&k, &v) {
				out = append(out, conv(k, v))
			}
			if err := it.Err(); err != nil {
				return nil, fmt.Errorf("reading %s: %w", what, err)
			}
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", what, err)
		}
	}
}

// ClearDiag empties the ICMP-error and IKE tables, counting what it removed so
// that eviction figures stay exact.
func (m *Maps) ClearDiag() error {
	n, err := clearMap[icmpKey, icmpStats](m.icmp, "ICMP-error table")
	m.diagMu.Lock()
	m.icmpDeleted += n
	m.diagMu.Unlock()
	if err != nil {
		return err
	}
	n, err = clearMap[ikeKey, ikeStats](m.ike, "IKE table")
	m.diagMu.Lock()
	m.ikeDeleted += n
	m.diagMu.Unlock()
	return err
}

func clearMap[K, V any](mp *ebpf.Map, what string) (uint64, error) {
	var keys []K
	var k K
	var v V
	it := mp.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("clearing %s: %w", what, err)
	}
	var n uint64
	for _, k := range keys {
		err := mp.Delete(k)
		if err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("clearing %s: %w", what, err)
		}
	}
	return n, nil
}

// DiagTally returns the ICMP and IKE tables' insert counts, summed over CPUs.
func (m *Maps) DiagTally() (DiagTally, error) {
	var t DiagTally
	for i, dst := range []*uint64{&t.ICMPInserts, &t.ICMPInsertFails, &t.IKEInserts, &t.IKEInsertFails} {
		vals := make([]uint64, m.ncpu)
		if err := m.diagTally.Lookup(uint32(i), vals); err != nil {
			return t, fmt.Errorf("reading diagnosis tally %d: %w", i, err)
		}
		for _, v := range vals {
			*dst += v
		}
	}
	return t, nil
}

// DiagTableStats is TableStats for the ICMP-error and the IKE table, given the
// entries of a snapshot of each.
func (m *Maps) DiagTableStats(icmpEntries, ikeEntries int) (icmp, ike TableStats, err error) {
	t, err := m.DiagTally()
	if err != nil {
		return icmp, ike, err
	}
	m.diagMu.Lock()
	icmpDel, ikeDel := m.icmpDeleted, m.ikeDeleted
	m.diagMu.Unlock()
	mk := func(entries int, capacity uint32, inserts, fails, deleted uint64, evicted *evictedFloor) TableStats {
		s := TableStats{Entries: entries, Capacity: int(capacity), Inserts: inserts, InsertFails: fails}
		if gone := uint64(entries) + deleted; inserts > gone {
			s.Evictions = inserts - gone
		}
		s.Evictions = evicted.atLeast(s.Evictions)
		return s
	}
	return mk(icmpEntries, m.icmp.MaxEntries(), t.ICMPInserts, t.ICMPInsertFails, icmpDel, &m.icmpEvicted),
		mk(ikeEntries, m.ike.MaxEntries(), t.IKEInserts, t.IKEInsertFails, ikeDel, &m.ikeEvicted), nil
}
