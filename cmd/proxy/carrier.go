package main

// How a tunnel carries scrapes: its streams, kept for scrape after scrape
// within a memory budget, and the answers read from them.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/rancher/pushprox/internal/mux"
	"github.com/rancher/pushprox/internal/rendezvous"
	"github.com/rancher/pushprox/util"
)

// tunnel carries scrapes to a client on the streams of its session: one stream each, or,
// when the client speaks util.TunnelProtocolReuse, one after another on
// streams kept open between scrapes, which saves opening and closing a
// stream (three frames, each a write and a wake-up at both ends) per
// scrape.
type tunnel struct {
	session *mux.Session
	reuse   bool
	// idleLimit bounds the idle streams kept: the client's scrapes at
	// once, as the hub never carries more on one tunnel.
	idleLimit int
	// budget bounds the memory of the idle streams of all tunnels.
	budget *streamBudget
	// idleTimeout is how long a stream is kept idle.
	idleTimeout time.Duration

	mu   sync.Mutex
	idle []*tunnelStream // guarded by mu; the most recently used last
}

// tunnelStream is a stream and the reader of the answers on it.
type tunnelStream struct {
	stream  *mux.Stream
	answers *util.AnswerReader
	// cost is what the stream holds of the budget while idle.
	cost int64
	// expiry closes the stream once idle for the tunnel's idleTimeout.
	expiry *time.Timer
}

// defaultIdleStreamMemory bounds the memory held by the idle streams of
// all tunnels: about 8 000 streams; beyond, streams are closed after their
// scrape, as in util.TunnelProtocol.
const defaultIdleStreamMemory = 64 << 20

// defaultIdleStreamTimeout is how long an idle stream is kept: longer than
// common scrape intervals, so that a stream carries every scrape of its
// client, while one that stopped being scraped leaves the memory budget to
// others.
const defaultIdleStreamTimeout = 5 * time.Minute

// idleStreamOverhead is what an idle stream holds: the answer reader's
// buffer, the stream's and the proxy's state. A stream holds no received
// bytes once its answer was read (internal/mux gives them back).
const idleStreamOverhead int64 = 8 << 10

// streamBudget is memory that idle streams may hold.
type streamBudget struct {
	mu   sync.Mutex
	left int64 // guarded by mu
}

// take takes n bytes of the budget if it has them.
func (b *streamBudget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.left {
		return false
	}
	b.left -= n
	return true
}

// give gives n bytes back to the budget.
func (b *streamBudget) give(n int64) {
	b.mu.Lock()
	b.left += n
	b.mu.Unlock()
}

// Carry writes the scrape request on a stream, an idle one when there is
// one, and reads the answer's head. The answer's body ends the scrape on
// the stream: read to its end, it gives the stream back for another scrape.
func (t *tunnel) Carry(ctx context.Context, s *rendezvous.Scrape) (*http.Response, error) {
	for tries := 0; ; tries++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ts, reused, err := t.stream(tries < maxIdleStreamTries)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", rendezvous.ErrNotCarried, err)
		}
		resp, err := t.carryOn(ctx, s, ts)
		switch {
		case reused && (errors.Is(err, errStreamEnded) || errors.Is(err, errNotSent)):
			// The client closed the stream while it was idle (it is
			// stopping) and took no scrape on it: try another.
			continue
		case errors.Is(err, errNotSent):
			return nil, fmt.Errorf("%w: %v", rendezvous.ErrNotCarried, err)
		case errors.Is(err, errStreamEnded):
			// A client closes a new stream without an answer only when
			// it fails: it may have started on s.
			return nil, fmt.Errorf("client ended the tunnel stream without an answer: %w", io.ErrUnexpectedEOF)
		}
		return resp, err
	}
}

// maxIdleStreamTries bounds the idle streams a scrape is written on before
// a new one is opened: a stopping client closes its idle streams, and a new
// stream is then refused by its go-away, which sends the scrape elsewhere.
const maxIdleStreamTries = 2

// errStreamEnded says that a stream of a live tunnel ended before the first
// byte of an answer to a request written on it.
var errStreamEnded = errors.New("tunnel stream ended before an answer")

// errNotSent says that a request was not written on a stream because the
// stream was closed or reset: the client cannot have it.
var errNotSent = errors.New("tunnel stream closed before the request")

// carryOn carries s on ts.
func (t *tunnel) carryOn(ctx context.Context, s *rendezvous.Scrape, ts *tunnelStream) (*http.Response, error) {
	_ = ts.stream.SetDeadline(s.Deadline)
	if _, err := ts.stream.Write(s.Request); err != nil {
		ts.stream.Close()
		// A write that timed out, or failed as the session shut down, may
		// still have left.
		if errors.Is(err, mux.ErrStreamClosed) || errors.Is(err, mux.ErrStreamReset) || errors.Is(err, mux.ErrNotSent) {
			return nil, fmt.Errorf("%w: %v", errNotSent, err)
		}
		return nil, fmt.Errorf("sending the scrape on the tunnel: %w", err)
	}
	// Until the head is in, the wait ends with ctx; the body may then use
	// the scrape's full timeout.
	stop := context.AfterFunc(ctx, func() { _ = ts.stream.SetReadDeadline(time.Now()) })
	resp, err := ts.answers.Next()
	if !stop() || err != nil {
		ts.stream.Close()
		switch {
		case err == nil:
			resp.Body.Close()
			err = ctx.Err()
		case errors.Is(err, mux.ErrStreamRefused):
			// The client reset the stream before accepting it (it takes
			// no new streams, it is stopping, or has too many): it never
			// read the request.
			err = fmt.Errorf("%w: %v", errNotSent, err)
		case errors.Is(err, mux.ErrSessionClosed) || err == io.EOF && t.session.IsClosed():
			// The client may have started on s before its tunnel died.
			err = fmt.Errorf("tunnel closed before the answer: %w", io.ErrUnexpectedEOF)
		case err == io.EOF:
			err = errStreamEnded
		}
		return nil, err
	}
	if id := resp.Header.Get(util.HeaderID); id != s.ID {
		ts.stream.Close()
		resp.Body.Close()
		return nil, fmt.Errorf("answer names scrape %q, not %q", id, s.ID)
	}
	resp.Body = &streamBody{ReadCloser: resp.Body, tunnel: t, stream: ts, reusable: t.reuse && util.Delimited(resp)}
	return resp, nil
}

// stream returns an idle stream when idle ones may be used and there is
// one, or a new one, and whether it was idle.
func (t *tunnel) stream(idle bool) (*tunnelStream, bool, error) {
	for idle {
		ts := t.popIdle()
		if ts == nil {
			break
		}
		if ts.stream.Buffered() == 0 {
			return ts, true, nil
		}
		// The client sent on a stream that carried no request: not an
		// answer to anything, and memory the budget did not count.
		ts.stream.Close()
	}
	stream, err := t.session.Open()
	if err != nil {
		return nil, false, err
	}
	return &tunnelStream{stream: stream, answers: util.NewAnswerReader(stream)}, false, nil
}

// popIdle takes the most recently used idle stream, giving its memory back
// to the budget, or returns nil when none is idle.
func (t *tunnel) popIdle() *tunnelStream {
	t.mu.Lock()
	n := len(t.idle)
	if n == 0 {
		t.mu.Unlock()
		return nil
	}
	ts := t.idle[n-1]
	t.idle[n-1] = nil
	t.idle = t.idle[:n-1]
	// Taken from t.idle under t.mu, it is no longer the expiry's.
	ts.expiry.Stop()
	t.mu.Unlock()
	t.budget.give(ts.cost)
	ts.cost = 0
	return ts
}

// release keeps ts for another scrape, or closes it when enough are kept,
// the memory budget of idle streams is spent, or the tunnel is closed.
func (t *tunnel) release(ts *tunnelStream) {
	_ = ts.stream.SetDeadline(time.Time{})
	cost := idleStreamOverhead
	if !t.budget.take(cost) {
		ts.stream.Close()
		return
	}
	ts.cost = cost
	t.mu.Lock()
	if len(t.idle) < t.idleLimit && !t.session.IsClosed() {
		t.idle = append(t.idle, ts)
		kept := ts
		ts.expiry = time.AfterFunc(t.idleTimeout, func() { t.expire(kept) })
		ts = nil
	}
	t.mu.Unlock()
	if ts != nil {
		t.budget.give(ts.cost)
		ts.stream.Close()
	}
}

// expire closes ts if it is still idle, giving its memory to streams that
// scrape more often.
func (t *tunnel) expire(ts *tunnelStream) {
	t.mu.Lock()
	i := slices.Index(t.idle, ts)
	if i >= 0 {
		t.idle = slices.Delete(t.idle, i, i+1)
	}
	t.mu.Unlock()
	if i >= 0 {
		t.budget.give(ts.cost)
		ts.stream.Close()
	}
}

// closeIdle closes the idle streams once the tunnel is detached.
func (t *tunnel) closeIdle() {
	t.mu.Lock()
	idle := t.idle
	t.idle, t.idleLimit = nil, 0
	t.mu.Unlock()
	for _, ts := range idle {
		ts.expiry.Stop()
		t.budget.give(ts.cost)
		ts.stream.Close()
	}
}

// streamBody is an answer's body on a tunnel stream. Read to its end, it
// gives a reusable stream back to the tunnel at once, before the relay
// finishes the answer to Prometheus, which may then send its next scrape;
// closed before, it closes the stream first, so that closing the body does
// not wait for the rest of it.
type streamBody struct {
	io.ReadCloser
	tunnel   *tunnel
	stream   *tunnelStream
	reusable bool
	released bool // the stream went back to the tunnel, or was closed
}

func (b *streamBody) Read(p []byte) (int, error) {
	if b.released {
		return 0, io.EOF
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && b.reusable {
		b.released = true
		b.tunnel.release(b.stream)
	}
	return n, err
}

func (b *streamBody) Close() error {
	if b.released {
		return nil
	}
	b.released = true
	err := b.stream.stream.Close()
	b.ReadCloser.Close()
	return err
}
