package main

// Tests of SPEC §4, "failure behaviour users must be able to count on": each
// one sets up a fault a naive proxy mishandles (a cut or dead poll, a
// duplicate or restarted client, a late push, hostile input, a stop) and
// checks over real HTTP on loopback that no scrape is lost or held. Faults
// of the network and of clients are here; hostile input is in
// hostile_test.go, the real binaries' stop and restart in binaries_test.go,
// and the helpers they share in faultkit_test.go.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rancher/pushprox/internal/testbin"
	"github.com/rancher/pushprox/util"
)

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
