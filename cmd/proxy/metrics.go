package main

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Outcomes of a proxied scrape, the values of the outcome label.
const (
	outcomeDelivered     = "delivered"      // the client's answer reached Prometheus
	outcomeTargetError   = "target_error"   // the client pushed a 5xx: target down or scrape refused
	outcomeNoClient      = "no_client"      // no poll of the FQDN arrived in time
	outcomeClientTimeout = "client_timeout" // a client took the scrape but did not push in time
	outcomeAborted       = "aborted"        // Prometheus went away, or the transfer broke
	outcomeRefused       = "refused"        // bad request, or the proxy is shutting down
)

// pushRejectReasons are the values of the reason label of refused pushes.
var pushRejectReasons = []string{"malformed", "unknown_id", "expired", "forbidden", "too_large", "undelivered"}

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
	pollsCut       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, coord *coordinator) *metrics {
	factory := promauto.With(reg)
	factory.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pushprox_proxy_clients",
		Help: "Number of known clients.",
	}, func() float64 { return float64(coord.clientCount()) })
	factory.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pushprox_proxy_parked_polls",
		Help: "Number of client polls parked, waiting for a scrape.",
	}, func() float64 { return float64(coord.parkedCount()) })
	// Both transports' series always exist, so that a query or alert on
	// one of them never sees "no data" where zero is meant. This proxy
	// only has polls.
	connected := map[string]func() float64{
		transportPoll:   func() float64 { return float64(coord.connectedCount()) },
		transportTunnel: func() float64 { return 0 },
	}
	connects := map[string]func() float64{
		transportPoll:   func() float64 { return float64(coord.connectCount()) },
		transportTunnel: func() float64 { return 0 },
	}
	for _, transport := range []string{transportPoll, transportTunnel} {
		labels := prometheus.Labels{"transport": transport}
		factory.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "pushprox_proxy_clients_connected",
			Help:        "Client registrations with a live connection now (a poll parked or being answered, or an open tunnel), by transport.",
			ConstLabels: labels,
		}, connected[transport])
		factory.NewCounterFunc(prometheus.CounterOpts{
			Name:        "pushprox_proxy_client_connects_total",
			Help:        "Client connections established, by transport: for poll, each registration created (the first poll of an FQDN and label set not known); for tunnel, each tunnel accepted.",
			ConstLabels: labels,
		}, connects[transport])
	}
	factory.NewGauge(prometheus.GaugeOpts{
		Name: "pushprox_proxy_max_clients",
		Help: "The most client registrations known at once (--registration.max-clients).",
	}).Set(float64(coord.maxClients))
	reg.MustRegister(clientCollector{coord: coord})
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
	// Every reason's series exists from the start, so that rates and the
	// dashboard show zero rather than nothing.
	for _, reason := range pushRejectReasons {
		rejected.WithLabelValues(reason)
	}
	return &metrics{
		scrapeWait:   phases.WithLabelValues("wait_for_poll"),
		scrapeClient: phases.WithLabelValues("client"),
		proxiedBytes: factory.NewCounter(prometheus.CounterOpts{
			Name: "pushprox_proxy_proxied_bytes_total",
			Help: "Bytes of scrape answers relayed to Prometheus.",
		}),
		httpRequests: factory.NewCounterVec(prometheus.CounterOpts{
			Name: "pushprox_http_requests_total",
			Help: "Number of HTTP requests to the proxy's own endpoints.",
		}, []string{"code", "path"}),
		httpDuration: factory.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pushprox_http_duration_seconds",
			Help:    "Time taken by HTTP requests to the proxy's own endpoints.",
			Buckets: []float64{.001, .01, .1, 1, 5, 15, 30, 60, 300},
		}, []string{"path"}),
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
		pollsCut: factory.NewCounter(prometheus.CounterOpts{
			Name: "pushprox_proxy_polls_cut_total",
			Help: "Parked polls whose connection ended before they were answered: cut by something in between, or the client went away.",
		}),
	}
}

var (
	clientConnectedDesc = prometheus.NewDesc("pushprox_proxy_client_connected",
		"Per known FQDN (at most "+strconv.Itoa(maxClientSeries)+"): 1 while a client of it has a live connection, 0 while it is known but not connected; transport is that of its latest connection.",
		[]string{"fqdn", "transport"}, nil)
	clientLastSeenDesc = prometheus.NewDesc("pushprox_proxy_client_last_seen_timestamp_seconds",
		"Per known FQDN (at most "+strconv.Itoa(maxClientSeries)+"): Unix time of the latest contact with a client of it; now while connected.",
		[]string{"fqdn"}, nil)
)

// clientCollector exports the per-FQDN series, computed at each scrape from
// the coordinator's registrations, so that a forgotten client's series
// disappear with it.
type clientCollector struct {
	coord *coordinator
}

func (cc clientCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- clientConnectedDesc
	ch <- clientLastSeenDesc
}

func (cc clientCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range cc.coord.fqdnStatuses(maxClientSeries) {
		connected := 0.0
		if st.connected {
			connected = 1
		}
		// Every connection of this proxy is a poll.
		ch <- prometheus.MustNewConstMetric(clientConnectedDesc, prometheus.GaugeValue, connected, st.fqdn, transportPoll)
		ch <- prometheus.MustNewConstMetric(clientLastSeenDesc, prometheus.GaugeValue,
			float64(st.lastSeen.UnixNano())/1e9, st.fqdn)
	}
}

// instrument counts and times the requests of one endpoint.
func (m *metrics) instrument(path string, h http.HandlerFunc) http.Handler {
	labels := prometheus.Labels{"path": path}
	return promhttp.InstrumentHandlerCounter(m.httpRequests.MustCurryWith(labels),
		promhttp.InstrumentHandlerDuration(m.httpDuration.MustCurryWith(labels), h))
}
