// SPDX-License-Identifier: Apache-2.0

package privdrop

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// unprivBPFSysctl is kernel.unprivileged_bpf_disabled.
const unprivBPFSysctl = "/proc/sys/kernel/unprivileged_bpf_disabled"

// KeepBPF says whether CAP_BPF must be kept after attaching for spiwatch to go on
// using its maps, and why (empty when it need not). Before Linux 5.19 ("bpf:
// refine kernel.unprivileged_bpf_disabled behaviour") the kernel refuses every
// bpf() command, reads through a descriptor already held included, to a caller
// without CAP_BPF or CAP_SYS_ADMIN while kernel.unprivileged_bpf_disabled is not 0
// (Debian and Ubuntu default to 2). release is the kernel's (uname -r); sysctl is
// that file's contents, or readErr why it could not be read. What cannot be told
// keeps CAP_BPF: a capability kept is better than every map read failing.
func KeepBPF(release, sysctl string, readErr error) (keep bool, why string) {
	setting := strings.TrimSpace(sysctl)
	if readErr == nil && setting == "0" {
		return false, ""
	}
	if major, minor, ok := kernelVersion(release); ok && (major > 5 || major == 5 && minor >= 19) {
		return false, ""
	}
	kernel := fmt.Sprintf("Linux %s", release)
	if _, _, ok := kernelVersion(release); !ok {
		kernel = fmt.Sprintf("kernel release %q (not understood, so taken as older than 5.19)", release)
	}
	if readErr != nil {
		return true, fmt.Sprintf("%s refuses map reads without it when kernel.unprivileged_bpf_disabled is set (fixed in 5.19), and reading that setting failed: %v", kernel, readErr)
	}
	return true, fmt.Sprintf("%s refuses map reads without it while kernel.unprivileged_bpf_disabled is %s (fixed in 5.19)", kernel, setting)
}

// KeepBPFHere is KeepBPF for the running kernel.
func KeepBPFHere() (keep bool, why string) {
	var u unix.Utsname
	release := ""
	if err := unix.Uname(&u); err == nil {
		release = unix.ByteSliceToString(u.Release[:])
	}
	b, err := os.ReadFile(unprivBPFSysctl)
	return KeepBPF(release, string(b), err)
}

// kernelVersion reads major and minor from a release such as "5.15.0-91-generic".
func kernelVersion(release string) (major, minor int, ok bool) {
	fields := strings.SplitN(release, ".", 3)
	if len(fields) < 2 {
		return 0, 0, false
	}
	major, err := strconv.Atoi(fields[0])
	if err != nil {
		return 0, 0, false
	}
	digits := strings.IndexFunc(fields[1], func(r rune) bool { return r < '0' || r > '9' })
	if digits < 0 {
		digits = len(fields[1])
	}
	minor, err = strconv.Atoi(fields[1][:digits])
	if err != nil {
		return 0, 0, false
	}
	return major, minor, true
}
