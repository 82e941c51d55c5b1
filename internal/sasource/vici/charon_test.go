// SPDX-License-Identifier: Apache-2.0

package vici

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/charonlab"
	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/knownset"
	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

// recorder is a sasource.Reporter that keeps what it hears.
type recorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, s)
}
func (r *recorder) Synced(src string, n int)      { r.add(fmt.Sprintf("synced %d", n)) }
func (r *recorder) Failed(src string, err error)  { r.add("failed: " + err.Error()) }
func (r *recorder) Notice(src string, msg string) { r.add("notice: " + msg) }

func (r *recorder) count(prefix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, l := range r.lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.lines, "\n")
}

// waitFor polls cond every 20 ms until it holds or d has passed.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCharon runs two real charons joined by a veth, the responder's veth end
// watched by the classifier whose known SAs come from the responder's charon over
// VICI: the tunnel's traffic counts as known ESP-in-UDP on the SPI VICI reported,
// rekeyings (by either side) leave no unknown SPI beyond rekey races. When the
// responder's charon is killed, its SA (still in the kernel) stays known, the loss
// counted and said; after the restart the source reconnects and says so, and the
// initiator's traffic on the SA the new charon does not list is stale. Over IPv4
// and over IPv6.
func TestCharon(t *testing.T) {
	testenv.RequireNetns(t)
	if miss := charonlab.Missing(); miss != "" {
		testenv.Unavailable(t, "needs strongSwan for a real charon: missing %s", miss)
	}
	t.Run("ipv4", func(t *testing.T) { testCharon(t, charonlab.V4) })
	t.Run("ipv6", func(t *testing.T) { testCharon(t, charonlab.V6) })
}

func testCharon(t *testing.T, addrs charonlab.Addrs) {
	lab, err := netlab.New("swv")
	if err != nil {
		t.Fatalf("creating lab: %v", err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("removing lab: %v", err)
		}
	})
	tun, err := charonlab.NewTunnel(lab, t.TempDir(), addrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("initiator's charon log:\n%s\nresponder's charon log:\n%s", tun.Initiator.Log(), tun.Responder.Log())
		}
		if err := tun.Close(); err != nil {
			t.Error(err)
		}
	})

	objs, err := loader.Load(loader.Settings{})
	if err != nil {
		t.Fatalf("loading: %v", err)
	}
	t.Cleanup(func() { objs.Close() })
	if err := netlab.In(lab.NSB, func() error {
		_, err := objs.Attach(lab.Receiver, loader.ModeAuto, false)
		return err
	}); err != nil {
		t.Fatalf("attaching to %s: %v", lab.Receiver, err)
	}

	known := knownset.New(objs.Maps, time.Minute, knownset.DefaultRekeyGrace)
	src := New(tun.Responder.Socket)
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := src.Start(ctx, func(sas []maps.SA) error { return known.Update(src.Name(), sas) }, rec); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { t.Logf("source said:\n%s\nstats: %+v", rec, src.Stats()) })
	if st := src.Stats(); !st.Connected || st.SAs != 1 || st.Syncs != 1 {
		t.Fatalf("after Start: %+v, want connected with 1 SA", st)
	}

	// What the responder's inbound SPI is, asked of the other charon: the
	// initiator's outbound SPI.
	outSPI := func() uint32 {
		t.Helper()
		c, err := tun.Initiator.Installed()
		if err != nil {
			t.Fatal(err)
		}
		return c.SPIOut
	}
	sa := func(spi uint32) maps.SA { return maps.SA{SPI: spi, Dst: addrs.Responder} }
	isKnown := func(spi uint32) bool { return len(known.SourcesOf(sa(spi))) > 0 }
	packets := func(spi uint32) uint64 {
		t.Helper()
		list, err := objs.Maps.ListKnown()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range list {
			if k.SA == sa(spi) {
				return k.Packets
			}
		}
		return 0
	}
	// verdicts of every unknown-SPI row, by SPI.
	verdicts := func() map[uint32]string {
		t.Helper()
		rows, err := objs.Maps.UnknownSnapshot()
		if err != nil {
			t.Fatal(err)
		}
		v := map[uint32]string{}
		for _, u := range rows {
			v[u.SPI] = known.Verdict(u.SPI, u.Dst, report.MonoToWall(u.FirstSeenNs), report.MonoToWall(u.LastSeenNs))
		}
		return v
	}
	noUnknown := func(when string) {
		t.Helper()
		for spi, v := range verdicts() {
			if v != knownset.RekeyRace {
				t.Errorf("%s: SPI 0x%08x is %s, want no unknown SPI but rekey races", when, spi, v)
			} else {
				t.Logf("%s: SPI 0x%08x: rekey-race", when, spi)
			}
		}
	}

	first := outSPI()
	if !isKnown(first) {
		t.Fatalf("the responder's inbound SPI 0x%08x is not among the known SAs %v", first, known.SourcesOf(sa(first)))
	}
	if err := tun.Send(ctx, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "no traffic counted on the tunnel's SA", func() bool { return packets(first) >= 10 })
	espInUDP := func(o classify.Outcome) uint64 {
		t.Helper()
		c, err := objs.Maps.Counters(0)
		if err != nil {
			t.Fatal(err)
		}
		return c[classify.ClassESPInUDP][o].Packets
	}
	if k, u := espInUDP(classify.OutcomeKnown), espInUDP(classify.OutcomeUnknown); k < 10 || u != 0 {
		t.Errorf("ESP-in-UDP: %d known, %d unknown; want at least 10 known, none unknown", k, u)
	}
	noUnknown("before rekeying")

	// Rekeyings: one started by the peer (the new inbound SPI is used by the
	// initiator as soon as it has the answer), one by the watched charon.
	prev := first
	for _, by := range []struct {
		name string
		c    *charonlab.Charon
	}{{"initiator", tun.Initiator}, {"responder", tun.Responder}} {
		if _, err := by.c.Swanctl("--rekey", "--child", charonlab.Child); err != nil {
			t.Fatal(err)
		}
		var next uint32
		waitFor(t, 10*time.Second, "the CHILD_SA was not rekeyed", func() bool {
			c, err := tun.Initiator.Installed()
			next = c.SPIOut
			return err == nil && next != prev
		})
		waitFor(t, 5*time.Second, fmt.Sprintf("no traffic counted on the rekeyed SA 0x%08x", next), func() bool { return packets(next) >= 5 })
		noUnknown("after the rekeying by the " + by.name)
		prev = next
	}
	// The rekeyed SAs leave charon a few seconds later (delete_rekeyed_delay)
	// without any event: the source's polling removes them.
	waitFor(t, 15*time.Second, "the rekeyed SAs are still known", func() bool { return !isKnown(first) && src.Stats().SAs == 1 })
	if !isKnown(prev) {
		t.Fatalf("the current SA 0x%08x is not known", prev)
	}

	// The responder's charon dies; the initiator goes on sending on the SA.
	if err := tun.Responder.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the source did not notice charon going away", func() bool { return !src.Stats().Connected })
	if !isKnown(prev) {
		t.Errorf("SA 0x%08x forgotten when its charon died, want it kept until a charon lists the SAs again", prev)
	}
	if st := src.Stats(); st.SAs != 1 || st.Errors == 0 || !strings.Contains(st.LastError, "charon closed the connection") {
		t.Errorf("charon gone: %+v, want its SA kept and the loss counted and shown", st)
	}
	if err := tun.Responder.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the source did not reconnect", func() bool { return src.Stats().Connected })
	unknownBefore := espInUDP(classify.OutcomeUnknown) // the initiator goes on sending: counted as unknown, verdict stale
	waitFor(t, 5*time.Second, fmt.Sprintf("no stale row for SPI 0x%08x", prev), func() bool { return verdicts()[prev] == knownset.Stale })
	for spi, v := range verdicts() {
		if spi != prev && v != knownset.RekeyRace {
			t.Errorf("after the restart: SPI 0x%08x is %s", spi, v)
		}
	}
	waitFor(t, 5*time.Second, "ESP-in-UDP with an unknown SPI not growing after the restart", func() bool {
		return espInUDP(classify.OutcomeUnknown) >= unknownBefore+5
	})
	st := src.Stats()
	if st.Reconnects != 1 || st.SAs != 0 || st.LastError != "" {
		t.Errorf("after the restart: %+v, want 1 reconnect, no SA, no error", st)
	}
	if n := rec.count("notice: connected"); n != 2 {
		t.Errorf("%d \"connected\" notices, want 2", n)
	}
	if n := rec.count("notice: lost"); n != 1 {
		t.Errorf("%d \"lost\" notices, want 1", n)
	}
}

// TestCharonLate starts the source before charon, as at boot when spiwatch comes
// up first: Start returns nil, the source retries, connects when charon is there
// and follows the tunnel set up after it.
func TestCharonLate(t *testing.T) {
	testenv.RequireNetns(t)
	if miss := charonlab.Missing(); miss != "" {
		testenv.Unavailable(t, "needs strongSwan for a real charon: missing %s", miss)
	}
	lab, err := netlab.New("swl")
	if err != nil {
		t.Fatalf("creating lab: %v", err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("removing lab: %v", err)
		}
	})
	dir := t.TempDir()
	src := New(filepath.Join(dir, "responder", "charon.vici")) // where charonlab will put it
	rec := &recorder{}
	var sets [][]maps.SA
	var mu sync.Mutex
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := src.Start(ctx, func(sas []maps.SA) error {
		mu.Lock()
		defer mu.Unlock()
		sets = append(sets, sas)
		return nil
	}, rec); err != nil {
		t.Fatalf("Start before charon: %v, want nil", err)
	}
	t.Cleanup(func() { t.Logf("source said:\n%s\nstats: %+v", rec, src.Stats()) })
	if src.Stats().Connected || rec.count("notice: not connected, retrying") != 1 {
		t.Fatalf("before charon: %+v\n%s", src.Stats(), rec)
	}
	time.Sleep(time.Second) // a few failed tries

	tun, err := charonlab.NewTunnel(lab, dir, charonlab.V4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tun.Close(); err != nil {
			t.Error(err)
		}
	})
	want, err := tun.Initiator.Installed()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the source did not connect to the late charon", func() bool { return src.Stats().Connected })
	waitFor(t, 5*time.Second, "the tunnel's SA was not applied", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(sets) > 0 && slices.Equal(sets[len(sets)-1], []maps.SA{{SPI: want.SPIOut, Dst: charonlab.V4.Responder}})
	})
	if st := src.Stats(); st.Reconnects != 0 || st.LastError != "" {
		t.Errorf("after connecting: %+v, want no reconnect (the first connection) and no error", st)
	}
}
