package rendezvous

import (
	"context"
	"errors"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/rancher/pushprox/internal/testclock"
)

// TestMain checks that no test leaves a goroutine behind: every hub is
// closed and every Scrape, Poll and Deliver a test starts has returned.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait of a test, so that a hang fails instead of
// stalling the run.
const testTimeout = 10 * time.Second

// registrationTimeout is the registration timeout of the test hubs.
const registrationTimeout = 5 * time.Minute

// newFakeClock returns the hub's clock in tests: it moves only when told
// to.
func newFakeClock() *testclock.Clock {
	return testclock.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
}

// testHub is a Hub on a fake clock with its metrics in a registry of its
// own.
type testHub struct {
	*Hub
	clock   *testclock.Clock
	metrics *prometheus.Registry
}

// newTestHub returns a hub that keeps up to maxClients registrations and
// is closed when the test ends.
func newTestHub(t testing.TB, maxClients int) *testHub {
	t.Helper()
	clock := newFakeClock()
	reg := prometheus.NewRegistry()
	h := New(Config{RegistrationTimeout: registrationTimeout, MaxClients: maxClients, Now: clock.Now}, log.NewNopLogger(), reg)
	t.Cleanup(h.Close)
	return &testHub{Hub: h, clock: clock, metrics: reg}
}

// waitFor waits until cond holds, yielding between looks; it fails the
// test after testTimeout.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for i := 0; !cond(); i++ {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
		if i > 100 {
			// Other goroutines may need a CPU this one holds.
			time.Sleep(50 * time.Microsecond)
		}
	}
}

// waitStats waits until the hub's counts satisfy cond.
func (h *testHub) waitStats(t testing.TB, what string, cond func(Stats) bool) {
	t.Helper()
	var last Stats
	waitFor(t, what, func() bool {
		last = h.Stats()
		return cond(last)
	})
}

// result is what a call running in a goroutine of its own returned.
type result[T any] struct {
	v   T
	err error
}

// async runs f in a goroutine and returns a channel for its result.
func async[T any](f func() (T, error)) <-chan result[T] {
	ch := make(chan result[T], 1)
	go func() {
		v, err := f()
		ch <- result[T]{v, err}
	}()
	return ch
}

// await returns the result of a call started by async, failing the test
// if it does not come within testTimeout.
func await[T any](t testing.TB, what string, ch <-chan result[T]) (T, error) {
	t.Helper()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// pending fails the test if the call started by async has returned.
func pending[T any](t testing.TB, what string, ch <-chan result[T]) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s returned early: %v, %v", what, r.v, r.err)
	default:
	}
}

// client returns the client of fqdn with an identity of its own.
func client(fqdn string) Client {
	return Client{FQDN: fqdn, Identity: "id-" + fqdn}
}

// newScrape returns a scrape of fqdn named id.
func (h *testHub) newScrape(id, fqdn string) *Scrape {
	return &Scrape{ID: id, FQDN: fqdn, Request: []byte("request " + id), Deadline: h.clock.Now().Add(10 * time.Second)}
}

// startScrape runs Scrape in a goroutine.
func (h *testHub) startScrape(ctx context.Context, s *Scrape) <-chan result[*Answer] {
	return async(func() (*Answer, error) { return h.Scrape(ctx, s) })
}

// startPoll runs Poll in a goroutine, parked until work comes.
func (h *testHub) startPoll(ctx context.Context, c Client) <-chan result[*Work] {
	return async(func() (*Work, error) { return h.Poll(ctx, c, WaitForever) })
}

// park starts a poll of c and waits until it is parked.
func (h *testHub) park(t testing.TB, ctx context.Context, c Client) <-chan result[*Work] {
	t.Helper()
	before := h.Stats().Parked
	ch := h.startPoll(ctx, c)
	h.waitStats(t, "the poll of "+c.FQDN+" to park", func(st Stats) bool { return st.Parked == before+1 })
	return ch
}

// queue starts s and waits until it is queued.
func (h *testHub) queue(t testing.TB, ctx context.Context, s *Scrape) <-chan result[*Answer] {
	t.Helper()
	before := h.Stats().Queued
	ch := h.startScrape(ctx, s)
	h.waitStats(t, "scrape "+s.ID+" to queue", func(st Stats) bool { return st.Queued == before+1 })
	return ch
}

// register makes c known without a live carrier: a poll that finds no
// work at once.
func (h *testHub) register(t testing.TB, c Client) {
	t.Helper()
	if _, err := h.Poll(context.Background(), c, 0); err != ErrNoWork {
		t.Fatalf("registering %s: got %v, want ErrNoWork", c.FQDN, err)
	}
}

// response returns an answer of status 200 with body.
func response(body string) *http.Response {
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body))}
}

// readBody reads the body of an answer.
func readBody(t testing.TB, a *Answer) string {
	t.Helper()
	b, err := io.ReadAll(a.Response.Body)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	return string(b)
}

// deadlineCtx is a context whose deadline passes when the test says so,
// not on a clock: Expire ends it with context.DeadlineExceeded, Cancel with
// context.Canceled.
type deadlineCtx struct {
	context.Context
	once sync.Once
	done chan struct{}
	mu   sync.Mutex
	err  error
}

func newDeadlineCtx() *deadlineCtx {
	return &deadlineCtx{Context: context.Background(), done: make(chan struct{})}
}

func (c *deadlineCtx) Done() <-chan struct{} { return c.done }

func (c *deadlineCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *deadlineCtx) end(err error) {
	c.once.Do(func() {
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		close(c.done)
	})
}

// Expire ends the context as its deadline would.
func (c *deadlineCtx) Expire() { c.end(context.DeadlineExceeded) }

// Cancel ends the context as Prometheus going away would.
func (c *deadlineCtx) Cancel() { c.end(context.Canceled) }

// timeOutDelivered hands scrape id of c to a poll of c and lets the scrape
// time out before anything is pushed, so that id is an ended scrape's.
func (h *testHub) timeOutDelivered(t testing.TB, c Client, id string) {
	t.Helper()
	ctx := newDeadlineCtx()
	polled := h.park(t, context.Background(), c)
	scraped := h.startScrape(ctx, h.newScrape(id, c.FQDN))
	work, err := await(t, "Poll", polled)
	if err != nil {
		t.Fatalf("Poll: %v", err)
	}
	work.Delivered()
	ctx.Expire()
	if _, err := await(t, "Scrape", scraped); !errors.Is(err, ErrClientTimeout) {
		t.Fatalf("Scrape = %v, want ErrClientTimeout", err)
	}
}

// handOff runs a scrape of c to a poll of c until the push has claimed it:
// it returns the work, the claim and the waiting Scrape.
func (h *testHub) handOff(t testing.TB, ctx context.Context, c Client, id string) (*Work, *Claim, <-chan result[*Answer]) {
	t.Helper()
	polled := h.park(t, context.Background(), c)
	scraped := h.startScrape(ctx, h.newScrape(id, c.FQDN))
	work, err := await(t, "the poll", polled)
	if err != nil {
		t.Fatalf("Poll: %v", err)
	}
	work.Delivered()
	claim, err := h.Claim(work.ID, c.Identity)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	return work, claim, scraped
}
