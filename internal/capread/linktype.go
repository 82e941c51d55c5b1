// SPDX-License-Identifier: Apache-2.0

package capread

import (
	"encoding/binary"
	"fmt"
	"strconv"
)

// LinkType is a pcap/pcapng LINKTYPE_ value. gopacket's layers.LinkType is
// a uint8 in v1.1.19 and cannot hold values above 255, such as
// LINKTYPE_LINUX_SLL2 (276), so capread keeps its own type.
type LinkType uint32

// The link types capread converts to Ethernet.
const (
	LinkTypeNull     LinkType = 0   // BSD loopback, address family in host order
	LinkTypeEthernet LinkType = 1   // Ethernet, passed through
	LinkTypeRawDLT12 LinkType = 12  // DLT_RAW as written by most systems
	LinkTypeRawDLT14 LinkType = 14  // DLT_RAW as written by OpenBSD
	LinkTypeRaw      LinkType = 101 // raw IPv4 or IPv6, by the version nibble
	LinkTypeLoop     LinkType = 108 // OpenBSD loopback, address family in network order
	LinkTypeLinuxSLL LinkType = 113 // Linux cooked capture v1, 16-byte header
	LinkTypeIPv4     LinkType = 228 // raw IPv4
	LinkTypeIPv6     LinkType = 229 // raw IPv6
	LinkTypeSLL2     LinkType = 276 // Linux cooked capture v2, 20-byte header
)

// linkTypeNames names the link types people are likely to meet, for error
// messages.
var linkTypeNames = map[LinkType]string{
	LinkTypeNull:     "BSD loopback",
	LinkTypeEthernet: "Ethernet",
	6:                "IEEE 802.5 Token Ring",
	8:                "SLIP",
	9:                "PPP",
	10:               "FDDI",
	LinkTypeRawDLT12: "raw IP",
	LinkTypeRawDLT14: "raw IP",
	50:               "PPP in HDLC framing",
	51:               "PPPoE",
	LinkTypeRaw:      "raw IP",
	104:              "Cisco HDLC",
	105:              "IEEE 802.11",
	107:              "Frame Relay",
	LinkTypeLoop:     "OpenBSD loopback",
	LinkTypeLinuxSLL: "Linux cooked v1 (SLL)",
	117:              "OpenBSD pflog",
	119:              "IEEE 802.11 with Prism header",
	127:              "IEEE 802.11 with radiotap header",
	143:              "DOCSIS",
	187:              "Bluetooth HCI H4",
	189:              "Linux USB",
	192:              "IEEE 802.11 with PPI header",
	195:              "IEEE 802.15.4",
	197:              "Endace ERF",
	201:              "Bluetooth HCI H4 with pseudo-header",
	220:              "Linux USB (memory-mapped)",
	227:              "SocketCAN",
	LinkTypeIPv4:     "raw IPv4",
	LinkTypeIPv6:     "raw IPv6",
	231:              "D-Bus",
	239:              "Linux netfilter log (NFLOG)",
	249:              "USBPcap",
	253:              "Linux netlink",
	LinkTypeSLL2:     "Linux cooked v2 (SLL2)",
}

// String returns the link type's name, or its number when capread does not
// know it.
func (t LinkType) String() string {
	if n, ok := linkTypeNames[t]; ok {
		return n
	}
	return strconv.FormatUint(uint64(t), 10)
}

// describe returns "105 (IEEE 802.11)", or "4711" for an unnamed link type.
func (t LinkType) describe() string {
	if n, ok := linkTypeNames[t]; ok {
		return fmt.Sprintf("%d (%s)", uint32(t), n)
	}
	return strconv.FormatUint(uint64(t), 10)
}

// Supported reports whether ToEthernet (and so Reader.Next) can convert
// frames of this link type.
func (t LinkType) Supported() bool {
	switch t {
	case LinkTypeNull, LinkTypeEthernet, LinkTypeRawDLT12, LinkTypeRawDLT14, LinkTypeRaw,
		LinkTypeLoop, LinkTypeLinuxSLL, LinkTypeIPv4, LinkTypeIPv6, LinkTypeSLL2:
		return true
	}
	return false
}

// supportedHint ends the error for an unsupported link type.
const supportedHint = "spiwatch reads Ethernet, raw IP, Linux cooked (SLL, SLL2) and BSD loopback captures"

// EtherTypes put in the built Ethernet header.
const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	// etherTypeMin is the smallest EtherType; smaller SLL protocol values
	// are 802.3 lengths or Linux-internal protocol numbers.
	etherTypeMin = 0x0600
)

// BSD address families found in DLT_NULL and DLT_LOOP headers.
const (
	afInet         = 2
	afInet6Linux   = 10
	afInet6BSD     = 24 // NetBSD, OpenBSD
	afInet6FreeBSD = 28
	afInet6Darwin  = 30
)

// Link-layer header lengths of the converted link types.
const (
	ethHeaderLen  = 14
	nullHeaderLen = 4
	sllHeaderLen  = 16
	sll2HeaderLen = 20
)

// ToEthernet converts frame, captured with link type lt, to the Ethernet
// frame an XDP program would see: an Ethernet frame is returned as it is
// (frame itself, even if shorter than an Ethernet header); any other frame
// has its link-layer header replaced by a 14-byte Ethernet header with
// zero MAC addresses and the EtherType of the payload, built in buf's
// storage when it is large enough.
//
// The EtherType comes from the IP version nibble (LINKTYPE_RAW, DLT_RAW
// 12 and 14), the link type (LINKTYPE_IPV4, LINKTYPE_IPV6), the protocol
// field (Linux SLL and SLL2; an 802.1Q EtherType is kept, so the VLAN
// header that follows stays parsable), or the address family (BSD NULL in
// either byte order, LOOP in network order). A frame too short for its
// link-layer header, or whose protocol or family has no EtherType, is
// still converted, with EtherType 0 and only what follows the link-layer
// header; known is then false. Such frames are not dropped so that packet
// counts keep matching packet numbers; a classifier calls them other.
//
// err is set only for a link type that is not Supported.
func ToEthernet(buf []byte, lt LinkType, frame []byte) (eth []byte, known bool, err error) {
	if lt == LinkTypeEthernet {
		return frame, true, nil
	}
	et, hdr, err := etherType(lt, frame)
	if err != nil {
		return nil, false, err
	}
	var payload []byte
	if hdr <= len(frame) {
		payload = frame[hdr:]
	}
	eth = append(buf[:0], make([]byte, ethHeaderLen)...)
	binary.BigEndian.PutUint16(eth[12:], et)
	return append(eth, payload...), et != 0, nil
}

// etherType returns the EtherType of a non-Ethernet frame's payload (0 when
// unknown) and the length of its link-layer header.
func etherType(lt LinkType, frame []byte) (et uint16, hdr int, err error) {
	switch lt {
	case LinkTypeRaw, LinkTypeRawDLT12, LinkTypeRawDLT14:
		if len(frame) == 0 {
			return 0, 0, nil
		}
		switch frame[0] >> 4 {
		case 4:
			return etherTypeIPv4, 0, nil
		case 6:
			return etherTypeIPv6, 0, nil
		}
		return 0, 0, nil
	case LinkTypeIPv4:
		return etherTypeIPv4, 0, nil
	case LinkTypeIPv6:
		return etherTypeIPv6, 0, nil
	case LinkTypeLinuxSLL:
		if len(frame) < sllHeaderLen {
			return 0, sllHeaderLen, nil
		}
		return sllProtocol(binary.BigEndian.Uint16(frame[14:16])), sllHeaderLen, nil
	case LinkTypeSLL2:
		if len(frame) < sll2HeaderLen {
			return 0, sll2HeaderLen, nil
		}
		return sllProtocol(binary.BigEndian.Uint16(frame[0:2])), sll2HeaderLen, nil
	case LinkTypeNull, LinkTypeLoop:
		if len(frame) < nullHeaderLen {
			return 0, nullHeaderLen, nil
		}
		var fam uint32
		if lt == LinkTypeLoop {
			fam = binary.BigEndian.Uint32(frame)
		} else {
			// The word is in the capturing host's order; try both.
			fam = binary.LittleEndian.Uint32(frame)
			if fam > 0xffff {
				fam = binary.BigEndian.Uint32(frame)
			}
		}
		switch fam {
		case afInet:
			return etherTypeIPv4, nullHeaderLen, nil
		case afInet6Linux, afInet6BSD, afInet6FreeBSD, afInet6Darwin:
			return etherTypeIPv6, nullHeaderLen, nil
		}
		return 0, nullHeaderLen, nil
	}
	return 0, 0, errUnsupported(lt)
}

// sllProtocol maps an SLL protocol field to an EtherType: values below
// 0x0600 (802.3 frames, CAN, ...) have none.
func sllProtocol(p uint16) uint16 {
	if p < etherTypeMin {
		return 0
	}
	return p
}
