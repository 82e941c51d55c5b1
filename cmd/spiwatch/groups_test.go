// SPDX-License-Identifier: Apache-2.0

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

// TestUserGroups: --user NAME runs with NAME's groups, supplementary ones
// included: the README tells users to put NAME in the VICI socket's group
// (usermod -aG), which is a supplementary group. The user and groups exist only
// in files bind-mounted over /etc/passwd and /etc/group in the mount namespace
// of ip netns exec, which the host never sees.
func TestUserGroups(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, _ := buildBinaries(t)
	lab := newLab(t, "swgrp")
	dir := t.TempDir()
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	group, err := os.ReadFile("/etc/group")
	if err != nil {
		t.Fatal(err)
	}
	fakePasswd, fakeGroup := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	if err := os.WriteFile(fakePasswd, append(passwd, "swtest:x:4242:4242::/nonexistent:/bin/false\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fakeGroup, append(group, "swtest:x:4242:\nswsock:x:4343:swtest\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	script := "mount --bind " + fakePasswd + " /etc/passwd && mount --bind " + fakeGroup + " /etc/group && exec \"$@\""
	s := startCmd(t, netlab.Command(lab.NSB, "sh", "-c", script, "sh", spiwatch, "-i", lab.Receiver, "--user", "swtest", "--known-from", "none", "--json", "--interval", "100ms"))
	defer s.stop(t)
	pid := s.cmd.Process.Pid
	if uid := strings.Fields(procStatus(t, pid, "Uid")); uid[0] != "4242" {
		t.Errorf("Uid %v, want 4242", uid)
	}
	groups := strings.Fields(procStatus(t, pid, "Groups"))
	has := map[string]bool{}
	for _, g := range groups {
		has[g] = true
	}
	if !has["4343"] || len(groups) > 2 {
		t.Errorf("Groups %v, want swtest's groups (4242 4343): its supplementary group swsock is missing or others kept", groups)
	}
}
