// SPDX-License-Identifier: Apache-2.0

package main

// changes is the hand-written part of docs/PERFORMANCE.md: what was changed for
// speed and what each change measured, A/B in one run (spiwatch-bench -variant).
const changes = `## Changes and their measured effect

A/B figures come from ` + "`spiwatch-bench -per-packet-only -variant OLD.o`" + `, which runs another
build of the classifier as an extra column in the same run (min of 15 rounds of
500,000 runs, ns per run).

| change | frame | before | after |
|---|---|---:|---:|
| header pointers die before the L4 parse, IPv6 walk masks its offset (verifier) | — | 529,023 verified insns | 100,853 |
| no zeroing of the per-packet struct (every field is set where it is read) | TCP | 16 | 12 |
| | UDP 53 | 24 | 19 |
| untagged IPv4 tested before the VLAN loop | TCP | 12 (with the above) | 12 |
| timestamps from bpf_ktime_get_coarse_ns (measured: removing them saves ≤ 1 ns) | esp known | — | — |
| plain UDP turned away on its ports before any IPsec work (address copies) | UDP 53 | 21 | 19 |
| one LRU list per CPU in the unknown table (BPF_F_NO_COMMON_LRU), end to end, in-kernel | new unknown SPI each packet | 734 | 394 |
| report: rows only for the top N (one pass, no full sort), fixed-size row keys, buffers reused between reports | full report, 65,536 rows | 113.5 ms | 61 ms |
| Go heap soft limit of 40 MiB (GOMEMLIMIT overrides) and the above | spiwatch peak RSS in the flood | 60.6 MiB | 42.2 MiB |
| multi-buffer aware program (xdp.frags, frame length from bpf_xdp_get_buff_len) | esp known | 57 | 57 |
| | TCP | 14 | 14 |
| known-SA map keyed by SPI alone, destination compared after the lookup; SPIs shared by several SAs in a second map by (SPI, destination), flagged in the first. Two runs of each build, alternating (the map layout differs, so not one run) | esp known | 44, 41 | 39, 36 |
| | esp-in-udp known | 65, 64 | 42, 41 |
| | esp unknown (existing entry) | 94, 94 | 84, 64 |
| the coarse clock read once per tick, which jiffies tell (bpf_jiffies64 is inlined by the verifier; the coarse clock only moves at a tick, so last-seen keeps its value and precision). Alternating runs | esp known | 35, 38 | 31, 33 |
| | esp unknown (existing entry) | 68, 66 | 63, 69 |
| known SAs keep their first source and sequence health per CPU (a 16-byte source compare, a 64-bit window): this build against itself without that code, same map layout, one run each, three runs (load 12 on 2 CPUs: noisy). The bench frame repeats one sequence number, so it takes the duplicate path | esp known | 38, 42, 42 | 44, 42, 40 |
| | esp-in-udp known | 50, 43, 43 | 52, 44, 48 |
| | verifier | 108,938 verified insns | 109,846 |
| capture as a mode of the same program: while no capture runs, one load of ` + "`capture_on`" + ` (.bss) and a branch per frame. Three A/B runs of 21 rounds against the build without capture, before / after in each (load from other jobs on the 2 CPUs: noisy) | esp known | 31, 41, 32 | 33, 50, 43 |
| | esp-in-udp known | 55, 55, 34 | 51, 44, 39 |
| | esp unknown (existing entry) | 68 | 66 |
| | other: tcp | 16, 15, 14 | 21, 16, 14 |
| the unknown table's per-CPU front (sw_unknown_hot): a row that keeps arriving on a CPU is counted in that CPU's slot with plain adds, and handed to its LRU row (two atomics) once per tick, which also keeps the row recent in the LRU; Go adds what the slots hold. Against the build without it, two runs of 21 rounds | esp unknown (existing entry) | 63, 65 | 30, 31 |
| | esp-in-udp unknown (existing entry) | 71, 69 | 40, 34 |
| | esp reserved (spi 7) | 65, 62 | 32, 30 |
| | esp known (unchanged path) | 32, 36 | 31, 37 |
| the reporter remembers a full table's rows by a 64-bit hash and a one-byte verdict code instead of the 44-byte row key and a string (heap of a reporter after three reports of 65,536 rows: 26.5 → 13.2 MiB) | spiwatch peak RSS in the flood (make bench, runs before / after) | 51.8 MiB | 45.4 MiB |
| | 10-minute soak RSS (docs/RELIABILITY.md) | 56–61.8 MiB | 43.8–48.8 MiB |
| | full report, 65,536 rows (make bench, runs before / after; noisy) | 98, 123 ms | 57 ms |

Measured but not (yet) taken:

| idea | frame | now | with it | why not yet |
|---|---|---:|---:|---|
| plain adds instead of atomics in the unknown table | esp unknown | 93 | 85 | counts would be lost when two CPUs update one row; the per-CPU front (above) gets plain adds without that loss |
| the known path without each part, one at a time (measurement only, two runs of 31 rounds, the build itself at 41, 42): per-SA diagnosis (sources, sequence health, clock) | esp known | 41, 42 | 35, 38 | the per-SA diagnosis is the product (issue 7) |
| … without the class counter for known ESP | esp known | 41, 42 | 35, 38 | the class counters are the product |
| … frame length from data_end − data instead of bpf_xdp_get_buff_len | esp known | 41, 42 | 39, 45 | wrong for multi-buffer (jumbo) frames; within noise |
| … without the capture check | esp known | 41, 42 | 41, 43 | no gain |
| … without all three of diagnosis, class counter and helper (what is left: the full parser, address copies, SPI lookup and destination check) | esp known | 41, 42 | 37, 37 | still 1.6× the minimal SPI counter (22, 24 in those runs) |
| other traffic returns right after the class counter (skips the IPsec-only checks) | other: tcp | 15, 16 | 14, 15 | within noise; with the helper also gone, 11, 13 — but the helper gives the right length of multi-buffer frames |
| a 65,536-bit filter of known SPIs checked before the known-SA lookups | esp unknown | 95 | 95 | no gain: a miss in the sparse known-SA hash costs little; the unknown row's update is the cost |
| no IPv4 source address copy before the lookup (measurement only) | esp known | 40 | 36 | needed for unknown rows only: could be deferred to that path |
| no per-class counter update (measurement only) | esp known | 40 | 36 | the class counters are the product |
| two copies of the per-frame code, with and without capture, chosen by one branch at the top, so the hot path is exactly the old one | — | — | — | does not load: the compiler merges the copies' common code (and zeroes the packet struct in both), and the capture copy as a subprogram goes over the 512-byte combined stack |
| the capture check reading the SPI and row count from the packet struct on the stack instead of registers | — | — | — | does not load: the compiler then spills registers it never set, which the verifier refuses |

## Targets not met, and why

- **Known ESP ≤ 1.25× the minimal SPI counter** (1.4–2.0× across this session's
  runs). The
  minimal counter parses IPv4 ESP only, looks the SPI up and adds. The classifier
  also parses every class of docs/CLASSES.md (VLANs, IPv6 extensions, NAT-T
  ports, fragments, malformed frames) before it knows the frame is ESP, checks
  the SA's destination, reads the whole frame length (multi-buffer), and keeps
  per-SA diagnosis (sources, sequence health) and class counters. Taking out the
  diagnosis, the class counter and the helper together (the table above) leaves
  1.6×: the rest is the parser and the contract's destination check. The known
  path does no atomic and touches per-CPU values only.
- **Unknown with an existing row ≤ 1.6×** (2.1–2.3× since the per-CPU front,
  4.4× before). The unknown path is now the known path's cost: one per-CPU slot,
  plain adds; the rest is as above.
- **Other traffic ≤ 1.1× the empty program** (1.5–2.8×). The empty program is
  8–10 ns here, mostly the test-run loop; the per-CPU counter baseline alone is
  1.0–1.5× it in the same runs, and counting other traffic is part of the
  contract (DESIGN: "counted only in totals"). Other traffic pays for the frame
  length helper, the Ethernet and IP parse and one per-CPU counter, and nothing
  of the IPsec work (plain UDP is turned away on its ports).
- **End to end ≥ 90% of the empty program's rate** (met) was met or missed by a
  point from run to run with one round: the generator and the receiver share the
  2 CPUs, so the ratio follows the machine's load; the bench now alternates three
  rounds and sums them.
- **A new unknown SPI in every packet** has no target, and costs 6–8× the minimal
  SPI counter's miss: an LRU insert (a per-CPU free list, a 44-byte key hashed and
  copied, an eviction when full) is most of it. The per-CPU front adds a slot
  write and measured no slower (A/B end to end: 438 against 500 ns before it).
`
