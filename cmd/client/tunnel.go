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

	"github.com/rancher/pushprox/internal/mux"
	"github.com/rancher/pushprox/util"
)

// transportAuto, as --proxy.transport, uses a tunnel where the proxy
// offers one and polls otherwise; transportTunnel and transportPoll name
// the two transports.
const transportAuto = "auto"

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
	answerBufferSize = 128 << 10
)

// errTunnelRefused says that a proxy answered a tunnel request with
// anything but the tunnel handshake: it, or something in between, does
// not offer tunnels.
var errTunnelRefused = errors.New("proxy does not offer a tunnel")

// serveUpstream serves one proxy on the configured transport until ctx
// ends: a tunnel, reconnected at once when cut; polls instead while the
// proxy refuses tunnels in auto mode.
func (c *client) serveUpstream(ctx, scrapeCtx context.Context, up *upstream) {
	if c.cfg.transport == transportPoll {
		c.metrics.setTransport(transportPoll)
		c.pollAll(ctx, scrapeCtx, up)
		return
	}
	logger := log.With(c.logger, "proxy", up.String())
	retry := newBackoff(c.cfg.retryInitialWait, c.cfg.retryMaxWait)
	for ctx.Err() == nil {
		start := time.Now()
		err := c.runTunnel(ctx, scrapeCtx, up, logger)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errTunnelRefused) && c.cfg.transport == transportAuto {
			level.Info(logger).Log("msg", "proxy offers no tunnel, polling instead", "retry_tunnel_in", tunnelRetryInterval, "err", err)
			c.metrics.setTransport(transportPoll)
			pollCtx, cancel := context.WithTimeout(ctx, tunnelRetryInterval)
			c.pollAll(pollCtx, scrapeCtx, up)
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
		if !util.Sleep(ctx, wait) {
			return
		}
	}
}

// runTunnel opens a tunnel to a proxy and serves the scrapes it carries
// until it ends. When ctx ends, the proxy is told to open no more streams
// and the scrapes on the tunnel finish first.
func (c *client) runTunnel(ctx, scrapeCtx context.Context, up *upstream, logger log.Logger) error {
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
	accepted, reuse := util.TunnelAccepted(resp, accept)
	if !accepted {
		reason, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			// A proxy that offers tunnels and is busy registering: asked
			// again after the backoff, not polled for minutes.
			return fmt.Errorf("tunnel request answered %s: %s", resp.Status, firstLine(reason))
		}
		return fmt.Errorf("%w: answered %s: %s", errTunnelRefused, resp.Status, firstLine(reason))
	}
	conn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return fmt.Errorf("%w: the upgraded connection cannot be written", errTunnelRefused)
	}
	cfg := util.TunnelConfig(c.cfg.tunnelPingInterval)
	// Answers leave in frames of up to a window: the buffer that joins a
	// frame's header and body is kept for the next one.
	cfg.WriteBufferKeep = util.TunnelStreamWindow + mux.FrameOverhead
	session := mux.Server(conn, cfg)
	defer session.Close()
	defer c.serveTargetsOnTunnel(ctx, scrapeCtx, up, session, resp, logger)()
	level.Info(logger).Log("msg", "tunnel open")
	c.metrics.setTransport(transportTunnel)
	c.connected.Add(1)
	defer c.connected.Add(-1)

	// The streams stop once the proxy was told to open no more: an idle
	// stream closed before the go-away left would send the proxy's next
	// scrape to a new stream, which the client then refuses.
	goneAway, goAway := context.WithCancel(context.WithoutCancel(ctx))
	defer goAway()
	stopping := context.AfterFunc(ctx, func() {
		_ = session.GoAway()
		goAway()
	})
	defer stopping()
	var streams sync.WaitGroup
	for {
		stream, err := session.Accept()
		if err != nil {
			// After the go-away, Accept returned the streams opened before
			// it: once they are served, the tunnel ends.
			streams.Wait()
			if !errors.Is(err, mux.ErrLocalGoAway) {
				err = fmt.Errorf("tunnel closed: %w", err)
			}
			return err
		}
		streams.Add(1)
		go c.serveStream(goneAway, scrapeCtx, stream, reuse, streams.Done)
	}
}

// serveStream serves what a stream asks for: a scrape, through the same
// slots, drain and accounting as a polled one, answered on the stream; or a
// CONNECT. With reuse (util.TunnelProtocolReuse) it then waits for the
// next scrape on the stream, until the proxy closes it or ctx ends. A
// request is read before a scrape slot is taken, so that a slow stream
// cannot hold one. ended is called once the stream is closed.
func (c *client) serveStream(ctx, scrapeCtx context.Context, stream *mux.Stream, reuse bool, ended func()) {
	defer ended()
	defer stream.Close()
	reader := bufio.NewReaderSize(stream, streamReadBuffer)
	for first := true; ; first = false {
		if !first && !c.awaitScrape(ctx, stream, reader) {
			return
		}
		_ = stream.SetReadDeadline(time.Now().Add(maxStreamRequest))
		req, err := util.DecodeStreamRequest(reader)
		if err != nil {
			if first || !errors.Is(err, io.EOF) {
				c.metrics.scrapeErrors.Inc()
				level.Warn(c.logger).Log("msg", "bad scrape request on tunnel", "err", err)
			}
			return
		}
		if req.Method == http.MethodConnect {
			c.serveConnect(ctx, scrapeCtx, stream, reader, req)
			return
		}
		if !c.serveScrape(ctx, scrapeCtx, req, time.Now(), c.streamAnswer(stream, req.Header.Get(util.HeaderID), reuse)) || !reuse {
			return
		}
	}
}

// awaitScrape waits on an idle stream until the proxy sends its next
// scrape, and says whether one came. When ctx ends first, the stopping
// client closes the stream without reading from it; a scrape that comes
// just then is left unanswered, which the proxy takes for a stream closed
// while idle and sends elsewhere.
func (c *client) awaitScrape(ctx context.Context, stream *mux.Stream, reader *bufio.Reader) bool {
	_ = stream.SetReadDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { _ = stream.SetReadDeadline(time.Now()) })
	_, err := reader.Peek(1)
	// A false stop means ctx ended: its deadline may be set at any moment.
	return stop() && err == nil
}

// streamReadBuffer is the read buffer of a tunnel stream: a scrape request
// is read in one piece.
const streamReadBuffer = 4 << 10

// streamAnswer returns the function that sends the answer to scrape id on
// stream, in one tunnel frame when it is small. With reuse the answer's
// body is delimited; an answer that fails before its first byte left (the
// target's body broke) is replaced by the reason, so that the proxy has an
// answer and the stream stays usable; one that fails after that closes the
// stream, so that the proxy sees it cut.
func (c *client) streamAnswer(stream *mux.Stream, id string, reuse bool) func(*http.Response) error {
	return func(resp *http.Response) error {
		if deadline, ok := resp.Request.Context().Deadline(); ok {
			_ = stream.SetWriteDeadline(deadline)
		}
		sent := &countingWriter{w: stream}
		out, _ := c.answerWriters.Get().(*bufio.Writer)
		if out == nil {
			out = bufio.NewWriterSize(sent, answerBufferSize)
		} else {
			out.Reset(sent)
		}
		defer func() {
			out.Reset(nil)
			c.answerWriters.Put(out)
		}()
		err := util.WriteAnswer(out, resp, id, reuse)
		if err == nil {
			err = out.Flush()
		}
		if err != nil && sent.n == 0 && reuse {
			// The target failed, not the tunnel: a scrape error, and the
			// answer that was sent is the reason.
			c.metrics.scrapeErrors.Inc()
			out.Reset(sent)
			failed := util.ErrorAnswer(fmt.Errorf("scraping target: %w", err))
			if util.WriteAnswer(out, failed, id, true) == nil && out.Flush() == nil {
				_ = stream.SetWriteDeadline(time.Time{})
				level.Warn(c.logger).Log("msg", "target failed before its answer's first byte; answered the reason", "scrape_id", id, "err", err)
				return nil
			}
		}
		if err != nil {
			stream.Close()
			return err
		}
		_ = stream.SetWriteDeadline(time.Time{})
		return nil
	}
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
