package main

// Tests of SPEC §4, "failure behaviour users must be able to count on": each
// one sets up a fault a naive proxy mishandles (a cut or dead poll, a
// duplicate or restarted client, a late push, hostile input, a stop) and
// checks over real HTTP on loopback that no scrape is lost or held.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/rancher/pushprox/internal/testbin"
	"github.com/rancher/pushprox/util"
)

// scrapeResult is what "Prometheus" got for one proxied scrape.
type scrapeResult struct {
	status  int
	header  http.Header
	body    string
	err     error // the request failed, or the body broke off
	elapsed time.Duration
}

// scrapeThrough sends a proxied GET for target through the proxy at
// proxyURL, on a transport of its own that it closes, so that no connection
// or goroutine outlives the call. timeout is the
// X-Prometheus-Scrape-Timeout-Seconds value; "" sends none.
func scrapeThrough(ctx context.Context, proxyURL, target, timeout string) scrapeResult {
	u, err := url.Parse(proxyURL)
	if err != nil {
		return scrapeResult{err: err}
	}
	transport := &http.Transport{Proxy: http.ProxyURL(u), DisableCompression: true}
	defer transport.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return scrapeResult{err: err}
	}
	if timeout != "" {
		req.Header.Set(util.HeaderScrapeTimeoutSeconds, timeout)
	}
	start := time.Now()
	resp, err := (&http.Client{Transport: transport}).Do(req)
	if err != nil {
		return scrapeResult{err: err, elapsed: time.Since(start)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return scrapeResult{status: resp.StatusCode, header: resp.Header, body: string(body), err: err, elapsed: time.Since(start)}
}

// goScrape runs scrapeThrough in the background; the result arrives on the
// returned channel.
func goScrape(ctx context.Context, proxyURL, target, timeout string) <-chan scrapeResult {
	done := make(chan scrapeResult, 1)
	go func() { done <- scrapeThrough(ctx, proxyURL, target, timeout) }()
	return done
}

// await receives from ch, failing the test after a generous bound.
func await[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// rawPoll sends a poll for fqdn on a TCP connection of its own and returns
// the connection, so that the test can drop it or read the answer itself.
func rawPoll(t *testing.T, addr, fqdn string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := fmt.Fprintf(conn, "POST /poll HTTP/1.1\r\nHost: proxy\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", len(fqdn), fqdn); err != nil {
		t.Fatal(err)
	}
	return conn
}

// readPollAnswer reads the answer to a raw poll.
func readPollAnswer(t *testing.T, conn net.Conn) (*http.Response, []byte) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading poll answer: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading poll answer: %v", err)
	}
	return resp, body
}

// readScrape reads the scrape request a raw poll was answered with.
func readScrape(t *testing.T, conn net.Conn) *http.Request {
	t.Helper()
	resp, body := readPollAnswer(t, conn)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("poll answered %s: %s", resp.Status, body)
	}
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(body)))
	if err != nil {
		t.Fatalf("poll answer is not a request: %v", err)
	}
	return req
}

// serializedAnswer is a client's push body answering scrape id.
func serializedAnswer(id string, code int, body string) io.Reader {
	resp := textResponse(code, body)
	resp.Header.Set(util.HeaderID, id)
	var buf bytes.Buffer
	if err := resp.Write(&buf); err != nil {
		panic(err)
	}
	return &buf
}

// pushTo posts body to /push of the proxy at base on a transport it closes,
// and returns the status and answer text.
func pushTo(base string, body io.Reader) (int, string, error) {
	transport := &http.Transport{}
	defer transport.CloseIdleConnections()
	resp, err := (&http.Client{Transport: transport}).Post(base+"/push", "application/http", body)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	text, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(text), err
}

// outcomes reads pushprox_proxy_scrapes_total{outcome}.
func (tp *testProxy) outcomes(outcome string) float64 {
	return testutil.ToFloat64(tp.metrics.scrapes.WithLabelValues(outcome))
}

// waitOutcome waits until pushprox_proxy_scrapes_total{outcome} is n: the
// proxy counts a scrape once its answer is out, just after Prometheus has it.
func (tp *testProxy) waitOutcome(t *testing.T, outcome string, n float64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%v %s outcomes (have %v)", n, outcome, tp.outcomes(outcome)), func() bool { return tp.outcomes(outcome) == n })
}

// queuedCount returns the number of scrapes waiting for a poll.
func (tp *testProxy) queuedCount() int {
	return tp.hub.Stats().Queued
}

// inflightCount returns the number of scrapes handed to a client and not
// yet pushed.
func (tp *testProxy) inflightCount() int {
	return tp.hub.Stats().Inflight
}

// clientArgs are the flags of a real client polling proxyURL as fqdn, with
// fast retries and debug logs. It polls unless extra names a transport:
// most tests here are about polls.
func clientArgs(fqdn, proxyURL string, extra ...string) []string {
	args := []string{
		"--fqdn=" + fqdn,
		"--proxy-url=" + proxyURL,
		"--metrics-addr=127.0.0.1:0",
		"--proxy.retry.initial-wait=50ms",
		"--proxy.retry.max-wait=200ms",
		"--log.level=debug",
	}
	if !slices.ContainsFunc(extra, func(arg string) bool { return strings.HasPrefix(arg, "--proxy.transport=") }) {
		args = append(args, "--proxy.transport=poll")
	}
	return append(args, extra...)
}

var clientPolling = regexp.MustCompile(`msg=polling`)

// blockingTarget is an exporter whose answers wait until released. Each
// request is announced on arrived.
type blockingTarget struct {
	*httptest.Server
	arrived chan struct{}
	release chan struct{}
	once    sync.Once
}

func startBlockingTarget(t *testing.T, body string) *blockingTarget {
	target := &blockingTarget{arrived: make(chan struct{}, 100), release: make(chan struct{})}
	target.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		target.arrived <- struct{}{}
		select {
		case <-target.release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, body)
	}))
	t.Cleanup(func() {
		target.unblock()
		target.Close()
	})
	return target
}

func (b *blockingTarget) unblock() { b.once.Do(func() { close(b.release) }) }

// idleCutter is a TCP relay that plays a load balancer cutting idle
// requests: a connection with no bytes either way for idle is closed on
// both sides. Like a real load balancer, it takes a last look for bytes in
// flight before it cuts, so that it does not drop what it has received.
// It counts the cuts, and tells those of a request awaiting its answer (a
// parked poll) on pollCut.
type idleCutter struct {
	ln       net.Listener
	upstream string
	idle     time.Duration
	pollCut  chan struct{} // one value per poll cut, dropped when full
	cuts     atomic.Int64  // all cuts, idle keep-alive connections included
	pollCuts atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]struct{} // guarded by mu
	wg    sync.WaitGroup
}

func startIdleCutter(t *testing.T, upstream string, idle time.Duration) *idleCutter {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &idleCutter{ln: ln, upstream: upstream, idle: idle, pollCut: make(chan struct{}, 1000), conns: map[net.Conn]struct{}{}}
	c.wg.Add(1)
	go c.accept()
	t.Cleanup(func() {
		ln.Close()
		c.mu.Lock()
		for conn := range c.conns {
			conn.Close()
		}
		c.mu.Unlock()
		c.wg.Wait()
	})
	return c
}

func (c *idleCutter) url() string { return "http://" + c.ln.Addr().String() }

func (c *idleCutter) track(conn net.Conn, add bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if add {
		c.conns[conn] = struct{}{}
	} else {
		delete(c.conns, conn)
	}
}

func (c *idleCutter) accept() {
	defer c.wg.Done()
	for {
		down, err := c.ln.Accept()
		if err != nil {
			return
		}
		c.wg.Add(1)
		go c.relay(down)
	}
}

func (c *idleCutter) relay(down net.Conn) {
	defer c.wg.Done()
	up, err := net.Dial("tcp", c.upstream)
	if err != nil {
		down.Close()
		return
	}
	c.track(down, true)
	c.track(up, true)
	defer c.track(down, false)
	defer c.track(up, false)
	var last atomic.Int64   // UnixNano of the last byte relayed either way
	var pending atomic.Bool // the last bytes went to the proxy: a request awaits its answer
	touch := func() { last.Store(time.Now().UnixNano()) }
	idleFor := func() time.Duration { return time.Since(time.Unix(0, last.Load())) }
	touch()
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			down.Close()
			up.Close()
		})
	}

	// Towards the proxy: a plain copy.
	towardsProxy := make(chan struct{})
	go func() {
		defer close(towardsProxy)
		defer closeBoth()
		buf := make([]byte, 32<<10)
		for {
			n, err := down.Read(buf)
			if n > 0 {
				touch()
				pending.Store(true)
				if _, err := up.Write(buf[:n]); err != nil {
					return
				}
				touch()
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() { <-towardsProxy }()
	defer closeBoth()

	// Towards the client: this side reads with the idle deadline and
	// decides the cut.
	buf := make([]byte, 32<<10)
	lastLook := false
	for {
		if lastLook {
			_ = up.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
		} else {
			_ = up.SetReadDeadline(time.Unix(0, last.Load()).Add(c.idle))
		}
		n, err := up.Read(buf)
		if n > 0 {
			lastLook = false
			touch()
			pending.Store(false)
			if _, err := down.Write(buf[:n]); err != nil {
				return
			}
			touch()
			continue
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return
		}
		switch {
		case idleFor() < c.idle:
			lastLook = false // busy the other way
		case !lastLook:
			lastLook = true
		default:
			closeBoth()
			c.cuts.Add(1)
			if pending.Load() {
				c.pollCuts.Add(1)
				select {
				case c.pollCut <- struct{}{}:
				default:
				}
			}
			return
		}
	}
}

// nextPollCut waits for a poll to be cut after the call, and reports
// whether one was.
func (c *idleCutter) nextPollCut() bool {
	for len(c.pollCut) > 0 {
		<-c.pollCut
	}
	select {
	case <-c.pollCut:
		return true
	case <-time.After(30 * time.Second):
		return false
	}
}

// pollsEnded returns how many /poll requests the proxy has finished.
func (tp *testProxy) pollsEnded(t *testing.T) float64 {
	t.Helper()
	families, err := tp.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != "pushprox_http_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "path" && l.GetValue() == "/poll" {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// Load balancers cut requests idle for longer than their timeout; a parked
// poll is such a request. Scrapes issued just as polls are cut, and while
// the client reconnects, must all still be delivered.
func TestScrapesSurviveLoadBalancerCuttingIdlePolls(t *testing.T) {
	for _, pollWait := range []string{"0", "1s"} {
		t.Run("poll-wait="+pollWait, func(t *testing.T) {
			tp := startProxy(t, defaultConfig())
			target := startTarget(t, "up 1\n")
			lb := startIdleCutter(t, tp.srv.Listener.Addr().String(), 300*time.Millisecond)
			client := testbin.Start(t, clientBinary, clientArgs("127.0.0.1", lb.url(), "--proxy.poll-wait="+pollWait)...)
			client.WaitForOutput(clientPolling)

			const scrapes = 8
			for i := range scrapes {
				if i%2 == 0 {
					// After a cut, once the proxy has seen the cut poll
					// end, while the client backs off before polling again.
					ended := tp.pollsEnded(t)
					if !lb.nextPollCut() {
						t.Fatalf("no poll cut within 30s after %d cuts (%d of polls), %v parked:\n%s", lb.cuts.Load(), lb.pollCuts.Load(), tp.hub.Stats().Parked, client.Output())
					}
					waitFor(t, "the proxy to end the cut poll", func() bool { return tp.pollsEnded(t) > ended })
				} else {
					// While a poll is parked, soon to be cut.
					tp.waitParked(t, 1)
				}
				r := scrapeThrough(context.Background(), tp.srv.URL, target.URL+"/metrics", "10")
				if r.err != nil || r.status != http.StatusOK || r.body != target.body {
					t.Fatalf("scrape %d after %d poll cuts: %d %q %v\n%s", i, lb.pollCuts.Load(), r.status, r.body, r.err, client.Output())
				}
			}
			if n := lb.pollCuts.Load(); n < scrapes/2 {
				t.Errorf("only %d polls were cut", n)
			}
			if !strings.Contains(client.Output(), `msg="poll failed, retrying"`) {
				t.Errorf("the client never saw its poll cut:\n%s", client.Output())
			}
			tp.waitOutcome(t, outcomeDelivered, scrapes)
		})
	}
}

// A poll whose connection is gone must leave the parked set at once, and a
// scrape must go to a live poll instead, or wait for the next one.
func TestDroppedPollIsUnparkedAndNeverHandedAScrape(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	addr := tp.srv.Listener.Addr().String()

	// The dead poll is the oldest, first in line for a scrape.
	dead := rawPoll(t, addr, "node1")
	tp.waitParked(t, 1)
	live := rawPoll(t, addr, "node1")
	tp.waitParked(t, 2)
	dead.Close()
	tp.waitParked(t, 1)

	result := goScrape(context.Background(), tp.srv.URL, "http://node1:9100/metrics", "10")
	req := readScrape(t, live)
	if code, text, err := pushTo(tp.srv.URL, serializedAnswer(req.Header.Get(util.HeaderID), http.StatusOK, "live\n")); err != nil || code != http.StatusOK {
		t.Fatalf("push: %d %q %v", code, text, err)
	}
	if r := await(t, "the scrape", result); r.status != http.StatusOK || r.body != "live\n" {
		t.Fatalf("scrape: %d %q %v", r.status, r.body, r.err)
	}

	// With no live poll left, the scrape waits for the next one.
	dead = rawPoll(t, addr, "node1")
	tp.waitParked(t, 1)
	dead.Close()
	tp.waitParked(t, 0)
	result = goScrape(context.Background(), tp.srv.URL, "http://node1:9100/metrics", "10")
	waitFor(t, "the scrape to queue", func() bool { return tp.queuedCount() == 1 })
	client := &fakeClient{tp: tp, fqdn: "node1", answer: func(*http.Request) *http.Response {
		return textResponse(http.StatusOK, "next\n")
	}}
	client.serve(t, 1)
	if r := await(t, "the scrape", result); r.status != http.StatusOK || r.body != "next\n" {
		t.Fatalf("queued scrape: %d %q %v", r.status, r.body, r.err)
	}
	tp.waitOutcome(t, outcomeDelivered, 2)
}

// A silently dead peer (crashed host, dropped NAT entry) sends no FIN; only
// TCP keepalive notices it. The spec wants that in well under a minute.
func TestKeepAliveNoticesDeadPeersWellUnderAMinute(t *testing.T) {
	ka := util.KeepAlive
	if !ka.Enable {
		t.Fatal("keepalive disabled")
	}
	if ka.Idle <= 0 || ka.Idle > 30*time.Second {
		t.Errorf("keepalive idle %s, want at most 30s", ka.Idle)
	}
	if ka.Interval <= 0 || ka.Count <= 0 {
		t.Fatalf("keepalive probes %d every %s: kernel defaults take minutes", ka.Count, ka.Interval)
	}
	if detect := ka.Idle + time.Duration(ka.Count)*ka.Interval; detect > 50*time.Second {
		t.Errorf("a dead peer is noticed after %s, want well under a minute", detect)
	}
}

// tcpSocket is one line of /proc/net/tcp.
type tcpSocket struct {
	localPort, remotePort int
	state                 string
	timer                 string        // 00 none, 01 retransmit, 02 keepalive, ...
	when                  time.Duration // until the timer fires
}

func readProcNetTCP(t *testing.T) []tcpSocket {
	t.Helper()
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skipf("cannot inspect sockets: %v", err)
	}
	var sockets []tcpSocket
	for _, line := range strings.Split(string(data), "\n")[1:] {
		fields := strings.Fields(line)
		if len(fields) < 6 {
			continue
		}
		port := func(addr string) int {
			_, hex, _ := strings.Cut(addr, ":")
			n, _ := strconv.ParseInt(hex, 16, 32)
			return int(n)
		}
		timer, whenHex, _ := strings.Cut(fields[5], ":")
		ticks, _ := strconv.ParseInt(whenHex, 16, 64)
		sockets = append(sockets, tcpSocket{
			localPort:  port(fields[1]),
			remotePort: port(fields[2]),
			state:      fields[3],
			timer:      timer,
			when:       time.Duration(ticks) * 10 * time.Millisecond, // USER_HZ is 100
		})
	}
	return sockets
}

// Both ends of a client's poll connection must run TCP keepalive with a
// short idle time: the proxy's listener (listen) and the real client's
// dialer. The kernel shows each socket's pending keepalive timer; a fresh
// connection's fires in just under the idle time, which tells util.KeepAlive
// (30s) from Go's default (15s) and the kernel's (2h).
func TestPollConnectionsRunKeepAliveOnBothEnds(t *testing.T) {
	readProcNetTCP(t) // skips where the kernel does not tell
	ln, err := listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	proxyPort := ln.Addr().(*net.TCPAddr).Port
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	reg := prometheus.NewRegistry()
	go func() { served <- serve(ctx, defaultConfig(), log.NewNopLogger(), reg, reg, ln) }()
	defer func() {
		stop()
		<-served
	}()
	client := testbin.Start(t, clientBinary, clientArgs("node1", "http://"+ln.Addr().String(), "--proxy.poll-wait=0")...)
	client.WaitForOutput(clientPolling)
	defer client.Kill()

	waitFor(t, "keepalive timers on both ends of the poll connection", func() bool {
		var proxySide, clientSide []tcpSocket
		for _, s := range readProcNetTCP(t) {
			if s.state != "01" { // established
				continue
			}
			if s.localPort == proxyPort {
				proxySide = append(proxySide, s)
			} else if s.remotePort == proxyPort {
				clientSide = append(clientSide, s)
			}
		}
		if len(proxySide) != 1 || len(clientSide) != 1 {
			return false // the poll is not connected yet
		}
		for _, s := range []tcpSocket{proxySide[0], clientSide[0]} {
			if s.timer != "02" || s.when <= util.KeepAlive.Idle*2/3 || s.when > util.KeepAlive.Idle {
				t.Logf("socket %d->%d: timer %s in %s", s.localPort, s.remotePort, s.timer, s.when)
				return false
			}
		}
		return true
	})
}

// Two clients registered as the same FQDN (a restart overlapping the old
// process, a replica) must both be served, neither evicting the other.
func TestDuplicateClientsAreBothServed(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	target := startTarget(t, "up 1\n")
	first := tp.startClient(t, "127.0.0.1")
	second := tp.startClient(t, "127.0.0.1")
	tp.waitParked(t, 2)

	const scrapes = 10
	for i := range scrapes {
		r := scrapeThrough(context.Background(), tp.srv.URL, target.URL+"/metrics", "10")
		if r.err != nil || r.status != http.StatusOK || r.body != target.body {
			t.Fatalf("scrape %d: %d %q %v", i, r.status, r.body, r.err)
		}
		// The client that served it polls again; the other's poll stays.
		tp.waitParked(t, 2)
	}
	served := func(p *testbin.Process) int { return strings.Count(p.Output(), "msg=scraped") }
	waitFor(t, "both clients to log their scrapes", func() bool { return served(first)+served(second) == scrapes })
	if served(first) == 0 || served(second) == 0 {
		t.Errorf("scrapes served: first %d, second %d; want both to serve", served(first), served(second))
	}
	for _, p := range []*testbin.Process{first, second} {
		if strings.Contains(p.Output(), "poll failed") {
			t.Errorf("a poll was evicted:\n%s", p.Output())
		}
	}
	if n := tp.hub.Stats().Clients; n != 1 {
		t.Errorf("%d clients known, want the one FQDN", n)
	}
}

// A client killed while its poll is parked leaves a poll behind; the
// scrapes that follow must go to its replacement, not into the dead poll.
func TestRestartedClientGetsScrapesNotItsPredecessorsPoll(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	target := startTarget(t, "up 1\n")
	old := tp.startClient(t, "127.0.0.1")
	old.Kill()
	// The replacement starts at once, before the proxy may have noticed.
	replacement := testbin.Start(t, clientBinary, clientArgs("127.0.0.1", tp.srv.URL)...)
	replacement.WaitForOutput(clientPolling)
	for i := range 5 {
		r := scrapeThrough(context.Background(), tp.srv.URL, target.URL+"/metrics", "10")
		if r.err != nil || r.status != http.StatusOK || r.body != target.body {
			t.Fatalf("scrape %d: %d %q %v", i, r.status, r.body, r.err)
		}
	}
	tp.waitParked(t, 1)
	tp.waitOutcome(t, outcomeDelivered, 5)
}

// A push whose scrape has ended (timed out, or Prometheus went away) must be
// answered at once with 410 and the reason, never held open.
func TestLatePushIsAnsweredAtOnceWithGone(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	addr := tp.srv.Listener.Addr().String()
	checkGone := func(t *testing.T, id string) {
		t.Helper()
		start := time.Now()
		code, text, err := pushTo(tp.srv.URL, serializedAnswer(id, http.StatusOK, "too late\n"))
		if err != nil {
			t.Fatal(err)
		}
		if code != http.StatusGone || !strings.Contains(text, "scrape already ended") {
			t.Errorf("late push answered %d %q, want 410 with the reason", code, text)
		}
		if elapsed := time.Since(start); elapsed > 5*time.Second {
			t.Errorf("late push held for %s", elapsed)
		}
	}

	t.Run("scrape timed out", func(t *testing.T) {
		poll := rawPoll(t, addr, "node1")
		tp.waitParked(t, 1)
		r := scrapeThrough(context.Background(), tp.srv.URL, "http://node1:9100/metrics", "0.5")
		if r.status != http.StatusGatewayTimeout {
			t.Fatalf("scrape: %d %q, want 504", r.status, r.body)
		}
		checkGone(t, readScrape(t, poll).Header.Get(util.HeaderID))
	})

	t.Run("Prometheus went away while waiting", func(t *testing.T) {
		poll := rawPoll(t, addr, "node1")
		tp.waitParked(t, 1)
		aborted := tp.outcomes(outcomeAborted)
		ctx, cancel := context.WithCancel(context.Background())
		result := goScrape(ctx, tp.srv.URL, "http://node1:9100/metrics", "30")
		req := readScrape(t, poll)
		cancel()
		if r := await(t, "the scrape", result); r.err == nil {
			t.Fatalf("cancelled scrape succeeded: %d", r.status)
		}
		tp.waitOutcome(t, outcomeAborted, aborted+1)
		checkGone(t, req.Header.Get(util.HeaderID))
	})

	t.Run("Prometheus went away during the push", func(t *testing.T) {
		poll := rawPoll(t, addr, "node1")
		tp.waitParked(t, 1)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		result := goScrape(ctx, tp.srv.URL, "http://node1:9100/metrics", "30")
		id := readScrape(t, poll).Header.Get(util.HeaderID)

		// The client streams a head and part of the body, then stalls.
		body, stream := io.Pipe()
		defer stream.Close()
		type answer struct {
			code int
			err  error
		}
		pushed := make(chan answer, 1)
		go func() {
			code, _, err := pushTo(tp.srv.URL, body)
			pushed <- answer{code, err}
		}()
		fmt.Fprintf(stream, "HTTP/1.1 200 OK\r\nId: %s\r\nContent-Length: 1000\r\n\r\npartial", id)
		waitFor(t, "the push to be taken", func() bool { return tp.inflightCount() == 0 })
		cancel()
		start := time.Now()
		if r := await(t, "the scrape", result); r.err == nil {
			t.Errorf("Prometheus got a complete answer %d %q", r.status, r.body)
		}
		a := await(t, "the push to be answered", pushed)
		if a.err != nil {
			t.Fatalf("push: %v", a.err)
		}
		if a.code == http.StatusOK {
			t.Errorf("push answered 200 though Prometheus never got the body")
		}
		// The scrape's deadline is 30s away; the push must not be held
		// until then.
		if elapsed := time.Since(start); elapsed > 10*time.Second {
			t.Errorf("push held for %s after Prometheus went away", elapsed)
		}
	})
}

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

// Push bodies that are not HTTP responses get 400 with a reason, and the
// proxy goes on serving.
func TestGarbagePushesAreRefused(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	unknown := "0b2c7a44-0000-4000-8000-000000000000"
	for _, tc := range []struct {
		name string
		body string
		code int
	}{
		{name: "binary", body: "\x00\x01\x02\xff\xfe", code: http.StatusBadRequest},
		{name: "a request", body: "GET http://node1/metrics HTTP/1.1\r\nHost: node1\r\n\r\n", code: http.StatusBadRequest},
		{name: "bad status code", body: "HTTP/1.1 2x0 OK\r\nId: " + unknown + "\r\n\r\n", code: http.StatusBadRequest},
		{name: "unknown protocol", body: "SPDY/9 200 OK\r\nId: " + unknown + "\r\n\r\n", code: http.StatusBadRequest},
		{name: "head cut short", body: "HTTP/1.1 200 OK\r\nId: " + unknown, code: http.StatusBadRequest},
		{name: "header without colon", body: "HTTP/1.1 200 OK\r\nId " + unknown + "\r\n\r\n", code: http.StatusBadRequest},
		{name: "negative length", body: "HTTP/1.1 200 OK\r\nId: " + unknown + "\r\nContent-Length: -1\r\n\r\n", code: http.StatusBadRequest},
		{name: "two lengths", body: "HTTP/1.1 200 OK\r\nId: " + unknown + "\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", code: http.StatusBadRequest},
		{name: "empty Id", body: "HTTP/1.1 200 OK\r\nId: \r\nContent-Length: 0\r\n\r\n", code: http.StatusBadRequest},
		{name: "unknown Id", body: "HTTP/1.1 200 OK\r\nId: " + unknown + "\r\nContent-Length: 0\r\n\r\n", code: http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, text, err := pushTo(tp.srv.URL, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if code != tc.code || strings.TrimSpace(text) == "" {
				t.Errorf("got %d %q, want %d with a reason", code, text, tc.code)
			}
		})
	}
	tp.expectStillServing(t, "garbage pushes")
}

// A pushed answer over --push.max-body-size is cut off: the client gets 413,
// and Prometheus a broken transfer, never a truncated body with a 200.
func TestOversizedPushIsRefusedAndPrometheusSeesABrokenTransfer(t *testing.T) {
	cfg := defaultConfig()
	cfg.maxPushBytes = 256 << 10
	tp := startProxy(t, cfg)
	big := strings.Repeat("metric_with_a_long_name 1\n", (1<<20)/26)
	for _, tc := range []struct {
		name    string
		chunked bool
	}{
		{name: "chunked", chunked: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			poll := rawPoll(t, tp.srv.Listener.Addr().String(), "node1")
			tp.waitParked(t, 1)
			result := goScrape(context.Background(), tp.srv.URL, "http://node1:9100/metrics", "30")
			id := readScrape(t, poll).Header.Get(util.HeaderID)
			resp := textResponse(http.StatusOK, big)
			resp.Header.Set(util.HeaderID, id)
			if tc.chunked {
				resp.ContentLength = -1
				resp.TransferEncoding = []string{"chunked"}
			}
			var buf bytes.Buffer
			if err := resp.Write(&buf); err != nil {
				t.Fatal(err)
			}
			code, text, err := pushTo(tp.srv.URL, &buf)
			if err != nil {
				t.Fatalf("push: %v", err)
			}
			if code != http.StatusRequestEntityTooLarge {
				t.Errorf("push answered %d %q, want 413", code, text)
			}
			r := await(t, "the scrape", result)
			if r.err == nil {
				t.Errorf("Prometheus got a complete %d answer of %d bytes, want a broken transfer", r.status, len(r.body))
			}
			if len(r.body) >= len(big) {
				t.Errorf("Prometheus got the whole body")
			}
		})
	}
	// With a length, the push is known to be too large before a byte is
	// relayed: Prometheus gets the reason, not a truncated body.
	t.Run("with Content-Length", func(t *testing.T) {
		poll := rawPoll(t, tp.srv.Listener.Addr().String(), "node1")
		tp.waitParked(t, 1)
		result := goScrape(context.Background(), tp.srv.URL, "http://node1:9100/metrics", "30")
		id := readScrape(t, poll).Header.Get(util.HeaderID)
		header := util.AnswerHeader(http.Header{}, id, 0, false, int64(len(big)))
		push := io.MultiReader(bytes.NewReader(util.EncodeAnswerHead(http.StatusOK, "", header)), strings.NewReader(big))
		code, text, err := pushTo(tp.srv.URL, push)
		if err != nil {
			t.Fatalf("push: %v", err)
		}
		if code != http.StatusRequestEntityTooLarge {
			t.Errorf("push answered %d %q, want 413", code, text)
		}
		r := await(t, "the scrape", result)
		if r.err != nil || r.status != http.StatusBadGateway || !strings.Contains(string(r.body), "--push.max-body-size") {
			t.Errorf("Prometheus got %d %q (%v), want a 502 naming --push.max-body-size", r.status, r.body, r.err)
		}
	})
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

// A client that pushes the head at once and then stalls the body must not
// keep Prometheus past the timeout: the answer breaks off at the deadline.
func TestStalledPushBodyEndsAtTheDeadline(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	poll := rawPoll(t, tp.srv.Listener.Addr().String(), "node1")
	tp.waitParked(t, 1)
	result := goScrape(context.Background(), tp.srv.URL, "http://node1:9100/metrics", "1")
	id := readScrape(t, poll).Header.Get(util.HeaderID)
	body, stream := io.Pipe()
	defer stream.Close()
	pushed := make(chan int, 1)
	go func() {
		code, _, _ := pushTo(tp.srv.URL, body)
		pushed <- code
	}()
	fmt.Fprintf(stream, "HTTP/1.1 200 OK\r\nId: %s\r\nContent-Length: 1000\r\n\r\nup 1\n", id)
	r := await(t, "the scrape", result)
	if r.err == nil {
		t.Errorf("Prometheus got a complete answer %d %q from a stalled push", r.status, r.body)
	}
	if r.elapsed > 3*time.Second {
		t.Errorf("Prometheus held for %s with a 1s timeout", r.elapsed)
	}
	if code := await(t, "the push to be answered", pushed); code == http.StatusOK {
		t.Errorf("stalled push answered 200")
	}
	tp.waitOutcome(t, outcomeAborted, 1)
}

var (
	proxyBinaryOnce sync.Once
	proxyBinaryPath string
	proxyBinaryErr  error
)

// startProxyBinary runs the real pushprox-proxy on a free loopback port and
// returns it with its base URL. The binary is built once, next to the
// client's.
func startProxyBinary(t *testing.T, args ...string) (*testbin.Process, string) {
	t.Helper()
	proxyBinaryOnce.Do(func() {
		proxyBinaryPath, proxyBinaryErr = testbin.Build(filepath.Dir(clientBinary), "github.com/rancher/pushprox/cmd/proxy")
	})
	if proxyBinaryErr != nil {
		t.Fatal(proxyBinaryErr)
	}
	p := testbin.Start(t, proxyBinaryPath, append([]string{"--web.listen-address=127.0.0.1:0", "--log.level=debug"}, args...)...)
	addr := p.WaitForOutput(regexp.MustCompile(`msg=listening address=(\S+)`))[1]
	return p, "http://" + addr
}

// parkedPolls reads pushprox_proxy_parked_polls from the proxy at base.
func parkedPolls(base string) int {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	scanner := bufio.NewScanner(resp.Body)
	for scanner.Scan() {
		if value, ok := strings.CutPrefix(scanner.Text(), "pushprox_proxy_parked_polls "); ok {
			n, err := strconv.Atoi(value)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

func waitParkedAt(t *testing.T, base string, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d parked polls", n), func() bool { return parkedPolls(base) == n })
}

// SIGTERM stops the real binaries cleanly: a client finishes the scrape it
// has in hand before exiting 0; a proxy answers parked polls, lets the
// scrape handed to a client finish, and exits 0.
func TestGracefulStopOfRealBinaries(t *testing.T) {
	proxy, base := startProxyBinary(t, "--web.shutdown-timeout=30s")

	t.Run("client", func(t *testing.T) {
		target := startBlockingTarget(t, "up 1\n")
		client := testbin.Start(t, clientBinary, clientArgs("127.0.0.1", base)...)
		client.WaitForOutput(clientPolling)
		waitParkedAt(t, base, 1)
		result := goScrape(context.Background(), base, target.URL+"/metrics", "30")
		await(t, "the scrape to reach the target", target.arrived)
		waitParkedAt(t, base, 1) // the client polls again while scraping

		client.Signal(syscall.SIGTERM)
		waitParkedAt(t, base, 0) // it stops polling...
		if strings.Contains(client.Output(), "stopped polling") {
			t.Fatalf("client stopped before its scrape finished:\n%s", client.Output())
		}
		target.unblock() // ...and finishes the scrape it has
		if r := await(t, "the scrape", result); r.err != nil || r.status != http.StatusOK || r.body != "up 1\n" {
			t.Errorf("scrape in flight at SIGTERM: %d %q %v", r.status, r.body, r.err)
		}
		if code := client.Wait(); code != 0 {
			t.Errorf("client exited %d:\n%s", code, client.Output())
		}
	})

	t.Run("proxy", func(t *testing.T) {
		target := startBlockingTarget(t, "up 2\n")
		client := testbin.Start(t, clientBinary, clientArgs("127.0.0.1", base)...)
		client.WaitForOutput(clientPolling)
		waitParkedAt(t, base, 1)
		result := goScrape(context.Background(), base, target.URL+"/metrics", "30")
		await(t, "the scrape to reach the target", target.arrived)
		other := rawPoll(t, strings.TrimPrefix(base, "http://"), "other.example")
		waitParkedAt(t, base, 2)

		start := time.Now()
		proxy.Signal(syscall.SIGTERM)
		if resp, body := readPollAnswer(t, other); resp.StatusCode != http.StatusRequestTimeout {
			t.Errorf("parked poll answered %s %q, want 408", resp.Status, body)
		}
		target.unblock()
		if r := await(t, "the scrape", result); r.err != nil || r.status != http.StatusOK || r.body != "up 2\n" {
			t.Errorf("scrape in flight at SIGTERM: %d %q %v", r.status, r.body, r.err)
		}
		if code := proxy.Wait(); code != 0 {
			t.Errorf("proxy exited %d:\n%s", code, proxy.Output())
		}
		// Well within the 30s shutdown timeout: parked polls do not hold it.
		if elapsed := time.Since(start); elapsed > 15*time.Second {
			t.Errorf("proxy took %s to stop", elapsed)
		}
		// The client keeps retrying the gone proxy, and still stops cleanly.
		client.Signal(syscall.SIGTERM)
		if code := client.Wait(); code != 0 {
			t.Errorf("client exited %d:\n%s", code, client.Output())
		}
	})
}

// A client killed with SIGKILL in the middle of a scrape loses that scrape
// (it ends as client_timeout); its replacement is served at once, with no
// restart of the proxy.
func TestKilledClientIsReplacedWithoutRestartingProxy(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	target := startBlockingTarget(t, "up 1\n")
	victim := tp.startClient(t, "127.0.0.1")
	result := goScrape(context.Background(), tp.srv.URL, target.URL+"/metrics", "2")
	await(t, "the scrape to reach the target", target.arrived)
	victim.Kill()
	r := await(t, "the scrape", result)
	if r.status != http.StatusGatewayTimeout || !strings.Contains(r.body, "did not answer") {
		t.Errorf("scrape at a killed client: %d %q, want 504", r.status, r.body)
	}
	tp.waitOutcome(t, outcomeClientTimeout, 1)
	tp.waitParked(t, 0)

	target.unblock()
	tp.startClient(t, "127.0.0.1")
	for i := range 3 {
		if r := scrapeThrough(context.Background(), tp.srv.URL, target.URL+"/metrics", "10"); r.err != nil || r.status != http.StatusOK || r.body != "up 1\n" {
			t.Fatalf("scrape %d after the restart: %d %q %v", i, r.status, r.body, r.err)
		}
	}
}

// Every goroutine the proxy starts (per poll, scrape and push, and its
// garbage collector) ends once requests are over and the proxy is closed,
// whatever way they ended.
func TestNoGoroutineOutlivesTheProxy(t *testing.T) {
	// Goroutines of earlier tests (idle keep-alive connections) are not
	// this test's concern. Registered first, the check runs after
	// startProxy's cleanup has closed the proxy.
	earlier := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, earlier) })
	tp := startProxy(t, defaultConfig())
	addr := tp.srv.Listener.Addr().String()
	pollClient := &http.Client{Transport: &http.Transport{}}
	defer pollClient.CloseIdleConnections()

	// Delivered scrapes, by concurrent pollers.
	const delivered = 20
	var wg sync.WaitGroup
	var served atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for served.Load() < delivered {
				req, _ := http.NewRequest(http.MethodPost, tp.srv.URL+"/poll", strings.NewReader("node1"))
				req.Header.Set(util.HeaderPrefer, "wait=1")
				resp, err := pollClient.Do(req)
				if err != nil {
					t.Errorf("poll: %v", err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					continue
				}
				scrape, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(body)))
				if err != nil {
					t.Errorf("scrape request: %v", err)
					return
				}
				if code, text, err := pushTo(tp.srv.URL, serializedAnswer(scrape.Header.Get(util.HeaderID), http.StatusOK, "up 1\n")); err != nil || code != http.StatusOK {
					t.Errorf("push: %d %q %v", code, text, err)
					return
				}
				served.Add(1)
			}
		}()
	}
	var scrapes sync.WaitGroup
	for range delivered {
		scrapes.Add(1)
		go func() {
			defer scrapes.Done()
			if r := scrapeThrough(context.Background(), tp.srv.URL, "http://node1:9100/metrics", "30"); r.status != http.StatusOK {
				t.Errorf("scrape: %d %q %v", r.status, r.body, r.err)
			}
		}()
	}
	scrapes.Wait()
	wg.Wait()

	// Aborted polls, aborted and timed-out scrapes, late and garbage pushes.
	for range 5 {
		conn := rawPoll(t, addr, "node2")
		tp.waitParked(t, 1)
		conn.Close()
		tp.waitParked(t, 0)
	}
	for range 5 {
		ctx, cancel := context.WithCancel(context.Background())
		result := goScrape(ctx, tp.srv.URL, "http://node3:9100/metrics", "30")
		waitFor(t, "the scrape to queue", func() bool { return tp.queuedCount() == 1 })
		cancel()
		<-result
		waitFor(t, "the scrape to leave the queue", func() bool { return tp.queuedCount() == 0 })
	}
	poll := rawPoll(t, addr, "node4")
	tp.waitParked(t, 1)
	if r := scrapeThrough(context.Background(), tp.srv.URL, "http://node4:9100/metrics", "0.3"); r.status != http.StatusGatewayTimeout {
		t.Errorf("timed-out scrape: %d", r.status)
	}
	id := readScrape(t, poll).Header.Get(util.HeaderID)
	if code, _, _ := pushTo(tp.srv.URL, serializedAnswer(id, http.StatusOK, "late\n")); code != http.StatusGone {
		t.Errorf("late push: %d", code)
	}
	if code, _, _ := pushTo(tp.srv.URL, strings.NewReader("garbage")); code != http.StatusBadRequest {
		t.Errorf("garbage push: %d", code)
	}
	// A poll parked when the proxy stops.
	rawPoll(t, addr, "node5")
	tp.waitParked(t, 1)
}

// A pushed answer must have a final status (200-999): status 000 used to
// panic the Prometheus handler in WriteHeader, which then never told the
// push handler, so the push was held forever; a 1xx would reach Prometheus
// as an empty 200.
func TestPushWithoutFinalStatusIsRefused(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	for _, status := range []string{"000 Zero", "099 Low", "100 Continue", "103 Early Hints"} {
		t.Run(status, func(t *testing.T) {
			poll := rawPoll(t, tp.srv.Listener.Addr().String(), "node1")
			tp.waitParked(t, 1)
			result := goScrape(context.Background(), tp.srv.URL, "http://node1:9100/metrics", "30")
			id := readScrape(t, poll).Header.Get(util.HeaderID)
			pushed := make(chan string, 1)
			go func() {
				code, text, err := pushTo(tp.srv.URL, strings.NewReader("HTTP/1.1 "+status+"\r\nId: "+id+"\r\nContent-Length: 0\r\n\r\n"))
				pushed <- fmt.Sprint(code, " ", strings.TrimSpace(text), err)
			}()
			if got := await(t, "the push to be answered", pushed); !strings.HasPrefix(got, "400 ") {
				t.Errorf("push answered %s, want 400", got)
			}
			// The scrape still waits for a proper answer.
			if code, text, err := pushTo(tp.srv.URL, serializedAnswer(id, http.StatusOK, "up 1\n")); err != nil || code != http.StatusOK {
				t.Fatalf("proper push: %d %q %v", code, text, err)
			}
			if r := await(t, "the scrape", result); r.status != http.StatusOK || r.body != "up 1\n" {
				t.Errorf("scrape: %d %q %v", r.status, r.body, r.err)
			}
		})
	}
}

// A client polls and pushes over one keep-alive connection. When Prometheus
// hangs up as soon as it has its answer, the push handler may see it gone
// before the relay reports, and cut the push's read; that cut used to hit
// net/http's background read and cancel the context of every later request
// on the connection, so the client's next poll failed at once.
func TestClientConnectionSurvivesPrometheusHangingUpAfterItsAnswer(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	transport := &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport}
	const rounds = 50
	served := make(chan error, 1)
	go func() {
		served <- func() error {
			for i := range rounds {
				resp, err := client.Post(tp.srv.URL+"/poll", "text/plain", strings.NewReader("node1"))
				if err != nil {
					return err
				}
				head, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("poll %d answered %s: %s", i, resp.Status, head)
				}
				req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
				if err != nil {
					return err
				}
				resp, err = client.Post(tp.srv.URL+"/push", "application/http", serializedAnswer(req.Header.Get(util.HeaderID), http.StatusOK, "up 1\n"))
				if err != nil {
					return err
				}
				text, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("push %d answered %s: %s", i, resp.Status, text)
				}
			}
			return nil
		}()
	}()
	for i := range rounds {
		// scrapeThrough closes its connection as soon as it has the body.
		if r := scrapeThrough(context.Background(), tp.srv.URL, "http://node1:9100/metrics", "10"); r.status != http.StatusOK || r.body != "up 1\n" {
			t.Fatalf("scrape %d: %d %q %v", i, r.status, r.body, r.err)
		}
	}
	if err := await(t, "the client", served); err != nil {
		t.Fatal(err)
	}
}
