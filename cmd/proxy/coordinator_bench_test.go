package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-kit/log"
)

// The coordinator's hot path, as one scrape takes it: a client's poll
// parks, Prometheus' scrape is submitted and handed to it, the client's
// push takes the scrape by its id, and the poll is released. Run with
//
//	go test -run '^$' -bench . -benchmem ./cmd/proxy

// benchCoordinator returns a coordinator with idle clients parked, as a
// proxy serving a fleet has, and closes it when the benchmark ends.
func benchCoordinator(b *testing.B, idle int) *coordinator {
	b.Helper()
	c := newCoordinator(log.NewNopLogger(), 5*time.Minute, 1<<30, time.Now)
	b.Cleanup(c.close)
	for i := range idle {
		p := &poll{ctx: context.Background(), fqdn: "idle-" + strconv.Itoa(i), handed: make(chan *scrape, 1)}
		if s, err := c.park(p); err != nil || s != nil {
			b.Fatalf("parking idle poll: %v, %v", s, err)
		}
	}
	return c
}

// roundTrip runs one scrape through c: park, submit, hand over, take,
// release.
func roundTrip(c *coordinator, fqdn, id string, labels map[string]string) error {
	p := &poll{ctx: context.Background(), fqdn: fqdn, labels: labels, handed: make(chan *scrape, 1)}
	if s, err := c.park(p); err != nil || s != nil {
		return fmt.Errorf("park: %v, %v", s, err)
	}
	s := &scrape{id: id, fqdn: fqdn, ctx: context.Background(), pushed: make(chan *pushed, 1)}
	if err := c.submit(s); err != nil {
		return fmt.Errorf("submit: %w", err)
	}
	handed := <-p.handed
	c.release(p)
	if got, err := c.take(handed.id, ""); err != nil || got != s {
		return fmt.Errorf("take: %v, %v", got, err)
	}
	return nil
}

// BenchmarkCoordinatorHandoff is one scrape's way through the coordinator
// when the client's poll is parked first, as it is in steady state.
func BenchmarkCoordinatorHandoff(b *testing.B) {
	for _, bc := range []struct {
		name   string
		idle   int
		labels map[string]string
	}{
		{"idle=0", 0, nil},
		{"idle=10000", 10000, nil},
		{"idle=10000/labels=2", 10000, map[string]string{"env": "prod", "region": "eu-west-1"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := benchCoordinator(b, bc.idle)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := roundTrip(c, "node1.example.com", "5f0c2b8e-3c1a-4a57-9d6e-0b1f2a3c4d5e", bc.labels); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCoordinatorHandoffParallel runs scrapes of many FQDNs at once,
// all through the coordinator's one lock.
func BenchmarkCoordinatorHandoffParallel(b *testing.B) {
	for _, idle := range []int{0, 10000} {
		b.Run(fmt.Sprintf("idle=%d", idle), func(b *testing.B) {
			c := benchCoordinator(b, idle)
			var workers atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				// Each worker plays its own set of clients; ids are
				// unique per worker, and each scrape ends before the
				// next begins.
				w := workers.Add(1)
				fqdns := make([]string, 64)
				for i := range fqdns {
					fqdns[i] = fmt.Sprintf("node-%d-%d.example.com", w, i)
				}
				id := fmt.Sprintf("scrape-%d", w)
				for i := 0; pb.Next(); i++ {
					if err := roundTrip(c, fqdns[i%len(fqdns)], id, nil); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkCoordinatorQueued is the other order: the scrape arrives first
// and waits in the queue; the next poll takes it at once.
func BenchmarkCoordinatorQueued(b *testing.B) {
	c := benchCoordinator(b, 10000)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		s := &scrape{id: "queued", fqdn: "node1.example.com", ctx: ctx, pushed: make(chan *pushed, 1)}
		if err := c.submit(s); err != nil {
			b.Fatal(err)
		}
		p := &poll{ctx: ctx, fqdn: "node1.example.com", handed: make(chan *scrape, 1)}
		got, err := c.park(p)
		if err != nil || got != s {
			b.Fatalf("park: %v, %v", got, err)
		}
		c.release(p)
		if _, err := c.take(s.id, ""); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCoordinatorParkChurn is a poll that ends without work: parked,
// then given up (its wait preference passed, or the client went away).
// Every idle client does this once per poll wait.
func BenchmarkCoordinatorParkChurn(b *testing.B) {
	b.Run("serial", func(b *testing.B) {
		c := benchCoordinator(b, 10000)
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			p := &poll{ctx: ctx, fqdn: "node1.example.com", handed: make(chan *scrape, 1)}
			if s, err := c.park(p); err != nil || s != nil {
				b.Fatalf("park: %v, %v", s, err)
			}
			if s := c.unpark(p); s != nil {
				b.Fatal("unpark returned a scrape")
			}
			c.release(p)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		c := benchCoordinator(b, 10000)
		ctx := context.Background()
		var workers atomic.Int64
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			fqdn := fmt.Sprintf("churn-%d.example.com", workers.Add(1))
			for pb.Next() {
				p := &poll{ctx: ctx, fqdn: fqdn, handed: make(chan *scrape, 1)}
				if s, err := c.park(p); err != nil || s != nil {
					b.Errorf("park: %v, %v", s, err)
					return
				}
				if s := c.unpark(p); s != nil {
					b.Error("unpark returned a scrape")
					return
				}
				c.release(p)
			}
		})
	})
}

// BenchmarkScrapeRequest is the serialization of Prometheus' request into
// the poll answer, done once per scrape before the coordinator sees it.
func BenchmarkScrapeRequest(b *testing.B) {
	r, err := http.NewRequest(http.MethodGet, "http://node1.example.com:9100/metrics", nil)
	if err != nil {
		b.Fatal(err)
	}
	// As the server hands it over: a body, though empty.
	r.Body = http.NoBody
	r.Header.Set("Accept", "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2,*/*;q=0.1")
	r.Header.Set("Accept-Encoding", "gzip")
	r.Header.Set("User-Agent", "Prometheus/3.0.0")
	r.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", "10")
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := scrapeRequest(r, "5f0c2b8e-3c1a-4a57-9d6e-0b1f2a3c4d5e", 10*time.Second); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCoordinatorNoClient is the end of a scrape that no client took
// (its target is down or not connected): the coordinator is asked whether
// the FQDN is known, and the outcome is recorded. Both look through every
// client under the lock, so the cost grows with the fleet.
func BenchmarkCoordinatorNoClient(b *testing.B) {
	for _, idle := range []int{0, 10000} {
		b.Run(fmt.Sprintf("idle=%d", idle), func(b *testing.B) {
			c := benchCoordinator(b, idle)
			s := &scrape{id: "nobody", fqdn: "gone.example.com", ctx: context.Background(), pushed: make(chan *pushed, 1)}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if c.known(s.fqdn) {
					b.Fatal("unknown FQDN reported known")
				}
				c.recordOutcome(s, outcomeNoClient)
			}
		})
	}
}
