// SPDX-License-Identifier: Apache-2.0

package maps

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Names of the capture maps in the BPF object.
const (
	CapCfgName   = "sw_capcfg"
	CapStateName = "sw_capstate"
	CapOwnerName = "sw_capowner"
	SamplesName  = "sw_samples"
	// CapOnName is the map of the program's mutable globals, which hold only
	// capture_on: the switch the hot path reads.
	CapOnName = ".bss"
)

// Capture limits shared with bpf/spiwatch.h.
const (
	CapMaxIfaces = 8
	CapMaxSPIs   = 8
	SnapMax      = 9216
	CapRateMax   = 10_000_000
	// CapUnknown is the class-mask bit for packets with an unknown or reserved SPI,
	// whatever their class; bits 0 to NumClasses-1 select whole classes.
	CapUnknown = 1 << 15
)

// Reasons a sample was taken (enum sw_cap_reason).
const (
	ReasonFirst = 1 // among the first packets of its unknown-table row
	ReasonRate  = 2 // within the rate
)

// capCfg mirrors struct sw_capcfg.
type capCfg struct {
	On, Gen, ClassMask, Snaplen, PerSPI, Rate, NIfaces, NSPIs uint32
	Ifindexes                                                 [CapMaxIfaces]uint32
	SPIs                                                      [CapMaxSPIs]uint32
}

// capState mirrors struct sw_capstate (one CPU's copy).
type capState struct {
	Credit, LastNs, Samples, RingFull, RateRefused uint64
	Gen                                            uint32
	_                                              uint32
}

// CapOwner mirrors struct sw_capowner: the process running the capture.
type CapOwner struct {
	PID   uint32
	_     uint32
	Start uint64 // process start time in clock ticks, to tell a reused PID
}

// SampleHeader mirrors struct sw_sample, the head of every ring-buffer record;
// CapLen bytes of the frame follow it.
type SampleHeader struct {
	TsNs       uint64 // CLOCK_MONOTONIC
	RowPackets uint64 // the unknown-table row's packets so far; 0: no row
	Ifindex    uint32
	SPI        uint32
	Len        uint32
	CapLen     uint32
	Class      uint8
	Outcome    uint8
	Reason     uint8
	Action     uint8 // XDP verdict: 1 drop, 2 pass
	_          uint32
}

// SampleHeaderSize is the size of SampleHeader in the ring buffer.
const SampleHeaderSize = 40

// CaptureSettings are what a capture asks the program to sample.
type CaptureSettings struct {
	Ifindexes []uint32 // at most CapMaxIfaces
	ClassMask uint32   // bit per class, plus CapUnknown
	SPIs      []uint32 // at most CapMaxSPIs; empty: any
	Snaplen   uint32   // 1..SnapMax
	PerSPI    uint32   // first packets of every unknown-table row kept
	Rate      uint32   // then packets per second per CPU; at most CapRateMax
}

// CaptureStats are the capture counters summed over CPUs. They only grow: a
// capture reports the difference between its end and its start.
type CaptureStats struct {
	Samples     uint64 // handed to the ring buffer
	RingFull    uint64 // lost: the ring buffer had no room
	RateRefused uint64 // selected but over the rate
}

// Sub returns s - o.
func (s CaptureStats) Sub(o CaptureStats) CaptureStats {
	return CaptureStats{s.Samples - o.Samples, s.RingFull - o.RingFull, s.RateRefused - o.RateRefused}
}

// Capture gives access to the capture maps of one loaded program.
type Capture struct {
	cfg, state, owner, samples, on *ebpf.Map
	ncpu                           int
}

// ErrNoCapture means the program's build has no capture maps.
var ErrNoCapture = errors.New("this spiwatch program has no capture maps (an older build): restart spiwatch run with this version")

// CaptureFrom picks the capture maps out of a set of maps by name.
func CaptureFrom(ms map[string]*ebpf.Map) (*Capture, error) {
	c := &Capture{cfg: ms[CapCfgName], state: ms[CapStateName], owner: ms[CapOwnerName], samples: ms[SamplesName], on: ms[CapOnName]}
	if c.cfg == nil || c.state == nil || c.owner == nil || c.samples == nil || c.on == nil {
		return nil, ErrNoCapture
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("counting possible CPUs: %w", err)
	}
	c.ncpu = ncpu
	return c, nil
}

// Samples is the ring buffer the program writes samples to.
func (c *Capture) Samples() *ebpf.Map { return c.samples }

// Validate checks settings against the program's limits.
func (s CaptureSettings) Validate() error {
	switch {
	case len(s.Ifindexes) == 0 || len(s.Ifindexes) > CapMaxIfaces:
		return fmt.Errorf("a capture takes 1 to %d interfaces, %d given", CapMaxIfaces, len(s.Ifindexes))
	case len(s.SPIs) > CapMaxSPIs:
		return fmt.Errorf("a capture takes at most %d SPIs, %d given", CapMaxSPIs, len(s.SPIs))
	case s.Snaplen < 1 || s.Snaplen > SnapMax:
		return fmt.Errorf("snap length %d out of range 1-%d", s.Snaplen, SnapMax)
	case s.Rate > CapRateMax:
		return fmt.Errorf("rate %d out of range 0-%d packets per second", s.Rate, CapRateMax)
	case s.ClassMask == 0:
		return errors.New("a capture needs at least one class")
	}
	return nil
}

// Start turns sampling on with settings s. Every start changes the generation, so
// every CPU's token bucket starts full.
func (c *Capture) Start(s CaptureSettings) error {
	if err := s.Validate(); err != nil {
		return err
	}
	var old capCfg
	if err := c.cfg.Lookup(uint32(0), &old); err != nil {
		return fmt.Errorf("reading capture settings: %w", err)
	}
	v := capCfg{On: 1, Gen: old.Gen + 1, ClassMask: s.ClassMask, Snaplen: s.Snaplen, PerSPI: s.PerSPI, Rate: s.Rate,
		NIfaces: uint32(len(s.Ifindexes)), NSPIs: uint32(len(s.SPIs))}
	copy(v.Ifindexes[:], s.Ifindexes)
	copy(v.SPIs[:], s.SPIs)
	if err := c.cfg.Update(uint32(0), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("writing capture settings: %w", err)
	}
	return c.setOn(1)
}

// setOn writes capture_on, the program's only mutable global.
func (c *Capture) setOn(on uint32) error {
	if c.on.ValueSize() != 4 {
		return fmt.Errorf("the program's .bss is %d bytes, want 4 (capture_on only): a mismatched build", c.on.ValueSize())
	}
	if err := c.on.Update(uint32(0), on, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("switching capture: %w", err)
	}
	return nil
}

// Stop turns sampling off; the generation is kept so the next start differs.
func (c *Capture) Stop() error {
	if err := c.setOn(0); err != nil {
		return err
	}
	var v capCfg
	if err := c.cfg.Lookup(uint32(0), &v); err != nil {
		return fmt.Errorf("reading capture settings: %w", err)
	}
	v = capCfg{Gen: v.Gen}
	if err := c.cfg.Update(uint32(0), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("writing capture settings: %w", err)
	}
	return nil
}

// Stats sums the capture counters over CPUs.
func (c *Capture) Stats() (CaptureStats, error) {
	var s CaptureStats
	vals := make([]capState, c.ncpu)
	if err := c.state.Lookup(uint32(0), vals); err != nil {
		return s, fmt.Errorf("reading capture counters: %w", err)
	}
	for _, v := range vals {
		s.Samples += v.Samples
		s.RingFull += v.RingFull
		s.RateRefused += v.RateRefused
	}
	return s, nil
}

// TakeOwner records o as the capture's owner if there is none. Otherwise it
// returns the current owner and false; the kernel makes this atomic (BPF_NOEXIST).
func (c *Capture) TakeOwner(o CapOwner) (CapOwner, bool, error) {
	err := c.owner.Update(uint32(0), &o, ebpf.UpdateNoExist)
	if err == nil {
		return o, true, nil
	}
	if !errors.Is(err, ebpf.ErrKeyExist) {
		return CapOwner{}, false, fmt.Errorf("recording the capture's owner: %w", err)
	}
	var cur CapOwner
	if err := c.owner.Lookup(uint32(0), &cur); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) { // released meanwhile: try once more
			return c.TakeOwner(o)
		}
		return CapOwner{}, false, fmt.Errorf("reading the capture's owner: %w", err)
	}
	return cur, false, nil
}

// ReleaseOwner removes the owner entry.
func (c *Capture) ReleaseOwner() error {
	if err := c.owner.Delete(uint32(0)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("releasing the capture: %w", err)
	}
	return nil
}
