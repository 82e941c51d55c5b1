// SPDX-License-Identifier: Apache-2.0

package main

import (
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The loader-cost figures read a process's CPU time: it must see a busy
// thread's work at sub-tick resolution and not count time spent sleeping.
func TestCPUTime(t *testing.T) {
	pid := os.Getpid()
	before, err := cpuTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	slept, err := cpuTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if d := slept - before; d > 50*time.Millisecond {
		t.Errorf("100 ms asleep counted as %v of CPU", d)
	}
	// 30 ms of this thread's CPU, however long that takes on a busy machine
	// (spinning for 30 ms of wall time got 8 ms of CPU under load).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var t0, t1 unix.Timespec
	unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t0)
	for t1 = t0; time.Duration(t1.Nano()-t0.Nano()) < 30*time.Millisecond; {
		unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t1)
	}
	busy, err := cpuTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if d := busy - slept; d < 20*time.Millisecond || d > 2*time.Second {
		t.Errorf("30 ms of spinning counted as %v of CPU", d)
	}
	if (busy-slept)%(10*time.Millisecond) == 0 && (slept-before)%(10*time.Millisecond) == 0 {
		t.Errorf("CPU times %v and %v are whole clock ticks: the per-thread run time was not read", slept-before, busy-slept)
	}
}
