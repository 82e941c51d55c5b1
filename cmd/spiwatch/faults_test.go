// SPDX-License-Identifier: Apache-2.0

package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

// TestSIGKILL: without --pin the attachment belongs to the process, so SIGKILL
// leaves no program behind; with --pin the kernel keeps counting and the next start
// resumes from the pins with nothing lost.
func TestSIGKILL(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swkill")

	s := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--json", "--interval", "100ms")
	s.cmd.Process.Signal(syscall.SIGKILL)
	for range s.lines {
	}
	<-s.done
	deadline := time.Now().Add(5 * time.Second)
	for xdpAttached(t, lab.NSB, lab.Receiver) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond) // the kernel releases the link with the last fd
	}
	if xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Fatal("a program is still attached after SIGKILL without --pin")
	}

	pins := testBPFFS(t)
	defer netlab.Command(lab.NSB, spiwatch, "detach", "--pin-path", pins).Run()
	s = startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--pin", "--pin-path", pins, "--json", "--interval", "100ms")
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xdead count=60"})
	s.waitTotal(t, 60)
	s.cmd.Process.Signal(syscall.SIGKILL)
	for range s.lines {
	}
	<-s.done
	if !xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Fatal("with --pin the program must survive SIGKILL")
	}
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xdead count=40"})
	out, err := netlab.Command(lab.NSB, spiwatch, "run", "--pin", "--pin-path", pins, "-i", lab.Receiver, "--json", "--count", "1", "--interval", "50ms").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"total":{"packets":100,`) {
		t.Errorf("after SIGKILL and restart: %s; want the 100 packets sent", out)
	}
}

// TestBadKnownFiles: known-SPI files that are wrong in every way fail with the file
// and line named, exit status 2, nothing attached; a million good lines load.
func TestBadKnownFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, body []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, body, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	junk := make([]byte, 64<<10)
	for i := range junk {
		junk[i] = byte(i*7 + i/3)
	}
	for name, c := range map[string]struct {
		body []byte
		want string
	}{
		"binary":    {junk, "bad-binary:"},
		"badline":   {[]byte("0x1000\n0x2000\n0xnothex\n"), "bad-badline:3:"},
		"reserved":  {[]byte("0x1000\n12\n"), "bad-reserved:2: SPI 12 is reserved"},
		"badaddr":   {[]byte("0x1000@203.0.113.300\n"), "bad-badaddr:1:"},
		"toobig":    {[]byte("0x100000000\n"), "bad-toobig:1: SPI 0x100000000 does not fit in 32 bits"},
		"twoonline": {[]byte("0x1000 0x2000\n"), "bad-twoonline:1:"},
	} {
		p := write("bad-"+name, c.body)
		var out, errOut strings.Builder
		if code := run([]string{"-i", "lo", "--known-file", p}, &out, &errOut); code != exitUsage || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("%s: status %d, stderr %q; want %d and %q", name, code, errOut.String(), exitUsage, c.want)
		}
	}
	// A million lines with duplicates: loads (deduplicated), and fits or not by size.
	var b strings.Builder
	for i := 0; i < 1_000_000; i++ {
		b.WriteString("0x")
		b.WriteString(hex32(uint32(0x10000000 + i%700_000)))
		b.WriteString("\n")
	}
	big := write("big", []byte(b.String()))
	cfg := Config{Interfaces: []string{"lo"}, KnownFile: big, XDPMode: "auto", Action: "pass", Interval: time.Second, UnknownMax: 1, KnownMax: 1 << 20, Top: 1, LogFormat: "logfmt",
		CollisionWindow: time.Second}
	v, err := cfg.Validate()
	if err != nil {
		t.Fatalf("a million lines: %v", err)
	}
	if len(v.Known) != 700_000 {
		t.Fatalf("a million lines, 700,000 distinct: %d SAs", len(v.Known))
	}
	cfg.KnownMax = 65536
	if _, err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "700000 known SAs do not fit --known-table-size 65536") {
		t.Errorf("too many SAs for the map: %v", err)
	}
}

func hex32(v uint32) string {
	const digits = "0123456789abcdef"
	var b [8]byte
	for i := 7; i >= 0; i-- {
		b[i] = digits[v&0xf]
		v >>= 4
	}
	return string(b[:])
}

// TestLowMemlock: a tiny RLIMIT_MEMLOCK (64 KiB, as some distributions set for
// services) does not stop spiwatch: Linux 5.11+ charges BPF memory to the cgroup,
// and before that spiwatch raises the limit itself (rlimit.RemoveMemlock), saying
// so if it cannot. Loading, attaching and counting all happen here.
func TestLowMemlock(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swmemlock")
	s := startCmd(t, netlab.Command(lab.NSB, "prlimit", "--memlock=65536:65536", spiwatch, "-i", lab.Receiver, "--json", "--interval", "100ms"))
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xdead count=20"})
	s.waitTotal(t, 20)
	if o := s.stop(t); o.Total.Packets != 20 {
		t.Errorf("counted %d with RLIMIT_MEMLOCK 64 KiB, want 20", o.Total.Packets)
	}
}
