package main

import (
	"bytes"
	"context"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
)

// The client and targets every client test shares.

// testConfig is a client configuration for fqdn polling proxy, with short
// retry waits.
func testConfig(proxy *url.URL, fqdn string) config {
	return config{
		fqdn:                 fqdn,
		proxyURLs:            []*url.URL{proxy},
		allowPort:            "*",
		retryInitialWait:     10 * time.Millisecond,
		retryMaxWait:         50 * time.Millisecond,
		pollWait:             30 * time.Second,
		maxConcurrentScrapes: 16,
		shutdownTimeout:      waitLimit,
		transport:            transportAuto,
		tunnelPingInterval:   15 * time.Second,
		logLevel:             "info",
		logFormat:            "logfmt",
		targetsMax:           1024,
		targetsRefresh:       5 * time.Second,
	}
}

// parseTestFlags parses client flags into a config with short retry
// waits, failing the test on error.
func parseTestFlags(t *testing.T, args ...string) config {
	t.Helper()
	var out bytes.Buffer
	cfg, err := parseFlags(append([]string{"--metrics-addr=127.0.0.1:0", "--proxy.retry.initial-wait=10ms", "--proxy.retry.max-wait=50ms"}, args...), &out)
	if err != nil || cfg == nil {
		t.Fatalf("parseFlags(%q): %v %s", args, err, out.String())
	}
	return *cfg
}

// runningClient is a client whose Run loop runs in a goroutine.
type runningClient struct {
	*client
	cancel context.CancelFunc
	done   chan struct{}
}

// startClient runs a client until the test ends.
func startClient(t *testing.T, cfg config) *runningClient {
	t.Helper()
	return startClientWith(t, cfg, prometheus.NewRegistry())
}

// startClientWith is startClient with the client's metrics in reg.
func startClientWith(t *testing.T, cfg config, reg prometheus.Registerer) *runningClient {
	t.Helper()
	if err := cfg.validate(); err != nil {
		t.Fatalf("invalid test config: %v", err)
	}
	c, err := newClient(cfg, log.NewNopLogger(), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rc := &runningClient{client: c, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(rc.done)
		c.Run(ctx)
	}()
	t.Cleanup(func() { rc.stop(t) })
	return rc
}

// stop cancels Run and waits for it to return.
func (rc *runningClient) stop(t *testing.T) {
	rc.cancel()
	select {
	case <-rc.done:
	case <-time.After(waitLimit):
		t.Errorf("Run did not return within %s of being cancelled", waitLimit)
	}
}

// startTarget serves handler on loopback, over TLS when secure.
func startTarget(t *testing.T, secure bool, handler http.HandlerFunc) *httptest.Server {
	t.Helper()
	var srv *httptest.Server
	if secure {
		srv = httptest.NewTLSServer(handler)
	} else {
		srv = httptest.NewServer(handler)
	}
	t.Cleanup(srv.Close)
	return srv
}

// caFile writes the certificate of a TLS test server to a PEM file, for
// --tls.cacert.
func caFile(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// port returns the port of a test server.
func port(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Port()
}

// seen is a request as a target saw it.
type seen struct {
	url    *url.URL
	host   string // the Host header
	header http.Header
	tls    bool
}

// recordingTarget answers every request with status and body and reports
// what it saw on a channel.
func recordingTarget(t *testing.T, secure bool, status int, body string) (*httptest.Server, chan seen) {
	t.Helper()
	requests := make(chan seen, 16)
	srv := startTarget(t, secure, func(w http.ResponseWriter, r *http.Request) {
		requests <- seen{url: r.URL, host: r.Host, header: r.Header.Clone(), tls: r.TLS != nil}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	})
	return srv, requests
}

// received waits for a request at a target.
func received(t *testing.T, requests <-chan seen) seen {
	t.Helper()
	select {
	case s := <-requests:
		return s
	case <-time.After(waitLimit):
		t.Fatalf("target not scraped within %s", waitLimit)
		return seen{}
	}
}

// neverContacted fails if the target received a request.
func neverContacted(t *testing.T, requests <-chan seen) {
	t.Helper()
	select {
	case s := <-requests:
		t.Errorf("target was contacted: %s", s.url)
	default:
	}
}

// blockingTarget holds every request until released, reporting each arrival.
type blockingTarget struct {
	*httptest.Server
	arrived chan struct{}
	gate    chan struct{}
	once    sync.Once

	mu       sync.Mutex
	inFlight int // guarded by mu
	most     int // guarded by mu
}

func startBlockingTarget(t *testing.T) *blockingTarget {
	t.Helper()
	bt := &blockingTarget{arrived: make(chan struct{}, 16), gate: make(chan struct{})}
	bt.Server = startTarget(t, false, func(w http.ResponseWriter, r *http.Request) {
		bt.mu.Lock()
		bt.inFlight++
		bt.most = max(bt.most, bt.inFlight)
		bt.mu.Unlock()
		defer func() {
			bt.mu.Lock()
			bt.inFlight--
			bt.mu.Unlock()
		}()
		bt.arrived <- struct{}{}
		select {
		case <-bt.gate:
			_, _ = io.WriteString(w, "released 1\n")
		case <-r.Context().Done():
		}
	})
	return bt
}

// release lets every request, held or to come, through.
func (bt *blockingTarget) release() { bt.once.Do(func() { close(bt.gate) }) }

// waitArrivals waits until n more requests arrived.
func (bt *blockingTarget) waitArrivals(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case <-bt.arrived:
		case <-time.After(waitLimit):
			t.Fatalf("%d of %d requests arrived within %s", i, n, waitLimit)
		}
	}
}

func (bt *blockingTarget) mostInFlight() int {
	bt.mu.Lock()
	defer bt.mu.Unlock()
	return bt.most
}

// syncBuffer collects output written from other goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
