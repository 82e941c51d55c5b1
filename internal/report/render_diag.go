// SPDX-License-Identifier: Apache-2.0

package report

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/maps"
)

type jsonICMP struct {
	Reporter  string  `json:"reporter"`
	Family    string  `json:"family"` // icmp or icmpv6
	Type      uint8   `json:"type"`
	Code      uint8   `json:"code"`
	Name      string  `json:"name"`  // frag-needed, port-unreachable, packet-too-big, ...
	Quote     string  `json:"quote"` // esp, esp-in-udp, natt-no-spi
	SPI       string  `json:"spi"`   // "" for natt-no-spi
	Src       string  `json:"src"`   // the quoted packet's
	Sport     uint16  `json:"sport"`
	Dst       string  `json:"dst"`
	Dport     uint16  `json:"dport"`
	Interface string  `json:"interface"`
	Packets   uint64  `json:"packets"`
	Bytes     uint64  `json:"bytes"`
	PPS       float64 `json:"pps"`
	MTU       uint32  `json:"mtu,omitempty"`
	FirstSeen string  `json:"first_seen"`
	LastSeen  string  `json:"last_seen"`
	KnownSA   bool    `json:"known_sa"`
}

type jsonIKE struct {
	Peer         string  `json:"peer"`
	Interface    string  `json:"interface"`
	Version      uint8   `json:"version"`
	Exchange     string  `json:"exchange"`
	ExchangeType uint8   `json:"exchange_type"` // the last raw exchange type byte
	Dir          string  `json:"dir"`           // request, response, or - (IKEv1, malformed)
	Packets      uint64  `json:"packets"`
	Bytes        uint64  `json:"bytes"`
	PPS          float64 `json:"pps"`
	FirstSeen    string  `json:"first_seen"`
	LastSeen     string  `json:"last_seen"`
	LastISPI     string  `json:"last_ispi"`
	LastRSPI     string  `json:"last_rspi"`
	LastMsgID    uint32  `json:"last_msgid"`
	LastFlags    uint8   `json:"last_flags"`
	// PeerUnknownSPIs: unknown-SPI rows with this peer as their source.
	PeerUnknownSPIs int `json:"peer_unknown_spis"`
}

type jsonStorm struct {
	Peer      string  `json:"peer"`
	Interface string  `json:"interface"`
	Rate      float64 `json:"rate"`
	Requests  uint64  `json:"requests"`
}

func tableJSON(t maps.TableStats) jsonTable {
	return jsonTable{Entries: t.Entries, Capacity: t.Capacity, Inserts: t.Inserts, Evictions: t.Evictions, InsertFailures: t.InsertFails}
}

// ICMPFamily is "icmp" or "icmpv6".
func ICMPFamily(f uint8) string {
	if f == 6 {
		return "icmpv6"
	}
	return "icmp"
}

// ICMPSPI prints a quoted SPI, or "-" when the quote ends before it.
func ICMPSPI(e classify.ICMPError) string {
	if e.Quote == classify.QuoteNATTNoSPI {
		return "-"
	}
	return fmt.Sprintf("0x%08x", e.SPI)
}

func diagJSON(js *jsonSnapshot, s *Snapshot) {
	js.ICMPTable, js.IKETable = tableJSON(s.ICMPTable), tableJSON(s.IKETable)
	js.ICMPErrors, js.IKE = []jsonICMP{}, []jsonIKE{}
	for _, e := range s.ICMP {
		spi := ICMPSPI(e.ICMPError)
		if spi == "-" {
			spi = ""
		}
		js.ICMPErrors = append(js.ICMPErrors, jsonICMP{Reporter: addrString(e.Reporter), Family: ICMPFamily(e.Family),
			Type: e.Type, Code: e.Code, Name: classify.ICMPTypeName(e.Family, e.Type, e.Code), Quote: e.Quote.String(), SPI: spi,
			Src: addrString(e.Src), Sport: e.SrcPort, Dst: addrString(e.Dst), Dport: e.DstPort, Interface: e.Iface,
			Packets: e.Packets, Bytes: e.Bytes, PPS: e.Rate, MTU: e.MTU, FirstSeen: stamp(e.FirstSeen), LastSeen: stamp(e.LastSeen),
			KnownSA: e.KnownSA})
	}
	for _, x := range s.IKE {
		js.IKE = append(js.IKE, jsonIKE{Peer: addrString(x.Peer), Interface: x.Iface, Version: x.Version,
			Exchange: x.Exchange.Name(x.Version), ExchangeType: x.LastExchangeType, Dir: x.Dir.String(),
			Packets: x.Packets, Bytes: x.Bytes, PPS: x.Rate, FirstSeen: stamp(x.FirstSeen), LastSeen: stamp(x.LastSeen),
			LastISPI: fmt.Sprintf("%016x", x.LastISPI), LastRSPI: fmt.Sprintf("%016x", x.LastRSPI),
			LastMsgID: x.LastMsgID, LastFlags: x.LastFlags, PeerUnknownSPIs: x.PeerUnknown})
	}
	for _, st := range s.IKEInitStorms {
		js.IKEInitStorms = append(js.IKEInitStorms, jsonStorm{Peer: addrString(st.Peer), Interface: st.Iface, Rate: st.Rate, Requests: st.Requests})
	}
}

// writeDiagText writes the ICMP-error and IKE tables, when they have rows.
func writeDiagText(b *strings.Builder, s *Snapshot, top int) {
	if len(s.ICMP) > 0 {
		n := len(s.ICMP)
		if top > 0 && n > top {
			n = top
		}
		fmt.Fprintf(b, "ICMP errors about ESP: %d of %d by rate (table %d/%d, %d evicted)\n", n, len(s.ICMP),
			s.ICMPTable.Entries, s.ICMPTable.Capacity, s.ICMPTable.Evictions)
		tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "reporter\terror\tquoted\tSPI\tquoted source\tquoted destination\tiface\tpackets\tpkt/s\tMTU\tlast seen\tSA")
		for _, e := range s.ICMP[:n] {
			mtu, sa := "-", "-"
			if e.MTU != 0 {
				mtu = fmt.Sprint(e.MTU)
			}
			if e.KnownSA {
				sa = "known"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", addrString(e.Reporter),
				classify.ICMPTypeName(e.Family, e.Type, e.Code), e.Quote, ICMPSPI(e.ICMPError), HostPort(e.Src, e.SrcPort),
				HostPort(e.Dst, e.DstPort), e.Iface, e.Packets, Human(e.Rate), mtu, Ago(s.Time, e.LastSeen), sa)
		}
		tw.Flush()
	}
	if len(s.IKE) > 0 {
		fmt.Fprintf(b, "IKE activity: %s (table %d/%d, %d evicted)\n", Counted(len(s.IKE), "row"), s.IKETable.Entries, s.IKETable.Capacity, s.IKETable.Evictions)
		tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "peer\tiface\tIKE\texchange\tdir\tpackets\tpkt/s\tlast msgid\tfirst seen\tlast seen\tpeer's unknown SPIs")
		for _, x := range s.IKE {
			ver := fmt.Sprintf("v%d", x.Version)
			if x.Exchange == classify.IKEMalformed {
				ver = "-"
			}
			unk := "-"
			if x.PeerUnknown > 0 {
				unk = fmt.Sprint(x.PeerUnknown)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\t%s\n", addrString(x.Peer), x.Iface, ver, IKEExchangeName(x.IKERow),
				x.Dir, x.Packets, Human(x.Rate), x.LastMsgID, x.FirstSeen.Format("15:04:05"), Ago(s.Time, x.LastSeen), unk)
		}
		tw.Flush()
	}
	for _, st := range s.IKEInitStorms {
		fmt.Fprintf(b, "IKE_SA_INIT STORM: %s on %s sends %.1f requests/s (over %s; %d so far)\n",
			addrString(st.Peer), st.Iface, st.Rate, IKEInitWindow.Round(time.Second), st.Requests)
	}
}
