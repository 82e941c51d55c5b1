// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

// saHealthOutput is the part of the JSON report the diagnosis tests read.
type saHealthOutput struct {
	Collisions int `json:"collisions"`
	Classes    []struct {
		Class    string `json:"class"`
		Outcomes map[string]struct {
			Packets uint64 `json:"packets"`
		} `json:"outcomes"`
		Dropped *struct{ Packets uint64 } `json:"unknown_dropped"`
		Passed  *struct{ Packets uint64 } `json:"unknown_passed"`
	} `json:"classes"`
	RateLimit *struct {
		Sources   int    `json:"sources"`
		Evictions uint64 `json:"evictions"`
	} `json:"rate_limit"`
	UnknownSPIs []struct {
		SPI     string `json:"spi"`
		Src     string `json:"src"`
		Packets uint64 `json:"packets"`
		Verdict string `json:"verdict"`
		Sources []struct {
			Addr string `json:"addr"`
			Port uint16 `json:"port"`
		} `json:"sources"`
	} `json:"unknown_spis"`
	KnownSAs []struct {
		SPI                string  `json:"spi"`
		Packets            uint64  `json:"packets"`
		Lost               uint64  `json:"lost"`
		LossRatio          float64 `json:"loss_ratio"`
		Late               uint64  `json:"late"`
		Duplicates         uint64  `json:"duplicates"`
		ReplaySuspect      uint64  `json:"replay_suspect"`
		Restarts           uint64  `json:"restarts"`
		ESNWraps           uint64  `json:"esn_wraps"`
		Collision          bool    `json:"collision"`
		OtherSourcePackets uint64  `json:"other_source_packets"`
		Sources            []struct {
			Addr string `json:"addr"`
			Port uint16 `json:"port"`
		} `json:"sources"`
	} `json:"known_sas"`
}

// stopDiag stops spiwatch and returns its last report as saHealthOutput.
func stopDiag(t *testing.T, s *started) (output, saHealthOutput) {
	t.Helper()
	if err := s.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	var last string
	for l := range s.lines {
		last = l
	}
	if err := <-s.done; err != nil {
		t.Fatalf("spiwatch exited with %v: %s", err, s.stderr)
	}
	var o output
	var d saHealthOutput
	if err := json.Unmarshal([]byte(last), &o); err != nil {
		t.Fatalf("last report %q: %v", last, err)
	}
	if err := json.Unmarshal([]byte(last), &d); err != nil {
		t.Fatalf("last report %q: %v", last, err)
	}
	return o, d
}

// runGenOnCPU runs the generator pinned to one CPU, so that every frame reaches
// the receiver's XDP program on that CPU (veth runs it where the frame was sent)
// and per-CPU state sees the frames in order.
func runGenOnCPU(t *testing.T, bin, ns, iface string, mix []string) {
	t.Helper()
	args := []string{"-c", "0", bin, "-i", iface}
	for _, s := range mix {
		args = append(args, "--send", s)
	}
	out, err := netlab.Command(ns, "taskset", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("generator: %v\n%s", err, out)
	}
}

// TestEndToEndDiagnosis: two sources sharing a known SA's SPI and an unknown
// SPI, an SA with induced gaps, reordering, a duplicate and a replay, one whose
// peer restarts its numbers, and an ESN wrap: JSON, metrics and the event log show
// each.
func TestEndToEndDiagnosis(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swdiag")
	logFile := filepath.Join(t.TempDir(), "events.log")
	known := []string{"--known-spi", "0x5000@203.0.113.1", "--known-spi", "0x6000@203.0.113.1",
		"--known-spi", "0x6001@203.0.113.1", "--known-spi", "0x6002@203.0.113.1", "--known-spi", "0x7000@2001:db8::2"}
	args := append([]string{"-i", lab.Receiver, "--json", "--interval", "100ms", "--top", "0", "--metrics-addr", ":9465",
		"--log-file", logFile, "--log-every", "0s"}, known...)
	s := startSpiwatch(t, spiwatch, lab.NSB, args...)

	seqs := func(spi string, ns ...uint32) []string {
		var out []string
		for _, n := range ns {
			out = append(out, fmt.Sprintf("esp spi=%s src=198.51.100.30 dst=203.0.113.1 seq=%d count=1", spi, n))
		}
		return out
	}
	mix := []string{
		// a known SA from two ports of one address behind a NAT, and from a second address
		"esp-in-udp spi=0x5000 src=198.51.100.10 dst=203.0.113.1 sport=4500 count=30",
		"esp-in-udp spi=0x5000 src=198.51.100.10 dst=203.0.113.1 sport=4501 count=20",
		// an IPv6 known SA from two addresses
		"esp spi=0x7000 src=2001:db8::10 dst=2001:db8::2 count=10",
		"esp spi=0x7000 src=2001:db8::11 dst=2001:db8::2 count=5",
		// an unknown SPI from two addresses
		"esp spi=0xc011 src=198.51.100.20 dst=203.0.113.1 count=5",
		"esp spi=0xc011 src=198.51.100.21 dst=203.0.113.1 count=7",
	}
	// 0x6000: 1..10 in order, 15 (4 skipped), 12 late, 15 again, 500 (484
	// skipped), 100 far behind: 487 lost, 1 late, 1 duplicate, 1 replay-suspect.
	mix = append(mix, seqs("0x6000", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 12, 15, 500, 100)...)
	mix = append(mix, seqs("0x6001", 70000, 70001, 1, 2, 3)...)           // restart
	mix = append(mix, seqs("0x6002", 0xfffffffe, 0xffffffff, 0, 1, 2)...) // ESN wrap
	total := uint64(30 + 20 + 10 + 5 + 5 + 7 + 15 + 5 + 5)
	runGenOnCPU(t, gen, lab.NSA, lab.Sender, mix)
	s.waitTotal(t, total)
	fams := scrape(t, lab.NSB, "127.0.0.1:9465")
	_, d := stopDiag(t, s)

	sa := map[string]int{}
	for i, k := range d.KnownSAs {
		sa[k.SPI] = i
	}
	k := d.KnownSAs[sa["0x00005000"]]
	if !k.Collision || len(k.Sources) != 2 || k.Packets != 50 || k.OtherSourcePackets != 20 {
		t.Errorf("known 0x5000: %+v, want a collision of 198.51.100.10:4500 and :4501, 20 packets from the second", k)
	}
	if k := d.KnownSAs[sa["0x00007000"]]; !k.Collision || len(k.Sources) != 2 || k.OtherSourcePackets != 5 {
		t.Errorf("known 0x7000 (IPv6): %+v, want a collision of 2 sources", k)
	}
	if k := d.KnownSAs[sa["0x00006000"]]; k.Collision || k.Lost != 487 || k.Late != 1 || k.Duplicates != 1 || k.ReplaySuspect != 1 ||
		k.Restarts != 0 || k.LossRatio < 0.97 {
		t.Errorf("known 0x6000: %+v, want 487 lost, 1 late, 1 duplicate, 1 replay-suspect", k)
	}
	if k := d.KnownSAs[sa["0x00006001"]]; k.Restarts != 1 || k.Lost != 0 || k.ReplaySuspect != 0 {
		t.Errorf("known 0x6001: %+v, want 1 restart", k)
	}
	if k := d.KnownSAs[sa["0x00006002"]]; k.ESNWraps != 1 || k.Lost != 0 || k.Restarts != 0 || k.ReplaySuspect != 0 {
		t.Errorf("known 0x6002: %+v, want 1 ESN wrap and nothing else", k)
	}
	coll := 0
	for _, u := range d.UnknownSPIs {
		if u.SPI == "0x0000c011" {
			coll++
			if u.Verdict != "collision" || len(u.Sources) != 2 {
				t.Errorf("unknown 0xc011 from %s: verdict %s, sources %v", u.Src, u.Verdict, u.Sources)
			}
		}
	}
	if coll != 2 || d.Collisions != 3 {
		t.Errorf("%d rows of 0xc011, %d collisions; want 2 rows and 3 collisions (0x5000, 0x7000, 0xc011)", coll, d.Collisions)
	}

	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"spiwatch_sa_collision", map[string]string{"spi": "0x00005000"}, 1},
		{"spiwatch_sa_collision", map[string]string{"spi": "0x00006000"}, 0},
		{"spiwatch_sa_other_source_packets_total", map[string]string{"spi": "0x00005000"}, 20},
		{"spiwatch_sa_lost_packets", map[string]string{"spi": "0x00006000"}, 487},
		{"spiwatch_sa_replay_suspect_packets_total", map[string]string{"spi": "0x00006000"}, 1},
		{"spiwatch_sa_restarts_total", map[string]string{"spi": "0x00006001"}, 1},
		{"spiwatch_spi_collisions", nil, 3},
		{"spiwatch_unknown_spi_packets_total", map[string]string{"spi": "0x0000c011", "src": "198.51.100.21", "verdict": "collision"}, 7},
	} {
		if got, found := value(t, fams, c.name, c.labels); !found || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, got, found, c.want)
		}
	}

	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	log := string(b)
	for _, want := range []string{
		"event=sa_collision", "spi=0x00005000", "198.51.100.10:4500", "198.51.100.10:4501", "2001:db8::11",
		"event=sa_restart msg=", "spi=0x00006001",
		"event=sa_replay_suspect", "verdict=collision",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("event log lacks %q:\n%s", want, log)
		}
	}
}

// TestEndToEndDropAbove: a flood of unknown SPIs from one address against
// --drop-above 100 is cut, while a peer with a stale SA sending a few packets a
// second still passes and shows in the table, as does a known SA from the
// flooding address. Drops and passes are reported apart and match what the
// receiver's stack got.
func TestEndToEndDropAbove(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swrate")
	delivered := listen(t, lab.NSB, lab.Receiver)
	args := []string{"-i", lab.Receiver, "--action", "drop", "--drop-above", "100", "--json", "--interval", "100ms", "--top", "0",
		"--metrics-addr", ":9466", "--known-spi", "0x1000"}
	s := startSpiwatch(t, spiwatch, lab.NSB, args...)
	if !s.waitStderr("dropped above 100 per second per source address") {
		t.Errorf("stderr does not say what is dropped: %s", s.stderr)
	}
	const flood = 5000
	mix := []string{
		fmt.Sprintf("esp spi=0xf100d spis=1000 src=192.0.2.66 dst=203.0.113.1 count=%d", flood),
		"esp spi=0x1000 src=192.0.2.66 dst=203.0.113.1 count=200",
		"esp spi=0x57a1e src=198.51.100.50 dst=203.0.113.1 count=50",
	}
	runGenOnCPU(t, gen, lab.NSA, lab.Sender, mix)
	s.waitTotal(t, flood+250)
	fams := scrape(t, lab.NSB, "127.0.0.1:9466")
	o, d := stopDiag(t, s)
	got := delivered()

	var esp = -1
	for i, c := range d.Classes {
		if c.Class == "esp" {
			esp = i
		}
	}
	c := d.Classes[esp]
	unknown := c.Outcomes["unknown"].Packets
	if c.Dropped == nil || c.Passed == nil || c.Dropped.Packets+c.Passed.Packets != unknown || unknown != flood+50 {
		t.Fatalf("esp unknown %d, dropped %+v, passed %+v; want %d split in two", unknown, c.Dropped, c.Passed, flood+50)
	}
	// One CPU's bucket (100) plus refill while the flood lasted, the stale peer's 50,
	// and at most one more bucket per CPU should the frames not stay on one.
	most := uint64(100*runtime.NumCPU() + 50 + 100)
	t.Logf("%d unknown-SPI packets dropped, %d passed", c.Dropped.Packets, c.Passed.Packets)
	if c.Passed.Packets < 150 || c.Passed.Packets > most {
		t.Errorf("%d unknown-SPI packets passed, want 150..%d", c.Passed.Packets, most)
	}
	if got["esp/unknown"] != c.Passed.Packets || got["esp/known"] != 200 {
		t.Errorf("the stack got %d unknown-SPI and %d known packets; the report says %d passed, and 200 known were sent",
			got["esp/unknown"], got["esp/known"], c.Passed.Packets)
	}
	stale := false
	for _, u := range d.UnknownSPIs {
		if u.SPI == "0x00057a1e" && u.Src == "198.51.100.50" && u.Packets == 50 {
			stale = true
		}
	}
	if !stale {
		t.Errorf("the stale peer's 50 packets are not in the table: %+v", o.UnknownSPIs)
	}
	if d.RateLimit == nil || d.RateLimit.Sources != 2 || d.RateLimit.Evictions != 0 {
		t.Errorf("rate_limit %+v, want 2 sources", d.RateLimit)
	}
	if v, found := value(t, fams, "spiwatch_unknown_dropped_packets_total", map[string]string{"class": "esp"}); !found || uint64(v) != c.Dropped.Packets {
		t.Errorf("spiwatch_unknown_dropped_packets_total{class=esp} = %v, the report says %d", v, c.Dropped.Packets)
	}
	if v, found := value(t, fams, "spiwatch_unknown_passed_packets_total", map[string]string{"class": "esp"}); !found || uint64(v) != c.Passed.Packets {
		t.Errorf("spiwatch_unknown_passed_packets_total{class=esp} = %v, the report says %d", v, c.Passed.Packets)
	}
	if v, _ := value(t, fams, "spiwatch_drop_rate_sources", nil); v != 2 {
		t.Errorf("spiwatch_drop_rate_sources = %v, want 2", v)
	}
}

// saHealthMix has a known SA (0x5000) from two UDP ports of one address, an unknown
// SPI from two addresses, and a flood from one address.
var saHealthMix = []string{
	"esp-in-udp spi=0x5000 src=198.51.100.10 dst=203.0.113.1 sport=4500 count=30",
	"esp-in-udp spi=0x5000 src=198.51.100.10 dst=203.0.113.1 sport=4501 count=20",
	"esp spi=0xc011 src=198.51.100.20 dst=203.0.113.1 count=5",
	"esp spi=0xc011 src=198.51.100.21 dst=203.0.113.1 count=7",
	"esp spi=0xf100d src=192.0.2.66 dst=203.0.113.1 count=500",
}

// TestLiveViewDiagnosis: the live view (in a real terminal) and the plain text
// report show a known SA's collision first, the collision verdict with its
// sources, the known SA's concerns, and drops apart from passes.
func TestLiveViewDiagnosis(t *testing.T) {
	testenv.RequireNetns(t)
	if _, err := exec.LookPath("tmux"); err != nil {
		testenv.Unavailable(t, "needs tmux for a real terminal")
	}
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swdtui")
	sock := t.TempDir() + "/tmux.sock"
	cmd := fmt.Sprintf("ip netns exec %s %s -i %s --known-spi 0x5000 --action drop --drop-above 50 --interval 200ms; echo SHELL-BACK; sleep 30",
		lab.NSB, spiwatch, lab.Receiver)
	tmux(t, sock, "new-session", "-d", "-s", "sw", "-x", "200", "-y", "40", cmd)
	defer exec.Command("tmux", "-S", sock, "kill-server").Run()
	waitScreen(t, sock, "sorted by rate", "DROPPING unknown-SPI packets above 50 pkt/s per source")
	runGenOnCPU(t, gen, lab.NSA, lab.Sender, saHealthMix)
	screen := waitScreen(t, sock,
		"COLLISION: known SA 0x00005000@any receives ESP from 2 sources within 30s",
		"known SAs with concerns: 1", "(20 packets from other than the first)",
		"esp            dropped", "esp            passed", "rate limit: 3 sources with a bucket")
	n := 0
	for _, l := range strings.Split(screen, "\n") {
		if strings.HasPrefix(l, "0x0000c011") {
			n++
			if !strings.HasSuffix(strings.TrimSpace(l), "collision") {
				t.Errorf("row %q: want verdict collision", l)
			}
		}
	}
	if n != 2 {
		t.Errorf("%d rows of 0xc011, want 2:\n%s", n, screen)
	}
	tmux(t, sock, "send-keys", "-t", "sw", "q")
	waitScreen(t, sock, "SHELL-BACK")

	// The same in the plain text report.
	lab2 := newLab(t, "swdtxt")
	s := startSpiwatch(t, spiwatch, lab2.NSB, "-i", lab2.Receiver, "--plain", "--known-spi", "0x5000", "--interval", "200ms")
	runGenOnCPU(t, gen, lab2.NSA, lab2.Sender, saHealthMix)
	wants := []string{
		"COLLISION: known SA 0x00005000@any receives ESP from 2 sources within 30s: 198.51.100.10:45",
		"0x00005000@any", "COLLISION", "collision",
	}
	var report []string
	deadline := time.After(15 * time.Second)
	for done := false; !done; {
		select {
		case l, ok := <-s.lines:
			if !ok {
				t.Fatalf("spiwatch ended: %s", s.stderr)
			}
			if strings.HasPrefix(l, "20") && strings.Contains(l, "  known SAs ") {
				report = report[:0] // a new report starts with its header line
			}
			report = append(report, l)
			text := strings.Join(report, "\n")
			// Reports go on while the generator's streams arrive: wait for one
			// that has seen them all (the second source of 0xc011 makes its
			// rows collide).
			done = strings.Contains(text, "known SAs with traffic: 1 of 1")
			for _, want := range wants {
				done = done && strings.Contains(text, want)
			}
		case <-deadline:
			t.Fatalf("no report with %q within 15 s; the last:\n%s", wants, strings.Join(report, "\n"))
		}
	}
}
