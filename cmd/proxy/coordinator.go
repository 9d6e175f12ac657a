package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/rancher/pushprox/util"
)

// maxRememberedIDs bounds the set of recently abandoned scrape IDs kept to
// tell a late push apart from an unknown one.
const maxRememberedIDs = 10000

// maxRegistrationsPerFQDN bounds the label sets registered for one FQDN,
// so that a client cycling through labels cannot grow the proxy's memory
// and its service discovery without end.
const maxRegistrationsPerFQDN = 64

// maxClientSeries bounds the FQDNs that get per-client series
// (pushprox_proxy_client_connected and _last_seen_timestamp_seconds), so that
// a proxy with a huge fleet, or one flooded with made-up names, does not
// flood Prometheus. The FQDNs past the bound, in sort order, are omitted.
const maxClientSeries = 10000

// transportPoll names the long-poll transport in metrics. This proxy has no
// other; the tunnel transport's series are exported as zero so that
// dashboards and alerts see both label values.
const (
	transportPoll   = "poll"
	transportTunnel = "tunnel"
)

// rememberIDsFor is how long an abandoned scrape ID is remembered.
const rememberIDsFor = 10 * time.Minute

var (
	errShuttingDown     = errors.New("proxy is shutting down")
	errTooManyClients   = errors.New("too many clients registered (--registration.max-clients)")
	errTooManyLabelSets = fmt.Errorf("too many label sets registered for this FQDN (at most %d within the registration timeout)", maxRegistrationsPerFQDN)
	errUnknownID        = errors.New("unknown scrape id: never issued, or already answered")
	errExpiredID        = errors.New("scrape already ended: it timed out or Prometheus gave up before the push")
	errWrongClient      = errors.New("scrape was handed to another client")
)

// scrape is one Prometheus request waiting for a client to answer it.
type scrape struct {
	id       string
	fqdn     string
	head     []byte          // the request in proxy form, as a poll answer carries it
	deadline time.Time       // when Prometheus stops waiting
	ctx      context.Context // ends at deadline or when Prometheus goes away
	pushed   chan *pushed    // capacity 1: at most one push ever takes the scrape; nil when it cannot be answered

	// identity is who received the scrape, client its registration and
	// handedAt when; set when it is handed to a poll, guarded by
	// coordinator.mu.
	identity string
	client   *clientInfo
	handedAt time.Time
}

// pushed is a client's answer to a scrape, handed from the /push handler to
// the Prometheus-facing handler. The body is still unread: the Prometheus
// handler streams it and reports how the copy ended on done.
type pushed struct {
	resp *http.Response
	done chan error // capacity 1
}

// poll is a client's parked request for work.
type poll struct {
	ctx      context.Context // ends when the client's connection is gone
	fqdn     string
	labels   map[string]string
	identity string
	handed   chan *scrape // capacity 1, so handing over never blocks under the lock

	// client is the registration p counts for, set by park; guarded by
	// coordinator.mu.
	client *clientInfo
}

// recentOutcomes is how many scrape outcomes are kept per client for the
// landing page.
const recentOutcomes = 10

// clientInfo is what the coordinator knows of one client registration. Its
// fields are guarded by coordinator.mu.
type clientInfo struct {
	fqdn     string
	labels   map[string]string
	lastSeen time.Time // when a poll of it last arrived or ended
	polls    int       // polls of it being served right now
	outcomes []string  // the latest scrape outcomes, oldest first
}

// clientStatus is a snapshot of a clientInfo.
type clientStatus struct {
	FQDN     string
	Labels   map[string]string
	LastSeen time.Time
	Polls    int
	Outcomes []string
}

// coordinator is the rendezvous of scrapes and polls. Scrapes go to the
// oldest live poll of their FQDN, or wait in a queue for the next one; polls
// take the oldest live queued scrape, or park.
type coordinator struct {
	logger              log.Logger
	registrationTimeout time.Duration
	maxClients          int              // most client registrations kept at once
	now                 func() time.Time // the clock, replaceable in tests
	closed              chan struct{}    // closed when shutdown begins
	stopGC              chan struct{}
	gcDone              chan struct{}

	mu sync.Mutex
	// parked holds live parked polls per FQDN, oldest first; guarded by mu.
	parked map[string][]*poll
	// queued holds scrapes waiting for a poll per FQDN, oldest first; guarded by mu.
	queued map[string][]*scrape
	// inflight holds scrapes handed to a poll and awaiting their push, by ID; guarded by mu.
	inflight map[string]*scrape
	// ended remembers recently abandoned scrape IDs and when; guarded by mu.
	ended map[string]time.Time
	// clients holds every client registration heard from within the
	// registration timeout, by FQDN and then by util.LabelsKey of its
	// labels, so that the labels of two clients with the same FQDN do not
	// mix; guarded by mu.
	clients map[string]map[string]*clientInfo
	// registrations counts the entries of clients; guarded by mu.
	registrations int
	// connects counts the registrations ever created, the poll transport's
	// connections established; guarded by mu.
	connects int64
	// closing is set when shutdown begins; guarded by mu.
	closing bool
	// drained is closed when closing and inflight is empty; guarded by mu.
	drained chan struct{}
}

func newCoordinator(logger log.Logger, registrationTimeout time.Duration, maxClients int, now func() time.Time) *coordinator {
	c := &coordinator{
		logger:              logger,
		registrationTimeout: registrationTimeout,
		maxClients:          maxClients,
		now:                 now,
		closed:              make(chan struct{}),
		stopGC:              make(chan struct{}),
		gcDone:              make(chan struct{}),
		parked:              map[string][]*poll{},
		queued:              map[string][]*scrape{},
		inflight:            map[string]*scrape{},
		ended:               map[string]time.Time{},
		clients:             map[string]map[string]*clientInfo{},
		drained:             make(chan struct{}),
	}
	go c.gcLoop()
	return c
}

// submit hands s to the oldest live poll of its FQDN, or queues it.
func (c *coordinator) submit(s *scrape) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return errShuttingDown
	}
	if p := c.takePollLocked(s.fqdn); p != nil {
		c.handLocked(s, p)
		return nil
	}
	c.queued[s.fqdn] = append(c.queued[s.fqdn], s)
	return nil
}

// park registers p as a client's request for work. It returns a queued scrape
// at once if one is waiting; otherwise p is parked until handed one, and the
// caller must call unpark when it stops waiting. release must follow either.
func (c *coordinator) park(p *poll) (*scrape, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return nil, errShuttingDown
	}
	registrations := c.clients[p.fqdn]
	if registrations == nil {
		registrations = map[string]*clientInfo{}
		c.clients[p.fqdn] = registrations
	}
	key := util.LabelsKey(p.labels)
	info := registrations[key]
	if info == nil {
		if len(registrations) >= maxRegistrationsPerFQDN {
			return nil, errTooManyLabelSets
		}
		if c.registrations >= c.maxClients {
			return nil, errTooManyClients
		}
		c.registrations++
		c.connects++
		info = &clientInfo{fqdn: p.fqdn, labels: p.labels}
		registrations[key] = info
		level.Info(c.logger).Log("msg", "client registered", "fqdn", p.fqdn, "labels", util.EncodeLabels(p.labels))
	}
	info.lastSeen = c.now()
	info.polls++
	p.client = info
	if s := c.takeScrapeLocked(p.fqdn); s != nil {
		c.registerInflightLocked(s, p)
		return s, nil
	}
	c.parked[p.fqdn] = append(c.parked[p.fqdn], p)
	return nil, nil
}

// unpark removes p from the parked polls. If a scrape was handed to p in the
// meantime, it is returned and now belongs to the caller.
func (c *coordinator) unpark(p *poll) *scrape {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removePollLocked(p)
	select {
	case s := <-p.handed:
		return s
	default:
		return nil
	}
}

// release notes that the client of p is no longer being served by p.
func (c *coordinator) release(p *poll) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p.client.polls--
	p.client.lastSeen = c.now()
}

// requeue takes back a scrape whose poll could not deliver it and gives it
// to another live poll, or puts it at the front of its queue, if Prometheus
// still waits for it.
func (c *coordinator) requeue(s *scrape) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inflight[s.id] != s {
		return
	}
	c.deleteInflightLocked(s.id)
	if s.ctx.Err() != nil {
		return
	}
	if c.closing {
		// No poll will come: a nil answer tells the waiting Prometheus
		// handler at once. No push can take s any more, so the channel
		// is free.
		s.pushed <- nil
		return
	}
	if p := c.takePollLocked(s.fqdn); p != nil {
		c.handLocked(s, p)
		return
	}
	c.queued[s.fqdn] = append([]*scrape{s}, c.queued[s.fqdn]...)
}

// withdraw removes a scrape whose Prometheus request ended, and reports
// whether a client had received it.
func (c *coordinator) withdraw(s *scrape) (handed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inflight[s.id] == s {
		c.deleteInflightLocked(s.id)
		c.rememberEndedLocked(s.id)
		return true
	}
	c.removeQueuedLocked(s)
	return false
}

// withdrawQueued removes s if it still waits for a poll, and reports
// whether it did.
func (c *coordinator) withdrawQueued(s *scrape) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.removeQueuedLocked(s)
}

// take claims the in-flight scrape named by id for a push by identity.
func (c *coordinator) take(id, identity string) (*scrape, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.inflight[id]
	if s == nil {
		if _, ok := c.ended[id]; ok {
			return nil, errExpiredID
		}
		return nil, errUnknownID
	}
	if s.identity != identity {
		return nil, errWrongClient
	}
	c.deleteInflightLocked(id)
	return s, nil
}

// known reports whether a client of fqdn has been heard from.
func (c *coordinator) known(fqdn string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.clients[fqdn]) > 0
}

// clientList returns the clients that are connected or were heard from
// within the registration timeout, sorted by FQDN and labels.
func (c *coordinator) clientList() []clientStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	var list []clientStatus
	var keys []string // FQDN and labels key of each entry of list, to sort by
	for fqdn, registrations := range c.clients {
		for key, info := range registrations {
			if !c.aliveLocked(info, now) {
				continue
			}
			keys = append(keys, fqdn+"\x00"+key)
			list = append(list, clientStatus{
				FQDN:     info.fqdn,
				Labels:   info.labels,
				LastSeen: info.lastSeen,
				Polls:    info.polls,
				Outcomes: append([]string(nil), info.outcomes...),
			})
		}
	}
	sort.Sort(byKey{keys, list})
	return list
}

// byKey sorts client statuses by their keys.
type byKey struct {
	keys []string
	list []clientStatus
}

func (b byKey) Len() int           { return len(b.keys) }
func (b byKey) Less(i, j int) bool { return b.keys[i] < b.keys[j] }
func (b byKey) Swap(i, j int) {
	b.keys[i], b.keys[j] = b.keys[j], b.keys[i]
	b.list[i], b.list[j] = b.list[j], b.list[i]
}

// clientCount returns the number of known clients.
func (c *coordinator) clientCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	n := 0
	for _, registrations := range c.clients {
		for _, info := range registrations {
			if c.aliveLocked(info, now) {
				n++
			}
		}
	}
	return n
}

// connectedCount returns the number of client registrations with a poll
// parked or being answered.
func (c *coordinator) connectedCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, registrations := range c.clients {
		for _, info := range registrations {
			if info.polls > 0 {
				n++
			}
		}
	}
	return n
}

// connectCount returns the number of registrations created since start.
func (c *coordinator) connectCount() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connects
}

// fqdnStatus is what the per-client metrics tell of one FQDN: all the
// registrations (label sets) of that FQDN taken together.
type fqdnStatus struct {
	fqdn      string
	connected bool      // a registration of it has a poll parked or being answered
	lastSeen  time.Time // its latest contact; now while connected
}

// fqdnStatuses returns the known FQDNs, sorted, at most limit of them.
func (c *coordinator) fqdnStatuses(limit int) []fqdnStatus {
	c.mu.Lock()
	now := c.now()
	list := make([]fqdnStatus, 0, len(c.clients))
	for fqdn, registrations := range c.clients {
		st := fqdnStatus{fqdn: fqdn}
		known := false
		for _, info := range registrations {
			if !c.aliveLocked(info, now) {
				continue
			}
			known = true
			if info.polls > 0 {
				st.connected = true
			}
			if info.lastSeen.After(st.lastSeen) {
				st.lastSeen = info.lastSeen
			}
		}
		if !known {
			continue
		}
		if st.connected {
			st.lastSeen = now
		}
		list = append(list, st)
	}
	c.mu.Unlock()
	// Sorting outside the lock: with a large fleet it takes a while, and
	// polls must not wait for a metrics scrape.
	sort.Slice(list, func(i, j int) bool { return list[i].fqdn < list[j].fqdn })
	if len(list) > limit {
		list = list[:limit]
	}
	return list
}

// recordOutcome notes how a scrape ended, for the landing page: on the
// client that took it, or on every client of its FQDN if none did.
func (c *coordinator) recordOutcome(s *scrape, outcome string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.client != nil {
		s.client.noteLocked(outcome)
		return
	}
	for _, info := range c.clients[s.fqdn] {
		info.noteLocked(outcome)
	}
}

func (info *clientInfo) noteLocked(outcome string) {
	if len(info.outcomes) == recentOutcomes {
		copy(info.outcomes, info.outcomes[1:])
		info.outcomes = info.outcomes[:recentOutcomes-1]
	}
	info.outcomes = append(info.outcomes, outcome)
}

// parkedCount returns the number of parked polls.
func (c *coordinator) parkedCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, polls := range c.parked {
		n += len(polls)
	}
	return n
}

// shutdown stops accepting polls and scrapes. Parked polls and queued
// scrapes see c.closed and give up; handed scrapes may still be pushed.
func (c *coordinator) shutdown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	c.closing = true
	close(c.closed)
	if len(c.inflight) == 0 {
		close(c.drained)
	}
}

// drain waits until every scrape handed to a client has been pushed or has
// ended, or until ctx ends. Call it after shutdown.
func (c *coordinator) drain(ctx context.Context) error {
	select {
	case <-c.drained:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close stops the garbage collector and waits for it.
func (c *coordinator) close() {
	close(c.stopGC)
	<-c.gcDone
}

func (c *coordinator) gcLoop() {
	defer close(c.gcDone)
	interval := min(max(c.registrationTimeout/4, time.Second), time.Minute)
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			c.collectGarbage(c.now())
		case <-c.stopGC:
			return
		}
	}
}

// collectGarbage forgets clients gone past the registration timeout and
// scrape IDs ended long ago.
func (c *coordinator) collectGarbage(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for fqdn, registrations := range c.clients {
		for key, info := range registrations {
			if !c.aliveLocked(info, now) {
				delete(registrations, key)
				c.registrations--
				level.Info(c.logger).Log("msg", "client forgotten", "fqdn", fqdn, "last_seen", info.lastSeen)
			}
		}
		if len(registrations) == 0 {
			delete(c.clients, fqdn)
		}
	}
	for id, at := range c.ended {
		if now.Sub(at) > rememberIDsFor {
			delete(c.ended, id)
		}
	}
}

// aliveLocked says whether a client counts as known: a parked poll is
// contact, however long it has been parked.
func (c *coordinator) aliveLocked(info *clientInfo, now time.Time) bool {
	return info.polls > 0 || now.Sub(info.lastSeen) <= c.registrationTimeout
}

// takePollLocked pops the oldest live parked poll of fqdn, dropping dead ones.
func (c *coordinator) takePollLocked(fqdn string) *poll {
	polls := c.parked[fqdn]
	for len(polls) > 0 {
		p := polls[0]
		polls[0] = nil
		polls = polls[1:]
		if p.ctx.Err() == nil {
			c.setParkedLocked(fqdn, polls)
			return p
		}
	}
	c.setParkedLocked(fqdn, polls)
	return nil
}

// takeScrapeLocked pops the oldest queued scrape of fqdn that Prometheus
// still waits for, dropping ended ones.
func (c *coordinator) takeScrapeLocked(fqdn string) *scrape {
	scrapes := c.queued[fqdn]
	for len(scrapes) > 0 {
		s := scrapes[0]
		scrapes[0] = nil
		scrapes = scrapes[1:]
		if s.ctx.Err() == nil {
			c.setQueuedLocked(fqdn, scrapes)
			return s
		}
	}
	c.setQueuedLocked(fqdn, scrapes)
	return nil
}

// handLocked registers s as in flight to p, then hands it over. The order
// matters: a push may arrive as soon as the poll has it.
func (c *coordinator) handLocked(s *scrape, p *poll) {
	c.registerInflightLocked(s, p)
	p.handed <- s
}

// registerInflightLocked records that s goes to p and awaits its push.
func (c *coordinator) registerInflightLocked(s *scrape, p *poll) {
	s.identity = p.identity
	s.client = p.client
	s.handedAt = time.Now()
	c.inflight[s.id] = s
}

func (c *coordinator) removePollLocked(p *poll) {
	polls := c.parked[p.fqdn]
	for i, q := range polls {
		if q == p {
			c.setParkedLocked(p.fqdn, append(polls[:i:i], polls[i+1:]...))
			return
		}
	}
}

func (c *coordinator) removeQueuedLocked(s *scrape) bool {
	scrapes := c.queued[s.fqdn]
	for i, q := range scrapes {
		if q == s {
			c.setQueuedLocked(s.fqdn, append(scrapes[:i:i], scrapes[i+1:]...))
			return true
		}
	}
	return false
}

// setParkedLocked and setQueuedLocked store a list, deleting empty ones so
// that no state is kept for FQDNs without work.
func (c *coordinator) setParkedLocked(fqdn string, polls []*poll) {
	if len(polls) == 0 {
		delete(c.parked, fqdn)
		return
	}
	c.parked[fqdn] = polls
}

func (c *coordinator) setQueuedLocked(fqdn string, scrapes []*scrape) {
	if len(scrapes) == 0 {
		delete(c.queued, fqdn)
		return
	}
	c.queued[fqdn] = scrapes
}

func (c *coordinator) deleteInflightLocked(id string) {
	delete(c.inflight, id)
	if c.closing && len(c.inflight) == 0 {
		select {
		case <-c.drained:
		default:
			close(c.drained)
		}
	}
}

func (c *coordinator) rememberEndedLocked(id string) {
	if len(c.ended) < maxRememberedIDs {
		c.ended[id] = c.now()
	}
}
