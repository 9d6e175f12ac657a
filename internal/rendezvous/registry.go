package rendezvous

import (
	"container/list"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/rancher/pushprox/util"
)

// MaxLabelSetsPerFQDN bounds the label sets registered for one FQDN, so
// that a client cycling through labels cannot grow the proxy's memory and
// its service discovery without end.
const MaxLabelSetsPerFQDN = 64

// maxLabelBytes bounds the encoded labels of all distinct label sets
// registered at once (each at most util.MaxLabelsBytes): with 100 000
// clients of distinct 4 KiB label sets the registry would otherwise hold
// 400 MiB of labels alone.
const maxLabelBytes = 64 << 20

// DefaultMaxTargetsPerClient bounds the targets one client may announce
// (Config.MaxTargetsPerClient) when the configuration names no bound: each
// is a registration of its own, and one gateway must not take the whole
// of MaxClients.
const DefaultMaxTargetsPerClient = 1024

// recentOutcomes is how many scrape outcomes are kept per registration for
// the landing page.
const recentOutcomes = 10

// Transports of a carrier, as metrics and the landing page name them.
const (
	TransportPoll   = "poll"
	TransportTunnel = "tunnel"
)

// registration is one client as the hub knows it: an FQDN with a label
// set, or a target a client answers for (see Client.Target). Its fields
// are guarded by Hub.mu.
type registration struct {
	fqdn string
	// spelling is the FQDN as its client last wrote it, when that is not
	// fqdn (upper case, a trailing dot): discovery lists it, since a
	// reference client answers only scrapes of its name as it spells it.
	spelling  string
	target    string // host:port as listed, or empty for a client's own name
	via       string // the FQDN of the client that announced target
	owner     string // who target counts against (Client.Owner)
	labels    *labelSet
	lastSeen  time.Time // last contact; while connected, refreshed when read
	polls     int       // polls of it being served now
	tunnels   int       // tunnels of it attached now
	transport string    // of its latest connection
	outcomes  []string  // the latest scrape outcomes, oldest first
	idle      *list.Element
}

// spell notes how the client wrote its FQDN this time.
func (r *registration) spell(name string) {
	if name == r.fqdn {
		r.spelling = ""
	} else {
		r.spelling = name
	}
}

// name is the FQDN as its client writes it.
func (r *registration) name() string {
	if r.spelling != "" {
		return r.spelling
	}
	return r.fqdn
}

// connected says whether the registration has a live carrier.
func (r *registration) connected() bool { return r.polls+r.tunnels > 0 }

func (r *registration) note(outcome string) {
	if len(r.outcomes) == recentOutcomes {
		copy(r.outcomes, r.outcomes[1:])
		r.outcomes = r.outcomes[:recentOutcomes-1]
	}
	r.outcomes = append(r.outcomes, outcome)
}

// labelSet is one distinct set of labels, shared by every registration
// that has it, so that a thousand clients with the same labels hold them
// once.
type labelSet struct {
	key    string // util.LabelsKey of labels
	labels map[string]string
	bytes  int // encoded size, counted against maxLabelBytes
	refs   int
}

// registry holds the registrations heard from within the registration
// timeout. It is not safe for concurrent use; the Hub guards it.
type registry struct {
	timeout    time.Duration
	maxClients int
	maxTargets int                                 // per owner (Client.Owner)
	byFQDN     map[string]map[string]*registration // by FQDN, then registrationKey
	count      int
	// targets counts the target registrations by the client that
	// announced them (via), as shown.
	targets map[string]int
	// owned counts the target registrations by owner, against maxTargets.
	owned      map[string]int
	labelSets  map[string]*labelSet
	labelBytes int
	// idle lists the registrations without a live carrier, least
	// recently seen first, so that a full registry can make room in O(1).
	idle *list.List
}

func newRegistry(timeout time.Duration, maxClients, maxTargets int) registry {
	return registry{
		timeout:    timeout,
		maxClients: maxClients,
		maxTargets: maxTargets,
		byFQDN:     map[string]map[string]*registration{},
		targets:    map[string]int{},
		owned:      map[string]int{},
		labelSets:  map[string]*labelSet{},
		idle:       list.New(),
	}
}

// find returns the registration of c, creating it if there is room. A full
// registry first forgets the least recently seen client without a live
// carrier. created says whether it is new.
func (g *registry) find(c Client, now time.Time) (r *registration, created bool, err error) {
	labelsKey := util.LabelsKey(c.Labels)
	key := registrationKey(c.Target, labelsKey)
	byLabels := g.byFQDN[c.FQDN]
	if r := byLabels[key]; r != nil {
		return r, false, nil
	}
	if len(byLabels) >= MaxLabelSetsPerFQDN {
		return nil, false, ErrTooManyLabelSets
	}
	if c.Target != "" && g.owned[c.owner()] >= g.maxTargets {
		return nil, false, fmt.Errorf("%w: at most %d", ErrTooManyTargets, g.maxTargets)
	}
	set := g.labelSets[labelsKey]
	size := 0
	if set == nil {
		size = len(util.EncodeLabels(c.Labels))
	}
	for g.count >= g.maxClients || g.labelBytes+size > maxLabelBytes {
		if !g.evictIdle() {
			return nil, false, ErrTooManyClients
		}
		set = g.labelSets[labelsKey] // eviction may have dropped it
		if set == nil {
			size = len(util.EncodeLabels(c.Labels))
		}
	}
	byLabels = g.byFQDN[c.FQDN] // eviction may have dropped it too
	if set == nil {
		set = &labelSet{key: labelsKey, labels: c.Labels, bytes: size}
		g.labelSets[labelsKey] = set
		g.labelBytes += size
	}
	set.refs++
	if byLabels == nil {
		byLabels = map[string]*registration{}
		g.byFQDN[c.FQDN] = byLabels
	}
	r = &registration{fqdn: c.FQDN, labels: set, lastSeen: now}
	if c.Target != "" {
		r.target, r.via, r.owner = c.Target, c.Via, c.owner()
		g.targets[c.Via]++
		g.owned[r.owner]++
	}
	// The key of a client's own name is the interned label key itself, so
	// that a registration holds its labels' encoding once.
	byLabels[registrationKey(c.Target, set.key)] = r
	g.count++
	r.idle = g.idle.PushBack(r)
	return r, true, nil
}

// connect notes a new live carrier of r.
func (g *registry) connect(r *registration, transport string, now time.Time) {
	if r.idle != nil {
		g.idle.Remove(r.idle)
		r.idle = nil
	}
	if transport == TransportTunnel {
		r.tunnels++
	} else {
		r.polls++
	}
	r.transport = transport
	r.lastSeen = now
}

// disconnect notes that a carrier of r is gone.
func (g *registry) disconnect(r *registration, transport string, now time.Time) {
	if transport == TransportTunnel {
		r.tunnels--
	} else {
		r.polls--
	}
	r.lastSeen = now
	if !r.connected() && r.idle == nil {
		r.idle = g.idle.PushBack(r)
	}
}

// evictIdle forgets the least recently seen registration without a live
// carrier, and reports whether there was one.
func (g *registry) evictIdle() bool {
	front := g.idle.Front()
	if front == nil {
		return false
	}
	g.forget(front.Value.(*registration))
	return true
}

func (g *registry) forget(r *registration) {
	if r.idle != nil {
		g.idle.Remove(r.idle)
		r.idle = nil
	}
	byLabels := g.byFQDN[r.fqdn]
	delete(byLabels, registrationKey(r.target, r.labels.key))
	if len(byLabels) == 0 {
		delete(g.byFQDN, r.fqdn)
	}
	if r.target != "" {
		if g.targets[r.via]--; g.targets[r.via] == 0 {
			delete(g.targets, r.via)
		}
		if g.owned[r.owner]--; g.owned[r.owner] == 0 {
			delete(g.owned, r.owner)
		}
	}
	g.count--
	if r.labels.refs--; r.labels.refs == 0 {
		delete(g.labelSets, r.labels.key)
		g.labelBytes -= r.labels.bytes
	}
}

// registrationKey names a registration among those of its FQDN: a target
// and a client's own name with the same labels are two registrations. A
// client's own name is keyed by its label key alone, which holds no NUL.
func registrationKey(target, labelsKey string) string {
	if target == "" {
		return labelsKey
	}
	return target + "\x00" + labelsKey
}

// alive says whether r counts as known: a live carrier is contact, however
// long it has lasted.
func (g *registry) alive(r *registration, now time.Time) bool {
	return r.connected() || now.Sub(r.lastSeen) <= g.timeout
}

// known reports whether a client of fqdn is known.
func (g *registry) known(fqdn string, now time.Time) bool {
	for _, r := range g.byFQDN[fqdn] {
		if g.alive(r, now) {
			return true
		}
	}
	return false
}

// ownKnown reports whether a client of fqdn's own name is known, not
// only targets on that host.
func (g *registry) ownKnown(fqdn string, now time.Time) bool {
	for _, r := range g.byFQDN[fqdn] {
		if r.target == "" && g.alive(r, now) {
			return true
		}
	}
	return false
}

// collect forgets the registrations gone past the timeout and returns
// them, for the log. The idle list is ordered by last contact, so it stops
// at the first one still alive.
func (g *registry) collect(now time.Time) []*registration {
	var gone []*registration
	for e := g.idle.Front(); e != nil; e = g.idle.Front() {
		r := e.Value.(*registration)
		if g.alive(r, now) {
			break
		}
		g.forget(r)
		gone = append(gone, r)
	}
	return gone
}

// ClientStatus is a snapshot of one known client, or of a target a
// client announced.
type ClientStatus struct {
	// FQDN is the client's name as it last wrote it; names that differ
	// only in case or a trailing dot are one client.
	FQDN string
	// Target is host:port as the announcing client (Via) lists it, or
	// empty for a client's own name.
	Target    string
	Via       string
	Targets   int               // targets a client of this FQDN announced
	Labels    map[string]string // shared: read only
	LastSeen  time.Time
	Polls     int // polls of it being served now
	Tunnels   int // tunnels of it attached now
	Transport string
	Outcomes  []string
}

// Connected says whether the client has a live carrier now.
func (s ClientStatus) Connected() bool { return s.Polls+s.Tunnels > 0 }

// list returns the known clients sorted by FQDN and labels, from the
// offset-th on, at most limit of them (all when limit <= 0).
func (g *registry) list(now time.Time, offset, limit int) []ClientStatus {
	fqdns := make([]string, 0, len(g.byFQDN))
	for fqdn := range g.byFQDN {
		fqdns = append(fqdns, fqdn)
	}
	sort.Strings(fqdns)
	var out []ClientStatus
	for _, fqdn := range fqdns {
		byLabels := g.byFQDN[fqdn]
		keys := make([]string, 0, len(byLabels))
		for key := range byLabels {
			keys = append(keys, key)
		}
		sort.Strings(keys)
		for _, key := range keys {
			r := byLabels[key]
			if !g.alive(r, now) {
				continue
			}
			if offset > 0 {
				offset--
				continue
			}
			if limit > 0 && len(out) == limit {
				return out
			}
			lastSeen := r.lastSeen
			if r.connected() {
				lastSeen = now
			}
			targets := 0
			if r.target == "" {
				targets = g.targets[r.fqdn]
			}
			out = append(out, ClientStatus{
				FQDN:      r.name(),
				Target:    r.target,
				Via:       r.via,
				Targets:   targets,
				Labels:    r.labels.labels,
				LastSeen:  lastSeen,
				Polls:     r.polls,
				Tunnels:   r.tunnels,
				Transport: r.transport,
				Outcomes:  append([]string(nil), r.outcomes...),
			})
		}
	}
	return out
}

// NormalFQDN is the one form of a name for routing, discovery and identity:
// lower case, without a trailing dot, as DNS compares names.
func NormalFQDN(name string) string {
	return strings.TrimSuffix(strings.ToLower(name), ".")
}
