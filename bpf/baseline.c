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
