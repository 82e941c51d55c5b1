// SPDX-License-Identifier: Apache-2.0

package vici

import (
	"cmp"
	"slices"

	govici "github.com/strongswan/govici/vici"

	"github.com/spiwatch/spiwatch/maps"
)

// The events the source follows. ike-update is MOBIKE or NAT changing an IKE_SA's
// addresses, and with them the destination of its inbound SAs.
var followed = []string{"child-updown", "child-rekey", "ike-updown", "ike-rekey", "ike-update"}

// state is the inbound SAs charon has, by CHILD_SA unique id.
type state struct {
	children map[string]childSA
}

func newState() *state { return &state{children: map[string]childSA{}} }

// replace makes the state what one list-sas reply says.
func (st *state) replace(list []childSA) {
	st.children = make(map[string]childSA, len(list))
	for _, c := range list {
		st.children[c.child] = c
	}
}

// apply applies an event directly, as far as the event says enough, so that a new
// SA (above all a rekeying's new inbound SPI) is known without waiting for a
// list-sas round trip. Removals that no event announces (a rekeying's old SA going
// away) are left to the re-read that every event also schedules.
func (st *state) apply(ev govici.Event) (errs []error) {
	m := ev.Message
	up := str(m, "up") == "yes"
	for _, name := range sections(m) {
		ike := m.Get(name).(*govici.Message)
		switch ev.Name {
		case "child-updown":
			sas, e := ikeChildren(name, ike, self)
			errs = append(errs, e...)
			for _, c := range sas {
				if up {
					st.children[c.child] = c
				} else {
					delete(st.children, c.child)
				}
			}
			if !up { // a child that could not be converted still goes
				st.removeChildren(ike)
			}
		case "child-rekey":
			sas, e := ikeChildren(name, ike, rekeyed)
			errs = append(errs, e...)
			for _, c := range sas {
				st.children[c.child] = c
			}
			// The old one stays while charon keeps its inbound SA; its new
			// state (REKEYED) makes the source poll until it is gone.
			old, _ := ikeChildren(name, ike, oldPart)
			for _, c := range old {
				if _, ok := st.children[c.child]; ok {
					st.children[c.child] = c
				}
			}
		case "ike-updown":
			if up {
				sas, e := ikeChildren(name, ike, self)
				errs = append(errs, e...)
				for _, c := range sas {
					st.children[c.child] = c
				}
				continue
			}
			id := str(ike, "uniqueid")
			for k, c := range st.children {
				if c.ike == id {
					delete(st.children, k)
				}
			}
			st.removeChildren(ike)
		}
		// ike-rekey moves the CHILD_SAs to the new IKE_SA with their SPIs;
		// ike-update changes addresses: both are left to the re-read.
	}
	return errs
}

// removeChildren forgets the CHILD_SAs listed in ike's child-sas by unique id.
func (st *state) removeChildren(ike *govici.Message) {
	children, _ := ike.Get("child-sas").(*govici.Message)
	if children == nil {
		return
	}
	for _, key := range sections(children) {
		delete(st.children, str(children.Get(key).(*govici.Message), "uniqueid"))
	}
}

// sas is the set to apply: distinct, in a stable order.
func (st *state) sas() []maps.SA {
	out := make([]maps.SA, 0, len(st.children))
	for _, c := range st.children {
		out = append(out, c.sa)
	}
	slices.SortFunc(out, func(a, b maps.SA) int {
		return cmp.Or(cmp.Compare(a.SPI, b.SPI), a.Dst.Compare(b.Dst))
	})
	return slices.Compact(out)
}

// transient reports whether a listed CHILD_SA will go away without an event.
func (st *state) transient() bool {
	for _, c := range st.children {
		if leavesSilently[c.state] {
			return true
		}
	}
	return false
}
