// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"testing"

	"github.com/spiwatch/spiwatch/bpf"
	"github.com/spiwatch/spiwatch/maps"
)

// TestDiagTableSizes: ICMPMax and IKEMax are the object's table sizes (spiwatch
// read reports them without loading the object).
func TestDiagTableSizes(t *testing.T) {
	spec, err := bpf.LoadSpiwatch()
	if err != nil {
		t.Fatal(err)
	}
	if got := spec.Maps[maps.ICMPName].MaxEntries; got != ICMPMax {
		t.Errorf("%s has %d entries, ICMPMax is %d", maps.ICMPName, got, ICMPMax)
	}
	if got := spec.Maps[maps.IKEName].MaxEntries; got != IKEMax {
		t.Errorf("%s has %d entries, IKEMax is %d", maps.IKEName, got, IKEMax)
	}
}
