package main

// Tests of hostile and broken input: late, garbage, oversized and
// stalled pushes, hostile names, slowloris and idle sockets, and timeouts
// that must tell their cause apart.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rancher/pushprox/util"
)

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
