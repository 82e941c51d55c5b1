// SPDX-License-Identifier: Apache-2.0

package offline

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/spiwatch/spiwatch/internal/capread"
)

// ngIface is an interface of a pcapng file: link type and snap length.
type ngIface struct {
	lt      capread.LinkType
	snaplen int
}

// writeMixedPcapng writes the Ethernet frames fs as a pcapng whose packets go
// to the interfaces in turn (VLAN-tagged ones not to raw IP, which has no
// tags), each frame in its interface's link type and cut to its snap length,
// with the timestamps of writeCutPcap.
func writeMixedPcapng(t *testing.T, ifaces []ngIface, fs [][]byte) string {
	t.Helper()
	var b bytes.Buffer
	w, err := pcapgo.NewNgWriterInterface(&b, pcapgo.NgInterface{LinkType: layers.LinkTypeEthernet, SnapLength: uint32(ifaces[0].snaplen)}, pcapgo.DefaultNgWriterOptions)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifaces[1:] {
		if _, err := w.AddInterface(pcapgo.NgInterface{LinkType: layers.LinkTypeEthernet, SnapLength: uint32(i.snaplen)}); err != nil {
			t.Fatal(err)
		}
	}
	for n, f := range fs {
		i := n % len(ifaces)
		typeOff := 12
		for binary.BigEndian.Uint16(f[typeOff:]) == 0x8100 || binary.BigEndian.Uint16(f[typeOff:]) == 0x88a8 {
			typeOff += 4
		}
		if typeOff > 12 && ifaces[i].lt == capread.LinkTypeRaw {
			i = 0 // raw IP has no VLAN tags, nor their bytes
		}
		switch ifaces[i].lt {
		case capread.LinkTypeEthernet:
		case capread.LinkTypeRaw:
			f = f[typeOff+2:]
		case capread.LinkTypeSLL2:
			f = append(sll2Header(binary.BigEndian.Uint16(f[12:])), f[14:]...)
		default:
			t.Fatalf("link type %v", ifaces[i].lt)
		}
		c := len(f)
		if ifaces[i].snaplen > 0 {
			c = min(c, ifaces[i].snaplen)
		}
		ci := gopacket.CaptureInfo{Timestamp: time.Unix(1700000000, int64(n)*int64(time.Millisecond)), CaptureLength: c, Length: len(f), InterfaceIndex: i}
		if err := w.WritePacket(ci, f[:c]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	// pcapgo writes 8-bit link types: patch in the 16-bit ones.
	out, i := b.Bytes(), 0
	for off := 0; off+8 <= len(out); off += int(binary.LittleEndian.Uint32(out[off+4:])) {
		if binary.LittleEndian.Uint32(out[off:]) == 1 {
			binary.LittleEndian.PutUint16(out[off+8:], uint16(ifaces[i].lt))
			i++
		}
	}
	p := filepath.Join(t.TempDir(), "cut.pcap")
	if err := os.WriteFile(p, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPcapngMixedInterfaces: a pcapng from several interfaces (tcpdump -i any
// writes Linux cooked v2, a tunnel interface raw IP) with different snap
// lengths, each cutting some frames, gives the report of the same traffic
// captured whole on Ethernet. Both engines.
func TestPcapngMixedInterfaces(t *testing.T) {
	fs, known := cutMix()
	o := Options{Known: known}
	whole := readRef(t, writeCutPcap(t, 0, fs), o)
	want, _ := json.Marshal(jsonOf(t, whole))
	path := writeMixedPcapng(t, []ngIface{{capread.LinkTypeEthernet, 128}, {capread.LinkTypeSLL2, 0}, {capread.LinkTypeRaw, 96}}, fs)
	check := func(engine string, got []byte) {
		t.Helper()
		if !bytes.Equal(got, want) {
			t.Errorf("%s: the report differs from the whole Ethernet capture's:\n  pcapng %s\n  whole  %s", engine, got, want)
		}
	}
	got, _ := json.Marshal(jsonOf(t, readRef(t, path, o)))
	check("reference", got)
	if bpfAvailable(t) {
		s, _ := readBoth(t, path, o)
		got, _ := json.Marshal(jsonOf(t, s))
		check("bpf", got)
	}
}
