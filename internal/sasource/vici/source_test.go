// SPDX-License-Identifier: Apache-2.0

package vici

import (
	"context"
	"errors"
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

// TestUnreadableOnce reports a CHILD_SA that cannot be read once while it stays
// so, however often it is read again, and again if it comes back after a list
// without it.
func TestUnreadableOnce(t *testing.T) {
	src := New(filepath.Join(t.TempDir(), "charon.vici"))
	rec := &recorder{}
	src.r = rec
	bad := errors.New(`IKE_SA gw #1, CHILD_SA a-1: spi-in "xyz" is not a 32-bit hexadecimal SPI`)
	other := errors.New(`IKE_SA gw #2, CHILD_SA b-2: IKE_SA local-host "x" is not an IP address`)
	src.reportUnreadable([]error{bad}, false) // an event
	src.reportUnreadable([]error{bad}, true)  // the re-read after it
	src.reportUnreadable([]error{bad, other}, true)
	src.reportUnreadable([]error{bad, other}, true)
	if n := rec.count("failed: "); n != 2 || src.Stats().Errors != 2 {
		t.Errorf("%d reported, %d counted, want 2 (each SA once):\n%s", n, src.Stats().Errors, rec)
	}
	src.reportUnreadable(nil, true) // both gone
	src.reportUnreadable([]error{bad}, true)
	if n := rec.count("failed: " + bad.Error()); n != 2 {
		t.Errorf("an SA unreadable again after a list without it: reported %d times in all, want 2", n)
	}
}
