// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* txgen: the traffic generator's XDP program, run with BPF_PROG_TEST_RUN and
 * BPF_F_TEST_XDP_LIVE_FRAMES. Every run transmits the given frame out of the
 * ingress interface (XDP_TX). Optionally it rewrites a 32-bit field per packet
 * (an SPI, or the low half of a source address) so one run can send many distinct
 * SPIs or sources.
 *
 * Live frames recycle their pages without copying the data in again, and a
 * receiver that passes a frame to its stack may change it in place (VLAN untagging
 * moves the MAC header). So every frame is first rewritten from the template in
 * tx_frame: each one sent is exactly the frame asked for. */

#include "include/bpf_defs.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Offsets from the frame start of the fields to vary (0: leave alone), the first
 * value (host order) and how many distinct values to cycle through: frame i gets
 * base + i % span in each field. */
volatile const __u32 spi_off = 0;
volatile const __u32 spi_base = 0;
volatile const __u32 spi_span = 1;
volatile const __u32 src_off = 0;
volatile const __u32 src_base = 0;
volatile const __u32 src_span = 1;

#define TX_MAX_FRAME 2048

struct tx_template {
	__u32 len;
	__u32 _pad;
	__u8 data[TX_MAX_FRAME];
};

/* the frame to send, written by Go before a run */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tx_template);
} tx_frame SEC(".maps");

/* frames sent so far: drives the rewrites. Shared, not per-CPU, so a sender's
 * sequence continues whichever CPU its next run lands on; one sender runs at a time. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} tx_seq SEC(".maps");

static __always_inline void put_be32(void *data, void *data_end, __u32 off, __u32 v)
{
	if (off > 1500)
		return;
	__be32 *f = data + off;
	if ((void *)(f + 1) > data_end)
		return;
	*f = bpf_htonl(v);
}

static __always_inline void restore(void *data, void *data_end, struct tx_template *t)
{
	__u32 i;

	for (i = 0; i < TX_MAX_FRAME / 8; i++) {
		__u64 *d = data + i * 8;
		if ((void *)(d + 1) > data_end || i * 8 + 8 > t->len)
			break;
		*d = *(__u64 *)&t->data[i * 8];
	}
	for (i = i * 8; i < TX_MAX_FRAME && i < t->len; i++) {
		__u8 *d = data + i;
		if ((void *)(d + 1) > data_end)
			break;
		*d = t->data[i];
	}
}

SEC("xdp")
int txgen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

	struct tx_template *t = bpf_map_lookup_elem(&tx_frame, &zero);
	if (!t)
		return XDP_ABORTED;
	restore(data, data_end, t);

	if (spi_off || src_off) {
		__u64 *n = bpf_map_lookup_elem(&tx_seq, &zero);
		if (!n)
			return XDP_ABORTED;
		__u64 i = (*n)++;
		if (spi_off)
			put_be32(data, data_end, spi_off, spi_base + (__u32)(i % spi_span));
		if (src_off)
			put_be32(data, data_end, src_off, src_base + (__u32)(i % src_span));
	}
	return XDP_TX;
}
