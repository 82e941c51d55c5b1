// SPDX-License-Identifier: Apache-2.0

// Package knownset keeps the known-SA map equal to the union of the known-SA
// sources (--known-spi, files, the kernel's xfrm SAs, VICI), remembers where each SA
// came from, and keeps a bounded history of removed SAs, from which it gives every
// unknown-SPI row its verdict: stale, rekey-race, unknown or reserved.
package knownset

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/spiwatch/spiwatch/maps"
)

// Verdicts of an unknown-SPI row.
const (
	Reserved  = "reserved"   // SPI 0-255: never an SA
	Stale     = "stale"      // the SPI belonged to an SA removed not long ago
	RekeyRace = "rekey-race" // unknown when first seen, known within the grace window
	Unknown   = "unknown"    // neither
)

// Defaults of the diagnosis windows.
const (
	DefaultHistory    = 10 * time.Minute
	DefaultRekeyGrace = 5 * time.Second
	maxHistory        = 1 << 16 // removed SAs remembered at most
)

// Target is where the union goes: *maps.Maps.
type Target interface {
	ReplaceKnown(sas []maps.SA) error
}

// Set is the known SAs by source.
type Set struct {
	mu      sync.Mutex
	target  Target
	now     func() time.Time
	sources map[string][]maps.SA
	current map[maps.SA]bool
	from    map[maps.SA][]string // sources of each SA in current, by its map key (keyOf)
	// By map key (keyOf): an SA is its SPI and destination, and two SAs of one
	// SPI at two destinations have histories of their own.
	addedAt map[maps.SA]time.Time // when the SA became known as a new SA (kept while in the history)
	removed map[maps.SA]removal   // its removals, while the last is in the history
	history time.Duration
	grace   time.Duration
}

// removal is when an SA was removed: first since it last became known as a new
// SA, and last. An SA added again within the history of its last removal is not
// new: the rows its peer sent while it was gone stay stale (from first), the
// rekey races of its first install stay rekey races (addedAt is kept).
type removal struct{ first, last time.Time }

// New manages target's known SAs.
func New(target Target, history, grace time.Duration) *Set {
	return &Set{target: target, now: time.Now, sources: map[string][]maps.SA{}, current: map[maps.SA]bool{}, from: map[maps.SA][]string{},
		addedAt: map[maps.SA]time.Time{}, removed: map[maps.SA]removal{}, history: history, grace: grace}
}

// Update replaces one source's SAs and applies the union of all sources to the
// map. On error the map and the Set keep what they had.
func (s *Set) Update(source string, sas []maps.SA) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := map[string][]maps.SA{}
	for k, v := range s.sources {
		next[k] = v
	}
	next[source] = slices.Clone(sas)
	union := map[maps.SA]bool{}
	from := make(map[maps.SA][]string, len(s.from))
	var list []maps.SA
	for _, src := range sortedKeys(next) {
		// Most SAs have one source: they share this slice instead of one each
		// (its capacity is 1, so an append for a second source copies it).
		only := []string{src}
		for _, sa := range next[src] {
			if !union[sa] {
				union[sa] = true
				list = append(list, sa)
			}
			// Sorted by source name; one source giving an SA twice names it once.
			switch k := keyOf(sa); {
			case from[k] == nil:
				from[k] = only
			case !slices.Contains(from[k], src):
				from[k] = append(from[k], src)
			}
		}
	}
	// A removal dates from before the map changes, an addition from after: the
	// change takes a while on a big map (it is read whole: some 200 ms for
	// 50,000 SAs), and a packet counted unknown meanwhile must be stale if its
	// SA was going, a rekey race if it was coming.
	now := s.now()
	if err := s.target.ReplaceKnown(list); err != nil {
		return fmt.Errorf("updating known SAs from %s: %w", source, err)
	}
	done := s.now()
	for sa := range union {
		k := keyOf(sa)
		if s.from[k] != nil {
			continue
		}
		if r, ok := s.removed[k]; ok && now.Sub(r.last) <= s.history {
			continue // back, not new: its rows keep their verdicts
		}
		s.addedAt[k] = done
		delete(s.removed, k)
	}
	for sa := range s.current {
		k := keyOf(sa)
		if from[k] != nil {
			continue
		}
		// addedAt stays: a rekey race before it is still one.
		r, ok := s.removed[k]
		if !ok || now.Sub(r.last) > s.history {
			r.first = now // rows of an older gap have been unknown since it left the history
		}
		r.last = now
		s.removed[k] = r
	}
	s.sources, s.current, s.from = next, union, from
	s.prune(now)
	return nil
}

// prune bounds the history: past maxHistory removals it drops the expired ones and
// then the oldest, down to 7/8 of the cap, so the work is amortized. An SA known
// again keeps when it was added.
func (s *Set) prune(now time.Time) {
	if len(s.removed) <= maxHistory {
		return
	}
	forget := func(sa maps.SA) {
		delete(s.removed, sa)
		if s.from[sa] == nil {
			delete(s.addedAt, sa)
		}
	}
	type r struct {
		sa maps.SA
		t  time.Time
	}
	var all []r
	for sa, x := range s.removed {
		if now.Sub(x.last) > s.history {
			forget(sa)
			continue
		}
		all = append(all, r{sa, x.last})
	}
	if keep := maxHistory * 7 / 8; len(all) > keep {
		sort.Slice(all, func(i, j int) bool { return all[i].t.Before(all[j].t) })
		for _, x := range all[:len(all)-keep] {
			forget(x.sa)
		}
	}
}

// clockSlack absorbs the kernel's per-jiffy timestamps (up to 10 ms at HZ=100)
// when a row's last packet is compared with a removal.
const clockSlack = 20 * time.Millisecond

// Verdict diagnoses an unknown-SPI row towards dst whose packets were seen from
// firstSeen to lastSeen, by the SA the program would have counted it in: the SPI
// at dst, or at any destination. Stale needs a packet after a removal: a row
// counted before its SA was installed (a rekey race) stays a rekey race when the
// rekeyed SA later goes. A row counted while a removed SA was gone stays stale
// when the SA comes back: it is no new SPI that the peer used early.
func (s *Set) Verdict(spi uint32, dst netip.Addr, firstSeen, lastSeen time.Time) string {
	if spi < 256 {
		return Reserved
	}
	lastSeen = later(lastSeen, firstSeen)
	keys := [2]maps.SA{keyOf(maps.SA{SPI: spi, Dst: dst}), {SPI: spi}}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		if r, ok := s.removed[k]; ok && s.now().Sub(r.last) <= s.history && lastSeen.Add(clockSlack).After(r.first) {
			return Stale // the peer went on using an SA we removed
		}
	}
	for _, k := range keys {
		if at, ok := s.addedAt[k]; ok && !at.Before(firstSeen) && at.Sub(firstSeen) <= s.grace {
			return RekeyRace // the peer used it just before we installed it
		}
	}
	return Unknown
}

func later(a, b time.Time) time.Time {
	if a.Before(b) {
		return b
	}
	return a
}

// SourcesOf lists the sources an SA came from, sorted; nil if none has it. A
// lookup in an index Update keeps, so every report can ask for every known SA. sa
// may be as the known-SA map gives it back (maps.ListKnown).
func (s *Set) SourcesOf(sa maps.SA) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.from[keyOf(sa)])
}

// keyOf is sa as the known-SA map stores it, so that an SA read back from the map
// finds its sources: an IPv4-mapped destination is IPv4, and :: is any destination
// (the map's key for both is all zeroes).
func keyOf(sa maps.SA) maps.SA {
	if sa.Dst.IsValid() && sa.Dst.As16() == ([16]byte{}) {
		return maps.SA{SPI: sa.SPI}
	}
	return maps.SA{SPI: sa.SPI, Dst: sa.Dst.WithZone("").Unmap()}
}

// Len is the number of distinct known SAs.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.current)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
