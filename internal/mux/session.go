package mux

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"time"
)

// Errors of sessions and streams.
var (
	// ErrSessionClosed: the session is closed, by Close, by the peer, or
	// by a failure (Err says which).
	ErrSessionClosed = errors.New("mux: session closed")
	// ErrNotSent: the session was closed before a write: nothing of it
	// left. It is an ErrSessionClosed.
	ErrNotSent = fmt.Errorf("%w before the write", ErrSessionClosed)
	// ErrStreamClosed: this end closed the stream.
	ErrStreamClosed = errors.New("mux: stream closed")
	// ErrStreamReset: the stream was reset, by the peer or for lack of an
	// answer to its close.
	ErrStreamReset = errors.New("mux: stream reset")
	// ErrStreamRefused: the peer reset a stream this end opened before it
	// accepted it (it took no new streams, or had too many): nothing sent
	// on it was read. It is an ErrStreamReset.
	ErrStreamRefused = fmt.Errorf("%w: refused before the peer accepted it", ErrStreamReset)
	// ErrLocalGoAway: Accept after this end's GoAway, once the streams
	// opened before it were accepted.
	ErrLocalGoAway = errors.New("mux: this end takes no new streams")
	// ErrRemoteGoAway: the peer takes no new streams.
	ErrRemoteGoAway = errors.New("mux: the peer takes no new streams")
	// ErrProtocol: the peer broke the protocol; the session ends.
	ErrProtocol = errors.New("mux: protocol error")
	// ErrPingTimeout: a ping went unanswered; the session ends.
	ErrPingTimeout = errors.New("mux: ping not answered in time")
	// ErrStreamsExhausted: every stream ID of this end was used.
	ErrStreamsExhausted = errors.New("mux: stream IDs exhausted")
	// ErrTimeout: a deadline passed. It is os.ErrDeadlineExceeded, a
	// net.Error whose Timeout is true, as a net.Conn's.
	ErrTimeout = os.ErrDeadlineExceeded
)

// Config sets a session's bounds and timers. The zero value of a field
// takes the default named next to it.
type Config struct {
	// Window is each stream's receive window, the most bytes of it held
	// unread at this end (defaultWindow). It is at least the protocol's
	// initial window of 256 KiB.
	Window uint32
	// AcceptBacklog bounds the streams opened by the peer and not yet
	// accepted (defaultAcceptBacklog); beyond, new ones are reset.
	AcceptBacklog int
	// MaxInbound bounds the streams opened by the peer and open at once
	// (defaultMaxInbound); beyond, new ones are reset.
	MaxInbound int
	// PingInterval is how often this end pings the peer; 0 never.
	PingInterval time.Duration
	// PingTimeout is how long a ping may go unanswered before the session
	// ends (defaultPingTimeout).
	PingTimeout time.Duration
	// CloseTimeout is how long a stream this end closed waits for the
	// peer to close it too before it is reset (defaultCloseTimeout).
	CloseTimeout time.Duration
	// WriteBufferKeep bounds the buffer that joins a frame's header and
	// body, kept from one write to the next (defaultWriteBufferKeep):
	// larger frames get a buffer of their own each time.
	WriteBufferKeep int
	// ReadBufferIdle is how long the session keeps its read buffer while
	// no frame comes; then the buffer goes back to Buffers until the next
	// frame. 0 keeps it. It needs a connection with SetReadDeadline.
	ReadBufferIdle time.Duration
	// Buffers hold what is read; nil gives the session pools of its own.
	Buffers *Buffers
}

// Defaults of Config.
const (
	defaultWindow          = initialWindow
	defaultAcceptBacklog   = 256
	defaultMaxInbound      = 1024
	defaultPingTimeout     = 10 * time.Second
	defaultCloseTimeout    = 30 * time.Second
	defaultWriteBufferKeep = 4 << 10
)

// FrameOverhead is the most a write adds to a data frame's body: its
// header, a window update and the control frames waiting to go with it.
const FrameOverhead = 2*headerSize + maxPendingControl

// maxPendingControl bounds the frames (pongs, refusals of streams, this
// end's pings) waiting to be sent. An honest peer causes one at a time; a
// peer that floods pings or new streams while not reading what it is sent
// fills it, and the session ends.
const maxPendingControl = 64 * headerSize

func (c Config) withDefaults() Config {
	c.Window = max(c.Window, initialWindow)
	if c.AcceptBacklog <= 0 {
		c.AcceptBacklog = defaultAcceptBacklog
	}
	if c.MaxInbound <= 0 {
		c.MaxInbound = defaultMaxInbound
	}
	if c.PingTimeout <= 0 {
		c.PingTimeout = defaultPingTimeout
	}
	if c.CloseTimeout <= 0 {
		c.CloseTimeout = defaultCloseTimeout
	}
	if c.WriteBufferKeep <= 0 {
		c.WriteBufferKeep = defaultWriteBufferKeep
	}
	if c.Buffers == nil {
		c.Buffers = NewBuffers()
	}
	return c
}

// Session is one end of a multiplexed connection.
type Session struct {
	conn   io.ReadWriteCloser
	cfg    Config
	client bool // opens odd stream IDs, the peer even ones

	writeMu sync.Mutex // guards writes to conn, and joined
	joined  []byte     // a frame's header and body, or control frames

	controlMu sync.Mutex // guards control
	control   []byte     // control frames waiting for the write lock

	mu           sync.Mutex // guards the fields below
	streams      map[uint32]*Stream
	nextID       uint32
	inbound      int    // open streams the peer opened
	localGoAway  bool   // this end takes no new streams
	remoteGoAway bool   // the peer takes no new streams
	pingID       uint32 // of the ping awaiting its answer, 0 when none
	pingTimer    *time.Timer
	pongTimer    *time.Timer

	accept chan *Stream // opened by the peer, not yet accepted
	// goneAway is closed, under mu, when this end takes no new streams:
	// the peer's streams opened before are already in accept.
	goneAway chan struct{}

	closeOnce  sync.Once
	done       chan struct{} // closed when the session closes
	err        error         // why it closed, set before done is closed
	readerDone chan struct{} // closed when the reader returns
}

// Client starts the session of the end that opens odd stream IDs on conn.
func Client(conn io.ReadWriteCloser, cfg Config) *Session {
	return newSession(conn, cfg, true)
}

// Server starts the session of the end that opens even stream IDs on
// conn.
func Server(conn io.ReadWriteCloser, cfg Config) *Session {
	return newSession(conn, cfg, false)
}

func newSession(conn io.ReadWriteCloser, cfg Config, client bool) *Session {
	cfg = cfg.withDefaults()
	s := &Session{
		conn:       conn,
		cfg:        cfg,
		client:     client,
		streams:    map[uint32]*Stream{},
		nextID:     2,
		accept:     make(chan *Stream, cfg.AcceptBacklog),
		goneAway:   make(chan struct{}),
		done:       make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	if client {
		s.nextID = 1
	}
	if cfg.PingInterval > 0 {
		s.mu.Lock()
		s.pingTimer = time.AfterFunc(cfg.PingInterval, s.ping)
		s.mu.Unlock()
	}
	go s.read()
	return s
}

// Done is closed when the session closes.
func (s *Session) Done() <-chan struct{} { return s.done }

// IsClosed reports whether the session is closed.
func (s *Session) IsClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Err says why the session closed; nil while it is open.
func (s *Session) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Close closes the session and its connection, ends every stream, and
// waits for the session's reader to return.
func (s *Session) Close() error {
	s.closeWith(ErrSessionClosed)
	<-s.readerDone
	return nil
}

// closeWith closes the session for err, once.
func (s *Session) closeWith(err error) {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.err = err
		close(s.done)
		if s.pingTimer != nil {
			s.pingTimer.Stop()
		}
		if s.pongTimer != nil {
			s.pongTimer.Stop()
		}
		streams := s.streams
		s.streams = map[uint32]*Stream{}
		s.mu.Unlock()
		s.conn.Close()
		for _, st := range streams {
			st.sessionClosed()
		}
	})
}

// GoAway tells the peer that this end takes no new streams; the open ones
// go on.
func (s *Session) GoAway() error {
	s.mu.Lock()
	if !s.localGoAway {
		s.localGoAway = true
		close(s.goneAway)
	}
	s.mu.Unlock()
	h := makeHeader(typeGoAway, 0, 0, goAwayNormal)
	return s.writeFrame(h, nil)
}

// Open opens a stream to the peer.
func (s *Session) Open() (*Stream, error) {
	s.mu.Lock()
	switch {
	case s.IsClosed():
		s.mu.Unlock()
		return nil, ErrSessionClosed
	case s.remoteGoAway:
		s.mu.Unlock()
		return nil, ErrRemoteGoAway
	case s.nextID >= math.MaxUint32-1:
		s.mu.Unlock()
		return nil, ErrStreamsExhausted
	}
	st := newStream(s, s.nextID, false)
	s.nextID += 2
	s.streams[st.id] = st
	s.mu.Unlock()
	if err := st.sendFlags(flagSYN); err != nil {
		s.forget(st)
		return nil, err
	}
	return st, nil
}

// Accept waits for a stream opened by the peer and accepts it. After
// GoAway it returns the streams the peer opened before, then
// ErrLocalGoAway.
func (s *Session) Accept() (*Stream, error) {
	var st *Stream
	select {
	case st = <-s.accept:
	case <-s.done:
		return nil, s.err
	case <-s.goneAway:
		select {
		case st = <-s.accept:
		default:
			return nil, ErrLocalGoAway
		}
	}
	if err := st.sendFlags(flagACK); err != nil {
		return nil, err
	}
	return st, nil
}

// forget drops st from the session's streams.
func (s *Session) forget(st *Stream) {
	s.mu.Lock()
	if s.streams[st.id] == st {
		delete(s.streams, st.id)
		if st.inbound {
			s.inbound--
		}
	}
	s.mu.Unlock()
}

// writeFrame writes one frame, with any control frames waiting, in one
// write. A failed write closes the session.
func (s *Session) writeFrame(h header, body []byte) error {
	return s.writeFrames(nil, h, body)
}

// writeFrames is writeFrame with another frame without a body, first, in
// the same write.
func (s *Session) writeFrames(first *header, h header, body []byte) error {
	s.writeMu.Lock()
	if s.IsClosed() {
		s.writeMu.Unlock()
		return ErrNotSent
	}
	s.controlMu.Lock()
	s.joined = append(s.joined[:0], s.control...)
	s.control = s.control[:0]
	s.controlMu.Unlock()
	if first != nil {
		s.joined = append(s.joined, first[:]...)
	}
	s.joined = append(s.joined, h[:]...)
	var err error
	if len(s.joined)+len(body) <= max(s.cfg.WriteBufferKeep, int(s.cfg.Window)+headerSize) {
		s.joined = append(s.joined, body...)
		_, err = s.conn.Write(s.joined)
	} else if _, err = s.conn.Write(s.joined); err == nil {
		_, err = s.conn.Write(body)
	}
	if cap(s.joined) > s.cfg.WriteBufferKeep {
		s.joined = nil
	}
	s.unlockWrite()
	if err != nil {
		s.closeWith(fmt.Errorf("%w: writing: %v", ErrSessionClosed, err))
		return ErrSessionClosed
	}
	return nil
}

// sendControl sends a control frame without waiting for the write lock or
// for the connection: when another goroutine holds the lock, that one
// sends the frame as it lets go; otherwise a goroutine of its own does. The
// reader sends its frames this way, so that it never waits on a write: two
// ends whose readers both waited on writes to each other would wait
// forever.
func (s *Session) sendControl(h header) {
	s.controlMu.Lock()
	if len(s.control) >= maxPendingControl {
		s.controlMu.Unlock()
		s.closeWith(fmt.Errorf("%w: the peer does not read what it asks for", ErrProtocol))
		return
	}
	s.control = append(s.control, h[:]...)
	s.controlMu.Unlock()
	if s.writeMu.TryLock() {
		// The lock passes to the goroutine, which lets it go.
		go s.flushControl()
	}
}

// flushControl sends the control frames waiting, then lets the write lock
// go, which it holds; frames queued meanwhile are sent too.
func (s *Session) flushControl() {
	var buf [maxPendingControl]byte
	for {
		s.controlMu.Lock()
		n := copy(buf[:], s.control)
		s.control = s.control[:0]
		s.controlMu.Unlock()
		if n > 0 && !s.IsClosed() {
			if _, err := s.conn.Write(buf[:n]); err != nil {
				s.writeMu.Unlock()
				s.closeWith(fmt.Errorf("%w: writing: %v", ErrSessionClosed, err))
				return
			}
		}
		s.writeMu.Unlock()
		s.controlMu.Lock()
		more := len(s.control) > 0
		s.controlMu.Unlock()
		if !more || !s.writeMu.TryLock() {
			return
		}
	}
}

// unlockWrite lets the write lock go, sending control frames queued while
// it was held.
func (s *Session) unlockWrite() {
	s.controlMu.Lock()
	more := len(s.control) > 0
	s.controlMu.Unlock()
	if more {
		s.flushControl()
		return
	}
	s.writeMu.Unlock()
	// A frame queued between the check and the unlock found the lock
	// held; it is sent here unless another writer took the lock.
	s.controlMu.Lock()
	more = len(s.control) > 0
	s.controlMu.Unlock()
	if more && s.writeMu.TryLock() {
		s.flushControl()
	}
}

// ping sends a ping and arms the timer that ends the session unless it is
// answered in time. It runs on the ping timer.
func (s *Session) ping() {
	s.mu.Lock()
	if s.IsClosed() {
		s.mu.Unlock()
		return
	}
	s.pingID++
	if s.pingID == 0 {
		s.pingID = 1
	}
	id := s.pingID
	s.pongTimer = time.AfterFunc(s.cfg.PingTimeout, func() {
		s.mu.Lock()
		unanswered := s.pingID == id
		s.mu.Unlock()
		if unanswered {
			s.closeWith(ErrPingTimeout)
		}
	})
	s.mu.Unlock()
	s.sendControl(makeHeader(typePing, flagSYN, 0, id))
}

// pong takes the answer to a ping and schedules the next ping.
func (s *Session) pong(id uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id == 0 || id != s.pingID || s.IsClosed() {
		return
	}
	s.pingID = 0
	s.pongTimer.Stop()
	s.pingTimer.Reset(s.cfg.PingInterval)
}

// read reads and handles frames until the connection fails or the session
// closes.
func (s *Session) read() {
	defer close(s.readerDone)
	r := newFrameReader(s.conn, s.cfg.ReadBufferIdle, s.cfg.Buffers)
	defer r.close()
	var h header
	for {
		if err := r.header(&h); err != nil {
			s.closeWith(readError(err))
			return
		}
		if err := s.handle(h, r.body()); err != nil {
			if errors.Is(err, ErrProtocol) {
				s.goAwayBroken()
			}
			s.closeWith(err)
			return
		}
	}
}

// goAwayWriteTimeout bounds the reader's wait to tell a peer that broke the
// protocol why the session ends.
const goAwayWriteTimeout = time.Second

// goAwayBroken tells the peer, if that can be done without waiting, that
// it broke the protocol: the lock is free and the connection has write
// deadlines.
func (s *Session) goAwayBroken() {
	conn, ok := s.conn.(interface{ SetWriteDeadline(time.Time) error })
	if !ok || !s.writeMu.TryLock() {
		return
	}
	defer s.writeMu.Unlock()
	if conn.SetWriteDeadline(time.Now().Add(goAwayWriteTimeout)) == nil {
		g := makeHeader(typeGoAway, 0, 0, goAwayProtocolError)
		_, _ = s.conn.Write(g[:])
	}
}

// readError is the session's error for a failed read.
func readError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: the peer closed the connection", ErrSessionClosed)
	}
	return fmt.Errorf("%w: reading: %v", ErrSessionClosed, err)
}

// handle handles one frame whose header is h and whose body, if any, is
// next in r.
func (s *Session) handle(h header, r *bufio.Reader) error {
	if err := h.check(); err != nil {
		return err
	}
	switch h.typ() {
	case typePing:
		if h.has(flagSYN) {
			s.sendControl(makeHeader(typePing, flagACK, 0, h.length()))
		} else if h.has(flagACK) {
			s.pong(h.length())
		}
		return nil
	case typeGoAway:
		if code := h.length(); code != goAwayNormal {
			return fmt.Errorf("%w: the peer went away with code %d", ErrSessionClosed, code)
		}
		s.mu.Lock()
		s.remoteGoAway = true
		s.mu.Unlock()
		return nil
	}
	st, err := s.streamOf(h)
	if err != nil {
		return err
	}
	if st == nil {
		// A stream that is gone, or that was refused: its data is dropped.
		if h.typ() == typeData {
			return discard(r, h.length())
		}
		return nil
	}
	if h.typ() == typeWindowUpdate {
		if err := st.grant(h.length()); err != nil {
			return err
		}
	} else if h.length() > 0 {
		if err := st.receive(r, h.length()); err != nil {
			return err
		}
	}
	if h.has(flagACK) {
		st.accepted()
	}
	if h.has(flagRST) {
		st.remoteReset()
	} else if h.has(flagFIN) {
		st.remoteClose()
	}
	return nil
}

// discard reads and drops n bytes.
func discard(r io.Reader, n uint32) error {
	if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
		return readError(err)
	}
	return nil
}

// streamOf returns the stream a frame is for: a new one for a SYN, nil for
// a stream that is gone or that this end refuses, which it resets.
func (s *Session) streamOf(h header) (*Stream, error) {
	id := h.streamID()
	st, refused, err := s.lookup(id, h.has(flagSYN))
	if refused {
		s.sendControl(makeHeader(typeWindowUpdate, flagRST, id, 0))
	}
	return st, err
}

func (s *Session) lookup(id uint32, syn bool) (st *Stream, refused bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !syn {
		return s.streams[id], false, nil
	}
	if (id%2 == 1) == s.client {
		return nil, false, fmt.Errorf("%w: the peer opened stream %d, which is this end's to open", ErrProtocol, id)
	}
	if s.streams[id] != nil {
		return nil, false, fmt.Errorf("%w: stream %d opened twice", ErrProtocol, id)
	}
	if s.localGoAway || s.inbound >= s.cfg.MaxInbound || s.IsClosed() {
		return nil, true, nil
	}
	st = newStream(s, id, true)
	select {
	case s.accept <- st:
	default:
		return nil, true, nil
	}
	s.streams[id] = st
	s.inbound++
	return st, false, nil
}
