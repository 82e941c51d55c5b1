// SPDX-License-Identifier: Apache-2.0

package capread

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestTruncatedIsNotEOF: a capture cut inside a block or record is not a clean
// end: callers loop until errors.Is(err, io.EOF), and must see the cut.
func TestTruncatedIsNotEOF(t *testing.T) {
	frame := cat([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x08, 0x00}, ipv4, make([]byte, 78))
	pcap := pcapFile(t, LinkTypeEthernet, 65535, false, frame, frame)
	ng := ngFile(t, []LinkType{LinkTypeEthernet}, false, nil, ngPacket{0, frame}, ngPacket{0, frame})
	last := blockOffsets(ng)[len(blockOffsets(ng))-1]
	for name, data := range map[string][]byte{
		"pcap mid record":        pcap[:len(pcap)-10],
		"pcap mid record header": pcap[:pcapHeaderLen+pcapRecordLen+len(frame)+5],
		"pcapng mid packet":      ng[:len(ng)-10],
		"pcapng mid block hdr":   ng[:last+6],
		"pcapng after block hdr": ng[:last+12],
	} {
		r, err := NewReader(bytes.NewReader(data), "cut")
		if err != nil {
			t.Fatal(err)
		}
		for {
			_, err = r.Next()
			if err != nil {
				break
			}
		}
		if errors.Is(err, io.EOF) || !errors.Is(err, ErrTruncated) {
			t.Errorf("%s: %v: want ErrTruncated, not io.EOF", name, err)
		}
	}
}
