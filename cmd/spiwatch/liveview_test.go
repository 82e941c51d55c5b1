// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/testenv"
)

// tmux runs a tmux command on the test's own server socket.
func tmux(t *testing.T, sock string, args ...string) string {
	t.Helper()
	out, err := exec.Command("tmux", append([]string{"-S", sock}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("tmux %v: %v: %s", args, err, out)
	}
	return string(out)
}

// waitScreen captures the pane until it contains all of want.
func waitScreen(t *testing.T, sock string, want ...string) string {
	t.Helper()
	return waitPane(t, sock, "sw", want...)
}

func waitPane(t *testing.T, sock, pane string, want ...string) string {
	t.Helper()
	var screen string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		screen = tmux(t, sock, "capture-pane", "-p", "-t", pane)
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(screen, w)
		}
		if ok {
			return screen
		}
	}
	t.Fatalf("the screen never showed %q:\n%s", want, screen)
	return ""
}

// TestLiveView runs spiwatch in a real terminal (tmux) with generated traffic and
// reads the screen: header, class rates and totals, the unknown-SPI table; s cycles
// the sort, p pauses, q quits with status 0 and the terminal given back.
func TestLiveView(t *testing.T) {
	testenv.RequireNetns(t)
	if _, err := exec.LookPath("tmux"); err != nil {
		testenv.Unavailable(t, "needs tmux for a real terminal")
	}
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swtui")
	sock := t.TempDir() + "/tmux.sock"
	status := t.TempDir() + "/status"
	cmd := fmt.Sprintf("ip netns exec %s %s -i %s --known-spi 0x1000 --interval 200ms; echo $? > %s; echo SHELL-BACK; sleep 30",
		lab.NSB, spiwatch, lab.Receiver, status)
	tmux(t, sock, "new-session", "-d", "-s", "sw", "-x", "160", "-y", "30", cmd)
	defer exec.Command("tmux", "-S", sock, "kill-server").Run()

	waitScreen(t, sock, "spiwatch  "+lab.Receiver+" (native)", "known SAs 1 (--known-spi)", "sorted by rate")
	runGen(t, gen, lab.NSA, lab.Sender, []string{
		"esp spi=0x1000 src=198.51.100.1 dst=203.0.113.1 count=3000",
		"esp spi=0xdeadbeef src=198.51.100.7 dst=203.0.113.1 count=200",
		"esp-in-udp spi=0xbeef src=198.51.100.8 dst=203.0.113.1 sport=31000 dport=4500 count=900",
	})
	screen := waitScreen(t, sock, "3000", "0xdeadbeef", "198.51.100.8:31000", "203.0.113.1:4500", "unknown table 2/65536")
	for _, l := range strings.Split(screen, "\n") {
		f := strings.Fields(l)
		if len(f) >= 5 && f[0] == "esp" && f[1] == "known" && f[4] != "3000" {
			t.Errorf("esp known row %q: want 3000 packets", l)
		}
	}
	// Sorted by rate, then (all rates now 0) by packets: 0xbeef (900) before 0xdeadbeef (200).
	if i, j := strings.Index(screen, "0x0000beef"), strings.Index(screen, "0xdeadbeef"); i < 0 || j < i {
		t.Errorf("unknown SPIs not in rate/packets order:\n%s", screen)
	}

	tmux(t, sock, "send-keys", "-t", "sw", "s")
	waitScreen(t, sock, "sorted by packets")
	tmux(t, sock, "send-keys", "-t", "sw", "p")
	waitScreen(t, sock, "PAUSED")
	tmux(t, sock, "send-keys", "-t", "sw", "p")
	tmux(t, sock, "send-keys", "-t", "sw", "q")
	screen = waitScreen(t, sock, "SHELL-BACK")
	if strings.Contains(screen, "sorted by") {
		t.Errorf("the view is still on screen after q: the alternate screen was not left:\n%s", screen)
	}
	b, err := os.ReadFile(status)
	if err != nil || strings.TrimSpace(string(b)) != "0" {
		t.Errorf("exit status %q (%v), want 0", b, err)
	}
	if xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Error("XDP program still attached after q")
	}

	// Ctrl-C (raw mode turns it into a key, not a signal) also quits cleanly.
	status2 := t.TempDir() + "/status"
	tmux(t, sock, "new-session", "-d", "-s", "sw2", "-x", "120", "-y", "30",
		fmt.Sprintf("ip netns exec %s %s -i %s --interval 200ms; echo $? > %s; echo SHELL-BACK; sleep 30", lab.NSB, spiwatch, lab.Receiver, status2))
	waitPane(t, sock, "sw2", "sorted by rate")
	tmux(t, sock, "send-keys", "-t", "sw2", "C-c")
	waitPane(t, sock, "sw2", "SHELL-BACK")
	if b, err := os.ReadFile(status2); err != nil || strings.TrimSpace(string(b)) != "0" {
		t.Errorf("exit status after Ctrl-C %q (%v), want 0", b, err)
	}
}
