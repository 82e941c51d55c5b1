// SPDX-License-Identifier: Apache-2.0

package main

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/loader"
)

// The per-packet row of a new SPI in every frame is only that if the rewriting
// program hands each run a new (SPI, source) to the classifier: every run must
// make a row of one packet, and the SPIs and sources must cycle as documented.
func TestNewSPIEveryRun(t *testing.T) {
	testenv.RequireBPF(t)
	objs, err := loader.Load(loader.Settings{})
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	p, err := objs.Program(0)
	if err != nil {
		t.Fatal(err)
	}
	w, closeW, err := wrapNewSPI(p)
	if err != nil {
		t.Fatal(err)
	}
	defer closeW()

	const runs = 3000 // more than the 1,000 sources: each comes back with other SPIs
	ret, err := w.Run(&ebpf.RunOptions{Data: benchV4.ESP(newSPIFirst, 1, 56), Repeat: runs})
	if err != nil {
		t.Fatal(err)
	}
	if ret != 2 {
		t.Fatalf("the wrapped classifier returned %d, want XDP_PASS (2)", ret)
	}
	rows, stats, err := objs.Maps.UnknownTable(nil)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Inserts != runs || len(rows) != runs {
		t.Fatalf("%d runs made %d inserts and %d rows, want one new row per run", runs, stats.Inserts, len(rows))
	}
	sources := map[netip.Addr]bool{}
	for _, r := range rows {
		i := r.SPI - newSPIFirst
		if r.Packets != 1 || i >= runs {
			t.Fatalf("row %#x from %v: %d packets, want 1 packet and SPI %#x..%#x", r.SPI, r.Src, r.Packets, newSPIFirst, newSPIFirst+runs-1)
		}
		if want := netip.AddrFrom4([4]byte{10, 0, byte(i % 1000 >> 8), byte(i % 1000)}); r.Src != want {
			t.Fatalf("SPI %#x from %v, want %v", r.SPI, r.Src, want)
		}
		sources[r.Src] = true
	}
	if len(sources) != 1000 {
		t.Errorf("%d sources, want 1000", len(sources))
	}
}
