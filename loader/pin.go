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
	"github.com/vishvananda/netlink"
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
// since each program instance has its slot built in. The BPF filesystem refuses
// dots in names, common in interface names (eth0.100): they become colons, which
// no interface name has.
func linkPin(dir string, slot int, iface string) string {
	return filepath.Join(dir, fmt.Sprintf("link_%d_%s", slot, strings.ReplaceAll(iface, ".", ":")))
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
		iface = strings.ReplaceAll(iface, ":", ".") // see linkPin
		out = append(out, PinnedLink{Iface: iface, Slot: slot, Path: filepath.Join(dir, e.Name())})
	}
	return out, nil
}

// prepareBPFFS makes sure dir can hold pins: it must be on a BPF filesystem. Under
// /sys/fs/bpf with nothing mounted there, one is mounted (as systemd would). The
// directory is created readable by root only.
func prepareBPFFS(dir string) (mounted bool, err error) {
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
			return false, fmt.Errorf("pin directory %s is not on a BPF filesystem (mount one: mount -t bpf bpf DIR)", dir)
		}
		if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
			return false, fmt.Errorf("mounting the BPF filesystem at /sys/fs/bpf: %w (mount it: mount -t bpf bpf /sys/fs/bpf)", err)
		}
		mounted = true
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return mounted, fmt.Errorf("creating pin directory: %w", err)
	}
	return mounted, os.Chmod(dir, 0o700)
}

// privateMountNS says whether this thread's mount namespace is not the host's:
// ip netns exec makes one of its own, with a /sys of its own, and a BPF
// filesystem mounted there goes, with its pins, when the command ends. The host's
// is PID 1's, or where that cannot be read (some sandboxes) the parent's, which
// ip netns exec leaves outside (it execs the command itself). Neither readable:
// no, nothing is claimed.
func privateMountNS() bool {
	self, err := os.Readlink("/proc/thread-self/ns/mnt")
	if err != nil {
		return false
	}
	for _, p := range []string{"/proc/1/ns/mnt", fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid())} {
		if host, err := os.Readlink(p); err == nil {
			return self != host
		}
	}
	return false
}

func pinError(dir string, err error) error {
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("the maps pinned in %s were made by an incompatible build or with other table sizes (%w): "+
			"remove them with spiwatch detach --pin-path %s, or start with the sizes they have", dir, err, dir)
	}
	return err
}

// attachPinned attaches through the link pinned for iface if there is one (the
// program is swapped in place, so no packet goes uncounted). The link is found by
// the interface it is on, so a renamed interface is still ours. A pinned link
// whose interface was deleted since is unpinned, and its slot returned for a new
// link (the counts go on); reuse is -1 otherwise.
func (o *Objects) attachPinned(iface string, ifindex int, mode Mode) (a *Attachment, reuse int, err error) {
	dir := o.Settings.PinPath
	pins, err := PinnedLinks(dir)
	if err != nil {
		return nil, -1, err
	}
	if p, l := pinnedOn(pins, ifindex); l != nil {
		a, err := o.takeOver(p, l, iface, ifindex)
		return a, -1, err
	}
	for _, p := range pins {
		if p.Iface != iface {
			continue
		}
		l, err := link.LoadPinnedLink(p.Path, nil)
		if err != nil {
			return nil, -1, fmt.Errorf("opening pinned link %s: %w", p.Path, err)
		}
		defer l.Close()
		if on := linkIfindex(l); on != 0 {
			return nil, -1, fmt.Errorf("the link pinned for %s in %s is on another interface now (%s): it was renamed, and %s is a new one; "+
				"spiwatch detach -i %s --pin-path %s removes that link", iface, dir, ifaceName(on), iface, iface, dir)
		}
		// Severed: its interface was deleted.
		if err := l.Unpin(); err != nil {
			return nil, -1, fmt.Errorf("removing pinned link %s of a deleted interface: %w", p.Path, err)
		}
		return nil, p.Slot, nil
	}
	return nil, -1, nil
}

// pinnedOn finds the pinned link attached to ifindex in this network namespace
// (an ifindex alone may be another namespace's: the program must be the one
// netlink shows there too).
func pinnedOn(pins []PinnedLink, ifindex int) (PinnedLink, link.Link) {
	x := xdpState(ifindex)
	if x == nil {
		return PinnedLink{}, nil
	}
	for _, p := range pins {
		l, err := link.LoadPinnedLink(p.Path, nil)
		if err != nil {
			continue
		}
		if info, err := l.Info(); err == nil && linkIfindex(l) == ifindex && uint32(info.Program) == x.ProgId {
			return p, l
		}
		l.Close()
	}
	return PinnedLink{}, nil
}

// takeOver swaps this run's program into pinned link l of p, renaming the pin
// if the interface was renamed since.
func (o *Objects) takeOver(p PinnedLink, l link.Link, iface string, ifindex int) (*Attachment, error) {
	prog, err := o.programLocked(p.Slot)
	if err != nil {
		l.Close()
		return nil, err
	}
	prev := linkProgram(l) // for Abort to put back
	if err := l.Update(prog); err != nil {
		l.Close()
		closeProg(prev)
		return nil, fmt.Errorf("updating the program of pinned link %s: %w", p.Path, err)
	}
	a := &Attachment{Iface: p.Iface, Ifindex: ifindex, Slot: p.Slot, link: l, pinned: p.Path, Mode: attachedMode(ifindex), prev: prev}
	if info, err := prog.Info(); err == nil {
		a.ProgID, _ = info.ID()
	}
	o.repin(a, iface)
	o.attached = append(o.attached, a)
	return a, nil
}

// repin gives a's pinned link the name of its interface now, so that detach -i
// and status find it by that name. Best effort: the next run finds the link by
// its interface anyway.
func (o *Objects) repin(a *Attachment, name string) {
	a.Iface = name
	if a.pinned == "" {
		return
	}
	path := linkPin(o.Settings.PinPath, a.Slot, name)
	if path == a.pinned {
		return
	}
	if _, err := os.Lstat(path); err == nil {
		return // never replace another pin
	}
	if os.Rename(a.pinned, path) == nil {
		a.pinned = path
	}
}

// linkIfindex is the interface an XDP link is attached to; 0 once severed (the
// interface was deleted) or when the kernel does not say.
func linkIfindex(l link.Link) int {
	info, err := l.Info()
	if err != nil {
		return 0
	}
	if x := info.XDP(); x != nil {
		return int(x.Ifindex)
	}
	return 0
}

// linkProgram opens the program a link runs; nil if it cannot be had.
func linkProgram(l link.Link) *ebpf.Program {
	info, err := l.Info()
	if err != nil {
		return nil
	}
	p, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return nil
	}
	return p
}

func closeProg(p *ebpf.Program) {
	if p != nil {
		p.Close()
	}
}

// anyPinned says whether one of spiwatch's maps is pinned in dir.
func anyPinned(dir string) bool {
	for _, name := range pinnedMaps {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return true
		}
	}
	return false
}

// ifaceName names an interface by index for messages.
func ifaceName(ifindex int) string {
	if l, err := netlink.LinkByIndex(ifindex); err == nil {
		return fmt.Sprintf("%s, ifindex %d", l.Attrs().Name, ifindex)
	}
	return fmt.Sprintf("ifindex %d", ifindex)
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
