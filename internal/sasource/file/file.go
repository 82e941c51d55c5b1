// SPDX-License-Identifier: Apache-2.0

// Package file is the known-SA source of a known-SPI file (one SPI[@DESTINATION]
// per line): read at start, read again when it changes and on demand (SIGHUP).
// A bad or missing file keeps the previous set and says which file and line; a
// set the sink refuses is handed on again every RetryAfter until it is taken.
package file

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/spiwatch/spiwatch/internal/knownsa"
	"github.com/spiwatch/spiwatch/internal/sasource"
	"github.com/spiwatch/spiwatch/maps"
)

// DefaultPoll is how often the file's time and size are checked; a change is
// read one poll later, once the file has stopped changing.
const DefaultPoll = 250 * time.Millisecond

// EmptySettle is how long an emptied file, or one whose last line has no
// newline, must stay the same before it is applied: a file rewritten in place is
// empty between truncate and write, or cut mid-line while its writer stalls, and
// a writer delayed past one poll must not empty the known set, or change an SPI,
// for a moment.
const EmptySettle = time.Second

// RetryAfter is how long the source waits before handing a refused set on again.
const RetryAfter = time.Second

// Source follows one known-SPI file.
type Source struct {
	path   string
	poll   time.Duration
	reload <-chan struct{}
	health *sasource.Health
}

// New follows path, checking it every poll and whenever reload delivers (nil:
// only on change).
func New(path string, poll time.Duration, reload <-chan struct{}) *Source {
	return &Source{path: path, poll: poll, reload: reload, health: sasource.NewHealth("file " + path)}
}

// Name is "file PATH".
func (s *Source) Name() string { return "file " + s.path }

// Stats is the source's health.
func (s *Source) Stats() sasource.Stats { return s.health.Stats() }

// Start reads the file (an error here means spiwatch does not start) and then
// follows it until ctx ends.
func (s *Source) Start(ctx context.Context, sink sasource.Sink, r sasource.Reporter) error {
	last := stampOf(s.path)
	sas, err := knownsa.ReadFile(s.path)
	if err == nil {
		err = sink(sas)
	}
	if err != nil {
		return err
	}
	s.health.Synced(len(sas))
	s.health.SetConnected(true)
	go s.follow(ctx, last, sink, r)
	return nil
}

// follow reads the file again once a change (or a reload request) has settled,
// and every RetryAfter while the sink refuses its set: the sink's cause (the
// known-SA map full with other sources' SAs, a map error) goes away without the
// file changing, so nothing else would apply the set then.
func (s *Source) follow(ctx context.Context, last stamp, sink sasource.Sink, r sasource.Reporter) {
	tick := time.NewTicker(s.poll)
	defer tick.Stop()
	var changedAt time.Time // when the file last changed or a reload came; zero: read since
	var retryAt time.Time   // when to hand a refused set on again; zero: none refused
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.reload:
			// Taken as a change, so the same rules keep a truncated or
			// half-written file from being applied.
			last, changedAt = stampOf(s.path), time.Now()
			continue
		case <-tick.C:
		}
		// A changed file is read once it has stayed the same for a poll:
		// reading it mid-write would apply a partial set.
		if now := stampOf(s.path); now.id != last.id {
			last, changedAt = now, time.Now()
			continue
		}
		retry := !retryAt.IsZero() && !time.Now().Before(retryAt)
		if changedAt.IsZero() && !retry {
			continue
		}
		switch s.read(changedAt, sink, r) {
		case unsettled:
			continue
		case refused:
			retryAt = time.Now().Add(RetryAfter)
		default:
			retryAt = time.Time{}
		}
		changedAt = time.Time{}
	}
}

// outcome is what one read of the file came to.
type outcome int

const (
	applied   outcome = iota
	unsettled         // empty or ending mid-line, and changed too recently
	bad               // unreadable or a bad line: wait for the file to change
	refused           // the sink refused the set: try again later
)

// read applies the file once more, unless it may still be being written (see
// load); on error the previous set stays.
func (s *Source) read(changedAt time.Time, sink sasource.Sink, r sasource.Reporter) outcome {
	sas, wait, err := load(s.path, changedAt)
	if wait {
		return unsettled
	}
	res := bad
	if err == nil {
		if err = sink(sas); err != nil {
			res = refused
		}
	}
	if err != nil {
		s.health.Failed(err)
		r.Failed(s.Name(), err)
		return res
	}
	s.health.Synced(len(sas))
	r.Synced(s.Name(), len(sas))
	return applied
}

// load parses the file at path, or says to wait when it changed less than
// EmptySettle ago and is empty or its last line has no newline yet: a writer
// may be between truncating and writing, or stalled mid-line (a block-buffered
// program redirected to the file writes 4 KiB chunks wherever lines end), and
// a cut line may parse as another, wrong SPI.
func load(path string, changedAt time.Time) (sas []maps.SA, wait bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, fmt.Errorf("reading known-SPI file: %w", err)
	}
	defer f.Close()
	if time.Since(changedAt) < EmptySettle && !complete(f) {
		return nil, true, nil
	}
	before, serr := f.Stat()
	sas, err = parse(f, path)
	// Written to while it was read (after the poll that found it settled): what
	// was read may be part old, part new. Wait for it to settle again.
	if after, aerr := f.Stat(); serr == nil && aerr == nil && (after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime())) {
		return nil, true, nil
	}
	return sas, false, err
}

// parse reads the SAs of an open known-SPI file (a variable: tests write to the
// file while it is read).
var parse = knownsa.Read

// complete says whether f has content ending in a newline. A file whose last
// byte cannot be read (a directory, a pipe) counts as complete, so reading it
// reports why at once.
func complete(f *os.File) bool {
	st, err := f.Stat()
	if err != nil {
		return true
	}
	if st.Size() == 0 {
		return false
	}
	last := make([]byte, 1)
	if _, err := f.ReadAt(last, st.Size()-1); err != nil {
		return true
	}
	return last[0] == '\n'
}

// stamp tells a changed file: modification time, size and inode (an editor
// that writes a new file and renames it keeps the size and may keep the time).
type stamp struct {
	id string
}

func stampOf(path string) stamp {
	st, err := os.Stat(path)
	if err != nil {
		return stamp{id: "missing"}
	}
	return stamp{id: fmt.Sprint(st.ModTime().UnixNano(), st.Size(), inode(st))}
}

func inode(st os.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Ino
	}
	return 0
}
