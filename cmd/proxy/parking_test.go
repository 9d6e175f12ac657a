package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rancher/pushprox/util"
)

// expectClosed fails unless the proxy closed conn after what was read:
// with a reset when the client's bytes were left unread.
func expectClosed(t *testing.T, r *bufio.Reader) {
	t.Helper()
	if b, err := r.ReadByte(); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("connection still open after the answer: read %q, %v", b, err)
	}
}

// dial opens a connection to the proxy, closed when the test ends, and
// a reader of its answers.
func (tp *testProxy) dial(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", tp.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, bufio.NewReader(conn)
}

// readAnswer reads one answer from r, with its body.
func readAnswer(t *testing.T, conn net.Conn, r *bufio.Reader) (*http.Response, string) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("reading answer: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading answer body: %v", err)
	}
	return resp, string(body)
}

func TestAParkedPollsConnectionCarriesItsScrapeThePushAndTheNextPoll(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	conn := rawPoll(t, tp.srv.Listener.Addr().String(), "host-a")
	r := bufio.NewReader(conn)
	tp.waitParked(t, 1)
	if got := tp.detachedCount(); got != 1 {
		t.Fatalf("%d detached polls, want the parked one", got)
	}

	scraped := goScrape(context.Background(), tp.srv.URL, "http://host-a:9100/metrics", "10")
	resp, body := readAnswer(t, conn, r)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/http" ||
		resp.ContentLength != int64(len(body)) || resp.Header.Get("Date") == "" {
		t.Fatalf("poll answered %s %v, want 200 application/http with its length and a date", resp.Status, resp.Header)
	}
	scrape, err := util.DecodeScrapeRequest(bufio.NewReader(strings.NewReader(body)))
	if err != nil {
		t.Fatalf("poll answer is not a scrape: %v", err)
	}
	id := scrape.Header.Get(util.HeaderID)

	// The push goes on the poll's own connection, as the reference
	// client's keep-alive transport sends it.
	push, err := io.ReadAll(serializedAnswer(id, http.StatusOK, "up 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /push HTTP/1.1\r\nHost: proxy\r\nContent-Length: %d\r\n\r\n%s", len(push), push)
	if resp, body := readAnswer(t, conn, r); resp.StatusCode != http.StatusOK {
		t.Fatalf("push on the poll's connection answered %s: %s", resp.Status, body)
	}
	got := await(t, "the scrape", scraped)
	if got.err != nil || got.status != http.StatusOK || got.body != "up 1\n" {
		t.Fatalf("scrape got %d %q, %v; want 200 with the pushed body", got.status, got.body, got.err)
	}

	fmt.Fprintf(conn, "POST /poll HTTP/1.1\r\nHost: proxy\r\nContent-Length: 6\r\n\r\nhost-a")
	tp.waitParked(t, 1)
	if got := tp.detachedCount(); got != 1 {
		t.Fatalf("%d detached polls after the next poll, want 1", got)
	}
}

func TestAReferenceClientsConnectionCarriesPollAndPushScrapeAfterScrape(t *testing.T) {
	// Prometheus' request ends as soon as its answer is relayed; the push
	// that carried the answer must not take that for Prometheus going
	// away, which would close the client's connection after it.
	tp := startProxy(t, defaultConfig())
	conn, r := tp.dial(t)
	const scrapes = 200
	for i := range scrapes {
		fmt.Fprintf(conn, "POST /poll HTTP/1.1\r\nHost: proxy\r\nContent-Length: 6\r\n\r\nhost-a")
		tp.waitParked(t, 1)
		scraped := goScrape(context.Background(), tp.srv.URL, "http://host-a:9100/metrics", "10")
		resp, body := readAnswer(t, conn, r)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("scrape %d: poll answered %s: %s", i, resp.Status, body)
		}
		scrape, err := util.DecodeScrapeRequest(bufio.NewReader(strings.NewReader(body)))
		if err != nil {
			t.Fatalf("scrape %d: poll answer is not a scrape: %v", i, err)
		}
		push, err := io.ReadAll(serializedAnswer(scrape.Header.Get(util.HeaderID), http.StatusOK, "up 1\n"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST /push HTTP/1.1\r\nHost: proxy\r\nContent-Length: %d\r\n\r\n%s", len(push), push)
		resp, body = readAnswer(t, conn, r)
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("scrape %d: push answered %s, closing the connection: %v: %s", i, resp.Status, resp.Close, body)
		}
		if got := await(t, "the scrape", scraped); got.err != nil || got.status != http.StatusOK || got.body != "up 1\n" {
			t.Fatalf("scrape %d got %d %q, %v; want 200 with the pushed body", i, got.status, got.body, got.err)
		}
	}
}

func TestADetachedPollIsAnsweredOnceAndItsConnectionKeptOnlyIfTheClientWantsIt(t *testing.T) {
	for _, tc := range []struct {
		name    string
		request string
		kept    bool
	}{
		{name: "HTTP/1.1", request: "POST /poll HTTP/1.1\r\nHost: proxy\r\nContent-Length: 6\r\n\r\nhost-a", kept: true},
		{name: "HTTP/1.1 with line ends after the body", request: "POST /poll HTTP/1.1\r\nHost: proxy\r\nContent-Length: 6\r\n\r\nhost-a\r\n", kept: true},
		{name: "Connection: close", request: "POST /poll HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\nContent-Length: 6\r\n\r\nhost-a"},
		{name: "HTTP/1.0, as nginx sends by default", request: "POST /poll HTTP/1.0\r\nHost: proxy\r\nContent-Length: 6\r\n\r\nhost-a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := startProxy(t, defaultConfig())
			conn, r := tp.dial(t)
			fmt.Fprint(conn, tc.request)
			tp.waitParked(t, 1)
			if got := tp.detachedCount(); got != 1 {
				t.Fatalf("%d detached polls, want the parked one", got)
			}
			scraped := goScrape(context.Background(), tp.srv.URL, "http://host-a:9100/metrics", "10")
			resp, body := readAnswer(t, conn, r)
			if resp.StatusCode != http.StatusOK || resp.Close == tc.kept {
				t.Fatalf("poll answered %s %v, want 200 with Connection: close %v", resp.Status, resp.Header, !tc.kept)
			}
			scrape, err := util.DecodeScrapeRequest(bufio.NewReader(strings.NewReader(body)))
			if err != nil {
				t.Fatalf("poll answer is not a scrape: %v", err)
			}
			if code, text := tp.push(t, serializedAnswer(scrape.Header.Get(util.HeaderID), http.StatusOK, "up 1\n")); code != http.StatusOK {
				t.Fatalf("push answered %d %q", code, text)
			}
			if got := await(t, "the scrape", scraped); got.status != http.StatusOK {
				t.Fatalf("scrape got %d %q, %v", got.status, got.body, got.err)
			}
			// The poll is counted once its answer is sent, which may be
			// just after the client read it.
			waitFor(t, "the poll counted as a 200", func() bool {
				return testutil.ToFloat64(tp.metrics.httpRequests.WithLabelValues("200", "/poll")) == 1
			})
			if !tc.kept {
				expectClosed(t, r)
				return
			}
			fmt.Fprint(conn, "GET /-/healthy HTTP/1.1\r\nHost: proxy\r\n\r\n")
			if resp, body := readAnswer(t, conn, r); resp.StatusCode != http.StatusOK {
				t.Fatalf("next request on the connection answered %s %q", resp.Status, body)
			}
		})
	}
}

func TestAnEmptyPollAnswerIsCountedWithItsStatus(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	conn, r := tp.dial(t)
	// A poll that waits one second: the shortest wait that detaches.
	fmt.Fprint(conn, "POST /poll HTTP/1.1\r\nHost: proxy\r\nPrefer: wait=1\r\nContent-Length: 6\r\n\r\nhost-a")
	resp, body := readAnswer(t, conn, r)
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get(util.HeaderPreferenceApplied) != "wait=1" || body != "" || resp.Close {
		t.Fatalf("poll answered %s %v %q, want an empty 204 applying wait=1, kept alive", resp.Status, resp.Header, body)
	}
	// The poll is counted once its answer is sent, which may be just
	// after the client read it.
	waitFor(t, "the poll counted as a 204", func() bool {
		return testutil.ToFloat64(tp.metrics.httpRequests.WithLabelValues("204", "/poll")) == 1
	})
	if got := testutil.ToFloat64(tp.metrics.pollsEmpty); got != 1 {
		t.Errorf("pushprox_proxy_polls_empty_total is %v, want 1", got)
	}
}

func TestAnAnsweredPollsConnectionWaitsForTheNextRequestAsAKeptAliveOne(t *testing.T) {
	const readHeaderTimeout = 50 * time.Millisecond
	for _, tc := range []struct {
		name string
		idle time.Duration
	}{
		// Longer than the time to send a request's header, which a new
		// connection gets.
		{name: "past the header timeout", idle: 200 * time.Millisecond},
		{name: "past the idle timeout", idle: time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idleTimeout := 10 * time.Second
			if tc.idle > idleTimeout {
				idleTimeout = 100 * time.Millisecond
			}
			tp := startProxyServer(t, defaultConfig(), func(srv *http.Server) {
				srv.ReadHeaderTimeout = readHeaderTimeout
				srv.IdleTimeout = idleTimeout
			})
			conn, r := tp.dial(t)
			fmt.Fprint(conn, "POST /poll HTTP/1.1\r\nHost: proxy\r\nPrefer: wait=1\r\nContent-Length: 6\r\n\r\nhost-a")
			if resp, body := readAnswer(t, conn, r); resp.StatusCode != http.StatusNoContent {
				t.Fatalf("poll answered %s %q, want 204", resp.Status, body)
			}
			if tc.idle > idleTimeout {
				// The proxy closes the connection once it idled too long;
				// nothing to wait for but that.
				_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
				expectClosed(t, r)
				return
			}
			// A client that takes a while to send its next request, as
			// one scraping a slow target before it pushes.
			time.Sleep(tc.idle)
			fmt.Fprint(conn, "GET /-/healthy HTTP/1.1\r\nHost: proxy\r\n\r\n")
			if resp, body := readAnswer(t, conn, r); resp.StatusCode != http.StatusOK {
				t.Fatalf("request after %v idle answered %s %q", tc.idle, resp.Status, body)
			}
		})
	}
}

func TestBytesSentBeforeAPollsAnswerEndThePollAndItsConnection(t *testing.T) {
	const poll = "POST /poll HTTP/1.1\r\nHost: proxy\r\nContent-Length: 6\r\n\r\nhost-a"
	const next = "GET /-/healthy HTTP/1.1\r\nHost: proxy\r\n\r\n"
	for _, tc := range []struct {
		name   string
		parked bool // the second request comes once the poll is parked
		code   int
	}{
		{name: "in the poll's own write", code: http.StatusBadRequest},
		{name: "while the poll is parked", parked: true, code: http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := startProxy(t, defaultConfig())
			conn, r := tp.dial(t)
			if tc.parked {
				fmt.Fprint(conn, poll)
				tp.waitParked(t, 1)
				fmt.Fprint(conn, next)
			} else {
				fmt.Fprint(conn, poll+next)
			}
			resp, _ := readAnswer(t, conn, r)
			if resp.StatusCode != tc.code || !resp.Close {
				t.Fatalf("poll answered %s %v, want %d with Connection: close", resp.Status, resp.Header, tc.code)
			}
			expectClosed(t, r)
			tp.waitParked(t, 0)
			waitFor(t, "the detached poll to end", func() bool { return tp.detachedCount() == 0 })
			tp.expectStillServing(t, "a poll broke HTTP/1.1's order")
		})
	}
}

func TestShutdownAnswersDetachedPollsAndClosesTheirConnections(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	conn := rawPoll(t, tp.srv.Listener.Addr().String(), "host-a")
	r := bufio.NewReader(conn)
	tp.waitParked(t, 1)
	tp.hub.Shutdown()
	resp, body := readAnswer(t, conn, r)
	if resp.StatusCode != http.StatusRequestTimeout || !resp.Close || !strings.Contains(body, "shutting down") {
		t.Fatalf("parked poll answered %s %v %q at shutdown, want 408 with Connection: close", resp.Status, resp.Header, body)
	}
	expectClosed(t, r)
}

func TestPollsParkInNetHTTPWhenNoServerTakesTheirConnectionsBack(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newProxy(defaultConfig(), log.NewNopLogger(), reg, reg)
	srv := httptest.NewServer(p)
	t.Cleanup(func() {
		p.hub.Shutdown()
		srv.Close()
		p.close()
	})
	tp := &testProxy{proxy: p, srv: srv, reg: reg}
	client := &fakeClient{tp: tp, fqdn: "host-a", answer: func(*http.Request) *http.Response {
		return textResponse(http.StatusOK, "up 1\n")
	}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		client.serve(t, 1)
	}()
	tp.waitParked(t, 1)
	if got := tp.detachedCount(); got != 0 {
		t.Fatalf("%d polls detached without a server to take them back", got)
	}
	got := await(t, "the scrape", goScrape(context.Background(), srv.URL, "http://host-a:9100/metrics", "10"))
	if got.err != nil || got.status != http.StatusOK || got.body != "up 1\n" {
		t.Fatalf("scrape got %d %q, %v; want 200 with the pushed body", got.status, got.body, got.err)
	}
	<-done
}

func TestAClientCertificateStillAuthorizesPollsOnAConnectionThatCameBack(t *testing.T) {
	sp := startSecProxy(t, true, secWebConfig(t, nil))
	cert := sp.ca.Client(t, "host-a", "host-a.example.com").TLSCertificate(t)
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: sp.ca.Pool(), Certificates: []tls.Certificate{cert}}}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport}
	for i, wantReused := range []bool{false, true} {
		reused := false
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }}
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
			http.MethodPost, "https://"+sp.addr+"/poll", strings.NewReader("host-a.example.com"))
		if err != nil {
			t.Fatal(err)
		}
		// One second: the shortest wait that detaches.
		req.Header.Set("Prefer", "wait=1")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("poll %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("poll %d answered %s %q, want 204", i, resp.Status, body)
		}
		if reused != wantReused {
			t.Fatalf("poll %d: connection reused %v, want %v", i, reused, wantReused)
		}
	}
	waitFor(t, "both polls counted as 204s", func() bool {
		return testutil.ToFloat64(sp.metrics.httpRequests.WithLabelValues("204", "/poll")) == 2
	})
}

func TestAConnectionQueuedAsTheQueueClosesIsClosedNotLost(t *testing.T) {
	for i := range 10000 {
		q := newConnQueue()
		ours, theirs := net.Pipe()
		closed := make(chan struct{})
		go func() {
			defer close(closed)
			q.Close()
		}()
		if !q.put(ours) {
			ours.Close()
		}
		<-closed
		_ = theirs.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := theirs.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("round %d: connection put as the queue closed is still open: %v", i, err)
		}
	}
}

// detachedCount is the number of polls parked outside net/http.
func (p *proxy) detachedCount() int {
	p.detached.mu.Lock()
	defer p.detached.mu.Unlock()
	return len(p.detached.conns)
}
