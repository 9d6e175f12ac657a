package main

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rancher/pushprox/util"
)

// Polls that do not end well: cut by a gateway, failed after being
// parked, stalled mid-body.

// startCuttingRelay starts a reverse proxy in front of upstream that cuts
// every request still unanswered after cutAfter with a 504, as load
// balancers cut idle requests.
func startCuttingRelay(t *testing.T, upstream *fakeProxy, cutAfter time.Duration) *httptest.Server {
	t.Helper()
	relay := httputil.NewSingleHostReverseProxy(upstream.url(t))
	relay.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		if errors.Is(err, context.DeadlineExceeded) {
			http.Error(w, "<html>504 Gateway Time-out</html>", http.StatusGatewayTimeout)
			return
		}
		http.Error(w, "<html>502 Bad Gateway</html>", http.StatusBadGateway)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), cutAfter)
		defer cancel()
		relay.ServeHTTP(w, r.WithContext(ctx))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestAPollCutByAGatewayIsMadeAgainAtOnceWithAShorterWait(t *testing.T) {
	const cutAfter = 1500 * time.Millisecond
	fp := startFakeProxy(t)
	fp.honourWait = true
	relay := startCuttingRelay(t, fp, cutAfter)
	target, requests := recordingTarget(t, false, http.StatusOK, "up 1\n")
	relayURL, err := util.ParseProxyURL(relay.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(relayURL, "127.0.0.1")
	// A failure would be retried after a minute: only a cut polls at once.
	cfg.retryInitialWait, cfg.retryMaxWait = time.Minute, time.Minute
	c := startClient(t, cfg)

	if got := fp.nextPoll(t).header.Get(util.HeaderPrefer); got != "wait=30" {
		t.Errorf("first poll prefers %q, want wait=30", got)
	}
	// The first poll is cut after 1.5 s; the next one prefers 3/4 of that,
	// in whole seconds, and ends with 204 before the gateway cuts it.
	for i := 0; i < 2; i++ {
		if got := fp.nextPoll(t).header.Get(util.HeaderPrefer); got != "wait=1" {
			t.Errorf("poll %d after the cut prefers %q, want wait=1", i, got)
		}
	}
	id := fp.queueScrape(t, "http://127.0.0.1:"+port(t, target)+"/metrics", nil)
	fp.expectPush(t, id, http.StatusOK, "up 1\n")
	received(t, requests)
	c.stop(t)
	if got := testutil.ToFloat64(c.metrics.pollCuts); got != 1 {
		t.Errorf("poll cuts = %v, want 1", got)
	}
	if got := testutil.ToFloat64(c.metrics.pollErrors); got != 0 {
		t.Errorf("poll errors = %v, want 0: cuts are not errors", got)
	}
}

func TestAQuickGatewayErrorIsAFailureWithBackoff(t *testing.T) {
	fp := startFakeProxy(t)
	fp.answer(http.StatusGatewayTimeout, nil, "<html>504</html>")
	cfg := testConfig(fp.url(t), "127.0.0.1")
	cfg.retryInitialWait, cfg.retryMaxWait = 300*time.Millisecond, 300*time.Millisecond
	c := startClient(t, cfg)
	fp.nextPoll(t)
	start := time.Now()
	fp.nextPoll(t)
	if elapsed := time.Since(start); elapsed < cfg.retryInitialWait {
		t.Errorf("polled again after %s, want the backoff of %s", elapsed, cfg.retryInitialWait)
	}
	if got := testutil.ToFloat64(c.metrics.pollErrors); got != 1 {
		t.Errorf("poll errors = %v, want 1", got)
	}
	if got := testutil.ToFloat64(c.metrics.pollCuts); got != 0 {
		t.Errorf("poll cuts = %v, want 0", got)
	}
}

func TestAPollParkedForAWhileResetsTheBackoff(t *testing.T) {
	fp := startFakeProxy(t)
	// Quick failures grow the backoff to 50ms·1.5⁵ ≈ 380 ms and on; a poll
	// held for longer than parkedPollTime before failing (a proxy
	// restarting) starts it again from 50 ms.
	const quickFailures = 6
	for i := 0; i < quickFailures; i++ {
		fp.answer(http.StatusInternalServerError, nil, "down")
	}
	fp.answers <- pollAnswer{status: http.StatusInternalServerError, body: []byte("restarting"), delay: parkedPollTime + 100*time.Millisecond}
	cfg := testConfig(fp.url(t), "127.0.0.1")
	cfg.retryInitialWait, cfg.retryMaxWait = 50*time.Millisecond, 10*time.Second
	startClient(t, cfg)
	for i := 0; i < quickFailures+1; i++ {
		fp.nextPoll(t)
	}
	// The parked poll is under way; it fails after its delay.
	start := time.Now()
	fp.nextPoll(t)
	grown := 50 * time.Millisecond * 170 / 10 // 50ms·1.5⁷, the wait without a reset
	if waited := time.Since(start) - parkedPollTime - 100*time.Millisecond; waited > grown/2 {
		t.Errorf("polled again %s after a parked poll failed, want about the initial wait (the grown backoff is %s)", waited, grown)
	}
}

func TestAPollAnswerStalledMidBodyIsGivenUp(t *testing.T) {
	fp := startFakeProxy(t)
	body := scrapeRequest(t, "http://127.0.0.1:9/metrics", "stalled", nil)
	fp.answers <- pollAnswer{status: http.StatusOK, body: body, stall: true}
	cfg := testConfig(fp.url(t), "127.0.0.1")
	cfg.pollWait = time.Second
	cfg.pollBodyMargin = 100 * time.Millisecond
	c := startClient(t, cfg)
	fp.nextPoll(t)
	start := time.Now()
	fp.nextPoll(t)
	if elapsed := time.Since(start); elapsed < cfg.pollWait {
		t.Errorf("stalled poll given up after %s, want the poll wait and a margin", elapsed)
	}
	if got := testutil.ToFloat64(c.metrics.pollErrors); got != 1 {
		t.Errorf("poll errors = %v, want 1", got)
	}
}
