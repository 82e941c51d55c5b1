// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/loader"
)

// pinnedFlags parses the flags of status, stats and detach.
type pinnedFlags struct {
	pinPath  string
	json     bool
	interval time.Duration
	top      int
	ifaces   []string
}

func parsePinned(name, usage string, args []string, stderr io.Writer, withReport, withIfaces bool) (*pinnedFlags, int, bool) {
	var f pinnedFlags
	fs := pflag.NewFlagSet("spiwatch "+name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	fs.StringVar(&f.pinPath, "pin-path", loader.DefaultPinPath, "directory on the BPF filesystem holding spiwatch's pins")
	if withReport {
		fs.BoolVar(&f.json, "json", false, "print the report as one JSON object")
		fs.DurationVar(&f.interval, "interval", time.Second, "time over which rates are measured")
		fs.IntVar(&f.top, "top", 20, "unknown SPIs shown, highest rate first (0: all)")
	}
	if withIfaces {
		fs.StringArrayVarP(&f.ifaces, "interface", "i", nil, "detach only this interface (repeatable; default: all, and remove the maps)")
	}
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\nExit status: 0 done, 1 nothing pinned or a map or link could not be read or removed, 2 bad usage.\n")
	}
	if code, ok := parseFlags(fs, args, "spiwatch "+name, 0, stderr); !ok {
		return nil, code, false
	}
	if withReport && (f.interval < 10*time.Millisecond || f.top < 0) {
		fmt.Fprintf(stderr, "spiwatch %s: --interval must be at least 10ms and --top 0 or more\n", name)
		return nil, exitUsage, false
	}
	return &f, exitOK, true
}

// pinnedIfaces describes the interfaces spiwatch left pinned.
func pinnedIfaces(dir string) ([]report.Iface, []loader.PinnedLink, error) {
	pins, err := loader.PinnedLinks(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("nothing pinned in %s (%w): start spiwatch run --pin first", dir, err)
	}
	var ifs []report.Iface
	for _, p := range pins {
		i := report.Iface{Name: p.Iface, Slot: p.Slot, Mode: "-"}
		if ifc, err := net.InterfaceByName(p.Iface); err == nil {
			i.Ifindex = ifc.Index
			i.Mode, _ = loader.DescribeAttachment(ifc.Index)
		} else {
			i.Problem = "interface not found"
		}
		ifs = append(ifs, i)
	}
	return ifs, pins, nil
}

const statsUsage = `spiwatch stats reads the maps that spiwatch run --pin left pinned and prints one
report, rates measured over --interval, without loading or attaching anything.

Usage:
  spiwatch stats [--json] [--interval 1s] [--top N] [--pin-path DIR]

Flags:
`

func runStats(args []string, stdout, stderr io.Writer) int {
	f, code, ok := parsePinned("stats", statsUsage, args, stderr, true, false)
	if !ok {
		return code
	}
	ifs, pins, err := pinnedIfaces(f.pinPath)
	if err == nil && len(ifs) == 0 {
		err = fmt.Errorf("no interface is pinned in %s", f.pinPath)
	}
	var action loader.PinnedAction
	var warn string
	if err == nil {
		action, warn, err = pinnedAction(pins)
	}
	if err != nil {
		fmt.Fprintf(stderr, "spiwatch stats: %v\n", err)
		return exitError
	}
	if warn != "" {
		fmt.Fprintf(stderr, "spiwatch stats: %s\n", warn)
	}
	m, closeMaps, err := loader.OpenPinnedMaps(f.pinPath)
	if err != nil {
		fmt.Fprintf(stderr, "spiwatch stats: %v\n", err)
		return exitError
	}
	defer closeMaps()
	rep, err := report.New(m, ifs)
	if err != nil {
		fmt.Fprintf(stderr, "spiwatch stats: %v\n", err)
		return exitError
	}
	rep.Top, rep.Action, rep.DropAbove = f.top, action.String(), action.DropAbove
	time.Sleep(f.interval)
	s, err := rep.Take()
	if err == nil {
		if f.json {
			err = report.WriteJSON(stdout, s, f.top)
		} else {
			err = report.WriteText(stdout, s, f.top)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "spiwatch stats: %v\n", err)
		return exitError
	}
	return exitOK
}

// pinnedAction is what the pinned programs do with unknown-SPI packets. Runs
// with other settings may have left interfaces pinned, and the report has one
// action: then the first that drops is reported, and warn says which does what.
func pinnedAction(pins []loader.PinnedLink) (a loader.PinnedAction, warn string, err error) {
	var each []string
	differ := false
	for i, p := range pins {
		pa, err := loader.ReadPinnedAction(p.Path)
		if err != nil {
			return a, "", err
		}
		if i == 0 || (pa.DropUnknown && !a.DropUnknown) {
			differ = differ || i > 0
			a = pa
		} else if pa != a {
			differ = true
		}
		each = append(each, fmt.Sprintf("%s: %s", p.Iface, describeAction(pa)))
	}
	if differ {
		warn = "the pinned programs do different things with unknown SPIs (" + strings.Join(each, "; ") +
			"): the report says the first that drops"
	}
	return a, warn, nil
}

func describeAction(a loader.PinnedAction) string {
	if a.DropAbove > 0 {
		return fmt.Sprintf("drop above %d packets/s per source", a.DropAbove)
	}
	return a.String()
}

const statusUsage = `spiwatch status lists where spiwatch run --pin left its program attached: interface,
XDP mode, program id and packets counted so far.

Usage:
  spiwatch status [--pin-path DIR]

Flags:
`

func runStatus(args []string, stdout, stderr io.Writer) int {
	f, code, ok := parsePinned("status", statusUsage, args, stderr, false, false)
	if !ok {
		return code
	}
	ifs, pins, err := pinnedIfaces(f.pinPath)
	if err != nil {
		fmt.Fprintf(stderr, "spiwatch status: %v\n", err)
		return exitError
	}
	if len(pins) == 0 {
		fmt.Fprintf(stdout, "spiwatch: nothing attached (no pinned links in %s)\n", f.pinPath)
		return exitOK
	}
	m, closeMaps, err := loader.OpenPinnedMaps(f.pinPath)
	if err != nil {
		fmt.Fprintf(stderr, "spiwatch status: %v\n", err)
		return exitError
	}
	defer closeMaps()
	fmt.Fprintf(stdout, "%-16s %-8s %-10s %-28s %14s\n", "interface", "slot", "mode", "program", "packets")
	for i, p := range pins {
		mode, prog := "-", "not attached: "+ifs[i].Problem
		if ifs[i].Ifindex != 0 {
			mode, prog = loader.DescribeAttachment(ifs[i].Ifindex)
		}
		c, err := m.Counters(p.Slot)
		if err != nil {
			fmt.Fprintf(stderr, "spiwatch status: %v\n", err)
			return exitError
		}
		fmt.Fprintf(stdout, "%-16s %-8d %-10s %-28s %14d\n", p.Iface, p.Slot, mode, prog, c.Total().Packets)
	}
	return exitOK
}

const detachUsage = `spiwatch detach removes what spiwatch run --pin left: the XDP program from the
interfaces and, when none is left, the pinned maps and their directory.

Usage:
  spiwatch detach [-i IFACE ...] [--pin-path DIR]

Flags:
`

func runDetach(args []string, stdout, stderr io.Writer) int {
	f, code, ok := parsePinned("detach", detachUsage, args, stderr, false, true)
	if !ok {
		return code
	}
	_, pins, err := pinnedIfaces(f.pinPath)
	if err != nil {
		fmt.Fprintf(stderr, "spiwatch detach: %v\n", err)
		return exitError
	}
	want := map[string]bool{}
	for _, i := range f.ifaces {
		want[i] = true
	}
	left := 0
	for _, p := range pins {
		if len(want) > 0 && !want[p.Iface] {
			left++
			continue
		}
		delete(want, p.Iface)
		if err := loader.UnpinLink(p.Path); err != nil {
			fmt.Fprintf(stderr, "spiwatch detach: %v\n", err)
			return exitError
		}
		fmt.Fprintf(stdout, "spiwatch: detached from %s\n", p.Iface)
	}
	for i := range want {
		fmt.Fprintf(stderr, "spiwatch detach: %s is not attached by spiwatch (no pin in %s)\n", i, f.pinPath)
		return exitError
	}
	if left == 0 {
		if err := loader.Unpin(f.pinPath); err != nil {
			fmt.Fprintf(stderr, "spiwatch detach: %v\n", err)
			return exitError
		}
		fmt.Fprintf(stdout, "spiwatch: removed %s\n", f.pinPath)
	}
	return exitOK
}

// pinnedElsewhere is a notice naming the interfaces the pin directory holds
// links for that this run does not watch (nil-safe: "" when there are none).
// Their programs stay attached with the settings of the run that left them,
// which may drop, and this run does not report them.
func pinnedElsewhere(dir string, watched []string) string {
	pins, err := loader.PinnedLinks(dir)
	if err != nil {
		return ""
	}
	var others []string
	for _, p := range pins {
		if slices.Contains(watched, p.Iface) {
			continue
		}
		what := "settings unreadable"
		if a, err := loader.ReadPinnedAction(p.Path); err == nil {
			what = describeAction(a)
		}
		others = append(others, fmt.Sprintf("%s (%s)", p.Iface, what))
	}
	if len(others) == 0 {
		return ""
	}
	return fmt.Sprintf("spiwatch: also attached from %s by an earlier run, not reported by this one: %s (spiwatch stats reads them, spiwatch detach -i IFACE removes one)\n",
		dir, strings.Join(others, ", "))
}
