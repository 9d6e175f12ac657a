package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/hashicorp/yamux"

	"github.com/rancher/pushprox/util"
)

// Values of --proxy.transport.
const (
	transportAuto   = "auto"
	transportTunnel = "tunnel"
	transportPoll   = "poll"
)

const (
	// tunnelHandshakeTimeout bounds the tunnel request: a load balancer
	// that holds an upgrade it will not pass must not keep the client
	// from polling.
	tunnelHandshakeTimeout = 10 * time.Second
	// tunnelRetryInterval is how long a client in auto mode polls a proxy
	// that refused a tunnel before it asks again, so that a proxy upgraded
	// in place gets tunnels without restarting its clients.
	tunnelRetryInterval = 5 * time.Minute
	// minTunnelLife is how long a tunnel must have lasted for its end to
	// count as a cut to recover from at once rather than a failure to back
	// off from.
	minTunnelLife = 10 * time.Second
	// maxStreamRequest bounds the time to read a scrape request from a
	// stream; the proxy writes it whole as it opens the stream.
	maxStreamRequest = 10 * time.Second
	// answerBufferSize lets a small answer's head and body leave in one
	// tunnel frame.
	answerBufferSize = 32 << 10
)

// errTunnelRefused says that a proxy answered a tunnel request with
// anything but the tunnel handshake: it, or something in between, does
// not offer tunnels.
var errTunnelRefused = errors.New("proxy does not offer a tunnel")

// serveUpstream serves one proxy on the configured transport until ctx
// ends: a tunnel, reconnected at once when cut; polls instead while the
// proxy refuses tunnels in auto mode.
func (c *client) serveUpstream(ctx context.Context, up *upstream) {
	if c.cfg.transport == transportPoll {
		c.pollLoop(ctx, up)
		return
	}
	logger := log.With(c.logger, "proxy", up.String())
	retry := newBackoff(c.cfg.retryInitialWait, c.cfg.retryMaxWait)
	for ctx.Err() == nil {
		start := time.Now()
		err := c.runTunnel(ctx, up, logger)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errTunnelRefused) && c.cfg.transport == transportAuto {
			level.Info(logger).Log("msg", "proxy offers no tunnel, polling instead", "retry_tunnel_in", tunnelRetryInterval, "err", err)
			pollCtx, cancel := context.WithTimeout(ctx, tunnelRetryInterval)
			c.pollLoop(pollCtx, up)
			cancel()
			continue
		}
		if time.Since(start) >= minTunnelLife {
			// A tunnel that served a while and was cut is replaced at once.
			retry.Reset()
			level.Info(logger).Log("msg", "tunnel ended, reconnecting", "err", err)
			continue
		}
		c.metrics.pollErrors.Inc()
		wait := retry.NextBackOff()
		level.Warn(logger).Log("msg", "tunnel failed, retrying", "wait", wait, "err", err)
		if !sleep(ctx, wait) {
			return
		}
	}
}

// runTunnel opens a tunnel to a proxy and serves the scrapes it carries
// until it ends. When ctx ends, the proxy is told to open no more streams
// and the scrapes on the tunnel finish first.
func (c *client) runTunnel(ctx context.Context, up *upstream, logger log.Logger) error {
	tunnelURL := util.ResolveProxyPath(up.url, util.TunnelPath)
	req, accept, err := util.NewTunnelRequest(tunnelURL.String(), c.cfg.fqdn, c.labels, c.cfg.maxConcurrentScrapes)
	if err != nil {
		return err
	}
	// The request's context lives as long as the tunnel: it owns the
	// connection once upgraded.
	connCtx, closeConn := context.WithCancel(context.WithoutCancel(ctx))
	defer closeConn()
	handshake := time.AfterFunc(tunnelHandshakeTimeout, closeConn)
	resp, err := up.http.Do(req.WithContext(connCtx))
	if !handshake.Stop() {
		if err == nil {
			resp.Body.Close()
		}
		return fmt.Errorf("%w: no answer to the tunnel request within %s", errTunnelRefused, tunnelHandshakeTimeout)
	}
	if err != nil {
		return err
	}
	if !util.TunnelAccepted(resp, accept) {
		reason, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return fmt.Errorf("%w: answered %s: %s", errTunnelRefused, resp.Status, firstLine(reason))
	}
	conn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return fmt.Errorf("%w: the upgraded connection cannot be written", errTunnelRefused)
	}
	session, err := yamux.Server(conn, util.TunnelConfig(c.cfg.tunnelPingInterval))
	if err != nil {
		conn.Close()
		return err
	}
	defer session.Close()
	level.Info(logger).Log("msg", "tunnel open")
	c.connected.Add(1)
	defer c.connected.Add(-1)

	var streams sync.WaitGroup
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			// No new streams; those running finish, then the tunnel ends.
			_ = session.GoAway()
			streams.Wait()
			session.Close()
		case <-stopped:
		}
	}()
	for {
		stream, err := session.AcceptStream()
		if err != nil {
			if session.IsClosed() {
				err = fmt.Errorf("tunnel closed: %w", err)
			}
			streams.Wait()
			return err
		}
		select {
		case c.slots <- struct{}{}:
		case <-ctx.Done():
			stream.Close()
			continue
		}
		streams.Add(1)
		c.scrapes.Add(1)
		go func() {
			defer c.scrapes.Done()
			defer streams.Done()
			defer func() { <-c.slots }()
			c.serveStream(context.WithoutCancel(ctx), stream)
		}()
	}
}

// serveStream answers the scrape request a stream carries, on the stream.
func (c *client) serveStream(ctx context.Context, stream *yamux.Stream) {
	defer stream.Close()
	_ = stream.SetReadDeadline(time.Now().Add(maxStreamRequest))
	reader := bufio.NewReaderSize(stream, 4<<10)
	req, err := util.DecodeStreamRequest(reader)
	if err != nil {
		c.metrics.scrapeErrors.Inc()
		level.Warn(c.logger).Log("msg", "bad scrape request on tunnel", "err", err)
		return
	}
	if req.Method == http.MethodConnect {
		c.serveConnect(ctx, stream, reader, req)
		return
	}
	id := req.Header.Get(util.HeaderID)
	logger := log.With(c.logger, "scrape_id", id, "url", req.URL.Redacted())
	timeout, err := util.HeaderTimeout(req.Header, util.HeaderScrapeTimeoutSeconds)
	if err != nil {
		c.writeError(stream, id, time.Now().Add(refuseTimeout), logger, err)
		return
	}
	deadline := time.Now().Add(timeout)
	_ = stream.SetDeadline(deadline)
	scrapeCtx, cancel := context.WithTimeout(ctx, util.TargetTimeout(timeout))
	defer cancel()
	resp, err := c.scrapeTarget(scrapeCtx, req)
	if err != nil {
		c.writeError(stream, id, deadline, logger, err)
		return
	}
	defer resp.Body.Close()
	if err := writeAnswer(stream, id, deadline, resp); err != nil {
		c.metrics.pushErrors.Inc()
		level.Warn(logger).Log("msg", "answering on tunnel failed", "err", err)
		return
	}
	level.Debug(logger).Log("msg", "scraped", "status", resp.StatusCode)
}

// writeError answers a scrape that failed with a 500 giving the reason.
func (c *client) writeError(w io.Writer, id string, deadline time.Time, logger log.Logger, reason error) {
	c.metrics.scrapeErrors.Inc()
	level.Warn(logger).Log("msg", "scrape failed", "err", reason)
	if err := writeAnswer(w, id, deadline, util.ErrorAnswer(reason)); err != nil {
		c.metrics.pushErrors.Inc()
		level.Warn(logger).Log("msg", "answering on tunnel failed", "err", err)
	}
}

// writeAnswer writes a target's answer to scrape id in the wire format:
// its head, with its length when known, then its body. Without a length,
// the body ends where the stream does.
func writeAnswer(w io.Writer, id string, deadline time.Time, resp *http.Response) error {
	length := resp.ContentLength
	if resp.Body == nil || resp.Body == http.NoBody {
		length = 0
	}
	header := util.AnswerHeader(resp.Header, id, time.Until(deadline), true, length)
	out := bufio.NewWriterSize(w, answerBufferSize)
	if _, err := out.Write(util.EncodeAnswerHead(resp.StatusCode, resp.Status, header)); err != nil {
		return err
	}
	if length != 0 {
		if _, err := out.ReadFrom(resp.Body); err != nil {
			return err
		}
	}
	return out.Flush()
}
