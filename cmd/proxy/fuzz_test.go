package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rancher/pushprox/util"
)

// idPlaceholder in a fuzzed push body is replaced by the Id of a scrape that
// is really waiting, so that the fuzzer reaches the streaming hand-off and
// not only the parser.
const idPlaceholder = "{ID}"

// newFuzzProxy returns a proxy whose handlers the fuzzers call directly.
func newFuzzProxy(f *testing.F) *proxy {
	cfg := defaultConfig()
	cfg.maxPushBytes = 64 << 10
	reg := prometheus.NewRegistry()
	p := newProxy(cfg, log.NewNopLogger(), reg, reg)
	f.Cleanup(func() {
		p.hub.Shutdown()
		p.close()
	})
	return p
}

// recorder records an answer and whether anything of it was written.
type recorder struct {
	*httptest.ResponseRecorder
	wrote bool
}

func (r *recorder) WriteHeader(code int) {
	r.wrote = true
	r.ResponseRecorder.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wrote = true
	return r.ResponseRecorder.Write(b)
}

// serveRecorded calls h with r and returns the recorded answer, turning the
// http.ErrAbortHandler panic by which a handler breaks off a response into
// aborted; any other panic fails the fuzzer.
func serveRecorded(h http.Handler, r *http.Request) (rec *recorder, aborted bool) {
	rec = &recorder{ResponseRecorder: httptest.NewRecorder()}
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				panic(v)
			}
			aborted = true
		}
	}()
	h.ServeHTTP(rec, r)
	return rec, false
}

// A /push body is whatever a client (or anyone) sends: the proxy must never
// panic on it, must refuse anything that does not answer a waiting scrape
// with a 4xx, and must relay only what it accepted.
func FuzzPushBody(f *testing.F) {
	for _, seed := range []string{
		"",
		"hello there",
		"\x00\xff\xfe",
		"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nId: " + idPlaceholder + "\r\nContent-Length: 5\r\n\r\nup 1\n",
		"HTTP/1.1 200 OK\r\nId: " + idPlaceholder + "\r\nContent-Length: 50\r\n\r\nup 1\n",
		"HTTP/1.1 200 OK\r\nId: " + idPlaceholder + "\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nup 1\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nId: " + idPlaceholder + "\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"HTTP/1.1 500 Internal Server Error\r\nId: " + idPlaceholder + "\r\nContent-Length: 13\r\n\r\ntarget down\r\n",
		"HTTP/1.0 204 No Content\r\nId: " + idPlaceholder + "\r\n\r\n",
		"HTTP/1.1 200 OK\r\nId: 8d3c1f9e-6a55-4c1b-9d2e-000000000000\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nId: " + idPlaceholder + "\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 999 Weird\r\nId: " + idPlaceholder + "\r\n\r\n",
		"HTTP/1.1 000 Zero\r\nId: " + idPlaceholder + "\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 042 Low\r\nId: " + idPlaceholder + "\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 100 Continue\r\nId: " + idPlaceholder + "\r\n\r\n",
		"HTTP/1.1 200 OK\r\nId: " + idPlaceholder + "\r\n" + strings.Repeat("X: y\r\n", 100) + "\r\n",
	} {
		f.Add([]byte(seed))
	}
	p := newFuzzProxy(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		// A scrape waits for an answer, with a poll that has taken it.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		scrapeReq := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://fuzz.example:9100/metrics", nil)
		scrapeReq.Header.Set(util.HeaderScrapeTimeoutSeconds, "30")
		type scraped struct {
			rec     *recorder
			aborted bool
		}
		scrapeDone := make(chan scraped, 1)
		go func() {
			rec, aborted := serveRecorded(p, scrapeReq)
			scrapeDone <- scraped{rec, aborted}
		}()
		pollReq := httptest.NewRequest(http.MethodPost, "/poll", strings.NewReader("fuzz.example"))
		pollRec, _ := serveRecorded(p, pollReq)
		if pollRec.Code != http.StatusOK {
			t.Fatalf("poll answered %d: %s", pollRec.Code, pollRec.Body)
		}
		handed, err := http.ReadRequest(bufio.NewReader(pollRec.Body))
		if err != nil {
			t.Fatalf("poll answer: %v", err)
		}
		id := handed.Header.Get(util.HeaderID)

		pushBody := bytes.ReplaceAll(body, []byte(idPlaceholder), []byte(id))
		pushRec, aborted := serveRecorded(p, httptest.NewRequest(http.MethodPost, "/push", bytes.NewReader(pushBody)))
		if aborted {
			t.Fatalf("push handler aborted")
		}
		code := pushRec.Code
		// The push has been dealt with; a scrape it did not answer ends now.
		cancel()
		var got scraped
		select {
		case got = <-scrapeDone:
		case <-time.After(30 * time.Second):
			t.Fatalf("scrape still waiting after the push answered %d", code)
		}

		switch {
		case code == http.StatusOK:
			// Accepted: Prometheus got exactly the pushed answer.
			want, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(pushBody)), nil)
			if err != nil {
				t.Fatalf("push accepted, but its body does not parse: %v", err)
			}
			wantBody, err := io.ReadAll(want.Body)
			if err != nil {
				t.Fatalf("push accepted, but its body is broken: %v", err)
			}
			if got.aborted || got.rec.Code != want.StatusCode || !bytes.Equal(got.rec.Body.Bytes(), wantBody) {
				t.Errorf("pushed %d %q, Prometheus got %d %q (aborted %v)", want.StatusCode, wantBody, got.rec.Code, got.rec.Body, got.aborted)
			}
			for _, name := range []string{util.HeaderID, util.HeaderScrapeTimeout, util.HeaderScrapeTimeoutSeconds} {
				if v := got.rec.Header().Get(name); v != "" {
					t.Errorf("internal header %s reached Prometheus: %q", name, v)
				}
			}
		case code >= 400 && code < 500 || code == http.StatusBadGateway:
			// Refused, or broken off while relayed: Prometheus got nothing
			// of it, or a broken transfer, never a complete answer.
			if got.rec.wrote && !got.aborted {
				t.Errorf("push answered %d but Prometheus got a complete %d %q", code, got.rec.Code, got.rec.Body)
			}
			if strings.TrimSpace(pushRec.Body.String()) == "" {
				t.Errorf("push answered %d without a reason", code)
			}
		default:
			t.Errorf("push answered %d: %s", code, pushRec.Body)
		}
	})
}

// A /poll body must be an FQDN: the proxy must never panic, and must answer
// 204 (nothing to do, with Prefer: wait=0) exactly for valid names, and 400
// or 413 with a reason otherwise.
func FuzzPollBody(f *testing.F) {
	for _, seed := range []string{
		"node1",
		" node1.example.com \n",
		"",
		"\x00",
		"10.0.0.1",
		"::1",
		"[::1]",
		"node_1",
		"-node1",
		"node1.",
		"node1..example",
		"nöde1",
		strings.Repeat("a", 64),
		strings.Repeat("a.", 127),
		strings.Repeat("a", 5000),
	} {
		f.Add([]byte(seed))
	}
	p := newFuzzProxy(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/poll", bytes.NewReader(body))
		req.Header.Set(util.HeaderPrefer, "wait=0")
		rec, aborted := serveRecorded(p, req)
		if aborted {
			t.Fatalf("poll handler aborted")
		}
		_, parseErr := util.ParseFQDN(string(body))
		switch rec.Code {
		case http.StatusNoContent:
			if parseErr != nil || len(body) > maxPollBody {
				t.Errorf("poll %q accepted, but it is not a valid FQDN: %v", body, parseErr)
			}
		case http.StatusBadRequest:
			if parseErr == nil {
				t.Errorf("valid poll %q refused: %s", body, rec.Body)
			}
		case http.StatusRequestEntityTooLarge:
			if len(body) <= maxPollBody {
				t.Errorf("poll of %d bytes refused as too large", len(body))
			}
		default:
			t.Errorf("poll %q answered %d: %s", body, rec.Code, rec.Body)
		}
		if rec.Code != http.StatusNoContent && strings.TrimSpace(rec.Body.String()) == "" {
			t.Errorf("poll refused with %d without a reason", rec.Code)
		}
		if n := p.hub.Stats().Parked; n != 0 {
			t.Fatalf("%d polls still parked", n)
		}
	})
}
