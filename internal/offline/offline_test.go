// SPDX-License-Identifier: Apache-2.0

package offline

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/spiwatch/spiwatch/internal/capread"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/internal/testcaps"
	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/loader"
	"github.com/spiwatch/spiwatch/maps"
)

func jsonOf(t *testing.T, s *report.Snapshot) map[string]any {
	t.Helper()
	var b bytes.Buffer
	if err := report.WriteJSON(&b, s, 0); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	// The engines differ only in the name they give.
	for _, i := range m["interfaces"].([]any) {
		delete(i.(map[string]any), "mode")
	}
	return m
}

// knownFrom picks known SAs from a capture's reference decode: its first SPI
// (not reserved) with its destination, a second SPI with any destination, and a
// decoy SA on the first SPI towards a destination the capture never uses (two
// SAs on one SPI: the program's shared-SPI map). It also returns how many of
// the capture's packets they cover, by tshark's counts.
func knownFrom(c testcaps.Capture) ([]maps.SA, int) {
	var known []maps.SA
	seen := map[uint32]bool{}
	for _, r := range c.RefSPIs {
		if r.SPI <= 0xff || seen[r.SPI] {
			continue
		}
		seen[r.SPI] = true
		switch len(known) {
		case 0:
			decoy := netip.MustParseAddr("192.0.2.99")
			if r.Dst.Is6() {
				decoy = netip.MustParseAddr("2001:db8::99")
			}
			known = append(known, maps.SA{SPI: r.SPI, Dst: r.Dst}, maps.SA{SPI: r.SPI, Dst: decoy})
		case 2:
			known = append(known, maps.SA{SPI: r.SPI})
		}
	}
	covered := 0
	for _, r := range c.RefSPIs {
		for _, sa := range known {
			if sa.SPI == r.SPI && (!sa.Dst.IsValid() || sa.Dst == r.Dst) {
				covered += r.Packets
				break
			}
		}
	}
	return known, covered
}

// TestEnginesAgree: on every capture of shared/testdata/pcaps, the XDP program
// and the Go reference produce the same report, field for field, and the rows
// hold tshark's per-SPI counts: without known SAs, with known SAs taken from
// each capture's reference decode, and with an unknown table just large enough
// for the capture's rows (the program runs on one CPU, whose share of the
// table must be the size asked for).
func TestEnginesAgree(t *testing.T) {
	testenv.RequireBPF(t)
	dir := testcaps.Dir(t)
	withKnown := 0
	for _, c := range testcaps.Load(t) {
		var esp int
		for _, r := range c.RefSPIs {
			esp += r.Packets
		}
		known, covered := knownFrom(c)
		if len(known) > 0 {
			withKnown++
		}
		for _, pass := range []struct {
			name string
			o    Options
			// packets of known SAs
			known int
		}{
			{"no known SAs", Options{}, 0},
			{"known SAs", Options{Known: known}, covered},
			{"table just large enough", Options{Settings: loader.Settings{UnknownMax: uint32(max(1, len(c.RefSPIs)))}}, 0},
		} {
			t.Run(c.Name+"/"+pass.name, func(t *testing.T) {
				path := filepath.Join(dir, c.Name)
				bpfSnap, goSnap := readBoth(t, path, pass.o)
				if got := bpfSnap.Total.Now.Total().Packets; got != uint64(c.RefClasses["total"]) {
					t.Errorf("%d packets counted, the capture has %d", got, c.RefClasses["total"])
				}
				var rows, knownPkts uint64
				byVerdict := map[string]uint64{}
				for _, u := range bpfSnap.Unknown {
					rows += u.Packets
					byVerdict[u.Verdict] += u.Packets
					if u.FirstSeen.IsZero() || u.LastSeen.Before(u.FirstSeen) {
						t.Errorf("row 0x%x: first/last seen %v..%v", u.SPI, u.FirstSeen, u.LastSeen)
					}
				}
				for _, k := range bpfSnap.Known {
					knownPkts += k.Packets
				}
				if rows != uint64(esp-pass.known) || knownPkts != uint64(pass.known) {
					t.Errorf("unknown rows hold %d packets and known SAs %d; tshark counts %d ESP packets, %d of them of the known SAs %v",
						rows, knownPkts, esp, pass.known, pass.o.Known)
				}
				for _, v := range report.Verdicts { // every row is shown (Top 0): the totals are theirs
					if bpfSnap.UnknownByVerdict[v] != byVerdict[v] {
						t.Errorf("%s: %d packets by verdict, the rows hold %d", v, bpfSnap.UnknownByVerdict[v], byVerdict[v])
					}
				}
				if bpfSnap.Table.Evictions != 0 || goSnap.Table.Evictions != 0 {
					t.Errorf("evictions: bpf %d, reference %d; want none", bpfSnap.Table.Evictions, goSnap.Table.Evictions)
				}
			})
		}
	}
	if withKnown < 5 {
		t.Errorf("only %d captures have SPIs to make known SAs of", withKnown)
	}
}

// readBoth reads path with the program and the reference and fails unless the
// reports are the same.
func readBoth(t *testing.T, path string, o Options) (bpfSnap, goSnap *report.Snapshot) {
	t.Helper()
	bpfSnap, err := Read(path, o)
	if err != nil {
		t.Fatalf("bpf: %v", err)
	}
	o.NoBPF = true
	goSnap, err = Read(path, o)
	if err != nil {
		t.Fatalf("reference: %v", err)
	}
	ja, _ := json.Marshal(jsonOf(t, bpfSnap))
	jb, _ := json.Marshal(jsonOf(t, goSnap))
	if !bytes.Equal(ja, jb) {
		t.Fatalf("reports differ:\n bpf %s\n  go %s", ja, jb)
	}
	return bpfSnap, goSnap
}

// TestEnginesTableOverflow: a capture with more rows than the unknown table
// holds. Both engines evict and say so: the size asked for, entries at most
// that, evictions = inserts - entries, every packet in the class counts, no row
// over-counted. Which rows stay may differ (see the package comment).
func TestEnginesTableOverflow(t *testing.T) {
	testenv.RequireBPF(t)
	dir := testcaps.Dir(t)
	for _, c := range testcaps.Load(t) {
		if len(c.RefSPIs) < 2 {
			continue
		}
		ref := map[rowKey]int{}
		for _, r := range c.RefSPIs {
			ref[rowKey{r.SPI, r.Src, r.Dst, r.SrcPort, r.DstPort}] += r.Packets
		}
		for _, size := range []int{1, len(c.RefSPIs) - 1} {
			t.Run(fmt.Sprintf("%s/%d rows", c.Name, size), func(t *testing.T) {
				o := Options{Settings: loader.Settings{UnknownMax: uint32(size)}}
				bpfSnap, err := Read(filepath.Join(dir, c.Name), o)
				if err != nil {
					t.Fatalf("bpf: %v", err)
				}
				o.NoBPF = true
				goSnap, err := Read(filepath.Join(dir, c.Name), o)
				if err != nil {
					t.Fatalf("reference: %v", err)
				}
				for engine, s := range map[string]*report.Snapshot{"bpf": bpfSnap, "reference": goSnap} {
					ts := s.Table
					if ts.Capacity != size || ts.Entries > size || ts.Entries < 1 || ts.Evictions == 0 ||
						ts.Inserts != uint64(ts.Entries)+ts.Evictions || ts.InsertFails != 0 {
						t.Errorf("%s: table %+v, want capacity %d, 1..%d entries, evictions = inserts - entries > 0", engine, ts, size, size)
					}
					if s.Total.Now != bpfSnap.Total.Now {
						t.Errorf("%s: class counts %v, bpf %v", engine, s.Total.Now, bpfSnap.Total.Now)
					}
					for _, u := range s.Unknown {
						if n := ref[rowKey{u.SPI, u.Src, u.Dst, u.SrcPort, u.DstPort}]; u.Packets == 0 || u.Packets > uint64(n) {
							t.Errorf("%s: row %+v holds %d packets, the capture %d", engine, u.Unknown, u.Packets, n)
						}
					}
				}
				t.Logf("bpf: table %+v, %d rows; reference: table %+v, %d rows", bpfSnap.Table, len(bpfSnap.Unknown), goSnap.Table, len(goSnap.Unknown))
			})
		}
	}
}

// TestPartial: a capture cut short still reports what was read, marked partial,
// with an error naming the packet.
func TestPartial(t *testing.T) {
	dir := testcaps.Dir(t)
	b, err := os.ReadFile(filepath.Join(dir, "tcpdump/isakmp4500.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut.pcap")
	if err := os.WriteFile(cut, b[:len(b)-30], 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Read(cut, Options{NoBPF: true})
	if s == nil || err == nil || !errors.Is(err, capread.ErrTruncated) {
		t.Fatalf("report %v, error %v: want a partial report and ErrTruncated", s != nil, err)
	}
	if s.Partial == "" || s.Total.Now.Total().Packets != 34 {
		t.Errorf("partial %q with %d packets, want marked partial with the 34 complete packets", s.Partial, s.Total.Now.Total().Packets)
	}
}
