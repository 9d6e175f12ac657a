package util

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestScrapeRequestSurvivesTheRoundTripWithoutHopByHopHeaders(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
	}{
		{"a GET without body", ""},
		{"a request with a small body", "query=up"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			r, err := http.NewRequest(http.MethodGet, "http://node1:9100/metrics?x=1", body)
			if err != nil {
				t.Fatal(err)
			}
			r.Header.Set("Accept", "application/openmetrics-text")
			r.Header.Set("Proxy-Authorization", "Basic c2VjcmV0")
			r.Header.Set("Connection", "X-Hop")
			r.Header.Set("X-Hop", "1")
			r.Header.Set(HeaderScrapeTimeout, "3")
			encoded, err := EncodeScrapeRequest(r, "id-1", 7500*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeScrapeRequest(bufio.NewReader(bytes.NewReader(encoded)))
			if err != nil {
				t.Fatalf("decoding %q: %v", encoded, err)
			}
			if got.URL.String() != "http://node1:9100/metrics?x=1" || got.Method != http.MethodGet {
				t.Errorf("got %s %s", got.Method, got.URL)
			}
			for name, want := range map[string]string{
				"Accept":                   "application/openmetrics-text",
				HeaderID:                   "id-1",
				HeaderScrapeTimeoutSeconds: "7.5",
				"Proxy-Authorization":      "",
				"X-Hop":                    "",
				HeaderScrapeTimeout:        "",
			} {
				if v := got.Header.Get(name); v != want {
					t.Errorf("header %s = %q, want %q", name, v, want)
				}
			}
			rest, _ := io.ReadAll(got.Body)
			if string(rest) != tc.body {
				t.Errorf("body %q, want %q", rest, tc.body)
			}
		})
	}
}

func TestScrapeRequestBodyOverTheLimitIsRefused(t *testing.T) {
	r, _ := http.NewRequest(http.MethodGet, "http://node1/", strings.NewReader(strings.Repeat("x", MaxScrapeRequestBody+1)))
	_, err := EncodeScrapeRequest(r, "id", time.Second)
	var tooBig *http.MaxBytesError
	if !errors.As(err, &tooBig) {
		t.Fatalf("got %v, want a MaxBytesError", err)
	}
}

func TestDecodeScrapeRequestRefusesWhatIsNoScrape(t *testing.T) {
	for _, tc := range []struct{ name, raw string }{
		{"garbage", "hello\r\n\r\n"},
		{"origin-form", "GET /metrics HTTP/1.1\r\nHost: x\r\nId: 1\r\n\r\n"},
		{"CONNECT", "CONNECT node1:443 HTTP/1.1\r\nHost: node1:443\r\nId: 1\r\n\r\n"},
		{"no Id", "GET http://node1/metrics HTTP/1.1\r\nHost: node1\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if req, err := DecodeScrapeRequest(bufio.NewReader(strings.NewReader(tc.raw))); err == nil {
				t.Fatalf("accepted %s %s", req.Method, req.URL)
			}
		})
	}
}

func TestAnswerSurvivesTheRoundTripWithItsLengthOrWithout(t *testing.T) {
	for _, tc := range []struct {
		name   string
		length int64
	}{
		{"with a length", 5},
		{"without a length", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := http.Header{"Content-Type": {"text/plain"}, "Connection": {"close"}, "Content-Length": {"99"}}
			header := AnswerHeader(target, "id-2", 1500*time.Millisecond, true, tc.length)
			encoded := append(EncodeAnswerHead(203, "203 Partly", header), "up 1\n"...)
			resp, err := DecodeAnswer(bytes.NewReader(encoded))
			if err != nil {
				t.Fatalf("decoding %q: %v", encoded, err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 203 || resp.Status != "203 Partly" || string(body) != "up 1\n" {
				t.Errorf("got %s %q", resp.Status, body)
			}
			if resp.Header.Get(HeaderID) != "id-2" || resp.Header.Get(HeaderScrapeTimeout) != "1.5" || resp.Header.Get("Connection") != "" {
				t.Errorf("got header %v", resp.Header)
			}
			if resp.ContentLength != tc.length {
				t.Errorf("length %d, want %d", resp.ContentLength, tc.length)
			}
			if target.Get("Connection") != "close" {
				t.Errorf("AnswerHeader changed the target's header")
			}
		})
	}
}

func TestDecodeAnswerRefusesWhatCannotBeRelayed(t *testing.T) {
	for _, tc := range []struct{ name, raw string }{
		{"garbage", "hello\r\n\r\n"},
		{"informational status", "HTTP/1.1 103 Early Hints\r\nId: 1\r\n\r\n"},
		{"no Id", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
		{"head over the limit", "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", MaxAnswerHead) + "\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if resp, err := DecodeAnswer(strings.NewReader(tc.raw)); err == nil {
				t.Fatalf("accepted %s", resp.Status)
			}
		})
	}
}

func TestErrorAnswerCarriesTheReason(t *testing.T) {
	resp := ErrorAnswer(errors.New("target down"))
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 500 || string(body) != "target down\n" || resp.ContentLength != int64(len(body)) {
		t.Fatalf("got %d %q (length %d)", resp.StatusCode, body, resp.ContentLength)
	}
}

// FuzzDecodeAnswer feeds arbitrary push bodies to the answer decoder: it
// must not panic, and what it accepts has a final status and an Id.
func FuzzDecodeAnswer(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nId: a\r\nContent-Length: 2\r\n\r\nok"))
	f.Add([]byte("HTTP/1.1 500 x\r\nId: a\r\n\r\nreason"))
	f.Add([]byte("HTTP/1.0 100 Continue\r\n\r\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		resp, err := DecodeAnswer(bytes.NewReader(raw))
		if err != nil {
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode < 200 || resp.Header.Get(HeaderID) == "" {
			t.Fatalf("accepted status %d with Id %q", resp.StatusCode, resp.Header.Get(HeaderID))
		}
		_, _ = io.Copy(io.Discard, resp.Body)
	})
}

// FuzzScrapeRequestRoundTrip encodes requests built from arbitrary URLs and
// header values: what encodes must decode to the same URL and Id.
func FuzzScrapeRequestRoundTrip(f *testing.F) {
	f.Add("http://node1:9100/metrics", "text/plain")
	f.Add("http://[::1]:9100/m?_scheme=https", "")
	f.Fuzz(func(t *testing.T, rawURL, accept string) {
		r, err := http.NewRequest(http.MethodGet, rawURL, nil)
		if err != nil || r.URL.Host == "" || !r.URL.IsAbs() {
			return
		}
		r.Header.Set("Accept", accept)
		encoded, err := EncodeScrapeRequest(r, "id", time.Second)
		if err != nil {
			return
		}
		got, err := DecodeScrapeRequest(bufio.NewReader(bytes.NewReader(encoded)))
		if err != nil {
			return // net/http writes some URLs it will not read back
		}
		if got.Header.Get(HeaderID) != "id" || got.URL.Host != r.URL.Host {
			t.Fatalf("round trip of %q gave host %q, Id %q", rawURL, got.URL.Host, got.Header.Get(HeaderID))
		}
	})
}

func TestAnAnswerWrittenToAnyWriterReadsBackAsTheWireForm(t *testing.T) {
	deadline, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(deadline, http.MethodGet, "http://node1:9100/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		length     int64 // of the response; -1 unknown
		body       string
		delimit    bool // as on a tunnel stream that carries more
		wantLength string
	}{
		{name: "with a length", length: 5, body: "up 1\n", wantLength: "5"},
		{name: "without a length", length: -1, body: "up 1\n", wantLength: ""},
		{name: "without a length, delimited in chunks, followed by more", length: -1, body: strings.Repeat("up 1\n", 10000), delimit: true, wantLength: ""},
		{name: "with a length, delimited, followed by more", length: 5, body: "up 1\n", delimit: true, wantLength: "5"},
		{name: "empty", length: 0, body: "", wantLength: "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := &http.Response{
				StatusCode:    http.StatusOK,
				Header:        http.Header{"Content-Type": {"text/plain"}, "Connection": {"close"}},
				Body:          io.NopCloser(strings.NewReader(tc.body)),
				ContentLength: tc.length,
				Request:       req,
			}
			var wire bytes.Buffer
			if err := WriteAnswer(&wire, resp, "scrape-1", tc.delimit); err != nil {
				t.Fatal(err)
			}
			if tc.delimit {
				next := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("next")), ContentLength: 4}
				if err := WriteAnswer(&wire, next, "scrape-next", true); err != nil {
					t.Fatal(err)
				}
			}
			answers := NewAnswerReader(&wire)
			got, err := answers.Next()
			if err != nil {
				t.Fatalf("decoding %q: %v", wire.String(), err)
			}
			body, _ := io.ReadAll(got.Body)
			if got.StatusCode != http.StatusOK || string(body) != tc.body {
				t.Errorf("read back %d, %d bytes, want 200 and %d bytes", got.StatusCode, len(body), len(tc.body))
			}
			if tc.delimit && !Delimited(got) {
				t.Error("a delimited answer reads back undelimited")
			}
			if tc.delimit {
				next, err := answers.Next()
				if err != nil || next.Header.Get(HeaderID) != "scrape-next" {
					t.Errorf("the answer after a delimited one: %v %v", next, err)
				}
			}
			if got.Header.Get(HeaderID) != "scrape-1" || got.Header.Get("Content-Type") != "text/plain" {
				t.Errorf("read back header %v", got.Header)
			}
			if l := got.Header.Get("Content-Length"); l != tc.wantLength {
				t.Errorf("Content-Length %q, want %q", l, tc.wantLength)
			}
			if got.Header.Get("Connection") != "" {
				t.Error("a hop-by-hop header was written")
			}
			left, err := HeaderTimeout(got.Header, HeaderScrapeTimeout)
			if err != nil || left > 5*time.Second {
				t.Errorf("seconds left %v (%v), want at most 5s", left, err)
			}
		})
	}
	t.Run("a body shorter than its length is an error", func(t *testing.T) {
		resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("up")), ContentLength: 10}
		if err := WriteAnswer(io.Discard, resp, "scrape-2", false); err == nil {
			t.Error("no error")
		}
	})
}
