// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* Baselines for make bench: the floors a classifier's per-packet cost is compared
 * with, measured in the same run. */

#include "include/bpf_defs.h"
#include "include/proto.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* The cost of running any XDP program at all. */
SEC("xdp")
int base_empty(struct xdp_md *ctx __attribute__((unused)))
{
	return XDP_PASS;
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} base_count SEC(".maps");

/* Plus one per-CPU counter: what counting every packet costs. */
SEC("xdp")
int base_counter(struct xdp_md *ctx __attribute__((unused)))
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&base_count, &zero);
	if (n)
		*n += 1;
	return XDP_PASS;
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} base_spis SEC(".maps");

/* The floor for any program that must look an SPI up: IPv4 ESP or UDP to 4500,
 * no VLANs, options, checks beyond bounds, one per-CPU hash lookup by SPI, one add. */
SEC("xdp")
int base_spi(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__be32 *spi;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	if (ip->protocol == IPPROTO_ESP) {
		spi = (void *)(ip + 1);
	} else if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > data_end || udp->dest != bpf_htons(4500))
			return XDP_PASS;
		spi = (void *)(udp + 1);
	} else {
		return XDP_PASS;
	}
	if ((void *)(spi + 1) > data_end)
		return XDP_PASS;
	__u32 key = bpf_ntohl(*spi);
	__u64 *n = bpf_map_lookup_elem(&base_spis, &key);
	if (n)
		*n += 1;
	return XDP_PASS;
}

struct base_count {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct base_count);
} base_classes SEC(".maps");

/* The floor for any program that counts other traffic by class: untagged IPv4
 * parsed to its protocol, then one per-CPU counter of packets and bytes (IPsec's
 * protocols in one, the rest in the other). No multi-buffer length, no checks
 * beyond bounds. */
SEC("xdp")
int base_other(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	__u32 k = ip->protocol == IPPROTO_ESP || ip->protocol == IPPROTO_UDP;
	struct base_count *c = bpf_map_lookup_elem(&base_classes, &k);
	if (c) {
		c->packets++;
		c->bytes += data_end - data;
	}
	return XDP_PASS;
}

/* A new unknown SPI in every frame, for BPF_PROG_TEST_RUN, which repeats one
 * frame: a program in front rewrites the frame's SPI and source to the next of
 * NEWSPI_SPIS SPIs from NEWSPI_SOURCES sources (the veth flood's cycle), then
 * tail-calls the program measured, whose ProgramArray base_next holds it (the
 * bench gives each wrapped program its own). Its own cost is measured the same
 * way, with the empty program behind it. The frame must be untagged IPv4 ESP
 * without options. */
#define NEWSPI_SPIS 1000000
#define NEWSPI_SOURCES 1000
#define NEWSPI_FIRST 0x10000000

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} base_next SEC(".maps");

__u32 newspi_next = 0; /* one test run's CPU at a time: a plain counter */

static __always_inline int newspi(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__be32 *spi = (void *)(ip + 1);
	if ((void *)(spi + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->ver_ihl != 0x45 || ip->protocol != IPPROTO_ESP)
		return XDP_ABORTED; /* the bench's frame is wrong */
	__u32 i = newspi_next;
	newspi_next = i + 1 == NEWSPI_SPIS ? 0 : i + 1;
	*spi = bpf_htonl(NEWSPI_FIRST + i);
	ip->saddr = bpf_htonl(0x0a000000 + i % NEWSPI_SOURCES); /* 10.0.x.y */
	bpf_tail_call(ctx, &base_next, 0);
	return XDP_ABORTED; /* no program behind it */
}

/* Two builds: the kernel tail-calls only into programs that take multi-buffer
 * frames exactly when the caller does (the classifier does, the baselines not). */
SEC("xdp.frags")
int base_newspi_frags(struct xdp_md *ctx)
{
	return newspi(ctx);
}

SEC("xdp")
int base_newspi(struct xdp_md *ctx)
{
	return newspi(ctx);
}
