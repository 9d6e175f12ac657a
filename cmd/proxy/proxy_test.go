package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rancher/pushprox/internal/testclock"
	"github.com/rancher/pushprox/util"
)

func TestScrapeRequestCarriesEffectiveTimeout(t *testing.T) {
	cfg := defaultConfig()
	cfg.defaultTimeout = 7 * time.Second
	cfg.maxTimeout = 20 * time.Second
	tp := startProxy(t, cfg)
	for _, tc := range []struct {
		name   string
		header string // X-Prometheus-Scrape-Timeout-Seconds sent by Prometheus; "" sends none
		want   string
	}{
		{name: "from header", header: "3.5", want: "3.5"},
		{name: "default without header", want: "7"},
		{name: "default for unparsable header", header: "soon", want: "7"},
		{name: "clamped to max", header: "600", want: "20"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := &fakeClient{tp: tp, fqdn: "node1", answer: func(*http.Request) *http.Response {
				return textResponse(http.StatusOK, "ok\n")
			}}
			done := make(chan struct{})
			go func() { defer close(done); client.serve(t, 1) }()
			header := http.Header{}
			if tc.header != "" {
				header.Set(util.HeaderScrapeTimeoutSeconds, tc.header)
			}
			resp := tp.scrape(t, "http://node1:9100/metrics", header)
			<-done
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %s", resp.Status)
			}
			got := client.requests[0].Header.Get(util.HeaderScrapeTimeoutSeconds)
			if got != tc.want {
				t.Errorf("client got timeout %q, want %q", got, tc.want)
			}
			if client.requests[0].Header.Get(util.HeaderID) == "" {
				t.Errorf("scrape request has no Id")
			}
		})
	}
}

func TestProxiedHeadersAndStatus(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	client := &fakeClient{tp: tp, fqdn: "node1", answer: func(req *http.Request) *http.Response {
		resp := textResponse(http.StatusNotFound, "not here\n")
		resp.Header.Set("X-Target", "yes")
		resp.Header.Set(util.HeaderScrapeTimeout, "1.5")
		resp.Header.Set("Connection", "X-Hop")
		resp.Header.Set("X-Hop", "secret")
		return resp
	}}
	done := make(chan struct{})
	go func() { defer close(done); client.serve(t, 1) }()
	header := http.Header{
		"Accept":              {"application/openmetrics-text;version=1.0.0"},
		"Authorization":       {"Bearer for-the-target"},
		"Proxy-Authorization": {"Basic for-the-proxy"},
	}
	resp := tp.scrape(t, "http://node1:9100/metrics?collect%5B%5D=cpu", header)
	<-done
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusNotFound || string(body) != "not here\n" {
		t.Errorf("got %s %q, want 404 %q", resp.Status, body, "not here\n")
	}
	if resp.Header.Get("X-Target") != "yes" {
		t.Errorf("target header lost: %v", resp.Header)
	}
	for _, name := range []string{util.HeaderID, util.HeaderScrapeTimeout, util.HeaderScrapeTimeoutSeconds, "X-Hop"} {
		if v := resp.Header.Get(name); v != "" {
			t.Errorf("header %s reached Prometheus: %q", name, v)
		}
	}
	req := client.requests[0]
	if req.URL.String() != "http://node1:9100/metrics?collect%5B%5D=cpu" {
		t.Errorf("client asked for %s", req.URL)
	}
	if got := req.Header.Get("Accept"); got != header.Get("Accept") {
		t.Errorf("Accept = %q, want %q", got, header.Get("Accept"))
	}
	if got := req.Header.Get("Authorization"); got != "Bearer for-the-target" {
		t.Errorf("Authorization = %q, want the target's credentials", got)
	}
	if got := req.Header.Get("Proxy-Authorization"); got != "" {
		t.Errorf("Proxy-Authorization reached the client: %q", got)
	}
}

func TestAbandonedPollsNeverGetScrapes(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	const abandoned = 5
	cancel := make([]context.CancelFunc, abandoned)
	var polls sync.WaitGroup
	for i := range cancel {
		ctx, stop := context.WithCancel(context.Background())
		cancel[i] = stop
		polls.Add(1)
		go func() {
			defer polls.Done()
			resp, err := tp.poll(ctx, "node1", nil)
			if err == nil {
				resp.Body.Close()
				t.Errorf("abandoned poll answered %s", resp.Status)
			}
		}()
	}
	tp.waitParked(t, abandoned)
	for _, stop := range cancel {
		stop()
	}
	polls.Wait()

	const scrapes = 10
	client := &fakeClient{tp: tp, fqdn: "node1", answer: func(*http.Request) *http.Response {
		return textResponse(http.StatusOK, "up 1\n")
	}}
	done := make(chan struct{})
	go func() { defer close(done); client.serve(t, scrapes) }()
	for i := 0; i < scrapes; i++ {
		resp := tp.scrape(t, "http://node1:9100/metrics", http.Header{util.HeaderScrapeTimeoutSeconds: {"10"}})
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || string(body) != "up 1\n" {
			t.Errorf("scrape %d: %s %q", i, resp.Status, body)
			// The fake client still waits for scrapes: shutting down ends
			// its poll, so that it returns before the test does.
			tp.hub.Shutdown()
			break
		}
	}
	<-done
}

func TestScrapeWithoutClientFailsWithinTimeout(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	start := time.Now()
	resp := tp.scrape(t, "http://nobody.example:9100/metrics", http.Header{util.HeaderScrapeTimeoutSeconds: {"0.2"}})
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("status %s, want 503", resp.Status)
	}
	if !strings.Contains(string(body), `no client connected as "nobody.example"`) {
		t.Errorf("body %q does not name the missing client", body)
	}
	// A generous bound: the point is that it does not wait forever.
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("answered after %s", elapsed)
	}
	if got := testutil.ToFloat64(tp.metrics.scrapes.WithLabelValues(outcomeNoClient)); got != 1 {
		t.Errorf("no_client outcomes = %v, want 1", got)
	}
}

func TestBadPushesAreRejectedAndProxyKeepsServing(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	for _, tc := range []struct {
		name string
		body string
		code int
	}{
		{name: "not HTTP", body: "hello there", code: http.StatusBadRequest},
		{name: "empty", body: "", code: http.StatusBadRequest},
		{name: "no Id", body: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", code: http.StatusBadRequest},
		{name: "unknown Id", body: "HTTP/1.1 200 OK\r\nId: 4b0c4e5e-0000-0000-0000-000000000000\r\nContent-Length: 0\r\n\r\n", code: http.StatusNotFound},
		{name: "huge head", body: "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\n\r\n", code: http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, text := tp.push(t, strings.NewReader(tc.body))
			if code != tc.code {
				t.Errorf("status %d (%s), want %d", code, text, tc.code)
			}
			if strings.TrimSpace(text) == "" {
				t.Errorf("no reason given")
			}
		})
	}
	tp.expectStillServing(t, "bad pushes")
}

func TestBadPollsAreRejected(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	for _, tc := range []struct {
		name string
		body string
		code int
	}{
		{name: "empty", body: "  \n", code: http.StatusBadRequest},
		{name: "too long", body: strings.Repeat("a.", 200), code: http.StatusBadRequest},
		{name: "bad characters", body: "node1/../etc", code: http.StatusBadRequest},
		{name: "huge", body: strings.Repeat("a", 1<<20), code: http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := tp.poll(context.Background(), tc.body, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			text, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code || len(bytes.TrimSpace(text)) == 0 {
				t.Errorf("got %s %q, want %d with a reason", resp.Status, text, tc.code)
			}
		})
	}
	if n := len(tp.hub.Clients(0, 0)); n != 0 {
		t.Errorf("%d clients registered by bad polls", n)
	}
}

func TestPollWaitPreference(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	resp, err := tp.poll(context.Background(), "node1", http.Header{util.HeaderPrefer: {"wait=1"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("status %s, want 204", resp.Status)
	}
	if got := resp.Header.Get(util.HeaderPreferenceApplied); got != "wait=1" {
		t.Errorf("Preference-Applied = %q", got)
	}
	if got := testutil.ToFloat64(tp.metrics.pollsEmpty); got != 1 {
		t.Errorf("empty polls = %v, want 1", got)
	}
}

func TestClientsListsIdleConnectedClientsAndForgetsGoneOnes(t *testing.T) {
	clock := testclock.New(time.Unix(1e9, 0))
	cfg := defaultConfig()
	cfg.registrationTimeout = time.Minute
	cfg.clock = clock.Now
	tp := startProxy(t, cfg)

	idleDone := make(chan struct{})
	go func() {
		defer close(idleDone)
		if resp, err := tp.poll(context.Background(), "idle.example", nil); err == nil {
			resp.Body.Close()
		}
	}()
	goneCtx, gone := context.WithCancel(context.Background())
	goneDone := make(chan struct{})
	go func() {
		defer close(goneDone)
		if resp, err := tp.poll(goneCtx, "gone.example", nil); err == nil {
			resp.Body.Close()
		}
	}()
	tp.waitParked(t, 2)
	gone()
	<-goneDone
	// Unparking is not enough: the poll ends, and the client's last contact
	// is noted, only when its handler releases it.
	waitFor(t, "the gone client's poll to end", func() bool {
		for _, client := range tp.hub.Clients(0, 0) {
			if client.FQDN == "gone.example" {
				return client.Polls == 0
			}
		}
		return false
	})

	clock.Advance(2 * cfg.registrationTimeout)
	tp.hub.CollectGarbage()

	resp, err := http.Get(tp.srv.URL + "/clients")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	want := `[{"targets":["idle.example"],"labels":null}]`
	if strings.TrimSpace(string(body)) != want {
		t.Errorf("/clients = %s, want %s", body, want)
	}
}

func TestMetricNames(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	for _, path := range []string{"/clients", "/metrics"} {
		resp, err := http.Get(tp.srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	families, err := tp.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range families {
		have[f.GetName()] = true
	}
	for _, name := range []string{
		"pushprox_proxy_clients",
		"pushprox_http_requests_total",
		"pushprox_http_duration_seconds",
		"pushprox_proxy_scrapes_total",
		"pushprox_proxy_parked_polls",
	} {
		if !have[name] {
			t.Errorf("metric %s missing", name)
		}
	}
}

func TestConnectForAHostWithoutClientIsRefusedAtOnce(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	conn, err := net.Dial("tcp", tp.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "CONNECT node1:443 HTTP/1.1\r\nHost: node1:443\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), `no client connected as "node1"`) {
		t.Errorf("got %s %q", resp.Status, body)
	}
}
