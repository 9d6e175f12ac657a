package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"
)

func TestAnFQDNHasAtMostMaxLabelSetsPerFQDN(t *testing.T) {
	h := newTestHub(t, 1000)
	labels := func(i int) map[string]string { return map[string]string{"instance": fmt.Sprint(i)} }
	for i := range MaxLabelSetsPerFQDN {
		h.register(t, Client{FQDN: "node1", Labels: labels(i)})
	}
	for _, tc := range []struct {
		name string
		c    Client
		want error
	}{
		{"a poll of one more label set", Client{FQDN: "node1", Labels: labels(MaxLabelSetsPerFQDN)}, ErrTooManyLabelSets},
		{"a poll of one more label set, the name in another case", Client{FQDN: "NODE1.", Labels: labels(MaxLabelSetsPerFQDN)}, ErrTooManyLabelSets},
		{"a poll of a label set already registered", Client{FQDN: "node1", Labels: labels(0)}, ErrNoWork},
		{"a poll of another FQDN", Client{FQDN: "node2", Labels: labels(MaxLabelSetsPerFQDN)}, ErrNoWork},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := h.Poll(context.Background(), tc.c, 0); !errors.Is(err, tc.want) {
				t.Fatalf("Poll = %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("a tunnel of one more label set", func(t *testing.T) {
		if _, err := h.Attach(Client{FQDN: "node1", Labels: labels(MaxLabelSetsPerFQDN)}, newFakeTunnel(), 1); !errors.Is(err, ErrTooManyLabelSets) {
			t.Fatalf("Attach = %v, want ErrTooManyLabelSets", err)
		}
	})
	t.Run("room again once the label sets are forgotten", func(t *testing.T) {
		h.clock.Advance(registrationTimeout + time.Second)
		h.CollectGarbage()
		h.register(t, Client{FQDN: "node1", Labels: labels(MaxLabelSetsPerFQDN)})
	})
}

func TestAFullRegistryForgetsTheLeastRecentlySeenIdleClient(t *testing.T) {
	h := newTestHub(t, 3)
	h.register(t, client("a"))
	h.clock.Advance(time.Second)
	h.register(t, client("b"))
	h.clock.Advance(time.Second)
	// c is connected, so it is never forgotten to make room.
	polled := h.park(t, context.Background(), client("c"))
	h.clock.Advance(time.Second)
	// a polls again: b is now the least recently seen.
	h.register(t, client("a"))
	h.clock.Advance(time.Second)

	h.register(t, client("d"))
	if got, want := knownFQDNs(h), []string{"a", "c", "d"}; !slices.Equal(got, want) {
		t.Fatalf("known after d = %v, want %v: b forgotten", got, want)
	}
	h.register(t, client("e"))
	if got, want := knownFQDNs(h), []string{"c", "d", "e"}; !slices.Equal(got, want) {
		t.Fatalf("known after e = %v, want %v: a forgotten", got, want)
	}
	h.Shutdown()
	if _, err := await(t, "Poll", polled); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("Poll = %v, want ErrShuttingDown", err)
	}
}

func TestAFullRegistryOfConnectedClientsTakesNoMore(t *testing.T) {
	h := newTestHub(t, 2)
	polled := h.park(t, context.Background(), client("a"))
	attach(t, h, client("b"), newFakeTunnel(), 1)
	if _, err := h.Poll(context.Background(), client("c"), 0); !errors.Is(err, ErrTooManyClients) {
		t.Fatalf("Poll of a new client = %v, want ErrTooManyClients", err)
	}
	if _, err := h.Attach(client("c"), newFakeTunnel(), 1); !errors.Is(err, ErrTooManyClients) {
		t.Fatalf("Attach of a new client = %v, want ErrTooManyClients", err)
	}
	// Clients already registered still connect.
	if _, err := h.Poll(context.Background(), client("a"), 0); !errors.Is(err, ErrNoWork) {
		t.Fatalf("another Poll of a = %v, want ErrNoWork", err)
	}
	attach(t, h, client("a"), newFakeTunnel(), 1)
	h.Shutdown()
	if _, err := await(t, "Poll", polled); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("Poll = %v, want ErrShuttingDown", err)
	}
}

func TestClientsAreForgottenAfterTheRegistrationTimeout(t *testing.T) {
	h := newTestHub(t, 10)
	h.register(t, client("old"))
	h.clock.Advance(registrationTimeout / 2)
	h.register(t, client("recent"))
	h.clock.Advance(registrationTimeout / 2)
	h.CollectGarbage()
	if got, want := knownFQDNs(h), []string{"old", "recent"}; !slices.Equal(got, want) {
		t.Fatalf("known at the timeout = %v, want %v", got, want)
	}
	h.clock.Advance(time.Second)
	// Past its timeout a client is no longer known, even before the
	// collector runs.
	if h.Known("old") {
		t.Fatal("old is known past its timeout")
	}
	if st := h.Stats(); st.Clients != 1 {
		t.Fatalf("stats = %+v, want 1 client", st)
	}
	h.CollectGarbage()
	if got, want := knownFQDNs(h), []string{"recent"}; !slices.Equal(got, want) {
		t.Fatalf("known after collecting = %v, want %v", got, want)
	}
	h.mu.Lock()
	count, sets := h.registry.count, len(h.registry.labelSets)
	h.mu.Unlock()
	if count != 1 || sets != 1 {
		t.Fatalf("registry holds %d registrations and %d label sets, want 1 and 1", count, sets)
	}
	h.clock.Advance(registrationTimeout)
	h.CollectGarbage()
	if got := knownFQDNs(h); len(got) != 0 {
		t.Fatalf("known at the end = %v, want none", got)
	}
}

func TestAConnectedClientOutlivesTheRegistrationTimeout(t *testing.T) {
	for _, tc := range []struct {
		name    string
		connect func(t *testing.T, h *testHub) (end func())
	}{
		{"a parked poll", func(t *testing.T, h *testHub) func() {
			ctx, cancel := context.WithCancel(context.Background())
			polled := h.park(t, ctx, client("node1"))
			return func() {
				cancel()
				if _, err := await(t, "Poll", polled); !errors.Is(err, ErrPollGone) {
					t.Fatalf("Poll = %v, want ErrPollGone", err)
				}
			}
		}},
		{"a tunnel", func(t *testing.T, h *testHub) func() {
			return attach(t, h, client("node1"), newFakeTunnel(), 1).Detach
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHub(t, 10)
			end := tc.connect(t, h)
			h.clock.Advance(3 * registrationTimeout)
			h.CollectGarbage()
			if !h.Known("node1") {
				t.Fatal("a connected client was forgotten")
			}
			clients := h.Clients(0, 0)
			if len(clients) != 1 || !clients[0].Connected() || !clients[0].LastSeen.Equal(h.clock.Now()) {
				t.Fatalf("clients = %+v, want node1 connected and seen now", clients)
			}
			end()
			h.clock.Advance(registrationTimeout)
			h.CollectGarbage()
			if !h.Known("node1") {
				t.Fatal("node1 was forgotten within the timeout of its disconnection")
			}
			h.clock.Advance(time.Second)
			h.CollectGarbage()
			if h.Known("node1") {
				t.Fatal("node1 is still known past the timeout of its disconnection")
			}
		})
	}
}

func TestEndedScrapeIDsAreForgottenInTime(t *testing.T) {
	h := newTestHub(t, 10)
	h.timeOutDelivered(t, client("node1"), "late")
	h.clock.Advance(rememberIDsFor)
	h.CollectGarbage()
	if _, err := h.Claim("late", client("node1").Identity); !errors.Is(err, ErrExpiredID) {
		t.Fatalf("Claim within %v = %v, want ErrExpiredID", rememberIDsFor, err)
	}
	h.clock.Advance(time.Second)
	h.CollectGarbage()
	if _, err := h.Claim("late", client("node1").Identity); !errors.Is(err, ErrUnknownID) {
		t.Fatalf("Claim after %v = %v, want ErrUnknownID", rememberIDsFor, err)
	}
}

func TestRecordNotesOutcomesOnTheRightClient(t *testing.T) {
	h := newTestHub(t, 10)
	prod := Client{FQDN: "node1", Labels: map[string]string{"env": "prod"}, Identity: "id-node1"}
	test := Client{FQDN: "node1", Labels: map[string]string{"env": "test"}, Identity: "id-node1"}
	h.register(t, prod)
	h.register(t, test)
	h.register(t, client("node2"))

	// A scrape no carrier took counts on every client of its FQDN.
	ctx := newDeadlineCtx()
	s := h.newScrape("idle", "NODE1")
	scraped := h.queue(t, ctx, s)
	ctx.Expire()
	if _, err := await(t, "Scrape", scraped); !errors.Is(err, ErrClientIdle) {
		t.Fatalf("Scrape = %v, want ErrClientIdle", err)
	}
	h.Record(s, "idle")

	// A scrape a carrier took counts on the carrier's client.
	polled := h.park(t, context.Background(), prod)
	s = h.newScrape("taken", "node1")
	scraped = h.startScrape(context.Background(), s)
	work, err := await(t, "Poll", polled)
	if err != nil {
		t.Fatalf("Poll: %v", err)
	}
	work.Delivered()
	claim, err := h.Claim("taken", prod.Identity)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	go func() { _ = claim.Deliver(response("ok"), nil) }()
	finish(t, "scrape taken", scraped, "ok")
	h.Record(s, "delivered")

	// And on a tunnel's.
	attach(t, h, test, answeringTunnel{body: "ok"}, 1)
	s = h.newScrape("tunnelled", "node1")
	answer, err := h.Scrape(context.Background(), s)
	if err != nil {
		t.Fatalf("Scrape: %v", err)
	}
	answer.Done(nil)
	h.Record(s, "tunnelled")

	want := map[string][]string{
		"node1 env=prod": {"idle", "delivered"},
		"node1 env=test": {"idle", "tunnelled"},
		"node2 ":         nil,
	}
	got := map[string][]string{}
	for _, c := range h.Clients(0, 0) {
		got[c.FQDN+" "+labelString(c.Labels)] = c.Outcomes
	}
	if len(got) != len(want) {
		t.Fatalf("clients = %v, want %v", got, want)
	}
	for k, w := range want {
		if !slices.Equal(got[k], w) {
			t.Errorf("outcomes of %s = %v, want %v", k, got[k], w)
		}
	}
}

func TestAClientKeepsItsLatestOutcomes(t *testing.T) {
	h := newTestHub(t, 10)
	h.register(t, client("node1"))
	s := h.newScrape("a", "node1")
	s.FQDN = NormalFQDN(s.FQDN)
	for i := range recentOutcomes + 3 {
		h.Record(s, fmt.Sprint(i))
	}
	got := h.Clients(0, 0)[0].Outcomes
	if len(got) != recentOutcomes || got[0] != "3" || got[recentOutcomes-1] != fmt.Sprint(recentOutcomes+2) {
		t.Fatalf("outcomes = %v, want the latest %d", got, recentOutcomes)
	}
}

func TestClientsArePaged(t *testing.T) {
	h := newTestHub(t, 10)
	for _, fqdn := range []string{"c", "a", "b", "d"} {
		h.register(t, client(fqdn))
	}
	for _, tc := range []struct {
		offset, limit int
		want          []string
	}{
		{0, 0, []string{"a", "b", "c", "d"}},
		{1, 2, []string{"b", "c"}},
		{3, 5, []string{"d"}},
		{4, 0, nil},
	} {
		t.Run(fmt.Sprintf("offset %d limit %d", tc.offset, tc.limit), func(t *testing.T) {
			var got []string
			for _, c := range h.Clients(tc.offset, tc.limit) {
				got = append(got, c.FQDN)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Clients = %v, want %v", got, tc.want)
			}
		})
	}
}

// knownFQDNs lists the FQDNs of the known clients, sorted.
func knownFQDNs(h *testHub) []string {
	var out []string
	for _, c := range h.Clients(0, 0) {
		out = append(out, c.FQDN)
	}
	return out
}

// labelString spells a small label set in one line, sorted by name.
func labelString(labels map[string]string) string {
	var out string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		out += k + "=" + labels[k]
	}
	return out
}

func TestARegistrationHoldsTheEncodingOfItsLabelsOnce(t *testing.T) {
	g := newRegistry(time.Minute, 10, DefaultMaxTargetsPerClient)
	labels := map[string]string{"site": strings.Repeat("x", 3000)}
	r, created, err := g.find(Client{FQDN: "node", Labels: labels}, time.Unix(0, 0))
	if err != nil || !created {
		t.Fatalf("find: %v %v", created, err)
	}
	for key := range g.byFQDN["node"] {
		if unsafe.StringData(key) != unsafe.StringData(r.labels.key) {
			t.Error("the registration's key is a copy of its interned label key")
		}
	}
}
