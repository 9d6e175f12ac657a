package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// fakeTunnel is a Tunnel whose scrapes the test answers one by one: each
// Carry waits on calls until the test replies to it.
type fakeTunnel struct {
	calls chan *carryCall
	mu    sync.Mutex
	// running counts the Carry calls and answers not yet closed, and peak
	// is the most there ever were at once.
	running, peak int
}

// answeringTunnel is a Tunnel that answers every scrape at once with
// the same body.
type answeringTunnel struct{ body string }

func (a answeringTunnel) Carry(context.Context, *Scrape) (*http.Response, error) {
	return response(a.body), nil
}

// carryCall is one Carry waiting for its reply.
type carryCall struct {
	s     *Scrape
	ctx   context.Context
	reply chan carryReply
}

type carryReply struct {
	resp *http.Response
	err  error
}

func newFakeTunnel() *fakeTunnel {
	return &fakeTunnel{calls: make(chan *carryCall, 100)}
}

func (f *fakeTunnel) Carry(ctx context.Context, s *Scrape) (*http.Response, error) {
	f.mu.Lock()
	f.running++
	f.peak = max(f.peak, f.running)
	f.mu.Unlock()
	call := &carryCall{s: s, ctx: ctx, reply: make(chan carryReply, 1)}
	f.calls <- call
	select {
	case r := <-call.reply:
		if r.err != nil {
			f.end()
			return nil, r.err
		}
		r.resp.Body = &closeHook{ReadCloser: r.resp.Body, close: f.end}
		return r.resp, nil
	case <-ctx.Done():
		f.end()
		return nil, fmt.Errorf("stream: %w", ctx.Err())
	}
}

func (f *fakeTunnel) end() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running--
}

func (f *fakeTunnel) stats() (running, peak int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.running, f.peak
}

// next returns the next scrape the tunnel was asked to carry.
func (f *fakeTunnel) next(t testing.TB) *carryCall {
	t.Helper()
	v, _ := await(t, "a Carry", async(func() (*carryCall, error) { return <-f.calls, nil }))
	return v
}

// idle fails the test if a Carry is waiting for a reply.
func (f *fakeTunnel) idle(t testing.TB) {
	t.Helper()
	select {
	case call := <-f.calls:
		t.Fatalf("the tunnel was asked to carry %s", call.s.ID)
	default:
	}
}

func (c *carryCall) answer(body string) { c.reply <- carryReply{resp: response(body)} }
func (c *carryCall) fail(err error)     { c.reply <- carryReply{err: err} }

// closeHook calls close once the body is closed.
type closeHook struct {
	io.ReadCloser
	once  sync.Once
	close func()
}

func (c *closeHook) Close() error {
	c.once.Do(c.close)
	return c.ReadCloser.Close()
}

// finish reads and completes the answer of a scrape and checks its body.
func finish(t testing.TB, what string, ch <-chan result[*Answer], want string) {
	t.Helper()
	answer, err := await(t, what, ch)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if got := readBody(t, answer); got != want {
		t.Errorf("%s answered %q, want %q", what, got, want)
	}
	answer.Done(nil)
}

func attach(t testing.TB, h *testHub, c Client, tunnel Tunnel, capacity int) *Session {
	t.Helper()
	session, err := h.Attach(c, tunnel, capacity)
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	return session
}

func TestATunnelCarriesAScrape(t *testing.T) {
	h := newTestHub(t, 10)
	tunnel := newFakeTunnel()
	attach(t, h, client("Node1."), tunnel, 1)
	if st := h.Stats(); st.Tunnels != 1 || st.Clients != 1 {
		t.Fatalf("stats = %+v, want one tunnel and one client", st)
	}
	scraped := h.startScrape(context.Background(), h.newScrape("a", "node1"))
	call := tunnel.next(t)
	if call.s.ID != "a" || string(call.s.Request) != "request a" {
		t.Fatalf("carried %q %q, want scrape a", call.s.ID, call.s.Request)
	}
	call.answer("metrics")
	finish(t, "scrape a", scraped, "metrics")
	if running, _ := tunnel.stats(); running != 0 {
		t.Fatalf("%d scrapes still on the tunnel after Done, want the body closed", running)
	}
}

func TestAttachTakesQueuedScrapesFirst(t *testing.T) {
	h := newTestHub(t, 10)
	scrapedA := h.queue(t, context.Background(), h.newScrape("a", "node1"))
	scrapedB := h.queue(t, context.Background(), h.newScrape("b", "node1"))
	tunnel := newFakeTunnel()
	attach(t, h, client("node1"), tunnel, 1)
	callA := tunnel.next(t)
	if callA.s.ID != "a" {
		t.Fatalf("the tunnel carried %s first, want the oldest queued scrape a", callA.s.ID)
	}
	scrapedC := h.queue(t, context.Background(), h.newScrape("c", "node1"))
	callA.answer("a")
	finish(t, "scrape a", scrapedA, "a")
	callB := tunnel.next(t)
	if callB.s.ID != "b" {
		t.Fatalf("the tunnel carried %s next, want b, queued before c", callB.s.ID)
	}
	callB.answer("b")
	finish(t, "scrape b", scrapedB, "b")
	callC := tunnel.next(t)
	callC.answer("c")
	finish(t, "scrape c", scrapedC, "c")
}

func TestATunnelCarriesNoMoreThanItsCapacity(t *testing.T) {
	for _, capacity := range []int{1, 3} {
		t.Run(fmt.Sprintf("capacity %d", capacity), func(t *testing.T) {
			h := newTestHub(t, 10)
			tunnel := newFakeTunnel()
			attach(t, h, client("node1"), tunnel, capacity)
			const scrapes = 7
			scraped := map[string]<-chan result[*Answer]{}
			for i := range scrapes {
				id := fmt.Sprint("s", i)
				scraped[id] = h.startScrape(context.Background(), h.newScrape(id, "node1"))
			}
			h.waitStats(t, "the scrapes beyond the capacity to queue", func(st Stats) bool { return st.Queued == scrapes-capacity })
			// Answer them one at a time, oldest call first: each frees a
			// slot for one queued scrape.
			var calls []*carryCall
			for range capacity {
				calls = append(calls, tunnel.next(t))
			}
			for done := 0; done < scrapes; done++ {
				tunnel.idle(t)
				call := calls[0]
				calls = calls[1:]
				call.answer(call.s.ID)
				finish(t, "scrape "+call.s.ID, scraped[call.s.ID], call.s.ID)
				delete(scraped, call.s.ID)
				if len(scraped) > len(calls) {
					calls = append(calls, tunnel.next(t))
				}
			}
			if _, peak := tunnel.stats(); peak != capacity {
				t.Fatalf("at most %d scrapes on the tunnel at once, want %d", peak, capacity)
			}
		})
	}
}

func TestANotCarriedScrapeGoesToAnotherCarrier(t *testing.T) {
	for _, tc := range []struct {
		name string
		// other adds the other carrier after the refusing tunnel and
		// returns a function that answers the scrape on it.
		other func(t *testing.T, h *testHub) func(t *testing.T)
	}{
		{
			name: "a parked poll",
			other: func(t *testing.T, h *testHub) func(t *testing.T) {
				polled := h.park(t, context.Background(), client("node1"))
				return func(t *testing.T) {
					work, err := await(t, "Poll", polled)
					if err != nil {
						t.Fatalf("Poll: %v", err)
					}
					work.Delivered()
					claim, err := h.Claim(work.ID, client("node1").Identity)
					if err != nil {
						t.Fatalf("Claim: %v", err)
					}
					go func() { _ = claim.Deliver(response("other"), nil) }()
				}
			},
		},
		{
			name: "another tunnel",
			other: func(t *testing.T, h *testHub) func(t *testing.T) {
				tunnel := newFakeTunnel()
				attach(t, h, client("node1"), tunnel, 1)
				return func(t *testing.T) { tunnel.next(t).answer("other") }
			},
		},
		{
			name: "a poll that comes later",
			other: func(t *testing.T, h *testHub) func(t *testing.T) {
				return func(t *testing.T) {
					h.waitStats(t, "the refused scrape to queue", func(st Stats) bool { return st.Queued == 1 })
					work, err := h.Poll(context.Background(), client("node1"), WaitForever)
					if err != nil {
						t.Fatalf("Poll: %v", err)
					}
					work.Delivered()
					claim, err := h.Claim(work.ID, client("node1").Identity)
					if err != nil {
						t.Fatalf("Claim: %v", err)
					}
					go func() { _ = claim.Deliver(response("other"), nil) }()
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHub(t, 10)
			refusing := newFakeTunnel()
			attach(t, h, client("node1"), refusing, 1)
			carry := tc.other(t, h)
			scraped := h.startScrape(context.Background(), h.newScrape("a", "node1"))
			refusing.next(t).fail(fmt.Errorf("stream refused: %w", ErrNotCarried))
			carry(t)
			finish(t, "scrape a", scraped, "other")
			refusing.idle(t)
		})
	}
}

func TestAScrapeATunnelRefusedStaysQueuedWhenTheTunnelFreesASlot(t *testing.T) {
	h := newTestHub(t, 10)
	refusing := newFakeTunnel()
	attach(t, h, client("node1"), refusing, 1)
	scrapedA := h.startScrape(context.Background(), h.newScrape("a", "node1"))
	refusing.next(t).fail(fmt.Errorf("stream refused: %w", ErrNotCarried))
	h.waitStats(t, "the refused scrape to queue", func(st Stats) bool { return st.Queued == 1 })

	// The tunnel carries another scrape and frees its slot: the refused
	// one must stay queued for another carrier, not be dropped.
	scrapedB := h.startScrape(context.Background(), h.newScrape("b", "node1"))
	call := refusing.next(t)
	if call.s.ID != "b" {
		t.Fatalf("the refusing tunnel was offered %s again", call.s.ID)
	}
	call.answer("b")
	finish(t, "scrape b", scrapedB, "b")
	if st := h.Stats(); st.Queued != 1 {
		t.Fatalf("stats = %+v, want the refused scrape still queued", st)
	}
	work, err := h.Poll(context.Background(), client("node1"), 0)
	if err != nil {
		t.Fatalf("Poll = %v, want the refused scrape", err)
	}
	work.Delivered()
	claim, err := h.Claim("a", client("node1").Identity)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	go func() { _ = claim.Deliver(response("a"), nil) }()
	finish(t, "scrape a", scrapedA, "a")
}

func TestOtherTunnelErrorsLoseTheScrape(t *testing.T) {
	h := newTestHub(t, 10)
	tunnel := newFakeTunnel()
	attach(t, h, client("node1"), tunnel, 1)
	polled := h.park(t, context.Background(), client("node1"))
	scraped := h.startScrape(context.Background(), h.newScrape("a", "node1"))
	errReset := errors.New("connection reset")
	tunnel.next(t).fail(errReset)
	_, err := await(t, "Scrape", scraped)
	if !errors.Is(err, ErrClientLost) || !strings.Contains(err.Error(), errReset.Error()) {
		t.Fatalf("Scrape = %v, want ErrClientLost with the tunnel's error", err)
	}
	pending(t, "the parked poll", polled)
	// The slot is free again.
	scraped = h.startScrape(context.Background(), h.newScrape("b", "node1"))
	tunnel.next(t).answer("b")
	finish(t, "scrape b", scraped, "b")
	h.Shutdown()
	if _, err := await(t, "Poll", polled); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("Poll = %v, want ErrShuttingDown", err)
	}
}

func TestAScrapeAbandonedOnATunnelEndsAndFreesItsSlot(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(*deadlineCtx)
		want error
	}{
		{"Prometheus went away", (*deadlineCtx).Cancel, ErrAbandoned},
		{"the client did not answer in time", (*deadlineCtx).Expire, ErrClientTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHub(t, 10)
			tunnel := newFakeTunnel()
			attach(t, h, client("node1"), tunnel, 1)
			ctx := newDeadlineCtx()
			scraped := h.startScrape(ctx, h.newScrape("a", "node1"))
			tunnel.next(t)
			tc.end(ctx)
			if _, err := await(t, "Scrape", scraped); !errors.Is(err, tc.want) {
				t.Fatalf("Scrape = %v, want %v", err, tc.want)
			}
			scraped = h.startScrape(context.Background(), h.newScrape("b", "node1"))
			tunnel.next(t).answer("b")
			finish(t, "scrape b", scraped, "b")
		})
	}
}

func TestDetachStopsNewWorkButLetsRunningScrapesFinish(t *testing.T) {
	h := newTestHub(t, 10)
	tunnel := newFakeTunnel()
	session := attach(t, h, client("node1"), tunnel, 2)
	scrapedA := h.startScrape(context.Background(), h.newScrape("a", "node1"))
	callA := tunnel.next(t)
	session.Detach()
	session.Detach()
	if st := h.Stats(); st.Tunnels != 0 || st.Clients != 1 {
		t.Fatalf("stats after Detach = %+v, want no tunnel and the client still known", st)
	}
	scrapedB := h.queue(t, context.Background(), h.newScrape("b", "node1"))
	tunnel.idle(t)
	callA.answer("a")
	finish(t, "scrape a", scrapedA, "a")
	// The freed slot of a detached tunnel takes nothing.
	tunnel.idle(t)
	if st := h.Stats(); st.Queued != 1 {
		t.Fatalf("stats = %+v, want b still queued", st)
	}
	other := newFakeTunnel()
	attach(t, h, client("node1"), other, 1)
	other.next(t).answer("b")
	finish(t, "scrape b", scrapedB, "b")
}

func TestTunnelsArePreferredOverParkedPolls(t *testing.T) {
	h := newTestHub(t, 10)
	polled := h.park(t, context.Background(), client("node1"))
	tunnel := newFakeTunnel()
	attach(t, h, client("node1"), tunnel, 1)
	scraped := h.startScrape(context.Background(), h.newScrape("a", "node1"))
	tunnel.next(t).answer("tunnel")
	finish(t, "scrape a", scraped, "tunnel")
	pending(t, "the parked poll", polled)
	h.Shutdown()
	if _, err := await(t, "Poll", polled); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("Poll = %v, want ErrShuttingDown", err)
	}
}

func TestTheLeastBusyTunnelTakesTheScrape(t *testing.T) {
	h := newTestHub(t, 10)
	busy, free := newFakeTunnel(), newFakeTunnel()
	attach(t, h, client("node1"), busy, 2)
	scrapedA := h.startScrape(context.Background(), h.newScrape("a", "node1"))
	callA := busy.next(t)
	attach(t, h, client("node1"), free, 2)
	scrapedB := h.startScrape(context.Background(), h.newScrape("b", "node1"))
	free.next(t).answer("b")
	finish(t, "scrape b", scrapedB, "b")
	callA.answer("a")
	finish(t, "scrape a", scrapedA, "a")
}
