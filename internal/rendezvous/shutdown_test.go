package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestAfterShutdownTheHubTakesNoNewWork(t *testing.T) {
	h := newTestHub(t, 10)
	h.Shutdown()
	h.Shutdown()
	select {
	case <-h.ShuttingDown():
	default:
		t.Fatal("ShuttingDown is not closed after Shutdown")
	}
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"a poll", func() error { _, err := h.Poll(context.Background(), client("node1"), WaitForever); return err }},
		{"a scrape", func() error { _, err := h.Scrape(context.Background(), h.newScrape("a", "node1")); return err }},
		{"a tunnel", func() error { _, err := h.Attach(client("node1"), newFakeTunnel(), 1); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, ErrShuttingDown) {
				t.Fatalf("got %v, want ErrShuttingDown", err)
			}
		})
	}
	if err := h.Drain(context.Background()); err != nil {
		t.Fatalf("Drain = %v, want nil with nothing in flight", err)
	}
}

func TestShutdownEndsParkedPollsAndQueuedScrapes(t *testing.T) {
	h := newTestHub(t, 10)
	polled := h.park(t, context.Background(), client("node1"))
	scraped := h.queue(t, context.Background(), h.newScrape("a", "node2"))
	h.Shutdown()
	if _, err := await(t, "Poll", polled); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("Poll = %v, want ErrShuttingDown", err)
	}
	if _, err := await(t, "Scrape", scraped); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("Scrape = %v, want ErrShuttingDown", err)
	}
	if st := h.Stats(); st.Parked != 0 || st.Queued != 0 {
		t.Fatalf("stats = %+v, want nothing parked or queued", st)
	}
}

func TestDrainWaitsForEveryScrapeHandedToAPollToBePushed(t *testing.T) {
	h := newTestHub(t, 10)
	var scrapes []<-chan result[*Answer]
	for i := range 2 {
		c := client(fmt.Sprint("node", i))
		polled := h.park(t, context.Background(), c)
		scrapes = append(scrapes, h.startScrape(context.Background(), h.newScrape(c.FQDN, c.FQDN)))
		work, err := await(t, "Poll", polled)
		if err != nil {
			t.Fatalf("Poll: %v", err)
		}
		work.Delivered()
	}
	// A scrape on a tunnel is not waited for: its caller holds it.
	tunnel := newFakeTunnel()
	attach(t, h, client("tunnelled"), tunnel, 1)
	tunnelled := h.startScrape(context.Background(), h.newScrape("t", "tunnelled"))
	call := tunnel.next(t)

	h.Shutdown()
	drained := async(func() (struct{}, error) { return struct{}{}, h.Drain(context.Background()) })
	if err := h.Drain(canceled()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Drain with an ended context = %v, want context.Canceled", err)
	}
	for i, fqdn := range []string{"node0", "node1"} {
		pending(t, "Drain", drained)
		claim, err := h.Claim(fqdn, client(fqdn).Identity)
		if err != nil {
			t.Fatalf("Claim after Shutdown: %v", err)
		}
		go func() { _ = claim.Deliver(response(fqdn), nil) }()
		finish(t, "scrape "+fqdn, scrapes[i], fqdn)
	}
	if _, err := await(t, "Drain", drained); err != nil {
		t.Fatalf("Drain = %v, want nil", err)
	}
	call.answer("t")
	finish(t, "the tunnelled scrape", tunnelled, "t")
}

func TestDrainEndsWhenAHandedScrapeIsGivenUp(t *testing.T) {
	h := newTestHub(t, 10)
	ctx := newDeadlineCtx()
	polled := h.park(t, context.Background(), client("node1"))
	scraped := h.startScrape(ctx, h.newScrape("a", "node1"))
	work, err := await(t, "Poll", polled)
	if err != nil {
		t.Fatalf("Poll: %v", err)
	}
	work.Delivered()
	h.Shutdown()
	drained := async(func() (struct{}, error) { return struct{}{}, h.Drain(context.Background()) })
	pending(t, "Drain", drained)
	ctx.Expire()
	if _, err := await(t, "Scrape", scraped); !errors.Is(err, ErrClientTimeout) {
		t.Fatalf("Scrape = %v, want ErrClientTimeout", err)
	}
	if _, err := await(t, "Drain", drained); err != nil {
		t.Fatalf("Drain = %v, want nil", err)
	}
}

func TestAScrapeATunnelRefusesDuringShutdownEnds(t *testing.T) {
	h := newTestHub(t, 10)
	tunnel := newFakeTunnel()
	attach(t, h, client("node1"), tunnel, 1)
	scraped := h.startScrape(context.Background(), h.newScrape("a", "node1"))
	call := tunnel.next(t)
	h.Shutdown()
	call.fail(fmt.Errorf("going away: %w", ErrNotCarried))
	if _, err := await(t, "Scrape", scraped); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("Scrape = %v, want ErrShuttingDown", err)
	}
}
