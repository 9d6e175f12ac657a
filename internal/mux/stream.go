package mux

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"math/bits"
	"sync"
	"time"
)

// Stream is one stream of a session: a bidirectional byte stream with
// deadlines, like a net.Conn.
type Stream struct {
	session *Session
	id      uint32
	inbound bool // opened by the peer

	// sendMu is held from Write's check that the stream is open to the
	// frame's write, and by Close around its FIN, so that no data frame
	// follows the FIN.
	sendMu sync.Mutex

	mu           sync.Mutex // guards the fields below
	chunks       [][]byte   // received and unread, chunks[0][offset:] first
	offset       int
	buffered     uint32 // bytes unread in chunks
	arriving     uint32 // bytes of a frame being read into a chunk
	recvWindow   uint32 // bytes the peer may still send
	sendWindow   uint32 // bytes this end may still send
	localClosed  bool   // Close was called
	remoteClosed bool   // the peer sent FIN
	reset        bool   // RST, sent or received
	acked        bool   // the peer accepted the stream (opened by this end)
	closeTimer   *time.Timer

	readable chan struct{} // signalled when data, FIN, RST or a close arrives
	writable chan struct{} // signalled when window, RST or a close arrives

	readDeadline  deadline
	writeDeadline deadline
}

func newStream(s *Session, id uint32, inbound bool) *Stream {
	return &Stream{
		session:    s,
		id:         id,
		inbound:    inbound,
		recvWindow: initialWindow,
		sendWindow: initialWindow,
		readable:   make(chan struct{}, 1),
		writable:   make(chan struct{}, 1),
	}
}

// Buffered returns how many received bytes wait to be read.
func (st *Stream) Buffered() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return int(st.buffered)
}

// ID returns the stream's ID.
func (st *Stream) ID() uint32 { return st.id }

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// sendFlags sends a window update carrying flags (SYN or ACK), which also
// grants the peer the part of the window beyond the initial one.
func (st *Stream) sendFlags(flags uint16) error {
	st.mu.Lock()
	grant := st.session.cfg.Window - st.recvWindow - st.buffered - st.arriving
	st.recvWindow += grant
	st.mu.Unlock()
	return st.session.writeFrame(makeHeader(typeWindowUpdate, flags, st.id, grant), nil)
}

// Read reads what the peer sent: io.EOF once it closed its side and all
// was read.
func (st *Stream) Read(p []byte) (int, error) {
	for {
		st.mu.Lock()
		var err error
		switch {
		case st.localClosed:
			err = ErrStreamClosed
		case st.reset:
			err = st.resetError()
		case st.buffered > 0:
			n := st.copyOut(p)
			grant := st.grantDue(st.session.cfg.Window / 4 * 3)
			more := st.buffered > 0
			st.mu.Unlock()
			if more {
				// A concurrent Read waiting takes the rest.
				signal(st.readable)
			}
			if grant > 0 {
				// A failure closes the session, which the next read reports.
				_ = st.session.writeFrame(makeHeader(typeWindowUpdate, 0, st.id, grant), nil)
			}
			return n, nil
		case st.remoteClosed:
			err = io.EOF
		case st.session.IsClosed():
			err = ErrSessionClosed
		}
		st.mu.Unlock()
		if err != nil {
			// The signal woke one Read: it wakes the next, which ends too.
			signal(st.readable)
			return 0, err
		}
		if len(p) == 0 {
			return 0, nil
		}
		select {
		case <-st.readable:
		case <-st.readDeadline.wait():
			return 0, ErrTimeout
		case <-st.session.done:
		}
	}
}

// copyOut copies buffered bytes into p, with st.mu held.
func (st *Stream) copyOut(p []byte) int {
	n := 0
	for n < len(p) && len(st.chunks) > 0 {
		c := copy(p[n:], st.chunks[0][st.offset:])
		n += c
		st.offset += c
		if st.offset == len(st.chunks[0]) {
			st.session.cfg.Buffers.put(st.chunks[0])
			st.chunks[0] = nil
			st.chunks = st.chunks[1:]
			st.offset = 0
		}
	}
	if len(st.chunks) == 0 {
		st.chunks = nil
	}
	st.buffered -= uint32(n)
	return n
}

// grantDue returns the window to grant back to the peer, with st.mu held:
// what was read since the last grant, once it is at least threshold.
//
// A read grants it once it is three quarters of the window; a write on the
// stream grants it with its data frame, in the same write, once it is half.
// A stream that carries a request and then an answer, one pair after
// another, so grants the window back with its next request, which costs
// no write and no wake-up of the peer of its own; one that carries a large
// answer costs a window update per three quarters of a window, and the
// sender still has a quarter of its window to send while the update comes.
func (st *Stream) grantDue(threshold uint32) uint32 {
	free := st.session.cfg.Window - st.recvWindow - st.buffered - st.arriving
	if free < threshold || st.remoteClosed {
		return 0
	}
	st.recvWindow += free
	return free
}

// Write writes p in data frames, each as large as the peer's window
// allows.
func (st *Stream) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		st.sendMu.Lock()
		st.mu.Lock()
		var err error
		switch {
		case st.localClosed:
			err = ErrStreamClosed
		case st.reset:
			err = st.resetError()
		case st.session.IsClosed():
			err = ErrNotSent
		}
		n := uint32(min(len(p)-written, int(st.sendWindow)))
		st.sendWindow -= n
		more := st.sendWindow > 0
		st.mu.Unlock()
		if err != nil || more {
			// The signal woke one Write: it wakes the next, which ends
			// too or takes the window left.
			signal(st.writable)
		}
		if err != nil {
			st.sendMu.Unlock()
			return written, err
		}
		if n == 0 {
			st.sendMu.Unlock()
			select {
			case <-st.writable:
				continue
			case <-st.writeDeadline.wait():
				return written, ErrTimeout
			case <-st.session.done:
				return written, ErrNotSent
			}
		}
		select {
		case <-st.writeDeadline.wait():
			st.sendMu.Unlock()
			st.giveBack(n)
			return written, ErrTimeout
		default:
		}
		st.mu.Lock()
		grant := st.grantDue(st.session.cfg.Window / 2)
		st.mu.Unlock()
		data := makeHeader(typeData, 0, st.id, n)
		if grant > 0 {
			update := makeHeader(typeWindowUpdate, 0, st.id, grant)
			err = st.session.writeFrames(&update, data, p[written:written+int(n)])
		} else {
			err = st.session.writeFrame(data, p[written:written+int(n)])
		}
		st.sendMu.Unlock()
		if err != nil {
			return written, err
		}
		written += int(n)
	}
	return written, nil
}

// giveBack returns window taken for a frame that was not sent.
func (st *Stream) giveBack(n uint32) {
	st.mu.Lock()
	st.sendWindow += n
	st.mu.Unlock()
	signal(st.writable)
}

// Close ends the stream for this end: the peer is sent FIN, and what it
// sends from now on is dropped. Pending reads and writes return
// ErrStreamClosed. If the peer does not close its side within the
// session's CloseTimeout, the stream is reset.
func (st *Stream) Close() error {
	st.mu.Lock()
	if st.localClosed || st.reset {
		st.mu.Unlock()
		return nil
	}
	st.localClosed = true
	st.dropChunks()
	remoteClosed := st.remoteClosed
	st.mu.Unlock()
	signal(st.readable)
	signal(st.writable)
	st.sendMu.Lock()
	err := st.session.writeFrame(makeHeader(typeWindowUpdate, flagFIN, st.id, 0), nil)
	st.sendMu.Unlock()
	if remoteClosed || err != nil {
		st.session.forget(st)
		return nil
	}
	st.mu.Lock()
	if !st.remoteClosed && !st.reset && !st.session.IsClosed() {
		st.closeTimer = time.AfterFunc(st.session.cfg.CloseTimeout, st.closeTimedOut)
	}
	st.mu.Unlock()
	return nil
}

// closeTimedOut resets a stream the peer did not close in time.
func (st *Stream) closeTimedOut() {
	st.mu.Lock()
	if st.remoteClosed || st.reset {
		st.mu.Unlock()
		return
	}
	st.reset = true
	st.mu.Unlock()
	// On a timer's goroutine, which may wait for the write lock: a burst
	// of these must not fill the reader's queue of control frames.
	_ = st.session.writeFrame(makeHeader(typeWindowUpdate, flagRST, st.id, 0), nil)
	st.session.forget(st)
}

// dropChunks drops the unread bytes, with st.mu held.
func (st *Stream) dropChunks() {
	for _, c := range st.chunks {
		st.session.cfg.Buffers.put(c)
	}
	st.chunks, st.offset, st.buffered = nil, 0, 0
}

// SetDeadline sets the read and write deadlines.
func (st *Stream) SetDeadline(t time.Time) error {
	st.readDeadline.set(t)
	st.writeDeadline.set(t)
	return nil
}

// SetReadDeadline sets the time after which reads fail with ErrTimeout;
// the zero time clears it.
func (st *Stream) SetReadDeadline(t time.Time) error {
	st.readDeadline.set(t)
	return nil
}

// SetWriteDeadline sets the time after which writes fail with ErrTimeout;
// the zero time clears it. A frame already waiting for the connection is
// still written.
func (st *Stream) SetWriteDeadline(t time.Time) error {
	st.writeDeadline.set(t)
	return nil
}

// receive reads a data frame's body of length bytes from r. It runs on the
// session's reader.
func (st *Stream) receive(r *bufio.Reader, length uint32) error {
	st.mu.Lock()
	if length > st.recvWindow {
		st.mu.Unlock()
		return fmt.Errorf("%w: %d bytes on stream %d, beyond its window of %d", ErrProtocol, length, st.id, st.recvWindow)
	}
	st.recvWindow -= length
	drop := st.localClosed || st.reset
	if !drop {
		// Until it is in the chunks, the frame is not window to grant.
		st.arriving = length
	}
	st.mu.Unlock()
	if !drop && int(length) <= r.Size() {
		return st.receiveSmall(r, length)
	}
	if drop {
		return discard(r, length)
	}
	chunk := st.session.cfg.Buffers.get(int(length))
	_, err := io.ReadFull(r, chunk)
	st.mu.Lock()
	st.arriving = 0
	if err != nil {
		st.mu.Unlock()
		st.session.cfg.Buffers.put(chunk)
		return readError(err)
	}
	if st.localClosed || st.reset {
		st.session.cfg.Buffers.put(chunk)
	} else {
		st.chunks = append(st.chunks, chunk)
		st.buffered += length
	}
	st.mu.Unlock()
	signal(st.readable)
	return nil
}

// receiveSmall takes a body that fits in the read buffer: it is copied
// into the last chunk when that has room, so that many small frames cost
// about the bytes they carry, not a chunk each.
func (st *Stream) receiveSmall(r *bufio.Reader, length uint32) error {
	data, err := r.Peek(int(length))
	st.mu.Lock()
	st.arriving = 0
	if err != nil {
		st.mu.Unlock()
		return readError(err)
	}
	if !st.localClosed && !st.reset {
		n := len(st.chunks)
		if n > 0 && cap(st.chunks[n-1])-len(st.chunks[n-1]) >= len(data) {
			st.chunks[n-1] = append(st.chunks[n-1], data...)
		} else {
			chunk := st.session.cfg.Buffers.get(max(len(data), smallChunk))[:0]
			st.chunks = append(st.chunks, append(chunk, data...))
		}
		st.buffered += length
	}
	st.mu.Unlock()
	_, _ = r.Discard(int(length))
	signal(st.readable)
	return nil
}

// grant adds the peer's window update to what this end may send.
func (st *Stream) grant(delta uint32) error {
	st.mu.Lock()
	if uint64(st.sendWindow)+uint64(delta) > math.MaxUint32 {
		st.mu.Unlock()
		return fmt.Errorf("%w: window of stream %d beyond 4 GiB", ErrProtocol, st.id)
	}
	st.sendWindow += delta
	st.mu.Unlock()
	if delta > 0 {
		signal(st.writable)
	}
	return nil
}

// remoteClose takes the peer's FIN.
func (st *Stream) remoteClose() {
	st.mu.Lock()
	st.remoteClosed = true
	done := st.localClosed
	if done && st.closeTimer != nil {
		st.closeTimer.Stop()
	}
	st.mu.Unlock()
	signal(st.readable)
	if done {
		st.session.forget(st)
	}
}

// accepted takes the peer's ACK.
func (st *Stream) accepted() {
	st.mu.Lock()
	st.acked = true
	st.mu.Unlock()
}

// resetError is the error of a reset stream, with st.mu held: a stream
// this end opened and the peer reset before accepting it was refused.
func (st *Stream) resetError() error {
	if !st.inbound && !st.acked {
		return ErrStreamRefused
	}
	return ErrStreamReset
}

// remoteReset takes the peer's RST.
func (st *Stream) remoteReset() {
	st.mu.Lock()
	st.reset = true
	st.dropChunks()
	if st.closeTimer != nil {
		st.closeTimer.Stop()
	}
	st.mu.Unlock()
	signal(st.readable)
	signal(st.writable)
	st.session.forget(st)
}

// sessionClosed wakes the stream's reads and writes as its session
// closes; the session already forgot it.
func (st *Stream) sessionClosed() {
	st.mu.Lock()
	if st.closeTimer != nil {
		st.closeTimer.Stop()
	}
	st.mu.Unlock()
	signal(st.readable)
	signal(st.writable)
}

// Received bodies are held in chunks from pools by size class, powers of
// two from minChunk to maxPooledChunk, so that answers of any size reuse
// memory instead of growing a buffer.
const (
	// smallChunk is the least a chunk of small frames holds.
	smallChunk     = 4 << 10
	minChunkShift  = 9 // 512 bytes
	maxChunkShift  = 18
	maxPooledChunk = 1 << maxChunkShift // 256 KiB, a default window
)

// Buffers hold received bodies: pools of chunks by size class, shared by
// the sessions given them (Config.Buffers), so that a proxy's thousands of
// tunnels reuse one set.
type Buffers struct {
	pools   [maxChunkShift - minChunkShift + 1]sync.Pool
	readers sync.Pool // of *bufio.Reader of readBufferSize
}

// reader returns a read buffer on conn.
func (b *Buffers) reader(conn io.Reader) *bufio.Reader {
	if r, ok := b.readers.Get().(*bufio.Reader); ok {
		r.Reset(conn)
		return r
	}
	return bufio.NewReaderSize(conn, readBufferSize)
}

// putReader gives a read buffer back.
func (b *Buffers) putReader(r *bufio.Reader) {
	r.Reset(nil)
	b.readers.Put(r)
}

// NewBuffers returns empty pools.
func NewBuffers() *Buffers { return &Buffers{} }

// chunkClass returns the pool of chunks of at least n bytes, or -1.
func chunkClass(n int) int {
	if n > maxPooledChunk {
		return -1
	}
	shift := max(bits.Len(uint(n-1)), minChunkShift)
	return shift - minChunkShift
}

func (b *Buffers) get(n int) []byte {
	class := chunkClass(n)
	if class < 0 {
		return make([]byte, n)
	}
	if c, ok := b.pools[class].Get().(*[]byte); ok {
		return (*c)[:n]
	}
	return make([]byte, n, 1<<(class+minChunkShift))
}

func (b *Buffers) put(c []byte) {
	class := chunkClass(cap(c))
	if class < 0 || cap(c) != 1<<(class+minChunkShift) {
		return
	}
	c = c[:cap(c)]
	b.pools[class].Put(&c)
}
