package rendezvous

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/go-kit/log/level"
)

// Work is a scrape handed to a poll, for its caller to write into the
// poll's answer.
type Work struct {
	// ID names the scrape; Request is it in the wire format.
	ID      string
	Request []byte
	// Deadline is when Prometheus stops waiting.
	Deadline time.Time

	hub  *Hub
	poll *poll
	s    *Scrape
	once sync.Once
}

// Delivered says the poll's answer carried the work to the client.
func (w *Work) Delivered() {
	w.once.Do(func() {
		w.hub.mu.Lock()
		defer w.hub.mu.Unlock()
		w.hub.registry.disconnect(w.poll.reg, TransportPoll, w.hub.now())
	})
}

// Undelivered says the poll's answer could not carry the work: the scrape
// goes to another carrier, or back to the front of its queue.
func (w *Work) Undelivered() {
	w.once.Do(func() {
		w.hub.mu.Lock()
		defer w.hub.mu.Unlock()
		w.hub.requeueLocked(w.s)
		w.hub.registry.disconnect(w.poll.reg, TransportPoll, w.hub.now())
	})
}

// Poll registers c and waits for a scrape of its FQDN: the oldest queued
// one at once, or the next to come. It waits at most wait (WaitForever:
// no bound; 0: not at all) and fails with ErrNoWork after it; with
// ErrPollGone when ctx ends first (the client's connection is gone); with
// ErrShuttingDown when the hub shuts down; and with ErrTooManyClients or
// ErrTooManyLabelSets when c cannot be registered. The Work returned must
// be completed with Delivered or Undelivered.
func (h *Hub) Poll(ctx context.Context, c Client, wait time.Duration) (*Work, error) {
	spelling := c.FQDN
	c.FQDN = NormalFQDN(c.FQDN)
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		return nil, ErrShuttingDown
	}
	now := h.now()
	r, created, err := h.registry.find(c, now)
	if err != nil {
		h.mu.Unlock()
		return nil, err
	}
	if created {
		h.metrics.connects.WithLabelValues(TransportPoll).Inc()
		level.Debug(h.logger).Log("msg", "client registered", "fqdn", c.FQDN, "transport", TransportPoll)
	}
	h.registry.connect(r, TransportPoll, now)
	r.spell(spelling)
	p := &poll{ctx: ctx, client: c, reg: r, handed: make(chan *Scrape, 1)}
	if c.Target != "" {
		p.port = targetPort(c.Target)
	}
	// A poll whose connection is already gone takes no queued scrape: it
	// parks like any dead poll, is handed nothing, and gives up below.
	if ctx.Err() == nil {
		anyPort := h.anyPortLocked(c.FQDN)
		if s, ok := h.queue.popWhere(c.FQDN,
			func(s *Scrape) bool { return s.ctx.Err() == nil },
			func(s *Scrape) bool { return anyPort || p.serves(s) }); ok {
			h.handLocked(s, p)
			h.mu.Unlock()
			return h.work(p, <-p.handed), nil
		}
	}
	h.polls.push(c.FQDN, p)
	h.mu.Unlock()

	var expired <-chan time.Time
	if wait >= 0 {
		timer := time.NewTimer(wait)
		defer timer.Stop()
		expired = timer.C
	}
	var why error
	select {
	case s := <-p.handed:
		return h.work(p, s), nil
	case <-ctx.Done():
		why = ErrPollGone
	case <-expired:
		why = ErrNoWork
	case <-h.closed:
		why = ErrShuttingDown
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.polls.remove(c.FQDN, p)
	select {
	case s := <-p.handed:
		if why != ErrPollGone {
			// Handed just as the wait ended: the poll can still carry it.
			return h.work(p, s), nil
		}
		// The client is gone: the scrape goes to another carrier.
		h.requeueLocked(s)
	default:
	}
	h.registry.disconnect(r, TransportPoll, h.now())
	if why == ErrPollGone {
		h.metrics.pollsCut.Inc()
	}
	return nil, why
}

func (h *Hub) work(p *poll, s *Scrape) *Work {
	return &Work{ID: s.ID, Request: s.Request, Deadline: s.Deadline, hub: h, poll: p, s: s}
}

// Claim is the right to answer one scrape handed to a poll, taken by the
// client's push.
type Claim struct {
	hub *Hub
	s   *Scrape
}

// Claim takes the scrape named id for a push by identity. It fails at once
// with ErrUnknownID, ErrExpiredID or ErrWrongClient.
func (h *Hub) Claim(id, identity string) (*Claim, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.inflight[id]
	if s == nil {
		if _, ok := h.ended[id]; ok {
			return nil, ErrExpiredID
		}
		return nil, ErrUnknownID
	}
	if s.identity != identity {
		return nil, ErrWrongClient
	}
	h.deleteInflightLocked(id)
	s.state = stateClaimed
	return &Claim{hub: h, s: s}, nil
}

// Deadline is when Prometheus stops waiting for the answer.
func (c *Claim) Deadline() time.Time { return c.s.Deadline }

// Deliver hands resp, its body unread, to the waiting Scrape and returns
// how relaying it ended. It fails with ErrExpiredID if Prometheus stopped
// waiting before it took the answer. If Prometheus goes away while the
// answer is relayed, abandoned (when not nil) is called once, so that the
// caller can stop the body's reader; Deliver then still waits for the
// relay to end.
func (c *Claim) Deliver(resp *http.Response, abandoned func()) error {
	h, s := c.hub, c.s
	relayed := make(chan error, 1)
	answer := &Answer{Response: resp, Handed: s.handedAt, done: func(err error) { relayed <- err }}
	h.mu.Lock()
	s.events <- event{answer: answer}
	h.mu.Unlock()
	select {
	case err := <-relayed:
		return err
	case <-s.ctx.Done():
	}
	h.mu.Lock()
	select {
	case <-s.events:
		// Never taken: Prometheus went away first.
		h.rememberEndedLocked(s.ID)
		h.mu.Unlock()
		return ErrExpiredID
	default:
	}
	h.mu.Unlock()
	if errors.Is(s.ctx.Err(), context.Canceled) && abandoned != nil {
		abandoned()
	}
	return <-relayed
}
