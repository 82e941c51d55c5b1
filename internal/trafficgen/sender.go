// SPDX-License-Identifier: Apache-2.0

// Package trafficgen sends frames out of an interface at high rate with
// BPF_PROG_TEST_RUN in live-frame mode (Linux 5.18+): the kernel runs a tiny XDP
// program that returns XDP_TX for every repetition, so frames leave without a socket
// or a copy per packet. Tests, the demo and the benchmarks share it.
package trafficgen

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/bpf"
)

// xdpMD mirrors the kernel's struct xdp_md, the context of an XDP test run.
type xdpMD struct {
	Data           uint32
	DataEnd        uint32
	DataMeta       uint32
	IngressIfindex uint32
	RxQueueIndex   uint32
	EgressIfindex  uint32
}

// Vary makes each frame of a sender differ: frame i carries SPIBase + i % SPISpan in
// the 32-bit big-endian field at SPIOffset, and SrcBase + i % SrcSpan in the one at
// SrcOffset (the low word of the source address), and SeqBase + i (modulo 2^32) in the
// one at SeqOffset (an ESP sequence number). Zero offsets leave the frame alone.
type Vary struct {
	SPIOffset, SPIBase, SPISpan uint32
	SrcOffset, SrcBase, SrcSpan uint32
	SeqOffset, SeqBase          uint32
}

// Sender transmits frames out of one interface of the current network namespace.
type Sender struct {
	iface    string
	ns       netns.NsHandle // the namespace iface is in
	ifindex  int
	prog     *ebpf.Program
	template *ebpf.Map
	seq      *ebpf.Map // [0] frames sent, [1] the limit (see bpf/txgen.c)
	last     []byte    // the frame in template
	// BatchSize is the live-frame batch (frames per kernel flush); 0 is the kernel's
	// default of 64.
	BatchSize uint32
}

// NewSender loads the generator program for iface.
func NewSender(iface string, v Vary) (*Sender, error) {
	// The kernel resolves the test run's ingress ifindex in the namespace of the
	// thread that runs it, so remember ours: every Send runs in it, whatever thread
	// or namespace the caller is on. Otherwise the same index could name another
	// interface, in another namespace, and frames would leave there.
	runtime.LockOSThread()
	ns, err := netns.Get()
	runtime.UnlockOSThread()
	if err != nil {
		return nil, fmt.Errorf("reading the network namespace: %w", err)
	}
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("interface %s not found: %w", iface, err)
	}
	spec, err := bpf.LoadTxgen()
	if err != nil {
		return nil, fmt.Errorf("reading generator object: %w", err)
	}
	if v.SPISpan == 0 {
		v.SPISpan = 1
	}
	if v.SrcSpan == 0 {
		v.SrcSpan = 1
	}
	for name, val := range map[string]uint32{
		"spi_off": v.SPIOffset, "spi_base": v.SPIBase, "spi_span": v.SPISpan,
		"src_off": v.SrcOffset, "src_base": v.SrcBase, "src_span": v.SrcSpan,
		"seq_off": v.SeqOffset, "seq_base": v.SeqBase,
	} {
		if err := spec.Variables[name].Set(val); err != nil {
			return nil, fmt.Errorf("setting %s: %w", name, err)
		}
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, fmt.Errorf("loading generator program: %w", err)
	}
	s := &Sender{iface: iface, ns: ns, ifindex: ifc.Index, prog: coll.DetachProgram("txgen"), template: coll.DetachMap("tx_frame"),
		seq: coll.DetachMap("tx_seq")}
	coll.Close()
	return s, nil
}

// Send transmits frame exactly count times (XDP_TX), even when a test run is
// interrupted by a signal and restarted: the program stops at the limit set here.
func (s *Sender) Send(frame []byte, count int) error {
	if len(frame) < 14 {
		return errors.New("sending frame: shorter than an Ethernet header")
	}
	if len(frame) > maxFrame {
		return fmt.Errorf("sending frame: %d bytes, at most %d", len(frame), maxFrame)
	}
	if !bytes.Equal(frame, s.last) {
		var t txTemplate
		t.Len = uint32(len(frame))
		copy(t.Data[:], frame)
		if err := s.template.Put(uint32(0), &t); err != nil {
			return fmt.Errorf("writing frame template: %w", err)
		}
		s.last = append(s.last[:0], frame...)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cur, err := netns.Get()
	if err != nil {
		return fmt.Errorf("reading the network namespace: %w", err)
	}
	defer cur.Close()
	if !cur.Equal(s.ns) {
		if err := netns.Set(s.ns); err != nil {
			return fmt.Errorf("entering the namespace of %s: %w", s.iface, err)
		}
		defer func() {
			if err := netns.Set(cur); err != nil {
				panic(fmt.Sprintf("returning to the caller's network namespace: %v", err))
			}
		}()
	}
	// Belt and braces: the index must still name our interface.
	if ifc, err := net.InterfaceByIndex(s.ifindex); err != nil || ifc.Name != s.iface {
		return fmt.Errorf("sending on %s: interface index %d no longer names it", s.iface, s.ifindex)
	}
	var sent uint64
	if err := s.seq.Lookup(uint32(0), &sent); err != nil {
		return fmt.Errorf("reading the frames sent: %w", err)
	}
	limit := sent + uint64(count)
	if err := s.seq.Put(uint32(1), limit); err != nil {
		return fmt.Errorf("setting the frames due: %w", err)
	}
	// Runs until the program has transmitted exactly count more frames; it drops
	// (does not send) any repetition past the limit.
	for sent < limit {
		n := min(limit-sent, 1<<30)
		_, err := s.prog.Run(&ebpf.RunOptions{
			Data:      frame,
			Repeat:    uint32(n),
			Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
			Context:   xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(s.ifindex)},
			BatchSize: s.BatchSize,
		})
		if err != nil {
			return fmt.Errorf("sending %d frames with live-frame test runs: %w", n, err)
		}
		if err := s.seq.Lookup(uint32(0), &sent); err != nil {
			return fmt.Errorf("reading the frames sent: %w", err)
		}
	}
	return nil
}

// maxFrame is TX_MAX_FRAME of bpf/txgen.c.
const maxFrame = 2048

// txTemplate mirrors struct tx_template.
type txTemplate struct {
	Len  uint32
	_    uint32
	Data [maxFrame]byte
}

// Close releases the program, its map and the namespace handle.
func (s *Sender) Close() error {
	s.ns.Close()
	s.seq.Close()
	s.template.Close()
	return s.prog.Close()
}

// Apply returns frame as the generator sends it the i-th time (i from 0), for
// checking what a receiver must have seen.
func (v Vary) Apply(frame []byte, i uint64) []byte {
	out := append([]byte(nil), frame...)
	put := func(off, base, span uint32) {
		if off == 0 || int(off)+4 > len(out) {
			return
		}
		if span == 0 {
			span = 1
		}
		binary.BigEndian.PutUint32(out[off:], base+uint32(i%uint64(span)))
	}
	put(v.SPIOffset, v.SPIBase, v.SPISpan)
	put(v.SrcOffset, v.SrcBase, v.SrcSpan)
	if v.SeqOffset != 0 && int(v.SeqOffset)+4 <= len(out) {
		binary.BigEndian.PutUint32(out[v.SeqOffset:], v.SeqBase+uint32(i))
	}
	return out
}
