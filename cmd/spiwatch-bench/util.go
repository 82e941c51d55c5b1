// SPDX-License-Identifier: Apache-2.0

package main

import (
	"net"
)

func ifindexOf(name string) (int, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return ifc.Index, nil
}
