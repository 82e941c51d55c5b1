// SPDX-License-Identifier: Apache-2.0

package offline

import (
	"bytes"
	"encoding/binary"
	"io"
	"net/netip"
	"runtime"
	"slices"
	"testing"

	"github.com/spiwatch/spiwatch/internal/capread"
	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/loader"
)

// floodCapture is an endless-looking pcap stream of n rounds, made as it is
// read: each round an ESP packet of a new unknown SPI, an IKE packet from a new
// peer and an ICMP error from a new router quoting a new SPI, as a scan or a
// flood sends them. It records the live heap (after a collection) at the
// rounds in at.
type floodCapture struct {
	n, round int
	at       []int
	heap     []uint64
	buf      bytes.Buffer
	esp, ike []byte
	icmp     []byte
}

func newFloodCapture(n int, at ...int) *floodCapture {
	gw := netip.MustParseAddr("203.0.113.1")
	src := frames.Frame{Src: netip.MustParseAddr("10.0.0.0"), Dst: gw}
	c := &floodCapture{n: n, at: at,
		esp:  src.ESP(0x10000, 1, 64),
		ike:  src.IKE(500, 500, false, 64),
		icmp: src.ICMP(frames.ICMPUnreachable, frames.ICMPCodeFragNeeded, 1400, frames.Quote(frames.Frame{Src: gw, Dst: src.Src}.ESP(0x10000, 1, 64), 8)),
	}
	for _, v := range []any{uint32(0xa1b2c3d4), uint16(2), uint16(4), int32(0), uint32(0), uint32(65535), uint32(1)} {
		binary.Write(&c.buf, binary.LittleEndian, v)
	}
	return c
}

// Read writes the next round when the last one has been read.
func (c *floodCapture) Read(p []byte) (int, error) {
	for c.buf.Len() == 0 {
		if len(c.at) > 0 && c.round == c.at[0] {
			runtime.GC()
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			c.heap = append(c.heap, m.HeapAlloc)
			c.at = c.at[1:]
		}
		if c.round == c.n {
			return 0, io.EOF
		}
		c.round++
		i := uint32(c.round)
		// The source address (IPv4 bytes 12-15, after 14 of Ethernet) and,
		// for ESP, the SPI change every round; the ICMP error quotes a new SPI.
		binary.BigEndian.PutUint32(c.esp[26:], 0x0a000000|i)
		binary.BigEndian.PutUint32(c.esp[34:], 0x10000+i)
		binary.BigEndian.PutUint32(c.ike[26:], 0x0a000000|i)
		binary.BigEndian.PutUint32(c.icmp[26:], 0x0a000000|i)
		binary.BigEndian.PutUint32(c.icmp[34+8+20:], 0x10000+i)
		for _, f := range [][]byte{c.esp, c.ike, c.icmp} {
			for _, v := range []uint32{1700000000 + i/1000, i % 1000 * 1000, uint32(len(f)), uint32(len(f))} {
				binary.Write(&c.buf, binary.LittleEndian, v)
			}
			c.buf.Write(f)
		}
	}
	return c.buf.Read(p)
}

// TestMemoryBounded: reading a long capture of a flood (every packet a new
// unknown SPI, IKE peer and ICMP reporter) takes memory bounded by the tables'
// sizes, not growing with the packet count; every packet is counted, and the
// tables say how many rows they evicted. Both engines.
func TestMemoryBounded(t *testing.T) {
	const rounds, step = 200000, 10000
	var at []int
	for i := step; i <= rounds; i += step {
		at = append(at, i)
	}
	for _, engine := range []struct {
		name  string
		noBPF bool
	}{{"reference", true}, {"bpf", false}} {
		t.Run(engine.name, func(t *testing.T) {
			if !engine.noBPF && !bpfAvailable(t) {
				return
			}
			c := newFloodCapture(rounds, at...)
			r, err := capread.NewReader(c, "flood.pcap")
			if err != nil {
				t.Fatal(err)
			}
			o := Options{NoBPF: engine.noBPF, Settings: loader.Settings{UnknownMax: 1024}}
			s, err := ReadFrom(r, "flood.pcap", o)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.heap) != len(at) {
				t.Fatalf("heap measured %d times, want %d", len(c.heap), len(at))
			}
			// The most the heap held over the second quarter of the rounds, then
			// over the last (with the program, the times are pruned every few
			// thousand rounds: the heap goes up and down).
			h := len(c.heap) / 4
			early, late := slices.Max(c.heap[h:2*h]), slices.Max(c.heap[3*h:])
			t.Logf("heap at most %d KiB over rounds %d-%d, %d KiB over %d-%d", early>>10, at[h], at[2*h-1], late>>10, at[3*h], at[len(at)-1])
			if grew := int64(late) - int64(early); grew > 4<<20 {
				t.Errorf("the heap grew by %d KiB over %d rounds of the flood; want it bounded by the tables", grew>>10, at[3*h]-at[h])
			}
			n := uint64(rounds)
			if s.Total.Now.Total().Packets != 3*n {
				t.Errorf("%d packets counted, want %d", s.Total.Now.Total().Packets, 3*n)
			}
			for name, ts := range map[string]struct {
				entries, capacity int
				inserts, evicted  uint64
			}{
				"unknown": {s.Table.Entries, s.Table.Capacity, s.Table.Inserts, s.Table.Evictions},
				"icmp":    {s.ICMPTable.Entries, s.ICMPTable.Capacity, s.ICMPTable.Inserts, s.ICMPTable.Evictions},
				"ike":     {s.IKETable.Entries, s.IKETable.Capacity, s.IKETable.Inserts, s.IKETable.Evictions},
			} {
				if ts.entries > ts.capacity || ts.inserts != n || ts.evicted != n-uint64(ts.entries) {
					t.Errorf("%s table: %d of %d entries, %d inserts, %d evicted; want at most %d entries, %d inserts, the rest evicted",
						name, ts.entries, ts.capacity, ts.inserts, ts.evicted, ts.capacity, n)
				}
			}
		})
	}
}
