// SPDX-License-Identifier: Apache-2.0

//go:build linux

package xfrm

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/maps"
)

// stallingRecorder blocks the address subscription's reader in its error
// callback (standing for a reader that falls behind a burst of address changes).
type stallingRecorder struct {
	Recorder
	once  sync.Once
	stall chan struct{}
}

func (r *stallingRecorder) Notice(src, msg string) {
	r.Recorder.Notice(src, msg)
	if strings.Contains(msg, "Wrong sender") {
		r.once.Do(func() { <-r.stall })
	}
}

// An overrun of the address subscription (ENOBUFS on its socket) ends the netlink
// library's reader; the source counts the error, subscribes again and reads the
// addresses again. So an address whose event the overrun dropped, and one that
// comes later (a VIP moving here on failover), both make their SAs inbound at once,
// without waiting for an unrelated SA event.
func TestAddressFollowingSurvivesOverrun(t *testing.T) {
	testenv.RequireBPF(t)
	ns := emptyNS(t)
	src := New(Options{NetNS: ns})
	rec := &stallingRecorder{stall: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := src.Start(ctx, rec.Sink, rec); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			released = true
			close(rec.stall)
		}
	}
	defer release()
	xs := xfrmSender(t, ns)
	vip := netip.MustParseAddr("192.0.2.50")
	lostVIP := netip.MustParseAddr("192.0.2.51") // comes while the reader is stalled
	peer := netip.MustParseAddr("192.0.2.9")
	// SAs for addresses this node does not have yet: not inbound.
	fakeSAEvent(t, xs, msgNewSA, newSA(msgNewSA, peer, vip, 0x7000, crypt))
	fakeSAEvent(t, xs, msgNewSA, newSA(msgNewSA, peer, lostVIP, 0x7001, crypt))
	time.Sleep(100 * time.Millisecond)

	// Stall the address reader: one datagram not from the kernel makes it call
	// the error callback, which blocks.
	rs, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	b := make([]byte, unix.SizeofNlMsghdr)
	binary.NativeEndian.PutUint32(b, uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], unix.RTM_NEWADDR)
	if err := unix.Sendto(rs.GetFd(), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: 0x7ffffff0, Groups: 1 << (unix.RTNLGRP_IPV4_IFADDR - 1)}); err != nil && err != unix.ECONNREFUSED {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	// A burst of address changes overruns its socket.
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE) // that family alone: a small kernel may lack others
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 9, byte(i>>8), byte(i)), Mask: net.CIDRMask(32, 32)}}
		if err := h.AddrAdd(lo, a); err != nil {
			t.Fatal(err)
		}
	}
	// Its event is dropped: the socket is still overrun.
	if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: lostVIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	release()
	if !eventuallyKnown(rec, 0x7001, time.Second) {
		t.Errorf("1 s after the overrun the SA 0x7001 to %s, which became local during it, is not known: the addresses were not read again; stats %+v",
			lostVIP, src.Stats())
	}

	// The VIP arrives.
	if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	last := rec.Sets[len(rec.Sets)-1]
	if len(last) != 2 || last[0].SPI != 0x7000 || last[1].SPI != 0x7001 {
		t.Errorf("1 s after %s became local: set %v, want SAs 0x7000 and 0x7001; stats %+v; errors %v",
			vip, last, src.Stats(), rec.Errors)
	}
	counted := false
	for _, err := range rec.Errors {
		counted = counted || errors.Is(err, unix.ENOBUFS) || strings.Contains(err.Error(), "no buffer space")
	}
	if !counted || src.Stats().Errors == 0 {
		t.Errorf("the overrun of the address subscription was not counted: stats %+v, errors reported %v", src.Stats(), rec.Errors)
	}
}

// eventuallyKnown says whether the last set rec was handed holds spi within d.
func eventuallyKnown(rec *stallingRecorder, spi uint32, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		rec.mu.Lock()
		last := rec.Sets[len(rec.Sets)-1]
		rec.mu.Unlock()
		if slices.ContainsFunc(last, func(sa maps.SA) bool { return sa.SPI == spi }) {
			return true
		}
	}
	return false
}

// An address that comes makes the SAs to it inbound.
func TestAddressArrivalMakesSAsInbound(t *testing.T) {
	testenv.RequireBPF(t)
	ns := emptyNS(t)
	_, rec := startRecorded(t, ns)
	xs := xfrmSender(t, ns)
	vip := netip.MustParseAddr("192.0.2.50")
	fakeSAEvent(t, xs, msgNewSA, newSA(msgNewSA, netip.MustParseAddr("192.0.2.9"), vip, 0x7000, crypt))
	time.Sleep(100 * time.Millisecond)
	h, _ := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	defer h.Close()
	lo, _ := h.LinkByName("lo")
	if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if last := rec.Sets[len(rec.Sets)-1]; len(last) != 1 {
		t.Errorf("control: %v", last)
	}
}
