// SPDX-License-Identifier: Apache-2.0

package maps

import "github.com/cilium/ebpf"

// The external tests (package maps_test) load the maps through loader, which imports
// this package: an internal test could not import loader without a cycle. This file
// lends them the mirrors and the raw maps.

type (
	SwCount  = swCount
	SAStats  = saStats
	SAKeyRaw = saKey
)

// SlotsPerIface is the number of counter slots of one interface.
const SlotsPerIface = slotsPerIface

// SetKnownStats overwrites the per-CPU counts of a known SA, wherever it lives.
func (m *Maps) SetKnownStats(sa SA, stats []SAStats) error {
	k := sa.key()
	vals := make([]knownSPI, m.ncpu)
	if err := m.known.Lookup(k.SPI, &vals); err != nil {
		return err
	}
	if vals[0].Flags&knownMulti != 0 {
		return m.knownMulti.Update(k, stats, ebpf.UpdateExist)
	}
	for i := range vals {
		vals[i].St = stats[i]
	}
	return m.known.Update(k.SPI, vals, ebpf.UpdateExist)
}

// CountersMap is the raw class-counter map.
func (m *Maps) CountersMap() *ebpf.Map { return m.counters }

// NCPU is the number of per-CPU values the Maps read.
func (m *Maps) NCPU() int { return m.ncpu }

// UnknownIterate reads the unknown table without batch operations.
func (m *Maps) UnknownIterate() ([]Unknown, error) { return m.unknownIterate() }

// RawKey is the map key of an SA.
func (s SA) RawKey() SAKeyRaw { return s.key() }

// Combine is combine, for tests.
func Combine(sa SA, per []SAStats) KnownSA { return combine(sa.key(), per) }
