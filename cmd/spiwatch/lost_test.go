// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"testing"

	"github.com/spiwatch/spiwatch/loader"
)

// TestLostAfter: a deleted interface and a program detached or replaced are a
// loss that stays; a check netlink could not answer changes nothing, whatever
// the interface had before.
func TestLostAfter(t *testing.T) {
	busy := errors.New("cannot check the interface: no buffer space available")
	for _, c := range []struct {
		prev string
		st   loader.Status
		want string
	}{
		{"", loader.Status{Name: "eth0"}, ""},
		{"", loader.Status{Problem: "interface deleted"}, "interface deleted"},
		{"", loader.Status{Name: "eth0", Problem: "program detached by someone else"}, "program detached by someone else"},
		{"", loader.Status{Unchecked: busy}, ""},
		{"interface deleted", loader.Status{Unchecked: busy}, "interface deleted"},
		{"interface deleted", loader.Status{Problem: "interface deleted"}, "interface deleted"},
		// Lost stays lost until spiwatch attaches again itself (--wait-iface).
		{"program detached by someone else", loader.Status{Name: "eth0"}, "program detached by someone else"},
	} {
		if got := lostAfter(c.prev, c.st); got != c.want {
			t.Errorf("lost %q, then %+v: %q, want %q", c.prev, c.st, got, c.want)
		}
	}
}
