/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The contract between the XDP program and Go: classes, outcomes, limits and the
 * layout of every map key and value. maps/ mirrors these structs; a test checks the
 * mirrors' sizes against the map specs. docs/CLASSES.md has the classification rules. */
#ifndef SPIWATCH_H
#define SPIWATCH_H

#include "include/bpf_defs.h"

#define MAX_VLAN_DEPTH 2
#define MAX_IPV6_EXT 8
#define MAX_NATT_PORTS 8
/* interfaces one set of maps can count separately (one program instance each) */
#define MAX_IFACES 64

enum sw_class {
	SW_CLASS_OTHER = 0,
	SW_CLASS_ESP = 1,
	SW_CLASS_ESP_IN_UDP = 2,
	SW_CLASS_IKE = 3,
	SW_CLASS_NAT_KEEPALIVE = 4,
	SW_CLASS_FRAGMENT = 5,
	SW_CLASS_MALFORMED = 6,
	SW_CLASS_ICMP_ESP = 7, /* an ICMP or ICMPv6 error quoting ESP or ESP-in-UDP */
	SW_CLASS_MAX = 8,
};

/* Not a class: what classify() returns for an ICMP or ICMPv6 packet, which
 * classify_icmp() then reads (icmp-esp or other). Never counted. */
#define SW_PARSE_ICMP 0x80
/* Not a class either: classify_common() leaves the frame to classify(). */
#define SW_PARSE_FULL 0x81

enum sw_outcome {
	SW_OUTCOME_NONE = 0,
	SW_OUTCOME_KNOWN = 1,
	SW_OUTCOME_UNKNOWN = 2,
	SW_OUTCOME_RESERVED = 3,
	SW_OUTCOME_MAX = 4,
};

/* counters slot = iface_slot * SW_SLOTS_PER_IFACE + class * SW_OUTCOME_MAX + outcome */
#define SW_SLOTS_PER_IFACE (SW_CLASS_MAX * SW_OUTCOME_MAX)

enum sw_tally {
	SW_TALLY_UNKNOWN_INSERTS = 0,      /* new keys added to the unknown table */
	SW_TALLY_UNKNOWN_INSERT_FAILS = 1, /* packets whose new row the table refused or lost in a race */
	SW_TALLY_RATE_INSERTS = 2,         /* sources added to sw_rate (evictions = inserts - entries) */
	SW_TALLY_RATE_FAILS = 3,           /* sources sw_rate could not add: their packets were dropped */
	SW_TALLY_MAX = 4,
};

struct sw_count {
	__u64 packets;
	__u64 bytes;
};

/* Known SA: looked up by (SPI, destination) like the kernel's xfrm state lookup.
 * daddr is IPv6 or IPv4-mapped (::ffff:a.b.c.d); all zero matches any destination. */
struct sa_key {
	__u32 spi; /* host byte order */
	__u8 daddr[16];
};

/* Per-CPU value of a known SA. Each CPU's copy follows the packets that CPU sees
 * (RSS keeps one SA's outer 5-tuple on one queue); Go combines the copies
 * (maps/known.go). The first 64 bytes are all an in-order packet from the SA's
 * first source touches.
 *
 * Sources: the first packet on a CPU sets src/src_port; packets from any other
 * (address, UDP port) are counted in other_packets, the last of them kept. Linux
 * looks SAs up without the source, so a second source means someone else's
 * traffic lands in the SA (a NAT SPI collision), or the peer moved (NAT rebinding).
 *
 * Sequence numbers (the low 32 bits on the wire, also with ESN), against max_seq,
 * the highest seen on this CPU, and seq_window, bit i set when max_seq - i was
 * seen (like the kernel's replay window):
 *   ahead (seq > max_seq, or a wrap: max_seq >= 2^32 - SW_SEQ_WRAP_ZONE and
 *     seq < SW_SEQ_WRAP_ZONE, which only ESN SAs reach): the numbers skipped
 *     are added to gaps; but just after a wrap (max_seq < SW_SEQ_WRAP_ZONE), a
 *     seq >= 2^32 - SW_SEQ_WRAP_ZONE is from before it: behind (modulo 2^32);
 *   behind by less than SW_SEQ_WINDOW: a late packet (reordered; it was counted
 *     in gaps when skipped; one before first_seq, the CPU's first, was not, and
 *     adds itself to gaps) or, if its bit is set, a duplicate;
 *   seq < SW_SEQ_RESTART_LOW while max_seq >= SW_SEQ_RESTART_HIGH: a restart (the
 *     peer made a new SA with an SPI we still hold): counted, and seq becomes the
 *     new highest;
 *   else behind by SW_SEQ_WINDOW or more: replay-suspect.
 * Estimated loss = gaps - late. */
#define SW_SEQ_WINDOW 64
#define SW_SEQ_WRAP_ZONE (1u << 20)
#define SW_SEQ_RESTART_LOW 1024
#define SW_SEQ_RESTART_HIGH (1u << 16)

struct sa_stats {
	__u64 packets;
	__u64 bytes;
	__u64 last_seen_ns; /* CLOCK_MONOTONIC (coarse), last packet from src */
	__u64 seq_window;   /* bit i: max_seq - i seen */
	__u32 max_seq;      /* highest sequence number seen (low 32 bits) */
	__u32 first_seq;    /* of the first packet on this CPU (or since a restart) */
	__u8 src[16];       /* first source on this CPU, IPv6 or IPv4-mapped */
	__u16 src_port;     /* its UDP source port; 0 for ESP */
	__u16 other_port;   /* UDP source port of the last other source */
	__u32 restarts;
	/* 64 bytes */
	__u64 gaps;          /* sequence numbers skipped */
	__u64 late;          /* behind max_seq within the window, not seen before */
	__u64 dups;          /* behind max_seq within the window, seen before */
	__u64 replays;       /* behind max_seq by SW_SEQ_WINDOW or more */
	__u64 other_packets; /* packets from another source than src */
	__u64 other_last_ns; /* last of them */
	__u8 other_src[16];  /* the last other source */
	__u32 wraps;         /* ESN wraps of the low 32 bits */
	__u32 _pad;
	__u64 last_jiffies;  /* when tick_ns was read: see sa_count */
	__u64 tick_ns;       /* the coarse clock at that tick */
};

/* sw_known's value flags. */
enum sw_known_flags {
	SW_KNOWN_ANY_DST = 1, /* the SA matches any destination: daddr is all zero */
	SW_KNOWN_MULTI = 2,   /* several SAs share the SPI: they are in sw_known_multi */
};

/* Per-CPU value of sw_known (keyed by SPI alone): the SA's destination and, unless
 * SW_KNOWN_MULTI, its counts. Go writes daddr and flags into every CPU's copy. */
struct known_spi {
	struct sa_stats st;
	__u8 daddr[16];
	__u32 flags; /* enum sw_known_flags */
	__u32 _pad;
};

/* The known SAs' front (bpf/spiwatch.c, sw_known_slot and sw_known_front): a
 * slot per hash of the SPI. A slot's word in sw_known_slot is a __u64 whose low
 * half is the SPI of the SA the slot holds and whose high half is these flags. */
enum sw_front_flags {
	SW_FRONT_USED = 1,     /* the slot holds the SA of the word's SPI, counted in sw_known_front */
	SW_FRONT_ANY_DST = 2,  /* that SA matches any destination */
	SW_FRONT_OVERFLOW = 4, /* sw_known holds SPIs of this slot: look there on a miss */
};
#define SW_FRONT_HASH 0x9e3779b1u /* slot = (spi * SW_FRONT_HASH) >> front_shift */

struct unknown_key {
	__u8 saddr[16]; /* IPv6 or IPv4-mapped */
	__u8 daddr[16];
	__u32 spi;
	__u32 ifindex;
	__u16 sport; /* host byte order; 0 for plain ESP */
	__u16 dport;
};

struct unknown_stats {
	__u64 packets;
	__u64 bytes;
	__u64 first_seen_ns; /* CLOCK_MONOTONIC (coarse) */
	__u64 last_seen_ns;
	__u64 last_jiffies; /* when last_seen_ns was last read */
	__u32 last_seq;
	__u32 _pad;
};

/* The unknown table's per-CPU front (sw_unknown_hot): one slot per hash of the
 * key. A row that keeps arriving on a CPU is counted here with plain adds, not
 * with a 44-byte LRU lookup and two atomics per packet; its counts are handed to
 * the sw_unknown row at the first packet of every tick (which also keeps the row
 * recent in the LRU) and when another key takes the slot. Go adds packets and
 * bytes still here to the rows it reads (maps/unknown.go). */
#define SW_HOT_SLOTS 256 /* a power of two */

struct unknown_hot {
	struct unknown_key key;
	__u32 used;           /* 1: key holds a row */
	__u64 packets;        /* counted since the last hand-over, not yet in the row */
	__u64 bytes;
	__u64 first_seen_ns;  /* the row's, for a row the LRU evicted meanwhile */
	__u64 last_seen_ns;
	__u64 last_jiffies;   /* tick of the last hand-over */
	__u32 last_seq;
	__u32 _pad;
};

/* ---- ICMP errors quoting ESP, and IKE activity (docs/CLASSES.md) ---- */

/* What an icmp-esp error quotes. */
enum sw_quote {
	SW_QUOTE_ESP = 1,         /* ESP over IP: the SPI is quoted */
	SW_QUOTE_ESP_IN_UDP = 2,  /* UDP on a NAT-T port, first 4 payload bytes non-zero: the SPI */
	SW_QUOTE_NATT_NO_SPI = 3, /* UDP on a NAT-T port long enough for ESP, quote ends before the SPI */
};

/* An ICMP error about ESP, per (reporter, quoted addresses and ports, SPI, ICMP type). */
struct icmp_key {
	__u8 reporter[16]; /* the ICMP packet's source: the router or host that sent it */
	__u8 qsaddr[16];   /* the quoted packet's source and destination (IPv6 or v4-mapped) */
	__u8 qdaddr[16];
	__u32 spi;         /* the quoted SPI, host byte order; 0 for SW_QUOTE_NATT_NO_SPI */
	__u32 ifindex;
	__u16 qsport;      /* the quoted UDP ports, host byte order; 0 for quoted ESP */
	__u16 qdport;
	__u8 family;       /* 4: ICMP, 6: ICMPv6 */
	__u8 type;
	__u8 code;
	__u8 quote;        /* enum sw_quote */
};

struct icmp_stats {
	__u64 packets;
	__u64 bytes;
	__u64 first_seen_ns; /* CLOCK_MONOTONIC (coarse) */
	__u64 last_seen_ns;
	__u32 mtu;           /* last MTU of fragmentation-needed / packet-too-big; else 0 */
	__u32 _pad;
};

/* IKE exchanges counted apart; everything else is SW_IKE_OTHER. */
enum sw_ike_exchange {
	SW_IKE_OTHER = 0,
	SW_IKE_SA_INIT = 1,        /* IKEv2 34 */
	SW_IKE_AUTH = 2,           /* IKEv2 35 */
	SW_IKE_CREATE_CHILD_SA = 3, /* IKEv2 36 */
	SW_IKE_INFORMATIONAL = 4,  /* IKEv2 37, IKEv1 5 */
	SW_IKE_MAIN = 5,           /* IKEv1 2, identity protection */
	SW_IKE_AGGRESSIVE = 6,     /* IKEv1 4 */
	SW_IKE_QUICK = 7,          /* IKEv1 32 */
	SW_IKE_MALFORMED = 8,      /* shorter than the 28-byte header */
};

enum sw_ike_dir {
	SW_IKE_REQUEST = 0,
	SW_IKE_RESPONSE = 1, /* IKEv2 flag R */
	SW_IKE_NODIR = 2,    /* IKEv1 and malformed: the header does not say */
};

/* IKE messages per (peer, interface, version, exchange, request/response). */
struct ike_key {
	__u8 peer[16]; /* the frame's source address (IPv6 or v4-mapped) */
	__u32 ifindex;
	__u8 version;  /* major version as sent (1, 2, ...); 0 when malformed */
	__u8 exchange; /* enum sw_ike_exchange */
	__u8 dir;      /* enum sw_ike_dir */
	__u8 _pad;
};

struct ike_stats {
	__u64 packets;
	__u64 bytes;
	__u64 first_seen_ns; /* CLOCK_MONOTONIC (coarse) */
	__u64 last_seen_ns;
	__u64 last_ispi;     /* the last message's header, host byte order */
	__u64 last_rspi;
	__u32 last_msgid;
	__u8 last_flags;
	__u8 last_exchange;  /* the raw exchange type byte (tells what "other" was) */
	__u8 last_next_payload;
	__u8 _pad;
};

/* sw_diag_tally: inserts into the ICMP and IKE tables, for evictions. */
enum sw_diag_tally {
	SW_DIAG_ICMP_INSERTS = 0,
	SW_DIAG_ICMP_INSERT_FAILS = 1,
	SW_DIAG_IKE_INSERTS = 2,
	SW_DIAG_IKE_INSERT_FAILS = 3,
	SW_DIAG_MAX = 4,
};

/* Flood mitigation (--action drop --drop-above): per-CPU token bucket of one
 * source address in sw_rate. Credit is in nanoseconds: a packet costs
 * drop_cost_ns (1e9 / rate), the bucket holds drop_burst_ns (cost * rate: one
 * second's packets). */
struct rate_key {
	__u8 saddr[16]; /* IPv6 or IPv4-mapped */
};

struct rate_bucket {
	__u64 credit_ns;
	__u64 last_ns; /* 0: not used on this CPU yet */
};

/* Unknown-SPI packets XDP_DROPped, per interface and class (sw_dropped):
 * slot = iface_slot * SW_CLASS_MAX + class. Passed = unknown - dropped. */

/* Capture (spiwatch capture): the program copies the head of selected frames into
 * a ring buffer. The settings are run-time state in sw_capcfg, written by Go, so a
 * capture can start and stop beside a running spiwatch without reloading anything. */
#define SW_CAP_MAX_IFACES 8
#define SW_CAP_MAX_SPIS 8
/* Largest snap length: a jumbo frame. */
#define SW_SNAP_MAX 9216
/* class_mask bit for "unknown": packets of any SPI class with an unknown or
 * reserved SPI. Bits 0..SW_CLASS_MAX-1 select whole classes. */
#define SW_CAP_UNKNOWN (1U << 15)
#define SW_NSEC 1000000000ULL
/* --rate is at most this many packets per second per CPU: the token bucket's
 * arithmetic then stays far below 2^64. */
#define SW_CAP_RATE_MAX 10000000

/* Written by Go (one entry), read by sample() while capture_on is set. */
struct sw_capcfg {
	__u32 on;         /* 0: no capture (mirrors capture_on, for readers of the map) */
	__u32 gen;        /* changed at every start: per-CPU token buckets refill */
	__u32 class_mask; /* bit per enum sw_class, plus SW_CAP_UNKNOWN */
	__u32 snaplen;    /* bytes copied per frame, 1..SW_SNAP_MAX */
	__u32 per_spi;    /* the first per_spi packets of every unknown-table row are kept */
	__u32 rate;       /* then up to rate packets per second per CPU (token bucket) */
	__u32 nifaces;    /* ifindexes sampled */
	__u32 nspis;      /* 0: any SPI; else only frames carrying one of spis */
	__u32 ifindexes[SW_CAP_MAX_IFACES];
	__u32 spis[SW_CAP_MAX_SPIS];
};

/* Per-CPU sampler state and counters. Nothing is lost silently: every frame the
 * capture selected is a sample, a refusal by the rate, or a ring-buffer loss. */
struct sw_capstate {
	__u64 credit;       /* token bucket in packet-nanoseconds: SW_NSEC is one packet */
	__u64 last_ns;
	__u64 samples;      /* handed to the ring buffer */
	__u64 ring_full;    /* the ring buffer had no room (or the copy failed) */
	__u64 rate_refused; /* selected, but neither first-N nor within the rate */
	__u32 gen;
	__u32 _pad;
};

/* Why a sample was taken. */
enum sw_cap_reason {
	SW_REASON_FIRST = 1, /* among the first per_spi packets of its unknown-table row */
	SW_REASON_RATE = 2,  /* within the rate */
};

/* Ring-buffer record: this header, then cap_len bytes of the frame. */
struct sw_sample {
	__u64 ts_ns;       /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
	__u64 row_packets; /* packets of the unknown-table row so far (0: no row) */
	__u32 ifindex;
	__u32 spi;         /* 0 for classes without an SPI */
	__u32 len;         /* frame length */
	__u32 cap_len;     /* bytes that follow */
	__u8 class;
	__u8 outcome;
	__u8 reason;       /* enum sw_cap_reason */
	__u8 action;       /* the XDP verdict: 1 drop, 2 pass */
	__u32 _pad;
};

/* Who runs the capture (one per set of maps): key 0. */
struct sw_capowner {
	__u32 pid;
	__u32 _pad;
	__u64 start; /* process start time in clock ticks (/proc/PID/stat field 22) */
};

#endif /* SPIWATCH_H */
