// SPDX-License-Identifier: Apache-2.0

//go:build linux

// Package xfrm follows the Linux kernel's SA database (xfrm), where strongSwan's
// kernel-netlink, libreswan and `ip xfrm` install SAs: a full dump of the ESP states
// at start, then the NETLINK_XFRM multicast events (new, update, delete, hard
// expire, flush) keep the known-SA set equal to the inbound states, within a few
// milliseconds. A migration (XFRM_MSG_MIGRATE), which moves states to new
// addresses without any of those events, is followed by a full dump. A lost event
// (ENOBUFS) triggers a full re-dump, counted and reported; the event socket is
// emptied first, so no event older than that dump is applied on top of it.
//
// Privileges: Start needs CAP_NET_ADMIN (joining the xfrm groups and dumping the
// states). Afterwards the event socket needs nothing, but a resync after lost events
// dumps again and so needs CAP_NET_ADMIN still: keep it in the effective set.
// Reading the local addresses (RTM_GETADDR) needs no capability.
package xfrm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/sasource"
	"github.com/spiwatch/spiwatch/maps"
)

// Defaults of Options.
const (
	DefaultRcvBuf   = 4 << 20               // event socket buffer: room for a burst of thousands of SAs
	DefaultCoalesce = 10 * time.Millisecond // quiet time that ends a burst of events
	maxCoalesce     = 100 * time.Millisecond
	idlePoll        = 200 * time.Millisecond // how often the loop checks ctx and retries
	retryAfter      = time.Second            // after a failed sink or socket error
)

// Options tune the source; the zero value is what spiwatch uses.
type Options struct {
	// NetNS is the network namespace whose SA database is followed; the zero
	// value or a closed handle (netns.None()) means the current one. (Descriptor
	// 0 is stdin, never a namespace handle here.)
	NetNS netns.NsHandle
	// RcvBuf is the event socket's receive buffer in bytes; 0: DefaultRcvBuf.
	// Raised past the system limit when the process has CAP_NET_ADMIN.
	RcvBuf int
	// Coalesce is how long the source waits for more events before handing the
	// set on (at most 100 ms after the first); 0: DefaultCoalesce.
	Coalesce time.Duration
}

// Source follows the kernel's ESP states.
type Source struct {
	opts   Options
	health *sasource.Health

	mu     sync.Mutex
	events *nl.NetlinkSocket
	route  *netlink.Handle
	table  *Table
	last   []maps.SA // the set last handed on; nil before the first

	addrChanged atomic.Bool   // an address of the namespace came or went, or changes were lost
	addrDone    chan struct{} // ends address following
	stopping    atomic.Bool   // set before addrDone closes: its socket error is expected

	beforeReceive func() // tests: stall the event loop so the socket overruns
	afterDump     func() // tests: count the dumps
}

var _ sasource.Source = (*Source)(nil)

// New makes an xfrm source; nothing touches the kernel until Start.
func New(o Options) *Source {
	if o.RcvBuf == 0 {
		o.RcvBuf = DefaultRcvBuf
	}
	if o.Coalesce == 0 {
		o.Coalesce = DefaultCoalesce
	}
	if o.NetNS == 0 || !o.NetNS.IsOpen() {
		o.NetNS = netns.None()
	}
	return &Source{opts: o, health: sasource.NewHealth("xfrm"), table: NewTable()}
}

// Name is "xfrm".
func (s *Source) Name() string { return "xfrm" }

// Stats is the source's health.
func (s *Source) Stats() sasource.Stats { return s.health.Stats() }

// Start joins the xfrm event groups, then dumps the ESP states (so no change made
// during the dump is missed), hands the inbound ones to sink and follows changes
// until ctx ends.
func (s *Source) Start(ctx context.Context, sink sasource.Sink, r sasource.Reporter) error {
	route, err := netlink.NewHandleAt(s.opts.NetNS, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("xfrm: opening a route netlink socket: %w", err)
	}
	// Which states are inbound depends on the local addresses: follow them too (a
	// VIP moving to this node on failover makes its SAs inbound).
	s.addrDone = make(chan struct{})
	sub, err := s.subscribeAddrs(r)
	if err != nil {
		route.Close()
		return err
	}
	go s.followAddrs(sub, r)
	events, err := s.subscribe()
	if err != nil {
		s.stopAddrs()
		route.Close()
		return err
	}
	states, err := s.dump()
	if err == nil {
		s.table.Reset(states)
		_, err = s.apply(route, sink)
	}
	if err != nil {
		s.stopAddrs()
		events.Close()
		route.Close()
		s.health.Failed(err)
		return err
	}
	r.Synced(s.Name(), s.health.Stats().SAs)
	s.health.SetConnected(true)
	s.mu.Lock()
	s.events, s.route = events, route
	s.mu.Unlock()
	go s.follow(ctx, sink, r)
	return nil
}

func (s *Source) stopAddrs() {
	s.stopping.Store(true)
	close(s.addrDone)
}

// subscribe opens the event socket: XFRMNLGRP_SA (NEWSA, UPDSA, DELSA, FLUSHSA),
// XFRMNLGRP_EXPIRE (soft and hard expires; a hard one deletes the state
// without a DELSA) and XFRMNLGRP_MIGRATE (states moved to new addresses without
// any SA event: libreswan's MOBIKE, Mobile IPv6).
func (s *Source) subscribe() (*nl.NetlinkSocket, error) {
	sock, err := nl.SubscribeAt(s.opts.NetNS, netns.None(), unix.NETLINK_XFRM, nl.XFRMNLGRP_SA, nl.XFRMNLGRP_EXPIRE, nl.XFRMNLGRP_MIGRATE)
	if err != nil {
		return nil, fmt.Errorf("xfrm: joining the SA event groups: %w%s", err, hint(err))
	}
	if err := sock.SetReceiveBufferSize(s.opts.RcvBuf, true); err != nil {
		_ = sock.SetReceiveBufferSize(s.opts.RcvBuf, false) // capped by net.core.rmem_max
	}
	return sock, nil
}

func hint(err error) string {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return " (needs CAP_NET_ADMIN)"
	case errors.Is(err, unix.EPROTONOSUPPORT):
		return " (this kernel has no xfrm netlink: CONFIG_XFRM_USER, module xfrm_user)"
	}
	return ""
}

// dump reads every ESP state with XFRM_MSG_GETSA.
func (s *Source) dump() ([]State, error) {
	sock, err := nl.GetNetlinkSocketAt(s.opts.NetNS, netns.None(), unix.NETLINK_XFRM)
	if err != nil {
		return nil, fmt.Errorf("xfrm: opening a netlink socket: %w%s", err, hint(err))
	}
	defer sock.Close()
	_ = sock.SetReceiveTimeout(&unix.Timeval{Sec: 10})
	for attempt := 0; ; attempt++ {
		states, interrupted, err := dumpOnce(sock)
		if s.afterDump != nil {
			s.afterDump()
		}
		if err != nil {
			return nil, err
		}
		if !interrupted || attempt == 3 {
			return states, nil // after 3 interrupted dumps the events that follow fix the rest
		}
	}
}

func dumpOnce(sock *nl.NetlinkSocket) (states []State, interrupted bool, err error) {
	req := nl.NewNetlinkRequest(nl.XFRM_MSG_GETSA, unix.NLM_F_DUMP)
	if err := sock.Send(req); err != nil {
		return nil, false, fmt.Errorf("xfrm: requesting the SA dump: %w%s", err, hint(err))
	}
	for {
		msgs, _, err := sock.Receive()
		if err != nil {
			return nil, false, fmt.Errorf("xfrm: reading the SA dump: %w%s", err, hint(err))
		}
		for _, m := range msgs {
			if m.Header.Seq != req.Seq {
				continue
			}
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return states, interrupted, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := -int32(nl.NativeEndian().Uint32(m.Data)); errno != 0 {
						err := syscall.Errno(errno)
						return nil, false, fmt.Errorf("xfrm: SA dump: %w%s", err, hint(err))
					}
				}
				return states, interrupted, nil
			}
			ev, err := Parse(m.Header.Type, m.Data)
			if err != nil {
				return nil, false, fmt.Errorf("xfrm: SA dump: %w", err)
			}
			if ev.Kind == Add {
				states = append(states, ev.State)
			}
		}
	}
}

// maxDrain bounds how many queued events a resync discards: more means events
// come faster than they are read, and the resync is tried again later.
const maxDrain = 1 << 20

// resync makes the table the kernel's states again after events were lost or
// unreadable, or states migrated. It empties the event socket before it dumps: the events queued there
// are older than the dump, and applied on top of it they would bring back states
// whose removal was lost. Emptying it also ends the kernel's overrun state, in which
// it drops every event without a further ENOBUFS; the events that come after are
// read once the dump is in, in order, and being newer they are right on top of it.
func (s *Source) resync(events *nl.NetlinkSocket) error {
	if err := drain(events); err != nil {
		return err
	}
	states, err := s.dump()
	if err != nil {
		return err
	}
	s.table.Reset(states)
	return nil
}

// drain reads and discards what sock holds, without waiting for more.
func drain(sock *nl.NetlinkSocket) error {
	buf := make([]byte, 4096) // a longer message is cut short, and gone all the same
	for range maxDrain {
		_, _, err := unix.Recvfrom(sock.GetFd(), buf, unix.MSG_DONTWAIT)
		switch {
		case err == nil, errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.ENOBUFS):
			// overrun again while emptying: what was dropped is in the dump to come
		case errors.Is(err, unix.EAGAIN):
			return nil
		default:
			return fmt.Errorf("xfrm: emptying the event socket before a resync: %w", err)
		}
	}
	return fmt.Errorf("xfrm: emptying the event socket before a resync: still not empty after %d events", maxDrain)
}

// apply hands the inbound states to sink, unless they are the ones it has.
func (s *Source) apply(route *netlink.Handle, sink sasource.Sink) (handed bool, err error) {
	local, err := localAddrs(route)
	if err != nil {
		return false, err
	}
	sas := s.table.Inbound(func(a netip.Addr) bool { return local[a] })
	if s.last != nil && slices.Equal(sas, s.last) {
		return false, nil // an outbound state, an unrelated address: nothing to hand on
	}
	if err := sink(sas); err != nil {
		return false, fmt.Errorf("xfrm: applying %d SAs: %w", len(sas), err)
	}
	if sas == nil {
		sas = []maps.SA{}
	}
	s.last = sas
	s.health.Synced(len(sas))
	return true, nil
}

// addrListAttempts bounds the listings of the local addresses when the kernel
// says each was interrupted by a change.
const addrListAttempts = 6

// localAddrs are this namespace's addresses: an SA whose destination is one of
// them is inbound. A listing that addresses changed during (the kernel marks it
// interrupted: a failover moving many addresses at once) may miss some, and is
// made again, 1, 2, 4 ... ms later. Under changes that never pause for a whole
// listing, the union of the interrupted ones is taken: an address that stayed
// is in nearly every listing, and one that only came and went, taken for local
// too, costs nothing.
func localAddrs(route *netlink.Handle) (map[netip.Addr]bool, error) {
	union := map[netip.Addr]bool{}
	for i := range addrListAttempts {
		addrs, err := route.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("xfrm: listing local addresses: %w", err)
		}
		got := make(map[netip.Addr]bool, len(addrs))
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				got[ip.Unmap()] = true
			}
		}
		if err == nil {
			return got, nil // a whole listing: it alone is right
		}
		for ip := range got {
			union[ip] = true
		}
		if i < addrListAttempts-1 {
			time.Sleep(time.Millisecond << i)
		}
	}
	return union, nil
}

// follow applies events until ctx ends. Events that arrive close together are
// applied to the table one by one and handed to sink once.
func (s *Source) follow(ctx context.Context, sink sasource.Sink, r sasource.Reporter) {
	s.mu.Lock()
	events, route := s.events, s.route
	s.mu.Unlock()
	defer func() {
		s.stopAddrs()
		events.Close()
		route.Close()
		s.health.SetConnected(false)
	}()
	var (
		dirty       bool // the table changed since the last set handed on
		first, last time.Time
		retryAt     time.Time // after a failure: when to try again
		needResync  bool      // read every state again (a dump) before handing on
		resyncWhy   string    // why, when events were lost; "" after a migration, which loses none
		migrated    bool      // states migrated in this burst: read them again once it ends
	)
	for ctx.Err() == nil {
		now := time.Now()
		wait := idlePoll
		if !retryAt.IsZero() {
			// Nothing is handed on before the retry (a burst that ended
			// meanwhile waits for it too): until then, only events.
			wait = min(wait, retryAt.Sub(now))
		} else if dirty {
			wait = min(wait, last.Add(s.opts.Coalesce).Sub(now), first.Add(maxCoalesce).Sub(now))
		}
		if wait > 0 {
			if s.beforeReceive != nil {
				s.beforeReceive()
			}
			_ = events.SetReceiveTimeout(&unix.Timeval{Usec: max(wait.Microseconds(), 1)})
			msgs, _, err := events.Receive()
			switch {
			case err == nil:
				for _, m := range msgs {
					ev, perr := Parse(m.Header.Type, m.Data)
					if perr != nil {
						// A change we cannot read is a change we would miss.
						needResync, resyncWhy = true, perr.Error()
						continue
					}
					if ev.Kind == Reread {
						// One dump for a burst: a MOBIKE update migrates
						// the policies of each direction in turn.
						migrated = true
					}
					if ev.Kind == Reread || s.table.Apply(ev) {
						if !dirty {
							first = time.Now()
						}
						dirty, last = true, time.Now()
					}
				}
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
				// quiet: hand on a finished burst, or retry
			case errors.Is(err, unix.ENOBUFS):
				needResync, resyncWhy = true, "the kernel dropped xfrm events (receive buffer overrun)"
			default:
				err = fmt.Errorf("xfrm: reading events: %w", err)
				s.health.Failed(err)
				r.Failed(s.Name(), err)
				needResync, resyncWhy = true, err.Error()
				retryAt = time.Now().Add(retryAfter) // do not spin on a broken socket
			}
		}
		now = time.Now()
		if s.addrChanged.Swap(false) {
			if !dirty {
				first = now
			}
			dirty, last = true, now
		}
		due := retryAt.IsZero() || !now.Before(retryAt)
		burstGoesOn := now.Before(last.Add(s.opts.Coalesce)) && now.Before(first.Add(maxCoalesce))
		if migrated && !burstGoesOn {
			needResync, migrated = true, false // quietly, unless events were lost too
		}
		if needResync && due {
			if resyncWhy != "" {
				r.Notice(s.Name(), "resyncing with a full dump: "+resyncWhy)
			}
			if err := s.resync(events); err != nil {
				s.health.Failed(err)
				r.Failed(s.Name(), err)
				retryAt = now.Add(retryAfter)
				continue
			}
			if resyncWhy != "" {
				s.health.Resynced()
			}
			needResync, resyncWhy, retryAt = false, "", time.Time{}
			dirty, burstGoesOn = true, false // hand on at once
		}
		if needResync || !dirty || !due {
			continue
		}
		if burstGoesOn {
			continue // the burst goes on
		}
		handed, err := s.apply(route, sink)
		if err != nil {
			s.health.Failed(err)
			r.Failed(s.Name(), err)
			retryAt = now.Add(retryAfter)
			continue
		}
		if handed {
			r.Synced(s.Name(), s.health.Stats().SAs)
		}
		dirty, retryAt = false, time.Time{}
	}
}
