// SPDX-License-Identifier: Apache-2.0

package bpf_test

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

// testRunIfindex is the ingress interface of a BPF_PROG_TEST_RUN without a context:
// the namespace's loopback.
const testRunIfindex = 1

// harness runs single frames through the real program and reports what the maps
// say happened.
type harness struct {
	objs  *loader.Objects
	prog  *ebpf.Program
	m     *maps.Maps
	cfg   classify.Config
	known classify.SASet
	drop  bool
}

func newHarness(t testing.TB, s loader.Settings, known ...maps.SA) *harness {
	t.Helper()
	testenv.RequireBPF(t)
	objs, err := loader.Load(s)
	if err != nil {
		t.Fatalf("loading: %+v", err)
	}
	t.Cleanup(func() { objs.Close() })
	prog, err := objs.Program(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := objs.Maps.AddKnown(known...); err != nil {
		t.Fatal(err)
	}
	h := &harness{objs: objs, prog: prog, m: objs.Maps, cfg: classify.Config{NATTPorts: s.NATTPorts},
		known: classify.SASet{}, drop: s.DropUnknown}
	for _, sa := range known {
		h.known.Add(sa.SPI, sa.Dst)
	}
	return h
}

// obs is what one frame did to the maps.
type obs struct {
	Class   classify.Class
	Outcome classify.Outcome
	Verdict uint32
	Unknown *maps.Unknown // the unknown-table row it created, if any
	Known   *maps.SA      // the known SA it was counted in, if any
	ICMP    *maps.ICMPRow // the ICMP-error row it created, if any
	IKE     *maps.IKERow  // the IKE row it created, if any
}

func (h *harness) counters(t testing.TB) maps.Counters {
	t.Helper()
	c, err := h.m.Counters(0)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (h *harness) knownStats(t testing.TB) map[maps.SA]maps.KnownSA {
	t.Helper()
	l, err := h.m.ListKnown()
	if err != nil {
		t.Fatal(err)
	}
	out := map[maps.SA]maps.KnownSA{}
	for _, k := range l {
		out[k.SA] = k
	}
	return out
}

// run sends frame through the program once and checks that exactly one counter
// moved by one packet and len(frame) bytes, and that at most one table entry
// changed. It leaves the unknown table empty.
func (h *harness) run(t testing.TB, frame []byte) obs {
	t.Helper()
	before := h.counters(t)
	knownBefore := h.knownStats(t)
	ret, err := h.prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatalf("test run of %x: %v", frame, err)
	}
	o := obs{Verdict: ret}
	after := h.counters(t)
	moved := 0
	for cl := range after {
		for oc := range after[cl] {
			dp := after[cl][oc].Packets - before[cl][oc].Packets
			db := after[cl][oc].Bytes - before[cl][oc].Bytes
			if dp == 0 && db == 0 {
				continue
			}
			moved++
			if dp != 1 || db != uint64(len(frame)) {
				t.Fatalf("frame %x: counter %s/%s moved by %d packets, %d bytes; want 1, %d",
					frame, classify.Class(cl), classify.Outcome(oc), dp, db, len(frame))
			}
			o.Class, o.Outcome = classify.Class(cl), classify.Outcome(oc)
		}
	}
	if moved != 1 {
		t.Fatalf("frame %x moved %d counters, want exactly 1", frame, moved)
	}
	snap, err := h.m.UnknownSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap) > 1 {
		t.Fatalf("frame %x left %d unknown-table rows, want at most 1", frame, len(snap))
	}
	if len(snap) == 1 {
		o.Unknown = &snap[0]
		if err := h.m.ClearUnknown(); err != nil {
			t.Fatal(err)
		}
	}
	icmp, err := h.m.ICMPSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	ike, err := h.m.IKESnapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(icmp) > 1 || len(ike) > 1 {
		t.Fatalf("frame %x left %d ICMP and %d IKE rows, want at most 1", frame, len(icmp), len(ike))
	}
	if len(icmp) == 1 {
		o.ICMP = &icmp[0]
	}
	if len(ike) == 1 {
		o.IKE = &ike[0]
	}
	if len(icmp)+len(ike) > 0 {
		if err := h.m.ClearDiag(); err != nil {
			t.Fatal(err)
		}
	}
	for sa, k := range h.knownStats(t) {
		b := knownBefore[sa]
		if k.Packets == b.Packets && k.Bytes == b.Bytes {
			continue
		}
		if o.Known != nil || k.Packets != b.Packets+1 || k.Bytes != b.Bytes+uint64(len(frame)) {
			t.Fatalf("frame %x: known SA %s moved from %d/%d to %d/%d packets/bytes", frame, sa, b.Packets, b.Bytes, k.Packets, k.Bytes)
		}
		sa := sa
		o.Known = &sa
	}
	return o
}

// expect is what the Go reference classifier says the program must do.
func (h *harness) expect(frame []byte) (obs, classify.Result) {
	r := classify.Classify(frame, &h.cfg)
	o := obs{Class: r.Class, Outcome: classify.OutcomeOf(r, h.known)}
	o.Verdict = classify.Verdict(o.Outcome, h.drop)
	if o.Outcome == classify.OutcomeUnknown || o.Outcome == classify.OutcomeReserved {
		// Keys hold 16-byte addresses: an IPv4-mapped IPv6 address is the IPv4 one
		// (docs/CLASSES.md), and comes back as IPv4.
		o.Unknown = &maps.Unknown{SPI: r.SPI, Src: r.Src.Unmap(), Dst: r.Dst.Unmap(), SrcPort: r.SrcPort, DstPort: r.DstPort,
			Ifindex: testRunIfindex, Packets: 1, Bytes: uint64(len(frame)), LastSeq: r.Seq}
	}
	switch r.Class {
	case classify.ClassICMPESP:
		e := r.ICMP
		e.Src, e.Dst = e.Src.Unmap(), e.Dst.Unmap()
		o.ICMP = &maps.ICMPRow{Reporter: r.Src.Unmap(), Ifindex: testRunIfindex, ICMPError: e, Packets: 1, Bytes: uint64(len(frame))}
	case classify.ClassIKE:
		x := r.IKE
		o.IKE = &maps.IKERow{Peer: r.Src.Unmap(), Ifindex: testRunIfindex, Version: x.Version, Exchange: x.Exchange, Dir: x.Dir,
			Packets: 1, Bytes: uint64(len(frame)), LastISPI: x.ISPI, LastRSPI: x.RSPI, LastMsgID: x.MsgID,
			LastFlags: x.Flags, LastExchangeType: x.ExchangeType, LastNextPay: x.NextPayload}
	}
	if o.Outcome == classify.OutcomeKnown {
		// exact destination first, then any
		sa := maps.SA{SPI: r.SPI, Dst: r.Dst.Unmap()}
		if _, ok := h.known[classify.MakeSAKey(r.SPI, r.Dst)]; !ok {
			sa.Dst = netip.Addr{}
		}
		o.Known = &sa
	}
	return o, r
}

// compare runs frame through the program and fails on any difference from the
// reference: class, outcome, verdict, SPI, addresses, ports, sequence, counts.
func (h *harness) compare(t testing.TB, frame []byte) obs {
	t.Helper()
	got := h.run(t, frame)
	want, _ := h.expect(frame)
	if got.Class != want.Class || got.Outcome != want.Outcome || got.Verdict != want.Verdict {
		t.Fatalf("frame %x:\n bpf: class %s outcome %s verdict %d\n  go: class %s outcome %s verdict %d",
			frame, got.Class, got.Outcome, got.Verdict, want.Class, want.Outcome, want.Verdict)
	}
	sameRow(t, frame, "unknown row", got.Unknown, want.Unknown, func(u *maps.Unknown) (*uint64, *uint64) { return &u.FirstSeenNs, &u.LastSeenNs })
	if (got.Known == nil) != (want.Known == nil) || got.Known != nil && *got.Known != *want.Known {
		t.Fatalf("frame %x: bpf counted known SA %v, go %v", frame, got.Known, want.Known)
	}
	sameRow(t, frame, "ICMP row", got.ICMP, want.ICMP, func(r *maps.ICMPRow) (*uint64, *uint64) { return &r.FirstSeenNs, &r.LastSeenNs })
	sameRow(t, frame, "IKE row", got.IKE, want.IKE, func(r *maps.IKERow) (*uint64, *uint64) { return &r.FirstSeenNs, &r.LastSeenNs })
	return got
}

// sameRow checks that the program made the row the reference predicts, or none
// when it predicts none. The reference has no clock: the program's first and
// last seen (from times) must be set and in order, and are left out.
func sameRow[R comparable](t testing.TB, frame []byte, what string, got, want *R, times func(*R) (first, last *uint64)) {
	t.Helper()
	if (got == nil) != (want == nil) {
		t.Fatalf("frame %x: bpf %s %+v, go %+v", frame, what, got, want)
	}
	if got == nil {
		return
	}
	g := *got
	first, last := times(&g)
	if *first == 0 || *last < *first {
		t.Fatalf("frame %x: %s timestamps %d..%d", frame, what, *first, *last)
	}
	*first, *last = 0, 0
	if g != *want {
		t.Fatalf("frame %x: %s\n bpf %+v\n  go %+v", frame, what, g, *want)
	}
}
