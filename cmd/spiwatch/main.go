// SPDX-License-Identifier: Apache-2.0

// Command spiwatch watches IPsec traffic with XDP and reports packets whose SPI
// matches no Security Association.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/spiwatch/spiwatch/internal/eventlog"
	"github.com/spiwatch/spiwatch/internal/knownset"
	"github.com/spiwatch/spiwatch/internal/liveview"
	"github.com/spiwatch/spiwatch/internal/metrics"
	"github.com/spiwatch/spiwatch/internal/privdrop"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/loader"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // runtime failure: loading, attaching, reading maps; every interface gone
	exitUsage = 2 // bad flags or input; nothing was attached
)

const usageHead = `spiwatch watches IPsec traffic with XDP and counts packets whose SPI matches no
Security Association ("invalid SPI"), per class, peer and SPI.

Usage:
  spiwatch [run] -i IFACE [-i IFACE ...] [flags]  watch interfaces live
  spiwatch read FILE [flags]                      classify a pcap or pcapng file
  spiwatch capture -i IFACE -w FILE [flags]       write the packets that matter to pcapng
  spiwatch status | stats | detach [flags]        what run --pin left in the kernel
  (spiwatch COMMAND --help for each)

Examples:
  spiwatch -i eth0 --known-spi 0xc1a2b3c4@192.0.2.1 --known-spi 0xc5d6e7f8
  spiwatch -i eth0 --known-file /etc/spiwatch/known --json --interval 10s
  spiwatch -i eth0 --natt-port 4500 --natt-port 4501 --action drop

Flags:
`

// memoryLimit is the Go heap's soft limit unless GOMEMLIMIT says otherwise: a full
// unknown table makes garbage every interval, and a gateway tool should stay small.
const memoryLimit = 32 << 20

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "read":
			return runRead(args[1:], stdout, stderr)
		case "capture":
			return runCapture(args[1:], stdout, stderr)
		case "stats":
			return runStats(args[1:], stdout, stderr)
		case "status":
			return runStatus(args[1:], stdout, stderr)
		case "detach":
			return runDetach(args[1:], stdout, stderr)
		case "run":
			args = args[1:] // the same as without it
		case "help":
			args = []string{"--help"}
		}
	}
	var cfg Config
	fs := pflag.NewFlagSet("spiwatch", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	cfg.AddFlags(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageHead)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\nExit status: 0 stopped normally, 1 runtime error or no interface left to watch, 2 bad usage (nothing attached).\n")
	}
	if code, ok := parseFlags(fs, args, "spiwatch", 0, stderr); !ok {
		return code
	}
	if cfg.Version {
		fmt.Fprintf(stdout, "spiwatch %s\n", version)
		return exitOK
	}
	v, err := cfg.Validate()
	if err != nil {
		fmt.Fprintf(stderr, "spiwatch: %v\n", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	passSIGPIPE() // a closed stdout: spiwatch detaches and exits cleanly
	if err := watch(ctx, &cfg, v, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "spiwatch: %v\n", err)
		return exitError
	}
	return exitOK
}

// watch loads, attaches, reports every interval until ctx ends, and detaches.
func watch(ctx context.Context, cfg *Config, v *Validated, stdout, stderr io.Writer) error {
	// The event log: stderr by default, off in the live view unless --log-file.
	_, _, live := liveTerminal(cfg, stdout)
	var events *eventlog.Logger
	logToStderr := cfg.LogFile == "-" || (cfg.LogFile == "" && !live)
	if logToStderr || cfg.LogFile != "" {
		w := stderr
		if !logToStderr {
			f, err := os.OpenFile(cfg.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
			if err != nil {
				return fmt.Errorf("opening the event log: %w", err)
			}
			defer f.Close()
			w = f
		}
		var err error
		if events, err = eventlog.New(w, cfg.LogFormat, cfg.LogEvery); err != nil {
			return err
		}
	}
	logSnapshot := func(s *report.Snapshot) {
		if events == nil {
			return
		}
		for _, u := range s.NewUnknown {
			events.UnknownSPI(u)
		}
		for _, c := range s.VerdictChanges {
			events.VerdictChange(c.Row, c.From)
		}
		for _, e := range s.NewICMP {
			events.ICMPError(e)
		}
		for _, st := range s.NewIKEInitStorms {
			events.IKEInitStorm(st)
		}
		for _, e := range s.KnownEvents {
			events.KnownSA(e)
		}
		events.HeldBack(s.MoreEvents)
		events.Table(s.Table)
	}

	var metricsLn net.Listener
	if v.MetricsAddr != "" {
		var err error
		if metricsLn, err = metrics.Listen(v.MetricsAddr); err != nil {
			return err
		}
		defer metricsLn.Close()
	}
	objs, err := loader.Load(v.Settings)
	if err != nil {
		return err
	}
	// Until reporting starts, an error undoes the start (pins included): no
	// interface is left half watched. After that, pinned links stay.
	started := false
	defer func() {
		if !started {
			objs.Abort()
			return
		}
		objs.Close() // detaches every interface not pinned
		if v.Settings.PinPath != "" && !objs.PinsGoAtExit {
			fmt.Fprintf(stderr, "spiwatch: left attached and counting, pinned in %s (spiwatch stats reads it, spiwatch detach removes it)\n", v.Settings.PinPath)
		}
	}()
	if objs.PinsGoAtExit {
		fmt.Fprintf(stderr, "spiwatch: --pin: no BPF filesystem was mounted at /sys/fs/bpf in this command's mount namespace, which is its own (ip netns exec makes one): the one mounted here goes when spiwatch ends, and the pins and the program with it. To keep them, run in the host's mount namespace (nsenter --net=/run/netns/NAME spiwatch ...)\n")
	}
	if objs.XfrmLookupOff != nil {
		fmt.Fprintf(stderr, "spiwatch: --xfrm-lookup is off: %v\n", objs.XfrmLookupOff)
	} else if v.Settings.XfrmLookup {
		fmt.Fprintln(stderr, "spiwatch: --xfrm-lookup: SPIs missing from the map are looked up in the kernel's SA table")
	}
	if objs.MultiBuffer != nil {
		fmt.Fprintf(stderr, "spiwatch: %v\n", objs.MultiBuffer)
	}
	if v.NoXfrm != nil {
		fmt.Fprint(stderr, noXfrmNotice(v.NoXfrm))
	}
	known := knownset.New(objs.Maps, cfg.StaleHistory, cfg.RekeyGrace)
	if err := known.Update("--known-spi", v.FlagKnown); err != nil {
		return err
	}
	srcLog := &sourceLog{stderr: stderr, events: events, known: known}
	sources, err := startSources(ctx, v.Sources, known, srcLog)
	if err != nil {
		return err
	}
	srcLog.Started(sources, v.FlagKnown)
	var ifaces []report.Iface
	var attached []*loader.Attachment
	for _, name := range cfg.Interfaces {
		a, err := objs.Attach(name, v.Mode, cfg.Force)
		if err != nil {
			return err
		}
		attached = append(attached, a)
		ifaces = append(ifaces, report.Iface{Name: a.Iface, Ifindex: a.Ifindex, Mode: a.Mode.String(), Slot: a.Slot})
		if a.Fallback != nil {
			fmt.Fprintf(stderr, "spiwatch: %s: native XDP refused (%v); using generic XDP, which is slower\n", a.Iface, a.Fallback)
		}
		fmt.Fprintf(stderr, "spiwatch: watching %s (%s XDP, program id %d)\n", a.Iface, a.Mode, a.ProgID)
		if v.Mode != loader.ModeAuto && a.Mode != v.Mode { // a pinned link taken over keeps its mode
			fmt.Fprintf(stderr, "spiwatch: %s: kept in %s XDP as an earlier run pinned it, not --xdp-mode %s (spiwatch detach -i %s first to change it)\n",
				a.Iface, a.Mode, v.Mode, a.Iface)
		}
	}
	if v.Settings.PinPath != "" {
		fmt.Fprint(stderr, pinnedElsewhere(v.Settings.PinPath, cfg.Interfaces))
	}
	if v.Settings.DropUnknown && v.Settings.DropAbove > 0 {
		fmt.Fprintf(stderr, "spiwatch: --action drop: packets with an unknown SPI are dropped above %d per second per source address\n", v.Settings.DropAbove)
	} else if v.Settings.DropUnknown {
		fmt.Fprintln(stderr, "spiwatch: --action drop: packets with an unknown SPI are dropped")
	}
	var col *metrics.Collector
	if metricsLn != nil {
		col = metrics.NewCollector(objs.Maps, ifaces, cfg.MetricsTopUnknown)
		col.Verdict = known.Verdict
		col.CollisionWindow, col.DropAbove = cfg.CollisionWindow, v.Settings.DropAbove
		col.Sources = sourceStats(sources)
		srv, err := metrics.Serve(metricsLn, col)
		if err != nil {
			return err
		}
		defer srv.Close()
		fmt.Fprintf(stderr, "spiwatch: Prometheus metrics at http://%s/metrics\n", metricsLn.Addr())
	}
	// From here on the maps are used through descriptors we hold, which needs no
	// capability: give up what re-attaching (--wait-iface) does not need. It
	// links a program already loaded, so CAP_PERFMON (loading) goes.
	var keep []int
	if cfg.WaitIface {
		keep = []int{privdrop.CapBPF, privdrop.CapNetAdmin}
	} else if followsXfrm(v.Sources) {
		keep = []int{privdrop.CapNetAdmin} // the xfrm source dumps again after lost events
	}
	// Before Linux 5.19, kernel.unprivileged_bpf_disabled refuses even map reads
	// without CAP_BPF: said, so that nobody wonders why it stays.
	if need, why := privdrop.KeepBPFHere(); need && !slices.Contains(keep, privdrop.CapBPF) {
		keep = append(keep, privdrop.CapBPF)
		fmt.Fprintf(stderr, "spiwatch: keeping CAP_BPF: %s\n", why)
	}
	if err := privdrop.Drop(cfg.User, keep...); err != nil {
		if !errors.Is(err, privdrop.ErrCgo) || cfg.User != "" {
			return err
		}
		fmt.Fprintf(stderr, "spiwatch: keeping privileges: %v\n", err)
	} else if cfg.User != "" && len(keep) == 0 {
		fmt.Fprintf(stderr, "spiwatch: running as %s, without capabilities\n", cfg.User)
	} else if cfg.User != "" {
		fmt.Fprintf(stderr, "spiwatch: running as %s, keeping only %s\n", cfg.User, privdrop.Names(keep))
	}
	fmt.Fprintf(stderr, "spiwatch: %s; reporting every %s\n", report.Counted(known.Len(), "known SA"), cfg.Interval)

	rep, err := report.New(objs.Maps, ifaces)
	if err != nil {
		return err
	}
	rep.Action, rep.Top, rep.IKEInitRate = cfg.Action, cfg.Top, cfg.IKEInitRate
	rep.Verdict, rep.KnownFrom = known.Verdict, known.SourcesOf
	rep.CollisionWindow, rep.DropAbove = cfg.CollisionWindow, v.Settings.DropAbove
	if len(sources) > 0 {
		rep.Sources = sourceStats(sources)
	}
	started = true
	// lost remembers interfaces that stopped being watched (by counter slot), to say
	// so once on stderr and in every report; with none left, spiwatch ends. down
	// remembers links that are down, which are still watched.
	lost := map[int]string{}
	down := map[int]bool{}
	unchecked := map[int]bool{} // said that a check failed; not said again until one works
	// Interface events go to a log file; on stderr the status lines say them.
	ifaceEvent := func(iface, what string, lost bool) {
		switch {
		case events == nil || logToStderr:
		case lost:
			events.Interface(iface, what)
		default:
			events.InterfaceChange(iface, what)
		}
	}
	checkIfaces := func() error {
		for _, a := range attached {
			st := a.Status()
			if st.Unchecked != nil && !unchecked[a.Slot] {
				fmt.Fprintf(stderr, "spiwatch: %s: %v; trying again at the next report\n", a.Iface, st.Unchecked)
			}
			unchecked[a.Slot] = st.Unchecked != nil
			if st.Unchecked != nil {
				continue // nothing learnt: it stays as it was
			}
			p := st.Problem
			if p != "" && lost[a.Slot] == "" {
				fmt.Fprintf(stderr, "spiwatch: %s: %s; its counts so far stay in the reports\n", a.Iface, p)
				ifaceEvent(a.Iface, p, true)
			}
			lost[a.Slot] = lostAfter(lost[a.Slot], st)
			if lost[a.Slot] == "" {
				delete(lost, a.Slot)
			}
			if p == "" && st.Name != "" && st.Name != a.Iface {
				fmt.Fprintf(stderr, "spiwatch: %s was renamed %s; still watching it\n", a.Iface, st.Name)
				ifaceEvent(st.Name, "renamed from "+a.Iface, false)
				objs.Rename(a, st.Name)
			}
			if p == "" && st.LinkDown != down[a.Slot] {
				what := "link down: still attached, nothing arrives until it is up"
				if !st.LinkDown {
					what = "link up again"
				}
				fmt.Fprintf(stderr, "spiwatch: %s: %s\n", a.Iface, what)
				ifaceEvent(a.Iface, what, false)
				down[a.Slot] = st.LinkDown
			}
			// --wait-iface: an interface of that name is back; attach to it again.
			if cfg.WaitIface && lost[a.Slot] == "interface deleted" {
				if err := objs.Reattach(a, v.Mode); err == nil {
					delete(lost, a.Slot)
					fmt.Fprintf(stderr, "spiwatch: %s is back: watching it again (%s XDP, program id %d)\n", a.Iface, a.Mode, a.ProgID)
					ifaceEvent(a.Iface, "back: watching it again", false)
				}
			}
			now := report.Iface{Name: a.Iface, Ifindex: a.Ifindex, Mode: a.Mode.String(), Slot: a.Slot,
				Problem: lost[a.Slot], LinkDown: lost[a.Slot] == "" && down[a.Slot]}
			rep.SetIface(now)
			if col != nil {
				col.SetIface(now)
			}
		}
		if len(lost) == len(attached) && !cfg.WaitIface {
			var why []string
			for _, a := range attached {
				why = append(why, a.Iface+": "+lost[a.Slot])
			}
			return fmt.Errorf("no interface left to watch (%s)", strings.Join(why, "; "))
		}
		return nil
	}
	write := func() (bool, error) {
		ifErr := checkIfaces()
		s, err := rep.Take()
		if err != nil {
			return false, err
		}
		logSnapshot(s)
		if cfg.JSON {
			err = report.WriteJSON(stdout, s, cfg.Top)
		} else {
			err = report.WriteText(stdout, s, cfg.Top)
		}
		if errors.Is(err, syscall.EPIPE) {
			return false, nil // the reader went away (| head): stop quietly
		}
		if err == nil && ifErr != nil {
			return false, ifErr // the last report shows why
		}
		return err == nil, err
	}
	if out, in, ok := liveTerminal(cfg, stdout); ok {
		given := "none given"
		if len(cfg.KnownSPIs) > 0 {
			given = "--known-spi"
		}
		rep.Top = 0 // the view sorts by the column asked for and fits the rows to the screen
		return liveview.Run(ctx, in, out, cfg.Interval, func() (*report.Snapshot, error) {
			if err := checkIfaces(); err != nil {
				return nil, err
			}
			s, err := rep.Take()
			if err == nil {
				logSnapshot(s)
			}
			return s, err
		}, liveview.Info{Started: time.Now(), KnownSources: given})
	}
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	for n := 0; cfg.Count == 0 || n < cfg.Count; n++ {
		select {
		case <-ctx.Done():
			_, err := write() // a last report with the totals
			return err
		case <-tick.C:
		}
		if more, err := write(); err != nil || !more {
			return err
		}
	}
	return nil
}

// lostAfter is why an interface is not watched after a check, given why it was
// not before (empty: it was). A deleted interface and a program detached or
// replaced are lost until --wait-iface attaches again; a check that could not ask
// netlink learns nothing, so the interface keeps what it had and is asked again
// at the next report, not given up for a moment's ENOBUFS.
func lostAfter(prev string, st loader.Status) string {
	if st.Unchecked != nil || st.Problem == "" {
		return prev
	}
	return st.Problem
}

// liveTerminal says whether to show the live view: text output (not --json, not
// --plain, no --count) to a terminal, with a terminal to read keys from.
func liveTerminal(cfg *Config, stdout io.Writer) (out, in *os.File, ok bool) {
	f, isFile := stdout.(*os.File)
	if cfg.JSON || cfg.Plain || cfg.Count > 0 || !isFile || !term.IsTerminal(int(f.Fd())) || !term.IsTerminal(int(os.Stdin.Fd())) {
		return nil, nil, false
	}
	return f, os.Stdin, true
}

// passSIGPIPE makes a write to a closed stdout (| head, | tshark ending first)
// fail with EPIPE, which the commands handle, instead of Go killing the process.
func passSIGPIPE() {
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
}
