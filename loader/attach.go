// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
)

// Mode is how XDP is attached.
type Mode int

// XDP attach modes.
const (
	ModeAuto    Mode = iota // native, falling back to generic
	ModeNative              // in the driver
	ModeGeneric             // in the kernel's generic (skb) path
)

// ParseMode reads auto, native or generic.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "auto":
		return ModeAuto, nil
	case "native", "driver", "drv":
		return ModeNative, nil
	case "generic", "skb":
		return ModeGeneric, nil
	}
	return 0, fmt.Errorf("unknown XDP mode %q: want auto, native or generic", s)
}

func (m Mode) String() string {
	switch m {
	case ModeNative:
		return "native"
	case ModeGeneric:
		return "generic"
	}
	return "auto"
}

// Attachment is the program attached to one interface, through a bpf_link owned by
// this process: if the process dies, the kernel detaches it.
type Attachment struct {
	Iface   string
	Ifindex int
	Mode    Mode // the mode actually in use: native or generic
	Slot    int  // row of this interface in the counters
	ProgID  ebpf.ProgramID
	// Fallback is why auto mode did not get native XDP (the kernel's error); nil
	// otherwise.
	Fallback error
	link     link.Link
	pinned   string // path of the pinned link, if pinned
	// prev is the program a pinned link ran before this run took it over, put
	// back by Abort.
	prev *ebpf.Program
}

// Attach attaches a program instance to iface. With force, an XDP program already
// on the interface is removed first; without it, Attach refuses and names it.
func (o *Objects) Attach(iface string, mode Mode, force bool) (*Attachment, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, a := range o.attached {
		if a.Iface == iface {
			return nil, fmt.Errorf("interface %s is given twice", iface)
		}
	}
	nl, err := netlink.LinkByName(iface)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("interface %s not found (see ip link)", iface)
		}
		return nil, fmt.Errorf("looking up interface %s: %w", iface, err)
	}
	ifindex := nl.Attrs().Index
	reuse := -1
	if o.Settings.PinPath != "" {
		// Our own link from an earlier run: take it over, counting without a gap.
		var a *Attachment
		if a, reuse, err = o.attachPinned(iface, ifindex, mode); a != nil || err != nil {
			return a, err
		}
	}
	if cur := nl.Attrs().Xdp; cur != nil && cur.Attached {
		if !force {
			return nil, fmt.Errorf("interface %s already has XDP program %s attached (%s mode); spiwatch does not replace it unless given --force",
				iface, describeProg(ebpf.ProgramID(cur.ProgId)), attachModeName(cur.AttachMode))
		}
		if err := removeXDP(nl, ifindex, ebpf.ProgramID(cur.ProgId)); err != nil {
			return nil, fmt.Errorf("removing XDP program %s from %s: %w", describeProg(ebpf.ProgramID(cur.ProgId)), iface, err)
		}
	}

	slot := reuse // the slot of a pinned link whose interface came back: counts go on
	if slot < 0 {
		slot = o.freeSlot()
		// The slot may have counted for an interface detached earlier.
		if err := o.Maps.ResetCounters(slot); err != nil {
			return nil, err
		}
	}
	prog, err := o.programLocked(slot)
	if err != nil {
		return nil, err
	}
	a := &Attachment{Iface: iface, Ifindex: ifindex, Slot: slot}
	if err := o.link(a, prog, mode); err != nil {
		return nil, err
	}
	o.attached = append(o.attached, a)
	return a, nil
}

// link attaches prog to a's interface in mode (auto: native, else generic), pins
// the link when pinning, and fills a's link, mode, fallback reason and program id.
func (o *Objects) link(a *Attachment, prog *ebpf.Program, mode Mode) error {
	tries := []Mode{mode}
	if mode == ModeAuto {
		tries = []Mode{ModeNative, ModeGeneric}
	}
	var errs, raw []error
	for _, m := range tries {
		flags := link.XDPDriverMode
		if m == ModeGeneric {
			flags = link.XDPGenericMode
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: a.Ifindex, Flags: flags})
		if err == nil {
			a.link, a.Mode = l, m
			break
		}
		errs = append(errs, attachError(a.Iface, m, err))
		raw = append(raw, err)
	}
	if a.link == nil {
		return errors.Join(errs...)
	}
	a.Fallback = nil
	if len(raw) > 0 {
		a.Fallback = raw[0]
	}
	if o.Settings.PinPath != "" {
		path := linkPin(o.Settings.PinPath, a.Slot, a.Iface)
		if err := a.link.Pin(path); err != nil {
			a.detach()
			return fmt.Errorf("pinning the link of %s at %s: %w", a.Iface, path, err)
		}
		a.pinned = path
	}
	if info, err := prog.Info(); err == nil {
		a.ProgID, _ = info.ID()
	}
	return nil
}

// Reattach attaches again to an interface of a's name that came back after being
// deleted (--wait-iface): same counter slot, so its counts go on. It refuses an
// interface that has another XDP program.
func (o *Objects) Reattach(a *Attachment, mode Mode) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	l, err := netlink.LinkByName(a.Iface)
	if err != nil {
		return fmt.Errorf("interface %s not found", a.Iface)
	}
	if cur := l.Attrs().Xdp; cur != nil && cur.Attached {
		return fmt.Errorf("interface %s came back with XDP program %s attached; not replacing it", a.Iface, describeProg(ebpf.ProgramID(cur.ProgId)))
	}
	prog, err := o.programLocked(a.Slot)
	if err != nil {
		return err
	}
	if a.link != nil {
		a.detach() // the old link died with the old interface
	}
	a.Ifindex = l.Attrs().Index
	return o.link(a, prog, mode)
}

// Rename records that a's interface now has another name (its ifindex, program
// and counts are unchanged); a pinned link's pin follows the name.
func (o *Objects) Rename(a *Attachment, name string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.repin(a, name)
}

func (o *Objects) freeSlot() int {
	used := map[int]bool{}
	for _, a := range o.attached {
		used[a.Slot] = true
	}
	if o.Settings.PinPath != "" {
		pins, _ := PinnedLinks(o.Settings.PinPath) // other interfaces' counts live there
		for _, p := range pins {
			used[p.Slot] = true
		}
	}
	for s := 0; ; s++ {
		if !used[s] {
			return s
		}
	}
}

// Detach removes the program from one interface.
func (o *Objects) Detach(a *Attachment) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, x := range o.attached {
		if x == a {
			o.attached = append(o.attached[:i], o.attached[i+1:]...)
			return a.detach()
		}
	}
	return nil
}

func (a *Attachment) detach() error {
	if a.link == nil {
		return nil
	}
	if a.pinned != "" {
		if err := a.link.Unpin(); err != nil {
			return fmt.Errorf("unpinning the link of %s: %w", a.Iface, err)
		}
		a.pinned = "" // a link made again (Reattach) is pinned anew
	}
	err := a.link.Close()
	a.link = nil
	if err != nil {
		return fmt.Errorf("detaching from %s: %w", a.Iface, err)
	}
	return nil
}

func attachError(iface string, m Mode, err error) error {
	switch {
	case errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, ebpf.ErrNotSupported):
		if m == ModeNative {
			return fmt.Errorf("attaching XDP to %s in native mode: the driver does not support native XDP (%v); use --xdp-mode generic or auto", iface, err)
		}
		return fmt.Errorf("attaching XDP to %s in %s mode: not supported by this kernel (%v)", iface, m, err)
	case errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.EEXIST):
		return fmt.Errorf("attaching XDP to %s in %s mode: another XDP program is attached (%v); see ip link show %s, or use --force", iface, m, err, iface)
	case errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ERANGE):
		return fmt.Errorf("attaching XDP to %s in %s mode: the interface refused it (%v); its MTU may be too large for XDP, or IPsec/other hardware offload may be on (check ethtool -k %s)", iface, m, err, iface)
	case errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES):
		return fmt.Errorf("attaching XDP to %s: %v: run as root or grant CAP_NET_ADMIN", iface, err)
	}
	return fmt.Errorf("attaching XDP to %s in %s mode: %w", iface, m, err)
}

// describeProg names a program for messages: "xdp_filter" (id 42). One that
// cannot be opened (gone, or spiwatch has dropped CAP_SYS_ADMIN, which opening a
// program by id needs) is given by its id, with why and where to look.
func describeProg(id ebpf.ProgramID) string {
	p, err := ebpf.NewProgramFromID(id)
	var info *ebpf.ProgramInfo
	if err == nil {
		info, err = p.Info()
		p.Close()
	}
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			err = errno // "operation not permitted", without the library's prefix
		}
		return fmt.Sprintf("id %d (not readable: %v; see bpftool prog show id %d)", id, err, id)
	}
	if info.Name == "" {
		return fmt.Sprintf("id %d (no name)", id)
	}
	return fmt.Sprintf("%q (id %d)", info.Name, id)
}

func attachModeName(m uint32) string {
	switch m {
	case nl.XDP_ATTACHED_DRV:
		return "native"
	case nl.XDP_ATTACHED_SKB:
		return "generic"
	case nl.XDP_ATTACHED_HW:
		return "offload"
	case 4: // XDP_ATTACHED_MULTI, not named by the netlink package
		return "several"
	}
	return "unknown"
}

// removeXDP detaches program prog from the interface: a bpf_link is detached
// through the link, a netlink attachment through netlink in both modes. A link's
// info gives an ifindex but no namespace, and ifindexes repeat across namespaces:
// the program must match too, or a link in another namespace would be detached.
func removeXDP(l netlink.Link, ifindex int, prog ebpf.ProgramID) error {
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil || info.Type != link.XDPType || info.Program != prog {
			continue
		}
		if x := info.XDP(); x != nil && int(x.Ifindex) == ifindex {
			if err := it.Link.Detach(); err != nil {
				return fmt.Errorf("detaching bpf_link %d: %w", it.ID, err)
			}
			return nil
		}
	}
	var errs []error
	for _, f := range []int{nl.XDP_FLAGS_DRV_MODE, nl.XDP_FLAGS_SKB_MODE} {
		if err := netlink.LinkSetXdpFdWithFlags(l, -1, f); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 2 {
		return errors.Join(errs...)
	}
	return nil
}

// Problem says why the program no longer sees the interface's traffic: the
// interface was deleted (the kernel then drops the attachment), or another tool
// removed or replaced our program. Empty while all is well.
func (a *Attachment) Problem() string { return a.Status().Problem }

// Status is what netlink says of an attached interface now.
type Status struct {
	Problem  string // why it is not watched (see Problem); empty while it is
	Name     string // its name now: it may have been renamed (empty if deleted)
	LinkDown bool   // still attached, but down or without carrier: nothing arrives
	MTU      int
	// Unchecked is why netlink could not be asked (ENOBUFS, EINTR, ...): it says
	// nothing about the interface, which is still watched as far as anyone knows;
	// the other fields are then empty. Ask again later.
	Unchecked error
}

// Status reads the interface's state.
func (a *Attachment) Status() Status {
	l, err := netlink.LinkByIndex(a.Ifindex)
	if err != nil {
		return lookupFailed(err)
	}
	at := l.Attrs()
	st := Status{Name: at.Name, MTU: at.MTU, LinkDown: at.Flags&net.FlagUp == 0 || at.OperState == netlink.OperDown || at.OperState == netlink.OperLowerLayerDown}
	x := at.Xdp
	if x == nil || !x.Attached {
		st.Problem = "program detached by someone else"
	} else if a.ProgID != 0 && ebpf.ProgramID(x.ProgId) != a.ProgID {
		st.Problem = fmt.Sprintf("program replaced by XDP program %s", describeProg(ebpf.ProgramID(x.ProgId)))
	}
	return st
}

// lookupFailed is the status when netlink's answer about the interface is an
// error: only "no such device" means it is gone.
func lookupFailed(err error) Status {
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) || errors.Is(err, syscall.ENODEV) {
		return Status{Problem: "interface deleted"}
	}
	return Status{Unchecked: fmt.Errorf("cannot check the interface: %w", err)}
}

// xdpState is what netlink says is attached to the interface; nil if nothing.
func xdpState(ifindex int) *netlink.LinkXdp {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		return x
	}
	return nil
}
