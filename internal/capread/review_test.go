// SPDX-License-Identifier: Apache-2.0

package capread

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"
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

// ngIDB is an interface description block with an if_tsresol and, if not 0,
// an if_tsoffset option (little-endian).
func ngIDB(tsresol uint8, tsoffset int64) []byte {
	body := cat(le16(uint16(LinkTypeEthernet)), le16(0), le32(0), le16(9), le16(1), []byte{tsresol, 0, 0, 0})
	if tsoffset != 0 {
		body = cat(body, le16(14), le16(8), binary.LittleEndian.AppendUint64(nil, uint64(tsoffset)))
	}
	body = cat(body, le16(0), le16(0))
	n := uint32(12 + len(body))
	return cat(le32(ngInterface), le32(n), body, le32(n))
}

// ngEPB is an enhanced packet block of interface iface with raw timestamp ts.
func ngEPB(iface uint32, ts uint64, frame []byte) []byte {
	pad := make([]byte, (4-len(frame)%4)%4)
	n := uint32(32 + len(frame) + len(pad))
	return cat(le32(ngEnhancedPacket), le32(n), le32(iface), le32(uint32(ts>>32)), le32(uint32(ts)),
		le32(uint32(len(frame))), le32(uint32(len(frame))), frame, pad, le32(n))
}

func le16(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }

// TestPcapngTimestampResolution: pcapng interfaces may give timestamps in
// negative powers of 2 (if_tsresol with the high bit set) as well as of 10,
// and an offset in seconds (if_tsoffset). pcapgo scales binary ones with
// integer factors: 2^-30 s put a packet at .999999999 s 74 ms later, in the
// next second (1.073741823), and 2^-20 s 0.7 ms early.
func TestPcapngTimestampResolution(t *testing.T) {
	shb := cat(le32(ngSectionHeader), le32(28), le32(ngByteOrderMagic), le16(1), le16(0), binary.LittleEndian.AppendUint64(nil, ^uint64(0)), le32(28))
	frame := eth(0x0800, ipv4...)
	const sec = 1700000000
	file := cat(shb, ngIDB(0x80|30, 0), ngIDB(0x80|20, 0), ngIDB(9, 0), ngIDB(0x80|32, -100), ngIDB(6, 0),
		ngEPB(0, sec<<30|(1<<30-1), frame),
		ngEPB(0, sec<<30|3<<28, frame),
		ngEPB(1, sec<<20|(1<<20-1), frame),
		ngEPB(2, sec*1e9+123456789, frame),
		ngEPB(3, sec<<32|1<<31, frame),
		ngEPB(4, sec*1e6+999999, frame))
	want := []time.Time{
		time.Unix(sec, 999999999), // (2^30-1)/2^30 s, 0.93 ns short of a second
		time.Unix(sec, 750000000),
		time.Unix(sec, 999999046), // (2^20-1)/2^20 s
		time.Unix(sec, 123456789),
		time.Unix(sec-100, 500000000),
		time.Unix(sec, 999999000),
	}
	r, err := NewReader(bytes.NewReader(file), "tsresol.pcapng")
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		p, err := r.Next()
		if err != nil {
			t.Fatalf("packet %d: %v", i+1, err)
		}
		if !p.Time.Equal(w) {
			t.Errorf("packet %d (interface %d): time %s, want %s", i+1, p.Interface, p.Time.Format(time.RFC3339Nano), w.UTC().Format(time.RFC3339Nano))
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("after the last packet: %v, want io.EOF", err)
	}
}
