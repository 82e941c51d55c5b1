// SPDX-License-Identifier: Apache-2.0

// Command dropper is TestDropKeepsAsUser's: it makes a BPF map, drops privileges
// with privdrop.Drop(USER, CAPS...), and says what it runs as, with which
// capabilities, and whether the map can still be read.
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/spiwatch/spiwatch/internal/privdrop"
)

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: dropper USER [CAP...]"))
	}
	var caps []int
	for _, a := range os.Args[2:] {
		c, err := strconv.Atoi(a)
		if err != nil {
			fail(err)
		}
		caps = append(caps, c)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		fail(fmt.Errorf("making a map: %w", err))
	}
	if err := privdrop.Drop(os.Args[1], caps...); err != nil {
		fail(err)
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fail(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		for _, field := range []string{"Uid", "CapEff", "CapPrm"} {
			if v, ok := strings.CutPrefix(l, field+":"); ok {
				f := strings.Fields(v)
				if field == "Uid" {
					f = f[:3] // real, effective, saved
				}
				fmt.Printf("%s %s\n", field, strings.Join(f, " "))
			}
		}
	}
	var v uint32
	if err := m.Lookup(uint32(0), &v); err != nil {
		fail(fmt.Errorf("reading the map: %w", err))
	}
	fmt.Println("map read")
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "dropper: %v\n", err)
	os.Exit(1)
}
