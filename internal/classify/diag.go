// SPDX-License-Identifier: Apache-2.0

package classify

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Quote says what an icmp-esp error quotes (enum sw_quote).
type Quote uint8

// Quotes; the numbers are shared with the BPF program.
const (
	QuoteESP       Quote = 1 // ESP over IP: the SPI is quoted
	QuoteESPInUDP  Quote = 2 // ESP-in-UDP: the SPI is quoted
	QuoteNATTNoSPI Quote = 3 // UDP on a NAT-T port, long enough for ESP, quote ends before the SPI
)

// String names the quote for reports: "esp", "esp-in-udp", "natt-no-spi".
func (q Quote) String() string {
	switch q {
	case QuoteESP:
		return "esp"
	case QuoteESPInUDP:
		return "esp-in-udp"
	case QuoteNATTNoSPI:
		return "natt-no-spi"
	}
	return fmt.Sprintf("quote(%d)", uint8(q))
}

// ICMPError is what an icmp-esp error says about the ESP packet it quotes.
type ICMPError struct {
	Family     uint8 // 4: ICMP, 6: ICMPv6
	Type, Code uint8
	Quote      Quote
	SPI        uint32 // 0 for QuoteNATTNoSPI
	// Src and Dst are the quoted packet's addresses, SrcPort and DstPort its
	// UDP ports (0 for QuoteESP).
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	// MTU is the MTU an ICMP fragmentation-needed (type 3 code 4) or an
	// ICMPv6 packet-too-big (type 2) reports; 0 for the others.
	MTU uint32
}

// ICMPTypeName names an ICMP (family 4) or ICMPv6 (family 6) error type and code
// the way engineers say them: "frag-needed", "port-unreachable", "packet-too-big".
func ICMPTypeName(family, typ, code uint8) string {
	if family == 4 {
		switch typ {
		case 3:
			if n, ok := map[uint8]string{0: "net-unreachable", 1: "host-unreachable", 2: "protocol-unreachable",
				3: "port-unreachable", 4: "frag-needed", 9: "net-prohibited", 10: "host-prohibited",
				13: "admin-prohibited"}[code]; ok {
				return n
			}
			return fmt.Sprintf("unreachable/%d", code)
		case 11:
			return fmt.Sprintf("time-exceeded/%d", code)
		case 12:
			return fmt.Sprintf("parameter-problem/%d", code)
		}
		return fmt.Sprintf("icmp %d/%d", typ, code)
	}
	switch typ {
	case 1:
		if n, ok := map[uint8]string{0: "no-route", 1: "admin-prohibited", 3: "address-unreachable",
			4: "port-unreachable", 5: "policy-failed", 6: "reject-route"}[code]; ok {
			return n
		}
		return fmt.Sprintf("unreachable/%d", code)
	case 2:
		return "packet-too-big"
	case 3:
		return fmt.Sprintf("time-exceeded/%d", code)
	case 4:
		return fmt.Sprintf("parameter-problem/%d", code)
	}
	return fmt.Sprintf("icmpv6 %d/%d", typ, code)
}

const (
	icmpHdrLen = 8
	// ikeHdrLen is the IKEv1 and IKEv2 header (RFC 2408 3.1, RFC 7296 3.1).
	ikeHdrLen = 28
)

// classifyICMP follows "ICMP errors quoting ESP": icmp-esp, or other.
func classifyICMP(l l3, cfg *Config, r *Result) {
	r.Class = ClassOther
	b := l.l4
	if l.badLen || len(b) < icmpHdrLen {
		return
	}
	e := ICMPError{Family: l.family, Type: b[0], Code: b[1]}
	q := b[icmpHdrLen:]
	if l.family == 4 {
		if e.Type != 3 && e.Type != 11 && e.Type != 12 {
			return
		}
		if e.Type == 3 && e.Code == 4 {
			e.MTU = uint32(binary.BigEndian.Uint16(b[6:8]))
		}
		if len(q) < ipv4MinHdrLen || q[0]>>4 != 4 {
			return
		}
		hl := int(q[0]&0x0f) * 4
		if hl < ipv4MinHdrLen || hl > len(q) {
			return
		}
		if binary.BigEndian.Uint16(q[6:8])&0x1fff != 0 {
			return // a later fragment quotes no SPI
		}
		e.Src = netip.AddrFrom4([4]byte(q[12:16]))
		e.Dst = netip.AddrFrom4([4]byte(q[16:20]))
		proto := q[9]
		q = q[hl:]
		if !quoted(proto, q, cfg, &e) {
			return
		}
	} else {
		if e.Type < 1 || e.Type > 4 {
			return
		}
		if e.Type == 2 {
			e.MTU = binary.BigEndian.Uint32(b[4:8])
		}
		if len(q) < ipv6HdrLen || q[0]>>4 != 6 {
			return
		}
		e.Src = netip.AddrFrom16([16]byte(q[8:24]))
		e.Dst = netip.AddrFrom16([16]byte(q[24:40]))
		nh := q[6] // extension headers in the quote are not walked
		if !quoted(nh, q[ipv6HdrLen:], cfg, &e) {
			return
		}
	}
	r.Class = ClassICMPESP
	r.ICMP = e
}

// quoted reads the quoted transport header (ESP or UDP) into e; false: not ESP.
func quoted(proto uint8, q []byte, cfg *Config, e *ICMPError) bool {
	switch proto {
	case protoESP:
		if len(q) < 4 {
			return false
		}
		e.Quote, e.SPI = QuoteESP, binary.BigEndian.Uint32(q)
		return true
	case protoUDP:
		if len(q) < udpHdrLen {
			return false
		}
		sp, dp := binary.BigEndian.Uint16(q[0:2]), binary.BigEndian.Uint16(q[2:4])
		if sp == IKEPort || dp == IKEPort || !cfg.isNATT(sp) && !cfg.isNATT(dp) {
			return false
		}
		e.SrcPort, e.DstPort = sp, dp
		if len(q) >= udpHdrLen+4 {
			spi := binary.BigEndian.Uint32(q[udpHdrLen:])
			if spi == 0 {
				return false // the non-ESP marker: quoted IKE
			}
			e.Quote, e.SPI = QuoteESPInUDP, spi
			return true
		}
		// RFC 792's 8 bytes: the UDP header only. ESP-in-UDP if the datagram
		// had room for an ESP header.
		if int(binary.BigEndian.Uint16(q[4:6])) <= udpHdrLen+espHdrLen {
			return false
		}
		e.Quote = QuoteNATTNoSPI
		return true
	}
	return false
}

// IKEExchange is the kind of an IKE exchange as counted (enum sw_ike_exchange).
type IKEExchange uint8

// Exchanges; the numbers are shared with the BPF program.
const (
	IKEOther IKEExchange = iota
	IKESAInit
	IKEAuth
	IKECreateChildSA
	IKEInformational
	IKEMain
	IKEAggressive
	IKEQuick
	IKEMalformed

	// NumIKEExchanges is the number of exchange kinds.
	NumIKEExchanges = 9
)

var ikeExchangeNames = [NumIKEExchanges]string{
	"other", "IKE_SA_INIT", "IKE_AUTH", "CREATE_CHILD_SA", "INFORMATIONAL", "main", "aggressive", "quick", "malformed",
}

// String names the exchange: IKEv2 exchanges in RFC 7296's capitals, IKEv1
// modes in lower case ("main", "quick"), "other", "malformed".
func (x IKEExchange) String() string {
	if int(x) < len(ikeExchangeNames) {
		return ikeExchangeNames[x]
	}
	return fmt.Sprintf("exchange(%d)", uint8(x))
}

// Name is String, with IKEv1's informational exchange in lower case like its
// other modes.
func (x IKEExchange) Name(version uint8) string {
	if x == IKEInformational && version == 1 {
		return "informational"
	}
	return x.String()
}

// IKEDir is request, response, or not said (enum sw_ike_dir).
type IKEDir uint8

// Directions; IKEv1 headers carry none.
const (
	IKERequest IKEDir = iota
	IKEResponse
	IKENoDir
)

// String is "request", "response" or "-".
func (d IKEDir) String() string {
	switch d {
	case IKERequest:
		return "request"
	case IKEResponse:
		return "response"
	}
	return "-"
}

// IKEHeader is the IKE header of an ike frame.
type IKEHeader struct {
	Version  uint8 // major version; 0 when malformed
	Exchange IKEExchange
	Dir      IKEDir
	// The header's fields as sent (zero when malformed).
	ExchangeType, Flags, NextPayload uint8
	ISPI, RSPI                       uint64
	MsgID                            uint32
}

// ikeFlagResponse is IKEv2's R flag (RFC 7296 3.1).
const ikeFlagResponse = 0x20

// readIKE reads the IKE header at the start of b (after any non-ESP marker).
func readIKE(b []byte) IKEHeader {
	if len(b) < ikeHdrLen {
		return IKEHeader{Exchange: IKEMalformed, Dir: IKENoDir}
	}
	h := IKEHeader{
		Version: b[17] >> 4, ExchangeType: b[18], Flags: b[19], NextPayload: b[16],
		ISPI: binary.BigEndian.Uint64(b[0:8]), RSPI: binary.BigEndian.Uint64(b[8:16]),
		MsgID: binary.BigEndian.Uint32(b[20:24]),
	}
	h.Exchange = ikeExchangeOf(h.Version, h.ExchangeType)
	switch {
	case h.Version != 2:
		h.Dir = IKENoDir
	case h.Flags&ikeFlagResponse != 0:
		h.Dir = IKEResponse
	default:
		h.Dir = IKERequest
	}
	return h
}

func ikeExchangeOf(major, t uint8) IKEExchange {
	switch major {
	case 2:
		if t >= 34 && t <= 37 {
			return IKEExchange(t-34) + IKESAInit
		}
	case 1:
		switch t {
		case 2:
			return IKEMain
		case 4:
			return IKEAggressive
		case 5:
			return IKEInformational
		case 32:
			return IKEQuick
		}
	}
	return IKEOther
}
