package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// refusingTunnel answers every scrape at once with its ID, but first
// refuses some of them (ErrNotCarried), as a client whose stream limit is
// reached does.
type refusingTunnel struct {
	mu  sync.Mutex
	rnd *rand.Rand
}

func (r *refusingTunnel) Carry(_ context.Context, s *Scrape) (*http.Response, error) {
	r.mu.Lock()
	refuse := r.rnd.IntN(4) == 0
	r.mu.Unlock()
	if refuse {
		return nil, fmt.Errorf("stream limit: %w", ErrNotCarried)
	}
	return response(s.ID), nil
}

// yieldSome lets other goroutines run up to n times, so that cancellations
// land anywhere in a scrape's or a poll's way through the hub.
func yieldSome(n int) {
	for range n {
		runtime.Gosched()
	}
}

// TestManyScrapesPollsAndTunnelsAtOnce runs scrapes through polls that get
// cut, polls that fail to deliver, and tunnels that refuse, all at once:
// every scrape must end once, with its own answer or an error it may
// have, and the hub must hold nothing afterwards.
func TestManyScrapesPollsAndTunnelsAtOnce(t *testing.T) {
	h := newTestHub(t, 100)
	fqdns := []string{"a", "b", "c", "d"}
	var pollers sync.WaitGroup
	var delivered, undelivered, cut atomic.Int64
	for i, fqdn := range fqdns {
		if i%2 == 0 {
			attach(t, h, client(fqdn), &refusingTunnel{rnd: rand.New(rand.NewPCG(uint64(i), 1))}, 2)
		}
		for j := range 2 {
			rnd := rand.New(rand.NewPCG(uint64(i), uint64(j)))
			pollers.Go(func() {
				for {
					ctx, cancel := context.WithCancel(context.Background())
					if rnd.IntN(5) == 0 {
						n := rnd.IntN(8)
						go func() { yieldSome(n); cancel() }()
					}
					work, err := h.Poll(ctx, client(fqdn), WaitForever)
					switch {
					case errors.Is(err, ErrShuttingDown):
						cancel()
						return
					case errors.Is(err, ErrPollGone):
						cut.Add(1)
						cancel()
						continue
					case err != nil:
						t.Errorf("Poll: %v", err)
						cancel()
						return
					}
					if ctx.Err() != nil || rnd.IntN(10) == 0 {
						// The poll's answer could not be written.
						work.Undelivered()
						undelivered.Add(1)
						cancel()
						continue
					}
					work.Delivered()
					cancel()
					claim, err := h.Claim(work.ID, client(fqdn).Identity)
					if err != nil {
						// The scrape ended before its push.
						if !errors.Is(err, ErrExpiredID) {
							t.Errorf("Claim: %v", err)
						}
						continue
					}
					if err := claim.Deliver(response(work.ID), nil); err != nil && !errors.Is(err, ErrExpiredID) {
						t.Errorf("Deliver: %v", err)
					}
					delivered.Add(1)
				}
			})
		}
	}

	const scrapers, perScraper = 8, 40
	var scrapes sync.WaitGroup
	var answered, abandoned atomic.Int64
	for i := range scrapers {
		rnd := rand.New(rand.NewPCG(uint64(i), 99))
		scrapes.Go(func() {
			for j := range perScraper {
				ctx, cancel := context.WithCancel(context.Background())
				cancelled := rnd.IntN(5) == 0
				if cancelled {
					n := rnd.IntN(8)
					go func() { yieldSome(n); cancel() }()
				}
				s := h.newScrape(fmt.Sprintf("%d-%d", i, j), fqdns[rnd.IntN(len(fqdns))])
				answer, err := h.Scrape(ctx, s)
				switch {
				case err == nil:
					body, readErr := io.ReadAll(answer.Response.Body)
					if readErr != nil || string(body) != s.ID {
						t.Errorf("scrape %s answered %q, %v", s.ID, body, readErr)
					}
					answer.Done(nil)
					answered.Add(1)
				case cancelled && errors.Is(err, ErrAbandoned):
					abandoned.Add(1)
				default:
					t.Errorf("scrape %s (cancelled: %v) = %v", s.ID, cancelled, err)
				}
				cancel()
			}
		})
	}
	scrapes.Wait()
	if st := h.Stats(); st.Queued != 0 || st.Inflight != 0 {
		t.Errorf("stats after every scrape ended = %+v, want nothing queued or in flight", st)
	}
	h.Shutdown()
	pollers.Wait()
	if err := h.Drain(context.Background()); err != nil {
		t.Errorf("Drain = %v", err)
	}
	if st := h.Stats(); st.Parked != 0 {
		t.Errorf("stats after shutdown = %+v, want no poll parked", st)
	}
	if answered.Load()+abandoned.Load() != scrapers*perScraper {
		t.Errorf("%d answered and %d abandoned of %d scrapes", answered.Load(), abandoned.Load(), scrapers*perScraper)
	}
	t.Logf("%d answered, %d abandoned; polls: %d pushed, %d undelivered, %d cut",
		answered.Load(), abandoned.Load(), delivered.Load(), undelivered.Load(), cut.Load())
}
