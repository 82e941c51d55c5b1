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

// TestSlotInstancesCountApart: each interface's instance counts into its own
// row, in the counters and in the dropped counts, and nowhere else.
func TestSlotInstancesCountApart(t *testing.T) {
	testenv.RequireBPF(t)
	objs, err := Load(Settings{DropUnknown: true})
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	f := frames.Frame{Src: netip.MustParseAddr("198.51.100.1"), Dst: netip.MustParseAddr("203.0.113.1")}
	slots := []int{0, 5, 63}
	for i, slot := range slots {
		prog, err := objs.Program(slot)
		if err != nil {
			t.Fatal(err)
		}
		// slot i gets i+1 frames of each kind, so a count in the wrong row shows
		for range i + 1 {
			for _, frame := range [][]byte{f.TCP(40000, 443, 10), f.ESP(0xdead, 1, 40)} {
				if _, err := prog.Run(&ebpf.RunOptions{Data: frame}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for i, slot := range append(slots, 1, 62) {
		want := uint64(0)
		if i < len(slots) {
			want = uint64(i + 1)
		}
		c, err := objs.Maps.Counters(slot)
		if err != nil {
			t.Fatal(err)
		}
		d, err := objs.Maps.Dropped(slot)
		if err != nil {
			t.Fatal(err)
		}
		other := c[classify.ClassOther][classify.OutcomeNone].Packets
		unknown := c[classify.ClassESP][classify.OutcomeUnknown].Packets
		dropped := d[classify.ClassESP].Packets
		if other != want || unknown != want || dropped != want {
			t.Errorf("slot %d: %d other, %d unknown esp, %d dropped; want %d of each", slot, other, unknown, dropped, want)
		}
	}
}
