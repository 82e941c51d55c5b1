// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os/user"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/spiwatch/spiwatch/internal/knownsa"
	"github.com/spiwatch/spiwatch/internal/knownset"
	"github.com/spiwatch/spiwatch/internal/metrics"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/internal/sasource"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

// Config is the command line, grouped by concern.
type Config struct {
	// where and how to attach
	Interfaces []string
	XDPMode    string
	Force      bool
	Pin        bool
	PinPath    string
	WaitIface  bool
	User       string

	// what the program knows and does
	KnownSPIs  []string
	KnownFile  string
	KnownFrom  []string
	XfrmLookup bool
	NATTPorts  []string
	Action     string
	UnknownMax uint32
	KnownMax   uint32

	// reporting
	Interval time.Duration
	JSON     bool
	Plain    bool
	Top      int
	Count    int

	// diagnosis
	RekeyGrace   time.Duration
	StaleHistory time.Duration
	IKEInitRate  float64

	// NAT SPI collisions and flood mitigation
	CollisionWindow time.Duration
	DropAbove       uint32

	// event log
	LogFile   string
	LogFormat string
	LogEvery  time.Duration

	// metrics
	MetricsAddr       string
	MetricsTopUnknown int

	Version bool

	flags *pflag.FlagSet // to tell a flag given at its default from one left out
}

// AddFlags registers every flag; help texts state units and defaults.
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	c.flags = fs
	fs.StringArrayVarP(&c.Interfaces, "interface", "i", nil, "interface to watch (repeatable)")
	fs.StringVar(&c.XDPMode, "xdp-mode", "auto", "XDP attach mode: auto (native, else generic), native or generic")
	fs.BoolVar(&c.Force, "force", false, "replace an XDP program already attached to the interface")
	fs.BoolVar(&c.WaitIface, "wait-iface", false, "when a watched interface is deleted, wait for one of that name and attach again (default: go on with the others, end when none is left)")
	fs.StringVar(&c.User, "user", "", "after attaching, run as this user; either way spiwatch then drops every capability but those it still needs: CAP_NET_ADMIN while following xfrm, CAP_BPF and CAP_NET_ADMIN with --wait-iface, CAP_BPF before Linux 5.19 while kernel.unprivileged_bpf_disabled is set")
	fs.BoolVar(&c.Pin, "pin", false, "pin program links and maps so counting goes on after spiwatch exits; a later run --pin continues the counts")
	fs.StringVar(&c.PinPath, "pin-path", loader.DefaultPinPath, "directory on the BPF filesystem for --pin")

	fs.StringArrayVar(&c.KnownSPIs, "known-spi", nil, "known SA as SPI[@DESTINATION], SPI in hex (0x...) or decimal (repeatable)")
	fs.StringArrayVar(&c.KnownFrom, "known-from", nil, "follow a known-SA source: xfrm (the kernel's SAs), vici[=SOCKET] (strongSwan), file=PATH or none (repeatable; default: xfrm when this kernel has ESP, else none)")
	fs.StringVar(&c.KnownFile, "known-file", "", "file of known SAs, one SPI[@DESTINATION] per line, # comments; re-read on SIGHUP and when it changes (the same as --known-from file=PATH)")
	fs.BoolVar(&c.XfrmLookup, "xfrm-lookup", false, "on a known-SA miss, let the XDP program ask the kernel's own SA table, so an SA is known the moment it is installed (Linux 6.8+ with CONFIG_XFRM; off with a message where the kernel cannot)")
	fs.StringArrayVar(&c.NATTPorts, "natt-port", nil, "UDP port carrying ESP-in-UDP (repeatable, up to 8; default 4500)")
	fs.StringVar(&c.Action, "action", "pass", "what to do with unknown-SPI packets: pass or drop")
	fs.Uint32Var(&c.UnknownMax, "unknown-table-size", loader.DefaultUnknownMax, "entries in the unknown-SPI table (least recently seen are evicted, and counted)")
	fs.Uint32Var(&c.KnownMax, "known-table-size", loader.DefaultKnownMax, "entries in the known-SA map")

	fs.DurationVar(&c.Interval, "interval", time.Second, "time between reports")
	fs.BoolVar(&c.JSON, "json", false, "print one JSON object per interval instead of text")
	fs.BoolVar(&c.Plain, "plain", false, "print text reports line by line even on a terminal (default there: the live view)")
	fs.IntVar(&c.Top, "top", 20, "unknown SPIs shown per report, highest rate first (0: all)")
	fs.IntVar(&c.Count, "count", 0, "stop after this many reports (0: run until interrupted)")

	fs.DurationVar(&c.RekeyGrace, "rekey-grace", knownset.DefaultRekeyGrace, "an SPI unknown when first seen and known within this time is a rekey race, not a fault")
	fs.DurationVar(&c.StaleHistory, "stale-history", knownset.DefaultHistory, "an SPI whose SA was removed this recently is stale (the peer still uses a forgotten SA)")
	fs.Float64Var(&c.IKEInitRate, "ike-init-rate", report.DefaultIKEInitRate, "IKE_SA_INIT requests per second from one peer, averaged over 10 s, above which the report and event log flag an IKE_SA_INIT storm (0: never)")

	fs.DurationVar(&c.CollisionWindow, "collision-window", report.DefaultCollisionWindow, "an SPI seen towards one destination from two or more sources (addresses, or UDP ports of one address) within this time is a collision")
	fs.Uint32Var(&c.DropAbove, "drop-above", 0, "with --action drop: drop a source address's unknown-SPI packets only above this many per second (token bucket per CPU); below it they pass and are counted (default 0: drop them all)")

	fs.StringVar(&c.LogFile, "log-file", "", "write the event log (new unknown SPIs, ICMP errors about ESP, IKE_SA_INIT storms, table evictions, lost interfaces) to this file; - is stderr (default: stderr, off in the live view)")
	fs.StringVar(&c.LogFormat, "log-format", "logfmt", "event log format: logfmt or json")
	fs.DurationVar(&c.LogEvery, "log-every", 10*time.Second, "at most one event line per SPI and per peer in this time")

	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics (HOST:PORT; :PORT binds 127.0.0.1; default off)")
	fs.IntVar(&c.MetricsTopUnknown, "metrics-top-unknown", 20, "unknown-SPI rows exported as labelled series, most packets first (at most 200)")

	fs.BoolVar(&c.Version, "version", false, "print the version and exit")
}

// Upper bounds of the table sizes: above them the kernel answers only "argument
// list too long", or takes memory no gateway needs (sizes from bpftool's memlock
// on Linux 6.18).
const (
	// maxUnknownTable: an LRU hash, allocated whole at load, unknownRowBytes a row
	// (44-byte key, 48-byte value, the kernel's element and bucket): 320 MiB. A
	// gateway rebooted under 100,000 tunnels sees a few hundred thousand rows.
	maxUnknownTable = 1 << 21
	unknownRowBytes = 160
	// maxKnownTable: a hash allocated as SAs arrive (176 bytes each on every CPU);
	// at load only its buckets, a power of two of them, with the shared-SPI map's:
	// 18 bytes an entry at a power of two, up to twice that above one; 72 MiB at the
	// limit. Room for a million tunnels' SAs, both directions, while rekeying.
	maxKnownTable   = 1 << 22
	knownEntryBytes = 18
)

// Validated is the checked configuration, ready to use.
type Validated struct {
	Settings  loader.Settings
	Mode      loader.Mode
	Known     []maps.SA // all of them
	FlagKnown []maps.SA // from --known-spi
	Sources   []sasource.Spec
	// NoXfrm: without --known-from, why the kernel's SAs are not followed (nil
	// when they are, or when --known-from chose).
	NoXfrm      error
	MetricsAddr string // completed HOST:PORT; empty: no metrics
}

// Validate checks every flag before anything touches the kernel.
func (c *Config) Validate() (*Validated, error) {
	v := &Validated{}
	if len(c.Interfaces) == 0 {
		return nil, errors.New("no interface given: use -i IFACE")
	}
	// Counted first: the same name repeated is an error of its own.
	if len(c.Interfaces) > maps.MaxIfaces {
		return nil, fmt.Errorf("-i: %d interfaces given, at most %d", len(c.Interfaces), maps.MaxIfaces)
	}
	seen := map[string]bool{}
	for _, i := range c.Interfaces {
		if i == "" {
			return nil, errors.New("-i: empty interface name")
		}
		if seen[i] {
			return nil, fmt.Errorf("-i %s: interface given twice", i)
		}
		seen[i] = true
		if _, err := net.InterfaceByName(i); err != nil {
			return nil, fmt.Errorf("-i %s: interface not found (see ip link)", i)
		}
	}
	var err error
	if v.Mode, err = loader.ParseMode(c.XDPMode); err != nil {
		return nil, fmt.Errorf("--xdp-mode: %w", err)
	}
	switch c.Action {
	case "pass":
	case "drop":
		v.Settings.DropUnknown = true
	default:
		return nil, fmt.Errorf("--action %q: want pass or drop", c.Action)
	}
	if v.Settings.NATTPorts, err = parseNATTPorts(c.NATTPorts); err != nil {
		return nil, err
	}
	if err := checkTableSizes(c.UnknownMax, c.KnownMax); err != nil {
		return nil, err
	}
	v.Settings.UnknownMax, v.Settings.KnownMax = c.UnknownMax, c.KnownMax
	v.Settings.XfrmLookup = c.XfrmLookup
	if c.Pin {
		if c.PinPath == "" {
			return nil, fmt.Errorf("--pin-path \"\": want a directory on the BPF filesystem (default %s)", loader.DefaultPinPath)
		}
		v.Settings.PinPath = c.PinPath
	} else if c.given("pin-path") {
		// Most likely --pin was forgotten: without it nothing would be pinned, and
		// the program would go with the process, unlike what was asked for.
		return nil, fmt.Errorf("--pin-path %s: only with --pin (without it nothing is pinned)", c.PinPath)
	}
	if c.Interval < 10*time.Millisecond {
		return nil, fmt.Errorf("--interval %s: must be at least 10ms", c.Interval)
	}
	if c.JSON && c.Plain {
		return nil, errors.New("--json and --plain: choose one (--plain is for text reports)")
	}
	if c.Top < 0 {
		return nil, fmt.Errorf("--top %d: must be 0 (all) or more", c.Top)
	}
	if c.Count < 0 {
		return nil, fmt.Errorf("--count %d: must be 0 (no limit) or more", c.Count)
	}

	if v.Sources, v.NoXfrm, err = knownFrom(c.KnownFrom, c.KnownFile); err != nil {
		return nil, err
	}
	// Files are read now, so that a bad one fails before anything is attached.
	var files []string
	for _, s := range v.Sources {
		if s.Kind == "file" {
			files = append(files, s.Arg)
		}
	}
	if v.Known, err = readKnown(c.KnownSPIs, files, c.KnownMax); err != nil {
		return nil, err
	}
	if v.FlagKnown, err = knownsa.ParseAll(c.KnownSPIs); err != nil {
		return nil, err
	}
	if c.RekeyGrace < 0 {
		return nil, fmt.Errorf("--rekey-grace %s: must be 0 or more", c.RekeyGrace)
	}
	if c.StaleHistory < 0 {
		return nil, fmt.Errorf("--stale-history %s: must be 0 or more", c.StaleHistory)
	}
	if c.IKEInitRate < 0 || math.IsNaN(c.IKEInitRate) || math.IsInf(c.IKEInitRate, 0) {
		return nil, fmt.Errorf("--ike-init-rate %v: must be a number of requests per second, 0 or more", c.IKEInitRate)
	}
	if c.MetricsAddr != "" {
		if v.MetricsAddr, err = metrics.ListenAddr(c.MetricsAddr); err != nil {
			return nil, err
		}
	}
	if c.User != "" && c.WaitIface {
		return nil, errors.New("--user and --wait-iface together are not supported: attaching again needs CAP_BPF and CAP_NET_ADMIN; run --wait-iface as root, which then keeps only those two")
	}
	// Looked up now: switching fails only after attaching, too late for a typo.
	if c.User != "" {
		if _, err := user.Lookup(c.User); err != nil {
			var unknown user.UnknownUserError
			if errors.As(err, &unknown) {
				return nil, fmt.Errorf("--user %s: no such user (see getent passwd)", c.User)
			}
			return nil, fmt.Errorf("--user %s: looking the user up: %w", c.User, err)
		}
	}
	if c.LogFormat != "logfmt" && c.LogFormat != "json" {
		return nil, fmt.Errorf("--log-format %q: want logfmt or json", c.LogFormat)
	}
	if c.LogEvery < 0 {
		return nil, fmt.Errorf("--log-every %s: must be 0 or more", c.LogEvery)
	}
	if c.CollisionWindow <= 0 {
		return nil, fmt.Errorf("--collision-window %s: must be more than 0", c.CollisionWindow)
	}
	if c.DropAbove > 0 {
		if c.Action != "drop" {
			return nil, fmt.Errorf("--drop-above %d: only with --action drop (unknown-SPI packets pass otherwise)", c.DropAbove)
		}
		if c.DropAbove > loader.MaxDropAbove {
			return nil, fmt.Errorf("--drop-above %d: at most %d packets per second", c.DropAbove, loader.MaxDropAbove)
		}
		v.Settings.DropAbove = c.DropAbove
	}
	if c.MetricsTopUnknown < 0 || c.MetricsTopUnknown > metrics.MaxUnknownSeries {
		return nil, fmt.Errorf("--metrics-top-unknown %d: must be 0-%d", c.MetricsTopUnknown, metrics.MaxUnknownSeries)
	}
	return v, nil
}

// given says whether the named flag was on the command line.
func (c *Config) given(name string) bool {
	return c.flags != nil && c.flags.Changed(name)
}

// dedupe drops repeated SAs, keeping the first of each.
func dedupe(sas []maps.SA) []maps.SA {
	seen := make(map[maps.SA]bool, len(sas))
	out := sas[:0]
	for _, sa := range sas {
		if !seen[sa] {
			seen[sa] = true
			out = append(out, sa)
		}
	}
	return out
}

// parseNATTPorts reads --natt-port values and checks the set.
func parseNATTPorts(in []string) ([]uint16, error) {
	var ports []uint16
	for _, p := range in {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("--natt-port %q: not a UDP port (1-65535)", p)
		}
		ports = append(ports, uint16(n))
	}
	if err := (loader.Settings{NATTPorts: ports}).Validate(); err != nil {
		return nil, fmt.Errorf("--natt-port: %w", err)
	}
	return ports, nil
}

// knownFrom checks the --known-from values (with --known-file as one more file)
// and fills in the default; noXfrm says why the default has no xfrm.
func knownFrom(values []string, knownFile string) (specs []sasource.Spec, noXfrm, err error) {
	seen := map[sasource.Spec]sasource.Spec{} // by sameSource: as first given
	none := false
	for _, val := range values {
		s, err := sasource.ParseSpec(val)
		if err != nil {
			return nil, nil, err
		}
		if s.Kind == "none" {
			none = true
			continue
		}
		if first, dup := seen[sameSource(s)]; dup {
			if first == s {
				return nil, nil, fmt.Errorf("--known-from %s: given twice", s)
			}
			return nil, nil, fmt.Errorf("--known-from %s and --known-from %s: the same source given twice", first, s)
		}
		seen[sameSource(s)] = s
		specs = append(specs, s)
	}
	if none && len(specs) > 0 {
		return nil, nil, fmt.Errorf("--known-from none: cannot be combined with --known-from %s", specs[0])
	}
	if len(values) == 0 {
		specs, noXfrm = defaultSources()
	}
	if knownFile != "" {
		s := sasource.Spec{Kind: "file", Arg: knownFile}
		if first, dup := seen[sameSource(s)]; dup {
			return nil, nil, fmt.Errorf("--known-file %s: also given as --known-from %s", knownFile, first)
		}
		specs = append(specs, s)
	}
	return specs, noXfrm, nil
}

// sameSource is spec with its defaults filled in, so that two specs of one
// source compare equal: sources are told apart in the known set by name, and
// two of one name would each replace the other's SAs.
func sameSource(spec sasource.Spec) sasource.Spec {
	if spec.Kind == "vici" && spec.Arg == "" {
		spec.Arg = sasource.DefaultVICISocket
	}
	return spec
}

// readKnown gathers the known SAs of --known-spi and the known-SPI files.
func readKnown(spis []string, files []string, limit uint32) ([]maps.SA, error) {
	known, err := knownsa.ParseAll(spis)
	if err != nil {
		return nil, err
	}
	for _, file := range files {
		fromFile, err := knownsa.ReadFile(file)
		if err != nil {
			return nil, err
		}
		known = append(known, fromFile...)
	}
	known = dedupe(known) // the same SA twice takes one map entry
	if len(known) > int(limit) {
		return nil, fmt.Errorf("%d known SAs do not fit --known-table-size %d", len(known), limit)
	}
	return known, nil
}

// parseFlags parses args for the command cmd ("spiwatch", "spiwatch read", ...),
// which takes at most maxArgs arguments besides its flags (-1: the command
// checks them itself). When it returns false
// the command ends with code: exitOK after --help, or exitUsage after saying what
// was wrong.
func parseFlags(fs *pflag.FlagSet, args []string, cmd string, maxArgs int, stderr io.Writer) (code int, ok bool) {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, pflag.ErrHelp):
		return exitOK, false
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v (see %s --help)\n", cmd, err, cmd)
		return exitUsage, false
	case maxArgs >= 0 && fs.NArg() > maxArgs:
		fmt.Fprintf(stderr, "%s: unexpected argument %q (see %s --help)\n", cmd, fs.Arg(maxArgs), cmd)
		return exitUsage, false
	}
	return 0, true
}

// checkTableSizes bounds --unknown-table-size and --known-table-size (run and
// read): kernel memory is taken at load, before anything is counted.
func checkTableSizes(unknownMax, knownMax uint32) error {
	if unknownMax < 1 {
		return errors.New("--unknown-table-size must be at least 1")
	}
	if knownMax < 1 {
		return errors.New("--known-table-size must be at least 1")
	}
	if unknownMax > maxUnknownTable {
		return fmt.Errorf("--unknown-table-size %d: at most %d (each row takes about 160 bytes of kernel memory from the start: %d MiB at the limit); give a smaller size: a full table evicts the least recently seen rows and counts them",
			unknownMax, maxUnknownTable, maxUnknownTable*unknownRowBytes>>20)
	}
	if knownMax > maxKnownTable {
		return fmt.Errorf("--known-table-size %d: at most %d (the map takes up to 36 bytes of kernel memory per entry from the start, %d MiB at the limit, and each SA in it 176 bytes on every CPU); give a size that fits the gateway's SAs, with room for rekeying",
			knownMax, maxKnownTable, maxKnownTable*knownEntryBytes>>20)
	}
	return nil
}
