// SPDX-License-Identifier: Apache-2.0

// Package file is the known-SA source of a known-SPI file (one SPI[@DESTINATION]
// per line): read at start, read again when it changes and on demand (SIGHUP).
// A bad or missing file keeps the previous set and says which file and line.
package file

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/spiwatch/spiwatch/internal/knownsa"
	"github.com/spiwatch/spiwatch/internal/sasource"
)

// DefaultPoll is how often the file's time and size are checked; a change is
// read one poll later, once the file has stopped changing.
const DefaultPoll = 250 * time.Millisecond

// EmptySettle is how long an emptied file must stay empty before its empty set
// is applied: a file rewritten in place is empty between truncate and write, and
// a writer delayed past one poll must not empty the known set for a moment.
const EmptySettle = time.Second

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
	go func() {
		tick := time.NewTicker(s.poll)
		defer tick.Stop()
		var changedAt time.Time // when the file last changed; zero: read since
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				// A changed file is read once it has stayed the same for a poll (an
				// empty one for EmptySettle): reading it mid-write would apply a
				// partial set.
				now := stampOf(s.path)
				if now.id != last.id {
					last, changedAt = now, time.Now()
					continue
				}
				if changedAt.IsZero() || (now.size == 0 && time.Since(changedAt) < EmptySettle) {
					continue
				}
				changedAt = time.Time{}
			case <-s.reload:
				last, changedAt = stampOf(s.path), time.Time{}
			}
			s.read(sink, r)
		}
	}()
	return nil
}

// read applies the file once more; on error the previous set stays.
func (s *Source) read(sink sasource.Sink, r sasource.Reporter) {
	sas, err := knownsa.ReadFile(s.path)
	if err == nil {
		err = sink(sas)
	}
	if err != nil {
		s.health.Failed(err)
		r.Failed(s.Name(), err)
		return
	}
	s.health.Synced(len(sas))
	r.Synced(s.Name(), len(sas))
}

// stamp tells a changed file: modification time, size and inode (an editor
// that writes a new file and renames it keeps the size and may keep the time).
type stamp struct {
	id   string
	size int64 // -1: missing
}

func stampOf(path string) stamp {
	st, err := os.Stat(path)
	if err != nil {
		return stamp{id: "missing", size: -1}
	}
	return stamp{id: fmt.Sprint(st.ModTime().UnixNano(), st.Size(), inode(st)), size: st.Size()}
}

func inode(st os.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Ino
	}
	return 0
}
