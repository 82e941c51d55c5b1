// SPDX-License-Identifier: Apache-2.0

package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// RequireTool needs a program on PATH (tshark, tcpdump), installed by .ci/run.
func RequireTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(t, "needs %s (apt-get install %s)", name, pkg)
	}
	return p
}

// SmallTmpfs mounts a tmpfs of size bytes on a new temporary directory, for
// tests of a full disk, and unmounts it when the test ends. Needs root.
func SmallTmpfs(t testing.TB, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		Unavailable(t, "mounting a tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting the test tmpfs %s: %v", dir, err)
		}
	})
	return dir
}
