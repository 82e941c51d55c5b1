// SPDX-License-Identifier: Apache-2.0

package offline

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/maps"
)

// writeTimedPcap writes frames with their timestamps as a pcap with
// nanosecond (nanos) or microsecond timestamps.
func writeTimedPcap(t *testing.T, nanos bool, fs [][]byte, ts []time.Time) string {
	t.Helper()
	var b bytes.Buffer
	le := binary.LittleEndian
	magic := uint32(0xa1b2c3d4)
	if nanos {
		magic = 0xa1b23c4d
	}
	for _, v := range []any{magic, uint16(2), uint16(4), int32(0), uint32(0), uint32(65535), uint32(1)} {
		binary.Write(&b, le, v)
	}
	for i, f := range fs {
		frac := uint32(ts[i].Nanosecond() / 1000)
		if nanos {
			frac = uint32(ts[i].Nanosecond())
		}
		for _, v := range []uint32{uint32(ts[i].Unix()), frac, uint32(len(f)), uint32(len(f))} {
			binary.Write(&b, le, v)
		}
		b.Write(f)
	}
	p := filepath.Join(t.TempDir(), "times.pcap")
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestOutOfOrderTimes: a capture whose timestamps go back now and then (merged
// captures, several queues or interfaces) reports every row's first and last
// seen as its earliest and latest packet, known SAs included, and the capture's
// span from its earliest to its latest packet; with nanosecond timestamps to
// the nanosecond. Both engines.
func TestOutOfOrderTimes(t *testing.T) {
	gw := netip.MustParseAddr("203.0.113.1")
	a := frames.Frame{Src: netip.MustParseAddr("198.51.100.1"), Dst: gw}
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	at := func(ns int64) time.Time { return base.Add(time.Duration(ns)) }
	fs := [][]byte{a.ESP(0x1000, 2, 40), a.ESP(0xdead0001, 2, 40), a.ESP(0x1000, 1, 40), a.ESP(0xdead0001, 1, 40),
		a.ESP(0xdead0001, 3, 40), a.IKE(500, 500, false, 40), a.IKE(500, 500, false, 40)}
	for _, nanos := range []bool{false, true} {
		unit := int64(time.Microsecond)
		if nanos {
			unit = 1
		}
		ts := []time.Time{at(5000 * unit), at(5000 * unit), at(1000 * unit), at(1000 * unit), at(3000 * unit), at(4000 * unit), at(2000 * unit)}
		path := writeTimedPcap(t, nanos, fs, ts)
		o := Options{Known: []maps.SA{{SPI: 0x1000, Dst: gw}}}
		check := func(engine string, s *report.Snapshot) {
			t.Helper()
			if !s.Time.Equal(ts[0]) || s.Interval != ts[0].Sub(ts[2]) {
				t.Errorf("%s, nanos %v: capture time %v over %v, want %v over %v", engine, nanos, s.Time, s.Interval, ts[0], ts[0].Sub(ts[2]))
			}
			if len(s.Known) != 1 || !s.Known[0].LastSeen.Equal(ts[0]) {
				t.Errorf("%s, nanos %v: known SAs %+v, want 0x1000 last seen %v", engine, nanos, s.Known, ts[0])
			}
			if len(s.Unknown) != 1 || !s.Unknown[0].FirstSeen.Equal(ts[3]) || !s.Unknown[0].LastSeen.Equal(ts[1]) {
				t.Errorf("%s, nanos %v: unknown rows %+v, want 0xdead0001 seen %v to %v", engine, nanos, s.Unknown, ts[3], ts[1])
			}
			if len(s.IKE) != 1 || !s.IKE[0].FirstSeen.Equal(ts[6]) || !s.IKE[0].LastSeen.Equal(ts[5]) {
				t.Errorf("%s, nanos %v: IKE rows %+v, want one seen %v to %v", engine, nanos, s.IKE, ts[6], ts[5])
			}
		}
		check("reference", readRef(t, path, o))
		if bpfAvailable(t) {
			s, _ := readBoth(t, path, o)
			check("bpf", s)
		}
	}
}

// TestSimplePacketBlocks: pcapng simple packet blocks carry no timestamp. Their
// packets are counted, and leave the capture's span and the rows' first and
// last seen to the packets that have one (they were from year 1 to the last
// packet: 2,000 years, every rate 0).
func TestSimplePacketBlocks(t *testing.T) {
	a := frames.Frame{Src: netip.MustParseAddr("198.51.100.1"), Dst: netip.MustParseAddr("203.0.113.1")}
	le := binary.LittleEndian
	block := func(typ uint32, body ...[]byte) []byte {
		b := bytes.Join(body, nil)
		b = append(b, make([]byte, (4-len(b)%4)%4)...)
		n := uint32(12 + len(b))
		return bytes.Join([][]byte{le.AppendUint32(nil, typ), le.AppendUint32(nil, n), b, le.AppendUint32(nil, n)}, nil)
	}
	u32 := func(v uint32) []byte { return le.AppendUint32(nil, v) }
	f := a.ESP(0xdead0001, 1, 40)
	ts := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	us := uint64(ts.UnixMicro())
	file := bytes.Join([][]byte{
		block(0x0a0d0d0a, u32(0x1a2b3c4d), []byte{1, 0, 0, 0}, le.AppendUint64(nil, ^uint64(0))),
		block(1, []byte{1, 0, 0, 0}, u32(0)),
		block(3, u32(uint32(len(f))), f),
		block(6, u32(0), u32(uint32(us>>32)), u32(uint32(us)), u32(uint32(len(f))), u32(uint32(len(f))), f),
		block(3, u32(uint32(len(f))), f),
		block(6, u32(0), u32(uint32((us+1e6)>>32)), u32(uint32(us+1e6)), u32(uint32(len(f))), u32(uint32(len(f))), f),
	}, nil)
	path := filepath.Join(t.TempDir(), "spb.pcapng")
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(engine string, s *report.Snapshot) {
		t.Helper()
		end := ts.Add(time.Second)
		if s.Total.Now.Total().Packets != 4 || !s.Time.Equal(end) || s.Interval != time.Second {
			t.Errorf("%s: %d packets at %v over %v; want 4 at %v over 1s", engine, s.Total.Now.Total().Packets, s.Time, s.Interval, end)
		}
		if len(s.Unknown) != 1 || !s.Unknown[0].FirstSeen.Equal(ts) || !s.Unknown[0].LastSeen.Equal(end) || s.Unknown[0].Rate != 4 {
			t.Errorf("%s: rows %+v; want one seen %v to %v, 4 packets/s", engine, s.Unknown, ts, end)
		}
	}
	check("reference", readRef(t, path, Options{}))
	if bpfAvailable(t) {
		s, _ := readBoth(t, path, Options{})
		check("bpf", s)
	}
}
