package rendezvous

import (
	"sync"

	"github.com/go-kit/log/level"
)

// Session is a tunnel attached to the hub: a carrier of up to its capacity
// scrapes at once for one client.
type Session struct {
	hub      *Hub
	client   Client
	fqdn     string
	reg      *registration
	tunnel   Tunnel
	capacity int
	// active counts the scrapes on the tunnel now and detached is set by
	// Detach; both guarded by hub.mu.
	active   int
	detached bool
	// streams counts the byte streams (CONNECT) open on the tunnel now;
	// guarded by hub.mu.
	streams int
}

// Stream picks a tunnel of a client of fqdn for a byte stream (a CONNECT),
// the one with the fewest streams, if it has fewer than maxStreams.
// release must be called once the stream ends. It fails at once, never
// waits: with ErrShuttingDown, ErrPollOnly when the FQDN's clients have only
// polls, ErrTooManyStreams, or ErrClientIdle or ErrNoClient.
func (h *Hub) Stream(fqdn string, maxStreams int) (t Tunnel, release func(), err error) {
	fqdn = NormalFQDN(fqdn)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return nil, nil, ErrShuttingDown
	}
	var best *Session
	for _, session := range h.tunnels[fqdn] {
		if best == nil || session.streams < best.streams {
			best = session
		}
	}
	switch {
	case best == nil && h.registryHasPollsLocked(fqdn):
		return nil, nil, ErrPollOnly
	case best == nil && h.registry.known(fqdn, h.now()):
		return nil, nil, ErrClientIdle
	case best == nil:
		return nil, nil, ErrNoClient
	case best.streams >= maxStreams:
		return nil, nil, ErrTooManyStreams
	}
	best.streams++
	var once sync.Once
	return best.tunnel, func() {
		once.Do(func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			best.streams--
		})
	}, nil
}

// registryHasPollsLocked says whether a known client of fqdn reached the
// proxy by polls last.
func (h *Hub) registryHasPollsLocked(fqdn string) bool {
	now := h.now()
	for _, r := range h.registry.byFQDN[fqdn] {
		if r.transport == TransportPoll && h.registry.alive(r, now) {
			return true
		}
	}
	return false
}

// Attach registers c and adds t as a carrier of its FQDN that takes up to
// capacity scrapes at once, queued ones first. It fails with
// ErrShuttingDown, ErrTooManyClients or ErrTooManyLabelSets.
func (h *Hub) Attach(c Client, t Tunnel, capacity int) (*Session, error) {
	c.FQDN = NormalFQDN(c.FQDN)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return nil, ErrShuttingDown
	}
	now := h.now()
	r, _, err := h.registry.find(c, now)
	if err != nil {
		return nil, err
	}
	h.registry.connect(r, TransportTunnel, now)
	h.metrics.connects.WithLabelValues(TransportTunnel).Inc()
	level.Debug(h.logger).Log("msg", "client registered", "fqdn", c.FQDN, "transport", TransportTunnel)
	session := &Session{hub: h, client: c, fqdn: c.FQDN, reg: r, tunnel: t, capacity: max(capacity, 1)}
	h.tunnels[c.FQDN] = append(h.tunnels[c.FQDN], session)
	h.fillLocked(session)
	return session, nil
}

// Detach stops new scrapes from going to the tunnel; those on it finish.
func (s *Session) Detach() {
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.detached {
		return
	}
	s.detached = true
	sessions := h.tunnels[s.fqdn]
	for i, other := range sessions {
		if other == s {
			sessions = append(sessions[:i:i], sessions[i+1:]...)
			break
		}
	}
	if len(sessions) == 0 {
		delete(h.tunnels, s.fqdn)
	} else {
		h.tunnels[s.fqdn] = sessions
	}
	h.registry.disconnect(s.reg, TransportTunnel, h.now())
}
