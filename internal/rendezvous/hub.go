package rendezvous

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
)

// maxRememberedIDs bounds the set of recently ended scrape IDs kept to tell
// a late push apart from an unknown one.
const maxRememberedIDs = 10000

// rememberIDsFor is how long an ended scrape ID is remembered.
const rememberIDsFor = 10 * time.Minute

// WaitForever, as the wait of a Poll, parks it until work comes or its
// context ends.
const WaitForever time.Duration = -1

// Config configures a Hub.
type Config struct {
	// RegistrationTimeout is how long a client without a live carrier
	// stays known.
	RegistrationTimeout time.Duration
	// MaxClients bounds the registrations (FQDN and label set) kept.
	MaxClients int
	// MaxTargetsPerClient bounds the targets one client announces (see
	// Client.Target); zero means DefaultMaxTargetsPerClient.
	MaxTargetsPerClient int
	// Now tells the time of registrations; nil means time.Now. Tests
	// replace it with a fake clock.
	Now func() time.Time
}

// Hub is the rendezvous of scrapes and carriers. Create it with New.
type Hub struct {
	logger  log.Logger
	now     func() time.Time
	metrics *hubMetrics
	closed  chan struct{} // closed when Shutdown begins
	stopGC  chan struct{}
	gcDone  chan struct{}
	gcEvery time.Duration

	mu sync.Mutex
	// polls holds live parked polls by FQDN, oldest first; guarded by mu.
	polls fifo[*poll]
	// queue holds scrapes waiting for a carrier by FQDN, oldest first;
	// guarded by mu.
	queue fifo[*Scrape]
	// tunnels holds the attached tunnels by FQDN; guarded by mu.
	tunnels map[string][]*Session
	// inflight holds scrapes handed to a poll and awaiting their push, by
	// ID; guarded by mu.
	inflight map[string]*Scrape
	// ended remembers recently ended scrape IDs and when; guarded by mu.
	ended map[string]time.Time
	// registry holds the known clients; guarded by mu.
	registry registry
	// closing is set when Shutdown begins; guarded by mu.
	closing bool
	// drained is closed once closing and inflight is empty; guarded by mu.
	drained chan struct{}
}

// New returns a running Hub whose metrics are registered with reg. Close
// stops it.
func New(cfg Config, logger log.Logger, reg prometheus.Registerer) *Hub {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	h := &Hub{
		logger:   logger,
		now:      now,
		closed:   make(chan struct{}),
		stopGC:   make(chan struct{}),
		gcDone:   make(chan struct{}),
		gcEvery:  min(max(cfg.RegistrationTimeout/4, time.Second), time.Minute),
		polls:    newFIFO[*poll](),
		queue:    newFIFO[*Scrape](),
		tunnels:  map[string][]*Session{},
		inflight: map[string]*Scrape{},
		ended:    map[string]time.Time{},
		registry: newRegistry(cfg.RegistrationTimeout, cfg.MaxClients, cmp.Or(cfg.MaxTargetsPerClient, DefaultMaxTargetsPerClient)),
		drained:  make(chan struct{}),
	}
	h.metrics = newHubMetrics(h, cfg.MaxClients, reg)
	go h.gcLoop()
	return h
}

// Scrape routes s to a carrier of its FQDN and returns the client's
// answer. It waits for a carrier, and then for the answer, until ctx ends:
// then it fails with ErrAbandoned when ctx was cancelled (Prometheus went
// away), and otherwise with ErrClientTimeout, ErrClientIdle or ErrNoClient,
// as far as the scrape got.
func (h *Hub) Scrape(ctx context.Context, s *Scrape) (*Answer, error) {
	s.FQDN = NormalFQDN(s.FQDN)
	s.ctx = ctx
	s.events = make(chan event, 1)
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		return nil, ErrShuttingDown
	}
	if ctx.Err() != nil {
		// Prometheus stopped waiting before the scrape came: no carrier
		// is spent on it, as none is on a queued scrape whose context
		// ended.
		h.mu.Unlock()
		return nil, h.abandon(ctx, s)
	}
	session := h.dispatchLocked(s, false)
	h.mu.Unlock()
	closed := h.closed
	for {
		if session != nil {
			answer, err := h.carry(ctx, s, session)
			if !errors.Is(err, ErrNotCarried) {
				return answer, err
			}
			h.mu.Lock()
			if h.closing {
				s.state = stateDone
				h.mu.Unlock()
				return nil, ErrShuttingDown
			}
			session = h.dispatchLocked(s, true)
			h.mu.Unlock()
			continue
		}
		select {
		case ev := <-s.events:
			switch {
			case ev.answer != nil:
				return ev.answer, nil
			case ev.session != nil:
				session = ev.session
			default:
				return nil, ErrShuttingDown
			}
		case <-closed:
			if h.withdrawQueued(s) {
				return nil, ErrShuttingDown
			}
			// A carrier has it: its answer is still taken.
			closed = nil
		case <-ctx.Done():
			return nil, h.abandon(ctx, s)
		}
	}
}

// carry runs s on a reserved slot of a tunnel.
func (h *Hub) carry(ctx context.Context, s *Scrape, session *Session) (*Answer, error) {
	resp, err := session.tunnel.Carry(ctx, s)
	if err != nil {
		h.mu.Lock()
		h.releaseSlotLocked(session)
		s.tried = append(s.tried, session)
		switch {
		case ctx.Err() != nil:
			// abandon tells the cause; the scrape counts as handed.
		case errors.Is(err, ErrNotCarried):
			s.state = stateWaiting
			h.mu.Unlock()
			return nil, err
		default:
			s.state = stateDone
			h.mu.Unlock()
			return nil, fmt.Errorf("%w: %v", ErrClientLost, err)
		}
		h.mu.Unlock()
		return nil, h.abandon(ctx, s)
	}
	answer := &Answer{Response: resp, Handed: s.handedAt}
	answer.done = func(error) {
		resp.Body.Close()
		h.mu.Lock()
		defer h.mu.Unlock()
		s.state = stateDone
		h.releaseSlotLocked(session)
	}
	return answer, nil
}

// abandon takes s back from wherever it is once its context has ended, and
// says why it failed.
func (h *Hub) abandon(ctx context.Context, s *Scrape) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	handed := false
	switch s.state {
	case stateQueued:
		h.queue.remove(s.FQDN, s)
	case stateHanded:
		h.deleteInflightLocked(s.ID)
		h.rememberEndedLocked(s.ID)
		handed = true
	case stateClaimed, stateTunnel:
		handed = true
	}
	s.state = stateDone
	select {
	case ev := <-s.events:
		switch {
		case ev.session != nil:
			h.releaseSlotLocked(ev.session)
		case ev.answer != nil:
			// Put back, for Claim.Deliver to see that it was never taken.
			s.events <- ev
		}
	default:
	}
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		return ErrAbandoned
	case handed:
		return ErrClientTimeout
	case h.registry.known(s.FQDN, h.now()):
		return ErrClientIdle
	}
	return ErrNoClient
}

// withdrawQueued removes s if it still waits for a carrier, and reports
// whether it did.
func (h *Hub) withdrawQueued(s *Scrape) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.state != stateQueued && s.state != stateWaiting {
		return false
	}
	h.queue.remove(s.FQDN, s)
	s.state = stateDone
	return true
}

// dispatchLocked gives s to a carrier of its FQDN and port: a tunnel with
// a free slot, which it returns for the caller to carry s on, or the
// oldest live parked poll; or else queues it, at the front when it had
// been taken before.
func (h *Hub) dispatchLocked(s *Scrape, front bool) *Session {
	if session := h.freeSessionLocked(s); session != nil {
		h.reserveLocked(s, session)
		return session
	}
	anyPort := h.anyPortLocked(s.FQDN)
	if p, ok := h.polls.popWhere(s.FQDN,
		func(p *poll) bool { return p.ctx.Err() == nil },
		func(p *poll) bool { return anyPort || p.serves(s) }); ok {
		h.handLocked(s, p)
		return nil
	}
	s.state = stateQueued
	if front {
		h.queue.pushFront(s.FQDN, s)
	} else {
		h.queue.push(s.FQDN, s)
	}
	return nil
}

// freeSessionLocked returns the least busy tunnel of the FQDN of s with a
// free slot that s has not tried yet.
func (h *Hub) freeSessionLocked(s *Scrape) *Session {
	var best *Session
	anyPort := h.anyPortLocked(s.FQDN)
	for _, session := range h.tunnels[s.FQDN] {
		if session.active >= session.capacity || tried(s, session) || !anyPort && !session.serves(s.FQDN, s.Port) {
			continue
		}
		if best == nil || session.active < best.active {
			best = session
		}
	}
	return best
}

// anyPortLocked says whether a carrier of targets on host may take a
// scrape of any port of it, not only of its targets' ports: while no
// client of host's own name is known, so that a scrape of a port nobody
// lists is refused at once by a client that answers for the host, with
// its reason, instead of waiting for a carrier that will not come. Once
// the host has a client of its own, the ports the targets do not list are
// that client's.
func (h *Hub) anyPortLocked(host string) bool {
	return !h.registry.ownKnown(host, h.now())
}

func tried(s *Scrape, session *Session) bool {
	for _, t := range s.tried {
		if t == session {
			return true
		}
	}
	return false
}

func (h *Hub) reserveLocked(s *Scrape, session *Session) {
	session.active++
	s.state = stateTunnel
	s.identity = session.client.Identity
	s.reg = session.reg
	s.handedAt = time.Now()
}

// handLocked registers s as in flight to p, then hands it over. The order
// matters: a push may arrive as soon as the poll has it.
func (h *Hub) handLocked(s *Scrape, p *poll) {
	s.state = stateHanded
	s.identity = p.client.Identity
	s.reg = p.reg
	s.handedAt = time.Now()
	h.inflight[s.ID] = s
	p.handed <- s
}

// releaseSlotLocked frees a slot of a tunnel and fills it with the oldest
// queued scrape of its FQDN.
func (h *Hub) releaseSlotLocked(session *Session) {
	session.active--
	h.fillLocked(session)
}

// fillLocked hands queued scrapes of the hosts a tunnel answers for to
// its free slots. It runs under the lock at each slot given back, so it
// costs nothing when nothing is queued, and otherwise walks the smaller
// of the hosts with a queue and the tunnel's hosts (up to
// --registration.max-targets-per-client of them).
func (h *Hub) fillLocked(session *Session) {
	if h.queue.len() == 0 || session.detached || h.closing || session.active >= session.capacity {
		return
	}
	if len(h.queue.queues) < len(session.hosts) {
		for host := range h.queue.queues {
			if session.hosts[host] > 0 {
				h.fillHostLocked(session, host)
			}
		}
		return
	}
	for host := range session.hosts {
		h.fillHostLocked(session, host)
	}
}

// fillHostLocked hands queued scrapes of host to a tunnel's free slots.
func (h *Hub) fillHostLocked(session *Session, host string) {
	if len(h.queue.queues[host]) == 0 {
		return
	}
	anyPort := h.anyPortLocked(host)
	for !session.detached && !h.closing && session.active < session.capacity {
		// A scrape this tunnel did not take stays queued for others.
		s, ok := h.queue.popWhere(host,
			func(s *Scrape) bool { return s.ctx.Err() == nil },
			func(s *Scrape) bool { return !tried(s, session) && (anyPort || session.serves(s.FQDN, s.Port)) })
		if !ok {
			return
		}
		h.reserveLocked(s, session)
		s.events <- event{session: session}
	}
}

// requeueLocked takes back a scrape whose poll could not deliver it and
// gives it to another carrier, or puts it at the front of its queue, while
// Prometheus still waits for it.
func (h *Hub) requeueLocked(s *Scrape) {
	if h.inflight[s.ID] != s {
		return
	}
	h.deleteInflightLocked(s.ID)
	s.state = stateWaiting
	if s.ctx.Err() != nil {
		return
	}
	if h.closing {
		s.state = stateDone
		s.events <- event{shutdown: true}
		return
	}
	if session := h.dispatchLocked(s, true); session != nil {
		s.events <- event{session: session}
	}
}

func (h *Hub) deleteInflightLocked(id string) {
	delete(h.inflight, id)
	if h.closing && len(h.inflight) == 0 {
		select {
		case <-h.drained:
		default:
			close(h.drained)
		}
	}
}

func (h *Hub) rememberEndedLocked(id string) {
	if len(h.ended) < maxRememberedIDs {
		h.ended[id] = h.now()
	}
}

// Record notes how a scrape ended, for the landing page: on the client
// that took it, or on every client of its FQDN if none did.
func (h *Hub) Record(s *Scrape, outcome string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.reg != nil {
		s.reg.note(outcome)
		return
	}
	for _, r := range h.registry.byFQDN[s.FQDN] {
		r.note(outcome)
	}
}

// Shutdown stops taking polls, scrapes and tunnels. Parked polls and
// queued scrapes give up with ErrShuttingDown; scrapes handed to a carrier
// may still be answered.
func (h *Hub) Shutdown() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return
	}
	h.closing = true
	close(h.closed)
	if len(h.inflight) == 0 {
		close(h.drained)
	}
}

// ShuttingDown is closed once Shutdown begins.
func (h *Hub) ShuttingDown() <-chan struct{} { return h.closed }

// Drain waits until no scrape handed to a poll waits for its push, or
// until ctx ends. Call it after Shutdown.
func (h *Hub) Drain(ctx context.Context) error {
	select {
	case <-h.drained:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Known reports whether a client of fqdn is known.
func (h *Hub) Known(fqdn string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.registry.known(NormalFQDN(fqdn), h.now())
}

// Clients returns the known clients sorted by FQDN and labels, from the
// offset-th on, at most limit of them (all when limit <= 0).
func (h *Hub) Clients(offset, limit int) []ClientStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.registry.list(h.now(), offset, limit)
}

// Now tells the hub's time, for ages of last contact.
func (h *Hub) Now() time.Time { return h.now() }
