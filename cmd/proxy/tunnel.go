package main

import (
	"cmp"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/go-kit/log/level"

	"github.com/rancher/pushprox/internal/mux"
	"github.com/rancher/pushprox/internal/rendezvous"
	"github.com/rancher/pushprox/util"
)

// tunnelMaxInbound bounds the streams a client may have open on its
// tunnel (and so those not accepted yet): it opens one, for its targets,
// and the proxy closes any other at once; a few more leave room for those
// being closed.
const tunnelMaxInbound = 4

// tunnelJoinKeep bounds the buffer each tunnel keeps to write a frame's
// header and body at once: scrape requests fit; the larger frames of a
// CONNECT's upload get a buffer each.
const tunnelJoinKeep = 4 << 10

// tunnelReadBufferIdle is how long a tunnel keeps its read buffer without a
// frame: a client scraped more than once a second keeps it, one scraped
// every 15 s or more holds none between scrapes, at the cost of one more
// read per scrape.
const tunnelReadBufferIdle = time.Second

// maxTunnelConcurrency caps the scrapes at once a client may ask for on its
// tunnel: each holds a stream window of util.TunnelStreamWindow bytes.
const maxTunnelConcurrency = 256

// tunnels tracks the open tunnels, so that a stopping proxy closes them
// once the scrapes on them have been answered.
type tunnels struct {
	mu   sync.Mutex
	open map[*mux.Session]struct{} // guarded by mu
	wg   sync.WaitGroup            // one per tunnel handler still running
}

// track notes an open tunnel until the returned untrack is called.
func (t *tunnels) track(session *mux.Session) (untrack func()) {
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
	// Refused before the upgrade, so that the client sees the 429.
	if !p.admit(w, r, client) {
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
	// net/http's read buffer is kept only when it holds bytes of the
	// tunnel; the session reads through a buffer of its own.
	var tunnelConn io.ReadWriteCloser = conn
	if buffered.Reader.Buffered() > 0 {
		tunnelConn = util.BufferedConn{SpliceConn: conn, Reader: buffered.Reader}
	}
	cfg := util.TunnelConfig(p.cfg.tunnelPingInterval)
	cfg.AcceptBacklog, cfg.MaxInbound = tunnelMaxInbound, tunnelMaxInbound
	cfg.WriteBufferKeep = tunnelJoinKeep
	cfg.ReadBufferIdle = tunnelReadBufferIdle
	cfg.Buffers = p.tunnelBuffers
	session := mux.Client(tunnelConn, cfg)
	untrack := p.tunnels.track(session)
	carrier := &tunnel{session: session, reuse: util.TunnelReusesStreams(r), idleLimit: capacity, budget: p.idleStreams,
		idleTimeout: cmp.Or(p.cfg.idleStreamTimeout, defaultIdleStreamTimeout)}
	attached, err := p.hub.Attach(client, carrier, capacity)
	if err != nil {
		p.metrics.countRegistrationRefused(err)
		level.Warn(p.logger).Log("msg", "tunnel refused", "fqdn", client.FQDN, "err", err)
		session.Close()
		untrack()
		return
	}
	level.Debug(p.logger).Log("msg", "tunnel attached", "fqdn", client.FQDN, "capacity", capacity, "remote", r.RemoteAddr)
	// The handler returns, so that net/http's request, response and
	// connection state and the handler's stack are freed; a goroutine
	// that starts small serves the tunnel. What authorising announced
	// targets needs of the request is kept.
	peer := authOnly(r)
	go func() {
		defer untrack()
		defer carrier.closeIdle()
		// The client's streams (its targets) are served until the session
		// ends.
		p.serveTargets(session, attached, peer, client.FQDN)
		<-session.Done()
		attached.Detach()
		level.Debug(p.logger).Log("msg", "tunnel closed", "fqdn", client.FQDN, "remote", peer.RemoteAddr, "err", session.Err())
	}()
}
