// SPDX-License-Identifier: Apache-2.0

package main

import (
	"net"
	"time"
)

func ns(d time.Duration) float64 { return float64(d.Nanoseconds()) }

func ifindexOf(name string) (int, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return ifc.Index, nil
}
