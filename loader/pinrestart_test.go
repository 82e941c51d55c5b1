// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/spiwatch/spiwatch/internal/netlab"
)

// ipIn runs ip with args in namespace ns.
func ipIn(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s %v: %v: %s", ns, args, err, out)
	}
}

// pinnedRun loads with s pinned in a new pin directory (unpinned at cleanup) and
// attaches natively to a new lab's receiver: an earlier run --pin, or this one.
func pinnedRun(t *testing.T, s Settings) (dir string, lab *netlab.Lab, objs *Objects, a *Attachment) {
	t.Helper()
	dir = testPinDir(t)
	lab = newLab(t)
	t.Cleanup(func() { Unpin(dir) })
	s.PinPath = dir
	objs, err := Load(s)
	if err != nil {
		t.Fatal(err)
	}
	if a, err = attach(t, objs, lab, ModeNative, false); err != nil {
		objs.Close()
		t.Fatalf("attach: %v", err)
	}
	return dir, lab, objs, a
}

// TestPinnedIfaceRecreated: run --pin, the interface is deleted and made again
// with the same name while no spiwatch runs (a VLAN or veth re-created), then a
// new run --pin is asked to watch it. The pinned link is dead (its device went):
// the new run must attach afresh in the same slot, not fail updating it.
func TestPinnedIfaceRecreated(t *testing.T) {
	dir, lab, first, a := pinnedRun(t, Settings{})
	slot := a.Slot
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	ipIn(t, lab.NSB, "link", "del", lab.Receiver)
	ipIn(t, lab.NSB, "link", "add", lab.Receiver, "type", "veth", "peer", "name", "swpeer0")
	ipIn(t, lab.NSB, "link", "set", lab.Receiver, "up")

	second, err := Load(Settings{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	b, err := attach(t, second, lab, ModeNative, false)
	if err != nil {
		t.Fatalf("attaching to the re-created %s: %v", lab.Receiver, err)
	}
	if b.Slot != slot || b.ProgID == 0 {
		t.Errorf("attachment %+v, want slot %d and a program id", b, slot)
	}
	if x := xdpOn(t, lab.NSB, lab.Receiver); x == nil || x.ProgId != uint32(b.ProgID) {
		t.Errorf("netlink shows %+v on the re-created %s, want spiwatch's program %d", x, lab.Receiver, b.ProgID)
	}
	pins, _ := PinnedLinks(dir)
	if len(pins) != 1 || pins[0].Iface != lab.Receiver {
		t.Errorf("pinned links %+v, want one for %s", pins, lab.Receiver)
	}
}

// TestPinnedLinkOtherIface: the link pinned under a name is on another interface
// now (renamed away, and a new one took the name): taking it over would watch the
// wrong interface. Attach must refuse and name both.
func TestPinnedLinkOtherIface(t *testing.T) {
	dir, lab, first, _ := pinnedRun(t, Settings{})
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	ipIn(t, lab.NSB, "link", "set", lab.Receiver, "name", "swold0")
	ipIn(t, lab.NSB, "link", "add", lab.Receiver, "type", "veth", "peer", "name", "swpeer0")

	second, err := Load(Settings{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	var b *Attachment
	err = netlab.In(lab.NSB, func() error {
		var err error
		b, err = second.Attach(lab.Receiver, ModeNative, false)
		return err
	})
	if err == nil {
		t.Fatalf("took over a link on another interface: %+v", b)
	}
	if !strings.Contains(err.Error(), lab.Receiver) || !strings.Contains(err.Error(), "swold0") {
		t.Errorf("error %q, want it to name %s and swold0", err, lab.Receiver)
	}
	if x := xdpOn(t, lab.NSB, lab.Receiver); x != nil {
		t.Errorf("netlink shows %+v on the new %s, want nothing", x, lab.Receiver)
	}
}

// TestPinnedReattachFails: with pins, an interface is deleted and comes back as
// one that refuses the mode asked for (a bridge has no native XDP). Reattach
// fails; Close afterwards must still release everything, not crash on the link
// that is gone, and leave no pin for the old link.
func TestPinnedReattachFails(t *testing.T) {
	dir, lab, objs, a := pinnedRun(t, Settings{})
	ipIn(t, lab.NSB, "link", "del", lab.Receiver)
	ipIn(t, lab.NSB, "link", "add", lab.Receiver, "type", "bridge")
	err := netlab.In(lab.NSB, func() error { return objs.Reattach(a, ModeNative) })
	if err == nil || !strings.Contains(err.Error(), lab.Receiver) {
		t.Errorf("Reattach to a bridge in native mode: %v, want an error naming %s", err, lab.Receiver)
	}
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("Close after a failed Reattach panicked: %v", r)
			}
		}()
		if err := objs.Close(); err != nil {
			t.Errorf("Close after a failed Reattach: %v", err)
		}
	}()
	if pins, _ := PinnedLinks(dir); len(pins) != 0 {
		t.Errorf("pinned links left: %+v", pins)
	}
}

// TestAbortTakenOver: a run --pin takes over the link an earlier run pinned, then
// fails on its next interface. Abort gives the link back its earlier program
// (with the earlier run's settings, --action included) and keeps it pinned.
func TestAbortTakenOver(t *testing.T) {
	dir, lab, first, a := pinnedRun(t, Settings{})
	firstID := a.ProgID
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	second, err := Load(Settings{PinPath: dir, DropUnknown: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := attach(t, second, lab, ModeNative, false)
	if err != nil || b.ProgID == firstID {
		t.Fatalf("taking over: %+v, %v", b, err)
	}
	in(t, lab.NSB, func() error {
		if _, err := second.Attach("lo", ModeNative, false); err == nil {
			t.Error("native XDP on lo: no error")
		}
		return nil
	})
	if err := second.Abort(); err != nil {
		t.Errorf("Abort: %v", err)
	}
	if x := xdpOn(t, lab.NSB, lab.Receiver); x == nil || x.ProgId != uint32(firstID) {
		t.Errorf("after Abort netlink shows %+v, want the first run's program %d back", x, firstID)
	}
	if pins, _ := PinnedLinks(dir); len(pins) != 1 {
		t.Errorf("pinned links %+v, want the first run's one", pins)
	}
	if !anyPinned(dir) {
		t.Error("the first run's maps were removed")
	}
}

// TestAbortFresh: a failed first run --pin leaves neither links nor maps.
func TestAbortFresh(t *testing.T) {
	dir, lab, objs, _ := pinnedRun(t, Settings{})
	if err := objs.Abort(); err != nil {
		t.Errorf("Abort: %v", err)
	}
	if x := xdpOn(t, lab.NSB, lab.Receiver); x != nil {
		t.Errorf("after Abort netlink shows %+v", x)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("pin directory still there after Abort: %v", err)
	}
}

// TestPinDottedName: VLAN interfaces are named eth0.100, and the BPF filesystem
// refuses names with a dot. run --pin must still pin such an interface's link,
// and find it again under that name.
func TestPinDottedName(t *testing.T) {
	dir := testPinDir(t)
	lab := newLab(t)
	t.Cleanup(func() { Unpin(dir) })
	const name = "swmon0.100"
	ipIn(t, lab.NSB, "link", "add", name, "type", "veth", "peer", "name", "swpeer0")
	ipIn(t, lab.NSB, "link", "set", name, "up")
	objs, err := Load(Settings{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	err = netlab.In(lab.NSB, func() error { _, err := objs.Attach(name, ModeNative, false); return err })
	if err != nil {
		t.Fatalf("attaching to %s with pins: %v", name, err)
	}
	objs.Close()
	if pins, _ := PinnedLinks(dir); len(pins) != 1 || pins[0].Iface != name {
		t.Errorf("pinned links %+v, want one for %s", pins, name)
	}
}

// TestPinnedRenamed: the interface was renamed after a run --pin; a new run
// asked for it by its new name takes the pinned link over (same slot, counts go
// on) instead of refusing it as another program, and the pin follows the name.
func TestPinnedRenamed(t *testing.T) {
	dir, lab, first, a := pinnedRun(t, Settings{})
	slot := a.Slot
	first.Close()
	const renamed = "swwan0"
	ipIn(t, lab.NSB, "link", "set", lab.Receiver, "down")
	ipIn(t, lab.NSB, "link", "set", lab.Receiver, "name", renamed)
	ipIn(t, lab.NSB, "link", "set", renamed, "up")

	second, err := Load(Settings{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	var b *Attachment
	err = netlab.In(lab.NSB, func() error { var err error; b, err = second.Attach(renamed, ModeNative, false); return err })
	if err != nil {
		t.Fatalf("attaching to the renamed %s: %v", renamed, err)
	}
	if b.Slot != slot || b.Iface != renamed {
		t.Errorf("attachment %+v, want %s in slot %d", b, renamed, slot)
	}
	if pins, _ := PinnedLinks(dir); len(pins) != 1 || pins[0].Iface != renamed {
		t.Errorf("pinned links %+v, want one for %s", pins, renamed)
	}
}
