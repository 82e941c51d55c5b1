// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

// soakDuration is 60 s unless SPIWATCH_SOAK says otherwise (make soak: 10m).
func soakDuration(t *testing.T) time.Duration {
	if v := os.Getenv("SPIWATCH_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SPIWATCH_SOAK=%q: %v", v, err)
		}
		return d
	}
	if testing.Short() {
		t.Skip("skipped with -short: a 60-second soak")
	}
	return time.Minute
}

// TestSoak floods spiwatch with random SPIs from 1,000 sources, mixed with known-SA
// traffic, and samples it every 10 s through its metrics: memory, goroutines and
// open files must stay flat, evictions must be reported, and the known SA's count
// must be exact at the end (its statistics live apart from the unknown table, so
// the flood cannot evict them).
func TestSoak(t *testing.T) {
	testenv.RequireNetns(t)
	d := soakDuration(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swsoak")
	s := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--json", "--interval", "1s", "--top", "20",
		"--known-spi", "0xc0000001@203.0.113.1", "--metrics-addr", "127.0.0.1:9468", "--log-file", os.DevNull)
	go func() { // keep the report pipe drained
		for range s.lines {
		}
	}()

	genDone := make(chan string, 1)
	go func() {
		out, err := netlab.Command(lab.NSA, gen, "-i", lab.Sender, "--duration", d.String(),
			"--send", "esp spi=0xc0000001 src=198.51.100.1 dst=203.0.113.1 count=10000",
			"--send", "esp spi=0x20000000 spis=1000000 srcs=1000 src=198.18.0.1 dst=198.19.0.1 count=80000").Output()
		if err != nil {
			out = []byte("generator: " + err.Error())
		}
		genDone <- string(out)
	}()

	type sample struct{ rss, goroutines, fds, evictions, heap, sys float64 }
	var samples []sample
	take := func() sample {
		f := scrape(t, lab.NSB, "127.0.0.1:9468")
		g := func(name string) float64 { v, _ := value(t, f, name, nil); return v }
		return sample{g("process_resident_memory_bytes"), g("go_goroutines"), g("process_open_fds"), g("spiwatch_unknown_table_evictions_total"),
			g("go_memstats_heap_inuse_bytes"), g("go_memstats_sys_bytes")}
	}
	tick := time.NewTicker(10 * time.Second)
	var genOut string
loop:
	for {
		select {
		case <-tick.C:
			x := take()
			samples = append(samples, x)
			t.Logf("%3ds: RSS %.1f MiB (Go heap in use %.1f MiB, from the OS %.1f MiB), %v goroutines, %v fds, %v evictions",
				10*len(samples), x.rss/(1<<20), x.heap/(1<<20), x.sys/(1<<20), x.goroutines, x.fds, x.evictions)
		case genOut = <-genDone:
			break loop
		}
	}
	tick.Stop()
	var sent struct {
		Sent []struct {
			Stream string
			Frames int64
		}
	}
	if err := json.Unmarshal([]byte(genOut), &sent); err != nil || len(sent.Sent) != 2 {
		t.Fatalf("generator output %q: %v", genOut, err)
	}
	time.Sleep(2 * time.Second) // the last frames and a report
	f := scrape(t, lab.NSB, "127.0.0.1:9468")
	known, _ := value(t, f, "spiwatch_sa_packets_total", map[string]string{"spi": "0xc0000001"})
	if int64(known) != sent.Sent[0].Frames {
		t.Errorf("known SA counted %v packets, sent %d", known, sent.Sent[0].Frames)
	}
	if len(samples) < 2 {
		t.Fatalf("only %d samples", len(samples))
	}
	first, last := samples[0], samples[len(samples)-1]
	if last.evictions <= first.evictions {
		t.Errorf("evictions did not grow under the flood: %v → %v", first.evictions, last.evictions)
	}
	for _, x := range samples {
		if x.rss > 64<<20 {
			t.Errorf("RSS %.1f MiB over 64 MiB", x.rss/(1<<20))
		}
		if x.goroutines > first.goroutines+3 || x.fds > first.fds+3 {
			t.Errorf("growing: %v goroutines, %v fds (first sample %v, %v)", x.goroutines, x.fds, first.goroutines, first.fds)
		}
	}
	if !strings.Contains(genOut, `"frames"`) {
		t.Errorf("generator output %s", genOut)
	}
	t.Logf("sent %d known and %d flood frames; known SA counted %v", sent.Sent[0].Frames, sent.Sent[1].Frames, known)
	s.cmd.Process.Signal(os.Interrupt)
	<-s.done
}
