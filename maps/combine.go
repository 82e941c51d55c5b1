// SPDX-License-Identifier: Apache-2.0

package maps

import (
	"cmp"
	"net/netip"
	"slices"
)

// combine sums a known SA's per-CPU copies (struct sa_stats). Counts add up;
// sources are each CPU's first one plus the last other one, merged by address and
// port. Sequence health: one CPU sees an SA's whole stream as long as RSS keeps
// the SA on one queue (the outer 5-tuple does), and then its gaps and late
// arrivals are exact within the 64-number window. When the packets of one source
// were spread over several CPUs, each CPU's gaps are mostly packets another CPU
// got, so loss is estimated from the span of numbers instead: highest - lowest
// first + 1 - packets received (excluding duplicates and replays). Duplicates and
// replays are then only seen when both copies landed on the same CPU. With
// restarts or wraps the span means nothing, and the per-CPU figures are summed
// (an overestimate of loss).
func combine(k saKey, per []saStats) KnownSA {
	ks := KnownSA{SA: k.sa()}
	var gaps, late uint64
	var srcs []SASource
	lowFirst, sameSrc := uint32(0), true
	var firstSrc *saStats
	for i := range per {
		v := &per[i]
		if v.Packets == 0 {
			continue
		}
		ks.CPUs++
		ks.Packets += v.Packets
		ks.Bytes += v.Bytes
		ks.LastSeenNs = max(ks.LastSeenNs, v.LastSeenNs, v.OtherLastNs)
		ks.MaxSeq = max(ks.MaxSeq, v.MaxSeq)
		ks.OtherPackets += v.OtherPackets
		gaps += v.Gaps
		late += v.Late
		ks.Seq.Late += v.Late
		ks.Seq.Dups += v.Dups
		ks.Seq.Replays += v.Replays
		ks.Seq.Restarts += uint64(v.Restarts)
		ks.Seq.Wraps += uint64(v.Wraps)
		srcs = addSource(srcs, v.Src, v.SrcPort, v.LastSeenNs)
		if v.OtherPackets > 0 {
			srcs = addSource(srcs, v.OtherSrc, v.OtherPort, v.OtherLastNs)
		}
		if firstSrc == nil {
			firstSrc, lowFirst = v, v.FirstSeq
		} else {
			sameSrc = sameSrc && v.Src == firstSrc.Src && v.SrcPort == firstSrc.SrcPort
			lowFirst = min(lowFirst, v.FirstSeq)
		}
	}
	ks.Seq.Lost = gaps - min(gaps, late)
	if ks.CPUs > 1 && sameSrc && ks.Seq.Restarts == 0 && ks.Seq.Wraps == 0 {
		ks.Seq.Spread = true
		span := uint64(ks.MaxSeq) - uint64(lowFirst) + 1
		got := ks.Packets - ks.OtherPackets
		got -= min(got, ks.Seq.Dups+ks.Seq.Replays)
		ks.Seq.Lost = span - min(span, got)
	}
	slices.SortFunc(srcs, func(a, b SASource) int {
		return cmp.Or(cmp.Compare(b.LastSeenNs, a.LastSeenNs), a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
	})
	ks.Sources = srcs
	return ks
}

func addSource(srcs []SASource, addr [16]byte, port uint16, seen uint64) []SASource {
	a := addrFrom16(addr)
	for i := range srcs {
		if srcs[i].Addr == a && srcs[i].Port == port {
			srcs[i].LastSeenNs = max(srcs[i].LastSeenNs, seen)
			return srcs
		}
	}
	return append(srcs, SASource{Addr: a, Port: port, LastSeenNs: seen})
}

// ActiveSources returns the SA's sources seen within window (ns) of now
// (CLOCK_MONOTONIC ns). Two or more is a collision: packets of one SA from more
// than one source address, or from more than one UDP port of one address.
func (k KnownSA) ActiveSources(now, window uint64) []SASource {
	var out []SASource
	for _, s := range k.Sources {
		if s.LastSeenNs+window >= now {
			out = append(out, s)
		}
	}
	return out
}

// Collision says whether the SA had packets from two or more sources within
// window of now.
func (k KnownSA) Collision(now, window uint64) bool {
	return len(k.ActiveSources(now, window)) >= 2
}

// String formats a source as address, or address:port for ESP-in-UDP.
func (s SASource) String() string {
	if s.Port == 0 {
		return s.Addr.String()
	}
	return netip.AddrPortFrom(s.Addr, s.Port).String()
}
