package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/rancher/pushprox/util"
)

// The target rules, in one place. A proxy may ask the client for a URL, and
// a target may redirect it to another; both are made only when permit
// allows the URL. A URL is named as the proxy names it, with the client's
// FQDN as host; under --use-localhost the client then connects to
// 127.0.0.1 instead.

// maxRedirects bounds the redirects followed for one scrape, as net/http's
// default policy does.
const maxRedirects = 10

// localhost is where --use-localhost scrapes.
const localhost = "127.0.0.1"

// permit says why the client must not fetch u, if it must not: u must be an
// http or https URL (https only with --token-path) of the client's own
// FQDN or of a target of its targets file, on the --allow-port, matching
// --scrape.allow.
func (c *client) permit(u *url.URL) error {
	switch {
	case u.Scheme != "http" && u.Scheme != "https", c.cfg.tokenPath != "" && u.Scheme != "https":
		return fmt.Errorf("scheme %q", u.Scheme)
	}
	port := portOr(u.Port(), u.Scheme)
	if !c.answersFor(u.Hostname(), port) {
		return c.errNotATarget(u.Hostname(), port)
	}
	if c.cfg.allowPort != "*" && port != c.cfg.allowPort {
		return fmt.Errorf("port %s is not allowed, only %s", port, c.cfg.allowPort)
	}
	return c.cfg.security.scrapeAllow.match(u.Hostname(), port, u.Path)
}

// targetRequest turns a scrape request with the given timeout into the
// request to the target, or says why it is refused.
func (c *client) targetRequest(ctx context.Context, req *http.Request, timeout time.Duration) (*http.Request, error) {
	// A scrape only reads: a proxy must not make the client change
	// anything on a target.
	if req.Method != http.MethodGet {
		return nil, fmt.Errorf("scrape refused: method %s is not GET", req.Method)
	}
	u := *req.URL
	scheme := "http"
	if query := u.Query(); query.Has("_scheme") {
		scheme = query.Get("_scheme")
		query.Del("_scheme")
		u.RawQuery = query.Encode()
		if scheme != "http" && scheme != "https" {
			return nil, fmt.Errorf("scrape refused: _scheme must be http or https, not %q", scheme)
		}
	}
	if c.cfg.tokenPath != "" {
		scheme = "https"
	}
	u.Scheme = scheme
	if err := c.permit(&u); err != nil {
		return nil, fmt.Errorf("scrape refused: %w", err)
	}
	port := portOr(u.Port(), scheme)
	host := u.Hostname()
	if c.cfg.useLocalhost && sameHost(host, c.cfg.fqdn) {
		host = localhost
	}
	u.Host = net.JoinHostPort(host, port)

	out := req.Clone(ctx)
	out.URL = &u
	// The Host header stays the one Prometheus sent, as in a direct scrape,
	// also when --use-localhost dials 127.0.0.1 (as the Rancher client
	// does); net/http sends the URL's host when it is empty.
	out.Host = req.Host
	out.RequestURI = ""
	// An empty body is none: net/http replays a body on 307 and 308
	// redirects only when it can get it again.
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, fmt.Errorf("reading scrape request body: %w", err)
	}
	out.Body, out.GetBody, out.ContentLength = nil, nil, int64(len(body))
	if len(body) > 0 {
		out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		out.Body, _ = out.GetBody()
	}
	util.RemoveHopByHopHeaders(out.Header)
	out.Header.Del(util.HeaderID)
	// The target learns the time it is given, not Prometheus' timeout, so
	// that one that sizes its work from it finishes in time (SPEC §1.8).
	out.Header.Set(util.HeaderScrapeTimeoutSeconds, util.FormatSeconds(util.TargetTimeout(timeout)))
	if c.cfg.tokenPath != "" {
		token, err := os.ReadFile(c.cfg.tokenPath)
		if err != nil {
			return nil, fmt.Errorf("reading bearer token: %w", err)
		}
		out.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	}
	return out, nil
}

// checkRedirect lets the target client follow a redirect only to a URL the
// proxy could have asked for itself (permit), on the host the client
// connected to. Otherwise a target, or a proxy using a target's open
// redirect, could lead the client and its bearer token past its rules.
func (c *client) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", len(via))
	}
	u := *req.URL
	if !sameHost(u.Hostname(), via[0].URL.Hostname()) {
		return fmt.Errorf("redirect refused: host %q is not the target's, %q", u.Hostname(), via[0].URL.Hostname())
	}
	// The host is the one connected to: a target's, or 127.0.0.1 standing
	// for the FQDN under --use-localhost.
	host := u.Hostname()
	if c.cfg.useLocalhost && sameHost(host, localhost) {
		host = c.cfg.fqdn
	}
	u.Host = net.JoinHostPort(host, portOr(u.Port(), u.Scheme))
	if err := c.permit(&u); err != nil {
		return fmt.Errorf("redirect refused: %w", err)
	}
	return nil
}

// sameHost compares host names as DNS does: case-insensitively, ignoring a
// trailing dot.
func sameHost(a, b string) bool {
	return normalizeHost(a) == normalizeHost(b)
}

// portOr returns port, or the default port of scheme when port is empty.
func portOr(port, scheme string) string {
	if port != "" {
		return port
	}
	return map[string]string{"http": "80", "https": "443"}[scheme]
}
