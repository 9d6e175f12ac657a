package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rancher/pushprox/util"
)

func TestPollAnswersThatAreNotScrapes(t *testing.T) {
	const html = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>\n"
	for _, tc := range []struct {
		name   string
		status int
		header http.Header
		body   string
	}{
		{name: "408", status: http.StatusRequestTimeout, body: "poll given up\n"},
		{name: "503", status: http.StatusServiceUnavailable, body: "shutting down\n"},
		{name: "502 HTML page", status: http.StatusBadGateway, header: http.Header{"Content-Type": {"text/html"}}, body: html},
		{name: "200 HTML page", status: http.StatusOK, header: http.Header{"Content-Type": {"text/html"}}, body: html},
		{name: "200 garbage", status: http.StatusOK, body: "\x00\x01garbage\r\n\r\n"},
		{name: "200 empty", status: http.StatusOK},
		{name: "200 relative request", status: http.StatusOK, body: "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nId: 1\r\n\r\n"},
		{name: "200 request without Id", status: http.StatusOK, body: "GET http://127.0.0.1:9100/metrics HTTP/1.1\r\nHost: 127.0.0.1:9100\r\n\r\n"},
		{name: "200 CONNECT request without Id", status: http.StatusOK, body: "CONNECT 127.0.0.1:9100 HTTP/1.1\r\nHost: 127.0.0.1:9100\r\n\r\n"},
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
			if got := testutil.ToFloat64(c.metrics.scrapeErrors); got != 0 {
				t.Errorf("scrape errors = %v, want 0", got)
			}
		})
	}
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

func TestProxyAnsweringNoWorkAtOncePacesPolls(t *testing.T) {
	fp := startFakeProxy(t)
	const empty = 5
	for i := 0; i < empty; i++ {
		fp.answer(http.StatusNoContent, nil, "")
	}
	cfg := testConfig(fp.url(t), "127.0.0.1")
	cfg.retryInitialWait = 40 * time.Millisecond
	cfg.retryMaxWait = 40 * time.Millisecond
	startClient(t, cfg)
	start := time.Now()
	for i := 0; i <= empty; i++ {
		fp.nextPoll(t)
	}
	// Each instant 204 is followed by a pause of the initial retry wait; a
	// lower bound only, so a loaded machine cannot make it fail.
	if elapsed := time.Since(start); elapsed < (empty-1)*cfg.retryInitialWait {
		t.Errorf("%d polls after instant 204s took %s, want at least %s", empty+1, elapsed, (empty-1)*cfg.retryInitialWait)
	}
}

// A push of a scrape error is bounded in time: a proxy that never answers
// it must not hold a scrape slot, nor the client's shutdown, for ever.
func TestRefusePushIsBounded(t *testing.T) {
	fp := startFakeProxy(t)
	fp.holdPushes = true
	// A scrape whose timeout header is invalid is refused.
	fp.answers <- pollAnswer{status: http.StatusOK, body: withTimeoutHeader(t, scrapeRequest(t, "http://127.0.0.1:9/metrics", uuid.NewString(), nil), []string{"soon"})}
	cfg := testConfig(fp.url(t), "127.0.0.1")
	cfg.refuseTimeout = 200 * time.Millisecond
	startClient(t, cfg)
	select {
	case <-fp.pushesGivenUp:
	case <-time.After(5 * time.Second):
		t.Fatal("the push of a refused scrape was not given up")
	}
}

// The client does not follow redirects from the proxy: a poll is a POST,
// and following it would hand the --proxy.username credentials to whatever
// host the redirect names.
func TestProxyRedirectDoesNotCarryCredentials(t *testing.T) {
	elsewhere := startFakeProxy(t)
	fp := startFakeProxy(t)
	for range 2 {
		fp.answer(http.StatusTemporaryRedirect, http.Header{"Location": {elsewhere.url(t).String() + "/poll"}}, "")
	}
	passwordFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(passwordFile, []byte("hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(fp.url(t), "127.0.0.1")
	cfg.security.proxyUsername = "node1"
	cfg.security.proxyPasswordFile = passwordFile
	c := startClient(t, cfg)

	for range 3 {
		fp.nextPoll(t)
	}
	c.stop(t)
	select {
	case r := <-elsewhere.requests:
		t.Errorf("redirect followed to another host, with Authorization %q", r.authorization)
	default:
	}
}

func TestACONNECTHandedToAPollIsRefusedWithTheReasonAndPollingGoesOn(t *testing.T) {
	// The reference proxy hands a scheme: https scrape's CONNECT to a poll
	// as Prometheus sent it, without a timeout: the proxy works, so the
	// client pushes the reason at once and polls on without a pause.
	fp := startFakeProxy(t)
	target, requests := recordingTarget(t, false, http.StatusOK, "up 1\n")
	c := startClient(t, testConfig(fp.url(t), "127.0.0.1"))

	id := uuid.NewString()
	fp.answer(http.StatusOK, nil, "CONNECT 127.0.0.1:"+port(t, target)+" HTTP/1.1\r\nHost: 127.0.0.1:"+port(t, target)+"\r\nId: "+id+"\r\n\r\n")
	fp.expectPush(t, id, http.StatusInternalServerError, "_scheme=https")
	neverContacted(t, requests)

	next := fp.queueScrape(t, "http://127.0.0.1:"+port(t, target)+"/metrics", nil)
	fp.expectPush(t, next, http.StatusOK, "up 1\n")
	received(t, requests)
	if got := testutil.ToFloat64(c.metrics.pollErrors); got != 0 {
		t.Errorf("poll errors = %v, want 0", got)
	}
	if got := testutil.ToFloat64(c.metrics.scrapeErrors); got != 1 {
		t.Errorf("scrape errors = %v, want 1", got)
	}
}
