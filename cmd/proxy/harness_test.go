package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rancher/pushprox/util"
)

// testProxy is a proxy served in-process on loopback.
type testProxy struct {
	*proxy
	srv *httptest.Server
	reg *prometheus.Registry
}

func defaultConfig() config {
	return config{
		maxTimeout:          5 * time.Minute,
		defaultTimeout:      15 * time.Second,
		registrationTimeout: 5 * time.Minute,
		maxClients:          1000,
		maxTargetsPerClient: 1024,
		maxPushBytes:        64 << 20,
		shutdownTimeout:     5 * time.Second,
		tunnelPingInterval:  15 * time.Second,
		connectMaxPerClient: 32,
		connectMaxTotal:     4096,
		connectIdleTimeout:  5 * time.Minute,
	}
}

func startProxy(t *testing.T, cfg config) *testProxy {
	t.Helper()
	return startProxyServer(t, cfg, func(*http.Server) {})
}

// startProxyServer is startProxy with the HTTP server set up by setup
// before it starts.
func startProxyServer(t *testing.T, cfg config, setup func(*http.Server)) *testProxy {
	t.Helper()
	reg := prometheus.NewRegistry()
	p := newProxy(cfg, log.NewNopLogger(), reg, reg)
	srv := httptest.NewUnstartedServer(p)
	setup(srv.Config)
	srv.Start()
	resumed := make(chan error, 1)
	resumedPolls := p.detached.enable(srv.Config)
	go func() { resumed <- srv.Config.Serve(resumedPolls) }()
	t.Cleanup(func() {
		// Parked polls end first, so that closing the server does not wait
		// for them, and no answered poll's connection comes back to it
		// while it closes.
		p.hub.Shutdown()
		p.detached.close()
		<-resumed
		srv.Close()
		p.close()
	})
	return &testProxy{proxy: p, srv: srv, reg: reg}
}

// scraper plays Prometheus: an HTTP client that uses the proxy.
func (tp *testProxy) scraper() *http.Client {
	proxyURL, _ := url.Parse(tp.srv.URL)
	return &http.Client{Transport: &http.Transport{
		Proxy:              http.ProxyURL(proxyURL),
		DisableCompression: true,
	}}
}

// scrape sends a proxied GET for target with the given headers.
func (tp *testProxy) scrape(t *testing.T, target string, header http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, values := range header {
		req.Header[name] = values
	}
	resp, err := tp.scraper().Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", target, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// poll sends a poll as a client would and returns the answer.
func (tp *testProxy) poll(ctx context.Context, fqdn string, header http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tp.srv.URL+"/poll", strings.NewReader(fqdn))
	if err != nil {
		return nil, err
	}
	for name, values := range header {
		req.Header[name] = values
	}
	return http.DefaultClient.Do(req)
}

// push sends body to /push and returns the status and answer text.
func (tp *testProxy) push(t *testing.T, body io.Reader) (int, string) {
	t.Helper()
	code, text, err := pushTo(tp.srv.URL, body)
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	return code, text
}

// waitFor waits until cond holds, failing the test after a generous bound.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitParked waits until n polls are parked.
func (tp *testProxy) waitParked(t *testing.T, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d parked polls", n), func() bool { return tp.hub.Stats().Parked == n })
}

// fakeClient answers scrapes of fqdn in-process the way the reference client
// does: poll, read the request, ask the target, push the answer fully
// buffered. It records the requests it was handed.
type fakeClient struct {
	tp     *testProxy
	fqdn   string
	answer func(req *http.Request) *http.Response

	mu       sync.Mutex
	requests []*http.Request // guarded by mu
}

// serve answers n scrapes, then returns.
func (c *fakeClient) serve(t *testing.T, n int) {
	for i := 0; i < n; i++ {
		resp, err := c.tp.poll(context.Background(), c.fqdn, nil)
		if err != nil {
			t.Errorf("poll: %v", err)
			return
		}
		if resp.StatusCode != http.StatusOK {
			t.Errorf("poll answered %s", resp.Status)
			resp.Body.Close()
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(resp.Body))
		resp.Body.Close()
		if err != nil {
			t.Errorf("reading scrape request: %v", err)
			return
		}
		c.mu.Lock()
		c.requests = append(c.requests, req)
		c.mu.Unlock()
		answer := c.answer(req)
		answer.Header.Set(util.HeaderID, req.Header.Get(util.HeaderID))
		var buf bytes.Buffer
		if err := answer.Write(&buf); err != nil {
			t.Errorf("serializing answer: %v", err)
			return
		}
		if code, text := c.tp.push(t, &buf); code != http.StatusOK {
			t.Errorf("push answered %d: %s", code, text)
		}
	}
}

// expectStillServing checks that, whatever came before, the proxy hands a
// scrape of node1 to a client and relays its answer.
func (tp *testProxy) expectStillServing(t *testing.T, after string) {
	t.Helper()
	client := &fakeClient{tp: tp, fqdn: "node1", answer: func(*http.Request) *http.Response {
		return textResponse(http.StatusOK, "still here\n")
	}}
	done := make(chan struct{})
	go func() { defer close(done); client.serve(t, 1) }()
	if r := scrapeThrough(context.Background(), tp.srv.URL, "http://node1:9100/metrics", "10"); r.err != nil || r.status != http.StatusOK || r.body != "still here\n" {
		t.Errorf("after %s: %d %q %v", after, r.status, r.body, r.err)
	}
	await(t, "the client", done)
}

func textResponse(code int, body string) *http.Response {
	return &http.Response{
		StatusCode:    code,
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"text/plain"}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
	}
}
