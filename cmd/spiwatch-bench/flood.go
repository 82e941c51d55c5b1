// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/internal/trafficgen"
	"github.com/spiwatch/spiwatch/loader"
)

// floodResult is section 3 and 4: the unknown table under a flood of distinct
// SPIs, and what the spiwatch process costs meanwhile.
type floodResult struct {
	distinct       uint64 // distinct (SPI, source) keys sent
	entries        int
	capacity       int
	inserts        uint64
	insertFailures uint64
	evictions      uint64 // reported by spiwatch
	mapMemlock     map[string]uint64
	rssKiB, hwmKiB uint64
	idleCPU        []time.Duration // per 1 s interval
	floodCPU       []time.Duration
	floodSeconds   float64
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
	res.distinct = uint64(min(frames, int(st.SPIs)))
	var s *trafficgen.Sender
	if err := netlab.In(lab.NSA, func() error {
		s, err = trafficgen.NewSender(lab.Sender, vary)
		return err
	}); err != nil {
		return nil, err
	}
	defer s.Close()
	cpuDone := make(chan []time.Duration, 1)
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
	res.mapMemlock, err = mapMemlock(pid)
	return res, err
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

// cpuTime is the process's CPU time (user + system): the sum of its threads'
// run time in nanoseconds from /proc/PID/task/*/schedstat, where the kernel has
// it, else /proc/PID/stat's in clock ticks (10 ms: coarser than an idle
// second's use).
func cpuTime(pid int) (time.Duration, error) {
	if tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid)); err == nil {
		var sum time.Duration
		ok := true
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
			if err != nil {
				ok = false
				break
			}
			f := strings.Fields(string(b))
			ns, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				ok = false
				break
			}
			sum += time.Duration(ns)
		}
		if ok && len(tasks) > 0 {
			return sum, nil
		}
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

func cpuPerSecond(pid int, d time.Duration) ([]time.Duration, error) {
	stop := make(chan struct{})
	go func() { time.Sleep(d); close(stop) }()
	return cpuUntil(pid, stop), nil
}

func cpuUntil(pid int, stop chan struct{}) []time.Duration {
	var out []time.Duration
	prev, _ := cpuTime(pid)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return out
		case <-tick.C:
			cur, err := cpuTime(pid)
			if err != nil {
				return out
			}
			out = append(out, cur-prev)
			prev = cur
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

// mapMemlock reads the kernel memory charged to each map the process holds, from
// /proc/PID/fdinfo (what bpftool map show reports as memlock).
func mapMemlock(pid int) (map[string]uint64, error) {
	out := map[string]uint64{}
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
		m, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if err != nil {
			continue
		}
		info, err := m.Info()
		m.Close()
		if err == nil {
			out[info.Name] = mem
		}
	}
	return out, nil
}

// reportTime fills the unknown table to entries rows and times one full report:
// snapshot with batch reads, table stats, known SAs, rates, and the JSON line.
func reportTime(entries, rounds int) (median time.Duration, got int, err error) {
	// Twice the rows' room: per-CPU LRU lists start evicting before the table is
	// full, and the figure wanted is for exactly this many rows.
	objs, err := loader.Load(loader.Settings{UnknownMax: uint32(2 * entries)})
	if err != nil {
		return 0, 0, err
	}
	defer objs.Close()
	if err := objs.Maps.AddKnown(benchKnown...); err != nil {
		return 0, 0, err
	}
	prog, err := objs.Program(0)
	if err != nil {
		return 0, 0, err
	}
	// The table's LRU lists are per CPU (BPF_F_NO_COMMON_LRU), each holding an
	// equal share: fill it from every CPU in turn.
	f := frames.Frame{Src: benchPeer, Dst: benchGW}
	ncpu := runtime.NumCPU()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for cpu := 0; cpu < ncpu; cpu++ {
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return 0, 0, err
		}
		for i := cpu; i < entries; i += ncpu {
			if _, err := prog.Run(&ebpf.RunOptions{Data: f.ESP(0x20000000+uint32(i), 1, 56)}); err != nil {
				return 0, 0, err
			}
		}
	}
	rep, err := report.New(objs.Maps, []report.Iface{{Name: "lo", Ifindex: 1, Mode: "test", Slot: 0}})
	if err != nil {
		return 0, 0, err
	}
	rep.Top = 20 // as spiwatch's default --top
	if snap, err := objs.Maps.UnknownSnapshot(); err != nil || len(snap) != entries {
		return 0, 0, fmt.Errorf("filled the table with %d rows, want %d (%v)", len(snap), entries, err)
	}
	var times []time.Duration
	for r := 0; r < rounds; r++ {
		start := time.Now()
		s, err := rep.Take()
		if err != nil {
			return 0, 0, err
		}
		if err := report.WriteJSON(io.Discard, s, 20); err != nil {
			return 0, 0, err
		}
		times = append(times, time.Since(start))
		got = s.UnknownRows
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	return times[len(times)/2], got, nil
}
