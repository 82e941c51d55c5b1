// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/bpf"
	"github.com/spiwatch/spiwatch/maps"
)

// DefaultPinPath is where spiwatch run --pin keeps its maps and links, so that
// counting goes on in the kernel while no spiwatch process runs.
const DefaultPinPath = "/sys/fs/bpf/spiwatch"

// pinnedMaps are the maps kept across restarts: counts continue from the pins.
var pinnedMaps = maps.Names

// linkPin names the pinned link of iface in slot: the slot must survive restarts,
// since each program instance has its slot built in.
func linkPin(dir string, slot int, iface string) string {
	return filepath.Join(dir, fmt.Sprintf("link_%d_%s", slot, iface))
}

// PinnedLink is an interface spiwatch left attached under a pin directory.
type PinnedLink struct {
	Iface string
	Slot  int
	Path  string
}

// PinnedLinks lists the links pinned in dir.
func PinnedLinks(dir string) ([]PinnedLink, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []PinnedLink
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), "link_")
		if !ok {
			continue
		}
		slotStr, iface, ok := strings.Cut(rest, "_")
		slot, err := strconv.Atoi(slotStr)
		if !ok || err != nil || slot < 0 || slot >= maps.MaxIfaces {
			continue
		}
		out = append(out, PinnedLink{Iface: iface, Slot: slot, Path: filepath.Join(dir, e.Name())})
	}
	return out, nil
}

// prepareBPFFS makes sure dir can hold pins: it must be on a BPF filesystem. Under
// /sys/fs/bpf with nothing mounted there, one is mounted (as systemd would). The
// directory is created readable by root only.
func prepareBPFFS(dir string) error {
	const bpffsMagic = 0xCAFE4A11
	onBPFFS := func(p string) bool {
		// the nearest existing ancestor decides
		for ; ; p = filepath.Dir(p) {
			var st unix.Statfs_t
			if err := unix.Statfs(p, &st); err == nil {
				return st.Type == bpffsMagic
			}
			if p == "/" || p == "." {
				return false
			}
		}
	}
	if !onBPFFS(dir) {
		if dir != "/sys/fs/bpf" && !strings.HasPrefix(dir, "/sys/fs/bpf/") {
			return fmt.Errorf("pin directory %s is not on a BPF filesystem (mount one: mount -t bpf bpf DIR)", dir)
		}
		if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mounting the BPF filesystem at /sys/fs/bpf: %w (mount it: mount -t bpf bpf /sys/fs/bpf)", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating pin directory: %w", err)
	}
	return os.Chmod(dir, 0o700)
}

func pinError(dir string, err error) error {
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("the maps pinned in %s were made by an incompatible build or with other table sizes (%w): "+
			"remove them with spiwatch detach --pin-path %s, or start with the sizes they have", dir, err, dir)
	}
	return err
}

// attachPinned attaches through the link pinned for iface if there is one (the
// program is swapped in place, so no packet goes uncounted), else attaches anew and
// pins the link.
func (o *Objects) attachPinned(iface string, ifindex int, mode Mode) (*Attachment, error) {
	dir := o.Settings.PinPath
	pins, err := PinnedLinks(dir)
	if err != nil {
		return nil, err
	}
	for _, p := range pins {
		if p.Iface != iface {
			continue
		}
		l, err := link.LoadPinnedLink(p.Path, nil)
		if err != nil {
			return nil, fmt.Errorf("opening pinned link %s: %w", p.Path, err)
		}
		prog, err := o.programLocked(p.Slot)
		if err != nil {
			l.Close()
			return nil, err
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			return nil, fmt.Errorf("updating the program of pinned link %s: %w", p.Path, err)
		}
		a := &Attachment{Iface: iface, Ifindex: ifindex, Slot: p.Slot, link: l, pinned: p.Path, Mode: attachedMode(ifindex)}
		if info, err := prog.Info(); err == nil {
			a.ProgID, _ = info.ID()
		}
		o.attached = append(o.attached, a)
		return a, nil
	}
	return nil, nil
}

// attachedMode reads from netlink which mode the interface's XDP program runs in.
func attachedMode(ifindex int) Mode {
	if x := xdpState(ifindex); x != nil && x.AttachMode == 2 { // XDP_ATTACHED_SKB
		return ModeGeneric
	}
	return ModeNative
}

// Unpin removes every pin under dir: links first (which detaches them), then the
// maps and the directory.
func Unpin(dir string) error {
	pins, err := PinnedLinks(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, p := range pins {
		if err := UnpinLink(p.Path); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range append(slices.Clone(pinnedMaps), layoutPin, layoutPin+"_new") {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// UnpinLink detaches the program of one pinned link and removes the pin.
func UnpinLink(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return fmt.Errorf("opening pinned link %s: %w", path, err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpinning %s: %w", path, err)
	}
	return nil // closing the last reference detaches
}

// OpenPinnedMaps opens the maps under dir without loading or attaching anything.
// Maps of another layout are refused: they would be read as something else.
func OpenPinnedMaps(dir string) (*maps.Maps, func(), error) {
	spec, err := bpf.LoadSpiwatch()
	if err != nil {
		return nil, nil, fmt.Errorf("reading embedded BPF object: %w", err)
	}
	want, err := mapLayouts(spec, pinnedMaps)
	if err != nil {
		return nil, nil, err
	}
	if err := checkLayout(dir, want); err != nil {
		return nil, nil, err
	}
	var opened []*ebpf.Map
	closeAll := func() {
		for _, m := range opened {
			m.Close()
		}
	}
	byName := map[string]*ebpf.Map{}
	for _, name := range pinnedMaps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			closeAll()
			if errors.Is(err, os.ErrNotExist) {
				return nil, nil, fmt.Errorf("nothing pinned in %s: start spiwatch run --pin first", dir)
			}
			return nil, nil, fmt.Errorf("opening pinned map %s: %w", name, err)
		}
		opened = append(opened, m)
		byName[name] = m
	}
	m, err := maps.FromCollection(byName)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return m, closeAll, nil
}

// DescribeAttachment says in which mode and with which program an interface's XDP
// hook is taken, for spiwatch status.
func DescribeAttachment(ifindex int) (mode, prog string) {
	x := xdpState(ifindex)
	if x == nil {
		return "-", "none (detached)"
	}
	return attachModeName(x.AttachMode), describeProg(ebpf.ProgramID(x.ProgId))
}
