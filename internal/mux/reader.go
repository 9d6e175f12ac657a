package mux

import (
	"bufio"
	"errors"
	"io"
	"os"
	"time"
)

// readBufferSize is the buffer frames are read through: a small frame and
// the header of the next one in one read.
const readBufferSize = 4 << 10

// frameReader reads a session's frames through a buffer that it holds only
// while frames come: after Config.ReadBufferIdle without one, the buffer
// goes back to the pool and the next header is read without it, so that a
// thousand idle sessions hold no thousand buffers.
type frameReader struct {
	conn io.Reader
	// deadlines are conn's; nil keeps the buffer for good.
	deadlines interface{ SetReadDeadline(time.Time) error }
	idle      time.Duration
	buffers   *Buffers
	buffered  *bufio.Reader // nil while idle
}

func newFrameReader(conn io.Reader, idle time.Duration, buffers *Buffers) *frameReader {
	fr := &frameReader{conn: conn, buffers: buffers}
	if d, ok := conn.(interface{ SetReadDeadline(time.Time) error }); ok && idle > 0 {
		// Idle from the start: the buffer comes with the first frame.
		fr.deadlines, fr.idle = d, idle
		return fr
	}
	fr.buffered = buffers.reader(conn)
	return fr
}

// header reads the next frame's header into h. The frame's body, if any,
// is then read from body().
func (fr *frameReader) header(h *header) error {
	if fr.deadlines != nil && fr.buffered != nil && fr.buffered.Buffered() == 0 {
		_ = fr.deadlines.SetReadDeadline(time.Now().Add(fr.idle))
		_, err := fr.buffered.Peek(1)
		_ = fr.deadlines.SetReadDeadline(time.Time{})
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return err
			}
			fr.buffers.putReader(fr.buffered)
			fr.buffered = nil
		}
	}
	if fr.buffered == nil {
		if _, err := io.ReadFull(fr.conn, h[:]); err != nil {
			return err
		}
		fr.buffered = fr.buffers.reader(fr.conn)
		return nil
	}
	_, err := io.ReadFull(fr.buffered, h[:])
	return err
}

// body is where the body of the frame whose header was read is.
func (fr *frameReader) body() *bufio.Reader { return fr.buffered }

// close gives the buffer back.
func (fr *frameReader) close() {
	if fr.buffered != nil {
		fr.buffers.putReader(fr.buffered)
		fr.buffered = nil
	}
}
