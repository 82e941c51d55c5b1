// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

// parse reads args the way run does. ok is false when pflag itself refuses them or a
// stray argument is left, i.e. when run stops before Validate.
func parse(t *testing.T, args []string) (cfg Config, ok bool) {
	t.Helper()
	fs := pflag.NewFlagSet("spiwatch", pflag.ContinueOnError)
	fs.SetOutput(new(bytes.Buffer))
	cfg.AddFlags(fs)
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return cfg, false
	}
	return cfg, true
}

// runUsage runs the command expecting a usage error. Every args must fail before
// Validate returns, and that is checked first: run with args that validate would
// load BPF and attach to lo, and run until interrupted.
func runUsage(t *testing.T, args []string, want string) {
	t.Helper()
	if cfg, ok := parse(t, args); ok {
		v, err := cfg.Validate()
		if err == nil {
			t.Fatalf("Validate accepted %q (%+v): want %q", args, v, want)
		}
		if err.Error() != want {
			t.Errorf("Validate error %q\nwant %q", err, want)
		}
	}
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	if code != exitUsage {
		t.Errorf("exit status %d, want %d (usage)", code, exitUsage)
	}
	if got := stderr.String(); !strings.HasPrefix(got, "spiwatch: "+want) || strings.Count(got, "\n") != 1 {
		t.Errorf("stderr %q\nwant one line starting %q", got, "spiwatch: "+want)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout %q, want nothing", stdout.String())
	}
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUsageErrors(t *testing.T) {
	goodFile := writeFile(t, "known", "# known SAs\n0x3000@192.0.2.1\n\n0x3000@192.0.2.1 # again: counts once\n")
	badFile := writeFile(t, "bad", "0x1000\n0x20\n")
	missing := filepath.Join(t.TempDir(), "missing")
	ports := func(n int) []string {
		var a []string
		for i := range n {
			a = append(a, "--natt-port", fmt.Sprint(4501+i))
		}
		return a
	}
	lo := []string{"-i", "lo"}
	var manyIfaces []string
	for range maps.MaxIfaces + 1 {
		manyIfaces = append(manyIfaces, "-i", "lo")
	}
	// Cases that run stops before Validate also carry a value Validate refuses: if
	// the check under test breaks, run stops there instead of attaching to lo.
	loBad := []string{"-i", "lo", "--top", "-1"}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no interface", nil, "no interface given: use -i IFACE"},
		{"no interface, other flags", []string{"--json", "--top", "5"}, "no interface given: use -i IFACE"},
		{"empty interface", []string{"-i", ""}, "-i: empty interface name"},
		{"interface twice", []string{"-i", "lo", "--interface", "lo"}, "-i lo: interface given twice"},
		// Longer than IFNAMSIZ-1: no interface can have this name.
		{"unknown interface", []string{"-i", "lo", "-i", "spiwatch-no-such-if"}, "-i spiwatch-no-such-if: interface not found (see ip link)"},
		{"too many interfaces", manyIfaces, fmt.Sprintf("-i: %d interfaces given, at most %d", maps.MaxIfaces+1, maps.MaxIfaces)},
		{"xdp mode", append(lo, "--xdp-mode", "bogus"), `--xdp-mode: unknown XDP mode "bogus": want auto, native or generic`},
		{"action", append(lo, "--action", "maybe"), `--action "maybe": want pass or drop`},
		{"drop-above without drop", append(lo, "--drop-above", "100"), `--drop-above 100: only with --action drop (unknown-SPI packets pass otherwise)`},
		{"drop-above too high", append(lo, "--action", "drop", "--drop-above", "2000000000"), `--drop-above 2000000000: at most 1000000000 packets per second`},
		{"drop-above not a number", append(lo, "--action", "drop", "--drop-above", "-5"), `invalid argument "-5" for "--drop-above" flag: must be a non-negative integer (see spiwatch --help)`},
		{"collision window 0", append(lo, "--collision-window", "0s"), `--collision-window 0s: must be more than 0`},
		{"natt port 0", append(lo, "--natt-port", "0"), `--natt-port "0": not a UDP port (1-65535)`},
		{"natt port 70000", append(lo, "--natt-port", "70000"), `--natt-port "70000": not a UDP port (1-65535)`},
		{"natt port abc", append(lo, "--natt-port", "abc"), `--natt-port "abc": not a UDP port (1-65535)`},
		{"natt port -1", append(lo, "--natt-port", "-1"), `--natt-port "-1": not a UDP port (1-65535)`},
		{"natt port 500", append(lo, "--natt-port", "500"), "--natt-port: NAT-T port 500 is IKE's port; NAT-T uses its own port (4500 by default)"},
		{"natt port twice", append(lo, "--natt-port", "4500", "--natt-port", "4501", "--natt-port", "4500"), "--natt-port: NAT-T port 4500 given twice"},
		{"9 natt ports", append(lo, ports(9)...), "--natt-port: too many NAT-T ports: 9 given, at most 8"},
		{"interval 0", append(lo, "--interval", "0"), "--interval 0s: must be at least 10ms"},
		{"interval 1ms", append(lo, "--interval", "1ms"), "--interval 1ms: must be at least 10ms"},
		{"interval 9.999ms", append(lo, "--interval", "9999us"), "--interval 9.999ms: must be at least 10ms"},
		{"interval negative", append(lo, "--interval", "-1s"), "--interval -1s: must be at least 10ms"},
		{"top -1", append(lo, "--top", "-1"), "--top -1: must be 0 (all) or more"},
		{"count -1", append(lo, "--count", "-1"), "--count -1: must be 0 (no limit) or more"},
		{"unknown table 0", append(lo, "--unknown-table-size", "0"), "--unknown-table-size must be at least 1"},
		{"known table 0", append(lo, "--known-table-size", "0"), "--known-table-size must be at least 1"},
		// Past the limits the kernel says only "argument list too long", or takes
		// gigabytes: refused with the flag, the limit and the memory.
		{"unknown table 2^32-1", append(lo, "--unknown-table-size", "4294967295"),
			"--unknown-table-size 4294967295: at most 2097152 (each row takes about 160 bytes of kernel memory from the start: 320 MiB at the limit); give a smaller size: a full table evicts the least recently seen rows and counts them"},
		{"unknown table over", append(lo, "--unknown-table-size", "2097153"),
			"--unknown-table-size 2097153: at most 2097152 (each row takes about 160 bytes of kernel memory from the start: 320 MiB at the limit); give a smaller size: a full table evicts the least recently seen rows and counts them"},
		{"known table 2^32-1", append(lo, "--known-table-size", "4294967295"),
			"--known-table-size 4294967295: at most 4194304 (the map takes up to 36 bytes of kernel memory per entry from the start, 72 MiB at the limit, and each SA in it 176 bytes on every CPU); give a size that fits the gateway's SAs, with room for rekeying"},
		{"known table over", append(lo, "--known-table-size", "4194305"),
			"--known-table-size 4194305: at most 4194304 (the map takes up to 36 bytes of kernel memory per entry from the start, 72 MiB at the limit, and each SA in it 176 bytes on every CPU); give a size that fits the gateway's SAs, with room for rekeying"},
		{"known spi 255", append(lo, "--known-spi", "0x1000", "--known-spi", "255"),
			"--known-spi 255: SPI 255 is reserved (0-255 never name an SA, RFC 4303)"},
		{"known spi 0xZZ", append(lo, "--known-spi", "0xZZ"), `--known-spi 0xZZ: "0xZZ" is not an SPI (want hex 0x1234abcd or decimal)`},
		{"known spi bad host", append(lo, "--known-spi", "0x1000@nothost"),
			`--known-spi 0x1000@nothost: "nothost" is not an IP address (want SPI@192.0.2.1 or SPI@2001:db8::1)`},
		{"known file missing", append(lo, "--known-file", missing),
			"reading known-SPI file: open " + missing + ": no such file or directory"},
		{"known file bad line", append(lo, "--known-file", badFile),
			badFile + ":2: SPI 0x20 is reserved (0-255 never name an SA, RFC 4303)"},
		// 2 on the command line and 1 from the file (its duplicate counts once).
		{"known table full", append(lo, "--known-table-size", "2", "--known-spi", "0x1000", "--known-spi", "0x2000@192.0.2.1",
			"--known-file", goodFile), "3 known SAs do not fit --known-table-size 2"},
		{"known-from bogus", append(lo, "--known-from", "kernel"), `--known-from "kernel": want xfrm, vici[=SOCKET], file=PATH or none`},
		{"known-from xfrm=x", append(lo, "--known-from", "xfrm=x"), `--known-from "xfrm=x": xfrm takes no value`},
		{"known-from file", append(lo, "--known-from", "file"), `--known-from "file": want file=PATH`},
		{"known-from vici=", append(lo, "--known-from", "vici="), `--known-from "vici=": empty socket path (leave out =SOCKET for /var/run/charon.vici)`},
		{"known-from twice", append(lo, "--known-from", "file="+goodFile, "--known-from", "file="+goodFile), "--known-from file=" + goodFile + ": given twice"},
		// vici is vici=/var/run/charon.vici: both would have one name, the key of
		// their SAs in the known set, and each would replace the other's SAs.
		{"known-from vici twice", append(lo, "--known-from", "vici", "--known-from", "vici=/var/run/charon.vici"),
			"--known-from vici and --known-from vici=/var/run/charon.vici: the same source given twice"},
		{"known-from vici twice, socket first", append(lo, "--known-from", "vici=/var/run/charon.vici", "--known-from", "xfrm", "--known-from", "vici"),
			"--known-from vici=/var/run/charon.vici and --known-from vici: the same source given twice"},
		{"known-from none and file", append(lo, "--known-from", "none", "--known-from", "file="+goodFile), "--known-from none: cannot be combined with --known-from file=" + goodFile},
		{"known-from and known-file", append(lo, "--known-from", "file="+goodFile, "--known-file", goodFile), "--known-file " + goodFile + ": also given as --known-from file=" + goodFile},
		{"known-from bad file", append(lo, "--known-from", "file="+badFile), badFile + ":2: SPI 0x20 is reserved (0-255 never name an SA, RFC 4303)"},
		{"no such user", append(lo, "--user", "spiwatch-no-such-user"), "--user spiwatch-no-such-user: no such user (see getent passwd)"},
		{"metrics addr without port", append(lo, "--metrics-addr", "x"), `--metrics-addr "x": want HOST:PORT or :PORT (address x: missing port in address)`},
		{"metrics port 70000", append(lo, "--metrics-addr", ":70000"), `--metrics-addr ":70000": port must be 1-65535`},
		{"metrics top over cap", append(lo, "--metrics-top-unknown", "201"), "--metrics-top-unknown 201: must be 0-200"},
		{"metrics top -1", append(lo, "--metrics-top-unknown", "-1"), "--metrics-top-unknown -1: must be 0-200"},
		{"log format xml", append(lo, "--log-format", "xml"), `--log-format "xml": want logfmt or json`},
		{"log every -1s", append(lo, "--log-every", "-1s"), "--log-every -1s: must be 0 or more"},
		{"rekey grace -1s", append(lo, "--rekey-grace", "-1s"), "--rekey-grace -1s: must be 0 or more"},
		{"stale history -1s", append(lo, "--stale-history", "-1s"), "--stale-history -1s: must be 0 or more"},
		{"ike init rate NaN", append(lo, "--ike-init-rate", "NaN"), "--ike-init-rate NaN: must be a number of requests per second, 0 or more"},
		{"ike init rate Inf", append(lo, "--ike-init-rate", "+Inf"), "--ike-init-rate +Inf: must be a number of requests per second, 0 or more"},
		{"ike init rate negative", append(lo, "--ike-init-rate", "-0.5"), "--ike-init-rate -0.5: must be a number of requests per second, 0 or more"},
		{"pin path empty", append(lo, "--pin", "--pin-path", ""), `--pin-path "": want a directory on the BPF filesystem (default /sys/fs/bpf/spiwatch)`},
		{"pin path without pin", append(lo, "--pin-path", "/sys/fs/bpf/x"), "--pin-path /sys/fs/bpf/x: only with --pin (without it nothing is pinned)"},
		{"json and plain", append(lo, "--json", "--plain"), "--json and --plain: choose one (--plain is for text reports)"},
		{"user and wait-iface", append(lo, "--user", "nobody", "--wait-iface"),
			"--user and --wait-iface together are not supported: attaching again needs CAP_BPF and CAP_NET_ADMIN; run --wait-iface as root, which then keeps only those two"},
		{"unknown flag", append(loBad, "--bogus"), "unknown flag: --bogus (see spiwatch --help)"},
		{"unknown shorthand", append(loBad, "-z"), "unknown shorthand flag: 'z' in -z (see spiwatch --help)"},
		{"bad int", append(loBad, "--count", "many"), `invalid argument "many" for "--count" flag: must be an integer (see spiwatch --help)`},
		{"bad duration", append(loBad, "--interval", "soon"), `invalid argument "soon" for "--interval" flag: must be a duration like "30s" or "5m" (see spiwatch --help)`},
		{"missing value", append(loBad, "--action"), "flag needs an argument: --action (see spiwatch --help)"},
		{"stray argument", append(loBad, "extra"), `unexpected argument "extra" (see spiwatch --help)`},
		{"stray argument first", []string{"eth0", "-i", "lo", "--top", "-1"}, `unexpected argument "eth0" (see spiwatch --help)`},
	} {
		t.Run(c.name, func(t *testing.T) { runUsage(t, c.args, c.want) })
	}
}

// TestValidateAccepts checks the boundary values just inside each limit, so that
// the errors above come from the value under test and not from something else.
func TestValidateAccepts(t *testing.T) {
	file := writeFile(t, "known", "# known SAs\n0x3000@192.0.2.1\n0x3000@192.0.2.1 # twice: once\n0x4000@::ffff:192.0.2.9\n")
	var ports []string
	for p := range 8 {
		ports = append(ports, "--natt-port", fmt.Sprint(4500+p))
	}
	// Exactly 4 distinct SAs for a table of 4: an SA given twice on the command line,
	// or both there and in the file, takes one entry.
	args := append([]string{"-i", "lo", "--xdp-mode", "generic", "--action", "drop", "--drop-above", "250", "--collision-window", "5s", "--interval", "10ms", "--top", "0",
		"--count", "0", "--known-table-size", "4", "--unknown-table-size", "1",
		"--known-spi", "256", "--known-spi", "0xffffffff@2001:db8::1", "--known-spi", "256", "--known-spi", "0x3000@192.0.2.1",
		"--known-file", file, "--user", "nobody", "--pin", "--pin-path", "/sys/fs/bpf/spiwatch-x", "--json"}, ports...)
	cfg, ok := parse(t, args)
	if !ok {
		t.Fatalf("parsing %q failed", args)
	}
	v, err := cfg.Validate()
	if err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if v.Mode != loader.ModeGeneric || !v.Settings.DropUnknown || v.Settings.UnknownMax != 1 || v.Settings.KnownMax != 4 ||
		v.Settings.DropAbove != 250 || cfg.CollisionWindow != 5*time.Second || v.Settings.PinPath != "/sys/fs/bpf/spiwatch-x" {
		t.Errorf("validated %+v", v)
	}
	if want := []uint16{4500, 4501, 4502, 4503, 4504, 4505, 4506, 4507}; !slices.Equal(v.Settings.NATTPorts, want) {
		t.Errorf("NAT-T ports %v, want %v", v.Settings.NATTPorts, want)
	}
	wantKnown := []maps.SA{
		{SPI: 256},
		{SPI: 0xffffffff, Dst: netip.MustParseAddr("2001:db8::1")},
		{SPI: 0x3000, Dst: netip.MustParseAddr("192.0.2.1")},
		{SPI: 0x4000, Dst: netip.MustParseAddr("192.0.2.9")},
	}
	if !slices.Equal(v.Known, wantKnown) {
		t.Errorf("known SAs %v, want %v", v.Known, wantKnown)
	}

	// The table sizes' upper limits.
	cfg, _ = parse(t, []string{"-i", "lo", "--unknown-table-size", "2097152", "--known-table-size", "4194304"})
	if v, err = cfg.Validate(); err != nil {
		t.Fatalf("Validate at the table limits: %v", err)
	}
	if v.Settings.UnknownMax != 2097152 || v.Settings.KnownMax != 4194304 {
		t.Errorf("table sizes %d, %d; want 2097152, 4194304", v.Settings.UnknownMax, v.Settings.KnownMax)
	}

	// Defaults: pass, auto, every second, top 20, default table sizes, port 4500.
	cfg, _ = parse(t, []string{"-i", "lo"})
	v, err = cfg.Validate()
	if err != nil {
		t.Fatalf("Validate defaults: %v", err)
	}
	if cfg.Interval != time.Second || cfg.Top != 20 || cfg.Count != 0 || cfg.JSON || cfg.Force || v.Mode != loader.ModeAuto ||
		v.Settings.DropUnknown || len(v.Settings.NATTPorts) != 0 || len(v.Known) != 0 ||
		v.Settings.UnknownMax != loader.DefaultUnknownMax || v.Settings.KnownMax != loader.DefaultKnownMax || v.Settings.PinPath != "" {
		t.Errorf("defaults: %+v → %+v", cfg, v)
	}
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"--help", "-h"} {
		var stdout, stderr bytes.Buffer
		if code := run([]string{arg}, &stdout, &stderr); code != exitOK {
			t.Errorf("%s: exit status %d, want 0", arg, code)
		}
		out := stderr.String()
		for _, want := range []string{
			"Usage:\n  spiwatch [run] -i IFACE [-i IFACE ...] [flags]  watch interfaces live\n  spiwatch read FILE [flags]",
			"spiwatch status | stats | detach [flags]",
			"Examples:\n",
			"-i, --interface stringArray",
			"--xdp-mode string",
			"--known-spi stringArray",
			"--natt-port stringArray",
			`--action string               what to do with unknown-SPI packets: pass or drop (default "pass")`,
			"--interval duration",
			// Capabilities are not all dropped: say which stay and when.
			"--user string                 after attaching, run as this user; either way spiwatch then drops every capability but those it still needs: CAP_NET_ADMIN while following xfrm, CAP_BPF and CAP_NET_ADMIN with --wait-iface, CAP_BPF before Linux 5.19 while kernel.unprivileged_bpf_disabled is set\n",
			"--version",
			"Exit status: 0 stopped normally, 1 runtime error or no interface left to watch, 2 bad usage (nothing attached).",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: usage lacks %q:\n%s", arg, want, out)
			}
		}
		// Flags in the order they are registered (grouped by concern), not sorted.
		if i, j := strings.Index(out, "-i, --interface"), strings.Index(out, "--action string"); i < 0 || j < i {
			t.Errorf("%s: flags sorted alphabetically, want registration order", arg)
		}
		if stdout.Len() != 0 {
			t.Errorf("%s: stdout %q, want nothing", arg, stdout.String())
		}
	}
}

func TestVersion(t *testing.T) {
	// --version answers before any check: no interface needed, and a bad value does
	// not matter (it also keeps run from attaching to lo if --version breaks).
	for _, args := range [][]string{{"--version"}, {"--version", "-i", "lo", "--top", "-1"}} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != exitOK {
			t.Errorf("%q: exit status %d, want 0; stderr %q", args, code, stderr.String())
		}
		if got := stdout.String(); got != "spiwatch dev\n" {
			t.Errorf("%q: stdout %q, want %q", args, got, "spiwatch dev\n")
		}
		if stderr.Len() != 0 {
			t.Errorf("%q: stderr %q, want nothing", args, stderr.String())
		}
	}
}
