package main

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the proxy's own metrics.
type metrics struct {
	httpRequests   *prometheus.CounterVec
	httpDuration   *prometheus.HistogramVec
	proxied        *prometheus.CounterVec
	scrapes        *prometheus.CounterVec
	pollsEmpty     prometheus.Counter
	pushesRejected *prometheus.CounterVec
	scrapeWait     prometheus.Observer
	scrapeClient   prometheus.Observer
	proxiedBytes   prometheus.Counter
	// registrationsRefused counts polls and tunnels refused a new
	// registration, by reason.
	registrationsRefused *prometheus.CounterVec
}

// Reasons of pushprox_proxy_registrations_refused_total.
const (
	refusedRateLimited      = "rate_limited"        // --registration.rate-per-source
	refusedTooManyClients   = "too_many_clients"    // --registration.max-clients
	refusedTooManyLabelSets = "too_many_label_sets" // rendezvous.MaxLabelSetsPerFQDN
)

func newMetrics(reg prometheus.Registerer) *metrics {
	factory := promauto.With(reg)
	outcomes := factory.NewCounterVec(prometheus.CounterOpts{
		Name: "pushprox_proxy_scrapes_total",
		Help: "Proxied scrapes by outcome.",
	}, []string{"outcome"})
	for _, outcome := range []string{outcomeDelivered, outcomeTargetError, outcomeNoClient, outcomeClientTimeout, outcomeAborted, outcomeRefused} {
		outcomes.WithLabelValues(outcome)
	}
	phases := factory.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pushprox_proxy_scrape_phase_seconds",
		Help:    "Time of delivered scrapes by phase: waiting for a poll of the target's client, and the client's round trip until its push arrives.",
		Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30},
	}, []string{"phase"})
	rejected := factory.NewCounterVec(prometheus.CounterOpts{
		Name: "pushprox_proxy_pushes_rejected_total",
		Help: "Pushes refused, by reason.",
	}, []string{"reason"})
	// Every reason exists from the start, so that rates over it work
	// before the first refusal.
	for _, reason := range []string{"malformed", "unknown_id", "expired", "forbidden", "too_large", "undelivered"} {
		rejected.WithLabelValues(reason)
	}
	refusedRegistrations := factory.NewCounterVec(prometheus.CounterOpts{
		Name: "pushprox_proxy_registrations_refused_total",
		Help: "Polls and tunnels refused a new client registration, by reason: rate_limited (--registration.rate-per-source), too_many_clients (--registration.max-clients), too_many_label_sets.",
	}, []string{"reason"})
	for _, reason := range []string{refusedRateLimited, refusedTooManyClients, refusedTooManyLabelSets} {
		refusedRegistrations.WithLabelValues(reason)
	}
	httpRequests := factory.NewCounterVec(prometheus.CounterOpts{
		Name: "pushprox_http_requests_total",
		Help: "Number of HTTP requests to the proxy's own endpoints.",
	}, []string{"code", "path"})
	for _, series := range startingRequestSeries() {
		httpRequests.WithLabelValues(series.code, series.path)
	}
	return &metrics{
		registrationsRefused: refusedRegistrations,
		scrapeWait:           phases.WithLabelValues("wait_for_poll"),
		scrapeClient:         phases.WithLabelValues("client"),
		proxiedBytes: factory.NewCounter(prometheus.CounterOpts{
			Name: "pushprox_proxy_proxied_bytes_total",
			Help: "Bytes of scrape answers relayed to Prometheus.",
		}),
		httpRequests: httpRequests,
		httpDuration: factory.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pushprox_http_duration_seconds",
			Help:    "Time taken by HTTP requests to the proxy's own endpoints.",
			Buckets: []float64{.001, .01, .1, 1, 5, 15, 30, 60, 300},
		}, []string{"path"}),
		// The reference proxy's name, misspelt "pushproxy_": dashboards
		// built for it count on it, so it stays.
		proxied: factory.NewCounterVec(prometheus.CounterOpts{
			Name: "pushproxy_proxied_requests_total",
			Help: "Number of scrapes proxied, by the status answered to Prometheus.",
		}, []string{"code"}),
		scrapes: outcomes,
		pollsEmpty: factory.NewCounter(prometheus.CounterOpts{
			Name: "pushprox_proxy_polls_empty_total",
			Help: "Polls answered without a scrape because their wait preference passed.",
		}),
		pushesRejected: rejected,
	}
}

// requestSeries is one series of pushprox_http_requests_total.
type requestSeries struct{ code, path string }

// startingRequestSeries are the series of pushprox_http_requests_total
// that the reference proxy exposes from its start, so that rules and
// dashboards written for it see 0, not nothing.
func startingRequestSeries() []requestSeries {
	return []requestSeries{
		{"200", "/clients"}, {"200", "/metrics"}, {"200", "/poll"}, {"408", "/poll"}, {"200", "/push"}, {"500", "/push"},
	}
}

// observeHTTP counts and times a request of one endpoint that ended with
// code, for handlers that outlive their net/http request (detached polls).
func (m *metrics) observeHTTP(path string, code int, started time.Time) {
	if code == 0 {
		code = http.StatusOK
	}
	m.httpRequests.WithLabelValues(strconv.Itoa(code), path).Inc()
	m.httpDuration.WithLabelValues(path).Observe(time.Since(started).Seconds())
}

// statusRecorder records the status a handler answers.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

// WriteHeader records code and sends it.
func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

// Write sends b, with the 200 it implies if no status was sent.
func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// instrument counts and times the requests of one endpoint.
func (m *metrics) instrument(path string, h http.HandlerFunc) http.Handler {
	labels := prometheus.Labels{"path": path}
	return promhttp.InstrumentHandlerCounter(m.httpRequests.MustCurryWith(labels),
		promhttp.InstrumentHandlerDuration(m.httpDuration.MustCurryWith(labels), h))
}
