// SPDX-License-Identifier: Apache-2.0

//go:build linux

package xfrm

import (
	"context"
	"encoding/binary"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/testenv"
)

// emptyNS makes a fresh network namespace with lo up (127.0.0.1 local).
func emptyNS(t *testing.T) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	runtime.UnlockOSThread()
	orig.Close()
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE) // that family alone: a small kernel may lack others
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return ns
}

// startRecorded starts a source on ns that hands its sets to a Recorder, stopped
// when the test ends.
func startRecorded(t *testing.T, ns netns.NsHandle) (*Source, *Recorder) {
	t.Helper()
	src := New(Options{NetNS: ns})
	rec := &Recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := src.Start(ctx, rec.Sink, rec); err != nil {
		t.Fatal(err)
	}
	return src, rec
}

// xfrmSender opens a NETLINK_XFRM socket in ns to fake the kernel's events with.
func xfrmSender(t *testing.T, ns netns.NsHandle) *nl.NetlinkSocket {
	t.Helper()
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_XFRM)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sock.Close)
	return sock
}

// fakeSAEvent sends one xfrm message to XFRMNLGRP_SA of sock's namespace the way
// the kernel would (as root, a process may multicast on NETLINK_XFRM): events for
// states this kernel, without ESP, cannot hold. The destination port is one nobody
// has, so the kernel itself never treats it as a request.
func fakeSAEvent(t *testing.T, sock *nl.NetlinkSocket, typ uint16, payload []byte) {
	t.Helper()
	b := make([]byte, unix.SizeofNlMsghdr+len(payload))
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	copy(b[unix.SizeofNlMsghdr:], payload)
	err := unix.Sendto(sock.GetFd(), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: 0x7ffffff0, Groups: 1 << (nl.XFRMNLGRP_SA - 1)})
	if err != nil && err != unix.ECONNREFUSED { // the unicast part: nobody at that port
		t.Fatalf("sending: %v", err)
	}
}

// Events still queued when the kernel reports an overrun are older than the
// resync's dump, and the event the overrun dropped (here a flush) is newer than
// them: the resync discards them, so after it the source hands on exactly the
// kernel's states (none), not the flushed ones brought back by stale NEWSAs.
func TestResyncDiscardsEventsQueuedBeforeIt(t *testing.T) {
	testenv.RequireBPF(t) // root
	ns := emptyNS(t)
	release := make(chan struct{})
	src := New(Options{NetNS: ns, RcvBuf: 1}) // a few messages fit
	src.beforeReceive = func() { <-release }
	rec := &Recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := src.Start(ctx, rec.Sink, rec); err != nil {
		close(release)
		t.Fatal(err)
	}
	sender := xfrmSender(t, ns)
	local := netip.MustParseAddr("127.0.0.1")
	peer := netip.MustParseAddr("192.0.2.9")
	// The states are installed (the first ones' NEWSA fit in the buffer) ...
	for i := range 50 {
		fakeSAEvent(t, sender, msgNewSA, newSA(msgNewSA, peer, local, 0x1000+uint32(i), crypt))
	}
	// ... and flushed: this event is dropped, the buffer being full.
	fakeSAEvent(t, sender, msgFlushSA, []byte{0, 0, 0, 0})
	close(release)

	deadline := time.Now().Add(3 * time.Second)
	for src.Stats().Resyncs == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // let the loop apply what is still queued
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if src.Stats().Resyncs == 0 {
		t.Fatalf("no resync: notices %q", rec.Notices)
	}
	last := rec.Sets[len(rec.Sets)-1]
	if len(last) != 0 {
		t.Errorf("after the resync the kernel has no state, but the source hands on %d SAs (%v...): events queued before the overrun were applied on top of the newer dump; sets handed on: %d, notices %q",
			len(last), last[0], len(rec.Sets), rec.Notices)
	}
}

// Without an overrun the same events are applied in order: 50 SAs, then none after
// the flush, and no resync.
func TestEventsAppliedInOrder(t *testing.T) {
	testenv.RequireBPF(t)
	ns := emptyNS(t)
	src, rec := startRecorded(t, ns)
	sender := xfrmSender(t, ns)
	local := netip.MustParseAddr("127.0.0.1")
	peer := netip.MustParseAddr("192.0.2.9")
	for i := range 50 {
		fakeSAEvent(t, sender, msgNewSA, newSA(msgNewSA, peer, local, 0x1000+uint32(i), crypt))
	}
	time.Sleep(300 * time.Millisecond)
	rec.mu.Lock()
	n := len(rec.Sets[len(rec.Sets)-1])
	rec.mu.Unlock()
	if n != 50 {
		t.Fatalf("%d SAs after 50 NEWSA", n)
	}
	fakeSAEvent(t, sender, msgFlushSA, []byte{0, 0, 0, 0})
	time.Sleep(300 * time.Millisecond)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if last := rec.Sets[len(rec.Sets)-1]; len(last) != 0 || src.Stats().Resyncs != 0 {
		t.Errorf("control: %d SAs, %d resyncs", len(last), src.Stats().Resyncs)
	}
}

// After an overrun the kernel drops every event for the socket, without a second
// ENOBUFS, until its queue has been read empty (NETLINK_S_CONGESTED). A resync
// empties the queue before it dumps, so an event sent after the dump, while the
// loop is not reading yet, waits in the socket and is applied: here an SA
// installed just after the dump becomes known.
func TestEventsAfterResyncDumpApplied(t *testing.T) {
	testenv.RequireBPF(t)
	ns := emptyNS(t)
	release1, release2 := make(chan struct{}), make(chan struct{})
	src := New(Options{NetNS: ns, RcvBuf: 1})
	src.beforeReceive = func() {
		<-release1
		if src.Stats().Resyncs > 0 {
			<-release2 // the loop is slow to read again after the dump
		}
	}
	rec := &Recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer func() {
		select {
		case <-release2:
		default:
			close(release2)
		}
	}()
	if err := src.Start(ctx, rec.Sink, rec); err != nil {
		close(release1)
		t.Fatal(err)
	}
	sender := xfrmSender(t, ns)
	local := netip.MustParseAddr("127.0.0.1")
	peer := netip.MustParseAddr("192.0.2.9")
	for i := range 50 { // overrun; the states are then deleted again
		fakeSAEvent(t, sender, msgNewSA, newSA(msgNewSA, peer, local, 0x1000+uint32(i), crypt))
		fakeSAEvent(t, sender, msgDelSA, delSA(peer, local, 0x1000+uint32(i)))
	}
	close(release1)
	deadline := time.Now().Add(3 * time.Second)
	for src.Stats().Resyncs == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if src.Stats().Resyncs == 0 {
		t.Fatalf("no resync after the overrun: stats %+v", src.Stats())
	}
	time.Sleep(100 * time.Millisecond)
	// A new SA is installed after the dump.
	fakeSAEvent(t, sender, msgNewSA, newSA(msgNewSA, peer, local, 0x5000, crypt))
	close(release2)
	time.Sleep(500 * time.Millisecond)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	last := rec.Sets[len(rec.Sets)-1]
	found := false
	for _, sa := range last {
		found = found || sa.SPI == 0x5000
	}
	if !found {
		t.Errorf("SA 0x5000 installed after the resync's dump is not known: last set %v, resyncs %d, notices %q", last, src.Stats().Resyncs, rec.Notices)
	}
}
