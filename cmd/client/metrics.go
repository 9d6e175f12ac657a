package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// The transports a client can carry scrapes on, as the values of the
// transport label.
const (
	transportPoll   = "poll"
	transportTunnel = "tunnel"
)

// metrics are the client's own metrics. Their names are a contract with
// dashboards and alerts.
type metrics struct {
	scrapeErrors   prometheus.Counter
	pushErrors     prometheus.Counter
	pollErrors     prometheus.Counter
	pollCuts       prometheus.Counter
	scrapeDuration prometheus.Histogram
	transport      *prometheus.GaugeVec
	// Of the targets file (--targets.file).
	targets           prometheus.Gauge
	targetsReloadOK   prometheus.Gauge
	targetsReloadTime prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	factory := promauto.With(reg)
	m := &metrics{
		scrapeErrors: factory.NewCounter(prometheus.CounterOpts{
			Name: "pushprox_client_scrape_errors_total",
			Help: "Number of scrapes that failed or were refused; each is pushed back as a 500.",
		}),
		pushErrors: factory.NewCounter(prometheus.CounterOpts{
			Name: "pushprox_client_push_errors_total",
			Help: "Number of answers that could not be sent back to the proxy (a push, or a tunnel stream), failed or refused.",
		}),
		pollErrors: factory.NewCounter(prometheus.CounterOpts{
			Name: "pushprox_client_poll_errors_total",
			Help: "Number of polls to the proxy that failed; polls cut by a gateway are not among them.",
		}),
		pollCuts: factory.NewCounter(prometheus.CounterOpts{
			Name: "pushprox_client_poll_cuts_total",
			Help: "Number of polls ended by a 502, 503 or 504 from something between client and proxy; each is made again at once with a shorter wait.",
		}),
		scrapeDuration: factory.NewHistogram(prometheus.HistogramOpts{
			Name:    "pushprox_client_scrape_duration_seconds",
			Help:    "Time from taking a scrape request to the end of sending its answer back, failed scrapes included.",
			Buckets: prometheus.DefBuckets,
		}),
		transport: factory.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pushprox_client_transport",
			Help: "1 for the transport scrapes are carried on (poll or tunnel), 0 for the other.",
		}, []string{"transport"}),
		targets: factory.NewGauge(prometheus.GaugeOpts{
			Name: "pushprox_client_targets",
			Help: "Number of targets of the targets file the client answers for besides its own FQDN.",
		}),
		targetsReloadOK: factory.NewGauge(prometheus.GaugeOpts{
			Name: "pushprox_client_targets_last_reload_successful",
			Help: "1 if the targets file parsed when last read (or there is none), 0 if not (the previous targets are then kept).",
		}),
		targetsReloadTime: factory.NewGauge(prometheus.GaugeOpts{
			Name: "pushprox_client_targets_last_reload_success_timestamp_seconds",
			Help: "Unix time the targets in force were read from the targets file.",
		}),
	}
	m.setTransport("")
	return m
}

// setTransport marks the transport in use; "" marks none.
func (m *metrics) setTransport(inUse string) {
	for _, transport := range []string{transportPoll, transportTunnel} {
		value := 0.0
		if transport == inUse {
			value = 1
		}
		m.transport.WithLabelValues(transport).Set(value)
	}
}
