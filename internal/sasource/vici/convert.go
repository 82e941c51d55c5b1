// SPDX-License-Identifier: Apache-2.0

package vici

import (
	"fmt"
	"net/netip"
	"strconv"

	govici "github.com/strongswan/govici/vici"

	"github.com/spiwatch/spiwatch/maps"
)

// childSA is one inbound ESP SA of a CHILD_SA as charon reports it.
type childSA struct {
	ike, child string // charon's unique ids of the IKE_SA and the CHILD_SA
	state      string // CHILD_SA state: INSTALLED, REKEYED, ...
	sa         maps.SA
}

// States in which a CHILD_SA has no inbound SA in the kernel (or in libipsec):
// not yet installed, only a trap policy, or being torn down.
var notInstalled = map[string]bool{"CREATED": true, "ROUTED": true, "DESTROYING": true}

// States a CHILD_SA leaves without any event: the old SA of a rekeying stays
// REKEYED/DELETING, or DELETED while charon keeps its inbound SA for late packets
// (charon.delete_rekeyed_delay), and then goes away silently. While one is
// listed, the source polls list-sas.
var leavesSilently = map[string]bool{"REKEYED": true, "DELETING": true, "DELETED": true}

// sections yields the sub-sections of m (list-sas and the events carry one per
// IKE_SA, keyed by its connection name, next to plain values such as "up").
func sections(m *govici.Message) []string {
	var out []string
	for _, k := range m.Keys() {
		if _, ok := m.Get(k).(*govici.Message); ok {
			out = append(out, k)
		}
	}
	return out
}

func str(m *govici.Message, key string) string {
	s, _ := m.Get(key).(string)
	return s
}

// ikeChildren converts the CHILD_SAs of the IKE_SA section ike (named name).
// pick chooses the CHILD_SA section to read from each child-sas entry: itself in
// list-sas and child-updown, its "new" part in child-rekey. A CHILD_SA that cannot
// be read is left out and reported in errs; the others are kept, so that one odd SA
// does not blind the source to all the rest.
func ikeChildren(name string, ike *govici.Message, pick func(*govici.Message) *govici.Message) (sas []childSA, errs []error) {
	children, _ := ike.Get("child-sas").(*govici.Message)
	if children == nil {
		return nil, nil
	}
	ikeID := str(ike, "uniqueid")
	for _, key := range sections(children) {
		c := pick(children.Get(key).(*govici.Message))
		if c == nil {
			continue
		}
		sa, ok, err := convertChild(ike, c)
		if err != nil {
			errs = append(errs, fmt.Errorf("IKE_SA %s #%s, CHILD_SA %s: %w", name, ikeID, key, err))
			continue
		}
		if ok {
			sas = append(sas, childSA{ike: ikeID, child: str(c, "uniqueid"), state: str(c, "state"), sa: sa})
		}
	}
	return sas, errs
}

func self(c *govici.Message) *govici.Message { return c }

func rekeyed(c *govici.Message) *govici.Message {
	n, _ := c.Get("new").(*govici.Message)
	return n
}

func oldPart(c *govici.Message) *govici.Message {
	o, _ := c.Get("old").(*govici.Message)
	return o
}

// convertChild reads the inbound SA of CHILD_SA c of IKE_SA ike: its SPI (spi-in)
// and, as destination, the IKE_SA's local address, which is the outer destination
// of inbound ESP in every mode, UDP-encapsulated (encap=yes) or not: the kernel and
// libipsec look inbound SAs up by SPI and destination only, and so does spiwatch.
// ok is false for a CHILD_SA that has no inbound ESP SA: AH, IPComp-only, not yet
// installed or a trap policy.
func convertChild(ike, c *govici.Message) (sa maps.SA, ok bool, err error) {
	if p := str(c, "protocol"); p != "ESP" {
		return maps.SA{}, false, nil
	}
	if notInstalled[str(c, "state")] {
		return maps.SA{}, false, nil
	}
	spiText := str(c, "spi-in")
	if spiText == "" {
		return maps.SA{}, false, nil
	}
	spi, err := strconv.ParseUint(spiText, 16, 32)
	if err != nil {
		return maps.SA{}, false, fmt.Errorf("spi-in %q is not a 32-bit hexadecimal SPI", spiText)
	}
	if spi == 0 {
		return maps.SA{}, false, nil // allocated later
	}
	host := str(ike, "local-host")
	dst, err := netip.ParseAddr(host)
	if err != nil {
		return maps.SA{}, false, fmt.Errorf("IKE_SA local-host %q is not an IP address", host)
	}
	return maps.SA{SPI: uint32(spi), Dst: dst.WithZone("").Unmap()}, true, nil
}

// listed converts the IKE_SA messages of one list-sas reply.
func listed(msgs []*govici.Message) (sas []childSA, errs []error) {
	for _, m := range msgs {
		for _, name := range sections(m) {
			s, e := ikeChildren(name, m.Get(name).(*govici.Message), self)
			sas, errs = append(sas, s...), append(errs, e...)
		}
	}
	return sas, errs
}
