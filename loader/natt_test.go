// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/spiwatch/spiwatch/internal/testenv"
)

// TestRunningNATTPorts: the NAT-T ports a program was loaded with are read back
// from its .rodata, through the maps RunningMaps opens by program ID, for every
// interface slot's instance (each has its own .rodata).
func TestRunningNATTPorts(t *testing.T) {
	testenv.RequireBPF(t)
	for _, ports := range [][]uint16{nil, {4501}, {4500, 4501, 4502, 4503, 4504, 4505, 4506, 10000}} {
		objs, err := Load(Settings{NATTPorts: ports})
		if err != nil {
			t.Fatal(err)
		}
		want := ports
		if want == nil {
			want = []uint16{DefaultNATTPort}
		}
		for _, slot := range []int{0, 3} {
			prog, err := objs.Program(slot)
			if err != nil {
				t.Fatal(err)
			}
			info, err := prog.Info()
			if err != nil {
				t.Fatal(err)
			}
			id, _ := info.ID()
			ms, closeMaps, err := RunningMaps(id)
			if err != nil {
				t.Fatal(err)
			}
			got, err := RunningNATTPorts(ms)
			if slot == 0 {
				checkEmbeddedLayout(t, ms)
			}
			closeMaps()
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("loaded with %v, slot %d: read %v, %v", ports, slot, got, err)
			}
		}
		objs.Close()
	}
}

// checkEmbeddedLayout: the fallback without the map's BTF (this build's object)
// puts the NAT-T constants where the loaded map's BTF does.
func checkEmbeddedLayout(t *testing.T, ms map[string]*ebpf.Map) {
	t.Helper()
	for name, m := range ms {
		if !strings.HasSuffix(name, ".rodata") {
			continue
		}
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, ok := info.BTFID()
		if !ok {
			t.Fatal("the loaded .rodata has no BTF")
		}
		fromBTF, err := btfVars(id)
		if err != nil {
			t.Fatal(err)
		}
		embedded, err := embeddedVars(m.ValueSize())
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range []string{"natt_ports", "natt_port_count"} {
			if fromBTF[v] != embedded[v] || fromBTF[v].size == 0 {
				t.Errorf("%s: %+v in the map's BTF, %+v in this build's object", v, fromBTF[v], embedded[v])
			}
		}
		if _, err := embeddedVars(m.ValueSize() + 8); err == nil {
			t.Error("another build's .rodata size was taken for this build's")
		}
		return
	}
	t.Fatal("no .rodata among the program's maps")
}
