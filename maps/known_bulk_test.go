// SPDX-License-Identifier: Apache-2.0

package maps_test

import (
	"net/netip"
	"testing"

	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

// TestKnownBulkAdd: a big gateway's SAs go in at once. The known-SA maps are not
// preallocated, and the kernel's allocator refuses an insert now and then with
// ENOMEM while it refills its per-CPU caches (without a retry, 2 of 3 adds of
// 50,000 SAs failed at a random SA, and the whole change went back). Three fresh
// adds of 50,000 must all succeed, and the set read back must be what was added.
func TestKnownBulkAdd(t *testing.T) {
	dst := netip.MustParseAddr("203.0.113.1")
	sas := make([]maps.SA, 50000)
	for i := range sas {
		sas[i] = maps.SA{SPI: 0x10000000 + uint32(i), Dst: dst}
	}
	for round := range 3 {
		objs, _ := load(t, loader.Settings{KnownMax: 65536})
		if err := objs.Maps.ReplaceKnown(sas); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		got, err := objs.Maps.ListKnown()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(sas) {
			t.Fatalf("round %d: %d known SAs read back, %d added", round, len(got), len(sas))
		}
		objs.Close()
	}
}
