// Package mux carries many streams over one connection, speaking the frames
// of yamux protocol version 0 (github.com/hashicorp/yamux, spec.md), so
// that it interoperates with any yamux peer. It is the multiplexer of a
// PushProx tunnel (docs/tunnel.md), written for its traffic: a request and
// an answer alternating on each stream, a proxy with thousands of idle
// tunnels.
//
// What it does differently from hashicorp/yamux, and why:
//
//   - A frame is written by the goroutine that sends it, under the
//     session's write lock, with its header and body in one write. There is
//     no send loop to hand frames to and wait for, and a body is not copied
//     on its way out beyond joining it to its header.
//   - One goroutine per session reads frames, through a read buffer it
//     gives back to a shared pool when no frame came for a while
//     (Config.ReadBufferIdle), so that idle sessions hold none; the body
//     of a data frame is read into a pooled chunk that the stream's reader
//     then copies from. Nothing but reading blocks it: the frames it must
//     send (pongs, refusals) wait in a small queue that the next writer,
//     or a goroutine started for them when no one writes, sends.
//   - Pings run on timers, not in a goroutine of their own.
//   - The window a stream owes its peer goes in the same write as the
//     stream's next data frame (a tunnel's next request) once half the
//     window is owed, and in a frame of its own only at three quarters:
//     a request and answer stream costs no window update of its own.
//
// # Concurrency
//
// A Session's methods are safe for concurrent use. A Stream's Read,
// Write, Close and deadline setters may be called concurrently with each
// other; like a net.Conn, concurrent Reads (or concurrent Writes) on one
// stream get no order between them.
//
// # Ownership
//
//   - The session's reader goroutine is the only reader of the connection,
//     and the only one to add frames' bodies to a stream's receive queue.
//     It starts with Client or Server and ends when the connection fails
//     or the session closes; Close waits for it.
//   - Writes to the connection happen only under the session's write
//     lock. A write that fails closes the session.
//   - Streams are created by Open (this end) or by the reader (the peer's
//     SYN), and are forgotten by the session once both ends closed them,
//     one end reset them, or the session closed. A stream this end closed
//     that the peer does not close within Config.CloseTimeout is reset.
//
// # Go-away and refusals
//
// After GoAway, streams the peer opens are reset; Accept returns those it
// opened before, then ErrLocalGoAway, so that the acceptor knows when it
// has them all. A stream this end opened that the peer resets before its
// ACK gives ErrStreamRefused (an ErrStreamReset): the peer never read it.
//
// # Exactly once
//
// A session closes once; its error (Err) is set before Done is closed. A
// stream's FIN, ACK and SYN are each sent at most once. Each stream's
// receive window is granted back to the peer as its reader consumes it,
// never beyond Config.Window buffered.
//
// # Bounds
//
// What a peer can make a session hold is bounded: per stream, at most
// Config.Window bytes of received data (more is a protocol error that ends
// the session), held in about as much memory however small its frames; at most Config.MaxInbound streams opened by the peer at
// once (more are refused with a reset); at most maxPendingControl frames
// waiting to be sent. Data for streams that are gone is read and dropped.
package mux
