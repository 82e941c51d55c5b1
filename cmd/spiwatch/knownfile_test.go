// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/testenv"
)

// TestKnownFileFollowed: the known-SPI file is followed while spiwatch runs. An SA
// added within --rekey-grace of its SPI first showing up makes that row a rekey
// race; an SA removed makes its SPI stale when the peer goes on; a bad file keeps
// the previous set and says which line; SIGHUP re-reads.
func TestKnownFileFollowed(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swfile")
	dir := t.TempDir()
	file, logFile := filepath.Join(dir, "known"), filepath.Join(dir, "events.log")
	os.WriteFile(file, []byte("0x1000\n0x2000\n"), 0o600)
	s := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--known-file", file, "--json", "--interval", "100ms", "--top", "0",
		"--log-file", logFile, "--log-format", "json", "--rekey-grace", "30s", "--metrics-addr", "127.0.0.1:9467")
	verdicts := func() map[string]string {
		var o struct {
			UnknownSPIs []struct{ SPI, Src, Verdict string } `json:"unknown_spis"`
		}
		json.Unmarshal([]byte(<-s.lines), &o)
		m := map[string]string{}
		for _, u := range o.UnknownSPIs {
			m[u.SPI+" "+u.Src] = u.Verdict
		}
		return m
	}
	waitVerdict := func(key, want string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			if verdicts()[key] == want {
				return
			}
		}
		t.Fatalf("row %s never became %s", key, want)
	}

	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0x3000 src=198.51.100.3 count=10", "esp spi=0x2000 src=198.51.100.2 count=10"})
	waitVerdict("0x00003000 198.51.100.3", "unknown")

	// The SA for 0x3000 arrives (a rekey race); 0x2000's goes away.
	time.Sleep(20 * time.Millisecond) // a new mtime
	os.WriteFile(file, []byte("0x1000\n0x3000\n"), 0o600)
	waitVerdict("0x00003000 198.51.100.3", "rekey-race")
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0x2000 src=198.51.100.2 count=5"})
	waitVerdict("0x00002000 198.51.100.2", "stale")

	// A bad file keeps the set: 0x3000 still counts as known.
	os.WriteFile(file, []byte("0x1000\nnot-an-spi\n"), 0o600)
	if !s.waitStderr(file+":2:") || !s.waitStderr("keeping the previous 2 known SAs") {
		t.Errorf("no error naming the bad line: %s", s.stderr)
	}
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0x3000 src=198.51.100.3 count=7"})
	if got, found := value(t, scrape(t, lab.NSB, "127.0.0.1:9467"), "spiwatch_known_source_errors_total", map[string]string{"source": "file " + file}); !found || got != 1 {
		t.Errorf("spiwatch_known_source_errors_total = %v (found %v), want 1", got, found)
	}
	// SIGHUP re-reads even without a change of time or size.
	os.WriteFile(file, []byte("0x1000\n0x3000\n"), 0o600)
	s.cmd.Process.Signal(syscall.SIGHUP)
	if !s.waitStderr("reloaded " + file) {
		t.Errorf("SIGHUP did not reload: %s", s.stderr)
	}
	o := s.stop(t)
	for _, c := range o.Classes {
		// 10 of 0x2000 while it was known, 7 of 0x3000 while the bad file was ignored.
		if c.Class == "esp" && c.Outcomes["known"].Packets != 17 {
			t.Errorf("esp known %d, want 17", c.Outcomes["known"].Packets)
		}
	}
	b, _ := os.ReadFile(logFile)
	for _, want := range []string{`"event":"verdict_change"`, `"from":"unknown","verdict":"rekey-race"`, `"event":"source_error"`, `"event":"source_sync"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("event log lacks %s:\n%s", want, b)
		}
	}
}
