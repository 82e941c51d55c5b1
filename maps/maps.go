// SPDX-License-Identifier: Apache-2.0

package maps

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"

	"github.com/spiwatch/spiwatch/internal/classify"
)

// Maps is the set of spiwatch's maps, as loaded or opened from pins.
type Maps struct {
	known, knownMulti, unknown, counters, tally *ebpf.Map
	icmp, ike, diagTally                        *ebpf.Map
	ncpu                                        int
	// deleted counts unknown-table entries removed by us, so that evictions stay
	// exact: evictions = inserts - entries - deleted.
	deleted atomic.Uint64
	// the same for the ICMP-error and IKE tables
	diagMu                  sync.Mutex
	icmpDeleted, ikeDeleted uint64
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
	return &Maps{known: ms[KnownName], knownMulti: ms[KnownMultiName], unknown: ms[UnknownName],
		counters: ms[CountersName], tally: ms[TallyName], icmp: ms[ICMPName], ike: ms[IKEName],
		diagTally: ms[DiagTallyName], ncpu: ncpu}, nil
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
	for i, dst := range []*uint64{&t.Inserts, &t.InsertFails} {
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
	return nil
}
