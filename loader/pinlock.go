// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// lockPins makes this process the owner of the pin directory for as long as it
// lives: a second run --pin would otherwise swap its own program into the pinned
// links, and the first would see its program replaced and stop. The lock is a
// flock on the directory itself (a BPF filesystem holds no regular files to lock),
// so the kernel releases it when the process dies, however it dies.
func lockPins(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("opening pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("pin directory %s is in use by another spiwatch run --pin (%s): stop that one first, or give this one another --pin-path",
				dir, pinHolder(dir))
		}
		return nil, fmt.Errorf("locking pin directory %s: %w", dir, err)
	}
	return f, nil
}

// pinHolder names the process holding the lock on dir, from /proc/locks (which
// lists a flock's owner by device and inode), as "pid N"; the lock itself needs
// no pid written anywhere, so a dead owner's pid never lingers.
func pinHolder(dir string) string {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return "pid unknown"
	}
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		return "pid unknown"
	}
	return holderIn(string(b), unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
}

// holderIn finds the flock on the file (major:minor:inode) in the text of
// /proc/locks, whose lines read
// "1: FLOCK  ADVISORY  WRITE 2058 00:2a:1120735 0 EOF".
func holderIn(locks string, major, minor uint32, ino uint64) string {
	file := fmt.Sprintf("%02x:%02x:%d", major, minor, ino)
	for _, line := range strings.Split(locks, "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 && f[1] == "FLOCK" && f[5] == file {
			return "pid " + f[4]
		}
	}
	return "pid unknown"
}

func closeLock(f *os.File) {
	if f != nil {
		f.Close()
	}
}
