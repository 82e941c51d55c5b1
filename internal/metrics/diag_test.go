// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"net/netip"
	"testing"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/report"
	"github.com/spiwatch/spiwatch/maps"
)

// TestIKEMessagesTotalRecreatedRowGrown: a row evicted and created again that
// counted past its old count before the next scrape is still a new row (its
// first-seen stamp says so): the old row's packets stay in the counter.
func TestIKEMessagesTotalRecreatedRowGrown(t *testing.T) {
	row := func(n, first uint64) maps.IKERow {
		return maps.IKERow{Peer: netip.MustParseAddr("198.51.100.1"), Ifindex: 2, Version: 2, Exchange: classify.IKESAInit,
			Dir: classify.IKERequest, Packets: n, FirstSeenNs: first}
	}
	src := &diagSource{ike: []maps.IKERow{row(10, 1e9)}}
	c := NewCollector(src, []report.Iface{{Name: "eth0", Ifindex: 2}}, 0)
	labels := map[string]string{"exchange": "IKE_SA_INIT", "dir": "request", "interface": "eth0"}
	if v, _ := value(t, gather(t, c), "spiwatch_ike_messages_total", labels); v != 10 {
		t.Fatalf("first scrape %v, want 10", v)
	}
	src.ike = []maps.IKERow{row(15, 5e9)} // evicted, created again, 15 since
	if v, _ := value(t, gather(t, c), "spiwatch_ike_messages_total", labels); v != 25 {
		t.Errorf("after the row was created again: %v, want 25 (10 of the old row + 15)", v)
	}
}
