package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

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
	got := received(t, requests)
	if got.url.Path != "/metrics" {
		t.Errorf("target saw path %q", got.url.Path)
	}
	// The target is asked for the host Prometheus asked for, as the
	// Rancher client asks it, though the client dials 127.0.0.1.
	if want := "node.example:" + cfg.allowPort; got.host != want {
		t.Errorf("target saw Host %q, want %q", got.host, want)
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

func TestScrapeAllowList(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules []string
		host  string
		port  string
		path  string
		allow bool
	}{
		{name: "no rules allow everything", host: "node1", port: "22", path: "/", allow: true},
		{name: "exact", rules: []string{"node1:9100/metrics"}, host: "node1", port: "9100", path: "/metrics", allow: true},
		{name: "host case and root dot", rules: []string{"Node1.:9100/metrics"}, host: "NODE1", port: "9100", path: "/metrics", allow: true},
		{name: "any host", rules: []string{"*:9100/metrics"}, host: "127.0.0.1", port: "9100", path: "/metrics", allow: true},
		{name: "port glob", rules: []string{"*:91*/metrics"}, host: "node1", port: "9182", path: "/metrics", allow: true},
		{name: "second rule", rules: []string{"*:9100/metrics", "*:9115/probe"}, host: "node1", port: "9115", path: "/probe", allow: true},
		{name: "IPv6 host", rules: []string{"[::1]:9100/metrics"}, host: "::1", port: "9100", path: "/metrics", allow: true},
		{name: "empty path is /", rules: []string{"*:80/"}, host: "node1", port: "80", path: "", allow: true},
		{name: "other port", rules: []string{"*:9100/metrics"}, host: "node1", port: "22", path: "/metrics"},
		{name: "other path", rules: []string{"*:9100/metrics"}, host: "node1", port: "9100", path: "/debug/pprof"},
		{name: "other host", rules: []string{"node1:9100/metrics"}, host: "node2", port: "9100", path: "/metrics"},
		{name: "star stays within a segment", rules: []string{"*:9100/*"}, host: "node1", port: "9100", path: "/debug/pprof"},
		{name: "dot segments", rules: []string{"*:9100/metrics/*"}, host: "node1", port: "9100", path: "/metrics/../admin"},
		{name: "double slash", rules: []string{"*:9100/*"}, host: "node1", port: "9100", path: "//admin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var list allowList
			for _, rule := range tc.rules {
				if err := list.Set(rule); err != nil {
					t.Fatal(err)
				}
			}
			err := list.check(tc.host, tc.port, tc.path)
			if tc.allow && err != nil {
				t.Errorf("refused: %v", err)
			}
			if !tc.allow && (err == nil || !strings.Contains(err.Error(), "scrape refused")) {
				t.Errorf("got %v, want a refusal", err)
			}
		})
	}
}

func TestDisallowedTargetIsRefusedWithTheReason(t *testing.T) {
	fp := startTLSFakeProxy(t, nil)
	allowed, allowedSeen := recordingTarget(t, false, http.StatusOK, "up 1\n")
	other, otherSeen := recordingTarget(t, false, http.StatusOK, "secret 1\n")
	allowedPort, otherPort := port(t, allowed), port(t, other)
	cfg := parseTestFlags(t, "--fqdn=127.0.0.1", "--proxy-url="+fp.url(t).String(), "--tls.cacert="+fp.caFile,
		"--scrape.allow=127.0.0.1:"+allowedPort+"/metrics")
	startClient(t, cfg)

	for _, tc := range []struct {
		name   string
		target string
		status int
		want   string
	}{
		{name: "allowed", target: "http://127.0.0.1:" + allowedPort + "/metrics", status: http.StatusOK, want: "up 1"},
		{name: "other path", target: "http://127.0.0.1:" + allowedPort + "/debug/pprof/heap", status: http.StatusInternalServerError,
			want: "scrape refused: target 127.0.0.1:" + allowedPort + "/debug/pprof/heap is not allowed by --scrape.allow"},
		{name: "other port", target: "http://127.0.0.1:" + otherPort + "/metrics", status: http.StatusInternalServerError,
			want: "scrape refused: target 127.0.0.1:" + otherPort + "/metrics is not allowed by --scrape.allow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := fp.queueScrape(t, tc.target, nil)
			push := fp.pushOf(t, id)
			if push.status != tc.status || !strings.Contains(string(push.body), tc.want) {
				t.Errorf("pushed %d %q, want %d with %q", push.status, push.body, tc.status, tc.want)
			}
		})
	}
	received(t, allowedSeen)
	neverContacted(t, allowedSeen)
	neverContacted(t, otherSeen)
}

func TestScrapeAllowMatchesTheHostAskedForUnderUseLocalhost(t *testing.T) {
	target, requests := recordingTarget(t, false, http.StatusOK, "up 1\n")
	targetPort := port(t, target)
	for _, tc := range []struct {
		name   string
		rule   string
		status int
		want   string
	}{
		{name: "the FQDN", rule: "node.example:" + targetPort + "/metrics", status: http.StatusOK, want: "up 1"},
		{name: "not 127.0.0.1", rule: "127.0.0.1:" + targetPort + "/metrics", status: http.StatusInternalServerError,
			want: "target node.example:" + targetPort + "/metrics is not allowed by --scrape.allow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fp := startFakeProxy(t)
			cfg := testConfig(fp.url(t), "node.example")
			cfg.useLocalhost = true
			cfg.allowPort = targetPort
			if err := cfg.security.scrapeAllow.Set(tc.rule); err != nil {
				t.Fatal(err)
			}
			startClient(t, cfg)
			id := fp.queueScrape(t, "http://node.example:"+targetPort+"/metrics", nil)
			fp.expectPush(t, id, tc.status, tc.want)
			if tc.status == http.StatusOK {
				received(t, requests)
			}
			neverContacted(t, requests)
		})
	}
}
