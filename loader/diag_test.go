// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"testing"

	"github.com/spiwatch/spiwatch/bpf"
	"github.com/spiwatch/spiwatch/maps"
)

// TestDiagTableSizes: DefaultICMPMax and DefaultIKEMax are the object's table sizes (spiwatch
// read reports them without loading the object).
func TestDiagTableSizes(t *testing.T) {
	spec, err := bpf.LoadSpiwatch()
	if err != nil {
		t.Fatal(err)
	}
	if got := spec.Maps[maps.ICMPName].MaxEntries; got != DefaultICMPMax {
		t.Errorf("%s has %d entries, DefaultICMPMax is %d", maps.ICMPName, got, DefaultICMPMax)
	}
	if got := spec.Maps[maps.IKEName].MaxEntries; got != DefaultIKEMax {
		t.Errorf("%s has %d entries, DefaultIKEMax is %d", maps.IKEName, got, DefaultIKEMax)
	}
}
