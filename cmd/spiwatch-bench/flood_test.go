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

// A process's CPU time includes its threads that have exited: Go retires a
// thread whose goroutine ends locked to it (spiwatch's xfrm probe does that).
func TestCPUTimeExitedThread(t *testing.T) {
	pid := os.Getpid()
	before, err := cpuTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		spinCPU(30 * time.Millisecond)
		close(done)
	}()
	<-done
	time.Sleep(50 * time.Millisecond) // the thread is gone
	after, err := cpuTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if d := after - before; d < 20*time.Millisecond {
		t.Errorf("30 ms of CPU on a thread that then exited counted as %v", d)
	}
}

// spinCPU uses d of this thread's CPU time, however long that takes.
func spinCPU(d time.Duration) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var t0, t1 unix.Timespec
	unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t0)
	for t1 = t0; time.Duration(t1.Nano()-t0.Nano()) < d; {
		unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t1)
	}
}
