/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Frame parsing for the classifier: the procedure of docs/CLASSES.md, step by step.
 * Positions are scalar offsets from the frame start, so length arithmetic is plain
 * integer math; every byte read is guarded by a check against data_end as well. */
#ifndef SPIWATCH_PARSING_H
#define SPIWATCH_PARSING_H

#include "include/bpf_defs.h"
#include "include/proto.h"
#include "spiwatch.h"

/* Load-time settings (set from Go before loading; read-only for the verifier, so
 * unused ports and branches cost nothing). */
volatile const __u16 natt_ports[MAX_NATT_PORTS] = {4500};
volatile const __u32 natt_port_count = 1;

/* What the classifier learnt about an esp or esp-in-udp frame; every field is set
 * for those two classes (and only read for them), so it needs no zeroing per
 * packet. Addresses are
 * copied out of the packet here, so that the code after classify() depends on no
 * packet offset: the verifier then sees the same state whatever the path through
 * the headers was (VLAN depth, IPv4 options, IPv6 extensions) and prunes, instead
 * of verifying the lookups once per path. */
struct pkt {
	__u8 daddr[16]; /* first: 8-byte aligned, compared as two words */
	__u8 saddr[16]; /* IPv6 or IPv4-mapped */
	__u32 spi;
	__u32 seq;
	__u16 sport;
	__u16 dport;
	/* For ike: where the IKE header starts and how many message bytes there
	 * are. For SW_PARSE_ICMP: where the ICMP header starts and how many bytes
	 * the IP packet holds from there (at most ICMP_AVAIL_MAX). Offsets are
	 * masked like the walk's, so every path reaches the readers with the same
	 * ranges. */
	__u32 off;
	__u32 avail;
	__u32 family; /* SW_PARSE_ICMP: 4 (ICMP) or 6 (ICMPv6) */
} __attribute__((aligned(8)));

/* An ICMP error is read no further than this past the ICMP header: an 8-byte
 * header, the longest quoted IPv4 header (60), UDP (8) and an SPI (4). */
#define ICMP_AVAIL_MAX 255

/* IPv4 addresses are keyed as IPv4-mapped IPv6 (::ffff:a.b.c.d). */
static __always_inline void addr_v4mapped(__u8 dst[16], __be32 a)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xFF;
	dst[11] = 0xFF;
	__builtin_memcpy(dst + 12, &a, 4);
}

static __always_inline int has_spi(int class)
{
	return class == SW_CLASS_ESP || class == SW_CLASS_ESP_IN_UDP;
}

/* Header offsets never reach 22 + 40 + 8 * 2048 bytes (two VLAN tags, IPv6, eight
 * extension headers), so masking an offset with this changes nothing. But it lets
 * the verifier see the same offset range whatever headers came before, and prune
 * instead of verifying the rest of the program once per combination. */
#define IPV6_WALK_MASK 0x7FFF

/* In asm, because clang proves the mask redundant and drops it. */
static __always_inline __u32 walk_mask(__u32 off)
{
	asm volatile("%0 &= %1" : "+r"(off) : "i"(IPV6_WALK_MASK));
	return off;
}

/* natt_pair says whether either port (host order) is a NAT-T port: the list's
 * length read once, each entry loaded once for both ports. */
static __always_inline int natt_pair(__u16 sport, __u16 dport)
{
	__u32 n = natt_port_count;
#pragma unroll
	for (__u32 i = 0; i < MAX_NATT_PORTS; i++) {
		if (i >= n)
			break;
		__u16 port = natt_ports[i];
		if (port == sport || port == dport)
			return 1;
	}
	return 0;
}

static __always_inline int is_ipv6_ext(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
	       nh == IPPROTO_FRAGMENT;
}

/* udp_ports_ipsec is false only for a UDP header wholly present whose ports are
 * neither IKE's nor NAT-T's: exactly the frames parse_l4 calls other for their
 * ports, decided before any other work. */
static __always_inline int udp_ports_ipsec(void *data, void *data_end, __u32 l4_off, __u32 l4_end)
{
	struct udphdr *udp = data + l4_off;
	if (l4_off + sizeof(*udp) > l4_end || (void *)(udp + 1) > data_end)
		return 1; /* let parse_l4 decide */
	__u16 sport = bpf_ntohs(udp->source), dport = bpf_ntohs(udp->dest);
	return sport == IKE_PORT || dport == IKE_PORT || natt_pair(sport, dport);
}

/* Layer 4 of CLASSES.md: ESP over IP, or UDP towards IKE / NAT-T ports. l4_end is
 * where the IP packet ends (the frame's end when its length field is bad). */
static __always_inline int parse_l4(void *data, void *data_end, __u8 proto, __u32 l4_off,
				    __u32 l4_end, int bad_len, int first_frag, struct pkt *p)
{
	__u32 present = l4_end > l4_off ? l4_end - l4_off : 0;

	if (proto == IPPROTO_ESP) {
		if (bad_len)
			return SW_CLASS_MALFORMED;
		if (present < sizeof(struct esp_hdr))
			return first_frag ? SW_CLASS_FRAGMENT : SW_CLASS_MALFORMED;
		struct esp_hdr *esp = data + l4_off;
		if ((void *)(esp + 1) > data_end)
			return SW_CLASS_MALFORMED;
		p->spi = bpf_ntohl(esp->spi);
		p->seq = bpf_ntohl(esp->seq);
		p->sport = 0;
		p->dport = 0;
		return SW_CLASS_ESP;
	}
	if (proto != IPPROTO_UDP)
		return SW_CLASS_OTHER;

	if (present < sizeof(struct udphdr))
		return first_frag ? SW_CLASS_FRAGMENT : SW_CLASS_OTHER;
	struct udphdr *udp = data + l4_off;
	if ((void *)(udp + 1) > data_end)
		return SW_CLASS_OTHER;
	__u16 sport = bpf_ntohs(udp->source);
	__u16 dport = bpf_ntohs(udp->dest);
	int ike = sport == IKE_PORT || dport == IKE_PORT;
	if (!ike && !natt_pair(sport, dport))
		return SW_CLASS_OTHER;
	if (bad_len)
		return SW_CLASS_MALFORMED;

	__u32 plen;
	if (!first_frag) {
		__u32 ulen = bpf_ntohs(udp->len);
		if (ulen < sizeof(struct udphdr) || ulen > present)
			return SW_CLASS_MALFORMED;
		plen = ulen - sizeof(struct udphdr);
	} else {
		plen = present - sizeof(struct udphdr);
	}
	p->sport = sport;
	p->dport = dport;
	if (ike) {
		p->off = walk_mask(l4_off + sizeof(*udp));
		p->avail = plen;
		return SW_CLASS_IKE;
	}

	__u8 *payload = (void *)(udp + 1);
	if (!first_frag && plen == 1) {
		if ((void *)(payload + 1) > data_end)
			return SW_CLASS_MALFORMED;
		if (payload[0] == 0xFF)
			return SW_CLASS_NAT_KEEPALIVE;
	}
	if (plen >= 4) {
		if ((void *)(payload + 4) > data_end)
			return SW_CLASS_MALFORMED;
		if (*(__u32 *)payload == 0) { /* non-ESP marker: IKE on a NAT-T port */
			p->off = walk_mask(l4_off + sizeof(*udp) + 4);
			p->avail = plen - 4;
			return SW_CLASS_IKE;
		}
		if (plen > sizeof(struct esp_hdr)) {
			struct esp_hdr *esp = (void *)payload;
			if ((void *)(esp + 1) > data_end)
				return SW_CLASS_MALFORMED;
			p->spi = bpf_ntohl(esp->spi);
			p->seq = bpf_ntohl(esp->seq);
			return SW_CLASS_ESP_IN_UDP;
		}
	}
	return first_frag ? SW_CLASS_FRAGMENT : SW_CLASS_MALFORMED;
}

/* An ICMP or ICMPv6 packet: remember where it starts for classify_icmp(), which
 * reads it only after classify() returns, so the paths through the outer headers
 * (VLAN depth, IPv4 options, IPv6 extensions) meet before it is verified. */
static __always_inline int icmp_candidate(struct pkt *p, __u32 l4_off, __u32 l4_end, __u32 family)
{
	__u32 avail = l4_end > l4_off ? l4_end - l4_off : 0;
	p->off = walk_mask(l4_off);
	p->avail = avail > ICMP_AVAIL_MAX ? ICMP_AVAIL_MAX : avail;
	p->family = family;
	return SW_PARSE_ICMP;
}

static __always_inline int parse_ipv4(void *data, void *data_end, __u32 off, __u32 len,
				      struct pkt *p)
{
	struct iphdr *ip = data + off;
	if ((void *)(ip + 1) > data_end)
		return SW_CLASS_OTHER;
	if ((ip->ver_ihl >> 4) != 4)
		return SW_CLASS_OTHER;

	__u32 avail = len - off;
	__u32 hlen = (ip->ver_ihl & 0x0F) * 4;
	if (hlen < sizeof(struct iphdr) || hlen > avail)
		return ip->protocol == IPPROTO_ESP ? SW_CLASS_MALFORMED : SW_CLASS_OTHER;

	__u16 frag = bpf_ntohs(ip->frag_off);
	if (frag & IP_OFFSET)
		return SW_CLASS_FRAGMENT;

	__u32 tot = bpf_ntohs(ip->tot_len);
	int bad_len = tot < hlen || tot > avail;
	__u8 proto = ip->protocol;
	if (proto != IPPROTO_ESP && proto != IPPROTO_UDP) {
		if (proto != IPPROTO_ICMP || bad_len)
			return SW_CLASS_OTHER;
		addr_v4mapped(p->saddr, ip->saddr); /* the reporter */
		return icmp_candidate(p, off + hlen, off + tot, 4);
	}
	if (proto == IPPROTO_UDP && !udp_ports_ipsec(data, data_end, off + hlen,
						     bad_len ? len : off + tot))
		return SW_CLASS_OTHER; /* plain UDP pays for nothing more */
	/* Copied now so the header pointer is dead below (see struct pkt). */
	addr_v4mapped(p->saddr, ip->saddr);
	addr_v4mapped(p->daddr, ip->daddr);
	return parse_l4(data, data_end, proto, walk_mask(off + hlen), bad_len ? len : off + tot,
			bad_len, frag & IP_MF, p);
}

static __always_inline int parse_ipv6(void *data, void *data_end, __u32 off, __u32 len,
				      struct pkt *p)
{
	struct ipv6hdr *ip6 = data + off;
	if ((void *)(ip6 + 1) > data_end)
		return SW_CLASS_OTHER;
	if ((*(__u8 *)ip6 >> 4) != 6)
		return SW_CLASS_OTHER;

	__u32 avail = len - off;
	__u32 total = sizeof(struct ipv6hdr) + bpf_ntohs(ip6->payload_len);
	int bad_len = total > avail;
	__u32 l3_end = bad_len ? len : off + total;
	__u32 cur = off + sizeof(struct ipv6hdr);
	__u8 nh = ip6->nexthdr;
	int first_frag = 0;

	/* Copied before the walk so the header pointer is dead afterwards (see struct
	 * pkt); two 16-byte copies cost less than verifying the walk per VLAN depth. */
	__builtin_memcpy(p->saddr, ip6->saddr, 16);
	__builtin_memcpy(p->daddr, ip6->daddr, 16);

	/* A bounded walk; a longer chain fails closed below. */
#pragma unroll
	for (int i = 0; i < MAX_IPV6_EXT; i++) {
		if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS) {
			struct ipv6_opt_hdr *oh = data + cur;
			if (cur + sizeof(*oh) > l3_end || (void *)(oh + 1) > data_end)
				return SW_CLASS_OTHER;
			nh = oh->nexthdr;
			cur = walk_mask(cur + (oh->hdrlen + 1) * 8);
		} else if (nh == IPPROTO_FRAGMENT) {
			struct ipv6_frag_hdr *fh = data + cur;
			if (cur + sizeof(*fh) > l3_end || (void *)(fh + 1) > data_end)
				return SW_CLASS_OTHER;
			__u16 fo = bpf_ntohs(fh->frag_off);
			if (fo & IP6_OFFSET)
				return SW_CLASS_FRAGMENT;
			if (fo & IP6_MF)
				first_frag = 1;
			nh = fh->nexthdr;
			cur = walk_mask(cur + sizeof(*fh));
		} else {
			break;
		}
	}
	if (is_ipv6_ext(nh))
		return SW_CLASS_MALFORMED; /* more than MAX_IPV6_EXT extension headers */
	if (nh == IPPROTO_ICMPV6)
		return bad_len ? SW_CLASS_OTHER : icmp_candidate(p, cur, l3_end, 6);

	return parse_l4(data, data_end, nh, cur, l3_end, bad_len, first_frag, p);
}

/* common_ports decides a UDP datagram of the common shape by its ports, before
 * anything else is read: other, IKE (the full walk), or a NAT-T candidate
 * (SW_CLASS_ESP_IN_UDP, ports in p). */
static __always_inline int common_ports(struct udphdr *udp, struct pkt *p)
{
	__u16 sport = bpf_ntohs(udp->source);
	__u16 dport = bpf_ntohs(udp->dest);
	if (sport == IKE_PORT || dport == IKE_PORT)
		return SW_PARSE_FULL;
	if (!natt_pair(sport, dport))
		return SW_CLASS_OTHER;
	p->sport = sport;
	p->dport = dport;
	return SW_CLASS_ESP_IN_UDP;
}

/* common_spi reads the SPI and sequence of an esp frame, or of an esp-in-udp one
 * whose ports common_ports passed, with plen bytes of IP payload at l4, all in
 * the first buffer (l4 + 2 words checked by the caller). */
static __always_inline int common_spi(void *data_end, __u32 class, __be32 *l4, __u32 plen, struct pkt *p)
{
	struct esp_hdr *esp = (void *)l4;
	if (class == SW_CLASS_ESP_IN_UDP) {
		struct udphdr *udp = (void *)l4;
		/* RFC 3948's test, with the UDP length inside the IP packet's */
		__u32 ulen = bpf_ntohs(udp->len);
		esp = (void *)(udp + 1);
		if (ulen <= sizeof(*udp) + sizeof(*esp) || ulen > plen || (void *)(esp + 1) > data_end ||
		    esp->spi == 0)
			return SW_PARSE_FULL;
	} else {
		if (plen < sizeof(*esp))
			return SW_PARSE_FULL;
		p->sport = 0;
		p->dport = 0;
	}
	p->spi = bpf_ntohl(esp->spi);
	p->seq = bpf_ntohl(esp->seq);
	return class;
}

/* classify_common decides the frames of the common shape, untagged IPv4 without
 * options or fragmentation and untagged IPv6 without extension headers, whose IP
 * packet lies in the first buffer, in a few loads: other traffic, esp and
 * esp-in-udp (filling p). Anything else gives SW_PARSE_FULL, and classify() walks
 * it. What it decides, classify() decides the same (the differential tests hold
 * both to the Go reference). */
static __always_inline int classify_common(void *data, void *data_end, struct pkt *p)
{
	__u32 linear = data_end - data;
	struct iphdr *ip = data + ETH_HLEN;
	__be32 *l4 = (void *)(ip + 1); /* 8 bytes: ESP's SPI and sequence, or a UDP header */
	if ((void *)(l4 + 2) > data_end)
		return SW_PARSE_FULL;
	/* Ethertype, version and header length in one load; fragment bits and
	 * protocol in another (unaligned loads are fine where XDP runs natively). */
	__u32 w12 = *(__u32 *)(data + 12);
	int class = SW_CLASS_ESP;
	if ((w12 & bpf_htonl(0xFFFFFF00)) == bpf_htonl(0x08004500)) {
		__u32 w20 = *(__u32 *)(data + 20);
		if (w20 & bpf_htonl((IP_MF | IP_OFFSET) << 16))
			return SW_PARSE_FULL;
		__u8 proto = bpf_ntohl(w20) & 0xFF;
		if (proto == IPPROTO_UDP) {
			/* other UDP by its ports alone: a bad length makes no difference */
			class = common_ports((void *)l4, p);
			if (class != SW_CLASS_ESP_IN_UDP)
				return class;
		} else if (proto != IPPROTO_ESP) {
			return proto == IPPROTO_ICMP ? SW_PARSE_FULL : SW_CLASS_OTHER;
		}
		__u32 tot = bpf_ntohs(ip->tot_len);
		if (tot < sizeof(*ip) || tot + ETH_HLEN > linear)
			return SW_PARSE_FULL; /* short, or longer than the first buffer */
		class = common_spi(data_end, class, l4, tot - sizeof(*ip), p);
		if (class == SW_PARSE_FULL)
			return class;
		addr_v4mapped(p->saddr, ip->saddr);
		addr_v4mapped(p->daddr, ip->daddr);
		return class;
	}
	/* IPv6: Ethertype and version in the same load */
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	l4 = (void *)(ip6 + 1);
	if ((w12 & bpf_htonl(0xFFFFF000)) != bpf_htonl(0x86DD6000) || (void *)(l4 + 2) > data_end)
		return SW_PARSE_FULL;
	__u8 nh = ip6->nexthdr;
	if (nh == IPPROTO_UDP) {
		class = common_ports((void *)l4, p);
		if (class != SW_CLASS_ESP_IN_UDP)
			return class;
	} else if (nh != IPPROTO_ESP) {
		return is_ipv6_ext(nh) || nh == IPPROTO_ICMPV6 ? SW_PARSE_FULL : SW_CLASS_OTHER;
	}
	__u32 plen = bpf_ntohs(ip6->payload_len);
	if (ETH_HLEN + sizeof(*ip6) + plen > linear)
		return SW_PARSE_FULL;
	class = common_spi(data_end, class, l4, plen, p);
	if (class == SW_PARSE_FULL)
		return class;
	__builtin_memcpy(p->saddr, ip6->saddr, 16);
	__builtin_memcpy(p->daddr, ip6->daddr, 16);
	return class;
}

/* classify returns the frame's class and fills p for esp and esp-in-udp. */
static __always_inline int classify(void *data, void *data_end, __u32 len, struct pkt *p)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return SW_CLASS_OTHER;

	__be16 proto = eth->h_proto;
	__u32 off = ETH_HLEN;
	if (proto == bpf_htons(ETH_P_IP)) /* the common case first */
		return parse_ipv4(data, data_end, off, len, p);
#pragma unroll
	for (int i = 0; i < MAX_VLAN_DEPTH; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr *vh = data + off;
		if ((void *)(vh + 1) > data_end)
			return SW_CLASS_OTHER;
		proto = vh->encap_proto;
		off += sizeof(*vh);
	}

	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(data, data_end, off, len, p);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(data, data_end, off, len, p);
	return SW_CLASS_OTHER; /* not IP, or a third VLAN tag */
}

/* quoted_udp reads a quoted UDP header and what follows it (docs/CLASSES.md, "ICMP
 * errors quoting ESP"): fills the key's ports, SPI and quote kind. q is where the
 * UDP header starts, qavail the quoted bytes from there. */
static __always_inline int quoted_udp(void *data, void *data_end, __u32 q, __u32 qavail,
				      struct icmp_key *k)
{
	struct udphdr *udp = data + q;
	if (qavail < sizeof(*udp) || (void *)(udp + 1) > data_end)
		return SW_CLASS_OTHER;
	__u16 sport = bpf_ntohs(udp->source), dport = bpf_ntohs(udp->dest);
	if (sport == IKE_PORT || dport == IKE_PORT || !natt_pair(sport, dport))
		return SW_CLASS_OTHER;
	k->qsport = sport;
	k->qdport = dport;
	if (qavail >= sizeof(*udp) + 4) {
		__be32 *spi = (void *)(udp + 1);
		if ((void *)(spi + 1) > data_end)
			return SW_CLASS_OTHER;
		if (*spi == 0)
			return SW_CLASS_OTHER; /* the non-ESP marker: it quotes IKE */
		k->spi = bpf_ntohl(*spi);
		k->quote = SW_QUOTE_ESP_IN_UDP;
		return SW_CLASS_ICMP_ESP;
	}
	/* RFC 792 quotes 8 bytes: the UDP header, not the SPI. The datagram was
	 * ESP-in-UDP if its length leaves room for an ESP header (RFC 3948). */
	if (bpf_ntohs(udp->len) <= sizeof(*udp) + sizeof(struct esp_hdr))
		return SW_CLASS_OTHER;
	k->spi = 0;
	k->quote = SW_QUOTE_NATT_NO_SPI;
	return SW_CLASS_ICMP_ESP;
}

static __always_inline int quoted_esp(void *data, void *data_end, __u32 q, __u32 qavail,
				      struct icmp_key *k)
{
	__be32 *spi = data + q;
	if (qavail < 4 || (void *)(spi + 1) > data_end)
		return SW_CLASS_OTHER;
	k->spi = bpf_ntohl(*spi);
	k->qsport = 0;
	k->qdport = 0;
	k->quote = SW_QUOTE_ESP;
	return SW_CLASS_ICMP_ESP;
}

/* classify_icmp decides an SW_PARSE_ICMP packet: icmp-esp when it is an error
 * quoting ESP or ESP-in-UDP with what the key needs, else other. Fills k (but
 * ifindex) and *mtu for icmp-esp. Everything it reads lies within p->avail bytes of p->off. */
static __always_inline int classify_icmp(void *data, void *data_end, struct pkt *p,
					 struct icmp_key *k, __u32 *mtu)
{
	__u32 off = walk_mask(p->off);
	__u32 avail = p->avail;
	if (avail > ICMP_AVAIL_MAX)
		return SW_CLASS_OTHER; /* never: icmp_candidate clamps it */
	struct icmp_hdr *ih = data + off;
	if (avail < sizeof(*ih) || (void *)(ih + 1) > data_end)
		return SW_CLASS_OTHER;
	__u8 type = ih->type;
	__u32 q = off + sizeof(*ih), qavail = avail - sizeof(*ih);
	k->family = p->family;
	k->type = type;
	k->code = ih->code;
	__builtin_memcpy(k->reporter, p->saddr, 16);

	if (p->family == 4) {
		/* destination unreachable, time exceeded, parameter problem */
		if (type != 3 && type != 11 && type != 12)
			return SW_CLASS_OTHER;
		*mtu = type == 3 && ih->code == 4 ? bpf_ntohl(ih->rest) & 0xFFFF : 0;
		struct iphdr *ip = data + q;
		if (qavail < sizeof(*ip) || (void *)(ip + 1) > data_end)
			return SW_CLASS_OTHER;
		__u32 hlen = (ip->ver_ihl & 0x0F) * 4;
		if ((ip->ver_ihl >> 4) != 4 || hlen < sizeof(*ip) || hlen > qavail)
			return SW_CLASS_OTHER;
		if (bpf_ntohs(ip->frag_off) & IP_OFFSET)
			return SW_CLASS_OTHER; /* a later fragment quotes no SPI */
		addr_v4mapped(k->qsaddr, ip->saddr);
		addr_v4mapped(k->qdaddr, ip->daddr);
		__u8 proto = ip->protocol;
		q += hlen;
		qavail -= hlen;
		if (proto == IPPROTO_ESP)
			return quoted_esp(data, data_end, q, qavail, k);
		if (proto == IPPROTO_UDP)
			return quoted_udp(data, data_end, q, qavail, k);
		return SW_CLASS_OTHER;
	}

	/* ICMPv6: destination unreachable, packet too big, time exceeded, parameter problem */
	if (type < 1 || type > 4)
		return SW_CLASS_OTHER;
	*mtu = type == 2 ? bpf_ntohl(ih->rest) : 0;
	struct ipv6hdr *ip6 = data + q;
	if (qavail < sizeof(*ip6) || (void *)(ip6 + 1) > data_end)
		return SW_CLASS_OTHER;
	if ((*(__u8 *)ip6 >> 4) != 6)
		return SW_CLASS_OTHER;
	__builtin_memcpy(k->qsaddr, ip6->saddr, 16);
	__builtin_memcpy(k->qdaddr, ip6->daddr, 16);
	__u8 nh = ip6->nexthdr; /* no extension headers in the quote: see CLASSES.md */
	q += sizeof(*ip6);
	qavail -= sizeof(*ip6);
	if (nh == IPPROTO_ESP)
		return quoted_esp(data, data_end, q, qavail, k);
	if (nh == IPPROTO_UDP)
		return quoted_udp(data, data_end, q, qavail, k);
	return SW_CLASS_OTHER;
}

/* ike_exchange maps an exchange type byte of an IKE version to the counted kinds. */
static __always_inline __u8 ike_exchange(__u8 major, __u8 exch)
{
	if (major == 2) {
		if (exch >= 34 && exch <= 37)
			return exch - 34 + SW_IKE_SA_INIT;
	} else if (major == 1) {
		switch (exch) {
		case 2:
			return SW_IKE_MAIN;
		case 4:
			return SW_IKE_AGGRESSIVE;
		case 5:
			return SW_IKE_INFORMATIONAL;
		case 32:
			return SW_IKE_QUICK;
		}
	}
	return SW_IKE_OTHER;
}

/* read_ike reads the IKE header of an ike frame (p->off, p->avail) into k and the
 * header fields of v. Returns 0 when the message is too short for the header
 * (k says malformed). */
_Static_assert(sizeof(struct ike_hdr) == 28, "IKE header is 28 bytes");

static __always_inline int read_ike(void *data, void *data_end, struct pkt *p, struct ike_key *k,
				    struct ike_stats *v)
{
	__u32 off = walk_mask(p->off);
	struct ike_hdr *h = data + off;
	if (p->avail < sizeof(*h) || (void *)(h + 1) > data_end) {
		k->version = 0;
		k->exchange = SW_IKE_MALFORMED;
		k->dir = SW_IKE_NODIR;
		return 0;
	}
	__u8 major = h->version >> 4;
	k->version = major;
	k->exchange = ike_exchange(major, h->exchange);
	k->dir = major != 2 ? SW_IKE_NODIR : (h->flags & IKE_FLAG_RESPONSE) ? SW_IKE_RESPONSE : SW_IKE_REQUEST;
	__be64 ispi, rspi;
	__builtin_memcpy(&ispi, h->ispi, 8);
	__builtin_memcpy(&rspi, h->rspi, 8);
	v->last_ispi = bpf_be64_to_cpu(ispi);
	v->last_rspi = bpf_be64_to_cpu(rspi);
	v->last_msgid = bpf_ntohl(h->msgid);
	v->last_flags = h->flags;
	v->last_exchange = h->exchange;
	v->last_next_payload = h->next_payload;
	return 1;
}

#endif /* SPIWATCH_PARSING_H */
