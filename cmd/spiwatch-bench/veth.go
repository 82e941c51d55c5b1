// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/trafficgen"
	"github.com/spiwatch/spiwatch/loader"
)

// vethRun is one receiver program fed by the generator through a veth pair.
type vethRun struct {
	name     string
	frames   uint64        // sent
	runs     uint64        // times the receiving program ran (bpf_stats)
	elapsed  time.Duration // from the first frame sent to the last one received
	progTime time.Duration // in-kernel run time of the receiving program (bpf_stats)
	counts   bool          // a classifier, whose counts follow (not a baseline)
	counted  uint64        // frames the classifier counted
	rightly  uint64        // of those, in the expected class and outcome
}

func (r vethRun) mpps() float64 { return float64(r.runs) / r.elapsed.Seconds() / 1e6 }
func (r vethRun) nsPerPkt() float64 {
	return float64(r.progTime.Nanoseconds()) / float64(max(r.runs, 1))
}

// receiver is what runs on the receiving veth during a vethRun.
type receiver struct {
	name   string
	attach func(lab *netlab.Lab) (prog *ebpf.Program, detach func(), err error)
	check  func() (counted, rightly uint64, err error)
}

// endToEnd sends frames of stream through a fresh lab to each receiver, rounds
// times, the order reversed every other round so that drift in the machine's
// load hits every receiver alike; it returns each receiver's rounds summed, and
// the rounds themselves.
func endToEnd(stream string, frames, rounds int, receivers []receiver) ([]vethRun, [][]vethRun, error) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, nil, fmt.Errorf("enabling bpf_stats: %w", err)
	}
	defer stats.Close()
	st, err := trafficgen.ParseStream(stream)
	if err != nil {
		return nil, nil, err
	}
	vary, err := st.Vary()
	if err != nil {
		return nil, nil, err
	}
	sum := make([]vethRun, len(receivers))
	var each [][]vethRun
	for round := 0; round < rounds; round++ {
		runs := make([]vethRun, len(receivers))
		for k := range receivers {
			i := k
			if round%2 == 1 {
				i = len(receivers) - 1 - k
			}
			rc := receivers[i]
			lab, err := netlab.New("swbench")
			if err != nil {
				return nil, nil, err
			}
			r, err := oneRun(lab, rc, st.Build(), vary, frames)
			lab.Close()
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", rc.name, err)
			}
			runs[i] = r
			s := &sum[i]
			s.name = r.name
			s.counts = r.counts
			s.frames += r.frames
			s.runs += r.runs
			s.elapsed += r.elapsed
			s.progTime += r.progTime
			s.counted += r.counted
			s.rightly += r.rightly
		}
		each = append(each, runs)
	}
	return sum, each, nil
}

func oneRun(lab *netlab.Lab, rc receiver, frame []byte, vary trafficgen.Vary, frames int) (vethRun, error) {
	r := vethRun{name: rc.name, frames: uint64(frames)}
	var prog *ebpf.Program
	var detach func()
	err := netlab.In(lab.NSB, func() error {
		var err error
		prog, detach, err = rc.attach(lab)
		return err
	})
	if err != nil {
		return r, err
	}
	defer detach()
	var s *trafficgen.Sender
	if err := netlab.In(lab.NSA, func() error {
		var err error
		s, err = trafficgen.NewSender(lab.Sender, vary)
		return err
	}); err != nil {
		return r, err
	}
	defer s.Close()
	before, err := prog.Stats()
	if err != nil {
		return r, err
	}
	start := time.Now()
	// The sender's ifindex is resolved at NewSender; runs need no namespace.
	if err := s.Send(frame, frames); err != nil {
		return r, err
	}
	// Wait until the receiver has run for every frame, or stops progressing.
	var after *ebpf.ProgramStats
	last, stuck := uint64(0), 0
	for {
		if after, err = prog.Stats(); err != nil {
			return r, err
		}
		n := after.RunCount - before.RunCount
		if n >= uint64(frames) || stuck > 50 {
			break
		}
		if n == last {
			stuck++
		} else {
			stuck, last = 0, n
			r.elapsed = time.Since(start)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if r.runs = after.RunCount - before.RunCount; r.runs >= uint64(frames) {
		r.elapsed = time.Since(start)
	}
	r.progTime = after.Runtime - before.Runtime
	if rc.check != nil {
		r.counts = true
		if r.counted, r.rightly, err = rc.check(); err != nil {
			return r, err
		}
	}
	return r, nil
}

// baselineReceiver attaches the baseline pick chooses natively.
func baselineReceiver(name string, pick func(*baselines) *ebpf.Program) receiver {
	return receiver{
		name: name,
		attach: func(lab *netlab.Lab) (*ebpf.Program, func(), error) {
			objs, err := loadBaselineSet()
			if err != nil {
				return nil, nil, err
			}
			ifindex, err := ifindexOf(lab.Receiver)
			if err != nil {
				objs.Close()
				return nil, nil, err
			}
			p := pick(objs)
			l, err := link.AttachXDP(link.XDPOptions{Program: p, Interface: ifindex, Flags: link.XDPDriverMode})
			if err != nil {
				objs.Close()
				return nil, nil, err
			}
			return p, func() { l.Close(); objs.Close() }, nil
		},
	}
}

// classifierReceiver attaches spiwatch's program natively with the bench SAs
// known; check counts what it classified and how much of it as want/outcome.
func classifierReceiver(want classify.Class, outcome classify.Outcome) receiver {
	return variantReceiver("spiwatch classifier", "", want, outcome)
}

// variantReceiver is classifierReceiver with the classifier built from the BPF
// object file path ("": the embedded one), for A/B runs (-variant).
func variantReceiver(name, path string, want classify.Class, outcome classify.Outcome) receiver {
	var objs *loader.Objects
	var slot int
	return receiver{
		name: name,
		attach: func(lab *netlab.Lab) (*ebpf.Program, func(), error) {
			var err error
			if path == "" {
				objs, err = loader.Load(loader.Settings{})
			} else {
				var spec *ebpf.CollectionSpec
				if spec, err = ebpf.LoadCollectionSpec(path); err == nil {
					objs, err = loader.LoadSpec(spec, loader.Settings{})
				}
			}
			if err != nil {
				return nil, nil, err
			}
			if err := objs.Maps.AddKnown(benchKnown...); err != nil {
				objs.Close()
				return nil, nil, err
			}
			a, err := objs.Attach(lab.Receiver, loader.ModeNative, false)
			if err != nil {
				objs.Close()
				return nil, nil, err
			}
			slot = a.Slot
			p, err := objs.Program(a.Slot)
			return p, func() { objs.Close() }, err
		},
		check: func() (uint64, uint64, error) {
			c, err := objs.Maps.Counters(slot)
			if err != nil {
				return 0, 0, err
			}
			return c.Total().Packets, c[want][outcome].Packets, nil
		},
	}
}

func emptyProg(o *baselines) *ebpf.Program { return o.BaseEmpty }
func spiProg(o *baselines) *ebpf.Program   { return o.BaseSpi }
func otherProg(o *baselines) *ebpf.Program { return o.BaseOther }
