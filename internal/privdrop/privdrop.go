// SPDX-License-Identifier: Apache-2.0

// Package privdrop gives up privileges once spiwatch has what it needs: after
// loading and attaching, reading and updating its maps goes through file
// descriptors it already holds, which needs no capability at all.
package privdrop

import (
	"errors"
	"fmt"
	"os/user"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Capabilities spiwatch may keep (linux/capability.h).
const (
	CapNetAdmin = 12
	CapPerfmon  = 38
	CapBPF      = 39
)

// ErrCgo means the binary was built with cgo, where Go cannot change the
// credentials of every thread; build with CGO_ENABLED=0 (make build does).
var ErrCgo = errors.New("cannot change credentials of every thread in a cgo build (build with CGO_ENABLED=0)")

func allThreads(trap, a1, a2, a3 uintptr) error {
	_, _, errno := syscall.AllThreadsSyscall(trap, a1, a2, a3)
	if errno == syscall.ENOTSUP {
		return ErrCgo
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// Drop gives up privileges on every thread: it removes from the bounding set every
// capability not in keep (so nothing spiwatch might start regains them), switches
// to user if one is named (which needs CAP_SETUID and CAP_SETGID, so it comes
// before the last step), and keeps only the capabilities in keep.
func Drop(userName string, keep ...int) error {
	keepSet := map[int]bool{}
	for _, c := range keep {
		keepSet[c] = true
	}
	for c := 0; c <= unix.CAP_LAST_CAP; c++ {
		if !keepSet[c] {
			// Needs CAP_SETPCAP; without it (a unit granting only what spiwatch uses)
			// the bounding set is already small, and capset below still applies.
			err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0)
			if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EPERM) {
				return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
			}
		}
	}
	if userName != "" {
		if len(keep) > 0 {
			// Without this the kernel clears every capability when the uid leaves 0;
			// with it the permitted set stays, and capset below trims it to keep.
			if err := allThreads(unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 1, 0); err != nil {
				return fmt.Errorf("keeping capabilities across the user switch: %w", err)
			}
		}
		if err := switchUser(userName); err != nil {
			return err
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	for _, c := range keep {
		data[c/32].Effective |= 1 << (c % 32)
		data[c/32].Permitted |= 1 << (c % 32)
	}
	if err := allThreads(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); err != nil {
		return fmt.Errorf("dropping capabilities: %w", err)
	}
	return nil
}

// switchUser makes every thread run as the named user with its groups (as login
// would: the VICI socket is reached through a group the user is added to); the
// kernel clears the capabilities of a process that leaves uid 0.
func switchUser(name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("--user %s: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	groups, err := groupIDs(u)
	if err != nil {
		return fmt.Errorf("--user %s: reading its groups: %w", name, err)
	}
	var list uintptr
	if len(groups) > 0 {
		list = uintptr(unsafe.Pointer(&groups[0]))
	}
	err = allThreads(unix.SYS_SETGROUPS, uintptr(len(groups)), list, 0)
	runtime.KeepAlive(groups) // list is a bare address
	if err != nil {
		return fmt.Errorf("--user %s: setting its groups %v: %w", name, groups, err)
	}
	if err := allThreads(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); err != nil {
		return fmt.Errorf("--user %s: setting group %d: %w", name, gid, err)
	}
	if err := allThreads(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); err != nil {
		return fmt.Errorf("--user %s: setting user %d: %w", name, uid, err)
	}
	return nil
}

// groupIDs lists the user's groups, primary first, as the kernel takes them.
func groupIDs(u *user.User) ([]uint32, error) {
	ids, err := u.GroupIds()
	if err != nil {
		return nil, err
	}
	out := make([]uint32, 0, len(ids))
	for _, id := range ids {
		n, err := strconv.ParseUint(id, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("group id %q: %w", id, err)
		}
		out = append(out, uint32(n))
	}
	return out, nil
}

// Names spells capabilities the way capabilities(7) does.
func Names(caps []int) string {
	names := map[int]string{CapNetAdmin: "CAP_NET_ADMIN", CapPerfmon: "CAP_PERFMON", CapBPF: "CAP_BPF"}
	var out []string
	for _, c := range caps {
		if n, ok := names[c]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("capability %d", c))
		}
	}
	return strings.Join(out, ", ")
}
