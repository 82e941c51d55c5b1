// SPDX-License-Identifier: Apache-2.0

// Package testcaps loads the real IPsec captures kept in
// shared/testdata/pcaps (beside the repository, not in it) together with
// their tshark reference counts, for tests in any package. Import it only
// from _test files.
package testcaps

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/gopacket/layers"
	"github.com/spiwatch/spiwatch/internal/capread"
)

// relDir is where the captures live, relative to the module root.
const relDir = "../shared/testdata/pcaps"

// Dir returns the captures directory. When it is missing the test is
// skipped, except under CI (CI=true), where missing data is a failure.
func Dir(t testing.TB) string {
	t.Helper()
	dir, err := find()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("finding test captures: %v", err)
		}
		t.Skipf("skipping: test captures not available: %v", err)
	}
	return dir
}

// find walks up from the working directory to go.mod, then to relDir.
func find() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("getting working directory: %w", err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			dir := filepath.Join(d, relDir)
			if _, err := os.Stat(filepath.Join(dir, "README.md")); err != nil {
				return "", fmt.Errorf("reading %s: %w", dir, err)
			}
			return dir, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("finding go.mod above %s: none", wd)
		}
	}
}

// Capture is one capture file with its reference counts.
type Capture struct {
	Name     string // path relative to Dir, with forward slashes
	LinkType layers.LinkType
	Frames   [][]byte // captured bytes of each frame, in order
	// RefSPIs are the rows of <capture>.spi.tsv, in file order.
	RefSPIs []SPIRow
	// RefClasses maps each class of <capture>.classes.tsv (total, esp_ip,
	// esp_udp, ike, nat_keepalive, ip_fragment, ...) to its frame count.
	RefClasses map[string]int
}

// SPIRow is one row of a .spi.tsv: frames of one outer (SPI, addresses,
// ports) tuple over ESP and ESP-in-UDP.
type SPIRow struct {
	SPI              uint32
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // 0 for '-' (ESP over IP)
	Packets          int
}

// Ethernet reports whether the frames start with an Ethernet header, as an
// XDP program sees them.
func (c Capture) Ethernet() bool {
	return c.LinkType == layers.LinkTypeEthernet
}

// AsEthernet returns the frames as Ethernet frames, the way they would be
// replayed into XDP: Ethernet captures unchanged, DLT_NULL ones with the
// 4-byte address-family word swapped for a 14-byte Ethernet header
// (02:00:00:00:00:01 → 02:00:00:00:00:02), converted by capread. ok is
// false for any other link type, or a DLT_NULL frame of an unknown family.
func (c Capture) AsEthernet() (frames [][]byte, ok bool) {
	switch c.LinkType {
	case layers.LinkTypeEthernet:
		return c.Frames, true
	case layers.LinkTypeNull:
	default:
		return nil, false
	}
	for _, f := range c.Frames {
		e, known, err := capread.ToEthernet(nil, capread.LinkTypeNull, f)
		if err != nil || !known {
			return nil, false
		}
		copy(e, []byte{0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01})
		frames = append(frames, e)
	}
	return frames, true
}

// Load reads every .pcap and .pcapng under Dir with its two TSVs, sorted
// by name. A capture that cannot be read, or lacks a TSV, fails the test.
func Load(t testing.TB) []Capture {
	t.Helper()
	dir := Dir(t)
	var caps []Capture
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !(strings.HasSuffix(path, ".pcap") || strings.HasSuffix(path, ".pcapng")) {
			return nil
		}
		c, err := load(dir, path)
		if err != nil {
			return err
		}
		caps = append(caps, c)
		return nil
	})
	if err != nil {
		t.Fatalf("loading test captures: %v", err)
	}
	if len(caps) == 0 {
		t.Fatalf("loading test captures: none under %s", dir)
	}
	slices.SortFunc(caps, func(a, b Capture) int { return strings.Compare(a.Name, b.Name) })
	return caps
}

func load(dir, path string) (Capture, error) {
	rel, err := filepath.Rel(dir, path)
	if err != nil {
		return Capture{}, fmt.Errorf("naming %s: %w", path, err)
	}
	c := Capture{Name: filepath.ToSlash(rel)}
	if c.LinkType, c.Frames, err = readFrames(path); err != nil {
		return Capture{}, fmt.Errorf("reading %s: %w", c.Name, err)
	}
	if c.RefSPIs, err = readSPIs(path + ".spi.tsv"); err != nil {
		return Capture{}, fmt.Errorf("reading spi tsv of %s: %w", c.Name, err)
	}
	if c.RefClasses, err = readClasses(path + ".classes.tsv"); err != nil {
		return Capture{}, fmt.Errorf("reading classes tsv of %s: %w", c.Name, err)
	}
	return c, nil
}

// readFrames returns the link type and the frames, as captured, of the
// capture at path (pcap or pcapng, told apart by content). As with
// pcapgo's pcapng defaults, only frames of the first interface's link type
// are kept.
func readFrames(path string) (layers.LinkType, [][]byte, error) {
	r, err := capread.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer r.Close()
	var (
		lt     capread.LinkType
		known  bool
		frames [][]byte
	)
	if lts := r.LinkTypes(); len(lts) > 0 {
		lt, known = lts[0], true
	}
	for {
		p, err := r.NextRaw()
		if errors.Is(err, io.EOF) {
			return layers.LinkType(lt), frames, nil
		}
		if err != nil {
			return 0, nil, err
		}
		if !known {
			lt, known = p.LinkType, true
		}
		if p.LinkType == lt {
			frames = append(frames, slices.Clone(p.Data))
		}
	}
}

// readTSV returns the data rows of a tab-separated file whose header is want.
func readTSV(path string, want string) ([][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	if !s.Scan() {
		return nil, fmt.Errorf("reading header: %w", errors.Join(s.Err(), io.ErrUnexpectedEOF))
	}
	if got := s.Text(); got != want {
		return nil, fmt.Errorf("checking header: got %q, want %q", got, want)
	}
	n := strings.Count(want, "\t") + 1
	var rows [][]string
	for line := 2; s.Scan(); line++ {
		if s.Text() == "" {
			continue
		}
		fields := strings.Split(s.Text(), "\t")
		if len(fields) != n {
			return nil, fmt.Errorf("reading line %d: %d fields, want %d", line, len(fields), n)
		}
		rows = append(rows, fields)
	}
	return rows, s.Err()
}

func readSPIs(path string) ([]SPIRow, error) {
	rows, err := readTSV(path, "spi_hex\tsrc\tdst\tsport\tdport\tpackets")
	if err != nil {
		return nil, err
	}
	out := make([]SPIRow, 0, len(rows))
	for i, f := range rows {
		var r SPIRow
		spi, err := strconv.ParseUint(strings.TrimPrefix(f[0], "0x"), 16, 32)
		if err != nil {
			return nil, fmt.Errorf("parsing spi of row %d: %w", i+1, err)
		}
		r.SPI = uint32(spi)
		if r.Src, err = netip.ParseAddr(f[1]); err != nil {
			return nil, fmt.Errorf("parsing src of row %d: %w", i+1, err)
		}
		if r.Dst, err = netip.ParseAddr(f[2]); err != nil {
			return nil, fmt.Errorf("parsing dst of row %d: %w", i+1, err)
		}
		if r.SrcPort, err = parsePort(f[3]); err != nil {
			return nil, fmt.Errorf("parsing sport of row %d: %w", i+1, err)
		}
		if r.DstPort, err = parsePort(f[4]); err != nil {
			return nil, fmt.Errorf("parsing dport of row %d: %w", i+1, err)
		}
		if r.Packets, err = strconv.Atoi(f[5]); err != nil {
			return nil, fmt.Errorf("parsing packets of row %d: %w", i+1, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	if s == "-" {
		return 0, nil
	}
	p, err := strconv.ParseUint(s, 10, 16)
	return uint16(p), err
}

func readClasses(path string) (map[string]int, error) {
	rows, err := readTSV(path, "class\tframes")
	if err != nil {
		return nil, err
	}
	m := make(map[string]int, len(rows))
	for _, f := range rows {
		n, err := strconv.Atoi(f[1])
		if err != nil {
			return nil, fmt.Errorf("parsing count of %s: %w", f[0], err)
		}
		m[f[0]] = n
	}
	if _, ok := m["total"]; !ok {
		return nil, fmt.Errorf("reading classes: no total row")
	}
	return m, nil
}
