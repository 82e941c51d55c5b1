// SPDX-License-Identifier: Apache-2.0

package vici

import (
	"slices"
	"testing"

	govici "github.com/strongswan/govici/vici"

	"github.com/spiwatch/spiwatch/maps"
)

func event(t *testing.T, name string, up bool, sections kv) govici.Event {
	t.Helper()
	m := kv{}
	if up {
		m["up"] = "yes"
	}
	for k, v := range sections {
		m[k] = v
	}
	return govici.Event{Name: name, Message: msg(t, m)}
}

func check(t *testing.T, st *state, when string, want ...maps.SA) {
	t.Helper()
	if got := st.sas(); !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
		t.Errorf("%s: SAs %v, want %v", when, got, want)
	}
}

// TestEvents follows a gateway's life through the events charon sends.
func TestEvents(t *testing.T) {
	st := newState()
	list, _ := listed([]*govici.Message{msg(t, kv{"gw": ike("1", "192.0.2.2", kv{"a-1": child("1", "INSTALLED", "ESP", "00001000", true)})})})
	st.replace(list)
	check(t, st, "listed", sa(0x1000, "192.0.2.2"))

	// A second CHILD_SA comes up in the same IKE_SA.
	apply := func(ev govici.Event) {
		t.Helper()
		if errs := st.apply(ev); len(errs) != 0 {
			t.Fatalf("%s: %v", ev.Name, errs)
		}
	}
	apply(event(t, "child-updown", true, kv{"gw": ike("1", "192.0.2.2", kv{"b-2": child("2", "INSTALLED", "ESP", "00002000", true)})}))
	check(t, st, "child up", sa(0x1000, "192.0.2.2"), sa(0x2000, "192.0.2.2"))

	// The first is rekeyed: the new SPI is known at once, the old one stays
	// (REKEYED: its inbound SA is still there) until a re-read says it is gone.
	apply(event(t, "child-rekey", false, kv{"gw": ike("1", "192.0.2.2", kv{"a": kv{
		"old": child("1", "REKEYED", "ESP", "00001000", true),
		"new": child("3", "INSTALLED", "ESP", "00003000", true),
	}})}))
	check(t, st, "rekeyed", sa(0x1000, "192.0.2.2"), sa(0x2000, "192.0.2.2"), sa(0x3000, "192.0.2.2"))
	if !st.transient() {
		t.Error("a REKEYED CHILD_SA is listed, but transient() is false: it would never be polled away")
	}

	// The second goes down.
	apply(event(t, "child-updown", false, kv{"gw": ike("1", "192.0.2.2", kv{"b-2": child("2", "DELETING", "ESP", "00002000", true)})}))
	check(t, st, "child down", sa(0x1000, "192.0.2.2"), sa(0x3000, "192.0.2.2"))

	// Another IKE_SA, over IPv6, comes up with a CHILD_SA.
	apply(event(t, "child-updown", true, kv{"v6": ike("4", "2001:db8::2", kv{"c-5": child("5", "INSTALLED", "ESP", "00005000", false)})}))
	// The first IKE_SA goes down: all its CHILD_SAs go, even ones the event
	// does not list.
	apply(event(t, "ike-updown", false, kv{"gw": ike("1", "192.0.2.2", kv{})}))
	check(t, st, "IKE_SA down", sa(0x5000, "2001:db8::2"))
	if st.transient() {
		t.Error("transient() with only INSTALLED CHILD_SAs left")
	}

	// ike-rekey and ike-update change nothing directly: the re-read does.
	apply(event(t, "ike-rekey", false, kv{"v6": kv{"old": ike("4", "2001:db8::2", kv{}), "new": ike("6", "2001:db8::2", kv{})}}))
	apply(event(t, "ike-update", false, kv{"v6": ike("6", "2001:db8::9", kv{})}))
	check(t, st, "ike-rekey, ike-update", sa(0x5000, "2001:db8::2"))

	// A bad CHILD_SA in an event is reported and does not disturb the others.
	errs := st.apply(event(t, "child-updown", true, kv{"v6": ike("6", "2001:db8::2", kv{"d-7": child("7", "INSTALLED", "ESP", "nope", false)})}))
	if len(errs) != 1 {
		t.Errorf("bad SPI in an event: errors %v, want one", errs)
	}
	check(t, st, "bad event", sa(0x5000, "2001:db8::2"))
}

// Two CHILD_SAs with the same inbound SA (an SPI charon lists twice during a
// rekeying) give one SA.
func TestSASDistinct(t *testing.T) {
	st := newState()
	st.replace([]childSA{
		{child: "2", sa: sa(0x2000, "192.0.2.2")},
		{child: "1", sa: sa(0x2000, "192.0.2.2")},
		{child: "3", sa: sa(0x1000, "2001:db8::1")},
	})
	check(t, st, "distinct", sa(0x1000, "2001:db8::1"), sa(0x2000, "192.0.2.2"))
}
