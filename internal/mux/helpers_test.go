package mux

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait of the tests: generous, because they run
// under the race detector on a loaded machine, and never reached when the
// code works.
const waitTimeout = 20 * time.Second

// pipeConns returns the two ends of a net.Pipe, closed at the end of t.
func pipeConns(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// tcpConns returns the two ends of a TCP connection on the loopback
// interface, closed at the end of t.
func tcpConns(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	acceptErr := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			acceptErr <- err
			return
		}
		accepted <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	select {
	case b := <-accepted:
		t.Cleanup(func() { b.Close() })
		return a, b
	case err := <-acceptErr:
		t.Fatal(err)
	case <-time.After(waitTimeout):
		t.Fatal("the listener accepted no connection")
	}
	return nil, nil
}

// transports are the connections sessions are tested on.
var transports = []struct {
	name  string
	conns func(testing.TB) (net.Conn, net.Conn)
}{
	{"net.Pipe", pipeConns},
	{"TCP", tcpConns},
}

// newSessions starts a client and a server session on the two ends of a
// connection, closed at the end of t.
func newSessions(t testing.TB, a, b net.Conn, clientCfg, serverCfg Config) (client, server *Session) {
	t.Helper()
	client = Client(a, clientCfg)
	server = Server(b, serverCfg)
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// pipeSessions starts a client and a server session over net.Pipe.
func pipeSessions(t testing.TB, clientCfg, serverCfg Config) (client, server *Session) {
	t.Helper()
	a, b := pipeConns(t)
	return newSessions(t, a, b, clientCfg, serverCfg)
}

// openPair opens a stream from opener and accepts it at accepter.
func openPair(t testing.TB, opener, accepter *Session) (opened, accepted *Stream) {
	t.Helper()
	opened, err := opener.Open()
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { opened.Close() })
	accepted = accept(t, accepter)
	if accepted.ID() != opened.ID() {
		t.Fatalf("accepted stream %d, opened %d", accepted.ID(), opened.ID())
	}
	return opened, accepted
}

// accept accepts a stream at s, failing t if none comes in time.
func accept(t testing.TB, s *Session) *Stream {
	t.Helper()
	type result struct {
		st  *Stream
		err error
	}
	ch := make(chan result, 1)
	go func() {
		st, err := s.Accept()
		ch <- result{st, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Accept: %v", r.err)
		}
		t.Cleanup(func() { r.st.Close() })
		return r.st
	case <-time.After(waitTimeout):
		// Closing the session ends the Accept left waiting.
		s.Close()
		<-ch
		t.Fatal("no stream to accept")
	}
	return nil
}

// payload returns n bytes that differ from one offset and seed to the
// next, so that a misplaced byte shows.
func payload(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7+i>>8) ^ seed
	}
	return p
}

// within runs f in a goroutine and returns its error, failing t if it
// does not return in time.
func within(t testing.TB, what string, f func() error) error {
	t.Helper()
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	select {
	case err := <-ch:
		return err
	case <-time.After(waitTimeout):
		t.Fatalf("%s did not return in time", what)
		return nil
	}
}

// eventually polls cond until it holds, for conditions with nothing to
// wait on, failing t if it does not hold in time.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	timeout := time.After(waitTimeout)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("%s: not in time", what)
		}
	}
}

// waitClosed waits for s to close and returns its error.
func waitClosed(t testing.TB, s *Session) error {
	t.Helper()
	select {
	case <-s.Done():
		return s.Err()
	case <-time.After(waitTimeout):
		t.Fatal("the session did not close")
		return nil
	}
}

// numStreams returns how many streams s holds.
func numStreams(s *Session) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// checkSame fails t unless got is want, byte for byte.
func checkSame(t testing.TB, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	if len(got) != len(want) {
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("byte %d of %d: got %#x, want %#x", i, len(want), got[i], want[i])
		}
	}
}

// frame is one frame read by a rawPeer.
type frame struct {
	h    header
	body []byte
}

// rawPeer is a hand-written peer: it writes frames made with makeHeader,
// and collects the frames the session sends.
type rawPeer struct {
	conn   net.Conn
	frames chan frame // what the session sent, in order
	done   chan struct{}
}

// newRawPeer returns a peer on conn that reads what the session sends
// unless read is false, closed at the end of t.
func newRawPeer(t testing.TB, conn net.Conn, read bool) *rawPeer {
	t.Helper()
	p := &rawPeer{conn: conn, frames: make(chan frame, 4096), done: make(chan struct{})}
	if !read {
		close(p.done)
		t.Cleanup(func() { conn.Close() })
		return p
	}
	go p.read()
	t.Cleanup(func() {
		conn.Close()
		<-p.done
	})
	return p
}

func (p *rawPeer) read() {
	defer close(p.done)
	defer close(p.frames)
	for {
		var f frame
		if _, err := io.ReadFull(p.conn, f.h[:]); err != nil {
			return
		}
		if f.h.typ() == typeData && f.h.length() > 0 {
			f.body = make([]byte, f.h.length())
			if _, err := io.ReadFull(p.conn, f.body); err != nil {
				return
			}
		}
		select {
		case p.frames <- f:
		default:
			// A test that lets this many frames pile up reads none of them.
		}
	}
}

// write writes one frame to the session, failing t if it cannot.
func (p *rawPeer) write(t testing.TB, h header, body []byte) {
	t.Helper()
	if err := p.tryWrite(h, body); err != nil {
		t.Fatalf("writing %v: %v", h, err)
	}
}

// tryWrite writes one frame to the session within waitTimeout.
func (p *rawPeer) tryWrite(h header, body []byte) error {
	_ = p.conn.SetWriteDeadline(time.Now().Add(waitTimeout))
	_, err := p.conn.Write(append(h[:], body...))
	return err
}

// next returns the next frame from the session that match accepts,
// skipping the others.
func (p *rawPeer) next(t testing.TB, what string, match func(header) bool) frame {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case f, ok := <-p.frames:
			if !ok {
				t.Fatalf("waiting for %s: the session sent no more", what)
			}
			if match(f.h) {
				return f
			}
		case <-timeout:
			t.Fatalf("waiting for %s: none came", what)
		}
	}
}

// isRST matches a reset of stream id.
func isRST(id uint32) func(header) bool {
	return func(h header) bool { return h.streamID() == id && h.has(flagRST) }
}

// recordingConn is a net.Conn that reports the size of each Read asked
// for and its outcome, so that a test sees how the session reads.
type recordingConn struct {
	net.Conn
	mu    sync.Mutex
	reads []readRecord
	added chan struct{} // signalled on each new record
}

type readRecord struct {
	size, n int
	err     error
}

func newRecordingConn(c net.Conn) *recordingConn {
	return &recordingConn{Conn: c, added: make(chan struct{}, 1)}
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.reads = append(c.reads, readRecord{len(p), n, err})
	c.mu.Unlock()
	select {
	case c.added <- struct{}{}:
	default:
	}
	return n, err
}

// waitRead waits for a Read from index from on that match accepts and
// returns the index after it.
func (c *recordingConn) waitRead(t testing.TB, what string, from int, match func(readRecord) bool) int {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		c.mu.Lock()
		reads := c.reads[from:]
		c.mu.Unlock()
		for i, r := range reads {
			if match(r) {
				return from + i + 1
			}
		}
		from += len(reads)
		select {
		case <-c.added:
		case <-timeout:
			t.Fatalf("waiting for %s: none came", what)
		}
	}
}

// isTimeout reports whether err is a deadline's.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// waitBlockedIn waits until n goroutines are blocked in a select inside
// function fn (a name as in a stack trace): a call that is pending has
// nothing else to show for it.
func waitBlockedIn(t testing.TB, fn string, n int) {
	t.Helper()
	buf := make([]byte, 1<<20)
	eventually(t, fmt.Sprintf("%d calls pending in %s", n, fn), func() bool {
		stacks := string(buf[:runtime.Stack(buf, true)])
		count := 0
		for _, g := range strings.Split(stacks, "\n\n") {
			// The first line is the goroutine's state, the second its
			// innermost function, runtime's left out.
			lines := strings.SplitN(g, "\n", 3)
			if len(lines) >= 2 && strings.Contains(lines[0], "[select") && strings.Contains(lines[1], fn+"(") {
				count++
			}
		}
		return count >= n
	})
}

// collect takes n results from errs, reporting each error, and fails the
// test if they do not all come within waitTimeout.
func collect(t *testing.T, errs <-chan error, n int) {
	t.Helper()
	timeout := time.After(waitTimeout)
	for range n {
		select {
		case err := <-errs:
			if err != nil {
				t.Error(err)
			}
		case <-timeout:
			t.Fatal("the streams did not finish in time")
		}
	}
}
