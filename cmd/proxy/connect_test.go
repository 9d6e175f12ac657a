package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rancher/pushprox/internal/testbin"
	"github.com/rancher/pushprox/internal/testpki"
)

// tlsTarget is an HTTPS exporter whose certificate only its own CA vouches
// for, counting the connections made to it.
type tlsTarget struct {
	*httptest.Server
	opened, closed atomic.Int64
}

func startTLSTarget(t *testing.T, clientCAs *x509.CertPool) *tlsTarget {
	t.Helper()
	target := &tlsTarget{}
	target.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who := "anonymous"
		if len(r.TLS.PeerCertificates) > 0 {
			who = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		io.WriteString(w, "secure_up{peer=\""+who+"\"} 1\n")
	}))
	target.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		switch state {
		case http.StateNew:
			target.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			target.closed.Add(1)
		}
	}
	if clientCAs != nil {
		target.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs}
	}
	target.StartTLS()
	t.Cleanup(target.Close)
	return target
}

// httpsScraper is Prometheus with scheme: https and the proxy as its
// proxy_url: it trusts the target's CA and presents cert, if any.
func httpsScraper(t *testing.T, proxyURL string, target *tlsTarget, cert *tls.Certificate) *http.Client {
	t.Helper()
	u, _ := url.Parse(proxyURL)
	cfg := &tls.Config{RootCAs: x509.NewCertPool()}
	cfg.RootCAs.AddCert(target.Certificate())
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	transport := &http.Transport{Proxy: http.ProxyURL(u), TLSClientConfig: cfg}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport, Timeout: 30 * time.Second}
}

func TestHTTPSTargetIsScrapedThroughATunnelWithTLSFromEndToEnd(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	ca := testpki.NewCA(t, "scraper CA")
	target := startTLSTarget(t, ca.Pool())
	tp.startTunnelClient(t, "127.0.0.1", tp.srv.URL, 1, "--proxy.transport=tunnel")
	cert := ca.Client(t, "prometheus").TLSCertificate(t)
	scraper := httpsScraper(t, tp.srv.URL, target, &cert)

	for i := range 3 {
		resp, err := scraper.Get(target.URL + "/metrics")
		if err != nil {
			t.Fatalf("scrape %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// The target saw the scraper's own certificate, and the scraper
		// the target's: neither the proxy nor the client took part in TLS.
		if resp.StatusCode != http.StatusOK || string(body) != "secure_up{peer=\"prometheus\"} 1\n" {
			t.Errorf("scrape %d: %s %q", i, resp.Status, body)
		}
		if !resp.TLS.PeerCertificates[0].Equal(target.Certificate()) {
			t.Errorf("scrape %d: TLS peer is not the target's certificate", i)
		}
	}
	if n := target.opened.Load(); n != 1 {
		t.Errorf("target saw %d connections, want 1 reused for every scrape", n)
	}
	if n := tp.gauge(t, "pushprox_proxy_connect_tunnels_open", ""); n != 1 {
		t.Errorf("CONNECT tunnels open = %v, want 1", n)
	}
}

func TestIdleConnectTunnelIsClosed(t *testing.T) {
	cfg := defaultConfig()
	cfg.connectIdleTimeout = 300 * time.Millisecond
	tp := startProxy(t, cfg)
	target := startTLSTarget(t, nil)
	tp.startTunnelClient(t, "127.0.0.1", tp.srv.URL, 1, "--proxy.transport=tunnel")
	resp, err := httpsScraper(t, tp.srv.URL, target, nil).Get(target.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	waitFor(t, "the idle tunnel to close at the target", func() bool { return target.closed.Load() == 1 })
}

func TestConnectRefusalsNameTheirCause(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	target := startTLSTarget(t, nil)
	_, targetPort, _ := net.SplitHostPort(target.Listener.Addr().String())
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()

	tp.startTunnelClient(t, "127.0.0.1", tp.srv.URL, 1, "--proxy.transport=tunnel", "--allow-port="+targetPort)
	pollClient := testbin.Start(t, clientBinary, clientArgs("127.0.0.2", tp.srv.URL, "--proxy.transport=poll")...)
	pollClient.WaitForOutput(clientPolling)
	tp.waitParked(t, 1)
	_, closedPort, _ := net.SplitHostPort(closedAddr)

	for _, tc := range []struct {
		name   string
		target string
		code   int
		reason string
	}{
		{"a host without client", "node9:443", http.StatusServiceUnavailable, `no client connected as "node9"`},
		{"a client on the poll transport", "127.0.0.2:443", http.StatusBadGateway, "_scheme=https"},
		{"a port the client does not allow", "127.0.0.1:" + closedPort, http.StatusForbidden, "port " + closedPort + " is not allowed"},
		{"a bad target", "no-port", http.StatusBadRequest, "want host:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, reason := rawConnect(t, tp.srv.Listener.Addr().String(), tc.target)
			if code != tc.code || !strings.Contains(reason, tc.reason) {
				t.Errorf("CONNECT %s: %d %q, want %d with %q", tc.target, code, reason, tc.code, tc.reason)
			}
		})
	}
	t.Run("a target the client cannot reach", func(t *testing.T) {
		tp.startTunnelClient(t, "127.0.0.3", tp.srv.URL, 2, "--proxy.transport=tunnel")
		code, reason := rawConnect(t, tp.srv.Listener.Addr().String(), "127.0.0.3:"+closedPort)
		if code != http.StatusBadGateway || !strings.Contains(reason, "connecting to target") {
			t.Errorf("got %d %q, want 502 with the dial error", code, reason)
		}
	})
}

// rawConnect sends a CONNECT for target and returns the status and reason.
func rawConnect(t *testing.T, proxyAddr, target string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	if _, err := io.WriteString(conn, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestAStoppingClientEndsAConnectTunnelKeptOpenAfterItsShutdownTimeout(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	target := startTLSTarget(t, nil)
	client := tp.startTunnelClient(t, "127.0.0.1", tp.srv.URL, 1, "--proxy.transport=tunnel", "--web.shutdown-timeout=300ms")
	// Prometheus keeps its connection to the target open between scrapes.
	conn, err := net.Dial("tcp", tp.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	addr := target.Listener.Addr().String()
	if _, err := io.WriteString(conn, "CONNECT "+addr+" HTTP/1.1\r\nHost: "+addr+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	client.Signal(syscall.SIGTERM)
	if code := client.Wait(); code != 0 {
		t.Errorf("client exited with %d, want 0", code)
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Error("the CONNECT tunnel is still open after the client stopped")
	}
}
