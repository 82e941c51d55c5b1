// SPDX-License-Identifier: Apache-2.0

package maps

import "net/netip"

// SAState is one CPU's view of a known SA, kept exactly as the XDP program keeps
// it (sa_count and sa_seq in bpf/spiwatch.c, rules in bpf/spiwatch.h): the Go
// reference, used to read captures without BPF and by the tests that hold the
// program to it.
type SAState struct{ st saStats }

// Sequence-number rules, as in bpf/spiwatch.h.
const (
	seqWindow      = 64
	seqWrapZone    = 1 << 20
	seqRestartLow  = 1024
	seqRestartHigh = 1 << 16
)

// Count counts one packet of the SA from src (UDP source port sport, 0 for ESP)
// with ESP sequence number seq, length bytes long, at now (ns).
func (s *SAState) Count(src netip.Addr, sport uint16, seq uint32, length uint32, now uint64) {
	st := &s.st
	a := src.As16()
	switch {
	case st.Packets == 0:
		st.Src, st.SrcPort = a, sport
		st.MaxSeq, st.FirstSeq, st.SeqWindow = seq, seq, 1
	case st.Src != a || st.SrcPort != sport:
		st.Packets++
		st.Bytes += uint64(length)
		st.OtherPackets++
		st.OtherLastNs = now
		st.OtherSrc, st.OtherPort = a, sport
		return
	default:
		s.seq(seq)
	}
	st.Packets++
	st.Bytes += uint64(length)
	st.LastSeenNs = now
}

func (s *SAState) seq(seq uint32) {
	st := &s.st
	hi := st.MaxSeq
	beforeWrap := hi < seqWrapZone && seq >= 1<<32-seqWrapZone
	if !beforeWrap && (seq > hi || (hi >= 1<<32-seqWrapZone && seq < seqWrapZone)) {
		ahead := seq - hi
		if seq < hi {
			st.Wraps++
		}
		if ahead > 1 {
			st.Gaps += uint64(ahead - 1)
		}
		if ahead < seqWindow {
			st.SeqWindow = st.SeqWindow<<ahead | 1
		} else {
			st.SeqWindow = 1
		}
		st.MaxSeq = seq
		return
	}
	behind := hi - seq
	if behind < seqWindow {
		bit := uint64(1) << behind
		if st.SeqWindow&bit != 0 {
			st.Dups++
		} else {
			st.Late++
			st.SeqWindow |= bit
			if before := st.FirstSeq - seq; before != 0 && before < seqWindow {
				st.Gaps++ // it fills no gap counted on this CPU
			}
		}
		return
	}
	if seq < seqRestartLow && hi >= seqRestartHigh {
		st.Restarts++
		st.MaxSeq, st.FirstSeq, st.SeqWindow = seq, seq, 1
		return
	}
	st.Replays++
}

// Known is the SA with this state, as ListKnown would return it from one CPU.
func (s *SAState) Known(sa SA) KnownSA { return combine(sa.key(), []saStats{s.st}) }
