// SPDX-License-Identifier: Apache-2.0

package xfrm

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/spiwatch/spiwatch/maps"
)

// Table is the kernel's ESP states as the source last heard of them: every
// direction, larval ones too. Which of them are known SAs is decided when the set is
// handed on (Inbound), against the local addresses of that moment.
type Table struct {
	states map[ID]State
}

// NewTable is an empty table.
func NewTable() *Table { return &Table{states: map[ID]State{}} }

// Apply changes the table by one event and says whether anything changed.
func (t *Table) Apply(ev Event) bool {
	switch ev.Kind {
	case Add:
		old, ok := t.states[ev.State.ID]
		t.states[ev.State.ID] = ev.State
		return !ok || old != ev.State
	case Remove:
		_, ok := t.states[ev.State.ID]
		delete(t.states, ev.State.ID)
		return ok
	case FlushAll:
		n := len(t.states)
		clear(t.states)
		return n > 0
	}
	return false
}

// Reset makes the table hold exactly states (a full dump).
func (t *Table) Reset(states []State) {
	clear(t.states)
	for _, s := range states {
		t.states[s.ID] = s
	}
}

// Len is the number of states held.
func (t *Table) Len() int { return len(t.states) }

// Inbound is the known-SA set: the states whose destination is an address of this
// host (isLocal) and that have a cipher, as SPI + destination, sorted, each once.
// Outbound states (destination: the peer) are left out: packets for them leave this
// host and never come back to it, and a peer sending on such an SPI is a fault.
func (t *Table) Inbound(isLocal func(netip.Addr) bool) []maps.SA {
	seen := map[maps.SA]bool{}
	var out []maps.SA
	for _, s := range t.states {
		sa := maps.SA{SPI: s.SPI, Dst: s.Dst}
		if s.Larval || !isLocal(s.Dst) || seen[sa] {
			continue
		}
		seen[sa] = true
		out = append(out, sa)
	}
	slices.SortFunc(out, func(a, b maps.SA) int {
		if c := cmp.Compare(a.SPI, b.SPI); c != 0 {
			return c
		}
		return a.Dst.Compare(b.Dst)
	})
	return out
}
