package util

import (
	"encoding/binary"
	"io"
)

// yamux frame headers (github.com/hashicorp/yamux spec.md): version, type,
// flags, stream ID and length, 12 bytes; a data frame's length is the size
// of the body that follows it.
const (
	yamuxHeaderSize = 12
	yamuxVersion    = 0
	yamuxTypeData   = 0

	// MaxJoinedFrame bounds the frames whose header and body are copied
	// into one buffer to be written at once, and so the buffer each end of
	// a tunnel keeps: a frame is at most a stream window, and the largest
	// frames are answers, which a client writes; a proxy writes requests
	// and, for CONNECT, pieces of util.Splice's buffer.
	MaxJoinedFrame = TunnelStreamWindow
)

// frameConn is a tunnel connection that sends a yamux data frame's header
// and body in one write. yamux writes them one after the other, which on a
// connection with TCP_NODELAY costs two system calls and two segments per
// frame, each waking the peer; a scrape's request and answer are one frame
// each.
type frameConn struct {
	io.ReadWriteCloser
	// held is a data frame's header waiting for its body; yamux's single
	// send loop is the only writer, so it needs no lock.
	held    [yamuxHeaderSize]byte
	holding bool
	joined  []byte // header and body of a frame, reused up to keep bytes
	keep    int
}

// TunnelConn returns conn for a yamux session of a tunnel: a data frame's
// header and body leave together. The buffer that joins them is kept for
// the next frame while it is at most keep bytes: a client, which sends the
// answers, keeps one as large as a frame; a proxy, with thousands of
// tunnels sending small requests, keeps a small one. Only yamux's send loop
// may write to it.
func TunnelConn(conn io.ReadWriteCloser, keep int) io.ReadWriteCloser {
	return &frameConn{ReadWriteCloser: conn, keep: keep}
}

// Write holds a data frame's header until its body comes, and writes both
// at once.
func (c *frameConn) Write(p []byte) (int, error) {
	if c.holding {
		c.holding = false
		if len(p) > MaxJoinedFrame {
			if _, err := c.ReadWriteCloser.Write(c.held[:]); err != nil {
				return 0, err
			}
			return c.ReadWriteCloser.Write(p)
		}
		c.joined = append(append(c.joined[:0], c.held[:]...), p...)
		n, err := c.ReadWriteCloser.Write(c.joined)
		if cap(c.joined) > c.keep {
			c.joined = nil
		}
		return max(n-yamuxHeaderSize, 0), err
	}
	if len(p) == yamuxHeaderSize && p[0] == yamuxVersion && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:]) > 0 {
		copy(c.held[:], p)
		c.holding = true
		return len(p), nil
	}
	return c.ReadWriteCloser.Write(p)
}
