// SPDX-License-Identifier: Apache-2.0

package bpf_test

import (
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

// onOneCPU runs the rest of the test on one CPU: a test run executes on the
// calling thread's CPU (the lowest this process may use, the same in every
// call), and per-CPU state (an SA's first source, its sequence
// window, a source's token bucket) is what these tests check.
func onOneCPU(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	cpu := 0
	for ; cpu < 1024 && !old.IsSet(cpu); cpu++ {
	}
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.SchedSetaffinity(0, &old)
		runtime.UnlockOSThread()
	})
}

func (h *harness) known1(t *testing.T, sa maps.SA) maps.KnownSA {
	t.Helper()
	k, ok := h.knownStats(t)[sa]
	if !ok {
		t.Fatalf("known SA %s not listed", sa)
	}
	return k
}

func sourceList(k maps.KnownSA) map[string]bool {
	out := map[string]bool{}
	for _, s := range k.Sources {
		out[s.String()] = true
	}
	return out
}

// TestProgramKnownSources: a known SA records its first source; packets from a
// second address (IPv4, IPv6) or a second UDP port of one address are counted,
// the last one remembered, and the SA is a collision.
func TestProgramKnownSources(t *testing.T) {
	onOneCPU(t)
	h := newHarness(t, loader.Settings{}, tableKnown...)
	second4 := with(v4, func(f *frames.Frame) { f.Src = netip.MustParseAddr("198.51.100.9") })
	second6 := with(v6, func(f *frames.Frame) { f.Src = netip.MustParseAddr("2001:db8::9") })
	for _, c := range []struct {
		name          string
		sa            maps.SA
		first, second []byte
		want          []string
	}{
		{"esp v4 second address", maps.SA{SPI: 0x2000, Dst: gw4}, v4.ESP(0x2000, 1, 64), second4.ESP(0x2000, 1, 64),
			[]string{"198.51.100.1", "198.51.100.9"}},
		{"esp v6 second address", maps.SA{SPI: 0x3000, Dst: gw6}, v6.ESP(0x3000, 1, 64), second6.ESP(0x3000, 1, 64),
			[]string{"2001:db8::1", "2001:db8::9"}},
		{"esp-in-udp second port", maps.SA{SPI: 0x1000}, v4.ESPInUDP(4500, 4500, 0x1000, 1, 64), v4.ESPInUDP(4501, 4500, 0x1000, 1, 64),
			[]string{"198.51.100.1:4500", "198.51.100.1:4501"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			onOneCPU(t) // a subtest is another goroutine
			for i := 0; i < 3; i++ {
				h.compare(t, c.first)
			}
			k := h.known1(t, c.sa)
			if len(k.Sources) != 1 || k.OtherPackets != 0 {
				t.Fatalf("one source so far: %v, %d other packets", k.Sources, k.OtherPackets)
			}
			h.compare(t, c.second)
			h.compare(t, c.second)
			h.compare(t, c.first) // the first source goes on: still counted as first
			k = h.known1(t, c.sa)
			got := sourceList(k)
			if len(got) != len(c.want) || !got[c.want[0]] || !got[c.want[1]] {
				t.Fatalf("sources %v, want %v", k.Sources, c.want)
			}
			if k.OtherPackets != 2 || k.Packets != 6 {
				t.Fatalf("%d packets, %d from another source; want 6, 2", k.Packets, k.OtherPackets)
			}
			now := k.LastSeenNs
			if !k.Collision(now, uint64(time.Minute)) {
				t.Fatalf("no collision: %v", k.Sources)
			}
			// The second source's sequence numbers are another stream's: they must
			// not show up as duplicates or replays of the first source's.
			if k.Seq != (maps.SeqHealth{Dups: 3}) {
				t.Fatalf("sequence health %+v, want the first source's 4 packets of seq 1 (3 duplicates) only", k.Seq)
			}
		})
	}
}

// TestProgramSequence: per-SA sequence health on one CPU, rules in bpf/spiwatch.h.
func TestProgramSequence(t *testing.T) {
	onOneCPU(t)
	cases := []struct {
		name string
		seqs []uint32
		want maps.SeqHealth
		max  uint32
	}{
		{"in order", []uint32{1, 2, 3, 4, 5, 6}, maps.SeqHealth{}, 6},
		{"first packet mid-stream", []uint32{5000, 5001, 5002}, maps.SeqHealth{}, 5002},
		{"gaps", []uint32{1, 2, 5, 6, 10}, maps.SeqHealth{Lost: 5}, 10},
		{"reordered", []uint32{1, 2, 4, 3, 5}, maps.SeqHealth{Late: 1}, 5},
		{"duplicates", []uint32{1, 2, 3, 3, 2}, maps.SeqHealth{Dups: 2}, 3},
		{"far behind", []uint32{1, 2, 3, 200, 100, 137}, maps.SeqHealth{Lost: 195, Late: 1, Replays: 1}, 200},
		{"window edge", []uint32{100, 37, 36}, maps.SeqHealth{Late: 1, Replays: 1}, 100},
		{"restart", []uint32{70000, 70001, 1, 2, 3}, maps.SeqHealth{Restarts: 1}, 3},
		{"low but no restart below 65536", []uint32{2000, 2001, 5}, maps.SeqHealth{Replays: 1}, 2001},
		{"esn wrap", []uint32{0xfffffffe, 0xffffffff, 0, 1}, maps.SeqHealth{Wraps: 1}, 0xffffffff},
		{"esn wrap with a gap", []uint32{0xfffffff0, 3}, maps.SeqHealth{Wraps: 1, Lost: 18}, 0xfffffff0},
		{"ahead of 2^31 is no wrap", []uint32{0x80000000, 5}, maps.SeqHealth{Restarts: 1}, 5},
		// a late packet from before the wrap is behind the numbers after it
		{"late across an esn wrap", []uint32{0xfffffffd, 0xffffffff, 0, 1, 0xfffffffe, 2, 3}, maps.SeqHealth{Wraps: 1, Late: 1}, 0xffffffff},
		// numbers before the first seen are late, but fill no gap seen here:
		// 102 is lost all the same (98..96 were sent before the watch began)
		{"late before the first", []uint32{100, 101, 103, 99, 98}, maps.SeqHealth{Lost: 1, Late: 2}, 103},
		{"late before the first, far back", []uint32{100, 101, 97}, maps.SeqHealth{Late: 1}, 101},
	}
	var known []maps.SA
	for i := range cases {
		known = append(known, maps.SA{SPI: 0x7000 + uint32(i), Dst: gw4})
	}
	h := newHarness(t, loader.Settings{}, known...)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			onOneCPU(t) // a subtest is another goroutine
			sa := known[i]
			var ref maps.SAState
			for _, s := range c.seqs {
				f := v4.ESP(sa.SPI, s, 32)
				if got := h.compare(t, f); got.Outcome != classify.OutcomeKnown {
					t.Fatalf("seq %d: outcome %s", s, got.Outcome)
				}
				ref.Count(peer4, 0, s, uint32(len(f)), 0)
			}
			k := h.known1(t, sa)
			if r := ref.Known(sa); r.Seq != k.Seq || r.MaxSeq != k.MaxSeq {
				t.Fatalf("the Go reference says %+v highest %d, the program %+v highest %d", r.Seq, r.MaxSeq, k.Seq, k.MaxSeq)
			}
			// MaxSeq is the highest over CPUs' copies; after a wrap it is the
			// pre-wrap value on no CPU, so compare with what the one CPU holds.
			if k.Seq != c.want || (k.MaxSeq != c.max && c.want.Wraps == 0) {
				t.Fatalf("seqs %v: %+v highest %d; want %+v highest %d", c.seqs, k.Seq, k.MaxSeq, c.want, c.max)
			}
			if k.Packets != uint64(len(c.seqs)) {
				t.Fatalf("%d packets, want %d", k.Packets, len(c.seqs))
			}
		})
	}
}

// TestProgramDropAbove: with --drop-above N, each source's unknown-SPI packets
// pass up to N per second (a full bucket holds N), the rest are dropped and
// counted; another source is unaffected, known SAs are never dropped, and the
// bucket refills with time. IPv6 sources have buckets of their own, by the
// whole address, found behind VLAN tags and extension headers.
func TestProgramDropAbove(t *testing.T) {
	onOneCPU(t)
	const rate = 10 // one packet per 100 ms
	h := newHarness(t, loader.Settings{DropUnknown: true, DropAbove: rate}, tableKnown...)
	other := with(v4, func(f *frames.Frame) { f.Src = netip.MustParseAddr("198.51.100.77") })
	// Straight test runs, without the harness's map reads after each: the burst
	// must take far less than one packet's refill time (100 ms).
	send := func(f []byte, n int) (passed int) {
		for i := 0; i < n; i++ {
			ret, err := h.prog.Run(&ebpf.RunOptions{Data: f})
			if err != nil {
				t.Fatal(err)
			}
			if ret == pass {
				passed++
			}
		}
		return passed
	}
	flood := v4.ESP(0xdead, 1, 64)
	if p := send(flood, rate+5); p != rate {
		t.Fatalf("%d of %d passed at once, want exactly %d", p, rate+5, rate)
	}
	if p := send(v4.ESPInUDP(4500, 4500, 0xbeef, 1, 64), 3); p != 0 {
		t.Fatalf("same source, esp-in-udp: %d passed, want 0 (the bucket is per source address)", p)
	}
	if p := send(other.ESP(0xdead, 1, 64), rate); p != rate {
		t.Fatalf("second source: %d of %d passed", p, rate)
	}
	if p := send(v4.ESP(0x2000, 1, 64), 20); p != 20 {
		t.Fatalf("known SA from the flooding source: %d of 20 passed", p)
	}
	if p := send(v4.ESP(7, 1, 64), 3); p != 3 {
		t.Fatalf("reserved SPIs are never dropped: %d of 3 passed", p)
	}

	// IPv6: a flood from peer6, then the same source in two VLAN tags behind two
	// extension headers, over NAT-T: the same bucket, empty.
	if p := send(v6.ESP(0xdead, 1, 64), rate+4); p != rate {
		t.Fatalf("ipv6: %d of %d passed at once, want exactly %d", p, rate+4, rate)
	}
	wrapped6 := with(v6, func(f *frames.Frame) { f.VLANs, f.IPv6Ext = tags(2), exts(2) })
	if p := send(wrapped6.ESPInUDP(4500, 4500, 0xbeef, 1, 64), 2); p != 0 {
		t.Fatalf("ipv6, same source in vlans behind extension headers, esp-in-udp: %d passed, want 0", p)
	}
	// Sources that differ from peer6 only in the last byte, and only in the
	// prefix: buckets of their own, full.
	for _, src := range []string{"2001:db8::3", "2001:db9::1"} {
		f := with(v6, func(f *frames.Frame) { f.Src = netip.MustParseAddr(src) })
		if p := send(f.ESP(0xdead, 1, 64), rate); p != rate {
			t.Fatalf("ipv6 source %s: %d of %d passed", src, p, rate)
		}
	}
	if p := send(v6.ESP(0x3000, 1, 64), 20); p != 20 {
		t.Fatalf("known SA 0x3000@%s from the flooding ipv6 source: %d of 20 passed", gw6, p)
	}
	if p := send(v6.ESP(7, 1, 64), 3); p != 3 {
		t.Fatalf("ipv6: reserved SPIs are never dropped: %d of 3 passed", p)
	}

	d, err := h.m.Dropped(0)
	if err != nil {
		t.Fatal(err)
	}
	if d[classify.ClassESP].Packets != 5+4 || d[classify.ClassESPInUDP].Packets != 3+2 {
		t.Fatalf("dropped esp %d, esp-in-udp %d; want 9, 5", d[classify.ClassESP].Packets, d[classify.ClassESPInUDP].Packets)
	}
	c := h.counters(t)
	if u := c[classify.ClassESP][classify.OutcomeUnknown].Packets; u != 2*rate+5+3*rate+4 {
		t.Fatalf("esp unknown %d, want %d: dropped ones are counted as unknown too", u, 2*rate+5+3*rate+4)
	}

	// Refill: 250 ms give 2.5 packets of credit (the coarse clock ticks every
	// few ms, and a loaded machine may sleep longer: at most elapsed/100ms).
	start := time.Now()
	time.Sleep(250 * time.Millisecond)
	p := send(flood, 10)
	most := int(time.Since(start)/(time.Second/rate)) + 1
	if p < 2 || p > most {
		t.Fatalf("after %s: %d passed, want 2..%d", time.Since(start).Round(time.Millisecond), p, most)
	}
	rs, err := h.m.RateTableStats()
	if err != nil {
		t.Fatal(err)
	}
	if rs.Sources != 5 || rs.Evictions != 0 || rs.Fails != 0 {
		t.Fatalf("rate table %+v, want 5 sources (2 IPv4, 3 IPv6)", rs)
	}
}

// TestProgramDropAboveEvictions: the bucket table is bounded; sources past its
// size evict others, counted, and a new source starts with a full bucket.
func TestProgramDropAboveEvictions(t *testing.T) {
	onOneCPU(t)
	h := newHarness(t, loader.Settings{DropUnknown: true, DropAbove: 1, RateMax: 16})
	const n = 200
	for i := 0; i < n; i++ {
		src := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		if i >= 100 {
			src = netip.AddrFrom4([4]byte{198, 51, 101, byte(i)})
		}
		f := with(v4, func(f *frames.Frame) { f.Src = src })
		if got := h.run(t, f.ESP(0xdead, 1, 64)); got.Verdict != pass {
			t.Fatalf("source %d: the first packet of a new source was dropped", i)
		}
	}
	rs, err := h.m.RateTableStats()
	if err != nil {
		t.Fatal(err)
	}
	if rs.Capacity != 16 || rs.Sources > 16 || rs.Evictions != uint64(n-rs.Sources) || rs.Fails != 0 {
		t.Fatalf("rate table %+v after %d sources", rs, n)
	}
}

// TestProgramSAStateDifferential feeds one SA random packets (three sources,
// sequence numbers running on, jumping, falling behind a little or far, restarting
// low, wrapping) and holds the program's state to the Go reference
// (maps.SAState) after every packet.
func TestProgramSAStateDifferential(t *testing.T) {
	onOneCPU(t)
	sa := maps.SA{SPI: 0x2000, Dst: gw4}
	h := newHarness(t, loader.Settings{}, sa)
	srcs := []netip.Addr{peer4, netip.MustParseAddr("198.51.100.2"), peer4}
	ports := []uint16{4500, 4500, 4501}
	var ref maps.SAState
	rng := rand.New(rand.NewPCG(7, 7))
	seq := uint32(1)
	for i := 0; i < 3000; i++ {
		switch r := rng.IntN(100); {
		case r < 60:
			seq++
		case r < 70:
			seq += uint32(rng.IntN(100))
		case r < 80:
			seq -= uint32(rng.IntN(70))
		case r < 85:
			seq -= uint32(rng.IntN(5000))
		case r < 88:
			seq = uint32(rng.IntN(2000)) // low: a restart when the highest is high enough
		case r < 91:
			seq = 0xffffffff - uint32(rng.IntN(50)) // near the wrap
		case r < 94:
			seq = uint32(rng.IntN(1 << 20)) // just past a wrap, or far behind
		default:
			seq = rng.Uint32()
		}
		s := 0
		if rng.IntN(10) == 0 {
			s = 1 + rng.IntN(2)
		}
		f := with(v4, func(f *frames.Frame) { f.Src = srcs[s] }).ESPInUDP(ports[s], 4500, sa.SPI, seq, 16)
		if got := h.run(t, f); got.Known == nil {
			t.Fatalf("packet %d not counted in the SA", i)
		}
		ref.Count(srcs[s], ports[s], seq, uint32(len(f)), 0)
		got, want := h.known1(t, sa), ref.Known(sa)
		if got.Seq != want.Seq || got.MaxSeq != want.MaxSeq || got.Packets != want.Packets || got.OtherPackets != want.OtherPackets ||
			len(got.Sources) != len(want.Sources) {
			t.Fatalf("packet %d (source %d, seq %#x):\n bpf %+v\n  go %+v", i, s, seq, got, want)
		}
	}
	k := ref.Known(sa)
	t.Logf("reference after 3000 packets: %+v", k.Seq)
	if k.Seq.Restarts == 0 || k.Seq.Wraps == 0 || k.Seq.Replays == 0 || k.Seq.Late == 0 || k.Seq.Dups == 0 || k.Seq.Lost == 0 {
		t.Errorf("the random walk missed a case: %+v", k.Seq)
	}
}
