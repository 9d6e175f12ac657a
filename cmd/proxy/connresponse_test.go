package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

func TestAConnResponseIsOneWellFramedHTTPResponse(t *testing.T) {
	for _, tc := range []struct {
		name       string
		handler    func(w http.ResponseWriter)
		wantStatus int
		wantBody   string
		wantLength int64
		wantHeader map[string]string
	}{
		{
			name: "scrape, with its length and a flush",
			handler: func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "application/http")
				w.Header().Set("Content-Length", "3")
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write([]byte("GET"))
				_ = http.NewResponseController(w).Flush()
			},
			wantStatus: http.StatusOK, wantBody: "GET", wantLength: 3,
			wantHeader: map[string]string{"Content-Type": "application/http"},
		},
		{
			name:       "error, its length counted",
			handler:    func(w http.ResponseWriter) { httpError(w, http.StatusTooManyRequests, "poll refused: %s", "too many") },
			wantStatus: http.StatusTooManyRequests, wantBody: "poll refused: too many\n", wantLength: 23,
			wantHeader: map[string]string{"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"},
		},
		{
			name: "no content, no body whatever was written",
			handler: func(w http.ResponseWriter) {
				w.Header().Set("Preference-Applied", "wait=30")
				w.WriteHeader(http.StatusNoContent)
				_, _ = w.Write([]byte("ignored"))
			},
			wantStatus: http.StatusNoContent, wantLength: 0,
			wantHeader: map[string]string{"Preference-Applied": "wait=30"},
		},
		{
			name:       "nothing written is an empty 200",
			handler:    func(http.ResponseWriter) {},
			wantStatus: http.StatusOK, wantLength: 0,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ours, theirs := net.Pipe()
			defer theirs.Close()
			sent := make(chan error, 1)
			go func() {
				defer ours.Close()
				w := &connResponse{conn: ours}
				tc.handler(w)
				sent <- w.send()
			}()
			_ = theirs.SetReadDeadline(time.Now().Add(10 * time.Second))
			r := bufio.NewReader(theirs)
			resp, err := http.ReadResponse(r, nil)
			if err != nil {
				t.Fatalf("not an HTTP response: %v", err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if err := <-sent; err != nil {
				t.Fatalf("send: %v", err)
			}
			if resp.StatusCode != tc.wantStatus || string(body) != tc.wantBody || resp.ContentLength != tc.wantLength {
				t.Errorf("got %d %q (length %d), want %d %q (length %d)", resp.StatusCode, body, resp.ContentLength, tc.wantStatus, tc.wantBody, tc.wantLength)
			}
			if resp.Header.Get("Date") == "" {
				t.Error("no Date header")
			}
			for name, want := range tc.wantHeader {
				if got := resp.Header.Get(name); got != want {
					t.Errorf("%s: %q, want %q", name, got, want)
				}
			}
			// Nothing after the response: the next byte is the close.
			if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
				t.Errorf("bytes after the response: %v", err)
			}
		})
	}
}

func TestAConnResponseIsSentOnce(t *testing.T) {
	ours, theirs := net.Pipe()
	defer theirs.Close()
	go func() { _, _ = io.Copy(io.Discard, theirs) }()
	w := &connResponse{conn: ours}
	if err := w.send(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("late")); !errors.Is(err, errAnswerSent) {
		t.Errorf("write after send: %v, want errAnswerSent", err)
	}
	if err := w.send(); err != nil {
		t.Errorf("second send: %v, want the first's nil", err)
	}
	ours.Close()
	w2 := &connResponse{conn: ours}
	if err := w2.send(); err == nil {
		t.Error("send on a closed connection succeeded")
	}
}
