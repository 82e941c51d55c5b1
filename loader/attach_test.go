// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

func newLab(t *testing.T) *netlab.Lab {
	t.Helper()
	testenv.RequireNetns(t)
	lab, err := netlab.New("swt")
	if err != nil {
		t.Fatalf("creating lab: %v", err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("removing lab: %v", err)
		}
	})
	return lab
}

// in runs fn inside namespace ns and fails the test on its error.
func in(t *testing.T, ns string, fn func() error) {
	t.Helper()
	if err := netlab.In(ns, fn); err != nil {
		t.Fatal(err)
	}
}

// xdpOn reads what netlink says is attached to iface in namespace ns; nil when
// nothing is.
func xdpOn(t *testing.T, ns, iface string) *netlink.LinkXdp {
	t.Helper()
	var x *netlink.LinkXdp
	in(t, ns, func() error {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			return fmt.Errorf("looking up %s in %s: %w", iface, ns, err)
		}
		if cur := l.Attrs().Xdp; cur != nil && cur.Attached {
			x = cur
		}
		return nil
	})
	return x
}

// attach attaches objs to the lab's receiver.
func attach(t *testing.T, objs *Objects, lab *netlab.Lab, mode Mode, force bool) (*Attachment, error) {
	t.Helper()
	var a *Attachment
	err := netlab.In(lab.NSB, func() error {
		var err error
		a, err = objs.Attach(lab.Receiver, mode, force)
		return err
	})
	return a, err
}

// send sends frame count times from the lab's sender with a packet socket.
func send(t *testing.T, lab *netlab.Lab, frame []byte, count int) {
	t.Helper()
	in(t, lab.NSA, func() error {
		ifc, err := net.InterfaceByName(lab.Sender)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return fmt.Errorf("opening packet socket: %w", err)
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6}
		copy(to.Addr[:], frame[:6])
		for range count {
			if err := unix.Sendto(fd, frame, 0, to); err != nil {
				return fmt.Errorf("sending: %w", err)
			}
		}
		return nil
	})
}

// TestAttachModes attaches to a veth in each mode, checks with netlink what is
// attached, sees traffic counted, and checks that Close leaves nothing behind.
func TestAttachModes(t *testing.T) {
	for _, tc := range []struct {
		mode     Mode
		want     Mode
		attached uint8
	}{
		{ModeNative, ModeNative, nl.XDP_ATTACHED_DRV},
		{ModeGeneric, ModeGeneric, nl.XDP_ATTACHED_SKB},
		{ModeAuto, ModeNative, nl.XDP_ATTACHED_DRV}, // veth has native XDP
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			lab := newLab(t)
			objs := load(t, Settings{})
			a, err := attach(t, objs, lab, tc.mode, false)
			if err != nil {
				t.Fatalf("attaching: %v", err)
			}
			if a.Mode != tc.want || a.Iface != lab.Receiver || a.Slot != 0 || a.ProgID == 0 {
				t.Errorf("attachment %+v, want mode %v on %s, slot 0, a program id", a, tc.want, lab.Receiver)
			}
			x := xdpOn(t, lab.NSB, lab.Receiver)
			if x == nil {
				t.Fatal("netlink shows no XDP program on the receiver")
			}
			if x.AttachMode != uint32(tc.attached) || x.ProgId != uint32(a.ProgID) {
				t.Errorf("netlink: mode %d, program %d; want mode %d, program %d", x.AttachMode, x.ProgId, tc.attached, a.ProgID)
			}
			if got := objs.Attached(); len(got) != 1 || got[0] != a {
				t.Errorf("Attached() = %v, want [%p]", got, a)
			}

			const n = 25
			send(t, lab, v4.ESP(0x9001, 1, 100), n)
			deadline := time.Now().Add(5 * time.Second)
			for {
				c := counters(t, objs, a.Slot)[classify.ClassESP][classify.OutcomeUnknown]
				if c.Packets == n {
					break
				}
				if c.Packets > n || time.Now().After(deadline) {
					t.Fatalf("receiver counted %d unknown ESP packets, want %d", c.Packets, n)
				}
				time.Sleep(10 * time.Millisecond)
			}
			snap, err := objs.Maps.UnknownSnapshot()
			if err != nil {
				t.Fatalf("snapshot: %v", err)
			}
			if len(snap) != 1 || snap[0].Ifindex != uint32(a.Ifindex) || snap[0].Packets != n {
				t.Errorf("unknown table %+v, want one entry of %d packets on ifindex %d", snap, n, a.Ifindex)
			}

			if err := objs.Close(); err != nil {
				t.Fatalf("closing: %v", err)
			}
			if x := xdpOn(t, lab.NSB, lab.Receiver); x != nil {
				t.Errorf("after Close, program %d still attached (mode %d)", x.ProgId, x.AttachMode)
			}
			if got := objs.Attached(); len(got) != 0 {
				t.Errorf("after Close, Attached() = %v", got)
			}
		})
	}
}

func TestDetach(t *testing.T) {
	lab := newLab(t)
	objs := load(t, Settings{})
	a, err := attach(t, objs, lab, ModeGeneric, false)
	if err != nil {
		t.Fatalf("attaching: %v", err)
	}
	send(t, lab, frames.Frame{}.ESP(0xdead, 1, 40), 5)
	waitCount := func(want uint64) uint64 {
		var got uint64
		for i := 0; i < 100; i++ {
			c, err := objs.Maps.Counters(a.Slot)
			if err != nil {
				t.Fatal(err)
			}
			if got = c.Total().Packets; got == want {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		return got
	}
	if got := waitCount(5); got != 5 {
		t.Fatalf("counted %d packets before detaching, want 5", got)
	}
	if err := objs.Detach(a); err != nil {
		t.Fatalf("detaching: %v", err)
	}
	if x := xdpOn(t, lab.NSB, lab.Receiver); x != nil {
		t.Errorf("after Detach, program %d still attached", x.ProgId)
	}
	if len(objs.Attached()) != 0 {
		t.Errorf("after Detach, Attached() = %v", objs.Attached())
	}
	// The interface is free again, and its new slot starts from zero.
	b, err := attach(t, objs, lab, ModeNative, false)
	if err != nil {
		t.Fatalf("attaching again: %v", err)
	}
	if b.Slot != a.Slot {
		t.Fatalf("slot %d not reused (got %d): the test no longer checks the reset", a.Slot, b.Slot)
	}
	if got := waitCount(0); got != 0 {
		t.Errorf("reused slot starts at %d packets, want 0", got)
	}
}

func TestAttachNotFound(t *testing.T) {
	lab := newLab(t)
	objs := load(t, Settings{})
	const name = "swnothere0"
	err := netlab.In(lab.NSB, func() error {
		_, err := objs.Attach(name, ModeAuto, false)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "not found") {
		t.Errorf("attaching to a missing interface: %v, want an error naming %s and saying not found", err, name)
	}
	if len(objs.Attached()) != 0 {
		t.Errorf("Attached() = %v", objs.Attached())
	}
}

func TestAttachTwice(t *testing.T) {
	lab := newLab(t)
	objs := load(t, Settings{})
	a, err := attach(t, objs, lab, ModeNative, false)
	if err != nil {
		t.Fatalf("attaching: %v", err)
	}
	for _, force := range []bool{false, true} {
		_, err := attach(t, objs, lab, ModeGeneric, force)
		if err == nil || !strings.Contains(err.Error(), lab.Receiver) {
			t.Errorf("attaching again (force %v): %v, want an error naming %s", force, err, lab.Receiver)
		}
	}
	if got := objs.Attached(); len(got) != 1 || got[0] != a {
		t.Errorf("Attached() = %v, want only the first attachment", got)
	}
	if x := xdpOn(t, lab.NSB, lab.Receiver); x == nil || x.ProgId != uint32(a.ProgID) || x.AttachMode != nl.XDP_ATTACHED_DRV {
		t.Errorf("netlink shows %+v, want program %d in native mode", x, a.ProgID)
	}
}

// otherProg loads a trivial XDP program named name, as another tool would.
func otherProg(t *testing.T, name string) (*ebpf.Program, ebpf.ProgramID) {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         name,
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()},
	})
	if err != nil {
		t.Fatalf("loading program %s: %v", name, err)
	}
	t.Cleanup(func() { p.Close() })
	info, err := p.Info()
	if err != nil {
		t.Fatalf("reading program info: %v", err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("program has no id")
	}
	return p, id
}

// attachOther attaches p to iface in namespace ns, through netlink or a bpf_link.
func attachOther(t *testing.T, ns, iface string, p *ebpf.Program, how string) {
	t.Helper()
	in(t, ns, func() error {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			return err
		}
		switch how {
		case "netlink":
			err = netlink.LinkSetXdpFdWithFlags(l, p.FD(), nl.XDP_FLAGS_DRV_MODE)
			t.Cleanup(func() {
				// Only if the test failed to remove it; the lab's deletion would too.
				_ = netlab.In(ns, func() error { return netlink.LinkSetXdpFdWithFlags(l, -1, nl.XDP_FLAGS_DRV_MODE) })
			})
		case "bpf_link":
			var xl link.Link
			xl, err = link.AttachXDP(link.XDPOptions{Program: p, Interface: l.Attrs().Index, Flags: link.XDPGenericMode})
			if err == nil {
				t.Cleanup(func() { xl.Close() })
			}
		}
		if err != nil {
			return fmt.Errorf("attaching the other program via %s: %w", how, err)
		}
		return nil
	})
}

// TestAttachOverOther: another XDP program is on the interface. Without force,
// Attach refuses and names it; with force, it replaces it.
func TestAttachOverOther(t *testing.T) {
	for _, how := range []string{"netlink", "bpf_link"} {
		t.Run(how, func(t *testing.T) {
			lab := newLab(t)
			objs := load(t, Settings{})
			other, otherID := otherProg(t, "sw_other")
			attachOther(t, lab.NSB, lab.Receiver, other, how)
			if x := xdpOn(t, lab.NSB, lab.Receiver); x == nil || x.ProgId != uint32(otherID) {
				t.Fatalf("netlink shows %+v, want the other program %d", x, otherID)
			}

			_, err := attach(t, objs, lab, ModeAuto, false)
			if err == nil {
				t.Fatal("attaching over another program without force: no error")
			}
			for _, want := range []string{`"sw_other"`, fmt.Sprintf("id %d", otherID), "--force", lab.Receiver} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %s", err, want)
				}
			}
			if x := xdpOn(t, lab.NSB, lab.Receiver); x == nil || x.ProgId != uint32(otherID) {
				t.Errorf("after refusing, netlink shows %+v, want the other program %d", x, otherID)
			}
			if len(objs.Attached()) != 0 {
				t.Errorf("Attached() = %v after refusing", objs.Attached())
			}

			a, err := attach(t, objs, lab, ModeAuto, true)
			if err != nil {
				t.Fatalf("attaching with force: %v", err)
			}
			x := xdpOn(t, lab.NSB, lab.Receiver)
			if x == nil || x.ProgId != uint32(a.ProgID) || x.ProgId == uint32(otherID) {
				t.Errorf("after force, netlink shows %+v, want spiwatch's program %d", x, a.ProgID)
			}
			if err := objs.Close(); err != nil {
				t.Fatalf("closing: %v", err)
			}
			if x := xdpOn(t, lab.NSB, lab.Receiver); x != nil {
				t.Errorf("after Close, netlink shows %+v: the other program came back or spiwatch stayed", x)
			}
		})
	}
}

// TestForceOnlyThisNamespace: --force must remove the program on this interface,
// not an XDP bpf_link on an interface of another namespace that has the same ifindex.
func TestForceOnlyThisNamespace(t *testing.T) {
	lab1, lab2 := newLab(t), newLab(t)
	// The clash this test is about: an interface with the same ifindex in each
	// namespace. Fresh namespaces often number their veths alike, but not always:
	// make one veth with a chosen index in each.
	const clashIndex = 4000
	clash1, clash2 := *lab1, *lab2
	for _, lab := range []*netlab.Lab{&clash1, &clash2} {
		lab.Receiver = "swclash0"
		for _, args := range [][]string{
			{"-n", lab.NSB, "link", "add", "name", lab.Receiver, "index", fmt.Sprint(clashIndex), "type", "veth", "peer", "name", "swclash1"},
			{"-n", lab.NSB, "link", "set", lab.Receiver, "up"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v: %s", args, err, out)
			}
		}
	}
	var idx1, idx2 int
	in(t, clash1.NSB, func() error { ifc, err := net.InterfaceByName(clash1.Receiver); idx1 = ifc.Index; return err })
	in(t, clash2.NSB, func() error { ifc, err := net.InterfaceByName(clash2.Receiver); idx2 = ifc.Index; return err })
	if idx1 != clashIndex || idx2 != clashIndex {
		t.Fatalf("interfaces have ifindex %d and %d, want both %d", idx1, idx2, clashIndex)
	}

	objs := load(t, Settings{})
	p1, id1 := otherProg(t, "sw_other1")
	p2, id2 := otherProg(t, "sw_other2")
	attachOther(t, clash1.NSB, clash1.Receiver, p1, "bpf_link")
	attachOther(t, clash2.NSB, clash2.Receiver, p2, "bpf_link")

	a, err := attach(t, objs, &clash2, ModeGeneric, true)
	if err != nil {
		t.Fatalf("attaching with force: %v", err)
	}
	if x := xdpOn(t, clash2.NSB, clash2.Receiver); x == nil || x.ProgId != uint32(a.ProgID) {
		t.Errorf("namespace 2 shows %+v, want spiwatch's program %d (replacing %d)", x, a.ProgID, id2)
	}
	if x := xdpOn(t, clash1.NSB, clash1.Receiver); x == nil || x.ProgId != uint32(id1) {
		t.Errorf("namespace 1 shows %+v, want its own program %d untouched", x, id1)
	}
}

// TestAttachNoNativeXDP: loopback has no native XDP. Native mode must fail saying
// so and pointing at generic mode; auto must fall back to generic and say which.
func TestAttachNoNativeXDP(t *testing.T) {
	lab := newLab(t)
	objs, err := Load(Settings{})
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	in(t, lab.NSB, func() error {
		_, err := objs.Attach("lo", ModeNative, false)
		if err == nil || !strings.Contains(err.Error(), "does not support native XDP") || !strings.Contains(err.Error(), "generic") {
			t.Errorf("native on lo: %v, want a message that the driver lacks native XDP and generic mode works", err)
		}
		a, err := objs.Attach("lo", ModeAuto, false)
		if err != nil {
			return fmt.Errorf("auto on lo: %w", err)
		}
		if a.Mode != ModeGeneric || !errors.Is(a.Fallback, unix.EOPNOTSUPP) {
			t.Errorf("auto on lo got %s mode (fallback reason %v), want generic with the reason", a.Mode, a.Fallback)
		}
		return nil
	})
	if x := xdpOn(t, lab.NSB, "lo"); x == nil || x.AttachMode != nl.XDP_ATTACHED_SKB {
		t.Errorf("lo: %+v, want generic attachment", x)
	}
}

// TestLookupFailed: only "no such device" makes an interface deleted; any other
// netlink error is a check that failed, to try again, not a loss.
func TestLookupFailed(t *testing.T) {
	for _, c := range []struct {
		err       error
		problem   string
		unchecked bool
	}{
		{netlink.LinkNotFoundError{}, "interface deleted", false},
		{unix.ENODEV, "interface deleted", false},
		{fmt.Errorf("dumping links: %w", unix.ENODEV), "interface deleted", false},
		{unix.ENOBUFS, "", true},
		{unix.EINTR, "", true},
		{netlink.ErrDumpInterrupted, "", true},
		{errors.New("netlink socket closed"), "", true},
	} {
		st := lookupFailed(c.err)
		if st.Problem != c.problem || (st.Unchecked != nil) != c.unchecked {
			t.Errorf("%v: %+v, want problem %q, unchecked %v", c.err, st, c.problem, c.unchecked)
		}
		if c.unchecked && !strings.Contains(st.Unchecked.Error(), "cannot check the interface: "+c.err.Error()) {
			t.Errorf("%v: %v does not say what failed", c.err, st.Unchecked)
		}
	}
}
