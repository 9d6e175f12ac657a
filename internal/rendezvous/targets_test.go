package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
)

// gateway is a client that announces targets on its tunnel.
func gateway() Client { return client("gw.example") }

func targetsOf(h *testHub) map[string]ClientStatus {
	out := map[string]ClientStatus{}
	for _, c := range h.Clients(0, 0) {
		if c.Target != "" {
			out[c.Target] = c
		}
	}
	return out
}

func setTargets(t *testing.T, s *Session, targets ...Target) {
	t.Helper()
	for i, err := range s.SetTargets(targets, nil) {
		if err != nil {
			t.Fatalf("target %s refused: %v", targets[i].Name, err)
		}
	}
}

func TestATunnelCarriesScrapesOfTheHostsOfTheTargetsItAnnounced(t *testing.T) {
	h := newTestHub(t, 10)
	tunnel := newFakeTunnel()
	session := attach(t, h, gateway(), tunnel, 2)
	setTargets(t, session,
		Target{Name: "127.0.0.2:9100", Host: "127.0.0.2", Labels: map[string]string{"site": "a"}},
		Target{Name: "Printer.example:9100", Host: "Printer.example", Labels: map[string]string{"site": "b"}})
	targets := targetsOf(h)
	if got := targets["127.0.0.2:9100"]; got.Via != "gw.example" || got.Labels["site"] != "a" || got.FQDN != "127.0.0.2" {
		t.Errorf("127.0.0.2:9100 listed as %+v, want via gw.example with site=a", got)
	}
	if got := targets["Printer.example:9100"]; got.FQDN != "printer.example" || got.Labels["site"] != "b" {
		t.Errorf("Printer.example:9100 listed as %+v, want host printer.example with site=b", got)
	}
	for _, c := range h.Clients(0, 0) {
		if c.Target == "" && c.Targets != 2 {
			t.Errorf("the gateway's own entry counts %d targets, want 2", c.Targets)
		}
	}
	if st := h.Stats(); st.Tunnels != 1 || st.Clients != 3 {
		t.Errorf("stats = %+v, want one tunnel and three registrations", st)
	}
	scraped := h.startScrape(context.Background(), h.scrapeOf("a", "printer.example.", "9100"))
	tunnel.next(t).answer("printer")
	finish(t, "scrape of the printer", scraped, "printer")
}

func TestAWithdrawnTargetIsForgottenAtOnceWhileItsScrapeInFlightFinishes(t *testing.T) {
	h := newTestHub(t, 10)
	tunnel := newFakeTunnel()
	session := attach(t, h, gateway(), tunnel, 2)
	setTargets(t, session,
		Target{Name: "127.0.0.2:9100", Host: "127.0.0.2"},
		Target{Name: "127.0.0.3:9100", Host: "127.0.0.3"})
	inFlight := h.startScrape(context.Background(), h.scrapeOf("a", "127.0.0.2", "9100"))
	call := tunnel.next(t)
	setTargets(t, session, Target{Name: "127.0.0.3:9100", Host: "127.0.0.3"})
	if _, listed := targetsOf(h)["127.0.0.2:9100"]; listed {
		t.Errorf("127.0.0.2:9100 still listed after it was withdrawn")
	}
	call.answer("a")
	finish(t, "the scrape in flight", inFlight, "a")

	ctx := newDeadlineCtx()
	late := h.queue(t, ctx, h.scrapeOf("b", "127.0.0.2", "9100"))
	tunnel.idle(t)
	ctx.Expire()
	if _, err := await(t, "the scrape of the withdrawn target", late); !errors.Is(err, ErrNoClient) {
		t.Errorf("scrape of a withdrawn target failed with %v, want ErrNoClient", err)
	}
}

func TestChangedLabelsReplaceATargetsEntry(t *testing.T) {
	h := newTestHub(t, 10)
	session := attach(t, h, gateway(), newFakeTunnel(), 1)
	setTargets(t, session, Target{Name: "127.0.0.2:9100", Host: "127.0.0.2", Labels: map[string]string{"env": "test"}})
	setTargets(t, session, Target{Name: "127.0.0.2:9100", Host: "127.0.0.2", Labels: map[string]string{"env": "prod"}})
	var entries []ClientStatus
	for _, c := range h.Clients(0, 0) {
		if c.Target == "127.0.0.2:9100" {
			entries = append(entries, c)
		}
	}
	if len(entries) != 1 || entries[0].Labels["env"] != "prod" {
		t.Errorf("entries of 127.0.0.2:9100 = %+v, want one with env=prod", entries)
	}
}

func TestAnAddedTargetTakesTheScrapesQueuedForItsHost(t *testing.T) {
	h := newTestHub(t, 10)
	tunnel := newFakeTunnel()
	session := attach(t, h, gateway(), tunnel, 1)
	queued := h.queue(t, context.Background(), h.scrapeOf("a", "127.0.0.4", "9100"))
	setTargets(t, session, Target{Name: "127.0.0.4:9100", Host: "127.0.0.4"})
	tunnel.next(t).answer("a")
	finish(t, "the queued scrape", queued, "a")
}

func TestTargetsBeyondTheBoundAreRefusedWithTheReasonAndTheOthersServed(t *testing.T) {
	clock := newFakeClock()
	hub := New(Config{RegistrationTimeout: registrationTimeout, MaxClients: 10, MaxTargetsPerClient: 2, Now: clock.Now}, log.NewNopLogger(), prometheus.NewRegistry())
	t.Cleanup(hub.Close)
	h := &testHub{Hub: hub, clock: clock}
	session := attach(t, h, gateway(), newFakeTunnel(), 1)
	errs := session.SetTargets([]Target{
		{Name: "a:1", Host: "a"}, {Name: "b:1", Host: "b"}, {Name: "c:1", Host: "c"},
	}, nil)
	if errs[0] != nil || errs[1] != nil || !errors.Is(errs[2], ErrTooManyTargets) {
		t.Fatalf("SetTargets = %v, want the third refused with ErrTooManyTargets", errs)
	}
	// Withdrawing one makes room for another in the same announcement.
	errs = session.SetTargets([]Target{{Name: "b:1", Host: "b"}, {Name: "c:1", Host: "c"}}, nil)
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("SetTargets after a withdrawal = %v, want both taken", errs)
	}
	// A poll for a further target of the same client is refused too.
	_, err := h.Poll(context.Background(), Client{FQDN: "d", Target: "d:1", Via: "gw.example"}, 0)
	if !errors.Is(err, ErrTooManyTargets) {
		t.Errorf("poll of a third target = %v, want ErrTooManyTargets", err)
	}
}

func TestTargetsOfAnEndedTunnelStayKnownUntilTheRegistrationTimeout(t *testing.T) {
	h := newTestHub(t, 10)
	session := attach(t, h, gateway(), newFakeTunnel(), 1)
	setTargets(t, session, Target{Name: "127.0.0.2:9100", Host: "127.0.0.2"})
	session.Detach()
	if errs := session.SetTargets([]Target{{Name: "127.0.0.3:9100", Host: "127.0.0.3"}}, nil); !errors.Is(errs[0], ErrDetached) {
		t.Errorf("SetTargets after Detach = %v, want ErrDetached", errs)
	}
	if _, listed := targetsOf(h)["127.0.0.2:9100"]; !listed {
		t.Errorf("the target of a tunnel just cut is no longer listed")
	}
	h.clock.Advance(registrationTimeout + time.Second)
	h.CollectGarbage()
	if n := len(h.Clients(0, 0)); n != 0 {
		t.Errorf("%d registrations left after the registration timeout, want none", n)
	}
}

func TestTwoTargetsOnOneHostAreTwoEntriesEachRoutedByItsPortUntilItIsWithdrawn(t *testing.T) {
	h := newTestHub(t, 10)
	tunnel := newFakeTunnel()
	session := attach(t, h, gateway(), tunnel, 1)
	node := Target{Name: "nas:9100", Host: "nas", Labels: map[string]string{"exporter": "node"}}
	smart := Target{Name: "nas:9633", Host: "nas", Labels: map[string]string{"exporter": "smart"}}
	setTargets(t, session, node, smart)
	targets := targetsOf(h)
	if targets["nas:9100"].Labels["exporter"] != "node" || targets["nas:9633"].Labels["exporter"] != "smart" {
		t.Fatalf("listed %+v, want both targets of nas with their own labels", targets)
	}
	setTargets(t, session, smart)
	scraped := h.startScrape(context.Background(), h.scrapeOf("a", "nas", "9633"))
	tunnel.next(t).answer("smart")
	finish(t, "a scrape of nas:9633 with its target left", scraped, "smart")
	// nas has no client of its own: a port the gateway does not list
	// goes to it all the same, for its client to refuse with the reason.
	scraped = h.startScrape(context.Background(), h.scrapeOf("b", "nas", "9100"))
	tunnel.next(t).answer("not listed")
	finish(t, "a scrape of the withdrawn nas:9100", scraped, "not listed")
	setTargets(t, session)
	ctx := newDeadlineCtx()
	late := h.queue(t, ctx, h.scrapeOf("c", "nas", "9633"))
	tunnel.idle(t)
	ctx.Expire()
	if _, err := await(t, "a scrape of nas with no target left", late); !errors.Is(err, ErrNoClient) {
		t.Errorf("scrape of nas with no target left failed with %v, want ErrNoClient", err)
	}
}

func TestSetTargetsAsksAdmitOnlyForNamesTheTunnelDoesNotAnswerForYet(t *testing.T) {
	h := newTestHub(t, 10)
	session := attach(t, h, gateway(), newFakeTunnel(), 1)
	var asked []string
	refuseC := func(t Target) error {
		asked = append(asked, t.Name)
		if t.Name == "c:1" {
			return errors.New("no token")
		}
		return nil
	}
	session.SetTargets([]Target{{Name: "a:1", Host: "a"}, {Name: "b:1", Host: "b"}}, refuseC)
	asked = nil
	// a:1 again, b:1 with new labels, c:1 new and refused.
	errs := session.SetTargets([]Target{
		{Name: "a:1", Host: "a"}, {Name: "b:1", Host: "b", Labels: map[string]string{"x": "y"}}, {Name: "c:1", Host: "c"},
	}, refuseC)
	if fmt.Sprint(asked) != "[c:1]" {
		t.Errorf("admit asked for %v, want only the new name c:1", asked)
	}
	if errs[0] != nil || errs[1] != nil || errs[2] == nil || errs[2].Error() != "no token" {
		t.Errorf("SetTargets = %v, want only c:1 refused with admit's error", errs)
	}
	if _, listed := targetsOf(h)["c:1"]; listed {
		t.Error("a target admit refused is registered")
	}
}

func TestTargetsCountAgainstTheirOwnerNotAgainstTheViaTheyName(t *testing.T) {
	clock := newFakeClock()
	hub := New(Config{RegistrationTimeout: registrationTimeout, MaxClients: 10, MaxTargetsPerClient: 1, Now: clock.Now}, log.NewNopLogger(), prometheus.NewRegistry())
	t.Cleanup(hub.Close)
	h := &testHub{Hub: hub, clock: clock}
	squat := Client{FQDN: "squat", Target: "squat:1", Via: "gw.example", Owner: "gw.example source:192.0.2.9/32"}
	if _, err := h.Poll(context.Background(), squat, 0); err != nil && !errors.Is(err, ErrNoWork) {
		t.Fatalf("poll of the squatter's target: %v", err)
	}
	gw := gateway()
	gw.Owner = "gw.example source:192.0.2.1/32"
	session := attach(t, h, gw, newFakeTunnel(), 1)
	if errs := session.SetTargets([]Target{{Name: "a:1", Host: "a"}}, nil); errs[0] != nil {
		t.Errorf("the gateway's target was refused: %v", errs[0])
	}
	for _, c := range h.Clients(0, 0) {
		if c.Target == "" && c.FQDN == "gw.example" && c.Targets != 2 {
			t.Errorf("the gateway's entry shows %d targets via it, want 2", c.Targets)
		}
	}
}

// scrapeOf returns a scrape of host:port.
func (h *testHub) scrapeOf(id, host, port string) *Scrape {
	s := h.newScrape(id, host)
	s.Port = port
	return s
}

func TestATunnelTakesTheScrapesOfItsTargetsPortsOnlyAndAHostsOwnClientEveryOther(t *testing.T) {
	h := newTestHub(t, 10)
	tunnel := newFakeTunnel()
	session := attach(t, h, gateway(), tunnel, 2)
	setTargets(t, session, Target{Name: "nas:9633", Host: "nas"})
	h.register(t, client("nas"))

	// nas has a client of its own, not parked now: the gateway does not
	// take a scrape of nas:9100.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	queued := h.queue(t, ctx, h.scrapeOf("a", "nas", "9100"))
	tunnel.idle(t)
	// Nor does a poll for another client's target nas:9633.
	other := Client{FQDN: "nas", Target: "nas:9633", Via: "other.example"}
	if _, err := h.Poll(context.Background(), other, 0); !errors.Is(err, ErrNoWork) {
		t.Fatalf("a poll for the target nas:9633 = %v, want ErrNoWork", err)
	}
	// nas's own client does.
	work, err := await(t, "the poll of nas", h.startPoll(context.Background(), client("nas")))
	if err != nil || work.ID != "a" {
		t.Fatalf("the poll of nas got %v %v, want scrape a", work, err)
	}
	work.Delivered()
	cancel()
	if _, err := await(t, "scrape a", queued); !errors.Is(err, ErrAbandoned) {
		t.Errorf("scrape a = %v, want ErrAbandoned", err)
	}

	// The target's own port goes to the gateway, ahead of a poll of nas.
	polled := h.park(t, context.Background(), client("nas"))
	scraped := h.startScrape(context.Background(), h.scrapeOf("b", "nas", "9633"))
	tunnel.next(t).answer("gateway")
	finish(t, "scrape b", scraped, "gateway")
	// Another port goes to the poll, not to the gateway's free slot.
	scraped = h.startScrape(context.Background(), h.scrapeOf("c", "nas", "9100"))
	work, err = await(t, "the parked poll of nas", polled)
	if err != nil || work.ID != "c" {
		t.Fatalf("the parked poll got %v %v, want scrape c", work, err)
	}
	tunnel.idle(t)
	work.Undelivered() // no carrier is left for it: it queues again
	h.waitStats(t, "scrape c to queue again", func(st Stats) bool { return st.Queued == 1 })
	tunnel.idle(t)
	setTargets(t, session) // withdrawn: nothing of nas is routed to the gateway

	// A CONNECT is routed the same way.
	if _, _, err := h.Stream("nas", "9100", 1); !errors.Is(err, ErrPollOnly) {
		t.Errorf("CONNECT nas:9100 = %v, want ErrPollOnly (only nas's polls answer for it)", err)
	}
	setTargets(t, session, Target{Name: "nas:9633", Host: "nas"})
	_, release, err := h.Stream("nas", "9633", 1)
	if err != nil {
		t.Fatalf("CONNECT nas:9633 = %v, want the gateway", err)
	}
	release()
	// Scrape c is still queued: the re-announced gateway does not take it.
	tunnel.idle(t)
	h.Shutdown()
	if _, err := await(t, "scrape c", scraped); !errors.Is(err, ErrShuttingDown) {
		t.Errorf("scrape c = %v, want ErrShuttingDown", err)
	}
}
