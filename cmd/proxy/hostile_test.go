package main

// Tests of hostile and broken input: late, garbage, oversized and
// stalled pushes, hostile names, slowloris and idle sockets, and timeouts
// that must tell their cause apart.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rancher/pushprox/util"
)

// Poll bodies and scrape targets must be host names or IP addresses of at
// most 253 bytes; anything else is refused with 400 and a reason.
func TestHostileFQDNsAreRefused(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	label := strings.Repeat("a", 63)
	longest := strings.Join([]string{label, label, label, strings.Repeat("b", 61)}, ".") // 253 bytes
	for _, tc := range []struct {
		name string
		fqdn string
		code int
	}{
		{name: "empty", fqdn: "", code: http.StatusBadRequest},
		{name: "blank", fqdn: " \t\r\n", code: http.StatusBadRequest},
		{name: "253 bytes", fqdn: longest, code: http.StatusNoContent},
		{name: "254 bytes", fqdn: longest + "c", code: http.StatusBadRequest},
		{name: "label over 63 bytes", fqdn: label + "a.example", code: http.StatusBadRequest},
		{name: "empty label", fqdn: "node1..example", code: http.StatusBadRequest},
		{name: "leading hyphen", fqdn: "-node1", code: http.StatusBadRequest},
		{name: "NUL byte", fqdn: "node1\x00.example", code: http.StatusBadRequest},
		{name: "path", fqdn: "../../etc/passwd", code: http.StatusBadRequest},
		{name: "non-ASCII", fqdn: "nöde1", code: http.StatusBadRequest},
		{name: "invalid UTF-8", fqdn: "node\xff", code: http.StatusBadRequest},
		{name: "two names", fqdn: "node1 node2", code: http.StatusBadRequest},
		{name: "IPv6", fqdn: "::1", code: http.StatusNoContent},
	} {
		t.Run("poll "+tc.name, func(t *testing.T) {
			resp, err := tp.poll(context.Background(), tc.fqdn, http.Header{util.HeaderPrefer: {"wait=0"}})
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			text, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code {
				t.Errorf("got %s %q, want %d", resp.Status, text, tc.code)
			}
			if tc.code == http.StatusBadRequest && !strings.Contains(string(text), "bad poll") {
				t.Errorf("no reason given: %q", text)
			}
		})
	}
	for _, tc := range []struct {
		name, host string
	}{
		{name: "254 bytes", host: longest + "c"},
		{name: "label over 63 bytes", host: label + "a.example"},
		{name: "bad character", host: "node_1!"},
	} {
		t.Run("scrape "+tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", tp.srv.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "GET http://%s:9100/metrics HTTP/1.1\r\nHost: %[1]s:9100\r\n\r\n", tc.host)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("got %s, want 400", resp.Status)
			}
		})
	}
	if got := tp.hub.Clients(0, 0); len(got) != 2 {
		t.Errorf("known clients %v, want only the two valid names", got)
	}
}

// A client that sends its request head byte by byte must not hold a
// connection longer than the read header timeout, and meanwhile scrapes are
// served.
func TestSlowlorisCannotHoldTheServer(t *testing.T) {
	ln, err := listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := defaultConfig()
	cfg.readHeaderTimeout = 200 * time.Millisecond
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	reg := prometheus.NewRegistry()
	go func() { served <- serve(ctx, cfg, log.NewNopLogger(), reg, reg, ln) }()
	defer func() {
		stop()
		<-served
	}()

	const slow = 20
	conns := make([]net.Conn, slow)
	var trickling sync.WaitGroup
	start := time.Now()
	for i := range conns {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns[i] = conn
		trickling.Add(1)
		go func() {
			defer trickling.Done()
			head := "GET http://node1:9100/metrics HTTP/1.1\r\nHost: node1:9100\r\n" + strings.Repeat("X-Slow: a\r\n", 1000)
			for i := range len(head) {
				if _, err := conn.Write([]byte{head[i]}); err != nil {
					return // the server closed it
				}
				time.Sleep(10 * time.Millisecond) // the attack's pace, not synchronisation
			}
		}()
	}
	// The server is still serving while the slow heads trickle in.
	resp, err := http.Get("http://" + ln.Addr().String() + "/clients")
	if err != nil {
		t.Fatalf("server unavailable during the attack: %v", err)
	}
	resp.Body.Close()
	for _, conn := range conns {
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadAll(conn); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("slow connection: %v", err)
		}
	}
	// Every byte-by-byte head would take over 4 minutes; the server closed
	// them after its read header timeout.
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("slow connections held for %s", elapsed)
	}
	trickling.Wait()
}

// Idle sockets by the thousand (port scanners, half-dead clients) must not
// stop the proxy serving polls and scrapes.
func TestThousandsOfIdleSocketsDoNotStopScrapes(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	addr := tp.srv.Listener.Addr().String()
	const want = 2000
	var idle []net.Conn
	defer func() {
		for _, conn := range idle {
			conn.Close()
		}
	}()
	for len(idle) < want {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			// Out of file descriptors (each socket costs two here).
			t.Logf("stopped at %d idle sockets: %v", len(idle), err)
			break
		}
		idle = append(idle, conn)
		if len(idle)%10 == 0 {
			// Some send half a request head and stop.
			io.WriteString(conn, "GET http://node1:9100/metrics HTTP/1.1\r\nHost: node1")
		}
	}
	if len(idle) < 500 {
		t.Fatalf("could only open %d sockets", len(idle))
	}
	client := &fakeClient{tp: tp, fqdn: "node1", answer: func(*http.Request) *http.Response {
		return textResponse(http.StatusOK, "up 1\n")
	}}
	done := make(chan struct{})
	go func() { defer close(done); client.serve(t, 3) }()
	for i := range 3 {
		if r := scrapeThrough(context.Background(), tp.srv.URL, "http://node1:9100/metrics", "10"); r.status != http.StatusOK || r.body != "up 1\n" {
			t.Fatalf("scrape %d with %d idle sockets: %d %q %v", i, len(idle), r.status, r.body, r.err)
		}
	}
	<-done
}

// The proxy answers Prometheus within the effective timeout (plus a small
// margin), and says which of three things went wrong, in the status, the
// text and the outcome label.
func TestTimeoutsEndToEndTellTheCauseApart(t *testing.T) {
	const margin = 2 * time.Second // a correctness bound, not a performance one
	for _, tc := range []struct {
		name      string
		header    string        // X-Prometheus-Scrape-Timeout-Seconds; "" sends none
		effective time.Duration // after the default and the clamp
		setup     func(t *testing.T, tp *testProxy)
		code      int
		text      string
		outcome   string
		waits     bool // the proxy waits out the timeout
	}{
		{
			name: "no client", header: "1", effective: time.Second,
			setup: func(*testing.T, *testProxy) {},
			code:  http.StatusServiceUnavailable, text: `no client connected as "node1"`, outcome: outcomeNoClient, waits: true,
		},
		{
			name: "no client, default timeout", effective: time.Second,
			setup: func(*testing.T, *testProxy) {},
			code:  http.StatusServiceUnavailable, text: `no client connected as "node1"`, outcome: outcomeNoClient, waits: true,
		},
		{
			name: "no client, timeout clamped", header: "600", effective: time.Second,
			setup: func(*testing.T, *testProxy) {},
			code:  http.StatusServiceUnavailable, text: `no client connected as "node1"`, outcome: outcomeNoClient, waits: true,
		},
		{
			name: "known client not polling", header: "1", effective: time.Second,
			setup: func(t *testing.T, tp *testProxy) {
				resp, err := tp.poll(context.Background(), "node1", http.Header{util.HeaderPrefer: {"wait=0"}})
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			},
			code: http.StatusServiceUnavailable, text: `client "node1" is known but did not poll`, outcome: outcomeNoClient, waits: true,
		},
		{
			name: "client took it but did not answer", header: "1", effective: time.Second,
			setup: func(t *testing.T, tp *testProxy) {
				poll := rawPoll(t, tp.srv.Listener.Addr().String(), "node1")
				tp.waitParked(t, 1)
				go io.Copy(io.Discard, poll) // takes the scrape, never pushes
			},
			code: http.StatusGatewayTimeout, text: `client "node1" took the scrape but did not answer`, outcome: outcomeClientTimeout, waits: true,
		},
		{
			name: "target error", header: "30", effective: 30 * time.Second,
			setup: func(t *testing.T, tp *testProxy) {
				client := &fakeClient{tp: tp, fqdn: "node1", answer: func(*http.Request) *http.Response {
					return textResponse(http.StatusInternalServerError, "scraping target: connection refused\n")
				}}
				done := make(chan struct{})
				go func() { defer close(done); client.serve(t, 1) }()
				// Its push check reports before the test ends.
				t.Cleanup(func() { await(t, "the client", done) })
				tp.waitParked(t, 1)
			},
			code: http.StatusInternalServerError, text: "connection refused", outcome: outcomeTargetError,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaultConfig()
			cfg.defaultTimeout = time.Second
			if tc.header == "600" {
				cfg.maxTimeout = time.Second
			}
			tp := startProxy(t, cfg)
			tc.setup(t, tp)
			r := scrapeThrough(context.Background(), tp.srv.URL, "http://node1:9100/metrics", tc.header)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.status != tc.code || !strings.Contains(r.body, tc.text) {
				t.Errorf("got %d %q, want %d with %q", r.status, r.body, tc.code, tc.text)
			}
			if r.elapsed > tc.effective+margin {
				t.Errorf("answered after %s, timeout %s", r.elapsed, tc.effective)
			}
			if tc.waits && r.elapsed < tc.effective/2 {
				t.Errorf("gave up after %s, before the timeout %s", r.elapsed, tc.effective)
			}
			if !tc.waits && r.elapsed > tc.effective/3 {
				t.Errorf("took %s, want an answer well before the timeout %s", r.elapsed, tc.effective)
			}
			tp.waitOutcome(t, tc.outcome, 1)
			for _, outcome := range []string{outcomeDelivered, outcomeTargetError, outcomeNoClient, outcomeClientTimeout, outcomeAborted, outcomeRefused} {
				if got := tp.outcomes(outcome); outcome != tc.outcome && got != 0 {
					t.Errorf("outcome %s = %v, want 0", outcome, got)
				}
			}
		})
	}
}
