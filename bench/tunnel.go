package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/rancher/pushprox/internal/mux"
	"github.com/rancher/pushprox/util"
)

const (
	// simTunnelPing is the simulated clients' ping interval, the client's
	// --tunnel.ping-interval default.
	simTunnelPing = 15 * time.Second
	// simHandshakeTimeout bounds the tunnel handshake, as the client's own
	// bound does: no answer within it means no tunnel.
	simHandshakeTimeout = 10 * time.Second
	// simStreamTimeout bounds reading one scrape request and writing its
	// answer on a stream; a small answer over loopback takes microseconds.
	simStreamTimeout = 10 * time.Second
	// simMaxConcurrency is the scrapes at once a simulated client offers,
	// the client's --scrape.max-concurrency default.
	simMaxConcurrency = 16
)

// runTunnel opens a tunnel on conn with the project's own handshake and
// multiplexer settings, and answers every stream the proxy opens on it with the
// project's wire encoders, until ctx ends (the caller then closes conn) or
// the tunnel breaks.
func (f *fleet) runTunnel(ctx context.Context, conn net.Conn, fqdn string) error {
	req, accept, err := util.NewTunnelRequest("http://"+f.proxyAddr+"/"+util.TunnelPath, fqdn, "", simMaxConcurrency)
	if err != nil {
		return err
	}
	_ = conn.SetDeadline(time.Now().Add(simHandshakeTimeout))
	if err := req.Write(conn); err != nil {
		return fmt.Errorf("sending tunnel request: %w", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return fmt.Errorf("reading tunnel answer: %w", err)
	}
	accepted, reuse := util.TunnelAccepted(resp, accept)
	if !accepted {
		reason, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return fmt.Errorf("tunnel refused: %s: %s", resp.Status, reason)
	}
	_ = conn.SetDeadline(time.Time{})
	// Bytes the proxy sent right after its answer are in br.
	session := mux.Server(util.BufferedConn{SpliceConn: conn, Reader: br}, util.TunnelConfig(simTunnelPing))
	// Each stream is served in a goroutine of its own, as the proxy may
	// keep it for scrape after scrape (util.TunnelProtocolReuse); none
	// outlives the client.
	var streams sync.WaitGroup
	defer streams.Wait()
	defer session.Close()
	failed := make(chan error, 1)
	for {
		stream, err := session.Accept()
		if err != nil {
			select {
			case err = <-failed:
				return err
			default:
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("tunnel closed: %w", err)
		}
		streams.Add(1)
		go func() {
			defer streams.Done()
			if err := f.serveStream(stream, fqdn, reuse); err != nil {
				select {
				case failed <- err:
				default:
				}
				session.Close()
			}
		}()
	}
}

// serveStream answers the scrapes on stream, one or (with reuse) one after
// another until the proxy closes it.
func (f *fleet) serveStream(stream *mux.Stream, fqdn string, reuse bool) error {
	defer stream.Close()
	br := bufio.NewReader(stream)
	for {
		if err := f.answerStream(stream, br, fqdn); err != nil {
			return err
		}
		f.served.Add(1)
		if !reuse {
			return nil
		}
		_ = stream.SetDeadline(time.Time{})
		if _, err := br.Peek(1); err != nil {
			// The proxy closed the stream, or the tunnel ended.
			return nil
		}
	}
}

// answerStream reads a scrape request from stream and answers it as
// pushprox-client does: head and body in one write, so that a small answer
// leaves in one frame.
func (f *fleet) answerStream(stream *mux.Stream, br *bufio.Reader, fqdn string) error {
	_ = stream.SetDeadline(time.Now().Add(simStreamTimeout))
	req, err := util.DecodeScrapeRequest(br)
	if err != nil {
		return err
	}
	if host := req.URL.Hostname(); host != fqdn {
		return fmt.Errorf("handed a scrape of %q", host)
	}
	id := req.Header.Get(util.HeaderID)
	if id == "" {
		return errors.New("scrape request without Id")
	}
	left, err := util.HeaderTimeout(req.Header, util.HeaderScrapeTimeoutSeconds)
	header := http.Header{"Content-Type": {"text/plain; version=0.0.4; charset=utf-8"}}
	header = util.AnswerHeader(header, id, left, err == nil, int64(len(f.body)))
	answer := append(util.EncodeAnswerHead(http.StatusOK, "", header), f.body...)
	if _, err := stream.Write(answer); err != nil {
		return fmt.Errorf("answering: %w", err)
	}
	return nil
}
