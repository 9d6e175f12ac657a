package rendezvous

import (
	"time"

	"github.com/go-kit/log/level"
)

// Close stops the garbage collector and waits for it.
func (h *Hub) Close() {
	close(h.stopGC)
	<-h.gcDone
}

func (h *Hub) gcLoop() {
	defer close(h.gcDone)
	ticker := time.NewTicker(h.gcEvery)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			h.collectGarbage()
		case <-h.stopGC:
			return
		}
	}
}

// collectGarbage forgets clients gone past the registration timeout and
// scrape IDs ended long ago.
func (h *Hub) collectGarbage() {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	for _, r := range h.registry.collect(now) {
		level.Debug(h.logger).Log("msg", "client forgotten", "fqdn", r.fqdn, "last_seen", r.lastSeen)
	}
	for id, at := range h.ended {
		if now.Sub(at) > rememberIDsFor {
			delete(h.ended, id)
		}
	}
}

// Stats counts what the hub holds now.
type Stats struct {
	Clients  int // known clients
	Parked   int // polls parked
	Queued   int // scrapes waiting for a carrier
	Inflight int // scrapes handed to a poll, awaiting their push
	Tunnels  int // tunnels attached
}

// Stats returns the hub's counts.
func (h *Hub) Stats() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	st := Stats{Parked: h.polls.len(), Queued: h.queue.len(), Inflight: len(h.inflight)}
	for _, byLabels := range h.registry.byFQDN {
		for _, r := range byLabels {
			if h.registry.alive(r, now) {
				st.Clients++
			}
		}
	}
	for host, sessions := range h.tunnels {
		// A tunnel is listed under each host it answers for; it counts
		// once, under its own.
		for _, session := range sessions {
			if session.fqdn == host {
				st.Tunnels++
			}
		}
	}
	return st
}

// CollectGarbage forgets clients gone past the registration timeout now;
// the hub also does it on a ticker of its own.
func (h *Hub) CollectGarbage() { h.collectGarbage() }
