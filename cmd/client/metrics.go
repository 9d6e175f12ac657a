package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// metrics are the client's own metrics.
type metrics struct {
	scrapeErrors prometheus.Counter
	pushErrors   prometheus.Counter
	pollErrors   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	factory := promauto.With(reg)
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
	}
}
