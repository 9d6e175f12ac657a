package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rancher/pushprox/internal/rendezvous"
	"github.com/rancher/pushprox/internal/testbin"
	"github.com/rancher/pushprox/internal/testpki"
	"github.com/rancher/pushprox/util"
)

func TestWrongOrMissingCredentialsAreRefusedAndNothingHappens(t *testing.T) {
	sp := startSecProxy(t, false, secWebConfig(t, secPasswords))
	target := "http://node1:9100/metrics"
	for _, tc := range []struct {
		name     string
		proxy    *url.Userinfo // Prometheus' proxy_url credentials; nil for a plain request
		creds    secCreds      // Authorization for a plain request, the target's for a proxy request
		method   string
		path     string
		body     string
		endpoint string
	}{
		{name: "scrape without credentials", endpoint: "proxy"},
		{name: "scrape with wrong password", proxy: url.UserPassword("prometheus", "wrong"), endpoint: "proxy"},
		{name: "scrape as unknown user", proxy: url.UserPassword("mallory", "scrape-secret"), endpoint: "proxy"},
		{name: "scrape with credentials only for the target", creds: secCreds{user: "prometheus", password: "scrape-secret"}, endpoint: "proxy"},
		{name: "poll without credentials", method: http.MethodPost, path: "/poll", body: "node1", endpoint: "/poll"},
		{name: "poll with wrong password", creds: secCreds{user: "alice", password: "bob-secret"}, method: http.MethodPost, path: "/poll", body: "node1", endpoint: "/poll"},
		{name: "push without credentials", method: http.MethodPost, path: "/push", body: "HTTP/1.1 200 OK\r\nId: 1\r\n\r\n", endpoint: "/push"},
		{name: "clients without credentials", method: http.MethodGet, path: "/clients", endpoint: "/clients"},
		{name: "metrics with wrong password", creds: secCreds{user: "prometheus", password: "nope"}, method: http.MethodGet, path: "/metrics", endpoint: "/metrics"},
		{name: "clients with a client certificate but no password", creds: secCreds{leaf: sp.ca.Client(t, "node1", "node1")}, method: http.MethodGet, path: "/clients", endpoint: "/clients"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := testutil.ToFloat64(sp.sec.refused.WithLabelValues(tc.endpoint))
			var resp *http.Response
			if tc.path == "" {
				header := http.Header{util.HeaderScrapeTimeoutSeconds: {"30"}}
				if tc.creds.user != "" {
					req := &http.Request{Header: http.Header{}}
					req.SetBasicAuth(tc.creds.user, tc.creds.password)
					header.Set("Authorization", req.Header.Get("Authorization"))
				}
				result := <-sp.goScrapeAs(t, tc.proxy, target, header)
				if result.err != nil {
					t.Fatal(result.err)
				}
				resp = result.resp
				if resp.StatusCode != http.StatusProxyAuthRequired {
					t.Fatalf("status %s, want 407", resp.Status)
				}
				if got := resp.Header.Get("Proxy-Authenticate"); !strings.HasPrefix(got, "Basic realm=") {
					t.Errorf("Proxy-Authenticate = %q, want a Basic challenge", got)
				}
			} else {
				var err error
				resp, err = sp.request(t, context.Background(), tc.creds, tc.method, tc.path, strings.NewReader(tc.body))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					t.Fatalf("status %s, want 401", resp.Status)
				}
				if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Basic realm=") {
					t.Errorf("WWW-Authenticate = %q, want a Basic challenge", got)
				}
			}
			if got := testutil.ToFloat64(sp.sec.refused.WithLabelValues(tc.endpoint)); got != before+1 {
				t.Errorf("auth failures of %s = %v, want %v", tc.endpoint, got, before+1)
			}
			// The refusal is synchronous: had anything been queued or
			// registered, it would be there now.
			if scrapes, clients := sp.busy(); scrapes != 0 || clients != 0 {
				t.Errorf("%d scrapes queued or in flight and %d clients known after a refused request", scrapes, clients)
			}
		})
	}
	// Refused requests never reached the proxy's endpoints: the series
	// that exist from the start are all still 0.
	starting := startingRequestSeries()
	if got := testutil.CollectAndCount(sp.metrics.httpRequests); got != len(starting) {
		t.Errorf("%d request series counted by the endpoints, want the %d of the start", got, len(starting))
	}
	for _, series := range starting {
		if n := testutil.ToFloat64(sp.metrics.httpRequests.WithLabelValues(series.code, series.path)); n != 0 {
			t.Errorf("%v requests counted by %s %s, want none", n, series.code, series.path)
		}
	}
}

func TestAuthenticatedRoundTripKeepsTheTargetsAuthorization(t *testing.T) {
	sp := startSecProxy(t, false, secWebConfig(t, secPasswords))
	for _, tc := range []struct {
		name  string
		creds secCreds
	}{
		{name: "client with password", creds: secCreds{user: "alice", password: "alice-secret"}},
		{name: "client with certificate", creds: secCreds{leaf: sp.ca.Client(t, "node1", "node1")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := sp.goScrapeAs(t, url.UserPassword("prometheus", "scrape-secret"), "http://node1:9100/metrics",
				http.Header{"Authorization": {"Bearer target-token"}, util.HeaderScrapeTimeoutSeconds: {"30"}})
			req := sp.pollScrape(t, tc.creds, "node1")
			if got := req.Header.Get("Authorization"); got != "Bearer target-token" {
				t.Errorf("target's Authorization = %q, want it untouched", got)
			}
			if got := req.Header.Get("Proxy-Authorization"); got != "" {
				t.Errorf("Proxy-Authorization reached the client: %q", got)
			}
			if code, reason := sp.pushAnswer(t, tc.creds, req.Header.Get(util.HeaderID), "up 1\n"); code != http.StatusOK {
				t.Fatalf("push answered %d: %s", code, reason)
			}
			result := <-done
			if result.err != nil {
				t.Fatal(result.err)
			}
			if result.resp.StatusCode != http.StatusOK || result.body != "up 1\n" {
				t.Errorf("Prometheus got %s %q", result.resp.Status, result.body)
			}
		})
	}
	resp, err := sp.request(t, context.Background(), secCreds{user: "prometheus", password: "scrape-secret"}, http.MethodGet, "/clients", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"node1"`) {
		t.Errorf("/clients answered %s %s", resp.Status, body)
	}
	// Orchestrators probe health without credentials.
	for _, path := range []string{"/-/healthy", "/-/ready"} {
		resp, err := sp.request(t, context.Background(), secCreds{}, http.MethodGet, path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s without credentials answered %s, want 200", path, resp.Status)
		}
	}
}

func TestCertificateBindsPollsToItsNames(t *testing.T) {
	sp := startSecProxy(t, true, secWebConfig(t, secPasswords))
	hostA := sp.ca.Client(t, "host-a", "host-a.example.com")
	for _, tc := range []struct {
		name   string
		creds  secCreds
		fqdn   string
		reason string // "" when the poll must be accepted
	}{
		{name: "DNS SAN", creds: secCreds{leaf: hostA}, fqdn: "host-a.example.com"},
		{name: "DNS SAN in other case with root dot", creds: secCreds{leaf: hostA}, fqdn: "HOST-A.example.com."},
		{name: "common name", creds: secCreds{leaf: hostA}, fqdn: "host-a"},
		{name: "IP SAN", creds: secCreds{leaf: sp.ca.Issue(t, "ip", nil, []net.IP{net.IPv4(127, 0, 0, 1)}, x509.ExtKeyUsageClientAuth)}, fqdn: "127.0.0.1"},
		{name: "wildcard SAN", creds: secCreds{leaf: sp.ca.Client(t, "fleet", "*.nodes.example.com")}, fqdn: "n1.nodes.example.com"},
		{name: "another host", creds: secCreds{leaf: hostA}, fqdn: "host-b.example.com", reason: "does not name"},
		{name: "password but no certificate", creds: secCreds{user: "alice", password: "alice-secret"}, fqdn: "host-c.example.com", reason: "needs a verified client certificate"},
		{name: "certificate and password of another host", creds: secCreds{leaf: hostA, user: "alice", password: "alice-secret"}, fqdn: "host-b.example.com", reason: "does not name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			answered := make(chan *http.Response, 1)
			go func() {
				resp, err := sp.request(t, ctx, tc.creds, http.MethodPost, "/poll", strings.NewReader(tc.fqdn))
				if err != nil {
					answered <- nil
					return
				}
				answered <- resp
			}()
			if tc.reason == "" {
				// Accepted: the poll parks. Ending it unparks it.
				waitFor(t, "the poll to park", func() bool { return sp.hub.Stats().Parked == 1 })
				cancel()
				<-answered
				waitFor(t, "the poll to unpark", func() bool { return sp.hub.Stats().Parked == 0 })
				return
			}
			resp := <-answered
			if resp == nil {
				t.Fatal("poll failed")
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), tc.reason) {
				t.Errorf("poll answered %s %q, want 403 saying %q", resp.Status, body, tc.reason)
			}
			if sp.hub.Known(strings.TrimSpace(tc.fqdn)) {
				t.Errorf("refused poll registered %s", tc.fqdn)
			}
		})
	}
}

func TestPushForAScrapeHandedToAnotherClientIsForbidden(t *testing.T) {
	for _, bind := range []bool{false, true} {
		sp := startSecProxy(t, bind, secWebConfig(t, secPasswords))
		certA := secCreds{leaf: sp.ca.Client(t, "node1", "node1")}
		certB := secCreds{leaf: sp.ca.Client(t, "node2", "node2")}
		for _, tc := range []struct {
			name             string
			poller, intruder secCreds
		}{
			{name: "certificate against certificate", poller: certA, intruder: certB},
			{name: "certificate against password", poller: certA, intruder: secCreds{user: "bob", password: "bob-secret"}},
			{name: "password against password", poller: secCreds{user: "alice", password: "alice-secret"}, intruder: secCreds{user: "bob", password: "bob-secret"}},
			{name: "password against certificate", poller: secCreds{user: "alice", password: "alice-secret"}, intruder: certB},
		} {
			if bind && tc.poller.leaf == nil {
				continue // with the binding, polls need a certificate
			}
			t.Run(fmt.Sprintf("bind=%v/%s", bind, tc.name), func(t *testing.T) {
				done := sp.goScrapeAs(t, url.UserPassword("prometheus", "scrape-secret"), "http://node1:9100/metrics",
					http.Header{util.HeaderScrapeTimeoutSeconds: {"30"}})
				id := sp.pollScrape(t, tc.poller, "node1").Header.Get(util.HeaderID)
				code, reason := sp.pushAnswer(t, tc.intruder, id, "injected 1\n")
				if code != http.StatusForbidden || !strings.Contains(reason, rendezvous.ErrWrongClient.Error()) {
					t.Errorf("intruder's push answered %d %q, want 403", code, reason)
				}
				// The scrape is still its poller's to answer.
				if code, reason := sp.pushAnswer(t, tc.poller, id, "genuine 1\n"); code != http.StatusOK {
					t.Fatalf("poller's push answered %d: %s", code, reason)
				}
				result := <-done
				if result.err != nil {
					t.Fatal(result.err)
				}
				if result.body != "genuine 1\n" {
					t.Errorf("Prometheus got %q, want the poller's answer", result.body)
				}
			})
		}
	}
}

func TestSecurityFlagsAreChecked(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{name: "binding without web config", args: []string{"--auth.bind-fqdn-to-cert"}, want: "--auth.bind-fqdn-to-cert needs --web.config.file"},
		{name: "binding without verified client certificates", args: []string{"--auth.bind-fqdn-to-cert", "--web.config.file=" + write("users.yml", "basic_auth_users: {}\n")}, want: "needs client_auth_type RequireAndVerifyClientCert"},
		{name: "missing web config", args: []string{"--web.config.file=" + filepath.Join(dir, "none.yml")}, want: "web.config.file"},
		{name: "unknown field", args: []string{"--web.config.file=" + write("unknown.yml", "basic_auth:\n  a: b\n")}, want: "--web.config.file: yaml: unmarshal errors: line 1: field basic_auth not found"},
		{name: "not a bcrypt hash", args: []string{"--web.config.file=" + write("plain.yml", "basic_auth_users:\n  a: secret\n")}, want: "--web.config.file: crypto/bcrypt"},
		{name: "certificate file missing", args: []string{"--web.config.file=" + write("tls.yml", "tls_server_config:\n  cert_file: gone.crt\n  key_file: gone.key\n")}, want: "--web.config.file: failed to read cert_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if code := run(tc.args, &out); code != 2 {
				t.Fatalf("exited %d, want 2: %s", code, out.String())
			}
			if !strings.Contains(out.String(), tc.want) {
				t.Errorf("output %q does not say %q", out.String(), tc.want)
			}
			if lines := strings.Count(strings.TrimSpace(out.String()), "\n"); lines != 0 {
				t.Errorf("reason takes %d lines, want 1: %q", lines+1, out.String())
			}
		})
	}
}

func TestLockedDownRoundTripThroughRealClient(t *testing.T) {
	target := startTarget(t, "# TYPE up gauge\nup 1\n")
	targetURL := target.URL + "/metrics"
	for _, tc := range []struct {
		name string
		bind bool
		// args name the proxy and authenticate the client to it.
		args func(sp *secProxy) []string
	}{
		{name: "password file", args: func(sp *secProxy) []string {
			return []string{"--proxy-url=https://" + sp.addr, "--proxy.username=alice",
				"--proxy.password-file=" + testpki.WriteFile(t, sp.dir, "alice.pw", []byte("alice-secret\n"))}
		}},
		{name: "password in proxy URL", args: func(sp *secProxy) []string {
			return []string{"--proxy-url=https://alice:alice-secret@" + sp.addr + "/"}
		}},
		{name: "certificate bound to the FQDN", bind: true, args: func(sp *secProxy) []string {
			certFile, keyFile := sp.ca.Issue(t, "127.0.0.1", nil, []net.IP{net.IPv4(127, 0, 0, 1)}, x509.ExtKeyUsageClientAuth).WriteFiles(t, sp.dir, "client")
			return []string{"--proxy-url=https://" + sp.addr, "--tls.cert=" + certFile, "--tls.key=" + keyFile}
		}},
	} {
		for _, transport := range []string{"poll", "tunnel"} {
			t.Run(tc.name+" over "+transport, func(t *testing.T) {
				sp := startSecProxy(t, tc.bind, secWebConfig(t, secPasswords))
				args := append([]string{
					"--proxy.transport=" + transport,
					"--fqdn=127.0.0.1",
					"--tls.cacert=" + filepath.Join(sp.dir, "ca.crt"),
					"--metrics-addr=127.0.0.1:0",
					"--proxy.retry.initial-wait=50ms",
					"--proxy.retry.max-wait=200ms",
					"--log.level=debug",
				}, tc.args(sp)...)
				client := testbin.Start(t, clientBinary, args...)
				client.WaitForOutput(clientPolling)
				waitFor(t, "the client to connect by "+transport, func() bool {
					st := sp.hub.Stats()
					return st.Parked == 1 || st.Tunnels == 1
				})

				result := <-sp.goScrapeAs(t, url.UserPassword("prometheus", "scrape-secret"), targetURL,
					http.Header{util.HeaderScrapeTimeoutSeconds: {"30"}})
				if result.err != nil {
					t.Fatal(result.err)
				}
				if result.resp.StatusCode != http.StatusOK || result.body != target.body {
					t.Errorf("Prometheus got %s %q, want the target's answer", result.resp.Status, result.body)
				}
				if transport == "tunnel" && sp.hub.Stats().Tunnels != 1 {
					t.Errorf("no tunnel attached: the locked-down proxy refused it")
				}
			})
		}
	}
}
