// SPDX-License-Identifier: Apache-2.0

package file

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/maps"
)

type recorder struct {
	mu     sync.Mutex
	sets   [][]maps.SA
	events []string
}

func (r *recorder) sink(sas []maps.SA) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sets = append(r.sets, sas)
	return nil
}
func (r *recorder) Synced(src string, n int) { r.add("synced " + src) }
func (r *recorder) Failed(src string, err error) {
	r.add("failed " + err.Error())
}
func (r *recorder) Notice(src, msg string) { r.add("notice " + msg) }
func (r *recorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, s)
}

// waitFor polls until cond holds on the recorder, or fails.
func (r *recorder) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		r.mu.Lock()
		ok := cond()
		r.mu.Unlock()
		if ok {
			return
		}
	}
	t.Fatalf("timed out waiting for %s; sets %v, events %v", what, r.sets, r.events)
}

// startTwoSAs writes a known-SPI file of two SAs and starts a source following
// it (polled every 10 ms), stopped when the test ends.
func startTwoSAs(t *testing.T) (string, *Source, *recorder, chan struct{}) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "known")
	if err := os.WriteFile(path, []byte("0x1000\n0x2000@192.0.2.1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reload := make(chan struct{}, 1)
	src := New(path, 10*time.Millisecond, reload)
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := src.Start(ctx, rec.sink, rec); err != nil {
		t.Fatal(err)
	}
	return path, src, rec, reload
}

func TestFollowsFile(t *testing.T) {
	path, src, rec, reload := startTwoSAs(t)
	if len(rec.sets) != 1 || len(rec.sets[0]) != 2 {
		t.Fatalf("initial set %v, want the file's 2 SAs", rec.sets)
	}

	// A change (new inode, same size) is picked up.
	tmp := path + ".new"
	os.WriteFile(tmp, []byte("0x3000\n0x2000@192.0.2.1\n"), 0o600)
	os.Rename(tmp, path)
	rec.waitFor(t, "the changed file", func() bool { return len(rec.sets) == 2 && rec.sets[1][0].SPI == 0x3000 })

	// A bad line keeps the set, names the line and counts the error.
	os.WriteFile(path, []byte("0x3000\nbogus\n"), 0o600)
	rec.waitFor(t, "the error", func() bool { return len(rec.events) > 1 })
	if !strings.Contains(rec.events[1], path+":2:") {
		t.Errorf("error %q does not name %s:2", rec.events[1], path)
	}
	if len(rec.sets) != 2 {
		t.Errorf("a bad file reached the sink: %v", rec.sets)
	}
	if st := src.Stats(); st.Errors != 1 || st.SAs != 2 || st.LastError == "" {
		t.Errorf("stats %+v, want 1 error, 2 SAs, the error text", st)
	}

	// A removed file keeps the set too.
	os.Remove(path)
	rec.waitFor(t, "the missing-file error", func() bool { return len(rec.events) > 2 })
	if !strings.Contains(rec.events[2], "no such file") || len(rec.sets) != 2 {
		t.Errorf("missing file: events %v, sets %d", rec.events, len(rec.sets))
	}

	// A reload request reads the file even when nothing seems to have changed.
	os.WriteFile(path, []byte("0x4000\n"), 0o600)
	rec.waitFor(t, "the file back", func() bool { return len(rec.sets) == 3 })
	reload <- struct{}{}
	rec.waitFor(t, "the forced reload", func() bool { return len(rec.sets) == 4 && rec.sets[3][0].SPI == 0x4000 })
	if st := src.Stats(); st.LastError != "" || st.Syncs != 4 {
		t.Errorf("stats %+v, want the error cleared after 4 syncs", st)
	}
}

func TestStartFailsOnBadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known")
	os.WriteFile(path, []byte("0x1000\n12\n"), 0o600)
	rec := &recorder{}
	err := New(path, time.Second, nil).Start(context.Background(), rec.sink, rec)
	if err == nil || !strings.Contains(err.Error(), path+":2:") || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("Start = %v, want the reserved SPI on line 2", err)
	}
	if len(rec.sets) != 0 {
		t.Errorf("a bad file reached the sink: %v", rec.sets)
	}
}

// TestNotReadMidWrite: a file rewritten in place is empty for a moment (truncated,
// then written); the source must never hand that moment on as an empty set.
func TestNotReadMidWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known")
	os.WriteFile(path, []byte("0x1000\n0x2000\n"), 0o600)
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := New(path, 5*time.Millisecond, nil).Start(ctx, rec.sink, rec); err != nil {
		t.Fatal(err)
	}
	// Truncated, then written a poll or so later, many times over.
	for i := 0; i < 20; i++ {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
		f.WriteString("0x1000\n0x2000\n")
		f.Close()
		time.Sleep(15 * time.Millisecond)
	}
	rec.mu.Lock()
	for i, set := range rec.sets {
		if len(set) != 2 {
			t.Errorf("set %d handed on has %d SAs, want 2 (a file read mid-write)", i, len(set))
		}
	}
	rec.mu.Unlock()

	// A file emptied for good is applied, once it has stayed empty for EmptySettle.
	emptied := time.Now()
	os.WriteFile(path, nil, 0o600)
	rec.waitFor(t, "the emptied file", func() bool { n := len(rec.sets); return n > 0 && len(rec.sets[n-1]) == 0 })
	if d := time.Since(emptied); d < EmptySettle {
		t.Errorf("an emptied file was applied after %v, want at least %v", d, EmptySettle)
	}
}

// TestNotReadMidLine: a writer that stalls longer than a poll in the middle of
// a line (a block-buffered program redirected to the file writes 4 KiB chunks
// wherever lines end) must not have the cut file applied: the SAs after the cut
// would go and the cut line would be another, wrong, SPI. A last line that stays
// without a newline for EmptySettle is applied.
func TestNotReadMidLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known")
	os.WriteFile(path, []byte("0x1000\n0xc0ffee01\n0x3000\n"), 0o600)
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := New(path, 10*time.Millisecond, nil).Start(ctx, rec.sink, rec); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("0x1000\n0xc0ff") // the first chunk
	time.Sleep(100 * time.Millisecond)
	f.WriteString("ee01\n0x3000") // the rest, but for the last newline
	f.Close()
	written := time.Now()
	rec.waitFor(t, "the file without its last newline", func() bool { return len(rec.sets) == 2 })
	if d := time.Since(written); d < EmptySettle {
		t.Errorf("a file ending mid-line was applied after %v, want at least %v", d, EmptySettle)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i, set := range rec.sets {
		if len(set) != 3 || set[1].SPI != 0xc0ffee01 {
			t.Errorf("set %d handed on: %v, want the file's 3 SAs (a half-written line applied); events %v", i, set, rec.events)
		}
	}
}

// TestReloadNotReadMidWrite: a reload (SIGHUP) that comes while the file is
// truncated, before it is written again, keeps to the same rules as a change:
// the empty file is not applied.
func TestReloadNotReadMidWrite(t *testing.T) {
	path, _, rec, reload := startTwoSAs(t)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	reload <- struct{}{}
	time.Sleep(200 * time.Millisecond)
	f.WriteString("0x1000\n0x2000@192.0.2.1\n")
	f.Close()
	rec.waitFor(t, "the rewritten file", func() bool { return len(rec.sets) == 2 })
	time.Sleep(50 * time.Millisecond)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i, set := range rec.sets {
		if len(set) != 2 {
			t.Errorf("set %d handed on has %d SAs, want 2 (the truncated file read on reload); events %v", i, len(set), rec.events)
		}
	}
}

// TestUnreadableFile: a file that cannot be read, even by root (a directory now
// stands at its path: EISDIR), keeps the previous set; the error names the path
// and is counted, on every try, until the file is back.
func TestUnreadableFile(t *testing.T) {
	path, src, rec, reload := startTwoSAs(t)

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "the unreadable-file error", func() bool { return len(rec.events) > 0 })
	rec.mu.Lock()
	if ev := rec.events[0]; !strings.HasPrefix(ev, "failed ") || !strings.Contains(ev, path) || !strings.Contains(ev, "is a directory") {
		t.Errorf("error %q: want the path and EISDIR", ev)
	}
	if len(rec.sets) != 1 {
		t.Errorf("an unreadable file reached the sink: %v", rec.sets)
	}
	rec.mu.Unlock()
	if st := src.Stats(); st.Errors != 1 || st.SAs != 2 || !strings.Contains(st.LastError, path) {
		t.Errorf("stats %+v, want 1 error naming %s and the 2 SAs kept", st, path)
	}

	// A reload (SIGHUP) tries again: another error, counted, the set still kept.
	reload <- struct{}{}
	rec.waitFor(t, "the second error", func() bool { return len(rec.events) > 1 })
	if st := src.Stats(); st.Errors != 2 || st.SAs != 2 {
		t.Errorf("stats %+v after a reload, want 2 errors and the 2 SAs kept", st)
	}

	// The file back: read, and the error cleared.
	os.Remove(path)
	os.WriteFile(path, []byte("0x3000\n"), 0o600)
	rec.waitFor(t, "the file back", func() bool { n := len(rec.sets); return n == 2 && len(rec.sets[1]) == 1 })
	if st := src.Stats(); st.LastError != "" || st.SAs != 1 {
		t.Errorf("stats %+v, want the error cleared and 1 SA", st)
	}
}
