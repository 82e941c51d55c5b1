// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/maps"
)

// captureDiag adds to each packet's comment what the reports would say of it: the
// collision verdict (its SPI seen towards its destination from two or more sources
// within the window; a known SA receiving from a second source), the ICMP error
// and the SPI it quotes, the IKE exchange. Collisions come from the maps the
// program shares, read again once a second; the rest from the frame itself,
// decoded by the reference classifier. Stale and rekey-race need the SA history
// that spiwatch run keeps: its reports and event log give them.
type captureDiag struct {
	m      *maps.Maps
	cfg    classify.Config
	window time.Duration
	// unknown (SPI, destination) pairs in collision, with their sources, as
	// last read
	unknown map[report.SPIDst][]maps.SASource
	// every known SA, by (SPI, destination) as the program looks it up, with its
	// sources when it is in collision (nil otherwise): an SPI may name an SA
	// for one destination and another for any destination
	known map[maps.SA][]maps.SASource
	read  time.Time // when they were read
}

// newCaptureDiag judges collisions over window (--collision-window).
func newCaptureDiag(m *maps.Maps, natt []uint16, window time.Duration) *captureDiag {
	d := &captureDiag{m: m, window: window}
	d.cfg.NATTPorts = natt
	return d
}

func monoNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// refresh reads the collisions from the maps, at most once a second and only
// when an ESP sample needs them (a full unknown table takes tens of ms to read);
// on an error the last ones stay.
func (d *captureDiag) refresh() {
	if time.Since(d.read) < time.Second {
		return
	}
	d.read = time.Now()
	now := monoNow()
	if rows, err := d.m.UnknownSnapshot(); err == nil {
		d.unknown = map[report.SPIDst][]maps.SASource{}
		for i, srcs := range report.UnknownCollisions(rows, now, d.window) {
			d.unknown[report.SPIDst{SPI: rows[i].SPI, Dst: rows[i].Dst}] = srcs
		}
	}
	if known, err := d.m.ListKnown(); err == nil {
		d.known = make(map[maps.SA][]maps.SASource, len(known))
		for _, k := range known {
			var srcs []maps.SASource
			if act := k.ActiveSources(now, uint64(d.window)); len(act) >= 2 {
				srcs = act
			}
			d.known[k.SA] = srcs
		}
	}
}

// knownSources are the collision sources of the known SA a packet to dst with
// this SPI counted into: the SA for dst if there is one, else the SA for any
// destination (the program's order); nil when that SA is not in collision, or
// when the kept bytes end before the destination.
func (d *captureDiag) knownSources(spi uint32, dst netip.Addr) []maps.SASource {
	if !dst.IsValid() {
		return nil
	}
	if srcs, ok := d.known[maps.SA{SPI: spi, Dst: unmapped(dst)}]; ok {
		return srcs
	}
	return d.known[maps.SA{SPI: spi}]
}

// comment says why a packet was kept, for Wireshark and tshark.
func (d *captureDiag) comment(h maps.SampleHeader, frame []byte, perSPI uint32) string {
	var b strings.Builder
	cl := classify.Class(h.Class)
	fmt.Fprintf(&b, "spiwatch: class=%s", cl)
	r := classify.Classify(frame, &d.cfg) // the head the snap length kept
	switch {
	case cl == classify.ClassESP || cl == classify.ClassESPInUDP:
		d.refresh()
		verdict := classify.Outcome(h.Outcome).String()
		var srcs []maps.SASource
		if h.Outcome == uint8(classify.OutcomeKnown) {
			srcs = d.knownSources(h.SPI, r.Dst)
		} else if h.Outcome == uint8(classify.OutcomeUnknown) && r.HasSPI {
			srcs = d.unknown[report.SPIDst{SPI: h.SPI, Dst: unmapped(r.Dst)}]
		}
		if len(srcs) >= 2 {
			verdict += "," + report.Collision
		}
		fmt.Fprintf(&b, " spi=0x%08x verdict=%s", h.SPI, verdict)
		if len(srcs) >= 2 {
			// one word: the comment is key=value words; a flood's thousands of
			// sources would make every comment kilobytes long
			more := ""
			if len(srcs) > maxCommentSources {
				more = fmt.Sprintf(",+%d", len(srcs)-maxCommentSources)
				srcs = srcs[:maxCommentSources]
			}
			fmt.Fprintf(&b, " sources=%s%s", strings.ReplaceAll(report.SourcesString(srcs), ", ", ","), more)
		}
	case cl == classify.ClassICMPESP && r.Class == classify.ClassICMPESP:
		e := r.ICMP
		fmt.Fprintf(&b, " error=%s quote=%s", classify.ICMPTypeName(e.Family, e.Type, e.Code), e.Quote)
		if e.SPI != 0 {
			fmt.Fprintf(&b, " spi=0x%08x", e.SPI)
		}
		fmt.Fprintf(&b, " quoted=%s->%s", e.Src, e.Dst)
		if e.MTU != 0 {
			fmt.Fprintf(&b, " mtu=%d", e.MTU)
		}
	case cl == classify.ClassIKE && r.Class == classify.ClassIKE:
		x := r.IKE
		if x.Version == 0 {
			b.WriteString(" ike=malformed")
		} else {
			fmt.Fprintf(&b, " ike=v%d exchange=%s dir=%s msgid=%d", x.Version, x.Exchange.Name(x.Version), x.Dir, x.MsgID)
		}
	}
	action := "pass"
	if h.Action == 1 {
		action = "drop"
	}
	fmt.Fprintf(&b, " action=%s", action)
	if h.Reason == maps.ReasonFirst {
		fmt.Fprintf(&b, " kept=first-%d/%d", h.RowPackets, perSPI)
	} else {
		b.WriteString(" kept=rate")
	}
	return b.String()
}

// maxCommentSources is how many collision sources a comment names; +N says how
// many more there are.
const maxCommentSources = 8

// unmapped is how the maps give addresses: IPv4 as IPv4.
func unmapped(a netip.Addr) netip.Addr { return a.Unmap() }
