// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* spiwatch: classify IPsec traffic at XDP and count packets whose SPI matches no
 * Security Association. Passes every frame unless the load-time action says to drop
 * unknown-SPI packets. */

#include "include/bpf_defs.h"
#include "include/proto.h"
#include "spiwatch.h"
#include "parsing.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Load-time settings. */
volatile const __u32 drop_unknown = 0; /* 1: XDP_DROP packets with an unknown SPI */
volatile const __u32 iface_slot = 0;   /* this instance's row in sw_counters */
/* 1 where the kernel has bpf_xdp_load_bytes, bpf_loop and
 * bpf_map_lookup_percpu_elem (5.19): on older kernels the capture code is dead and
 * the verifier never sees the helpers, so counting still loads. */
volatile const __u32 capture_supported = 0;

/* Run-time switch of spiwatch capture, set by Go (the rest of the settings are in
 * sw_capcfg). A global: the hot path reads it with one load, no map lookup. The
 * .bss map is shared by every program instance, like the maps. */
volatile __u32 capture_on = 0;
volatile const __u32 xfrm_lookup = 0;  /* 1: on a known-SA miss, ask the kernel's SA table */
volatile const __u32 nr_cpus = 1;      /* possible CPUs: the per-CPU front's copies */
volatile const __u32 front_shift = 20; /* 32 - log2 of the known SAs' front slots */
/* --drop-above: with drop_unknown, drop a source's unknown-SPI packets only above
 * its rate (struct rate_bucket); 0 drops them all. */
volatile const __u64 drop_cost_ns = 0;
volatile const __u64 drop_burst_ns = 0;

#ifndef KNOWN_SAS_MAX
#define KNOWN_SAS_MAX 65536
#endif
#ifndef KNOWN_FRONT_MAX
#define KNOWN_FRONT_MAX 4096 /* resized by Go at load, a power of two */
#endif
#ifndef UNKNOWN_MAX
#define UNKNOWN_MAX 65536
#endif
#ifndef RATE_MAX
#define RATE_MAX 65536
#endif

/* Known SAs, written only by Go, keyed by SPI alone: an SPI names one SA almost
 * always (the receiver picks it), so the common lookup hashes 4 bytes, not 20
 * (measured: 10 ns per packet), and the SA's destination is compared after it. The
 * rare SPIs shared by several SAs (different destinations) are flagged here and
 * kept in sw_known_multi by (SPI, destination), as Linux looks them up. Per-CPU
 * values: a busy tunnel hits one entry from every CPU, and a shared counter there
 * would bounce a cache line per packet. Not preallocated: a value is ~180 bytes
 * per CPU, so 65,536 preallocated SAs would hold 740 MiB on a 64-CPU gateway
 * whatever its SA count; Go's inserts allocate instead (lookups cost the same). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* see above: memory for the SAs there are */
	__uint(max_entries, KNOWN_SAS_MAX);
	__type(key, __u32);
	__type(value, struct known_spi);
} sw_known SEC(".maps");

/* The known SAs' front: a hash lookup is a call, and a call (with the kernel's
 * return thunks) costs as much as the rest of a known packet's path; these two
 * arrays are looked up inline. The slot of an SPI is a hash of it. Go puts a new
 * SA in its slot when the slot is free, in sw_known otherwise (and every SPI
 * several SAs share), marking the slot OVERFLOW: a packet whose slot holds
 * another SPI and no overflow is unknown without any hash lookup.
 * sw_known_slot holds a word per slot (enum sw_front_flags), which Go stores
 * with one atomic write through a memory mapping, so a packet never sees half
 * of a change; sw_known_front holds the slot's SA: destination and per-CPU
 * counts, written by Go only while no word leads to it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, KNOWN_FRONT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sw_known_slot SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KNOWN_FRONT_MAX);
	__type(key, __u32);
	__type(value, struct known_spi);
} sw_known_front SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* see above: memory for the SAs there are */
	__uint(max_entries, KNOWN_SAS_MAX);
	__type(key, struct sa_key);
	__type(value, struct sa_stats);
} sw_known_multi SEC(".maps");

/* Unknown and reserved SPIs per (SPI, source, destination, ports, interface).
 * One LRU list per CPU: with a shared list every insert under a flood of new SPIs
 * contends on one lock (measured 730 ns per new row on 2 CPUs, 390 ns per-CPU),
 * and a flood on one queue evicts only its own CPU's share. Attacker-keyed, so
 * LRU with a cap (resized by Go at load). Inserts are tallied in sw_tally so Go can
 * report evictions = inserts - entries. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, UNKNOWN_MAX);
	__type(key, struct unknown_key);
	__type(value, struct unknown_stats);
} sw_unknown SEC(".maps");

/* The unknown table's per-CPU front: struct unknown_hot. 256 slots of 96 bytes
 * per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SW_HOT_SLOTS);
	__type(key, __u32);
	__type(value, struct unknown_hot);
} sw_unknown_hot SEC(".maps");

/* Packets and bytes per interface, class and outcome. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_IFACES * SW_SLOTS_PER_IFACE);
	__type(key, __u32);
	__type(value, struct sw_count);
} sw_counters SEC(".maps");

/* Unknown-SPI packets dropped, per interface and class (the rest passed). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_IFACES * SW_CLASS_MAX);
	__type(key, __u32);
	__type(value, struct sw_count);
} sw_dropped SEC(".maps");

/* --drop-above: a token bucket per source address and CPU. A flood comes from
 * attacker-chosen addresses: LRU with a cap; inserts are tallied so Go can report
 * evictions (an evicted source starts again with a full bucket). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, RATE_MAX);
	__type(key, struct rate_key);
	__type(value, struct rate_bucket);
} sw_rate SEC(".maps");

/* Table bookkeeping (enum sw_tally). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SW_TALLY_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sw_tally SEC(".maps");

/* Capture settings (struct sw_capcfg), written by Go while the program runs; read
 * only while capture_on is set. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_capcfg);
} sw_capcfg SEC(".maps");

/* Per-CPU token bucket and capture counters. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_capstate);
} sw_capstate SEC(".maps");

/* Per-CPU scratch record: the header and the frame's head are assembled here, then
 * copied into the ring buffer with their real length (a reservation would need a
 * constant size, SW_SNAP_MAX for every frame). */
struct sw_capbuf {
	struct sw_sample hdr;
	__u8 data[SW_SNAP_MAX];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_capbuf);
} sw_capbuf SEC(".maps");

#ifndef SAMPLES_RING_SIZE
#define SAMPLES_RING_SIZE (4 << 20)
#endif
/* Samples for spiwatch capture: struct sw_sample records, then the frame's head. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SAMPLES_RING_SIZE);
} sw_samples SEC(".maps");

/* The capture holding sw_capcfg (key 0): a hash map, so that taking it with
 * BPF_NOEXIST is atomic between two starting captures. Only Go uses it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sw_capowner);
} sw_capowner SEC(".maps");

#ifndef ICMP_MAX
#define ICMP_MAX 4096
#endif
#ifndef IKE_MAX
#define IKE_MAX 16384
#endif

/* ICMP and ICMPv6 errors quoting ESP (class icmp-esp), per reporter, quoted
 * addresses, ports and SPI, and ICMP type. Anyone can send them: LRU with a cap,
 * one list per CPU as for sw_unknown, inserts tallied in sw_diag_tally. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, ICMP_MAX);
	__type(key, struct icmp_key);
	__type(value, struct icmp_stats);
} sw_icmp SEC(".maps");

/* IKE messages (class ike) per peer, version, exchange and request/response, with
 * the last header seen. Peer-keyed: LRU with a cap like sw_icmp. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, IKE_MAX);
	__type(key, struct ike_key);
	__type(value, struct ike_stats);
} sw_ike SEC(".maps");

/* Inserts into sw_icmp and sw_ike (enum sw_diag_tally). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SW_DIAG_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sw_diag_tally SEC(".maps");

static __always_inline void diag_tally(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&sw_diag_tally, &which);
	if (v)
		*v += 1;
}

static __always_inline void tally_n(__u32 which, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&sw_tally, &which);
	if (v)
		*v += n;
}

static __always_inline void tally(__u32 which)
{
	tally_n(which, 1);
}

/* The kernel's own SA table (Linux 6.8+, net/xfrm/xfrm_state_bpf.c). Weak: where
 * the kernel lacks the kfuncs the loader zeroes bpf_ksym_exists() and the verifier
 * drops the call, as it does when xfrm_lookup is 0. */
#define __ksym __attribute__((section(".ksyms")))
#define __weak __attribute__((weak))
#define bpf_ksym_exists(sym) (!!(sym))
#define AF_INET 2
#define AF_INET6 10

/* The one field read of the kernel's struct, placed by CO-RE from the kernel's
 * BTF at load: km.state. A state reserved by XFRM_MSG_ALLOCSPI (larval, ACQ) is
 * in the kernel's SPI table too, but the kernel drops ESP on it as an invalid
 * state: only an installed (VALID) one makes the SPI known. */
struct xfrm_state_walk {
	__u8 state;
} __attribute__((preserve_access_index));
struct xfrm_state {
	struct xfrm_state_walk km;
} __attribute__((preserve_access_index));
#define XFRM_STATE_VALID 2 /* include/net/xfrm.h */
struct bpf_xfrm_state_opts {
	__s32 error;
	__s32 netns_id;
	__u32 mark;
	__u32 daddr[4]; /* xfrm_address_t: IPv4 in the first word */
	__be32 spi;
	__u8 proto;
	__u16 family;
};
extern struct xfrm_state *bpf_xdp_get_xfrm_state(struct xdp_md *ctx, struct bpf_xfrm_state_opts *opts,
						 __u32 opts__sz) __ksym __weak;
extern void bpf_xdp_xfrm_state_release(struct xfrm_state *x) __ksym __weak;

/* The kernel's struct xdp_buff (placed by CO-RE): whether a frame has more
 * buffers than the first. */
struct xdp_buff {
	__u32 flags;
} __attribute__((preserve_access_index));
#define XDP_FLAGS_HAS_FRAGS 1 /* enum xdp_buff_flags */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym __weak;

/* frame_len is the whole frame's length. The helper that says it costs a call,
 * as much as the rest of the path for other traffic on a kernel with return
 * thunks; the kernel's own context (Linux 6.2+: bpf_cast_to_kern_ctx, which the
 * verifier turns into a move) says in one load whether the frame has more than
 * its first buffer, and only then is the helper asked. The first buffer's
 * length comes from the caller's data and data_end: read again from ctx, they
 * cost two loads on the path of other traffic. */
static __always_inline __u32 frame_len(struct xdp_md *ctx, void *data, void *data_end)
{
	if (bpf_ksym_exists(bpf_cast_to_kern_ctx)) {
		struct xdp_buff *x = bpf_cast_to_kern_ctx(ctx);
		if (!(x->flags & XDP_FLAGS_HAS_FRAGS))
			return data_end - data;
	}
	return bpf_xdp_get_buff_len(ctx);
}

/* Does the kernel hold an installed SA for this SPI and destination, in the
 * namespace of the receiving device? Only the answer matters: the state is
 * released at once. Out of line: one copy for both paths to lookup_known. */
static __noinline int kernel_has_sa(struct xdp_md *ctx, struct pkt *p)
{
	struct bpf_xfrm_state_opts o = {
		.netns_id = -1, /* BPF_F_CURRENT_NETNS */
		.spi = bpf_htonl(p->spi),
		.proto = IPPROTO_ESP,
		.family = AF_INET6,
	};
	__builtin_memcpy(o.daddr, p->daddr, 16);
	if (o.daddr[0] == 0 && o.daddr[1] == 0 && o.daddr[2] == bpf_htonl(0xffff)) {
		o.family = AF_INET; /* keyed IPv4-mapped: the kernel wants the bare address */
		o.daddr[0] = o.daddr[3];
		o.daddr[3] = 0;
		o.daddr[2] = 0;
	}
	struct xfrm_state *x = bpf_xdp_get_xfrm_state(ctx, &o, sizeof(o));
	if (!x)
		return 0;
	int valid = x->km.state == XFRM_STATE_VALID;
	bpf_xdp_xfrm_state_release(x);
	return valid;
}

/* lookup_multi finds an SA of an SPI shared by several: (SPI, destination) first,
 * then (SPI, any destination). */
static __attribute__((noinline)) struct sa_stats *lookup_multi(struct pkt *p)
{
	struct sa_key k = {.spi = p->spi};

	__builtin_memcpy(k.daddr, p->daddr, 16);
	struct sa_stats *st = bpf_map_lookup_elem(&sw_known_multi, &k);
	if (st)
		return st;
	__builtin_memset(k.daddr, 0, sizeof(k.daddr));
	return bpf_map_lookup_elem(&sw_known_multi, &k);
}

static __always_inline int same_addr(const __u8 a[16], const __u8 b[16])
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	return x[0] == y[0] && x[1] == y[1];
}

/* sa_seq follows one CPU's view of an SA's sequence numbers (rules in spiwatch.h). */
static __always_inline void sa_seq(struct sa_stats *st, __u32 seq)
{
	__u32 hi = st->max_seq;
	/* just after a wrap, a late packet from before it is behind, not ahead */
	int before_wrap = hi < SW_SEQ_WRAP_ZONE && seq >= -SW_SEQ_WRAP_ZONE;

	if (!before_wrap && (seq > hi || (hi >= -SW_SEQ_WRAP_ZONE && seq < SW_SEQ_WRAP_ZONE))) {
		__u32 ahead = seq - hi; /* modulo 2^32: also across a wrap */
		if (seq < hi)
			st->wraps++;
		if (ahead > 1)
			st->gaps += ahead - 1;
		st->seq_window = ahead < SW_SEQ_WINDOW ? (st->seq_window << ahead) | 1 : 1;
		st->max_seq = seq;
		return;
	}
	__u32 behind = hi - seq;
	if (behind < SW_SEQ_WINDOW) {
		__u64 bit = 1ULL << behind;
		if (st->seq_window & bit) {
			st->dups++;
		} else {
			st->late++;
			st->seq_window |= bit;
			/* Before this CPU's first number it fills no gap counted here
			 * (loss = gaps - late): it counts itself as one. */
			__u32 before = st->first_seq - seq;
			if (before && before < SW_SEQ_WINDOW)
				st->gaps++;
		}
		return;
	}
	if (seq < SW_SEQ_RESTART_LOW && hi >= SW_SEQ_RESTART_HIGH) {
		st->restarts++;
		st->max_seq = seq;
		st->first_seq = seq;
		st->seq_window = 1;
		return;
	}
	st->replays++;
}

/* sa_count counts a packet in this CPU's copy of its SA: plain stores, no atomics. */
static __always_inline void sa_count(struct sa_stats *st, struct pkt *p, __u32 len)
{
	/* The coarse clock only moves at a tick: read it (a helper call, ~7 ns) once
	 * per tick, which jiffies (an inlined load) tell. Same value, same precision. */
	__u64 j = bpf_jiffies64();
	__u64 now = st->tick_ns;
	if (j != st->last_jiffies) {
		st->last_jiffies = j;
		now = st->tick_ns = bpf_ktime_get_coarse_ns();
	}

	if (st->packets == 0) { /* the first packet on this CPU: its source and sequence */
		__builtin_memcpy(st->src, p->saddr, 16);
		st->src_port = p->sport;
		st->max_seq = p->seq;
		st->first_seq = p->seq;
		st->seq_window = 1;
	} else if (!same_addr(st->src, p->saddr) || st->src_port != p->sport) {
		/* Another source: someone else's traffic in this SA, or the peer moved.
		 * Its sequence numbers are another stream's: not mixed into src's. */
		st->packets++;
		st->bytes += len;
		st->other_packets++;
		st->other_last_ns = now;
		__builtin_memcpy(st->other_src, p->saddr, 16);
		st->other_port = p->sport;
		return;
	} else {
		sa_seq(st, p->seq);
	}
	st->packets++;
	st->bytes += len;
	st->last_seen_ns = now;
}


/* find_known returns this CPU's counts of the SA the packet belongs to; 0 if none. */
static __always_inline struct sa_stats *find_known(struct pkt *p)
{
	__u32 spi = p->spi;
	__u32 slot = (__u64)(__u32)(spi * SW_FRONT_HASH) >> front_shift;
	__u64 *wp = bpf_map_lookup_elem(&sw_known_slot, &slot);
	if (!wp)
		return 0; /* never: the slot is within the array */
	__u64 word = *(volatile __u64 *)wp; /* one load: the SPI and flags Go stored together */
	__u32 flags = word >> 32;
	if ((__u32)word == spi && (flags & SW_FRONT_USED)) {
		struct known_spi *f = bpf_map_lookup_elem(&sw_known_front, &slot);
		if (!f || (!(flags & SW_FRONT_ANY_DST) && !same_addr(f->daddr, p->daddr)))
			return 0; /* the SPI's SA is for another destination */
		return &f->st;
	}
	if (!(flags & SW_FRONT_OVERFLOW))
		return 0;
	struct known_spi *ks = bpf_map_lookup_elem(&sw_known, &spi);
	if (!ks)
		return 0;
	if (ks->flags & SW_KNOWN_MULTI)
		return lookup_multi(p);
	if (!(ks->flags & SW_KNOWN_ANY_DST) && !same_addr(ks->daddr, p->daddr))
		return 0; /* the SPI's SA is for another destination */
	return &ks->st;
}

static __always_inline int lookup_known(struct xdp_md *ctx, struct pkt *p, __u32 len)
{
	struct sa_stats *st = find_known(p);
	if (!st) {
		/* Installed in the kernel, not yet in the map: known (no per-SA counters
		 * until Go adds it). Off: the verifier removes this. */
		if (xfrm_lookup && bpf_ksym_exists(bpf_xdp_get_xfrm_state) && kernel_has_sa(ctx, p))
			return SW_OUTCOME_KNOWN;
		return SW_OUTCOME_UNKNOWN;
	}
	sa_count(st, p, len);
	return SW_OUTCOME_KNOWN;
}

/* over_limit says whether an unknown-SPI packet is to be dropped: always without
 * --drop-above, else when its source's bucket on this CPU is empty. */
static __always_inline int over_limit(struct pkt *p)
{
	if (!drop_cost_ns)
		return 1;
	__u64 now = bpf_ktime_get_coarse_ns();
	struct rate_key k;
	__builtin_memcpy(k.saddr, p->saddr, 16);
	struct rate_bucket *b = bpf_map_lookup_elem(&sw_rate, &k);
	if (!b) {
		struct rate_bucket fresh = {.credit_ns = drop_burst_ns - drop_cost_ns, .last_ns = now};
		if (bpf_map_update_elem(&sw_rate, &k, &fresh, BPF_NOEXIST) == 0) {
			tally(SW_TALLY_RATE_INSERTS);
			return 0;
		}
		b = bpf_map_lookup_elem(&sw_rate, &k); /* another CPU added it meanwhile */
		if (!b) {
			tally(SW_TALLY_RATE_FAILS);
			return 1; /* fail closed: the operator asked to cut floods */
		}
	}
	__u64 credit = drop_burst_ns; /* a CPU's first packet of a source: full bucket */
	if (b->last_ns) {
		credit = b->credit_ns + (now > b->last_ns ? now - b->last_ns : 0);
		if (credit > drop_burst_ns)
			credit = drop_burst_ns;
	}
	b->last_ns = now;
	if (credit < drop_cost_ns) {
		b->credit_ns = credit;
		return 1;
	}
	b->credit_ns = credit - drop_cost_ns;
	return 0;
}

static __always_inline void count_dropped(__u32 class, __u32 len)
{
	__u32 slot = iface_slot * SW_CLASS_MAX + class;
	struct sw_count *c = bpf_map_lookup_elem(&sw_dropped, &slot);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

/* row_add adds a->packets and a->bytes to k's sw_unknown row, making the row
 * when there is none (first and last seen from a, or now when a says 0), and
 * returns the row's packet count after it (0 if no row could be made). The
 * row's last seen and sequence move only forward (a->last_jiffies). Sets
 * a->first_seen_ns and a->last_seen_ns to the row's. Out of line: called for a
 * packet and for a slot's hand-over, verified once. */
static __noinline __u64 row_add(struct unknown_key *k, struct unknown_stats *a)
{
	struct unknown_stats *us = bpf_map_lookup_elem(&sw_unknown, k);
	if (!us) {
		if (!a->last_seen_ns)
			a->last_seen_ns = bpf_ktime_get_coarse_ns();
		if (!a->first_seen_ns)
			a->first_seen_ns = a->last_seen_ns;
		/* NOEXIST: if another CPU inserted the key meanwhile, add to its entry
		 * instead of overwriting its first packets. */
		long err = bpf_map_update_elem(&sw_unknown, k, a, BPF_NOEXIST);
		if (err == 0) {
			tally(SW_TALLY_UNKNOWN_INSERTS);
			return a->packets;
		}
		us = err == -EEXIST ? bpf_map_lookup_elem(&sw_unknown, k) : 0;
		if (!us) { /* a hand-over may bring many packets: all are unrecorded */
			tally_n(SW_TALLY_UNKNOWN_INSERT_FAILS, a->packets);
			return 0;
		}
	}
	/* Several CPUs may hand counts to one row; atomics keep them exact. */
	__u64 before = __sync_fetch_and_add(&us->packets, a->packets);
	__sync_fetch_and_add(&us->bytes, a->bytes);
	if (a->last_jiffies > us->last_jiffies) { /* the coarse clock moved at most once since */
		us->last_jiffies = a->last_jiffies;
		us->last_seen_ns = a->last_seen_ns ? a->last_seen_ns : bpf_ktime_get_coarse_ns();
		us->last_seq = a->last_seq;
	} else if (a->last_jiffies == us->last_jiffies) {
		us->last_seq = a->last_seq;
	}
	a->first_seen_ns = us->first_seen_ns;
	a->last_seen_ns = us->last_seen_ns;
	return before + a->packets;
}

/* hot_slot picks a packet's slot in the front from what its row's key holds:
 * source and destination's last words, SPI and ports are enough to spread rows
 * (a collision only sends a row to the table directly). Read from the packet, so
 * the hot path builds no key. */
static __always_inline __u32 hot_slot(const struct pkt *p)
{
	const __u32 *d = (const __u32 *)p->daddr, *s = (const __u32 *)p->saddr;
	__u32 h = s[3] ^ (d[3] * 0x85ebca6bu) ^ p->spi ^ ((__u32)p->sport << 16 | p->dport);
	return (h * 0x9e3779b1u) >> (32 - 8);
}

_Static_assert(SW_HOT_SLOTS == 1 << 8, "hot_slot takes 8 bits");

/* Is k the key of the packet's row? */
static __always_inline int is_row_of(const struct unknown_key *k, const struct pkt *p, __u32 ifindex)
{
	const __u64 *ks = (const __u64 *)k->saddr, *kd = (const __u64 *)k->daddr;
	const __u64 *ps = (const __u64 *)p->saddr, *pd = (const __u64 *)p->daddr;
	return ks[0] == ps[0] && ks[1] == ps[1] && kd[0] == pd[0] && kd[1] == pd[1] && k->spi == p->spi &&
	       k->ifindex == ifindex && k->sport == p->sport && k->dport == p->dport;
}

static __always_inline int same_key(const struct unknown_key *a, const struct unknown_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4] &&
	       a->sport == b->sport && a->dport == b->dport;
}

_Static_assert(sizeof(struct unknown_key) == 44, "unknown_key compared as 5 words and two ports");

/* What the other CPUs' fronts hold for a row: a row lives in the same slot on
 * every CPU, since the slot is a hash of its key. */
struct pending_sum {
	struct unknown_key k;
	__u32 slot;
	__u64 packets;
};

static long add_pending(__u32 cpu, struct pending_sum *s)
{
	struct unknown_hot *h = bpf_map_lookup_percpu_elem(&sw_unknown_hot, &s->slot, cpu);
	if (h && h->used && same_key(&h->key, &s->k))
		s->packets += h->packets;
	return 0;
}

/* row_total adds to a row's table count what the fronts still hold: the
 * capture's first-N rule needs the row's whole count, and a row counted on one
 * CPU before the capture began may be mostly in that CPU's front. Only while a
 * capture runs, and only for rows that are still within its first N. */
static __noinline __u64 row_total(struct unknown_key *k, __u32 slot, __u64 n)
{
	__u32 zero = 0;
	struct sw_capcfg *cfg = bpf_map_lookup_elem(&sw_capcfg, &zero);
	if (!capture_supported || !cfg || n == 0 || n > cfg->per_spi)
		return n;
	struct pending_sum s = {.slot = slot};
	__builtin_memcpy(&s.k, k, sizeof(*k));
	bpf_loop(nr_cpus, add_pending, &s, 0);
	return n + s.packets;
}

/* handing_over marks a front slot as handing its counts to the table, before
 * they leave it: Go reads a slot's tick after its counts (fields in address
 * order), so a read that sees them gone also sees the new tick, and reads the
 * row again (maps/unknown.go). The barrier keeps clang from moving the store
 * after the ones that empty the slot; x86 keeps stores in order. */
static __always_inline void handing_over(struct unknown_hot *h, __u64 j)
{
	h->last_jiffies = j;
	asm volatile("" ::: "memory");
}

/* Returns the row's packet count including this one, which the capture's
 * first-N rule reads: exact while a capture runs (every packet then goes to the
 * row); 0 if no row could be made, or on the front's hot path (no capture). */
static __always_inline __u64 record_unknown(struct xdp_md *ctx, struct pkt *p, __u32 len)
{
	__u32 ifindex = ctx->ingress_ifindex;
	__u64 j = bpf_jiffies64();
	__u32 slot = hot_slot(p);
	struct unknown_hot *h = bpf_map_lookup_elem(&sw_unknown_hot, &slot);
	if (!h)
		return 0; /* never: an array slot in range */
	int mine = h->used && is_row_of(&h->key, p, ifindex);
	if (mine && h->last_jiffies == j && !capture_on) {
		h->packets++; /* the hot path: this CPU's slot, plain adds */
		h->bytes += len;
		h->last_seq = p->seq;
		/* The row's total is not known here: 0 says so. The caller reads
		 * capture_on again, and a capture that starts in between must not
		 * take this packet for one of the row's first. */
		return 0;
	}

	struct unknown_key k = {
		.spi = p->spi,
		.ifindex = ifindex,
		.sport = p->sport,
		.dport = p->dport,
	};
	__builtin_memcpy(k.saddr, p->saddr, 16);
	__builtin_memcpy(k.daddr, p->daddr, 16);
	struct unknown_stats a = {.packets = 1, .bytes = len, .last_jiffies = j, .last_seq = p->seq};
	if (mine) { /* a new tick: the slot's counts go to the row with this packet */
		a.packets += h->packets;
		a.bytes += h->bytes;
		a.first_seen_ns = h->first_seen_ns; /* if the LRU evicted the row meanwhile */
		handing_over(h, j);
		h->packets = 0; /* before the row has them: Go may miss them, never see them twice */
		h->bytes = 0;
	}
	__u64 n = row_add(&k, &a);
	if (capture_on)
		n = row_total(&k, slot, n);
	if (!mine && h->used && h->last_jiffies == j)
		return n; /* the slot's row is busy this tick: it keeps the slot */
	if (!mine && h->used && h->packets) { /* hand the idle row's counts on, then take the slot */
		struct unknown_stats o = {
			.packets = h->packets,
			.bytes = h->bytes,
			.first_seen_ns = h->first_seen_ns,
			.last_seen_ns = h->last_seen_ns,
			.last_jiffies = h->last_jiffies,
			.last_seq = h->last_seq,
		};
		handing_over(h, j);
		h->packets = 0;
		h->bytes = 0;
		row_add(&h->key, &o);
	}
	if (!mine) {
		__builtin_memcpy(&h->key, &k, sizeof(k));
		h->used = 1;
	}
	h->first_seen_ns = a.first_seen_ns;
	h->last_seen_ns = a.last_seen_ns;
	h->last_jiffies = j;
	h->last_seq = p->seq;
	return n;
}

/* icmp_esp classifies an SW_PARSE_ICMP packet and counts an icmp-esp one in sw_icmp.
 * Not inlined: the ICMP path is verified once, apart from the hot path. */
static __attribute__((noinline)) int icmp_esp(struct xdp_md *ctx, struct pkt *p, __u32 len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct icmp_key k = {.ifindex = ctx->ingress_ifindex};
	__u32 mtu = 0;

	if (classify_icmp(data, data_end, p, &k, &mtu) != SW_CLASS_ICMP_ESP)
		return SW_CLASS_OTHER;
	__u64 now = bpf_ktime_get_coarse_ns();
	struct icmp_stats *st = bpf_map_lookup_elem(&sw_icmp, &k);
	if (!st) {
		struct icmp_stats fresh = {
			.packets = 1, .bytes = len, .first_seen_ns = now, .last_seen_ns = now, .mtu = mtu};
		long err = bpf_map_update_elem(&sw_icmp, &k, &fresh, BPF_NOEXIST);
		if (err == 0) {
			diag_tally(SW_DIAG_ICMP_INSERTS);
			return SW_CLASS_ICMP_ESP;
		}
		st = err == -EEXIST ? bpf_map_lookup_elem(&sw_icmp, &k) : 0;
		if (!st) {
			diag_tally(SW_DIAG_ICMP_INSERT_FAILS);
			return SW_CLASS_ICMP_ESP;
		}
	}
	__sync_fetch_and_add(&st->packets, 1);
	__sync_fetch_and_add(&st->bytes, len);
	st->last_seen_ns = now;
	st->mtu = mtu;
	return SW_CLASS_ICMP_ESP;
}

/* record_ike counts an ike frame in sw_ike by its header. Not inlined, like icmp_esp. */
static __attribute__((noinline)) int record_ike(struct xdp_md *ctx, struct pkt *p, __u32 len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ike_key k = {.ifindex = ctx->ingress_ifindex};
	struct ike_stats fresh = {};

	__builtin_memcpy(k.peer, p->saddr, 16);
	read_ike(data, data_end, p, &k, &fresh);
	__u64 now = bpf_ktime_get_coarse_ns();
	struct ike_stats *st = bpf_map_lookup_elem(&sw_ike, &k);
	if (!st) {
		fresh.packets = 1;
		fresh.bytes = len;
		fresh.first_seen_ns = now;
		fresh.last_seen_ns = now;
		long err = bpf_map_update_elem(&sw_ike, &k, &fresh, BPF_NOEXIST);
		if (err == 0) {
			diag_tally(SW_DIAG_IKE_INSERTS);
			return 0;
		}
		st = err == -EEXIST ? bpf_map_lookup_elem(&sw_ike, &k) : 0;
		if (!st) {
			diag_tally(SW_DIAG_IKE_INSERT_FAILS);
			return 0;
		}
	}
	__sync_fetch_and_add(&st->packets, 1);
	__sync_fetch_and_add(&st->bytes, len);
	st->last_seen_ns = now;
	if (k.exchange != SW_IKE_MALFORMED) {
		st->last_ispi = fresh.last_ispi;
		st->last_rspi = fresh.last_rspi;
		st->last_msgid = fresh.last_msgid;
		st->last_flags = fresh.last_flags;
		st->last_exchange = fresh.last_exchange;
		st->last_next_payload = fresh.last_next_payload;
	}
	return 0;
}

static __always_inline void count(__u32 class, __u32 outcome, __u32 len)
{
	__u32 slot = iface_slot * SW_SLOTS_PER_IFACE + class * SW_OUTCOME_MAX + outcome;
	struct sw_count *c = bpf_map_lookup_elem(&sw_counters, &slot);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

/* sample decides whether a frame the capture selected is kept (the first per_spi
 * packets of an unknown-table row always, then a per-CPU token bucket), and copies
 * it into the ring buffer. Out of line: it runs only while a capture is on.
 * what = class | outcome << 8 | action << 16; len is the whole frame's (all
 * buffers of a multi-buffer frame), which bpf_xdp_load_bytes can read. */
static __noinline int sample(struct xdp_md *ctx, __u32 what, __u32 spi, __u64 row_packets, __u32 len)
{
	__u32 zero = 0;
	__u32 class = what & 0xff, outcome = (what >> 8) & 0xff;
	if (!capture_supported) /* the verifier drops the rest on old kernels */
		return 0;
	struct sw_capcfg *cfg = bpf_map_lookup_elem(&sw_capcfg, &zero);
	if (!cfg)
		return 0;
	/* Never runs (the verifier knows the constant and drops it), but makes
	 * sw_capowner one of the program's maps, which is how a capture beside a
	 * running spiwatch finds it: by the program's map IDs. */
	if (capture_supported == 2)
		bpf_map_lookup_elem(&sw_capowner, &zero);

	__u32 ifindex = ctx->ingress_ifindex, i, hit = 0;
	for (i = 0; i < SW_CAP_MAX_IFACES; i++) {
		if (i >= cfg->nifaces)
			break;
		if (cfg->ifindexes[i] == ifindex) {
			hit = 1;
			break;
		}
	}
	if (!hit)
		return 0;
	int unknown_row = outcome == SW_OUTCOME_UNKNOWN || outcome == SW_OUTCOME_RESERVED;
	if (!((cfg->class_mask >> class) & 1) && !(unknown_row && (cfg->class_mask & SW_CAP_UNKNOWN)))
		return 0;
	if (cfg->nspis) {
		if (!has_spi(class))
			return 0;
		hit = 0;
		for (i = 0; i < SW_CAP_MAX_SPIS; i++) {
			if (i >= cfg->nspis)
				break;
			if (cfg->spis[i] == spi) {
				hit = 1;
				break;
			}
		}
		if (!hit)
			return 0;
	}

	struct sw_capstate *st = bpf_map_lookup_elem(&sw_capstate, &zero);
	if (!st)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 rate = cfg->rate;
	if (rate > SW_CAP_RATE_MAX)
		rate = SW_CAP_RATE_MAX;
	if (st->gen != cfg->gen) { /* a new capture: start with a full bucket */
		st->gen = cfg->gen;
		st->credit = rate * SW_NSEC;
		st->last_ns = now;
	}
	__u8 reason = 0;
	if (unknown_row && row_packets && row_packets <= cfg->per_spi) {
		reason = SW_REASON_FIRST;
	} else if (rate) {
		/* One second of tokens at most: elapsed is capped there, so elapsed * rate
		 * stays below 1e9 * SW_CAP_RATE_MAX. */
		__u64 elapsed = now - st->last_ns;
		if (elapsed > SW_NSEC)
			elapsed = SW_NSEC;
		__u64 credit = st->credit + elapsed * rate;
		if (credit > rate * SW_NSEC)
			credit = rate * SW_NSEC;
		if (credit >= SW_NSEC) {
			credit -= SW_NSEC;
			reason = SW_REASON_RATE;
		}
		st->credit = credit;
		st->last_ns = now;
	}
	if (!reason) {
		st->rate_refused++;
		return 0;
	}

	struct sw_capbuf *buf = bpf_map_lookup_elem(&sw_capbuf, &zero);
	if (!buf)
		return 0;
	__u32 cap = cfg->snaplen;
	if (cap > len)
		cap = len;
	if (cap > SW_SNAP_MAX)
		cap = SW_SNAP_MAX;
	/* Linux 6.1's verifier needs the length it checks bpf_xdp_load_bytes against to
	 * be within 1..SW_SNAP_MAX on the very register passed, upper half included;
	 * clang moves C checks to copies and drops a zero-extension as redundant. So the
	 * clamp is asm (frames have at least a byte; Go refuses snap length 0). */
	__u64 n = cap;
	asm volatile("%0 &= 0x3fff\n\t"
		     "if %0 <= %1 goto +1\n\t"
		     "%0 = %1\n\t"
		     "if %0 >= 1 goto +1\n\t"
		     "%0 = 1"
		     : "+r"(n)
		     : "i"(SW_SNAP_MAX));
	buf->hdr.ts_ns = now;
	buf->hdr.row_packets = row_packets;
	buf->hdr.ifindex = ifindex;
	buf->hdr.spi = spi;
	buf->hdr.len = len;
	buf->hdr.cap_len = cap;
	buf->hdr.class = class;
	buf->hdr.outcome = outcome;
	buf->hdr.reason = reason;
	buf->hdr.action = (what >> 16) & 0xff;
	buf->hdr._pad = 0;
	if (bpf_xdp_load_bytes(ctx, 0, buf->data, n)) {
		st->ring_full++;
		return 0;
	}
	if (bpf_ringbuf_output(&sw_samples, buf, sizeof(buf->hdr) + cap, 0))
		st->ring_full++;
	else
		st->samples++;
	return 0;
}

/* spi_frame counts an esp or esp-in-udp frame whose pkt the parser filled: known,
 * unknown or reserved, its unknown-table row, the counters, the capture. Returns
 * the action. */
static __always_inline int spi_frame(struct xdp_md *ctx, struct pkt *p, __u32 class, __u32 len)
{
	/* Reserved SPIs never name an SA: no lookup, but they are recorded with their
	 * peer like unknown ones, since someone is sending them. */
	__u32 outcome = p->spi < 256 ? SW_OUTCOME_RESERVED : lookup_known(ctx, p, len);
	__u64 row_packets = 0;
	if (outcome != SW_OUTCOME_KNOWN)
		row_packets = record_unknown(ctx, p, len);
	count(class, outcome, len);

	__u32 action = XDP_PASS;
	if (outcome == SW_OUTCOME_UNKNOWN && drop_unknown && over_limit(p)) {
		count_dropped(class, len);
		action = XDP_DROP;
	}
	if (capture_on)
		sample(ctx, class | outcome << 8 | action << 16, p->spi, row_packets, len);
	return action;
}

/* xdp.frags: multi-buffer aware, so the program can stay attached to an interface
 * with jumbo frames (drivers refuse an MTU above one page to other XDP programs).
 * Headers are read from the first buffer; lengths are the whole frame's. */
SEC("xdp.frags")
int spiwatch_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	/* Filled by the parsers for esp and esp-in-udp. The scalars start at zero on
	 * the full path: clang keeps them in registers and would otherwise spill
	 * uninitialized ones on the other classes' paths, which the verifier rejects. */
	struct pkt p;

	/* The common shape first, on a path of its own: other traffic pays for a few
	 * loads and its counter, IPsec for no walk through headers it does not have.
	 * Other traffic is decided first: the compiler then gives it a straight path
	 * with no class juggling (measured in docs/PERFORMANCE.md). While a capture
	 * runs, other traffic takes the full path, which samples it. */
	__u32 class = classify_common(data, data_end, &p);
	if (class == SW_CLASS_OTHER) {
		if (!capture_on) {
			count(SW_CLASS_OTHER, SW_OUTCOME_NONE, frame_len(ctx, data, data_end));
			return XDP_PASS;
		}
	} else if (class == SW_CLASS_ESP || class == SW_CLASS_ESP_IN_UDP) {
		return spi_frame(ctx, &p, class, frame_len(ctx, data, data_end));
	}

	__u32 len = frame_len(ctx, data, data_end);
	p.seq = 0;
	p.sport = 0;
	p.dport = 0;
	class = classify(data, data_end, len, &p);
	if (class == SW_PARSE_ICMP)
		class = icmp_esp(ctx, &p, len);
	else if (class == SW_CLASS_IKE)
		record_ike(ctx, &p, len);
	if (has_spi(class))
		return spi_frame(ctx, &p, class, len);
	count(class, SW_OUTCOME_NONE, len);
	if (capture_on)
		sample(ctx, class | SW_OUTCOME_NONE << 8 | XDP_PASS << 16, 0, 0, len);
	return XDP_PASS;
}
