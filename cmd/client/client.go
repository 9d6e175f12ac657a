package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rancher/pushprox/util"
)

// maxPollResponse bounds a poll answer, which holds one scrape request.
const maxPollResponse = 1 << 20

// client polls proxies for scrapes of its FQDN, scrapes the target and
// pushes the answers back.
type client struct {
	cfg          config
	logger       log.Logger
	metrics      *metrics
	proxyClient  *http.Client  // towards the proxies
	targetClient *http.Client  // towards the scraped targets
	slots        chan struct{} // bounds concurrent scrapes
	scrapes      sync.WaitGroup
	labels       string // the labels header sent with each poll
	lookupHost   func(ctx context.Context, host string) ([]string, error)
	connected    atomic.Int64 // proxies whose last poll succeeded
}

func newClient(cfg config, logger log.Logger, reg prometheus.Registerer) (*client, error) {
	toProxy, toTarget, err := newTransports(cfg, logger)
	if err != nil {
		return nil, err
	}
	return &client{
		cfg:          cfg,
		logger:       logger,
		metrics:      newMetrics(reg),
		proxyClient:  &http.Client{Transport: toProxy, CheckRedirect: noRedirects},
		targetClient: &http.Client{Transport: toTarget, CheckRedirect: cfg.checkRedirect},
		slots:        make(chan struct{}, cfg.maxConcurrentScrapes),
		labels:       util.EncodeLabels(cfg.labels),
		lookupHost:   net.DefaultResolver.LookupHost,
	}, nil
}

// noRedirects makes a redirected poll or push a failed one: following it
// would send the proxy credentials to whatever host it names.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// newTransport returns a keep-alive transport whose connections notice a
// dead peer. Compression is left to Prometheus and the target: bodies pass
// through as they are.
func newTransport(tlsConfig *tls.Config) *http.Transport {
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAliveConfig: util.KeepAlive}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       tlsConfig,
		TLSHandshakeTimeout:   10 * time.Second,
		DisableCompression:    true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		// Pushes stream bodies in 32 KiB pieces; a larger buffer sends each
		// in one write instead of several.
		WriteBufferSize: 64 << 10,
		ReadBufferSize:  64 << 10,
	}
}

// newTLSConfig builds the TLS settings from the --tls.* flags.
func newTLSConfig(caFile, certFile, keyFile string, insecureSkipVerify bool) (*tls.Config, error) {
	cfg := &tls.Config{InsecureSkipVerify: insecureSkipVerify}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no PEM certificate in CA file %s", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("--tls.cert and --tls.key must be given together")
	}
	if certFile != "" {
		// Loaded on each handshake, so that renewed certificates are used
		// without a restart.
		if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
			return nil, fmt.Errorf("loading client certificate: %w", err)
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, err
			}
			return &cert, nil
		}
	}
	return cfg, nil
}

// Run polls every proxy until ctx ends, then waits for scrapes in flight.
func (c *client) Run(ctx context.Context) {
	var loops sync.WaitGroup
	for _, proxyURL := range c.cfg.proxyURLs {
		loops.Add(1)
		go func() {
			defer loops.Done()
			if c.cfg.proxyResolveAll {
				c.resolveLoop(ctx, proxyURL)
				return
			}
			c.pollLoop(ctx, &upstream{url: proxyURL, http: c.proxyClient})
		}()
	}
	loops.Wait()
	c.scrapes.Wait()
	c.proxyClient.CloseIdleConnections()
	c.targetClient.CloseIdleConnections()
}

// pollLoop polls one proxy, starting a scrape for each request it is given
// and polling again at once. Failed polls are retried with backoff.
func (c *client) pollLoop(ctx context.Context, up *upstream) {
	logger := log.With(c.logger, "proxy", up.String())
	retry := newBackoff(c.cfg.retryInitialWait, c.cfg.retryMaxWait)
	connected := false
	// setConnected keeps c.connected counting this proxy while its last
	// poll succeeded.
	setConnected := func(ok bool) {
		switch {
		case ok && !connected:
			c.connected.Add(1)
		case !ok && connected:
			c.connected.Add(-1)
		}
		connected = ok
	}
	defer setConnected(false)
	for ctx.Err() == nil {
		start := time.Now()
		req, err := c.poll(ctx, up)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			setConnected(false)
			c.metrics.pollErrors.Inc()
			if errors.Is(err, errPollCut) {
				c.metrics.pollCuts.Inc()
			}
			wait := retry.NextBackOff()
			level.Warn(logger).Log("msg", "poll failed, retrying", "wait", wait, "err", err)
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		retry.Reset()
		setConnected(true)
		if req == nil {
			// A proxy honouring the wait answers "no work" only after it.
			// One that answers at once would have the client poll in a
			// tight loop, so it is given a pause.
			if time.Since(start) < minEmptyPollTime && !sleep(ctx, c.cfg.retryInitialWait) {
				return
			}
			continue
		}
		// Wait for a free slot before taking more work from this proxy.
		select {
		case c.slots <- struct{}{}:
		case <-ctx.Done():
			start := time.Now()
			c.refuse(context.WithoutCancel(ctx), up, req, errors.New("client is shutting down"))
			observeSince(c.metrics.scrapeDuration, start)
			return
		}
		c.scrapes.Add(1)
		go func() {
			defer c.scrapes.Done()
			defer func() { <-c.slots }()
			// A scrape already taken is finished even when the client stops.
			c.doScrape(context.WithoutCancel(ctx), up, req)
		}()
	}
}

// minEmptyPollTime is the least time a proxy that honours the client's wait
// preference takes to answer a poll without work.
const minEmptyPollTime = 500 * time.Millisecond

// sleep waits for d and reports whether ctx was still live at the end.
func sleep(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// newBackoff returns the retry policy for failed polls: exponential by 1.5
// from initial to max, never giving up.
func newBackoff(initial, max time.Duration) *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = initial
	b.MaxInterval = max
	b.Multiplier = 1.5
	b.RandomizationFactor = 0
	b.MaxElapsedTime = 0
	b.Reset()
	return b
}

// poll asks a proxy for a scrape. It returns nil without error when the
// proxy had none within the poll's wait.
func (c *client) poll(ctx context.Context, up *upstream) (*http.Request, error) {
	pollURL := util.ResolveProxyPath(up.url, util.PollPath)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, pollURL.String(), strings.NewReader(c.cfg.fqdn))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "text/plain")
	if c.labels != "" {
		req.Header.Set(util.HeaderLabels, c.labels)
	}
	if c.cfg.pollWait > 0 {
		req.Header.Set(util.HeaderPrefer, "wait="+strconv.Itoa(int(c.cfg.pollWait/time.Second)))
	}
	resp, err := up.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPollResponse+1))
	if err != nil {
		return nil, fmt.Errorf("reading poll answer: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusNoContent:
		return nil, nil
	case isGatewayCut(resp.StatusCode):
		return nil, fmt.Errorf("%w: poll answered %s: %s", errPollCut, resp.Status, firstLine(body))
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("poll answered %s: %s", resp.Status, firstLine(body))
	case len(body) > maxPollResponse:
		return nil, fmt.Errorf("poll answer larger than %d bytes", maxPollResponse)
	}
	return parseScrapeRequest(body)
}

// errPollCut marks a poll that something between client and proxy ended.
var errPollCut = errors.New("poll cut")

// isGatewayCut reports whether a poll's status is what load balancers and
// reverse proxies answer when they cut a request or lose the upstream:
// 502, 503 or 504. The proxy itself answers 503 only to a poll it believes
// gone, or when it shuts down; those few are counted as cuts too, as the
// client cannot tell them apart.
func isGatewayCut(code int) bool {
	return code == http.StatusBadGateway || code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout
}

// parseScrapeRequest reads the scrape request in a poll answer.
func parseScrapeRequest(body []byte) (*http.Request, error) {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(body)))
	if err != nil {
		return nil, fmt.Errorf("poll answer is not a scrape request: %w", err)
	}
	// A CONNECT request has a host but no scheme: it is no scrape either.
	if !req.URL.IsAbs() || req.URL.Host == "" {
		return nil, fmt.Errorf("poll answer is not a scrape request: %q is not an absolute URL", req.RequestURI)
	}
	if req.Header.Get(util.HeaderID) == "" {
		return nil, fmt.Errorf("poll answer is not a scrape request: no %s header", util.HeaderID)
	}
	// The body, if any, is in memory already.
	rest, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, fmt.Errorf("poll answer has a broken body: %w", err)
	}
	req.Body = io.NopCloser(bytes.NewReader(rest))
	return req, nil
}

// firstLine returns the start of an error body, for messages.
func firstLine(body []byte) string {
	line, _, _ := strings.Cut(string(body), "\n")
	if len(line) > 200 {
		line = line[:200] + "..."
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
