// SPDX-License-Identifier: Apache-2.0

package maps_test

import (
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

const xdpPass = 2

// load loads the object with s and closes it when the test ends.
func load(t *testing.T, s loader.Settings) (*loader.Objects, *ebpf.Program) {
	t.Helper()
	testenv.RequireBPF(t)
	objs, err := loader.Load(s)
	if err != nil {
		t.Fatalf("loading: %v", err)
	}
	t.Cleanup(func() { objs.Close() })
	prog, err := objs.Program(0)
	if err != nil {
		t.Fatalf("program of slot 0: %v", err)
	}
	return objs, prog
}

// run runs prog once on frame (BPF_PROG_TEST_RUN: ingress is the loopback device)
// and checks that it passed the frame.
func run(t *testing.T, prog *ebpf.Program, frame []byte) {
	t.Helper()
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	if ret != xdpPass {
		t.Fatalf("test run returned %d, want XDP_PASS", ret)
	}
}

// onCPU runs fn with the goroutine's thread bound to cpu, then restores the thread's
// affinity.
func onCPU(t *testing.T, cpu int, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("reading CPU affinity: %v", err)
	}
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("binding to CPU %d: %v", cpu, err)
	}
	defer func() {
		// A thread left bound to one CPU must not go back to the pool: stay locked
		// (the thread then ends with the goroutine) if restoring fails.
		if err := unix.SchedSetaffinity(0, &old); err != nil {
			t.Errorf("restoring CPU affinity: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

// allowedCPUs lists the CPUs this process may run on, below n.
func allowedCPUs(t *testing.T, n int) []int {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatalf("reading CPU affinity: %v", err)
	}
	var cpus []int
	for c := 0; c < n; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) == 0 {
		t.Fatal("no CPU allowed")
	}
	return cpus
}

func knownBySA(t *testing.T, m *maps.Maps) map[maps.SA]maps.KnownSA {
	t.Helper()
	list, err := m.ListKnown()
	if err != nil {
		t.Fatalf("listing known SAs: %v", err)
	}
	out := map[maps.SA]maps.KnownSA{}
	for _, k := range list {
		if _, dup := out[k.SA]; dup {
			t.Errorf("ListKnown returns %v twice", k.SA)
		}
		out[k.SA] = k
	}
	return out
}

// wantSet checks that the known set is exactly sas.
func wantSet(t *testing.T, m *maps.Maps, sas ...maps.SA) map[maps.SA]maps.KnownSA {
	t.Helper()
	got := knownBySA(t, m)
	for _, sa := range sas {
		if _, ok := got[sa]; !ok {
			t.Errorf("known set lacks %v", sa)
		}
	}
	if len(got) != len(sas) {
		var have []string
		for sa := range got {
			have = append(have, sa.String())
		}
		slices.Sort(have)
		t.Errorf("known set has %d SAs %v, want %d %v", len(got), have, len(sas), sas)
	}
	return got
}

var (
	dst4    = frames.DefaultDst4
	dst6    = frames.DefaultDst6
	other4  = netip.MustParseAddr("198.51.100.9")
	v4Frame = frames.Frame{}
	v6Frame = frames.Frame{Src: frames.DefaultSrc6, Dst: dst6}
)

// TestKnownAddRemove covers AddKnown, RemoveKnown and ListKnown, and that the
// program finds what they write.
func TestKnownAddRemove(t *testing.T) {
	objs, prog := load(t, loader.Settings{})
	m := objs.Maps

	sa4 := maps.SA{SPI: 0x1001, Dst: dst4}
	sa6 := maps.SA{SPI: 0x1002, Dst: dst6}
	anyDst := maps.SA{SPI: 0x1003} // any destination
	if err := m.AddKnown(sa4, sa6, anyDst); err != nil {
		t.Fatalf("adding: %v", err)
	}
	got := wantSet(t, m, sa4, sa6, anyDst)
	for sa, k := range got {
		switch sa.SPI {
		case sa4.SPI:
			if !sa.Dst.Is4() {
				t.Errorf("IPv4 SA reads back as %v, not IPv4", sa.Dst)
			}
		case anyDst.SPI:
			if sa.Dst.IsValid() {
				t.Errorf("any-destination SA reads back with destination %v", sa.Dst)
			}
		}
		if k.Packets != 0 || k.Bytes != 0 || k.LastSeenNs != 0 || k.MaxSeq != 0 {
			t.Errorf("new SA %v has counters %+v", sa, k)
		}
	}

	f1 := v4Frame.ESP(sa4.SPI, 7, 40)
	f2 := v6Frame.ESP(sa6.SPI, 9, 60)
	f3 := frames.Frame{Dst: other4}.ESPInUDP(4500, 4500, anyDst.SPI, 3, 20) // any destination matches
	f4 := v4Frame.ESP(sa6.SPI, 1, 10)                                       // sa6's SPI, other destination
	for _, f := range [][]byte{f1, f1, f2, f3, f4} {
		run(t, prog, f)
	}
	got = knownBySA(t, m)
	for _, w := range []struct {
		sa      maps.SA
		packets uint64
		bytes   int
		seq     uint32
	}{
		{sa4, 2, 2 * len(f1), 7},
		{sa6, 1, len(f2), 9},
		{anyDst, 1, len(f3), 3},
	} {
		k := got[w.sa]
		if k.Packets != w.packets || k.Bytes != uint64(w.bytes) || k.MaxSeq != w.seq || k.LastSeenNs == 0 {
			t.Errorf("%v: %d packets %d bytes max seq %d last seen %d, want %d, %d, %d, non-zero",
				w.sa, k.Packets, k.Bytes, k.MaxSeq, k.LastSeenNs, w.packets, w.bytes, w.seq)
		}
	}
	c, err := m.Counters(0)
	if err != nil {
		t.Fatalf("reading counters: %v", err)
	}
	if k := c[classify.ClassESP][classify.OutcomeKnown].Packets; k != 3 {
		t.Errorf("esp known: %d packets, want 3", k)
	}
	if k := c[classify.ClassESPInUDP][classify.OutcomeKnown].Packets; k != 1 {
		t.Errorf("esp-in-udp known: %d packets, want 1", k)
	}
	if u := c[classify.ClassESP][classify.OutcomeUnknown].Packets; u != 1 {
		t.Errorf("esp unknown: %d packets, want 1 (sa6's SPI towards another destination)", u)
	}

	// Adding again keeps the counters.
	if err := m.AddKnown(sa4, anyDst); err != nil {
		t.Fatalf("adding again: %v", err)
	}
	if k := knownBySA(t, m)[sa4]; k.Packets != 2 || k.Bytes != uint64(2*len(f1)) {
		t.Errorf("after adding again %v has %d packets %d bytes, want 2, %d", sa4, k.Packets, k.Bytes, 2*len(f1))
	}

	// Removing: absent SAs are ignored.
	if err := m.RemoveKnown(sa6, maps.SA{SPI: 0x9999, Dst: dst4}, maps.SA{SPI: sa4.SPI}); err != nil {
		t.Fatalf("removing: %v", err)
	}
	wantSet(t, m, sa4, anyDst)
	run(t, prog, f2)
	c2, err := m.Counters(0)
	if err != nil {
		t.Fatalf("reading counters: %v", err)
	}
	if d := c2[classify.ClassESP][classify.OutcomeUnknown].Packets - c[classify.ClassESP][classify.OutcomeUnknown].Packets; d != 1 {
		t.Errorf("a frame for the removed SA counted %d times as unknown, want 1", d)
	}
}

// TestKnownReplace checks that ReplaceKnown ends with exactly the given set, keeps
// the counters of SAs in both sets and starts new ones at zero.
func TestKnownReplace(t *testing.T) {
	objs, prog := load(t, loader.Settings{})
	m := objs.Maps
	a := maps.SA{SPI: 0x2001, Dst: dst4}
	b := maps.SA{SPI: 0x2002, Dst: dst4}
	c := maps.SA{SPI: 0x2003}
	d := maps.SA{SPI: 0x2004, Dst: dst6}
	if err := m.AddKnown(a, b, c); err != nil {
		t.Fatalf("adding: %v", err)
	}
	fb := v4Frame.ESP(b.SPI, 11, 30)
	run(t, prog, v4Frame.ESP(a.SPI, 1, 30))
	run(t, prog, fb)
	run(t, prog, fb)

	if err := m.ReplaceKnown([]maps.SA{b, c, d, b}); err != nil {
		t.Fatalf("replacing: %v", err)
	}
	got := wantSet(t, m, b, c, d)
	if k := got[b]; k.Packets != 2 || k.Bytes != uint64(2*len(fb)) || k.MaxSeq != 11 {
		t.Errorf("kept SA %v: %+v, want its 2 packets, %d bytes, seq 11", b, k, 2*len(fb))
	}
	if k := got[d]; k.Packets != 0 || k.Bytes != 0 {
		t.Errorf("new SA %v starts with %+v", d, k)
	}
	if got[c].Dst.IsValid() {
		t.Errorf("any-destination SA reads back as %v", got[c].Dst)
	}

	if err := m.ReplaceKnown(nil); err != nil {
		t.Fatalf("replacing with nothing: %v", err)
	}
	wantSet(t, m)
}

// TestKnownFull fills a small known-SA map: the errors name the capacity and nothing
// is left half-done.
func TestKnownFull(t *testing.T) {
	objs, prog := load(t, loader.Settings{KnownMax: 4})
	m := objs.Maps
	if m.KnownCapacity() != 4 {
		t.Fatalf("known capacity %d, want 4", m.KnownCapacity())
	}
	sa := func(i uint32) maps.SA { return maps.SA{SPI: 0x3000 + i, Dst: dst4} }
	if err := m.AddKnown(sa(1), sa(2), sa(3)); err != nil {
		t.Fatalf("adding 3 of 4: %v", err)
	}
	run(t, prog, v4Frame.ESP(sa(1).SPI, 5, 20))

	checkFull := func(err error, what string) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: no error", what)
		}
		if msg := err.Error(); !strings.Contains(msg, "known-SA map") || !strings.Contains(msg, "(4 entries)") {
			t.Errorf("%s: error %q does not name the known-SA map's capacity of 4", what, msg)
		}
	}
	// sa(1) is there already, sa(4) fits, sa(5) does not: sa(4) must be taken back.
	err := m.AddKnown(sa(1), sa(4), sa(5), sa(6))
	checkFull(err, "adding past capacity")
	if !strings.Contains(err.Error(), "full") {
		t.Errorf("error %q does not say the map is full", err)
	}
	got := wantSet(t, m, sa(1), sa(2), sa(3))
	if got[sa(1)].Packets != 1 {
		t.Errorf("a failed add reset the counters of %v: %+v", sa(1), got[sa(1)])
	}

	checkFull(m.ReplaceKnown([]maps.SA{sa(1), sa(2), sa(3), sa(4), sa(5)}), "replacing with 5")
	wantSet(t, m, sa(1), sa(2), sa(3))

	if err := m.AddKnown(sa(4)); err != nil {
		t.Fatalf("adding the 4th: %v", err)
	}
	// The map is full, but each of these sets fits.
	if err := m.ReplaceKnown([]maps.SA{sa(1), sa(6), sa(7), sa(8)}); err != nil {
		t.Fatalf("replacing a full map with 4 SAs, one kept: %v", err)
	}
	got = wantSet(t, m, sa(1), sa(6), sa(7), sa(8))
	if got[sa(1)].Packets != 1 {
		t.Errorf("replace reset the counters of kept %v: %+v", sa(1), got[sa(1)])
	}
	if err := m.ReplaceKnown([]maps.SA{sa(10), sa(11), sa(12), sa(13)}); err != nil {
		t.Fatalf("replacing a full map with 4 new SAs: %v", err)
	}
	wantSet(t, m, sa(10), sa(11), sa(12), sa(13))
}

// TestCountersFromRuns counts frames of two classes and checks every cell.
func TestCountersFromRuns(t *testing.T) {
	objs, prog := load(t, loader.Settings{})
	var want maps.Counters
	for i, n := range []int{10, 100, 1000} {
		f := v4Frame.ESP(0x4000+uint32(i), 1, n)
		run(t, prog, f)
		want[classify.ClassESP][classify.OutcomeUnknown] = want[classify.ClassESP][classify.OutcomeUnknown].Add(maps.Count{Packets: 1, Bytes: uint64(len(f))})
	}
	for _, f := range [][]byte{v4Frame.IKE(500, 500, false, 200), v6Frame.IKE(4500, 4500, true, 300)} {
		run(t, prog, f)
		want[classify.ClassIKE][classify.OutcomeNone] = want[classify.ClassIKE][classify.OutcomeNone].Add(maps.Count{Packets: 1, Bytes: uint64(len(f))})
	}
	got, err := objs.Maps.Counters(0)
	if err != nil {
		t.Fatalf("reading counters: %v", err)
	}
	if got != want {
		t.Errorf("counters\n got %v\nwant %v", got, want)
	}
	if tot := got.Total(); tot.Packets != 5 {
		t.Errorf("total %d packets, want 5", tot.Packets)
	}
	if c := got.Class(classify.ClassESP); c != want[classify.ClassESP][classify.OutcomeUnknown] {
		t.Errorf("Class(esp) = %+v, want %+v", c, want[classify.ClassESP][classify.OutcomeUnknown])
	}
	for _, slot := range []int{-1, maps.MaxIfaces} {
		if _, err := objs.Maps.Counters(slot); err == nil {
			t.Errorf("Counters(%d): no error", slot)
		}
	}
}

// TestCountersPerCPU runs the program on each CPU in turn: every CPU's copy gets its
// own count and Counters returns the sum.
func TestCountersPerCPU(t *testing.T) {
	objs, prog := load(t, loader.Settings{})
	m := objs.Maps
	cpus := allowedCPUs(t, m.NCPU())
	if len(cpus) < 2 {
		t.Logf("only CPU %v available: the sum covers one CPU", cpus)
	}
	f := v4Frame.IKE(500, 500, false, 50)
	for _, cpu := range cpus {
		onCPU(t, cpu, func() { run(t, prog, f) })
	}
	slot := uint32(int(classify.ClassIKE) * int(classify.NumOutcomes))
	vals := make([]maps.SwCount, m.NCPU())
	if err := m.CountersMap().Lookup(slot, vals); err != nil {
		t.Fatalf("reading per-CPU counter: %v", err)
	}
	for cpu, v := range vals {
		want := uint64(0)
		if slices.Contains(cpus, cpu) {
			want = 1
		}
		if v.Packets != want || v.Bytes != want*uint64(len(f)) {
			t.Errorf("CPU %d: %+v, want %d packet(s) of %d bytes", cpu, v, want, len(f))
		}
	}
	c, err := m.Counters(0)
	if err != nil {
		t.Fatalf("reading counters: %v", err)
	}
	if got := c[classify.ClassIKE][classify.OutcomeNone]; got.Packets != uint64(len(cpus)) || got.Bytes != uint64(len(cpus)*len(f)) {
		t.Errorf("ike: %+v, want %d packets, %d bytes", got, len(cpus), len(cpus)*len(f))
	}
}

// TestCountersSum writes distinct per-CPU values into a slot nobody runs in and
// checks the sums and that they land in the right class and outcome.
func TestCountersSum(t *testing.T) {
	objs, _ := load(t, loader.Settings{})
	m := objs.Maps
	n := m.NCPU()
	const slot = 5
	cells := []struct {
		cl classify.Class
		oc classify.Outcome
	}{
		{classify.ClassESPInUDP, classify.OutcomeKnown},
		{classify.ClassMalformed, classify.OutcomeNone},
	}
	var want maps.Counters
	for j, cell := range cells {
		key := uint32(slot*maps.SlotsPerIface + int(cell.cl)*int(classify.NumOutcomes) + int(cell.oc))
		vals := make([]maps.SwCount, n)
		for cpu := range vals {
			vals[cpu] = maps.SwCount{Packets: uint64(cpu+1) << (8 * j), Bytes: uint64(1000*(cpu+1)) << (8 * j)}
			want[cell.cl][cell.oc] = want[cell.cl][cell.oc].Add(maps.Count(vals[cpu]))
		}
		if err := m.CountersMap().Update(key, vals, ebpf.UpdateExist); err != nil {
			t.Fatalf("writing counter %d: %v", key, err)
		}
	}
	got, err := m.Counters(slot)
	if err != nil {
		t.Fatalf("reading counters: %v", err)
	}
	if got != want {
		t.Errorf("slot %d\n got %v\nwant %v", slot, got, want)
	}
	for _, s := range []int{slot - 1, slot + 1} {
		if c, err := m.Counters(s); err != nil || c != (maps.Counters{}) {
			t.Errorf("slot %d: %v, %v; want all zero", s, c, err)
		}
	}
}

// TestKnownPerCPUStats writes distinct per-CPU values for one SA: ListKnown sums
// packets and bytes and takes the maxima of last seen and sequence number.
func TestKnownPerCPUStats(t *testing.T) {
	objs, _ := load(t, loader.Settings{})
	m := objs.Maps
	n := m.NCPU()
	sa := maps.SA{SPI: 0x5001, Dst: dst6}
	other := maps.SA{SPI: 0x5002, Dst: dst4}
	if err := m.AddKnown(sa, other); err != nil {
		t.Fatalf("adding: %v", err)
	}
	vals := make([]maps.SAStats, n)
	var packets, bytes uint64
	for cpu := range vals {
		vals[cpu] = maps.SAStats{
			Packets:    uint64(cpu + 1),
			Bytes:      uint64(1500 * (cpu + 1)),
			LastSeenNs: uint64(1000 + cpu),
			MaxSeq:     uint32(10 + cpu),
		}
		packets += vals[cpu].Packets
		bytes += vals[cpu].Bytes
	}
	// The maxima on the first and the last CPU, not where the sums end.
	vals[0].LastSeenNs = 1 << 40
	vals[n-1].MaxSeq = 0xfffffff0
	if n > 1 {
		vals[n-1].LastSeenNs = 7
	}
	if err := m.SetKnownStats(sa, vals); err != nil {
		t.Fatalf("writing per-CPU stats: %v", err)
	}
	got := wantSet(t, m, sa, other)
	g := got[sa]
	if g.Packets != packets || g.Bytes != bytes || g.LastSeenNs != 1<<40 || g.MaxSeq != 0xfffffff0 || g.CPUs != n {
		t.Errorf("ListKnown: %+v, want %d packets, %d bytes, last seen 1<<40, highest 0xfffffff0, %d CPUs", g, packets, bytes, n)
	}
	if o := got[other]; o.Packets != 0 || o.CPUs != 0 || len(o.Sources) != 0 {
		t.Errorf("untouched SA: %+v", o)
	}
}

// coarseNow is CLOCK_MONOTONIC_COARSE, the clock of bpf_ktime_get_coarse_ns.
func coarseNow(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		t.Fatalf("reading clock: %v", err)
	}
	return uint64(ts.Nano())
}

// TestUnknownSnapshot fills the unknown table with more entries than one batch
// holds and checks every field of every entry.
func TestUnknownSnapshot(t *testing.T) {
	objs, prog := load(t, loader.Settings{})
	m := objs.Maps
	const n = 10000 // three batches of 4096
	const base = 0x10000
	src6 := netip.MustParseAddr("2001:db8:5::1")
	type sent struct {
		frame []byte
		want  maps.Unknown
	}
	build := func(i int) sent {
		spi, seq := uint32(base+i), uint32(i*3+1)
		payload := i % 97
		var s sent
		switch i % 3 {
		case 0:
			src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
			s.frame = frames.Frame{Src: src, Dst: dst4}.ESP(spi, seq, payload)
			s.want = maps.Unknown{Src: src, Dst: dst4}
		case 1:
			sport := uint16(1024 + i)
			s.frame = frames.Frame{Dst: other4}.ESPInUDP(sport, 4500, spi, seq, payload+9)
			s.want = maps.Unknown{Src: frames.DefaultSrc4, Dst: other4, SrcPort: sport, DstPort: 4500}
		case 2:
			s.frame = frames.Frame{Src: src6, Dst: dst6}.ESP(spi, seq, payload)
			s.want = maps.Unknown{Src: src6, Dst: dst6}
		}
		s.want.SPI, s.want.LastSeq, s.want.Ifindex = spi, seq, 1
		s.want.Packets, s.want.Bytes = 1, uint64(len(s.frame))
		return s
	}

	start := coarseNow(t)
	all := make([]sent, n)
	for i := range all {
		all[i] = build(i)
		run(t, prog, all[i].frame)
	}
	// The first entry again, later and with a new sequence number.
	again := frames.Frame{Src: all[0].want.Src, Dst: dst4}.ESP(base, 99999, 3)
	run(t, prog, again)
	end := coarseNow(t)
	all[0].want.Packets, all[0].want.Bytes, all[0].want.LastSeq = 2, uint64(len(all[0].frame)+len(again)), 99999

	snap, err := m.UnknownSnapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if len(snap) != n {
		t.Errorf("snapshot has %d entries, want %d", len(snap), n)
	}
	seen := make([]bool, n)
	for _, u := range snap {
		i := int(u.SPI) - base
		if i < 0 || i >= n {
			t.Errorf("unexpected entry %+v", u)
			continue
		}
		if seen[i] {
			t.Errorf("SPI %#x twice in the snapshot", u.SPI)
		}
		seen[i] = true
		w := all[i].want
		if u.Src.Is4In6() || u.Dst.Is4In6() {
			t.Errorf("SPI %#x: addresses %v → %v are v4-mapped, want plain IPv4", u.SPI, u.Src, u.Dst)
		}
		if u.FirstSeenNs < start || u.LastSeenNs < u.FirstSeenNs || u.LastSeenNs > end {
			t.Errorf("SPI %#x: first seen %d, last seen %d, want start %d ≤ first ≤ last ≤ end %d",
				u.SPI, u.FirstSeenNs, u.LastSeenNs, start, end)
		}
		all[i].want.FirstSeenNs, all[i].want.LastSeenNs = u.FirstSeenNs, u.LastSeenNs
		w.FirstSeenNs, w.LastSeenNs = u.FirstSeenNs, u.LastSeenNs
		if u != w {
			t.Errorf("entry\n got %+v\nwant %+v", u, w)
		}
	}
	for i, ok := range seen {
		if !ok {
			t.Errorf("SPI %#x missing from the snapshot", base+i)
		}
	}
	// Sent in SPI order: first-seen times never go backwards.
	for i := 1; i < n; i++ {
		if a, b := all[i-1].want.FirstSeenNs, all[i].want.FirstSeenNs; seen[i-1] && seen[i] && b < a {
			t.Errorf("SPI %#x first seen at %d, before the one sent earlier (%d)", base+i, b, a)
			break
		}
	}
	if u := all[0].want; u.LastSeenNs < u.FirstSeenNs {
		t.Errorf("entry seen twice: last seen %d before first %d", u.LastSeenNs, u.FirstSeenNs)
	}

	iter, err := m.UnknownIterate()
	if err != nil {
		t.Fatalf("iterating: %v", err)
	}
	bySPI := func(a, b maps.Unknown) int { return int(a.SPI) - int(b.SPI) }
	slices.SortFunc(snap, bySPI)
	slices.SortFunc(iter, bySPI)
	if !slices.Equal(snap, iter) {
		t.Errorf("batch snapshot (%d entries) differs from iteration (%d entries)", len(snap), len(iter))
	}

	st, err := m.UnknownTableStats(len(snap))
	if err != nil {
		t.Fatalf("table stats: %v", err)
	}
	if want := (maps.TableStats{Entries: n, Capacity: loader.DefaultUnknownMax, Inserts: n}); st != want {
		t.Errorf("table stats %+v, want %+v", st, want)
	}
}

// TestUnknownEvictions overflows a small table: evictions are exactly the inserts
// that are no longer there, and clearing does not count as eviction.
func TestUnknownEvictions(t *testing.T) {
	objs, prog := load(t, loader.Settings{UnknownMax: 128})
	m := objs.Maps
	if m.UnknownCapacity() != 128 {
		t.Fatalf("unknown capacity %d, want 128", m.UnknownCapacity())
	}
	const n = 1000
	const base = 0x20000
	send := func(from, to int) {
		// One CPU: the LRU's per-CPU free lists of another CPU could refuse inserts
		// into so small a table, and this test is about the accounting.
		onCPU(t, allowedCPUs(t, m.NCPU())[0], func() {
			for i := from; i < to; i++ {
				run(t, prog, v4Frame.ESP(uint32(base+i), 1, 16))
			}
		})
	}
	send(0, n)

	snap, err := m.UnknownSnapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	st, err := m.UnknownTableStats(len(snap))
	if err != nil {
		t.Fatalf("table stats: %v", err)
	}
	t.Logf("after %d inserts: %+v", n, st)
	if st.Inserts != n || st.InsertFails != 0 {
		t.Errorf("%d inserts, %d failed; want %d, 0", st.Inserts, st.InsertFails, n)
	}
	if st.Entries != len(snap) || st.Entries > 128 || st.Entries == 0 || st.Capacity != 128 {
		t.Errorf("entries %d (snapshot %d), capacity %d; want the snapshot's length, 1-128, and 128", st.Entries, len(snap), st.Capacity)
	}
	if st.Evictions != st.Inserts-uint64(st.Entries) {
		t.Errorf("evictions %d, want inserts - entries = %d", st.Evictions, st.Inserts-uint64(st.Entries))
	}
	if !slices.ContainsFunc(snap, func(u maps.Unknown) bool { return u.SPI == base+n-1 }) {
		t.Errorf("the most recent SPI %#x was evicted", base+n-1)
	}

	if err := m.ClearUnknown(); err != nil {
		t.Fatalf("clearing: %v", err)
	}
	if m.Deleted() != uint64(len(snap)) {
		t.Errorf("clearing counted %d deletions, want %d", m.Deleted(), len(snap))
	}
	after, err := m.UnknownSnapshot()
	if err != nil {
		t.Fatalf("snapshot after clearing: %v", err)
	}
	st2, err := m.UnknownTableStats(len(after))
	if err != nil {
		t.Fatalf("table stats: %v", err)
	}
	if len(after) != 0 || st2.Entries != 0 || st2.Evictions != st.Evictions || st2.Inserts != n {
		t.Errorf("after clearing: %d entries, %+v; want 0 entries, evictions still %d", len(after), st2, st.Evictions)
	}

	send(n, n+10)
	after, err = m.UnknownSnapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	st3, err := m.UnknownTableStats(len(after))
	if err != nil {
		t.Fatalf("table stats: %v", err)
	}
	if st3.Inserts != n+10 || st3.Entries != 10 || st3.Evictions != st.Evictions {
		t.Errorf("after 10 more: %+v, want %d inserts, 10 entries, evictions %d", st3, n+10, st.Evictions)
	}
}

// TestKnownSharedSPI: SAs sharing one SPI (different destinations, and the
// any-destination one) are each found by (SPI, destination) as Linux does, keep
// their counts when the SPI's set grows or shrinks, and a destination with no SA
// of that SPI is unknown.
func TestKnownSharedSPI(t *testing.T) {
	objs, prog := load(t, loader.Settings{})
	m := objs.Maps
	const spi = 0x7000
	a := maps.SA{SPI: spi, Dst: dst4}
	b := maps.SA{SPI: spi, Dst: other4}
	anyDst := maps.SA{SPI: spi}
	third := netip.MustParseAddr("192.0.2.99")
	toA, toB, toThird := v4Frame.ESP(spi, 1, 20), frames.Frame{Dst: other4}.ESP(spi, 1, 20), frames.Frame{Dst: third}.ESP(spi, 1, 20)
	check := func(step string, frame []byte, want classify.Outcome) {
		t.Helper()
		if got := espOutcome(t, m, prog, frame); got != want {
			t.Errorf("%s: %v, want %v", step, got, want)
		}
	}

	// One SA: its own destination only.
	if err := m.AddKnown(a); err != nil {
		t.Fatal(err)
	}
	check("a alone, to a", toA, classify.OutcomeKnown)
	check("a alone, to b", toB, classify.OutcomeUnknown)

	// A second SA with the SPI: both known, a's count carried over.
	if err := m.AddKnown(b); err != nil {
		t.Fatal(err)
	}
	check("a and b, to a", toA, classify.OutcomeKnown)
	check("a and b, to b", toB, classify.OutcomeKnown)
	check("a and b, to a third address", toThird, classify.OutcomeUnknown)
	got := wantSet(t, m, a, b)
	if got[a].Packets != 2 || got[b].Packets != 1 {
		t.Errorf("shared SPI counts: a %d, b %d; want 2 and 1", got[a].Packets, got[b].Packets)
	}

	// The any-destination SA catches the rest.
	if err := m.AddKnown(anyDst); err != nil {
		t.Fatal(err)
	}
	check("a, b, any: to a third address", toThird, classify.OutcomeKnown)
	check("a, b, any: to a", toA, classify.OutcomeKnown)
	got = wantSet(t, m, a, b, anyDst)
	if got[a].Packets != 3 || got[anyDst].Packets != 1 {
		t.Errorf("counts: a %d, any %d; want 3 and 1", got[a].Packets, got[anyDst].Packets)
	}

	// Back to one SA: its counts move with it; the others' destinations are unknown.
	if err := m.ReplaceKnown([]maps.SA{a}); err != nil {
		t.Fatal(err)
	}
	check("a again alone, to b", toB, classify.OutcomeUnknown)
	check("a again alone, to a", toA, classify.OutcomeKnown)
	got = wantSet(t, m, a)
	if got[a].Packets != 4 {
		t.Errorf("a's count after the others left: %d, want 4", got[a].Packets)
	}

	// Replaced by an SA of the same SPI for another destination: a new SA, from zero.
	if err := m.ReplaceKnown([]maps.SA{b}); err != nil {
		t.Fatal(err)
	}
	check("b replaced a, to a", toA, classify.OutcomeUnknown)
	if got = wantSet(t, m, b); got[b].Packets != 0 {
		t.Errorf("b starts with %d packets, want 0", got[b].Packets)
	}
	if err := m.RemoveKnown(b); err != nil {
		t.Fatal(err)
	}
	wantSet(t, m)
	check("nothing known, to b", toB, classify.OutcomeUnknown)
}

// espOutcome runs an esp frame and returns the outcome it was counted under.
func espOutcome(t *testing.T, m *maps.Maps, prog *ebpf.Program, frame []byte) classify.Outcome {
	t.Helper()
	before, err := m.Counters(0)
	if err != nil {
		t.Fatal(err)
	}
	run(t, prog, frame)
	after, err := m.Counters(0)
	if err != nil {
		t.Fatal(err)
	}
	for o := classify.Outcome(0); o < classify.NumOutcomes; o++ {
		if after[classify.ClassESP][o].Packets != before[classify.ClassESP][o].Packets {
			return o
		}
	}
	t.Fatal("the frame was not counted as esp")
	return 0
}

// TestKnownFront: a new SA whose front slot is free goes in the front; one whose
// slot is taken goes in sw_known with the slot marked, and the program finds
// both; an unknown SPI of that slot is still unknown; a slot given up goes to no
// other SA for the grace period, and the mark goes with the last SA it stood for.
func TestKnownFront(t *testing.T) {
	objs, prog := load(t, loader.Settings{})
	m := objs.Maps
	const a = uint32(0x10000)
	slot := m.FrontSlot(a)
	var same []uint32 // SPIs of a's slot
	for s := a + 1; len(same) < 3; s++ {
		if m.FrontSlot(s) == slot {
			same = append(same, s)
		}
	}
	b, u, c := same[0], same[1], same[2]
	saA, saB, saC := maps.SA{SPI: a, Dst: dst4}, maps.SA{SPI: b, Dst: dst4}, maps.SA{SPI: c}
	outcome := func(spi uint32) classify.Outcome {
		t.Helper()
		return espOutcome(t, m, prog, v4Frame.ESP(spi, 1, 20))
	}
	where := func(step string, spi uint32, front bool, flags uint32) {
		t.Helper()
		if got := m.InFront(spi); got != front {
			t.Errorf("%s: SPI 0x%x in the front: %v, want %v", step, spi, got, front)
		}
		if got := m.FrontFlags(slot) & (maps.FrontUsed | maps.FrontOverflow); got != flags {
			t.Errorf("%s: slot %d flags %#x, want %#x", step, slot, got, flags)
		}
	}
	known := func(step string, spis ...uint32) {
		t.Helper()
		for _, spi := range spis {
			if o := outcome(spi); o != classify.OutcomeKnown {
				t.Errorf("%s: SPI 0x%x %v, want known", step, spi, o)
			}
		}
	}
	unknown := func(step string, spis ...uint32) {
		t.Helper()
		for _, spi := range spis {
			if o := outcome(spi); o != classify.OutcomeUnknown {
				t.Errorf("%s: SPI 0x%x %v, want unknown", step, spi, o)
			}
		}
	}

	unknown("nothing known", a, b, u)
	if err := m.AddKnown(saA); err != nil {
		t.Fatal(err)
	}
	where("a added", a, true, maps.FrontUsed)
	known("a added", a)
	unknown("a added", b, u) // the slot is a's and not marked: no hash lookup

	if err := m.AddKnown(saB); err != nil {
		t.Fatal(err)
	}
	where("b added", b, false, maps.FrontUsed|maps.FrontOverflow)
	known("a and b", a, b)
	unknown("a and b", u)
	got := wantSet(t, m, saA, saB)
	if got[saA].Packets != 2 || got[saB].Packets != 1 {
		t.Errorf("counts: a %d, b %d; want 2 and 1", got[saA].Packets, got[saB].Packets)
	}

	// a leaves: its slot stays marked for b, and is not a's again within the grace.
	if err := m.RemoveKnown(saA); err != nil {
		t.Fatal(err)
	}
	where("a removed", a, false, maps.FrontOverflow)
	unknown("a removed", a)
	known("a removed", b)
	if err := m.AddKnown(saA); err != nil {
		t.Fatal(err)
	}
	where("a back within the grace", a, false, maps.FrontOverflow)
	known("a back", a, b)
	if err := m.RemoveKnown(saA, saB); err != nil {
		t.Fatal(err)
	}
	where("all removed", a, false, 0)
	wantSet(t, m)
	unknown("all removed", a, b)

	// After the grace the slot takes a new SA (any destination).
	time.Sleep(maps.FrontGrace + 100*time.Millisecond)
	if err := m.AddKnown(saC); err != nil {
		t.Fatal(err)
	}
	where("c after the grace", c, true, maps.FrontUsed)
	known("c", c)
	if got := wantSet(t, m, saC); got[saC].Packets != 1 {
		t.Errorf("c: %d packets, want 1", got[saC].Packets)
	}

	// c's SA replaced by one for another destination: a new SA, in sw_known (the
	// slot is in its grace), found through the mark.
	cTo4 := maps.SA{SPI: c, Dst: dst4}
	if err := m.ReplaceKnown([]maps.SA{cTo4}); err != nil {
		t.Fatal(err)
	}
	where("c for another destination", c, false, maps.FrontOverflow)
	known("c for another destination", c)
	if got := wantSet(t, m, cTo4); got[cTo4].Packets != 1 {
		t.Errorf("c for another destination: %d packets, want 1 (a new SA)", got[cTo4].Packets)
	}
}

// TestFrontSlots: the front is the largest power of two within the known-SA map
// and the cap, and its shift gives slots within it.
func TestFrontSlots(t *testing.T) {
	for _, c := range []struct{ knownMax, want uint32 }{
		{1, 1}, {2, 2}, {3, 2}, {1000, 512}, {4096, 4096}, {5000, 4096}, {65536, 4096}, {1 << 31, 4096},
	} {
		got := maps.FrontSlots(c.knownMax)
		if got != c.want {
			t.Errorf("FrontSlots(%d) = %d, want %d", c.knownMax, got, c.want)
		}
		shift := maps.FrontShift(got)
		for _, spi := range []uint32{0, 1, 0xdeadbeef, 0xffffffff} {
			if slot := uint32(uint64(spi*0x9e3779b1) >> shift); slot >= got {
				t.Errorf("%d slots: SPI 0x%x in slot %d", got, spi, slot)
			}
		}
	}
}
