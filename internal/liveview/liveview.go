// SPDX-License-Identifier: Apache-2.0

// Package liveview is spiwatch's full-screen view, in the manner of top and iftop:
// it redraws in place every interval, sorts the unknown-SPI table by the column the
// user picks, and always gives the terminal back as it found it.
package liveview

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/report"
)

// maxKnownRows bounds the known SAs with concerns shown above the unknown table.
const maxKnownRows = 5

// Sort orders of the unknown-SPI table, cycled with s.
var sorts = []string{"rate", "packets", "last seen", "first seen", "SPI"}

// Info is what the header shows besides the snapshot.
type Info struct {
	Started      time.Time
	KnownSources string // where the known SAs came from, e.g. "flags, file"
}

// View is the live view's state.
type View struct {
	info   Info
	sort   int
	paused bool
	last   *report.Snapshot
}

// Run shows the view on the terminal out, reading keys from in, taking a snapshot
// every interval until q, Ctrl-C, ctx's end, or take fails (its error is returned
// after the terminal is restored).
func Run(ctx context.Context, in, out *os.File, interval time.Duration, take func() (*report.Snapshot, error), info Info) (err error) {
	state, err := term.MakeRaw(int(in.Fd()))
	if err != nil {
		return fmt.Errorf("live view: %w (use --plain for line output)", err)
	}
	// Alternate screen, hidden cursor; undone on every way out, panics included.
	io.WriteString(out, "\x1b[?1049h\x1b[?25l")
	defer func() {
		io.WriteString(out, "\x1b[?25h\x1b[?1049l")
		term.Restore(int(in.Fd()), state)
		if r := recover(); r != nil {
			panic(r)
		}
	}()

	keys := make(chan byte, 16)
	go func() {
		b := make([]byte, 1)
		for {
			if n, err := in.Read(b); err != nil || n == 0 {
				close(keys)
				return
			}
			keys <- b[0]
		}
	}()
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)

	v := &View{info: info}
	draw := func() {
		w, h, err := term.GetSize(int(out.Fd()))
		if err != nil {
			w, h = 80, 24
		}
		io.WriteString(out, "\x1b[H\x1b[2J"+strings.ReplaceAll(v.Render(w, h), "\n", "\r\n"))
	}
	refresh := func() error {
		s, err := take()
		if err != nil {
			return err
		}
		if !v.paused {
			v.last = s
		}
		draw()
		return nil
	}
	if err := refresh(); err != nil {
		return err
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if err := refresh(); err != nil {
				return err
			}
		case <-winch:
			draw()
		case k, ok := <-keys:
			if !ok {
				return nil
			}
			switch k {
			case 'q', 'Q', 3, 4: // q, Ctrl-C, Ctrl-D
				return nil
			case 's', 'S':
				v.sort = (v.sort + 1) % len(sorts)
			case 'p', 'P', ' ':
				v.paused = !v.paused
			}
			draw()
		}
	}
}

// Render lays the last snapshot out for a w×h terminal.
func (v *View) Render(w, h int) string {
	s := v.last
	if s == nil {
		return "spiwatch: waiting for the first snapshot\n"
	}
	if w <= 0 || h <= 0 { // some ttys report 0×0 without an error
		w, h = 80, 24
	}
	var lines []string
	add := func(format string, a ...any) { lines = append(lines, fmt.Sprintf(format, a...)) }

	var ifs []string
	for _, i := range s.Ifaces {
		if i.Problem != "" {
			ifs = append(ifs, fmt.Sprintf("%s (%s, NOT WATCHED: %s)", i.Name, i.Mode, i.Problem))
		} else {
			ifs = append(ifs, report.IfaceLabel(i.Iface))
		}
	}
	state := ""
	if v.paused {
		state = "  PAUSED"
	}
	if s.Action == "drop" {
		state += "  " + report.DropLabel(s.DropAbove)
	}
	add("spiwatch  %s  up %s  %s%s", strings.Join(ifs, ", "), time.Since(v.info.Started).Round(time.Second), s.Time.Format("15:04:05"), state)
	evict := ""
	if s.Table.InsertFails > 0 {
		evict = fmt.Sprintf(", %d not recorded", s.Table.InsertFails)
	}
	from := v.info.KnownSources
	if len(s.Sources) > 0 {
		from = report.SourcesLine(s.Sources)
	}
	add("known SAs %d (%s)  unknown table %d/%d, %d evicted%s", len(s.Known), from,
		s.Table.Entries, s.Table.Capacity, s.Table.Evictions, evict)
	if s.Rate != nil {
		add("rate limit: %s with a bucket (of %d), %d evicted, %d without one", report.Counted(s.Rate.Sources, "source"), s.Rate.Capacity, s.Rate.Evictions, s.Rate.Fails)
	}
	// Known SAs in collision first of all: someone else's traffic lands in them.
	for _, l := range report.CollisionLines(s) {
		add("%s", l)
	}
	add("")
	add("%-14s %-9s %9s %9s %14s %16s", "class", "outcome", "pkt/s", "bit/s", "packets", "bytes")
	secs := s.Interval.Seconds()
	rate := func(n uint64) float64 {
		if secs <= 0 {
			return 0
		}
		return float64(n) / secs
	}
	for c := classify.Class(0); c < classify.NumClasses; c++ {
		for o := classify.Outcome(0); o < classify.NumOutcomes; o++ {
			now, d := s.Total.Now[c][o], s.Total.Delta[c][o]
			esp := c == classify.ClassESP || c == classify.ClassESPInUDP
			if (o == classify.OutcomeNone) == esp || (now.Packets == 0 && !(c == classify.ClassESP && o != classify.OutcomeNone)) {
				continue
			}
			oname := o.String()
			if o == classify.OutcomeNone {
				oname = "-"
			}
			add("%-14s %-9s %9s %9s %14d %16d", c, oname, report.Human(rate(d.Packets)), report.Human(8*rate(d.Bytes)), now.Packets, now.Bytes)
			if o == classify.OutcomeUnknown && s.Action == "drop" {
				dn, dd := s.Total.Dropped[c], s.Total.DroppedDelta[c]
				add("%-14s %-9s %9s %9s %14d %16d", c, "dropped", report.Human(rate(dd.Packets)), report.Human(8*rate(dd.Bytes)), dn.Packets, dn.Bytes)
				pn, pd := now.Packets-min(now.Packets, dn.Packets), d.Packets-min(d.Packets, dd.Packets)
				pb, pdb := now.Bytes-min(now.Bytes, dn.Bytes), d.Bytes-min(d.Bytes, dd.Bytes)
				add("%-14s %-9s %9s %9s %14d %16d", c, "passed", report.Human(rate(pd)), report.Human(8*rate(pdb)), pn, pb)
			}
		}
	}
	t := s.Total.Now.Total()
	add("%-14s %-9s %9s %9s %14d %16d", "total", "", report.Human(rate(s.Total.Delta.Total().Packets)), report.Human(8*rate(s.Total.Delta.Total().Bytes)), t.Packets, t.Bytes)
	add("")

	// Known SAs with a concern (collision, restart, replay suspects, loss): at
	// most maxKnownRows, so the unknown table keeps the screen.
	var concerns []report.KnownRow
	for _, k := range report.KnownByConcern(s.Known) {
		if report.KnownProblem(k) != "" {
			concerns = append(concerns, k)
		}
	}
	if len(concerns) > 0 {
		add("known SAs with concerns: %d", len(concerns))
		add("%-26s %10s %8s %8s %8s %8s  %-12s %s", "SA", "packets", "lost", "replay", "restarts", "other", "from", "concern / sources")
		for i, k := range concerns {
			if i == maxKnownRows {
				add("... %d more (spiwatch --json lists all)", len(concerns)-i)
				break
			}
			srcs := k.Sources
			if k.Collision {
				srcs = k.ActiveSources
			}
			add("%-26s %10d %8s %8d %8d %8d  %-12s %s: %s", k.SA, k.Packets, report.Percent(k.LossRatio()), k.Seq.Replays, k.Seq.Restarts,
				k.OtherPackets, report.FromString(k.From), report.KnownProblem(k), report.SourcesString(srcs))
		}
		add("")
	}

	rows := slices.Clone(s.Unknown)
	v.sortRows(rows)
	add("unknown SPIs: %d, sorted by %s   [q] quit  [s] sort  [p] pause", max(s.UnknownRows, len(rows)), sorts[v.sort])
	if len(rows) > 0 { // rekey races apart: not the peers' fault
		add("packets by verdict: %s", report.VerdictLine(s.UnknownByVerdict))
	}
	extra := diagLines(s)
	room := h - len(lines) - 2 - len(extra)
	if room < len(rows) {
		rows = rows[:max(room, 0)]
	}
	// Columns as wide as what they hold now (IPv6 peers are long, IPv4 ones short).
	peerW, localW, ifW := len("peer"), len("local"), len("iface")
	for _, u := range rows {
		peerW = max(peerW, len(report.HostPort(u.Src, u.SrcPort)))
		localW = max(localW, len(report.HostPort(u.Dst, u.DstPort)))
		ifW = max(ifW, len(u.Iface))
	}
	row := fmt.Sprintf("%%-10s  %%-%ds  %%-%ds  %%-%ds %%10s %%8s  %%-8s  %%-9s  %%s", peerW, localW, ifW)
	add(row, "SPI", "peer", "local", "iface", "packets", "pkt/s", "first", "last", "verdict")
	for _, u := range rows {
		add(row, fmt.Sprintf("0x%08x", u.SPI), report.HostPort(u.Src, u.SrcPort), report.HostPort(u.Dst, u.DstPort), u.Iface,
			fmt.Sprint(u.Packets), report.Human(u.Rate), u.FirstSeen.Format("15:04:05"), report.Ago(s.Time, u.LastSeen), u.Verdict)
	}
	if n := max(s.UnknownRows, len(s.Unknown)); n > len(rows) {
		add("... %d more (make the terminal taller)", n-len(rows))
	}
	lines = append(lines, extra...)
	for i, l := range lines {
		lines[i] = cut(l, w)
	}
	if len(lines) > h {
		lines = lines[:h]
	}
	return strings.Join(lines, "\n")
}

// cut shortens l to w columns, on a rune boundary (counting a rune a column).
func cut(l string, w int) string {
	n := 0
	for i := range l {
		if n == w {
			return l[:i]
		}
		n++
	}
	return l
}

func (v *View) sortRows(rows []report.UnknownRow) {
	slices.SortStableFunc(rows, func(a, b report.UnknownRow) int {
		switch sorts[v.sort] {
		case "packets":
			return cmpDesc(a.Packets, b.Packets)
		case "last seen":
			return b.LastSeen.Compare(a.LastSeen)
		case "first seen":
			return b.FirstSeen.Compare(a.FirstSeen)
		case "SPI":
			return cmpAsc(a.SPI, b.SPI)
		}
		if a.Rate != b.Rate {
			return cmpDesc(a.Rate, b.Rate)
		}
		return cmpDesc(a.Packets, b.Packets)
	})
}

func cmpAsc[T uint32 | uint64 | float64](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func cmpDesc[T uint32 | uint64 | float64](a, b T) int { return cmpAsc(b, a) }
