package mux

import (
	"errors"
	"io"
	"math"
	"testing"
	"time"
)

// The tests here speak to a session through a rawPeer, which sends what
// this package's own sessions never do: resets, broken frames, floods.

// rawServer starts a Server on one end of a net.Pipe and a rawPeer on the
// other.
func rawServer(t testing.TB, cfg Config, read bool) (*Session, *rawPeer) {
	t.Helper()
	a, b := pipeConns(t)
	s := Server(b, cfg)
	t.Cleanup(func() { s.Close() })
	return s, newRawPeer(t, a, read)
}

// synFrame opens stream id with a window update.
func synFrame(id uint32) header { return makeHeader(typeWindowUpdate, flagSYN, id, 0) }

func TestAPeersResetGivesErrStreamResetToReadsAndWrites(t *testing.T) {
	for _, withData := range []bool{false, true} {
		name := "no data buffered"
		if withData {
			name = "data buffered"
		}
		t.Run(name, func(t *testing.T) {
			s, p := rawServer(t, Config{}, true)
			p.write(t, synFrame(1), nil)
			st := accept(t, s)
			p.next(t, "the ACK", func(h header) bool { return h.streamID() == 1 && h.has(flagACK) })
			_ = st.SetDeadline(time.Now().Add(waitTimeout))
			if withData {
				p.write(t, makeHeader(typeData, 0, 1, 3), []byte("abc"))
				eventually(t, "the data buffered", func() bool {
					st.mu.Lock()
					defer st.mu.Unlock()
					return st.buffered == 3
				})
			}
			// Without data, a Read waits for the reset.
			pending := make(chan error, 1)
			if !withData {
				go func() {
					_, err := st.Read(make([]byte, 1))
					pending <- err
				}()
				waitBlockedIn(t, "mux.(*Stream).Read", 1)
			}
			p.write(t, makeHeader(typeWindowUpdate, flagRST, 1, 0), nil)
			if !withData {
				if err := <-pending; !errors.Is(err, ErrStreamReset) {
					t.Fatalf("a pending Read: %v, want ErrStreamReset", err)
				}
			}
			eventually(t, "the session forgets the stream", func() bool { return numStreams(s) == 0 })
			if _, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrStreamReset) {
				t.Fatalf("Read: %v, want ErrStreamReset", err)
			}
			if _, err := st.Write([]byte("x")); !errors.Is(err, ErrStreamReset) {
				t.Fatalf("Write: %v, want ErrStreamReset", err)
			}
			if s.IsClosed() {
				t.Fatalf("the session closed: %v", s.Err())
			}
		})
	}
}

func TestAfterOurGoAwayNewInboundStreamsAreResetWhileOpenOnesGoOn(t *testing.T) {
	s, p := rawServer(t, Config{}, true)
	p.write(t, synFrame(1), nil)
	st := accept(t, s)
	_ = st.SetDeadline(time.Now().Add(waitTimeout))
	if err := s.GoAway(); err != nil {
		t.Fatal(err)
	}
	g := p.next(t, "the go-away", func(h header) bool { return h.typ() == typeGoAway })
	if g.h.length() != goAwayNormal {
		t.Fatalf("go-away code %d, want %d", g.h.length(), goAwayNormal)
	}
	p.write(t, synFrame(3), nil)
	p.next(t, "the reset of the new stream", isRST(3))
	if n := numStreams(s); n != 1 {
		t.Fatalf("the session holds %d streams, want 1", n)
	}
	// The stream opened before the go-away goes on, both ways.
	p.write(t, makeHeader(typeData, 0, 1, 2), []byte("on"))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "on" {
		t.Fatalf("Read: %q, %v", buf, err)
	}
	if _, err := st.Write([]byte("still")); err != nil {
		t.Fatal(err)
	}
	f := p.next(t, "the stream's data", func(h header) bool { return h.typ() == typeData && h.streamID() == 1 })
	if string(f.body) != "still" {
		t.Fatalf("the peer got %q, want \"still\"", f.body)
	}
}

func TestPingsFromThePeerAreAnsweredWithTheirValue(t *testing.T) {
	_, p := rawServer(t, Config{}, true)
	for _, id := range []uint32{0, 42, math.MaxUint32} {
		p.write(t, makeHeader(typePing, flagSYN, 0, id), nil)
		f := p.next(t, "the pong", func(h header) bool { return h.typ() == typePing })
		if !f.h.has(flagACK) || f.h.length() != id {
			t.Fatalf("the answer to ping %d is %v", id, f.h)
		}
	}
}

func TestABrokenFrameFromThePeerClosesTheSession(t *testing.T) {
	badVersion := makeHeader(typePing, flagSYN, 0, 1)
	badVersion[0] = protocolVersion + 1
	cases := []struct {
		name   string
		client bool // the session under test is a Client
		frames []frame
		want   error
	}{
		{"a bad version", false, []frame{{h: badVersion}}, ErrProtocol},
		{"an unknown frame type", false, []frame{{h: makeHeader(typeGoAway+1, 0, 0, 0)}}, ErrProtocol},
		{"a ping on a stream", false, []frame{{h: makeHeader(typePing, flagSYN, 1, 0)}}, ErrProtocol},
		{"a go-away on a stream", false, []frame{{h: makeHeader(typeGoAway, 0, 1, 0)}}, ErrProtocol},
		{"data on stream 0", false, []frame{{h: makeHeader(typeData, 0, 0, 1), body: []byte("x")}}, ErrProtocol},
		{"data beyond the window", false, []frame{
			{h: synFrame(1)},
			{h: makeHeader(typeData, 0, 1, initialWindow+1), body: make([]byte, initialWindow+1)},
		}, ErrProtocol},
		{"data beyond the window in two frames", false, []frame{
			{h: synFrame(1)},
			{h: makeHeader(typeData, 0, 1, initialWindow-10), body: make([]byte, initialWindow-10)},
			{h: makeHeader(typeData, 0, 1, 11), body: make([]byte, 11)},
		}, ErrProtocol},
		{"a SYN opened twice", false, []frame{{h: synFrame(1)}, {h: synFrame(1)}}, ErrProtocol},
		{"a SYN with a server's ID parity to a server", false, []frame{{h: synFrame(2)}}, ErrProtocol},
		{"a SYN with a client's ID parity to a client", true, []frame{{h: synFrame(1)}}, ErrProtocol},
		{"a window beyond 4 GiB", false, []frame{{h: makeHeader(typeWindowUpdate, flagSYN, 1, math.MaxUint32)}}, ErrProtocol},
		{"a go-away for a protocol error", false, []frame{{h: makeHeader(typeGoAway, 0, 0, goAwayProtocolError)}}, ErrSessionClosed},
		{"a go-away for an internal error", false, []frame{{h: makeHeader(typeGoAway, 0, 0, goAwayInternalError)}}, ErrSessionClosed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pipeConns(t)
			var s *Session
			if tc.client {
				s = Client(b, Config{})
			} else {
				s = Server(b, Config{})
			}
			t.Cleanup(func() { s.Close() })
			p := newRawPeer(t, a, true)
			var raw []byte
			for _, f := range tc.frames {
				raw = append(append(raw, f.h[:]...), f.body...)
			}
			// The session may close before it read all: the write then fails.
			_ = p.conn.SetWriteDeadline(time.Now().Add(waitTimeout))
			_, _ = p.conn.Write(raw)
			err := waitClosed(t, s)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Err: %v, want %v", err, tc.want)
			}
			if tc.want == ErrProtocol {
				// The peer is told why, before the close.
				g := p.next(t, "the go-away", func(h header) bool { return h.typ() == typeGoAway })
				if g.h.length() != goAwayProtocolError {
					t.Fatalf("go-away code %d, want %d", g.h.length(), goAwayProtocolError)
				}
			}
		})
	}
}

func TestDataForAnUnknownStreamIsDroppedAndTheSessionGoesOn(t *testing.T) {
	s, p := rawServer(t, Config{}, true)
	p.write(t, makeHeader(typeData, 0, 5, 1000), payload(1000, 5))
	p.write(t, makeHeader(typeData, flagFIN, 7, 10), payload(10, 7))
	p.write(t, makeHeader(typeWindowUpdate, 0, 9, 100), nil)
	p.write(t, makeHeader(typeWindowUpdate, flagRST, 11, 0), nil)
	// A stream that was refused is unknown too.
	p.write(t, synFrame(13), nil)
	p.write(t, makeHeader(typeData, 0, 1, 5), []byte("hello"))
	p.write(t, synFrame(1), nil)
	p.write(t, makeHeader(typeData, 0, 1, 5), []byte("hello"))
	first := accept(t, s)
	if first.ID() != 13 {
		t.Fatalf("accepted stream %d first, want 13", first.ID())
	}
	st := accept(t, s)
	_ = st.SetReadDeadline(time.Now().Add(waitTimeout))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("Read: %q, %v; want \"hello\"", buf, err)
	}
	if s.IsClosed() {
		t.Fatalf("the session closed: %v", s.Err())
	}
}

func TestAPingFloodFromAPeerThatNeverReadsEndsTheSession(t *testing.T) {
	t.Run("while a writer holds the write lock", func(t *testing.T) {
		s, p := rawServer(t, Config{}, false)
		// A writer that the peer does not read holds the write lock, so
		// that the pongs pile up.
		opened := make(chan *Stream, 1)
		go func() {
			st, err := s.Open()
			if err != nil {
				close(opened)
				return
			}
			opened <- st
		}()
		var h header
		_ = p.conn.SetReadDeadline(time.Now().Add(waitTimeout))
		if _, err := io.ReadFull(p.conn, h[:]); err != nil || !h.has(flagSYN) {
			t.Fatalf("reading the SYN: %v, %v", h, err)
		}
		st, ok := <-opened
		if !ok {
			t.Fatal("Open failed")
		}
		written := make(chan error, 1)
		go func() {
			_, err := st.Write(make([]byte, initialWindow))
			written <- err
		}()
		if _, err := io.ReadFull(p.conn, h[:]); err != nil || h.typ() != typeData {
			t.Fatalf("reading the data frame's header: %v, %v", h, err)
		}
		// The writer is now blocked in the middle of its frame.
		sent := floodPings(p)
		if err := waitClosed(t, s); !errors.Is(err, ErrProtocol) {
			t.Fatalf("Err after %d pings: %v, want ErrProtocol", sent, err)
		}
		// A write to net.Pipe returns once it was read: the session read
		// one ping more than it can queue pongs for, and closed.
		if want := maxPendingControl/headerSize + 1; sent != want {
			t.Fatalf("the session took %d pings, want %d", sent, want)
		}
		if err := <-written; !errors.Is(err, ErrSessionClosed) {
			t.Fatalf("the blocked Write: %v, want ErrSessionClosed", err)
		}
	})
	t.Run("while the session answers alone", func(t *testing.T) {
		// The first pongs block on the peer; the session's own pings go
		// unanswered, or the pongs pile up behind the blocked ones.
		s, p := rawServer(t, Config{PingInterval: 20 * time.Millisecond, PingTimeout: 100 * time.Millisecond}, false)
		sent := floodPings(p)
		err := waitClosed(t, s)
		if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrPingTimeout) {
			t.Fatalf("Err after %d pings: %v, want ErrProtocol or ErrPingTimeout", sent, err)
		}
		// The goroutine sending pongs holds one queue's worth while the
		// peer does not read them; the queue fills once more.
		if limit := 2*maxPendingControl/headerSize + 2; sent > limit {
			t.Fatalf("the session took %d pings, more than %d", sent, limit)
		}
	})
}

// floodPings sends pings until the session takes no more, and returns how
// many it took.
func floodPings(p *rawPeer) int {
	sent := 0
	for ; sent < 100*maxPendingControl/headerSize; sent++ {
		if p.tryWrite(makeHeader(typePing, flagSYN, 0, uint32(sent)), nil) != nil {
			break
		}
	}
	return sent
}

func TestEveryPendingCallReturnsWhenTheStreamEnds(t *testing.T) {
	const pending = 3
	read := func(st *Stream) error {
		_, err := st.Read(make([]byte, 1))
		return err
	}
	write := func(st *Stream) error {
		// Beyond the window, which the peer never grants back.
		_, err := st.Write(make([]byte, initialWindow+1))
		return err
	}
	cases := []struct {
		name string
		call func(*Stream) error
		fn   string // where call waits
		end  func(*testing.T, *Stream, *rawPeer)
		want error
	}{
		{"reads when the peer closes it", read, "mux.(*Stream).Read", func(t *testing.T, _ *Stream, p *rawPeer) {
			p.write(t, makeHeader(typeWindowUpdate, flagFIN, 1, 0), nil)
		}, io.EOF},
		{"reads when the peer resets it", read, "mux.(*Stream).Read", func(t *testing.T, _ *Stream, p *rawPeer) {
			p.write(t, makeHeader(typeWindowUpdate, flagRST, 1, 0), nil)
		}, ErrStreamReset},
		{"reads when this end closes it", read, "mux.(*Stream).Read", func(_ *testing.T, st *Stream, _ *rawPeer) { st.Close() }, ErrStreamClosed},
		{"writes when the peer resets it", write, "mux.(*Stream).Write", func(t *testing.T, _ *Stream, p *rawPeer) {
			p.write(t, makeHeader(typeWindowUpdate, flagRST, 1, 0), nil)
		}, ErrStreamReset},
		{"writes when this end closes it", write, "mux.(*Stream).Write", func(_ *testing.T, st *Stream, _ *rawPeer) { st.Close() }, ErrStreamClosed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, p := rawServer(t, Config{}, true)
			p.write(t, synFrame(1), nil)
			st := accept(t, s)
			// A call left waiting ends at its deadline, which the test
			// then reports.
			_ = st.SetDeadline(time.Now().Add(5 * time.Second))
			results := make(chan error, pending)
			for range pending {
				go func() { results <- tc.call(st) }()
			}
			waitBlockedIn(t, tc.fn, pending)
			tc.end(t, st, p)
			for range pending {
				if err := <-results; !errors.Is(err, tc.want) {
					t.Fatalf("a pending call returned %v, want %v", err, tc.want)
				}
			}
		})
	}
}

func TestConcurrentReadsShareWhatArrivesWithoutWaitingForMore(t *testing.T) {
	s, p := rawServer(t, Config{}, true)
	p.write(t, synFrame(1), nil)
	st := accept(t, s)
	// A read left waiting ends at its deadline, which the test reports.
	_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
	const readers = 3
	results := make(chan error, readers)
	for range readers {
		go func() {
			_, err := st.Read(make([]byte, 1))
			results <- err
		}()
	}
	waitBlockedIn(t, "mux.(*Stream).Read", readers)
	// One frame, a byte for each reader.
	p.write(t, makeHeader(typeData, 0, 1, readers), []byte("abc"))
	for range readers {
		if err := <-results; err != nil {
			t.Fatalf("a Read: %v, want a byte", err)
		}
	}
}

func TestConcurrentWritesShareAGrantWithoutWaitingForMore(t *testing.T) {
	s, p := rawServer(t, Config{}, true)
	p.write(t, synFrame(1), nil)
	st := accept(t, s)
	// A write left waiting ends at its deadline, which the test reports.
	_ = st.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := st.Write(make([]byte, initialWindow)); err != nil {
		t.Fatal(err)
	}
	const writers = 3
	results := make(chan error, writers)
	for range writers {
		go func() {
			_, err := st.Write([]byte("x"))
			results <- err
		}()
	}
	waitBlockedIn(t, "mux.(*Stream).Write", writers)
	// One grant, a byte for each writer.
	p.write(t, makeHeader(typeWindowUpdate, 0, 1, writers), nil)
	for range writers {
		if err := <-results; err != nil {
			t.Fatalf("a Write: %v, want it written", err)
		}
	}
}

func TestAcceptAfterOurGoAwayReturnsTheStreamsOpenedBeforeItThenErrLocalGoAway(t *testing.T) {
	s, p := rawServer(t, Config{}, true)
	p.write(t, synFrame(1), nil)
	eventually(t, "the stream queued", func() bool { return numStreams(s) == 1 })
	if err := s.GoAway(); err != nil {
		t.Fatal(err)
	}
	if st := accept(t, s); st.ID() != 1 {
		t.Fatalf("accepted stream %d, want 1, opened before the go-away", st.ID())
	}
	if st, err := s.Accept(); !errors.Is(err, ErrLocalGoAway) {
		t.Fatalf("Accept after the go-away and its streams: %v, %v; want ErrLocalGoAway", st, err)
	}
}

func TestAStreamThePeerResetsBeforeAcceptingItWasRefused(t *testing.T) {
	for _, acked := range []bool{false, true} {
		name := "reset without an ACK"
		if acked {
			name = "reset after the ACK"
		}
		t.Run(name, func(t *testing.T) {
			// Our end opens the streams: the raw peer plays the server.
			a, b := pipeConns(t)
			s := Client(b, Config{})
			t.Cleanup(func() { s.Close() })
			p := newRawPeer(t, a, true)
			st, err := s.Open()
			if err != nil {
				t.Fatal(err)
			}
			p.next(t, "the SYN", func(h header) bool { return h.streamID() == st.ID() && h.has(flagSYN) })
			if acked {
				p.write(t, makeHeader(typeWindowUpdate, flagACK, st.ID(), 0), nil)
			}
			p.write(t, makeHeader(typeWindowUpdate, flagRST, st.ID(), 0), nil)
			_ = st.SetReadDeadline(time.Now().Add(waitTimeout))
			_, err = st.Read(make([]byte, 1))
			if !errors.Is(err, ErrStreamReset) || errors.Is(err, ErrStreamRefused) != !acked {
				t.Errorf("Read: %v; want ErrStreamReset, and ErrStreamRefused only without the ACK", err)
			}
		})
	}
}
