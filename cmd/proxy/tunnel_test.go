package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rancher/pushprox/internal/testbin"
	"github.com/rancher/pushprox/util"
)

var clientTunnelOpen = regexp.MustCompile(`msg="tunnel open"`)

func TestTunnelCarriesManyScrapesAtOnceOnOneConnection(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	target := startTarget(t, "up 1\n")
	tp.startTunnelClient(t, "127.0.0.1", tp.srv.URL, 1, "--proxy.transport=tunnel")

	const scrapes = 20
	var wg sync.WaitGroup
	results := make(chan scrapeResult, scrapes)
	for range scrapes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- scrapeThrough(context.Background(), tp.srv.URL, target.URL+"/metrics", "10")
		}()
	}
	wg.Wait()
	close(results)
	for r := range results {
		if r.err != nil || r.status != http.StatusOK || r.body != "up 1\n" {
			t.Errorf("scrape: %d %q %v", r.status, r.body, r.err)
		}
		if r.header.Get(util.HeaderID) != "" || r.header.Get(util.HeaderScrapeTimeout) != "" {
			t.Errorf("internal headers reached Prometheus: %v", r.header)
		}
	}
	if n := tp.hub.Stats().Parked; n != 0 {
		t.Errorf("%d polls parked; a tunnel client should not poll", n)
	}
	if got := tp.gauge(t, "pushprox_proxy_clients_connected", "tunnel"); got != 1 {
		t.Errorf("clients connected by tunnel = %v, want 1", got)
	}
}

func TestClientPollsAProxyThatRefusesTunnels(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	// A proxy that knows nothing of tunnels, such as the reference one.
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/tunnel" {
			http.NotFound(w, r)
			return
		}
		tp.proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(old.Close)
	target := startTarget(t, "up 1\n")
	client := testbin.Start(t, clientBinary, clientArgs("127.0.0.1", old.URL, "--proxy.transport=auto")...)
	client.WaitForOutput(regexp.MustCompile(`msg="proxy offers no tunnel, polling instead"`))
	tp.waitParked(t, 1)
	r := scrapeThrough(context.Background(), old.URL, target.URL+"/metrics", "10")
	if r.err != nil || r.status != http.StatusOK || r.body != "up 1\n" {
		t.Fatalf("scrape: %d %q %v", r.status, r.body, r.err)
	}
}

func TestAClientWhoseTunnelIsRateLimitedAsksForATunnelAgainInsteadOfPolling(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	var asked atomic.Int64
	busy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/tunnel" && asked.Add(1) == 1 {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "too many new clients from this source", http.StatusTooManyRequests)
			return
		}
		tp.proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(busy.Close)
	target := startTarget(t, "up 1\n")
	client := tp.startTunnelClient(t, "127.0.0.1", busy.URL, 1, "--proxy.transport=auto")
	if strings.Contains(client.Output(), "polling instead") {
		t.Errorf("the client took a 429 for a proxy without tunnels:\n%s", client.Output())
	}
	if n := asked.Load(); n != 2 {
		t.Errorf("the client asked for a tunnel %d times, want 2", n)
	}
	if r := scrapeThrough(context.Background(), busy.URL, target.URL+"/metrics", "10"); r.status != http.StatusOK {
		t.Errorf("scrape: %d %q %v", r.status, r.body, r.err)
	}
}

func TestTunnelClientKilledMidScrapeFailsTheScrapeAtOnceAndANewOneServes(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	blocking := startBlockingTarget(t, "slow 1\n")
	client := tp.startTunnelClient(t, "127.0.0.1", tp.srv.URL, 1, "--proxy.transport=tunnel")
	result := goScrape(context.Background(), tp.srv.URL, blocking.URL+"/metrics", "60")
	<-blocking.arrived
	client.Kill()
	r := await(t, "the scrape", result)
	if r.status != http.StatusBadGateway || r.elapsed > 30*time.Second {
		t.Errorf("scrape with its client killed: %d %q after %s, want 502 at once", r.status, r.body, r.elapsed)
	}
	waitFor(t, "the dead tunnel to detach", func() bool { return tp.hub.Stats().Tunnels == 0 })

	target := startTarget(t, "up 1\n")
	tp.startTunnelClient(t, "127.0.0.1", tp.srv.URL, 1, "--proxy.transport=tunnel")
	if r := scrapeThrough(context.Background(), tp.srv.URL, target.URL+"/metrics", "10"); r.status != http.StatusOK {
		t.Errorf("scrape through the new tunnel: %d %q %v", r.status, r.body, r.err)
	}
}

func TestHostileTunnelPeerIsClosedAndOtherClientsAreServed(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	conn, err := net.Dial("tcp", tp.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req, _, err := util.NewTunnelRequest(tp.srv.URL+"/tunnel", "evil", "", 4)
	if err != nil {
		t.Fatal(err)
	}
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	tp.waitTunnels(t, 1)
	// Not yamux: a frame header of a protocol version that does not exist.
	fmt.Fprint(conn, strings.Repeat("\xff", 64))
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		// The proxy may have written a ping or a go-away first; then it closes.
		for err == nil {
			_, err = br.ReadByte()
		}
	}
	waitFor(t, "the hostile tunnel to detach", func() bool { return tp.hub.Stats().Tunnels == 0 })

	target := startTarget(t, "up 1\n")
	tp.startTunnelClient(t, "127.0.0.1", tp.srv.URL, 1, "--proxy.transport=auto")
	if r := scrapeThrough(context.Background(), tp.srv.URL, target.URL+"/metrics", "10"); r.status != http.StatusOK {
		t.Errorf("scrape of another client: %d %q %v", r.status, r.body, r.err)
	}
}

func TestTunnelRequestsThatAreNoHandshakeGetAClientError(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	for _, tc := range []struct {
		name   string
		header http.Header
		want   int
	}{
		{"a plain GET", http.Header{}, http.StatusBadRequest},
		{"an upgrade to another protocol", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"h2c"}}, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, tp.srv.URL+"/tunnel", nil)
			req.Header = tc.header
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("got %s, want %d", resp.Status, tc.want)
			}
		})
	}
	req, _, _ := util.NewTunnelRequest(tp.srv.URL+"/tunnel", "bad name!", "", 1)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a tunnel for an invalid FQDN: %s, want 400", resp.Status)
	}
}

// gauge returns the value of the series of a gauge whose first label has
// the given value.
func (tp *testProxy) gauge(t *testing.T, name, labelValue string) float64 {
	t.Helper()
	families, err := tp.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, family := range families {
		if family.GetName() != name {
			continue
		}
		for _, m := range family.GetMetric() {
			if (labelValue == "" && len(m.GetLabel()) == 0) || (len(m.GetLabel()) > 0 && m.GetLabel()[0].GetValue() == labelValue) {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no series %s{...=%q}", name, labelValue)
	return 0
}

// startTunnelClient starts a client for fqdn with the given flags (a
// --proxy.transport among them) towards proxyURL and waits until its
// tunnel is open and tp has tunnels attached.
func (tp *testProxy) startTunnelClient(t *testing.T, fqdn, proxyURL string, tunnels int, flags ...string) *testbin.Process {
	t.Helper()
	client := testbin.Start(t, clientBinary, clientArgs(fqdn, proxyURL, flags...)...)
	client.WaitForOutput(clientTunnelOpen)
	tp.waitTunnels(t, tunnels)
	return client
}

// waitTunnels waits until n tunnels are attached: a client logs its tunnel
// open as soon as it has the proxy's 101, a moment before the proxy
// attaches it.
func (tp *testProxy) waitTunnels(t *testing.T, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d tunnels attached", n), func() bool { return tp.hub.Stats().Tunnels == n })
}
