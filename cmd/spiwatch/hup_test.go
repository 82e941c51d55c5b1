// SPDX-License-Identifier: Apache-2.0

package main

import (
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

// TestSIGHUPWhileStarting: a SIGHUP while the known-SA sources start (a VICI
// socket that accepts and never answers holds the start for 10 s) does not end
// spiwatch, which starts and reports. The handler once came only after the
// sources had started, and SIGHUP's default action killed it.
func TestSIGHUPWhileStarting(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, _ := buildBinaries(t)
	lab := newLab(t, "swhup")
	sock := filepath.Join(t.TempDir(), "silent.vici")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	hupped := make(chan error, 1)
	go func() {
		var held []net.Conn // open, unanswered, until the test ends
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if held = append(held, c); len(held) == 1 {
				hupped <- hupPeer(c) // spiwatch is in the VICI source's start
			}
		}
	}()
	s := startCmd(t, netlab.Command(lab.NSB, spiwatch, "-i", lab.Receiver, "--known-from", "vici="+sock, "--json", "--interval", "200ms"))
	if err := <-hupped; err != nil {
		t.Fatal(err)
	}
	s.stop(t) // exit 0
	if !strings.Contains(s.stderr.String(), "not connected") {
		t.Errorf("no word of the silent socket: %s", s.stderr)
	}
}

// hupPeer sends SIGHUP to the process at the other end of a unix socket.
func hupPeer(c net.Conn) error {
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return err
	}
	if cerr != nil {
		return cerr
	}
	return syscall.Kill(int(cred.Pid), syscall.SIGHUP)
}
