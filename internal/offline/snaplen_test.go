// SPDX-License-Identifier: Apache-2.0

package offline

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/maps"
)

// writeCutPcap writes frames as an Ethernet pcap taken with snap length
// snaplen (0: whole frames), as tcpdump -s writes it: each record holds the
// first snaplen bytes and the frame's length on the wire. Every capture is
// named cut.pcap, in a directory of its own, so that reports compare.
func writeCutPcap(t *testing.T, snaplen int, fs [][]byte) string {
	t.Helper()
	var b bytes.Buffer
	le := binary.LittleEndian
	fileSnap := uint32(snaplen)
	if snaplen == 0 {
		fileSnap = 262144
	}
	for _, v := range []any{uint32(0xa1b2c3d4), uint16(2), uint16(4), int32(0), uint32(0), fileSnap, uint32(1)} {
		binary.Write(&b, le, v)
	}
	for i, f := range fs {
		c := len(f)
		if snaplen > 0 {
			c = min(c, snaplen)
		}
		for _, v := range []uint32{1700000000, uint32(i * 1000), uint32(c), uint32(len(f))} {
			binary.Write(&b, le, v)
		}
		b.Write(f[:c])
	}
	p := filepath.Join(t.TempDir(), "cut.pcap")
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// cutMix is traffic of every class a gateway sees, with full-size payloads so
// that a snap length cuts it: ESP over IPv4 and IPv6 (with an extension
// header), ESP-in-UDP behind QinQ (one peer from port 4501) and over IPv6,
// IKE on 500 and with the marker, a keepalive, ICMP errors quoting ESP, TCP,
// and a later fragment.
func cutMix() (fs [][]byte, known []maps.SA) {
	gw4, gw6 := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("2001:db8::1")
	a := frames.Frame{Src: netip.MustParseAddr("198.51.100.1"), Dst: gw4}
	q := frames.Frame{Src: netip.MustParseAddr("198.51.100.2"), Dst: gw4, VLANs: []frames.VLAN{{TPID: frames.TPID8021AD, ID: 10}, {ID: 20}}}
	v6 := frames.Frame{Src: netip.MustParseAddr("2001:db8::2"), Dst: gw6, IPv6Ext: []frames.IPv6Ext{{Type: frames.ProtoDstOpts}}}
	back := frames.Frame{Src: netip.MustParseAddr("192.0.2.254"), Dst: gw4}
	back6 := frames.Frame{Src: netip.MustParseAddr("2001:db8::fe"), Dst: gw6}
	later := a
	later.Frag = &frames.Frag{Offset: 100, ID: 7}
	for seq := uint32(1); seq <= 3; seq++ {
		fs = append(fs,
			a.ESP(0x1000, seq, 1400), a.ESP(0xdead0001, seq, 1400),
			q.ESPInUDP(4500, 4500, 0x2000, seq, 1400), q.ESPInUDP(4501, 4500, 0xdead0002, seq, 1000),
			v6.ESP(0x3000, seq, 1300), v6.ESP(0xdead0003, seq, 200))
	}
	fs = append(fs, a.ESP(7, 1, 1400), v6.ESPInUDP(4500, 4500, 0xdead0005, 1, 500),
		a.IKE(500, 500, false, 300), q.IKE(4500, 4500, true, 600), v6.IKE(500, 500, false, 40),
		q.Keepalive(4500, 4500),
		back.ICMP(frames.ICMPUnreachable, frames.ICMPCodeFragNeeded, 1400, frames.Quote(a.ESP(0x1000, 9, 1400), 8)),
		back6.ICMP(frames.ICMPv6PacketTooBig, 0, 1280, frames.Quote(frames.Frame{Src: gw6, Dst: v6.Src}.ESP(0xdead0004, 1, 1400), 1180)),
		a.TCP(443, 50000, 1400), later.ESP(0x1000, 99, 1400))
	return fs, []maps.SA{{SPI: 0x1000, Dst: gw4}, {SPI: 0x2000}, {SPI: 0x3000, Dst: gw6}}
}

// TestSnaplenCut: a capture taken with a snap length (tcpdump -s 128, as
// people do on a busy gateway) gives the report of the same traffic captured
// whole, field for field: classes are those of the frames on the wire, bytes
// are counted at their length on the wire. Both engines.
func TestSnaplenCut(t *testing.T) {
	fs, known := cutMix()
	for _, o := range []struct {
		name string
		o    Options
	}{{"no known SAs", Options{}}, {"known SAs", Options{Known: known}}} {
		t.Run(o.name, func(t *testing.T) {
			whole := readRef(t, writeCutPcap(t, 0, fs), o.o)
			checkCutMix(t, whole)
			want, _ := json.Marshal(jsonOf(t, whole))
			cut := readRef(t, writeCutPcap(t, 128, fs), o.o)
			if got, _ := json.Marshal(jsonOf(t, cut)); !bytes.Equal(got, want) {
				t.Errorf("cut at 128 bytes, the report differs from the whole capture's:\n  cut   %s\n  whole %s", got, want)
			}
			if bpfAvailable(t) {
				bpfSnap, _ := readBoth(t, writeCutPcap(t, 128, fs), o.o)
				if got, _ := json.Marshal(jsonOf(t, bpfSnap)); !bytes.Equal(got, want) {
					t.Errorf("bpf: cut at 128 bytes, the report differs from the whole capture's:\n  cut   %s\n  whole %s", got, want)
				}
			}
		})
	}
}

// TestSnaplenShort: with tcpdump -s 64 the IPv4 IPsec headers are still
// there (ESP's 8 bytes end at 42, ESP-in-UDP's at 58 behind QinQ), so classes,
// outcomes, byte counts and the unknown rows are those of the whole capture;
// IKE headers past byte 64 are not there to read, nor the SPI an ICMP error
// quotes at bytes 62-66: that error is other, counted at its length.
func TestSnaplenShort(t *testing.T) {
	all, known := cutMix()
	var fs [][]byte
	for _, f := range all {
		if classify.Classify(f, nil).Src.Is4() {
			fs = append(fs, f)
		}
	}
	whole := readRef(t, writeCutPcap(t, 0, fs), Options{Known: known})
	want := whole.Total.Now
	icmp := &want[classify.ClassICMPESP][classify.OutcomeNone]
	if icmp.Packets != 1 {
		t.Fatalf("whole capture: %d icmp-esp, want 1", icmp.Packets)
	}
	other := &want[classify.ClassOther][classify.OutcomeNone]
	*other, *icmp = other.Add(*icmp), maps.Count{}
	check := func(engine string, s *report.Snapshot) {
		t.Helper()
		if s.Total.Now != want {
			t.Errorf("%s: cut at 64 bytes, class counts\n  %v\nwant\n  %v", engine, s.Total.Now, want)
		}
		if len(s.Unknown) != len(whole.Unknown) {
			t.Fatalf("%s: %d unknown rows, whole capture %d", engine, len(s.Unknown), len(whole.Unknown))
		}
		for i := range s.Unknown {
			g, w := s.Unknown[i], whole.Unknown[i]
			g.FirstSeenNs, g.LastSeenNs = 0, 0 // the test runs' clock
			if g.Unknown != w.Unknown || g.FirstSeen != w.FirstSeen || g.LastSeen != w.LastSeen {
				t.Errorf("%s: row %+v, whole capture %+v", engine, g, w)
			}
		}
	}
	path := writeCutPcap(t, 64, fs)
	check("reference", readRef(t, path, Options{Known: known}))
	if bpfAvailable(t) {
		bpfSnap, _ := readBoth(t, path, Options{Known: known})
		check("bpf", bpfSnap)
	}
}

// TestSnaplenUndecided: where the bytes that decide the class were not
// captured (a NAT-T datagram cut after its UDP header: ESP, IKE or keepalive?
// an ESP packet cut inside its SPI), no class is guessed from them: the frame
// is classified as captured, malformed here, and counted at its length on
// the wire. So is a runt, shorter than an Ethernet header (other, its 10
// bytes).
func TestSnaplenUndecided(t *testing.T) {
	a := frames.Frame{Src: netip.MustParseAddr("198.51.100.1"), Dst: netip.MustParseAddr("203.0.113.1")}
	fs := [][]byte{a.ESPInUDP(4500, 4500, 0x2000, 1, 200), a.ESP(0x1000, 1, 200), make([]byte, 10)}
	var b bytes.Buffer
	le := binary.LittleEndian
	for _, v := range []any{uint32(0xa1b2c3d4), uint16(2), uint16(4), int32(0), uint32(0), uint32(262144), uint32(1)} {
		binary.Write(&b, le, v)
	}
	for i, c := range []int{14 + 20 + 8, 14 + 20 + 2, 10} {
		for _, v := range []uint32{1700000000, uint32(i), uint32(c), uint32(len(fs[i]))} {
			binary.Write(&b, le, v)
		}
		b.Write(fs[i][:c])
	}
	path := filepath.Join(t.TempDir(), "undecided.pcap")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(engine string, s *report.Snapshot) {
		t.Helper()
		mal := s.Total.Now[classify.ClassMalformed][classify.OutcomeNone]
		other := s.Total.Now[classify.ClassOther][classify.OutcomeNone]
		wire := uint64(len(fs[0]) + len(fs[1]))
		if mal.Packets != 2 || mal.Bytes != wire || other != (maps.Count{Packets: 1, Bytes: 10}) || s.Total.Now.Total() != mal.Add(other) || len(s.Unknown) != 0 {
			t.Errorf("%s: malformed %+v, other %+v of total %+v, %d unknown rows; want 2 malformed frames of %d bytes, 1 other of 10, no rows",
				engine, mal, other, s.Total.Now.Total(), len(s.Unknown), wire)
		}
	}
	check("reference", readRef(t, path, Options{}))
	if bpfAvailable(t) {
		bpfSnap, _ := readBoth(t, path, Options{})
		check("bpf", bpfSnap)
	}
}

// checkCutMix checks the whole mix's report against what was built.
func checkCutMix(t *testing.T, s *report.Snapshot) {
	t.Helper()
	var n [classify.NumClasses]uint64
	for cl := range s.Total.Now {
		n[cl] = s.Total.Now.Class(classify.Class(cl)).Packets
	}
	want := [classify.NumClasses]uint64{classify.ClassOther: 1, classify.ClassESP: 13, classify.ClassESPInUDP: 7,
		classify.ClassIKE: 3, classify.ClassNATKeepalive: 1, classify.ClassFragment: 1, classify.ClassICMPESP: 2}
	if n != want {
		t.Errorf("whole capture: packets by class %v, want %v", n, want)
	}
}

// readRef reads path with the reference classifier.
func readRef(t *testing.T, path string, o Options) *report.Snapshot {
	t.Helper()
	o.NoBPF = true
	s, err := Read(path, o)
	if err != nil {
		t.Fatalf("reference: %v", err)
	}
	return s
}

// bpfAvailable reports whether the program can run here (root); under CI it
// must.
func bpfAvailable(t *testing.T) bool {
	t.Helper()
	ok := false
	t.Run("bpf", func(t *testing.T) {
		testenv.RequireBPF(t)
		ok = true
	})
	return ok
}

// TestHugeFrame: a frame longer than any link carries (a GRO aggregate
// captured whole: tcpdump takes up to 262,144 bytes, BIG TCP makes 185,000)
// does not stop the read: the program's test runs take at most about 73,000
// bytes. It is classified and counted as its first maxFrame bytes, by both
// engines, and the packets after it are read.
func TestHugeFrame(t *testing.T) {
	a := frames.Frame{Src: netip.MustParseAddr("198.51.100.1"), Dst: netip.MustParseAddr("203.0.113.1")}
	huge := append(a.TCP(443, 50000, 1400), make([]byte, 100000)...)
	path := writeCutPcap(t, 0, [][]byte{huge, a.ESP(0xdead0001, 1, 100)})
	check := func(engine string, s *report.Snapshot) {
		t.Helper()
		other := s.Total.Now[classify.ClassOther][classify.OutcomeNone]
		if other.Packets != 1 || other.Bytes != maxFrame || s.Total.Now.Total().Packets != 2 || len(s.Unknown) != 1 {
			t.Errorf("%s: other %+v, %d packets, %d unknown rows; want 1 other of %d bytes, 2 packets, 1 row", engine, other, s.Total.Now.Total().Packets, len(s.Unknown), maxFrame)
		}
	}
	check("reference", readRef(t, path, Options{}))
	if bpfAvailable(t) {
		s, _ := readBoth(t, path, Options{})
		check("bpf", s)
	}
}

// TestNATTPorts: --natt-port 4501 makes 4501 the NAT-T port, in place of 4500,
// for both engines, in whole and in cut captures.
func TestNATTPorts(t *testing.T) {
	a := frames.Frame{Src: netip.MustParseAddr("198.51.100.1"), Dst: netip.MustParseAddr("203.0.113.1")}
	fs := [][]byte{a.ESPInUDP(4501, 4501, 0xdead0001, 1, 1000), a.ESPInUDP(40000, 4501, 0xdead0002, 1, 1000),
		a.Keepalive(4501, 4501), a.IKE(4501, 4501, true, 300), a.ESPInUDP(4500, 4500, 0xdead0003, 1, 1000)}
	o := Options{}
	o.Settings.NATTPorts = []uint16{4501}
	for _, snaplen := range []int{0, 96} {
		path := writeCutPcap(t, snaplen, fs)
		check := func(engine string, s *report.Snapshot) {
			t.Helper()
			var n [classify.NumClasses]uint64
			for cl := range n {
				n[cl] = s.Total.Now.Class(classify.Class(cl)).Packets
			}
			want := [classify.NumClasses]uint64{classify.ClassESPInUDP: 2, classify.ClassNATKeepalive: 1, classify.ClassIKE: 1, classify.ClassOther: 1}
			if n != want || len(s.Unknown) != 2 || s.Total.Now.Total().Bytes != uint64(len(slices.Concat(fs...))) {
				t.Errorf("%s, snap length %d: packets by class %v, %d unknown rows, %d bytes; want %v, 2 rows, %d bytes",
					engine, snaplen, n, len(s.Unknown), s.Total.Now.Total().Bytes, want, len(slices.Concat(fs...)))
			}
		}
		check("reference", readRef(t, path, o))
		if bpfAvailable(t) {
			s, _ := readBoth(t, path, o)
			check("bpf", s)
		}
	}
}
