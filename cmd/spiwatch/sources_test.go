// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/spiwatch/spiwatch/internal/sasource"
)

// stubXfrm makes the ESP probe answer err for the test, counting its calls.
func stubXfrm(t *testing.T, err error) *int {
	t.Helper()
	calls := 0
	old := xfrmAvailable
	xfrmAvailable = func() error { calls++; return err }
	t.Cleanup(func() { xfrmAvailable = old })
	return &calls
}

// TestDefaultSources: without --known-from, spiwatch follows xfrm where the kernel
// can hold ESP states and nothing where it cannot, keeping the reason to say;
// --known-from chooses without asking the kernel.
func TestDefaultSources(t *testing.T) {
	file := writeFile(t, "known", "0x3000\n")
	noESP := errors.New("this kernel has no ESP (CONFIG_INET_ESP, module esp4): adding an ESP state: protocol not supported")
	xfrmSpec, fileSpec := sasource.Spec{Kind: "xfrm"}, sasource.Spec{Kind: "file", Arg: file}
	for _, tc := range []struct {
		name   string
		probe  error
		args   []string
		want   []sasource.Spec
		noXfrm error
		probed int
	}{
		{"kernel with ESP", nil, nil, []sasource.Spec{xfrmSpec}, nil, 1},
		{"kernel with ESP, and a file", nil, []string{"--known-file", file}, []sasource.Spec{xfrmSpec, fileSpec}, nil, 1},
		{"kernel without ESP", noESP, nil, nil, noESP, 1},
		{"kernel without ESP, and a file", noESP, []string{"--known-file", file}, []sasource.Spec{fileSpec}, noESP, 1},
		{"--known-from none", noESP, []string{"--known-from", "none"}, nil, nil, 0},
		{"--known-from xfrm", noESP, []string{"--known-from", "xfrm"}, []sasource.Spec{xfrmSpec}, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := stubXfrm(t, tc.probe)
			cfg, ok := parse(t, append([]string{"-i", "lo"}, tc.args...))
			if !ok {
				t.Fatal("flags refused")
			}
			v, err := cfg.Validate()
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if !slices.Equal(v.Sources, tc.want) || v.NoXfrm != tc.noXfrm || *calls != tc.probed {
				t.Errorf("sources %v, why no xfrm %v, %d probes; want %v, %v, %d", v.Sources, v.NoXfrm, *calls, tc.want, tc.noXfrm, tc.probed)
			}
		})
	}
	got := noXfrmNotice(noESP)
	want := "spiwatch: not following xfrm: this kernel has no ESP (CONFIG_INET_ESP, module esp4): adding an ESP state: protocol not supported; " +
		"known SAs only from --known-spi and --known-file (--known-from names a source)\n"
	if got != want || strings.Count(got, "\n") != 1 {
		t.Errorf("notice %q\nwant   %q", got, want)
	}
}
