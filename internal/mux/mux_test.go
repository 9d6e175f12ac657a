package mux

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// echoStreams accepts n streams at s and echoes size bytes on each, then
// waits for the peer's FIN and closes the stream.
func echoStreams(s *Session, n, size int, errs chan<- error) {
	for range n {
		st, err := s.Accept()
		if err != nil {
			errs <- fmt.Errorf("Accept: %w", err)
			continue
		}
		go func() {
			defer st.Close()
			_ = st.SetDeadline(time.Now().Add(waitTimeout))
			if _, err := io.CopyN(st, st, int64(size)); err != nil {
				errs <- fmt.Errorf("stream %d echoing: %w", st.ID(), err)
				return
			}
			if n, err := st.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				errs <- fmt.Errorf("stream %d after the echo: read %d, %v, want io.EOF", st.ID(), n, err)
				return
			}
			errs <- nil
		}()
	}
}

// roundTrip opens a stream at s, sends want on it while reading the echo,
// checks the echo byte for byte and closes the stream.
func roundTrip(s *Session, want []byte) error {
	open, _, _, _ := streamMakers(s, nil)
	return echoOnce(open, want)
}

func TestManyStreamsRoundTripBothWaysBeyondTheWindow(t *testing.T) {
	const streams = 6
	// Half a window more than the window, and odd, so that frames split.
	const size = initialWindow*3/2 + 7
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			a, b := tr.conns(t)
			client, server := newSessions(t, a, b, Config{}, Config{})
			errs := make(chan error, 4*streams)
			go echoStreams(server, streams, size, errs)
			go echoStreams(client, streams, size, errs)
			for i := range streams {
				go func() { errs <- roundTrip(client, payload(size, byte(i))) }()
				go func() { errs <- roundTrip(server, payload(size, byte(100+i))) }()
			}
			collect(t, errs, 4*streams)
			eventually(t, "both sessions forget the closed streams", func() bool {
				return numStreams(client) == 0 && numStreams(server) == 0
			})
		})
	}
}

func TestAStreamWhoseReaderDoesNotReadHoldsAtMostTheWindow(t *testing.T) {
	for _, window := range []uint32{0, 1 << 20} {
		t.Run(fmt.Sprintf("Window %d", window), func(t *testing.T) {
			client, server := pipeSessions(t, Config{}, Config{Window: window})
			opened, accepted := openPair(t, client, server)
			want := max(window, initialWindow)
			// The accept's ACK grants the window beyond the initial one.
			eventually(t, "the ACK's grant", func() bool {
				opened.mu.Lock()
				defer opened.mu.Unlock()
				return opened.sendWindow == want
			})
			data := payload(2*int(want), 1)
			_ = opened.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
			var n int
			err := within(t, "a write beyond the window", func() (err error) {
				n, err = opened.Write(data)
				return err
			})
			if !errors.Is(err, ErrTimeout) || !errors.Is(err, os.ErrDeadlineExceeded) || !isTimeout(err) {
				t.Fatalf("Write beyond the window: %v, want ErrTimeout", err)
			}
			if n != int(want) {
				t.Fatalf("Write wrote %d bytes before its deadline, want the window, %d", n, want)
			}
			eventually(t, "the window's bytes buffered", func() bool {
				accepted.mu.Lock()
				defer accepted.mu.Unlock()
				return accepted.buffered == want
			})

			// Reading frees the window, and the writer goes on.
			_ = opened.SetWriteDeadline(time.Time{})
			_ = accepted.SetReadDeadline(time.Now().Add(waitTimeout))
			written := make(chan error, 1)
			go func() {
				_, err := opened.Write(data[n:])
				written <- err
			}()
			got := make([]byte, len(data))
			if _, err := io.ReadFull(accepted, got); err != nil {
				t.Fatalf("reading: %v", err)
			}
			if err := <-written; err != nil {
				t.Fatalf("writing the rest: %v", err)
			}
			checkSame(t, got, data)
		})
	}
}

func TestAReadDeadlineThatPassesGivesErrTimeout(t *testing.T) {
	client, server := pipeSessions(t, Config{}, Config{})
	opened, _ := openPair(t, client, server)
	const wait = 50 * time.Millisecond
	start := time.Now()
	_ = opened.SetReadDeadline(start.Add(wait))
	err := within(t, "Read", func() error {
		_, err := opened.Read(make([]byte, 1))
		return err
	})
	if !errors.Is(err, ErrTimeout) || !isTimeout(err) {
		t.Fatalf("Read: %v, want ErrTimeout", err)
	}
	if elapsed := time.Since(start); elapsed < wait {
		t.Fatalf("Read timed out after %v, before its deadline of %v", elapsed, wait)
	}
}

func TestClearingTheReadDeadlineMakesReadsWaitAgain(t *testing.T) {
	client, server := pipeSessions(t, Config{}, Config{})
	opened, accepted := openPair(t, client, server)
	_ = opened.SetReadDeadline(time.Now().Add(time.Millisecond))
	if _, err := opened.Read(make([]byte, 1)); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Read past the deadline: %v, want ErrTimeout", err)
	}
	_ = opened.SetReadDeadline(time.Time{})
	type result struct {
		data string
		err  error
	}
	read := make(chan result, 1)
	go func() {
		buf := make([]byte, 8)
		n, err := opened.Read(buf)
		read <- result{string(buf[:n]), err}
	}()
	// A read that did not wait would have failed before the data came.
	if _, err := accepted.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-read:
		if r.err != nil || r.data != "late" {
			t.Fatalf("Read after clearing the deadline: %q, %v; want \"late\"", r.data, r.err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Read did not return")
	}
}

func TestMovingTheDeadlineOfAPendingReadMovesItsTimeout(t *testing.T) {
	client, server := pipeSessions(t, Config{}, Config{})
	opened, _ := openPair(t, client, server)
	pendingRead := func() <-chan error {
		read := make(chan error, 1)
		go func() {
			_, err := opened.Read(make([]byte, 1))
			read <- err
		}()
		waitBlockedIn(t, "mux.(*Stream).Read", 1)
		return read
	}
	wantTimeout := func(read <-chan error) {
		t.Helper()
		select {
		case err := <-read:
			if !errors.Is(err, ErrTimeout) {
				t.Fatalf("Read: %v, want ErrTimeout", err)
			}
		case <-time.After(waitTimeout):
			t.Fatal("Read did not time out")
		}
	}

	// A deadline moved later holds the read until then.
	start := time.Now()
	_ = opened.SetReadDeadline(start.Add(20 * time.Millisecond))
	read := pendingRead()
	const later = 150 * time.Millisecond
	_ = opened.SetReadDeadline(start.Add(later))
	wantTimeout(read)
	if elapsed := time.Since(start); elapsed < later {
		t.Fatalf("Read timed out after %v, before its moved deadline of %v", elapsed, later)
	}

	// A deadline moved into the past ends a read that had none.
	_ = opened.SetReadDeadline(time.Time{})
	read = pendingRead()
	_ = opened.SetReadDeadline(time.Now().Add(-time.Second))
	wantTimeout(read)
}

func TestADeadlineInThePastFailsAtOnce(t *testing.T) {
	past := time.Now().Add(-time.Second)
	cases := []struct {
		name string
		set  func(*Stream) error
		do   func(*Stream) (int, error)
	}{
		{"read", func(st *Stream) error { return st.SetReadDeadline(past) }, func(st *Stream) (int, error) { return st.Read(make([]byte, 1)) }},
		{"write", func(st *Stream) error { return st.SetWriteDeadline(past) }, func(st *Stream) (int, error) { return st.Write([]byte("x")) }},
		{"SetDeadline read", func(st *Stream) error { return st.SetDeadline(past) }, func(st *Stream) (int, error) { return st.Read(make([]byte, 1)) }},
		{"SetDeadline write", func(st *Stream) error { return st.SetDeadline(past) }, func(st *Stream) (int, error) { return st.Write([]byte("x")) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, server := pipeSessions(t, Config{}, Config{})
			opened, _ := openPair(t, client, server)
			_ = tc.set(opened)
			var n int
			err := within(t, tc.name, func() (err error) {
				n, err = tc.do(opened)
				return err
			})
			if n != 0 || !errors.Is(err, ErrTimeout) {
				t.Fatalf("got %d, %v; want 0, ErrTimeout", n, err)
			}
			opened.mu.Lock()
			defer opened.mu.Unlock()
			if opened.sendWindow != initialWindow {
				t.Fatalf("the send window is %d after a write that sent nothing, want %d", opened.sendWindow, initialWindow)
			}
		})
	}
}

func TestAPendingReadOrWriteReturnsErrStreamClosedWhenItsStreamCloses(t *testing.T) {
	cases := []struct {
		name string
		do   func(*Stream) error
		fn   string // where do waits
	}{
		{"read", func(st *Stream) error {
			_, err := st.Read(make([]byte, 1))
			return err
		}, "mux.(*Stream).Read"},
		// The write waits for window, the peer reading nothing.
		{"write", func(st *Stream) error {
			_, err := st.Write(make([]byte, 2*initialWindow))
			return err
		}, "mux.(*Stream).Write"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, server := pipeSessions(t, Config{}, Config{})
			opened, _ := openPair(t, client, server)
			_ = opened.SetDeadline(time.Now().Add(waitTimeout))
			done := make(chan error, 1)
			go func() { done <- tc.do(opened) }()
			waitBlockedIn(t, tc.fn, 1)
			opened.Close()
			select {
			case err := <-done:
				if !errors.Is(err, ErrStreamClosed) {
					t.Fatalf("got %v, want ErrStreamClosed", err)
				}
			case <-time.After(waitTimeout):
				t.Fatal("it did not return")
			}
		})
	}
}

func TestAStreamReadsEOFAfterThePeerClosesIt(t *testing.T) {
	client, server := pipeSessions(t, Config{}, Config{})
	opened, accepted := openPair(t, client, server)
	_ = accepted.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := opened.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	opened.Close()
	got, err := io.ReadAll(accepted)
	if err != nil || string(got) != "last words" {
		t.Fatalf("ReadAll: %q, %v; want \"last words\"", got, err)
	}
	if n, err := accepted.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("Read after EOF: %d, %v; want io.EOF again", n, err)
	}
	// The half-closed end still writes, though the closed one drops it.
	if _, err := accepted.Write([]byte("dropped")); err != nil {
		t.Fatalf("Write after the peer's FIN: %v", err)
	}
}

func TestNoDataFrameFollowsTheFINWhenCloseRacesAWrite(t *testing.T) {
	a, b := pipeConns(t)
	s := Client(a, Config{})
	t.Cleanup(func() { s.Close() })
	p := newRawPeer(t, b, true)
	// The frames are checked as they come, so that none is dropped.
	late := make(chan string, 1)
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		finished := map[uint32]bool{}
		for f := range p.frames {
			if f.h.typ() == typeData && finished[f.h.streamID()] {
				select {
				case late <- f.h.String():
				default:
				}
			}
			if f.h.has(flagFIN) {
				finished[f.h.streamID()] = true
			}
		}
	}()
	// The race is narrow: many rounds, bounded in time too.
	stop := time.Now().Add(3 * time.Second)
	for round := 0; round < 1000 && time.Now().Before(stop); round++ {
		st, err := s.Open()
		if err != nil {
			t.Fatal(err)
		}
		started := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := range initialWindow / 16 {
				if _, err := st.Write(make([]byte, 16)); err != nil {
					return
				}
				if i == 0 {
					close(started)
				}
			}
		}()
		select {
		case <-started:
		case <-done:
		}
		st.Close()
		<-done
	}
	s.Close()
	b.Close()
	<-checked
	select {
	case f := <-late:
		t.Fatalf("a data frame after the stream's FIN: %s", f)
	default:
	}
}

func TestAStreamClosedByBothEndsIsForgottenByBothSessions(t *testing.T) {
	client, server := pipeSessions(t, Config{}, Config{})
	opened, accepted := openPair(t, client, server)
	opened.Close()
	_ = accepted.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := accepted.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("Read: %v, want io.EOF", err)
	}
	accepted.Close()
	eventually(t, "both sessions forget the stream", func() bool {
		return numStreams(client) == 0 && numStreams(server) == 0
	})
}

func TestAStreamThePeerNeverClosesIsResetAfterTheCloseTimeoutAndForgotten(t *testing.T) {
	const closeTimeout = 100 * time.Millisecond
	client, server := pipeSessions(t, Config{CloseTimeout: closeTimeout}, Config{})
	opened, accepted := openPair(t, client, server)
	_ = accepted.SetReadDeadline(time.Now().Add(waitTimeout))
	start := time.Now()
	opened.Close()
	if _, err := accepted.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("Read: %v, want io.EOF", err)
	}
	// The peer keeps its side open: the reset comes after the timeout.
	if n := numStreams(client); n != 1 && time.Since(start) < closeTimeout {
		t.Fatalf("the client holds %d streams before the close timeout, want 1", n)
	}
	// The peer forgets the stream as the reset comes.
	eventually(t, "both sessions forget the stream", func() bool {
		return numStreams(client) == 0 && numStreams(server) == 0
	})
	if elapsed := time.Since(start); elapsed < closeTimeout {
		t.Fatalf("reset after %v, before the close timeout of %v", elapsed, closeTimeout)
	}
	if _, err := accepted.Read(make([]byte, 1)); !errors.Is(err, ErrStreamReset) {
		t.Fatalf("Read after the close timeout: %v, want ErrStreamReset", err)
	}
	if _, err := accepted.Write([]byte("x")); !errors.Is(err, ErrStreamReset) {
		t.Fatalf("Write after the reset: %v, want ErrStreamReset", err)
	}
}

func TestPendingCallsFailWithErrSessionClosedWhenThePeerGoes(t *testing.T) {
	a, b := pipeConns(t)
	client, server := newSessions(t, a, b, Config{}, Config{})
	reading, _ := openPair(t, client, server)
	writing, _ := openPair(t, client, server)
	_ = reading.SetDeadline(time.Now().Add(waitTimeout))
	_ = writing.SetDeadline(time.Now().Add(waitTimeout))
	results := make(chan error, 3)
	go func() {
		_, err := reading.Read(make([]byte, 1))
		results <- err
	}()
	go func() {
		// Beyond the window, so that it waits for the peer.
		_, err := writing.Write(make([]byte, 2*initialWindow))
		results <- err
	}()
	go func() {
		_, err := client.Accept()
		results <- err
	}()
	waitBlockedIn(t, "mux.(*Stream).Read", 1)
	waitBlockedIn(t, "mux.(*Stream).Write", 1)
	waitBlockedIn(t, "mux.(*Session).Accept", 1)
	// The peer's connection goes, without a word.
	b.Close()
	for range 3 {
		select {
		case err := <-results:
			if !errors.Is(err, ErrSessionClosed) {
				t.Fatalf("got %v, want ErrSessionClosed", err)
			}
		case <-time.After(waitTimeout):
			t.Fatal("a pending call did not return")
		}
	}
	if err := waitClosed(t, client); !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("Err: %v, want ErrSessionClosed", err)
	}
	if _, err := client.Open(); !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("Open: %v, want ErrSessionClosed", err)
	}
	if n := numStreams(client); n != 0 {
		t.Fatalf("the closed session holds %d streams", n)
	}
}

func TestOpenReturnsErrRemoteGoAwayAfterThePeersGoAway(t *testing.T) {
	client, server := pipeSessions(t, Config{}, Config{})
	opened, accepted := openPair(t, client, server)
	if err := server.GoAway(); err != nil {
		t.Fatal(err)
	}
	// The client reads frames in order: the stream opened after the
	// GoAway arrives once the GoAway was taken.
	openPair(t, server, client)
	if _, err := client.Open(); !errors.Is(err, ErrRemoteGoAway) {
		t.Fatalf("Open after the peer's GoAway: %v, want ErrRemoteGoAway", err)
	}
	// The streams open before it go on.
	_ = accepted.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := opened.Write([]byte("on")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(accepted, buf); err != nil || string(buf) != "on" {
		t.Fatalf("Read: %q, %v", buf, err)
	}
}

func TestStreamsBeyondTheBoundsAreResetAndTheSessionGoesOn(t *testing.T) {
	cases := []struct {
		name        string
		cfg         Config
		acceptFirst bool
	}{
		{"MaxInbound", Config{MaxInbound: 2}, true},
		{"AcceptBacklog", Config{AcceptBacklog: 2}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, server := pipeSessions(t, Config{}, tc.cfg)
			var opened, accepted []*Stream
			for range 2 {
				st, err := client.Open()
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { st.Close() })
				opened = append(opened, st)
				if tc.acceptFirst {
					accepted = append(accepted, accept(t, server))
				}
			}
			extra, err := client.Open()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { extra.Close() })
			_ = extra.SetReadDeadline(time.Now().Add(waitTimeout))
			if _, err := extra.Read(make([]byte, 1)); !errors.Is(err, ErrStreamReset) {
				t.Fatalf("Read on a stream beyond the bound: %v, want ErrStreamReset", err)
			}
			if !tc.acceptFirst {
				for range 2 {
					accepted = append(accepted, accept(t, server))
				}
			}
			if server.IsClosed() || client.IsClosed() {
				t.Fatal("a session closed")
			}
			// Once a stream ends at both ends, there is room for another.
			opened[0].Close()
			_ = accepted[0].SetReadDeadline(time.Now().Add(waitTimeout))
			if _, err := accepted[0].Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("Read: %v, want io.EOF", err)
			}
			accepted[0].Close()
			st, acc := openPair(t, client, server)
			if _, err := st.Write([]byte("room")); err != nil {
				t.Fatal(err)
			}
			_ = acc.SetReadDeadline(time.Now().Add(waitTimeout))
			buf := make([]byte, 4)
			if _, err := io.ReadFull(acc, buf); err != nil || string(buf) != "room" {
				t.Fatalf("Read: %q, %v", buf, err)
			}
		})
	}
}

// pingAndWait sends a ping from s and waits for its answer.
func pingAndWait(t testing.TB, s *Session) {
	t.Helper()
	s.ping()
	eventually(t, "the ping's answer", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.pingID == 0
	})
	if s.IsClosed() {
		t.Fatalf("the session closed: %v", s.Err())
	}
}

func TestPingsAreAnsweredByThePeer(t *testing.T) {
	// The interval is never reached: the test sends each ping itself.
	cfg := Config{PingInterval: time.Hour}
	client, server := pipeSessions(t, cfg, cfg)
	for range 3 {
		pingAndWait(t, client)
		pingAndWait(t, server)
	}
}

func TestAPeerThatNeverAnswersPingsEndsTheSessionWithErrPingTimeout(t *testing.T) {
	a, b := pipeConns(t)
	s := Client(a, Config{PingInterval: 10 * time.Millisecond, PingTimeout: 50 * time.Millisecond})
	t.Cleanup(func() { s.Close() })
	p := newRawPeer(t, b, true)
	p.next(t, "a ping", func(h header) bool { return h.typ() == typePing && h.has(flagSYN) })
	if err := waitClosed(t, s); !errors.Is(err, ErrPingTimeout) {
		t.Fatalf("Err: %v, want ErrPingTimeout", err)
	}
}

func TestCloseWaitsForTheReaderAndLeavesNoGoroutines(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			before := goleak.IgnoreCurrent()
			a, b := tr.conns(t)
			cfg := Config{PingInterval: time.Hour, CloseTimeout: time.Hour, ReadBufferIdle: time.Hour}
			client := Client(a, cfg)
			server := Server(b, cfg)
			opened, accepted := openPair(t, client, server)
			if _, err := opened.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			// A stream closed at one end only holds a close timer.
			accepted.Close()
			pending := make(chan error, 1)
			go func() {
				_, err := opened.Read(make([]byte, 1))
				pending <- err
			}()
			for _, s := range []*Session{client, server} {
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				select {
				case <-s.readerDone:
				default:
					t.Fatal("Close returned before the reader")
				}
				if !errors.Is(s.Err(), ErrSessionClosed) {
					t.Fatalf("Err: %v, want ErrSessionClosed", s.Err())
				}
			}
			if err := <-pending; err != io.EOF && !errors.Is(err, ErrSessionClosed) {
				t.Fatalf("a pending Read: %v, want io.EOF or ErrSessionClosed", err)
			}
			if _, err := client.Open(); !errors.Is(err, ErrSessionClosed) {
				t.Fatalf("Open after Close: %v, want ErrSessionClosed", err)
			}
			goleak.VerifyNone(t, before)
		})
	}
}

func TestAnIdleSessionGivesItsReadBufferBackAndReadsOn(t *testing.T) {
	a, b := tcpConns(t)
	rec := newRecordingConn(b)
	client, server := newSessions(t, a, rec, Config{}, Config{ReadBufferIdle: 20 * time.Millisecond})
	opened, accepted := openPair(t, client, server)
	_ = accepted.SetReadDeadline(time.Now().Add(waitTimeout))
	from := 0
	for i := range 3 {
		// An idle read through the buffer times out, and the next header
		// is read on its own: the buffer went back.
		from = rec.waitRead(t, "the buffer's idle read timing out", from, func(r readRecord) bool {
			return r.size == readBufferSize && r.n == 0 && isTimeout(r.err)
		})
		msg := payload(3000+i, byte(i))
		if _, err := opened.Write(msg); err != nil {
			t.Fatal(err)
		}
		from = rec.waitRead(t, "a header read without the buffer", from, func(r readRecord) bool {
			return r.size == headerSize && r.n > 0 && r.err == nil
		})
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(accepted, got); err != nil {
			t.Fatal(err)
		}
		checkSame(t, got, msg)
	}
}

func TestOpenReturnsErrStreamsExhaustedOnceTheIDsRunOut(t *testing.T) {
	client, server := pipeSessions(t, Config{}, Config{})
	for _, s := range []*Session{client, server} {
		// The last ID below the bound is still opened.
		s.mu.Lock()
		s.nextID = math.MaxUint32 - 2
		if !s.client {
			s.nextID--
		}
		s.mu.Unlock()
		peer := server
		if s == server {
			peer = client
		}
		openPair(t, s, peer)
		if _, err := s.Open(); !errors.Is(err, ErrStreamsExhausted) {
			t.Fatalf("Open with the IDs used: %v, want ErrStreamsExhausted", err)
		}
	}
}
