// SPDX-License-Identifier: Apache-2.0

// Package netlab builds throwaway network labs for tests, the demo and benchmarks:
// two network namespaces joined by a veth pair, with IPv6 and its chatter (router
// solicitations, MLD) off so that the only frames on the wire are the ones sent on
// purpose. Everything it creates is removed by Close.
package netlab

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"

	"github.com/vishvananda/netns"
)

// Lab is a veth pair: Sender in namespace NSA, Receiver in NSB, which has GRO on.
type Lab struct {
	NSA, NSB         string
	Sender, Receiver string // interface names
}

var seq atomic.Int32

// New creates the namespaces and the veth pair, both ends up. prefix keeps names of
// concurrent labs apart.
func New(prefix string) (*Lab, error) {
	n := seq.Add(1)
	id := fmt.Sprintf("%s%d-%d", prefix, os.Getpid(), n)
	l := &Lab{NSA: id + "a", NSB: id + "b", Sender: "swgen0", Receiver: "swmon0"}
	steps := [][]string{
		{"netns", "add", l.NSA},
		{"netns", "add", l.NSB},
		{"link", "add", l.Sender, "netns", l.NSA, "type", "veth", "peer", "name", l.Receiver, "netns", l.NSB},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			l.Close()
			return nil, err
		}
	}
	for _, x := range []struct{ ns, dev string }{{l.NSA, l.Sender}, {l.NSB, l.Receiver}} {
		for _, s := range [][]string{
			{"netns", "exec", x.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"},
			{"netns", "exec", x.ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"},
			{"-n", x.ns, "link", "set", x.dev, "up"},
			{"-n", x.ns, "link", "set", "lo", "up"}, // for services tests run inside
		} {
			if err := ip(s...); err != nil {
				l.Close()
				return nil, err
			}
		}
	}
	// veth hands XDP_TX frames (the generator's) to its peer only when the peer runs
	// NAPI: a native XDP program or GRO. GRO on keeps generic-mode receivers fed.
	if out, err := Command(l.NSB, "ethtool", "-K", l.Receiver, "gro", "on").CombinedOutput(); err != nil {
		l.Close()
		return nil, fmt.Errorf("enabling GRO on %s (needs ethtool): %v: %s", l.Receiver, err, strings.TrimSpace(string(out)))
	}
	return l, nil
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Close deletes both namespaces (and with them the veth pair). Safe to call twice.
func (l *Lab) Close() error {
	var errs []string
	for _, ns := range []string{l.NSA, l.NSB} {
		if _, err := os.Stat("/run/netns/" + ns); err != nil {
			continue
		}
		if err := ip("netns", "del", ns); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("removing lab: %s", strings.Join(errs, "; "))
	}
	return nil
}

// Command returns cmd to run inside namespace ns.
func Command(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// In runs fn with the calling goroutine's thread inside namespace ns; the thread
// returns to its original namespace afterwards.
func In(ns string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("reading current network namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", ns, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("entering network namespace %s: %w", ns, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// A thread stuck in the wrong namespace must not be reused.
			panic(fmt.Sprintf("returning from network namespace %s: %v", ns, err))
		}
	}()
	return fn()
}
