package rendezvous

import (
	"errors"
	"fmt"
)

// Errors of the rendezvous. Callers map them to statuses and outcomes.
var (
	// ErrShuttingDown: the hub takes no new work.
	ErrShuttingDown = errors.New("proxy is shutting down")
	// ErrTooManyClients: the registry is full (--registration.max-clients).
	ErrTooManyClients = errors.New("too many clients registered (--registration.max-clients)")
	// ErrTooManyLabelSets: an FQDN has too many label sets registered.
	ErrTooManyLabelSets = fmt.Errorf("too many label sets registered for this FQDN (at most %d within the registration timeout)", MaxLabelSetsPerFQDN)
	// ErrTooManyTargets: a client announced more targets than it may
	// (--registration.max-targets-per-client).
	ErrTooManyTargets = errors.New("too many targets announced by this client (--registration.max-targets-per-client)")
	// ErrDetached: the tunnel announcing targets has ended.
	ErrDetached = errors.New("tunnel has ended")
	// ErrNoClient: no client of the FQDN was ever heard from in time.
	ErrNoClient = errors.New("no client connected")
	// ErrClientIdle: a client of the FQDN is known but no carrier of it
	// took the scrape in time.
	ErrClientIdle = errors.New("client is known but did not poll in time")
	// ErrClientTimeout: a client took the scrape but did not answer in time.
	ErrClientTimeout = errors.New("client took the scrape but did not answer in time")
	// ErrClientLost: the tunnel carrying the scrape broke after the client
	// started on it.
	ErrClientLost = errors.New("client's tunnel broke during the scrape")
	// ErrAbandoned: Prometheus went away before the scrape was answered.
	ErrAbandoned = errors.New("scrape abandoned by Prometheus")
	// ErrNotCarried: a tunnel did not start on a scrape; the hub gives it
	// to another carrier. Tunnel implementations wrap it.
	ErrNotCarried = errors.New("tunnel did not take the scrape")
	// ErrPollOnly: the clients of the FQDN are connected only by polls,
	// which cannot carry a byte stream.
	ErrPollOnly = errors.New("client is connected by polls, which cannot carry a CONNECT tunnel: use a client with --proxy.transport=auto or tunnel, or scrape with the URL parameter _scheme=https")
	// ErrTooManyStreams: the client's tunnels carry as many CONNECT
	// streams as they may.
	ErrTooManyStreams = errors.New("client carries as many CONNECT streams as it may")
	// ErrPollGone: a parked poll's context ended before work came.
	ErrPollGone = errors.New("poll connection is gone")
	// ErrNoWork: a poll's wait passed without work.
	ErrNoWork = errors.New("no scrape within the poll's wait")
	// ErrUnknownID: a push names a scrape never issued, or answered.
	ErrUnknownID = errors.New("unknown scrape id: never issued, or already answered")
	// ErrExpiredID: a push names a scrape that has ended.
	ErrExpiredID = errors.New("scrape already ended: it timed out or Prometheus gave up before the push")
	// ErrWrongClient: a push comes from another identity than the poll
	// that took the scrape.
	ErrWrongClient = errors.New("scrape was handed to another client")
)
