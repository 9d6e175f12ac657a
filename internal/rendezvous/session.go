package rendezvous

import (
	"sync"
	"time"

	"github.com/go-kit/log/level"

	"github.com/rancher/pushprox/util"
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
	// hosts counts the names the tunnel answers for by host: its own FQDN
	// and the hosts of its targets. The session is among hub.tunnels of
	// each. Guarded by hub.mu.
	hosts map[string]int
	// ports counts its targets by host (normal form) and port: a target
	// answers for its own port only, its client's own FQDN for any.
	// Guarded by hub.mu.
	ports map[string]int
	// targets holds the registrations of the announced targets by name;
	// guarded by hub.mu.
	targets map[string]*registration
}

// Target is a name a tunnel's client answers for besides its own FQDN.
type Target struct {
	Name   string // host:port, as the client lists it; distinct per call
	Host   string // the host of Name; scrapes are routed by host and port
	Labels map[string]string
}

// Stream picks a tunnel of a client of fqdn that answers for port (any
// port of its own FQDN, the port of a target; routed as a Scrape is) for
// a byte stream (a CONNECT), the one with the fewest streams, if it has
// fewer than maxStreams.
// release must be called once the stream ends. It fails at once, never
// waits: with ErrShuttingDown, ErrPollOnly when the FQDN's clients have only
// polls, ErrTooManyStreams, or ErrClientIdle or ErrNoClient.
func (h *Hub) Stream(fqdn, port string, maxStreams int) (t Tunnel, release func(), err error) {
	fqdn = NormalFQDN(fqdn)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return nil, nil, ErrShuttingDown
	}
	var best *Session
	anyPort := h.anyPortLocked(fqdn)
	for _, session := range h.tunnels[fqdn] {
		if !anyPort && !session.serves(fqdn, port) {
			continue
		}
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
	spelling := c.FQDN
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
	r.spell(spelling)
	h.metrics.connects.WithLabelValues(TransportTunnel).Inc()
	level.Debug(h.logger).Log("msg", "client registered", "fqdn", c.FQDN, "transport", TransportTunnel)
	session := &Session{hub: h, client: c, fqdn: c.FQDN, reg: r, tunnel: t, capacity: max(capacity, 1), hosts: map[string]int{}, ports: map[string]int{}}
	session.addHostLocked(c.FQDN)
	h.fillLocked(session)
	return session, nil
}

// Identity is the identity that authenticated the tunnel's client, as
// Attach was given it.
func (s *Session) Identity() string { return s.client.Identity }

// SetTargets makes targets the whole set of names the tunnel answers for
// besides its client's own FQDN, replacing the previous set: names no
// longer listed are withdrawn at once (scrapes already on the tunnel
// finish), new ones registered and routed to it. admit, unless nil, is
// called for each target whose name the tunnel does not answer for yet,
// before it is registered; an error refuses the target. It is called with
// the hub's lock held, so it must be quick and must not call the hub. The
// result holds, for each target, nil or why it was refused (admit's error,
// ErrTooManyTargets, ErrTooManyClients, ErrTooManyLabelSets, ErrDetached).
func (s *Session) SetTargets(targets []Target, admit func(Target) error) []error {
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	errs := make([]error, len(targets))
	if s.detached || h.closing {
		for i := range errs {
			errs[i] = ErrDetached
		}
		return errs
	}
	now := h.now()
	next := make(map[string]*registration, len(targets))
	var added []int
	for i, t := range targets {
		if r := s.targets[t.Name]; r != nil && r.labels.key == util.LabelsKey(t.Labels) {
			next[t.Name] = r
			continue
		}
		added = append(added, i)
	}
	// Withdrawals come first, so that the room they free counts.
	for name, r := range s.targets {
		if next[name] != r {
			s.withdrawLocked(r, now)
		}
	}
	for _, i := range added {
		t := targets[i]
		if admit != nil && s.targets[t.Name] == nil {
			if err := admit(t); err != nil {
				errs[i] = err
				continue
			}
		}
		c := Client{FQDN: NormalFQDN(t.Host), Labels: t.Labels, Identity: s.client.Identity, Target: t.Name, Via: s.fqdn, Owner: s.client.Owner}
		r, _, err := h.registry.find(c, now)
		if err != nil {
			errs[i] = err
			continue
		}
		h.registry.connect(r, TransportTunnel, now)
		s.addHostLocked(r.fqdn)
		s.ports[hostPort(r.fqdn, targetPort(t.Name))]++
		next[t.Name] = r
	}
	s.targets = next
	h.fillLocked(s)
	return errs
}

// withdrawLocked ends the tunnel's announcement of the target r. A target
// no other carrier serves is forgotten at once, not kept as an idle
// client: it was withdrawn, not cut off.
func (s *Session) withdrawLocked(r *registration, now time.Time) {
	h := s.hub
	h.registry.disconnect(r, TransportTunnel, now)
	if !r.connected() {
		h.registry.forget(r)
	}
	key := hostPort(r.fqdn, targetPort(r.target))
	if s.ports[key]--; s.ports[key] == 0 {
		delete(s.ports, key)
	}
	s.removeHostLocked(r.fqdn)
}

// serves says whether the tunnel answers for port of host (its normal
// form): its client's own FQDN on any port, a target on its own.
func (s *Session) serves(host, port string) bool {
	return host == s.fqdn || s.ports[hostPort(host, port)] > 0
}

// hostPort is the key of a host's port in Session.ports.
func hostPort(host, port string) string { return host + " " + port }

// addHostLocked routes scrapes of host to the session.
func (s *Session) addHostLocked(host string) {
	if s.hosts[host]++; s.hosts[host] == 1 {
		s.hub.tunnels[host] = append(s.hub.tunnels[host], s)
	}
}

// removeHostLocked stops routing scrapes of host to the session once no
// name of it has that host.
func (s *Session) removeHostLocked(host string) {
	if s.hosts[host]--; s.hosts[host] > 0 {
		return
	}
	delete(s.hosts, host)
	h := s.hub
	sessions := h.tunnels[host]
	for i, other := range sessions {
		if other == s {
			sessions = append(sessions[:i:i], sessions[i+1:]...)
			break
		}
	}
	if len(sessions) == 0 {
		delete(h.tunnels, host)
	} else {
		h.tunnels[host] = sessions
	}
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
	now := h.now()
	for host := range s.hosts {
		s.hosts[host] = 1
		s.removeHostLocked(host)
	}
	h.registry.disconnect(s.reg, TransportTunnel, now)
	// The targets of a tunnel that ended stay known for the registration
	// timeout, as its client does.
	for _, r := range s.targets {
		h.registry.disconnect(r, TransportTunnel, now)
	}
	s.targets = nil
	clear(s.ports)
}
