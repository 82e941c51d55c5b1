// SPDX-License-Identifier: Apache-2.0

package report

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/sasource"
	"github.com/spiwatch/spiwatch/maps"
)

// JSON shapes: stable field names, documented in docs/OUTPUT.md.
type jsonCount struct {
	Packets uint64  `json:"packets"`
	Bytes   uint64  `json:"bytes"`
	PPS     float64 `json:"pps"`
	BPS     float64 `json:"bytes_per_s"` // bytes, not bits
}

type jsonClass struct {
	Class string `json:"class"`
	jsonCount
	Outcomes map[string]jsonCount `json:"outcomes,omitempty"`
	// Unknown-SPI packets dropped and passed (--action drop): dropped + passed
	// = outcomes.unknown. Present for esp and esp-in-udp when dropping.
	Dropped *jsonCount `json:"unknown_dropped,omitempty"`
	Passed  *jsonCount `json:"unknown_passed,omitempty"`
}

type jsonIface struct {
	Name     string      `json:"name"`
	Ifindex  int         `json:"ifindex"`
	Mode     string      `json:"mode"`
	Problem  string      `json:"problem,omitempty"`   // the interface was deleted, or our program detached
	LinkDown bool        `json:"link_down,omitempty"` // attached, but the link is down: nothing arrives
	Total    jsonCount   `json:"total"`
	Classes  []jsonClass `json:"classes"`
}

type jsonTable struct {
	Entries        int    `json:"entries"`
	Capacity       int    `json:"capacity"`
	Inserts        uint64 `json:"inserts"`
	Evictions      uint64 `json:"evictions"`
	InsertFailures uint64 `json:"insert_failures"`
}

type jsonUnknown struct {
	SPI       string  `json:"spi"`
	Src       string  `json:"src"`
	Sport     uint16  `json:"sport"`
	Dst       string  `json:"dst"`
	Dport     uint16  `json:"dport"`
	Interface string  `json:"interface"`
	Packets   uint64  `json:"packets"`
	Bytes     uint64  `json:"bytes"`
	PPS       float64 `json:"pps"`
	FirstSeen string  `json:"first_seen"`
	LastSeen  string  `json:"last_seen"`
	LastSeq   uint32  `json:"last_seq"`
	Verdict   string  `json:"verdict"`
	// Sources: with verdict collision, every source of the SPI towards dst
	// within the collision window.
	Sources []jsonSASource `json:"sources,omitempty"`
}

type jsonSASource struct {
	Addr     string `json:"addr"`
	Port     uint16 `json:"port"`
	LastSeen string `json:"last_seen,omitempty"`
}

type jsonKnown struct {
	SPI        string `json:"spi"`
	Dst        string `json:"dst"`
	Packets    uint64 `json:"packets"`
	Bytes      uint64 `json:"bytes"`
	LastSeen   string `json:"last_seen,omitempty"`
	HighestSeq uint32 `json:"highest_seq"`
	// sequence health of the SA's first source
	Lost          uint64  `json:"lost"`
	LossRatio     float64 `json:"loss_ratio"`
	Late          uint64  `json:"late"`
	Duplicates    uint64  `json:"duplicates"`
	ReplaySuspect uint64  `json:"replay_suspect"`
	Restarts      uint64  `json:"restarts"`
	ESNWraps      uint64  `json:"esn_wraps"`
	SpreadCPUs    bool    `json:"spread_cpus"` // packets on several CPUs: loss from the sequence span
	// sources: collision is two or more within the window
	Collision          bool           `json:"collision"`
	Sources            []jsonSASource `json:"sources"`
	OtherSourcePackets uint64         `json:"other_source_packets"`
	// From: the known-SA sources that gave the SA (not packet sources).
	From []string `json:"from"`
}

type jsonSnapshot struct {
	Time         string      `json:"time"`
	IntervalS    float64     `json:"interval_s"`
	Action       string      `json:"action"` // pass or drop: what happens to unknown-SPI packets
	Source       string      `json:"source,omitempty"`
	Partial      string      `json:"partial,omitempty"`
	Interfaces   []jsonIface `json:"interfaces"`
	Total        jsonCount   `json:"total"`
	Classes      []jsonClass `json:"classes"`
	UnknownTable jsonTable   `json:"unknown_table"`
	// UnknownByVerdict: packets of every unknown-table row, by verdict (all five keys).
	UnknownByVerdict map[string]uint64 `json:"unknown_by_verdict"`
	UnknownSPIs      []jsonUnknown     `json:"unknown_spis"`
	KnownSAs         []jsonKnown       `json:"known_sas"`
	// Collisions: SPIs (per destination) seen from two or more sources within
	// collision_window_s, known and unknown.
	Collisions       int          `json:"collisions"`
	CollisionWindowS float64      `json:"collision_window_s"`
	DropAbovePPS     uint32       `json:"drop_above_pps,omitempty"`
	RateLimit        *jsonRate    `json:"rate_limit,omitempty"`
	KnownSources     []jsonSource `json:"known_sources,omitempty"`
	ICMPTable        jsonTable    `json:"icmp_table"`
	ICMPErrors       []jsonICMP   `json:"icmp_errors"`
	IKETable         jsonTable    `json:"ike_table"`
	IKE              []jsonIKE    `json:"ike"`
	// IKEInitStorms: peers whose IKE_SA_INIT rate is above --ike-init-rate, in
	// every line while it stays above.
	IKEInitStorms []jsonStorm `json:"ike_init_storms,omitempty"`
}

// jsonRate is the --drop-above buckets' table.
type jsonRate struct {
	Sources   int    `json:"sources"`
	Capacity  int    `json:"capacity"`
	Evictions uint64 `json:"evictions"`
	Failures  uint64 `json:"failures"`
}

// jsonSource is a known-SA source's health.
type jsonSource struct {
	Name       string `json:"name"`
	SAs        int    `json:"sas"`
	Connected  bool   `json:"connected"`
	Syncs      uint64 `json:"syncs"`
	Errors     uint64 `json:"errors"`
	Resyncs    uint64 `json:"resyncs"`
	Reconnects uint64 `json:"reconnects"`
	LastError  string `json:"last_error,omitempty"`
}

func rate(n uint64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

func count(now, delta maps.Count, d time.Duration) jsonCount {
	return jsonCount{Packets: now.Packets, Bytes: now.Bytes, PPS: rate(delta.Packets, d), BPS: rate(delta.Bytes, d)}
}

func classesJSON(ic IfaceCounts, d time.Duration, dropping bool) []jsonClass {
	out := make([]jsonClass, 0, classify.NumClasses)
	for c := classify.Class(0); c < classify.NumClasses; c++ {
		jc := jsonClass{Class: c.String(), jsonCount: count(ic.Now.Class(c), ic.Delta.Class(c), d)}
		if oc := outcomesOf(c); len(oc) > 1 {
			jc.Outcomes = map[string]jsonCount{}
			for _, o := range oc {
				jc.Outcomes[o.String()] = count(ic.Now[c][o], ic.Delta[c][o], d)
			}
			if dropping {
				dn, dd := ic.Dropped[c], ic.DroppedDelta[c]
				un, ud := ic.Now[c][classify.OutcomeUnknown], ic.Delta[c][classify.OutcomeUnknown]
				dr, pa := count(dn, dd, d), count(subCount(un, dn), subCount(ud, dd), d)
				jc.Dropped, jc.Passed = &dr, &pa
			}
		}
		out = append(out, jc)
	}
	return out
}

func subCount(a, b maps.Count) maps.Count {
	return maps.Count{Packets: a.Packets - min(a.Packets, b.Packets), Bytes: a.Bytes - min(a.Bytes, b.Bytes)}
}

func sourcesJSON(s *Snapshot, srcs []maps.SASource) []jsonSASource {
	out := []jsonSASource{}
	for _, x := range srcs {
		out = append(out, jsonSASource{Addr: addrString(x.Addr), Port: x.Port, LastSeen: stamp(s.WallOf(x.LastSeenNs))})
	}
	return out
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return "any"
	}
	return a.String()
}

// WriteJSON writes the snapshot as one JSON object on one line. top limits the
// unknown-SPI rows (0: all).
func WriteJSON(w io.Writer, s *Snapshot, top int) error {
	js := jsonSnapshot{
		Time:      stamp(s.Time),
		IntervalS: s.Interval.Seconds(),
		Action:    s.Action,
		Source:    s.Source,
		Partial:   s.Partial,
		Total:     count(s.Total.Now.Total(), s.Total.Delta.Total(), s.Interval),
		Classes:   classesJSON(s.Total, s.Interval, s.Action == "drop"),
		UnknownTable: jsonTable{Entries: s.Table.Entries, Capacity: s.Table.Capacity, Inserts: s.Table.Inserts,
			Evictions: s.Table.Evictions, InsertFailures: s.Table.InsertFails},
		UnknownByVerdict: map[string]uint64{},
		UnknownSPIs:      []jsonUnknown{},
		KnownSAs:         []jsonKnown{},
		Collisions:       s.Collisions,
		CollisionWindowS: s.CollisionWindow.Seconds(),
		DropAbovePPS:     s.DropAbove,
	}
	for _, v := range Verdicts {
		js.UnknownByVerdict[v] = s.UnknownByVerdict[v]
	}
	if s.Rate != nil {
		js.RateLimit = &jsonRate{Sources: s.Rate.Sources, Capacity: s.Rate.Capacity, Evictions: s.Rate.Evictions, Failures: s.Rate.Fails}
	}
	for _, ic := range s.Ifaces {
		js.Interfaces = append(js.Interfaces, jsonIface{Name: ic.Name, Ifindex: ic.Ifindex, Mode: ic.Mode, Problem: ic.Problem, LinkDown: ic.LinkDown,
			Total: count(ic.Now.Total(), ic.Delta.Total(), s.Interval), Classes: classesJSON(ic, s.Interval, s.Action == "drop")})
	}
	for i, u := range s.Unknown {
		if top > 0 && i >= top {
			break
		}
		ju := jsonUnknown{
			SPI: fmt.Sprintf("0x%08x", u.SPI), Src: addrString(u.Src), Sport: u.SrcPort, Dst: addrString(u.Dst), Dport: u.DstPort,
			Interface: u.Iface, Packets: u.Packets, Bytes: u.Bytes, PPS: u.Rate,
			FirstSeen: stamp(u.FirstSeen), LastSeen: stamp(u.LastSeen), LastSeq: u.LastSeq, Verdict: u.Verdict,
		}
		if len(u.Sources) > 0 {
			ju.Sources = sourcesJSON(s, u.Sources)
		}
		js.UnknownSPIs = append(js.UnknownSPIs, ju)
	}
	for _, k := range s.Known {
		js.KnownSAs = append(js.KnownSAs, jsonKnown{SPI: fmt.Sprintf("0x%08x", k.SPI), Dst: addrString(k.Dst),
			Packets: k.Packets, Bytes: k.Bytes, LastSeen: stamp(k.LastSeen), HighestSeq: k.MaxSeq,
			Lost: k.Seq.Lost, LossRatio: k.LossRatio(), Late: k.Seq.Late, Duplicates: k.Seq.Dups, ReplaySuspect: k.Seq.Replays,
			Restarts: k.Seq.Restarts, ESNWraps: k.Seq.Wraps, SpreadCPUs: k.Seq.Spread,
			Collision: k.Collision, Sources: sourcesJSON(s, k.Sources), OtherSourcePackets: k.OtherPackets,
			From: append([]string{}, k.From...)}) // [] rather than null
	}
	for _, src := range s.Sources {
		js.KnownSources = append(js.KnownSources, jsonSource{Name: src.Name, SAs: src.SAs, Connected: src.Connected, Syncs: src.Syncs,
			Errors: src.Errors, Resyncs: src.Resyncs, Reconnects: src.Reconnects, LastError: src.LastError})
	}
	diagJSON(&js, s)
	b, err := json.Marshal(js)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// WriteText writes the snapshot for a person: class rates and totals, then the
// unknown-SPI table (top rows by rate; 0: all).
func WriteText(w io.Writer, s *Snapshot, top int) error {
	var b strings.Builder
	var ifs []string
	for _, i := range s.Ifaces {
		if i.Problem != "" {
			ifs = append(ifs, fmt.Sprintf("%s (%s, NOT WATCHED: %s)", i.Name, i.Mode, i.Problem))
			continue
		}
		ifs = append(ifs, IfaceLabel(i.Iface))
	}
	when := s.Time.Format("2006-01-02 15:04:05")
	if s.Time.IsZero() {
		when = "no packets" // a capture file without any: it has no time
	}
	fmt.Fprintf(&b, "%s  %s  known SAs %d  unknown table %d/%d, %d evicted",
		when, strings.Join(ifs, ", "), len(s.Known),
		s.Table.Entries, s.Table.Capacity, s.Table.Evictions)
	if s.Table.InsertFails > 0 {
		fmt.Fprintf(&b, ", %d not recorded", s.Table.InsertFails)
	}
	if s.Action == "drop" {
		b.WriteString("  " + DropLabel(s.DropAbove))
	}
	b.WriteString("\n")
	if s.Rate != nil {
		fmt.Fprintf(&b, "rate limit: %s with a bucket (of %d), %d evicted", Counted(s.Rate.Sources, "source"), s.Rate.Capacity, s.Rate.Evictions)
		if s.Rate.Fails > 0 {
			fmt.Fprintf(&b, ", %d without one (dropped)", s.Rate.Fails)
		}
		b.WriteString("\n")
	}
	for _, line := range CollisionLines(s) {
		b.WriteString(line + "\n")
	}
	if len(s.Sources) > 0 {
		fmt.Fprintf(&b, "known SAs from %s\n", SourcesLine(s.Sources))
	}
	if s.Source != "" {
		if s.Time.IsZero() {
			fmt.Fprintf(&b, "capture %s: no packets\n", s.Source)
		} else {
			fmt.Fprintf(&b, "capture %s: %s, rates averaged over it\n", s.Source, s.Interval.Round(time.Millisecond))
		}
	}
	if s.Partial != "" {
		fmt.Fprintf(&b, "PARTIAL: the capture could not be read to its end: %s\n", s.Partial)
	}
	const row = "%-14s %-9s %9s %9s %14s %16s\n"
	fmt.Fprintf(&b, row, "class", "outcome", "pkt/s", "bit/s", "packets", "bytes")
	for c := classify.Class(0); c < classify.NumClasses; c++ {
		for _, o := range outcomesOf(c) {
			now, d := s.Total.Now[c][o], s.Total.Delta[c][o]
			if now.Packets == 0 && c != classify.ClassESP {
				continue
			}
			oname := o.String()
			if o == classify.OutcomeNone {
				oname = "-"
			}
			fmt.Fprintf(&b, row, c, oname, Human(rate(d.Packets, s.Interval)),
				Human(8*rate(d.Bytes, s.Interval)), fmt.Sprint(now.Packets), fmt.Sprint(now.Bytes))
			if o == classify.OutcomeUnknown && s.Action == "drop" {
				dn, dd := s.Total.Dropped[c], s.Total.DroppedDelta[c]
				for _, x := range []struct {
					name   string
					now, d maps.Count
				}{{"dropped", dn, dd}, {"passed", subCount(now, dn), subCount(d, dd)}} {
					fmt.Fprintf(&b, row, c, x.name, Human(rate(x.d.Packets, s.Interval)),
						Human(8*rate(x.d.Bytes, s.Interval)), fmt.Sprint(x.now.Packets), fmt.Sprint(x.now.Bytes))
				}
			}
		}
	}
	tot, dt := s.Total.Now.Total(), s.Total.Delta.Total()
	fmt.Fprintf(&b, row, "total", "", Human(rate(dt.Packets, s.Interval)), Human(8*rate(dt.Bytes, s.Interval)),
		fmt.Sprint(tot.Packets), fmt.Sprint(tot.Bytes))

	n := len(s.Unknown)
	if top > 0 && n > top {
		n = top
	}
	if len(s.Unknown) == 0 {
		b.WriteString("no unknown SPIs\n")
	} else {
		fmt.Fprintf(&b, "unknown SPIs: %d of %d by rate\n", n, max(s.UnknownRows, len(s.Unknown)))
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SPI\tsource\tdestination\tiface\tpackets\tpkt/s\tfirst seen\tlast seen\tverdict")
		for _, u := range s.Unknown[:n] {
			fmt.Fprintf(tw, "0x%08x\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", u.SPI, HostPort(u.Src, u.SrcPort),
				HostPort(u.Dst, u.DstPort), u.Iface, u.Packets, Human(u.Rate), u.FirstSeen.Format("15:04:05"), Ago(s.Time, u.LastSeen), u.Verdict)
		}
		tw.Flush()
		fmt.Fprintf(&b, "unknown-SPI packets by verdict: %s\n", VerdictLine(s.UnknownByVerdict))
	}
	writeDiagText(&b, s, top)
	writeKnown(&b, s, top)
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// HostPort prints an address with its port, or alone when the port is 0 (ESP).
func HostPort(a netip.Addr, port uint16) string {
	if port == 0 {
		return addrString(a)
	}
	if !a.IsValid() { // an all-zero address: netip would print "invalid AddrPort"
		return fmt.Sprintf("%s:%d", addrString(a), port)
	}
	return netip.AddrPortFrom(a, port).String()
}

// Ago says how long before now t was: "now", "3s ago", "2m ago", "never".
func Ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < time.Second:
		return "now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	}
	return fmt.Sprintf("%dh ago", int(d.Hours()))
}

// Human prints a rate with k/M/G suffixes. Each threshold is where the smaller
// unit would round up to 1000 (999.6 is "1.0k", not "1000").
func Human(v float64) string {
	switch {
	case v >= 999.995e6:
		return fmt.Sprintf("%.2fG", v/1e9)
	case v >= 999.95e3:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 999.5:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// SourcesLine sums up the known-SA sources for a person: "xfrm 12, file /etc/k 3
// (ERROR: /etc/k:4: ...; keeping 3), 1 error", "vici /run/charon.vici 0 (NOT
// CONNECTED: ...), 2 reconnects, 5 errors".
func SourcesLine(srcs []sasource.Stats) string {
	var parts []string
	for _, s := range srcs {
		p := fmt.Sprintf("%s %d", s.Name, s.SAs)
		switch {
		case !s.Connected && s.LastError != "":
			p += fmt.Sprintf(" (NOT CONNECTED: %s)", s.LastError)
		case !s.Connected:
			p += " (NOT CONNECTED)"
		case s.LastError != "":
			p += fmt.Sprintf(" (ERROR: %s; keeping %d)", s.LastError, s.SAs)
		}
		if s.Resyncs > 0 {
			p += ", " + Counted(s.Resyncs, "resync") + " after lost events"
		}
		if s.Reconnects > 0 {
			p += ", " + Counted(s.Reconnects, "reconnect")
		}
		if s.Errors > 0 { // past ones too: a source that fails now and then is worth a look
			p += ", " + Counted(s.Errors, "error")
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// VerdictLine sums up the unknown table's packets by verdict, every verdict in
// order: "unknown 1200, stale 0, rekey-race 14, collision 0, reserved 3".
func VerdictLine(by map[string]uint64) string {
	parts := make([]string, 0, len(Verdicts))
	for _, v := range Verdicts {
		parts = append(parts, fmt.Sprintf("%s %d", v, by[v]))
	}
	return strings.Join(parts, ", ")
}

// FromString names a known SA's known-SA sources for a person: "xfrm, --known-spi",
// or "-" when not known (an empty cell would read as the next column's).
func FromString(from []string) string {
	if len(from) == 0 {
		return "-"
	}
	return strings.Join(from, ", ")
}

// Counted is a count and its noun for people to read: "1 row", "2 rows", "0
// rows". Only regular plurals (noun + "s"), which are all spiwatch prints.
func Counted[N ~int | ~int64 | ~uint32 | ~uint64](n N, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// IfaceLabel is a watched interface for the header line: "eth0 (native)", or
// "eth0 (native, LINK DOWN)" while nothing can arrive.
func IfaceLabel(i Iface) string {
	if i.LinkDown {
		return fmt.Sprintf("%s (%s, LINK DOWN)", i.Name, i.Mode)
	}
	return fmt.Sprintf("%s (%s)", i.Name, i.Mode)
}

// DropLabel is what the header says in drop mode.
func DropLabel(above uint32) string {
	if above > 0 {
		return fmt.Sprintf("DROPPING unknown-SPI packets above %d pkt/s per source", above)
	}
	return "DROPPING unknown-SPI packets"
}

// CollisionLines are the warnings for known SAs in collision, one per SA: the
// dangerous case, so every output puts it at the top.
func CollisionLines(s *Snapshot) []string {
	var out []string
	for _, k := range s.Known {
		if k.Collision {
			out = append(out, fmt.Sprintf("COLLISION: known SA %s receives ESP from %d sources within %s: %s (%s from other than the first)",
				k.SA, len(k.ActiveSources), s.CollisionWindow, SourcesString(k.ActiveSources), Counted(k.OtherPackets, "packet")))
		}
	}
	return out
}

// KnownByConcern orders known SAs for display: collisions, restarts, replay
// suspects, loss, then by packets; SAs that never saw a packet are left out.
func KnownByConcern(known []KnownRow) []KnownRow {
	var out []KnownRow
	for _, k := range known {
		if k.Packets > 0 {
			out = append(out, k)
		}
	}
	rank := func(k KnownRow) int {
		switch {
		case k.Collision:
			return 0
		case k.Seq.Restarts > 0:
			return 1
		case k.Seq.Replays > 0:
			return 2
		case k.Seq.Lost > 0:
			return 3
		}
		return 4
	}
	sort.SliceStable(out, func(a, b int) bool {
		if ra, rb := rank(out[a]), rank(out[b]); ra != rb {
			return ra < rb
		}
		return out[a].Packets > out[b].Packets
	})
	return out
}

// writeKnown writes the known SAs with traffic: packets, sequence health and
// sources (top rows; 0: all).
func writeKnown(b *strings.Builder, s *Snapshot, top int) {
	rows := KnownByConcern(s.Known)
	if len(rows) == 0 {
		return
	}
	n := len(rows)
	if top > 0 && n > top {
		n = top
	}
	fmt.Fprintf(b, "known SAs with traffic: %d of %d\n", n, len(rows))
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SA\tpackets\tlost\tlate\tdup\treplay-suspect\trestarts\tsources\tlast seen\tfrom\tconcern")
	for _, k := range rows[:n] {
		srcs := k.Sources
		if k.Collision {
			srcs = k.ActiveSources
		}
		lost := Percent(k.LossRatio())
		if k.Seq.Spread {
			lost += "~" // estimated from the sequence span: packets on several CPUs
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", k.SA, k.Packets, lost, k.Seq.Late, k.Seq.Dups,
			k.Seq.Replays, k.Seq.Restarts, SourcesString(srcs), Ago(s.Time, k.LastSeen), FromString(k.From), KnownProblem(k))
	}
	tw.Flush()
}
