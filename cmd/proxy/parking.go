package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rancher/pushprox/internal/rendezvous"
)

// A poll parked in net/http holds, for as long as it waits (most of the
// time, for most clients), net/http's connection goroutine with its deep
// stack, about 11 KiB of buffers and the whole request. So a poll that is
// about to park leaves net/http: the proxy takes its connection over and
// keeps only the client's registration and two goroutines with shallow
// stacks, one waiting for work and one noticing a closed connection; it
// answers the poll itself, and hands the connection back to the HTTP
// server as the client's next request comes.

const (
	// detachedAnswerTimeout bounds writing an answer other than a scrape
	// to a detached poll, whose client should be reading; a scrape's own
	// deadline bounds writing a scrape.
	detachedAnswerTimeout = 10 * time.Second
	// resumedQueue is how many answered connections may wait for the HTTP
	// server to take them back; a full queue makes answering wait, which
	// only happens when the server is too busy to accept anything.
	resumedQueue = 64
	// lingerTimeout and maxLinger bound reading what a client sent out of
	// order before its connection closes: a close with unread bytes sends
	// a reset, which can destroy the answer on its way.
	lingerTimeout = 500 * time.Millisecond
	maxLinger     = 64 << 10
)

// aLongTimeAgo is a deadline that has passed: setting it stops a read.
var aLongTimeAgo = time.Unix(1, 0)

// detachedPolls are the polls parked outside net/http, and the way back
// into it for their connections.
type detachedPolls struct {
	// resumed hands connections whose poll was answered to the HTTP
	// server, which serves it as a listener.
	resumed *connQueue
	// serving is set once an HTTP server takes connections from resumed;
	// polls stay in net/http until then.
	serving atomic.Bool
	// idleTimeout bounds the wait for a client's next request; written
	// once, before serving is set.
	idleTimeout time.Duration

	mu sync.Mutex // guards conns and closed
	// conns are the connections of detached polls not yet handed back.
	conns  map[net.Conn]struct{}
	closed bool
	// running counts the goroutines of detached polls.
	running sync.WaitGroup
}

func newDetachedPolls() *detachedPolls {
	return &detachedPolls{
		resumed: newConnQueue(),
		conns:   map[net.Conn]struct{}{},
	}
}

// enable lets polls detach from now on, and returns the listener
// through which srv takes their connections back once they are answered.
// Serve it on srv, the server the polls come from; srv's IdleTimeout (or
// ReadTimeout) bounds how long an answered connection may wait for the
// client's next request, as for any connection kept alive. Call it once.
func (d *detachedPolls) enable(srv *http.Server) net.Listener {
	d.idleTimeout = cmp.Or(srv.IdleTimeout, srv.ReadTimeout)
	d.serving.Store(true)
	return d.resumed
}

// add records conn as a detached poll's; false if d is closed.
func (d *detachedPolls) add(conn net.Conn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.conns[conn] = struct{}{}
	d.running.Add(1)
	return true
}

// done ends conn's detached poll: when keep says so, the HTTP server
// takes conn back as the client's next request comes, if it still can;
// otherwise conn is closed, after what the client sent is read when
// linger says it sent something.
func (d *detachedPolls) done(conn net.Conn, keep, linger bool) {
	defer d.running.Done()
	// net/http gives a new connection only its ReadHeaderTimeout to send a
	// request, and one kept alive its IdleTimeout: the wait between two
	// requests happens here, so that the answered connection is the
	// latter.
	keep = keep && awaitRequest(conn, d.idleTimeout)
	d.mu.Lock()
	delete(d.conns, conn)
	d.mu.Unlock()
	if keep && d.resumed.put(conn) {
		return
	}
	if linger {
		closeAfterReading(conn)
		return
	}
	conn.Close()
}

// closeAfterReading closes conn once the client has had the time to read
// what it was sent, discarding what it sends meanwhile, within bounds.
func closeAfterReading(conn net.Conn) {
	if half, ok := conn.(interface{ CloseWrite() error }); ok && half.CloseWrite() == nil {
		_ = conn.SetReadDeadline(time.Now().Add(lingerTimeout))
		_, _ = io.Copy(io.Discard, io.LimitReader(conn, maxLinger))
	}
	conn.Close()
}

// close stops taking connections back, closes those of polls still
// detached, and waits until their goroutines end.
func (d *detachedPolls) close() {
	d.resumed.Close()
	d.mu.Lock()
	d.closed = true
	for conn := range d.conns {
		conn.Close()
	}
	d.mu.Unlock()
	d.running.Wait()
}

// detachedPoll is what a parked poll keeps once it left net/http.
type detachedPoll struct {
	conn   net.Conn
	client rendezvous.Client
	wait   time.Duration
	// header holds the headers set before the poll detached, such as
	// the web config's.
	header http.Header
	// keepAlive says whether the client may send another request on
	// conn after the answer.
	keepAlive bool
	started   time.Time
}

// detach takes r's connection out of net/http for the rest of the poll,
// and reports whether it did. After true, w and r are no longer used.
func (p *proxy) detach(w http.ResponseWriter, r *http.Request, client rendezvous.Client, wait time.Duration, started time.Time) bool {
	// A poll that asks not to wait is answered at once: nothing to gain.
	if !p.detached.serving.Load() || r.ProtoMajor != 1 || wait == 0 {
		return false
	}
	header := w.Header().Clone()
	conn, buffered, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	d := &detachedPoll{
		conn:      conn,
		client:    client,
		wait:      wait,
		header:    header,
		keepAlive: r.ProtoAtLeast(1, 1) && !r.Close,
		started:   started,
	}
	if !p.detached.add(conn) {
		// The proxy is closing.
		w := &connResponse{conn: conn, header: header}
		abandonPoll(w)
		_ = w.send()
		p.metrics.observeHTTP("/poll", w.status, started)
		conn.Close()
		return true
	}
	// Bytes after the poll's body, but for the line ends that HTTP/1.1
	// lets a client send after a body, are a request sent before the
	// poll was answered, which HTTP/1.1 has no order for here.
	pipelined := skipLineEnds(buffered.Reader)
	// Hijack leaves the server's deadlines, if it has any, in place.
	_ = conn.SetDeadline(time.Time{})
	go p.waitDetached(d, pipelined)
	return true
}

// skipLineEnds discards the CR and LF bytes buffered at the front of r,
// and reports whether anything else is buffered.
func skipLineEnds(r *bufio.Reader) bool {
	for r.Buffered() > 0 {
		b, _ := r.Peek(1)
		if b[0] != '\r' && b[0] != '\n' {
			return true
		}
		_, _ = r.Discard(1)
	}
	return false
}

// waitDetached parks d's poll and answers it.
func (p *proxy) waitDetached(d *detachedPoll, pipelined bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &connResponse{conn: d.conn, header: d.header}
	if !d.keepAlive {
		w.Header().Set("Connection", "close")
	}
	if pipelined {
		w.Header().Set("Connection", "close")
		httpError(w, http.StatusBadRequest, "bad poll: another request was sent before the poll's answer")
		p.finishDetached(d, w, true)
		return
	}
	stopWatching := watchConn(d.conn, cancel)
	work, err := p.hub.Poll(ctx, d.client, d.wait)
	ended := stopWatching()
	if ended != watchStopped && work != nil {
		// The client went away as its scrape came: another carrier takes it.
		work.Undelivered()
		work, err = nil, rendezvous.ErrPollGone
	}
	if ended != watchStopped {
		w.Header().Set("Connection", "close")
	}
	p.answerPoll(ctx, w, d.client, d.wait, work, err)
	p.finishDetached(d, w, ended == watchSentBytes)
}

// finishDetached sends w if the poll's answer did not, counts the poll,
// and ends it; linger says the client sent bytes that were not read.
func (p *proxy) finishDetached(d *detachedPoll, w *connResponse, linger bool) {
	if !w.sent {
		// A scrape was sent under its own deadline; anything else is
		// short, and its client should be reading.
		_ = d.conn.SetWriteDeadline(time.Now().Add(detachedAnswerTimeout))
	}
	err := w.send()
	p.metrics.observeHTTP("/poll", w.status, d.started)
	keep := err == nil && w.Header().Get("Connection") != "close"
	if keep {
		_ = d.conn.SetDeadline(time.Time{})
	}
	p.detached.done(d.conn, keep, linger && err == nil)
}

// How a watch of a parked poll's connection ended.
type watchEnd int

const (
	watchStopped   watchEnd = iota // stop was called
	watchClosed                    // the connection closed or failed
	watchSentBytes                 // the client sent something
)

// watchConn reads conn until it closes, the client sends anything but the
// line ends HTTP/1.1 allows between requests, or the returned stop is
// called, and cancels the poll's context in the first two cases. stop
// waits for the read to end and says how it did; conn can then be read
// again.
func watchConn(conn net.Conn, cancel context.CancelFunc) (stop func() watchEnd) {
	result := make(chan watchEnd, 1)
	go func() {
		var b [1]byte
		for {
			_, err := conn.Read(b[:])
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				// Only stop sets a read deadline while the poll is parked.
				result <- watchStopped
				return
			case err != nil:
				cancel()
				result <- watchClosed
				return
			case b[0] != '\r' && b[0] != '\n':
				cancel()
				result <- watchSentBytes
				return
			}
		}
	}()
	return func() watchEnd {
		_ = conn.SetReadDeadline(aLongTimeAgo)
		ended := <-result
		_ = conn.SetReadDeadline(time.Time{})
		return ended
	}
}
