// SPDX-License-Identifier: Apache-2.0

package testcaps

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/gopacket/layers"
)

func TestLoad(t *testing.T) {
	caps := Load(t)
	byName := map[string]Capture{}
	for _, c := range caps {
		byName[c.Name] = c
		if len(c.Frames) == 0 || c.RefClasses["total"] != len(c.Frames) {
			t.Errorf("%s: %d frames, tsv total %d", c.Name, len(c.Frames), c.RefClasses["total"])
		}
	}
	if len(caps) != 16 {
		t.Errorf("%d captures, want the 16 of the README", len(caps))
	}

	ng := byName["tcpdump/isakmp-no-none-np.pcapng"]
	if !ng.Ethernet() || len(ng.Frames) != 1 || len(ng.Frames[0]) != 2228 {
		t.Errorf("pcapng: ethernet %v, %d frames", ng.Ethernet(), len(ng.Frames))
	}

	null := byName["tcpdump/ikev2four.pcap"]
	if null.LinkType != layers.LinkTypeNull || null.Ethernet() {
		t.Errorf("ikev2four link type %v", null.LinkType)
	}
	eth, ok := null.AsEthernet()
	if !ok || len(eth) != 21 || len(eth[0]) != len(null.Frames[0])+10 || eth[0][12] != 0x08 || eth[0][14]>>4 != 4 {
		t.Errorf("ikev2four as ethernet: ok %v, %d frames", ok, len(eth))
	}

	want := SPIRow{
		SPI: 0xc0f7d4c3, Src: netip.MustParseAddr("0.254.92.182"), Dst: netip.MustParseAddr("255.127.255.121"),
		SrcPort: 4500, DstPort: 8472, Packets: 1,
	}
	if got := byName["tcpdump/esp_truncated.pcap"].RefSPIs; len(got) != 1 || got[0] != want {
		t.Errorf("esp_truncated spi rows %+v, want %+v", got, want)
	}
	if got := byName["zeek/ip6_esp.pcap"].RefSPIs; len(got) != 12 || got[0].SrcPort != 0 || !got[0].Src.Is6() {
		t.Errorf("ip6_esp spi rows %+v", got)
	}
}

func TestReadTSVErrors(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"header": "spi\tsrc\n",
		"fields": "spi_hex\tsrc\tdst\tsport\tdport\tpackets\n0x1\t::1\n",
		"spi":    "spi_hex\tsrc\tdst\tsport\tdport\tpackets\nzz\t::1\t::2\t-\t-\t1\n",
		"port":   "spi_hex\tsrc\tdst\tsport\tdport\tpackets\n0x1\t::1\t::2\t99999\t-\t1\n",
		"empty":  "",
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := readSPIs(p); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
