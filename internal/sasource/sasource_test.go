// SPDX-License-Identifier: Apache-2.0

package sasource

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	good := map[string]Spec{
		"xfrm":             {Kind: "xfrm"},
		"none":             {Kind: "none"},
		"vici":             {Kind: "vici"},
		"vici=/run/x.vici": {Kind: "vici", Arg: "/run/x.vici"},
		"file=/etc/known":  {Kind: "file", Arg: "/etc/known"},
		"file=a=b":         {Kind: "file", Arg: "a=b"},
	}
	for in, want := range good {
		got, err := ParseSpec(in)
		if err != nil || got != want {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if got.String() != in {
			t.Errorf("%+v.String() = %q, want %q", got, got.String(), in)
		}
	}
	bad := map[string]string{
		"":       "want xfrm",
		"kernel": "want xfrm",
		"xfrm=1": "takes no value",
		"none=x": "takes no value",
		"vici=":  "empty socket path",
		"file":   "want file=PATH",
		"file=":  "want file=PATH",
		"XFRM":   "want xfrm",
	}
	for in, want := range bad {
		if _, err := ParseSpec(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSpec(%q) = %v, want an error with %q", in, err, want)
		}
	}
}

func TestHealth(t *testing.T) {
	h := NewHealth("xfrm")
	h.Synced(3)
	h.Failed(errors.New("dump: permission denied"))
	h.Resynced()
	h.Reconnected()
	h.SetConnected(true)
	want := Stats{Name: "xfrm", SAs: 3, Syncs: 1, Errors: 1, Resyncs: 1, Reconnects: 1, Connected: true, LastError: "dump: permission denied"}
	if got := h.Stats(); got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}
	h.Synced(4)
	if got := h.Stats(); got.LastError != "" || got.SAs != 4 || got.Syncs != 2 || got.Errors != 1 {
		t.Errorf("after a good sync: %+v", got)
	}
}

// TestParseSpecVICIURI: strongSwan names its VICI socket as a URI
// (charon.plugins.vici.socket = unix:///var/run/charon.vici, swanctl --uri), and
// that is what a user copies. unix://PATH is the socket PATH; it used to be taken
// as a file name, which never exists, and the source waited for a charon "not
// running yet" forever. Another scheme is refused, saying what is wanted.
func TestParseSpecVICIURI(t *testing.T) {
	for in, want := range map[string]Spec{
		"vici=unix:///var/run/charon.vici": {Kind: "vici", Arg: "/var/run/charon.vici"},
		"vici=unix:///run/strongswan/x":    {Kind: "vici", Arg: "/run/strongswan/x"},
		"vici=unix://charon.vici":          {Kind: "vici", Arg: "charon.vici"},     // relative, as strongSwan reads it
		"vici=/tmp/odd://name":             {Kind: "vici", Arg: "/tmp/odd://name"}, // a path, not a URI
	} {
		if got, err := ParseSpec(in); err != nil || got != want {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"vici=tcp://127.0.0.1:4502": "unix socket",
		"vici=unix://":              "empty socket path",
	} {
		if got, err := ParseSpec(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSpec(%q) = %+v, %v; want an error with %q", in, got, err, want)
		}
	}
}
