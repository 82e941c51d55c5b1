// SPDX-License-Identifier: Apache-2.0

// Package maps gives typed access to spiwatch's BPF maps: the known-SA set, the
// unknown-SPI table, the class counters and the table tallies. It mirrors the C
// structs of bpf/spiwatch.h; a test checks every mirror's size against the map specs.
package maps

import (
	"net/netip"

	"github.com/spiwatch/spiwatch/internal/classify"
)

// Limits shared with bpf/spiwatch.h.
const (
	MaxIfaces     = 64
	slotsPerIface = int(classify.NumClasses) * int(classify.NumOutcomes)
)

// Map names in the BPF object.
const (
	KnownName      = "sw_known"
	KnownMultiName = "sw_known_multi"
	UnknownName    = "sw_unknown"
	CountersName   = "sw_counters"
	TallyName      = "sw_tally"
	ICMPName       = "sw_icmp"
	IKEName        = "sw_ike"
	DiagTallyName  = "sw_diag_tally"
	DroppedName    = "sw_dropped"
	RateName       = "sw_rate"
	UnknownHotName = "sw_unknown_hot"
	KnownSlotName  = "sw_known_slot"
	KnownFrontName = "sw_known_front"
)

// Names are the maps every program instance shares (and --pin keeps).
var Names = []string{KnownName, KnownMultiName, KnownSlotName, KnownFrontName, UnknownName, UnknownHotName, CountersName, TallyName, ICMPName, IKEName, DiagTallyName, DroppedName, RateName}

// saKey mirrors struct sa_key.
type saKey struct {
	SPI   uint32
	Daddr [16]byte
}

// saStats mirrors struct sa_stats (one CPU's copy).
type saStats struct {
	Packets      uint64
	Bytes        uint64
	LastSeenNs   uint64
	SeqWindow    uint64
	MaxSeq       uint32
	FirstSeq     uint32
	Src          [16]byte
	SrcPort      uint16
	OtherPort    uint16
	Restarts     uint32
	Gaps         uint64
	Late         uint64
	Dups         uint64
	Replays      uint64
	OtherPackets uint64
	OtherLastNs  uint64
	OtherSrc     [16]byte
	Wraps        uint32
	_            uint32
	LastJiffies  uint64
	TickNs       uint64
}

// rateKey mirrors struct rate_key.
type rateKey struct {
	Saddr [16]byte
}

// rateBucket mirrors struct rate_bucket.
type rateBucket struct {
	CreditNs uint64
	LastNs   uint64
}

// knownSPI mirrors struct known_spi (one CPU's copy).
type knownSPI struct {
	St    saStats
	Daddr [16]byte
	Flags uint32
	_     uint32
}

// known_spi flags (enum sw_known_flags).
const (
	knownAnyDst = 1 // the SA matches any destination
	knownMulti  = 2 // several SAs share the SPI: see sw_known_multi
)

// unknownKey mirrors struct unknown_key.
type unknownKey struct {
	Saddr   [16]byte
	Daddr   [16]byte
	SPI     uint32
	Ifindex uint32
	Sport   uint16
	Dport   uint16
}

// unknownStats mirrors struct unknown_stats.
type unknownStats struct {
	Packets     uint64
	Bytes       uint64
	FirstSeenNs uint64
	LastSeenNs  uint64
	LastJiffies uint64
	LastSeq     uint32
	_           uint32
}

// hotSlots is SW_HOT_SLOTS: the unknown table's per-CPU front has this many slots.
const hotSlots = 256

// unknownHot mirrors struct unknown_hot.
type unknownHot struct {
	Key         unknownKey
	Used        uint32
	Packets     uint64
	Bytes       uint64
	FirstSeenNs uint64
	LastSeenNs  uint64
	LastJiffies uint64
	LastSeq     uint32
	_           uint32
}

// swCount mirrors struct sw_count.
type swCount struct {
	Packets uint64
	Bytes   uint64
}

// SA names a known Security Association the way the kernel looks it up: by SPI and
// destination. An invalid (zero) Dst matches any destination.
type SA struct {
	SPI uint32
	Dst netip.Addr
}

func (s SA) key() saKey {
	k := saKey{SPI: s.SPI}
	if s.Dst.IsValid() {
		k.Daddr = s.Dst.As16()
	}
	return k
}

func (k saKey) sa() SA {
	if k.Daddr == ([16]byte{}) {
		return SA{SPI: k.SPI} // the any-destination entry
	}
	return SA{SPI: k.SPI, Dst: addrFrom16(k.Daddr)}
}

// addrFrom16 turns a map address back into a netip.Addr: IPv4-mapped addresses
// become IPv4. All zeroes is the IPv6 address ::, which packets can carry.
func addrFrom16(b [16]byte) netip.Addr {
	return netip.AddrFrom16(b).Unmap()
}

// KnownSA is a known SA with its CPUs' counters combined (see combine).
type KnownSA struct {
	SA
	Packets    uint64
	Bytes      uint64
	LastSeenNs uint64 // CLOCK_MONOTONIC; 0 when never seen
	MaxSeq     uint32
	Seq        SeqHealth
	// Sources the SA's packets came from, as far as the kernel remembers them:
	// each CPU's first source and the last other one, most recent first.
	Sources []SASource
	// OtherPackets came from another source than their CPU's first one.
	OtherPackets uint64
	// CPUs is how many CPUs saw packets of the SA.
	CPUs int
}

// SASource is one source address (and UDP port; 0 for ESP) of a known SA.
type SASource struct {
	Addr       netip.Addr
	Port       uint16
	LastSeenNs uint64
}

// SeqHealth is what the ESP sequence numbers of an SA's first source say
// (rules in bpf/spiwatch.h).
type SeqHealth struct {
	Lost     uint64 // estimated: numbers skipped and not arriving later (late)
	Late     uint64 // arrived behind the highest, within the 64-number window
	Dups     uint64 // arrived twice within the window
	Replays  uint64 // replay-suspect: behind the highest by 64 or more
	Restarts uint64 // dropped back to a low number: the peer started a new SA with this SPI
	Wraps    uint64 // ESN: the low 32 bits wrapped
	// Spread: the SA's packets arrived on several CPUs, each seeing part of the
	// stream; Lost is then estimated from the span of sequence numbers.
	Spread bool
}

// LossRatio is the estimated share of the SA's packets lost before they reached
// the gateway: lost / (received + lost).
func (k KnownSA) LossRatio() float64 {
	seen := k.Packets - min(k.Packets, k.OtherPackets)
	if seen+k.Seq.Lost == 0 {
		return 0
	}
	return float64(k.Seq.Lost) / float64(seen+k.Seq.Lost)
}

// Unknown is one row of the unknown-SPI table.
type Unknown struct {
	SPI              uint32
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // 0 for ESP over IP
	Ifindex          uint32
	Packets          uint64
	Bytes            uint64
	FirstSeenNs      uint64 // CLOCK_MONOTONIC
	LastSeenNs       uint64
	LastSeq          uint32
	// Evicted: the table evicted the row while a CPU's front still counted it;
	// these are the packets since, which the kernel puts back in the table with
	// the row's next packet. Not a table entry (TableRows).
	Evicted bool
	tick    uint64 // the tick of the table entry's last change, as read (maps/unknown.go)
}

// TableRows counts the rows of a snapshot that are unknown-table entries.
func TableRows(rows []Unknown) int {
	n := len(rows)
	for i := range rows {
		if rows[i].Evicted {
			n--
		}
	}
	return n
}

// Count is packets and bytes.
type Count struct {
	Packets uint64
	Bytes   uint64
}

// Add returns c + o.
func (c Count) Add(o Count) Count { return Count{c.Packets + o.Packets, c.Bytes + o.Bytes} }

// Counters holds one interface slot's counts per class and outcome, summed over CPUs.
type Counters [classify.NumClasses][classify.NumOutcomes]Count

// Class returns the class's count over all outcomes.
func (c *Counters) Class(cl classify.Class) Count {
	var t Count
	for _, v := range c[cl] {
		t = t.Add(v)
	}
	return t
}

// Total returns the count over all classes.
func (c *Counters) Total() Count {
	var t Count
	for cl := range c {
		t = t.Add(c.Class(classify.Class(cl)))
	}
	return t
}

// Tally is the tables' bookkeeping.
type Tally struct {
	Inserts     uint64 // keys the program added to the unknown table
	InsertFails uint64 // packets whose row could not be added (table refused, or lost a race)
	RateInserts uint64 // sources added to the --drop-above buckets
	RateFails   uint64 // sources it could not add (their packets were dropped)
}
