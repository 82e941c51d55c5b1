// SPDX-License-Identifier: Apache-2.0

package report

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/sasource"
	spimaps "github.com/spiwatch/spiwatch/maps"
)

// sampleSnapshot is a 2-second snapshot of two interfaces with three unknown rows
// (one with an unset source, shown as "any") and two known SAs.
func sampleSnapshot() *Snapshot {
	now := t0.Add(time.Hour)
	var c0, d0, c1, d1 spimaps.Counters
	c0[classify.ClassESP][classify.OutcomeKnown] = spimaps.Count{Packets: 1000, Bytes: 150_000}
	d0[classify.ClassESP][classify.OutcomeKnown] = spimaps.Count{Packets: 200, Bytes: 30_000}
	c0[classify.ClassESP][classify.OutcomeUnknown] = spimaps.Count{Packets: 60, Bytes: 6_000}
	d0[classify.ClassESP][classify.OutcomeUnknown] = spimaps.Count{Packets: 40, Bytes: 4_000}
	c0[classify.ClassIKE][classify.OutcomeNone] = spimaps.Count{Packets: 4, Bytes: 1_200}
	c1[classify.ClassESP][classify.OutcomeKnown] = spimaps.Count{Packets: 100, Bytes: 15_000}
	d1[classify.ClassESP][classify.OutcomeKnown] = spimaps.Count{Packets: 50, Bytes: 7_500}
	c1[classify.ClassESPInUDP][classify.OutcomeReserved] = spimaps.Count{Packets: 6, Bytes: 600}
	d1[classify.ClassESPInUDP][classify.OutcomeReserved] = spimaps.Count{Packets: 6, Bytes: 600}
	c1[classify.ClassOther][classify.OutcomeNone] = spimaps.Count{Packets: 10, Bytes: 1_000}
	d1[classify.ClassOther][classify.OutcomeNone] = spimaps.Count{Packets: 2, Bytes: 200}
	s := &Snapshot{
		Time:     now,
		Interval: 2 * time.Second,
		Action:   "pass",
		Ifaces:   []IfaceCounts{{Iface: eth0, Now: c0, Delta: d0}, {Iface: eth1, Now: c1, Delta: d1}},
		Total:    IfaceCounts{Iface: Iface{Name: "all"}, Now: add(c0, c1), Delta: add(d0, d1)},
		Table:    spimaps.TableStats{Entries: 3, Capacity: 1024, Inserts: 10, InsertFails: 0, Evictions: 7},
		// the three rows below, and a stale row not among them (past --top)
		UnknownByVerdict: map[string]uint64{"unknown": 60, "reserved": 6, "stale": 4},
	}
	s.Unknown = []UnknownRow{
		{Unknown: spimaps.Unknown{SPI: 0xdeadbeef, Src: netip.MustParseAddr("198.51.100.1"), Dst: netip.MustParseAddr("192.0.2.2"),
			Ifindex: 2, Packets: 50, Bytes: 5_000, LastSeq: 77},
			Iface: "eth0", Rate: 20, FirstSeen: now.Add(-90 * time.Second), LastSeen: now.Add(-2 * time.Second), Verdict: "unknown"},
		{Unknown: spimaps.Unknown{SPI: 0x2a, Src: netip.MustParseAddr("2001:db8::1"), Dst: netip.MustParseAddr("2001:db8::2"),
			SrcPort: 4500, DstPort: 4501, Ifindex: 3, Packets: 6, Bytes: 600, LastSeq: 1},
			Iface: "eth1", Rate: 3, FirstSeen: now.Add(-time.Second), LastSeen: now, Verdict: "reserved"},
		{Unknown: spimaps.Unknown{SPI: 0x1000, Dst: netip.MustParseAddr("192.0.2.2"), SrcPort: 4500, DstPort: 4500,
			Ifindex: 2, Packets: 10, Bytes: 1_000},
			Iface: "eth0", Rate: 0, FirstSeen: now.Add(-time.Hour), LastSeen: now.Add(-time.Hour), Verdict: "unknown"},
	}
	s.Known = []KnownRow{
		{KnownSA: spimaps.KnownSA{SA: spimaps.SA{SPI: 0xc1a2b3c4}, Packets: 1000, Bytes: 150_000, MaxSeq: 999},
			LastSeen: now.Add(-time.Second), From: []string{"--known-spi", "file /etc/known"}},
		{KnownSA: spimaps.KnownSA{SA: spimaps.SA{SPI: 0xc5d6e7f8, Dst: netip.MustParseAddr("192.0.2.1")}}},
	}
	return s
}

func writeJSON(t *testing.T, s *Snapshot, top int) (map[string]any, jsonSnapshot) {
	t.Helper()
	var b bytes.Buffer
	if err := WriteJSON(&b, s, top); err != nil {
		t.Fatalf("WriteJSON: %v", err)
	}
	out := b.String()
	if !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
		t.Fatalf("WriteJSON wrote %q: want one line ending in a newline", out)
	}
	if !json.Valid(b.Bytes()) {
		t.Fatalf("WriteJSON wrote invalid JSON: %s", out)
	}
	var m map[string]any
	var js jsonSnapshot
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&js); err != nil {
		t.Fatalf("decoding %s: %v", out, err)
	}
	if err := json.Unmarshal(b.Bytes(), &m); err != nil {
		t.Fatalf("decoding %s: %v", out, err)
	}
	return m, js
}

// keysOf returns the sorted keys of the JSON object v.
func keysOf(t *testing.T, what string, v any) []string {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s is %T, want an object", what, v)
	}
	return slices.Sorted(maps.Keys(m))
}

func wantKeys(t *testing.T, what string, v any, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := keysOf(t, what, v); !slices.Equal(got, want) {
		t.Errorf("%s has fields %v, want %v", what, got, want)
	}
}

var countKeys = []string{"packets", "bytes", "pps", "bytes_per_s"}

func checkClasses(t *testing.T, what string, v any) {
	t.Helper()
	list, ok := v.([]any)
	if !ok || len(list) != classify.NumClasses {
		t.Fatalf("%s.classes is %v, want %d classes", what, v, classify.NumClasses)
	}
	for i, c := range list {
		name := classify.Class(i).String()
		withOutcomes := name == "esp" || name == "esp-in-udp"
		keys := append([]string{"class"}, countKeys...)
		if withOutcomes {
			keys = append(keys, "outcomes")
		}
		wantKeys(t, what+"."+name, c, keys...)
		if got := c.(map[string]any)["class"]; got != name {
			t.Errorf("%s.classes[%d] is %v, want %s", what, i, got, name)
		}
		if withOutcomes {
			oc := c.(map[string]any)["outcomes"]
			wantKeys(t, what+"."+name+".outcomes", oc, "known", "unknown", "reserved")
			for o, cnt := range oc.(map[string]any) {
				wantKeys(t, what+"."+name+".outcomes."+o, cnt, countKeys...)
			}
		}
	}
}

func TestWriteJSONFields(t *testing.T) {
	m, _ := writeJSON(t, sampleSnapshot(), 0)
	wantKeys(t, "snapshot", m, "time", "interval_s", "action", "interfaces", "total", "classes", "unknown_table", "unknown_by_verdict", "unknown_spis", "known_sas",
		"icmp_table", "icmp_errors", "ike_table", "ike", "collisions", "collision_window_s")
	if m["action"] != "pass" {
		t.Errorf("action %v, want pass", m["action"])
	}
	wantKeys(t, "total", m["total"], countKeys...)
	checkClasses(t, "snapshot", m["classes"])
	ifs := m["interfaces"].([]any)
	if len(ifs) != 2 {
		t.Fatalf("interfaces: %v, want 2", ifs)
	}
	for _, i := range ifs {
		wantKeys(t, "interface", i, "name", "ifindex", "mode", "total", "classes")
		checkClasses(t, "interface", i.(map[string]any)["classes"])
	}
	wantKeys(t, "unknown_table", m["unknown_table"], "entries", "capacity", "inserts", "evictions", "insert_failures")
	wantKeys(t, "unknown_by_verdict", m["unknown_by_verdict"], "unknown", "stale", "rekey-race", "collision", "reserved")
	for _, u := range m["unknown_spis"].([]any) {
		wantKeys(t, "unknown_spis[]", u, "spi", "src", "sport", "dst", "dport", "interface", "packets", "bytes", "pps",
			"first_seen", "last_seen", "last_seq", "verdict")
	}
	known := m["known_sas"].([]any)
	health := []string{"lost", "loss_ratio", "late", "duplicates", "replay_suspect", "restarts", "esn_wraps", "spread_cpus",
		"collision", "sources", "other_source_packets", "from"}
	wantKeys(t, "known_sas[0]", known[0], append([]string{"spi", "dst", "packets", "bytes", "last_seen", "highest_seq"}, health...)...)
	// Never seen: no last_seen at all rather than an empty or zero time.
	wantKeys(t, "known_sas[1]", known[1], append([]string{"spi", "dst", "packets", "bytes", "highest_seq"}, health...)...)
}

func TestWriteJSONValues(t *testing.T) {
	s := sampleSnapshot()
	// Times are written in UTC whatever their zone.
	s.Time = s.Time.In(time.FixedZone("CEST", 2*60*60))
	_, js := writeJSON(t, s, 0)

	if tm, err := time.Parse(time.RFC3339, js.Time); err != nil || !tm.Equal(s.Time) || !strings.HasSuffix(js.Time, "Z") {
		t.Errorf("time %q (%v): want RFC 3339 UTC for %v", js.Time, err, s.Time)
	}
	if js.IntervalS != 2 {
		t.Errorf("interval_s %v, want 2", js.IntervalS)
	}
	// total: everything, rates over the 2 s interval; bps is bytes per second.
	if want := (jsonCount{Packets: 1180, Bytes: 173_800, PPS: 149, BPS: 21_150}); js.Total != want {
		t.Errorf("total %+v, want %+v", js.Total, want)
	}
	esp := js.Classes[classify.ClassESP]
	if want := (jsonCount{Packets: 1160, Bytes: 171_000, PPS: 145, BPS: 20_750}); esp.jsonCount != want {
		t.Errorf("esp %+v, want %+v", esp.jsonCount, want)
	}
	if want := (jsonCount{Packets: 60, Bytes: 6_000, PPS: 20, BPS: 2_000}); esp.Outcomes["unknown"] != want {
		t.Errorf("esp unknown %+v, want %+v", esp.Outcomes["unknown"], want)
	}
	if js.Classes[classify.ClassIKE].Outcomes != nil || js.Classes[classify.ClassIKE].Packets != 4 {
		t.Errorf("ike %+v: want 4 packets and no outcomes", js.Classes[classify.ClassIKE])
	}

	if len(js.Interfaces) != 2 {
		t.Fatalf("%d interfaces, want 2", len(js.Interfaces))
	}
	i1 := js.Interfaces[1]
	if i1.Name != "eth1" || i1.Ifindex != 3 || i1.Mode != "generic" {
		t.Errorf("interface 1 %s/%d/%s, want eth1/3/generic", i1.Name, i1.Ifindex, i1.Mode)
	}
	if want := (jsonCount{Packets: 116, Bytes: 16_600, PPS: 29, BPS: 4_150}); i1.Total != want {
		t.Errorf("eth1 total %+v, want %+v", i1.Total, want)
	}
	if got := i1.Classes[classify.ClassESPInUDP].Outcomes["reserved"]; got != (jsonCount{Packets: 6, Bytes: 600, PPS: 3, BPS: 300}) {
		t.Errorf("eth1 esp-in-udp reserved %+v", got)
	}
	if got := js.Interfaces[0].Classes[classify.ClassESP].Outcomes["known"]; got.Packets != 1000 || got.PPS != 100 {
		t.Errorf("eth0 esp known %+v, want 1000 packets at 100/s", got)
	}

	if want := (jsonTable{Entries: 3, Capacity: 1024, Inserts: 10, Evictions: 7}); js.UnknownTable != want {
		t.Errorf("unknown_table %+v, want %+v", js.UnknownTable, want)
	}

	if want := map[string]uint64{"unknown": 60, "stale": 4, "rekey-race": 0, "collision": 0, "reserved": 6}; !reflect.DeepEqual(js.UnknownByVerdict, want) {
		t.Errorf("unknown_by_verdict %v, want %v", js.UnknownByVerdict, want)
	}

	wantUnknown := []jsonUnknown{
		{SPI: "0xdeadbeef", Src: "198.51.100.1", Dst: "192.0.2.2", Interface: "eth0", Packets: 50, Bytes: 5_000, PPS: 20,
			FirstSeen: "2024-05-06T08:06:39Z", LastSeen: "2024-05-06T08:08:07Z", LastSeq: 77, Verdict: "unknown"},
		{SPI: "0x0000002a", Src: "2001:db8::1", Sport: 4500, Dst: "2001:db8::2", Dport: 4501, Interface: "eth1", Packets: 6,
			Bytes: 600, PPS: 3, FirstSeen: "2024-05-06T08:08:08Z", LastSeen: "2024-05-06T08:08:09Z", LastSeq: 1, Verdict: "reserved"},
		{SPI: "0x00001000", Src: "any", Sport: 4500, Dst: "192.0.2.2", Dport: 4500, Interface: "eth0", Packets: 10,
			Bytes: 1_000, FirstSeen: "2024-05-06T07:08:09Z", LastSeen: "2024-05-06T07:08:09Z", Verdict: "unknown"},
	}
	if !reflect.DeepEqual(js.UnknownSPIs, wantUnknown) {
		t.Errorf("unknown_spis\n got %+v\nwant %+v", js.UnknownSPIs, wantUnknown)
	}
	wantKnown := []jsonKnown{
		{SPI: "0xc1a2b3c4", Dst: "any", Packets: 1000, Bytes: 150_000, LastSeen: "2024-05-06T08:08:08Z", HighestSeq: 999, Sources: []jsonSASource{},
			From: []string{"--known-spi", "file /etc/known"}},
		{SPI: "0xc5d6e7f8", Dst: "192.0.2.1", Sources: []jsonSASource{}, From: []string{}}, // [], not null
	}
	if !reflect.DeepEqual(js.KnownSAs, wantKnown) {
		t.Errorf("known_sas\n got %+v\nwant %+v", js.KnownSAs, wantKnown)
	}
}

func TestWriteJSONTop(t *testing.T) {
	for _, c := range []struct{ top, want int }{{0, 3}, {1, 1}, {2, 2}, {3, 3}, {10, 3}} {
		_, js := writeJSON(t, sampleSnapshot(), c.top)
		if len(js.UnknownSPIs) != c.want {
			t.Errorf("top %d: %d rows, want %d", c.top, len(js.UnknownSPIs), c.want)
			continue
		}
		if c.want > 0 && js.UnknownSPIs[0].SPI != "0xdeadbeef" {
			t.Errorf("top %d: first row %s, want the highest rate 0xdeadbeef", c.top, js.UnknownSPIs[0].SPI)
		}
	}
}

// TestWriteJSONEmpty: no rows are empty arrays, which consumers can range over, not null.
func TestWriteJSONEmpty(t *testing.T) {
	s := &Snapshot{Time: t0, Interval: 0, Ifaces: []IfaceCounts{{Iface: eth0}}}
	m, js := writeJSON(t, s, 0)
	for _, k := range []string{"unknown_spis", "known_sas"} {
		if l, ok := m[k].([]any); !ok || len(l) != 0 {
			t.Errorf("%s is %#v, want []", k, m[k])
		}
	}
	if want := map[string]uint64{"unknown": 0, "stale": 0, "rekey-race": 0, "collision": 0, "reserved": 0}; !reflect.DeepEqual(js.UnknownByVerdict, want) {
		t.Errorf("unknown_by_verdict of an empty table %v, want every verdict at 0", js.UnknownByVerdict)
	}
	if js.Total != (jsonCount{}) {
		t.Errorf("total with a zero interval %+v, want zeroes (no division by zero)", js.Total)
	}
}

func writeText(t *testing.T, s *Snapshot, top int) string {
	t.Helper()
	var b bytes.Buffer
	if err := WriteText(&b, s, top); err != nil {
		t.Fatalf("WriteText: %v", err)
	}
	return b.String()
}

// fieldsOf returns the whitespace-separated fields of the line starting with prefix.
func fieldsOf(t *testing.T, out, prefix string) []string {
	t.Helper()
	for l := range strings.Lines(out) {
		if strings.HasPrefix(l, prefix) {
			return strings.Fields(l)
		}
	}
	t.Fatalf("no line starting %q in\n%s", prefix, out)
	return nil
}

func TestWriteText(t *testing.T) {
	s := sampleSnapshot()
	s.Table.InsertFails = 0
	out := writeText(t, s, 0)
	lines := strings.Split(out, "\n")

	if want := "2024-05-06 08:08:09  eth0 (native), eth1 (generic)  known SAs 2  unknown table 3/1024, 7 evicted"; lines[0] != want {
		t.Errorf("header %q\nwant   %q", lines[0], want)
	}
	if got := strings.Fields(lines[1]); !slices.Equal(got, []string{"class", "outcome", "pkt/s", "bit/s", "packets", "bytes"}) {
		t.Errorf("column header %q", lines[1])
	}
	// Class rows, in class order, then the total: esp always (all three outcomes),
	// other classes and outcomes only when they have packets. Rates are per second
	// over the interval, bit/s is 8 × bytes; packets and bytes are totals.
	var classRows [][]string
	for _, l := range lines[2:] {
		if strings.HasPrefix(l, "unknown SPIs") || strings.HasPrefix(l, "no unknown SPIs") {
			break
		}
		classRows = append(classRows, strings.Fields(l))
	}
	wantRows := [][]string{
		{"other", "-", "1", "800", "10", "1000"},
		{"esp", "known", "125", "150.0k", "1100", "165000"},
		{"esp", "unknown", "20", "16.0k", "60", "6000"},
		{"esp", "reserved", "0", "0", "0", "0"},
		{"esp-in-udp", "reserved", "3", "2.4k", "6", "600"},
		{"ike", "-", "0", "0", "4", "1200"},
		{"total", "149", "169.2k", "1180", "173800"},
	}
	if !slices.EqualFunc(classRows, wantRows, slices.Equal) {
		t.Errorf("class rows\n got %q\nwant %q", classRows, wantRows)
	}
	if got := fieldsOf(t, out, "unknown SPIs"); strings.Join(got, " ") != "unknown SPIs: 3 of 3 by rate" {
		t.Errorf("unknown table title %q", got)
	}

	// The unknown table: hex SPIs, host:port only with a port, interface, packets,
	// rate, first seen (local clock of the snapshot), ago, verdict.
	for _, want := range [][]string{
		{"SPI", "source", "destination", "iface", "packets", "pkt/s", "first", "seen", "last", "seen", "verdict"},
		{"0xdeadbeef", "198.51.100.1", "192.0.2.2", "eth0", "50", "20", "08:06:39", "2s", "ago", "unknown"},
		{"0x0000002a", "[2001:db8::1]:4500", "[2001:db8::2]:4501", "eth1", "6", "3", "08:08:08", "now", "reserved"},
		{"0x00001000", "any:4500", "192.0.2.2:4500", "eth0", "10", "0", "07:08:09", "1h", "ago", "unknown"},
	} {
		if got := fieldsOf(t, out, want[0]); !slices.Equal(got, want) {
			t.Errorf("unknown row %q\nwant %q", got, want)
		}
	}
	if got := fieldsOf(t, out, "unknown-SPI packets by verdict"); strings.Join(got, " ") !=
		"unknown-SPI packets by verdict: unknown 60, stale 4, rekey-race 0, collision 0, reserved 6" {
		t.Errorf("verdict line %q", got)
	}

	// Known SAs with traffic: where each came from, before the concern; the SA
	// without packets is left out.
	for _, want := range [][]string{
		{"SA", "packets", "lost", "late", "dup", "replay-suspect", "restarts", "sources", "last", "seen", "from", "concern"},
		{"0xc1a2b3c4@any", "1000", "0%", "0", "0", "0", "0", "", "1s", "ago", "--known-spi,", "file", "/etc/known"},
	} {
		if got := fieldsOf(t, out, want[0]); !slices.Equal(got, slices.DeleteFunc(want, func(f string) bool { return f == "" })) {
			t.Errorf("known row %q\nwant %q", got, want)
		}
	}
	if strings.Contains(out, "0xc5d6e7f8") {
		t.Errorf("an SA without packets is listed:\n%s", out)
	}
	if !strings.HasSuffix(out, "\n\n") {
		t.Errorf("report does not end with a blank line: %q", out[max(0, len(out)-20):])
	}
}

func TestWriteTextHeaderNotRecorded(t *testing.T) {
	s := sampleSnapshot()
	s.Table.InsertFails = 5
	s.Action = "drop"
	first, _, _ := strings.Cut(writeText(t, s, 0), "\n")
	if !strings.HasSuffix(first, "unknown table 3/1024, 7 evicted, 5 not recorded  DROPPING unknown-SPI packets") {
		t.Errorf("header %q: want the insert failures as not recorded, and the drop action", first)
	}
}

func TestWriteTextTop(t *testing.T) {
	for _, c := range []struct {
		top   int
		title string
		spis  []string
	}{
		{0, "unknown SPIs: 3 of 3 by rate", []string{"0xdeadbeef", "0x0000002a", "0x00001000"}},
		{2, "unknown SPIs: 2 of 3 by rate", []string{"0xdeadbeef", "0x0000002a"}},
		{1, "unknown SPIs: 1 of 3 by rate", []string{"0xdeadbeef"}},
		{5, "unknown SPIs: 3 of 3 by rate", []string{"0xdeadbeef", "0x0000002a", "0x00001000"}},
	} {
		out := writeText(t, sampleSnapshot(), c.top)
		if !strings.Contains(out, "\n"+c.title+"\n") {
			t.Errorf("top %d: no %q in\n%s", c.top, c.title, out)
		}
		var spis []string
		unknown, _, _ := strings.Cut(out, "known SAs with traffic")
		for l := range strings.Lines(unknown) {
			if strings.HasPrefix(l, "0x") {
				spis = append(spis, strings.Fields(l)[0])
			}
		}
		if !slices.Equal(spis, c.spis) {
			t.Errorf("top %d: rows %v, want %v", c.top, spis, c.spis)
		}
	}
}

func TestWriteTextEmpty(t *testing.T) {
	s := &Snapshot{Time: t0, Interval: time.Second, Ifaces: []IfaceCounts{{Iface: eth0}}}
	out := writeText(t, s, 0)
	want := "2024-05-06 07:08:09  eth0 (native)  known SAs 0  unknown table 0/0, 0 evicted\n"
	if !strings.HasPrefix(out, want) {
		t.Errorf("header of an empty report:\n%q\nwant\n%q", out, want)
	}
	if !strings.HasSuffix(out, "\nno unknown SPIs\n\n") || strings.Contains(out, "0x") || strings.Contains(out, "by verdict") {
		t.Errorf("empty report does not say no unknown SPIs:\n%s", out)
	}
	// Even with nothing counted, the three esp rows are shown, so the columns never
	// jump; no other class is.
	if n := strings.Count(out, "\nesp "); n != 3 || strings.Contains(out, "\nother ") {
		t.Errorf("%d esp rows in an empty report, want 3 and no others:\n%s", n, out)
	}
}

func TestHostPort(t *testing.T) {
	for _, c := range []struct {
		addr string
		port uint16
		want string
	}{
		{"192.0.2.1", 0, "192.0.2.1"},
		{"192.0.2.1", 4500, "192.0.2.1:4500"},
		{"2001:db8::1", 0, "2001:db8::1"},
		{"2001:db8::1", 4500, "[2001:db8::1]:4500"},
		{"", 0, "any"},
		{"", 4500, "any:4500"},
	} {
		var a netip.Addr
		if c.addr != "" {
			a = netip.MustParseAddr(c.addr)
		}
		if got := HostPort(a, c.port); got != c.want {
			t.Errorf("HostPort(%q, %d) = %q, want %q", c.addr, c.port, got, c.want)
		}
	}
}

func TestHuman(t *testing.T) {
	for _, c := range []struct {
		v    float64
		want string
	}{
		{0, "0"},
		{0.4, "0"},
		{1, "1"},
		{999, "999"},
		{999.4, "999"},
		{999.49, "999"},
		{999.5, "1.0k"}, // %.0f would print "1000"
		{999.6, "1.0k"},
		{1000, "1.0k"},
		{1049, "1.0k"},
		{999_949, "999.9k"},
		{999_949.9, "999.9k"},
		{999_950, "1.00M"}, // %.1fk would print "1000.0k"
		{999_960, "1.00M"},
		{1e6, "1.00M"},
		{12_345_678, "12.35M"},
		{999_994_000, "999.99M"},
		{999_994_999, "999.99M"},
		{999_995_000, "1.00G"}, // %.2fM would print "1000.00M"
		{999_996_000, "1.00G"},
		{1e9, "1.00G"},
		{2.5e12, "2500.00G"},
	} {
		if got := Human(c.v); got != c.want {
			t.Errorf("Human(%v) = %q, want %q", c.v, got, c.want)
		}
	}
}

func TestAgo(t *testing.T) {
	now := t0
	for _, c := range []struct {
		t    time.Time
		want string
	}{
		{time.Time{}, "never"},
		{now.Add(5 * time.Second), "now"}, // stamped after the snapshot: a race, not the future
		{now, "now"},
		{now.Add(-999 * time.Millisecond), "now"},
		{now.Add(-time.Second), "1s ago"},
		{now.Add(-59999 * time.Millisecond), "59s ago"},
		{now.Add(-time.Minute), "1m ago"},
		{now.Add(-time.Hour + time.Millisecond), "59m ago"},
		{now.Add(-time.Hour), "1h ago"},
		{now.Add(-49 * time.Hour), "49h ago"},
	} {
		if got := Ago(now, c.t); got != c.want {
			t.Errorf("Ago(%v before) = %q, want %q", now.Sub(c.t), got, c.want)
		}
	}
}

func TestWriteTextInterfaceProblem(t *testing.T) {
	s := sampleSnapshot()
	s.Ifaces[0].Problem = "interface deleted"
	first, _, _ := strings.Cut(writeText(t, s, 0), "\n")
	if !strings.Contains(first, "eth0 (native, NOT WATCHED: interface deleted), eth1 (generic)") {
		t.Errorf("header %q: want eth0 marked as not watched", first)
	}
	m, _ := writeJSON(t, s, 0)
	i0 := m["interfaces"].([]any)[0].(map[string]any)
	if i0["problem"] != "interface deleted" {
		t.Errorf("JSON interface %v: want problem", i0)
	}
	if _, ok := m["interfaces"].([]any)[1].(map[string]any)["problem"]; ok {
		t.Error("JSON: a watched interface has a problem field")
	}
}

func TestSourcesLine(t *testing.T) {
	srcs := []sasource.Stats{
		{Name: "xfrm", SAs: 12, Connected: true, Resyncs: 2},
		{Name: "file /etc/k", SAs: 3, Connected: true, Errors: 1, LastError: "/etc/k:4: bad"},
		{Name: "vici /run/charon.vici", Connected: false, Errors: 5, Reconnects: 2, LastError: "dial: no such file"},
		{Name: "vici /run/other.vici", SAs: 4, Connected: true, Reconnects: 1},
	}
	want := "xfrm 12, 2 resyncs after lost events, file /etc/k 3 (ERROR: /etc/k:4: bad; keeping 3), 1 error, " +
		"vici /run/charon.vici 0 (NOT CONNECTED: dial: no such file), 2 reconnects, 5 errors, vici /run/other.vici 4, 1 reconnect"
	if got := SourcesLine(srcs); got != want {
		t.Errorf("SourcesLine:\n got %s\nwant %s", got, want)
	}
	var b strings.Builder
	s := &Snapshot{Time: time.Unix(0, 0), Sources: srcs}
	if err := WriteText(&b, s, 0); err != nil || !strings.Contains(b.String(), "\nknown SAs from "+want+"\n") {
		t.Errorf("text report lacks the sources line (%v):\n%s", err, b.String())
	}
	b.Reset()
	if err := WriteJSON(&b, s, 0); err != nil || !strings.Contains(b.String(),
		`"known_sources":[{"name":"xfrm","sas":12,"connected":true,"syncs":0,"errors":0,"resyncs":2,"reconnects":0},`) {
		t.Errorf("JSON lacks known_sources (%v):\n%s", err, b.String())
	}
}
