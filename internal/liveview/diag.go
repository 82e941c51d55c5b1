// SPDX-License-Identifier: Apache-2.0

package liveview

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/report"
)

// The live view shows the busiest rows of the ICMP-error and IKE tables under the
// unknown SPIs; the text and JSON reports have them all.
const (
	maxICMPLines = 4
	maxIKELines  = 6
)

// diagLines renders the ICMP errors about ESP and the IKE activity, busiest first.
func diagLines(s *report.Snapshot) []string {
	var out []string
	if len(s.ICMP) > 0 {
		out = append(out, "", fmt.Sprintf("ICMP errors about ESP: %d (table %d/%d, %d evicted)", len(s.ICMP),
			s.ICMPTable.Entries, s.ICMPTable.Capacity, s.ICMPTable.Evictions))
		out = append(out, fmt.Sprintf("%-24s %-18s %-11s %-10s %-24s %10s %8s %6s", "reporter", "error", "quoted", "SPI", "quoted dst", "packets", "pkt/s", "MTU"))
		for _, e := range s.ICMP[:min(len(s.ICMP), maxICMPLines)] { // sorted by rate
			mtu := "-"
			if e.MTU != 0 {
				mtu = fmt.Sprint(e.MTU)
			}
			out = append(out, fmt.Sprintf("%-24s %-18s %-11s %-10s %-24s %10d %8s %6s", e.Reporter,
				classify.ICMPTypeName(e.Family, e.Type, e.Code), e.Quote, report.ICMPSPI(e.ICMPError),
				report.HostPort(e.Dst, e.DstPort), e.Packets, report.Human(e.Rate), mtu))
		}
		if len(s.ICMP) > maxICMPLines {
			out = append(out, fmt.Sprintf("... %d more", len(s.ICMP)-maxICMPLines))
		}
	}
	for _, st := range s.IKEInitStorms {
		out = append(out, fmt.Sprintf("IKE_SA_INIT STORM: %s on %s, %.1f requests/s", st.Peer, st.Iface, st.Rate))
	}
	if len(s.IKE) > 0 {
		rows := slices.Clone(s.IKE)
		slices.SortStableFunc(rows, func(a, b report.IKERow) int {
			return cmp.Or(cmp.Compare(b.Rate, a.Rate), cmp.Compare(b.Packets, a.Packets))
		})
		out = append(out, "", fmt.Sprintf("IKE activity: %s, busiest first (table %d/%d, %d evicted)", report.Counted(len(s.IKE), "row"),
			s.IKETable.Entries, s.IKETable.Capacity, s.IKETable.Evictions))
		out = append(out, fmt.Sprintf("%-40s %-4s %-18s %-9s %10s %8s  %s", "peer", "IKE", "exchange", "dir", "packets", "pkt/s", "last"))
		for _, x := range rows[:min(len(rows), maxIKELines)] {
			ver := fmt.Sprintf("v%d", x.Version)
			if x.Exchange == classify.IKEMalformed {
				ver = "-"
			}
			line := fmt.Sprintf("%-40s %-4s %-18s %-9s %10d %8s  %s", x.Peer, ver, report.IKEExchangeName(x.IKERow), x.Dir,
				x.Packets, report.Human(x.Rate), report.Ago(s.Time, x.LastSeen))
			if x.PeerUnknown > 0 {
				line += fmt.Sprintf("  (peer has %s)", report.Counted(x.PeerUnknown, "unknown SPI"))
			}
			out = append(out, line)
		}
		if len(rows) > maxIKELines {
			out = append(out, fmt.Sprintf("... %d more", len(rows)-maxIKELines))
		}
	}
	return out
}
