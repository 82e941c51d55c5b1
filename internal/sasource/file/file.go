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
	stamp := stampOf(s.path)
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
		settling := false
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				// A changed file is read once it has stayed the same for a poll: a
				// file rewritten in place is empty between truncate and write, and
				// reading it then would empty the set.
				now := stampOf(s.path)
				if now != stamp {
					stamp, settling = now, true
					continue
				}
				if !settling {
					continue
				}
				settling = false
			case <-s.reload:
				stamp, settling = stampOf(s.path), false
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

// stampOf tells a changed file: modification time, size and inode (an editor
// that writes a new file and renames it keeps the size and may keep the time).
func stampOf(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	return fmt.Sprint(st.ModTime().UnixNano(), st.Size(), inode(st))
}

func inode(st os.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Ino
	}
	return 0
}
