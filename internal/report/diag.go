// SPDX-License-Identifier: Apache-2.0

package report

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/maps"
)

// DiagSource is what a Reporter reads for the ICMP-error and IKE tables
// (*maps.Maps); a Source without it shows none.
type DiagSource interface {
	ICMPSnapshot() ([]maps.ICMPRow, error)
	IKESnapshot() ([]maps.IKERow, error)
	DiagTableStats(icmpEntries, ikeEntries int) (icmp, ike maps.TableStats, err error)
}

// ICMPRow is an ICMP error quoting ESP, with its rate.
type ICMPRow struct {
	maps.ICMPRow
	Iface     string
	Rate      float64 // packets per second over the last interval
	FirstSeen time.Time
	LastSeen  time.Time
	// KnownSA is set when the quoted SPI is a known SA for the quoted
	// destination (or any destination): typically our own outbound SA.
	KnownSA bool
}

// IKERow is a row of IKE activity, with its rate.
type IKERow struct {
	maps.IKERow
	Iface     string
	Rate      float64
	FirstSeen time.Time
	LastSeen  time.Time
	// PeerUnknown is how many unknown-SPI rows the peer has as a source: IKE
	// (INFORMATIONAL with INVALID_SPI, a new IKE_SA_INIT) right after a peer's
	// ESP went unknown is how a stale SA usually ends.
	PeerUnknown int
}

// PeerUnknownCounts counts unknown-table rows per source address.
func PeerUnknownCounts(rows []maps.Unknown) map[netip.Addr]int {
	n := map[netip.Addr]int{}
	for _, u := range rows {
		n[u.Src]++
	}
	return n
}

// IKEInitStorm is a peer whose IKE_SA_INIT requests are above the threshold.
type IKEInitStorm struct {
	Peer     netip.Addr
	Iface    string
	Rate     float64 // IKE_SA_INIT requests per second over IKEInitWindow
	Requests uint64  // all of them so far
}

// IKEInitWindow is the window over which a peer's IKE_SA_INIT request rate is
// measured for --ike-init-rate: a peer retrying in a loop keeps it up, a
// COOKIE or INVALID_KE_PAYLOAD round trip (two or three requests) does not.
const IKEInitWindow = 10 * time.Second

// DefaultIKEInitRate is --ike-init-rate's default: more than 10 IKE_SA_INIT
// requests from one peer within IKEInitWindow.
const DefaultIKEInitRate = 1.0

// diagState is what a Reporter remembers of the ICMP and IKE tables.
type diagState struct {
	prevICMP map[icmpID]rowSeen
	prevIKE  map[ikeID]rowSeen
	// IKE_SA_INIT request counts per peer at recent snapshots
	inits  map[peerID]*initHist
	storm  map[peerID]bool
	primed bool
}

// rowSeen is a row as the previous snapshot read it. A row evicted and made
// again has another first-seen stamp: its count starts from zero, even when it
// already counts more than the old row did.
type rowSeen struct {
	packets, first uint64
}

// since is the count of the row (packets, first) at the previous snapshot.
func (p rowSeen) since(packets, first uint64) uint64 {
	if p.first != first || p.packets > packets {
		return 0
	}
	return p.packets
}

type icmpID struct {
	reporter, src, dst       [16]byte
	spi, ifindex             uint32
	sport, dport             uint16
	family, typ, code, quote uint8
}

type ikeID struct {
	peer                   [16]byte
	ifindex                uint32
	version, exchange, dir uint8
}

type peerID struct {
	peer    [16]byte
	ifindex uint32
}

type initSample struct {
	t time.Time
	n uint64
}

// initHist is a peer's IKE_SA_INIT request count at recent snapshots, oldest
// first. Counts go on across the peer's row being evicted and made again (base),
// so an IKE flood that evicts a storming peer's row does not end its storm.
type initHist struct {
	samples []initSample
	first   uint64 // the row's FirstSeenNs
	base    uint64 // requests of the peer's earlier rows, as last read
}

func icmpIDOf(r maps.ICMPRow) icmpID {
	return icmpID{r.Reporter.As16(), r.Src.As16(), r.Dst.As16(), r.SPI, r.Ifindex, r.SrcPort, r.DstPort,
		r.Family, r.Type, r.Code, uint8(r.Quote)}
}

func ikeIDOf(r maps.IKERow) ikeID {
	return ikeID{r.Peer.As16(), r.Ifindex, r.Version, uint8(r.Exchange), uint8(r.Dir)}
}

// isInitRequest: the rows an IKE_SA_INIT storm is counted from.
func isInitRequest(r maps.IKERow) bool {
	return r.Version == 2 && r.Exchange == classify.IKESAInit && r.Dir == classify.IKERequest
}

// takeDiag fills the snapshot's ICMP and IKE parts.
func (r *Reporter) takeDiag(s *Snapshot, src DiagSource, prevTime time.Time, toWall func(uint64) time.Time) error {
	icmp, err := src.ICMPSnapshot()
	if err != nil {
		return err
	}
	ike, err := src.IKESnapshot()
	if err != nil {
		return err
	}
	if s.ICMPTable, s.IKETable, err = src.DiagTableStats(len(icmp), len(ike)); err != nil {
		return err
	}
	d := &r.diag
	if !d.primed { // New(): counts before the first snapshot are not rates
		d.reset()
	}
	secs := s.Interval.Seconds()
	rate := func(now, prev uint64) float64 {
		if secs <= 0 {
			return 0
		}
		return float64(now-min(now, prev)) / secs
	}
	known := map[maps.SA]bool{}
	for _, k := range s.Known {
		known[k.SA] = true
	}
	curICMP := make(map[icmpID]rowSeen, len(icmp))
	for _, e := range icmp {
		id := icmpIDOf(e)
		curICMP[id] = rowSeen{e.Packets, e.FirstSeenNs}
		s.ICMP = append(s.ICMP, ICMPRow{ICMPRow: e, Iface: r.ifaceName(e.Ifindex), Rate: rate(e.Packets, d.prevICMP[id].since(e.Packets, e.FirstSeenNs)),
			FirstSeen: toWall(e.FirstSeenNs), LastSeen: toWall(e.LastSeenNs),
			KnownSA: e.Quote != classify.QuoteNATTNoSPI && (known[maps.SA{SPI: e.SPI, Dst: e.Dst}] || known[maps.SA{SPI: e.SPI}])})
	}
	for _, e := range s.ICMP {
		if _, seen := d.prevICMP[icmpIDOf(e.ICMPRow)]; seen {
			continue
		}
		if len(s.NewICMP) < maxEvents {
			s.NewICMP = append(s.NewICMP, e)
		} else {
			s.MoreEvents++
		}
	}
	d.prevICMP = curICMP
	SortICMP(s.ICMP)

	peerUnknown := PeerUnknownCounts(r.snapBuf)
	curIKE := make(map[ikeID]rowSeen, len(ike))
	inits := map[peerID]maps.IKERow{} // one row per peer: the key has the rest
	prevInits := map[peerID]uint64{}
	for _, x := range ike {
		id := ikeIDOf(x)
		curIKE[id] = rowSeen{x.Packets, x.FirstSeenNs}
		prev := d.prevIKE[id].since(x.Packets, x.FirstSeenNs)
		if isInitRequest(x) {
			p := peerID{x.Peer.As16(), x.Ifindex}
			inits[p], prevInits[p] = x, prev
		}
		s.IKE = append(s.IKE, IKERow{IKERow: x, Iface: r.ifaceName(x.Ifindex), Rate: rate(x.Packets, prev),
			FirstSeen: toWall(x.FirstSeenNs), LastSeen: toWall(x.LastSeenNs), PeerUnknown: peerUnknown[x.Peer]})
	}
	d.prevIKE = curIKE
	SortIKE(s.IKE)

	// IKE_SA_INIT storms: requests per second over the window (or over the
	// window's length while less time has passed, so a start is no storm).
	for p, x := range inits {
		h := d.inits[p]
		if h == nil {
			h = &initHist{samples: []initSample{{prevTime, prevInits[p]}}, first: x.FirstSeenNs}
			d.inits[p] = h
		}
		last := h.samples[len(h.samples)-1].n
		if x.FirstSeenNs != h.first || h.base+x.Packets < last { // evicted and made again
			h.first, h.base = x.FirstSeenNs, last
		}
		n := h.base + x.Packets
		h.samples = append(h.samples, initSample{s.Time, n})
		for len(h.samples) > 2 && s.Time.Sub(h.samples[1].t) >= IKEInitWindow {
			h.samples = h.samples[1:]
		}
		span := max(s.Time.Sub(h.samples[0].t), IKEInitWindow)
		rt := float64(n-min(n, h.samples[0].n)) / span.Seconds()
		above := r.IKEInitRate > 0 && rt > r.IKEInitRate
		if above { // shown while it lasts, as a collision is; news once
			st := IKEInitStorm{Peer: netip.AddrFrom16(p.peer).Unmap(), Iface: r.ifaceName(p.ifindex), Rate: rt, Requests: n}
			s.IKEInitStorms = append(s.IKEInitStorms, st)
			if !d.storm[p] {
				s.NewIKEInitStorms = append(s.NewIKEInitStorms, st)
			}
		}
		d.storm[p] = above
	}
	byPeer := func(a, b IKEInitStorm) int { return cmp.Or(a.Peer.Compare(b.Peer), cmp.Compare(a.Iface, b.Iface)) }
	slices.SortFunc(s.IKEInitStorms, byPeer)
	slices.SortFunc(s.NewIKEInitStorms, byPeer)
	for p := range d.inits { // peers whose rows were evicted
		if _, ok := inits[p]; !ok {
			delete(d.inits, p)
			delete(d.storm, p)
		}
	}
	return nil
}

// SortICMP orders ICMP rows by rate, then packets, then key.
func SortICMP(rows []ICMPRow) {
	slices.SortFunc(rows, func(a, b ICMPRow) int {
		return cmp.Or(cmp.Compare(b.Rate, a.Rate), cmp.Compare(b.Packets, a.Packets), cmp.Compare(a.SPI, b.SPI),
			a.Reporter.Compare(b.Reporter), a.Dst.Compare(b.Dst), a.Src.Compare(b.Src), cmp.Compare(a.Type, b.Type),
			cmp.Compare(a.Code, b.Code), cmp.Compare(a.Quote, b.Quote), cmp.Compare(a.DstPort, b.DstPort),
			cmp.Compare(a.SrcPort, b.SrcPort), cmp.Compare(a.Ifindex, b.Ifindex))
	})
}

// SortIKE orders IKE rows by peer, then version, exchange and direction, so a
// peer's exchanges stay together.
func SortIKE(rows []IKERow) {
	slices.SortFunc(rows, func(a, b IKERow) int {
		return cmp.Or(a.Peer.Compare(b.Peer), cmp.Compare(a.Ifindex, b.Ifindex), cmp.Compare(a.Version, b.Version),
			cmp.Compare(a.Exchange, b.Exchange), cmp.Compare(a.Dir, b.Dir))
	})
}

// IKEExchangeName is an IKE row's exchange as reports print it: "IKE_SA_INIT",
// "main", "informational" (IKEv1), "other(43)" with the last raw type seen.
func IKEExchangeName(x maps.IKERow) string {
	if x.Exchange == classify.IKEOther {
		return fmt.Sprintf("other(%d)", x.LastExchangeType)
	}
	return x.Exchange.Name(x.Version)
}

// primeDiag remembers the tables' counts at New, so the first rates are since then.
func (r *Reporter) primeDiag(src DiagSource) error {
	icmp, err := src.ICMPSnapshot()
	if err != nil {
		return err
	}
	ike, err := src.IKESnapshot()
	if err != nil {
		return err
	}
	d := &r.diag
	d.reset()
	for _, e := range icmp {
		d.prevICMP[icmpIDOf(e)] = rowSeen{e.Packets, e.FirstSeenNs}
	}
	for _, x := range ike {
		d.prevIKE[ikeIDOf(x)] = rowSeen{x.Packets, x.FirstSeenNs}
	}
	return nil
}

func (d *diagState) reset() {
	d.prevICMP, d.prevIKE = map[icmpID]rowSeen{}, map[ikeID]rowSeen{}
	d.inits, d.storm = map[peerID]*initHist{}, map[peerID]bool{}
	d.primed = true
}
