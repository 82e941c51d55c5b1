// SPDX-License-Identifier: Apache-2.0

package offline

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/spiwatch/spiwatch/internal/capread"
	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/maps"
)

// writeLinkPcap writes frames as a classic pcap file of link type lt, one per
// millisecond, named name in a directory of its own.
func writeLinkPcap(t *testing.T, name string, lt capread.LinkType, frames [][]byte) string {
	t.Helper()
	var b bytes.Buffer
	le := binary.LittleEndian
	for _, v := range []any{uint32(0xa1b2c3d4), uint16(2), uint16(4), int32(0), uint32(0), uint32(65535), uint32(lt)} {
		binary.Write(&b, le, v)
	}
	for i, f := range frames {
		for _, v := range []uint32{1700000000, uint32(i * 1000), uint32(len(f)), uint32(len(f))} {
			binary.Write(&b, le, v)
		}
		b.Write(f)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// sll2Header is a Linux cooked v2 header (20 bytes) for protocol proto,
// received (packet type 0) on interface 3 from a 6-byte address.
func sll2Header(proto uint16) []byte {
	h := []byte{0, 0, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0}
	binary.BigEndian.PutUint16(h[0:], proto)
	return h
}

// TestEnginesAgreeLinkTypes: one mix of traffic (known and unknown ESP over
// IPv4 and IPv6, ESP-in-UDP, a reserved SPI, IKE, a keepalive, an ICMP error
// quoting ESP) captured as Ethernet, raw IP and Linux cooked v2. For each link
// type and with and without known SAs, the program and the reference give the
// same report, and it is the Ethernet capture's report.
func TestEnginesAgreeLinkTypes(t *testing.T) {
	testenv.RequireBPF(t)
	gw4, gw6 := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("2001:db8::1")
	a := frames.Frame{Src: netip.MustParseAddr("198.51.100.1"), Dst: gw4}
	b := frames.Frame{Src: netip.MustParseAddr("198.51.100.2"), Dst: gw4}
	v6 := frames.Frame{Src: netip.MustParseAddr("2001:db8::2"), Dst: gw6}
	back := frames.Frame{Src: netip.MustParseAddr("192.0.2.254"), Dst: a.Src}
	var eth [][]byte
	for seq := uint32(1); seq <= 5; seq++ {
		eth = append(eth, a.ESP(0x1000, seq, 48), b.ESPInUDP(4500, 4500, 0x2000, seq, 48), v6.ESP(0x3000, seq, 48))
	}
	for seq := uint32(1); seq <= 3; seq++ {
		eth = append(eth, a.ESP(0xdead0001, seq, 48), b.ESP(0xdead0001, seq, 48), v6.ESPInUDP(4500, 4500, 0xdead0002, seq, 48))
	}
	eth = append(eth, a.ESP(7, 1, 48), a.IKE(500, 500, false, 60), b.IKE(4500, 4500, true, 60), b.Keepalive(4500, 4500),
		back.ICMP(frames.ICMPUnreachable, frames.ICMPCodeFragNeeded, 1400, frames.Quote(a.ESP(0x1000, 9, 48), 8)))

	var raw, sll2 [][]byte
	for _, f := range eth {
		et := binary.BigEndian.Uint16(f[12:14])
		raw = append(raw, f[14:])
		sll2 = append(sll2, append(sll2Header(et), f[14:]...))
	}
	known := []maps.SA{{SPI: 0x1000, Dst: gw4}, {SPI: 0x2000}, {SPI: 0x3000, Dst: gw6}}
	for _, o := range []struct {
		name string
		o    Options
	}{{"no known SAs", Options{}}, {"known SAs", Options{Known: known}}} {
		t.Run(o.name, func(t *testing.T) {
			want, _ := readBoth(t, writeLinkPcap(t, "mix.pcap", capread.LinkTypeEthernet, eth), o.o)
			checkMix(t, want, len(o.o.Known) > 0)
			wantJSON, _ := json.Marshal(jsonOf(t, want))
			for _, c := range []struct {
				name   string
				lt     capread.LinkType
				frames [][]byte
			}{{"raw ip", capread.LinkTypeRaw, raw}, {"linux cooked v2", capread.LinkTypeSLL2, sll2}} {
				got, _ := readBoth(t, writeLinkPcap(t, "mix.pcap", c.lt, c.frames), o.o)
				if j, _ := json.Marshal(jsonOf(t, got)); !bytes.Equal(j, wantJSON) {
					t.Errorf("%s: report differs from the Ethernet capture's:\n  %s %s\n  ethernet %s", c.name, c.name, j, wantJSON)
				}
			}
		})
	}
}

// checkMix checks the Ethernet mix's report against what was built.
func checkMix(t *testing.T, s *report.Snapshot, withKnown bool) {
	t.Helper()
	var esp, known, ike, keepalive, icmp uint64
	for cl, byOutcome := range s.Total.Now {
		for oc, c := range byOutcome {
			switch classify.Class(cl) {
			case classify.ClassESP, classify.ClassESPInUDP:
				esp += c.Packets
				if classify.Outcome(oc) == classify.OutcomeKnown {
					known += c.Packets
				}
			case classify.ClassIKE:
				ike += c.Packets
			case classify.ClassNATKeepalive:
				keepalive += c.Packets
			case classify.ClassICMPESP:
				icmp += c.Packets
			}
		}
	}
	wantKnown := uint64(0)
	if withKnown {
		wantKnown = 15
	}
	if total := s.Total.Now.Total().Packets; total != 29 || esp != 25 || known != wantKnown || ike != 2 || keepalive != 1 || icmp != 1 {
		t.Errorf("total %d, esp %d (known %d), ike %d, keepalive %d, icmp-esp %d; want 29, 25 (%d), 2, 1, 1", total, esp, known, ike, keepalive, icmp, wantKnown)
	}
	rows := map[uint32]uint64{}
	for _, u := range s.Unknown {
		rows[u.SPI] += u.Packets
	}
	want := map[uint32]uint64{0xdead0001: 6, 0xdead0002: 3, 7: 1}
	if !withKnown {
		want[0x1000], want[0x2000], want[0x3000] = 5, 5, 5
	}
	if len(rows) != len(want) {
		t.Errorf("unknown rows by SPI %v, want %v", rows, want)
	}
	for spi, n := range want {
		if rows[spi] != n {
			t.Errorf("unknown rows by SPI %v, want %v", rows, want)
			break
		}
	}
	if len(s.ICMP) != 1 || len(s.IKE) != 2 {
		t.Errorf("%d ICMP-error rows and %d IKE rows, want 1 and 2", len(s.ICMP), len(s.IKE))
	}
}

// TestUnsupportedLinkType: a capture of a link type the program never sees
// (802.11) is an error, not an empty report of a capture "read in part".
func TestUnsupportedLinkType(t *testing.T) {
	path := writeLinkPcap(t, "wifi.pcap", 105, [][]byte{make([]byte, 40)})
	s, err := Read(path, Options{NoBPF: true})
	if s != nil || !errors.Is(err, capread.ErrUnsupportedLinkType) {
		t.Errorf("report %v, error %v; want no report and ErrUnsupportedLinkType", s != nil, err)
	}
}
