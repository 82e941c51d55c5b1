// SPDX-License-Identifier: Apache-2.0

package offline

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/spiwatch/spiwatch/internal/frames"
	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

// writePcap writes frames as a classic pcap file, one per millisecond.
func writePcap(t *testing.T, frames [][]byte) string {
	t.Helper()
	var b bytes.Buffer
	le := binary.LittleEndian
	for _, v := range []any{uint32(0xa1b2c3d4), uint16(2), uint16(4), int32(0), uint32(0), uint32(65535), uint32(1)} {
		binary.Write(&b, le, v)
	}
	for i, f := range frames {
		for _, v := range []uint32{1700000000, uint32(i * 1000), uint32(len(f)), uint32(len(f))} {
			binary.Write(&b, le, v)
		}
		b.Write(f)
	}
	p := filepath.Join(t.TempDir(), "diag.pcap")
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestReadDiagnosis: a capture with a known SA used from two sources, one with
// gaps, a late packet, a duplicate and a replay, and an unknown SPI from two
// peers. Both engines (the program, pinned to one CPU, and the Go reference)
// report the same sequence health and collisions.
func TestReadDiagnosis(t *testing.T) {
	gw := netip.MustParseAddr("203.0.113.1")
	a := frames.Frame{Src: netip.MustParseAddr("198.51.100.1"), Dst: gw}
	b := frames.Frame{Src: netip.MustParseAddr("198.51.100.2"), Dst: gw}
	var fs [][]byte
	for _, seq := range []uint32{1, 2, 3, 7, 5, 7, 300, 100} {
		fs = append(fs, a.ESP(0x6000, seq, 40))
	}
	fs = append(fs, a.ESPInUDP(4500, 4500, 0x5000, 1, 40), a.ESPInUDP(4501, 4500, 0x5000, 1, 40),
		a.ESP(0xc011, 1, 40), b.ESP(0xc011, 1, 40), b.ESP(0xc012, 1, 40))
	path := writePcap(t, fs)
	known := []maps.SA{{SPI: 0x5000, Dst: gw}, {SPI: 0x6000, Dst: gw}}

	goSnap, err := Read(path, Options{NoBPF: true, Known: known})
	if err != nil {
		t.Fatal(err)
	}
	check := func(engine string, m map[string]any) {
		t.Helper()
		if m["collisions"] != float64(2) {
			t.Errorf("%s: collisions %v, want 2 (0x5000, 0xc011)", engine, m["collisions"])
		}
		for _, k := range m["known_sas"].([]any) {
			k := k.(map[string]any)
			switch k["spi"] {
			case "0x00005000":
				if k["collision"] != true || len(k["sources"].([]any)) != 2 {
					t.Errorf("%s: 0x5000 %v, want a collision of 2 sources", engine, k)
				}
			case "0x00006000":
				// 3→7 skips 3, 5 is late, 7 again a duplicate, 300 skips 292, 100 replay
				if k["lost"] != float64(294) || k["late"] != float64(1) || k["duplicates"] != float64(1) || k["replay_suspect"] != float64(1) {
					t.Errorf("%s: 0x6000 %v, want 294 lost, 1 late, 1 duplicate, 1 replay-suspect", engine, k)
				}
			}
		}
		for _, u := range m["unknown_spis"].([]any) {
			u := u.(map[string]any)
			want := map[string]string{"0x0000c011": "collision", "0x0000c012": "unknown"}[u["spi"].(string)]
			if u["verdict"] != want {
				t.Errorf("%s: unknown %v, want verdict %s", engine, u, want)
			}
		}
	}
	gm := jsonOf(t, goSnap)
	check("reference", gm)

	testenv.RequireBPF(t)
	bpfSnap, err := Read(path, Options{Known: known})
	if err != nil {
		t.Fatal(err)
	}
	bm := jsonOf(t, bpfSnap)
	check("bpf", bm)
	ja, _ := json.Marshal(bm)
	jb, _ := json.Marshal(gm)
	if !bytes.Equal(ja, jb) {
		t.Fatalf("engines differ:\n bpf %s\n  go %s", ja, jb)
	}
}

// TestReadDiagTablesOneCPU: spiwatch read runs the program on one CPU, and the
// ICMP-error and IKE tables keep an LRU per CPU; each is loaded that many times
// larger, so the one CPU gets the whole of its table. A capture with three
// quarters of each table's rows (more than one CPU's share on 2 CPUs or more)
// keeps them all in both engines, without evictions.
func TestReadDiagTablesOneCPU(t *testing.T) {
	gw := netip.MustParseAddr("203.0.113.1")
	nICMP, nIKE := 3*loader.DefaultICMPMax/4, 3*loader.DefaultIKEMax/4
	var fs [][]byte
	for i := range max(nICMP, nIKE) {
		peer := frames.Frame{Src: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), Dst: gw}
		if i < nICMP { // a router on the path of our own ESP to it
			out := frames.Frame{Src: gw, Dst: peer.Src}
			fs = append(fs, peer.ICMP(3, 4, 1400, frames.Quote(out.ESP(0x1000, 1, 100), 8)))
		}
		if i < nIKE {
			fs = append(fs, peer.IKE(500, 500, false, 40))
		}
	}
	path := writePcap(t, fs)
	for _, noBPF := range []bool{true, false} {
		engine := map[bool]string{true: "reference", false: "bpf"}[noBPF]
		if !noBPF {
			testenv.RequireBPF(t)
		}
		s, err := Read(path, Options{NoBPF: noBPF})
		if err != nil {
			t.Fatalf("%s: %v", engine, err)
		}
		for _, c := range []struct {
			name     string
			ts       maps.TableStats
			rows     int
			capacity int
		}{{"ICMP-error", s.ICMPTable, nICMP, loader.DefaultICMPMax}, {"IKE", s.IKETable, nIKE, loader.DefaultIKEMax}} {
			if c.ts.Entries != c.rows || c.ts.Evictions != 0 || c.ts.Capacity != c.capacity || c.ts.InsertFails != 0 {
				t.Errorf("%s: %s table %+v, want %d entries of %d, none evicted", engine, c.name, c.ts, c.rows, c.capacity)
			}
		}
	}
}
