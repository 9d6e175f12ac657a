package main

import (
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
	"testing"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/rancher/pushprox/internal/testpki"
	"golang.org/x/crypto/bcrypt"
)

// tlsTarget is an HTTPS target with a certificate of ca that asks for
// client certificates and reports the one it got.
func tlsTarget(t *testing.T, ca *testpki.CA) (*httptest.Server, chan *x509.Certificate) {
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
	proxyCATarget, proxyCATargetCerts := tlsTarget(t, proxyCA)
	ownCATarget, ownCATargetCerts := tlsTarget(t, targetCA)

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
			fp := startTLSFakeProxy(t, proxyCA)
			cfg := parseTestFlags(t, append([]string{"--fqdn=127.0.0.1", "--proxy-url=" + fp.url(t).String(),
				"--tls.cacert=" + fp.caFile, "--tls.cert=" + proxyCertFile, "--tls.key=" + proxyKeyFile}, tc.args...)...)
			startClient(t, cfg)
			id := fp.queueScrape(t, "http://127.0.0.1:"+port(t, tc.target)+"/metrics?_scheme=https", nil)
			push := fp.pushOf(t, id)
			if tc.wantErr != "" {
				if push.status != http.StatusInternalServerError || !strings.Contains(string(push.body), tc.wantErr) {
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
			fp := startTLSFakeProxy(t, nil)
			cfg := parseTestFlags(t, append([]string{"--fqdn=127.0.0.1", "--tls.cacert=" + fp.caFile}, tc.args(*fp.url(t))...)...)
			startClient(t, cfg)
			target := startTarget(t, false, func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "up 1\n") })
			if got := fp.nextRequest(t); got.path != "/poll" || got.authorization != tc.want {
				t.Errorf("poll to %s carried Authorization %q, want %q", got.path, got.authorization, tc.want)
			}
			want := tc.want
			if tc.rotate != "" {
				testpki.WriteFile(t, dir, "password", []byte(tc.rotate+"\n"))
				want = basic("alice", tc.rotate)
			}
			id := fp.queueScrape(t, target.URL+"/metrics", nil)
			// The client polls again while it scrapes; every request until
			// the push must carry the current password.
			for {
				got := fp.nextRequest(t)
				if got.authorization != want {
					t.Errorf("%s carried Authorization %q, want %q", got.path, got.authorization, want)
				}
				if got.path == "/push" {
					break
				}
			}
			fp.pushOf(t, id)
		})
	}
}

func TestClientCertificateRotationNeedsNoRestart(t *testing.T) {
	fp := startTLSFakeProxy(t, nil)
	dir := t.TempDir()
	first := fp.ca.Client(t, "node1")
	certFile, keyFile := first.WriteFiles(t, dir, "client")
	cfg := parseTestFlags(t, "--fqdn=127.0.0.1", "--proxy-url="+fp.url(t).String(),
		"--tls.cacert="+fp.caFile, "--tls.cert="+certFile, "--tls.key="+keyFile)
	startClient(t, cfg)

	if got := fp.nextRequest(t).clientCert; got == nil || got.SerialNumber.Cmp(first.Cert.SerialNumber) != 0 {
		t.Fatalf("first poll presented %v, want the first certificate", got)
	}
	renewed := fp.ca.Client(t, "node1")
	renewed.WriteFiles(t, dir, "client")
	// An empty answer that closes the connection makes the next poll
	// handshake again.
	fp.answer(http.StatusNoContent, http.Header{"Connection": {"close"}}, "")
	if got := fp.nextRequest(t).clientCert; got == nil || got.SerialNumber.Cmp(renewed.Cert.SerialNumber) != 0 {
		t.Errorf("poll after renewal presented %v, want the renewed certificate", got)
	}
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
			if got := parseTestFlags(t, append(base, tc.args...)...).security.separateScrapeTLS(); got != tc.want {
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

	var logs syncBuffer
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
			tc.log(slogLogger(logger))
			if out.String() != tc.want {
				t.Errorf("logged %q, want %q", out.String(), tc.want)
			}
		})
	}
}
