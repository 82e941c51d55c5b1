// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// TestREADMEHelp: every "`spiwatch ... --help`:" block in the README is what that
// command prints, so the README cannot drift from the flags. SPIWATCH_UPDATE_README=1
// rewrites the blocks instead.
func TestREADMEHelp(t *testing.T) {
	const path = "../../README.md"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	found := 0
	for _, cmd := range []string{"spiwatch --help", "spiwatch read --help", "spiwatch capture --help", "spiwatch status --help", "spiwatch stats --help", "spiwatch detach --help"} {
		marker := "`" + cmd + "`:\n\n```\n"
		start := strings.Index(text, marker)
		if start < 0 {
			continue
		}
		found++
		start += len(marker)
		end := strings.Index(text[start:], "```\n")
		if end < 0 {
			t.Fatalf("README: the %s block is not closed", cmd)
		}
		var out bytes.Buffer
		args := strings.Fields(cmd)[1:]
		if code := run(args, &out, &out); code != exitOK {
			t.Fatalf("%s: exit %d: %s", cmd, code, out.String())
		}
		if got := text[start : start+end]; got != out.String() {
			if os.Getenv("SPIWATCH_UPDATE_README") == "1" {
				text = text[:start] + out.String() + text[start+end:]
				continue
			}
			t.Errorf("README's %s block differs from the command's output (SPIWATCH_UPDATE_README=1 go test -run TestREADMEHelp ./cmd/spiwatch rewrites it):\n%s", cmd, out.String())
		}
	}
	if found == 0 {
		t.Fatal("README has no help block")
	}
	if os.Getenv("SPIWATCH_UPDATE_README") == "1" {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
