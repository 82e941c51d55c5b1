// SPDX-License-Identifier: Apache-2.0

package classify_test

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	. "github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/testcaps"
)

// tsharkClass maps the .classes.tsv rows that have a class of ours to it.
// The other rows (ip_fragment, which overlaps, udp4500_other, non_ip, ...)
// have no counterpart: their frames are other, fragment or malformed here.
var tsharkClass = map[string]Class{
	"esp_ip":        ClassESP,
	"esp_udp":       ClassESPInUDP,
	"ike":           ClassIKE,
	"nat_keepalive": ClassNATKeepalive,
}

// move is a deviation from tshark: frames that tshark counts in the
// .classes.tsv row from, and that docs/CLASSES.md puts in class to.
type move struct {
	frames int
	from   string
	to     Class
}

// capExpect is what our classifier must find in one capture.
type capExpect struct {
	counts [NumClasses]int // exact, indexed by Class
	moves  []move
	// dropSPIs are SPIs of .spi.tsv rows whose frames we do not count as
	// esp or esp-in-udp (they are in moves).
	dropSPIs []uint32
}

// counts builds a per-class count array.
func counts(kv map[Class]int) (a [NumClasses]int) {
	for c, n := range kv {
		a[c] = n
	}
	return a
}

// expected holds every capture of shared/testdata/pcaps (see its README).
// Frames that tshark does not classify as esp, esp-in-udp, ike or
// nat-keepalive (ARP, ICMPv6) are other. The two DLT_NULL captures are
// replayed with an Ethernet header in place of the loopback one.
var expected = map[string]capExpect{
	"suricata-verify/detect-bypass-udp/input.pcap":            {counts: counts(map[Class]int{ClassIKE: 66})},
	"suricata-verify/eve-flow-esp/input.pcap":                 {counts: counts(map[Class]int{ClassESP: 8})},
	"suricata-verify/ikev1-rules/ikev1-isakmp-main-mode.pcap": {counts: counts(map[Class]int{ClassIKE: 9})},
	"tcpdump/02-sunrise-sunset-esp.pcap":                      {counts: counts(map[Class]int{ClassESP: 8})},
	"tcpdump/08-sunrise-sunset-aes.pcap":                      {counts: counts(map[Class]int{ClassESP: 8})},
	"tcpdump/08-sunrise-sunset-esp2.pcap":                     {counts: counts(map[Class]int{ClassESP: 8})},
	"tcpdump/ISAKMP_sa_setup.pcap":                            {counts: counts(map[Class]int{ClassIKE: 9})},
	"tcpdump/espudp1.pcap":                                    {counts: counts(map[Class]int{ClassESPInUDP: 8})},
	"tcpdump/ikev2four.pcap":                                  {counts: counts(map[Class]int{ClassIKE: 21})},
	"tcpdump/ikev2pI2.pcap":                                   {counts: counts(map[Class]int{ClassIKE: 2})},
	"tcpdump/isakmp-no-none-np.pcapng":                        {counts: counts(map[Class]int{ClassIKE: 1})},
	// 8 ARP frames are other.
	"tcpdump/isakmp4500.pcap": {counts: counts(map[Class]int{
		ClassOther: 8, ClassESPInUDP: 8, ClassIKE: 15, ClassNATKeepalive: 4,
	})},
	// The MLDv2 report (ICMPv6 after a hop-by-hop header) is other.
	"zeek/ip6_esp.pcap": {counts: counts(map[Class]int{ClassOther: 1, ClassESP: 120})},

	// Snaplen-truncated fuzz frame, UDP 4500→8472, DF+MF: the IP total
	// length (70) exceeds the 32 captured IP bytes, so bad_len, and a NAT-T
	// port claims IPsec: malformed (UDP step 3). tshark reads the 4 SPI
	// bytes it has and counts esp_udp with SPI 0xc0f7d4c3; we read no SPI.
	"tcpdump/esp_truncated.pcap": {
		counts:   counts(map[Class]int{ClassMalformed: 1}),
		moves:    []move{{1, "esp_udp", ClassMalformed}},
		dropSPIs: []uint32{0xc0f7d4c3},
	},
	// Fuzz frame, UDP 4500→12336 with no payload captured; IP total length
	// 12336 exceeds the 28 IP bytes present: bad_len on a NAT-T port is
	// malformed. tshark has it as udp4500_other, outside its IPsec classes.
	"tcpdump/isakmp-3948-oobr-2.pcap": {
		counts: counts(map[Class]int{ClassMalformed: 1}),
		moves:  []move{{1, "udp4500_other", ClassMalformed}},
	},
	// Three snaplen-truncated fragments (IP total length 296, 70 IP bytes
	// captured). Frames 1 and 3 are first fragments (MF, offset 0) to UDP
	// 500: bad_len makes them malformed, where tshark decodes them as ike
	// (and ip_fragment). Frame 2 has offset 9 (72 bytes): fragment, which
	// tshark counts only in the overlapping ip_fragment row.
	"tcpdump/isakmp-ikev1_n_print-oobr.pcap": {
		counts: counts(map[Class]int{ClassMalformed: 2, ClassFragment: 1}),
		moves:  []move{{2, "ike", ClassMalformed}, {1, "ip_fragment", ClassFragment}},
	},
}

// fromTshark derives our expected counts from tshark's and the moves, so
// that every difference is one written in the table.
func fromTshark(ref map[string]int, moves []move) ([NumClasses]int, error) {
	var want [NumClasses]int
	for k, c := range tsharkClass {
		want[c] = ref[k]
	}
	for _, m := range moves {
		if ref[m.from] < m.frames {
			return want, fmt.Errorf("moving %d frames out of %s: tshark has %d", m.frames, m.from, ref[m.from])
		}
		if c, ok := tsharkClass[m.from]; ok {
			want[c] -= m.frames
		}
		want[m.to] += m.frames
	}
	want[ClassOther] = ref["total"]
	for c := range Class(NumClasses) {
		if c != ClassOther {
			want[ClassOther] -= want[c]
		}
	}
	if want[ClassOther] < 0 {
		return want, fmt.Errorf("computing other: %d", want[ClassOther])
	}
	return want, nil
}

// spiKey is one .spi.tsv row without its count.
type spiKey struct {
	spi          uint32
	src, dst     netip.Addr
	sport, dport uint16
}

func TestCaptures(t *testing.T) {
	caps := testcaps.Load(t)
	seen := map[string]bool{}
	for _, c := range caps {
		seen[c.Name] = true
		t.Run(c.Name, func(t *testing.T) {
			exp, ok := expected[c.Name]
			if !ok {
				t.Fatalf("no expectation for %s: add it to the table", c.Name)
			}
			frames, ok := c.AsEthernet()
			if !ok {
				t.Fatalf("link type %v cannot be replayed as ethernet", c.LinkType)
			}

			want, err := fromTshark(c.RefClasses, exp.moves)
			if err != nil {
				t.Fatal(err)
			}
			if want != exp.counts {
				t.Fatalf("table counts %v differ from tshark's with the listed moves: %v", exp.counts, want)
			}

			var got [NumClasses]int
			rows := map[spiKey]int{}
			for _, f := range frames {
				r := Classify(f, nil)
				got[r.Class]++
				if r.HasSPI {
					rows[spiKey{r.SPI, r.Src, r.Dst, r.SrcPort, r.DstPort}]++
				}
			}
			if got != exp.counts {
				t.Errorf("class counts %v, want %v", got, exp.counts)
			}

			wantRows := map[spiKey]int{}
			dropped := 0
			for _, r := range c.RefSPIs {
				if slices.Contains(exp.dropSPIs, r.SPI) {
					dropped += r.Packets
					continue
				}
				wantRows[spiKey{r.SPI, r.Src, r.Dst, r.SrcPort, r.DstPort}] += r.Packets
			}
			movedESP := 0
			for _, m := range exp.moves {
				if m.from == "esp_ip" || m.from == "esp_udp" {
					movedESP += m.frames
				}
			}
			if dropped != movedESP {
				t.Errorf("dropped %d packets of spi rows, but moved %d esp frames", dropped, movedESP)
			}
			if !maps.Equal(rows, wantRows) {
				t.Errorf("spi rows:\n got %v\nwant %v", rows, wantRows)
			}
		})
	}
	for name := range expected {
		if !seen[name] {
			t.Errorf("capture %s is in the table but was not found", name)
		}
	}
}

// TestCaptureOutcomes checks outcomes on real SPIs: with the SAs of the
// reference rows known, nothing is unknown; with none known, all but the
// reserved SPIs (< 256, like zeek's 0xa–0x17) are.
func TestCaptureOutcomes(t *testing.T) {
	for _, c := range testcaps.Load(t) {
		frames, _ := c.AsEthernet()
		known := SASet{}
		for _, r := range c.RefSPIs {
			known.Add(r.SPI, r.Dst)
		}
		for i, f := range frames {
			r := Classify(f, nil)
			if !r.HasSPI {
				continue
			}
			reserved := r.SPI < 256
			for _, tc := range []struct {
				set  SASet
				want Outcome
			}{{known, OutcomeKnown}, {nil, OutcomeUnknown}} {
				want := tc.want
				if reserved {
					want = OutcomeReserved
				}
				if got := OutcomeOf(r, tc.set); got != want {
					t.Errorf("%s frame %d (spi %#x): outcome %v, want %v", c.Name, i+1, r.SPI, got, want)
				}
			}
		}
	}
}
