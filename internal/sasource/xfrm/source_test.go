// SPDX-License-Identifier: Apache-2.0

//go:build linux

package xfrm

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink/nl"

	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/maps"
)

// The parser's struct sizes are the kernel's, as the netlink library has them.
func TestLayout(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"xfrm_usersa_info", sizeUsersaInfo, nl.SizeofXfrmUsersaInfo},
		{"xfrm_usersa_id", sizeUsersaID, nl.SizeofXfrmUsersaId},
		{"xfrm_user_expire", sizeUserExpire, nl.SizeofXfrmUserExpire},
		{"xfrm_usersa_flush", sizeUsersaFlush, nl.SizeofXfrmUsersaFlush},
		{"xfrm_selector (offset of id)", offID, nl.SizeofXfrmSelector},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d bytes here, %d in the kernel's layout", c.name, c.got, c.want)
		}
	}
}

// Recorder is a sasource.Reporter and Sink that keeps what it hears.
type Recorder struct {
	mu      sync.Mutex
	Sets    [][]maps.SA
	Notices []string
	Errors  []error
}

func (r *Recorder) Sink(sas []maps.SA) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Sets = append(r.Sets, sas)
	return nil
}
func (r *Recorder) Synced(string, int) {}
func (r *Recorder) Failed(_ string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Errors = append(r.Errors, err)
}
func (r *Recorder) Notice(_, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Notices = append(r.Notices, msg)
}

// Start on a namespace of our own: the dump is empty, the events are followed,
// and cancelling stops following. (Adding ESP states needs a kernel with ESP:
// the VM test, make test-vm, does that.)
func TestStartEmptyNamespace(t *testing.T) {
	testenv.RequireBPF(t) // root
	src := New(Options{NetNS: emptyNS(t)})
	rec := &Recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	if err := src.Start(ctx, rec.Sink, rec); err != nil {
		cancel()
		t.Fatal(err)
	}
	st := src.Stats()
	if len(rec.Sets) != 1 || len(rec.Sets[0]) != 0 || st.Syncs != 1 || !st.Connected || st.Name != "xfrm" {
		t.Errorf("after Start: sets %v, stats %+v; want one empty set, 1 sync, connected", rec.Sets, st)
	}
	cancel()
	deadline := time.Now().Add(2 * time.Second)
	for src.Stats().Connected && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if src.Stats().Connected {
		t.Error("still following events 2 s after the context ended")
	}
}
