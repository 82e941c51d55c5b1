// SPDX-License-Identifier: Apache-2.0

package maps

import (
	"errors"

	"github.com/cilium/ebpf"
)

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
	if slot := m.frontSlot(k.SPI); m.knownFront.Lookup(slot, &vals) == nil && vals[0].Daddr == k.Daddr {
		if _, held, err := m.frontLookup(k.SPI); err != nil || held {
			for i := range vals {
				vals[i].St = stats[i]
			}
			return m.knownFront.Update(slot, vals, ebpf.UpdateExist)
		}
	}
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

// InFront says whether the known SA of spi is in the front (maps/front.go).
func (m *Maps) InFront(spi uint32) bool {
	m.knownMu.Lock()
	defer m.knownMu.Unlock()
	_, held, _ := m.frontLookup(spi)
	return held
}

// SetFault makes f be asked before each write of the known set (nil: none).
func (m *Maps) SetFault(f func() error) {
	m.knownMu.Lock()
	defer m.knownMu.Unlock()
	m.fault = f
}

// RawKnownEntries counts the entries of sw_known and sw_known_multi as they are,
// the ones the program never reaches included.
func (m *Maps) RawKnownEntries() (known, multi int, err error) {
	var spi uint32
	vals := make([]knownSPI, m.ncpu)
	it := m.known.Iterate()
	for it.Next(&spi, &vals) {
		known++
	}
	var k saKey
	st := make([]saStats, m.ncpu)
	it2 := m.knownMulti.Iterate()
	for it2.Next(&k, &st) {
		multi++
	}
	return known, multi, errors.Join(it.Err(), it2.Err())
}

// FrontFlags is the flags half of a front slot's word.
func (m *Maps) FrontFlags(slot uint32) uint32 {
	var flags uint32
	_ = m.withWords(false, func(words []uint64) error {
		_, flags = frontWord(words, slot)
		return nil
	})
	return flags
}

// Front slot flags (enum sw_front_flags).
const (
	FrontUsed     = frontUsed
	FrontOverflow = frontOverflow
	FrontGrace    = frontGrace
)

// FrontSlot is the front slot of spi.
func (m *Maps) FrontSlot(spi uint32) uint32 { return m.frontSlot(spi) }

// CountersMap is the raw class-counter map.
func (m *Maps) CountersMap() *ebpf.Map { return m.counters }

// NCPU is the number of per-CPU values the Maps read.
func (m *Maps) NCPU() int { return m.ncpu }

// UnknownIterate reads the unknown table without batch operations.
func (m *Maps) UnknownIterate() ([]Unknown, error) {
	rows, err := m.unknownIterate(nil)
	for i := range rows {
		rows[i].tick = 0
	}
	return rows, err
}

// RawKey is the map key of an SA.
func (s SA) RawKey() SAKeyRaw { return s.key() }

// Combine is combine, for tests.
func Combine(sa SA, per []SAStats) KnownSA { return combine(sa.key(), per) }

// TableSnapshot reads the unknown table alone, without the per-CPU front.
func (m *Maps) TableSnapshot() ([]Unknown, error) { return m.readTable(nil) }

// DeleteRow removes a row from the unknown table as an LRU eviction would
// (uncounted, unlike ClearUnknown).
func (m *Maps) DeleteRow(u Unknown) error { return m.unknown.Delete(keyOf(&u)) }

// HotSlot is the front slot the program picks for a row (hot_slot in
// bpf/spiwatch.c).
func HotSlot(u Unknown) uint32 {
	k := keyOf(&u)
	w3 := uint32(k.Saddr[12]) | uint32(k.Saddr[13])<<8 | uint32(k.Saddr[14])<<16 | uint32(k.Saddr[15])<<24
	w7 := uint32(k.Daddr[12]) | uint32(k.Daddr[13])<<8 | uint32(k.Daddr[14])<<16 | uint32(k.Daddr[15])<<24
	h := w3 ^ (w7 * 0x85ebca6b) ^ k.SPI ^ (uint32(k.Sport)<<16 | uint32(k.Dport))
	return (h * 0x9e3779b1) >> (32 - 8)
}
