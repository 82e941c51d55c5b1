// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/spiwatch/spiwatch/bpf"
	"github.com/spiwatch/spiwatch/maps"
)

// swapMembers returns spec with the names of the first two members of map name's
// value swapped: the same sizes and types, another meaning.
func swapMembers(t *testing.T, name string) *btf.Struct {
	t.Helper()
	spec, err := bpf.LoadSpiwatch()
	if err != nil {
		t.Fatal(err)
	}
	s, ok := btf.UnderlyingType(spec.Maps[name].Value).(*btf.Struct)
	if !ok || len(s.Members) < 2 {
		t.Fatalf("map %s: value %v is not a struct of two members or more", name, spec.Maps[name].Value)
	}
	swapped := &btf.Struct{Name: s.Name, Size: s.Size, Members: append([]btf.Member(nil), s.Members...)}
	swapped.Members[0].Name, swapped.Members[1].Name = s.Members[1].Name, s.Members[0].Name
	return swapped
}

func TestMapLayouts(t *testing.T) {
	spec, err := bpf.LoadSpiwatch()
	if err != nil {
		t.Fatal(err)
	}
	a, err := mapLayouts(spec, maps.Names)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != len(maps.Names) {
		t.Fatalf("%d layouts for %d maps", len(a), len(maps.Names))
	}
	// Table sizes are the kernel's to check (and are flags): not part of the layout.
	spec.Maps[maps.UnknownName].MaxEntries = 7
	spec.Maps[maps.CountersName].Value = swapMembers(t, maps.CountersName)
	b, err := mapLayouts(spec, maps.Names)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range maps.Names {
		if same := a[name] == b[name]; same != (name != maps.CountersName) {
			t.Errorf("map %s: layout %s before, %s after swapping the names of %s's members", name, a[name], b[name], maps.CountersName)
		}
	}
	if got, ok := parseLayout(formatLayout(a)); !ok || fmt.Sprint(got) != fmt.Sprint(a) {
		t.Errorf("record %q read back as %v", formatLayout(a), got)
	}
	for _, bad := range []string{"", "spiwatch-layout-0 sw_known=1", "spiwatch-layout-1 sw_known"} {
		if _, ok := parseLayout(bad); ok {
			t.Errorf("record %q accepted", bad)
		}
	}
}

// TestPinnedLayout: the first run with a pin path records the maps' layout; a
// build whose map layout differs at equal sizes, and pins with no record (an
// older spiwatch), are refused naming the map and the fix, and change nothing.
func TestPinnedLayout(t *testing.T) {
	dir := testPinDir(t)
	objs, err := Load(Settings{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	objs.Close()
	t.Cleanup(func() {
		if err := Unpin(dir); err != nil {
			t.Errorf("Unpin: %v", err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("pin directory left after Unpin: %v", err)
		}
	})
	record, err := os.Readlink(filepath.Join(dir, layoutPin))
	if err != nil || !strings.HasPrefix(record, layoutVersion+" ") || !strings.Contains(record, maps.CountersName+"=") {
		t.Fatalf("layout record %q: %v", record, err)
	}

	// The same build again: accepted.
	objs, err = Load(Settings{PinPath: dir})
	if err != nil {
		t.Fatalf("the same build again: %v", err)
	}
	objs.Close()

	spec, err := bpf.LoadSpiwatch()
	if err != nil {
		t.Fatal(err)
	}
	spec.Maps[maps.CountersName].Value = swapMembers(t, maps.CountersName)
	_, err = LoadSpec(spec, Settings{PinPath: dir})
	want := "the layout of pinned map " + maps.CountersName + " in " + dir + " differs from this build's (made by an incompatible build): " +
		"remove them with spiwatch detach --pin-path " + dir
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("a build with another layout of %s: %v\nwant %q", maps.CountersName, err, want)
	}
	if again, _ := os.Readlink(filepath.Join(dir, layoutPin)); again != record {
		t.Errorf("the refused build changed the record:\n%s\nwas\n%s", again, record)
	}
	if err := openErr(dir); err != nil {
		t.Errorf("OpenPinnedMaps after the refusal: %v", err)
	}

	// No record: pins from before records were kept.
	if err := os.Remove(filepath.Join(dir, layoutPin)); err != nil {
		t.Fatal(err)
	}
	for what, err := range map[string]error{"Load": loadErr(Settings{PinPath: dir}), "OpenPinnedMaps": openErr(dir)} {
		if err == nil || !strings.Contains(err.Error(), "have no layout record") || !strings.Contains(err.Error(), "spiwatch detach --pin-path "+dir) {
			t.Errorf("%s with no layout record: %v", what, err)
		}
	}
}

func loadErr(s Settings) error {
	objs, err := Load(s)
	if err == nil {
		objs.Close()
	}
	return err
}

func openErr(dir string) error {
	_, closeMaps, err := OpenPinnedMaps(dir)
	if err == nil {
		closeMaps()
	}
	return err
}
