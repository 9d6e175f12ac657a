//go:build unix

package main

import (
	"errors"
	"net"
	"syscall"
	"time"
)

// awaitRequest waits until conn's client sends the first byte of its next
// request, at most idle (0: no bound), without reading it, and reports
// whether one came. A connection it cannot peek at is taken as ready.
func awaitRequest(conn net.Conn, idle time.Duration) bool {
	raw := conn
	if tlsConn, ok := conn.(interface{ NetConn() net.Conn }); ok {
		raw = tlsConn.NetConn()
	}
	sc, ok := raw.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	if idle > 0 {
		_ = raw.SetReadDeadline(time.Now().Add(idle))
		defer raw.SetReadDeadline(time.Time{})
	}
	var n int
	var peekErr error
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			n, _, peekErr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
			if !errors.Is(peekErr, syscall.EINTR) {
				// Not ready yet: the poller waits for the socket.
				return !errors.Is(peekErr, syscall.EAGAIN)
			}
		}
	})
	return err == nil && peekErr == nil && n > 0
}
