// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/spf13/pflag"

	"github.com/spiwatch/spiwatch/internal/capwrite"
	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

const captureUsageHead = `spiwatch capture writes the packets worth looking at to a pcapng file: the XDP
program copies the head of the frames asked for (--class, --spi) into a ring
buffer, deciding in the kernel which to keep: the first --per-spi packets of every
new unknown SPI (per SPI, peer and ports) always, then up to --rate per second per
CPU. Each packet's comment says why it was kept (class, SPI, verdict, action and
rule), and Wireshark and tshark show it. Frames the ring buffer could not take are
counted and reported.

With spiwatch run already on the interface (pinned or not), capture uses that
program and its maps: both count into one set, and nothing is reloaded. Otherwise
capture loads and attaches spiwatch itself (with --known-spi/--known-file) and
detaches when it ends. One capture at a time per program.

Usage:
  spiwatch capture -i IFACE -w FILE|- [flags]

Examples:
  spiwatch capture -i eth0 -w bad-spi.pcapng
  spiwatch capture -i eth0 -w - --class ike --rate 50 | tshark -r -
  spiwatch capture -i eth0 -w /var/tmp/esp.pcapng --class esp --spi 0xc1a2b3c4 --snaplen 0 --rotate 100MB --rotate-keep 5

Flags:
`

// captureFlags are spiwatch capture's flags.
type captureFlags struct {
	ifaces     []string
	write      string
	classes    []string
	spis       []string
	snaplen    uint32
	perSPI     uint32
	rate       uint32
	count      uint64
	duration   time.Duration
	rotate     string
	rotateKeep int
	window     time.Duration
	knownSPIs  []string
	knownFile  string
	nattPorts  []string
	xdpMode    string
}

// captureSetup is what the flags mean, checked.
type captureSetup struct {
	set         maps.CaptureSettings // without interfaces
	rotateBytes int64
	known       []maps.SA
	natt        []uint16
	mode        loader.Mode
	standalone  bool // --known-spi, --known-file or --natt-port given
}

// captureClasses maps --class names to class-mask bits.
var captureClasses = map[string]uint32{
	"unknown":    maps.CapUnknown,
	"esp":        1 << classify.ClassESP,
	"esp-in-udp": 1 << classify.ClassESPInUDP,
	"ike":        1 << classify.ClassIKE,
	"keepalive":  1 << classify.ClassNATKeepalive,
	"fragment":   1 << classify.ClassFragment,
	"malformed":  1 << classify.ClassMalformed,
	"icmp-esp":   1 << classify.ClassICMPESP,
	"other":      1 << classify.ClassOther,
	// every class that has to do with IPsec; not other traffic
	"all": maps.CapUnknown | 1<<classify.ClassESP | 1<<classify.ClassESPInUDP | 1<<classify.ClassIKE |
		1<<classify.ClassNATKeepalive | 1<<classify.ClassFragment | 1<<classify.ClassMalformed | 1<<classify.ClassICMPESP,
}

func (f *captureFlags) validate() (*captureSetup, error) {
	s := &captureSetup{}
	if len(f.ifaces) == 0 {
		return nil, errors.New("-i IFACE is required")
	}
	if len(f.ifaces) > maps.CapMaxIfaces {
		return nil, fmt.Errorf("at most %d interfaces per capture, %d given", maps.CapMaxIfaces, len(f.ifaces))
	}
	seen := map[string]bool{}
	for _, i := range f.ifaces {
		if seen[i] {
			return nil, fmt.Errorf("interface %s is given twice", i)
		}
		seen[i] = true
	}
	if f.write == "" {
		return nil, errors.New("-w FILE is required (- for stdout)")
	}
	for _, c := range f.classes {
		for _, name := range strings.Split(c, ",") {
			bit, ok := captureClasses[strings.TrimSpace(name)]
			if !ok {
				return nil, fmt.Errorf("--class %s: unknown class (want unknown, esp, esp-in-udp, ike, keepalive, fragment, malformed, icmp-esp, other or all)", name)
			}
			s.set.ClassMask |= bit
		}
	}
	if len(f.spis) > maps.CapMaxSPIs {
		return nil, fmt.Errorf("--spi given %d times, at most %d", len(f.spis), maps.CapMaxSPIs)
	}
	for _, v := range f.spis {
		spi, err := parseCaptureSPI(v)
		if err != nil {
			return nil, fmt.Errorf("--spi %s: %w", v, err)
		}
		s.set.SPIs = append(s.set.SPIs, spi)
	}
	if len(s.set.SPIs) > 0 && s.set.ClassMask&^(maps.CapUnknown|1<<classify.ClassESP|1<<classify.ClassESPInUDP) == s.set.ClassMask {
		return nil, errors.New("--spi selects frames with an SPI, but no --class given has one (unknown, esp or esp-in-udp)")
	}
	s.set.Snaplen = f.snaplen
	if f.snaplen == 0 {
		s.set.Snaplen = maps.SnapMax
	}
	if s.set.Snaplen > maps.SnapMax {
		return nil, fmt.Errorf("--snaplen %d: at most %d bytes (0: whole frames)", f.snaplen, maps.SnapMax)
	}
	s.set.PerSPI = f.perSPI
	if f.perSPI == 0 && f.rate == 0 {
		return nil, errors.New("--per-spi 0 with --rate 0 keeps no packet: give either more than 0")
	}
	if f.rate > maps.CapRateMax {
		return nil, fmt.Errorf("--rate %d: at most %d packets per second per CPU", f.rate, maps.CapRateMax)
	}
	s.set.Rate = f.rate
	if f.duration < 0 {
		return nil, fmt.Errorf("--duration %s: must be 0 (until stopped) or more", f.duration)
	}
	if f.window <= 0 {
		return nil, fmt.Errorf("--collision-window %s: must be more than 0", f.window)
	}
	if f.rotate != "" {
		n, err := parseSize(f.rotate)
		if err != nil {
			return nil, fmt.Errorf("--rotate %s: %w", f.rotate, err)
		}
		if f.write == "-" {
			return nil, errors.New("--rotate needs a file: stdout (-w -) cannot rotate")
		}
		if f.rotateKeep < 1 {
			return nil, fmt.Errorf("--rotate-keep %d: keep at least 1 file", f.rotateKeep)
		}
		s.rotateBytes = n
	}
	var err error
	if s.mode, err = loader.ParseMode(f.xdpMode); err != nil {
		return nil, fmt.Errorf("--xdp-mode: %w", err)
	}
	if s.natt, err = parseNATTPorts(f.nattPorts); err != nil {
		return nil, err
	}
	var files []string
	if f.knownFile != "" {
		files = append(files, f.knownFile)
	}
	if s.known, err = readKnown(f.knownSPIs, files, loader.DefaultKnownMax); err != nil {
		return nil, err
	}
	s.standalone = len(f.knownSPIs) > 0 || f.knownFile != "" || len(f.nattPorts) > 0
	return s, nil
}

// parseCaptureSPI reads an SPI to capture: reserved ones (0-255) are allowed here,
// since someone sending them is worth a look.
func parseCaptureSPI(s string) (uint32, error) {
	var v uint64
	var err error
	if h, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		v, err = strconv.ParseUint(h, 16, 32)
	} else {
		v, err = strconv.ParseUint(s, 10, 32)
	}
	if err != nil {
		return 0, errors.New("not a 32-bit SPI (want hex 0x1234abcd or decimal)")
	}
	return uint32(v), nil
}

// parseSize reads 100MB, 1.5GB, 512KiB, 1000000 (bytes).
// keepRule says which packets the kernel keeps. It keeps a row's first packets
// whenever an unknown or reserved SPI's frame is selected: by unknown, or by its
// class (esp, esp-in-udp).
func keepRule(set maps.CaptureSettings) string {
	rule := fmt.Sprintf("up to %s per second per CPU", report.Counted(set.Rate, "packet"))
	if set.ClassMask&(maps.CapUnknown|1<<classify.ClassESP|1<<classify.ClassESPInUDP) != 0 {
		if set.Rate == 0 {
			return fmt.Sprintf("the first %s of each unknown SPI and peer", report.Counted(set.PerSPI, "packet"))
		}
		return fmt.Sprintf("the first %s of each unknown SPI and peer, then %s", report.Counted(set.PerSPI, "packet"), rule)
	}
	return rule
}

func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"B", 1}}
	num, mult := strings.ToUpper(strings.TrimSpace(s)), 1.0
	for _, u := range units {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, errors.New("not a size (want e.g. 100MB, 1GB, 512KiB)")
	}
	if v*mult > 1<<50 {
		return 0, errors.New("over 1 PiB: not a file size")
	}
	if v*mult < 4096 {
		return 0, errors.New("files of under 4 KB cannot hold a packet with its headers")
	}
	return int64(v * mult), nil
}

func runCapture(args []string, stdout, stderr io.Writer) int {
	var f captureFlags
	fs := pflag.NewFlagSet("spiwatch capture", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	fs.StringArrayVarP(&f.ifaces, "interface", "i", nil, "interface to capture on (repeatable, up to 8)")
	fs.StringVarP(&f.write, "write", "w", "", "pcapng file to write; - for stdout")
	fs.StringArrayVar(&f.classes, "class", []string{"unknown"}, "what to capture (repeatable or comma-separated): unknown (unknown or reserved SPIs), esp, esp-in-udp, ike, keepalive, fragment, malformed, icmp-esp, other, all (every IPsec class)")
	fs.StringArrayVar(&f.spis, "spi", nil, "only frames carrying this SPI (repeatable, up to 8)")
	fs.Uint32Var(&f.snaplen, "snaplen", 128, "bytes kept of each frame (0: whole frames, up to 9216)")
	fs.Uint32Var(&f.perSPI, "per-spi", 10, "first packets of every new unknown SPI (per SPI, peer and ports) always kept")
	fs.Uint32Var(&f.rate, "rate", 100, "then at most this many packets per second per CPU (0: only the first --per-spi)")
	fs.Uint64Var(&f.count, "count", 0, "stop after writing this many packets (0: no limit)")
	fs.DurationVar(&f.duration, "duration", 0, "stop after this long, e.g. 30s or 10m (0: until Ctrl-C)")
	fs.StringVar(&f.rotate, "rotate", "", "start a new file when this size is reached, e.g. 100MB (FILE newest, then FILE.1, ...)")
	fs.IntVar(&f.rotateKeep, "rotate-keep", 10, "files kept with --rotate, the one being written included")
	fs.DurationVar(&f.window, "collision-window", report.DefaultCollisionWindow, "a packet's comment says collision when its SPI was seen towards its destination from two or more sources (addresses, or UDP ports of one address) within this time")
	fs.StringArrayVar(&f.knownSPIs, "known-spi", nil, "known SA as SPI[@DESTINATION] (repeatable; only when capture loads spiwatch itself)")
	fs.StringVar(&f.knownFile, "known-file", "", "file of known SAs (only when capture loads spiwatch itself)")
	fs.StringArrayVar(&f.nattPorts, "natt-port", nil, "UDP port carrying ESP-in-UDP (repeatable; only when capture loads spiwatch itself)")
	fs.StringVar(&f.xdpMode, "xdp-mode", "auto", "XDP attach mode when capture loads spiwatch itself: auto, native or generic")
	fs.Usage = func() {
		fmt.Fprint(stderr, captureUsageHead)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\nExit status: 0 stopped normally, 1 runtime error (another capture runs, disk full, ...), 2 bad usage (nothing attached).\n")
	}
	if code, ok := parseFlags(fs, args, "spiwatch capture", 0, stderr); !ok {
		return code
	}
	s, err := f.validate()
	if err != nil {
		fmt.Fprintf(stderr, "spiwatch capture: %v\n", err)
		return exitUsage
	}
	sigs := []os.Signal{os.Interrupt, syscall.SIGTERM}
	if !signal.Ignored(syscall.SIGHUP) { // a dropped ssh session ends it as Ctrl-C; nohup still works
		sigs = append(sigs, syscall.SIGHUP)
	}
	ctx, stop := signal.NotifyContext(context.Background(), sigs...)
	defer stop()
	passSIGPIPE()
	code, err := capture(ctx, &f, s, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "spiwatch capture: %v\n", err)
	}
	return code
}

// captureTarget is the program and maps a capture works with.
type captureTarget struct {
	m       *maps.Maps
	cap     *maps.Capture
	ifaces  []report.Iface
	beside  string           // "spiwatch program id N" when a running spiwatch is used
	progs   []ebpf.ProgramID // beside a run: the program on each of ifaces
	cleanup func()
}

// programGone says, beside a run, why an interface no longer has the program
// the capture samples from ("" while all do): the run exited, detached, or a
// new run took the link over with a program of its own (its capture switch and
// ring buffer are not this capture's), so nothing more would arrive.
func (t *captureTarget) programGone() string {
	for i, id := range t.progs {
		now, ok := loader.ProgramOn(t.ifaces[i].Ifindex)
		switch {
		case !ok:
			return fmt.Sprintf("%s has no XDP program any more (spiwatch program id %d, which this capture sampled, is gone: spiwatch run exited or detached)", t.ifaces[i].Name, id)
		case now != id:
			return fmt.Sprintf("%s now runs XDP program id %d, not spiwatch program id %d which this capture sampled (spiwatch run restarted, or another program replaced it)", t.ifaces[i].Name, now, id)
		}
	}
	return ""
}

// findTarget uses the spiwatch program already on the interfaces, or loads and
// attaches one.
func findTarget(f *captureFlags, s *captureSetup, stderr io.Writer) (*captureTarget, int, error) {
	t := &captureTarget{}
	var progs []ebpf.ProgramID
	for _, name := range f.ifaces {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return nil, exitUsage, fmt.Errorf("interface %s not found (see ip link)", name)
		}
		t.ifaces = append(t.ifaces, report.Iface{Name: name, Ifindex: ifc.Index})
		if id, ok := loader.ProgramOn(ifc.Index); ok {
			progs = append(progs, id)
		}
	}
	if err := loader.CheckPrivileges(); err != nil {
		return nil, exitError, err
	}
	if !loader.CaptureSupported() {
		return nil, exitError, errors.New("this kernel lacks bpf_xdp_load_bytes, bpf_loop or bpf_map_lookup_percpu_elem, which capture needs (Linux 5.19 or later)")
	}
	if len(progs) == 0 {
		return t, exitOK, t.loadOwn(f, s, stderr)
	}
	if len(progs) != len(f.ifaces) {
		return nil, exitUsage, errors.New("some of the interfaces have an XDP program and some not: capture either where spiwatch run watches, or where nothing is attached")
	}
	if s.standalone {
		return nil, exitUsage, fmt.Errorf("%s already has XDP program %d: --known-spi, --known-file and --natt-port belong to the spiwatch run that loaded it", f.ifaces[0], progs[0])
	}
	var capID ebpf.MapID
	for i, id := range progs {
		ms, closeMaps, err := loader.RunningMaps(id)
		if err != nil {
			return nil, exitError, fmt.Errorf("%s: %w", f.ifaces[i], err)
		}
		m, ok := ms[maps.CapCfgName]
		if !ok {
			closeMaps()
			return nil, exitError, fmt.Errorf("%s: %w", f.ifaces[i], maps.ErrNoCapture)
		}
		info, err := m.Info()
		if err != nil {
			closeMaps()
			return nil, exitError, fmt.Errorf("%s: reading map info: %w", f.ifaces[i], err)
		}
		mid, _ := info.ID()
		if i == 0 {
			capID = mid
			if t.m, err = maps.FromCollection(ms); err == nil {
				t.cap, err = maps.CaptureFrom(ms)
			}
			if err != nil {
				closeMaps()
				return nil, exitError, err
			}
			t.cleanup = closeMaps
			t.beside = fmt.Sprintf("spiwatch program id %d", id)
			t.progs = progs
			// Comments decode ESP-in-UDP on the ports the running program counts.
			if s.natt, err = loader.RunningNATTPorts(ms); err != nil {
				fmt.Fprintf(stderr, "spiwatch capture: reading the NAT-T ports of program %d: %v; comments take UDP %d alone as ESP-in-UDP\n", id, err, loader.DefaultNATTPort)
				s.natt = nil
			}
			continue
		}
		closeMaps()
		if mid != capID {
			t.cleanup()
			return nil, exitUsage, fmt.Errorf("%s and %s are watched by two different spiwatch processes: one capture per process", f.ifaces[0], f.ifaces[i])
		}
	}
	return t, exitOK, nil
}

// loadOwn loads and attaches spiwatch for the capture; cleanup detaches.
func (t *captureTarget) loadOwn(f *captureFlags, s *captureSetup, stderr io.Writer) error {
	objs, err := loader.Load(loader.Settings{NATTPorts: s.natt})
	if err != nil {
		return err
	}
	if err := objs.Maps.AddKnown(s.known...); err != nil {
		objs.Close()
		return err
	}
	for i, name := range f.ifaces {
		a, err := objs.Attach(name, s.mode, false)
		if err != nil {
			objs.Close()
			return err
		}
		t.ifaces[i].Slot, t.ifaces[i].Mode = a.Slot, a.Mode.String()
		fmt.Fprintf(stderr, "spiwatch capture: attached to %s (%s XDP, program id %d), %s; detached at exit\n", name, a.Mode, a.ProgID, report.Counted(len(s.known), "known SA"))
	}
	t.m = objs.Maps
	if t.cap, err = objs.Capture(); err != nil {
		objs.Close()
		return err
	}
	t.cleanup = func() { objs.Close() }
	return nil
}

// procStart is a process's start time in clock ticks (field 22 of /proc/PID/stat),
// which tells a live owner from a reused PID; 0 if the process is gone.
func procStart(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// the command name (field 2) may hold spaces: fields count from its closing ')'
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(fields[19], 10, 64)
	return v
}

// takeCapture makes this process the capture's owner, taking over from an
// owner that is gone (killed), and refusing while the owner lives.
func takeCapture(c *maps.Capture, stderr io.Writer) error {
	me := maps.CapOwner{PID: uint32(os.Getpid()), Start: procStart(os.Getpid())}
	for range 2 {
		cur, ok, err := c.TakeOwner(me)
		if err != nil || ok {
			return err
		}
		if st := procStart(int(cur.PID)); st != 0 && st == cur.Start {
			return fmt.Errorf("another capture is running on these maps: pid %d (stop it first; one capture per spiwatch program)", cur.PID)
		}
		fmt.Fprintf(stderr, "spiwatch capture: the previous capture (pid %d) is gone without stopping: taking over\n", cur.PID)
		if err := c.ReleaseOwner(); err != nil {
			return err
		}
	}
	return errors.New("could not take the capture over: another capture started at the same time")
}

func capture(ctx context.Context, f *captureFlags, s *captureSetup, stdout, stderr io.Writer) (int, error) {
	t, code, err := findTarget(f, s, stderr)
	if err != nil {
		return code, err
	}
	defer t.cleanup()
	if err := takeCapture(t.cap, stderr); err != nil {
		return exitError, err
	}
	defer t.cap.ReleaseOwner()
	diag := newCaptureDiag(t.m, s.natt, f.window)

	byIfindex := map[uint32]int{}
	var wifs []capwrite.Interface
	for i, ifc := range t.ifaces {
		s.set.Ifindexes = append(s.set.Ifindexes, uint32(ifc.Ifindex))
		byIfindex[uint32(ifc.Ifindex)] = i
		wifs = append(wifs, capwrite.Interface{Name: ifc.Name, SnapLen: s.set.Snaplen, Description: "spiwatch capture " + strings.Join(f.classes, ",")})
	}
	w, err := capwrite.Create(f.write, stdout, capwrite.Options{Interfaces: wifs, RotateBytes: s.rotateBytes, Keep: f.rotateKeep})
	if err != nil {
		return exitError, err
	}
	defer w.Close()

	rd, err := ringbuf.NewReader(t.cap.Samples())
	if err != nil {
		return exitError, fmt.Errorf("opening the sample ring buffer: %w", err)
	}
	defer rd.Close()
	// A capture killed without stopping leaves sampling on: stop it and drop its
	// leftovers before starting ours.
	if err := t.cap.Stop(); err != nil {
		return exitError, err
	}
	var rec ringbuf.Record
	for rd.SetDeadline(time.Now()); rd.ReadInto(&rec) == nil; {
	}
	before, err := t.cap.Stats()
	if err != nil {
		return exitError, err
	}
	if err := t.cap.Start(s.set); err != nil {
		return exitError, err
	}
	stopped := false
	stopSampling := func() {
		if !stopped {
			stopped = true
			if err := t.cap.Stop(); err != nil {
				fmt.Fprintf(stderr, "spiwatch capture: %v\n", err)
			}
		}
	}
	defer stopSampling()
	started := time.Now()
	where := "loaded by this capture"
	if t.beside != "" {
		where = "beside spiwatch run, " + t.beside
	}
	rule := keepRule(s.set)
	fmt.Fprintf(stderr, "spiwatch capture: %s on %s (%s) to %s: %s, %s per frame\n",
		strings.Join(f.classes, ","), strings.Join(f.ifaces, ","), where, w.Path(), rule, report.Counted(s.set.Snaplen, "byte"))

	// Kernel timestamps are CLOCK_MONOTONIC: the offset to wall time is refreshed
	// every second, so a clock step shows up within one.
	var off time.Duration
	refresh := func() { off = report.MonoToWall(1 << 40).Sub(time.Unix(0, 1<<40)) }
	refresh()
	lastRefresh, lastLoss := time.Now(), before.RingFull
	var written uint64
	var writeErr error
	gone := "" // beside a run: why its program no longer samples for us
	lastFlush := time.Now()
	deadline := time.Time{}
	if f.duration > 0 {
		deadline = started.Add(f.duration)
	}
	// packetOf turns a ring-buffer record into the file's packet; false for a
	// record of an interface this capture does not watch.
	packetOf := func(raw []byte) (capwrite.Packet, bool, error) {
		if len(raw) < maps.SampleHeaderSize {
			return capwrite.Packet{}, false, fmt.Errorf("short sample record (%s)", report.Counted(len(raw), "byte"))
		}
		var hdr maps.SampleHeader
		_ = binary.Read(bytes.NewReader(raw[:maps.SampleHeaderSize]), binary.NativeEndian, &hdr)
		idx, ok := byIfindex[hdr.Ifindex]
		if !ok {
			return capwrite.Packet{}, false, nil
		}
		data := raw[maps.SampleHeaderSize:]
		data = data[:min(len(data), int(hdr.CapLen))]
		return capwrite.Packet{Time: time.Unix(0, int64(hdr.TsNs)).Add(off), Iface: idx, Data: data,
			Length: int(hdr.Len), Comment: diag.comment(hdr, data, s.set.PerSPI)}, true, nil
	}
	for {
		if ctx.Err() != nil || (!deadline.IsZero() && time.Now().After(deadline)) {
			break
		}
		next := time.Now().Add(200 * time.Millisecond)
		if !deadline.IsZero() && deadline.Before(next) {
			next = deadline
		}
		rd.SetDeadline(next)
		err := rd.ReadInto(&rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if writeErr == nil {
				writeErr = w.Flush()
				lastFlush = time.Now()
			}
		} else if err != nil {
			return exitError, fmt.Errorf("reading samples: %w", err)
		} else if writeErr == nil {
			pkt, ok, err := packetOf(rec.RawSample)
			if err != nil {
				return exitError, err
			}
			if ok {
				if writeErr = w.Write(pkt); writeErr == nil {
					written++
					if time.Since(lastFlush) > 200*time.Millisecond { // a trickle reaches | tshark too
						writeErr = w.Flush()
						lastFlush = time.Now()
					}
				}
			}
		}
		// Once a second whatever arrives: a steady stream of samples, when losses
		// happen, never lets a read time out.
		if time.Since(lastRefresh) > time.Second {
			refresh()
			lastRefresh = time.Now()
			if st, err := t.cap.Stats(); err == nil && st.RingFull > lastLoss {
				fmt.Fprintf(stderr, "spiwatch capture: %s lost: the ring buffer was full (lower --rate or --snaplen)\n", report.Counted(st.RingFull-lastLoss, "sample"))
				lastLoss = st.RingFull
			}
			if gone = t.programGone(); gone != "" {
				fmt.Fprintf(stderr, "spiwatch capture: %s: nothing more can be sampled; ending (start capture again to go on)\n", gone)
				break
			}
		}
		if writeErr != nil && !stopped {
			stopSampling()
			if errors.Is(writeErr, syscall.EPIPE) {
				writeErr = nil // the reader went away (| tshark ended): stop quietly
				break
			}
			// Packets, not written: the buffered packets the error cut off are not in the file.
			if t.beside != "" {
				return exitError, fmt.Errorf("%v: capture stopped after %s; spiwatch run goes on counting", writeErr, report.Counted(w.Packets(), "packet"))
			}
			fmt.Fprintf(stderr, "spiwatch capture: %v: capture stopped after %s; counting goes on until Ctrl-C or --duration, then the per-SPI counts\n", writeErr, report.Counted(w.Packets(), "packet"))
		}
		if f.count > 0 && written >= f.count {
			break
		}
	}
	// Samples already in the ring buffer when sampling stops are written too.
	stopSampling()
	failed := writeErr != nil // said when it happened
	for rd.SetDeadline(time.Now().Add(20 * time.Millisecond)); writeErr == nil && (f.count == 0 || written < f.count) && rd.ReadInto(&rec) == nil; {
		pkt, ok, err := packetOf(rec.RawSample)
		if err != nil {
			break
		}
		if ok {
			if writeErr = w.Write(pkt); writeErr == nil {
				written++
			}
		}
	}
	if writeErr == nil {
		writeErr = w.Close()
	}
	if writeErr != nil && !failed && !errors.Is(writeErr, syscall.EPIPE) {
		fmt.Fprintf(stderr, "spiwatch capture: %v: the file holds %d of the %s kept\n", writeErr, w.Packets(), report.Counted(written, "packet"))
	}
	after, err := t.cap.Stats()
	if err != nil {
		return exitError, err
	}
	d := after.Sub(before)
	files := ""
	if w.Files() > 1 {
		files = fmt.Sprintf(" (%s started, the last %d kept)", report.Counted(w.Files(), "file"), min(w.Files(), f.rotateKeep))
	}
	fmt.Fprintf(stderr, "spiwatch capture: %s written to %s%s in %s; kernel: %s, %d lost (ring buffer full), %d over the rate\n",
		report.Counted(w.Packets(), "packet"), w.Path(), files, time.Since(started).Round(time.Millisecond), report.Counted(d.Samples, "sample"), d.RingFull, d.RateRefused)
	if err := printUnknown(stderr, t); err != nil {
		return exitError, err
	}
	if (writeErr != nil && !errors.Is(writeErr, syscall.EPIPE)) || gone != "" {
		return exitError, nil // said above
	}
	return exitOK, nil
}

// printUnknown prints the unknown-table rows of the captured interfaces, most
// packets first: the per-SPI answer, from the kernel's counters.
func printUnknown(w io.Writer, t *captureTarget) error {
	rows, err := t.m.UnknownSnapshot()
	if err != nil {
		return err
	}
	names := map[uint32]string{}
	for _, i := range t.ifaces {
		names[uint32(i.Ifindex)] = i.Name
	}
	var mine []maps.Unknown
	for _, r := range rows {
		if _, ok := names[r.Ifindex]; ok {
			mine = append(mine, r)
		}
	}
	sort.Slice(mine, func(i, j int) bool {
		if mine[i].Packets != mine[j].Packets {
			return mine[i].Packets > mine[j].Packets
		}
		return mine[i].SPI < mine[j].SPI
	})
	spis := map[uint32]bool{}
	for _, r := range mine {
		spis[r.SPI] = true
	}
	// A row is an SPI from one peer (and ports): one SPI from two peers is two.
	fmt.Fprintf(w, "spiwatch capture: %s in %s (SPI, peer, ports) counted by the kernel on %s",
		report.Counted(len(spis), "unknown or reserved SPI"), report.Counted(len(mine), "row"), strings.Join(sortedNames(names), ","))
	if len(mine) > 20 {
		fmt.Fprint(w, " (20 with most packets shown)")
	}
	fmt.Fprintln(w)
	if len(mine) == 0 {
		return nil
	}
	fmt.Fprintf(w, "  %-10s  %-22s  %-22s  %-8s  %10s\n", "SPI", "source", "destination", "iface", "packets")
	for i, r := range mine {
		if i == 20 {
			break
		}
		fmt.Fprintf(w, "  0x%08x  %-22s  %-22s  %-8s  %10d\n", r.SPI, hostPort(r.Src.String(), r.SrcPort), hostPort(r.Dst.String(), r.DstPort), names[r.Ifindex], r.Packets)
	}
	return nil
}

func hostPort(a string, port uint16) string {
	if port == 0 {
		return a
	}
	return net.JoinHostPort(a, strconv.Itoa(int(port)))
}

func sortedNames(m map[uint32]string) []string {
	var out []string
	for _, n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
