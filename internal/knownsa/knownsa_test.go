// SPDX-License-Identifier: Apache-2.0

package knownsa

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiwatch/spiwatch/maps"
)

func TestParse(t *testing.T) {
	good := map[string]maps.SA{
		"0x1000":                  {SPI: 0x1000},
		"4096":                    {SPI: 4096},
		"0XABCDEF01":              {SPI: 0xabcdef01},
		"0xffffffff":              {SPI: 0xffffffff},
		"256":                     {SPI: 256},
		"0x1000@192.0.2.1":        {SPI: 0x1000, Dst: netip.MustParseAddr("192.0.2.1")},
		"0x1000@::ffff:192.0.2.1": {SPI: 0x1000, Dst: netip.MustParseAddr("192.0.2.1")},
		"0x1000@2001:db8::1":      {SPI: 0x1000, Dst: netip.MustParseAddr("2001:db8::1")},
	}
	for in, want := range good {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":                      "missing SPI",
		"0x":                    "not an SPI",
		"0xZZ":                  "not an SPI",
		"-5":                    "not an SPI",
		"0x100000000":           "does not fit",
		"255":                   "reserved",
		"0":                     "reserved",
		"0x1000@":               "not an IP address",
		"0x1000@host":           "not an IP address",
		"0x1000@fe80::1%eth0":   "not an IP address",
		"0x1000@0.0.0.0":        "unspecified",
		"0x1000@::":             "unspecified",
		"0x1000@::ffff:0.0.0.0": "destination ::ffff:0.0.0.0 is unspecified",
		"@10.0.0.1":             "missing SPI",
	}
	for in, want := range bad {
		_, err := Parse(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) error = %v; want it to say %q", in, err, want)
		}
	}
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "known")
	os.WriteFile(good, []byte("# gateway SAs\n0x1000\n\n  4097 # decimal\n0x1000\n0x2000@10.0.0.2\n"), 0o600)
	sas, err := ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	want := []maps.SA{{SPI: 0x1000}, {SPI: 4097}, {SPI: 0x2000, Dst: netip.MustParseAddr("10.0.0.2")}}
	if len(sas) != len(want) {
		t.Fatalf("got %v, want %v", sas, want)
	}
	for i := range want {
		if sas[i] != want[i] {
			t.Errorf("entry %d = %v, want %v", i, sas[i], want[i])
		}
	}

	for name, c := range map[string]struct{ body, want string }{
		"badline":  {"0x1000\n0x2000\nbogus\n", ":3: \"bogus\" is not an SPI"},
		"reserved": {"0x1000\n7\n", ":2: SPI 7 is reserved"},
		"twoper":   {"0x1000 0x2000\n", ":1: \"0x1000 0x2000\": one SPI"},
		"binary":   {strings.Repeat("\x00\x01", 5000), "line longer than"},
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(c.body), 0o600)
		_, err := ReadFile(p)
		if err == nil || !strings.Contains(err.Error(), p+c.want) && !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", name, err, c.want)
		}
		if err != nil && !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %v does not name the file", name, err)
		}
	}
	if _, err := ReadFile(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"0x1000", "4096@10.0.0.1", "0x1@::1", "@", "0x@@", "99999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sa, err := Parse(s)
		if err == nil && sa.SPI < 256 {
			t.Fatalf("Parse(%q) accepted reserved SPI %d", s, sa.SPI)
		}
	})
}

// FuzzRead: any file content either loads entirely or fails naming a line; never a
// panic, never a reserved SPI or a duplicate in the result.
func FuzzRead(f *testing.F) {
	for _, s := range []string{"0x1000\n4097@10.0.0.1\n# c\n", "\x00\x01\x02", "0x1000\n\n\n0x1000", strings.Repeat("0xffffffff\n", 50), "1@::1 # x\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sas, err := Read(strings.NewReader(string(data)), "fuzz")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz:") {
				t.Fatalf("error %q does not name the file", err)
			}
			if sas != nil {
				t.Fatalf("error %v with %d SAs: a bad file must load nothing", err, len(sas))
			}
			return
		}
		seen := map[maps.SA]bool{}
		for _, sa := range sas {
			if sa.SPI < 256 || seen[sa] {
				t.Fatalf("loaded %v (reserved or duplicate)", sa)
			}
			seen[sa] = true
		}
	})
}
