package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rancher/pushprox/util"
)

// What a scrape answers, whatever carries it.

func TestATargetAnswerHeadTooLargeForTheProxyIsRefused(t *testing.T) {
	fp := startFakeProxy(t)
	target := startTarget(t, false, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Huge", strings.Repeat("a", util.MaxAnswerHead))
		_, _ = io.WriteString(w, "up 1\n")
	})
	c := startClient(t, testConfig(fp.url(t), "127.0.0.1"))
	id := fp.queueScrape(t, target.URL+"/metrics", nil)
	fp.expectPush(t, id, http.StatusInternalServerError, "larger than")
	c.stop(t)
	if got := testutil.ToFloat64(c.metrics.scrapeErrors); got != 1 {
		t.Errorf("scrape errors = %v, want 1", got)
	}
}

func TestScrapeMetricsCountEveryScrapeOnThePollTransport(t *testing.T) {
	fp := startFakeProxy(t)
	target, _ := recordingTarget(t, false, http.StatusOK, "up 1\n")
	reg := prometheus.NewRegistry()
	c := startClientWith(t, testConfig(fp.url(t), "127.0.0.1"), reg)
	fp.expectPush(t, fp.queueScrape(t, target.URL+"/metrics", nil), http.StatusOK, "up 1")
	fp.expectPush(t, fp.queueScrape(t, target.URL+"/metrics?_scheme=file", nil), http.StatusInternalServerError, "_scheme")
	c.stop(t)
	want := `
# HELP pushprox_client_transport 1 for the transport scrapes are carried on (poll or tunnel), 0 for the other.
# TYPE pushprox_client_transport gauge
pushprox_client_transport{transport="poll"} 1
pushprox_client_transport{transport="tunnel"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "pushprox_client_transport"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c.metrics.scrapeDuration); n != 1 {
		t.Fatalf("%d scrape duration series", n)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, family := range families {
		if family.GetName() == "pushprox_client_scrape_duration_seconds" {
			if got := family.GetMetric()[0].GetHistogram().GetSampleCount(); got != 2 {
				t.Errorf("%d scrapes timed, want 2, the failed one included", got)
			}
		}
	}
}

func TestAStoppingClientWaitsForScrapesAtMostTheShutdownTimeout(t *testing.T) {
	fp := startFakeProxy(t)
	target := startBlockingTarget(t)
	defer target.release()
	cfg := testConfig(fp.url(t), "127.0.0.1")
	cfg.shutdownTimeout = 200 * time.Millisecond
	c := startClient(t, cfg)
	fp.queueScrape(t, target.URL+"/metrics", nil)
	target.waitArrivals(t, 1)
	start := time.Now()
	c.cancel()
	select {
	case <-c.done:
	case <-time.After(waitLimit):
		t.Fatalf("Run did not return within %s with a shutdown timeout of %s", waitLimit, cfg.shutdownTimeout)
	}
	if elapsed := time.Since(start); elapsed < cfg.shutdownTimeout {
		t.Errorf("Run returned after %s, before the shutdown timeout", elapsed)
	}
}

func TestAScrapeIsAnsweredOnAnyCarrier(t *testing.T) {
	target, requests := recordingTarget(t, false, http.StatusOK, "carried 1\n")
	proxy, _ := url.Parse("http://proxy.invalid")
	c, err := newClient(testConfig(proxy, "127.0.0.1"), log.NewNopLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		target string
		status int
		want   string
	}{
		{name: "scraped", target: target.URL + "/metrics", status: http.StatusOK, want: "carried 1\n"},
		{name: "refused", target: "http://other.example:9100/metrics", status: http.StatusInternalServerError, want: "is not this client's FQDN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A stream carries the request as the proxy encodes it, and the
			// answer back in the wire form.
			stream := bytes.NewReader(scrapeRequest(t, tc.target, "stream-1", nil))
			req, err := util.DecodeScrapeRequest(bufio.NewReader(stream))
			if err != nil {
				t.Fatal(err)
			}
			resp, done := c.answer(context.Background(), req)
			var back bytes.Buffer
			err = util.WriteAnswer(&back, resp, req.Header.Get(util.HeaderID), false)
			done()
			if err != nil {
				t.Fatal(err)
			}
			got, err := util.DecodeAnswer(&back)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(got.Body)
			if got.StatusCode != tc.status || !strings.Contains(string(body), tc.want) || got.Header.Get(util.HeaderID) != "stream-1" {
				t.Errorf("answered %d %q (Id %q), want %d with %q", got.StatusCode, body, got.Header.Get(util.HeaderID), tc.status, tc.want)
			}
			if tc.status == http.StatusOK {
				received(t, requests)
			}
			neverContacted(t, requests)
		})
	}
}
