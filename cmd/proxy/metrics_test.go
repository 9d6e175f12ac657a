package main

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rancher/pushprox/internal/testclock"
)

// metricValue returns the value of the series of name whose labels include
// labels, and whether there is one.
func metricValue(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			switch {
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			}
		}
	}
	return 0, false
}

// expectMetric fails the test unless the series exists with value want.
func expectMetric(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string, want float64) {
	t.Helper()
	got, ok := metricValue(t, reg, name, labels)
	if !ok {
		t.Errorf("%s%v missing", name, labels)
		return
	}
	if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// The connection metrics the monitoring mixin relies on follow a client
// through its life: connected, cut, known but silent, forgotten, back.
func TestConnectionMetricsFollowAClientsLife(t *testing.T) {
	clock := testclock.New(time.Unix(1e9, 0))
	cfg := defaultConfig()
	cfg.registrationTimeout = time.Minute
	cfg.maxClients = 123
	cfg.clock = clock.Now
	tp := startProxy(t, cfg)
	poll := map[string]string{"transport": "poll"}
	tunnel := map[string]string{"transport": "tunnel"}
	node1 := map[string]string{"fqdn": "node1"}

	expectMetric(t, tp.reg, "pushprox_proxy_max_clients", nil, 123)
	expectMetric(t, tp.reg, "pushprox_proxy_clients_connected", tunnel, 0)
	expectMetric(t, tp.reg, "pushprox_proxy_client_connects_total", tunnel, 0)
	expectMetric(t, tp.reg, "pushprox_proxy_clients_connected", poll, 0)

	// Parked: connected, seen now.
	ctx, cut := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := tp.poll(ctx, "node1", nil); err == nil {
			resp.Body.Close()
		}
	}()
	tp.waitParked(t, 1)
	expectMetric(t, tp.reg, "pushprox_proxy_clients_connected", poll, 1)
	expectMetric(t, tp.reg, "pushprox_proxy_client_connects_total", poll, 1)
	expectMetric(t, tp.reg, "pushprox_proxy_client_connected", map[string]string{"fqdn": "node1", "transport": "poll"}, 1)
	clock.Advance(10 * time.Second)
	expectMetric(t, tp.reg, "pushprox_proxy_client_last_seen_timestamp_seconds", node1, 1e9+10)
	expectMetric(t, tp.reg, "pushprox_proxy_polls_cut_total", nil, 0)

	// Cut: the poll counts as cut, the client is known but not connected
	// and its last contact stays where the poll ended.
	cut()
	<-done
	waitFor(t, "the cut poll to be released", func() bool {
		v, _ := metricValue(t, tp.reg, "pushprox_proxy_clients_connected", poll)
		return v == 0
	})
	expectMetric(t, tp.reg, "pushprox_proxy_polls_cut_total", nil, 1)
	expectMetric(t, tp.reg, "pushprox_proxy_client_connected", node1, 0)
	clock.Advance(20 * time.Second)
	expectMetric(t, tp.reg, "pushprox_proxy_client_last_seen_timestamp_seconds", node1, 1e9+10)

	// A poll of a known client is no new connection; an empty answer is
	// no cut.
	resp, err := tp.poll(context.Background(), "node1", http.Header{"Prefer": {"wait=1"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	expectMetric(t, tp.reg, "pushprox_proxy_client_connects_total", poll, 1)
	expectMetric(t, tp.reg, "pushprox_proxy_polls_cut_total", nil, 1)

	// Forgotten: its series go; when it comes back, that is a new
	// connection.
	clock.Advance(2 * cfg.registrationTimeout)
	tp.hub.CollectGarbage()
	if _, ok := metricValue(t, tp.reg, "pushprox_proxy_client_connected", node1); ok {
		t.Error("a forgotten client still has pushprox_proxy_client_connected")
	}
	if _, ok := metricValue(t, tp.reg, "pushprox_proxy_client_last_seen_timestamp_seconds", node1); ok {
		t.Error("a forgotten client still has pushprox_proxy_client_last_seen_timestamp_seconds")
	}
	resp, err = tp.poll(context.Background(), "node1", http.Header{"Prefer": {"wait=1"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	expectMetric(t, tp.reg, "pushprox_proxy_client_connects_total", poll, 2)
}

// Per-FQDN series are bounded; the FQDNs kept are the first in sort order,
// so that the set does not change from one scrape to the next.

func TestAFreshProxyExposesTheReferencesRequestSeriesAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	newMetrics(reg)
	starting := startingRequestSeries()
	if len(starting) != 6 {
		t.Fatalf("%d starting series, want the reference's 6", len(starting))
	}
	for _, series := range starting {
		t.Run(series.code+" "+series.path, func(t *testing.T) {
			expectMetric(t, reg, "pushprox_http_requests_total", map[string]string{"code": series.code, "path": series.path}, 0)
		})
	}
}
