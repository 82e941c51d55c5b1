// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

var (
	benchPeer = netip.MustParseAddr("198.51.100.1")
	benchGW   = netip.MustParseAddr("203.0.113.1")
	benchV4   = frames.Frame{Src: benchPeer, Dst: benchGW}
	benchV6   = frames.Frame{Src: netip.MustParseAddr("2001:db8::1"), Dst: netip.MustParseAddr("2001:db8::2")}
	benchOut4 = frames.Frame{Src: benchGW, Dst: benchPeer} // our own outbound ESP, which ICMP errors quote
)

// benchKnown are the SAs the classifier knows during the per-packet runs.
var benchKnown = []maps.SA{
	{SPI: 0x1000, Dst: benchGW},
	{SPI: 0x2000, Dst: benchGW},
	{SPI: 0x3000, Dst: netip.MustParseAddr("2001:db8::2")},
}

// newSPIKind is the row whose every run has a new unknown SPI: each program runs
// behind one that rewrites the frame (wrapNewSPI).
const newSPIKind = "esp unknown (new SPI each time)"

// frameKind is one row of the per-packet table. ESP frames are 98 bytes on the
// wire like the reference measurement (14 + 20 + 8 + 56).
type frameKind struct {
	name  string
	frame []byte
	// floor names the baseline the target compares with, and the target ratio.
	floor  string
	target float64
}

func frameKinds() []frameKind {
	vlan := benchV4
	vlan.VLANs = []frames.VLAN{{TPID: 0x8100, ID: 100}}
	return []frameKind{
		{"esp known", benchV4.ESP(0x1000, 1, 56), "spi", 1.25},
		{"esp unknown (existing entry)", benchV4.ESP(0xdead, 1, 56), "spi", 1.6},
		{"esp-in-udp known", benchV4.ESPInUDP(4500, 4500, 0x2000, 1, 48), "spi", 1.25},
		{"esp-in-udp unknown (existing entry)", benchV4.ESPInUDP(4500, 4500, 0xbeef, 1, 48), "spi", 1.6},
		{"esp reserved (spi 7)", benchV4.ESP(7, 1, 56), "", 0},
		{"ike (udp 500)", benchV4.IKE(500, 500, false, 200), "", 0},
		{"nat keepalive", benchV4.Keepalive(4500, 4500), "", 0},
		// The minimal SPI counter parses neither IPv6 nor VLANs: no fair floor.
		{"ipv6 esp known", benchV6.ESP(0x3000, 1, 56), "", 0},
		{"vlan esp known", vlan.ESP(0x1000, 1, 56), "", 0},
		{"other: tcp", benchV4.TCP(40000, 443, 44), "empty", 1.1},
		{"other: udp 53", benchV4.UDP(40000, 53, make([]byte, 56)), "empty", 1.1},
		// ICMP errors quoting our ESP are counted in their own table; echo is other.
		{"icmp-esp (frag-needed)", benchV4.ICMP(3, 4, 1400, frames.Quote(benchOut4.ESP(0x1000, 1, 1400), 8)), "", 0},
		{"other: icmp echo", benchV4.ICMP(8, 0, 0x00010001, make([]byte, 56)), "", 0},
		// Each run rewritten to a new SPI from one of 1,000 sources (wrapNewSPI).
		// Last: it fills the classifiers' unknown tables, which the other rows
		// would then run against.
		{newSPIKind, benchV4.ESP(newSPIFirst, 1, 56), "", 0},
	}
}

// progCost is the median ns per run of one program on one frame.
type progCost struct {
	median float64   // ns per run, the median round's
	all    []float64 // ns per run, round by round
	// gaps are each round's figure less the kernel's own (whole ns, rounded
	// down): a check that the two clocks agree.
	gaps []float64
}

// timedRun runs the program repeat times on frame and returns the ns per run from
// this thread's CPU time, which has the resolution the kernel's own figure lacks:
// BPF_PROG_TEST_RUN reports whole nanoseconds, 5-12% steps at 8-20 ns, more than
// the 10% a target allows. The test run happens in this thread's system call;
// its setup (one frame copied in and out) is microseconds in milliseconds.
func timedRun(p *ebpf.Program, frame []byte, repeat int) (ns, kernel float64, err error) {
	var t0, t1 unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t0); err != nil {
		return 0, 0, fmt.Errorf("reading thread CPU time: %w", err)
	}
	_, d, err := p.Benchmark(frame, repeat, nil)
	if err != nil {
		return 0, 0, err
	}
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t1); err != nil {
		return 0, 0, fmt.Errorf("reading thread CPU time: %w", err)
	}
	return float64(t1.Nano()-t0.Nano()) / float64(repeat), float64(d.Nanoseconds()), nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// perPacketRow is one frame kind's cost next to the baselines'.
type perPacketRow struct {
	kind                            frameKind
	classifier, empty, counter, spi progCost
	other                           progCost   // the minimal other-traffic counter
	variants                        []progCost // other builds of the classifier (-variant)
}

func (r perPacketRow) floorCost() progCost {
	switch r.kind.floor {
	case "spi":
		return r.spi
	case "empty":
		return r.empty
	}
	return progCost{}
}

// perPacket runs every frame kind through the classifier and the baselines,
// interleaved round by round so that machine noise hits all of them alike. Each
// program is loaded instances times and round r runs instance r mod instances:
// where the JIT places a program moves its cost by a few percent, the same for
// every run of that load, so one load per program would carry that into the
// ratios.
func perPacket(repeat, rounds, instances int, only string, variantFiles []string) ([]perPacketRow, error) {
	// loads[i] are the instances of program i: classifier, baselines, variants.
	var loads [][]*ebpf.Program
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for range instances {
		var set []*ebpf.Program
		for _, f := range append([]string{""}, variantFiles...) {
			p, c, err := loadClassifier(f)
			if err != nil {
				if f == "" {
					return nil, err
				}
				return nil, fmt.Errorf("variant %s: %w", f, err)
			}
			closers = append(closers, c)
			set = append(set, p)
		}
		base, c, err := loadBaselines()
		if err != nil {
			return nil, err
		}
		closers = append(closers, c)
		// classifier, empty, counter, SPI counter, other counter, variants
		set = append([]*ebpf.Program{set[0], base.BaseEmpty, base.BaseCounter, base.BaseSpi, base.BaseOther}, set[1:]...)
		for i, p := range set {
			if len(loads) <= i {
				loads = append(loads, nil)
			}
			loads[i] = append(loads[i], p)
		}
	}

	kinds := slices.DeleteFunc(frameKinds(), func(k frameKind) bool {
		return only != "" && !slices.Contains(strings.Split(only, ","), k.name)
	})
	var wrapped [][]*ebpf.Program // loads behind the rewriting program, for newSPIKind
	if slices.ContainsFunc(kinds, func(k frameKind) bool { return k.name == newSPIKind }) {
		for _, ps := range loads {
			var ws []*ebpf.Program
			for _, p := range ps {
				w, c, err := wrapNewSPI(p)
				if err != nil {
					return nil, err
				}
				closers = append(closers, c)
				ws = append(ws, w)
			}
			wrapped = append(wrapped, ws)
		}
	}

	var rows []perPacketRow
	for _, k := range kinds {
		progs := loads
		if k.name == newSPIKind {
			progs = wrapped
		}
		row := perPacketRow{kind: k, variants: make([]progCost, len(variantFiles))}
		outs := []*progCost{&row.classifier, &row.empty, &row.counter, &row.spi, &row.other}
		for i := range row.variants {
			outs = append(outs, &row.variants[i])
		}
		// Round by round, every program in turn: noise from the machine then hits
		// all of them alike, and the medians compare.
		for r := 0; r < rounds; r++ {
			for i, out := range outs {
				d, kernel, err := timedRun(progs[i][r%instances], k.frame, repeat)
				if err != nil {
					return nil, fmt.Errorf("%s: test run: %w", k.name, err)
				}
				out.all = append(out.all, d)
				out.gaps = append(out.gaps, d-kernel)
			}
		}
		for _, out := range outs {
			out.median = median(out.all)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// loadBaselines loads the baseline programs, the minimal SPI counter knowing the
// classifier's SPIs.
func loadBaselines() (*baselines, func(), error) {
	base, err := loadBaselineSet()
	if err != nil {
		return nil, nil, fmt.Errorf("loading baselines: %w", err)
	}
	for _, sa := range benchKnown {
		zero := make([]uint64, mustCPUs())
		if err := base.BaseSpis.Put(sa.SPI, zero); err != nil {
			base.Close()
			return nil, nil, fmt.Errorf("baseline SPIs: %w", err)
		}
	}
	return base, func() { base.Close() }, nil
}

func mustCPUs() int {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		panic(err)
	}
	return n
}

// loadClassifier loads the committed classifier, or the object file path, with the
// bench SAs known.
func loadClassifier(path string) (*ebpf.Program, func(), error) {
	var objs *loader.Objects
	var err error
	if path == "" {
		objs, err = loader.Load(loader.Settings{})
	} else {
		var spec *ebpf.CollectionSpec
		if spec, err = ebpf.LoadCollectionSpec(path); err != nil {
			return nil, nil, err
		}
		objs, err = loader.LoadSpec(spec, loader.Settings{})
	}
	if err != nil {
		return nil, nil, err
	}
	if err := objs.Maps.AddKnown(benchKnown...); err != nil {
		objs.Close()
		return nil, nil, err
	}
	p, err := objs.Program(0)
	if err != nil {
		objs.Close()
		return nil, nil, err
	}
	return p, func() { objs.Close() }, nil
}
