// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/maps"
)

const bpffsMagic = 0xCAFE4A11

// TestPinNotOnBPFFS: a pin path outside any BPF filesystem is refused with how to
// mount one, before anything is loaded or created.
func TestPinNotOnBPFFS(t *testing.T) {
	testenv.RequireBPF(t)
	dir := filepath.Join(t.TempDir(), "pins")
	_, err := Load(Settings{PinPath: dir})
	if err == nil || !strings.Contains(err.Error(), "pin directory "+dir+" is not on a BPF filesystem (mount one: mount -t bpf bpf DIR)") {
		t.Fatalf("Load with a pin path on tmpfs: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the refused pin directory was created (%v)", err)
	}
}

// TestPinMountsBPFFS: with nothing mounted at /sys/fs/bpf (seen in a private
// mount namespace, where the test unmounts it), pinning under it mounts a BPF
// filesystem there, root-only, and pins every map.
func TestPinMountsBPFFS(t *testing.T) {
	testenv.RequireBPF(t)
	done := make(chan error)
	go func() {
		// This thread enters a mount namespace of its own and is never given back
		// to Go's pool (it ends with the goroutine, locked), so the namespace and
		// the filesystem mounted in it go with it.
		runtime.LockOSThread()
		done <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return err
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return err
			}
			for {
				var st unix.Statfs_t
				if unix.Statfs("/sys/fs/bpf", &st) != nil || st.Type != bpffsMagic {
					break
				}
				if err := unix.Unmount("/sys/fs/bpf", unix.MNT_DETACH); err != nil {
					return err
				}
			}
			dir := "/sys/fs/bpf/spiwatch-test"
			objs, err := Load(Settings{PinPath: dir})
			if err != nil {
				return err
			}
			defer objs.Close()
			if !objs.PinsGoAtExit {
				t.Error("pins on a BPF filesystem mounted in a private mount namespace: PinsGoAtExit not set")
			}
			var st unix.Statfs_t
			if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != bpffsMagic {
				t.Errorf("/sys/fs/bpf is not a BPF filesystem after Load (%v, type %#x)", err, st.Type)
			}
			fi, err := os.Stat(dir)
			if err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("pin directory: %v, mode %v; want 0700", err, fi.Mode().Perm())
			}
			for _, name := range maps.Names {
				if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
					t.Errorf("map %s not pinned: %v", name, err)
				}
			}
			return nil
		}()
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
