package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Transports a client can reach a proxy with, the values of the transport
// label. This client only polls.
const (
	transportPoll   = "poll"
	transportTunnel = "tunnel"
)

// metrics are the client's own metrics.
type metrics struct {
	scrapeErrors   prometheus.Counter
	pushErrors     prometheus.Counter
	pollErrors     prometheus.Counter
	pollCuts       prometheus.Counter
	scrapeDuration prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	factory := promauto.With(reg)
	transport := factory.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pushprox_client_transport",
		Help: "1 for the transport the client reaches its proxies with now, 0 for the others.",
	}, []string{"transport"})
	transport.WithLabelValues(transportPoll).Set(1)
	transport.WithLabelValues(transportTunnel).Set(0)
	return &metrics{
		scrapeErrors: factory.NewCounter(prometheus.CounterOpts{
			Name: "pushprox_client_scrape_errors_total",
			Help: "Number of scrapes that failed or were refused; each is pushed back as a 500.",
		}),
		pushErrors: factory.NewCounter(prometheus.CounterOpts{
			Name: "pushprox_client_push_errors_total",
			Help: "Number of pushes to the proxy that failed or were refused.",
		}),
		pollErrors: factory.NewCounter(prometheus.CounterOpts{
			Name: "pushprox_client_poll_errors_total",
			Help: "Number of polls to the proxy that failed.",
		}),
		pollCuts: factory.NewCounter(prometheus.CounterOpts{
			Name: "pushprox_client_poll_cuts_total",
			Help: "Number of polls ended by a 502, 503 or 504, as a load balancer or reverse proxy between client and proxy answers when it cuts a request. Also counted as poll errors.",
		}),
		scrapeDuration: factory.NewHistogram(prometheus.HistogramOpts{
			Name: "pushprox_client_scrape_duration_seconds",
			Help: "Time from taking a scrape request to the end of pushing its answer, failed scrapes included.",
			// Scrape timeouts run from a few seconds to minutes.
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}),
	}
}
