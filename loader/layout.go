// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// layoutPin is the record, in the pin directory, of the layout of every pinned
// map: the kernel checks a reused pin's type and key and value sizes only, so a
// build that reorders, retypes or renames fields of the same size would read old
// counts as something else. A BPF filesystem holds no regular files, but it holds
// symlinks: the record is one, "ls -l" shows it, and its target is the text.
const layoutPin = "layout"

// layoutVersion starts the record; a new record format gets a new one.
const layoutVersion = "spiwatch-layout-1"

// usePinLayout checks the maps pinned in dir against spec's layouts and records
// spec's for the maps about to be pinned. Called with the pin lock held.
func usePinLayout(spec *ebpf.CollectionSpec, dir string) error {
	want, err := mapLayouts(spec, pinnedMaps)
	if err != nil {
		return err
	}
	if err := checkLayout(dir, want); err != nil {
		return err
	}
	return writeLayout(dir, want)
}

// mapLayouts returns a short hash per map of its BTF key and value types: the
// members' names, offsets, sizes and encodings (not the table size, which the
// kernel checks, and not type names, which do not change the bytes).
func mapLayouts(spec *ebpf.CollectionSpec, names []string) (map[string]string, error) {
	out := map[string]string{}
	for _, name := range names {
		m, ok := spec.Maps[name]
		if !ok {
			return nil, fmt.Errorf("BPF object has no map %s: rebuild with make generate", name)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%v key %d value %d flags %#x\n", m.Type, m.KeySize, m.ValueSize, m.Flags)
		b.WriteString("key ")
		describeType(&b, m.Key, 0)
		b.WriteString("\nvalue ")
		describeType(&b, m.Value, 0)
		sum := sha256.Sum256([]byte(b.String()))
		out[name] = hex.EncodeToString(sum[:8])
	}
	return out, nil
}

// describeType writes t's layout as text. Pointers are not followed (a map
// value holds none that matter); depth stops a malformed cycle.
func describeType(b *strings.Builder, t btf.Type, depth int) {
	if depth > 16 {
		b.WriteString("...")
		return
	}
	switch t := t.(type) {
	case nil:
		b.WriteString("none")
	case *btf.Int:
		fmt.Fprintf(b, "int%d/%v", t.Size, t.Encoding)
	case *btf.Enum:
		fmt.Fprintf(b, "enum%d{", t.Size)
		for _, v := range t.Values {
			fmt.Fprintf(b, "%s=%d,", v.Name, v.Value)
		}
		b.WriteString("}")
	case *btf.Typedef:
		describeType(b, t.Type, depth+1)
	case *btf.Volatile:
		describeType(b, t.Type, depth+1)
	case *btf.Const:
		describeType(b, t.Type, depth+1)
	case *btf.Restrict:
		describeType(b, t.Type, depth+1)
	case *btf.TypeTag:
		describeType(b, t.Type, depth+1)
	case *btf.Array:
		fmt.Fprintf(b, "[%d]", t.Nelems)
		describeType(b, t.Type, depth+1)
	case *btf.Struct:
		fmt.Fprintf(b, "struct%d{", t.Size)
		describeMembers(b, t.Members, depth)
	case *btf.Union:
		fmt.Fprintf(b, "union%d{", t.Size)
		describeMembers(b, t.Members, depth)
	case *btf.Pointer:
		b.WriteString("ptr")
	default:
		fmt.Fprintf(b, "%T", t)
	}
}

func describeMembers(b *strings.Builder, ms []btf.Member, depth int) {
	for _, m := range ms {
		fmt.Fprintf(b, "%s@%d:%d ", m.Name, m.Offset, m.BitfieldSize)
		describeType(b, m.Type, depth+1)
		b.WriteString(",")
	}
	b.WriteString("}")
}

// formatLayout is the record's text: the version, then name=hash per map, sorted.
func formatLayout(l map[string]string) string {
	parts := []string{layoutVersion}
	for name, h := range l {
		parts = append(parts, name+"="+h)
	}
	slices.Sort(parts[1:])
	return strings.Join(parts, " ")
}

// parseLayout reads a record; ok is false for a format this build does not know.
func parseLayout(s string) (map[string]string, bool) {
	parts := strings.Fields(s)
	if len(parts) == 0 || parts[0] != layoutVersion {
		return nil, false
	}
	out := map[string]string{}
	for _, p := range parts[1:] {
		name, h, ok := strings.Cut(p, "=")
		if !ok {
			return nil, false
		}
		out[name] = h
	}
	return out, true
}

// checkLayout compares the maps pinned in dir with want (this build's layouts).
// A pinned map needs a record that matches: one made by another layout, or with
// no record at all (an older spiwatch), is refused, naming it and the fix.
func checkLayout(dir string, want map[string]string) error {
	var pinned []string
	for name := range want {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			pinned = append(pinned, name)
		}
	}
	if len(pinned) == 0 {
		return nil
	}
	slices.Sort(pinned)
	fix := fmt.Sprintf("remove them with spiwatch detach --pin-path %s (their counts are lost)", dir)
	text, err := os.Readlink(filepath.Join(dir, layoutPin))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("the maps pinned in %s have no layout record (%s: made by an older spiwatch), so this build cannot tell whether it reads them right: %s",
			dir, layoutPin, fix)
	}
	if err != nil {
		return fmt.Errorf("reading the layout record of the pins in %s: %w", dir, err)
	}
	have, ok := parseLayout(text)
	if !ok {
		return fmt.Errorf("the maps pinned in %s have a layout record this build does not know (%q): %s", dir, text, fix)
	}
	var changed []string
	for _, name := range pinned {
		if have[name] != want[name] {
			changed = append(changed, name)
		}
	}
	if len(changed) > 0 {
		return fmt.Errorf("the layout of pinned map %s in %s differs from this build's (made by an incompatible build): %s",
			strings.Join(changed, ", "), dir, fix)
	}
	return nil
}

// writeLayout records want in dir, replacing an older record (whose pinned maps
// checkLayout found equal, so only maps not pinned yet can differ).
func writeLayout(dir string, want map[string]string) error {
	text := formatLayout(want)
	path := filepath.Join(dir, layoutPin)
	if cur, err := os.Readlink(path); err == nil && cur == text {
		return nil
	}
	tmp := path + "_new" // no dots: bpffs refuses names with one
	os.Remove(tmp)
	if err := os.Symlink(text, tmp); err != nil {
		return fmt.Errorf("recording the layout of the pinned maps in %s: %w", dir, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("recording the layout of the pinned maps in %s: %w", dir, err)
	}
	return nil
}
