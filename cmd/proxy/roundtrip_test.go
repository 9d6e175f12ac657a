package main

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/rancher/pushprox/internal/testbin"
	"github.com/rancher/pushprox/util"
)

// clientBinary is the real pushprox-client, built once for these tests.
var clientBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pushprox-proxy-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	clientBinary, err = testbin.Build(dir, "github.com/rancher/pushprox/cmd/client")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startClient runs the real client against tp as fqdn and waits until it
// has a poll parked.
func (tp *testProxy) startClient(t *testing.T, fqdn string, args ...string) *testbin.Process {
	t.Helper()
	before := tp.hub.Stats().Parked
	client := testbin.Start(t, clientBinary, clientArgs(fqdn, tp.srv.URL, args...)...)
	client.WaitForOutput(clientPolling)
	tp.waitParked(t, before+1)
	return client
}

// metricsTarget is a fake exporter: it answers with a fixed body, gzipped
// when asked, and records the headers of the last request.
type metricsTarget struct {
	*httptest.Server
	body     string
	requests atomic.Int64
	header   atomic.Pointer[http.Header]
}

func startTarget(t *testing.T, body string) *metricsTarget {
	target := &metricsTarget{body: body}
	target.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		target.requests.Add(1)
		header := r.Header.Clone()
		target.header.Store(&header)
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		w.Header().Set("X-Exporter", "fake")
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			w.Write(gzipBytes(body))
			return
		}
		io.WriteString(w, body)
	}))
	t.Cleanup(target.Close)
	return target
}

func gzipBytes(s string) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	io.WriteString(zw, s)
	zw.Close()
	return buf.Bytes()
}

func TestRoundTripThroughRealClient(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	target := startTarget(t, "# TYPE up gauge\nup 1\n")
	tp.startClient(t, "127.0.0.1")
	targetURL := target.URL + "/metrics"

	for _, tc := range []struct {
		name     string
		header   http.Header
		wantBody []byte
		wantEnc  string
	}{
		{
			name:     "plain with timeout header",
			header:   http.Header{util.HeaderScrapeTimeoutSeconds: {"10"}, "Accept": {"text/plain"}},
			wantBody: []byte(target.body),
		},
		{
			name:     "without timeout header",
			header:   http.Header{},
			wantBody: []byte(target.body),
		},
		{
			name:     "gzip byte for byte",
			header:   http.Header{"Accept-Encoding": {"gzip"}, util.HeaderScrapeTimeoutSeconds: {"10"}},
			wantBody: gzipBytes(target.body),
			wantEnc:  "gzip",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := tp.scrape(t, targetURL, tc.header)
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %s: %s", resp.Status, body)
			}
			if !bytes.Equal(body, tc.wantBody) {
				t.Errorf("body %q, want %q", body, tc.wantBody)
			}
			if got := resp.Header.Get("Content-Encoding"); got != tc.wantEnc {
				t.Errorf("Content-Encoding = %q, want %q", got, tc.wantEnc)
			}
			if got := resp.Header.Get("X-Exporter"); got != "fake" {
				t.Errorf("target header X-Exporter = %q", got)
			}
			for _, name := range []string{util.HeaderID, util.HeaderScrapeTimeout, util.HeaderScrapeTimeoutSeconds} {
				if v := resp.Header.Get(name); v != "" {
					t.Errorf("internal header %s reached Prometheus: %q", name, v)
				}
			}
			seen := *target.header.Load()
			if seen.Get(util.HeaderID) != "" {
				t.Errorf("Id reached the target")
			}
			for name := range tc.header {
				want := tc.header.Get(name)
				if name == util.HeaderScrapeTimeoutSeconds {
					// The target is told the time the client gives it (SPEC §1.8).
					timeout, _ := util.HeaderTimeout(tc.header, name)
					want = util.FormatSeconds(util.TargetTimeout(timeout))
				}
				if seen.Get(name) != want {
					t.Errorf("target saw %s = %q, want %q", name, seen.Get(name), want)
				}
			}
		})
	}
}

func TestRoundTripTargetDownIsReportedAtOnce(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	target := startTarget(t, "up 1\n")
	targetURL := target.URL + "/metrics"
	target.Close()
	tp.startClient(t, "127.0.0.1")

	resp := tp.scrape(t, targetURL, http.Header{util.HeaderScrapeTimeoutSeconds: {"60"}})
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("status %s, want 500", resp.Status)
	}
	if !strings.Contains(string(body), "connection refused") {
		t.Errorf("body %q does not give the reason", body)
	}
}

func TestRoundTripOfAnswerWithoutLength(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	// Flushing before the end makes the target answer chunked, without a
	// Content-Length, as most exporters do.
	want := strings.Repeat("node_cpu_seconds_total{cpu=\"0\"} 1\n", 5000)
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, want[:100])
		http.NewResponseController(w).Flush()
		io.WriteString(w, want[100:])
	}))
	t.Cleanup(target.Close)
	tp.startClient(t, "127.0.0.1")
	for i := 0; i < 3; i++ {
		resp := tp.scrape(t, target.URL+"/metrics", http.Header{util.HeaderScrapeTimeoutSeconds: {"30"}})
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK || string(body) != want {
			t.Fatalf("scrape %d: %s, %d bytes, %v", i, resp.Status, len(body), err)
		}
		if got := resp.Header.Get("Connection"); got != "" {
			t.Errorf("Connection header reached Prometheus: %q", got)
		}
	}
}

func TestTargetTooSlowIsReportedByTheClientNotAsItsTimeout(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	t.Cleanup(target.Close)
	tp.startClient(t, "127.0.0.1")
	resp := tp.scrape(t, target.URL+"/metrics", http.Header{util.HeaderScrapeTimeoutSeconds: {"5"}})
	body, _ := io.ReadAll(resp.Body)
	// The client gives up on the target early enough for its reason to
	// reach Prometheus, instead of the proxy's "did not answer in time".
	if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(body), "deadline exceeded") {
		t.Errorf("got %s %q, want 500 with the client's reason", resp.Status, body)
	}
}
