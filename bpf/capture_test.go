// SPDX-License-Identifier: Apache-2.0

package bpf_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

// capHarness runs frames through the real program with a capture configured and
// reads back what the ring buffer got.
type capHarness struct {
	prog *ebpf.Program
	m    *maps.Maps
	cap  *maps.Capture
	rd   *ringbuf.Reader
}

type sample struct {
	hdr  maps.SampleHeader
	data []byte
}

func newCapHarness(t *testing.T, s loader.Settings, known ...maps.SA) *capHarness {
	t.Helper()
	h := newHarness(t, s, known...)
	if !loader.CaptureSupported() {
		t.Fatal("kernel lacks bpf_xdp_load_bytes, bpf_loop or bpf_map_lookup_percpu_elem (Linux 5.19): capture cannot be tested")
	}
	c, err := h.objs.Capture()
	if err != nil {
		t.Fatal(err)
	}
	rd, err := ringbuf.NewReader(c.Samples())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	// Token buckets are per CPU: keep every test run on one CPU so the rate
	// cases see one bucket.
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	var set unix.CPUSet
	set.Set(0)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		t.Fatalf("pinning the test to CPU 0: %v", err)
	}
	return &capHarness{prog: h.prog, m: h.m, cap: c, rd: rd}
}

func (h *capHarness) send(t *testing.T, frame []byte, n int) (verdict uint32) {
	t.Helper()
	for range n {
		ret, err := h.prog.Run(&ebpf.RunOptions{Data: frame})
		if err != nil {
			t.Fatalf("test run: %v", err)
		}
		verdict = ret
	}
	return verdict
}

// drain reads every record in the ring buffer.
func (h *capHarness) drain(t *testing.T) []sample {
	t.Helper()
	var out []sample
	h.rd.SetDeadline(time.Now().Add(50 * time.Millisecond))
	for {
		rec, err := h.rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		var s sample
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &s.hdr); err != nil {
			t.Fatal(err)
		}
		s.data = rec.RawSample[maps.SampleHeaderSize:]
		if len(s.data) != int(s.hdr.CapLen) {
			t.Fatalf("record of %d bytes after the header, header says %d", len(s.data), s.hdr.CapLen)
		}
		out = append(out, s)
		h.rd.SetDeadline(time.Now().Add(50 * time.Millisecond))
	}
}

func (h *capHarness) stats(t *testing.T) maps.CaptureStats {
	t.Helper()
	s, err := h.cap.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func bit(c classify.Class) uint32 { return 1 << uint32(c) }

// TestCaptureSampling is the table of sampling decisions: which frames the
// program hands to the ring buffer, with which header, and how the others are
// counted.
func TestCaptureSampling(t *testing.T) {
	const lo = testRunIfindex
	unknownA := v4.ESP(0xdead0001, 1, 64)
	unknownB := v4.ESP(0xdead0002, 1, 64)
	knownF := v4.ESP(0x1000, 1, 64)
	reservedF := v4.ESP(7, 1, 64)
	ikeF := v4.IKE(500, 500, false, 40)
	tcp := v4.TCP(40000, 443, 20)
	type send struct {
		frame []byte
		n     int
	}
	for _, tc := range []struct {
		name    string
		set     *maps.CaptureSettings // nil: capture off
		sends   []send
		reasons []uint8 // reason of each sample, in order
		spis    []uint32
		refused uint64
	}{
		{name: "off: nothing sampled, nothing counted",
			sends: []send{{unknownA, 5}, {ikeF, 2}}},
		{name: "unknown: first 3 of each row, rate 0 refuses the rest",
			set:     &maps.CaptureSettings{Ifindexes: []uint32{lo}, ClassMask: maps.CapUnknown, Snaplen: 128, PerSPI: 3},
			sends:   []send{{unknownA, 5}, {knownF, 4}, {unknownB, 2}, {tcp, 3}},
			reasons: []uint8{1, 1, 1, 1, 1}, spis: []uint32{0xdead0001, 0xdead0001, 0xdead0001, 0xdead0002, 0xdead0002},
			refused: 2},
		{name: "reserved SPIs are unknown rows too",
			set:     &maps.CaptureSettings{Ifindexes: []uint32{lo}, ClassMask: maps.CapUnknown, Snaplen: 128, PerSPI: 1},
			sends:   []send{{reservedF, 3}},
			reasons: []uint8{1}, spis: []uint32{7}, refused: 2},
		{name: "class esp: known SAs have no first-N, only the rate (5 per second, bucket starts full)",
			set:     &maps.CaptureSettings{Ifindexes: []uint32{lo}, ClassMask: bit(classify.ClassESP), Snaplen: 128, PerSPI: 2, Rate: 5},
			sends:   []send{{knownF, 20}},
			reasons: []uint8{2, 2, 2, 2, 2}, spis: []uint32{0x1000, 0x1000, 0x1000, 0x1000, 0x1000}, refused: 15},
		{name: "first-N does not spend tokens",
			set:     &maps.CaptureSettings{Ifindexes: []uint32{lo}, ClassMask: maps.CapUnknown, Snaplen: 128, PerSPI: 2, Rate: 1},
			sends:   []send{{unknownA, 4}},
			reasons: []uint8{1, 1, 2}, spis: []uint32{0xdead0001, 0xdead0001, 0xdead0001}, refused: 1},
		{name: "class ike, no SPI",
			set:     &maps.CaptureSettings{Ifindexes: []uint32{lo}, ClassMask: bit(classify.ClassIKE), Snaplen: 128, Rate: 100},
			sends:   []send{{ikeF, 3}, {unknownA, 3}},
			reasons: []uint8{2, 2, 2}, spis: []uint32{0, 0, 0}},
		{name: "SPI filter: only the SPIs given",
			set:     &maps.CaptureSettings{Ifindexes: []uint32{lo}, ClassMask: maps.CapUnknown | bit(classify.ClassIKE), SPIs: []uint32{0xdead0002}, Snaplen: 128, PerSPI: 10},
			sends:   []send{{unknownA, 3}, {unknownB, 2}, {ikeF, 2}},
			reasons: []uint8{1, 1}, spis: []uint32{0xdead0002, 0xdead0002}},
		{name: "another interface: nothing",
			set:   &maps.CaptureSettings{Ifindexes: []uint32{lo + 1000}, ClassMask: maps.CapUnknown, Snaplen: 128, PerSPI: 10, Rate: 100},
			sends: []send{{unknownA, 3}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newCapHarness(t, loader.Settings{}, tableKnown...)
			if tc.set != nil {
				if err := h.cap.Start(*tc.set); err != nil {
					t.Fatal(err)
				}
			}
			for _, s := range tc.sends {
				h.send(t, s.frame, s.n)
			}
			got := h.drain(t)
			var reasons []uint8
			var spis []uint32
			for i, s := range got {
				reasons = append(reasons, s.hdr.Reason)
				spis = append(spis, s.hdr.SPI)
				if s.hdr.Ifindex != lo || s.hdr.Action != uint8(pass) || s.hdr.TsNs == 0 {
					t.Errorf("sample %d: header %+v", i, s.hdr)
				}
				if s.hdr.Reason == maps.ReasonFirst && (s.hdr.RowPackets < 1 || s.hdr.RowPackets > uint64(tc.set.PerSPI)) {
					t.Errorf("sample %d kept as first-N with row count %d (N=%d)", i, s.hdr.RowPackets, tc.set.PerSPI)
				}
			}
			if !equal(reasons, tc.reasons) || !equal(spis, tc.spis) {
				t.Errorf("samples: reasons %v SPIs %#x; want %v %#x", reasons, spis, tc.reasons, tc.spis)
			}
			st := h.stats(t)
			want := maps.CaptureStats{Samples: uint64(len(tc.reasons)), RateRefused: tc.refused}
			if st != want {
				t.Errorf("counters %+v, want %+v", st, want)
			}
		})
	}
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestCaptureSnapAndHeader checks the copied bytes, lengths, class, outcome and
// verdict of samples.
func TestCaptureSnapAndHeader(t *testing.T) {
	h := newCapHarness(t, loader.Settings{DropUnknown: true}, tableKnown...)
	big := v4.ESP(0xbeef0001, 3, 300)
	small := v6.ESP(0x3000, 9, 10) // known
	if err := h.cap.Start(maps.CaptureSettings{Ifindexes: []uint32{testRunIfindex}, ClassMask: bit(classify.ClassESP), Snaplen: 64, PerSPI: 1, Rate: 100}); err != nil {
		t.Fatal(err)
	}
	if v := h.send(t, big, 1); v != uint32(drop) {
		t.Fatalf("verdict %d, want drop", v)
	}
	h.send(t, small, 1)
	got := h.drain(t)
	if len(got) != 2 {
		t.Fatalf("%d samples, want 2", len(got))
	}
	for i, tc := range []struct {
		frame   []byte
		outcome classify.Outcome
		action  uint32
		reason  uint8
		spi     uint32
	}{
		{big, classify.OutcomeUnknown, uint32(drop), maps.ReasonFirst, 0xbeef0001},
		{small, classify.OutcomeKnown, uint32(pass), maps.ReasonRate, 0x3000},
	} {
		s := got[i]
		wantCap := min(64, len(tc.frame))
		if s.hdr.Len != uint32(len(tc.frame)) || s.hdr.CapLen != uint32(wantCap) || !bytes.Equal(s.data, tc.frame[:wantCap]) {
			t.Errorf("sample %d: len %d cap %d data %x; want %d %d %x", i, s.hdr.Len, s.hdr.CapLen, s.data, len(tc.frame), wantCap, tc.frame[:wantCap])
		}
		if s.hdr.Class != uint8(classify.ClassESP) || s.hdr.Outcome != uint8(tc.outcome) || s.hdr.Action != uint8(tc.action) ||
			s.hdr.Reason != tc.reason || s.hdr.SPI != tc.spi {
			t.Errorf("sample %d header %+v, want class esp outcome %v action %d reason %d spi %#x", i, s.hdr, tc.outcome, tc.action, tc.reason, tc.spi)
		}
	}
	// A restart (new generation) refills the bucket; snap length up to the whole frame.
	if err := h.cap.Start(maps.CaptureSettings{Ifindexes: []uint32{testRunIfindex}, ClassMask: bit(classify.ClassESP), Snaplen: maps.SnapMax, Rate: 1}); err != nil {
		t.Fatal(err)
	}
	h.send(t, small, 3)
	got = h.drain(t)
	if len(got) != 1 || !bytes.Equal(got[0].data, small) {
		t.Fatalf("after restart with rate 1: %d samples (want 1, the whole frame)", len(got))
	}
	if err := h.cap.Stop(); err != nil {
		t.Fatal(err)
	}
	before := h.stats(t)
	h.send(t, big, 3)
	if n := len(h.drain(t)); n != 0 || h.stats(t) != before {
		t.Errorf("after Stop: %d samples, counters %+v -> %+v", n, before, h.stats(t))
	}
}

// TestCaptureRingFull fills the ring buffer with nobody reading: every selected
// frame is either a sample or counted as lost, and the samples are all readable.
func TestCaptureRingFull(t *testing.T) {
	h := newCapHarness(t, loader.Settings{}, tableKnown...)
	frame := with(v4, func(f *frames.Frame) { f.PadTo = 3000 }).ESP(0xfeed, 1, 64)
	if err := h.cap.Start(maps.CaptureSettings{Ifindexes: []uint32{testRunIfindex}, ClassMask: maps.CapUnknown, Snaplen: maps.SnapMax, PerSPI: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	const n = 3000 // 3000 x 3 KB > the 4 MiB ring
	h.send(t, frame, n)
	st := h.stats(t)
	got := h.drain(t)
	if st.RingFull == 0 || st.Samples+st.RingFull != n || uint64(len(got)) != st.Samples {
		t.Fatalf("sent %d: counters %+v, %d samples read; want samples + ring_full = %d, some lost, all samples readable", n, st, len(got), n)
	}
	t.Logf("ring full: %d samples kept, %d counted as lost", st.Samples, st.RingFull)
}

// TestCaptureRateRefill: the token bucket refills with time, rate tokens a
// second, and holds at most one second's worth however long it stayed idle.
// Times are bracketed with Go's monotonic clock, which is the program's
// (CLOCK_MONOTONIC).
func TestCaptureRateRefill(t *testing.T) {
	const rate = 10
	h := newCapHarness(t, loader.Settings{}, tableKnown...)
	known := v4.ESP(0x1000, 1, 64)
	if err := h.cap.Start(maps.CaptureSettings{Ifindexes: []uint32{testRunIfindex}, ClassMask: bit(classify.ClassESP), Snaplen: 64, Rate: rate}); err != nil {
		t.Fatal(err)
	}
	burst := func() (kept int, first, last time.Time) {
		first = time.Now()
		h.send(t, known, 3*rate)
		last = time.Now()
		return len(h.drain(t)), first, last
	}
	if n, _, _ := burst(); n != rate {
		t.Fatalf("a new capture kept %d of %d, want the full bucket of %d", n, 3*rate, rate)
	}
	// The bucket is empty after the burst. Half a second gives 5 tokens; the drain's
	// wait (50 ms after the last record) and scheduling add some.
	_, _, emptied := burst()
	time.Sleep(450 * time.Millisecond)
	n, start, end := burst()
	lo, hi := int(start.Sub(emptied).Seconds()*rate), int(end.Sub(emptied).Seconds()*rate)+1
	if n < lo || n > hi || n >= rate {
		t.Errorf("%s after emptying the bucket: %d kept, want %d..%d (%d per second), fewer than %d", start.Sub(emptied).Round(time.Millisecond), n, lo, hi, rate, rate)
	}
	// Over a second idle: a full bucket, not more.
	time.Sleep(1500 * time.Millisecond)
	if n, _, _ := burst(); n != rate {
		t.Errorf("after 1.5 s idle: %d kept of %d, want exactly the bucket's %d", n, 3*rate, rate)
	}
	st := h.stats(t)
	if st.Samples+st.RateRefused != 4*3*rate {
		t.Errorf("counters %+v: samples + refused != %d frames sent", st, 4*3*rate)
	}
}

// tableCount is the packet count of v4's row of spi in sw_unknown alone, without what the
// per-CPU front holds: found through the program's maps, as the kernel has it.
func tableCount(t *testing.T, prog *ebpf.Program, spi uint32) uint64 {
	t.Helper()
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if mi, err := m.Info(); err != nil || mi.Name != maps.UnknownName {
			continue
		}
		key := make([]byte, 44) // struct unknown_key: saddr, daddr, spi, ifindex, ports
		src, dst := v4.Src.As16(), v4.Dst.As16()
		copy(key, src[:])
		copy(key[16:], dst[:])
		binary.NativeEndian.PutUint32(key[32:], spi)
		binary.NativeEndian.PutUint32(key[36:], testRunIfindex)
		val := make([]byte, m.ValueSize())
		if err := m.Lookup(key, val); err != nil {
			return 0
		}
		return binary.NativeEndian.Uint64(val) // packets come first
	}
	t.Fatal("the program has no sw_unknown map")
	return 0
}

// TestCaptureFirstNAcrossCPUs: a row counted on one CPU before a capture began
// sits mostly in that CPU's front of the unknown table; when its next packet
// arrives on another CPU under the capture, the first-N rule must still see the
// row's whole count (the fronts of every CPU), and keep nothing.
func TestCaptureFirstNAcrossCPUs(t *testing.T) {
	if runtime.NumCPU() < 2 {
		testenv.Unavailable(t, "needs two CPUs: a row counted on one and seen again on another")
	}
	h := newCapHarness(t, loader.Settings{}) // on CPU 0
	const spi = 0xdead00aa
	frame := v4.ESP(spi, 1, 64)
	// Capture off, one test run of 201 packets: the first makes the row, the
	// other 200 (within one tick, unless a tick ends meanwhile: then again) stay
	// in CPU 0's front.
	for try := 0; ; try++ {
		if _, err := h.prog.Run(&ebpf.RunOptions{Data: frame, Repeat: 201}); err != nil {
			t.Fatal(err)
		}
		n := tableCount(t, h.prog, spi)
		if n == 1 {
			break
		}
		if try == 5 {
			t.Fatalf("a tick ended in every one of 6 tries (the table has %d): the front never held the row's packets", n)
		}
		if err := h.m.ClearUnknown(); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.cap.Start(maps.CaptureSettings{Ifindexes: []uint32{testRunIfindex}, ClassMask: maps.CapUnknown, Snaplen: 64, PerSPI: 2}); err != nil {
		t.Fatal(err)
	}
	var cpu1 unix.CPUSet
	cpu1.Set(1)
	if err := unix.SchedSetaffinity(0, &cpu1); err != nil {
		t.Fatal(err)
	}
	h.send(t, frame, 1) // the table says 2 with it: first-N if the fronts were not added
	if got := h.drain(t); len(got) != 0 {
		t.Errorf("the 202nd packet of a row was kept as one of its first 2 (%d samples)", len(got))
	}
	// A new row on this CPU: its first 2 are kept.
	h.send(t, v4.ESP(spi+1, 1, 64), 3)
	if got := h.drain(t); len(got) != 2 || got[0].hdr.SPI != spi+1 {
		t.Errorf("a new row's first 2 packets: %d samples, want 2 of SPI %#x", len(got), spi+1)
	}
	rows, err := h.m.UnknownSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.SPI == spi && r.Packets != 202 {
			t.Errorf("row %#x: %d packets, want 202", spi, r.Packets)
		}
	}
}
