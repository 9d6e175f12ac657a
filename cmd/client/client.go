package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rancher/pushprox/util"
)

// defaultRefuseTimeout bounds the sending of a scrape error. The contexts
// such answers are sent under have no deadline of their own (the scrape's
// may be what failed), and a proxy that never takes them must not hold a
// scrape slot, or the client's shutdown, for ever.
const defaultRefuseTimeout = 10 * time.Second

// client polls proxies for scrapes of its FQDN, scrapes the target and
// sends the answers back.
type client struct {
	cfg          config
	logger       log.Logger
	metrics      *metrics
	proxyTLS     *tls.Config   // towards the proxies, for every proxy client
	proxyClient  *http.Client  // towards the proxies
	targetClient *http.Client  // towards the scraped targets
	slots        chan struct{} // bounds concurrent scrapes
	scrapes      sync.WaitGroup
	labels       string // the labels header sent with each poll
	lookupHost   func(ctx context.Context, host string) ([]string, error)
	connected    atomic.Int64 // proxies whose last poll succeeded
	targets      *targetsFile // the targets file; nil without --targets.file
	// answerWriters recycles the buffered writers of tunnel answers, so
	// that a scrape does not allocate one of answerBufferSize bytes.
	answerWriters sync.Pool

	reloadMu sync.Mutex
	// reloaders are what a reload (SIGHUP) re-reads, by name; guarded by
	// reloadMu.
	reloaders []reloader
}

// reloader is one thing a reload re-reads.
type reloader struct {
	name   string
	reload func() error
}

func newClient(cfg config, logger log.Logger, reg prometheus.Registerer) (*client, error) {
	proxyTLS, targetTLS, err := newTLSConfigs(cfg, logger)
	if err != nil {
		return nil, err
	}
	c := &client{
		cfg:        cfg,
		logger:     logger,
		metrics:    newMetrics(reg),
		proxyTLS:   proxyTLS,
		slots:      make(chan struct{}, cfg.maxConcurrentScrapes),
		labels:     util.EncodeLabels(cfg.labels),
		lookupHost: net.DefaultResolver.LookupHost,
	}
	c.targetClient = &http.Client{Transport: newTransport(targetTLS, ""), CheckRedirect: c.checkRedirect}
	c.proxyClient = c.newProxyClient("")
	if file := cfg.security.webConfigFile; file != "" {
		c.onReload("web config", func() error { return validateWebConfig(file) })
	}
	// Without a targets file there is nothing that could fail to load.
	c.metrics.targetsReloadOK.Set(1)
	if cfg.targetsFile != "" {
		if c.targets, err = newTargetsFile(cfg.targetsFile, cfg.labels, cfg.targetsMax, c.metrics); err != nil {
			return nil, fmt.Errorf("--targets.file: %w", err)
		}
		c.onReload("targets file", func() error {
			_, err := c.targets.refresh(true)
			return err
		})
	}
	return c, nil
}

// onReload adds something a reload (SIGHUP) re-reads; reload is called
// from the goroutine that reloads, one at a time.
func (c *client) onReload(name string, reload func() error) {
	c.reloadMu.Lock()
	defer c.reloadMu.Unlock()
	c.reloaders = append(c.reloaders, reloader{name: name, reload: reload})
}

// reload re-reads everything that can change without a restart. A part
// that cannot be read is logged and keeps its previous state.
func (c *client) reload() {
	c.reloadMu.Lock()
	defer c.reloadMu.Unlock()
	for _, r := range c.reloaders {
		if err := r.reload(); err != nil {
			level.Error(c.logger).Log("msg", "reload failed, keeping the previous state", "what", r.name, "err", err)
			continue
		}
		level.Info(c.logger).Log("msg", "reloaded", "what", r.name)
	}
}

// maxReasonLength bounds the part of a peer's error body quoted in a
// message: an HTML error page must not flood the log.
const maxReasonLength = 200

// firstLine returns the start of an error body, for messages.
func firstLine(body []byte) string {
	line, _, _ := strings.Cut(string(body), "\n")
	if len(line) > maxReasonLength {
		line = line[:maxReasonLength] + "..."
	}
	return strings.TrimSpace(line)
}

// metricsHandler serves the client's own metrics, /-/healthy, and /-/ready,
// which answers 200 while the last poll to at least one proxy succeeded.
func (c *client) metricsHandler(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "Healthy.\n")
	})
	mux.HandleFunc("GET /-/ready", func(w http.ResponseWriter, _ *http.Request) {
		if c.connected.Load() == 0 {
			http.Error(w, "Not polling any proxy.", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "Ready.\n")
	})
	return mux
}
