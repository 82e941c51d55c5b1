// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
)

// scrape fetches http://addr/metrics from inside namespace ns and parses it with
// Prometheus' own text parser.
func scrape(t *testing.T, ns, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true, // one scrape, one connection: nothing left open on either side
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			var c net.Conn
			err := netlab.In(ns, func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, a)
				return err
			})
			return c, err
		},
	}}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scraping %s in %s: %v", addr, ns, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: HTTP %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the exposition: %v", err)
	}
	return fams
}

// value returns the sample of family name whose labels include want.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no metric %s", name)
	}
next:
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

// TestMetrics scrapes a running spiwatch after the end-to-end mix and checks the
// exposition against what was sent.
func TestMetrics(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swprom")
	args := append([]string{"-i", lab.Receiver, "--json", "--interval", "100ms", "--metrics-addr", ":9464", "--metrics-top-unknown", "200"}, e2eKnown...)
	s := startSpiwatch(t, spiwatch, lab.NSB, args...)
	if !s.waitStderr("metrics at http://127.0.0.1:9464/metrics") {
		t.Errorf("stderr does not say where the metrics are: %s", s.stderr)
	}
	e := expect(t, e2eMix, e2eKnown, false)
	runGen(t, gen, lab.NSA, lab.Sender, e2eMix)
	s.waitTotal(t, e.total)
	fams := scrape(t, lab.NSB, "127.0.0.1:9464")
	defer s.stop(t)

	var total float64
	for _, m := range fams["spiwatch_packets_total"].Metric {
		total += m.Counter.GetValue()
	}
	if uint64(total) != e.total {
		t.Errorf("spiwatch_packets_total sums to %v, sent %d", total, e.total)
	}
	for key, want := range e.perClass {
		class, outcome, ok := strings.Cut(key, "/")
		if !ok {
			outcome = "none"
			if class == "esp" || class == "esp-in-udp" {
				continue // their per-outcome rows are checked
			}
		}
		got, found := value(t, fams, "spiwatch_packets_total", map[string]string{"interface": lab.Receiver, "class": class, "outcome": outcome})
		if !found || uint64(got) != want {
			t.Errorf("spiwatch_packets_total{class=%q,outcome=%q} = %v (found %v), want %d", class, outcome, got, found, want)
		}
	}
	if got, _ := value(t, fams, "spiwatch_unknown_table_entries", nil); int(got) != len(e.unknown) {
		t.Errorf("spiwatch_unknown_table_entries = %v, want %d", got, len(e.unknown))
	}
	if got, _ := value(t, fams, "spiwatch_unknown_table_evictions_total", nil); got != 0 {
		t.Errorf("evictions %v, want 0", got)
	}
	if got, _ := value(t, fams, "spiwatch_known_sas", nil); got != 3 {
		t.Errorf("spiwatch_known_sas = %v, want 3", got)
	}
	for k, want := range e.unknown {
		got, found := value(t, fams, "spiwatch_unknown_spi_packets_total", map[string]string{
			"spi": k.spi, "src": k.src, "dst": k.dst, "sport": fmt.Sprint(k.sport), "dport": fmt.Sprint(k.dport)})
		if !found || uint64(got) != want {
			t.Errorf("unknown %+v: %v (found %v), want %d", k, got, found, want)
		}
	}
	if got, found := value(t, fams, "spiwatch_unknown_spi_packets_total", map[string]string{"spi": "0xdeadbeef", "verdict": "unknown"}); !found || got != 1500 {
		t.Errorf("stale SPI 0xdeadbeef: %v (found %v), want 1500 with verdict unknown", got, found)
	}
	for sa, want := range e.known {
		spi, dst, _ := strings.Cut(sa, "@")
		if got, found := value(t, fams, "spiwatch_sa_packets_total", map[string]string{"spi": spi, "dst": dst}); !found || uint64(got) != want {
			t.Errorf("spiwatch_sa_packets_total{spi=%s,dst=%s} = %v, want %d", spi, dst, got, want)
		}
	}
}

// TestMetricsCardinalityCap: unknown-SPI series stop at --metrics-top-unknown and
// the rest is counted as dropped.
func TestMetricsCardinalityCap(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swcap")
	s := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--json", "--interval", "100ms", "--metrics-addr", "127.0.0.1:9465", "--metrics-top-unknown", "5")
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0x100000 spis=300 count=300"})
	s.waitTotal(t, 300)
	fams := scrape(t, lab.NSB, "127.0.0.1:9465")
	defer s.stop(t)
	if n := len(fams["spiwatch_unknown_spi_packets_total"].GetMetric()); n != 5 {
		t.Errorf("%d unknown-SPI series, want 5", n)
	}
	if got, _ := value(t, fams, "spiwatch_unknown_spi_series_dropped", nil); got != 295 {
		t.Errorf("dropped %v series, want 295", got)
	}
}

// TestMetricsPortInUse: a busy metrics port is an error at start, before anything
// is attached.
func TestMetricsPortInUse(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, _ := buildBinaries(t)
	lab := newLab(t, "swport")
	var ln net.Listener
	if err := netlab.In(lab.NSB, func() (err error) {
		ln, err = net.Listen("tcp", "127.0.0.1:9466")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	out, err := netlab.Command(lab.NSB, spiwatch, "-i", lab.Receiver, "--metrics-addr", ":9466").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "127.0.0.1:9466") || !strings.Contains(string(out), "address already in use") {
		t.Errorf("spiwatch with a busy port: %v: %s", err, out)
	}
	if xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Error("an XDP program was attached although spiwatch failed at start")
	}
}
