// SPDX-License-Identifier: Apache-2.0

//go:build linux

package xfrm

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/spiwatch/spiwatch/internal/sasource"
)

// Subscribing to address changes again after the netlink library's reader ended.
const (
	addrRetryMin = 100 * time.Millisecond // pause after a second failure in a row
	addrRetryMax = 30 * time.Second       // longest pause; a subscription that lasted longer resets it
	// libReadFailed starts the library's error for a failed receive, after which
	// its reader ends: that one is counted as a failure, not noticed.
	libReadFailed = "Receive failed"
)

// addrSub is one subscription to the namespace's address changes.
type addrSub struct {
	updates <-chan netlink.AddrUpdate // closed when the library's reader ends
	stop    chan struct{}             // closing it closes the subscription's socket
	cause   error                     // the reader's last error; read only once updates is closed
}

// subscribeAddrs subscribes to the namespace's IPv4 and IPv6 address changes.
func (s *Source) subscribeAddrs(r sasource.Reporter) (*addrSub, error) {
	ch := make(chan netlink.AddrUpdate, 64)
	sub := &addrSub{updates: ch, stop: make(chan struct{})}
	o := netlink.AddrSubscribeOptions{ErrorCallback: func(err error) {
		if s.stopping.Load() {
			return // the socket closed on purpose
		}
		sub.cause = err
		if !strings.HasPrefix(err.Error(), libReadFailed) {
			r.Notice(s.Name(), "following address changes, a message ignored: "+err.Error())
		}
	}}
	if s.opts.NetNS.IsOpen() {
		ns := s.opts.NetNS
		o.Namespace = &ns
	}
	if err := netlink.AddrSubscribeWithOptions(ch, sub.stop, o); err != nil {
		return nil, fmt.Errorf("xfrm: following address changes: %w", err)
	}
	return sub, nil
}

// followAddrs marks the addresses changed on every address event until the source
// stops. The library's reader ends on its first receive error, an overrun of its
// socket (ENOBUFS) too, and changes are lost then: the failure is counted, the
// source subscribes again and marks the addresses changed, so they are read again.
// A subscription that fails again within addrRetryMax waits longer each time.
func (s *Source) followAddrs(sub *addrSub, r sasource.Reporter) {
	var pause time.Duration
	for {
		began := time.Now()
		if !s.watchAddrs(sub) {
			return
		}
		cause := sub.cause
		if cause == nil {
			cause = errors.New("the netlink library's reader ended")
		}
		err := fmt.Errorf("xfrm: following address changes (subscribing again, the addresses are read again): %w", cause)
		s.health.Failed(err)
		r.Failed(s.Name(), err)
		if time.Since(began) > addrRetryMax {
			pause = 0
		}
		if sub, pause = s.resubscribeAddrs(r, pause); sub == nil {
			return
		}
		// After the subscription, so a change is either an event or in that read.
		s.addrChanged.Store(true)
	}
}

// resubscribeAddrs subscribes again after pause, and after a longer one each time
// that fails; it returns the subscription (nil if the source stops first) and the
// pause for the next time.
func (s *Source) resubscribeAddrs(r sasource.Reporter, pause time.Duration) (*addrSub, time.Duration) {
	for {
		if !s.sleepAddrs(pause) {
			return nil, pause
		}
		pause = min(max(2*pause, addrRetryMin), addrRetryMax)
		sub, err := s.subscribeAddrs(r)
		if err == nil {
			return sub, pause
		}
		s.health.Failed(err)
		r.Failed(s.Name(), err)
	}
}

// watchAddrs marks addrChanged on each update of sub until its reader ends (true)
// or the source stops (false).
func (s *Source) watchAddrs(sub *addrSub) bool {
	defer func() {
		close(sub.stop) // the library keeps the socket open until then
		for range sub.updates {
			// let a reader blocked on the full channel end
		}
	}()
	for {
		select {
		case _, ok := <-sub.updates:
			if !ok {
				return !s.stopping.Load()
			}
			s.addrChanged.Store(true)
		case <-s.addrDone:
			return false
		}
	}
}

// sleepAddrs waits d; false if the source stops first.
func (s *Source) sleepAddrs(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.addrDone:
		return false
	}
}
