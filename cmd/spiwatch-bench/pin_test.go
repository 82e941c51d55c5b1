// SPDX-License-Identifier: Apache-2.0

package main

import (
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/knownset"
	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/loader"
)

// The per-packet table and the report timing pin a thread to one CPU at a time;
// they must give it its CPUs back. Go reuses the thread afterwards, and the
// processes the later sections start from it (spiwatch, tcpdump, tshark) inherit
// its CPUs: left pinned, the capture comparison ran on one CPU.
func TestReportTimeGivesCPUsBack(t *testing.T) {
	testenv.RequireBPF(t)
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: nothing to pin away from")
	}
	// Locked here too, so that the thread reportTime pins is the one checked.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var before, after unix.CPUSet
	if err := unix.SchedGetaffinity(0, &before); err != nil {
		t.Fatal(err)
	}
	if _, rows, _, err := reportTime(1024, 1); err != nil || rows != 1024 {
		t.Fatalf("reportTime: %d rows, %v", rows, err)
	}
	if err := unix.SchedGetaffinity(0, &after); err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("after reportTime the thread may use %d CPUs, before %d", after.Count(), before.Count())
	}
}

func TestPinThread(t *testing.T) {
	cpus, err := threadCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if len(cpus) < 2 {
		t.Skip("one CPU: nothing to pin away from")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var before, pinned, after unix.CPUSet
	unix.SchedGetaffinity(0, &before)
	unpin, err := pinThread(cpus[len(cpus)-1])
	if err != nil {
		t.Fatal(err)
	}
	unix.SchedGetaffinity(0, &pinned)
	unpin()
	unix.SchedGetaffinity(0, &after)
	if pinned.Count() != 1 || !pinned.IsSet(cpus[len(cpus)-1]) {
		t.Errorf("pinned to %d CPUs, want CPU %d alone", pinned.Count(), cpus[len(cpus)-1])
	}
	if after != before {
		t.Errorf("unpinned: %d CPUs, want the %d before", after.Count(), before.Count())
	}
}

// The timed report is spiwatch's: every row gets its verdict from the known
// SAs' history (here a stale SA), not the bare "unknown" of a reporter without it.
func TestBenchReporterIsSpiwatchs(t *testing.T) {
	testenv.RequireBPF(t)
	objs, err := loader.Load(loader.Settings{})
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	rep, known, err := benchReporter(objs)
	if err != nil {
		t.Fatal(err)
	}
	if err := known.Update("--known-spi", benchKnown[1:]); err != nil { // 0x1000 removed
		t.Fatal(err)
	}
	p, err := objs.Program(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Run(&ebpf.RunOptions{Data: benchV4.ESP(0x1000, 1, 56)}); err != nil {
		t.Fatal(err)
	}
	s, err := rep.Take()
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Unknown) != 1 || s.Unknown[0].SPI != 0x1000 || s.Unknown[0].Verdict != knownset.Stale {
		t.Fatalf("rows %+v, want SPI 0x1000 %s", s.Unknown, knownset.Stale)
	}
}
