// SPDX-License-Identifier: Apache-2.0

// This test is in package capread_test because testcaps imports capread.
package capread_test

import (
	"bytes"
	"io"
	"path/filepath"
	"testing"

	"github.com/spiwatch/spiwatch/internal/capread"
	"github.com/spiwatch/spiwatch/internal/testcaps"
)

// TestCaptures reads every shared test capture and checks its packet count
// against the tshark total, and its frames against the captured bytes.
func TestCaptures(t *testing.T) {
	dir := testcaps.Dir(t)
	for _, c := range testcaps.Load(t) {
		t.Run(c.Name, func(t *testing.T) {
			r, err := capread.Open(filepath.Join(dir, filepath.FromSlash(c.Name)))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			n := 0
			for {
				p, err := r.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if n >= len(c.Frames) {
					n++
					continue
				}
				raw := c.Frames[n]
				n++
				if p.Index != n || p.CapLen != len(raw) || p.OrigLen < p.CapLen {
					t.Errorf("packet %d: index %d, caplen %d, origlen %d; captured %d bytes", n, p.Index, p.CapLen, p.OrigLen, len(raw))
				}
				switch c.LinkType {
				case 0: // DLT_NULL: 4-byte family word, AF_INET in these files
					if len(p.Data) != len(raw)+10 || !bytes.Equal(p.Data[:14], []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00}) || !bytes.Equal(p.Data[14:], raw[4:]) {
						t.Errorf("packet %d: % x from % x", n, p.Data, raw)
					}
				default:
					if !bytes.Equal(p.Data, raw) {
						t.Errorf("packet %d: % x, captured % x", n, p.Data, raw)
					}
				}
			}
			if total := c.RefClasses["total"]; n != total {
				t.Errorf("%d packets, tsv total %d", n, total)
			}
		})
	}
}
