package main

import (
	"bufio"
	"cmp"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/rancher/pushprox/util"
)

// streamPeer is a tunnel client played by the test: it answers every
// scrape on a stream with answer, and counts the streams the proxy opens.
type streamPeer struct {
	reuse   bool // the proxy accepted util.TunnelProtocolReuse
	session *yamux.Session
	opened  atomic.Int64
	wg      sync.WaitGroup
}

// yamuxPeerConfig is the yamux configuration of a test's tunnel peer.
func yamuxPeerConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.MaxStreamWindowSize = util.TunnelStreamWindow
	cfg.LogOutput = io.Discard
	return cfg
}

// dialStreamPeer opens a tunnel for fqdn offering the given protocols and
// serves it until the test ends. answer writes the answer to one scrape
// request on stream; returning false closes the stream after it.
func dialStreamPeer(t *testing.T, tp *testProxy, fqdn, protocols string, answer func(w io.Writer, req *http.Request) bool) *streamPeer {
	t.Helper()
	conn, err := net.Dial("tcp", tp.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	req, accept, err := util.NewTunnelRequest(tp.srv.URL+"/"+util.TunnelPath, fqdn, "", 4)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Sec-WebSocket-Protocol", protocols)
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatal(err)
	}
	accepted, reuse := util.TunnelAccepted(resp, accept)
	if !accepted {
		t.Fatalf("tunnel refused: %s", resp.Status)
	}
	// The peer is hashicorp/yamux, as in clients built before the proxy
	// had a multiplexer of its own: the proxy must keep speaking to it.
	session, err := yamux.Server(util.BufferedConn{SpliceConn: conn.(*net.TCPConn), Reader: br}, yamuxPeerConfig())
	if err != nil {
		t.Fatal(err)
	}
	p := &streamPeer{reuse: reuse, session: session}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			stream, err := session.AcceptStream()
			if err != nil {
				return
			}
			p.opened.Add(1)
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				defer stream.Close()
				reader := bufio.NewReader(stream)
				for {
					req, err := util.DecodeScrapeRequest(reader)
					if err != nil || !answer(stream, req) {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		session.Close()
		p.wg.Wait()
	})
	tp.waitTunnels(t, 1)
	return p
}

// writeTestAnswer writes the answer to req with body, with its length or,
// when chunked, in chunks.
func writeTestAnswer(w io.Writer, req *http.Request, body string, chunked bool) {
	length := int64(len(body))
	if chunked {
		length = -1
	}
	resp := &http.Response{
		StatusCode:    http.StatusOK,
		Header:        http.Header{"Content-Type": {"text/plain"}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: length,
	}
	out := bufio.NewWriter(w)
	util.WriteAnswer(out, resp, req.Header.Get(util.HeaderID), true)
	out.Flush()
}

func TestTunnelStreamsAreReusedAsTheNegotiatedVersionAndMemoryAllow(t *testing.T) {
	both := util.TunnelProtocolReuse + ", " + util.TunnelProtocol
	for _, tc := range []struct {
		name      string
		protocols string
		// answer answers the n-th scrape (from 0); false closes its stream.
		answer      func(n int64, w io.Writer, req *http.Request) bool
		wantReuse   bool
		wantStreams int64
		// idleStreamMemory, when set, is the proxy's budget for idle streams.
		idleStreamMemory int64
	}{
		{
			name:      "a client reusing streams gets scrape after scrape on one stream, with lengths and in chunks",
			protocols: both,
			answer: func(n int64, w io.Writer, req *http.Request) bool {
				writeTestAnswer(w, req, "up 1\n", n%2 == 1)
				return true
			},
			wantReuse:   true,
			wantStreams: 1,
		},
		{
			name:      "an idle stream the client closed is replaced and the scrape is served",
			protocols: both,
			answer: func(n int64, w io.Writer, req *http.Request) bool {
				writeTestAnswer(w, req, "up 1\n", false)
				return n != 1
			},
			wantReuse:   true,
			wantStreams: 2,
		},
		{
			name:      "an answer without a length or chunks ends its stream",
			protocols: both,
			answer: func(n int64, w io.Writer, req *http.Request) bool {
				header := util.AnswerHeader(http.Header{}, req.Header.Get(util.HeaderID), 0, false, -1)
				io.WriteString(w, string(util.EncodeAnswerHead(http.StatusOK, "", header))+"up 1\n")
				return false
			},
			wantReuse:   true,
			wantStreams: 4,
		},
		{
			name:      "with no memory left for idle streams, each scrape gets a stream of its own",
			protocols: both,
			answer: func(n int64, w io.Writer, req *http.Request) bool {
				writeTestAnswer(w, req, "up 1\n", false)
				return true
			},
			wantReuse:        true,
			wantStreams:      4,
			idleStreamMemory: idleStreamOverhead - 1,
		},
		{
			name:      "a client of the first version gets a stream per scrape",
			protocols: util.TunnelProtocol,
			answer: func(n int64, w io.Writer, req *http.Request) bool {
				writeTestAnswer(w, req, "up 1\n", false)
				return false
			},
			wantReuse:   false,
			wantStreams: 4,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaultConfig()
			cfg.idleStreamMemory = tc.idleStreamMemory
			tp := startProxy(t, cfg)
			var scrapes atomic.Int64
			peer := dialStreamPeer(t, tp, "peer", tc.protocols, func(w io.Writer, req *http.Request) bool {
				return tc.answer(scrapes.Add(1)-1, w, req)
			})
			if peer.reuse != tc.wantReuse {
				t.Errorf("proxy chose reuse = %v, want %v", peer.reuse, tc.wantReuse)
			}
			for i := range 4 {
				r := scrapeThrough(context.Background(), tp.srv.URL, "http://peer:9100/metrics", "10")
				if r.err != nil || r.status != http.StatusOK || r.body != "up 1\n" {
					t.Fatalf("scrape %d: %d %q %v", i, r.status, r.body, r.err)
				}
				if r.header.Get(util.HeaderID) != "" || strings.Contains(r.header.Get("Transfer-Encoding"), "chunked") && r.header.Get("Content-Length") != "" {
					t.Errorf("scrape %d: headers %v", i, r.header)
				}
			}
			if got := peer.opened.Load(); got != tc.wantStreams {
				t.Errorf("the proxy opened %d streams for 4 scrapes, want %d", got, tc.wantStreams)
			}
			// The memory of idle streams is given back when the tunnel ends.
			budget := cmp.Or(tc.idleStreamMemory, defaultIdleStreamMemory)
			peer.session.Close()
			tp.waitTunnels(t, 0)
			waitFor(t, "the idle streams' memory to be given back", func() bool {
				tp.proxy.idleStreams.mu.Lock()
				defer tp.proxy.idleStreams.mu.Unlock()
				return tp.proxy.idleStreams.left == budget
			})
		})
	}
}

func TestTunnelClientAnswersScrapeAfterScrapeOfATargetWithoutALength(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	body := strings.Repeat("node_cpu_seconds_total{cpu=\"0\"} 1\n", 4000)
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Flushed in pieces, so that net/http sends no length.
		for piece := range strings.SplitAfterSeq(body, "\n") {
			io.WriteString(w, piece)
			if len(piece) > 0 && r.Context().Err() == nil {
				w.(http.Flusher).Flush()
			}
		}
	}))
	defer target.Close()
	tp.startTunnelClient(t, "127.0.0.1", tp.srv.URL, 1, "--proxy.transport=tunnel")
	for i := range 3 {
		r := scrapeThrough(context.Background(), tp.srv.URL, target.URL+"/metrics", "10")
		if r.err != nil || r.status != http.StatusOK || r.body != body {
			t.Fatalf("scrape %d: %d, %d bytes of %d, %v", i, r.status, len(r.body), len(body), r.err)
		}
	}
}

// A target whose body breaks before the client's first flush (128 KiB)
// makes the client close its stream with nothing written. The proxy takes
// that for a stream the client closed while idle and carries the scrape
// again, on every idle stream and then on a new one: the target is scraped
// again and again for one Prometheus scrape, and Prometheus never gets the
// client's reason.
func TestAScrapeWhoseAnswerBreaksBeforeItsFirstByteIsMadeOnceAndAnsweredWithTheReason(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	var broken atomic.Bool
	var hits atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !broken.Load() {
			io.WriteString(w, "up 1\n")
			return
		}
		hits.Add(1)
		// A length the body does not reach: the client's copy fails.
		conn, buf, _ := http.NewResponseController(w).Hijack()
		buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nup 1\n")
		buf.Flush()
		conn.Close()
	}))
	defer target.Close()
	tp.startTunnelClient(t, "127.0.0.1", tp.srv.URL, 1, "--proxy.transport=tunnel")
	// Scrapes at once leave idle streams on the tunnel.
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			scrapeThrough(context.Background(), tp.srv.URL, target.URL+"/metrics", "10")
		}()
	}
	wg.Wait()
	broken.Store(true)
	r := scrapeThrough(context.Background(), tp.srv.URL, target.URL+"/metrics", "3")
	if r.err != nil || r.status != http.StatusInternalServerError || !strings.Contains(r.body, "unexpected EOF") {
		t.Errorf("scrape of a broken target: %d %q %v, want 500 with the reason", r.status, r.body, r.err)
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("one scrape through the proxy hit the target %d times, want 1", n)
	}
	// The stream that carried the reason carries the next scrape.
	broken.Store(false)
	if r := scrapeThrough(context.Background(), tp.srv.URL, target.URL+"/metrics", "3"); r.status != http.StatusOK || r.body != "up 1\n" {
		t.Errorf("the next scrape: %d %q %v", r.status, r.body, r.err)
	}
}

func TestAStreamIdleLongerThanItsTimeoutIsClosedAndItsMemoryGivenBack(t *testing.T) {
	cfg := defaultConfig()
	cfg.idleStreamTimeout = 50 * time.Millisecond
	tp := startProxy(t, cfg)
	peer := dialStreamPeer(t, tp, "peer", util.TunnelProtocolReuse, func(w io.Writer, req *http.Request) bool {
		writeTestAnswer(w, req, "up 1\n", false)
		return true
	})
	for i := range 2 {
		if r := scrapeThrough(context.Background(), tp.srv.URL, "http://peer:9100/metrics", "10"); r.status != http.StatusOK {
			t.Fatalf("scrape %d: %d %q %v", i, r.status, r.body, r.err)
		}
		waitFor(t, "the idle stream to expire", func() bool {
			tp.proxy.idleStreams.mu.Lock()
			defer tp.proxy.idleStreams.mu.Unlock()
			return tp.proxy.idleStreams.left == defaultIdleStreamMemory
		})
	}
	if n := peer.opened.Load(); n != 2 {
		t.Errorf("the proxy opened %d streams for two scrapes an expiry apart, want 2", n)
	}
}
