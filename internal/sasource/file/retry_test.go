// SPDX-License-Identifier: Apache-2.0

package file

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/knownsa"
	"github.com/spiwatch/spiwatch/maps"
)

// TestFailedUpdateRetried: a set the sink refuses once (the known-SA map full
// with another source's SAs, a transient map error) is handed on again after
// RetryAfter, though the file does not change again; the failure is counted.
func TestFailedUpdateRetried(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known")
	if err := os.WriteFile(path, []byte("0x1000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	refuse := false // guarded by rec.mu
	sink := func(sas []maps.SA) error {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if refuse {
			refuse = false // the map has room again from now on
			return errors.New("known SAs: 65537 SPIs do not fit: the known-SA map is full")
		}
		rec.sets = append(rec.sets, sas)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := New(path, 10*time.Millisecond, nil)
	if err := src.Start(ctx, sink, rec); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	refuse = true
	rec.mu.Unlock()
	changed := time.Now()
	if err := os.WriteFile(path, []byte("0x1000\n0x2000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "the refused set handed on again", func() bool {
		n := len(rec.sets)
		return len(rec.sets[n-1]) == 2
	})
	if d := time.Since(changed); d < RetryAfter {
		t.Errorf("the refused set was retried %v after the change, want at least RetryAfter (%v): no spinning", d, RetryAfter)
	}
	if st := src.Stats(); st.Errors != 1 || st.SAs != 2 || st.LastError != "" {
		t.Errorf("stats %+v, want the refusal counted once, then 2 SAs and the error cleared", st)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.events) == 0 || !strings.Contains(rec.events[0], "failed known SAs: 65537 SPIs do not fit") {
		t.Errorf("events %v: want the refusal reported first", rec.events)
	}
}

// TestWrittenWhileRead: a file that changes while it is being read (after the
// poll that found it settled) is not applied as read, which may be part old,
// part new: the source waits for it to settle again and applies what it ends as.
func TestWrittenWhileRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known")
	if err := os.WriteFile(path, []byte("0x1000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	torn := false
	parse = func(r io.Reader, name string) ([]maps.SA, error) {
		sas, err := knownsa.Read(r, name)
		if !torn { // the writer goes on while the first read after the start runs
			torn = true
			if err := os.WriteFile(path, []byte("0x3000\n"), 0o600); err != nil {
				t.Error(err)
			}
		}
		return sas, err
	}
	t.Cleanup(func() { parse = knownsa.Read })
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := New(path, 10*time.Millisecond, nil).Start(ctx, rec.sink, rec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("0x1000\n0x2000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "the file's last content applied", func() bool {
		n := len(rec.sets)
		return n > 1 && len(rec.sets[n-1]) == 1 && rec.sets[n-1][0].SPI == 0x3000
	})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, set := range rec.sets[1:] {
		if len(set) == 2 {
			t.Errorf("applied %v, read while the file was being rewritten; sets: %v", set, rec.sets)
		}
	}
}
