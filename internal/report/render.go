// SPDX-License-Identifier: Apache-2.0

package report

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
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
}

type jsonKnown struct {
	SPI        string `json:"spi"`
	Dst        string `json:"dst"`
	Packets    uint64 `json:"packets"`
	Bytes      uint64 `json:"bytes"`
	LastSeen   string `json:"last_seen,omitempty"`
	HighestSeq uint32 `json:"highest_seq"`
}

type jsonSnapshot struct {
	Time         string        `json:"time"`
	IntervalS    float64       `json:"interval_s"`
	Action       string        `json:"action"` // pass or drop: what happens to unknown-SPI packets
	Source       string        `json:"source,omitempty"`
	Partial      string        `json:"partial,omitempty"`
	Interfaces   []jsonIface   `json:"interfaces"`
	Total        jsonCount     `json:"total"`
	Classes      []jsonClass   `json:"classes"`
	UnknownTable jsonTable     `json:"unknown_table"`
	UnknownSPIs  []jsonUnknown `json:"unknown_spis"`
	KnownSAs     []jsonKnown   `json:"known_sas"`
	KnownSources []jsonSource  `json:"known_sources,omitempty"`
	ICMPTable    jsonTable     `json:"icmp_table"`
	ICMPErrors   []jsonICMP    `json:"icmp_errors"`
	IKETable     jsonTable     `json:"ike_table"`
	IKE          []jsonIKE     `json:"ike"`
	// IKEInitStorms: peers whose IKE_SA_INIT rate went above --ike-init-rate
	// since the previous line.
	IKEInitStorms []jsonStorm `json:"ike_init_storms,omitempty"`
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

func classesJSON(ic IfaceCounts, d time.Duration) []jsonClass {
	out := make([]jsonClass, 0, classify.NumClasses)
	for c := classify.Class(0); c < classify.NumClasses; c++ {
		jc := jsonClass{Class: c.String(), jsonCount: count(ic.Now.Class(c), ic.Delta.Class(c), d)}
		if oc := outcomesOf(c); len(oc) > 1 {
			jc.Outcomes = map[string]jsonCount{}
			for _, o := range oc {
				jc.Outcomes[o.String()] = count(ic.Now[c][o], ic.Delta[c][o], d)
			}
		}
		out = append(out, jc)
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
		Classes:   classesJSON(s.Total, s.Interval),
		UnknownTable: jsonTable{Entries: s.Table.Entries, Capacity: s.Table.Capacity, Inserts: s.Table.Inserts,
			Evictions: s.Table.Evictions, InsertFailures: s.Table.InsertFails},
		UnknownSPIs: []jsonUnknown{},
		KnownSAs:    []jsonKnown{},
	}
	for _, ic := range s.Ifaces {
		js.Interfaces = append(js.Interfaces, jsonIface{Name: ic.Name, Ifindex: ic.Ifindex, Mode: ic.Mode, Problem: ic.Problem, LinkDown: ic.LinkDown,
			Total: count(ic.Now.Total(), ic.Delta.Total(), s.Interval), Classes: classesJSON(ic, s.Interval)})
	}
	for i, u := range s.Unknown {
		if top > 0 && i >= top {
			break
		}
		js.UnknownSPIs = append(js.UnknownSPIs, jsonUnknown{
			SPI: fmt.Sprintf("0x%08x", u.SPI), Src: addrString(u.Src), Sport: u.SrcPort, Dst: addrString(u.Dst), Dport: u.DstPort,
			Interface: u.Iface, Packets: u.Packets, Bytes: u.Bytes, PPS: u.Rate,
			FirstSeen: stamp(u.FirstSeen), LastSeen: stamp(u.LastSeen), LastSeq: u.LastSeq, Verdict: u.Verdict,
		})
	}
	for _, k := range s.Known {
		js.KnownSAs = append(js.KnownSAs, jsonKnown{SPI: fmt.Sprintf("0x%08x", k.SPI), Dst: addrString(k.Dst),
			Packets: k.Packets, Bytes: k.Bytes, LastSeen: stamp(k.LastSeen), HighestSeq: k.MaxSeq})
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
	fmt.Fprintf(&b, "%s  %s  known SAs %d  unknown table %d/%d, %d evicted",
		s.Time.Format("2006-01-02 15:04:05"), strings.Join(ifs, ", "), len(s.Known),
		s.Table.Entries, s.Table.Capacity, s.Table.Evictions)
	if s.Table.InsertFails > 0 {
		fmt.Fprintf(&b, ", %d not recorded", s.Table.InsertFails)
	}
	if s.Action == "drop" {
		b.WriteString("  DROPPING unknown-SPI packets")
	}
	b.WriteString("\n")
	if len(s.Sources) > 0 {
		fmt.Fprintf(&b, "known SAs from %s\n", SourcesLine(s.Sources))
	}
	if s.Source != "" {
		fmt.Fprintf(&b, "capture %s: %s, rates averaged over it\n", s.Source, s.Interval.Round(time.Millisecond))
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
	}
	writeDiagText(&b, s, top)
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
// (ERROR: /etc/k:4: ...; keeping 3)", "vici /run/charon.vici 0 (NOT CONNECTED: ...)".
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
			p += fmt.Sprintf(", %d resyncs after lost events", s.Resyncs)
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// IfaceLabel is a watched interface for the header line: "eth0 (native)", or
// "eth0 (native, LINK DOWN)" while nothing can arrive.
func IfaceLabel(i Iface) string {
	if i.LinkDown {
		return fmt.Sprintf("%s (%s, LINK DOWN)", i.Name, i.Mode)
	}
	return fmt.Sprintf("%s (%s)", i.Name, i.Mode)
}
