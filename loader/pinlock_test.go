// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/testenv"
)

// testPinDir mounts a BPF filesystem of the test's own and returns a pin path on it.
func testPinDir(t *testing.T) string {
	t.Helper()
	testenv.RequireBPF(t)
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		testenv.Unavailable(t, "cannot mount a BPF filesystem: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return filepath.Join(dir, "spiwatch")
}

// TestPinLock: while one Objects holds a pin directory, a second Load of it is
// refused naming the directory and the holder's pid; once closed, it loads.
func TestPinLock(t *testing.T) {
	dir := testPinDir(t)
	first, err := Load(Settings{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Unpin(dir) })
	_, err = Load(Settings{PinPath: dir})
	want := fmt.Sprintf("pin directory %s is in use by another spiwatch run --pin (pid %d): stop that one first, or give this one another --pin-path", dir, os.Getpid())
	if err == nil || err.Error() != want {
		t.Errorf("second Load: %v\nwant %s", err, want)
	}
	first.Close()
	second, err := Load(Settings{PinPath: dir})
	if err != nil {
		t.Fatalf("Load after the first closed: %v", err)
	}
	second.Close()
}

func TestHolderIn(t *testing.T) {
	locks := "1: POSIX  ADVISORY  WRITE 99 00:2a:1120735 0 EOF\n" +
		"2: FLOCK  ADVISORY  WRITE 2058 00:2a:1120735 0 EOF\n" +
		"3: FLOCK  ADVISORY  WRITE 77 fd:01:5 0 EOF\n"
	for _, c := range []struct {
		major, minor uint32
		ino          uint64
		want         string
	}{{0, 0x2a, 1120735, "pid 2058"}, {0xfd, 1, 5, "pid 77"}, {0, 0x2a, 5, "pid unknown"}} {
		if got := holderIn(locks, c.major, c.minor, c.ino); got != c.want {
			t.Errorf("%x:%x:%d: %q, want %q", c.major, c.minor, c.ino, got, c.want)
		}
	}
}
