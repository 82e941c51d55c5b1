// SPDX-License-Identifier: Apache-2.0

package vici

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"testing"

	govici "github.com/strongswan/govici/vici"

	"github.com/spiwatch/spiwatch/maps"
)

type kv = map[string]any

// msg builds a govici message the way charon's would read: nested maps become
// sections.
func msg(t *testing.T, m kv) *govici.Message {
	t.Helper()
	out, err := govici.MarshalMessage(m)
	if err != nil {
		t.Fatalf("building message: %v", err)
	}
	return out
}

// ike is an IKE_SA section as list-sas gives it (trimmed to what matters plus a
// few fields the source must ignore).
func ike(id, local string, children kv) kv {
	return kv{"uniqueid": id, "version": "2", "state": "ESTABLISHED", "local-host": local, "local-port": "4500",
		"remote-host": "203.0.113.9", "remote-port": "4500", "child-sas": children}
}

// child is a CHILD_SA section.
func child(id, state, proto, spiIn string, encap bool) kv {
	c := kv{"name": "net", "uniqueid": id, "reqid": "1", "state": state, "mode": "TUNNEL", "protocol": proto,
		"spi-out": "c0ffee01", "local-ts": []string{"10.1.0.0/16"}, "remote-ts": []string{"10.2.0.0/16"}}
	if spiIn != "" {
		c["spi-in"] = spiIn
	}
	if encap {
		c["encap"] = "yes"
	}
	return c
}

func sa(spi uint32, dst string) maps.SA { return maps.SA{SPI: spi, Dst: netip.MustParseAddr(dst)} }

func TestListed(t *testing.T) {
	msgs := []*govici.Message{
		msg(t, kv{"gw-v4": ike("1", "192.0.2.2", kv{
			"net-1": child("1", "INSTALLED", "ESP", "c6f9932f", true), // ESP in UDP
			"net-2": child("2", "REKEYED", "ESP", "0000abcd", false),  // still has its inbound SA
			"ah-3":  child("3", "INSTALLED", "AH", "00001234", false), // no ESP
			"trap":  child("4", "ROUTED", "ESP", "", false),           // a trap policy, no SA
			"new":   child("5", "CREATED", "ESP", "00000000", false),  // not yet installed
			"zero":  child("6", "INSTALLING", "ESP", "0", false),      // SPI not allocated
		})}),
		msg(t, kv{"gw-v6": ike("7", "2001:db8::2", kv{"net-8": child("8", "INSTALLED", "ESP", "00000100", false)})}),
		msg(t, kv{"link-local": ike("9", "fe80::2%eth0", kv{"net-10": child("10", "INSTALLED", "ESP", "FFFFFFFF", false)})}),
		msg(t, kv{"connecting": kv{"uniqueid": "11", "state": "CONNECTING", "local-host": "%any"}}), // no children yet
	}
	sas, errs := listed(msgs)
	if len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	var got []maps.SA
	for _, c := range sas {
		got = append(got, c.sa)
	}
	want := []maps.SA{sa(0xc6f9932f, "192.0.2.2"), sa(0xabcd, "192.0.2.2"), sa(0x100, "2001:db8::2"), sa(0xffffffff, "fe80::2")}
	bySPI := func(a, b maps.SA) int { return cmp.Compare(a.SPI, b.SPI) }
	slices.SortFunc(got, bySPI)
	slices.SortFunc(want, bySPI)
	if !slices.Equal(got, want) {
		t.Errorf("SAs:\n got %v\nwant %v", got, want)
	}
	for _, c := range sas {
		if c.sa.SPI == 0xc6f9932f && (c.ike != "1" || c.child != "1" || c.state != "INSTALLED") {
			t.Errorf("ids of the first SA: %+v", c)
		}
		if c.sa.Dst.Zone() != "" || (c.sa.Dst.Is4In6()) {
			t.Errorf("destination %v keeps a zone or a v4-mapped form", c.sa.Dst)
		}
	}
}

// A CHILD_SA that cannot be read is named in an error and left out; the others stay.
func TestListedBad(t *testing.T) {
	msgs := []*govici.Message{
		msg(t, kv{"gw": ike("1", "192.0.2.2", kv{
			"good":   child("1", "INSTALLED", "ESP", "0000beef", false),
			"badspi": child("2", "INSTALLED", "ESP", "xyz", false),
			"big":    child("3", "INSTALLED", "ESP", "123456789", false),
		})}),
		msg(t, kv{"nohost": ike("4", "%any", kv{"c": child("5", "INSTALLED", "ESP", "0000cafe", false)})}),
	}
	sas, errs := listed(msgs)
	if len(sas) != 1 || sas[0].sa != sa(0xbeef, "192.0.2.2") {
		t.Errorf("SAs: %+v, want only the good one", sas)
	}
	var text []string
	for _, e := range errs {
		text = append(text, e.Error())
	}
	all := strings.Join(text, "\n")
	for _, want := range []string{
		`IKE_SA gw #1, CHILD_SA badspi: spi-in "xyz" is not a 32-bit hexadecimal SPI`,
		`IKE_SA gw #1, CHILD_SA big: spi-in "123456789" is not a 32-bit hexadecimal SPI`,
		`IKE_SA nohost #4, CHILD_SA c: IKE_SA local-host "%any" is not an IP address`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("errors lack %q:\n%s", want, all)
		}
	}
	if len(errs) != 3 {
		t.Errorf("%d errors, want 3:\n%s", len(errs), all)
	}
}
