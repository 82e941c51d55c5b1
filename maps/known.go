// SPDX-License-Identifier: Apache-2.0

package maps

import (
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"

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
// front (maps/front.go). Called with knownMu held. It also removes what a failed
// change can leave behind and the program never reaches (orphans): shared-map
// entries of an SPI without its MULTI mark, and sw_known's entry for an SPI the
// front holds (the program looks no further than the front for it).
func (m *Maps) knownGroups() (map[uint32]group, map[uint32]bool, error) {
	groups, front, orphans, err := m.readKnown()
	if err != nil {
		return nil, nil, err
	}
	for _, o := range orphans {
		if err := o.remove(m); err != nil {
			return nil, nil, err
		}
	}
	return groups, front, nil
}

// orphan is a map entry the program never reaches (knownGroups).
type orphan struct {
	spi   uint32 // sw_known's entry, when multi is false
	key   saKey  // the shared map's entry, when multi is true
	multi bool
}

func (o orphan) remove(m *Maps) error {
	var err error
	if o.multi {
		err = m.knownMulti.Delete(o.key)
	} else {
		err = m.known.Delete(o.spi)
	}
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("removing a stale known-SA entry (SPI 0x%08x): %w", o.spi, err)
	}
	return nil
}

// readKnown reads the known set as the program sees it: groups by SPI, the SPIs
// whose SA is in the front, and the entries it never reaches. Called with
// knownMu held.
func (m *Maps) readKnown() (map[uint32]group, map[uint32]bool, []orphan, error) {
	groups := map[uint32]group{}
	front := map[uint32]bool{}
	sas, err := m.frontKeys()
	if err != nil {
		return nil, nil, nil, err
	}
	for _, k := range sas {
		groups[k.SPI] = group{k}
		front[k.SPI] = true
	}
	var orphans []orphan
	marked := map[uint32]bool{} // SPIs with a MULTI mark the program follows
	err = m.eachKnown(func(spi uint32, v *knownSPI) {
		switch {
		case front[spi]:
			orphans = append(orphans, orphan{spi: spi})
		case v.Flags&knownMulti == 0:
			groups[spi] = group{{SPI: spi, Daddr: v.Daddr}}
		default:
			marked[spi] = true
		}
	})
	if err != nil {
		return nil, nil, nil, err
	}
	var k saKey
	stats := make([]saStats, m.ncpu)
	it := m.knownMulti.Iterate()
	for it.Next(&k, &stats) {
		if !marked[k.SPI] {
			orphans = append(orphans, orphan{spi: k.SPI, key: k, multi: true})
			continue
		}
		groups[k.SPI] = append(groups[k.SPI], k)
	}
	if err := it.Err(); err != nil {
		return nil, nil, nil, fmt.Errorf("listing known SAs: %w", err)
	}
	return groups, front, orphans, nil
}

// knownBatch is how many sw_known entries one system call reads (with every
// CPU's copy of each value).
const knownBatch = 512

// eachKnown calls f with every sw_known entry: its SPI and the first CPU's copy
// of its value (the address and flags, which Go writes to every copy). In
// batches: one system call per entry and two per key (the iterator's next key,
// then the lookup) took most of an update's time, 236 ms at 50,000 SAs.
func (m *Maps) eachKnown(f func(spi uint32, v *knownSPI)) error {
	keys := make([]uint32, knownBatch)
	vals := make([]knownSPI, knownBatch*m.ncpu)
	var cursor ebpf.MapBatchCursor
	for first := true; ; first = false {
		n, err := m.known.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			f(keys[i], &vals[i*m.ncpu])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil
		case first && (errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, syscall.EINVAL)):
			return m.iterateKnown(f) // a kernel without batch reads of hash maps
		case err != nil:
			return fmt.Errorf("listing known SAs: %w", err)
		}
	}
}

func (m *Maps) iterateKnown(f func(spi uint32, v *knownSPI)) error {
	var spi uint32
	vals := make([]knownSPI, m.ncpu)
	it := m.known.Iterate()
	for it.Next(&spi, &vals) {
		f(spi, &vals[0])
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("listing known SAs: %w", err)
	}
	return nil
}

// AddKnown adds SAs to the known set. SAs already there keep their counters.
func (m *Maps) AddKnown(sas ...SA) error {
	m.knownMu.Lock()
	defer m.knownMu.Unlock()
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
	m.knownMu.Lock()
	defer m.knownMu.Unlock()
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
// fit), and a failure puts back the set that was there (applyKnown).
func (m *Maps) ReplaceKnown(sas []SA) error {
	m.knownMu.Lock()
	defer m.knownMu.Unlock()
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

// multiEntries is how many shared-map entries an SPI's group takes.
func multiEntries(g group) int {
	if len(g) > 1 {
		return len(g)
	}
	return 0
}

// applyKnown turns the maps' set cur (front: the SPIs whose SA is in the front)
// into want. Called with knownMu held. A failure after the maps began to change
// puts cur back, every SA with its counts (those the change took out were saved).
func (m *Maps) applyKnown(cur map[uint32]group, front map[uint32]bool, want map[uint32]group) error {
	m.saved = map[saKey][]saStats{}
	defer func() { m.saved = nil }()
	changed, err := m.changeKnown(cur, front, want)
	if err == nil || !changed {
		return err
	}
	// From what the maps hold now: a failed step leaves nothing the program
	// reaches that knownGroups does not read or clear.
	now, nowFront, rerr := m.knownGroups()
	if rerr == nil {
		_, rerr = m.changeKnown(now, nowFront, cloneGroups(cur))
	}
	if rerr != nil {
		return fmt.Errorf("%w; putting the known SAs back failed too: %v", err, rerr)
	}
	return err
}

// changeKnown is applyKnown without the way back; changed says whether it got as
// far as changing the maps.
func (m *Maps) changeKnown(cur map[uint32]group, front map[uint32]bool, want map[uint32]group) (changed bool, err error) {
	// Whatever happened, the overflow marks follow what sw_known holds.
	defer func() {
		if oerr := m.syncOverflow(); oerr != nil && err == nil {
			changed, err = true, oerr
		}
	}()
	spis, multi := 0, 0
	for spi, g := range want {
		if len(g) == 0 {
			delete(want, spi)
			continue
		}
		spis++
		multi += multiEntries(g)
	}
	if spis > int(m.known.MaxEntries()) {
		return false, fmt.Errorf("known SAs: %d SPIs do not fit: the known-SA map is full (%d entries); raise --known-table-size", spis, m.known.MaxEntries())
	}
	if multi > int(m.knownMulti.MaxEntries()) {
		return false, fmt.Errorf("known SAs: %d SAs share their SPI with another SA: the map for those is full (%d entries); raise --known-table-size", multi, m.knownMulti.MaxEntries())
	}
	// Removing last keeps every SA that stays findable throughout, but then the
	// old set's leavers and the new set share the maps on the way.
	union, leaving := spis, 0
	for spi, g := range cur {
		if want[spi] == nil {
			union++
			leaving += multiEntries(g)
		}
	}
	removeFirst := union > int(m.known.MaxEntries()) || multi+leaving > int(m.knownMulti.MaxEntries())

	// The changes, those that free shared-map entries first: the shared map then
	// only grows towards the new set's size, which fits.
	var steps []uint32
	for spi, g := range want {
		if !cur[spi].same(g) {
			steps = append(steps, spi)
		}
	}
	delta := func(spi uint32) int { return multiEntries(want[spi]) - multiEntries(cur[spi]) }
	slices.SortFunc(steps, func(a, b uint32) int {
		if d := delta(a) - delta(b); d != 0 {
			return d
		}
		return int(int64(a) - int64(b))
	})
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
	if removeFirst {
		if err := remove(); err != nil {
			return true, err
		}
	}
	for _, spi := range steps {
		inFront, err := m.setSPI(spi, cur[spi], want[spi], front[spi])
		if err != nil {
			return true, err
		}
		front[spi] = inFront
	}
	if !removeFirst {
		if err := remove(); err != nil {
			return true, err
		}
	}
	return len(steps) > 0 || union > spis, nil
}

// removeSPI forgets an SPI: the lookup entry first, so the program never follows
// a MULTI mark to entries that are going.
func (m *Maps) removeSPI(spi uint32, old group, inFront bool) error {
	if inFront {
		if err := m.saveFront(old[0]); err != nil {
			return err
		}
		_, err := m.frontDrop(spi, false)
		return err
	}
	if len(old) == 1 {
		if err := m.saveOwn(old[0]); err != nil {
			return err
		}
	}
	if err := m.known.Delete(spi); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("removing known SA %s: %w", old[0].sa(), err)
	}
	return m.dropMulti(old, nil)
}

// The counts of an SA a change takes out, saved (m.saved) from the front, its own
// sw_known entry or the shared map.

func (m *Maps) saveFront(k saKey) error {
	st, ok, err := m.frontLookup(k.SPI)
	if ok {
		m.save(k, st)
	}
	return err
}

func (m *Maps) saveOwn(k saKey) error {
	vals := make([]knownSPI, m.ncpu)
	if err := m.known.Lookup(k.SPI, &vals); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return fmt.Errorf("reading known SA %s: %w", k.sa(), err)
	}
	st := make([]saStats, m.ncpu)
	for i, v := range vals {
		st[i] = v.St
	}
	m.save(k, st)
	return nil
}

func (m *Maps) saveMulti(k saKey) error {
	st := make([]saStats, m.ncpu)
	if err := m.knownMulti.Lookup(k, &st); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return fmt.Errorf("reading known SA %s: %w", k.sa(), err)
	}
	m.save(k, st)
	return nil
}

func (m *Maps) save(k saKey, st []saStats) {
	if m.saved != nil {
		m.saved[k] = st
	}
}

// initial is the per-CPU counts SA k starts with where it is put: what a change
// took out of it, when the old set is being put back; else zero.
func (m *Maps) initial(k saKey) []saStats {
	if st, ok := m.saved[k]; ok {
		delete(m.saved, k)
		return st
	}
	return make([]saStats, m.ncpu)
}

// setSPI makes the SAs of spi equal to g (non-empty), carrying the counts of SAs
// that stay when they move between the maps. inFront says where spi's single SA
// is now; it returns where it is after. An SA that moves has its counts read just
// before the word, mark or entry that sends its packets to the new place changes:
// only what the program counts in those few microseconds is not carried.
func (m *Maps) setSPI(spi uint32, old, g group, inFront bool) (bool, error) {
	if len(g) == 1 {
		k := g[0]
		if old == nil { // a new SPI: the front if its slot is free
			if put, err := m.frontPut(k); put || err != nil {
				return put, err
			}
		}
		stats := m.initial(k)
		if len(old) > 1 && old.has(k) { // from the shared map back to its own entry
			if err := m.knownMulti.Lookup(k, &stats); err != nil {
				return false, fmt.Errorf("moving known SA %s: %w", k.sa(), err)
			}
		}
		if len(old) == 1 && !inFront { // its own entry goes to k
			if err := m.saveOwn(old[0]); err != nil {
				return inFront, err
			}
		}
		if err := m.putSPI(k, stats, 0); err != nil {
			return inFront, err
		}
		if inFront { // another destination than the front's SA: that SA goes
			if err := m.saveFront(old[0]); err != nil {
				return inFront, err
			}
			if err := m.frontRelease(spi); err != nil {
				return inFront, err
			}
		}
		return false, m.dropMulti(old, g)
	}
	// Several SAs. What old has and g does not goes first, so the shared map
	// never holds more than the larger of the two; then the new entries, and the
	// mark that sends lookups to them.
	if err := m.dropMulti(old, g); err != nil {
		return inFront, err
	}
	var mover *saKey // old's single SA, which g keeps
	if len(old) == 1 && g.has(old[0]) {
		mover = &old[0]
	}
	for _, k := range g {
		if len(old) > 1 && old.has(k) || mover != nil && k == *mover {
			continue
		}
		if err := m.putMulti(k, m.initial(k)); err != nil {
			return inFront, err
		}
	}
	if len(old) > 1 {
		return false, nil
	}
	if len(old) == 1 && mover == nil { // old's SA goes: the mark or slot change ends it
		save := m.saveOwn
		if inFront {
			save = m.saveFront
		}
		if err := save(old[0]); err != nil {
			return inFront, err
		}
	}
	if inFront { // the mark first: the front still answers for spi
		if err := m.putSPI(saKey{SPI: spi}, make([]saStats, m.ncpu), knownMulti); err != nil {
			return inFront, err
		}
	}
	if mover != nil {
		carried := make([]saStats, m.ncpu)
		if inFront {
			if st, ok, err := m.frontLookup(spi); err != nil {
				return inFront, err
			} else if ok {
				carried = st
			}
		} else {
			vals := make([]knownSPI, m.ncpu)
			if err := m.known.Lookup(spi, &vals); err == nil {
				for i, v := range vals {
					carried[i] = v.St
				}
			}
		}
		if err := m.putMulti(*mover, carried); err != nil {
			return inFront, err
		}
	}
	if inFront { // the slot sends lookups on to the mark as it lets the SA go
		if err := m.frontRelease(spi); err != nil {
			return inFront, err
		}
		return false, nil
	}
	return false, m.putSPI(saKey{SPI: spi}, make([]saStats, m.ncpu), knownMulti)
}

// putMulti writes k's shared-map entry with its per-CPU counts.
func (m *Maps) putMulti(k saKey, stats []saStats) error {
	if err := m.injected(); err != nil {
		return err
	}
	if err := updateAllocating(m.knownMulti, k, stats); err != nil {
		if isE2BIG(err) {
			return fmt.Errorf("adding known SA %s: the map of SAs sharing an SPI is full (%d entries)", k.sa(), m.knownMulti.MaxEntries())
		}
		return fmt.Errorf("adding known SA %s: %w", k.sa(), err)
	}
	return nil
}

// injected is the fault a test set for the next write, if any.
func (m *Maps) injected() error {
	if m.fault != nil {
		return m.fault()
	}
	return nil
}

// putSPI writes spi's lookup entry: k's destination, flags and per-CPU counts.
func (m *Maps) putSPI(k saKey, stats []saStats, flags uint32) error {
	if err := m.injected(); err != nil {
		return err
	}
	if flags&knownMulti == 0 && k.Daddr == ([16]byte{}) {
		flags |= knownAnyDst
	}
	vals := make([]knownSPI, m.ncpu)
	for i := range vals {
		vals[i] = knownSPI{St: stats[i], Daddr: k.Daddr, Flags: flags}
	}
	if err := updateAllocating(m.known, k.SPI, vals); err != nil {
		if isE2BIG(err) {
			return fmt.Errorf("adding known SA %s: the known-SA map is full (%d entries)", k.sa(), m.known.MaxEntries())
		}
		return fmt.Errorf("adding known SA %s: %w", k.sa(), err)
	}
	return nil
}

// allocAttempts bounds the tries of one insert that the kernel's allocator
// refuses (updateAllocating).
const allocAttempts = 10

// updateAllocating is Update for the known-SA maps, which are not preallocated:
// the kernel's BPF allocator serves their entries from per-CPU caches that it
// refills in the background, and an insert that finds the cache empty fails
// with ENOMEM though memory is there (2 bulk adds of 50,000 SAs in 3 failed so,
// at a random SA, and the whole change went back). Such an insert is tried
// again after a pause; an ENOMEM that lasts (1, 2 ... 10 x 100 us) is real.
func updateAllocating(mp *ebpf.Map, key, val any) error {
	var err error
	for i := range allocAttempts {
		if err = mp.Update(key, val, ebpf.UpdateAny); !errors.Is(err, syscall.ENOMEM) {
			return err
		}
		time.Sleep(time.Duration(i+1) * 100 * time.Microsecond)
	}
	return err
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
		if !g.has(k) { // an SA that goes (g's single SA was carried)
			if err := m.saveMulti(k); err != nil {
				return err
			}
		}
		if err := m.knownMulti.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("removing known SA %s: %w", k.sa(), err)
		}
	}
	return nil
}

// ListKnown returns every known SA with its CPUs' counters combined: as the
// program finds them, each once (not while an SA moves between the maps, and
// without the entries a failed change left that it never reaches).
func (m *Maps) ListKnown() ([]KnownSA, error) {
	m.knownMu.Lock()
	defer m.knownMu.Unlock()
	var out []KnownSA
	sas, stats, err := m.frontSAs(true)
	if err != nil {
		return nil, err
	}
	inFront := map[uint32]bool{}
	for slot, k := range sas {
		out = append(out, combine(k, stats[slot]))
		inFront[k.SPI] = true
	}
	marked := map[uint32]bool{}
	per := make([]saStats, m.ncpu)
	var spi uint32
	vals := make([]knownSPI, m.ncpu)
	it := m.known.Iterate()
	for it.Next(&spi, &vals) {
		switch {
		case inFront[spi]:
		case vals[0].Flags&knownMulti != 0:
			marked[spi] = true
		default:
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
		if marked[k.SPI] {
			out = append(out, combine(k, per))
		}
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
