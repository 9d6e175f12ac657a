package main

// Tests for findings of the pre-release review.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// A proxy request whose body trickles in (a broken or hostile peer; Prometheus
// sends none) must not hold its handler past the scrape's timeout: it used to
// wait for the body forever, as nothing bounded that read.
func TestTricklingScrapeBodyEndsAtTheTimeout(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	conn, err := net.Dial("tcp", tp.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// One byte of the ten announced, then nothing.
	fmt.Fprintf(conn, "POST http://node1:9100/metrics HTTP/1.1\r\nHost: node1:9100\r\n"+
		"X-Prometheus-Scrape-Timeout-Seconds: 1\r\nContent-Length: 10\r\n\r\nA")
	start := time.Now()
	_ = conn.SetReadDeadline(start.Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer after %s: %v", time.Since(start), err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Errorf("answered after %s, timeout 1s", elapsed)
	}
	if resp.StatusCode < 400 || resp.StatusCode >= 500 {
		t.Errorf("got %d %q, want a client error", resp.StatusCode, body)
	}
	tp.waitOutcome(t, outcomeRefused, 1)
}

// A poll whose FQDN stops arriving is answered when its body read times out,
// and its connection closed. The deadline used to be lifted before the
// answer, and net/http's reading of the rest of the body before answering
// then waited forever: the handler the timeout was meant to free stayed held.
func TestStalledPollBodyIsAnsweredAtItsTimeout(t *testing.T) {
	cfg := defaultConfig()
	cfg.pollBodyTimeout = 300 * time.Millisecond
	tp := startProxy(t, cfg)
	conn, err := net.Dial("tcp", tp.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /poll HTTP/1.1\r\nHost: proxy\r\nContent-Length: 10\r\n\r\nnod")
	start := time.Now()
	_ = conn.SetReadDeadline(start.Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer after %s: %v", time.Since(start), err)
	}
	resp.Body.Close()
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Errorf("answered after %s, body timeout 300ms", elapsed)
	}
	if resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Errorf("got %s (close %v), want 400 and the connection closed", resp.Status, resp.Close)
	}
}
