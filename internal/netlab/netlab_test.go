// SPDX-License-Identifier: Apache-2.0

package netlab

import (
	"errors"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/spiwatch/spiwatch/internal/testenv"
)

func newLab(t *testing.T) *Lab {
	t.Helper()
	testenv.RequireNetns(t)
	l, err := New("swnl")
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func exists(ns string) bool {
	_, err := os.Stat("/run/netns/" + ns)
	return err == nil
}

// sysctl reads a sysctl inside namespace ns.
func sysctl(t *testing.T, ns, name string) string {
	t.Helper()
	out, err := Command(ns, "sysctl", "-n", name).CombinedOutput()
	if err != nil {
		t.Fatalf("sysctl %s in %s: %v: %s", name, ns, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestNew(t *testing.T) {
	l := newLab(t)
	if l.NSA == l.NSB || !strings.HasPrefix(l.NSA, "swnl") || !strings.HasPrefix(l.NSB, "swnl") {
		t.Errorf("namespaces %q and %q: want two names starting with the prefix", l.NSA, l.NSB)
	}
	if !exists(l.NSA) || !exists(l.NSB) {
		t.Fatalf("namespaces %s, %s not both in /run/netns", l.NSA, l.NSB)
	}
	var idxA, idxB, peerA, peerB int
	for _, end := range []struct {
		ns, dev, other string
		idx, peer      *int
	}{{l.NSA, l.Sender, l.Receiver, &idxA, &peerA}, {l.NSB, l.Receiver, l.Sender, &idxB, &peerB}} {
		err := In(end.ns, func() error {
			link, err := netlink.LinkByName(end.dev)
			if err != nil {
				return err
			}
			if link.Type() != "veth" {
				t.Errorf("%s in %s is a %s, want veth", end.dev, end.ns, link.Type())
			}
			a := link.Attrs()
			if a.Flags&net.FlagUp == 0 || a.OperState != netlink.OperUp {
				t.Errorf("%s in %s: flags %v, state %v; want up", end.dev, end.ns, a.Flags, a.OperState)
			}
			*end.idx = a.Index
			if *end.peer, err = netlink.VethPeerIndex(link.(*netlink.Veth)); err != nil {
				return err
			}
			// Only the two ends: the other end is not in this namespace.
			if _, err := netlink.LinkByName(end.other); err == nil {
				t.Errorf("%s is in %s too", end.other, end.ns)
			}
			// No IPv6 address, not even link-local: IPv6 is off, so it sends nothing.
			addrs, err := netlink.AddrList(link, netlink.FAMILY_V6)
			if err != nil {
				return err
			}
			if len(addrs) != 0 {
				t.Errorf("%s in %s has IPv6 addresses %v", end.dev, end.ns, addrs)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("looking at %s in %s: %v", end.dev, end.ns, err)
		}
		for _, k := range []string{"all", "default", end.dev} {
			if v := sysctl(t, end.ns, "net.ipv6.conf."+k+".disable_ipv6"); v != "1" {
				t.Errorf("%s: net.ipv6.conf.%s.disable_ipv6 is %s, want 1", end.ns, k, v)
			}
		}
	}
	if peerA != idxB || peerB != idxA {
		t.Errorf("%s (index %d, peer %d) and %s (index %d, peer %d) are not one veth pair",
			l.Sender, idxA, peerA, l.Receiver, idxB, peerB)
	}

	// GRO on the receiver: without it (or an XDP program) veth drops XDP_TX frames.
	out, err := Command(l.NSB, "ethtool", "-k", l.Receiver).CombinedOutput()
	if err != nil {
		t.Fatalf("ethtool -k: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "generic-receive-offload: on") {
		t.Errorf("GRO is not on for %s:\n%s", l.Receiver, out)
	}

	// Another lab with the same prefix gets other namespaces.
	l2 := newLab(t)
	if l2.NSA == l.NSA || l2.NSB == l.NSB || !exists(l2.NSA) {
		t.Errorf("second lab %+v clashes with the first %+v", l2, l)
	}
}

func TestClose(t *testing.T) {
	l := newLab(t)
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, ns := range []string{l.NSA, l.NSB} {
		if exists(ns) {
			t.Errorf("namespace %s still in /run/netns", ns)
		}
		if _, err := netns.GetFromName(ns); err == nil {
			t.Errorf("namespace %s can still be opened", ns)
		}
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}
	// A lab whose creation stopped half way closes too.
	if err := (&Lab{NSA: "swnl-never-made-a", NSB: "swnl-never-made-b"}).Close(); err != nil {
		t.Errorf("closing a lab that was never made: %v", err)
	}
}

func TestIn(t *testing.T) {
	l := newLab(t)
	runtime.LockOSThread() // so that the namespace checked after In is the thread In used
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(l.NSB)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()

	ran := false
	err = In(l.NSB, func() error {
		ran = true
		cur, err := netns.Get()
		if err != nil {
			return err
		}
		defer cur.Close()
		if !cur.Equal(target) {
			t.Errorf("inside In: namespace %v, want %s's %v", cur, l.NSB, target)
		}
		if _, err := net.InterfaceByName(l.Receiver); err != nil {
			t.Errorf("inside In(%s): %v", l.NSB, err)
		}
		return nil
	})
	if err != nil || !ran {
		t.Fatalf("In: %v (fn ran: %v)", err, ran)
	}
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if !cur.Equal(orig) {
		t.Errorf("after In: thread in %v, want back in %v", cur, orig)
	}
	if _, err := net.InterfaceByName(l.Receiver); err == nil {
		t.Errorf("after In: %s is visible outside its namespace", l.Receiver)
	}

	// fn's error comes back, and the thread comes back all the same.
	boom := errors.New("boom")
	if err := In(l.NSA, func() error { return boom }); !errors.Is(err, boom) {
		t.Errorf("In returned %v, want fn's error", err)
	}
	cur2, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur2.Close()
	if !cur2.Equal(orig) {
		t.Errorf("after a failing fn: thread in %v, want %v", cur2, orig)
	}

	// A namespace that does not exist: an error, and fn does not run.
	ran = false
	err = In("swnl-no-such-ns", func() error { ran = true; return nil })
	if err == nil || ran || !strings.Contains(err.Error(), "opening network namespace swnl-no-such-ns") {
		t.Errorf("In a missing namespace: %v (fn ran: %v)", err, ran)
	}
}
