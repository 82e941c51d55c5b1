// SPDX-License-Identifier: Apache-2.0

// Package vici follows strongSwan's SA database over its VICI socket: the inbound
// ESP SAs of every CHILD_SA charon holds, whether it installs them in the kernel
// (kernel-netlink) or keeps them in userspace (kernel-libipsec), where xfrm never
// sees them.
//
// list-sas gives the complete set; the child-updown, child-rekey, ike-updown,
// ike-rekey and ike-update events keep it current. What an event says is applied at
// once (a rekeying's new inbound SPI is known as soon as charon announces it, which
// is what keeps rekey races short), and every burst of events is followed by one
// list-sas re-read, which is the truth: it removes what no event announces (a
// rekeyed SA deleted later), corrects anything an event left out, and makes a lost
// event harmless. Re-reads are spaced so that they take at most a tenth of the
// time, however many SAs charon has.
//
// When the connection fails (charon restarting, crashed, stopped, or too slow to
// answer) the source keeps the set it last applied, counts and reports the error,
// and reconnects with exponential backoff: a charon that does not answer says
// nothing about the SAs in the kernel (a killed or stopped charon leaves them
// installed), and an empty set would turn all their traffic unknown. Only a
// complete list-sas after reconnecting replaces the set; SAs a restarted charon no
// longer has go then, and traffic that goes on using them shows as stale. A set
// the sink refused is offered again every pollInterval until it is taken.
package vici

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	govici "github.com/strongswan/govici/vici"

	"github.com/spiwatch/spiwatch/internal/sasource"
	"github.com/spiwatch/spiwatch/maps"
)

// Timing of the source.
const (
	MinBackoff   = 250 * time.Millisecond // first retry after a failed connection
	MaxBackoff   = 4 * time.Second        // retries never wait longer
	rereadDelay  = 100 * time.Millisecond // list-sas this long after the first event of a burst
	pollInterval = time.Second            // list-sas this often while an SA will leave silently; retry a refused set as often
	callTimeout  = 10 * time.Second       // a VICI request or subscription taking longer means charon is stuck
	listAttempts = 3                      // list-sas tries when charon's count says IKE_SAs were missed
)

// Source follows one charon.
type Source struct {
	socket string
	health *sasource.Health
	dialer net.Dialer

	connects   int               // successful connections so far (owned by the running loop)
	unreadable map[string]bool   // errors of the CHILD_SAs reported unreadable and still so (owned by the running loop)
	r          sasource.Reporter // set by Start
}

// New follows the charon listening on socket ("" for sasource.DefaultVICISocket).
func New(socket string) *Source {
	if socket == "" {
		socket = sasource.DefaultVICISocket
	}
	s := &Source{socket: socket, dialer: net.Dialer{Timeout: callTimeout}, unreadable: map[string]bool{}}
	s.health = sasource.NewHealth(s.Name())
	return s
}

// Name is "vici SOCKET".
func (s *Source) Name() string { return "vici " + s.socket }

// Stats is the source's health now.
func (s *Source) Stats() sasource.Stats { return s.health.Stats() }

// conn is one connection to charon: a session that only receives the change
// events and one for requests (list-sas, whose list-sa messages arrive as events
// too). Apart, each kind of event has its own channel, drained at once: govici
// drops an event that a full channel cannot take, silently.
type conn struct {
	events, cmds *govici.Session
	queue        *eventQueue
	listed       chan govici.Event // cmds' list-sa events
}

func (c *conn) close() {
	if c.events != nil {
		c.events.Close()
	}
	if c.cmds != nil {
		c.cmds.Close()
	}
}

// Start connects to charon and applies its SAs. If charon is not there (the
// socket is missing or nobody listens on it: charon may start after spiwatch),
// Start reports it, applies nothing and returns nil: the source keeps trying in the
// background and applies the SAs when charon is up. A socket spiwatch may not open
// (permission denied) or an initial set that cannot be applied is an error.
func (s *Source) Start(ctx context.Context, sink sasource.Sink, r sasource.Reporter) error {
	s.r = r
	c, list, err := s.connect(ctx)
	if err == nil {
		st := newState()
		st.replace(list)
		sas := st.sas()
		if err := sink(sas); err != nil {
			c.close()
			return fmt.Errorf("%s: applying %d SAs: %w", s.Name(), len(sas), err)
		}
		s.health.Synced(len(sas))
		s.health.SetConnected(true)
		r.Notice(s.Name(), "connected")
		r.Synced(s.Name(), len(sas))
		go s.run(ctx, c, st, sas, sink, r)
		return nil
	}
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("%s: %w (spiwatch needs read and write permission on charon's VICI socket: run it as root or in the socket's group)", s.Name(), err)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	s.health.Failed(err)
	r.Failed(s.Name(), err)
	r.Notice(s.Name(), fmt.Sprintf("not connected, retrying in %v (charon may not be running yet)", MinBackoff))
	go s.run(ctx, nil, newState(), nil, sink, r)
	return nil
}

// run follows charon until ctx ends: over c while it lasts, then reconnecting.
// A lost connection leaves the applied set in force until the next connection's
// list-sas replaces it.
func (s *Source) run(ctx context.Context, c *conn, st *state, applied []maps.SA, sink sasource.Sink, r sasource.Reporter) {
	p := &pusher{s: s, st: st, sink: sink, applied: applied}
	backoff := MinBackoff
	lastErr := "" // the kind of the last error reported
	if !s.health.Stats().Connected {
		lastErr = errKind(errors.New(s.health.Stats().LastError))
	}
	for {
		if c != nil {
			backoff = MinBackoff
			err := s.follow(ctx, c, st, p)
			c.close()
			if ctx.Err() != nil {
				return
			}
			s.lost(err, len(p.applied), backoff)
			lastErr = errKind(err) // a reconnection failing the same way is not counted again
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		var list []childSA
		var err error
		c, list, err = s.connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = min(2*backoff, MaxBackoff)
			if k := errKind(err); k != lastErr {
				s.failed(err) // counted and reported when it changes, not at every retry
				lastErr = k
			}
			continue
		}
		if s.connects > 1 {
			s.health.Reconnected()
		}
		s.health.SetConnected(true)
		r.Notice(s.Name(), "connected")
		st.replace(list)
		p.push(true)
	}
}

// lost reports a connection that ended. The applied SAs stay: charon may be slow
// or stopped with all of them installed, and even a crashed one leaves them in the
// kernel; a restarted charon's list-sas will say which are gone.
func (s *Source) lost(err error, kept int, backoff time.Duration) {
	s.health.SetConnected(false)
	noun := "SAs"
	if kept == 1 {
		noun = "SA"
	}
	s.r.Notice(s.Name(), fmt.Sprintf("lost (%v), keeping its %d %s until charon lists them again, retrying in %v", err, kept, noun, backoff))
	s.failed(err)
}

// pusher hands the state's set to the sink.
type pusher struct {
	s       *Source
	st      *state
	sink    sasource.Sink
	applied []maps.SA // the set in force; nil before the first
	refused bool      // the sink refused the last set
}

// push applies the state's SAs if they changed or the last set was refused, or
// anyway when forced (a new connection: the sync also clears the last error).
func (p *pusher) push(force bool) {
	sas := p.st.sas()
	if !force && !p.refused && p.applied != nil && slices.Equal(sas, p.applied) {
		return
	}
	if err := p.sink(sas); err != nil {
		p.refused = true
		p.s.failed(fmt.Errorf("applying %d SAs: %w", len(sas), err))
		return // applied stays in force; retried (see retry)
	}
	p.applied, p.refused = sas, false
	p.s.health.Synced(len(sas))
	p.s.r.Synced(p.s.Name(), len(sas))
}

// retry fires when a refused set is due again, every pollInterval: what made the
// sink refuse (the known-SA map full with another source's SAs, a map error) can
// go away while charon changes nothing. Nil, never firing, while the set is in
// force.
func (p *pusher) retry() <-chan time.Time {
	if !p.refused {
		return nil
	}
	return time.After(pollInterval)
}

// connect opens both sessions, subscribes to the events and lists the SAs.
func (s *Source) connect(ctx context.Context) (*conn, []childSA, error) {
	dial := govici.WithDialContext(s.dialer.DialContext)
	c := &conn{queue: newEventQueue(), listed: make(chan govici.Event, 1024)}
	var err error
	if c.events, err = govici.NewSession(govici.WithSocketPath(s.socket), dial); err != nil {
		return nil, nil, dialError(s.socket, err)
	}
	if c.cmds, err = govici.NewSession(govici.WithSocketPath(s.socket), dial); err != nil {
		c.close()
		return nil, nil, dialError(s.socket, err)
	}
	ch := make(chan govici.Event, 1024)
	c.events.NotifyEvents(ch)
	go c.queue.pump(ch)
	// Subscribe takes no context; a subscription charon never confirms is cut
	// by closing the session.
	if err := bounded(c.events, func() error { return c.events.Subscribe(followed...) }); err != nil {
		c.close()
		return nil, nil, fmt.Errorf("subscribing to charon's events: %w", err)
	}
	c.cmds.NotifyEvents(c.listed)
	if err := bounded(c.cmds, func() error { return c.cmds.Subscribe("list-sa") }); err != nil {
		c.close()
		return nil, nil, fmt.Errorf("subscribing to list-sa: %w", err)
	}
	list, err := s.list(ctx, c)
	if err != nil {
		c.close()
		return nil, nil, err
	}
	s.connects++
	return c, list, nil
}

var (
	errMissing = errors.New("does not exist")
	errRefused = errors.New("nobody listens")
)

// errKind tells errors apart enough to report a change (socket missing, then
// there but refusing, ...) without reporting every retry.
func errKind(err error) string {
	for _, k := range []error{errMissing, errRefused, fs.ErrPermission} {
		if errors.Is(err, k) || strings.Contains(err.Error(), k.Error()) {
			return k.Error()
		}
	}
	return "other"
}

func dialError(socket string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("connecting to charon: %s %w (is charon running with the vici plugin?)", socket, errMissing)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("connecting to charon: %w on %s (is charon running?)", errRefused, socket)
	}
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("connecting to charon on %s: %w", socket, os.ErrPermission)
	}
	return fmt.Errorf("connecting to charon on %s: %w", socket, err)
}

// bounded runs fn, giving up on it and closing sess if it takes longer than
// callTimeout. (An event that overtakes a subscription's confirmation can leave
// govici's Subscribe waiting forever, even on a closed session: that goroutine is
// then abandoned, and the source connects again.)
func bounded(sess *govici.Session, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(callTimeout):
		sess.Close()
		return fmt.Errorf("no answer from charon in %v", callTimeout)
	}
}

// list reads every IKE_SA's CHILD_SAs with list-sas. Not with govici's
// CallStreaming: its wait picks the command's response or a streamed message at
// random when both are ready, so it can end the stream before the last IKE_SAs
// and hand them to the next request instead. The list-sa events are subscribed to
// like any other event and collected until the response, which charon sends after
// the last of them; the count is then checked against charon's own (stats), and a
// short list is read again (counted as a resync), and reported if it stays short.
func (s *Source) list(ctx context.Context, c *conn) ([]childSA, error) {
	var msgs []*govici.Message
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		st, err := c.cmds.Call(cctx, "stats", nil)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("stats: %w", err)
		}
		msgs, err = c.listSAs(cctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("list-sas: %w", err)
		}
		total := 0 // no count to check against (an older charon)
		if ikesas, _ := st.Get("ikesas").(*govici.Message); ikesas != nil {
			total, _ = strconv.Atoi(str(ikesas, "total"))
		}
		if len(msgs) >= total {
			break
		}
		if attempt == listAttempts {
			s.failed(fmt.Errorf("list-sas gave %d IKE_SAs, charon counts %d: some SAs may be missing until the next change", len(msgs), total))
			break
		}
		s.health.Resynced() // IKE_SAs went away meanwhile, or some list-sa messages were lost
	}
	sas, errs := listed(msgs)
	s.reportUnreadable(errs, true)
	return sas, nil
}

// listSAs runs list-sas and returns its list-sa messages, one per IKE_SA.
func (c *conn) listSAs(ctx context.Context) ([]*govici.Message, error) {
	stop := make(chan struct{})
	got := make(chan []*govici.Message, 1)
	go func() {
		var msgs []*govici.Message
		for {
			select {
			case ev, ok := <-c.listed:
				if !ok {
					got <- msgs
					return
				}
				msgs = append(msgs, ev.Message)
			case <-stop:
				// govici put every message in the channel before the
				// response that ended the Call.
				for {
					select {
					case ev, ok := <-c.listed:
						if ok {
							msgs = append(msgs, ev.Message)
							continue
						}
					default:
					}
					got <- msgs
					return
				}
			}
		}
	}()
	_, err := c.cmds.Call(ctx, "list-sas", nil)
	close(stop)
	msgs := <-got
	return msgs, err
}

// failed counts and reports an error.
func (s *Source) failed(err error) {
	s.health.Failed(err)
	s.r.Failed(s.Name(), err)
}

// reportUnreadable reports CHILD_SAs that could not be read, each once for as
// long as it stays unreadable: the re-read after every change and the polling
// would otherwise count the same SA again at each pass. A list-sas (all) says
// which are still unreadable; an event only adds.
func (s *Source) reportUnreadable(errs []error, all bool) {
	before := s.unreadable
	if all {
		s.unreadable = make(map[string]bool, len(errs))
	}
	for _, e := range errs {
		if !before[e.Error()] {
			s.failed(e)
		}
		s.unreadable[e.Error()] = true
	}
}

// follow applies charon's events and re-reads until the connection fails or ctx
// ends, and retries a refused set meanwhile.
func (s *Source) follow(ctx context.Context, c *conn, st *state, p *pusher) error {
	stop := context.AfterFunc(ctx, c.close)
	defer stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var due time.Time // when the next re-read is due; zero: none
	// Re-reads are spaced by ten times the last one's duration, so that on a
	// gateway with many SAs and steady rekeying charon spends at most a tenth of
	// its time listing for spiwatch; events are applied at once all the same.
	var listedAt time.Time
	var listTook time.Duration
	schedule := func(d time.Duration) {
		now := time.Now()
		at := now.Add(d)
		if earliest := listedAt.Add(10 * listTook); at.Before(earliest) {
			at = earliest
		}
		if !due.IsZero() && !at.Before(due) {
			return
		}
		due = at
		timer.Reset(at.Sub(now))
	}
	if st.transient() {
		schedule(pollInterval)
	}
	drain := func() error {
		evs, lost := c.queue.take()
		for _, ev := range evs {
			s.reportUnreadable(st.apply(ev), false)
		}
		if len(evs) > 0 {
			schedule(rereadDelay)
		}
		return lost
	}
	for {
		select {
		case <-c.queue.ready:
			lost := drain()
			p.push(false)
			if lost != nil {
				return lost
			}
		case <-timer.C:
			due = time.Time{}
			listedAt = time.Now()
			list, err := s.list(ctx, c)
			if err != nil {
				return err
			}
			listTook = time.Since(listedAt)
			st.replace(list)
			// Events that came during the list are newer than it.
			lost := drain()
			p.push(false)
			if lost != nil {
				return lost
			}
			if st.transient() {
				schedule(pollInterval)
			}
		case <-p.retry():
			p.push(false)
		}
	}
}

// eventQueue takes events from govici as fast as they come, so its non-blocking
// delivery never finds the channel full, and holds them for the source.
type eventQueue struct {
	mu     sync.Mutex
	events []govici.Event
	closed bool
	ready  chan struct{} // has a value when events are waiting or the session ended
}

func newEventQueue() *eventQueue { return &eventQueue{ready: make(chan struct{}, 1)} }

func (q *eventQueue) pump(ch <-chan govici.Event) {
	for ev := range ch {
		q.mu.Lock()
		q.events = append(q.events, ev)
		q.mu.Unlock()
		q.signal()
	}
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.signal()
}

func (q *eventQueue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

var errLost = errors.New("charon closed the connection")

// take returns the waiting events, and errLost once the session has ended.
func (q *eventQueue) take() ([]govici.Event, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	evs := q.events
	q.events = nil
	if q.closed {
		return evs, errLost
	}
	return evs, nil
}
