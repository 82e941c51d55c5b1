// SPDX-License-Identifier: Apache-2.0

package vici

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/charonlab"
	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/maps"
)

// charonPID finds the charon started with the configuration in dir.
func charonPID(t *testing.T, dir string) int {
	t.Helper()
	want := []byte("STRONGSWAN_CONF=" + filepath.Join(dir, "strongswan.conf"))
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
		if strings.TrimSpace(string(comm)) != "charon" {
			continue
		}
		env, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
		if bytes.Contains(env, want) {
			return pid
		}
	}
	t.Fatalf("no charon with %s", want)
	return 0
}

// sinkLog is a sasource.Sink that keeps every set it is given, and refuses them
// while refusing is set.
type sinkLog struct {
	mu       sync.Mutex
	sets     [][]maps.SA // taken
	refusing bool
	refused  int
}

func (k *sinkLog) sink(sas []maps.SA) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.refusing {
		k.refused++
		return errors.New("known-SA map full")
	}
	k.sets = append(k.sets, sas)
	return nil
}

func (k *sinkLog) last() []maps.SA {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.sets[len(k.sets)-1]
}

func (k *sinkLog) refuse(on bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.refusing = on
}

func (k *sinkLog) refusals() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.refused
}

// startLab starts a tunnel between two real charons and the source on the
// responder's, its sets going to k; the responder's one SA is applied.
func startLab(t *testing.T, name string, k *sinkLog) (*charonlab.Tunnel, *Source, *recorder) {
	t.Helper()
	testenv.RequireNetns(t)
	if miss := charonlab.Missing(); miss != "" {
		testenv.Unavailable(t, "needs strongSwan for a real charon: missing %s", miss)
	}
	lab, err := netlab.New(name)
	if err != nil {
		t.Fatalf("creating lab: %v", err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("removing lab: %v", err)
		}
	})
	tun, err := charonlab.NewTunnel(lab, t.TempDir(), charonlab.V4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tun.Close(); err != nil {
			t.Error(err)
		}
	})
	src := New(tun.Responder.Socket)
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := src.Start(ctx, k.sink, rec); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { t.Logf("source said:\n%s\nstats: %+v", rec, src.Stats()) })
	if got := k.last(); len(got) != 1 {
		t.Fatalf("after Start: %v, want the tunnel's SA", got)
	}
	return tun, src, rec
}

// TestSlowCharonKeepsSet stops the responder's charon (SIGSTOP: as a charon too
// busy to answer) while the source polls it: the re-read times out after 10 s
// and the connection is given up, but the set stays what charon last listed, the
// error counted and shown, and reconnections time out without emptying it. Once
// charon answers again, the source reconnects and its list-sas replaces the set.
func TestSlowCharonKeepsSet(t *testing.T) {
	k := &sinkLog{}
	tun, src, rec := startLab(t, "sws", k)
	pid := charonPID(t, tun.Responder.Dir)
	// A rekeying leaves the old CHILD_SA REKEYED for a while: the source polls.
	if _, err := tun.Responder.Swanctl("--rekey", "--child", charonlab.Child); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the rekeyed SA", func() bool { return len(k.last()) == 2 })
	kept := k.last()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	})
	stopped := time.Now()
	for time.Since(stopped) < 14*time.Second { // the first timeout, and a reconnection's
		if got := k.last(); !slices.Equal(got, kept) {
			t.Fatalf("%v after charon stopped answering (its SAs all still installed): set %v, want %v kept",
				time.Since(stopped).Round(time.Second), got, kept)
		}
		time.Sleep(100 * time.Millisecond)
	}
	st := src.Stats()
	if st.Connected || st.SAs != len(kept) || st.Errors == 0 || st.LastError == "" {
		t.Errorf("charon stopped for 14 s: %+v, want not connected, %d SAs, the error counted and shown", st, len(kept))
	}
	if rec.count("notice: lost (") != 1 || !strings.Contains(rec.String(), "keeping its 2 SAs") {
		t.Errorf("want one \"lost\" notice saying the 2 SAs are kept")
	}

	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true
	waitFor(t, 20*time.Second, "the source did not reconnect to the resumed charon", func() bool { return src.Stats().Connected })
	waitFor(t, 15*time.Second, "the set is not what charon lists", func() bool {
		c, err := tun.Responder.Installed()
		return err == nil && slices.Equal(k.last(), []maps.SA{{SPI: c.SPIIn, Dst: charonlab.V4.Responder}})
	})
	if st := src.Stats(); st.Reconnects != 1 || st.LastError != "" {
		t.Errorf("after charon answered again: %+v, want 1 reconnect and the error cleared", st)
	}
}

// TestRefusedSetRetried has the sink refuse the set that a CHILD_SA's deletion
// leaves (as a known-SA map error would) at the change's event and re-read, then
// take sets again: with charon changing nothing more, the source offers the set
// again within a second and it is applied.
func TestRefusedSetRetried(t *testing.T) {
	k := &sinkLog{}
	tun, src, rec := startLab(t, "swf", k)
	k.refuse(true)
	// Deleted at once (swanctl waits for it): nothing left makes the source poll.
	if _, err := tun.Responder.Swanctl("--terminate", "--child", charonlab.Child); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the deletion was not offered", func() bool { return k.refusals() >= 1 })
	time.Sleep(1500 * time.Millisecond) // well past the re-read that follows the event
	errs := src.Stats().Errors
	if errs == 0 || !strings.Contains(src.Stats().LastError, "applying 0 SAs: known-SA map full") {
		t.Errorf("while refused: %+v, want the refusal counted and shown", src.Stats())
	}
	k.refuse(false)
	waitFor(t, 3*time.Second, "the refused set was not offered again", func() bool { return len(k.last()) == 0 })
	if st := src.Stats(); st.SAs != 0 || st.LastError != "" || st.Errors < uint64(k.refusals()) {
		t.Errorf("after the retry: %+v, want no SA, the error cleared, each of the %d refusals counted", st, k.refusals())
	}
	if n := rec.count("failed: applying 0 SAs"); n != k.refusals() {
		t.Errorf("%d refusals reported, want %d", n, k.refusals())
	}
}
