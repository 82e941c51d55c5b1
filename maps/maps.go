// SPDX-License-Identifier: Apache-2.0

package maps

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"

	"github.com/spiwatch/spiwatch/internal/classify"
)

// Maps is the set of spiwatch's maps, as loaded or opened from pins.
type Maps struct {
	known, knownMulti, unknown, counters, tally *ebpf.Map
	icmp, ike, diagTally, dropped, rate         *ebpf.Map
	unknownHot, knownSlot, knownFront           *ebpf.Map
	ncpu                                        int
	// knownMu orders changes of the known set; frontFreed holds when each front
	// slot was last given up (maps/front.go).
	knownMu    sync.Mutex
	frontFreed map[uint32]time.Time
	frontHeld  map[uint32]saKey // the front's SAs by slot, once read (maps/front.go)
	slotMem    []byte           // sw_known_slot mapped for writing, once written (maps/front.go)
	// saved holds, while a change of the known set runs, the counts of the SAs
	// it took out: putting the old set back after a failure gives them back.
	saved map[saKey][]saStats
	// fault, when set (tests, export_test.go), is asked before each write of
	// the known set and fails it with its error.
	fault func() error
	// hotMu makes the readers of the unknown table take turns (maps/unknown.go).
	hotMu sync.Mutex
	// deleted counts unknown-table entries removed by us, so that evictions stay
	// exact: evictions = inserts - entries - deleted.
	deleted atomic.Uint64
	// the same for the ICMP-error and IKE tables
	diagMu                  sync.Mutex
	icmpDeleted, ikeDeleted uint64
	// The evictions given so far, per table: a figure never goes below one
	// given before (see atLeast).
	unknownEvicted, icmpEvicted, ikeEvicted evictedFloor
}

// evictedFloor holds the highest evictions figure a table has been given.
// Inserts are read before the entries, so rows inserted between the two reads
// make a figure a few short (never over), and the next read would seem to
// un-evict them: a figure is never given below an earlier one.
type evictedFloor struct{ v atomic.Uint64 }

func (f *evictedFloor) atLeast(n uint64) uint64 {
	for {
		old := f.v.Load()
		if n <= old {
			return old
		}
		if f.v.CompareAndSwap(old, n) {
			return n
		}
	}
}

// FromCollection picks the maps (Names) out of a loaded collection's map set.
func FromCollection(ms map[string]*ebpf.Map) (*Maps, error) {
	for _, name := range Names {
		if ms[name] == nil {
			return nil, fmt.Errorf("opening maps: map %s is missing", name)
		}
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("counting possible CPUs: %w", err)
	}
	return &Maps{known: ms[KnownName], knownMulti: ms[KnownMultiName], unknown: ms[UnknownName], unknownHot: ms[UnknownHotName],
		counters: ms[CountersName], tally: ms[TallyName], icmp: ms[ICMPName], ike: ms[IKEName],
		diagTally: ms[DiagTallyName], dropped: ms[DroppedName], rate: ms[RateName], ncpu: ncpu,
		knownSlot: ms[KnownSlotName], knownFront: ms[KnownFrontName], frontFreed: map[uint32]time.Time{}}, nil
}

// UnknownCapacity is the unknown table's size.
func (m *Maps) UnknownCapacity() int { return int(m.unknown.MaxEntries()) }

// KnownCapacity is the known-SA map's size.
func (m *Maps) KnownCapacity() int { return int(m.known.MaxEntries()) }

// Counters returns the counts of one interface slot, summed over CPUs.
func (m *Maps) Counters(slot int) (Counters, error) {
	var c Counters
	if slot < 0 || slot >= MaxIfaces {
		return c, fmt.Errorf("reading counters: slot %d out of range 0-%d", slot, MaxIfaces-1)
	}
	n := slotsPerIface
	keys := make([]uint32, n)
	vals := make([]swCount, n*m.ncpu)
	first := uint32(slot * slotsPerIface)
	for i := range keys {
		keys[i] = first + uint32(i)
	}
	// Per-CPU arrays have no holes: one lookup per slot, values for every CPU.
	for i, k := range keys {
		if err := m.counters.Lookup(k, vals[i*m.ncpu:(i+1)*m.ncpu]); err != nil {
			return c, fmt.Errorf("reading counter %d: %w", k, err)
		}
	}
	for i := 0; i < n; i++ {
		cl, oc := i/int(classify.NumOutcomes), i%int(classify.NumOutcomes)
		for cpu := 0; cpu < m.ncpu; cpu++ {
			v := vals[i*m.ncpu+cpu]
			c[cl][oc].Packets += v.Packets
			c[cl][oc].Bytes += v.Bytes
		}
	}
	return c, nil
}

// Tally returns the unknown table's insert counts, summed over CPUs.
func (m *Maps) Tally() (Tally, error) {
	var t Tally
	for i, dst := range []*uint64{&t.Inserts, &t.InsertFails, &t.RateInserts, &t.RateFails} {
		vals := make([]uint64, m.ncpu)
		if err := m.tally.Lookup(uint32(i), vals); err != nil {
			return t, fmt.Errorf("reading tally %d: %w", i, err)
		}
		for _, v := range vals {
			*dst += v
		}
	}
	return t, nil
}

// Dropped returns one interface slot's unknown-SPI packets dropped (--action
// drop), per class, summed over CPUs. The rest of the class's unknown packets passed.
func (m *Maps) Dropped(slot int) ([classify.NumClasses]Count, error) {
	var d [classify.NumClasses]Count
	if slot < 0 || slot >= MaxIfaces {
		return d, fmt.Errorf("reading drop counts: slot %d out of range 0-%d", slot, MaxIfaces-1)
	}
	vals := make([]swCount, m.ncpu)
	for cl := range d {
		k := uint32(slot*int(classify.NumClasses) + cl)
		if err := m.dropped.Lookup(k, vals); err != nil {
			return d, fmt.Errorf("reading drop count %d: %w", k, err)
		}
		for _, v := range vals {
			d[cl].Packets += v.Packets
			d[cl].Bytes += v.Bytes
		}
	}
	return d, nil
}

// RateStats describes the --drop-above buckets' table.
type RateStats struct {
	Sources   int    // source addresses with a bucket
	Capacity  int    // the table's size
	Evictions uint64 // buckets evicted (inserts - sources); an evicted source starts again full
	Fails     uint64 // sources that could not get a bucket (their packets were dropped)
}

// RateTableStats counts the --drop-above buckets' table.
func (m *Maps) RateTableStats() (RateStats, error) {
	s := RateStats{Capacity: int(m.rate.MaxEntries())}
	var k rateKey
	it := m.rate.Iterate()
	vals := make([]rateBucket, m.ncpu)
	for it.Next(&k, &vals) {
		s.Sources++
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("reading the rate-limit table: %w", err)
	}
	t, err := m.Tally()
	if err != nil {
		return s, err
	}
	if t.RateInserts > uint64(s.Sources) {
		s.Evictions = t.RateInserts - uint64(s.Sources)
	}
	s.Fails = t.RateFails
	return s, nil
}

// Deleted is the number of unknown-table entries removed through these Maps.
func (m *Maps) Deleted() uint64 { return m.deleted.Load() }

// ResetCounters zeroes one interface slot's counters on every CPU, so an interface
// that takes over a slot starts from zero.
func (m *Maps) ResetCounters(slot int) error {
	if slot < 0 || slot >= MaxIfaces {
		return fmt.Errorf("resetting counters: slot %d out of range 0-%d", slot, MaxIfaces-1)
	}
	zero := make([]swCount, m.ncpu)
	for i := 0; i < slotsPerIface; i++ {
		k := uint32(slot*slotsPerIface + i)
		if err := m.counters.Update(k, zero, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("resetting counter %d: %w", k, err)
		}
	}
	for cl := 0; cl < int(classify.NumClasses); cl++ {
		k := uint32(slot*int(classify.NumClasses) + cl)
		if err := m.dropped.Update(k, zero, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("resetting drop count %d: %w", k, err)
		}
	}
	return nil
}
