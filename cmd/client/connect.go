package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/rancher/pushprox/internal/mux"
	"github.com/rancher/pushprox/util"
)

// connectIdleTimeout closes a CONNECT tunnel that carries nothing either
// way for this long, on the client's side; the proxy has a flag of its own.
const connectIdleTimeout = 10 * time.Minute

// serveConnect serves a CONNECT carried by a tunnel stream: it checks the
// target against the client's rules as for a scrape, dials it, answers 200
// and then passes bytes untouched both ways, so that TLS runs from
// Prometheus to the target. A refusal or a failed dial is answered with
// its reason.
func (c *client) serveConnect(ctx, scrapeCtx context.Context, stream *mux.Stream, reader *bufio.Reader, req *http.Request) {
	id := req.Header.Get(util.HeaderID)
	logger := log.With(c.logger, "connect_id", id, "target", req.Host)
	dialTimeout, err := util.HeaderTimeout(req.Header, util.HeaderScrapeTimeoutSeconds)
	if err != nil {
		dialTimeout = maxStreamRequest
	}
	address, err := c.connectAddress(req.Host)
	if err != nil {
		level.Warn(logger).Log("msg", "connect refused", "err", err)
		writeConnectAnswer(stream, id, http.StatusForbidden, err.Error())
		return
	}
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAliveConfig: util.KeepAlive}
	conn, err := dialer.DialContext(scrapeCtx, "tcp", address)
	if err != nil {
		level.Warn(logger).Log("msg", "connect failed", "err", err)
		writeConnectAnswer(stream, id, http.StatusBadGateway, "connecting to target: "+util.OneLine(err).Error())
		return
	}
	defer conn.Close()
	if err := writeConnectAnswer(stream, id, http.StatusOK, ""); err != nil {
		return
	}
	_ = stream.SetDeadline(time.Time{})
	// A stopping client lets the connection go on for as long as it lets
	// scrapes finish, then ends it: a connection Prometheus keeps alive
	// would otherwise hold the stop for ever.
	cut := afterStopping(ctx, c.cfg.shutdownTimeout, func() {
		conn.Close()
		stream.Close()
	})
	defer cut()
	level.Debug(logger).Log("msg", "connect tunnel open", "address", address)
	toTarget, fromTarget := util.Splice(util.BufferedConn{SpliceConn: stream, Reader: reader}, conn, connectIdleTimeout, nil)
	level.Debug(logger).Log("msg", "connect tunnel closed", "bytes_to_target", toTarget, "bytes_from_target", fromTarget)
}

// connectAddress checks a CONNECT target (host:port) against the rules a
// scrape is checked against: this client's FQDN, --allow-port,
// --use-localhost and --scrape.allow (host and port only: a tunnel has no
// path). It returns the address to dial.
func (c *client) connectAddress(target string) (string, error) {
	host, port, err := net.SplitHostPort(target)
	if err != nil || port == "" {
		return "", fmt.Errorf("connect refused: target %q is not host:port", target)
	}
	if !c.answersFor(host, port) {
		return "", fmt.Errorf("connect refused: %w", c.errNotATarget(host, port))
	}
	if c.cfg.allowPort != "*" && port != c.cfg.allowPort {
		return "", fmt.Errorf("connect refused: port %s is not allowed, only %s", port, c.cfg.allowPort)
	}
	if err := c.cfg.security.scrapeAllow.checkAddress(host, port); err != nil {
		return "", err
	}
	if c.cfg.useLocalhost && sameHost(host, c.cfg.fqdn) {
		host = localhost
	}
	return net.JoinHostPort(host, port), nil
}

// checkAddress says why a CONNECT to host:port is refused by the allow
// list, if it is: only the host and port globs of each rule apply.
func (l allowList) checkAddress(host, port string) error {
	if len(l) == 0 {
		return nil
	}
	host = normalizeHost(host)
	for _, rule := range l {
		if matched(rule.host, host) && matched(rule.port, port) {
			return nil
		}
	}
	return errors.New("connect refused: target " + net.JoinHostPort(host, port) + " is not allowed by --scrape.allow")
}

func matched(pattern, name string) bool {
	ok, _ := path.Match(pattern, name)
	return ok
}

// writeConnectAnswer answers a CONNECT on its stream: 200 once connected,
// or an error status with the reason as its body.
func writeConnectAnswer(stream *mux.Stream, id string, code int, reason string) error {
	if reason != "" {
		reason += "\n"
	}
	header := http.Header{util.HeaderID: {id}}
	header.Set("Content-Length", fmt.Sprint(len(reason)))
	if reason != "" {
		header.Set("Content-Type", "text/plain; charset=utf-8")
	}
	status := http.StatusText(code)
	if code == http.StatusOK {
		status = "Connection established"
	}
	_, err := stream.Write(append(util.EncodeAnswerHead(code, fmt.Sprintf("%d %s", code, status), header), reason...))
	return err
}

// afterStopping calls end once wait has passed after ctx ended, unless the
// returned stop is called first.
func afterStopping(ctx context.Context, wait time.Duration, end func()) (stop func()) {
	var mu sync.Mutex
	var timer *time.Timer // guarded by mu
	stopped := false      // guarded by mu
	stopWatching := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			timer = time.AfterFunc(wait, end)
		}
	})
	return func() {
		stopWatching()
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		if timer != nil {
			timer.Stop()
		}
	}
}
