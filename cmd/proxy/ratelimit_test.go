package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rancher/pushprox/internal/testclock"
	"github.com/rancher/pushprox/util"
)

// buckets returns how many sources have a bucket kept.
func buckets(l *sourceLimiter) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

func TestASourceRegistersItsBurstAtOnceThenOneClientPerInterval(t *testing.T) {
	sourceA := netip.MustParsePrefix("192.0.2.1/32")
	clock := testclock.New(time.Unix(1e9, 0))
	l := newSourceLimiter(2, 3, clock.Now)
	for i := range 3 {
		if _, ok := l.allow(sourceA); !ok {
			t.Fatalf("registration %d of the burst refused", i+1)
		}
	}
	wait, ok := l.allow(sourceA)
	if ok {
		t.Fatal("a registration beyond the burst was allowed")
	}
	if wait != 500*time.Millisecond {
		t.Errorf("retry after %v, want 500ms (one token at 2 a second)", wait)
	}
	clock.Advance(wait)
	if _, ok := l.allow(sourceA); !ok {
		t.Error("refused once a token had come back")
	}
	if _, ok := l.allow(sourceA); ok {
		t.Error("allowed a second registration on one token")
	}
}

func TestEachSourceHasABucketOfItsOwn(t *testing.T) {
	sourceA := netip.MustParsePrefix("192.0.2.1/32")
	sourceB := netip.MustParsePrefix("192.0.2.2/32")
	clock := testclock.New(time.Unix(1e9, 0))
	l := newSourceLimiter(1, 1, clock.Now)
	if _, ok := l.allow(sourceA); !ok {
		t.Fatal("first registration of A refused")
	}
	if _, ok := l.allow(sourceA); ok {
		t.Fatal("A registered beyond its burst")
	}
	if _, ok := l.allow(sourceB); !ok {
		t.Error("B was refused because A had used its bucket")
	}
}

func TestABucketUnusedUntilFullIsForgotten(t *testing.T) {
	sourceA := netip.MustParsePrefix("192.0.2.1/32")
	sourceB := netip.MustParsePrefix("192.0.2.2/32")
	clock := testclock.New(time.Unix(1e9, 0))
	l := newSourceLimiter(10, 5, clock.Now) // full again after 500ms
	l.allow(sourceA)
	clock.Advance(400 * time.Millisecond)
	l.allow(sourceB)
	if n := buckets(l); n != 2 {
		t.Fatalf("%d buckets, want 2", n)
	}
	clock.Advance(100 * time.Millisecond)
	l.allow(sourceB)
	if n := buckets(l); n != 1 {
		t.Errorf("%d buckets after A's refilled, want 1 (B's)", n)
	}
}

func TestTheTableOfSourcesIsBoundedAndDropsTheLeastRecentlyUsed(t *testing.T) {
	clock := testclock.New(time.Unix(1e9, 0))
	l := newSourceLimiter(1, 1, clock.Now)
	first := netip.MustParsePrefix("10.0.0.0/32")
	l.allow(first)
	base := netip.MustParseAddr("10.1.0.0").As4()
	for i := range maxSourceBuckets {
		addr := base
		addr[2], addr[3] = byte(i>>8), byte(i)
		l.allow(netip.PrefixFrom(netip.AddrFrom4(addr), 32))
	}
	if n := buckets(l); n != maxSourceBuckets {
		t.Fatalf("%d buckets, want the bound %d", n, maxSourceBuckets)
	}
	// The first source's bucket was dropped, so it starts again full.
	if _, ok := l.allow(first); !ok {
		t.Error("the least recently used source was kept over the bound")
	}
}

func TestAZeroRateOrBurstTurnsTheLimitOff(t *testing.T) {
	sourceA := netip.MustParsePrefix("192.0.2.1/32")
	for _, tc := range []struct {
		rate  float64
		burst int
	}{{0, 10}, {10, 0}} {
		l := newSourceLimiter(tc.rate, tc.burst, nil)
		for range 100 {
			if _, ok := l.allow(sourceA); !ok {
				t.Fatalf("rate %v burst %d: refused", tc.rate, tc.burst)
			}
		}
	}
}

func TestSourcesAreIPv4AddressesAndIPv6Slash64s(t *testing.T) {
	for _, tc := range []struct{ remote, want string }{
		{"192.0.2.7:4711", "192.0.2.7/32"},
		{"[::ffff:192.0.2.7]:4711", "192.0.2.7/32"},
		{"[2001:db8:1:2:aaaa::1]:4711", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:bbbb::9]:80", "2001:db8:1:2::/64"},
		{"[fe80::1%eth0]:80", "fe80::/64"},
		{"pipe", "invalid Prefix"},
	} {
		if got := sourceOf(tc.remote).String(); got != tc.want {
			t.Errorf("sourceOf(%q) = %s, want %s", tc.remote, got, tc.want)
		}
	}
}

func TestAnIPv6SiteCannotMultiplyItsBurstByRotatingThroughItsSlash64s(t *testing.T) {
	clock := testclock.New(time.Unix(1e9, 0))
	const burst = 3
	l := newSourceLimiter(1, burst, clock.Now)
	allowed := 0
	for i := range 256 {
		source := netip.MustParsePrefix(fmt.Sprintf("2001:db8:1:%x::/64", i))
		if _, ok := l.allow(source); ok {
			allowed++
		}
	}
	if want := aggregateShare * burst; allowed != want {
		t.Errorf("256 /64s of one /48 registered %d clients at once, want the /48's burst of %d", allowed, want)
	}
	// Another site, and IPv4, are not held back by it.
	if _, ok := l.allow(netip.MustParsePrefix("2001:db8:2::/64")); !ok {
		t.Error("a /64 of another /48 was refused")
	}
	if _, ok := l.allow(netip.MustParsePrefix("192.0.2.1/32")); !ok {
		t.Error("an IPv4 source was refused")
	}
	// A /64 refused by its /48 kept its own tokens: once the /48 has one
	// again, the first /64 that asks gets it.
	wait, ok := l.allow(netip.MustParsePrefix("2001:db8:1:ff::/64"))
	if ok || wait <= 0 {
		t.Fatalf("a /64 of the spent /48: allowed %v, wait %v", ok, wait)
	}
	clock.Advance(wait)
	if _, ok := l.allow(netip.MustParsePrefix("2001:db8:1:ff::/64")); !ok {
		t.Error("refused once its /48 had a token again")
	}
}

func TestRetryAfterIsWholeSecondsRoundedUp(t *testing.T) {
	for wait, want := range map[time.Duration]string{
		0: "1", 10 * time.Millisecond: "1", time.Second: "1", 1500 * time.Millisecond: "2",
	} {
		if got := retryAfterSeconds(wait); got != want {
			t.Errorf("retryAfterSeconds(%v) = %s, want %s", wait, got, want)
		}
	}
}

// pollNow polls once as fqdn with Prefer: wait=0 through client, as
// user when not nil, and returns the answer's status, Retry-After and text.
func pollNow(t *testing.T, client *http.Client, base, fqdn string, user *url.Userinfo) (int, string, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, base+"/poll", strings.NewReader(fqdn))
	if err != nil {
		t.Fatal(err)
	}
	if password, ok := user.Password(); ok {
		req.SetBasicAuth(user.Username(), password)
	}
	req.Header.Set(util.HeaderPrefer, "wait=0")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("poll as %s: %v", fqdn, err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), string(text)
}

// clientFrom returns an HTTP client whose connections come from the
// loopback address local, a source of its own.
func clientFrom(t *testing.T, local string) *http.Client {
	t.Helper()
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	transport := &http.Transport{DialContext: dialer.DialContext}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport}
}

func TestAFloodFromOneSourceGets429WhileRegisteredClientsAndOtherSourcesAreServed(t *testing.T) {
	cfg := defaultConfig()
	clock := testclock.New(time.Unix(1e9, 0))
	cfg.clock = clock.Now // no token comes back unless the test says so
	cfg.registrationRate = 1
	cfg.registrationBurst = 3
	tp := startProxy(t, cfg)
	flooder := clientFrom(t, "127.0.0.1")

	tp.expectStillServing(t, "registering node1") // the first token
	for i := range 2 {
		if code, _, text := pollNow(t, flooder, tp.srv.URL, fmt.Sprintf("flood-%d", i), nil); code != http.StatusNoContent {
			t.Fatalf("registration %d within the burst: %d %s", i, code, text)
		}
	}
	refused := 0
	for i := 2; i < 10; i++ {
		code, retryAfter, text := pollNow(t, flooder, tp.srv.URL, fmt.Sprintf("flood-%d", i), nil)
		if code != http.StatusTooManyRequests || retryAfter != "1" || !strings.Contains(text, "--registration.rate-per-source") {
			t.Fatalf("registration %d beyond the burst: %d, Retry-After %q, %q", i, code, retryAfter, text)
		}
		refused++
	}
	if got := testutil.ToFloat64(tp.metrics.registrationsRefused.WithLabelValues(refusedRateLimited)); got != float64(refused) {
		t.Errorf("registrations refused as rate_limited = %v, want %d", got, refused)
	}

	// The tunnel handshake is refused the same way, before the upgrade.
	req, _, err := util.NewTunnelRequest(tp.srv.URL+"/tunnel", "flood-tunnel", "", 1)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := flooder.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("tunnel for a new FQDN during the flood: %s, Retry-After %q", resp.Status, resp.Header.Get("Retry-After"))
	}

	// Registered FQDNs poll again unlimited; the real client is served.
	if code, _, text := pollNow(t, flooder, tp.srv.URL, "flood-0", nil); code != http.StatusNoContent {
		t.Errorf("a registered FQDN polling again: %d %s", code, text)
	}
	tp.expectStillServing(t, "a flood from its source")

	// Another source has a bucket of its own.
	if code, _, text := pollNow(t, clientFrom(t, "127.0.0.2"), tp.srv.URL, "elsewhere", nil); code != http.StatusNoContent {
		t.Errorf("a new client from another source: %d %s", code, text)
	}
	clock.Advance(time.Second)
	if code, _, text := pollNow(t, flooder, tp.srv.URL, "flood-late", nil); code != http.StatusNoContent {
		t.Errorf("a new client once a token came back: %d %s", code, text)
	}
}

func TestAProxyWithAuthenticationDoesNotRateLimitRegistrations(t *testing.T) {
	sp := startSecProxy(t, false, secWebConfig(t, secPasswords), func(cfg *config) {
		cfg.registrationRate = 1
		cfg.registrationBurst = 1
	})
	base := (&url.URL{Scheme: "https", Host: sp.addr}).String()
	alice := url.UserPassword("alice", secPasswords["alice"])
	client := sp.client(t, nil)
	for i := range 5 {
		if code, _, text := pollNow(t, client, base, fmt.Sprintf("node-%d", i), alice); code != http.StatusNoContent {
			t.Fatalf("authenticated registration %d: %d %s", i, code, text)
		}
	}
	if got := testutil.ToFloat64(sp.metrics.registrationsRefused.WithLabelValues(refusedRateLimited)); got != 0 {
		t.Errorf("registrations refused as rate_limited = %v, want 0", got)
	}
}

func TestARegistrationRefusedByAFullRegistryIsCountedWithItsReason(t *testing.T) {
	cfg := defaultConfig()
	cfg.maxClients = 1
	tp := startProxy(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	parked := make(chan struct{})
	go func() {
		defer close(parked)
		if resp, err := tp.poll(ctx, "node1", nil); err == nil {
			resp.Body.Close()
		}
	}()
	t.Cleanup(func() { cancel(); <-parked })
	tp.waitParked(t, 1) // a live carrier: not evicted to make room

	if code, _, text := pollNow(t, http.DefaultClient, tp.srv.URL, "node2", nil); code != http.StatusTooManyRequests {
		t.Fatalf("a second client in a registry of one: %d %s", code, text)
	}
	if got := testutil.ToFloat64(tp.metrics.registrationsRefused.WithLabelValues(refusedTooManyClients)); got != 1 {
		t.Errorf("registrations refused as too_many_clients = %v, want 1", got)
	}
	if got := testutil.ToFloat64(tp.metrics.registrationsRefused.WithLabelValues(refusedRateLimited)); got != 0 {
		t.Errorf("registrations refused as rate_limited = %v, want 0", got)
	}
}

// The per-source limit on new registrations holds for polls and tunnel
// handshakes, and for the targets a tunnel then announces on its control
// stream: else one source with a burst of 1 would register 1001 clients.
func TestTargetsAnnouncedOnATunnelCountAgainstTheSourcesRegistrationLimit(t *testing.T) {
	cfg := defaultConfig()
	clock := testclock.New(time.Unix(1e9, 0))
	cfg.clock = clock.Now // no token comes back
	cfg.registrationRate = 1
	cfg.registrationBurst = 1
	tp := startProxy(t, cfg)
	peer := dialStreamPeer(t, tp, "gateway", util.TunnelProtocolReuse, func(io.Writer, *http.Request) bool { return false })
	if code, _, _ := pollNow(t, clientFrom(t, "127.0.0.1"), tp.srv.URL, "another", nil); code != http.StatusTooManyRequests {
		t.Fatalf("a poll for a new FQDN after the burst: %d, want 429", code)
	}
	control, err := peer.session.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	var announced util.Announcement
	for i := range 1000 {
		announced.Targets = append(announced.Targets, util.AnnouncedTarget{Target: fmt.Sprintf("made-up-%d.example:9100", i)})
	}
	if err := util.WriteTargetsMessage(control, announced); err != nil {
		t.Fatal(err)
	}
	var answer util.AnnouncementAnswer
	if err := util.ReadTargetsMessage(control, &answer); err != nil {
		t.Fatal(err)
	}
	if len(answer.Refused) == 0 {
		t.Error("no target refused")
	}
	if accepted := len(tp.registeredTargets()); accepted > 0 {
		t.Errorf("a source out of tokens registered %d new targets on its tunnel", accepted)
	}
}

func TestTargetsATunnelAnnouncesAgainTakeNoTokenAndRefusalsSayTheLimit(t *testing.T) {
	cfg := defaultConfig()
	clock := testclock.New(time.Unix(1e9, 0))
	cfg.clock = clock.Now // no token comes back
	cfg.registrationRate = 1
	cfg.registrationBurst = 3 // the tunnel, then two targets
	tp := startProxy(t, cfg)
	control := openControl(t, dialStreamPeer(t, tp, "gateway", util.TunnelProtocolReuse, silentPeer))
	if answer := announce(t, control, "a.example:9100", "b.example:9100"); len(answer.Refused) > 0 {
		t.Fatalf("targets within the burst refused: %+v", answer.Refused)
	}
	answer := announce(t, control, "a.example:9100", "b.example:9100", "c.example:9100")
	if len(answer.Refused) != 1 || answer.Refused[0].Target != "c.example:9100" {
		t.Fatalf("refused %+v, want only the new target c.example:9100", answer.Refused)
	}
	if reason := answer.Refused[0].Reason; !strings.Contains(reason, "--registration.rate-per-source") {
		t.Errorf("the refusal %q does not name the limit", reason)
	}
}
