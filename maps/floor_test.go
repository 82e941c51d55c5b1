// SPDX-License-Identifier: Apache-2.0

package maps

import "testing"

// An evictions figure read while rows are inserted comes out a few short; the
// next, exact, one must not be followed by a smaller one (a report or a rate
// would show rows un-evicted).
func TestEvictedFloor(t *testing.T) {
	var f evictedFloor
	for _, step := range []struct{ in, want uint64 }{{0, 0}, {50, 50}, {40, 50}, {50, 50}, {70, 70}, {0, 70}} {
		if got := f.atLeast(step.in); got != step.want {
			t.Fatalf("atLeast(%d) = %d, want %d", step.in, got, step.want)
		}
	}
}
