// SPDX-License-Identifier: Apache-2.0

//go:build linux

package xfrm

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/maps"
)

// fakeMigrate sends an XFRM_MSG_MIGRATE to XFRMNLGRP_MIGRATE of sock's namespace,
// as the kernel does after moving states to new addresses (struct
// xfrm_userpolicy_id; the XFRMA_MIGRATE entries are left out: the source reads
// none of them).
func fakeMigrate(t *testing.T, sock *nl.NetlinkSocket) {
	t.Helper()
	payload := make([]byte, nl.SizeofXfrmUserpolicyId)
	b := make([]byte, unix.SizeofNlMsghdr+len(payload))
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], msgMigrate)
	copy(b[unix.SizeofNlMsghdr:], payload)
	err := unix.Sendto(sock.GetFd(), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: 0x7ffffff0, Groups: 1 << (nl.XFRMNLGRP_MIGRATE - 1)})
	if err != nil && err != unix.ECONNREFUSED {
		t.Fatalf("sending: %v", err)
	}
}

// TestMigrateRereadsStates: XFRM_MSG_MIGRATE (libreswan's MOBIKE, Mobile IPv6)
// moves states to new addresses in the kernel with no SA event at all (the kernel
// adds the moved copy and deletes the old one without a NEWSA or DELSA): an SA
// whose local address changed would stay known at the old one and unknown at the
// new one. After a migration the source reads the states again: here the kernel
// holds none (the NEWSA was a fake one), so the SA goes. The dump is no loss of
// events: not counted as a resync, nothing said.
func TestMigrateRereadsStates(t *testing.T) {
	testenv.RequireBPF(t) // root
	ns := emptyNS(t)
	src := New(Options{NetNS: ns, Coalesce: 50 * time.Millisecond})
	var dumps atomic.Int32
	src.afterDump = func() { dumps.Add(1) }
	rec := &Recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := src.Start(ctx, rec.Sink, rec); err != nil {
		t.Fatal(err)
	}
	sender := xfrmSender(t, ns)
	local := netip.MustParseAddr("127.0.0.1")
	peer := netip.MustParseAddr("192.0.2.9")
	fakeSAEvent(t, sender, msgNewSA, newSA(msgNewSA, peer, local, 0x1000, crypt))
	last := func() int {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.Sets[len(rec.Sets)-1])
	}
	deadline := time.Now().Add(3 * time.Second)
	for last() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if last() != 1 {
		t.Fatalf("the NEWSA was not applied: sets %v", rec.Sets)
	}
	// A MOBIKE update migrates the policies of each direction, one message
	// each: one dump for the burst.
	dumps.Store(0)
	for range 3 {
		fakeMigrate(t, sender)
		time.Sleep(10 * time.Millisecond)
	}
	deadline = time.Now().Add(3 * time.Second)
	for last() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // a second dump would be done by now
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if n := len(rec.Sets[len(rec.Sets)-1]); n != 0 {
		t.Errorf("after XFRM_MSG_MIGRATE the source still hands on %d SAs, which the kernel does not hold: the states were not read again; sets %v", n, rec.Sets)
	}
	if n := dumps.Load(); n != 1 {
		t.Errorf("%d dumps after a burst of 3 migrations, want 1", n)
	}
	if st := src.Stats(); st.Resyncs != 0 || len(rec.Notices) != 0 || len(rec.Errors) != 0 || st.Errors != 0 {
		t.Errorf("a migration: stats %+v, notices %q, errors %v; want no resync counted, nothing said", st, rec.Notices, rec.Errors)
	}
}

// cpuTime is the CPU time this process has used so far.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestRefusedSetNoSpin: a set the sink refuses (the known-SA map full with other
// sources' SAs) is handed on again every retryAfter, and the source waits for
// events meanwhile: it once went round its loop without waiting at all until the
// retry, burning a CPU of the gateway for as long as the map stayed full.
func TestRefusedSetNoSpin(t *testing.T) {
	testenv.RequireBPF(t) // root
	ns := emptyNS(t)
	src := New(Options{NetNS: ns})
	rec := &Recorder{}
	var mu sync.Mutex
	offered := 0
	sink := func(sas []maps.SA) error {
		mu.Lock()
		defer mu.Unlock()
		offered++
		if offered == 1 {
			return rec.Sink(sas) // the initial, empty set
		}
		return errors.New("known-SA map full")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := src.Start(ctx, sink, rec); err != nil {
		t.Fatal(err)
	}
	sender := xfrmSender(t, ns)
	fakeSAEvent(t, sender, msgNewSA, newSA(msgNewSA, netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("127.0.0.1"), 0x1000, crypt))
	deadline := time.Now().Add(3 * time.Second)
	for src.Stats().Errors == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if src.Stats().Errors == 0 {
		t.Fatal("the set with the new SA was not offered")
	}
	before, began := cpuTime(t), time.Now()
	time.Sleep(2500 * time.Millisecond)
	used, took := cpuTime(t)-before, time.Since(began)
	mu.Lock()
	n := offered
	mu.Unlock()
	if used > took/5 {
		t.Errorf("while the refused set waited for its retries the process used %v of CPU in %v: the source spins", used, took.Round(time.Millisecond))
	}
	if n < 3 || n > 5 {
		t.Errorf("the set was offered %d times (the initial one included) in about 2.5 s, want it retried every %v", n, retryAfter)
	}
}

// TestLocalAddrsWhileAddressesChange: listing the local addresses while they
// change (a failover moving many VIPs at once, which is just when SAs become
// inbound) makes the kernel mark the dump interrupted, and the netlink library
// says so with an error. The source lists them again at once: it used to fail
// the whole hand-on, count and report an error and wait a second, leaving the
// moved SAs unknown meanwhile.
func TestLocalAddrsWhileAddressesChange(t *testing.T) {
	testenv.RequireBPF(t) // root
	ns := emptyNS(t)
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	// Enough addresses that a dump takes several reads (the kernel checks for
	// changes between them).
	for i := range 1000 {
		ip := net.IPv4(10, 1, byte(i/250), byte(i%250+1))
		if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}}); err != nil {
			t.Fatal(err)
		}
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 9, 9, 9), Mask: net.CIDRMask(32, 32)}}
		for {
			select {
			case <-stop:
				return
			default:
			}
			h.AddrAdd(lo, a)
			time.Sleep(5 * time.Millisecond)
			h.AddrDel(lo, a)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	route, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer route.Close()
	var errs []error
	missing := 0
	for range 200 {
		local, err := localAddrs(route)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i := range 1000 {
			if !local[netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(i%250 + 1)})] {
				missing++
			}
		}
	}
	close(stop)
	<-stopped
	if len(errs) > 0 || missing > 0 {
		t.Errorf("%d of 200 listings failed and %d addresses that stayed were missing while an address came and went; errors: %v", len(errs), missing, errs)
	}
}
