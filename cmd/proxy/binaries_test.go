package main

// Tests of the real binaries stopping, restarting and leaving nothing
// behind.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rancher/pushprox/internal/testbin"
	"github.com/rancher/pushprox/util"
)

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
