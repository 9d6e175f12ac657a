package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/go-kit/log/level"
	"github.com/hashicorp/yamux"

	"github.com/rancher/pushprox/internal/rendezvous"
	"github.com/rancher/pushprox/util"
)

// maxTunnelConcurrency caps the scrapes at once a client may ask for on its
// tunnel: each holds a stream window of util.TunnelStreamWindow bytes.
const maxTunnelConcurrency = 256

// tunnels tracks the open tunnels, so that a stopping proxy closes them
// once the scrapes on them have been answered.
type tunnels struct {
	mu   sync.Mutex
	open map[*yamux.Session]struct{} // guarded by mu
	wg   sync.WaitGroup              // one per tunnel handler still running
}

// track notes an open tunnel until the returned untrack is called.
func (t *tunnels) track(session *yamux.Session) (untrack func()) {
	t.mu.Lock()
	t.open[session] = struct{}{}
	t.wg.Add(1)
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		delete(t.open, session)
		t.mu.Unlock()
		t.wg.Done()
	}
}

// closeAll closes every tunnel and waits for their handlers.
func (t *tunnels) closeAll() {
	t.mu.Lock()
	for session := range t.open {
		session.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
}

// handleTunnel upgrades a client's tunnel request to a multiplexed
// connection and attaches it to the hub as a carrier of the client's FQDN,
// until the connection ends. Requests that are no tunnel handshake get a
// 4xx, so that the client polls instead.
func (p *proxy) handleTunnel(w http.ResponseWriter, r *http.Request) {
	if !util.IsTunnelRequest(r) {
		httpError(w, http.StatusBadRequest, "not a tunnel request: want a WebSocket upgrade with protocol %s", util.TunnelProtocol)
		return
	}
	client, err := p.clientOf(r, r.Header.Get(util.HeaderFQDN))
	if err != nil {
		httpError(w, clientErrorStatus(err), "%v", err)
		return
	}
	capacity, err := strconv.Atoi(r.Header.Get(util.HeaderMaxConcurrency))
	if err != nil || capacity < 1 {
		capacity = 1
	}
	capacity = min(capacity, maxTunnelConcurrency)
	select {
	case <-p.hub.ShuttingDown():
		httpError(w, http.StatusServiceUnavailable, "%v", rendezvous.ErrShuttingDown)
		return
	default:
	}
	conn, buffered, err := http.NewResponseController(w).Hijack()
	if err != nil {
		httpError(w, http.StatusInternalServerError, "cannot take over the connection for a tunnel: %v", err)
		return
	}
	// The handshake's deadlines are net/http's; the tunnel's liveness is
	// its pings'.
	_ = conn.SetDeadline(time.Time{})
	if err := util.WriteTunnelAccept(conn, r); err != nil {
		conn.Close()
		return
	}
	session, err := yamux.Client(util.BufferedConn{SpliceConn: conn, Reader: buffered.Reader}, util.TunnelConfig(p.cfg.tunnelPingInterval))
	if err != nil {
		conn.Close()
		return
	}
	defer p.tunnels.track(session)()
	attached, err := p.hub.Attach(client, &tunnel{session: session}, capacity)
	if err != nil {
		level.Warn(p.logger).Log("msg", "tunnel refused", "fqdn", client.FQDN, "err", err)
		session.Close()
		return
	}
	level.Debug(p.logger).Log("msg", "tunnel attached", "fqdn", client.FQDN, "capacity", capacity, "remote", r.RemoteAddr)
	targetsDone := make(chan struct{})
	go func() {
		defer close(targetsDone)
		p.serveTargets(session, attached, r, client.FQDN)
	}()
	<-session.CloseChan()
	attached.Detach()
	<-targetsDone
	level.Debug(p.logger).Log("msg", "tunnel closed", "fqdn", client.FQDN, "remote", r.RemoteAddr)
}

// tunnel carries scrapes to a client, one yamux stream each.
type tunnel struct {
	session *yamux.Session
}

// Carry opens a stream, writes the scrape request on it and reads the
// answer's head. The stream is the answer's body.
func (t *tunnel) Carry(ctx context.Context, s *rendezvous.Scrape) (*http.Response, error) {
	stream, err := t.session.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", rendezvous.ErrNotCarried, err)
	}
	_ = stream.SetDeadline(s.Deadline)
	if _, err := stream.Write(s.Request); err != nil {
		stream.Close()
		return nil, fmt.Errorf("%w: %v", rendezvous.ErrNotCarried, err)
	}
	// Until the head is in, the wait ends with ctx; the body may then use
	// the scrape's full timeout.
	stop := context.AfterFunc(ctx, func() { _ = stream.SetReadDeadline(time.Now()) })
	resp, err := util.DecodeAnswer(stream)
	if !stop() || err != nil {
		stream.Close()
		if err == nil {
			resp.Body.Close()
			err = ctx.Err()
		}
		return nil, err
	}
	if id := resp.Header.Get(util.HeaderID); id != s.ID {
		resp.Body.Close()
		stream.Close()
		return nil, fmt.Errorf("answer names scrape %q, not %q", id, s.ID)
	}
	resp.Body = streamBody{resp.Body, stream}
	return resp, nil
}

// streamBody is an answer's body that ends its stream when closed.
type streamBody struct {
	io.ReadCloser
	stream *yamux.Stream
}

func (b streamBody) Close() error {
	b.ReadCloser.Close()
	return b.stream.Close()
}
