// SPDX-License-Identifier: Apache-2.0

// Command spiwatch-bench (make bench) measures spiwatch against baselines in the
// same run and writes docs/PERFORMANCE.md. Root; it builds its own namespace labs,
// and all its traffic stays on their veth pairs.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/classify"
)

type results struct {
	repeat, rounds int
	instances      int
	perPacket      []perPacketRow
	e2eFrames      int
	e2eKnown       []vethRun // per receiver, its rounds summed
	e2eFlood       []vethRun
	e2eKnownRounds [][]vethRun
	e2eOther       []vethRun
	e2eOtherRounds [][]vethRun
	e2eFloodRounds [][]vethRun
	flood          *floodResult
	floodFrames    int
	reportEntries  int
	reportCapacity int
	reportMedian   time.Duration
	reportRows     int
	capture        *captureResult
	started        time.Time
	took           time.Duration
}

func main() {
	repeat := flag.Int("repeat", 1_000_000, "test runs per round for the per-packet table")
	rounds := flag.Int("rounds", 21, "rounds per program and frame (the median is reported)")
	only := flag.String("only", "", "comma-separated frame kinds to run (default: all)")
	variants := flag.String("variant", "", "comma-separated BPF object files: other builds of the classifier to compare in the same run")
	e2eFrames := flag.Int("e2e-frames", 10_000_000, "frames per receiver and round in the end-to-end veth runs")
	flag.IntVar(&instances, "instances", 3, "loads of each program in the per-packet table, taken in turn round by round (averages where the JIT placed it)")
	flag.IntVar(&e2eRounds, "e2e-rounds", 5, "rounds of the end-to-end veth runs, receivers alternating")
	flag.BoolVar(&e2eOnly, "e2e-only", false, "run only the end-to-end veth runs and print them (for A/B work with -variant)")
	floodFrames := flag.Int("flood-frames", 1_000_000, "frames of the unknown-SPI flood (distinct SPIs, 1,000 sources)")
	spiwatchBin := flag.String("spiwatch", "bin/spiwatch", "spiwatch binary for the flood and loader-cost runs")
	out := flag.String("out", "docs/PERFORMANCE.md", "where to write the report (- for stdout)")
	quick := flag.Bool("per-packet-only", false, "run only the per-packet table and print it (for A/B work)")
	reportOnly := flag.Bool("report-time-only", false, "time only the full report at 65,536 rows and print it (for profiling)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
	captureFrames := flag.Int("capture-frames", 5_000_000, "frames of the tcpdump + tshark versus spiwatch capture comparison")
	captureOnly := flag.Bool("capture-only", false, "run only the capture comparison and print it")
	flag.Parse()
	if *repeat < 1 || *rounds < 1 || instances < 1 {
		fmt.Fprintf(os.Stderr, "spiwatch-bench: -repeat, -rounds and -instances must be at least 1 (got %d, %d, %d)\n", *repeat, *rounds, instances)
		os.Exit(2)
	}
	if *captureOnly {
		r, err := captureBench(*spiwatchBin, *captureFrames)
		if err != nil {
			fmt.Fprintf(os.Stderr, "spiwatch-bench: %v\n", err)
			os.Exit(1)
		}
		writeCapture(os.Stdout, r)
		return
	}
	if err := requireTools(); err != nil {
		fmt.Fprintf(os.Stderr, "spiwatch-bench: %v\n", err)
		os.Exit(1)
	}
	captureFramesFlag = *captureFrames
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "spiwatch-bench: %v\n", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if *reportOnly {
		d, n, _, err := reportTime(65536, 11)
		if err != nil {
			fmt.Fprintf(os.Stderr, "spiwatch-bench: %v\n", err)
			os.Exit(1)
		}
		fmt.Printf("one full report of %d rows: %s (median of 11)\n", n, d)
		return
	}
	if err := run(*repeat, *rounds, *only, *variants, *e2eFrames, *floodFrames, *spiwatchBin, *out, *quick); err != nil {
		fmt.Fprintf(os.Stderr, "spiwatch-bench: %v\n", err)
		os.Exit(1)
	}
}

// instances, e2eRounds and e2eOnly are -instances, -e2e-rounds and -e2e-only.
var (
	instances int
	e2eRounds int
	e2eOnly   bool
)

func run(repeat, rounds int, only, variants string, e2eFrames, floodFrames int, spiwatchBin, out string, quick bool) error {
	r := &results{repeat: repeat, rounds: rounds, instances: instances, e2eFrames: e2eFrames, floodFrames: floodFrames, started: time.Now()}
	var vfiles []string
	if variants != "" {
		vfiles = strings.Split(variants, ",")
	}
	if e2eOnly {
		if err := runE2E(r, vfiles); err != nil {
			return err
		}
		var b strings.Builder
		writeE2E(&b, r)
		fmt.Print(b.String())
		return nil
	}

	// Per-packet costs: one CPU for the whole table, since test runs execute on
	// the calling thread's CPU.
	cpus, err := threadCPUs()
	if err != nil {
		return err
	}
	unpin, err := pinThread(cpus[0])
	if err != nil {
		return err
	}
	kinds := len(frameKinds())
	if only != "" {
		kinds = len(strings.Split(only, ","))
	}
	step("per-packet cost: %d frame kinds x %d programs (%d loads each) x %d rounds of %d runs", kinds, 5+len(vfiles), instances, rounds, repeat)
	r.perPacket, err = perPacket(repeat, rounds, instances, only, vfiles)
	unpin()
	if err != nil {
		return err
	}
	if quick {
		printPerPacket(os.Stdout, r.perPacket)
		typical, worst := kernelAgreement(r.perPacket)
		fmt.Printf("thread CPU time less the kernel's whole-ns figure: %.2f ns in the median round, at most %.1f ns apart\n", typical, worst)
		return nil
	}

	if err := runE2E(r, vfiles); err != nil {
		return err
	}
	step("unknown-SPI flood: %d frames through spiwatch %s", floodFrames, spiwatchBin)
	if r.flood, err = flood(spiwatchBin, floodFrames, 10*time.Second+100*time.Millisecond); err != nil {
		return err
	}
	r.reportEntries = 65536
	step("one full report at %d unknown-table entries", r.reportEntries)
	if r.reportMedian, r.reportRows, r.reportCapacity, err = reportTime(r.reportEntries, 11); err != nil {
		return err
	}
	step("capture: %d frames, tcpdump + tshark, then spiwatch capture", captureFramesFlag)
	if r.capture, err = captureBench(spiwatchBin, captureFramesFlag); err != nil {
		return err
	}
	r.took = time.Since(r.started)
	return writeReport(out, r)
}

// runE2E runs section 2: known ESP and TCP against the empty program, a new unknown SPI
// each frame against the minimal SPI counter, with any -variant builds beside.
func runE2E(r *results, vfiles []string) error {
	withVariants := func(rs []receiver, want classify.Class, outcome classify.Outcome) []receiver {
		for i, f := range vfiles {
			rs = append(rs, variantReceiver(fmt.Sprintf("variant %d", i+1), f, want, outcome))
		}
		return rs
	}
	var err error
	step("end to end: %d frames of known ESP into the empty program, then the classifier", r.e2eFrames)
	known := "esp spi=0x1000 src=198.51.100.1 dst=203.0.113.1 len=56"
	if r.e2eKnown, r.e2eKnownRounds, err = endToEnd(known, r.e2eFrames, e2eRounds, withVariants([]receiver{
		baselineReceiver("empty XDP program", emptyProg),
		classifierReceiver(classify.ClassESP, classify.OutcomeKnown),
	}, classify.ClassESP, classify.OutcomeKnown)); err != nil {
		return err
	}
	step("end to end: %d frames of TCP into the empty program, then the classifier", r.e2eFrames)
	tcp := "tcp src=198.51.100.1 dst=203.0.113.1 len=44"
	if r.e2eOther, r.e2eOtherRounds, err = endToEnd(tcp, r.e2eFrames, e2eRounds, withVariants([]receiver{
		baselineReceiver("empty XDP program", emptyProg),
		classifierReceiver(classify.ClassOther, classify.OutcomeNone),
		// what any program that reads the frame to count it pays on a cold frame
		baselineReceiver("minimal other counter", otherProg),
	}, classify.ClassOther, classify.OutcomeNone)); err != nil {
		return err
	}
	step("end to end: %d frames, a new unknown SPI each, into the minimal SPI counter, then the classifier", r.e2eFrames)
	r.e2eFlood, r.e2eFloodRounds, err = endToEnd(floodStream, r.e2eFrames, e2eRounds, withVariants([]receiver{
		baselineReceiver("minimal SPI counter", spiProg),
		classifierReceiver(classify.ClassESP, classify.OutcomeUnknown),
	}, classify.ClassESP, classify.OutcomeUnknown))
	return err
}

// captureFramesFlag is -capture-frames.
var captureFramesFlag int

// threadCPUs are the CPUs the calling thread may run on, in order.
func threadCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("reading the CPUs this thread may use: %w", err)
	}
	var cpus []int
	for cpu := 0; len(cpus) < set.Count(); cpu++ {
		if set.IsSet(cpu) {
			cpus = append(cpus, cpu)
		}
	}
	return cpus, nil
}

// pinThread locks the calling goroutine to its thread and the thread to cpu;
// unpin gives the thread back its CPUs and unlocks it. A thread left pinned goes
// back to Go's pool: goroutines scheduled on it, and every process started from
// it (tcpdump, tshark, spiwatch), would then run on that one CPU.
func pinThread(cpu int) (unpin func(), err error) {
	runtime.LockOSThread()
	var orig, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &orig); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("reading the CPUs this thread may use: %w", err)
	}
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("pinning to CPU %d: %w", cpu, err)
	}
	return func() {
		if err := unix.SchedSetaffinity(0, &orig); err != nil {
			// Keep the thread locked: Go retires it with its goroutine rather than
			// hand it, pinned, to another one.
			step("giving a thread its CPUs back: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}, nil
}

func step(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "spiwatch-bench: "+format+"\n", args...)
}
