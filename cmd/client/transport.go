package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/rancher/pushprox/util"
)

// Bounds of the HTTP transports, towards proxies and targets alike.
const (
	// dialTimeout and tlsHandshakeTimeout bound connecting: a peer that
	// does not answer is a failed poll or scrape, not a hung one.
	dialTimeout         = 10 * time.Second
	tlsHandshakeTimeout = 10 * time.Second
	// maxIdleConns and maxIdleConnsPerHost keep enough connections for
	// the concurrent pushes to a few proxies without re-dialling.
	maxIdleConns        = 100
	maxIdleConnsPerHost = 16
	// idleConnTimeout closes connections unused for longer than a poll
	// cycle, as Go's default transport does.
	idleConnTimeout = 90 * time.Second
	// ioBufferSize: pushes stream bodies in 32 KiB pieces; a larger buffer
	// sends each in one write instead of several.
	ioBufferSize = 64 << 10
	// expectContinueTimeout is net/http's default: a body is sent after it
	// if the peer says nothing to an Expect: 100-continue.
	expectContinueTimeout = time.Second
)

// newTransport returns a keep-alive transport whose connections notice a
// dead peer. With an address, every connection goes to it, whatever host
// a request names; the URL's host still names the peer in requests and
// TLS, so certificates are checked against the name. Compression is left
// to Prometheus and the target: bodies pass through as they are.
func newTransport(tlsConfig *tls.Config, address string) *http.Transport {
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAliveConfig: util.KeepAlive}
	dial := dialer.DialContext
	if address != "" {
		dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, address)
		}
	}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           dial,
		TLSClientConfig:       tlsConfig,
		TLSHandshakeTimeout:   tlsHandshakeTimeout,
		DisableCompression:    true,
		MaxIdleConns:          maxIdleConns,
		MaxIdleConnsPerHost:   maxIdleConnsPerHost,
		IdleConnTimeout:       idleConnTimeout,
		ExpectContinueTimeout: expectContinueTimeout,
		WriteBufferSize:       ioBufferSize,
		ReadBufferSize:        ioBufferSize,
	}
}

// newProxyClient is the one factory of HTTP clients towards the proxies:
// connections of their own, all to address when it is not empty
// (--proxy.resolve-all), the proxy credentials added to each request, and
// no redirects followed.
func (c *client) newProxyClient(address string) *http.Client {
	var rt http.RoundTripper = newTransport(c.proxyTLS, address)
	if s := c.cfg.security; s.proxyUsername != "" {
		rt = &basicAuthTransport{next: rt, username: s.proxyUsername, passwordFile: s.proxyPasswordFile}
	}
	return &http.Client{Transport: rt, CheckRedirect: noRedirects}
}

// noRedirects makes a redirected poll or push a failed one: following it
// would send the proxy credentials to whatever host it names.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// newTLSConfigs returns the TLS settings towards the proxies and towards
// the targets, each from its own flags.
func newTLSConfigs(cfg config, logger log.Logger) (toProxy, toTarget *tls.Config, err error) {
	for _, u := range cfg.proxyURLs {
		if u.Scheme == "http" && (u.User != nil || cfg.security.proxyUsername != "") {
			level.Warn(logger).Log("msg", "proxy credentials cross the network in clear text: use an https proxy URL", "proxy", u.Redacted())
		}
	}
	toProxy, err = newTLSConfig(cfg.caFile, cfg.certFile, cfg.keyFile, cfg.insecureSkipVerify)
	if err != nil {
		return nil, nil, err
	}
	s := cfg.security
	if !s.separateScrapeTLS() {
		return toProxy, toProxy.Clone(), nil
	}
	toTarget, err = newTLSConfig(s.scrapeCAFile, s.scrapeCertFile, s.scrapeKeyFile, s.scrapeInsecureSkipVerify)
	if err != nil {
		return nil, nil, fmt.Errorf("--scrape.tls.*: %w", err)
	}
	return toProxy, toTarget, nil
}

// newTLSConfig builds the TLS settings from the --tls.* flags.
func newTLSConfig(caFile, certFile, keyFile string, insecureSkipVerify bool) (*tls.Config, error) {
	cfg := &tls.Config{InsecureSkipVerify: insecureSkipVerify}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no PEM certificate in CA file %s", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("--tls.cert and --tls.key must be given together")
	}
	if certFile != "" {
		// Loaded on each handshake, so that renewed certificates are used
		// without a restart.
		if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
			return nil, fmt.Errorf("loading client certificate: %w", err)
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, err
			}
			return &cert, nil
		}
	}
	return cfg, nil
}

// basicAuthTransport authenticates each request to the proxy with the
// --proxy.username and the password in --proxy.password-file. Credentials
// in a --proxy-url need no transport: net/http sends them itself.
type basicAuthTransport struct {
	next         http.RoundTripper
	username     string
	passwordFile string
}

// RoundTrip implements http.RoundTripper.
func (t *basicAuthTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	// The file is read each time, so that a rotated password is used at
	// once; it is small and requests are few.
	password, err := os.ReadFile(t.passwordFile)
	if err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("reading --proxy.password-file: %w", err)
	}
	req = req.Clone(req.Context())
	req.SetBasicAuth(t.username, strings.TrimSpace(string(password)))
	return t.next.RoundTrip(req)
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the
// wrapped transport.
func (t *basicAuthTransport) CloseIdleConnections() {
	if closer, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		closer.CloseIdleConnections()
	}
}
