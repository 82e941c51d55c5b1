// SPDX-License-Identifier: Apache-2.0

package classify_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	. "github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/testcaps"
)

// ikeDecodes are the captures whose tcpdump reference decode (.out) prints every
// IKE message: capture → decode file (shared/testdata/pcaps/README.md).
var ikeDecodes = map[string]string{
	"tcpdump/ikev2four.pcap":       "tcpdump/ikev2four.out",
	"tcpdump/ikev2pI2.pcap":        "tcpdump/ikev2pI2.out",
	"tcpdump/isakmp4500.pcap":      "tcpdump/isakmp4.out",
	"tcpdump/ISAKMP_sa_setup.pcap": "tcpdump/isakmp5-v.out",
}

// tcpdump's names of exchanges (print-isakmp.c), and IKEv2's [I]/[R] flags: R is
// the response flag.
var tcpdumpExchange = map[string]IKEExchange{
	"ikev2_init": IKESAInit, "ikev2_auth": IKEAuth, "child_sa": IKECreateChildSA, "inf2": IKEInformational,
	"ident": IKEMain, "agg": IKEAggressive, "oakley-quick": IKEQuick, "inf": IKEInformational,
}

// One decoded IKE message: "192.168.1.2.500 > 192.168.1.1.500: isakmp 2.0 msgid 00000000: parent_sa ikev2_init[I]:",
// "192.1.2.254.4500 > 192.1.2.23.4500: NONESP-encap: isakmp: phase 2/others I oakley-quick[E]".
var tcpdumpIKE = regexp.MustCompile(`(\d+\.\d+\.\d+\.\d+)\.\d+ > [\d.]+: (?:\[no cksum\] )?(?:NONESP-encap: )?isakmp(?: (\d)\.\d)?[^:]*(?: cookie [^:]*)?: ` +
	`(?:phase 1 [IR] |phase 2/others [IR?] |parent_sa |child_sa\s+)([a-z0-9_-]+)(?:\[([A-Z]*)\])?`)

// TestCaptureIKE: on the captures with a tcpdump decode, the reference reads
// every IKE message's version, exchange and direction as tcpdump prints them.
func TestCaptureIKE(t *testing.T) {
	dir := testcaps.Dir(t)
	checked := 0
	for _, c := range testcaps.Load(t) {
		out, ok := ikeDecodes[c.Name]
		if !ok {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(dir, out))
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, m := range tcpdumpIKE.FindAllStringSubmatch(string(b), -1) {
				x, ok := tcpdumpExchange[m[3]]
				if !ok {
					t.Fatalf("%s: exchange %q not in the table", out, m[3])
				}
				dir := IKENoDir
				if m[2] == "2" {
					dir = IKERequest
					if strings.Contains(m[4], "R") {
						dir = IKEResponse
					}
				}
				want = append(want, m[1]+" "+x.String()+" "+dir.String())
			}
			frames, ok := c.AsEthernet()
			if !ok {
				t.Fatalf("link type %v cannot be replayed as ethernet", c.LinkType)
			}
			var got []string
			for _, f := range frames {
				r := Classify(f, nil)
				if r.Class != ClassIKE {
					continue
				}
				if r.IKE.Exchange == IKEMalformed {
					t.Fatalf("IKE frame %x malformed", f)
				}
				got = append(got, netip.Addr.String(r.Src)+" "+r.IKE.Exchange.String()+" "+r.IKE.Dir.String())
			}
			if len(want) == 0 || strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("IKE messages:\n%s\ntcpdump (%s):\n%s", strings.Join(got, "\n"), out, strings.Join(want, "\n"))
			}
			t.Logf("%d IKE messages as tcpdump decodes them", len(got))
			checked++
		})
	}
	if checked != len(ikeDecodes) {
		t.Errorf("checked %d of the %d captures with an IKE decode", checked, len(ikeDecodes))
	}
}

// TestCaptureIKESuricata: suricata-verify's ikev1 test expects packet 4 of its
// capture to be IKEv1 main mode (exchange type 2) with initiator SPI
// e47a591fd057587f and responder SPI a00b8ef0902bb8ec; its detect-bypass-udp
// capture is IKEv2 IKE_AUTH (35) and IKE_INTERMEDIATE (43) behind the non-ESP marker.
func TestCaptureIKESuricata(t *testing.T) {
	found := 0
	for _, c := range testcaps.Load(t) {
		switch c.Name {
		case "suricata-verify/ikev1-rules/ikev1-isakmp-main-mode.pcap":
			found++
			r := Classify(c.Frames[3], nil)
			if r.Class != ClassIKE || r.IKE.Version != 1 || r.IKE.Exchange != IKEMain || r.IKE.ExchangeType != 2 ||
				r.IKE.ISPI != 0xe47a591fd057587f || r.IKE.RSPI != 0xa00b8ef0902bb8ec {
				t.Errorf("%s packet 4: %v %+v, want IKEv1 main mode e47a591fd057587f/a00b8ef0902bb8ec", c.Name, r.Class, r.IKE)
			}
		case "suricata-verify/detect-bypass-udp/input.pcap":
			found++
			types := map[uint8]int{}
			for _, f := range c.Frames {
				r := Classify(f, nil)
				if r.Class != ClassIKE || r.IKE.Version != 2 {
					t.Fatalf("%s: frame %x: %v %+v, want IKEv2", c.Name, f, r.Class, r.IKE)
				}
				types[r.IKE.ExchangeType]++
				if want := map[uint8]IKEExchange{35: IKEAuth, 43: IKEOther}[r.IKE.ExchangeType]; r.IKE.Exchange != want {
					t.Errorf("%s: exchange type %d counted as %v", c.Name, r.IKE.ExchangeType, r.IKE.Exchange)
				}
			}
			if len(types) != 2 || types[35] == 0 || types[43] == 0 {
				t.Errorf("%s: exchange types %v, want 35 and 43", c.Name, types)
			}
		}
	}
	if found != 2 {
		t.Errorf("found %d of the 2 suricata-verify IKE captures", found)
	}
}
