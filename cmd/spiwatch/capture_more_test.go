// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

// genRun is a generator sending in the background (spiwatch-gen --duration).
type genRun struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
}

// startGen sends streams from iface for d, count= being frames per second.
func startGen(t *testing.T, bin, ns, iface string, d time.Duration, streams ...string) *genRun {
	t.Helper()
	args := []string{"-i", iface, "--duration", d.String()}
	for _, s := range streams {
		args = append(args, "--send", s)
	}
	g := &genRun{cmd: netlab.Command(ns, bin, args...), done: make(chan error, 1)}
	g.cmd.Stdout, g.cmd.Stderr = &g.out, &g.out
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { g.done <- g.cmd.Wait() }()
	t.Cleanup(func() { g.stop() })
	return g
}

// running says whether the generator still sends.
func (g *genRun) running() bool {
	select {
	case err := <-g.done:
		g.done <- err
		return false
	default:
		return true
	}
}

// stop interrupts the generator (ip netns exec execs it: the signal reaches it)
// and waits for it.
func (g *genRun) stop() {
	if g.running() {
		g.cmd.Process.Signal(syscall.SIGINT)
	}
	select {
	case err := <-g.done:
		g.done <- err
	case <-time.After(10 * time.Second):
		g.cmd.Process.Kill()
	}
}

// TestCaptureLossUnderLoad: the ring buffer fills while the capture process is
// stopped, and the generator goes on sending after it resumes. The loss is
// reported while the samples still stream in (reads never time out then), not
// only once traffic pauses.
func TestCaptureLossUnderLoad(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcapl")
	file := filepath.Join(t.TempDir(), "load.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", file, "--class", "esp", "--snaplen", "0", "--rate", "10000000")
	c.waitFor(t, "to "+file)
	if err := c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// 20,000 frames of 1 KB a second, paced every 5 ms: the 4 MiB ring is full
	// within a quarter of a second, and no read waits 200 ms for a sample.
	g := startGen(t, gen, lab.NSA, lab.Sender, 30*time.Second, "esp spi=0x1234 len=1000 count=20000")
	time.Sleep(time.Second)
	if err := c.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	for !strings.Contains(c.stderr.String(), "samples lost: the ring buffer was full") {
		if !g.running() {
			t.Fatalf("the generator ended before capture reported the loss: %s\ncapture: %s", g.out.String(), c.stderr)
		}
		if time.Since(resumed) > 10*time.Second {
			t.Fatalf("no loss reported within 10 s of resuming, samples streaming in: %s", c.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !g.running() {
		t.Fatalf("the generator ended before the loss was seen: %s", g.out.String())
	}
	t.Logf("loss reported %s after resuming, generator still sending", time.Since(resumed).Round(time.Millisecond))
	g.stop()
	if code := c.stop(t); code != 0 {
		t.Fatalf("capture exited %d: %s", code, c.stderr)
	}
}

// TestCaptureBesideRunNATTPort: capture beside a spiwatch run loaded with
// --natt-port 4501 decodes its samples with that port (read from the running
// program's .rodata): IKE with the non-ESP marker on 4501 has its exchange in
// the comment, as on 4500.
func TestCaptureBesideRunNATTPort(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcapn")
	r := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--natt-port", "4501", "--json", "--interval", "100ms")
	file := filepath.Join(t.TempDir(), "natt.pcapng")
	c := startCapture(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-w", file, "--class", "ike,esp-in-udp", "--rate", "1000")
	c.waitFor(t, "beside spiwatch run")
	runGen(t, gen, lab.NSA, lab.Sender, []string{
		"ike src=198.51.100.1 dst=203.0.113.1 sport=4501 dport=4501 marker=true count=3",
		"esp-in-udp spi=0xc0ffee src=198.51.100.2 dst=203.0.113.1 sport=4501 dport=4501 count=2",
	})
	r.waitTotal(t, 5)
	time.Sleep(300 * time.Millisecond)
	if code := c.stop(t); code != 0 {
		t.Fatalf("capture exited %d: %s", code, c.stderr)
	}
	r.stop(t)
	if strings.Contains(c.stderr.String(), "reading the NAT-T ports") {
		t.Errorf("capture could not read the running program's ports: %s", c.stderr)
	}
	var ike, esp int
	for _, p := range readTshark(t, file, nil) {
		switch {
		case strings.HasPrefix(p.comment, "spiwatch: class=ike ike=v2 exchange=IKE_SA_INIT dir=request "):
			ike++
		case strings.HasPrefix(p.comment, "spiwatch: class=esp-in-udp spi=0x00c0ffee verdict=unknown "):
			esp++
		default:
			t.Errorf("comment %q: want an IKE_SA_INIT on 4501 or ESP-in-UDP of 0xc0ffee", p.comment)
		}
	}
	if ike != 3 || esp != 2 {
		t.Errorf("%d IKE and %d ESP-in-UDP comments, want 3 and 2", ike, esp)
	}
}
