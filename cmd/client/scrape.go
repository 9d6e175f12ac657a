package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rancher/pushprox/util"
)

// doScrape serves one scrape request from the proxy up: it scrapes
// the target within the forwarded timeout and pushes the answer, or the
// reason it could not, back to the proxy.
func (c *client) doScrape(ctx context.Context, up *upstream, req *http.Request) {
	defer observeSince(c.metrics.scrapeDuration, time.Now())
	id := req.Header.Get(util.HeaderID)
	logger := log.With(c.logger, "scrape_id", id, "url", req.URL.Redacted())
	timeout, err := util.HeaderTimeout(req.Header, util.HeaderScrapeTimeoutSeconds)
	if err != nil {
		c.refuse(ctx, up, req, err)
		return
	}
	scrapeCtx, cancel := context.WithTimeout(ctx, util.TargetTimeout(timeout))
	defer cancel()
	start := time.Now()
	resp, err := c.scrapeTarget(scrapeCtx, req)
	if err != nil {
		// Not under scrapeCtx: when its deadline is what failed the scrape,
		// a push under it would fail too and the reason would be lost.
		c.refuse(ctx, up, req, err)
		return
	}
	defer resp.Body.Close()
	if err := c.push(scrapeCtx, up, id, resp); err != nil {
		c.metrics.pushErrors.Inc()
		level.Warn(logger).Log("msg", "push failed", "err", err)
		return
	}
	level.Debug(logger).Log("msg", "scraped", "status", resp.StatusCode, "duration", time.Since(start))
}

// observeSince records the time since start; deferred, it times the whole
// of a scrape, whichever way it ends.
func observeSince(o prometheus.Observer, start time.Time) {
	o.Observe(time.Since(start).Seconds())
}

// refuseTimeout bounds the push of a scrape error. Its callers' contexts
// have no deadline (the scrape's may be what failed), and a proxy that
// never answers must not hold a scrape slot, or the client's shutdown, for
// ever. A variable so that tests can shorten it.
var refuseTimeout = 10 * time.Second

// refuse pushes a 500 whose body is the reason a scrape failed, so that
// Prometheus sees it at once instead of waiting for its timeout.
func (c *client) refuse(ctx context.Context, up *upstream, req *http.Request, reason error) {
	ctx, cancel := context.WithTimeout(ctx, refuseTimeout)
	defer cancel()
	c.metrics.scrapeErrors.Inc()
	id := req.Header.Get(util.HeaderID)
	logger := log.With(c.logger, "scrape_id", id, "url", req.URL.Redacted())
	level.Warn(logger).Log("msg", "scrape failed", "err", reason)
	msg := reason.Error() + "\n"
	resp := &http.Response{
		StatusCode:    http.StatusInternalServerError,
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}},
		Body:          io.NopCloser(strings.NewReader(msg)),
		ContentLength: int64(len(msg)),
	}
	if err := c.push(ctx, up, id, resp); err != nil {
		c.metrics.pushErrors.Inc()
		level.Warn(logger).Log("msg", "push of scrape error failed", "err", err)
	}
}

// scrapeTarget checks a scrape request against the client's rules and makes
// it.
func (c *client) scrapeTarget(ctx context.Context, req *http.Request) (*http.Response, error) {
	out, err := c.targetRequest(ctx, req)
	if err != nil {
		return nil, err
	}
	resp, err := c.targetClient.Do(out)
	if err != nil {
		return nil, fmt.Errorf("scraping target: %w", err)
	}
	return resp, nil
}

// targetRequest turns a scrape request into the request to the target, or
// says why it is refused.
func (c *client) targetRequest(ctx context.Context, req *http.Request) (*http.Request, error) {
	// A scrape only reads: a proxy must not make the client change
	// anything on a target.
	if req.Method != http.MethodGet {
		return nil, fmt.Errorf("scrape refused: method %s is not GET", req.Method)
	}
	host := req.URL.Hostname()
	if !sameHost(host, c.cfg.fqdn) {
		return nil, fmt.Errorf("scrape refused: target host %q is not this client's FQDN %q", host, c.cfg.fqdn)
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
	port := portOr(u.Port(), scheme)
	if c.cfg.allowPort != "*" && port != c.cfg.allowPort {
		return nil, fmt.Errorf("scrape refused: port %s is not allowed, only %s", port, c.cfg.allowPort)
	}
	if c.cfg.useLocalhost {
		host = "127.0.0.1"
	}
	u.Scheme = scheme
	u.Host = net.JoinHostPort(host, port)
	if err := c.cfg.security.scrapeAllow.check(host, port, u.Path); err != nil {
		return nil, err
	}

	out := req.Clone(ctx)
	out.URL = &u
	out.Host = ""
	out.RequestURI = ""
	util.RemoveHopByHopHeaders(out.Header)
	out.Header.Del(util.HeaderID)
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
// proxy could have asked for itself (the same host, --allow-port,
// --scrape.allow) and, with --token-path, only over HTTPS. Otherwise a
// target, or a proxy using a target's open redirect, could lead the client
// and its bearer token past those rules.
func (c config) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return fmt.Errorf("stopped after %d redirects", len(via))
	}
	u := req.URL
	port := portOr(u.Port(), u.Scheme)
	switch {
	case u.Scheme != "http" && u.Scheme != "https", c.tokenPath != "" && u.Scheme != "https":
		return fmt.Errorf("redirect refused: scheme %q", u.Scheme)
	case !sameHost(u.Hostname(), via[0].URL.Hostname()):
		return fmt.Errorf("redirect refused: host %q is not the target's, %q", u.Hostname(), via[0].URL.Hostname())
	case c.allowPort != "*" && port != c.allowPort:
		return fmt.Errorf("redirect refused: port %s is not allowed, only %s", port, c.allowPort)
	}
	return c.security.scrapeAllow.check(u.Hostname(), port, u.Path)
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

// push sends a target's answer to the proxy as the body of a /push: its
// status and headers, tagged with the scrape's Id and the seconds left of
// its timeout, then its body, streamed as it arrives. When the target gave
// a length, so does the push; otherwise the push is chunked and the answer's
// body ends with it.
func (c *client) push(ctx context.Context, up *upstream, id string, resp *http.Response) error {
	header := resp.Header.Clone()
	util.RemoveHopByHopHeaders(header)
	header.Set(util.HeaderID, id)
	if deadline, ok := ctx.Deadline(); ok {
		header.Set(util.HeaderScrapeTimeout, util.FormatSeconds(max(time.Until(deadline), 0)))
	}
	length := resp.ContentLength
	if resp.Body == nil || resp.Body == http.NoBody {
		length = 0
	}
	// Without a length, the answer's body ends with the push body, as
	// HTTP/1.1 allows; no Connection header is needed for that, and one
	// would reach Prometheus through proxies that copy headers as they are.
	header.Del("Content-Length")
	if length >= 0 {
		header.Set("Content-Length", strconv.FormatInt(length, 10))
	}
	head := responseHead(resp, header)
	var body io.Reader = bytes.NewReader(head)
	if length != 0 {
		body = io.MultiReader(body, resp.Body)
	}
	pushURL := util.ResolveProxyPath(up.url, util.PushPath)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, pushURL.String(), body)
	if err != nil {
		return err
	}
	req.ContentLength = -1
	if length >= 0 {
		req.ContentLength = int64(len(head)) + length
	}
	res, err := up.http.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	reason, _ := io.ReadAll(io.LimitReader(res.Body, 512))
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("push answered %s: %s", res.Status, firstLine(reason))
	}
	return nil
}

// responseHead serializes the status line of resp and header as HTTP/1.1.
func responseHead(resp *http.Response, header http.Header) []byte {
	text := strings.TrimPrefix(resp.Status, strconv.Itoa(resp.StatusCode)+" ")
	if text == "" {
		text = http.StatusText(resp.StatusCode)
	}
	var head bytes.Buffer
	fmt.Fprintf(&head, "HTTP/1.1 %03d %s\r\n", resp.StatusCode, text)
	_ = header.Write(&head)
	head.WriteString("\r\n")
	return head.Bytes()
}
