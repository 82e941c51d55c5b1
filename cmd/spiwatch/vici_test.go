// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/charonlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

// viciReport is what TestVICI reads from a JSON report.
type viciReport struct {
	UnknownSPIs []struct{ SPI, Src, Verdict string } `json:"unknown_spis"`
	KnownSAs    []struct {
		SPI, Dst string
		Packets  uint64
	} `json:"known_sas"`
	Sources []struct {
		Name       string `json:"name"`
		SAs        int    `json:"sas"`
		Connected  bool   `json:"connected"`
		Reconnects uint64 `json:"reconnects"`
		LastError  string `json:"last_error"`
	} `json:"known_sources"`
}

// TestVICI runs spiwatch --known-from vici=SOCKET on the responder's side of a
// tunnel between two real charons (kernel-libipsec, ESP in UDP): the tunnel's
// traffic counts on the SA charon reports, a rekeying by the peer leaves no
// unknown SPI beyond rekey races, and when the responder's charon is killed and
// restarted while the initiator goes on sending, spiwatch says it lost charon,
// reconnects, and shows the traffic as stale.
func TestVICI(t *testing.T) {
	testenv.RequireNetns(t)
	if miss := charonlab.Missing(); miss != "" {
		testenv.Unavailable(t, "needs strongSwan for a real charon: missing %s", miss)
	}
	spiwatch, _ := buildBinaries(t)
	lab := newLab(t, "swvici")
	tun, err := charonlab.NewTunnel(lab, t.TempDir(), charonlab.V4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tun.Close(); err != nil {
			t.Error(err)
		}
	})
	sock := tun.Responder.Socket
	s := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--known-from", "vici="+sock, "--json", "--interval", "100ms", "--top", "0")
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("spiwatch's stderr:\n%s", s.stderr)
		}
	})
	name := "vici " + sock
	if !s.waitStderr("spiwatch: "+name+": connected") || !s.waitStderr("known SAs from "+name+": 1") {
		t.Fatalf("spiwatch did not say it connected to charon")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := tun.Send(ctx, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}

	// next reads reports until cond holds for one, for at most 10 s.
	next := func(what string, cond func(r viciReport) bool) viciReport {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case line, ok := <-s.lines:
				if !ok {
					t.Fatalf("spiwatch ended while waiting for %s", what)
				}
				var r viciReport
				if err := json.Unmarshal([]byte(line), &r); err != nil {
					t.Fatalf("report %q: %v", line, err)
				}
				if cond(r) {
					return r
				}
			case <-deadline:
				t.Fatalf("no report with %s in 10 s", what)
			}
		}
	}
	hex := func(spi uint32) string { return fmt.Sprintf("0x%08x", spi) }
	counted := func(spi uint32, n uint64) func(viciReport) bool {
		return func(r viciReport) bool {
			for _, k := range r.KnownSAs {
				if k.SPI == hex(spi) && k.Dst == charonlab.V4.Responder.String() && k.Packets >= n {
					return true
				}
			}
			return false
		}
	}
	noUnknown := func(r viciReport, when string) {
		t.Helper()
		for _, u := range r.UnknownSPIs {
			if u.Verdict != "rekey-race" {
				t.Errorf("%s: unknown SPI %s from %s with verdict %s", when, u.SPI, u.Src, u.Verdict)
			}
		}
	}
	current := func() uint32 {
		t.Helper()
		c, err := tun.Initiator.Installed() // the initiator's outbound SPI is the responder's inbound one
		if err != nil {
			t.Fatal(err)
		}
		return c.SPIOut
	}

	first := current()
	r := next("the tunnel's traffic counted on SA "+hex(first), counted(first, 10))
	noUnknown(r, "before rekeying")

	if _, err := tun.Initiator.Swanctl("--rekey", "--child", charonlab.Child); err != nil {
		t.Fatal(err)
	}
	second := first
	for deadline := time.Now().Add(10 * time.Second); second == first && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		second = current()
	}
	if second == first {
		t.Fatal("the CHILD_SA was not rekeyed")
	}
	r = next("traffic counted on the rekeyed SA "+hex(second), counted(second, 5))
	noUnknown(r, "after rekeying")

	if err := tun.Responder.Kill(); err != nil {
		t.Fatal(err)
	}
	if !s.waitStderr("spiwatch: " + name + ": lost (") {
		t.Fatalf("spiwatch did not say it lost charon")
	}
	if err := tun.Responder.Restart(); err != nil {
		t.Fatal(err)
	}
	r = next("SA "+hex(second)+" stale and the source reconnected", func(r viciReport) bool {
		stale := false
		for _, u := range r.UnknownSPIs {
			stale = stale || (u.SPI == hex(second) && u.Verdict == "stale")
		}
		return stale && len(r.Sources) == 1 && r.Sources[0].Connected && r.Sources[0].Reconnects == 1
	})
	if src := r.Sources[0]; src.Name != name || src.SAs != 0 || src.LastError != "" {
		t.Errorf("source after the restart: %+v", src)
	}
	if n := strings.Count(s.stderr.String(), name+": connected"); n != 2 {
		t.Errorf("%d \"connected\" lines on stderr, want 2", n)
	}
	cancel()
	s.stop(t)
}
