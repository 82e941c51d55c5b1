// SPDX-License-Identifier: Apache-2.0

package eventlog

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/maps"
)

func TestICMPErrorAndStorm(t *testing.T) {
	l, b, now := newLogger(t, "logfmt")
	frag := report.ICMPRow{ICMPRow: maps.ICMPRow{Reporter: netip.MustParseAddr("192.0.2.254"), Packets: 1,
		ICMPError: classify.ICMPError{Family: 4, Type: 3, Code: 4, Quote: classify.QuoteESP, SPI: 0xc0ffee01,
			Src: netip.MustParseAddr("203.0.113.1"), Dst: netip.MustParseAddr("198.51.100.7"), MTU: 1400}}, Iface: "eth0", KnownSA: true}
	l.ICMPError(frag)
	l.ICMPError(frag) // the same reporter within --log-every: held back
	*now = now.Add(11 * time.Second)
	port := frag
	port.Type, port.Code, port.Quote, port.SPI, port.MTU, port.SrcPort, port.DstPort = 3, 3, classify.QuoteNATTNoSPI, 0, 0, 4500, 4500
	l.ICMPError(port)
	l.IKEInitStorm(report.IKEInitStorm{Peer: netip.MustParseAddr("2001:db8::7"), Iface: "eth1", Rate: 2.5, Requests: 40})
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := []string{
		`time=2026-11-26T12:00:00Z level=warn event=icmp_esp msg="Received ICMP error about ESP: path MTU smaller than our ESP packets" reporter=192.0.2.254 error=frag-needed family=icmp type=3 code=4 quote=esp spi=0xc0ffee01 src=203.0.113.1 sport=0 dst=198.51.100.7 dport=0 mtu=1400 iface=eth0 known_sa=true packets=1 held_back=0`,
		`time=2026-11-26T12:00:11Z level=warn event=icmp_esp msg="Received ICMP error about ESP: port unreachable (is the peer's IKE daemon running?)" reporter=192.0.2.254 error=port-unreachable family=icmp type=3 code=3 quote=natt-no-spi spi=- src=203.0.113.1 sport=4500 dst=198.51.100.7 dport=4500 mtu=0 iface=eth0 known_sa=true packets=1 held_back=1`,
		`time=2026-11-26T12:00:11Z level=warn event=ike_init_storm msg="Peer retries IKE_SA_INIT above --ike-init-rate" peer=2001:db8::7 iface=eth1 rate=2.50 window=10s requests=40`,
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

// TestICMPErrorMessageByQuote: only the NAT-T socket belongs to the peer's IKE
// daemon. A port unreachable (or protocol unreachable, prohibited) about plain
// ESP says a firewall, or the peer's stack, refuses our ESP: iptables REJECT
// answers port unreachable for any protocol.
func TestICMPErrorMessageByQuote(t *testing.T) {
	for _, c := range []struct {
		family, typ, code uint8
		quote             classify.Quote
		want              string
	}{
		{4, 3, 3, classify.QuoteESPInUDP, "port unreachable (is the peer's IKE daemon running?)"},
		{4, 3, 3, classify.QuoteNATTNoSPI, "port unreachable (is the peer's IKE daemon running?)"},
		{6, 1, 4, classify.QuoteESPInUDP, "port unreachable (is the peer's IKE daemon running?)"},
		{4, 3, 3, classify.QuoteESP, "the peer, or a firewall in front of it, refuses our ESP"},
		{4, 3, 2, classify.QuoteESP, "the peer, or a firewall in front of it, refuses our ESP"},
		{4, 3, 13, classify.QuoteESP, "the peer, or a firewall in front of it, refuses our ESP"},
		{6, 1, 1, classify.QuoteESP, "the peer, or a firewall in front of it, refuses our ESP"},
		{6, 1, 4, classify.QuoteESP, "the peer, or a firewall in front of it, refuses our ESP"},
		{4, 3, 1, classify.QuoteESP, `"Received ICMP error about ESP"`},
	} {
		l, b, _ := newLogger(t, "logfmt")
		l.ICMPError(report.ICMPRow{ICMPRow: maps.ICMPRow{Reporter: netip.MustParseAddr("198.51.100.7"), Packets: 1,
			ICMPError: classify.ICMPError{Family: c.family, Type: c.typ, Code: c.code, Quote: c.quote, SPI: 0xc0ffee07,
				Src: netip.MustParseAddr("203.0.113.1"), Dst: netip.MustParseAddr("198.51.100.7")}}, Iface: "eth0"})
		if !strings.Contains(b.String(), c.want) {
			t.Errorf("ICMP %d/%d/%d quoting %s: line %q lacks %q", c.family, c.typ, c.code, c.quote, b.String(), c.want)
		}
	}
}

// TestIKEInitStormJSON: in JSON the storm's rate is a number, like every other
// count and rate; logfmt keeps two decimals.
func TestIKEInitStormJSON(t *testing.T) {
	l, b, _ := newLogger(t, "json")
	l.IKEInitStorm(report.IKEInitStorm{Peer: netip.MustParseAddr("198.51.100.7"), Iface: "eth0", Rate: 1.5, Requests: 15})
	var m map[string]any
	if err := json.Unmarshal([]byte(b.String()), &m); err != nil {
		t.Fatalf("%v: %s", err, b.String())
	}
	if rate, ok := m["rate"].(float64); !ok || rate != 1.5 {
		t.Errorf("rate %#v (%T), want the number 1.5: %s", m["rate"], m["rate"], b.String())
	}
	if m["requests"] != float64(15) || m["window"] != "10s" {
		t.Errorf("line %s", b.String())
	}
}
