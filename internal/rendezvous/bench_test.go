package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The hub's hot path, one scrape per op, with a fleet of other clients
// registered as a proxy serving one has. Run with
//
//	go test -run '^$' -bench . -benchtime=2000x ./internal/rendezvous

// benchFleets are the numbers of FQDNs registered, the scraped one among
// them.
var benchFleets = []int{1, 100, 10000}

// benchAnswer is the answer every client gives: no body, so that one value
// serves every op and the benchmark measures the hub, not the copy.
func benchAnswer() *http.Response {
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody}
}

// benchHub returns a hub that keeps fqdns clients and more, shut down and
// closed when the benchmark ends; wait is done first, for the goroutines
// the benchmark started.
func benchHub(b *testing.B, wait *sync.WaitGroup) *Hub {
	b.Helper()
	h := New(Config{RegistrationTimeout: time.Hour, MaxClients: 1 << 20}, log.NewNopLogger(), nil)
	b.Cleanup(func() {
		h.Shutdown()
		wait.Wait()
		h.Close()
	})
	return h
}

// BenchmarkHandOffToAPoll is one scrape handed to the scraped client's
// poll and answered by its push: Scrape, Poll, Claim, Deliver and Done.
// The other FQDNs have a poll parked each. The client polls again as soon
// as its push is relayed, so its poll is usually parked before the next
// scrape comes.
func BenchmarkHandOffToAPoll(b *testing.B) {
	for _, fleet := range benchFleets {
		b.Run(fmt.Sprintf("fqdns=%d", fleet), func(b *testing.B) {
			var pollers sync.WaitGroup
			h := benchHub(b, &pollers)
			for i := 1; i < fleet; i++ {
				c := client(fmt.Sprintf("node%d.example.com", i))
				pollers.Go(func() {
					if _, err := h.Poll(context.Background(), c, WaitForever); !errors.Is(err, ErrShuttingDown) {
						b.Errorf("idle poll: %v", err)
					}
				})
			}
			waitFor(b, "the fleet to park", func() bool { return h.Stats().Parked == fleet-1 })
			scraped := client("node0.example.com")
			resp := benchAnswer()
			pollers.Go(func() {
				for {
					work, err := h.Poll(context.Background(), scraped, WaitForever)
					if err != nil {
						if !errors.Is(err, ErrShuttingDown) {
							b.Errorf("Poll: %v", err)
						}
						return
					}
					work.Delivered()
					claim, err := h.Claim(work.ID, scraped.Identity)
					if err != nil {
						b.Errorf("Claim: %v", err)
						return
					}
					if err := claim.Deliver(resp, nil); err != nil {
						b.Errorf("Deliver: %v", err)
						return
					}
				}
			})
			ctx := context.Background()
			deadline := time.Now().Add(time.Hour)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				s := &Scrape{ID: "5f0c2b8e-3c1a-4a57-9d6e-0b1f2a3c4d5e", FQDN: scraped.FQDN, Deadline: deadline}
				answer, err := h.Scrape(ctx, s)
				if err != nil {
					b.Fatalf("Scrape: %v", err)
				}
				answer.Done(nil)
			}
			b.StopTimer()
		})
	}
}

// BenchmarkHandOffToATunnel is one scrape carried by the scraped client's
// tunnel, which answers at once: Scrape, Carry and Done. The other FQDNs
// have a tunnel attached each.
func BenchmarkHandOffToATunnel(b *testing.B) {
	for _, fleet := range benchFleets {
		b.Run(fmt.Sprintf("fqdns=%d", fleet), func(b *testing.B) {
			var none sync.WaitGroup
			h := benchHub(b, &none)
			tunnel := benchTunnel{resp: benchAnswer()}
			for i := 1; i < fleet; i++ {
				if _, err := h.Attach(client(fmt.Sprintf("node%d.example.com", i)), tunnel, 16); err != nil {
					b.Fatalf("Attach: %v", err)
				}
			}
			if _, err := h.Attach(client("node0.example.com"), tunnel, 16); err != nil {
				b.Fatalf("Attach: %v", err)
			}
			ctx := context.Background()
			deadline := time.Now().Add(time.Hour)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				s := &Scrape{ID: "5f0c2b8e-3c1a-4a57-9d6e-0b1f2a3c4d5e", FQDN: "node0.example.com", Deadline: deadline}
				answer, err := h.Scrape(ctx, s)
				if err != nil {
					b.Fatalf("Scrape: %v", err)
				}
				answer.Done(nil)
			}
		})
	}
}

// benchTunnel answers every scrape at once with the same bodiless answer.
type benchTunnel struct{ resp *http.Response }

func (t benchTunnel) Carry(context.Context, *Scrape) (*http.Response, error) { return t.resp, nil }

// The cost under the hub's lock of giving a slot back on a tunnel: with
// the client's own name only, and with the 1024 targets a gateway may
// announce, none of them with a scrape queued.
func BenchmarkGivingASlotBackOnATunnelWithNothingQueued(b *testing.B) {
	for _, n := range []int{0, 1024} {
		b.Run(fmt.Sprintf("%d targets", n), func(b *testing.B) {
			h := newTestHub(b, 10000)
			s, err := h.Attach(Client{FQDN: "gw"}, answeringTunnel{"x"}, 4)
			if err != nil {
				b.Fatal(err)
			}
			var targets []Target
			for i := range n {
				host := fmt.Sprintf("t%d.example", i)
				targets = append(targets, Target{Name: host + ":9100", Host: host})
			}
			s.SetTargets(targets, nil)
			b.ResetTimer()
			for range b.N {
				h.mu.Lock()
				h.fillLocked(s)
				h.mu.Unlock()
			}
		})
	}
}

// How long one announcement holds the hub's lock: a 4 MiB control message
// holds about 200 000 short targets, all but the bound refused.
func BenchmarkApplyingAnAnnouncementOfTwoHundredThousandTargets(b *testing.B) {
	h := newTestHub(b, 100000)
	s, err := h.Attach(Client{FQDN: "gw"}, answeringTunnel{"x"}, 4)
	if err != nil {
		b.Fatal(err)
	}
	var targets []Target
	for i := range 200000 {
		host := fmt.Sprintf("t%d.x", i)
		targets = append(targets, Target{Name: host + ":1", Host: host})
	}
	b.ResetTimer()
	for range b.N {
		s.SetTargets(targets, nil)
		s.SetTargets(nil, nil)
	}
}

// BenchmarkGatheringTheMetricsOfTenThousandClients is one scrape of the
// proxy's /metrics with 10 000 clients known: two series each.
func BenchmarkGatheringTheMetricsOfTenThousandClients(b *testing.B) {
	reg := prometheus.NewRegistry()
	h := New(Config{RegistrationTimeout: time.Hour, MaxClients: 1 << 20}, log.NewNopLogger(), reg)
	defer h.Close()
	for i := range 10000 {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, _ = h.Poll(ctx, client(fmt.Sprintf("node%d.example.com", i)), WaitForever)
	}
	handler := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/metrics", nil)
		req.Header.Set("Accept-Encoding", "gzip")
		handler.ServeHTTP(rec, req)
		io.Copy(io.Discard, rec.Body)
	}
}
