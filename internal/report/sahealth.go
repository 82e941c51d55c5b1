// SPDX-License-Identifier: Apache-2.0

package report

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/maps"
)

// Collision is the verdict of an SPI seen towards one destination from more than
// one source address, or from more than one UDP port of one address, within the
// collision window: two peers (typically behind one NAT) picked the same SPI, and
// the gateway cannot tell their traffic apart. For a known SA it means someone
// else's traffic lands in the SA, or that the peer moved (NAT rebinding: then the
// old source ages out of the window).
const Collision = "collision"

// DefaultCollisionWindow is how recently two sources must both have sent an SPI
// for it to be a collision.
const DefaultCollisionWindow = 30 * time.Second

// Dropper is a Source that counts the unknown-SPI packets the program dropped
// (--action drop): *maps.Maps. Sources without it (capture files) drop nothing.
type Dropper interface {
	Dropped(slot int) ([classify.NumClasses]maps.Count, error)
}

// RateLimited is a Source with --drop-above buckets: *maps.Maps.
type RateLimited interface {
	RateTableStats() (maps.RateStats, error)
}

// KnownEvent is a known SA that became a collision, restarted or showed replay
// suspects since the previous snapshot.
type KnownEvent struct {
	Row  KnownRow
	What string // "collision", "restart" or "replay"
	New  uint64 // restarts or replay suspects since the previous snapshot
}

// knownState is what a Reporter remembers of a known SA between snapshots.
type knownState struct {
	collision         bool
	restarts, replays uint64
}

// spiDst groups unknown-table rows for collisions: the kernel, like the gateway,
// tells SAs apart by SPI and destination only.
type spiDst struct {
	spi uint32
	dst [16]byte
}

// SPIDst names a group of colliding rows, for counting them.
type SPIDst struct {
	SPI uint32
	Dst netip.Addr
}

type srcPort struct {
	addr [16]byte
	port uint16
}

// UnknownCollisions finds the (SPI, destination) pairs of the unknown table seen
// from two or more sources (address and UDP port) within window of now
// (CLOCK_MONOTONIC ns). It returns each colliding row's sources, by row index,
// most recent first. Reserved SPIs are never collisions: they name no SA.
func UnknownCollisions(rows []maps.Unknown, now uint64, window time.Duration) map[int][]maps.SASource {
	// Most SPIs have one row: the first row of each is found by the SPI alone (a
	// map of 4-byte keys, a quarter of the report's time at 65,536 rows with
	// (SPI, destination) keys); an SPI's rows towards another destination than
	// its first row's are compared in a map of their own.
	first := make(map[uint32]int32, len(rows))
	var firstOther map[spiDst]srcPort
	multi := map[spiDst]bool{}
	active := func(u *maps.Unknown) bool { return u.SPI >= 256 && u.LastSeenNs+uint64(window) >= now }
	for i := range rows {
		u := &rows[i]
		if !active(u) {
			continue
		}
		j, ok := first[u.SPI]
		if !ok {
			first[u.SPI] = int32(i)
			continue
		}
		k, s := spiDst{u.SPI, u.Dst.As16()}, srcPort{u.Src.As16(), u.SrcPort}
		if f := &rows[j]; f.Dst.As16() == k.dst {
			if (srcPort{f.Src.As16(), f.SrcPort}) != s {
				multi[k] = true
			}
			continue
		}
		if firstOther == nil {
			firstOther = map[spiDst]srcPort{}
		}
		if f, ok := firstOther[k]; !ok {
			firstOther[k] = s
		} else if f != s {
			multi[k] = true
		}
	}
	if len(multi) == 0 {
		return nil
	}
	groups := map[spiDst][]maps.SASource{}
	var members []int
	for i := range rows {
		u := &rows[i]
		k := spiDst{u.SPI, u.Dst.As16()}
		if !multi[k] || !active(u) {
			continue
		}
		members = append(members, i)
		g := groups[k]
		found := false
		for j := range g {
			if g[j].Addr == u.Src && g[j].Port == u.SrcPort {
				g[j].LastSeenNs = max(g[j].LastSeenNs, u.LastSeenNs)
				found = true
			}
		}
		if !found {
			g = append(g, maps.SASource{Addr: u.Src, Port: u.SrcPort, LastSeenNs: u.LastSeenNs})
		}
		groups[k] = g
	}
	out := make(map[int][]maps.SASource, len(members))
	for _, i := range members {
		g := groups[spiDst{rows[i].SPI, rows[i].Dst.As16()}]
		sortSources(g)
		out[i] = g
	}
	return out
}

func sortSources(g []maps.SASource) {
	for i := 1; i < len(g); i++ { // insertion sort: a handful of sources
		for j := i; j > 0 && (g[j].LastSeenNs > g[j-1].LastSeenNs ||
			g[j].LastSeenNs == g[j-1].LastSeenNs && g[j].String() < g[j-1].String()); j-- {
			g[j], g[j-1] = g[j-1], g[j]
		}
	}
}

// SourcesString lists sources for a person: "198.51.100.1:4500, 198.51.100.2:4500".
func SourcesString(srcs []maps.SASource) string {
	parts := make([]string, len(srcs))
	for i, s := range srcs {
		parts[i] = s.String()
	}
	return strings.Join(parts, ", ")
}

// Percent prints a ratio as a percentage with enough digits for small losses.
func Percent(r float64) string {
	switch {
	case r == 0:
		return "0%"
	case r < 0.001:
		return fmt.Sprintf("%.3f%%", 100*r)
	case r < 0.1:
		return fmt.Sprintf("%.2f%%", 100*r)
	}
	return fmt.Sprintf("%.1f%%", 100*r)
}

// KnownProblem says what is wrong with a known SA, most serious first, or "".
func KnownProblem(k KnownRow) string {
	var p []string
	if k.Collision {
		p = append(p, "COLLISION")
	}
	if k.Seq.Restarts > 0 {
		p = append(p, "restarted")
	}
	if k.Seq.Replays > 0 {
		p = append(p, "replay-suspect")
	}
	if k.Seq.Lost > 0 {
		p = append(p, "loss")
	}
	return strings.Join(p, ",")
}
