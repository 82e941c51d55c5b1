// SPDX-License-Identifier: Apache-2.0

package eventlog

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/maps"
)

func row(spi uint32, src string) report.UnknownRow {
	return report.UnknownRow{Unknown: maps.Unknown{SPI: spi, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("203.0.113.1"),
		SrcPort: 4500, DstPort: 4500, Packets: 3, LastSeq: 42}, Iface: "eth0", Verdict: report.VerdictOf(spi)}
}

func newLogger(t *testing.T, format string) (*Logger, *strings.Builder, *time.Time) {
	t.Helper()
	var b strings.Builder
	l, err := New(&b, format, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	l.now = func() time.Time { return now }
	return l, &b, &now
}

func TestLogfmtLine(t *testing.T) {
	l, b, _ := newLogger(t, "logfmt")
	l.UnknownSPI(row(0xdeadbeef, "198.51.100.7"))
	want := `time=2026-11-26T12:00:00Z level=warn event=unknown_spi msg="Received ESP packet with unknown SPI" spi=0xdeadbeef src=198.51.100.7 sport=4500 dst=203.0.113.1 dport=4500 iface=eth0 seq=42 packets=3 verdict=unknown held_back=0` + "\n"
	if b.String() != want {
		t.Errorf("got  %q\nwant %q", b.String(), want)
	}
}

func TestJSONLine(t *testing.T) {
	l, b, _ := newLogger(t, "json")
	l.UnknownSPI(row(7, "2001:db8::1"))
	var m map[string]any
	if err := json.Unmarshal([]byte(b.String()), &m); err != nil {
		t.Fatalf("%v: %s", err, b.String())
	}
	if m["event"] != "unknown_spi" || m["spi"] != "0x00000007" || m["verdict"] != "reserved" || m["src"] != "2001:db8::1" ||
		!strings.Contains(m["msg"].(string), "reserved SPI") || m["sport"] != float64(4500) {
		t.Errorf("line %v", m)
	}
	if _, err := New(&strings.Builder{}, "xml", time.Second); err == nil {
		t.Error("format xml accepted")
	}
}

func TestRateLimit(t *testing.T) {
	l, b, now := newLogger(t, "logfmt")
	l.UnknownSPI(row(0x1000, "198.51.100.1"))
	l.UnknownSPI(row(0x1000, "198.51.100.2")) // same SPI, 0 s later: held
	l.UnknownSPI(row(0x2000, "198.51.100.1")) // same peer: held
	l.UnknownSPI(row(0x3000, "198.51.100.3")) // new SPI and peer: written, 2 held before it
	*now = now.Add(10 * time.Second)
	l.UnknownSPI(row(0x1000, "198.51.100.2")) // window over: written
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3:\n%s", len(lines), b.String())
	}
	for i, want := range []string{"spi=0x00001000 src=198.51.100.1 ", "spi=0x00003000 src=198.51.100.3 ", "spi=0x00001000 src=198.51.100.2 "} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d %q, want %q", i, lines[i], want)
		}
	}
	if !strings.HasSuffix(lines[1], "held_back=2") || !strings.HasSuffix(lines[2], "held_back=0") {
		t.Errorf("held_back counts wrong:\n%s", b.String())
	}
	// Held lines with no later line to carry the count: a summary after a window.
	b.Reset()
	l.UnknownSPI(row(0x1000, "198.51.100.9")) // held: SPI written 0 s ago
	l.Table(maps.TableStats{})
	if b.Len() != 0 {
		t.Errorf("summary before the window ended: %s", b.String())
	}
	*now = now.Add(10 * time.Second)
	l.Table(maps.TableStats{})
	l.Table(maps.TableStats{})
	if got := b.String(); strings.Count(got, "event=lines_held_back") != 1 || !strings.Contains(got, "held_back=1") {
		t.Errorf("want one summary of 1 held line, got:\n%s", got)
	}
}

func TestForgetBounded(t *testing.T) {
	l, _, now := newLogger(t, "logfmt")
	for i := 0; i < 10000; i++ {
		l.UnknownSPI(row(0x10000+uint32(i), "198.51.100.1"))
		*now = now.Add(11 * time.Second) // every line outside the window
	}
	if len(l.lastSPI) > 4096 || len(l.lastPeer) > 4096 {
		t.Errorf("rate-limit state grew to %d SPIs, %d peers", len(l.lastSPI), len(l.lastPeer))
	}
}

func TestTableEvicting(t *testing.T) {
	l, b, _ := newLogger(t, "logfmt")
	for _, ev := range []uint64{0, 5, 9, 9, 9, 12} {
		l.Table(maps.TableStats{Entries: 64, Capacity: 64, Evictions: ev})
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "event=table_evicting") || !strings.Contains(lines[0], "evictions=5") ||
		!strings.Contains(lines[1], "evictions=12") {
		t.Errorf("want one line when evictions start and one when they start again:\n%s", b.String())
	}
	l.Interface("eth0", "interface deleted")
	if !strings.Contains(b.String(), `event=interface_lost msg="Interface no longer watched" iface=eth0 problem="interface deleted"`) {
		t.Errorf("interface line: %s", b.String())
	}
}

func TestKnownSAEvents(t *testing.T) {
	l, b, now := newLogger(t, "logfmt")
	a, c := maps.SASource{Addr: netip.MustParseAddr("198.51.100.1"), Port: 4500}, maps.SASource{Addr: netip.MustParseAddr("198.51.100.2"), Port: 4500}
	k := report.KnownRow{KnownSA: maps.KnownSA{SA: maps.SA{SPI: 0xc0ffee, Dst: netip.MustParseAddr("203.0.113.1")}, Packets: 9, OtherPackets: 4,
		MaxSeq: 12, Seq: maps.SeqHealth{Restarts: 1, Replays: 5}}, Collision: true, ActiveSources: []maps.SASource{a, c}}
	l.KnownSA(report.KnownEvent{Row: k, What: "collision"})
	l.KnownSA(report.KnownEvent{Row: k, What: "restart", New: 1})
	l.KnownSA(report.KnownEvent{Row: k, What: "replay", New: 2})
	l.KnownSA(report.KnownEvent{Row: k, What: "replay", New: 3}) // held back
	*now = now.Add(11 * time.Second)
	l.KnownSA(report.KnownEvent{Row: k, What: "replay", New: 1})
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 4:\n%s", len(lines), b.String())
	}
	for i, want := range []string{
		`level=error event=sa_collision`, `sources="198.51.100.1:4500, 198.51.100.2:4500" other_source_packets=4`,
	} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("line 1 lacks %q (%d): %s", want, i, lines[0])
		}
	}
	if !strings.Contains(lines[1], "event=sa_restart") || !strings.Contains(lines[1], "spi=0x00c0ffee dst=203.0.113.1 restarts=1 new=1") {
		t.Errorf("line 2: %s", lines[1])
	}
	if !strings.Contains(lines[2], "event=sa_replay_suspect") || !strings.Contains(lines[2], "new=2 replay_suspect=5") {
		t.Errorf("line 3: %s", lines[2])
	}
	if !strings.Contains(lines[3], "new=4 ") {
		t.Errorf("line 4 must count the 3 held back plus 1: %s", lines[3])
	}
}

func TestUnknownCollisionLine(t *testing.T) {
	l, b, _ := newLogger(t, "logfmt")
	u := row(0xbeef, "198.51.100.7")
	u.Verdict = report.Collision
	u.Sources = []maps.SASource{{Addr: netip.MustParseAddr("198.51.100.7"), Port: 4500}, {Addr: netip.MustParseAddr("198.51.100.7"), Port: 4501}}
	l.UnknownSPI(u)
	if !strings.Contains(b.String(), `verdict=collision sources="198.51.100.7:4500, 198.51.100.7:4501"`) || !strings.Contains(b.String(), "NAT SPI collision") {
		t.Errorf("line %s", b.String())
	}
}
