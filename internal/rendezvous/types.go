package rendezvous

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// Client is who a carrier works for: the FQDN it answers for (any case, a
// trailing dot or not), its discovery labels, and the identity that
// authenticated it, which alone may answer the scrapes it takes.
type Client struct {
	FQDN     string
	Labels   map[string]string
	Identity string
	// Target, when set, says that the client answers for FQDN on behalf
	// of another host, as a gateway does for the targets in its targets
	// file: it is the name discovery lists, host:port as the client
	// writes it. Via is then the client's own FQDN, by which the targets
	// it announced are counted and shown.
	Target string
	Via    string
	// Owner is who the targets a client answers for count against
	// (Config.MaxTargetsPerClient): for a target, the client that
	// announced it as the proxy knows it, which the caller cannot claim
	// for another client (its Via with its identity, or its source
	// address); for a tunnel's client, the owner of the targets it will
	// announce. Empty means Via, or the FQDN of a tunnel's client.
	Owner string
}

// serves says whether a poll takes s: of its FQDN, and of its target's
// port when it polls for a target.
func (p *poll) serves(s *Scrape) bool { return p.port == "" || p.port == s.Port }

// targetPort is the port of a target's name, host:port.
func targetPort(name string) string {
	_, port, _ := net.SplitHostPort(name)
	return port
}

// owner is who c, a target, counts against.
func (c Client) owner() string {
	if c.Owner != "" {
		return c.Owner
	}
	return c.Via
}

// Scrape is one Prometheus request for a target. The caller fills in the
// exported fields and hands it to Hub.Scrape once; it must not change
// them afterwards.
type Scrape struct {
	ID   string // names the scrape on the wire
	FQDN string // the target's host; the hub routes by its normal form
	// Port is the target's port. A client's own FQDN answers for every
	// port of it, a target (Client.Target) for its own port only, so
	// that a gateway listing nas:9633 is not given the scrapes of
	// nas:9100 when nas has a client of its own; while it has none, a
	// carrier of a target on the host takes any port (and its client
	// refuses those it does not list, with the reason). Empty matches
	// only clients' own FQDNs.
	Port     string
	Request  []byte    // the request in the wire format, as a poll carries it
	Deadline time.Time // when Prometheus stops waiting

	// What follows is the hub's, guarded by Hub.mu.
	ctx      context.Context
	events   chan event // capacity 1: at most one event is pending
	state    scrapeState
	identity string        // who may push its answer
	reg      *registration // the registration whose carrier took it
	handedAt time.Time
	tried    []*Session // tunnels that did not take it
}

// scrapeState is where a scrape is.
type scrapeState int

const (
	stateWaiting scrapeState = iota // with no carrier, and not queued
	stateQueued                     // in the queue of its FQDN
	stateHanded                     // handed to a poll, awaiting its push
	stateClaimed                    // its push has arrived
	stateTunnel                     // on a tunnel
	stateDone
)

// event is what the hub tells a waiting scrape: exactly one field is set.
type event struct {
	answer   *Answer  // its push arrived
	session  *Session // a slot of this tunnel is reserved for it
	shutdown bool     // no carrier will come
}

// Answer is a client's answer to a scrape: its status and headers, and its
// body still unread, streaming from the client.
type Answer struct {
	Response *http.Response
	// Handed is when a carrier took the scrape.
	Handed time.Time
	done   func(error)
	once   sync.Once
}

// Done reports how relaying the answer to Prometheus ended (nil when it
// all arrived). The caller of Scrape calls it exactly once.
func (a *Answer) Done(err error) {
	a.once.Do(func() { a.done(err) })
}

// Tunnel is a carrier that takes many scrapes at once on one connection.
type Tunnel interface {
	// Carry sends s to the client and returns its answer, the body
	// unread, within ctx. Closing the body ends the scrape on the tunnel.
	// An error wrapping ErrNotCarried says the client did not start on s,
	// so that another carrier may take it.
	Carry(ctx context.Context, s *Scrape) (*http.Response, error)
}

// poll is a client's parked request for work.
type poll struct {
	ctx    context.Context // ends when the client's connection is gone
	client Client
	// port is the port of the poll's target, or empty when it polls as
	// a client's own FQDN, for every port.
	port   string
	reg    *registration
	handed chan *Scrape // capacity 1, so handing over never blocks under the lock
}
