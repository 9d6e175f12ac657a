package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rancher/pushprox/internal/testbin"
	"github.com/rancher/pushprox/util"
)

// waitLimit bounds every wait for an event. It is generous on purpose: it
// only decides how long a broken test takes to fail, not whether a working
// one passes.
const waitLimit = 30 * time.Second

// proxyBin and clientBin are the real binaries, built once for the tests
// that run them.
var proxyBin, clientBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pushprox-client-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for pkg, bin := range map[string]*string{
		"github.com/rancher/pushprox/cmd/proxy":  &proxyBin,
		"github.com/rancher/pushprox/cmd/client": &clientBin,
	} {
		if *bin, err = testbin.Build(dir, pkg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// pollAnswer is one scripted answer of the fake proxy to a poll.
type pollAnswer struct {
	status int
	header http.Header
	body   []byte
}

// polled is a poll the fake proxy received.
type polled struct {
	path   string
	header http.Header
	body   string
}

// pushed is a push the fake proxy received, parsed.
type pushed struct {
	path   string
	status int
	header http.Header
	body   []byte
}

// fakeProxy plays the proxy for an in-process client: polls get the
// scripted answers in order, and are held until the client gives up when
// there is none; pushes are parsed and handed to the test.
type fakeProxy struct {
	srv     *httptest.Server
	answers chan pollAnswer
	polls   chan polled
	pushes  chan pushed
}

func startFakeProxy(t *testing.T) *fakeProxy {
	t.Helper()
	return startFakeProxyOn(t, nil)
}

// startFakeProxyOn is startFakeProxy listening on ln, or on a port of its
// own when ln is nil.
func startFakeProxyOn(t *testing.T, ln net.Listener) *fakeProxy {
	t.Helper()
	fp := &fakeProxy{
		answers: make(chan pollAnswer, 64),
		polls:   make(chan polled, 64),
		pushes:  make(chan pushed, 64),
	}
	fp.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/poll"):
			fp.handlePoll(w, r)
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/push"):
			fp.handlePush(t, w, r)
		default:
			t.Errorf("fake proxy: unexpected %s %s", r.Method, r.URL)
			http.NotFound(w, r)
		}
	}))
	if ln != nil {
		fp.srv.Listener.Close()
		fp.srv.Listener = ln
	}
	fp.srv.Start()
	t.Cleanup(fp.srv.Close)
	return fp
}

func (fp *fakeProxy) handlePoll(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	select {
	case fp.polls <- polled{path: r.URL.Path, header: r.Header.Clone(), body: string(body)}:
	default: // Tests that look at polls read the first few only.
	}
	select {
	case a := <-fp.answers:
		for name, values := range a.header {
			w.Header()[name] = values
		}
		w.WriteHeader(a.status)
		_, _ = w.Write(a.body)
	case <-r.Context().Done():
	}
}

func (fp *fakeProxy) handlePush(t *testing.T, w http.ResponseWriter, r *http.Request) {
	resp, err := http.ReadResponse(bufio.NewReader(r.Body), nil)
	if err != nil {
		t.Errorf("fake proxy: push is not an HTTP response: %v", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("fake proxy: reading pushed body: %v", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	fp.pushes <- pushed{path: r.URL.Path, status: resp.StatusCode, header: resp.Header, body: body}
}

// url returns the fake proxy's base URL.
func (fp *fakeProxy) url(t *testing.T) *url.URL {
	u, err := url.Parse(fp.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// answer queues a raw answer to a poll.
func (fp *fakeProxy) answer(status int, header http.Header, body string) {
	fp.answers <- pollAnswer{status: status, header: header, body: []byte(body)}
}

// queueScrape queues a scrape of target with Prometheus' headers and returns
// its Id. The scrape carries a 10 s timeout unless header names one; a nil
// value there sends none.
func (fp *fakeProxy) queueScrape(t *testing.T, target string, header http.Header) string {
	t.Helper()
	id := uuid.NewString()
	fp.answers <- pollAnswer{status: http.StatusOK, body: scrapeRequest(t, target, id, header)}
	return id
}

// scrapeRequest serializes a scrape request as the proxy hands it out.
func scrapeRequest(t testing.TB, target, id string, header http.Header) []byte {
	t.Helper()
	return proxiedRequest(t, http.MethodGet, target, nil, id, header)
}

// proxiedRequest is scrapeRequest with any method and body, as a proxy
// could hand it out.
func proxiedRequest(t testing.TB, method, target string, body io.Reader, id string, header http.Header) []byte {
	t.Helper()
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		t.Fatal(err)
	}
	for name, values := range header {
		req.Header[name] = values
	}
	if _, ok := header[util.HeaderScrapeTimeoutSeconds]; !ok {
		req.Header.Set(util.HeaderScrapeTimeoutSeconds, "10")
	}
	req.Header.Set(util.HeaderID, id)
	var buf bytes.Buffer
	if err := req.WriteProxy(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// nextPush waits for the next push.
func (fp *fakeProxy) nextPush(t *testing.T) pushed {
	t.Helper()
	select {
	case p := <-fp.pushes:
		return p
	case <-time.After(waitLimit):
		t.Fatalf("no push within %s", waitLimit)
		return pushed{}
	}
}

// nextPoll waits for the next poll.
func (fp *fakeProxy) nextPoll(t *testing.T) polled {
	t.Helper()
	select {
	case p := <-fp.polls:
		return p
	case <-time.After(waitLimit):
		t.Fatalf("no poll within %s", waitLimit)
		return polled{}
	}
}

// expectPush waits for the push of scrape id and checks its status and that
// its body contains want.
func (fp *fakeProxy) expectPush(t *testing.T, id string, status int, want string) pushed {
	t.Helper()
	p := fp.nextPush(t)
	if got := p.header.Get(util.HeaderID); got != id {
		t.Errorf("push has Id %q, want %q", got, id)
	}
	if p.status != status || !strings.Contains(string(p.body), want) {
		t.Errorf("pushed %d %q, want %d with %q", p.status, p.body, status, want)
	}
	return p
}

// noMorePushes fails if a push is waiting. It is meant for after the client
// stopped, when every push it would make has been made.
func (fp *fakeProxy) noMorePushes(t *testing.T) {
	t.Helper()
	select {
	case p := <-fp.pushes:
		t.Errorf("unexpected push: %d %q", p.status, p.body)
	default:
	}
}

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
		logLevel:             "info",
		logFormat:            "logfmt",
	}
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
	return startClientWithRegistry(t, cfg, prometheus.NewRegistry())
}

// startClientWithRegistry runs a client whose metrics are in reg until the
// test ends.
func startClientWithRegistry(t *testing.T, cfg config, reg *prometheus.Registry) *runningClient {
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
	header http.Header
	tls    bool
}

// recordingTarget answers every request with status and body and reports
// what it saw on a channel.
func recordingTarget(t *testing.T, secure bool, status int, body string) (*httptest.Server, chan seen) {
	t.Helper()
	requests := make(chan seen, 16)
	srv := startTarget(t, secure, func(w http.ResponseWriter, r *http.Request) {
		requests <- seen{url: r.URL, header: r.Header.Clone(), tls: r.TLS != nil}
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

func TestSchemeParameter(t *testing.T) {
	for _, tc := range []struct {
		name       string
		secure     bool   // the target serves HTTPS
		query      string // of the scrape request
		wantQuery  url.Values
		wantStatus int
		wantBody   string
	}{
		{
			name:       "_scheme=https scrapes over HTTPS without the parameter",
			secure:     true,
			query:      "_scheme=https&collect%5B%5D=cpu&collect%5B%5D=mem",
			wantQuery:  url.Values{"collect[]": {"cpu", "mem"}},
			wantStatus: http.StatusOK,
			wantBody:   "secure_up 1\n",
		},
		{
			name:       "plain HTTP by default",
			query:      "module=http_2xx",
			wantQuery:  url.Values{"module": {"http_2xx"}},
			wantStatus: http.StatusOK,
			wantBody:   "secure_up 1\n",
		},
		{
			name:       "_scheme=http is removed too",
			query:      "_scheme=http&x=1",
			wantQuery:  url.Values{"x": {"1"}},
			wantStatus: http.StatusOK,
			wantBody:   "secure_up 1\n",
		},
		{
			name:       "other schemes are refused",
			query:      "_scheme=file",
			wantStatus: http.StatusInternalServerError,
			wantBody:   `_scheme must be http or https, not "file"`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fp := startFakeProxy(t)
			target, requests := recordingTarget(t, tc.secure, http.StatusOK, "secure_up 1\n")
			cfg := testConfig(fp.url(t), "127.0.0.1")
			if tc.secure {
				cfg.caFile = caFile(t, target)
			}
			startClient(t, cfg)

			id := fp.queueScrape(t, "http://127.0.0.1:"+port(t, target)+"/metrics?"+tc.query, nil)
			fp.expectPush(t, id, tc.wantStatus, tc.wantBody)
			if tc.wantStatus != http.StatusOK {
				neverContacted(t, requests)
				return
			}
			got := received(t, requests)
			if got.tls != tc.secure {
				t.Errorf("target saw TLS=%v, want %v", got.tls, tc.secure)
			}
			if q := got.url.Query(); q.Encode() != tc.wantQuery.Encode() {
				t.Errorf("target saw query %q, want %q", q.Encode(), tc.wantQuery.Encode())
			}
			if got.url.Path != "/metrics" {
				t.Errorf("target saw path %q", got.url.Path)
			}
		})
	}
}

func TestTokenPathIsReadOnEachScrape(t *testing.T) {
	fp := startFakeProxy(t)
	target, requests := recordingTarget(t, true, http.StatusOK, "up 1\n")
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("first-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(fp.url(t), "127.0.0.1")
	cfg.caFile = caFile(t, target)
	cfg.tokenPath = tokenFile
	startClient(t, cfg)

	// No _scheme: the token alone makes the scrape use HTTPS. Prometheus'
	// own Authorization gives way to the token.
	scrapeURL := "http://127.0.0.1:" + port(t, target) + "/metrics"
	header := http.Header{"Authorization": {"Bearer from-prometheus"}}
	for _, token := range []string{"first-token", "second-token"} {
		if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		id := fp.queueScrape(t, scrapeURL, header)
		fp.expectPush(t, id, http.StatusOK, "up 1\n")
		got := received(t, requests)
		if !got.tls {
			t.Errorf("scrape with a token was not made over HTTPS")
		}
		if auth := got.header.Get("Authorization"); auth != "Bearer "+token {
			t.Errorf("target saw Authorization %q, want %q", auth, "Bearer "+token)
		}
	}
}

func TestTokenPathUnreadableIsPushedBack(t *testing.T) {
	fp := startFakeProxy(t)
	target, requests := recordingTarget(t, true, http.StatusOK, "up 1\n")
	cfg := testConfig(fp.url(t), "127.0.0.1")
	cfg.caFile = caFile(t, target)
	cfg.tokenPath = filepath.Join(t.TempDir(), "missing")
	c := startClient(t, cfg)

	id := fp.queueScrape(t, "http://127.0.0.1:"+port(t, target)+"/metrics", nil)
	fp.expectPush(t, id, http.StatusInternalServerError, "reading bearer token")
	neverContacted(t, requests)
	if got := testutil.ToFloat64(c.metrics.scrapeErrors); got != 1 {
		t.Errorf("scrape errors = %v, want 1", got)
	}
}

func TestAllowPort(t *testing.T) {
	fp := startFakeProxy(t)
	target, requests := recordingTarget(t, false, http.StatusOK, "up 1\n")
	allowed := port(t, target)
	other := "9100"
	if other == allowed {
		other = "9101"
	}
	cfg := testConfig(fp.url(t), "127.0.0.1")
	cfg.allowPort = allowed
	startClient(t, cfg)

	for _, tc := range []struct {
		name       string
		target     string
		wantStatus int
		wantBody   string
	}{
		{name: "allowed port", target: "http://127.0.0.1:" + allowed + "/metrics", wantStatus: http.StatusOK, wantBody: "up 1\n"},
		{name: "other port", target: "http://127.0.0.1:" + other + "/metrics", wantStatus: http.StatusInternalServerError, wantBody: "port " + other + " is not allowed"},
		{name: "default port of the scheme", target: "http://127.0.0.1/metrics", wantStatus: http.StatusInternalServerError, wantBody: "port 80 is not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := fp.queueScrape(t, tc.target, nil)
			fp.expectPush(t, id, tc.wantStatus, tc.wantBody)
			if tc.wantStatus == http.StatusOK {
				received(t, requests)
			} else {
				neverContacted(t, requests)
			}
		})
	}
}

func TestUseLocalhost(t *testing.T) {
	fp := startFakeProxy(t)
	target, requests := recordingTarget(t, false, http.StatusOK, "local_up 1\n")
	cfg := testConfig(fp.url(t), "node.example")
	cfg.useLocalhost = true
	cfg.allowPort = port(t, target)
	startClient(t, cfg)

	// node.example does not resolve: only a dial to 127.0.0.1 reaches the
	// target.
	id := fp.queueScrape(t, "http://node.example:"+cfg.allowPort+"/metrics", nil)
	fp.expectPush(t, id, http.StatusOK, "local_up 1\n")
	if got := received(t, requests); got.url.Path != "/metrics" {
		t.Errorf("target saw path %q", got.url.Path)
	}
}

func TestUseLocalhostNeedsOneAllowedPort(t *testing.T) {
	proxy, _ := url.Parse("http://proxy.example:8080")
	for _, tc := range []struct {
		name      string
		allowPort string
		wantErr   string // "" for a valid config
	}{
		{name: "any port", allowPort: "*", wantErr: "--use-localhost needs --allow-port"},
		{name: "one port", allowPort: "9100"},
	} {
		t.Run("validate/"+tc.name, func(t *testing.T) {
			cfg := testConfig(proxy, "node.example")
			cfg.useLocalhost = true
			cfg.allowPort = tc.allowPort
			err := cfg.validate()
			if tc.wantErr == "" && err != nil {
				t.Errorf("validate: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("validate: %v, want %q", err, tc.wantErr)
			}
		})
		t.Run("parseFlags/"+tc.name, func(t *testing.T) {
			args := []string{"--proxy-url=http://proxy.example:8080", "--fqdn=node.example", "--use-localhost", "--allow-port=" + tc.allowPort}
			cfg, err := parseFlags(args, io.Discard)
			if tc.wantErr == "" {
				if err != nil || cfg == nil || !cfg.useLocalhost || cfg.allowPort != tc.allowPort {
					t.Errorf("parseFlags = %+v, %v", cfg, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseFlags: %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestFQDNMismatchIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name         string
		fqdn         string
		useLocalhost bool
		host         string // of the scrape request
	}{
		{name: "other host", fqdn: "localhost", host: "127.0.0.1"},
		// With --use-localhost the target is reachable whatever the host
		// asked for, so the check is all that protects it.
		{name: "other host with use-localhost", fqdn: "node.example", useLocalhost: true, host: "other.example"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fp := startFakeProxy(t)
			target, requests := recordingTarget(t, false, http.StatusOK, "up 1\n")
			cfg := testConfig(fp.url(t), tc.fqdn)
			if tc.useLocalhost {
				cfg.useLocalhost = true
				cfg.allowPort = port(t, target)
			}
			c := startClient(t, cfg)

			id := fp.queueScrape(t, "http://"+tc.host+":"+port(t, target)+"/metrics", nil)
			want := fmt.Sprintf("target host %q is not this client's FQDN %q", tc.host, tc.fqdn)
			fp.expectPush(t, id, http.StatusInternalServerError, want)
			c.stop(t)
			neverContacted(t, requests)
			if got := testutil.ToFloat64(c.metrics.scrapeErrors); got != 1 {
				t.Errorf("scrape errors = %v, want 1", got)
			}
		})
	}
}

func TestFQDNMatchIgnoresCaseAndTrailingDot(t *testing.T) {
	fp := startFakeProxy(t)
	target, requests := recordingTarget(t, false, http.StatusOK, "up 1\n")
	cfg := testConfig(fp.url(t), "Node.Example.")
	cfg.useLocalhost = true
	cfg.allowPort = port(t, target)
	startClient(t, cfg)

	id := fp.queueScrape(t, "http://node.example:"+cfg.allowPort+"/metrics", nil)
	fp.expectPush(t, id, http.StatusOK, "up 1\n")
	received(t, requests)
}

func TestScrapeTimeoutFollowsHeader(t *testing.T) {
	fp := startFakeProxy(t)
	cancelled := make(chan struct{}, 1)
	arrived := make(chan struct{}, 1)
	target := startTarget(t, false, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done()
		cancelled <- struct{}{}
	})
	c := startClient(t, testConfig(fp.url(t), "127.0.0.1"))

	start := time.Now()
	id := fp.queueScrape(t, "http://127.0.0.1:"+port(t, target)+"/metrics", http.Header{util.HeaderScrapeTimeoutSeconds: {"0.5"}})
	select {
	case <-arrived:
	case <-time.After(waitLimit):
		t.Fatal("target not scraped")
	}
	fp.expectPush(t, id, http.StatusInternalServerError, "deadline exceeded")
	elapsed := time.Since(start)
	// The deadline cannot pass early; a push long after it would mean the
	// header was ignored in favour of something longer.
	// The client gives the target the timeout less two answer margins.
	if elapsed < util.TargetTimeout(500*time.Millisecond) || elapsed > 10*time.Second {
		t.Errorf("timeout pushed after %s, want about 0.4s", elapsed)
	}
	select {
	case <-cancelled:
	case <-time.After(waitLimit):
		t.Error("the target's request was not cancelled")
	}
	if got := testutil.ToFloat64(c.metrics.scrapeErrors); got != 1 {
		t.Errorf("scrape errors = %v, want 1", got)
	}
}

func TestBadTimeoutHeaderIsPushedBack(t *testing.T) {
	fp := startFakeProxy(t)
	target, requests := recordingTarget(t, false, http.StatusOK, "up 1\n")
	startClient(t, testConfig(fp.url(t), "127.0.0.1"))
	scrapeURL := "http://127.0.0.1:" + port(t, target) + "/metrics"

	for _, tc := range []struct {
		name   string
		values []string // nil sends no header
		want   string
	}{
		{name: "missing", values: nil, want: "missing X-Prometheus-Scrape-Timeout-Seconds header"},
		{name: "not a number", values: []string{"soon"}, want: `invalid X-Prometheus-Scrape-Timeout-Seconds header "soon"`},
		{name: "zero", values: []string{"0"}, want: `invalid X-Prometheus-Scrape-Timeout-Seconds header "0"`},
		{name: "negative", values: []string{"-3"}, want: `invalid X-Prometheus-Scrape-Timeout-Seconds header "-3"`},
		{name: "NaN", values: []string{"NaN"}, want: `invalid X-Prometheus-Scrape-Timeout-Seconds header "NaN"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := fp.queueScrape(t, scrapeURL, http.Header{util.HeaderScrapeTimeoutSeconds: tc.values})
			fp.expectPush(t, id, http.StatusInternalServerError, tc.want)
			neverContacted(t, requests)
		})
	}
}

// gzipped compresses s.
func gzipped(t testing.TB, s string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := io.WriteString(zw, s); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// negotiatingTarget serves metrics gzipped, as they are, when the request
// accepts gzip, and plain otherwise; it reports the headers it saw.
func negotiatingTarget(t *testing.T, metrics string) (*httptest.Server, chan http.Header) {
	t.Helper()
	compressed := gzipped(t, metrics)
	headers := make(chan http.Header, 16)
	srv := startTarget(t, false, func(w http.ResponseWriter, r *http.Request) {
		headers <- r.Header.Clone()
		w.Header().Set("Content-Type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
		w.Header().Set("X-Target", "yes")
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = w.Write(compressed)
			return
		}
		_, _ = io.WriteString(w, metrics)
	})
	return srv, headers
}

func TestHeadersPassThrough(t *testing.T) {
	const metrics = "# TYPE up gauge\nup 1\n# EOF\n"
	fp := startFakeProxy(t)
	target, headers := negotiatingTarget(t, metrics)
	startClient(t, testConfig(fp.url(t), "127.0.0.1"))
	scrapeURL := "http://127.0.0.1:" + port(t, target) + "/metrics"

	for _, tc := range []struct {
		name           string
		acceptEncoding string
		wantBody       []byte
		wantEncoding   string
	}{
		{name: "gzip arrives as is", acceptEncoding: "gzip", wantBody: gzipped(t, metrics), wantEncoding: "gzip"},
		// The client must not ask for compression on its own.
		{name: "identity", wantBody: []byte(metrics)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			header := http.Header{
				"Accept":                        {"application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"},
				"Authorization":                 {"Bearer for-the-target"},
				"User-Agent":                    {"Prometheus/3.0.0"},
				util.HeaderScrapeTimeoutSeconds: {"7"},
				// Hop-by-hop headers end at the client.
				"Connection": {"X-Hop"},
				"X-Hop":      {"secret"},
			}
			if tc.acceptEncoding != "" {
				header.Set("Accept-Encoding", tc.acceptEncoding)
			}
			id := fp.queueScrape(t, scrapeURL, header)
			p := fp.nextPush(t)

			var got http.Header
			select {
			case got = <-headers:
			case <-time.After(waitLimit):
				t.Fatal("target not scraped")
			}
			for _, name := range []string{"Accept", "Authorization", "User-Agent", "Accept-Encoding", util.HeaderScrapeTimeoutSeconds} {
				if got.Get(name) != header.Get(name) {
					t.Errorf("target saw %s %q, want %q", name, got.Get(name), header.Get(name))
				}
			}
			for _, name := range []string{util.HeaderID, "X-Hop"} {
				if v := got.Get(name); v != "" {
					t.Errorf("target saw %s %q", name, v)
				}
			}

			if p.status != http.StatusOK || !bytes.Equal(p.body, tc.wantBody) {
				t.Errorf("pushed %d %q, want 200 %q", p.status, p.body, tc.wantBody)
			}
			if got := p.header.Get("Content-Encoding"); got != tc.wantEncoding {
				t.Errorf("pushed Content-Encoding %q, want %q", got, tc.wantEncoding)
			}
			if got := p.header.Get("Content-Type"); !strings.HasPrefix(got, "application/openmetrics-text") {
				t.Errorf("pushed Content-Type %q", got)
			}
			if got := p.header.Get("X-Target"); got != "yes" {
				t.Errorf("pushed X-Target %q", got)
			}
			if got := p.header.Get(util.HeaderID); got != id {
				t.Errorf("pushed Id %q, want %q", got, id)
			}
			left, err := strconv.ParseFloat(p.header.Get(util.HeaderScrapeTimeout), 64)
			if err != nil || left <= 0 || left > 7 {
				t.Errorf("pushed %s %q, want seconds left of 7", util.HeaderScrapeTimeout, p.header.Get(util.HeaderScrapeTimeout))
			}
		})
	}
}

func TestPollAnswersThatAreNotScrapes(t *testing.T) {
	const html = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>\n"
	for _, tc := range []struct {
		name   string
		status int
		header http.Header
		body   string
		cut    bool // counted as a poll cut by something in between
	}{
		{name: "408", status: http.StatusRequestTimeout, body: "poll given up\n"},
		{name: "503", status: http.StatusServiceUnavailable, body: "shutting down\n", cut: true},
		{name: "502 HTML page", status: http.StatusBadGateway, header: http.Header{"Content-Type": {"text/html"}}, body: html, cut: true},
		{name: "504", status: http.StatusGatewayTimeout, body: "upstream timed out\n", cut: true},
		{name: "500", status: http.StatusInternalServerError, body: "oops\n"},
		{name: "200 HTML page", status: http.StatusOK, header: http.Header{"Content-Type": {"text/html"}}, body: html},
		{name: "200 garbage", status: http.StatusOK, body: "\x00\x01garbage\r\n\r\n"},
		{name: "200 empty", status: http.StatusOK},
		{name: "200 relative request", status: http.StatusOK, body: "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nId: 1\r\n\r\n"},
		{name: "200 request without Id", status: http.StatusOK, body: "GET http://127.0.0.1:9100/metrics HTTP/1.1\r\nHost: 127.0.0.1:9100\r\n\r\n"},
		{name: "200 CONNECT request", status: http.StatusOK, body: "CONNECT 127.0.0.1:9100 HTTP/1.1\r\nHost: 127.0.0.1:9100\r\nId: 1\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fp := startFakeProxy(t)
			target, requests := recordingTarget(t, false, http.StatusOK, "up 1\n")
			c := startClient(t, testConfig(fp.url(t), "127.0.0.1"))

			fp.answer(tc.status, tc.header, tc.body)
			id := fp.queueScrape(t, "http://127.0.0.1:"+port(t, target)+"/metrics", nil)
			fp.expectPush(t, id, http.StatusOK, "up 1\n")
			received(t, requests)
			// Once Run returned, every push the client would make is made.
			c.stop(t)
			fp.noMorePushes(t)
			neverContacted(t, requests)
			if got := testutil.ToFloat64(c.metrics.pollErrors); got != 1 {
				t.Errorf("poll errors = %v, want 1", got)
			}
			wantCuts := 0.0
			if tc.cut {
				wantCuts = 1
			}
			if got := testutil.ToFloat64(c.metrics.pollCuts); got != wantCuts {
				t.Errorf("poll cuts = %v, want %v", got, wantCuts)
			}
			if got := testutil.ToFloat64(c.metrics.scrapeErrors); got != 0 {
				t.Errorf("scrape errors = %v, want 0", got)
			}
		})
	}
}

// Every scrape taken is timed to the end of its push, failed ones too, and
// the transport in use is exported with both label values.
func TestScrapeDurationAndTransportMetrics(t *testing.T) {
	fp := startFakeProxy(t)
	target, requests := recordingTarget(t, false, http.StatusOK, "up 1\n")
	reg := prometheus.NewRegistry()
	c := startClientWithRegistry(t, testConfig(fp.url(t), "127.0.0.1"), reg)

	id := fp.queueScrape(t, "http://127.0.0.1:"+port(t, target)+"/metrics", nil)
	fp.expectPush(t, id, http.StatusOK, "up 1\n")
	received(t, requests)
	id = fp.queueScrape(t, "http://other.example:"+port(t, target)+"/metrics", nil)
	fp.expectPush(t, id, http.StatusInternalServerError, "not this client's FQDN")
	c.stop(t)

	if got := testutil.CollectAndCount(c.metrics.scrapeDuration); got != 1 {
		t.Fatalf("%d scrape duration series, want 1", got)
	}
	want := `
# HELP pushprox_client_transport 1 for the transport the client reaches its proxies with now, 0 for the others.
# TYPE pushprox_client_transport gauge
pushprox_client_transport{transport="poll"} 1
pushprox_client_transport{transport="tunnel"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "pushprox_client_transport"); err != nil {
		t.Error(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "pushprox_client_scrape_duration_seconds" {
			if n := f.GetMetric()[0].GetHistogram().GetSampleCount(); n != 2 {
				t.Errorf("%d scrapes timed, want 2 (one delivered, one refused)", n)
			}
			return
		}
	}
	t.Error("pushprox_client_scrape_duration_seconds missing")
}

func TestPollRequests(t *testing.T) {
	for _, tc := range []struct {
		name       string
		pollWait   time.Duration
		proxyPath  string
		wantPrefer string
		wantPath   string
	}{
		{name: "wait preference", pollWait: 7 * time.Second, wantPrefer: "wait=7", wantPath: "/poll"},
		{name: "no wait preference", pollWait: 0, wantPrefer: "", wantPath: "/poll"},
		{name: "proxy below a path", pollWait: 30 * time.Second, proxyPath: "/pushprox/", wantPrefer: "wait=30", wantPath: "/pushprox/poll"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fp := startFakeProxy(t)
			target, requests := recordingTarget(t, false, http.StatusOK, "up 1\n")
			proxyURL := fp.url(t)
			proxyURL.Path = tc.proxyPath
			cfg := testConfig(proxyURL, "127.0.0.1")
			cfg.pollWait = tc.pollWait
			c := startClient(t, cfg)

			// Empty answers to polls that waited in vain are no errors.
			const empty = 3
			for i := 0; i < empty; i++ {
				fp.answer(http.StatusNoContent, http.Header{util.HeaderPreferenceApplied: {tc.wantPrefer}}, "")
			}
			id := fp.queueScrape(t, "http://127.0.0.1:"+port(t, target)+"/metrics", nil)
			p := fp.expectPush(t, id, http.StatusOK, "up 1\n")
			received(t, requests)
			if want := strings.TrimSuffix(tc.wantPath, "poll") + "push"; p.path != want {
				t.Errorf("pushed to %s, want %s", p.path, want)
			}
			for i := 0; i <= empty; i++ {
				poll := fp.nextPoll(t)
				if poll.path != tc.wantPath {
					t.Errorf("poll %d to %s, want %s", i, poll.path, tc.wantPath)
				}
				if got := poll.header.Get(util.HeaderPrefer); got != tc.wantPrefer {
					t.Errorf("poll %d has Prefer %q, want %q", i, got, tc.wantPrefer)
				}
				if poll.body != "127.0.0.1" {
					t.Errorf("poll %d body %q, want the FQDN", i, poll.body)
				}
			}
			if got := testutil.ToFloat64(c.metrics.pollErrors); got != 0 {
				t.Errorf("poll errors = %v, want 0", got)
			}
		})
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

func TestConcurrentScrapes(t *testing.T) {
	fp := startFakeProxy(t)
	target := startBlockingTarget(t)
	cfg := testConfig(fp.url(t), "127.0.0.1")
	cfg.maxConcurrentScrapes = 3
	startClient(t, cfg)
	defer target.release()

	ids := map[string]bool{}
	for i := 0; i < 3; i++ {
		ids[fp.queueScrape(t, "http://127.0.0.1:"+port(t, target.Server)+"/metrics", nil)] = true
	}
	// All three are held by the target at once: none waits for another.
	target.waitArrivals(t, 3)
	target.release()
	for i := 0; i < 3; i++ {
		p := fp.nextPush(t)
		id := p.header.Get(util.HeaderID)
		if !ids[id] || p.status != http.StatusOK || string(p.body) != "released 1\n" {
			t.Errorf("push %q: %d %q", id, p.status, p.body)
		}
		delete(ids, id)
	}
	if got := target.mostInFlight(); got != 3 {
		t.Errorf("at most %d scrapes in flight, want 3", got)
	}
}

func TestConcurrencyLimit(t *testing.T) {
	fp := startFakeProxy(t)
	target := startBlockingTarget(t)
	cfg := testConfig(fp.url(t), "127.0.0.1")
	cfg.maxConcurrentScrapes = 1
	startClient(t, cfg)
	defer target.release()

	for i := 0; i < 2; i++ {
		fp.queueScrape(t, "http://127.0.0.1:"+port(t, target.Server)+"/metrics", nil)
	}
	target.waitArrivals(t, 1)
	target.release()
	target.waitArrivals(t, 1)
	for i := 0; i < 2; i++ {
		if p := fp.nextPush(t); p.status != http.StatusOK {
			t.Errorf("push %d: %d %q", i, p.status, p.body)
		}
	}
	if got := target.mostInFlight(); got != 1 {
		t.Errorf("%d scrapes in flight at once, want at most 1", got)
	}
}

func TestStopLetsScrapesInFlightFinish(t *testing.T) {
	fp := startFakeProxy(t)
	target := startBlockingTarget(t)
	c := startClient(t, testConfig(fp.url(t), "127.0.0.1"))
	defer target.release()

	id := fp.queueScrape(t, "http://127.0.0.1:"+port(t, target.Server)+"/metrics", nil)
	target.waitArrivals(t, 1)
	c.cancel()
	select {
	case <-c.done:
		t.Fatal("Run returned while a scrape was in flight")
	default:
	}
	target.release()
	select {
	case <-c.done:
	case <-time.After(waitLimit):
		t.Fatalf("Run did not return within %s", waitLimit)
	}
	// Run returned, so the push was made before.
	select {
	case p := <-fp.pushes:
		if p.header.Get(util.HeaderID) != id || p.status != http.StatusOK || string(p.body) != "released 1\n" {
			t.Errorf("push after stop: %d %q", p.status, p.body)
		}
	default:
		t.Fatal("Run returned before the scrape in flight was pushed")
	}
}

func TestFlags(t *testing.T) {
	t.Run("help", func(t *testing.T) {
		for _, flag := range []string{"--help", "-h"} {
			var buf bytes.Buffer
			if code := run([]string{flag}, &buf); code != 0 {
				t.Errorf("run(%s) = %d, want 0; output:\n%s", flag, code, buf.String())
			}
			for _, want := range []string{"usage: pushprox-client", "--proxy-url", "--allow-port", "--token-path"} {
				if !strings.Contains(buf.String(), want) {
					t.Errorf("run(%s) output lacks %q", flag, want)
				}
			}
		}
	})

	// --fqdn spares the tests a DNS look-up of this host.
	base := []string{"--fqdn=node.example", "--proxy-url=http://proxy.example:8080"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{name: "proxy URL scheme", args: []string{"--fqdn=node.example", "--proxy-url=ftp://x"}, want: "scheme must be http or https"},
		{name: "proxy URL without host", args: []string{"--fqdn=node.example", "--proxy-url=http://"}, want: "no host"},
		{name: "missing proxy URL", args: []string{"--fqdn=node.example"}, want: "--proxy-url"},
		{name: "allow-port not a number", args: append(base, "--allow-port=abc"), want: `--allow-port must be a port number or *, not "abc"`},
		{name: "allow-port out of range", args: append(base, "--allow-port=65536"), want: "--allow-port must be a port number"},
		{name: "negative retry wait", args: append(base, "--proxy.retry.initial-wait=-1s"), want: "--proxy.retry.initial-wait must be positive"},
		{name: "max wait below initial wait", args: append(base, "--proxy.retry.initial-wait=2s", "--proxy.retry.max-wait=1s"), want: "--proxy.retry.max-wait"},
		{name: "use-localhost alone", args: append(base, "--use-localhost"), want: "--use-localhost needs --allow-port"},
		{name: "log level", args: append(base, "--log.level=loud"), want: "--log.level"},
		{name: "log format", args: append(base, "--log.format=xml"), want: "--log.format"},
		{name: "bad FQDN", args: []string{"--fqdn=no/slashes", "--proxy-url=http://proxy.example"}, want: "--fqdn"},
		{name: "unknown flag", args: append(base, "--bogus"), want: "--bogus"},
		{name: "missing CA file", args: append(base, "--tls.cacert=/nonexistent/ca.pem"), want: "/nonexistent/ca.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			code := run(tc.args, &buf)
			if code == 0 {
				t.Fatalf("run(%q) = 0, want an error", tc.args)
			}
			out := strings.TrimSuffix(buf.String(), "\n")
			if strings.Contains(out, "\n") || !strings.HasPrefix(out, "pushprox-client: ") || !strings.Contains(out, tc.want) {
				t.Errorf("run(%q) wrote %q, want one line with %q", tc.args, buf.String(), tc.want)
			}
		})
	}
}

// realProxy starts the proxy binary and returns its URL.
func realProxy(t *testing.T) *url.URL {
	t.Helper()
	p := testbin.Start(t, proxyBin, "--web.listen-address=127.0.0.1:0", "--log.level=debug")
	match := p.WaitForOutput(regexp.MustCompile(`msg=listening address=(127\.0\.0\.1:\d+)`))
	u, err := url.Parse("http://" + match[1])
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestRoundTripThroughRealProxy(t *testing.T) {
	const metrics = "# TYPE node_up gauge\nnode_up 1\n# EOF\n"
	compressed := gzipped(t, metrics)
	targetSaw := make(chan http.Header, 16)
	target := startTarget(t, false, func(w http.ResponseWriter, r *http.Request) {
		targetSaw <- r.Header.Clone()
		switch r.URL.Path {
		case "/metrics":
			w.Header().Set("Content-Type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
			w.Header().Set("X-Target", "node")
			if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
				w.Header().Set("Content-Encoding", "gzip")
				_, _ = w.Write(compressed)
				return
			}
			_, _ = io.WriteString(w, metrics)
		default:
			http.Error(w, "no such page", http.StatusNotFound)
		}
	})
	targetPort := port(t, target)
	otherPort := "9100"
	if otherPort == targetPort {
		otherPort = "9101"
	}

	proxyURL := realProxy(t)
	// The client registers as a name that does not resolve and scrapes
	// 127.0.0.1, as on a node whose exporter listens on loopback only.
	cfg := testConfig(proxyURL, "node.example")
	cfg.useLocalhost = true
	cfg.allowPort = targetPort
	startClient(t, cfg)

	// scraper plays Prometheus, which leaves compression to the target.
	scraper := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableCompression: true}}
	t.Cleanup(scraper.CloseIdleConnections)

	for _, tc := range []struct {
		name          string
		url           string
		header        http.Header
		wantStatus    int
		wantBody      []byte // exact, unless wantText is set
		wantText      string // contained in the body
		wantHeader    http.Header
		reachesTarget bool
	}{
		{
			name: "metrics with Prometheus' headers",
			url:  "http://node.example:" + targetPort + "/metrics",
			header: http.Header{
				"Accept":                        {"application/openmetrics-text;version=1.0.0"},
				"Authorization":                 {"Bearer for-the-target"},
				util.HeaderScrapeTimeoutSeconds: {"10"},
			},
			wantStatus:    http.StatusOK,
			wantBody:      []byte(metrics),
			wantHeader:    http.Header{"X-Target": {"node"}, "Content-Type": {"application/openmetrics-text; version=1.0.0; charset=utf-8"}},
			reachesTarget: true,
		},
		{
			name:          "no timeout header",
			url:           "http://node.example:" + targetPort + "/metrics",
			wantStatus:    http.StatusOK,
			wantBody:      []byte(metrics),
			reachesTarget: true,
		},
		{
			name:          "gzip byte for byte",
			url:           "http://node.example:" + targetPort + "/metrics",
			header:        http.Header{"Accept-Encoding": {"gzip"}, util.HeaderScrapeTimeoutSeconds: {"10"}},
			wantStatus:    http.StatusOK,
			wantBody:      compressed,
			wantHeader:    http.Header{"Content-Encoding": {"gzip"}},
			reachesTarget: true,
		},
		{
			name:          "target's error status",
			url:           "http://node.example:" + targetPort + "/nowhere",
			wantStatus:    http.StatusNotFound,
			wantText:      "no such page",
			reachesTarget: true,
		},
		{
			name:       "refused port",
			url:        "http://node.example:" + otherPort + "/metrics",
			wantStatus: http.StatusInternalServerError,
			wantText:   "port " + otherPort + " is not allowed",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, tc.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			for name, values := range tc.header {
				req.Header[name] = values
			}
			resp, err := scraper.Do(req)
			if err != nil {
				t.Fatalf("scrape: %v", err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("reading scrape: %v", err)
			}
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("status %s, want %d; body %q", resp.Status, tc.wantStatus, body)
			}
			if tc.wantText != "" && !strings.Contains(string(body), tc.wantText) {
				t.Errorf("body %q, want it to contain %q", body, tc.wantText)
			}
			if tc.wantText == "" && !bytes.Equal(body, tc.wantBody) {
				t.Errorf("body %q, want %q", body, tc.wantBody)
			}
			for name := range tc.wantHeader {
				if got := resp.Header.Get(name); got != tc.wantHeader.Get(name) {
					t.Errorf("header %s = %q, want %q", name, got, tc.wantHeader.Get(name))
				}
			}
			for _, name := range []string{util.HeaderID, util.HeaderScrapeTimeout, util.HeaderScrapeTimeoutSeconds} {
				if v := resp.Header.Get(name); v != "" {
					t.Errorf("internal header %s reached Prometheus: %q", name, v)
				}
			}
			if !tc.reachesTarget {
				select {
				case h := <-targetSaw:
					t.Errorf("target was contacted: %v", h)
				default:
				}
				return
			}
			var saw http.Header
			select {
			case saw = <-targetSaw:
			default:
				// The target answered before Prometheus got its answer.
				t.Fatal("target was not contacted")
			}
			for _, name := range []string{"Accept", "Authorization", "Accept-Encoding"} {
				if saw.Get(name) != req.Header.Get(name) {
					t.Errorf("target saw %s %q, want %q", name, saw.Get(name), req.Header.Get(name))
				}
			}
			if v := saw.Get(util.HeaderID); v != "" {
				t.Errorf("target saw Id %q", v)
			}
		})
	}
}

func TestClientBinaryServesAndStopsOnSignal(t *testing.T) {
	target := startTarget(t, false, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "binary_up 1\n")
	})
	proxyURL := realProxy(t)
	client := testbin.Start(t, clientBin,
		"--proxy-url="+proxyURL.String(),
		"--fqdn=node.example",
		"--use-localhost",
		"--allow-port="+port(t, target),
		"--metrics-addr=127.0.0.1:0",
		"--log.level=debug",
	)
	metricsAddr := client.WaitForOutput(regexp.MustCompile(`msg=polling .*metrics_address=(127\.0\.0\.1:\d+)`))[1]

	scraper := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableCompression: true}}
	t.Cleanup(scraper.CloseIdleConnections)
	resp, err := scraper.Get("http://node.example:" + port(t, target) + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "binary_up 1\n" {
		t.Errorf("scrape through the client binary: %s %q", resp.Status, body)
	}

	resp, err = http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("client metrics: %v", err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"pushprox_client_scrape_errors_total", "pushprox_client_push_errors_total", "pushprox_client_poll_errors_total"} {
		if !strings.Contains(string(body), name) {
			t.Errorf("client metrics lack %s", name)
		}
	}

	client.Signal(syscall.SIGTERM)
	if code := client.Wait(); code != 0 {
		t.Errorf("client exited with %d after SIGTERM:\n%s", code, client.Output())
	}
}
