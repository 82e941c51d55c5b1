// SPDX-License-Identifier: Apache-2.0

package liveview

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/spiwatch/spiwatch/internal/sasource"
)

// TestRenderNoSize: a terminal that reports 0×0 without an error (a serial
// console, a container's tty before its first resize) still gets a screen.
func TestRenderNoSize(t *testing.T) {
	v := &View{info: Info{Started: time.Now()}, last: snapshot()}
	if screen := v.Render(0, 0); !strings.Contains(screen, "unknown SPIs") || !strings.Contains(screen, "0xaaaa0001") {
		t.Errorf("0×0 terminal: screen %q, want the 80×24 layout", screen)
	}
}

// TestRenderCutsWholeRunes: lines cut to a narrow terminal stay valid UTF-8
// (a file path or an error message may hold any character).
func TestRenderCutsWholeRunes(t *testing.T) {
	s := snapshot()
	s.Sources = []sasource.Stats{{Name: "file /etc/spiwatch/clés", SAs: 3, Connected: true}}
	v := &View{info: Info{Started: time.Now()}, last: s}
	for w := 20; w < 80; w++ {
		for _, l := range strings.Split(v.Render(w, 40), "\n") {
			if !utf8.ValidString(l) {
				t.Fatalf("width %d: line %q is not valid UTF-8", w, l)
			}
		}
	}
}
