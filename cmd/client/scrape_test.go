package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rancher/pushprox/util"
)

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
			id := uuid.NewString()
			fp.answers <- pollAnswer{status: http.StatusOK, body: withTimeoutHeader(t, scrapeRequest(t, scrapeURL, id, nil), tc.values)}
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
			for _, name := range []string{"Accept", "Authorization", "User-Agent", "Accept-Encoding"} {
				if got.Get(name) != header.Get(name) {
					t.Errorf("target saw %s %q, want %q", name, got.Get(name), header.Get(name))
				}
			}
			// The target is told the time it is given (SPEC §1.8).
			if got, want := got.Get(util.HeaderScrapeTimeoutSeconds), util.FormatSeconds(util.TargetTimeout(7*time.Second)); got != want {
				t.Errorf("target saw %s %q, want %q", util.HeaderScrapeTimeoutSeconds, got, want)
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
