package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/google/uuid"
	"golang.org/x/crypto/bcrypt"

	"github.com/rancher/pushprox/internal/testpki"
	"github.com/rancher/pushprox/util"
)

// secSeen is one request as the TLS fake proxy saw it.
type secSeen struct {
	path          string
	authorization string
	clientCert    *x509.Certificate // nil when none was presented
}

// secAnswer is a scripted answer to a poll.
type secAnswer struct {
	status int
	close  bool   // ask the client to close the connection
	body   []byte // a scrape request, for status 200
}

// secPush is a push the TLS fake proxy received.
type secPush struct {
	id     string
	status int
	body   string
}

// secFakeProxy is a fake proxy over TLS on loopback that verifies client
// certificates when given and records every request's credentials.
type secFakeProxy struct {
	url     *url.URL
	caFile  string
	ca      *testpki.CA
	answers chan secAnswer
	seen    chan secSeen
	pushes  chan secPush
}

func startSecFakeProxy(t *testing.T) *secFakeProxy {
	t.Helper()
	return startSecFakeProxyOfCA(t, testpki.NewCA(t, "proxy CA"))
}

// startSecFakeProxyOfCA is startSecFakeProxy with a certificate of ca.
func startSecFakeProxyOfCA(t *testing.T, ca *testpki.CA) *secFakeProxy {
	t.Helper()
	dir := t.TempDir()
	fp := &secFakeProxy{
		ca:      ca,
		caFile:  testpki.WriteFile(t, dir, "proxy-ca.crt", ca.PEM),
		answers: make(chan secAnswer, 16),
		seen:    make(chan secSeen, 256),
		pushes:  make(chan secPush, 16),
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := secSeen{path: r.URL.Path, authorization: r.Header.Get("Authorization")}
		if len(r.TLS.PeerCertificates) > 0 {
			s.clientCert = r.TLS.PeerCertificates[0]
		}
		select {
		case fp.seen <- s:
		default: // Tests read the first requests only.
		}
		switch {
		case strings.HasSuffix(r.URL.Path, "/poll"):
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case a := <-fp.answers:
				if a.close {
					w.Header().Set("Connection", "close")
				}
				w.WriteHeader(a.status)
				_, _ = w.Write(a.body)
			case <-r.Context().Done():
			}
		case strings.HasSuffix(r.URL.Path, "/push"):
			resp, err := http.ReadResponse(bufio.NewReader(r.Body), nil)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			fp.pushes <- secPush{id: resp.Header.Get(util.HeaderID), status: resp.StatusCode, body: string(body)}
		default:
			http.NotFound(w, r)
		}
	}))
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{ca.Server(t).TLSCertificate(t)},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    ca.Pool(),
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	fp.url = u
	return fp
}

// scrape hands the client a scrape of target and returns its Id.
func (fp *secFakeProxy) scrape(t *testing.T, target string) string {
	t.Helper()
	id := uuid.NewString()
	fp.answers <- secAnswer{status: http.StatusOK, body: scrapeRequest(t, target, id, nil)}
	return id
}

// nextSeen waits for the next request to the fake proxy.
func (fp *secFakeProxy) nextSeen(t *testing.T) secSeen {
	t.Helper()
	select {
	case s := <-fp.seen:
		return s
	case <-time.After(waitLimit):
		t.Fatalf("no request to the proxy within %s", waitLimit)
		return secSeen{}
	}
}

// nextPush waits for the push of scrape id.
func (fp *secFakeProxy) nextPush(t *testing.T, id string) secPush {
	t.Helper()
	select {
	case p := <-fp.pushes:
		if p.id != id {
			t.Fatalf("push for %q, want %q", p.id, id)
		}
		return p
	case <-time.After(waitLimit):
		t.Fatalf("no push within %s", waitLimit)
		return secPush{}
	}
}

// secParse parses client flags into a config, failing the test on error.
func secParse(t *testing.T, args ...string) config {
	t.Helper()
	var out bytes.Buffer
	cfg, err := parseFlags(append([]string{"--metrics-addr=127.0.0.1:0", "--proxy.retry.initial-wait=10ms", "--proxy.retry.max-wait=50ms"}, args...), &out)
	if err != nil || cfg == nil {
		t.Fatalf("parseFlags(%q): %v %s", args, err, out.String())
	}
	return *cfg
}

// secTarget is an HTTPS target with a certificate of ca that asks for
// client certificates and reports the one it got.
func secTarget(t *testing.T, ca *testpki.CA) (*httptest.Server, chan *x509.Certificate) {
	t.Helper()
	certs := make(chan *x509.Certificate, 16)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var cert *x509.Certificate
		if len(r.TLS.PeerCertificates) > 0 {
			cert = r.TLS.PeerCertificates[0]
		}
		certs <- cert
		_, _ = io.WriteString(w, "up 1\n")
	}))
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{ca.Server(t).TLSCertificate(t)},
		ClientAuth:   tls.RequestClientCert,
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, certs
}

func TestTargetTLSIsSeparateFromProxyTLS(t *testing.T) {
	proxyCA := testpki.NewCA(t, "proxy CA")
	dir := t.TempDir()
	proxyCertFile, proxyKeyFile := proxyCA.Client(t, "proxy-client").WriteFiles(t, dir, "proxy-client")
	targetCA := testpki.NewCA(t, "target CA")
	targetCAFile := testpki.WriteFile(t, dir, "target-ca.crt", targetCA.PEM)
	scrapeCertFile, scrapeKeyFile := targetCA.Client(t, "scrape-client").WriteFiles(t, dir, "scrape-client")
	// Targets whose certificates come from the proxy's CA or their own.
	proxyCATarget, proxyCATargetCerts := secTarget(t, proxyCA)
	ownCATarget, ownCATargetCerts := secTarget(t, targetCA)

	for _, tc := range []struct {
		name     string
		args     []string
		target   *httptest.Server
		certs    chan *x509.Certificate
		wantErr  string // in the pushed 500; "" for success
		wantCert string // CN the target sees; "" for none
	}{
		{name: "shared by default", target: proxyCATarget, certs: proxyCATargetCerts, wantCert: "proxy-client"},
		{name: "shared CA does not trust other targets", target: ownCATarget, certs: ownCATargetCerts, wantErr: "certificate signed by unknown authority"},
		{name: "own CA", args: []string{"--scrape.tls.cacert=" + targetCAFile}, target: ownCATarget, certs: ownCATargetCerts},
		{name: "own CA is not the proxy's", args: []string{"--scrape.tls.cacert=" + targetCAFile}, target: proxyCATarget, certs: proxyCATargetCerts, wantErr: "certificate signed by unknown authority"},
		{name: "own client certificate", args: []string{"--scrape.tls.cacert=" + targetCAFile, "--scrape.tls.cert=" + scrapeCertFile, "--scrape.tls.key=" + scrapeKeyFile}, target: ownCATarget, certs: ownCATargetCerts, wantCert: "scrape-client"},
		{name: "skip verification only for targets", args: []string{"--scrape.tls.insecure-skip-verify"}, target: ownCATarget, certs: ownCATargetCerts},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A proxy of its own: a poll of the previous subtest's client,
			// which the fake proxy may not have seen end yet, must not take
			// this scrape.
			fp := startSecFakeProxyOfCA(t, proxyCA)
			cfg := secParse(t, append([]string{"--fqdn=127.0.0.1", "--proxy-url=" + fp.url.String(),
				"--tls.cacert=" + fp.caFile, "--tls.cert=" + proxyCertFile, "--tls.key=" + proxyKeyFile}, tc.args...)...)
			startClient(t, cfg)
			id := fp.scrape(t, "http://127.0.0.1:"+port(t, tc.target)+"/metrics?_scheme=https")
			push := fp.nextPush(t, id)
			if tc.wantErr != "" {
				if push.status != http.StatusInternalServerError || !strings.Contains(push.body, tc.wantErr) {
					t.Errorf("pushed %d %q, want 500 with %q", push.status, push.body, tc.wantErr)
				}
				return
			}
			if push.status != http.StatusOK {
				t.Fatalf("pushed %d %q", push.status, push.body)
			}
			cert := <-tc.certs
			switch {
			case tc.wantCert == "" && cert != nil:
				t.Errorf("target was shown certificate %q, want none", cert.Subject.CommonName)
			case tc.wantCert != "" && (cert == nil || cert.Subject.CommonName != tc.wantCert):
				t.Errorf("target was shown %v, want certificate %q", cert, tc.wantCert)
			}
		})
	}
}

func TestProxyCredentials(t *testing.T) {
	dir := t.TempDir()
	passwordFile := testpki.WriteFile(t, dir, "password", []byte("first-secret\n"))
	basic := func(user, password string) string {
		req := &http.Request{Header: http.Header{}}
		req.SetBasicAuth(user, password)
		return req.Header.Get("Authorization")
	}
	for _, tc := range []struct {
		name   string
		args   func(proxyURL url.URL) []string
		want   string
		rotate string // new content of the password file, then want it used
	}{
		{name: "none", args: func(u url.URL) []string { return []string{"--proxy-url=" + u.String()} }},
		{name: "in the proxy URL", want: basic("bob", "url-secret"), args: func(u url.URL) []string {
			u.User = url.UserPassword("bob", "url-secret")
			return []string{"--proxy-url=" + u.String()}
		}},
		{name: "password file, read on each request", want: basic("alice", "first-secret"), rotate: "second-secret", args: func(u url.URL) []string {
			return []string{"--proxy-url=" + u.String(), "--proxy.username=alice", "--proxy.password-file=" + passwordFile}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fp := startSecFakeProxy(t)
			cfg := secParse(t, append([]string{"--fqdn=127.0.0.1", "--tls.cacert=" + fp.caFile}, tc.args(*fp.url)...)...)
			startClient(t, cfg)
			target := startTarget(t, false, func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "up 1\n") })
			got := fp.nextSeen(t)
			if got.path == "/tunnel" {
				// The tunnel request the proxy refused carries them too.
				if got.authorization != tc.want {
					t.Errorf("tunnel request carried Authorization %q, want %q", got.authorization, tc.want)
				}
				got = fp.nextSeen(t)
			}
			if got.path != "/poll" || got.authorization != tc.want {
				t.Errorf("poll to %s carried Authorization %q, want %q", got.path, got.authorization, tc.want)
			}
			want := tc.want
			if tc.rotate != "" {
				testpki.WriteFile(t, dir, "password", []byte(tc.rotate+"\n"))
				want = basic("alice", tc.rotate)
			}
			id := fp.scrape(t, target.URL+"/metrics")
			// The client polls again while it scrapes; every request until
			// the push must carry the current password.
			for {
				got := fp.nextSeen(t)
				if got.authorization != want {
					t.Errorf("%s carried Authorization %q, want %q", got.path, got.authorization, want)
				}
				if got.path == "/push" {
					break
				}
			}
			fp.nextPush(t, id)
		})
	}
}

func TestClientCertificateRotationNeedsNoRestart(t *testing.T) {
	fp := startSecFakeProxy(t)
	dir := t.TempDir()
	first := fp.ca.Client(t, "node1")
	certFile, keyFile := first.WriteFiles(t, dir, "client")
	cfg := secParse(t, "--fqdn=127.0.0.1", "--proxy-url="+fp.url.String(),
		"--tls.cacert="+fp.caFile, "--tls.cert="+certFile, "--tls.key="+keyFile)
	startClient(t, cfg)

	if got := fp.nextSeen(t).clientCert; got == nil || got.SerialNumber.Cmp(first.Cert.SerialNumber) != 0 {
		t.Fatalf("first poll presented %v, want the first certificate", got)
	}
	renewed := fp.ca.Client(t, "node1")
	renewed.WriteFiles(t, dir, "client")
	// An empty answer that closes the connection makes the next poll
	// handshake again.
	fp.answers <- secAnswer{status: http.StatusNoContent, close: true}
	if got := fp.nextSeen(t).clientCert; got == nil || got.SerialNumber.Cmp(renewed.Cert.SerialNumber) != 0 {
		t.Errorf("poll after renewal presented %v, want the renewed certificate", got)
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
	fp := startSecFakeProxy(t)
	allowed, allowedSeen := recordingTarget(t, false, http.StatusOK, "up 1\n")
	other, otherSeen := recordingTarget(t, false, http.StatusOK, "secret 1\n")
	allowedPort, otherPort := port(t, allowed), port(t, other)
	cfg := secParse(t, "--fqdn=127.0.0.1", "--proxy-url="+fp.url.String(), "--tls.cacert="+fp.caFile,
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
			id := fp.scrape(t, tc.target)
			push := fp.nextPush(t, id)
			if push.status != tc.status || !strings.Contains(push.body, tc.want) {
				t.Errorf("pushed %d %q, want %d with %q", push.status, push.body, tc.status, tc.want)
			}
		})
	}
	received(t, allowedSeen)
	neverContacted(t, allowedSeen)
	neverContacted(t, otherSeen)
}

func TestSecurityFlags(t *testing.T) {
	dir := t.TempDir()
	passwordFile := testpki.WriteFile(t, dir, "password", []byte("secret\n"))
	base := []string{"--fqdn=node.example", "--proxy-url=https://proxy.example:8080"}
	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{name: "password file without user", args: append(base, "--proxy.password-file="+passwordFile), want: "--proxy.username and --proxy.password-file must be given together"},
			{name: "user without password file", args: append(base, "--proxy.username=alice"), want: "--proxy.username and --proxy.password-file must be given together"},
			{name: "credentials twice", args: []string{"--fqdn=node.example", "--proxy-url=https://bob:pw@proxy.example", "--proxy.username=alice", "--proxy.password-file=" + passwordFile}, want: "give them once"},
			{name: "missing password file", args: append(base, "--proxy.username=alice", "--proxy.password-file=/nonexistent/pw"), want: "/nonexistent/pw"},
			{name: "scrape certificate without key", args: append(base, "--scrape.tls.cert="+passwordFile), want: "--scrape.tls.cert and --scrape.tls.key must be given together"},
			{name: "allow rule without path", args: append(base, "--scrape.allow=*:9100"), want: "--scrape.allow"},
			{name: "allow rule without port", args: append(base, "--scrape.allow=node/metrics"), want: "--scrape.allow"},
			{name: "allow rule with bad glob", args: append(base, "--scrape.allow=*:9100/[metrics"), want: "bad pattern"},
			{name: "web config not a bcrypt hash", args: append(base, "--web.config.file="+testpki.WriteFile(t, dir, "web.yml", []byte("basic_auth_users:\n  a: plain\n"))), want: "--web.config.file"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var buf bytes.Buffer
				if code := run(tc.args, &buf); code != 2 {
					t.Fatalf("run(%q) = %d, want 2: %s", tc.args, code, buf.String())
				}
				out := strings.TrimSuffix(buf.String(), "\n")
				if strings.Contains(out, "\n") || !strings.Contains(out, tc.want) {
					t.Errorf("run(%q) wrote %q, want one line with %q", tc.args, buf.String(), tc.want)
				}
			})
		}
	})
	t.Run("any scrape TLS flag separates target TLS", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want bool
		}{
			{args: nil, want: false},
			{args: []string{"--tls.cacert=" + passwordFile}, want: false},
			{args: []string{"--scrape.tls.cacert=" + passwordFile}, want: true},
			{args: []string{"--no-scrape.tls.insecure-skip-verify"}, want: true},
		} {
			if got := secParse(t, append(base, tc.args...)...).security.separateScrapeTLS(); got != tc.want {
				t.Errorf("%q: separate = %v, want %v", tc.args, got, tc.want)
			}
		}
	})
}

func TestMetricsListenerTakesWebConfig(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "metrics CA")
	certFile, keyFile := ca.Server(t).WriteFiles(t, dir, "server")
	hash, err := bcrypt.GenerateFromPassword([]byte("metrics-secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webConfig := testpki.WriteFile(t, dir, "web.yml", []byte(fmt.Sprintf(
		"tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  prometheus: %s\n", certFile, keyFile, hash)))

	var logs secLogBuffer
	logger := log.NewLogfmtLogger(&logs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "metrics\n") })}
	served := make(chan error, 1)
	go func() { served <- serveMetrics(srv, ln, webConfig, logger) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served
	})

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	defer client.CloseIdleConnections()
	for _, tc := range []struct {
		name     string
		user     string
		password string
		want     int
	}{
		{name: "no credentials", want: http.StatusUnauthorized},
		{name: "wrong password", user: "prometheus", password: "nope", want: http.StatusUnauthorized},
		{name: "right password", user: "prometheus", password: "metrics-secret", want: http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, "https://"+ln.Addr().String()+"/metrics", nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.user != "" {
				req.SetBasicAuth(tc.user, tc.password)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	// The toolkit's log lines go through the client's go-kit logger.
	if !strings.Contains(logs.String(), `level=info msg="TLS is enabled." http2=true address=`+ln.Addr().String()) {
		t.Errorf("toolkit log lines not in the client's format:\n%s", logs.String())
	}
}

// secLogBuffer collects log output written from other goroutines.
type secLogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *secLogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *secLogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestSlogRecordsReachTheGoKitLogger(t *testing.T) {
	for _, tc := range []struct {
		name string
		log  func(*slog.Logger)
		want string
	}{
		{name: "levels map", log: func(l *slog.Logger) { l.Warn("careful", "err", "boom") }, want: "level=warn msg=careful err=boom\n"},
		{name: "filtered by the go-kit level", log: func(l *slog.Logger) { l.Debug("noise") }, want: ""},
		{name: "attributes and groups flatten", log: func(l *slog.Logger) {
			l.With("a", 1).WithGroup("g").Info("m", "b", 2, slog.Group("h", "c", 3))
		}, want: "level=info msg=m a=1 g.b=2 g.h.c=3\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			logger := level.NewFilter(log.NewLogfmtLogger(&out), level.AllowInfo())
			tc.log(slog.New(&slogHandler{logger: logger}))
			if out.String() != tc.want {
				t.Errorf("logged %q, want %q", out.String(), tc.want)
			}
		})
	}
}
