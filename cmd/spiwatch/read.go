// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"github.com/spiwatch/spiwatch/internal/offline"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/loader"
)

const readUsageHead = `spiwatch read classifies a capture you already have (tcpdump, Wireshark, tshark)
and prints the same report as the live tool: counts per class and outcome, unknown
and reserved SPIs per peer with first and last seen (capture time), known SAs.

Usage:
  spiwatch read FILE.pcap|FILE.pcapng [flags]

By default every frame runs through the real XDP program with BPF_PROG_TEST_RUN
(root, as spiwatch itself); --no-bpf uses the Go reference classifier, which needs no
privileges and gives the same results. Ethernet, raw IP, Linux cooked (SLL, SLL2) and
BSD loopback captures are read, gzip-compressed or not. A frame cut by the capture's
snap length (tcpdump -s) is classified and counted as it was on the wire, when the
bytes captured decide its class; else as captured (other, malformed or fragment), but
counted at its length on the wire.

Examples:
  spiwatch read gw.pcap --known-file /etc/spiwatch/known
  spiwatch read gw.pcapng --no-bpf --json --top 0

Flags:
`

func runRead(args []string, stdout, stderr io.Writer) int {
	var (
		knownSPIs, nattPorts []string
		knownFile            string
		jsonOut, noBPF       bool
		top                  int
		unknownMax, knownMax uint32
	)
	fs := pflag.NewFlagSet("spiwatch read", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	fs.StringArrayVar(&knownSPIs, "known-spi", nil, "known SA as SPI[@DESTINATION] (repeatable)")
	fs.StringVar(&knownFile, "known-file", "", "file of known SAs, one SPI[@DESTINATION] per line, # comments")
	fs.StringArrayVar(&nattPorts, "natt-port", nil, "UDP port carrying ESP-in-UDP (repeatable, up to 8; default 4500)")
	fs.BoolVar(&noBPF, "no-bpf", false, "classify with the Go reference classifier instead of the XDP program (no root needed)")
	fs.BoolVar(&jsonOut, "json", false, "print the report as one JSON object")
	fs.IntVar(&top, "top", 20, "unknown SPIs shown, most packets first (0: all)")
	fs.Uint32Var(&unknownMax, "unknown-table-size", loader.DefaultUnknownMax, "entries in the unknown-SPI table (least recently seen are evicted, and counted)")
	fs.Uint32Var(&knownMax, "known-table-size", loader.DefaultKnownMax, "entries in the known-SA map")
	fs.Usage = func() {
		fmt.Fprint(stderr, readUsageHead)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\nExit status: 0 read to the end, 1 error or capture read only in part (the report says PARTIAL), 2 bad usage.\n")
	}
	if code, ok := parseFlags(fs, args, "spiwatch read", -1, stderr); !ok {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "spiwatch read: %v\n", err)
		return exitUsage
	}
	if fs.NArg() != 1 {
		return fail(fmt.Errorf("want one capture file, got %d arguments", fs.NArg()))
	}
	if top < 0 {
		return fail(fmt.Errorf("--top %d: must be 0 (all) or more", top))
	}
	if err := checkTableSizes(unknownMax, knownMax); err != nil {
		return fail(err)
	}
	o := offline.Options{NoBPF: noBPF, Top: top}
	var err error
	if o.Settings.NATTPorts, err = parseNATTPorts(nattPorts); err != nil {
		return fail(err)
	}
	o.Settings.UnknownMax, o.Settings.KnownMax = unknownMax, knownMax
	var files []string
	if knownFile != "" {
		files = append(files, knownFile)
	}
	if o.Known, err = readKnown(knownSPIs, files, knownMax); err != nil {
		return fail(err)
	}

	s, err := offline.Read(fs.Arg(0), o)
	if s == nil {
		fmt.Fprintf(stderr, "spiwatch read: %v\n", err)
		return exitError
	}
	if jsonOut {
		err2 := report.WriteJSON(stdout, s, top)
		if err2 != nil {
			fmt.Fprintf(stderr, "spiwatch read: %v\n", err2)
			return exitError
		}
	} else if err2 := report.WriteText(stdout, s, top); err2 != nil {
		fmt.Fprintf(stderr, "spiwatch read: %v\n", err2)
		return exitError
	}
	if err != nil {
		fmt.Fprintf(stderr, "spiwatch read: %v\n", err)
		return exitError
	}
	return exitOK
}
