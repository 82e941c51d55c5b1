// SPDX-License-Identifier: Apache-2.0

package maps_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

// tick is longer than a jiffy at any HZ (100 to 1000): the next packet starts a
// new tick, so a row's front hands its counts to the table.
const tick = 25 * time.Millisecond

// rowSnap reads the row of spi as a snapshot gives it (table and fronts) and as
// the table alone holds it.
func rowSnap(t *testing.T, m *maps.Maps, spi uint32) (merged, table maps.Unknown) {
	t.Helper()
	all, err := m.UnknownSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	tab, err := m.TableSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	return rowOf(t, all, spi), rowOf(t, tab, spi)
}

// rowOf finds the one row of spi in rows.
func rowOf(t *testing.T, rows []maps.Unknown, spi uint32) maps.Unknown {
	t.Helper()
	var found []maps.Unknown
	for _, u := range rows {
		if u.SPI == spi {
			found = append(found, u)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d rows of SPI 0x%x, want 1: %+v", len(found), spi, rows)
	}
	return found[0]
}

// TestUnknownHotFront follows one unknown-SPI row through the per-CPU front of
// the unknown table: counted there within a tick, handed to the table at the
// next tick, counted exactly when the table evicts the row meanwhile, and a
// second row on the same slot counted exactly while they alternate.
func TestUnknownHotFront(t *testing.T) {
	objs, prog := load(t, loader.Settings{})
	m := objs.Maps
	src := netip.MustParseAddr("198.51.100.7")
	frameA := frames.Frame{Src: src, Dst: dst4}.ESP(0x5000, 1, 40)
	size := uint64(len(frameA))
	snap := func() (merged, table maps.Unknown) { return rowSnap(t, m, 0x5000) }
	repeat := func(frame []byte, n uint32) {
		t.Helper()
		if _, err := prog.Run(&ebpf.RunOptions{Data: frame, Repeat: n}); err != nil {
			t.Fatal(err)
		}
	}

	onCPU(t, 0, func() {
		run(t, prog, frameA) // makes the row and takes the slot
		sent := uint64(1)
		// A tick may end in the middle of a repeat: the front then holds only the
		// packets after it, none if the last packet was the tick's first. Three
		// tries make that all but impossible.
		for try := 0; try < 3; try++ {
			repeat(frameA, 1000)
			sent += 1000
			merged, table := snap()
			if merged.Packets != sent || merged.Bytes != sent*size {
				t.Fatalf("row counts %d packets %d bytes, want %d and %d", merged.Packets, merged.Bytes, sent, sent*size)
			}
			if table.Packets < merged.Packets {
				break // the front held some: the hot path ran
			}
			if try == 2 {
				t.Fatalf("the table alone has all %d packets after three repeats: the front never counted", sent)
			}
		}

		// The next tick's first packet hands the front's counts to the table.
		time.Sleep(tick)
		run(t, prog, frameA)
		sent++
		merged, table := snap()
		if table.Packets != sent || merged.Packets != sent || table.Bytes != sent*size {
			t.Fatalf("after a tick: table %d, merged %d packets, want both %d", table.Packets, merged.Packets, sent)
		}
		firstSeen := table.FirstSeenNs

		// The table evicts the row while the front holds counts: they show as an
		// evicted row, not a table entry, and come back with the row's first-seen.
		repeat(frameA, 100)
		if err := m.DeleteRow(table); err != nil {
			t.Fatal(err)
		}
		all, err := m.UnknownSnapshot()
		if err != nil {
			t.Fatal(err)
		}
		ev := rowOf(t, all, 0x5000)
		if !ev.Evicted || ev.Packets == 0 || ev.Packets > 100 || maps.TableRows(all) != 0 {
			t.Fatalf("evicted row %+v (table rows %d), want Evicted with 1-100 packets and no table row", ev, maps.TableRows(all))
		}
		pending := ev.Packets
		before, err := m.Tally()
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(tick)
		run(t, prog, frameA)
		merged, table = snap()
		if merged.Evicted || table.Packets != pending+1 || table.FirstSeenNs != firstSeen {
			t.Fatalf("row back in the table: %+v, want %d packets, first seen %d", table, pending+1, firstSeen)
		}
		if after, err := m.Tally(); err != nil || after.Inserts != before.Inserts+1 {
			t.Fatalf("inserts %d after the row came back, want %d (%v)", after.Inserts, before.Inserts+1, err)
		}
	})

	// A second row on the same slot, alternating with the first within ticks and
	// across them: every packet of both counted.
	base, err := m.UnknownSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	startA := rowOf(t, base, 0x5000).Packets
	rowA := maps.Unknown{SPI: 0x5000, Src: src, Dst: dst4, Ifindex: 1}
	spiB := uint32(0x6000)
	for ; spiB < 0x7000; spiB++ {
		b := rowA
		b.SPI = spiB
		if maps.HotSlot(b) == maps.HotSlot(rowA) {
			break
		}
	}
	if spiB == 0x7000 {
		t.Fatal("no SPI in 0x6000-0x6fff shares the first row's slot")
	}
	frameB := frames.Frame{Src: src, Dst: dst4}.ESP(spiB, 1, 40)
	onCPU(t, 0, func() {
		for i := 0; i < 300; i++ {
			run(t, prog, frameA)
			run(t, prog, frameB)
			if i%100 == 99 {
				time.Sleep(tick)
			}
		}
	})
	all, err := m.UnknownSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	if a, b := rowOf(t, all, 0x5000), rowOf(t, all, spiB); a.Packets != startA+300 || b.Packets != 300 || b.Bytes != 300*size {
		t.Fatalf("sharing a slot: %d and %d packets, want %d and 300", a.Packets, b.Packets, startA+300)
	}

	// Clearing the table clears the front: nothing comes back.
	if err := m.ClearUnknown(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(tick)
	if all, err := m.UnknownSnapshot(); err != nil || len(all) != 0 {
		t.Fatalf("after ClearUnknown: %d rows (%v), want none", len(all), err)
	}
}
