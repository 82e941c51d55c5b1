// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/internal/trafficgen"
)

// diagMix: ICMP errors about the gateway's (203.0.113.1, 2001:db8::2) own ESP,
// from a router on the path and from peers, and IKE exchanges of every kind. Peer
// 198.51.100.66 retries IKE_SA_INIT: 30 requests at once, above --ike-init-rate.
var diagMix = []string{
	// path MTU: fragmentation needed / packet too big quoting our ESP and ESP-in-UDP
	"icmp-error src=192.0.2.254 qdst=198.51.100.1 spi=0xc0ffee01 mtu=1400 count=7",
	"icmp-error src=192.0.2.254 qdst=198.51.100.2 quote=esp-in-udp spi=0xc0ffee02 qlen=548 mtu=1280 count=5",
	"icmp-error src=2001:db8:ffff::fe dst=2001:db8::2 qdst=2001:db8::1 spi=0xc0ffee03 qlen=1232 count=4",
	"icmp-error src=2001:db8:ffff::fe dst=2001:db8::2 qdst=2001:db8::1 quote=esp-in-udp spi=0xc0ffee04 qlen=64 count=3",
	// a peer whose IKE daemon is gone: port unreachable for our ESP-in-UDP, full and RFC 792 quotes
	"icmp-error src=198.51.100.2 type=3 code=3 quote=esp-in-udp spi=0xc0ffee02 qlen=64 count=6",
	"icmp-error src=198.51.100.2 type=3 code=3 quote=esp-in-udp count=2",
	// and a peer without NAT-T answering our plain ESP with port unreachable
	"icmp-error src=198.51.100.4 type=3 code=3 quote=esp spi=0xc0ffee05 qlen=64 count=4",
	"icmp-error src=2001:db8::1 dst=2001:db8::2 type=1 code=4 quote=esp-in-udp spi=0xc0ffee04 qlen=200 count=3",
	"icmp-error src=2001:db8::1 dst=2001:db8::2 type=1 code=4 quote=esp count=2",
	// IKEv2 exchanges, requests and responses, on 500 and after the marker on 4500
	"ike src=198.51.100.1 exchange=IKE_SA_INIT count=2",
	"ike src=198.51.100.1 exchange=IKE_SA_INIT response=true count=2",
	"ike src=198.51.100.1 sport=4500 dport=4500 marker=true exchange=IKE_AUTH count=3",
	"ike src=198.51.100.1 sport=4500 dport=4500 marker=true exchange=IKE_AUTH response=true count=3",
	"ike src=198.51.100.1 sport=4500 dport=4500 marker=true exchange=CREATE_CHILD_SA count=4",
	"ike src=198.51.100.1 sport=4500 dport=4500 marker=true exchange=INFORMATIONAL response=true count=5",
	"ike src=2001:db8::1 exchange=CREATE_CHILD_SA count=6",
	"ike src=198.51.100.1 exchange=43 count=1",
	// IKEv1 modes
	"ike src=198.51.100.3 exchange=main count=6",
	"ike src=198.51.100.3 exchange=aggressive count=3",
	"ike src=198.51.100.3 sport=4500 dport=4500 marker=true exchange=quick count=3",
	"ike src=198.51.100.3 sport=4500 dport=4500 marker=true exchange=informational count=1",
	// cut inside the header
	"ike src=198.51.100.3 len=20 count=2",
	// the storm
	"ike src=198.51.100.66 exchange=IKE_SA_INIT count=30",
	// 198.51.100.1 also sends ESP on an SPI we do not know: its IKE rows say so
	"esp spi=0xdeadbeef src=198.51.100.1 dst=203.0.113.1 count=20",
	// and none of the ICMP errors is an unknown SPI
	"tcp src=198.51.100.9 dst=203.0.113.1 count=10",
}

type diagOutput struct {
	Total      struct{ Packets uint64 } `json:"total"`
	ICMPTable  struct{ Entries, Evictions uint64 }
	ICMPErrors []struct {
		Reporter, Family, Name, Quote, SPI, Src, Dst, Interface string
		Type, Code                                              uint8
		Sport, Dport                                            uint16
		Packets                                                 uint64
		MTU                                                     uint32
	} `json:"icmp_errors"`
	IKE []struct {
		Peer, Exchange, Dir, Interface string
		Version                        uint8
		Packets                        uint64
		PeerUnknownSPIs                int `json:"peer_unknown_spis"`
	} `json:"ike"`
	UnknownSPIs []struct{ SPI, Src string } `json:"unknown_spis"`
}

// TestEndToEndDiag: ICMP errors about ESP and IKE exchanges of each kind, sent
// through the veth lab, are counted exactly as the reference reads them, in the
// JSON report, the metrics and the event log, and never as unknown SPIs.
func TestEndToEndDiag(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swdiag")
	s := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--json", "--interval", "100ms",
		"--metrics-addr", ":9465", "--log-every", "1ms")

	// What the reference classifier says, frame by frame.
	var total uint64
	icmp, ike := map[string]uint64{}, map[string]uint64{}
	for _, line := range diagMix {
		st, err := trafficgen.ParseStream(line)
		if err != nil {
			t.Fatal(err)
		}
		r := classify.Classify(st.Build(), nil)
		n := uint64(st.Count)
		total += n
		switch r.Class {
		case classify.ClassICMPESP:
			e := r.ICMP
			icmp[fmt.Sprintf("%s %s %s %s %s %s %d", r.Src, classify.ICMPTypeName(e.Family, e.Type, e.Code), e.Quote,
				report.ICMPSPI(e), e.Src, e.Dst, e.MTU)] += n
		case classify.ClassIKE:
			ike[fmt.Sprintf("%s v%d %s %s", r.Src, r.IKE.Version, r.IKE.Exchange.Name(r.IKE.Version), r.IKE.Dir)] += n
		case classify.ClassOther, classify.ClassESP:
		default:
			t.Fatalf("stream %q is %v", line, r.Class)
		}
	}
	if len(icmp) != 9 || len(ike) != 14 {
		t.Fatalf("the mix makes %d ICMP and %d IKE rows, want 9 and 14: %v %v", len(icmp), len(ike), icmp, ike)
	}

	runGen(t, gen, lab.NSA, lab.Sender, diagMix)
	s.waitTotal(t, total)
	var o diagOutput
	select {
	case l := <-s.lines:
		if err := json.Unmarshal([]byte(l), &o); err != nil {
			t.Fatalf("report %q: %v", l, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no report")
	}
	if o.Total.Packets != total || len(o.UnknownSPIs) != 1 || o.UnknownSPIs[0].SPI != "0xdeadbeef" {
		t.Errorf("total %d packets, sent %d; unknown rows %+v, want only 0xdeadbeef", o.Total.Packets, total, o.UnknownSPIs)
	}
	got := map[string]uint64{}
	for _, e := range o.ICMPErrors {
		spi := e.SPI
		if spi == "" {
			spi = "-"
		}
		if e.Interface != lab.Receiver {
			t.Errorf("ICMP row %+v on %q", e, e.Interface)
		}
		got[fmt.Sprintf("%s %s %s %s %s %s %d", e.Reporter, e.Name, e.Quote, spi, e.Src, e.Dst, e.MTU)] += e.Packets
	}
	if fmt.Sprint(got) != fmt.Sprint(icmp) {
		t.Errorf("ICMP rows\n got %v\nwant %v", got, icmp)
	}
	got = map[string]uint64{}
	for _, x := range o.IKE {
		ver := fmt.Sprintf("v%d", x.Version)
		got[fmt.Sprintf("%s %s %s %s", x.Peer, ver, x.Exchange, x.Dir)] += x.Packets
		if want := map[bool]int{true: 1}[x.Peer == "198.51.100.1"]; x.PeerUnknownSPIs != want {
			t.Errorf("IKE row %+v: peer_unknown_spis %d, want %d", x, x.PeerUnknownSPIs, want)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(ike) {
		t.Errorf("IKE rows\n got %v\nwant %v", got, ike)
	}

	fams := scrape(t, lab.NSB, "127.0.0.1:9465")
	if v, ok := value(t, fams, "spiwatch_icmp_esp_packets_total", map[string]string{"reporter": "192.0.2.254", "error": "frag-needed",
		"quote": "esp", "spi": "0xc0ffee01", "src": "203.0.113.1", "dst": "198.51.100.1"}); !ok || v != 7 {
		t.Errorf("frag-needed series %v (found %v), want 7", v, ok)
	}
	if v, ok := value(t, fams, "spiwatch_icmp_esp_packets_total", map[string]string{"reporter": "198.51.100.4", "error": "port-unreachable",
		"quote": "esp", "spi": "0xc0ffee05", "src": "203.0.113.1", "dst": "198.51.100.4"}); !ok || v != 4 {
		t.Errorf("port-unreachable quoting esp series %v (found %v), want 4", v, ok)
	}
	if v, ok := value(t, fams, "spiwatch_icmp_esp_mtu", map[string]string{"reporter": "2001:db8:ffff::fe", "spi": "0xc0ffee03"}); !ok || v != 1280 {
		t.Errorf("packet-too-big MTU %v (found %v), want 1280", v, ok)
	}
	if v, ok := value(t, fams, "spiwatch_packets_total", map[string]string{"class": "icmp-esp"}); !ok || v != 36 {
		t.Errorf("icmp-esp packets %v (found %v), want 36", v, ok)
	}
	for _, c := range []struct {
		version, exchange, dir string
		want                   float64
	}{
		{"2", "IKE_SA_INIT", "request", 32}, {"2", "IKE_SA_INIT", "response", 2}, {"2", "IKE_AUTH", "request", 3},
		{"2", "CREATE_CHILD_SA", "request", 10}, {"2", "INFORMATIONAL", "response", 5}, {"2", "other", "request", 1},
		{"1", "main", "-", 6}, {"1", "aggressive", "-", 3}, {"1", "quick", "-", 3}, {"1", "informational", "-", 1},
		{"-", "malformed", "-", 2},
	} {
		if v, ok := value(t, fams, "spiwatch_ike_messages_total", map[string]string{"version": c.version, "exchange": c.exchange, "dir": c.dir}); !ok || v != c.want {
			t.Errorf("spiwatch_ike_messages_total{version=%s,exchange=%s,dir=%s} = %v (found %v), want %v", c.version, c.exchange, c.dir, v, ok, c.want)
		}
	}
	s.stop(t)
	log := s.stderr.String()
	for _, want := range []string{"event=icmp_esp", "error=frag-needed", "event=ike_init_storm", "peer=198.51.100.66"} {
		if !strings.Contains(log, want) {
			t.Errorf("event log lacks %q:\n%s", want, log)
		}
	}
	if strings.Count(log, "event=ike_init_storm") != 1 {
		t.Errorf("want exactly one IKE_SA_INIT storm line:\n%s", log)
	}
}
