package main

import (
	"net"
	"sync"
)

// connQueue is a net.Listener whose connections are put in by the proxy.
type connQueue struct {
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

func newConnQueue() *connQueue {
	return &connQueue{conns: make(chan net.Conn, resumedQueue), closed: make(chan struct{})}
}

// put queues conn for Accept; false if the queue is closed.
func (q *connQueue) put(conn net.Conn) bool {
	select {
	case <-q.closed:
		return false
	default:
	}
	select {
	case q.conns <- conn:
		select {
		case <-q.closed:
			// Close may have drained the queue before conn was in it.
			q.drain()
		default:
		}
		return true
	case <-q.closed:
		return false
	}
}

// drain closes the connections in the queue.
func (q *connQueue) drain() {
	for {
		select {
		case conn := <-q.conns:
			conn.Close()
		default:
			return
		}
	}
}

// Accept returns the next queued connection.
func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case conn := <-q.conns:
		return conn, nil
	case <-q.closed:
		return nil, net.ErrClosed
	}
}

// Close stops the queue and closes the connections left in it.
func (q *connQueue) Close() error {
	q.closeOnce.Do(func() {
		close(q.closed)
		q.drain()
	})
	return nil
}

// Addr names the queue; it has no address of its own.
func (q *connQueue) Addr() net.Addr { return queueAddr{} }

type queueAddr struct{}

func (queueAddr) Network() string { return "pushprox" }
func (queueAddr) String() string  { return "answered polls" }
