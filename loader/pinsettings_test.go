// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"testing"
)

// TestReadPinnedAction: a reader of the pins (spiwatch stats, a later run) learns
// what the program left attached does with unknown SPIs, from the program itself.
func TestReadPinnedAction(t *testing.T) {
	for _, tc := range []struct {
		s    Settings
		want PinnedAction
	}{
		{Settings{}, PinnedAction{}},
		{Settings{DropUnknown: true}, PinnedAction{DropUnknown: true}},
		{Settings{DropUnknown: true, DropAbove: 250}, PinnedAction{DropUnknown: true, DropAbove: 250}},
	} {
		dir, _, objs, _ := pinnedRun(t, tc.s)
		if objs.PinsGoAtExit {
			t.Error("pins on a BPF filesystem mounted before the load: PinsGoAtExit set")
		}
		objs.Close() // the link stays, pinned
		pins, err := PinnedLinks(dir)
		if err != nil || len(pins) != 1 {
			t.Fatalf("pinned links %+v, %v; want one", pins, err)
		}
		got, err := ReadPinnedAction(pins[0].Path)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want || got.String() != map[bool]string{false: "pass", true: "drop"}[tc.want.DropUnknown] {
			t.Errorf("loaded with %+v: read %+v (%s), want %+v", tc.s, got, got, tc.want)
		}
		if err := Unpin(dir); err != nil {
			t.Fatal(err)
		}
	}
}

// A program whose settings are laid out otherwise (another build) is refused,
// not misread.
func TestDecodeActionOtherBuild(t *testing.T) {
	if _, err := decodeAction(make([]byte, 3)); err == nil {
		t.Fatal("3 bytes of settings decoded")
	}
}
