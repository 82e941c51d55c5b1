// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/bpf"
)

// newSPIFirst is the first SPI the rewriting program writes (NEWSPI_FIRST in
// bpf/baseline.c); none of them is known to the classifier.
const newSPIFirst = 0x10000000

// baselines are the baseline programs of the per-packet table and the veth runs,
// loaded without the rewriting programs (which each wrapped program loads anew).
type baselines struct {
	BaseEmpty   *ebpf.Program `ebpf:"base_empty"`
	BaseCounter *ebpf.Program `ebpf:"base_counter"`
	BaseSpi     *ebpf.Program `ebpf:"base_spi"`
	BaseOther   *ebpf.Program `ebpf:"base_other"`
	BaseSpis    *ebpf.Map     `ebpf:"base_spis"`
}

func (b *baselines) Close() {
	for _, c := range []interface{ Close() error }{b.BaseEmpty, b.BaseCounter, b.BaseSpi, b.BaseOther, b.BaseSpis} {
		c.Close()
	}
}

func loadBaselineSet() (*baselines, error) {
	spec, err := bpf.LoadBaseline()
	if err != nil {
		return nil, err
	}
	var b baselines
	if err := spec.LoadAndAssign(&b, nil); err != nil {
		return nil, err
	}
	return &b, nil
}

// rewriter is a program that gives every run of a test run a new unknown SPI and
// then tail-calls the program measured.
type rewriter struct {
	Prog *ebpf.Program
	Next *ebpf.Map `ebpf:"base_next"`
}

// wrapNewSPI returns a program that rewrites the frame's SPI and source for each
// run, then runs target: BPF_PROG_TEST_RUN repeats one frame, and this is how a
// new unknown SPI in every packet is measured per packet. The kernel tail-calls
// only between programs that agree on multi-buffer frames, so the build that
// target takes is found by trying.
func wrapNewSPI(target *ebpf.Program) (*ebpf.Program, func(), error) {
	var errs []error
	for _, name := range []string{bpf.BaselineProgBaseNewspiFrags, bpf.BaselineProgBaseNewspi} {
		w, err := loadRewriter(name)
		if err != nil {
			return nil, nil, fmt.Errorf("loading %s: %w", name, err)
		}
		err = w.Next.Put(uint32(0), target)
		if err == nil {
			return w.Prog, func() { w.Prog.Close(); w.Next.Close() }, nil
		}
		w.Prog.Close()
		w.Next.Close()
		if !errors.Is(err, unix.EINVAL) {
			return nil, nil, fmt.Errorf("%s: putting the program measured in base_next: %w", name, err)
		}
		errs = append(errs, fmt.Errorf("%s: %w", name, err))
	}
	return nil, nil, fmt.Errorf("no rewriting program can tail-call the program measured: %w", errors.Join(errs...))
}

// loadRewriter loads one build of the rewriting program with a ProgramArray and a
// counter (.bss) of its own.
func loadRewriter(name string) (*rewriter, error) {
	spec, err := bpf.LoadBaseline()
	if err != nil {
		return nil, err
	}
	ps, ok := spec.Programs[name]
	if !ok {
		return nil, fmt.Errorf("the baseline object has no program %s: rebuild with make generate", name)
	}
	next, err := ebpf.NewMap(spec.Maps[bpf.BaselineMapBaseNext])
	if err != nil {
		return nil, err
	}
	// .bss is the only other map the program uses; cilium/ebpf creates it.
	coll, err := ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{
		Programs:  map[string]*ebpf.ProgramSpec{name: ps},
		Maps:      map[string]*ebpf.MapSpec{bpf.BaselineMapBaseNext: spec.Maps[bpf.BaselineMapBaseNext], ".bss": spec.Maps[".bss"]},
		Variables: spec.Variables,
		Types:     spec.Types,
		ByteOrder: spec.ByteOrder,
	}, ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{bpf.BaselineMapBaseNext: next}})
	if err != nil {
		next.Close()
		return nil, err
	}
	prog := coll.DetachProgram(name)
	coll.Close() // the program holds the maps it uses
	return &rewriter{Prog: prog, Next: next}, nil
}
