// SPDX-License-Identifier: Apache-2.0

// Package knownsa reads known SAs given by the user: SPI[@DESTINATION] on the
// command line and known-SPI files with one such entry per line.
package knownsa

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/spiwatch/spiwatch/maps"
)

// Parse reads "SPI" or "SPI@DESTINATION". SPI is hex with 0x or decimal, 256 to
// 2^32-1; DESTINATION an IPv4 or IPv6 address. Without a destination the SA
// matches any destination.
func Parse(s string) (maps.SA, error) {
	spiStr, dstStr, hasDst := strings.Cut(strings.TrimSpace(s), "@")
	spi, err := parseSPI(spiStr)
	if err != nil {
		return maps.SA{}, err
	}
	sa := maps.SA{SPI: spi}
	if hasDst {
		dst, err := netip.ParseAddr(dstStr)
		if err != nil || dst.Zone() != "" {
			return maps.SA{}, fmt.Errorf("%q is not an IP address (want SPI@192.0.2.1 or SPI@2001:db8::1)", dstStr)
		}
		// Unmapped first: ::ffff:0.0.0.0 is 0.0.0.0, which no packet is sent to.
		if dst.Unmap().IsUnspecified() {
			return maps.SA{}, fmt.Errorf("destination %s is unspecified: leave out @DESTINATION to match any destination", dst)
		}
		sa.Dst = dst.Unmap()
	}
	return sa, nil
}

func parseSPI(s string) (uint32, error) {
	if s == "" {
		return 0, fmt.Errorf("missing SPI (want hex 0x1234abcd or decimal)")
	}
	var v uint64
	var err error
	if h, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		v, err = strconv.ParseUint(h, 16, 64)
	} else {
		v, err = strconv.ParseUint(s, 10, 64)
	}
	if err != nil {
		return 0, fmt.Errorf("%q is not an SPI (want hex 0x1234abcd or decimal)", s)
	}
	if v > 0xFFFFFFFF {
		return 0, fmt.Errorf("SPI %s does not fit in 32 bits", s)
	}
	if v < 256 {
		return 0, fmt.Errorf("SPI %s is reserved (0-255 never name an SA, RFC 4303)", s)
	}
	return uint32(v), nil
}

// ParseAll parses several command-line entries, naming the bad one.
func ParseAll(entries []string) ([]maps.SA, error) {
	out := make([]maps.SA, 0, len(entries))
	for _, e := range entries {
		sa, err := Parse(e)
		if err != nil {
			return nil, fmt.Errorf("--known-spi %s: %w", e, err)
		}
		out = append(out, sa)
	}
	return out, nil
}

// MaxLineBytes bounds one line of a known-SPI file.
const MaxLineBytes = 4096

// Read parses a known-SPI file: one SPI[@DESTINATION] per line; blank lines and
// text after # are ignored; duplicates count once. Any bad line fails the whole
// read, naming the file and line, so a typo never empties or half-loads the set.
func Read(r io.Reader, name string) ([]maps.SA, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, MaxLineBytes), MaxLineBytes)
	seen := map[maps.SA]bool{}
	var out []maps.SA
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		text = strings.TrimSpace(text)
		if text == "" {
			continue
		}
		if strings.ContainsAny(text, " \t") {
			return nil, fmt.Errorf("%s:%d: %q: one SPI[@DESTINATION] per line", name, line, text)
		}
		sa, err := Parse(text)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, line, err)
		}
		if !seen[sa] {
			seen[sa] = true
			out = append(out, sa)
		}
	}
	if err := sc.Err(); err != nil {
		if err == bufio.ErrTooLong {
			return nil, fmt.Errorf("%s:%d: line longer than %d bytes: is this a known-SPI file?", name, line+1, MaxLineBytes)
		}
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return out, nil
}

// ReadFile parses the known-SPI file at path.
func ReadFile(path string) ([]maps.SA, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading known-SPI file: %w", err)
	}
	defer f.Close()
	return Read(f, path)
}
