// SPDX-License-Identifier: Apache-2.0

package capwrite

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiwatch/spiwatch/internal/testenv"
)

// TestPacketsRotated: Packets counts the packets of every file started.
func TestPacketsRotated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.pcapng")
	w, err := Create(path, nil, Options{Interfaces: twoIfaces, RotateBytes: 2000, Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range packets(60) {
		if err := w.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w.Packets() != 60 || w.Files() < 2 {
		t.Errorf("Packets() = %d in %d files, want 60 in several", w.Packets(), w.Files())
	}
}

// TestLongComment: a comment longer than a pcapng option holds (65535 bytes)
// must not make the file unreadable.
func TestLongComment(t *testing.T) {
	ps := packets(2)
	ps[0].Comment = "spiwatch: sources=" + strings.Repeat("198.51.100.77,", 5000)
	path, data := writeAll(t, ps)
	if _, got := readBack(t, data); len(got) != 2 {
		t.Errorf("%d packets read back, want 2", len(got))
	}
	tshark := testenv.RequireTool(t, "tshark", "tshark")
	out, err := exec.Command(tshark, "-r", path, "-T", "fields", "-e", "esp.spi").Output()
	if err != nil || len(strings.Fields(string(out))) != 2 {
		t.Errorf("tshark: %v: %s", err, out)
	}
}
