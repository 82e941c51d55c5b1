// SPDX-License-Identifier: Apache-2.0

package offline

import (
	"errors"
	"io"
	"maps"
	"path/filepath"
	"testing"

	"github.com/spiwatch/spiwatch/internal/capread"
	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/internal/testcaps"
)

// tsharkMoves are the frames of a capture whose class differs from tshark's
// (.classes.tsv), by our rules (docs/CLASSES.md): from a tshark class to ours.
var tsharkMoves = map[string][]struct {
	frames   int
	from     string
	to       classify.Class
	overlaps bool // from is tshark's ip_fragment, which overlaps its other classes
}{
	// UDP 4500 with a UDP length (12336) past its IP packet's end (12316
	// bytes of UDP): malformed on the wire, whatever the payload. tshark
	// calls it udp4500_other, outside its IPsec classes.
	"tcpdump/isakmp-3948-oobr-2.pcap": {{1, "udp4500_other", classify.ClassMalformed, false}},
	// Frame 2 is a later fragment, which tshark counts only in ip_fragment;
	// frames 1 and 3, first fragments to UDP 500, are ike for both.
	"tcpdump/isakmp-ikev1_n_print-oobr.pcap": {{1, "ip_fragment", classify.ClassFragment, true}},
}

// TestReadMatchesTshark: on every capture of shared/testdata/pcaps, the report
// of spiwatch read has tshark's frames per class (.classes.tsv, with the
// differences of tsharkMoves) and exactly its per-SPI rows (.spi.tsv: SPI,
// addresses, ports, packets), and counts every frame at its length on the
// wire. Several of them are cut by their snap length (esp_truncated.pcap,
// isakmp-ikev1_n_print-oobr.pcap, isakmp-3948-oobr-2.pcap). With the program
// too where it can run.
func TestReadMatchesTshark(t *testing.T) {
	dir := testcaps.Dir(t)
	withBPF := bpfAvailable(t)
	for _, c := range testcaps.Load(t) {
		t.Run(c.Name, func(t *testing.T) {
			path := filepath.Join(dir, c.Name)
			s := readRef(t, path, Options{})
			engines := map[string]*report.Snapshot{"reference": s}
			if withBPF {
				engines["bpf"], _ = readBoth(t, path, Options{})
			}
			var want [classify.NumClasses]uint64
			for k, cl := range map[string]classify.Class{"esp_ip": classify.ClassESP, "esp_udp": classify.ClassESPInUDP,
				"ike": classify.ClassIKE, "nat_keepalive": classify.ClassNATKeepalive} {
				want[cl] = uint64(c.RefClasses[k])
			}
			for _, m := range tsharkMoves[c.Name] {
				if c.RefClasses[m.from] < m.frames {
					t.Fatalf("moving %d frames from %s: tshark has %d", m.frames, m.from, c.RefClasses[m.from])
				}
				if cl, ok := map[string]classify.Class{"esp_ip": classify.ClassESP, "esp_udp": classify.ClassESPInUDP, "ike": classify.ClassIKE}[m.from]; ok && !m.overlaps {
					want[cl] -= uint64(m.frames)
				}
				want[m.to] += uint64(m.frames)
			}
			want[classify.ClassOther] = uint64(c.RefClasses["total"])
			for cl := range want {
				if classify.Class(cl) != classify.ClassOther {
					want[classify.ClassOther] -= want[cl]
				}
			}
			wantRows := map[rowKey]uint64{}
			for _, r := range c.RefSPIs {
				wantRows[rowKey{r.SPI, r.Src, r.Dst, r.SrcPort, r.DstPort}] += uint64(r.Packets)
			}
			wire := wireBytes(t, path)
			for engine, s := range engines {
				var got [classify.NumClasses]uint64
				for cl := range got {
					got[cl] = s.Total.Now.Class(classify.Class(cl)).Packets
				}
				if got != want {
					t.Errorf("%s: frames per class %v, tshark %v", engine, got, want)
				}
				rows := map[rowKey]uint64{}
				for _, u := range s.Unknown {
					rows[rowKey{u.SPI, u.Src, u.Dst, u.SrcPort, u.DstPort}] += u.Packets
				}
				if !maps.Equal(rows, wantRows) {
					t.Errorf("%s: per-SPI rows\n  %v\ntshark\n  %v", engine, rows, wantRows)
				}
				if b := s.Total.Now.Total().Bytes; b != wire {
					t.Errorf("%s: %d bytes counted, the frames were %d on the wire", engine, b, wire)
				}
			}
		})
	}
}

// wireBytes sums the capture's frames' lengths on the wire (at most maxFrame
// each, as a converted frame).
func wireBytes(t *testing.T, path string) uint64 {
	t.Helper()
	r, err := capread.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var n uint64
	for {
		p, err := r.Next()
		if errors.Is(err, io.EOF) {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		n += uint64(min(p.OrigLen+len(p.Data)-p.CapLen, maxFrame))
	}
}
