// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiwatch/spiwatch/internal/testcaps"
)

func TestReadUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"read"}, "want one capture file, got 0"},
		{[]string{"read", "a.pcap", "b.pcap"}, "want one capture file, got 2"},
		{[]string{"read", "a.pcap", "--natt-port", "500"}, "NAT-T port 500 is IKE's port"},
		{[]string{"read", "a.pcap", "--known-spi", "12"}, "reserved"},
		{[]string{"read", "a.pcap", "--top", "-1"}, "--top -1"},
		{[]string{"read", "a.pcap", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"read", "a.pcap", "--unknown-table-size", "0"}, "--unknown-table-size must be at least 1"},
		{[]string{"read", "a.pcap", "--unknown-table-size", "4294967295"}, "--unknown-table-size 4294967295: at most 2097152"},
		{[]string{"read", "a.pcap", "--known-table-size", "4294967295"}, "--known-table-size 4294967295: at most 4194304"},
	} {
		var out, errOut strings.Builder
		if code := run(c.args, &out, &errOut); code != exitUsage || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("%v: status %d, stderr %q; want %d and %q", c.args, code, errOut.String(), exitUsage, c.want)
		}
	}
	var out, errOut strings.Builder
	if code := run([]string{"read", "--no-bpf", filepath.Join(t.TempDir(), "missing.pcap")}, &out, &errOut); code != exitError ||
		!strings.Contains(errOut.String(), "missing.pcap") {
		t.Errorf("missing file: status %d, stderr %q", code, errOut.String())
	}
}

// TestReadCapture reads a real capture with the reference classifier (no root) and
// checks the JSON report; a capture cut short gives a report marked partial and
// exit status 1.
func TestReadCapture(t *testing.T) {
	path := filepath.Join(testcaps.Dir(t), "tcpdump/isakmp4500.pcap")
	var out, errOut strings.Builder
	if code := run([]string{"read", "--no-bpf", "--json", "--known-spi", "0x1000", path}, &out, &errOut); code != exitOK {
		t.Fatalf("status %d: %s", code, errOut.String())
	}
	var o struct {
		Source  string `json:"source"`
		Partial string `json:"partial"`
		Total   struct{ Packets int }
		Classes []struct {
			Class   string
			Packets int
		}
		UnknownSPIs []struct {
			SPI, Src, Dst string
			Sport, Dport  int
			Packets       int
			Verdict       string
		} `json:"unknown_spis"`
	}
	if err := json.Unmarshal([]byte(out.String()), &o); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	got := map[string]int{}
	for _, c := range o.Classes {
		got[c.Class] = c.Packets
	}
	// isakmp4500.pcap: 8 ARP, 15 IKE (4 on 500, 11 with the marker), 8 ESP-in-UDP, 4 keepalives.
	want := map[string]int{"other": 8, "ike": 15, "esp-in-udp": 8, "nat-keepalive": 4, "esp": 0, "fragment": 0, "malformed": 0}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %d, want %d", k, got[k], v)
		}
	}
	if o.Source != "isakmp4500.pcap" || o.Partial != "" || o.Total.Packets != 35 || len(o.UnknownSPIs) != 1 {
		t.Fatalf("report %+v", o)
	}
	if u := o.UnknownSPIs[0]; u.SPI != "0xf4dc0ae5" || u.Src != "192.1.2.254" || u.Sport != 4500 || u.Packets != 8 || u.Verdict != "unknown" {
		t.Errorf("row %+v", u)
	}

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut.pcap")
	os.WriteFile(cut, b[:3000], 0o600)
	out.Reset()
	errOut.Reset()
	if code := run([]string{"read", "--no-bpf", cut}, &out, &errOut); code != exitError ||
		!strings.Contains(out.String(), "PARTIAL") || !strings.Contains(errOut.String(), "truncated") {
		t.Errorf("cut capture: status %d\nstdout %s\nstderr %s", code, out.String(), errOut.String())
	}
}
