package main

import (
	"container/list"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/go-kit/log/level"
	"golang.org/x/time/rate"

	"github.com/rancher/pushprox/internal/rendezvous"
)

// maxSourceBuckets bounds the sources whose buckets are kept at once. A
// bucket takes about 250 bytes, so the table stays within 4 MiB. A source
// dropped from a full table starts again with a full burst: only a flood
// from more sources than this at once gains from it, and the registry's
// own bounds still hold then.
const maxSourceBuckets = 16384

// sourceLimiter is a token bucket per source address for new client
// registrations, so that one host without credentials cannot fill the
// registry with made-up clients. A nil *sourceLimiter allows everything.
type sourceLimiter struct {
	rate  rate.Limit
	burst int
	// full is how long a bucket takes to refill from empty: one unused
	// that long is the same as none, so it is forgotten.
	full time.Duration
	now  func() time.Time

	mu sync.Mutex
	// buckets holds each source's element of lru; guarded by mu.
	buckets map[netip.Prefix]*list.Element
	// lru holds the *sourceBucket values, least recently used first;
	// guarded by mu.
	lru *list.List
}

// aggregateShare is how many sources' worth of registrations an IPv6 /48
// may make, in rate and burst, across all its /64s: a site, which usually
// holds a /48 or a /56, cannot multiply its allowance by the thousands of
// /64s it can send from, while a few hosts of one site sharing the limit
// still have several sources' worth.
const aggregateShare = 4

// sourceBucket is the token bucket of one source.
type sourceBucket struct {
	source  netip.Prefix
	limiter *rate.Limiter
	used    time.Time
}

// newSourceLimiter returns a limiter of perSecond new registrations per
// source, in bursts of up to burst, on the clock now (time.Now when nil).
// A zero rate or burst turns the limit off: it returns nil.
func newSourceLimiter(perSecond float64, burst int, now func() time.Time) *sourceLimiter {
	if perSecond <= 0 || burst <= 0 {
		return nil
	}
	if now == nil {
		now = time.Now
	}
	return &sourceLimiter{
		rate:    rate.Limit(perSecond),
		burst:   burst,
		full:    time.Duration(float64(burst) / perSecond * float64(time.Second)),
		now:     now,
		buckets: map[netip.Prefix]*list.Element{},
		lru:     list.New(),
	}
}

// allow takes a token from source's bucket. When there is none, it says
// how long until there is one.
func (l *sourceLimiter) allow(source netip.Prefix) (retryAfter time.Duration, ok bool) {
	if l == nil {
		return 0, true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	// The time is read under the lock, so that the list stays ordered by
	// last use and forgetting idle buckets can stop at the first recent one.
	now := l.now()
	l.forgetIdleLocked(now)
	taken := []*rate.Reservation{l.bucketLocked(source, 1, now).limiter.ReserveN(now, 1)}
	if aggregate, ok := aggregateOf(source); ok {
		taken = append(taken, l.bucketLocked(aggregate, aggregateShare, now).limiter.ReserveN(now, 1))
	}
	// A token is taken from every bucket or from none.
	var wait time.Duration
	for _, r := range taken {
		wait = max(wait, r.DelayFrom(now))
	}
	if wait == 0 {
		return 0, true
	}
	for _, r := range taken {
		r.CancelAt(now)
	}
	return wait, false
}

// bucketLocked returns the bucket of prefix, made with share times the
// rate and burst of a source when it is new, and marks it used now.
func (l *sourceLimiter) bucketLocked(prefix netip.Prefix, share int, now time.Time) *sourceBucket {
	var b *sourceBucket
	if e := l.buckets[prefix]; e != nil {
		b = e.Value.(*sourceBucket)
		l.lru.MoveToBack(e)
	} else {
		if len(l.buckets) >= maxSourceBuckets {
			l.dropLocked(l.lru.Front())
		}
		b = &sourceBucket{source: prefix, limiter: rate.NewLimiter(l.rate*rate.Limit(share), l.burst*share)}
		l.buckets[prefix] = l.lru.PushBack(b)
	}
	b.used = now
	return b
}

// aggregateOf returns the /48 that an IPv6 source's registrations count
// against as well.
func aggregateOf(source netip.Prefix) (netip.Prefix, bool) {
	if !source.Addr().Is6() {
		return netip.Prefix{}, false
	}
	aggregate, err := source.Addr().Prefix(48)
	return aggregate, err == nil
}

// forgetIdleLocked drops the buckets unused long enough to be full again.
func (l *sourceLimiter) forgetIdleLocked(now time.Time) {
	for e := l.lru.Front(); e != nil; e = l.lru.Front() {
		if now.Sub(e.Value.(*sourceBucket).used) < l.full {
			return
		}
		l.dropLocked(e)
	}
}

func (l *sourceLimiter) dropLocked(e *list.Element) {
	delete(l.buckets, e.Value.(*sourceBucket).source)
	l.lru.Remove(e)
}

// sourceOf is the source a registration is counted against: the TCP peer
// of remoteAddr, an IPv4 address or the /64 of an IPv6 one, as a single
// IPv6 host usually holds a whole /64 and could otherwise rotate through
// it. Unparsable addresses share the zero Prefix.
func sourceOf(remoteAddr string) netip.Prefix {
	addrPort, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return netip.Prefix{}
	}
	addr := addrPort.Addr().Unmap().WithZone("")
	bits := 32
	if addr.Is6() {
		bits = 64
	}
	source, _ := addr.Prefix(bits)
	return source
}

// retryAfterSeconds renders a wait as a Retry-After value: whole seconds,
// rounded up, at least one.
func retryAfterSeconds(wait time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(wait.Seconds()))))
}

// admit says whether a poll or tunnel request r may register c, and
// answers it 429 when not. A request the proxy authenticated, and one for
// an FQDN already registered, always may: a real client that polls again
// is never limited. A new label set of a registered FQDN is not limited
// either; rendezvous.MaxLabelSetsPerFQDN bounds those.
func (p *proxy) admit(w http.ResponseWriter, r *http.Request, c rendezvous.Client) bool {
	if p.limiter == nil || authenticated(r) || p.hub.Known(c.FQDN) {
		return true
	}
	source := sourceOf(r.RemoteAddr)
	wait, ok := p.limiter.allow(source)
	if ok {
		return true
	}
	p.metrics.registrationsRefused.WithLabelValues(refusedRateLimited).Inc()
	level.Debug(p.logger).Log("msg", "registration refused", "fqdn", c.FQDN, "source", source, "err", "rate limited")
	w.Header().Set("Retry-After", retryAfterSeconds(wait))
	httpError(w, http.StatusTooManyRequests, "%v", p.rateLimited(source))
	return false
}

// rateLimited says why a registration from source was refused.
func (p *proxy) rateLimited(source netip.Prefix) error {
	var site string
	if aggregate, ok := aggregateOf(source); ok {
		site = fmt.Sprintf(", and %d times that across %s", aggregateShare, aggregate)
	}
	return fmt.Errorf("too many new clients registered from %s: at most %g a second in bursts of %d per source%s while the proxy has no authentication (--registration.rate-per-source, --registration.burst-per-source)",
		source, float64(p.limiter.rate), p.limiter.burst, site)
}

// admitTargets returns what admits each target a tunnel announces that it
// did not answer for yet (rendezvous.Session.SetTargets): each is a new
// registration, so without authentication it takes a token of the source's
// bucket as a new poll's does, and is refused with the reason when there
// is none. The tunnel's handshake request r keeps only its connection's
// TLS state and peer address; identity is the one its client registered
// with, which tells a checked password. It returns nil when nothing is
// limited.
func (p *proxy) admitTargets(r *http.Request, identity string) func(rendezvous.Target) error {
	if p.limiter == nil || authenticated(r) || authenticatedIdentity(identity) {
		return nil
	}
	source := sourceOf(r.RemoteAddr)
	return func(t rendezvous.Target) error {
		if _, ok := p.limiter.allow(source); ok {
			return nil
		}
		p.metrics.registrationsRefused.WithLabelValues(refusedRateLimited).Inc()
		return p.rateLimited(source)
	}
}
