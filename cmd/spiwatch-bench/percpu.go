// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/spiwatch/spiwatch/bpf"
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
	}
}

// progCost is the median ns per run of one program on one frame.
type progCost struct {
	median time.Duration
	all    []time.Duration
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
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

// perPacket runs every frame kind through the classifier and the three baselines,
// interleaved round by round so that machine noise hits all of them alike.
func perPacket(repeat, rounds int, only string, variantFiles []string) ([]perPacketRow, error) {
	cls, closeCls, err := loadClassifier("")
	if err != nil {
		return nil, err
	}
	defer closeCls()
	var variants []*ebpf.Program
	for _, f := range variantFiles {
		p, c, err := loadClassifier(f)
		if err != nil {
			return nil, fmt.Errorf("variant %s: %w", f, err)
		}
		defer c()
		variants = append(variants, p)
	}
	var base bpf.BaselineObjects
	if err := bpf.LoadBaselineObjects(&base, nil); err != nil {
		return nil, fmt.Errorf("loading baselines: %w", err)
	}
	defer base.Close()
	// the floor program knows the same SPIs
	for _, sa := range benchKnown {
		zero := make([]uint64, mustCPUs())
		if err := base.BaseSpis.Put(sa.SPI, zero); err != nil {
			return nil, err
		}
	}

	var rows []perPacketRow
	for _, k := range frameKinds() {
		if only != "" && !slices.Contains(strings.Split(only, ","), k.name) {
			continue
		}
		row := perPacketRow{kind: k}
		progs := []struct {
			p   *ebpf.Program
			out *progCost
		}{{cls, &row.classifier}, {base.BaseEmpty, &row.empty}, {base.BaseCounter, &row.counter}, {base.BaseSpi, &row.spi},
			{base.BaseOther, &row.other}}
		row.variants = make([]progCost, len(variants))
		for i, v := range variants {
			progs = append(progs, struct {
				p   *ebpf.Program
				out *progCost
			}{v, &row.variants[i]})
		}
		// Round by round, every program in turn: noise from the machine then hits
		// all four alike, and the medians compare.
		for r := 0; r < rounds; r++ {
			for _, x := range progs {
				_, d, err := x.p.Benchmark(k.frame, repeat, nil)
				if err != nil {
					return nil, fmt.Errorf("%s: test run: %w", k.name, err)
				}
				x.out.all = append(x.out.all, d)
			}
		}
		for _, x := range progs {
			x.out.median = median(x.out.all)
		}
		rows = append(rows, row)
	}
	return rows, nil
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
