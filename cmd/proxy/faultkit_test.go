package main

// Helpers of the fault tests: a scraper, raw polls and pushes, blocking
// targets and a load balancer that cuts idle connections.

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
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

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
