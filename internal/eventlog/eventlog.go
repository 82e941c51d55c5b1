// SPDX-License-Identifier: Apache-2.0

// Package eventlog writes one structured line per event, the way gateways log bad
// SPIs (FortiGate's "Received ESP packet with unknown SPI", ScreenOS's BAD SPI):
// logfmt or JSON, so journald and log shippers take it as is. Lines about the
// same SPI or the same peer are rate-limited, and each line says how many were
// held back since the previous one: nothing is dropped silently.
package eventlog

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/maps"
)

// Logger writes events.
type Logger struct {
	mu    sync.Mutex
	w     io.Writer
	json  bool
	every time.Duration
	now   func() time.Time

	lastICMP map[netip.Addr]time.Time // per reporter
	lastSPI  map[uint32]time.Time
	lastPeer map[netip.Addr]time.Time
	held     int // unknown-SPI lines held back since the last one written
	lastLine time.Time
	evicting bool // the unknown table was evicting at the last check
	lastEv   uint64
	tableSet bool // lastEv is a read: evictions before the first (pinned maps) are not news

	lastReplay map[maps.SA]time.Time // replay-suspect lines, at most one per SA every `every`
	heldReplay map[maps.SA]uint64    // replay suspects not yet written
}

// New makes a Logger writing format ("logfmt" or "json") to w, at most one line
// per SPI and per peer every `every`.
func New(w io.Writer, format string, every time.Duration) (*Logger, error) {
	if format != "logfmt" && format != "json" {
		return nil, fmt.Errorf("--log-format %q: want logfmt or json", format)
	}
	return &Logger{w: w, json: format == "json", every: every, now: time.Now,
		lastSPI: map[uint32]time.Time{}, lastPeer: map[netip.Addr]time.Time{}, lastICMP: map[netip.Addr]time.Time{},
		lastReplay: map[maps.SA]time.Time{}, heldReplay: map[maps.SA]uint64{}}, nil
}

// kv is one field of a line, in order.
type kv struct {
	k string
	v any
}

func (l *Logger) write(level, event, msg string, fields ...kv) {
	all := append([]kv{{"time", l.now().UTC().Format(time.RFC3339Nano)}, {"level", level}, {"event", event}, {"msg", msg}}, fields...)
	var b strings.Builder
	if l.json {
		b.WriteByte('{')
		for i, f := range all {
			if i > 0 {
				b.WriteByte(',')
			}
			k, _ := json.Marshal(f.k)
			v, _ := json.Marshal(f.v)
			b.Write(k)
			b.WriteByte(':')
			b.Write(v)
		}
		b.WriteString("}\n")
	} else {
		for i, f := range all {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(f.k)
			b.WriteByte('=')
			b.WriteString(logfmtValue(fmt.Sprint(f.v)))
		}
		b.WriteByte('\n')
	}
	io.WriteString(l.w, b.String())
	l.lastLine = l.now()
}

// decimal2 is a rate given to two decimals: 1.50 in logfmt, the number 1.5 in
// JSON, where a rate in quotes would be a string.
type decimal2 float64

func (d decimal2) String() string { return strconv.FormatFloat(float64(d), 'f', 2, 64) }

func (d decimal2) MarshalJSON() ([]byte, error) {
	return strconv.AppendFloat(nil, math.Round(float64(d)*100)/100, 'f', -1, 64), nil
}

// logfmtValue quotes a value when it holds spaces, quotes, equals signs or
// anything unprintable (escaped then: no forged line, no terminal escape).
func logfmtValue(s string) string {
	if s == "" || strings.ContainsAny(s, " \"=") || strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

// UnknownSPI logs a row that appeared in the unknown-SPI table, unless a line for
// the same SPI or the same peer was written less than `every` ago; held_back says
// how many such lines were held back since the previous one.
func (l *Logger) UnknownSPI(u report.UnknownRow) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.Sub(l.lastSPI[u.SPI]) < l.every || now.Sub(l.lastPeer[u.Src]) < l.every {
		l.held++
		return
	}
	l.lastSPI[u.SPI], l.lastPeer[u.Src] = now, now
	msg, level := "Received ESP packet with unknown SPI", "warn"
	switch u.Verdict {
	case "reserved":
		msg = "Received ESP packet with reserved SPI (0-255, never valid)"
	case report.Collision:
		msg = "Received ESP packets with one unknown SPI from more than one source (NAT SPI collision)"
	}
	fields := []kv{{"spi", fmt.Sprintf("0x%08x", u.SPI)}, {"src", u.Src.String()}, {"sport", u.SrcPort},
		{"dst", u.Dst.String()}, {"dport", u.DstPort}, {"iface", u.Iface}, {"seq", u.LastSeq},
		{"packets", u.Packets}, {"verdict", u.Verdict}}
	if len(u.Sources) > 0 {
		fields = append(fields, kv{"sources", report.SourcesString(u.Sources)})
	}
	l.write(level, "unknown_spi", msg, append(fields, kv{"held_back", l.held})...)
	l.held = 0
	l.forget(now)
}

// forget drops rate-limit state older than the window, so that a flood of random
// SPIs does not grow it without bound.
func (l *Logger) forget(now time.Time) {
	if len(l.lastSPI) < 4096 {
		return
	}
	for k, t := range l.lastSPI {
		if now.Sub(t) >= l.every {
			delete(l.lastSPI, k)
		}
	}
	for k, t := range l.lastPeer {
		if now.Sub(t) >= l.every {
			delete(l.lastPeer, k)
		}
	}
}

// Table logs when the unknown table starts evicting rows (and when it starts
// again after a quiet interval). Called once per report, it also writes how many
// unknown-SPI lines the rate limit held back, once no line has said so for a
// window.
func (l *Logger) Table(t maps.TableStats) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held > 0 && l.now().Sub(l.lastLine) >= l.every {
		l.write("info", "lines_held_back", "Unknown-SPI lines held back by the rate limit (--log-every)", kv{"held_back", l.held})
		l.held = 0
	}
	if !l.tableSet {
		l.tableSet, l.lastEv = true, t.Evictions
	}
	evicting := t.Evictions > l.lastEv
	if evicting && !l.evicting {
		l.write("warn", "table_evicting", "Unknown-SPI table full: evicting the least recently seen rows with their counts",
			kv{"entries", t.Entries}, kv{"capacity", t.Capacity}, kv{"evictions", t.Evictions})
	}
	l.evicting, l.lastEv = evicting, t.Evictions
}

// Interface logs that a watched interface stopped being watched.
func (l *Logger) Interface(name, problem string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.write("error", "interface_lost", "Interface no longer watched", kv{"iface", name}, kv{"problem", problem})
}

// InterfaceChange logs a change of a watched interface that leaves it watched:
// link down or up, renamed, back after --wait-iface.
func (l *Logger) InterfaceChange(name, change string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.write("warn", "interface_change", "Interface changed, still watched", kv{"iface", name}, kv{"change", change})
}

// VerdictChange logs a row whose verdict changed, e.g. an unknown SPI that became
// a rekey race when its SA was installed, or stale.
func (l *Logger) VerdictChange(u report.UnknownRow, from string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.write("info", "verdict_change", "Unknown-SPI verdict changed",
		kv{"spi", fmt.Sprintf("0x%08x", u.SPI)}, kv{"src", u.Src.String()}, kv{"sport", u.SrcPort},
		kv{"dst", u.Dst.String()}, kv{"dport", u.DstPort}, kv{"iface", u.Iface}, kv{"from", from}, kv{"verdict", u.Verdict},
		kv{"packets", u.Packets}, kv{"sources", report.SourcesString(u.Sources)})
}

// SourceSync logs that a known-SA source was read again.
func (l *Logger) SourceSync(source string, sas int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.write("info", "source_sync", "Known SAs reloaded", kv{"source", source}, kv{"sas", sas})
}

// SourceError logs that a known-SA source failed; the previous SAs stay.
func (l *Logger) SourceError(source string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.write("error", "source_error", "Known-SA source failed; keeping the previous SAs", kv{"source", source}, kv{"error", err.Error()})
}

// SourceNotice logs what a known-SA source did besides reading: connected,
// lost its connection and retries, re-read everything after lost events.
func (l *Logger) SourceNotice(source, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.write("info", "source_notice", msg, kv{"source", source})
}

// HeldBack counts n unknown-SPI lines that were never offered (the reporter's own
// cap under a flood), so the next line's held_back includes them.
func (l *Logger) HeldBack(n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held += n
}

// ICMPError logs a row that appeared in the ICMP-error table: an ICMP or ICMPv6
// error quoting ESP, e.g. fragmentation needed on our own tunnel traffic, or a
// peer's port unreachable for ESP-in-UDP. At most one line per reporter every
// `every`; held back lines count in held_back like unknown-SPI ones.
func (l *Logger) ICMPError(e report.ICMPRow) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.Sub(l.lastICMP[e.Reporter]) < l.every {
		l.held++
		return
	}
	if len(l.lastICMP) >= 4096 {
		for k, t := range l.lastICMP {
			if now.Sub(t) >= l.every {
				delete(l.lastICMP, k)
			}
		}
	}
	l.lastICMP[e.Reporter] = now
	name := classify.ICMPTypeName(e.Family, e.Type, e.Code)
	msg := "Received ICMP error about ESP" + icmpCause(e.ICMPError)
	spi := report.ICMPSPI(e.ICMPError)
	l.write("warn", "icmp_esp", msg, kv{"reporter", e.Reporter.String()}, kv{"error", name},
		kv{"family", report.ICMPFamily(e.Family)}, kv{"type", e.Type}, kv{"code", e.Code}, kv{"quote", e.Quote.String()},
		kv{"spi", spi}, kv{"src", e.Src.String()}, kv{"sport", e.SrcPort}, kv{"dst", e.Dst.String()}, kv{"dport", e.DstPort},
		kv{"mtu", e.MTU}, kv{"iface", e.Iface}, kv{"known_sa", e.KnownSA}, kv{"packets", e.Packets}, kv{"held_back", l.held})
	l.held = 0
}

// icmpCause is what an ICMP error about ESP likely means (docs/DIAGNOSIS.md),
// ": ..." or "". Only ESP-in-UDP has a port, the NAT-T socket the peer's IKE
// daemon owns; a port unreachable about plain ESP comes from a firewall that
// rejects it (iptables REJECT answers port unreachable for any protocol).
func icmpCause(e classify.ICMPError) string {
	v4, v6 := e.Family == 4 && e.Type == 3, e.Family == 6 && e.Type == 1 // destination unreachable
	switch {
	case e.Family == 4 && e.Type == 3 && e.Code == 4, e.Family == 6 && e.Type == 2:
		return ": path MTU smaller than our ESP packets"
	case e.Quote != classify.QuoteESP && (v4 && e.Code == 3 || v6 && e.Code == 4):
		return ": port unreachable (is the peer's IKE daemon running?)"
	case e.Quote == classify.QuoteESP && (v4 && slices.Contains([]uint8{2, 3, 9, 10, 13}, e.Code) ||
		v6 && slices.Contains([]uint8{1, 4, 5, 6}, e.Code)):
		return ": the peer, or a firewall in front of it, refuses our ESP"
	}
	return ""
}

// IKEInitStorm logs a peer whose IKE_SA_INIT request rate went above
// --ike-init-rate: it retries IKE in a loop (failing authentication, proposals
// the gateway refuses, a lost response path). Not rate-limited: the reporter
// says so only when the rate goes above again after it was below.
func (l *Logger) IKEInitStorm(st report.IKEInitStorm) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.write("warn", "ike_init_storm", "Peer retries IKE_SA_INIT above --ike-init-rate",
		kv{"peer", st.Peer.String()}, kv{"iface", st.Iface}, kv{"rate", decimal2(st.Rate)},
		kv{"window", report.IKEInitWindow.String()}, kv{"requests", st.Requests})
}

// KnownSA logs what a report found about a known SA: a collision (error: someone
// else's traffic lands in the SA), a sequence restart, or replay suspects (at most
// one line per SA every `every`; the line counts those held back).
func (l *Logger) KnownSA(e report.KnownEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := e.Row
	spi, dst := fmt.Sprintf("0x%08x", k.SPI), "any"
	if k.Dst.IsValid() {
		dst = k.Dst.String()
	}
	switch e.What {
	case "collision":
		l.write("error", "sa_collision", "Known SA receives ESP from more than one source: another peer's traffic lands in it (NAT SPI collision), or the peer moved",
			kv{"spi", spi}, kv{"dst", dst}, kv{"sources", report.SourcesString(k.ActiveSources)}, kv{"other_source_packets", k.OtherPackets},
			kv{"packets", k.Packets})
	case "restart":
		l.write("warn", "sa_restart", "ESP sequence numbers of a known SA started again from a low number: the peer made a new SA with an SPI still held",
			kv{"spi", spi}, kv{"dst", dst}, kv{"restarts", k.Seq.Restarts}, kv{"new", e.New}, kv{"highest_seq", k.MaxSeq})
	case "replay":
		now := l.now()
		l.heldReplay[k.SA] += e.New
		if now.Sub(l.lastReplay[k.SA]) < l.every {
			return
		}
		l.write("warn", "sa_replay_suspect", "Known SA received packets far behind its highest sequence number (replays or a duplicated path)",
			kv{"spi", spi}, kv{"dst", dst}, kv{"new", l.heldReplay[k.SA]}, kv{"replay_suspect", k.Seq.Replays}, kv{"highest_seq", k.MaxSeq})
		l.lastReplay[k.SA] = now
		delete(l.heldReplay, k.SA)
		if len(l.lastReplay) > 4096 {
			for sa, t := range l.lastReplay {
				if now.Sub(t) >= l.every && l.heldReplay[sa] == 0 {
					delete(l.lastReplay, sa)
				}
			}
		}
	}
}
