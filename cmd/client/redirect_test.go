package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
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

func TestTemporaryAndPermanentRedirectsAreFollowedLikeTheOthers(t *testing.T) {
	for _, status := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			fp := startFakeProxy(t)
			target := startTarget(t, false, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/old" {
					http.Redirect(w, r, "/metrics", status)
					return
				}
				io.WriteString(w, "up 1\n")
			})
			startClient(t, testConfig(fp.url(t), "127.0.0.1"))
			id := fp.queueScrape(t, target.URL+"/old", nil)
			fp.expectPush(t, id, http.StatusOK, "up 1\n")
		})
	}
}
