// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* txgen: the traffic generator's XDP program, run with BPF_PROG_TEST_RUN and
 * BPF_F_TEST_XDP_LIVE_FRAMES. Every run transmits the given frame out of the
 * ingress interface (XDP_TX). Optionally it rewrites a 32-bit field per packet
 * (an SPI, or the low half of a source address) so one run can send many distinct
 * SPIs or sources, and an ESP sequence number that grows by one per packet.
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
/* the ESP sequence number's offset (0: leave alone): frame i gets seq_base + i */
volatile const __u32 seq_off = 0;
volatile const __u32 seq_base = 0;

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

/* [TX_SENT] frames transmitted so far, which drives the rewrites; [TX_LIMIT] the
 * count at which to stop. A test run interrupted by a signal is restarted whole by
 * the library, and the frames it had sent would go out twice: with the limit the
 * restart transmits only what is still due, so a sender sends exactly what it was
 * asked to. Shared, not per-CPU: one sender runs at a time, on one CPU. */
#define TX_SENT 0
#define TX_LIMIT 1
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
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

	__u32 sent_key = TX_SENT, limit_key = TX_LIMIT;
	__u64 *sent = bpf_map_lookup_elem(&tx_seq, &sent_key);
	__u64 *limit = bpf_map_lookup_elem(&tx_seq, &limit_key);
	if (!sent || !limit)
		return XDP_ABORTED;
	if (*sent >= *limit)
		return XDP_DROP; /* nothing more is due */
	__u64 i = (*sent)++;
	if (spi_off)
		put_be32(data, data_end, spi_off, spi_base + (__u32)(i % spi_span));
	if (src_off)
		put_be32(data, data_end, src_off, src_base + (__u32)(i % src_span));
	if (seq_off)
		put_be32(data, data_end, seq_off, seq_base + (__u32)i);
	return XDP_TX;
}
