// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiwatch/spiwatch/internal/testenv"
)

// TestEventLog: new unknown SPIs and the table starting to evict are logged as JSON
// lines to --log-file, rate-limited per SPI and peer.
func TestEventLog(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swlog")
	logFile := filepath.Join(t.TempDir(), "events.log")
	s := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--json", "--interval", "100ms",
		"--log-file", logFile, "--log-format", "json", "--unknown-table-size", "64", "--known-spi", "0x1000")
	runGen(t, gen, lab.NSA, lab.Sender, []string{
		"esp spi=0x1000 src=198.51.100.1 dst=203.0.113.1 count=100",
		"esp spi=0xdeadbeef src=198.51.100.7 dst=203.0.113.1 count=20",
		"esp-in-udp spi=0x00000042 src=198.51.100.9 dst=203.0.113.1 sport=31000 dport=4500 count=5",
	})
	s.waitTotal(t, 125)
	// A flood from one peer: 300 SPIs into a 64-row table.
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0x500000 spis=300 src=192.0.2.66 dst=203.0.113.1 count=300"})
	s.waitTotal(t, 425)
	s.stop(t)

	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var stale, reserved, flood, evicting int
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		switch {
		case e["event"] == "unknown_spi" && e["spi"] == "0xdeadbeef":
			stale++
			if e["src"] != "198.51.100.7" || e["dst"] != "203.0.113.1" || e["verdict"] != "unknown" || e["iface"] != lab.Receiver {
				t.Errorf("stale SPI line %v", e)
			}
		case e["event"] == "unknown_spi" && e["spi"] == "0x00000042":
			reserved++
			if e["verdict"] != "reserved" || e["sport"] != float64(31000) {
				t.Errorf("reserved SPI line %v", e)
			}
		case e["event"] == "unknown_spi" && e["src"] == "192.0.2.66":
			flood++
		case e["event"] == "table_evicting":
			evicting++
		case e["event"] == "unknown_spi" && e["spi"] == "0x00001000":
			t.Errorf("a known SA was logged as unknown: %v", e)
		}
	}
	// One line each; the flood from one peer gives one line (per-peer limit), not
	// 300, and the others are counted (held_back) in a later line.
	if stale != 1 || reserved != 1 || flood != 1 || evicting != 1 {
		t.Errorf("lines: stale %d, reserved %d, flood %d, evicting %d; want 1 each:\n%s", stale, reserved, flood, evicting, b)
	}
}
