// SPDX-License-Identifier: Apache-2.0

package maps

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// AddKnown adds SAs to the known set. SAs already there keep their counters.
// On error nothing is left half-added: the SAs this call added are removed again.
func (m *Maps) AddKnown(sas ...SA) error {
	zero := make([]saStats, m.ncpu)
	var added []saKey
	for _, sa := range sas {
		k := sa.key()
		err := m.known.Update(k, zero, ebpf.UpdateNoExist)
		if errors.Is(err, ebpf.ErrKeyExist) {
			continue
		}
		if err != nil {
			for _, a := range added {
				_ = m.known.Delete(a)
			}
			if isE2BIG(err) {
				return fmt.Errorf("adding known SA %s: the known-SA map is full (%d entries)", sa, m.known.MaxEntries())
			}
			return fmt.Errorf("adding known SA %s: %w", sa, err)
		}
		added = append(added, k)
	}
	return nil
}

// RemoveKnown removes SAs from the known set; SAs not there are ignored.
func (m *Maps) RemoveKnown(sas ...SA) error {
	for _, sa := range sas {
		if err := m.known.Delete(sa.key()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("removing known SA %s: %w", sa, err)
		}
	}
	return nil
}

// ReplaceKnown makes the known set equal to sas: it adds the new ones first (so a
// failure leaves the old set in place), then removes the ones no longer wanted.
// When the map has no room for old and new at once, it removes first.
// SAs in both keep their counters.
func (m *Maps) ReplaceKnown(sas []SA) error {
	cur, err := m.knownKeys()
	if err != nil {
		return err
	}
	want := make(map[saKey]bool, len(sas))
	var add []SA
	for _, sa := range sas {
		k := sa.key()
		if !want[k] && !cur[k] {
			add = append(add, sa)
		}
		want[k] = true
	}
	if len(want) > int(m.known.MaxEntries()) {
		return fmt.Errorf("replacing known SAs: %d SAs do not fit the known-SA map (%d entries)", len(want), m.known.MaxEntries())
	}
	remove := func() error {
		for k := range cur {
			if !want[k] {
				if err := m.known.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return fmt.Errorf("removing known SA %s: %w", k.sa(), err)
				}
			}
		}
		return nil
	}
	removeFirst := len(cur)+len(add) > int(m.known.MaxEntries())
	if removeFirst {
		if err := remove(); err != nil {
			return err
		}
	}
	if err := m.AddKnown(add...); err != nil {
		return err
	}
	if !removeFirst {
		return remove()
	}
	return nil
}

func (m *Maps) knownKeys() (map[saKey]bool, error) {
	keys := map[saKey]bool{}
	var k saKey
	it := m.known.Iterate()
	vals := make([]saStats, m.ncpu)
	for it.Next(&k, &vals) {
		keys[k] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("listing known SAs: %w", err)
	}
	return keys, nil
}

// ListKnown returns every known SA with its counters summed over CPUs.
func (m *Maps) ListKnown() ([]KnownSA, error) {
	var out []KnownSA
	var k saKey
	vals := make([]saStats, m.ncpu)
	it := m.known.Iterate()
	for it.Next(&k, &vals) {
		ks := KnownSA{SA: k.sa()}
		for _, v := range vals {
			ks.Packets += v.Packets
			ks.Bytes += v.Bytes
			ks.LastSeenNs = max(ks.LastSeenNs, v.LastSeenNs)
			ks.MaxSeq = max(ks.MaxSeq, v.MaxSeq)
		}
		out = append(out, ks)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("listing known SAs: %w", err)
	}
	return out, nil
}

// String formats an SA as 0xSPI@dst, or 0xSPI@any.
func (s SA) String() string {
	if !s.Dst.IsValid() {
		return fmt.Sprintf("0x%08x@any", s.SPI)
	}
	return fmt.Sprintf("0x%08x@%s", s.SPI, s.Dst)
}
