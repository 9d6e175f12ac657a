package util

import (
	"bufio"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// SpliceConn is one end of a spliced byte stream: a connection or a
// tunnel stream.
type SpliceConn interface {
	io.ReadWriteCloser
	SetReadDeadline(time.Time) error
}

// spliceBufferSize is the copy buffer of each direction of a splice.
const spliceBufferSize = 32 << 10

// Splice copies bytes between a and b both ways until either side ends, or
// until nothing has moved either way for idle, then closes both. It
// returns the bytes copied from a to b and from b to a. counted, when not
// nil, is told of every piece copied, as it is copied.
func Splice(a, b SpliceConn, idle time.Duration, counted func(aToB bool, n int)) (aToB, bToA int64) {
	var last atomic.Int64 // unix nanoseconds of the latest byte either way
	last.Store(time.Now().UnixNano())
	pump := func(dst io.Writer, src SpliceConn, forward bool) int64 {
		buf := make([]byte, spliceBufferSize)
		var total int64
		for {
			_ = src.SetReadDeadline(time.Now().Add(idle))
			n, err := src.Read(buf)
			if n > 0 {
				last.Store(time.Now().UnixNano())
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return total
				}
				total += int64(n)
				if counted != nil {
					counted(forward, n)
				}
			}
			if err != nil {
				// A quiet direction is fine while the other one moves.
				var timeout interface{ Timeout() bool }
				if errors.As(err, &timeout) && timeout.Timeout() && time.Since(time.Unix(0, last.Load())) < idle {
					continue
				}
				return total
			}
		}
	}
	var wg sync.WaitGroup
	var closeOnce sync.Once
	closeBoth := func() { closeOnce.Do(func() { a.Close(); b.Close() }) }
	wg.Add(1)
	go func() {
		defer wg.Done()
		bToA = pump(a, b, false)
		closeBoth()
	}()
	aToB = pump(b, a, true)
	closeBoth()
	wg.Wait()
	return aToB, bToA
}

// BufferedConn is a connection whose first bytes were read into Reader
// (by net/http before a hijack, or while reading a head): it reads what
// Reader holds, then the connection directly.
type BufferedConn struct {
	SpliceConn
	Reader *bufio.Reader
}

// Read reads the bytes Reader holds first.
func (c BufferedConn) Read(b []byte) (int, error) {
	if c.Reader.Buffered() > 0 {
		return c.Reader.Read(b)
	}
	return c.SpliceConn.Read(b)
}
