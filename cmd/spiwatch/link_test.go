// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/binary"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

// linkReport is what these tests read from a JSON report.
type linkReport struct {
	Total      struct{ Packets uint64 }
	Interfaces []struct {
		Name, Problem string
		LinkDown      bool `json:"link_down"`
		Total         struct{ Packets uint64 }
	}
	Classes []struct {
		Class    string
		Outcomes map[string]struct{ Packets, Bytes uint64 }
	}
}

// iface is the report's interface name, if there.
func (r linkReport) iface(name string) (problem string, packets uint64, ok bool) {
	for _, i := range r.Interfaces {
		if i.Name == name {
			return i.Problem, i.Total.Packets, true
		}
	}
	return "", 0, false
}

// waitReport reads reports until ok accepts one.
func (s *started) waitReport(t *testing.T, what string, ok func(linkReport) bool) linkReport {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case l, open := <-s.lines:
			if !open {
				t.Fatalf("spiwatch ended waiting for %s: %s", what, s.stderr)
			}
			var r linkReport
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatal(err)
			}
			if ok(r) {
				return r
			}
		case <-deadline:
			t.Fatalf("no report with %s: %s", what, s.stderr)
		}
	}
}

func (r linkReport) espKnown() (packets, bytes uint64) {
	for _, c := range r.Classes {
		if c.Class == "esp" {
			return c.Outcomes["known"].Packets, c.Outcomes["known"].Bytes
		}
	}
	return 0, 0
}

// TestLinkChanges: the watched link goes down and up, is renamed, and gets a jumbo
// MTU while spiwatch is attached. Every change is said and shown in the reports,
// the program stays attached, counts go on, and jumbo frames (multi-buffer XDP) are
// counted with their full length.
func TestLinkChanges(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swlink")
	ipIn := func(ns string, args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip -n %s %v: %v: %s", ns, args, err, out)
		}
	}
	logFile := filepath.Join(t.TempDir(), "events.log")
	s := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--known-spi", "0x1000", "--json", "--interval", "100ms", "--xdp-mode", "native",
		"--log-file", logFile)
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0x1000 count=10"})
	s.waitReport(t, "10 known", func(r linkReport) bool { p, _ := r.espKnown(); return p == 10 })

	// Down: still attached, shown as down; up again: traffic counts again.
	ipIn(lab.NSB, "link", "set", lab.Receiver, "down")
	s.waitReport(t, "the link down", func(r linkReport) bool { return r.Interfaces[0].LinkDown && r.Interfaces[0].Problem == "" })
	if !s.waitStderr(lab.Receiver + ": link down") {
		t.Errorf("stderr does not say the link went down: %s", s.stderr)
	}
	// Renamed while down (the kernel renames only links that are down).
	const renamed = "swren0"
	ipIn(lab.NSB, "link", "set", lab.Receiver, "name", renamed)
	ipIn(lab.NSB, "link", "set", renamed, "up")
	s.waitReport(t, "the new name, link up", func(r linkReport) bool {
		return r.Interfaces[0].Name == renamed && !r.Interfaces[0].LinkDown && r.Interfaces[0].Problem == ""
	})
	if !s.waitStderr(lab.Receiver+" was renamed "+renamed) || !s.waitStderr(renamed+": link up again") {
		t.Errorf("stderr does not say the link was renamed and came up: %s", s.stderr)
	}
	if !xdpAttached(t, lab.NSB, renamed) {
		t.Fatalf("the program is not attached to %s any more", renamed)
	}
	waitCarrier(t, lab.NSA, lab.Sender)
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0x1000 count=5"})
	s.waitReport(t, "15 known", func(r linkReport) bool { p, _ := r.espKnown(); return p == 15 })

	// Jumbo MTU on both ends while attached: the kernel accepts it only for a
	// multi-buffer-aware program. A 8,000-byte ESP packet is then one frame.
	ipIn(lab.NSB, "link", "set", renamed, "mtu", "9000")
	ipIn(lab.NSA, "link", "set", lab.Sender, "mtu", "9000")
	ipIn(lab.NSA, "addr", "add", "10.99.0.1/24", "dev", lab.Sender)
	ipIn(lab.NSB, "addr", "add", "10.99.0.2/24", "dev", renamed)
	_, before := s.waitReport(t, "15 known", func(r linkReport) bool { p, _ := r.espKnown(); return p == 15 }).espKnown()
	const payload = 8000
	sendRawESP(t, lab.NSA, "10.99.0.2", 0x1000, payload)
	r := s.waitReport(t, "the jumbo frame", func(r linkReport) bool { p, _ := r.espKnown(); return p == 16 })
	if _, after := r.espKnown(); after-before != 14+20+payload {
		t.Errorf("jumbo frame counted as %d bytes, want %d (Ethernet + IPv4 + ESP)", after-before, 14+20+payload)
	}
	if !xdpAttached(t, lab.NSB, renamed) {
		t.Errorf("the program is not attached after the MTU change")
	}
	o := s.stop(t)
	if o.Interfaces[0].Name != renamed {
		t.Errorf("last report names %s, want %s", o.Interfaces[0].Name, renamed)
	}
	// The event log says each change, as a change: the interface stayed watched.
	log, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"event=interface_change msg=\"Interface changed, still watched\" iface=" + lab.Receiver + " change=\"link down:",
		"event=interface_change msg=\"Interface changed, still watched\" iface=" + renamed + " change=\"renamed from " + lab.Receiver + "\"",
		"event=interface_change msg=\"Interface changed, still watched\" iface=" + renamed + " change=\"link up again\"",
	} {
		if !strings.Contains(string(log), want) {
			t.Errorf("event log lacks %s:\n%s", want, log)
		}
	}
	if strings.Contains(string(log), "interface_lost") {
		t.Errorf("event log says the interface was lost:\n%s", log)
	}
}

// waitCarrier waits until a veth end has its carrier back (the peer came up).
func waitCarrier(t *testing.T, ns, dev string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		out, _ := exec.Command("ip", "-n", ns, "-o", "link", "show", dev).Output()
		if len(out) > 0 && !strings.Contains(string(out), "NO-CARRIER") && strings.Contains(string(out), "LOWER_UP") {
			return
		}
	}
	t.Fatalf("%s in %s never got its carrier back", dev, ns)
}

// sendRawESP sends one ESP packet of payload bytes (SPI, sequence 1, zeros) from
// namespace ns to dst with a raw socket, so the kernel builds one jumbo frame.
func sendRawESP(t *testing.T, ns, dst string, spi uint32, payload int) {
	t.Helper()
	err := netlab.In(ns, func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, 50) // IPPROTO_ESP
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		b := make([]byte, payload)
		binary.BigEndian.PutUint32(b, spi)
		binary.BigEndian.PutUint32(b[4:], 1)
		var sa syscall.SockaddrInet4
		copy(sa.Addr[:], net.ParseIP(dst).To4())
		return syscall.Sendto(fd, b, 0, &sa)
	})
	if err != nil {
		t.Fatalf("sending %d bytes of ESP to %s from %s: %v", payload, dst, ns, err)
	}
}
