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
	SW_CLASS_MAX = 7,
};

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
	SW_TALLY_UNKNOWN_INSERT_FAILS = 1, /* new keys the table refused or lost in a race */
	SW_TALLY_MAX = 2,
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

/* Per-CPU value of a known SA; Go sums packets and bytes and takes the maxima. */
struct sa_stats {
	__u64 packets;
	__u64 bytes;
	__u64 last_seen_ns; /* CLOCK_MONOTONIC (coarse) */
	__u32 max_seq;
	__u32 _pad;
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
	__u32 last_seq;
	__u32 _pad;
};

#endif /* SPIWATCH_H */
