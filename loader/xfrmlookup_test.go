// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

// xlated is what the verifier left of slot 0's program: instructions and kfunc calls.
func xlated(t *testing.T, o *Objects) (insns, kfuncCalls int) {
	t.Helper()
	p, err := o.Program(0)
	if err != nil {
		t.Fatal(err)
	}
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	is, err := info.Instructions()
	if err != nil {
		t.Fatalf("reading the translated program: %v", err)
	}
	for _, ins := range is {
		if ins.IsKfuncCall() {
			kfuncCalls++
		}
	}
	return len(is), kfuncCalls
}

// The xfrm lookup option: on where the kernel has the kfunc (this machine's 6.18
// does, with no ESP), off with a reason elsewhere; off, the verifier removes the
// call so the hot path is the same; on, a miss the kernel does not know of either
// still counts as unknown. make test-vm checks 6.1 (no kfunc) and 6.12 (a kernel SA
// counts as known).
func TestXfrmLookup(t *testing.T) {
	testenv.RequireBPF(t)
	off, err := Load(Settings{})
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	on, err := Load(Settings{XfrmLookup: true})
	if err != nil {
		t.Fatalf("loading with XfrmLookup must never fail for its sake: %v", err)
	}
	defer on.Close()

	supported := XfrmLookupSupported()
	t.Logf("XfrmLookupSupported: %v", supported)
	if supported == nil && (!on.Settings.XfrmLookup || on.XfrmLookupOff != nil) {
		t.Fatalf("kernel has the kfunc, but the option is off: %v", on.XfrmLookupOff)
	}
	if supported != nil && (on.Settings.XfrmLookup || on.XfrmLookupOff == nil) {
		t.Fatalf("kernel lacks the kfunc (%v), but the option is on or gives no reason", supported)
	}
	if off.XfrmLookupOff != nil || off.Settings.XfrmLookup {
		t.Errorf("not asked for: XfrmLookup %v, reason %v", off.Settings.XfrmLookup, off.XfrmLookupOff)
	}

	offInsns, offCalls := xlated(t, off)
	onInsns, onCalls := xlated(t, on)
	t.Logf("translated instructions: %d with the option off, %d on (%d kfunc calls)", offInsns, onInsns, onCalls)
	if offCalls != 0 {
		t.Errorf("option off: %d kfunc calls left in the program; the verifier should have removed them", offCalls)
	}
	if supported == nil && onCalls != 2 {
		t.Errorf("option on: %d kfunc calls, want 2 (get and release)", onCalls)
	}

	// A miss: no SA anywhere for this SPI (documentation addresses, this namespace).
	frame := frames.Frame{Src: netip.MustParseAddr("192.0.2.1"), Dst: netip.MustParseAddr("192.0.2.2")}.ESP(0xdead0001, 1, 32)
	for name, o := range map[string]*Objects{"off": off, "on": on} {
		p, _ := o.Program(0)
		if _, err := p.Run(&ebpf.RunOptions{Data: frame}); err != nil {
			t.Fatal(err)
		}
		c, err := o.Maps.Counters(0)
		if err != nil {
			t.Fatal(err)
		}
		if got := c[classify.ClassESP][classify.OutcomeUnknown].Packets; got != 1 {
			t.Errorf("option %s: %d unknown ESP packets, want 1 (known: %d)", name, got, c[classify.ClassESP][classify.OutcomeKnown].Packets)
		}
	}
}
