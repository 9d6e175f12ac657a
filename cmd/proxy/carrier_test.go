package main

import (
	"context"
	"errors"
	"net"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/rancher/pushprox/internal/mux"
	"github.com/rancher/pushprox/internal/rendezvous"
	"github.com/rancher/pushprox/util"
)

// lostFirstWrite is a connection whose first write never arrives, as a
// frame still on its way when the other end acts.
type lostFirstWrite struct {
	net.Conn
	once sync.Once
}

func (c *lostFirstWrite) Write(p []byte) (int, error) {
	lost := false
	c.once.Do(func() { lost = true })
	if lost {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func TestANewStreamTheClientResetsIsNotCarriedSoTheScrapeCanGoElsewhere(t *testing.T) {
	a, b := net.Pipe()
	proxyEnd := mux.Client(a, util.TunnelConfig(time.Minute))
	clientEnd := mux.Server(&lostFirstWrite{Conn: b}, util.TunnelConfig(time.Minute))
	t.Cleanup(func() {
		proxyEnd.Close()
		clientEnd.Close()
	})
	// The stopping client takes no new streams; its go-away has not
	// reached the proxy, which opens a stream and is answered with a reset.
	if err := clientEnd.GoAway(); err != nil {
		t.Fatal(err)
	}
	carrier := &tunnel{session: proxyEnd, reuse: true, idleLimit: 1, budget: &streamBudget{left: 1 << 20}, idleTimeout: time.Minute}
	request, err := util.EncodeScrapeRequest(httptest.NewRequest("GET", "http://node:9100/metrics", nil), "scrape-1", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := &rendezvous.Scrape{ID: "scrape-1", FQDN: "node", Request: request, Deadline: time.Now().Add(10 * time.Second)}
	if _, err := carrier.Carry(ctx, s); !errors.Is(err, rendezvous.ErrNotCarried) {
		t.Errorf("Carry on a stream the client reset: %v, want ErrNotCarried, so that another carrier takes the scrape", err)
	}
}
