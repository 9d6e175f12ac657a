package mux

import (
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// conn is what a stream of either implementation is.
type conn interface {
	io.ReadWriteCloser
	SetDeadline(time.Time) error
}

// yamuxConfig is the configuration of every yamux peer.
func yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	return cfg
}

// interopPairings are the two ways a session of ours meets a yamux one.
var interopPairings = []struct {
	name  string
	start func(t *testing.T) (ours *Session, theirs *yamux.Session)
}{
	{"our Client and a yamux Server", func(t *testing.T) (*Session, *yamux.Session) {
		a, b := pipeConns(t)
		// The interval is never reached: the test sends each ping itself.
		ours := Client(a, Config{PingInterval: time.Hour})
		t.Cleanup(func() { ours.Close() })
		theirs, err := yamux.Server(b, yamuxConfig())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { theirs.Close() })
		return ours, theirs
	}},
	{"a yamux Client and our Server", func(t *testing.T) (*Session, *yamux.Session) {
		a, b := pipeConns(t)
		theirs, err := yamux.Client(a, yamuxConfig())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { theirs.Close() })
		ours := Server(b, Config{PingInterval: time.Hour})
		t.Cleanup(func() { ours.Close() })
		return ours, theirs
	}},
}

// transferOnce opens a stream with open, accepts it with accept, sends
// size bytes one way and half-closes: the receiver must read them all
// and then io.EOF.
func transferOnce(open, accept func() (conn, uint32, error), size int, fromOpener bool) error {
	opened, openedID, err := open()
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer opened.Close()
	accepted, acceptedID, err := accept()
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	defer accepted.Close()
	if openedID != acceptedID {
		return fmt.Errorf("opened stream %d, accepted %d", openedID, acceptedID)
	}
	deadline := time.Now().Add(waitTimeout)
	_ = opened.SetDeadline(deadline)
	_ = accepted.SetDeadline(deadline)
	sender, receiver := opened, accepted
	if !fromOpener {
		sender, receiver = accepted, opened
	}
	want := payload(size, byte(openedID))
	sent := make(chan error, 1)
	go func() {
		_, err := sender.Write(want)
		if cerr := sender.Close(); err == nil {
			err = cerr
		}
		sent <- err
	}()
	// ReadAll reads until io.EOF, and reports no error for it.
	got, err := io.ReadAll(receiver)
	if serr := <-sent; serr != nil {
		return fmt.Errorf("stream %d sending: %w", openedID, serr)
	}
	if err != nil {
		return fmt.Errorf("stream %d receiving: %w", openedID, err)
	}
	if len(got) != len(want) {
		return fmt.Errorf("stream %d: received %d bytes, want %d", openedID, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Errorf("stream %d: byte %d is %#x, want %#x", openedID, i, got[i], want[i])
		}
	}
	return receiver.Close()
}

// streamMakers returns the ways to get a stream, with its ID, on either end
// of an interop pairing: opened or accepted, by our session or by yamux's.
func streamMakers(ours *Session, theirs *yamux.Session) (openOurs, acceptOurs, openTheirs, acceptTheirs func() (conn, uint32, error)) {
	openOurs = func() (conn, uint32, error) {
		st, err := ours.Open()
		if err != nil {
			return nil, 0, err
		}
		return st, st.ID(), nil
	}
	acceptOurs = func() (conn, uint32, error) {
		st, err := ours.Accept()
		if err != nil {
			return nil, 0, err
		}
		return st, st.ID(), nil
	}
	openTheirs = func() (conn, uint32, error) {
		st, err := theirs.OpenStream()
		if err != nil {
			return nil, 0, err
		}
		return st, st.StreamID(), nil
	}
	acceptTheirs = func() (conn, uint32, error) {
		st, err := theirs.AcceptStream()
		if err != nil {
			return nil, 0, err
		}
		return st, st.StreamID(), nil
	}
	return openOurs, acceptOurs, openTheirs, acceptTheirs
}

func TestSessionsInteroperateWithHashicorpYamux(t *testing.T) {
	// Four windows, and odd, so that both ends wait for window updates.
	const size = 4*initialWindow + 3
	for _, pairing := range interopPairings {
		t.Run(pairing.name, func(t *testing.T) {
			ours, theirs := pairing.start(t)
			openOurs, acceptOurs, openTheirs, acceptTheirs := streamMakers(ours, theirs)
			cases := []struct {
				name         string
				open, accept func() (conn, uint32, error)
				fromOpener   bool
			}{
				{"we open and send", openOurs, acceptTheirs, true},
				{"we open and receive", openOurs, acceptTheirs, false},
				{"yamux opens and sends", openTheirs, acceptOurs, true},
				{"yamux opens and receives", openTheirs, acceptOurs, false},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					if err := within(t, "the transfer", func() error {
						return transferOnce(tc.open, tc.accept, size, tc.fromOpener)
					}); err != nil {
						t.Fatal(err)
					}
				})
			}
			t.Run("our pings are answered", func(t *testing.T) {
				for range 3 {
					pingAndWait(t, ours)
				}
			})
			t.Run("yamux's pings are answered", func(t *testing.T) {
				for range 3 {
					if _, err := theirs.Ping(); err != nil {
						t.Fatalf("Ping: %v", err)
					}
				}
			})
			eventually(t, "our session forgets the closed streams", func() bool { return numStreams(ours) == 0 })
			if ours.IsClosed() || theirs.IsClosed() {
				t.Fatalf("a session closed: ours %v", ours.Err())
			}
		})
	}
}

// echoAll accepts n streams with accept and echoes each until its EOF.
func echoAll(accept func() (conn, uint32, error), n int, errs chan<- error) {
	for range n {
		st, id, err := accept()
		if err != nil {
			errs <- fmt.Errorf("accept: %w", err)
			continue
		}
		go func() {
			defer st.Close()
			_ = st.SetDeadline(time.Now().Add(waitTimeout))
			if _, err := io.Copy(st, st); err != nil {
				errs <- fmt.Errorf("stream %d echoing: %w", id, err)
				return
			}
			errs <- st.Close()
		}()
	}
}

// echoOnce opens a stream with open, sends want while reading the echo,
// checks it byte for byte and closes the stream.
func echoOnce(open func() (conn, uint32, error), want []byte) error {
	st, id, err := open()
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(waitTimeout))
	written := make(chan error, 1)
	go func() {
		_, err := st.Write(want)
		written <- err
	}()
	got := make([]byte, len(want))
	_, readErr := io.ReadFull(st, got)
	if err := <-written; err != nil {
		return fmt.Errorf("stream %d writing: %w", id, err)
	}
	if readErr != nil {
		return fmt.Errorf("stream %d reading the echo: %w", id, readErr)
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Errorf("stream %d: byte %d of the echo is %#x, want %#x", id, i, got[i], want[i])
		}
	}
	return st.Close()
}

func TestManyStreamsAtOnceInteroperateWithHashicorpYamuxBothWays(t *testing.T) {
	const streams = 4
	const size = initialWindow*3/2 + 5
	for _, pairing := range interopPairings {
		t.Run(pairing.name, func(t *testing.T) {
			ours, theirs := pairing.start(t)
			openOurs, acceptOurs, openTheirs, acceptTheirs := streamMakers(ours, theirs)
			errs := make(chan error, 4*streams)
			go echoAll(acceptOurs, streams, errs)
			go echoAll(acceptTheirs, streams, errs)
			for i := range streams {
				go func() { errs <- echoOnce(openOurs, payload(size, byte(i))) }()
				go func() { errs <- echoOnce(openTheirs, payload(size, byte(50+i))) }()
			}
			collect(t, errs, 4*streams)
			eventually(t, "our session forgets the closed streams", func() bool { return numStreams(ours) == 0 })
		})
	}
}

func TestGoAwayInteroperatesWithHashicorpYamux(t *testing.T) {
	for _, pairing := range interopPairings {
		t.Run(pairing.name, func(t *testing.T) {
			ours, theirs := pairing.start(t)
			// Each end handles frames in order: the answer to a ping sent
			// after the go-away comes once the go-away was taken.
			if err := theirs.GoAway(); err != nil {
				t.Fatal(err)
			}
			if _, err := theirs.Ping(); err != nil {
				t.Fatal(err)
			}
			if _, err := ours.Open(); err != ErrRemoteGoAway {
				t.Fatalf("our Open after yamux's go-away: %v, want ErrRemoteGoAway", err)
			}
			if err := ours.GoAway(); err != nil {
				t.Fatal(err)
			}
			pingAndWait(t, ours)
			if _, err := theirs.OpenStream(); err != yamux.ErrRemoteGoAway {
				t.Fatalf("yamux's Open after our go-away: %v, want yamux.ErrRemoteGoAway", err)
			}
			if ours.IsClosed() || theirs.IsClosed() {
				t.Fatalf("a session closed: ours %v", ours.Err())
			}
		})
	}
}

func TestAResetFromHashicorpYamuxGivesErrStreamReset(t *testing.T) {
	a, b := pipeConns(t)
	ours := Client(a, Config{})
	t.Cleanup(func() { ours.Close() })
	cfg := yamuxConfig()
	// yamux resets the streams beyond its backlog.
	cfg.AcceptBacklog = 1
	theirs, err := yamux.Server(b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { theirs.Close() })
	for i := range 2 {
		st, err := ours.Open()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		if i == 0 {
			continue
		}
		_ = st.SetDeadline(time.Now().Add(waitTimeout))
		if _, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrStreamReset) {
			t.Fatalf("Read: %v, want ErrStreamReset", err)
		}
		if _, err := st.Write([]byte("x")); !errors.Is(err, ErrStreamReset) {
			t.Fatalf("Write: %v, want ErrStreamReset", err)
		}
	}
	if ours.IsClosed() {
		t.Fatalf("our session closed: %v", ours.Err())
	}
}
