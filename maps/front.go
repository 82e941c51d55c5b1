// SPDX-License-Identifier: Apache-2.0

package maps

import (
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The known SAs' front (bpf/spiwatch.c): sw_known_slot holds one word per slot,
// the low half an SPI and the high half flags, and sw_known_front the slot's SA
// (destination and per-CPU counts). An SPI's slot is a hash of it. The program
// looks both up inline, which a hash map cannot be, and goes to sw_known only when
// the slot is marked OVERFLOW. So: a new SA whose slot is free goes in the front;
// any other SA (its slot taken, or its SPI shared with another SA) goes in
// sw_known, and its slot is marked.
//
// Go is the only writer. A word is written with one atomic store through a memory
// mapping of the array (a map update copies bytes, and a packet could read half
// of it). An SA's front entry is written only while no word leads to its slot,
// and a slot given up is not given to another SA for frontGrace: a packet that
// read the old word may still be counting there.

const (
	frontUsed     = 1 // enum sw_front_flags
	frontAnyDst   = 2
	frontOverflow = 4
	frontHash     = 0x9e3779b1 // SW_FRONT_HASH

	// FrontSlotsMax is the most slots the front gets (a power of two): each holds
	// a known_spi (176 bytes) per CPU, like an SA in sw_known.
	FrontSlotsMax = 4096

	frontGrace = time.Second // an XDP run lasts microseconds
)

// FrontSlots is the size of the known SAs' front for a known-SA map of knownMax
// entries: the largest power of two not above it or FrontSlotsMax.
func FrontSlots(knownMax uint32) uint32 {
	if knownMax == 0 {
		return 1
	}
	n := uint32(1) << (31 - bits.LeadingZeros32(knownMax))
	return min(n, FrontSlotsMax)
}

// FrontShift is the program's front_shift for a front of n slots (a power of two):
// slot = (spi * SW_FRONT_HASH) >> front_shift, in 64 bits.
func FrontShift(n uint32) uint32 { return 32 - uint32(bits.TrailingZeros32(n)) }

func (m *Maps) frontSlot(spi uint32) uint32 {
	return uint32(uint64(spi*frontHash) >> FrontShift(m.knownSlot.MaxEntries()))
}

// withWords gives f sw_known_slot's words: to change, mapped into memory (once,
// and kept until Close: a mapping per change would cost two system calls and a
// TLB flush while an SA moves), else a copy read in one batch (a read-only map,
// as spiwatch stats opens the pins, cannot be mapped). Writers hold knownMu.
func (m *Maps) withWords(write bool, f func(words []uint64) error) error {
	n := int(m.knownSlot.MaxEntries())
	if !write {
		keys, words := make([]uint32, n), make([]uint64, n)
		var cursor ebpf.MapBatchCursor
		got, err := m.knownSlot.BatchLookup(&cursor, keys, words, nil)
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("reading %s: %w", KnownSlotName, err)
		}
		if got != n {
			return fmt.Errorf("reading %s: %d of its %d words", KnownSlotName, got, n)
		}
		return f(words)
	}
	if m.slotMem == nil {
		size := (n*8 + unix.Getpagesize() - 1) &^ (unix.Getpagesize() - 1)
		mem, err := unix.Mmap(m.knownSlot.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("changing known SAs: map %s cannot be written here (open read-only?): %w", KnownSlotName, err)
			}
			return fmt.Errorf("mapping %s into memory: %w", KnownSlotName, err)
		}
		m.slotMem = mem
	}
	return f(unsafe.Slice((*uint64)(unsafe.Pointer(&m.slotMem[0])), n))
}

// Close gives back what the maps hold beside the kernel's maps: the memory
// mapping of sw_known_slot. The maps are not to be changed after it.
func (m *Maps) Close() error {
	m.knownMu.Lock()
	defer m.knownMu.Unlock()
	if m.slotMem == nil {
		return nil
	}
	err := unix.Munmap(m.slotMem)
	m.slotMem = nil
	return err
}

// frontWord is a slot's word, read atomically.
func frontWord(words []uint64, slot uint32) (spi, flags uint32) {
	w := atomic.LoadUint64(&words[slot])
	return uint32(w), uint32(w >> 32)
}

func storeWord(words []uint64, slot, spi, flags uint32) {
	atomic.StoreUint64(&words[slot], uint64(spi)|uint64(flags)<<32)
}

// frontSAs returns the SAs in the front by slot, with each CPU's counts when
// stats is set.
func (m *Maps) frontSAs(stats bool) (map[uint32]saKey, map[uint32][]saStats, error) {
	sas := map[uint32]saKey{}
	var per map[uint32][]saStats
	if stats {
		per = map[uint32][]saStats{}
	}
	err := m.withWords(false, func(words []uint64) error {
		for slot := range uint32(len(words)) {
			spi, flags := frontWord(words, slot)
			if flags&frontUsed == 0 {
				continue
			}
			k := saKey{SPI: spi}
			if flags&frontAnyDst == 0 || stats {
				vals := make([]knownSPI, m.ncpu)
				if err := m.knownFront.Lookup(slot, &vals); err != nil {
					return fmt.Errorf("reading known SA 0x%08x (front slot %d): %w", spi, slot, err)
				}
				if flags&frontAnyDst == 0 {
					k.Daddr = vals[0].Daddr
				}
				if stats {
					st := make([]saStats, m.ncpu)
					for i := range vals {
						st[i] = vals[i].St
					}
					per[slot] = st
				}
			}
			sas[slot] = k
		}
		return nil
	})
	return sas, per, err
}

// frontKeys returns the SAs in the front by slot, read from the maps once and
// then kept by frontPut and frontDrop (Go is the only writer): a change of the
// known set then costs no lookup per front SA. Called with knownMu held.
func (m *Maps) frontKeys() (map[uint32]saKey, error) {
	if m.frontHeld == nil {
		sas, _, err := m.frontSAs(false)
		if err != nil {
			return nil, err
		}
		m.frontHeld = sas
	}
	return m.frontHeld, nil
}

// frontPut puts SA k, with zero counts, in its slot if the slot is free; false if
// it is not.
func (m *Maps) frontPut(k saKey) (bool, error) {
	slot := m.frontSlot(k.SPI)
	if t, ok := m.frontFreed[slot]; ok && time.Since(t) < frontGrace {
		return false, nil
	}
	put := false
	err := m.withWords(true, func(words []uint64) error {
		_, flags := frontWord(words, slot)
		if flags&frontUsed != 0 {
			return nil
		}
		if err := m.injected(); err != nil {
			return err
		}
		vals := make([]knownSPI, m.ncpu)
		for i, st := range m.initial(k) {
			vals[i] = knownSPI{St: st, Daddr: k.Daddr}
		}
		// No word leads here yet: the entry first, then the word.
		if err := m.knownFront.Update(slot, vals, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("adding known SA %s (front slot %d): %w", k.sa(), slot, err)
		}
		flags = flags&frontOverflow | frontUsed
		if k.Daddr == ([16]byte{}) {
			flags |= frontAnyDst
		}
		storeWord(words, slot, k.SPI, flags)
		if m.frontHeld != nil {
			m.frontHeld[slot] = k
		}
		put = true
		return nil
	})
	return put, err
}

// frontDrop takes spi's SA out of its slot, keeping the slot's overflow mark or,
// with overflow, setting it in the same store (lookups of spi then go on to
// sw_known from that instant); false if the slot does not hold it.
func (m *Maps) frontDrop(spi uint32, overflow bool) (bool, error) {
	slot := m.frontSlot(spi)
	dropped := false
	err := m.withWords(true, func(words []uint64) error {
		s, flags := frontWord(words, slot)
		if flags&frontUsed == 0 || s != spi {
			return nil
		}
		if err := m.injected(); err != nil {
			return err
		}
		flags &= frontOverflow
		if overflow {
			flags = frontOverflow
		}
		storeWord(words, slot, 0, flags)
		m.frontFreed[slot] = time.Now()
		delete(m.frontHeld, slot)
		dropped = true
		return nil
	})
	return dropped, err
}

// frontRelease lets spi's SA go from its slot, which sends its lookups on to
// sw_known from then on.
func (m *Maps) frontRelease(spi uint32) error {
	_, err := m.frontDrop(spi, true)
	return err
}

// frontLookup returns the per-CPU counts of spi's SA if the front holds it.
func (m *Maps) frontLookup(spi uint32) ([]saStats, bool, error) {
	slot := m.frontSlot(spi)
	var held bool
	if m.frontHeld != nil { // under knownMu, as every change: no read of the words
		k, ok := m.frontHeld[slot]
		held = ok && k.SPI == spi
	} else if err := m.withWords(false, func(words []uint64) error {
		s, flags := frontWord(words, slot)
		held = flags&frontUsed != 0 && s == spi
		return nil
	}); err != nil {
		return nil, false, err
	}
	if !held {
		return nil, false, nil
	}
	vals := make([]knownSPI, m.ncpu)
	if err := m.knownFront.Lookup(slot, &vals); err != nil {
		return nil, false, fmt.Errorf("reading known SA 0x%08x (front slot %d): %w", spi, slot, err)
	}
	st := make([]saStats, m.ncpu)
	for i := range vals {
		st[i] = vals[i].St
	}
	return st, true, nil
}

// syncOverflow marks exactly the slots of the SPIs sw_known holds as
// overflowing: a miss in those goes on to sw_known; in the others it is unknown.
func (m *Maps) syncOverflow() error {
	want := map[uint32]bool{}
	if err := m.eachKnown(func(spi uint32, _ *knownSPI) { want[m.frontSlot(spi)] = true }); err != nil {
		return err
	}
	return m.withWords(true, func(words []uint64) error {
		for slot := range uint32(len(words)) {
			s, flags := frontWord(words, slot)
			if (flags&frontOverflow != 0) != want[slot] {
				storeWord(words, slot, s, flags^frontOverflow)
			}
		}
		return nil
	})
}
