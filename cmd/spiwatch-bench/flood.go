// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/internal/knownset"
	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/internal/trafficgen"
	"github.com/spiwatch/spiwatch/loader"
)

// floodResult is section 3 and 4: the unknown table under a flood of distinct
// SPIs, and what the spiwatch process costs meanwhile.
type floodResult struct {
	distinct       uint64 // distinct (SPI, source) keys sent
	entries        int    // reported by spiwatch
	capacity       int
	inserts        uint64
	insertFailures uint64
	evictions      uint64 // reported by spiwatch
	// inTable is how many of the keys sent the kernel's table still holds,
	// counted by the bench in the map itself (not from spiwatch's report), and
	// foreign how many of its rows are not keys sent: the evictions that
	// happened are distinct - inTable, whatever spiwatch says.
	inTable, foreign uint64
	mapMemlock       map[string]uint64
	rssKiB, hwmKiB   uint64
	idleCPU          []cpuInterval
	floodCPU         []cpuInterval
	floodSeconds     float64
}

// evicted is the evictions that happened, from the bench's own count of the
// kernel table.
func (f *floodResult) evicted() uint64 { return f.distinct - min(f.inTable, f.distinct) }

// evictionsExact is the target "eviction figures exact": spiwatch's evictions
// and table entries equal what the kernel's table shows, and no insert failed.
func (f *floodResult) evictionsExact() bool {
	return f.evictions == f.evicted() && uint64(f.entries) == f.inTable && f.foreign == 0 && f.insertFailures == 0
}

// The flood's addresses are in 198.18.0.0/15 (RFC 2544 benchmarking) and never
// leave the lab's veth pair.
const floodStream = "esp spi=0x10000000 spis=1000000 srcs=1000 src=198.18.0.1 dst=198.19.0.1 len=56"

type jsonReport struct {
	UnknownTable struct {
		Entries        int    `json:"entries"`
		Capacity       int    `json:"capacity"`
		Inserts        uint64 `json:"inserts"`
		Evictions      uint64 `json:"evictions"`
		InsertFailures uint64 `json:"insert_failures"`
	} `json:"unknown_table"`
	Total struct {
		Packets uint64 `json:"packets"`
	} `json:"total"`
}

func flood(spiwatchBin string, frames int, idle time.Duration) (*floodResult, error) {
	lab, err := netlab.New("swflood")
	if err != nil {
		return nil, err
	}
	defer lab.Close()
	cmd := netlab.Command(lab.NSB, spiwatchBin, "-i", lab.Receiver, "--json", "--interval", "1s")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := waitFor(stderr, "reporting every", 20*time.Second); err != nil {
		return nil, err
	}
	lines := make(chan string, 4096)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<26)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	pid := cmd.Process.Pid
	res := &floodResult{}
	if res.idleCPU, err = cpuPerSecond(pid, idle); err != nil {
		return nil, err
	}

	st, err := trafficgen.ParseStream(floodStream)
	if err != nil {
		return nil, err
	}
	vary, err := st.Vary()
	if err != nil {
		return nil, err
	}
	// Every frame a key of its own: frame i is SPI base+i from source base+i%1000,
	// so the keys repeat only after st.SPIs frames, and then a key evicted earlier
	// would be inserted again, which the eviction check does not model.
	if frames > int(st.SPIs) {
		return nil, fmt.Errorf("-flood-frames %d: at most %d, the flood's distinct SPIs", frames, st.SPIs)
	}
	res.distinct = uint64(frames)
	var s *trafficgen.Sender
	if err := netlab.In(lab.NSA, func() error {
		s, err = trafficgen.NewSender(lab.Sender, vary)
		return err
	}); err != nil {
		return nil, err
	}
	defer s.Close()
	cpuDone := make(chan []cpuInterval, 1)
	stopCPU := make(chan struct{})
	go func() { cpuDone <- cpuUntil(pid, stopCPU) }()
	start := time.Now()
	// Paced to about 1 Mpps so the flood lasts long enough to see per-second CPU.
	for sent := 0; sent < frames; {
		n := min(100_000, frames-sent)
		if err := s.Send(st.Build(), n); err != nil {
			return nil, err
		}
		sent += n
		if ahead := time.Duration(sent)*time.Microsecond - time.Since(start); ahead > 0 {
			time.Sleep(ahead)
		}
	}
	res.floodSeconds = time.Since(start).Seconds()
	var last jsonReport
	deadline := time.After(30 * time.Second)
	for last.Total.Packets < uint64(frames) {
		select {
		case l, ok := <-lines:
			if !ok {
				return nil, fmt.Errorf("spiwatch exited during the flood")
			}
			if err := json.Unmarshal([]byte(l), &last); err != nil {
				return nil, err
			}
		case <-deadline:
			return nil, fmt.Errorf("spiwatch counted %d of %d frames", last.Total.Packets, frames)
		}
	}
	close(stopCPU)
	res.floodCPU = <-cpuDone
	t := last.UnknownTable
	res.entries, res.capacity, res.inserts, res.evictions, res.insertFailures = t.Entries, t.Capacity, t.Inserts, t.Evictions, t.InsertFailures
	res.rssKiB, res.hwmKiB, err = rss(pid)
	if err != nil {
		return nil, err
	}
	pm, err := processMaps(pid)
	if err != nil {
		return nil, err
	}
	res.mapMemlock = map[string]uint64{}
	for _, m := range pm {
		res.mapMemlock[m.name] += m.memlock
	}
	// The kernel's table, read by the bench: the flood is over and spiwatch only
	// reads the table, so it holds what spiwatch's last report counted.
	var unknownID ebpf.MapID
	for _, m := range pm {
		if m.name == "sw_unknown" {
			unknownID = m.id
		}
	}
	if unknownID == 0 {
		return nil, fmt.Errorf("spiwatch (pid %d) holds no map sw_unknown", pid)
	}
	res.inTable, res.foreign, err = countFloodKeys(unknownID, st.SPI, st.Frame.Src, st.Frame.Dst, st.Srcs, res.distinct)
	return res, err
}

// floodKey mirrors struct unknown_key (bpf/spiwatch.h): addresses IPv6 or
// IPv4-mapped, the SPI in host order, ports 0 for plain ESP.
type floodKey struct {
	Saddr, Daddr [16]byte
	SPI, Ifindex uint32
	Sport, Dport uint16
}

// countFloodKeys counts the rows of the unknown table (map id) that are keys
// the flood sent: SPI spi+i from src+i%srcs (the low word) to dst, for i below
// n; other is every other row.
func countFloodKeys(id ebpf.MapID, spi uint32, src, dst netip.Addr, srcs uint32, n uint64) (sent, other uint64, err error) {
	m, err := ebpf.NewMapFromID(id)
	if err != nil {
		return 0, 0, fmt.Errorf("opening the unknown table: %w", err)
	}
	defer m.Close()
	if m.KeySize() != uint32(binary.Size(floodKey{})) {
		return 0, 0, fmt.Errorf("unknown table: key of %d bytes, the bench's mirror has %d: update floodKey", m.KeySize(), binary.Size(floodKey{}))
	}
	return countKeys(m.Iterate(), spi, src, dst, srcs, n)
}

// keyIterator is *ebpf.MapIterator with the values ignored.
type keyIterator interface {
	Next(key, value any) bool
	Err() error
}

func countKeys(it keyIterator, spi uint32, src, dst netip.Addr, srcs uint32, n uint64) (sent, other uint64, err error) {
	var k floodKey
	var v []byte
	src16, dst16 := netip.AddrFrom16(src.As16()).As16(), netip.AddrFrom16(dst.As16()).As16()
	srcLow := binary.BigEndian.Uint32(src16[12:])
	for it.Next(&k, &v) {
		i := uint64(k.SPI - spi)
		want := src16
		binary.BigEndian.PutUint32(want[12:], srcLow+uint32(i%uint64(max(srcs, 1))))
		if i < n && k.Saddr == want && k.Daddr == dst16 && k.Sport == 0 && k.Dport == 0 {
			sent++
		} else {
			other++
		}
	}
	if err := it.Err(); err != nil {
		return 0, 0, fmt.Errorf("reading the unknown table: %w", err)
	}
	return sent, other, nil
}

func waitFor(r io.Reader, text string, timeout time.Duration) error {
	found := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(r)
		once := false
		for sc.Scan() {
			if !once && strings.Contains(sc.Text(), text) {
				once = true
				close(found)
			}
		}
	}()
	select {
	case <-found:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("spiwatch did not start")
	}
}

// cpuTime is the process's CPU time (user + system) in nanoseconds: its CPU-time
// clock (clock_getcpuclockid), which is the sum over all its threads, those that
// have exited included; else /proc/PID/stat's in clock ticks (10 ms: coarser than
// an idle second's use). Summing /proc/PID/task/*/schedstat would lose the time
// of every thread that exited.
func cpuTime(pid int) (time.Duration, error) {
	var ts unix.Timespec
	// MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
	if err := unix.ClockGettime(int32(^uint32(pid)<<3)|2, &ts); err == nil {
		return time.Duration(ts.Nano()), nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	stt, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(ut+stt) * time.Second / 100, nil // USER_HZ is 100 on Linux
}

// cpuInterval is a process's CPU time over a stretch of wall time.
type cpuInterval struct{ cpu, wall time.Duration }

func cpuPerSecond(pid int, d time.Duration) ([]cpuInterval, error) {
	stop := make(chan struct{})
	go func() { time.Sleep(d); close(stop) }()
	return cpuUntil(pid, stop), nil
}

// cpuUntil samples the process's CPU time every second until stop, and then
// once more: the last, shorter interval is kept, so that a phase shorter than a
// second, or the tail of a longer one, is measured too.
func cpuUntil(pid int, stop chan struct{}) []cpuInterval {
	var out []cpuInterval
	prev, err := cpuTime(pid)
	if err != nil {
		return nil
	}
	prevAt := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		var done bool
		select {
		case <-stop:
			done = true
		case <-tick.C:
		}
		cur, err := cpuTime(pid)
		now := time.Now()
		if err != nil {
			return out
		}
		if now.Sub(prevAt) > 0 {
			out = append(out, cpuInterval{cpu: cur - prev, wall: now.Sub(prevAt)})
		}
		prev, prevAt = cur, now
		if done {
			return out
		}
	}
}

func rss(pid int) (rss, hwm uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss, _ = strconv.ParseUint(f[1], 10, 64)
		case "VmHWM:":
			hwm, _ = strconv.ParseUint(f[1], 10, 64)
		}
	}
	return rss, hwm, nil
}

// procMap is one BPF map a process holds.
type procMap struct {
	name    string
	id      ebpf.MapID
	memlock uint64
}

// processMaps lists the maps the process holds, each once, with the kernel
// memory charged to it, from /proc/PID/fdinfo (what bpftool map show reports as
// memlock).
func processMaps(pid int) ([]procMap, error) {
	var out []procMap
	seen := map[ebpf.MapID]bool{}
	fds, err := filepath.Glob(fmt.Sprintf("/proc/%d/fdinfo/*", pid))
	if err != nil {
		return nil, err
	}
	for _, fd := range fds {
		b, err := os.ReadFile(fd)
		if err != nil || !strings.Contains(string(b), "map_type:") {
			continue
		}
		var id, mem uint64
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) == 2 && f[0] == "map_id:" {
				id, _ = strconv.ParseUint(f[1], 10, 64)
			}
			if len(f) == 2 && f[0] == "memlock:" {
				mem, _ = strconv.ParseUint(f[1], 10, 64)
			}
		}
		if seen[ebpf.MapID(id)] {
			continue // two descriptors of one map
		}
		m, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if err != nil {
			continue
		}
		info, err := m.Info()
		m.Close()
		if err == nil {
			seen[ebpf.MapID(id)] = true
			out = append(out, procMap{name: info.Name, id: ebpf.MapID(id), memlock: mem})
		}
	}
	return out, nil
}

// reportTime fills the unknown table to entries rows and times one full report as
// spiwatch --json makes it: snapshot with batch reads, table stats, known SAs and
// their sources, rates, every row's verdict, and the JSON line.
// capacity is the table's, twice entries (below).
func reportTime(entries, rounds int) (median time.Duration, got, capacity int, err error) {
	// Twice the rows' room: per-CPU LRU lists start evicting before the table is
	// full, and the figure wanted is for exactly this many rows.
	objs, err := loader.Load(loader.Settings{UnknownMax: uint32(2 * entries)})
	if err != nil {
		return 0, 0, 0, err
	}
	defer objs.Close()
	rep, _, err := benchReporter(objs)
	if err != nil {
		return 0, 0, 0, err
	}
	prog, err := objs.Program(0)
	if err != nil {
		return 0, 0, 0, err
	}
	// The table's LRU lists are per CPU (BPF_F_NO_COMMON_LRU), each holding an
	// equal share: fill it from every CPU in turn.
	f := frames.Frame{Src: benchPeer, Dst: benchGW}
	cpus, err := threadCPUs()
	if err != nil {
		return 0, 0, 0, err
	}
	for k, cpu := range cpus {
		unpin, err := pinThread(cpu)
		if err != nil {
			return 0, 0, 0, err
		}
		for i := k; i < entries && err == nil; i += len(cpus) {
			_, err = prog.Run(&ebpf.RunOptions{Data: f.ESP(0x20000000+uint32(i), 1, 56)})
		}
		unpin()
		if err != nil {
			return 0, 0, 0, err
		}
	}
	if snap, err := objs.Maps.UnknownSnapshot(); err != nil || len(snap) != entries {
		return 0, 0, 0, fmt.Errorf("filled the table with %d rows, want %d (%v)", len(snap), entries, err)
	}
	var times []time.Duration
	for r := 0; r < rounds; r++ {
		start := time.Now()
		s, err := rep.Take()
		if err != nil {
			return 0, 0, 0, err
		}
		if err := report.WriteJSON(io.Discard, s, 20); err != nil {
			return 0, 0, 0, err
		}
		times = append(times, time.Since(start))
		got = s.UnknownRows
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	return times[len(times)/2], got, objs.Maps.UnknownCapacity(), nil
}

// benchReporter is the reporter spiwatch --json runs, on objs with the bench's
// known SAs: the known SAs kept by a knownset.Set, as spiwatch keeps them, which
// gives every row its verdict (stale, rekey race or unknown) and every known SA
// its sources; the default --top.
func benchReporter(objs *loader.Objects) (*report.Reporter, *knownset.Set, error) {
	known := knownset.New(objs.Maps, knownset.DefaultHistory, knownset.DefaultRekeyGrace)
	if err := known.Update("--known-spi", benchKnown); err != nil {
		return nil, nil, err
	}
	rep, err := report.New(objs.Maps, []report.Iface{{Name: "lo", Ifindex: 1, Mode: "test", Slot: 0}})
	if err != nil {
		return nil, nil, err
	}
	rep.Top = 20
	rep.Verdict, rep.KnownFrom = known.Verdict, known.SourcesOf
	return rep, known, nil
}
