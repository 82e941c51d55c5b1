// SPDX-License-Identifier: Apache-2.0

package vici

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/maps"
)

// TestNoCharon starts the source with no charon (the socket is missing): Start
// says so and returns nil, and the source keeps trying with a growing delay. A
// socket whose owner closes every connection at once (a charon dying as it
// starts) is retried the same way, the new error counted once, not at every try.
func TestNoCharon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "charon.vici")
	src := New(sock)
	if src.Name() != "vici "+sock {
		t.Errorf("Name() = %q", src.Name())
	}
	rec := &recorder{}
	var applied atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := src.Start(ctx, func([]maps.SA) error { applied.Add(1); return nil }, rec); err != nil {
		t.Fatalf("Start without charon: %v, want nil (keep trying)", err)
	}
	st := src.Stats()
	if st.Connected || st.Errors != 1 || !strings.Contains(st.LastError, sock+" does not exist (is charon running with the vici plugin?)") {
		t.Errorf("after Start: %+v", st)
	}
	if !strings.Contains(rec.String(), "notice: not connected, retrying in 250ms") || rec.count("failed: connecting to charon") != 1 {
		t.Errorf("reported:\n%s", rec)
	}

	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepts atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepts.Add(1)
			c.Close()
		}
	}()
	// Tries after 250 ms, then 500 ms and 1 s: 3 in 2.5 s, each opening two
	// connections (events, requests) before the subscription fails.
	time.Sleep(2500 * time.Millisecond)
	if n := accepts.Load(); n < 4 || n > 8 {
		t.Errorf("%d connections in 2.5 s, want 4 to 8 (3 tries of 2, backoff 250 ms doubling)", n)
	}
	st = src.Stats()
	if st.Connected || applied.Load() != 0 || st.Reconnects != 0 {
		t.Errorf("with a socket that closes at once: %+v, %d sets applied", st, applied.Load())
	}
	if st.Errors != 2 || !strings.Contains(st.LastError, "subscribing to charon's events") {
		t.Errorf("errors: %+v, want the missing socket and then the closed connection, once each", st)
	}
}
