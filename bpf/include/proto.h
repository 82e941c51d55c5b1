/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Minimal wire formats of the headers we parse. Own definitions, so nothing depends
 * on the host's linux/ or asm/ headers. Fields are in network byte order. */
#ifndef SPIWATCH_PROTO_H
#define SPIWATCH_PROTO_H

#include "bpf_defs.h"

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8

#define IPPROTO_HOPOPTS 0
#define IPPROTO_ICMP 1
#define IPPROTO_UDP 17
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_ESP 50
#define IPPROTO_ICMPV6 58
#define IPPROTO_DSTOPTS 60

#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF
#define IP6_MF 0x0001
#define IP6_OFFSET 0xFFF8

#define IKE_PORT 500

struct ethhdr {
	__u8 h_dest[6];
	__u8 h_source[6];
	__be16 h_proto;
} __attribute__((packed));

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* Version and IHL are read from ver_ihl by shifting, not with bitfields, so the
 * layout does not depend on the compiler's bitfield order. */
struct iphdr {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__be16 check;
	__be32 saddr;
	__be32 daddr;
};

struct ipv6hdr {
	__be32 ver_tc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* hop-by-hop, routing and destination options share this start */
struct ipv6_opt_hdr {
	__u8 nexthdr;
	__u8 hdrlen; /* in 8-byte units, not counting the first 8 */
};

struct ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset << 3 | M */
	__be32 identification;
};

struct udphdr {
	__be16 source;
	__be16 dest;
	__be16 len;
	__be16 check;
};

struct esp_hdr {
	__be32 spi;
	__be32 seq;
};

/* ICMP and ICMPv6 share this 8-byte start; the quoted packet follows it. */
struct icmp_hdr {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be32 rest; /* ICMP type 3 code 4: unused16, next-hop MTU16; ICMPv6 type 2: MTU32 */
};

/* IKEv1 (RFC 2408 3.1) and IKEv2 (RFC 7296 3.1) share this header. */
struct ike_hdr {
	__u8 ispi[8]; /* byte arrays: the header is 28 bytes, not padded to 32 */
	__u8 rspi[8];
	__u8 next_payload;
	__u8 version; /* major << 4 | minor */
	__u8 exchange;
	__u8 flags;
	__be32 msgid;
	__be32 length;
};

#define IKE_FLAG_RESPONSE 0x20 /* IKEv2 */

#endif /* SPIWATCH_PROTO_H */
