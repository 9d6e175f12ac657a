package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rancher/pushprox/internal/testpki"
	"golang.org/x/crypto/bcrypt"
)

// Passwords of the users in the test web config.
var secPasswords = map[string]string{
	"prometheus": "scrape-secret",
	"alice":      "alice-secret",
	"bob":        "bob-secret",
}

// secProxy is a proxy served in-process over TLS on loopback, locked down
// by a web config file, composed as serve composes it.
type secProxy struct {
	*proxy
	sec       *security
	reg       *prometheus.Registry
	ca        *testpki.CA
	dir       string
	webConfig string
	addr      string // host:port of the listener
}

// secWebConfig renders a web config with TLS, client certificates verified
// when given, and the given users.
func secWebConfig(t *testing.T, passwords map[string]string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n" +
		"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n")
	if len(passwords) > 0 {
		b.WriteString("basic_auth_users:\n")
		users := make([]string, 0, len(passwords))
		for user := range passwords {
			users = append(users, user)
		}
		sort.Strings(users)
		for _, user := range users {
			// The lowest cost keeps the tests fast; the cost is in the hash.
			hash, err := bcrypt.GenerateFromPassword([]byte(passwords[user]), bcrypt.MinCost)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "  %s: %s\n", user, hash)
		}
	}
	return b.String()
}

// startSecProxy serves a proxy whose web config file holds webConfig, with
// server.crt, server.key and ca.crt beside it; options change the rest of
// its configuration.
func startSecProxy(t *testing.T, bindFQDNToCert bool, webConfig string, options ...func(*config)) *secProxy {
	t.Helper()
	dir := t.TempDir()
	ca := testpki.NewCA(t, "pushprox test CA")
	testpki.WriteFile(t, dir, "ca.crt", ca.PEM)
	ca.Server(t).WriteFiles(t, dir, "server")
	path := testpki.WriteFile(t, dir, "web.yml", []byte(webConfig))

	cfg := defaultConfig()
	cfg.webConfigFile = path
	cfg.bindFQDNToCert = bindFQDNToCert
	for _, option := range options {
		option(&cfg)
	}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	sec, err := newSecurity(cfg, log.NewNopLogger(), reg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(cfg, log.NewNopLogger(), reg, reg)
	srv := &http.Server{Handler: sec.handler(p)}
	sec.configure(srv)
	served := make(chan error, 2)
	go func() { served <- sec.serve(srv, ln) }()
	resumedPolls := p.detached.enable(srv)
	go func() { served <- srv.Serve(resumedPolls) }()
	t.Cleanup(func() {
		p.hub.Shutdown()
		srv.Close()
		<-served
		<-served
		p.close()
	})
	return &secProxy{proxy: p, sec: sec, reg: reg, ca: ca, dir: dir, webConfig: path, addr: ln.Addr().String()}
}

// client returns an HTTP client that trusts the proxy's CA and presents
// leaf, if not nil. Each request makes a new connection, so that it sees
// the server's current certificate.
func (sp *secProxy) client(t *testing.T, leaf *testpki.Leaf) *http.Client {
	t.Helper()
	cfg := &tls.Config{RootCAs: sp.ca.Pool()}
	if leaf != nil {
		cert := leaf.TLSCertificate(t)
		cfg.Certificates = []tls.Certificate{cert}
	}
	transport := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport}
}

// prometheus returns a client that uses the proxy as Prometheus does with
// proxy_url: https://user:password@proxy/, and tls_config trusting its CA.
func (sp *secProxy) prometheus(t *testing.T, user *url.Userinfo) *http.Client {
	t.Helper()
	proxyURL := &url.URL{Scheme: "https", Host: sp.addr, User: user}
	transport := &http.Transport{
		Proxy:              http.ProxyURL(proxyURL),
		TLSClientConfig:    &tls.Config{RootCAs: sp.ca.Pool()},
		DisableCompression: true,
	}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport}
}

// secCreds are the credentials of one caller; zero values send none.
type secCreds struct {
	leaf     *testpki.Leaf
	user     string
	password string
}

// request sends method path to the proxy with creds in Authorization.
func (sp *secProxy) request(t *testing.T, ctx context.Context, creds secCreds, method, path string, body io.Reader) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, "https://"+sp.addr+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if creds.user != "" {
		req.SetBasicAuth(creds.user, creds.password)
	}
	return sp.client(t, creds.leaf).Do(req)
}

// pollScrape polls as fqdn and returns the scrape request handed over.
func (sp *secProxy) pollScrape(t *testing.T, creds secCreds, fqdn string) *http.Request {
	t.Helper()
	resp, err := sp.request(t, context.Background(), creds, http.MethodPost, "/poll", strings.NewReader(fqdn))
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("poll answered %s: %s", resp.Status, body)
	}
	req, err := http.ReadRequest(bufio.NewReader(resp.Body))
	if err != nil {
		t.Fatalf("reading scrape request: %v", err)
	}
	return req
}

// pushAnswer pushes a 200 with body for the scrape id and returns the
// status and reason of the push's answer.
func (sp *secProxy) pushAnswer(t *testing.T, creds secCreds, id, body string) (int, string) {
	t.Helper()
	resp, err := sp.request(t, context.Background(), creds, http.MethodPost, "/push", serializedAnswer(id, http.StatusOK, body))
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	defer resp.Body.Close()
	reason, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(reason)
}

// secScrapeResult is what Prometheus got.
type secScrapeResult struct {
	resp *http.Response
	body string
	err  error
}

// goScrapeAs starts a Prometheus scrape of target through the proxy.
func (sp *secProxy) goScrapeAs(t *testing.T, user *url.Userinfo, target string, header http.Header) <-chan secScrapeResult {
	t.Helper()
	client := sp.prometheus(t, user)
	done := make(chan secScrapeResult, 1)
	go func() {
		req, err := http.NewRequest(http.MethodGet, target, nil)
		if err != nil {
			done <- secScrapeResult{err: err}
			return
		}
		for name, values := range header {
			req.Header[name] = values
		}
		resp, err := client.Do(req)
		if err != nil {
			done <- secScrapeResult{err: err}
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- secScrapeResult{resp: resp, body: string(body), err: err}
	}()
	return done
}

// busy reports the scrapes queued or in flight and the clients known.
func (sp *secProxy) busy() (scrapes, clients int) {
	st := sp.hub.Stats()
	return st.Queued + st.Inflight, st.Clients
}
