// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/testenv"
)

// TestKnownFileFollowed: the known-SPI file is followed while spiwatch runs. An SA
// added within --rekey-grace of its SPI first showing up makes that row a rekey
// race; an SA removed makes its SPI stale when the peer goes on; a bad file keeps
// the previous set and says which line; SIGHUP re-reads. Each known SA names the
// sources that gave it.
func TestKnownFileFollowed(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swfile")
	dir := t.TempDir()
	file, logFile := filepath.Join(dir, "known"), filepath.Join(dir, "events.log")
	os.WriteFile(file, []byte("0x1000\n0x2000\n"), 0o600)
	s := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--known-file", file, "--known-spi", "0x1000", "--json", "--interval", "100ms", "--top", "0",
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
	page := scrape(t, lab.NSB, "127.0.0.1:9467")
	for metric, want := range map[string]float64{"spiwatch_known_source_errors_total": 1, "spiwatch_known_source_sas": 2, "spiwatch_known_source_up": 1} {
		if got, found := value(t, page, metric, map[string]string{"source": "file " + file}); !found || got != want {
			t.Errorf("%s = %v (found %v), want %v", metric, got, found, want)
		}
	}
	// The rekey race's 10 packets apart from the stale SA's 5 (the first 10 of
	// 0x2000 were known; the 7 of 0x3000 just sent are known).
	wantVerdicts := map[string]uint64{"unknown": 0, "stale": 5, "rekey-race": 10, "collision": 0, "reserved": 0}
	for v, want := range wantVerdicts {
		if got, found := value(t, page, "spiwatch_unknown_verdict_packets", map[string]string{"verdict": v}); !found || uint64(got) != want {
			t.Errorf("spiwatch_unknown_verdict_packets{verdict=%q} = %v (found %v), want %d", v, got, found, want)
		}
	}
	var src struct {
		Sources []struct {
			Name      string `json:"name"`
			SAs       int    `json:"sas"`
			Errors    int    `json:"errors"`
			LastError string `json:"last_error"`
		} `json:"known_sources"`
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); { // past the lines written before the error
		json.Unmarshal([]byte(<-s.lines), &src)
		if len(src.Sources) == 1 && src.Sources[0].Errors > 0 {
			break
		}
	}
	if len(src.Sources) != 1 || src.Sources[0].Name != "file "+file || src.Sources[0].SAs != 2 || src.Sources[0].Errors != 1 ||
		!strings.Contains(src.Sources[0].LastError, file+":2:") {
		t.Errorf("known_sources %+v, want the file with 2 SAs, 1 error naming line 2", src.Sources)
	}
	// The file mended: read once it settles. Then SIGHUP re-reads it though
	// nothing changed: one more sync line.
	synced := "known SAs from file " + file + ": 2"
	before := strings.Count(s.stderr.String(), synced)
	os.WriteFile(file, []byte("0x1000\n0x3000\n"), 0o600)
	waitCount := func(what string, n int) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if strings.Count(s.stderr.String(), synced) >= n {
				return
			}
		}
		t.Fatalf("%s: %d lines %q, want %d: %s", what, strings.Count(s.stderr.String(), synced), synced, n, s.stderr)
	}
	waitCount("the mended file", before+1)
	time.Sleep(600 * time.Millisecond) // two polls: no further read without a change
	if n := strings.Count(s.stderr.String(), synced); n != before+1 {
		t.Fatalf("an unchanged file was read again: %d sync lines, want %d", n, before+1)
	}
	s.cmd.Process.Signal(syscall.SIGHUP)
	waitCount("SIGHUP", before+2)
	o := s.stop(t)
	for _, c := range o.Classes {
		// 10 of 0x2000 while it was known, 7 of 0x3000 while the bad file was ignored.
		if c.Class == "esp" && c.Outcomes["known"].Packets != 17 {
			t.Errorf("esp known %d, want 17", c.Outcomes["known"].Packets)
		}
	}
	if !reflect.DeepEqual(o.UnknownByVerdict, wantVerdicts) {
		t.Errorf("unknown_by_verdict %v, want %v", o.UnknownByVerdict, wantVerdicts)
	}
	from := map[string][]string{}
	for _, k := range o.KnownSAs {
		from[k.SPI+"@"+k.Dst] = k.From
	}
	want := map[string][]string{"0x00001000@any": {"--known-spi", "file " + file}, "0x00003000@any": {"file " + file}}
	if !reflect.DeepEqual(from, want) {
		t.Errorf("known SAs from %q, want %q", from, want)
	}
	b, _ := os.ReadFile(logFile)
	for _, want := range []string{`"event":"verdict_change"`, `"from":"unknown","verdict":"rekey-race"`, `"event":"source_error"`, `"event":"source_sync"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("event log lacks %s:\n%s", want, b)
		}
	}
}

// TestStartupKnownTotal: with several known-SA sources, which start one after
// another, start-up never gives a total that leaves out the sources still to
// come ("known SAs from xfrm: 0 (0 known SAs in all)" before the file's are
// counted): each total printed is the final one, and one line, after all
// initial loads, gives it with every source's share.
func TestStartupKnownTotal(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, _ := buildBinaries(t)
	lab := newLab(t, "swstart")
	file := filepath.Join(t.TempDir(), "known")
	os.WriteFile(file, []byte("0x1000\n0x2000\n0x3000@203.0.113.1\n"), 0o600)
	s := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--known-from", "xfrm", "--known-file", file,
		"--known-spi", "0x1000", "--json", "--interval", "100ms")
	s.stop(t)
	stderr := s.stderr.String()
	totals := regexp.MustCompile(`(\d+) known SAs? in all|(\d+) in all`).FindAllStringSubmatch(stderr, -1)
	for _, m := range totals {
		if m[1]+m[2] != "3" {
			t.Errorf("start-up says %q; the known SAs are 3 in all:\n%s", m[0], stderr)
		}
	}
	want := "spiwatch: known SAs at start: 3 in all (--known-spi 1, xfrm 0, file " + file + " 3)\n"
	if !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
}
