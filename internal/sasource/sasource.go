// SPDX-License-Identifier: Apache-2.0

// Package sasource is what a known-SA source (the kernel's xfrm SA database,
// strongSwan over VICI, a file) gives the rest of spiwatch: its complete set of
// inbound SAs each time that set changes, and its health. The sources themselves
// live in the packages below this one.
package sasource

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/spiwatch/spiwatch/maps"
)

// Sink takes a source's complete set of SAs each time it changes. An error means
// the set was not applied; the previous one stays in force.
type Sink func(sas []maps.SA) error

// Reporter hears what a source does, for stderr and the event log. Calls may come
// from any goroutine.
type Reporter interface {
	Synced(source string, sas int)   // a complete set was applied
	Failed(source string, err error) // reading or applying failed; the previous set stays
	Notice(source, msg string)       // connected, reconnecting, resyncing after lost events
}

// Source follows one SA database.
type Source interface {
	// Name says which database: "xfrm", "vici /run/charon.vici", "file /etc/spiwatch/known".
	Name() string
	// Start hands the initial set to sink before it returns, then follows
	// changes in the background until ctx ends. An error means there is no
	// initial set and spiwatch must not start (nothing was applied).
	Start(ctx context.Context, sink Sink, r Reporter) error
	// Stats is the source's health now.
	Stats() Stats
}

// Stats is a source's health, shown in reports and metrics.
type Stats struct {
	Name       string
	SAs        int    // in the last set applied
	Syncs      uint64 // complete sets applied
	Errors     uint64 // reads or applies that failed (each also reported)
	Resyncs    uint64 // full re-reads because events were lost (netlink ENOBUFS)
	Reconnects uint64 // connections re-established after a loss (VICI)
	Connected  bool   // following changes right now
	LastError  string // empty once a later sync succeeded
}

// Health is the Stats bookkeeping sources share; safe for concurrent use.
type Health struct {
	mu sync.Mutex
	s  Stats
}

// NewHealth starts the record of the named source.
func NewHealth(name string) *Health { return &Health{s: Stats{Name: name}} }

// Synced records a complete set of n SAs applied.
func (h *Health) Synced(n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.s.SAs, h.s.LastError = n, ""
	h.s.Syncs++
}

// Failed records an error.
func (h *Health) Failed(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.s.Errors++
	h.s.LastError = err.Error()
}

// Resynced counts a full re-read after lost events.
func (h *Health) Resynced() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.s.Resyncs++
}

// Reconnected counts a connection re-established after a loss.
func (h *Health) Reconnected() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.s.Reconnects++
}

// SetConnected records whether changes are being followed.
func (h *Health) SetConnected(up bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.s.Connected = up
}

// Stats is a copy of the record.
func (h *Health) Stats() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.s
}

// Spec is one --known-from value.
type Spec struct {
	Kind string // "xfrm", "vici", "file" or "none"
	Arg  string // vici: the socket (empty: strongSwan's default); file: the path
}

func (s Spec) String() string {
	if s.Arg == "" {
		return s.Kind
	}
	return s.Kind + "=" + s.Arg
}

// DefaultVICISocket is where charon listens unless configured otherwise.
const DefaultVICISocket = "/var/run/charon.vici"

// ParseSpec reads xfrm, vici, vici=SOCKET (a path, or unix://PATH as strongSwan
// writes it), file=PATH or none.
func ParseSpec(s string) (Spec, error) {
	kind, arg, hasArg := strings.Cut(s, "=")
	switch kind {
	case "xfrm", "none":
		if hasArg {
			return Spec{}, fmt.Errorf("--known-from %q: %s takes no value", s, kind)
		}
	case "vici":
		// strongSwan names the socket as a URI (charon.plugins.vici.socket,
		// swanctl --uri): unix://PATH is PATH.
		if p, ok := strings.CutPrefix(arg, "unix://"); ok {
			arg = p
		} else if scheme, _, ok := strings.Cut(arg, "://"); ok && isScheme(scheme) {
			return Spec{}, fmt.Errorf("--known-from %q: spiwatch connects to charon's VICI unix socket only, not %s:// (give vici=PATH or vici=unix://PATH, as in charon.plugins.vici.socket)", s, scheme)
		}
		if hasArg && arg == "" {
			return Spec{}, fmt.Errorf("--known-from %q: empty socket path (leave out =SOCKET for %s)", s, DefaultVICISocket)
		}
	case "file":
		if arg == "" {
			return Spec{}, fmt.Errorf("--known-from %q: want file=PATH", s)
		}
	default:
		return Spec{}, fmt.Errorf("--known-from %q: want xfrm, vici[=SOCKET], file=PATH or none", s)
	}
	return Spec{Kind: kind, Arg: arg}, nil
}

// isScheme says whether s is a URI scheme (RFC 3986: a letter, then letters,
// digits, "+", "-" or "."), so that a socket path with "://" in it stays a path.
func isScheme(s string) bool {
	for i, c := range s {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (i == 0 || !(c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return false
		}
	}
	return s != ""
}
