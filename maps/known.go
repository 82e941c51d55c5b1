// SPDX-License-Identifier: Apache-2.0

package maps

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
)

// The known-SA set lives in the front (maps/front.go: a new SA whose slot is
// free) and two maps (bpf/spiwatch.c): sw_known by SPI alone, holding the SA's
// destination and counts, for the usual SPI that names one SA; and, for an SPI
// several SAs share, a MULTI mark there and one sw_known_multi entry per SA by
// (SPI, destination). Every change below keeps the program finding the SAs that
// stay: new entries are written before the marks that lead to them, and marks
// are changed before the entries they no longer need are removed.

// group is the SAs of one SPI, as keys.
type group []saKey

func (g group) has(k saKey) bool { return slices.Contains(g, k) }

func (g group) same(o group) bool {
	if len(g) != len(o) {
		return false
	}
	for _, k := range g {
		if !o.has(k) {
			return false
		}
	}
	return true
}

// knownGroups reads the SAs in the maps, by SPI, and which SPIs' SA is in the
// front (maps/front.go).
func (m *Maps) knownGroups() (map[uint32]group, map[uint32]bool, error) {
	groups := map[uint32]group{}
	front := map[uint32]bool{}
	m.knownMu.Lock()
	sas, err := m.frontKeys()
	for _, k := range sas { // under the lock: applyKnown changes the cache
		groups[k.SPI] = group{k}
		front[k.SPI] = true
	}
	m.knownMu.Unlock()
	if err != nil {
		return nil, nil, err
	}
	var spi uint32
	vals := make([]knownSPI, m.ncpu)
	it := m.known.Iterate()
	for it.Next(&spi, &vals) {
		if vals[0].Flags&knownMulti == 0 {
			groups[spi] = group{{SPI: spi, Daddr: vals[0].Daddr}}
		}
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("listing known SAs: %w", err)
	}
	var k saKey
	stats := make([]saStats, m.ncpu)
	it = m.knownMulti.Iterate()
	for it.Next(&k, &stats) {
		groups[k.SPI] = append(groups[k.SPI], k)
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("listing known SAs: %w", err)
	}
	return groups, front, nil
}

// AddKnown adds SAs to the known set. SAs already there keep their counters.
func (m *Maps) AddKnown(sas ...SA) error {
	cur, front, err := m.knownGroups()
	if err != nil {
		return err
	}
	want := cloneGroups(cur)
	for _, sa := range sas {
		k := sa.key()
		if !want[k.SPI].has(k) {
			want[k.SPI] = append(want[k.SPI], k)
		}
	}
	return m.applyKnown(cur, front, want)
}

// RemoveKnown removes SAs from the known set; SAs not there are ignored.
func (m *Maps) RemoveKnown(sas ...SA) error {
	cur, front, err := m.knownGroups()
	if err != nil {
		return err
	}
	want := cloneGroups(cur)
	for _, sa := range sas {
		k := sa.key()
		want[k.SPI] = slices.DeleteFunc(slices.Clone(want[k.SPI]), func(x saKey) bool { return x == k })
	}
	return m.applyKnown(cur, front, want)
}

// ReplaceKnown makes the known set equal to sas. SAs in both keep their counters.
// It checks that the new set fits before changing anything, adds and changes
// first and removes last (removing first only when old and new together do not
// fit), so a failure to add leaves the SAs that were there.
func (m *Maps) ReplaceKnown(sas []SA) error {
	cur, front, err := m.knownGroups()
	if err != nil {
		return err
	}
	want := map[uint32]group{}
	for _, sa := range sas {
		k := sa.key()
		if !want[k.SPI].has(k) {
			want[k.SPI] = append(want[k.SPI], k)
		}
	}
	return m.applyKnown(cur, front, want)
}

func cloneGroups(g map[uint32]group) map[uint32]group {
	out := make(map[uint32]group, len(g))
	for spi, ks := range g {
		out[spi] = slices.Clone(ks)
	}
	return out
}

// applyKnown turns the maps' set cur (front: the SPIs whose SA is in the front)
// into want.
func (m *Maps) applyKnown(cur map[uint32]group, front map[uint32]bool, want map[uint32]group) (err error) {
	m.knownMu.Lock()
	defer m.knownMu.Unlock()
	// Whatever happened, the overflow marks follow what sw_known holds.
	defer func() {
		if oerr := m.syncOverflow(); oerr != nil && err == nil {
			err = oerr
		}
	}()
	spis, multi, union := 0, 0, 0
	for spi, g := range want {
		if len(g) == 0 {
			delete(want, spi)
			continue
		}
		spis++
		if len(g) > 1 {
			multi += len(g)
		}
	}
	if spis > int(m.known.MaxEntries()) {
		return fmt.Errorf("known SAs: %d SPIs do not fit: the known-SA map is full (%d entries); raise --known-table-size", spis, m.known.MaxEntries())
	}
	if multi > int(m.knownMulti.MaxEntries()) {
		return fmt.Errorf("known SAs: %d SAs share their SPI with another SA: the map for those is full (%d entries); raise --known-table-size", multi, m.knownMulti.MaxEntries())
	}
	for spi := range cur {
		if want[spi] == nil {
			union++
		}
	}
	union += spis
	remove := func() error {
		for spi, g := range cur {
			if want[spi] == nil {
				if err := m.removeSPI(spi, g, front[spi]); err != nil {
					return err
				}
			}
		}
		return nil
	}
	removeFirst := union > int(m.known.MaxEntries())
	if removeFirst {
		if err := remove(); err != nil {
			return err
		}
	}
	var added []uint32
	for spi, g := range want {
		old := cur[spi]
		if old.same(g) {
			continue
		}
		inFront, err := m.setSPI(spi, old, g, front[spi])
		if err != nil {
			for _, a := range added { // new SPIs only: changed ones keep their new state
				_ = m.removeSPI(a, want[a], front[a])
			}
			return err
		}
		front[spi] = inFront
		if old == nil {
			added = append(added, spi)
		}
	}
	if !removeFirst {
		return remove()
	}
	return nil
}

// removeSPI forgets an SPI: the lookup entry first, so the program never follows
// a MULTI mark to entries that are going.
func (m *Maps) removeSPI(spi uint32, old group, inFront bool) error {
	if inFront {
		_, err := m.frontDrop(spi)
		return err
	}
	if err := m.known.Delete(spi); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("removing known SA %s: %w", old[0].sa(), err)
	}
	if len(old) > 1 {
		for _, k := range old {
			if err := m.knownMulti.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("removing known SA %s: %w", k.sa(), err)
			}
		}
	}
	return nil
}

// setSPI makes the SAs of spi equal to g (non-empty), carrying the counts of SAs
// that stay when they move between the maps. inFront says where spi's single SA
// is now; it returns where it is after.
func (m *Maps) setSPI(spi uint32, old, g group, inFront bool) (bool, error) {
	if len(g) == 1 {
		k := g[0]
		if old == nil { // a new SPI: the front if its slot is free
			if put, err := m.frontPut(k); put || err != nil {
				return put, err
			}
		}
		stats := make([]saStats, m.ncpu)
		if len(old) > 1 && old.has(k) { // from the shared map back to its own entry
			if err := m.knownMulti.Lookup(k, &stats); err != nil {
				return false, fmt.Errorf("moving known SA %s: %w", k.sa(), err)
			}
		}
		if err := m.putSPI(k, stats, 0); err != nil {
			return false, err
		}
		if inFront { // another destination than the front's SA: that SA goes
			if err := m.markOverflow(spi); err != nil {
				return false, err
			}
			if _, err := m.frontDrop(spi); err != nil {
				return false, err
			}
		}
		if len(old) > 1 {
			return false, m.dropMulti(old, g)
		}
		return false, nil
	}
	// Several SAs: their entries first, then the mark that sends lookups there.
	var carried []saStats
	if len(old) == 1 && g.has(old[0]) {
		if inFront {
			st, ok, err := m.frontLookup(spi)
			if err != nil {
				return inFront, err
			}
			if ok {
				carried = st
			}
		} else {
			vals := make([]knownSPI, m.ncpu)
			if err := m.known.Lookup(spi, &vals); err == nil {
				for _, v := range vals {
					carried = append(carried, v.St)
				}
			}
		}
	}
	for _, k := range g {
		if len(old) > 1 && old.has(k) {
			continue
		}
		stats := make([]saStats, m.ncpu)
		if carried != nil && k == old[0] {
			stats = carried
		}
		if err := m.knownMulti.Update(k, stats, ebpf.UpdateAny); err != nil {
			if isE2BIG(err) {
				return inFront, fmt.Errorf("adding known SA %s: the map of SAs sharing an SPI is full (%d entries)", k.sa(), m.knownMulti.MaxEntries())
			}
			return inFront, fmt.Errorf("adding known SA %s: %w", k.sa(), err)
		}
	}
	if len(old) <= 1 {
		if err := m.putSPI(saKey{SPI: spi}, make([]saStats, m.ncpu), knownMulti); err != nil {
			return inFront, err
		}
	}
	if inFront { // the slot sends lookups on to the mark before it lets the SA go
		if err := m.markOverflow(spi); err != nil {
			return inFront, err
		}
		if _, err := m.frontDrop(spi); err != nil {
			return inFront, err
		}
	}
	return false, m.dropMulti(old, g)
}

// putSPI writes spi's lookup entry: k's destination, flags and per-CPU counts.
func (m *Maps) putSPI(k saKey, stats []saStats, flags uint32) error {
	if flags&knownMulti == 0 && k.Daddr == ([16]byte{}) {
		flags |= knownAnyDst
	}
	vals := make([]knownSPI, m.ncpu)
	for i := range vals {
		vals[i] = knownSPI{St: stats[i], Daddr: k.Daddr, Flags: flags}
	}
	if err := m.known.Update(k.SPI, vals, ebpf.UpdateAny); err != nil {
		if isE2BIG(err) {
			return fmt.Errorf("adding known SA %s: the known-SA map is full (%d entries)", k.sa(), m.known.MaxEntries())
		}
		return fmt.Errorf("adding known SA %s: %w", k.sa(), err)
	}
	return nil
}

// dropMulti removes the shared-map entries of old that g no longer has (all of
// them when g is a single SA, which now has its own entry).
func (m *Maps) dropMulti(old, g group) error {
	if len(old) <= 1 {
		return nil
	}
	for _, k := range old {
		if len(g) > 1 && g.has(k) {
			continue
		}
		if err := m.knownMulti.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("removing known SA %s: %w", k.sa(), err)
		}
	}
	return nil
}

// ListKnown returns every known SA with its CPUs' counters combined.
func (m *Maps) ListKnown() ([]KnownSA, error) {
	var out []KnownSA
	sas, stats, err := m.frontSAs(true)
	if err != nil {
		return nil, err
	}
	for slot, k := range sas {
		out = append(out, combine(k, stats[slot]))
	}
	per := make([]saStats, m.ncpu)
	var spi uint32
	vals := make([]knownSPI, m.ncpu)
	it := m.known.Iterate()
	for it.Next(&spi, &vals) {
		if vals[0].Flags&knownMulti == 0 {
			for i := range vals {
				per[i] = vals[i].St
			}
			out = append(out, combine(saKey{SPI: spi, Daddr: vals[0].Daddr}, per))
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("listing known SAs: %w", err)
	}
	var k saKey
	it = m.knownMulti.Iterate()
	for it.Next(&k, &per) {
		out = append(out, combine(k, per))
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
