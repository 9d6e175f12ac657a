package rendezvous

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestAScrapeMeetsAPollInEitherOrder(t *testing.T) {
	for _, tc := range []struct {
		name        string
		scrapeFirst bool
	}{
		{"scrape first, then poll", true},
		{"poll first, then scrape", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHub(t, 10)
			c := client("node1")
			s := h.newScrape("id-1", "node1")
			var scraped <-chan result[*Answer]
			var polled <-chan result[*Work]
			if tc.scrapeFirst {
				scraped = h.queue(t, context.Background(), s)
				polled = h.startPoll(context.Background(), c)
			} else {
				polled = h.park(t, context.Background(), c)
				scraped = h.startScrape(context.Background(), s)
			}
			work, err := await(t, "Poll", polled)
			if err != nil {
				t.Fatalf("Poll: %v", err)
			}
			if work.ID != "id-1" || string(work.Request) != "request id-1" || !work.Deadline.Equal(s.Deadline) {
				t.Fatalf("work = %q %q %v, want the scrape's", work.ID, work.Request, work.Deadline)
			}
			work.Delivered()
			if st := h.Stats(); st.Inflight != 1 || st.Queued != 0 || st.Parked != 0 {
				t.Fatalf("stats after the hand-off = %+v, want 1 in flight only", st)
			}
			claim, err := h.Claim(work.ID, c.Identity)
			if err != nil {
				t.Fatalf("Claim: %v", err)
			}
			if !claim.Deadline().Equal(s.Deadline) {
				t.Errorf("claim deadline = %v, want %v", claim.Deadline(), s.Deadline)
			}
			delivered := async(func() (struct{}, error) { return struct{}{}, claim.Deliver(response("metrics"), nil) })
			answer, err := await(t, "Scrape", scraped)
			if err != nil {
				t.Fatalf("Scrape: %v", err)
			}
			if got := readBody(t, answer); got != "metrics" {
				t.Errorf("answer body = %q, want %q", got, "metrics")
			}
			if answer.Handed.IsZero() {
				t.Error("answer.Handed is zero, want when the poll took it")
			}
			pending(t, "Deliver before Done", delivered)
			answer.Done(nil)
			if _, err := await(t, "Deliver", delivered); err != nil {
				t.Errorf("Deliver = %v, want nil", err)
			}
			if st := h.Stats(); st.Inflight != 0 || st.Clients != 1 {
				t.Errorf("stats after the push = %+v, want none in flight and 1 client", st)
			}
		})
	}
}

func TestADeadPollIsSkippedAndNeverHandedWork(t *testing.T) {
	h := newTestHub(t, 10)
	c := client("node1")
	// A poll whose connection ended but which has not yet left the queue,
	// as it is between its context ending and its goroutine taking the
	// lock.
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	dead := &poll{ctx: gone, client: c, handed: make(chan *Scrape, 1)}
	h.mu.Lock()
	h.polls.push("node1", dead)
	h.mu.Unlock()
	live := h.park(t, context.Background(), c)

	scraped := h.startScrape(context.Background(), h.newScrape("id-1", "node1"))
	work, err := await(t, "the live poll", live)
	if err != nil || work.ID != "id-1" {
		t.Fatalf("live poll = %v, %v, want the scrape", work, err)
	}
	if len(dead.handed) != 0 {
		t.Fatal("the dead poll was handed the scrape")
	}

	// Put back with only a dead poll parked, the scrape waits in the
	// queue.
	h.mu.Lock()
	h.polls.push("node1", dead)
	h.mu.Unlock()
	work.Undelivered()
	if st := h.Stats(); st.Queued != 1 || st.Parked != 0 {
		t.Fatalf("stats = %+v, want the scrape queued and the dead poll dropped", st)
	}
	if len(dead.handed) != 0 {
		t.Fatal("the dead poll was handed the scrape when it came back")
	}
	h.Shutdown()
	if _, err := await(t, "Scrape", scraped); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("Scrape = %v, want ErrShuttingDown", err)
	}
}

func TestAPollWhoseContextEndedTakesNoQueuedScrape(t *testing.T) {
	h := newTestHub(t, 10)
	scraped := h.queue(t, context.Background(), h.newScrape("id-1", "node1"))
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if work, err := h.Poll(gone, client("node1"), WaitForever); !errors.Is(err, ErrPollGone) {
		if work != nil {
			work.Undelivered()
		}
		t.Fatalf("Poll with an ended context = %v, %v, want ErrPollGone", work, err)
	}
	if st := h.Stats(); st.Queued != 1 || st.Inflight != 0 {
		t.Fatalf("stats = %+v, want the scrape still queued", st)
	}
	h.Shutdown()
	if _, err := await(t, "Scrape", scraped); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("Scrape = %v, want ErrShuttingDown", err)
	}
}

func TestACutPollGivesUpAndLeavesTheQueue(t *testing.T) {
	h := newTestHub(t, 10)
	ctx, cancel := context.WithCancel(context.Background())
	polled := h.park(t, ctx, client("node1"))
	cancel()
	if _, err := await(t, "the cut poll", polled); !errors.Is(err, ErrPollGone) {
		t.Fatalf("cut poll = %v, want ErrPollGone", err)
	}
	if st := h.Stats(); st.Parked != 0 {
		t.Fatalf("stats = %+v, want no parked poll", st)
	}
}

func TestUndeliveredWorkGoesBackToTheFrontOfTheQueue(t *testing.T) {
	h := newTestHub(t, 10)
	c := client("node1")
	first := h.park(t, context.Background(), c)
	scrapedA := h.startScrape(context.Background(), h.newScrape("a", "node1"))
	workA, err := await(t, "the first poll", first)
	if err != nil || workA.ID != "a" {
		t.Fatalf("first poll = %v, %v, want scrape a", workA, err)
	}
	scrapedB := h.queue(t, context.Background(), h.newScrape("b", "node1"))

	workA.Undelivered()
	// Done once: a second call changes nothing.
	workA.Undelivered()
	workA.Delivered()
	h.waitStats(t, "a to queue again", func(st Stats) bool { return st.Queued == 2 && st.Inflight == 0 })
	if _, err := h.Claim("a", c.Identity); !errors.Is(err, ErrUnknownID) {
		t.Fatalf("Claim of the undelivered scrape = %v, want ErrUnknownID", err)
	}

	for _, want := range []string{"a", "b"} {
		work, err := h.Poll(context.Background(), c, WaitForever)
		if err != nil || work.ID != want {
			t.Fatalf("next poll = %v, %v, want scrape %s", work, err, want)
		}
		work.Delivered()
	}
	h.Shutdown()
	for name, ch := range map[string]<-chan result[*Answer]{"a": scrapedA, "b": scrapedB} {
		// Handed scrapes outlive the shutdown until their push or
		// their context; these have no push coming.
		pending(t, "scrape "+name, ch)
	}
	if err := h.Drain(canceled()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Drain = %v, want context.Canceled with two scrapes awaiting their push", err)
	}
	for _, id := range []string{"a", "b"} {
		claim, err := h.Claim(id, c.Identity)
		if err != nil {
			t.Fatalf("Claim %s: %v", id, err)
		}
		go func() { _ = claim.Deliver(response(id), nil) }()
	}
	for name, ch := range map[string]<-chan result[*Answer]{"a": scrapedA, "b": scrapedB} {
		answer, err := await(t, "scrape "+name, ch)
		if err != nil {
			t.Fatalf("scrape %s: %v", name, err)
		}
		if got := readBody(t, answer); got != name {
			t.Errorf("scrape %s got the answer %q", name, got)
		}
		answer.Done(nil)
	}
	if err := h.Drain(context.Background()); err != nil {
		t.Fatalf("Drain = %v, want nil once every push came", err)
	}
}

func TestUndeliveredWorkGoesToAnotherLivePoll(t *testing.T) {
	h := newTestHub(t, 10)
	first := h.park(t, context.Background(), Client{FQDN: "node1", Identity: "first"})
	second := h.park(t, context.Background(), Client{FQDN: "node1", Identity: "second"})
	scraped := h.startScrape(context.Background(), h.newScrape("a", "node1"))
	work, err := await(t, "the first poll", first)
	if err != nil {
		t.Fatalf("first poll: %v", err)
	}
	work.Undelivered()
	work, err = await(t, "the second poll", second)
	if err != nil || work.ID != "a" {
		t.Fatalf("second poll = %v, %v, want scrape a", work, err)
	}
	work.Delivered()
	if _, err := h.Claim("a", "first"); !errors.Is(err, ErrWrongClient) {
		t.Fatalf("Claim by the first poll's identity = %v, want ErrWrongClient", err)
	}
	claim, err := h.Claim("a", "second")
	if err != nil {
		t.Fatalf("Claim by the second poll's identity: %v", err)
	}
	go func() { _ = claim.Deliver(response("ok"), nil) }()
	answer, err := await(t, "Scrape", scraped)
	if err != nil {
		t.Fatalf("Scrape: %v", err)
	}
	answer.Done(nil)
}

func TestAScrapePutBackDuringShutdownIsAnsweredAtOnce(t *testing.T) {
	h := newTestHub(t, 10)
	polled := h.park(t, context.Background(), client("node1"))
	scraped := h.startScrape(context.Background(), h.newScrape("a", "node1"))
	work, err := await(t, "Poll", polled)
	if err != nil {
		t.Fatalf("Poll: %v", err)
	}
	h.Shutdown()
	pending(t, "the handed scrape", scraped)
	work.Undelivered()
	if _, err := await(t, "Scrape", scraped); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("Scrape = %v, want ErrShuttingDown", err)
	}
	if err := h.Drain(context.Background()); err != nil {
		t.Fatalf("Drain = %v, want nil", err)
	}
}

func TestPushesThatCannotClaimFailAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name     string
		id       func(h *testHub, t *testing.T) string
		identity string
		want     error
	}{
		{
			name: "a push of an id never issued",
			id:   func(*testHub, *testing.T) string { return "never" },
			want: ErrUnknownID,
		},
		{
			name: "a push of a scrape already answered",
			id: func(h *testHub, t *testing.T) string {
				_, claim, scraped := h.handOff(t, context.Background(), client("node1"), "answered")
				go func() { _ = claim.Deliver(response("ok"), nil) }()
				answer, err := await(t, "Scrape", scraped)
				if err != nil {
					t.Fatalf("Scrape: %v", err)
				}
				answer.Done(nil)
				return "answered"
			},
			want: ErrUnknownID,
		},
		{
			name: "a late push, after the scrape timed out",
			id: func(h *testHub, t *testing.T) string {
				h.timeOutDelivered(t, client("node1"), "late")
				return "late"
			},
			want: ErrExpiredID,
		},
		{
			name: "a push by another identity than the poll's",
			id: func(h *testHub, t *testing.T) string {
				ctx, cancel := context.WithCancel(context.Background())
				t.Cleanup(cancel)
				polled := h.park(t, context.Background(), client("node1"))
				scraped := h.startScrape(ctx, h.newScrape("stolen", "node1"))
				t.Cleanup(func() {
					cancel()
					if _, err := await(t, "Scrape", scraped); !errors.Is(err, ErrAbandoned) {
						t.Errorf("Scrape = %v, want ErrAbandoned", err)
					}
				})
				work, err := await(t, "Poll", polled)
				if err != nil {
					t.Fatalf("Poll: %v", err)
				}
				work.Delivered()
				return "stolen"
			},
			identity: "mallory",
			want:     ErrWrongClient,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHub(t, 10)
			id := tc.id(h, t)
			identity := tc.identity
			if identity == "" {
				identity = client("node1").Identity
			}
			if claim, err := h.Claim(id, identity); !errors.Is(err, tc.want) {
				t.Fatalf("Claim = %v, %v, want %v", claim, err, tc.want)
			}
		})
	}
}

func TestAWrongClientLeavesTheScrapeToItsOwn(t *testing.T) {
	h := newTestHub(t, 10)
	c := client("node1")
	polled := h.park(t, context.Background(), c)
	scraped := h.startScrape(context.Background(), h.newScrape("a", "node1"))
	work, err := await(t, "Poll", polled)
	if err != nil {
		t.Fatalf("Poll: %v", err)
	}
	work.Delivered()
	if _, err := h.Claim("a", "mallory"); !errors.Is(err, ErrWrongClient) {
		t.Fatalf("Claim by mallory = %v, want ErrWrongClient", err)
	}
	claim, err := h.Claim("a", c.Identity)
	if err != nil {
		t.Fatalf("Claim by the poll's identity: %v", err)
	}
	if _, err := h.Claim("a", c.Identity); !errors.Is(err, ErrUnknownID) {
		t.Fatalf("second Claim = %v, want ErrUnknownID: a scrape is claimed once", err)
	}
	go func() { _ = claim.Deliver(response("ok"), nil) }()
	answer, err := await(t, "Scrape", scraped)
	if err != nil {
		t.Fatalf("Scrape: %v", err)
	}
	answer.Done(nil)
}

func TestDeliverReturnsHowTheRelayEnded(t *testing.T) {
	errRelay := errors.New("broken pipe")
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"the whole answer relayed", nil},
		{"the relay broke", errRelay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHub(t, 10)
			_, claim, scraped := h.handOff(t, context.Background(), client("node1"), "a")
			abandoned := make(chan struct{}, 1)
			delivered := async(func() (struct{}, error) {
				return struct{}{}, claim.Deliver(response("ok"), func() { abandoned <- struct{}{} })
			})
			answer, err := await(t, "Scrape", scraped)
			if err != nil {
				t.Fatalf("Scrape: %v", err)
			}
			answer.Done(tc.err)
			answer.Done(errors.New("a second Done is ignored"))
			if _, err := await(t, "Deliver", delivered); err != tc.err {
				t.Fatalf("Deliver = %v, want %v", err, tc.err)
			}
			if len(abandoned) != 0 {
				t.Fatal("abandoned was called, though Prometheus stayed")
			}
		})
	}
}

func TestDeliverFailsWhenTheScrapeEndedBeforeTakingTheAnswer(t *testing.T) {
	for _, tc := range []struct {
		name       string
		end        func(*deadlineCtx)
		wantScrape error
	}{
		{"Prometheus went away", (*deadlineCtx).Cancel, ErrAbandoned},
		{"the scrape timed out", (*deadlineCtx).Expire, ErrClientTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHub(t, 10)
			ctx := newDeadlineCtx()
			_, claim, scraped := h.handOff(t, ctx, client("node1"), "a")
			tc.end(ctx)
			if _, err := await(t, "Scrape", scraped); !errors.Is(err, tc.wantScrape) {
				t.Fatalf("Scrape = %v, want %v", err, tc.wantScrape)
			}
			abandoned := false
			if err := claim.Deliver(response("ok"), func() { abandoned = true }); !errors.Is(err, ErrExpiredID) {
				t.Fatalf("Deliver = %v, want ErrExpiredID", err)
			}
			if abandoned {
				t.Error("abandoned was called for an answer never taken")
			}
			if _, err := h.Claim("a", client("node1").Identity); !errors.Is(err, ErrExpiredID) {
				t.Errorf("Claim after = %v, want ErrExpiredID", err)
			}
		})
	}
}

func TestAbandonedIsCalledWhenPrometheusGoesAwayDuringTheRelay(t *testing.T) {
	for _, tc := range []struct {
		name          string
		end           func(*deadlineCtx)
		wantAbandoned bool
	}{
		{"Prometheus went away", (*deadlineCtx).Cancel, true},
		// A deadline passing does not cut a relay under way: the answer
		// may use the full timeout.
		{"the wait for a client timed out", (*deadlineCtx).Expire, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHub(t, 10)
			ctx := newDeadlineCtx()
			_, claim, scraped := h.handOff(t, ctx, client("node1"), "a")
			abandoned := make(chan struct{}, 2)
			delivered := async(func() (struct{}, error) {
				return struct{}{}, claim.Deliver(response("ok"), func() { abandoned <- struct{}{} })
			})
			answer, err := await(t, "Scrape", scraped)
			if err != nil {
				t.Fatalf("Scrape: %v", err)
			}
			tc.end(ctx)
			if tc.wantAbandoned {
				select {
				case <-abandoned:
				case <-time.After(testTimeout):
					t.Fatal("abandoned was not called")
				}
			}
			pending(t, "Deliver before Done", delivered)
			errRelay := errors.New("write: connection reset")
			answer.Done(errRelay)
			if _, err := await(t, "Deliver", delivered); err != errRelay {
				t.Fatalf("Deliver = %v, want the relay's error", err)
			}
			if len(abandoned) != 0 {
				t.Fatalf("abandoned called %d more times", len(abandoned))
			}
		})
	}
}

func TestScrapeSaysHowFarItGot(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(h *testHub, t *testing.T, ctx context.Context, s *Scrape) <-chan result[*Answer]
		end   func(*deadlineCtx)
		want  error
	}{
		{
			name: "no client was ever heard from",
			setup: func(h *testHub, t *testing.T, ctx context.Context, s *Scrape) <-chan result[*Answer] {
				return h.queue(t, ctx, s)
			},
			end:  (*deadlineCtx).Expire,
			want: ErrNoClient,
		},
		{
			name: "the client is known but did not poll",
			setup: func(h *testHub, t *testing.T, ctx context.Context, s *Scrape) <-chan result[*Answer] {
				h.register(t, client("node1"))
				return h.queue(t, ctx, s)
			},
			end:  (*deadlineCtx).Expire,
			want: ErrClientIdle,
		},
		{
			name: "the client was forgotten",
			setup: func(h *testHub, t *testing.T, ctx context.Context, s *Scrape) <-chan result[*Answer] {
				h.register(t, client("node1"))
				h.clock.Advance(registrationTimeout + time.Second)
				return h.queue(t, ctx, s)
			},
			end:  (*deadlineCtx).Expire,
			want: ErrNoClient,
		},
		{
			name: "the client took the scrape and did not answer",
			setup: func(h *testHub, t *testing.T, ctx context.Context, s *Scrape) <-chan result[*Answer] {
				polled := h.park(t, context.Background(), client("node1"))
				scraped := h.startScrape(ctx, s)
				work, err := await(t, "Poll", polled)
				if err != nil {
					t.Fatalf("Poll: %v", err)
				}
				work.Delivered()
				return scraped
			},
			end:  (*deadlineCtx).Expire,
			want: ErrClientTimeout,
		},
		{
			name: "Prometheus went away while the scrape was queued",
			setup: func(h *testHub, t *testing.T, ctx context.Context, s *Scrape) <-chan result[*Answer] {
				return h.queue(t, ctx, s)
			},
			end:  (*deadlineCtx).Cancel,
			want: ErrAbandoned,
		},
		{
			name: "Prometheus went away while the client had the scrape",
			setup: func(h *testHub, t *testing.T, ctx context.Context, s *Scrape) <-chan result[*Answer] {
				polled := h.park(t, context.Background(), client("node1"))
				scraped := h.startScrape(ctx, s)
				work, err := await(t, "Poll", polled)
				if err != nil {
					t.Fatalf("Poll: %v", err)
				}
				work.Delivered()
				return scraped
			},
			end:  (*deadlineCtx).Cancel,
			want: ErrAbandoned,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHub(t, 10)
			ctx := newDeadlineCtx()
			scraped := tc.setup(h, t, ctx, h.newScrape("a", "node1"))
			tc.end(ctx)
			if _, err := await(t, "Scrape", scraped); !errors.Is(err, tc.want) {
				t.Fatalf("Scrape = %v, want %v", err, tc.want)
			}
			if st := h.Stats(); st.Queued != 0 || st.Inflight != 0 {
				t.Fatalf("stats after = %+v, want nothing queued or in flight", st)
			}
		})
	}
}

func TestNamesAreNormalised(t *testing.T) {
	for _, tc := range []struct{ poll, scrape string }{
		{"Node1.", "node1"},
		{"node1", "NODE1."},
		{"Node1.Example.COM", "node1.example.com."},
	} {
		t.Run(tc.poll+" serves "+tc.scrape, func(t *testing.T) {
			h := newTestHub(t, 10)
			polled := h.park(t, context.Background(), Client{FQDN: tc.poll, Identity: "id"})
			if !h.Known(tc.scrape) {
				t.Errorf("Known(%q) = false after a poll of %q", tc.scrape, tc.poll)
			}
			scraped := h.startScrape(context.Background(), h.newScrape("a", tc.scrape))
			work, err := await(t, "Poll", polled)
			if err != nil {
				t.Fatalf("Poll: %v", err)
			}
			work.Delivered()
			claim, err := h.Claim("a", "id")
			if err != nil {
				t.Fatalf("Claim: %v", err)
			}
			go func() { _ = claim.Deliver(response("ok"), nil) }()
			answer, err := await(t, "Scrape", scraped)
			if err != nil {
				t.Fatalf("Scrape: %v", err)
			}
			answer.Done(nil)
			// Listed as the client spells it: a reference client answers
			// only scrapes of that spelling.
			if got, want := h.Clients(0, 0)[0].FQDN, tc.poll; got != want {
				t.Errorf("client listed as %q, want %q", got, want)
			}
		})
	}
}

func TestAClientIsListedAsItLastSpelledItsName(t *testing.T) {
	h := newTestHub(t, 10)
	for _, step := range []struct {
		name   string
		attach func()
	}{
		{"Node1.Example", func() { h.register(t, Client{FQDN: "Node1.Example"}) }},
		{"node1.example.", func() {
			if _, err := h.Attach(Client{FQDN: "node1.example."}, newFakeTunnel(), 1); err != nil {
				t.Fatalf("Attach: %v", err)
			}
		}},
		{"node1.example", func() { h.register(t, Client{FQDN: "node1.example"}) }},
	} {
		step.attach()
		if got := h.Clients(0, 0); len(got) != 1 || got[0].FQDN != step.name {
			t.Fatalf("after a contact as %q, clients %+v, want one listed as %q", step.name, got, step.name)
		}
	}
}

func TestNormalFQDN(t *testing.T) {
	for in, want := range map[string]string{
		"node1":             "node1",
		"Node1.":            "node1",
		"NODE1.EXAMPLE.COM": "node1.example.com",
		"node1.example.":    "node1.example",
		"":                  "",
	} {
		if got := NormalFQDN(in); got != want {
			t.Errorf("NormalFQDN(%q) = %q, want %q", in, got, want)
		}
	}
}

// canceled returns a context that has already ended.
func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func TestAScrapeWhoseContextEndedIsHandedToNoCarrier(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(*deadlineCtx)
		want error
	}{
		{"Prometheus already went away", (*deadlineCtx).Cancel, ErrAbandoned},
		{"its wait already passed", (*deadlineCtx).Expire, ErrClientIdle},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHub(t, 10)
			polled := h.park(t, context.Background(), client("node1"))
			ctx := newDeadlineCtx()
			tc.end(ctx)
			if _, err := h.Scrape(ctx, h.newScrape("a", "node1")); !errors.Is(err, tc.want) {
				t.Fatalf("Scrape = %v, want %v", err, tc.want)
			}
			pending(t, "the parked poll", polled)
			if st := h.Stats(); st.Parked != 1 || st.Inflight != 0 {
				t.Fatalf("stats = %+v, want the poll still parked and nothing in flight", st)
			}
			h.Shutdown()
			if _, err := await(t, "Poll", polled); !errors.Is(err, ErrShuttingDown) {
				t.Fatalf("Poll = %v, want ErrShuttingDown", err)
			}
		})
	}
}
