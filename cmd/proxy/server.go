package main

import (
	"cmp"
	"context"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rancher/pushprox/internal/mux"
	"github.com/rancher/pushprox/internal/rendezvous"
)

// proxy serves Prometheus' proxy requests, the clients' polls, pushes and
// tunnels, discovery and the landing page. It translates HTTP into calls
// of the rendezvous hub and the hub's errors into statuses.
type proxy struct {
	cfg     config
	logger  log.Logger
	hub     *rendezvous.Hub
	metrics *metrics
	mux     *http.ServeMux
	tunnels tunnels
	// idleStreams bounds the memory held by the tunnels' idle streams.
	idleStreams *streamBudget
	// tunnelBuffers hold what the tunnels receive, shared by all of them.
	tunnelBuffers *mux.Buffers
	// connects counts CONNECT tunnels; connectsOpen those open now,
	// against --connect.max-total.
	connects     *connectMetrics
	connectsOpen atomic.Int64
	// limiter bounds new registrations per source while the proxy has no
	// authentication; nil when --registration.rate-per-source is 0.
	limiter *sourceLimiter
	// detached are the polls parked outside net/http.
	detached *detachedPolls
	// buffers recycles relay copy buffers, so that many scrapes at once
	// do not each allocate one.
	buffers sync.Pool
}

func newProxy(cfg config, logger log.Logger, reg prometheus.Registerer, gatherer prometheus.Gatherer) *proxy {
	p := &proxy{
		cfg:    cfg,
		logger: logger,
		hub: rendezvous.New(rendezvous.Config{
			RegistrationTimeout: cfg.registrationTimeout,
			MaxClients:          cfg.maxClients,
			MaxTargetsPerClient: cfg.maxTargetsPerClient,
			Now:                 cfg.clock,
		}, logger, reg),
		metrics:       newMetrics(reg),
		mux:           http.NewServeMux(),
		tunnels:       tunnels{open: map[*mux.Session]struct{}{}},
		idleStreams:   &streamBudget{left: cmp.Or(cfg.idleStreamMemory, defaultIdleStreamMemory)},
		tunnelBuffers: mux.NewBuffers(),
		detached:      newDetachedPolls(),
		connects:      newConnectMetrics(reg),
		limiter:       newSourceLimiter(cfg.registrationRate, cfg.registrationBurst, cfg.clock),
	}
	p.mux.HandleFunc("POST /poll", p.handlePoll)
	p.mux.Handle("POST /push", p.metrics.instrument("/push", p.handlePush))
	p.mux.HandleFunc("GET /tunnel", p.handleTunnel)
	p.mux.Handle("GET /clients", p.metrics.instrument("/clients", p.handleClients))
	p.mux.Handle("GET /metrics", p.metrics.instrument("/metrics",
		promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}).ServeHTTP))
	p.mux.HandleFunc("GET /-/healthy", handleHealthy)
	p.mux.HandleFunc("GET /-/ready", p.handleReady)
	p.mux.HandleFunc("GET /{$}", p.handleLandingPage)
	return p
}

// ServeHTTP routes proxy requests (absolute-form request targets, CONNECT)
// to the scrape handler and everything else to the proxy's own endpoints.
func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect {
		p.handleConnect(w, r)
		return
	}
	if r.URL.Host != "" {
		p.handleScrape(w, r)
		return
	}
	p.mux.ServeHTTP(w, r)
}

// shutdown stops taking polls and scrapes, answers parked polls, and waits
// until scrapes already handed to clients end or ctx does.
func (p *proxy) shutdown(ctx context.Context) error {
	p.hub.Shutdown()
	return p.hub.Drain(ctx)
}

// close closes the tunnels and stops the proxy's background work. Call it
// once the HTTP server has stopped, so that scrapes relayed from tunnels
// have been answered.
func (p *proxy) close() {
	p.detached.close()
	p.tunnels.closeAll()
	p.hub.Close()
}
