package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/rancher/pushprox/util"
)

// redirectingTarget answers every request with a redirect to location.
func redirectingTarget(t *testing.T, secure bool, location string) *httptest.Server {
	t.Helper()
	return startTarget(t, secure, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, location, http.StatusFound)
	})
}

// A redirect is followed only to a URL the proxy could have asked for
// itself: otherwise a target (or a proxy using a target's open redirect)
// leads the client past --allow-port, --scrape.allow and its FQDN.
func TestTargetRedirectsStayWithinTheRules(t *testing.T) {
	t.Run("to a port not allowed", func(t *testing.T) {
		fp := startFakeProxy(t)
		other, requests := recordingTarget(t, false, http.StatusOK, "secret 1\n")
		allowed := redirectingTarget(t, false, other.URL+"/metrics")
		cfg := testConfig(fp.url(t), "127.0.0.1")
		cfg.allowPort = port(t, allowed)
		startClient(t, cfg)

		id := fp.queueScrape(t, allowed.URL+"/metrics", nil)
		fp.expectPush(t, id, http.StatusInternalServerError, "not allowed")
		neverContacted(t, requests)
	})
	t.Run("to another host", func(t *testing.T) {
		fp := startFakeProxy(t)
		other, requests := recordingTarget(t, false, http.StatusOK, "secret 1\n")
		allowed := redirectingTarget(t, false, "http://localhost:"+port(t, other)+"/metrics")
		startClient(t, testConfig(fp.url(t), "127.0.0.1"))

		id := fp.queueScrape(t, allowed.URL+"/metrics", nil)
		fp.expectPush(t, id, http.StatusInternalServerError, "redirect")
		neverContacted(t, requests)
	})
	t.Run("to a path --scrape.allow does not list", func(t *testing.T) {
		fp := startFakeProxy(t)
		hits := make(chan string, 4)
		target := startTarget(t, false, func(w http.ResponseWriter, r *http.Request) {
			hits <- r.URL.Path
			if r.URL.Path == "/metrics" {
				http.Redirect(w, r, "/admin", http.StatusFound)
				return
			}
			io.WriteString(w, "admin\n")
		})
		cfg := testConfig(fp.url(t), "127.0.0.1")
		if err := cfg.security.scrapeAllow.Set("127.0.0.1:" + port(t, target) + "/metrics"); err != nil {
			t.Fatal(err)
		}
		startClient(t, cfg)

		id := fp.queueScrape(t, target.URL+"/metrics", nil)
		fp.expectPush(t, id, http.StatusInternalServerError, "--scrape.allow")
		if got := <-hits; got != "/metrics" {
			t.Errorf("first request to %s", got)
		}
		select {
		case got := <-hits:
			t.Errorf("redirect to %s followed", got)
		default:
		}
	})
	t.Run("with a token, to plain HTTP", func(t *testing.T) {
		fp := startFakeProxy(t)
		plain, requests := recordingTarget(t, false, http.StatusOK, "secret 1\n")
		secure := redirectingTarget(t, true, plain.URL+"/metrics")
		tokenPath := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokenPath, []byte("s3cret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := testConfig(fp.url(t), "127.0.0.1")
		cfg.tokenPath = tokenPath
		cfg.insecureSkipVerify = true
		startClient(t, cfg)

		id := fp.queueScrape(t, "http://127.0.0.1:"+port(t, secure)+"/metrics", nil)
		fp.expectPush(t, id, http.StatusInternalServerError, "redirect")
		neverContacted(t, requests)
	})
	t.Run("within the rules is followed", func(t *testing.T) {
		fp := startFakeProxy(t)
		target := startTarget(t, false, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/" {
				http.Redirect(w, r, "/metrics", http.StatusFound)
				return
			}
			io.WriteString(w, "up 1\n")
		})
		cfg := testConfig(fp.url(t), "127.0.0.1")
		cfg.allowPort = port(t, target)
		startClient(t, cfg)

		id := fp.queueScrape(t, target.URL+"/", nil)
		fp.expectPush(t, id, http.StatusOK, "up 1\n")
	})
}

// A push of a scrape error is bounded in time: a proxy that never answers
// it must not hold a scrape slot, nor the client's shutdown, for ever.
func TestRefusePushIsBounded(t *testing.T) {
	old := refuseTimeout
	refuseTimeout = 200 * time.Millisecond
	t.Cleanup(func() { refuseTimeout = old })

	polls := make(chan struct{}, 1)
	pushCut := make(chan struct{}, 1)
	// Unblocks the handlers when the test ends, even if the client hangs.
	testDone := make(chan struct{})
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		switch {
		case strings.HasSuffix(r.URL.Path, "/poll"):
			select {
			case polls <- struct{}{}:
				// A scrape whose timeout header is invalid is refused.
				w.Write(scrapeRequest(t, "http://127.0.0.1:9/metrics", uuid.NewString(),
					http.Header{util.HeaderScrapeTimeoutSeconds: {"soon"}}))
			default:
				select {
				case <-r.Context().Done():
				case <-testDone:
				}
			}
		case strings.HasSuffix(r.URL.Path, "/push"):
			// Stalled: never answered.
			select {
			case <-r.Context().Done():
				pushCut <- struct{}{}
			case <-testDone:
			}
		}
	}))
	t.Cleanup(proxy.Close)
	proxyURL, err := util.ParseProxyURL(proxy.URL)
	if err != nil {
		t.Fatal(err)
	}
	startClient(t, testConfig(proxyURL, "127.0.0.1"))
	t.Cleanup(func() { close(testDone) })
	select {
	case <-pushCut:
	case <-time.After(5 * time.Second):
		t.Fatal("the push of a refused scrape was not given up")
	}
}

// The client does not follow redirects from the proxy: a poll is a POST,
// and following it would hand the --proxy.username credentials to whatever
// host the redirect names.
func TestProxyRedirectDoesNotCarryCredentials(t *testing.T) {
	evil := make(chan string, 16)
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		evil <- r.Header.Get("Authorization")
		http.NotFound(w, r)
	}))
	t.Cleanup(elsewhere.Close)
	polls := make(chan struct{}, 16)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		polls <- struct{}{}
		http.Redirect(w, r, elsewhere.URL+"/poll", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(proxy.Close)
	proxyURL, err := util.ParseProxyURL(proxy.URL)
	if err != nil {
		t.Fatal(err)
	}
	passwordFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(passwordFile, []byte("hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(proxyURL, "127.0.0.1")
	cfg.security.proxyUsername = "node1"
	cfg.security.proxyPasswordFile = passwordFile
	startClient(t, cfg)

	for range 2 {
		select {
		case <-polls:
		case <-time.After(waitLimit):
			t.Fatal("no poll")
		}
	}
	select {
	case auth := <-evil:
		t.Errorf("redirect followed to another host, with Authorization %q", auth)
	default:
	}
}

// Only GET is a scrape: a proxy cannot make the client POST, PUT or DELETE
// to a target.
func TestOnlyGETIsScraped(t *testing.T) {
	for _, method := range []string{http.MethodPost, http.MethodDelete, http.MethodPut} {
		t.Run(method, func(t *testing.T) {
			fp := startFakeProxy(t)
			target, requests := recordingTarget(t, false, http.StatusOK, "ok\n")
			startClient(t, testConfig(fp.url(t), "127.0.0.1"))

			id := uuid.NewString()
			fp.answers <- pollAnswer{status: http.StatusOK, body: proxiedRequest(t, method, target.URL+"/-/quit", strings.NewReader("x"), id, nil)}
			fp.expectPush(t, id, http.StatusInternalServerError, method)
			neverContacted(t, requests)
		})
	}
}
