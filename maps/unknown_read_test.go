// SPDX-License-Identifier: Apache-2.0

package maps_test

// Reading the unknown-SPI table while the program counts into it and its
// per-CPU front.

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

// TestUnknownEvictedRowRestarts: a row the front had counts for at one
// snapshot, then evicted by the LRU and made again by its next hand-over,
// reports what the table and front hold for it: it starts again (the eviction
// lost its counts), and its new packets show. Holding the old figure, as reads
// once did to hide counts in flight, froze it until the new row outgrew it.
func TestUnknownEvictedRowRestarts(t *testing.T) {
	objs, prog := load(t, loader.Settings{})
	m := objs.Maps
	src := netip.MustParseAddr("198.51.100.77")
	const spi = 0x7700
	frame := frames.Frame{Src: src, Dst: dst4}.ESP(spi, 1, 40)
	repeat := func(n uint32) {
		t.Helper()
		if _, err := prog.Run(&ebpf.RunOptions{Data: frame, Repeat: n}); err != nil {
			t.Fatal(err)
		}
	}
	snap := func() (merged, table maps.Unknown) { return rowSnap(t, m, spi) }
	onCPU(t, 0, func() {
		// 2001 packets in the table.
		repeat(2000)
		time.Sleep(tick)
		repeat(1)
		// More in the front (retry if a tick ended within the repeat).
		var s1, tab1 maps.Unknown
		for try := 0; ; try++ {
			repeat(1000)
			s1, tab1 = snap()
			if tab1.Packets < s1.Packets {
				break
			}
			if try == 5 {
				t.Skip("the front never held counts")
			}
		}
		pending := s1.Packets - tab1.Packets
		t.Logf("snapshot 1: %d packets (table %d, front %d)", s1.Packets, tab1.Packets, pending)

		// The LRU evicts the row (DeleteRow: as an eviction would); the next
		// tick's packet puts the front's counts back as a new row.
		if err := m.DeleteRow(tab1); err != nil {
			t.Fatal(err)
		}
		time.Sleep(tick)
		repeat(1)
		// 300 more packets, all handed to the table.
		for i := 0; i < 3; i++ {
			repeat(100)
			time.Sleep(tick)
			repeat(1)
		}
		s2, tab2 := snap()
		t.Logf("snapshot 2: %d packets (table %d: the row made again, %d packets since the eviction)", s2.Packets, tab2.Packets, tab2.Packets-pending)
		if s2.Packets != tab2.Packets {
			t.Errorf("after the eviction the row reports %d packets, the table (front empty) holds %d: held at the pre-eviction figure %d",
				s2.Packets, tab2.Packets, s1.Packets)
		}
		// And it stays frozen while packets keep coming.
		repeat(200)
		time.Sleep(tick)
		repeat(1)
		s3, tab3 := snap()
		if s3.Packets == s2.Packets {
			t.Errorf("201 more packets arrived (table %d → %d) but the row still reports %d: frozen", tab2.Packets, tab3.Packets, s3.Packets)
		}
	})
}

// TestUnknownEvictionsWhileInserting: evictions = inserts - entries - deleted,
// with inserts read before the table (UnknownTable): a row made during the read
// is not taken for an eviction, nor a new row found only in a front (it is
// looked up). A table far from full, rows inserted on one CPU while another
// reads, reports no eviction at any read. Inserts read after the table once
// reported up to 3,000 and went back down.
func TestUnknownEvictionsWhileInserting(t *testing.T) {
	objs, prog := load(t, loader.Settings{})
	m := objs.Maps
	cpus := allowedCPUs(t, m.NCPU())
	if len(cpus) < 2 {
		t.Skip("needs two CPUs")
	}
	const n = 20000 // well below a CPU's share of the 65,536 rows
	fr := make([][]byte, n)
	for i := range fr {
		fr[i] = frames.Frame{Src: netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), Dst: dst4}.ESP(uint32(0x300000+i), 1, 16)
	}
	var done atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer done.Store(true)
		onCPU(t, cpus[0], func() {
			for i := range fr {
				// 3 packets: the row, then 2 in the front (same tick). Three runs:
				// a run with Repeat > 1 switches the XDP dispatcher, some 20 ms.
				for range 3 {
					if _, err := prog.Run(&ebpf.RunOptions{Data: fr[i]}); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}()
	var maxEv, prevEv uint64
	var wentBack, spuriousEvicted, reads int
	start := time.Now()
	func() {
		for !done.Load() {
			snap, st, err := m.UnknownTable(nil)
			if err != nil {
				t.Error(err)
				break
			}
			reads++
			for i := range snap {
				if snap[i].Evicted {
					spuriousEvicted++
				}
			}
			maxEv = max(maxEv, st.Evictions)
			if st.Evictions < prevEv {
				wentBack++
			}
			prevEv = st.Evictions
		}
	}()
	t.Logf("inserting took %v", time.Since(start))
	wg.Wait()
	snap, err := m.UnknownSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	st, err := m.UnknownTableStats(maps.TableRows(snap))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d reads while inserting; at the end %+v; highest evictions reported %d, went back %d times, %d rows flagged Evicted",
		reads, st, maxEv, wentBack, spuriousEvicted)
	if st.Inserts != n || st.Evictions != 0 {
		t.Fatalf("at rest: %+v, want %d inserts and no eviction", st, n)
	}
	if maxEv != 0 {
		t.Errorf("no row was ever evicted, yet snapshots reported up to %d evictions (a Prometheus counter that went back %d times)", maxEv, wentBack)
	}
	if spuriousEvicted != 0 {
		t.Errorf("%d rows flagged Evicted though nothing was evicted (new rows inserted between the table read and the front read)", spuriousEvicted)
	}
}

// TestUnknownRowsNeverBack: rows counted on one CPU across many ticks (so their
// fronts keep handing over to the table) while another CPU reads the table: no
// row's packets or bytes ever go down from one read to the next, and the last
// read has every packet sent. A read that crossed a hand-over, the front read
// after the table, missed what was handed over.
func TestUnknownRowsNeverBack(t *testing.T) {
	objs, prog := load(t, loader.Settings{})
	m := objs.Maps
	cpus := allowedCPUs(t, m.NCPU())
	if len(cpus) < 2 {
		t.Skip("needs two CPUs")
	}
	const rows = 64
	fr := make([][]byte, rows)
	for i := range fr {
		fr[i] = frames.Frame{Src: netip.AddrFrom4([4]byte{10, 8, 0, byte(i)}), Dst: dst4}.ESP(uint32(0x400000+i), 1, 16+i)
	}
	var sent [rows]atomic.Uint64
	var done atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer done.Store(true)
		onCPU(t, cpus[0], func() {
			for end := time.Now().Add(400 * time.Millisecond); time.Now().Before(end); {
				for i := range fr {
					if _, err := prog.Run(&ebpf.RunOptions{Data: fr[i]}); err != nil {
						t.Error(err)
						return
					}
					sent[i].Add(1)
				}
			}
		})
	}()
	last := map[uint32]maps.Unknown{}
	var reads, back int
	check := func() {
		snap, _, err := m.UnknownTable(nil)
		if err != nil {
			t.Fatal(err)
		}
		reads++
		for _, u := range snap {
			if p, ok := last[u.SPI]; ok && (u.Packets < p.Packets || u.Bytes < p.Bytes) {
				back++
				t.Errorf("read %d: row 0x%x went from %d packets, %d bytes to %d, %d", reads, u.SPI, p.Packets, p.Bytes, u.Packets, u.Bytes)
			}
			last[u.SPI] = u
		}
	}
	onCPU(t, cpus[1], func() {
		for !done.Load() && back < 5 {
			check()
		}
	})
	wg.Wait()
	check()
	for i := range fr {
		spi := uint32(0x400000 + i)
		if got, want := last[spi].Packets, sent[i].Load(); got != want {
			t.Errorf("row 0x%x: %d packets at rest, %d sent", spi, got, want)
		}
	}
	t.Logf("%d reads while %d rows were counted", reads, rows)
}
