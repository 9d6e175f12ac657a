package rendezvous

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	dto "github.com/prometheus/client_model/go"
)

// maxClientSeries bounds the FQDNs exported with series of their own, so
// that a large fleet cannot make the proxy's /metrics unbounded; beyond it
// the fleet-wide gauges still count every client.
const maxClientSeries = 10000

// hubMetrics are the metrics of a Hub.
type hubMetrics struct {
	connects *prometheus.CounterVec
	pollsCut prometheus.Counter
}

func newHubMetrics(h *Hub, maxClients int, reg prometheus.Registerer) *hubMetrics {
	factory := promauto.With(reg)
	m := &hubMetrics{
		connects: factory.NewCounterVec(prometheus.CounterOpts{
			Name: "pushprox_proxy_client_connects_total",
			Help: "Client connections established: tunnels accepted, and registrations created by a poll.",
		}, []string{"transport"}),
		pollsCut: factory.NewCounter(prometheus.CounterOpts{
			Name: "pushprox_proxy_polls_cut_total",
			Help: "Parked polls whose connection ended before they were answered: cut by something in between, or the client went away.",
		}),
	}
	for _, transport := range []string{TransportPoll, TransportTunnel} {
		m.connects.WithLabelValues(transport)
	}
	factory.NewGauge(prometheus.GaugeOpts{
		Name: "pushprox_proxy_max_clients",
		Help: "Most client registrations kept at once (--registration.max-clients).",
	}).Set(float64(maxClients))
	if reg != nil {
		reg.MustRegister(newHubCollector(h))
	}
	return m
}

// hubCollector exports gauges read from one snapshot of the hub's state.
type hubCollector struct {
	hub                                          *Hub
	clients, parked, connected, tunnels, targets *prometheus.Desc
	clientConnected, clientLastSeen              *prometheus.Desc
	// The names of the per-FQDN series' labels, which their label pairs
	// point to.
	fqdnLabel, transportLabel string
}

func newHubCollector(h *Hub) *hubCollector {
	return &hubCollector{
		hub: h,
		clients: prometheus.NewDesc("pushprox_proxy_clients",
			"Number of known clients.", nil, nil),
		targets: prometheus.NewDesc("pushprox_proxy_targets",
			"Number of known targets that clients answer for from their targets files; each also counts among pushprox_proxy_clients.", nil, nil),
		parked: prometheus.NewDesc("pushprox_proxy_parked_polls",
			"Number of client polls parked, waiting for a scrape.", nil, nil),
		connected: prometheus.NewDesc("pushprox_proxy_clients_connected",
			"Client registrations with a live connection now, by transport.", []string{"transport"}, nil),
		tunnels: prometheus.NewDesc("pushprox_proxy_tunnels",
			"Tunnels attached now.", nil, nil),
		clientConnected: prometheus.NewDesc("pushprox_proxy_client_connected",
			"1 while a client of the FQDN has a live connection, 0 while it is known but not connected; transport of its latest connection.", []string{"fqdn", "transport"}, nil),
		clientLastSeen: prometheus.NewDesc("pushprox_proxy_client_last_seen_timestamp_seconds",
			"Unix time of the latest contact with a client of the FQDN (now, while connected).", []string{"fqdn"}, nil),
		fqdnLabel:      "fqdn",
		transportLabel: "transport",
	}
}

func (c *hubCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.clients, c.targets, c.parked, c.connected, c.tunnels, c.clientConnected, c.clientLastSeen} {
		ch <- d
	}
}

// fqdnSeries is what the per-client series say of one FQDN, and the two
// series: with thousands of clients, a gather makes two series per client,
// and prometheus.MustNewConstMetric would allocate about ten objects for
// each; these come in one slice.
type fqdnSeries struct {
	fqdn      string
	connected bool
	transport string
	lastSeen  float64

	connectedGauge, lastSeenGauge fqdnGauge
}

// fqdnGauge is one per-FQDN gauge, its label pairs sorted by name as the
// registry wants them.
type fqdnGauge struct {
	desc   *prometheus.Desc
	value  float64
	pairs  [2]dto.LabelPair
	labels [2]*dto.LabelPair
	n      int // labels used
}

// set fills the gauge with value and its label pairs (name, value), which
// must outlive the gather.
func (g *fqdnGauge) set(desc *prometheus.Desc, value float64, names, values []*string) {
	g.desc, g.value, g.n = desc, value, len(names)
	for i := range names {
		g.pairs[i].Name, g.pairs[i].Value = names[i], values[i]
		g.labels[i] = &g.pairs[i]
	}
}

func (g *fqdnGauge) Desc() *prometheus.Desc { return g.desc }

func (g *fqdnGauge) Write(out *dto.Metric) error {
	out.Label = g.labels[:g.n]
	out.Gauge = &dto.Gauge{Value: &g.value}
	return nil
}

func (c *hubCollector) Collect(ch chan<- prometheus.Metric) {
	h := c.hub
	h.mu.Lock()
	now := h.now()
	known, targets, connectedPoll, connectedTunnel, tunnels := 0, 0, 0, 0, 0
	// Each FQDN is one entry of byFQDN; the slice never grows past its
	// capacity, so that pointers into it stay valid.
	perFQDN := make([]fqdnSeries, 0, min(len(h.registry.byFQDN), maxClientSeries))
	for fqdn, byLabels := range h.registry.byFQDN {
		var state *fqdnSeries
		for _, r := range byLabels {
			if !h.registry.alive(r, now) {
				continue
			}
			known++
			if r.target != "" {
				targets++
			}
			switch {
			case r.tunnels > 0:
				connectedTunnel++
			case r.polls > 0:
				connectedPoll++
			}
			if r.target == "" {
				// A tunnel also counts on each of its targets; it is one.
				tunnels += r.tunnels
			}
			if state == nil {
				if len(perFQDN) == cap(perFQDN) {
					continue
				}
				perFQDN = append(perFQDN, fqdnSeries{fqdn: fqdn})
				state = &perFQDN[len(perFQDN)-1]
			}
			seen := r.lastSeen
			if r.connected() {
				seen = now
				state.connected = true
			}
			// Registrations seen at the same time, as every connected one
			// is, agree on the tunnel, so that the series does not flip
			// between gathers with the map's order.
			t := float64(seen.UnixNano()) / 1e9
			if t > state.lastSeen || t == state.lastSeen && r.transport == TransportTunnel {
				state.lastSeen = t
				state.transport = r.transport
			}
		}
	}
	parked := h.polls.len()
	h.mu.Unlock()

	ch <- prometheus.MustNewConstMetric(c.clients, prometheus.GaugeValue, float64(known))
	ch <- prometheus.MustNewConstMetric(c.targets, prometheus.GaugeValue, float64(targets))
	ch <- prometheus.MustNewConstMetric(c.parked, prometheus.GaugeValue, float64(parked))
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, float64(connectedPoll), TransportPoll)
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, float64(connectedTunnel), TransportTunnel)
	ch <- prometheus.MustNewConstMetric(c.tunnels, prometheus.GaugeValue, float64(tunnels))
	for i := range perFQDN {
		state := &perFQDN[i]
		connected := 0.0
		if state.connected {
			connected = 1
		}
		state.connectedGauge.set(c.clientConnected, connected,
			[]*string{&c.fqdnLabel, &c.transportLabel}, []*string{&state.fqdn, &state.transport})
		state.lastSeenGauge.set(c.clientLastSeen, state.lastSeen, []*string{&c.fqdnLabel}, []*string{&state.fqdn})
		ch <- &state.connectedGauge
		ch <- &state.lastSeenGauge
	}
}
