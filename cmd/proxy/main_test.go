package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rancher/pushprox/util"
)

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"--help"}, &out); code != 0 {
		t.Fatalf("--help exited %d", code)
	}
	for _, flag := range []string{"--web.listen-address", "--scrape.max-timeout", "--scrape.default-timeout", "--registration.timeout", "--log.level", "--log.format"} {
		if !strings.Contains(out.String(), flag) {
			t.Errorf("usage does not mention %s", flag)
		}
	}
}

func TestBadFlagsExitWithReason(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{name: "unknown flag", args: []string{"--no-such-flag"}, want: "no-such-flag"},
		{name: "bad duration", args: []string{"--scrape.max-timeout=soon"}, want: "scrape.max-timeout"},
		{name: "zero default timeout", args: []string{"--scrape.default-timeout=0s"}, want: "scrape.default-timeout"},
		{name: "negative registration timeout", args: []string{"--registration.timeout=-1m"}, want: "registration.timeout"},
		{name: "bad log level", args: []string{"--log.level=loud"}, want: "log.level"},
		{name: "bad log format", args: []string{"--log.format=xml"}, want: "log.format"},
		{name: "bad body size", args: []string{"--push.max-body-size=lots"}, want: "push.max-body-size"},
		{name: "address in use", args: []string{"--web.listen-address=256.0.0.1:1"}, want: "cannot listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if code := run(tc.args, &out); code == 0 {
				t.Fatalf("exited 0, want an error")
			}
			if !strings.Contains(out.String(), tc.want) {
				t.Errorf("output %q does not name %q", out.String(), tc.want)
			}
			if lines := strings.Count(strings.TrimSpace(out.String()), "\n"); lines != 0 {
				t.Errorf("reason takes %d lines, want 1: %q", lines+1, out.String())
			}
		})
	}
}

func TestGracefulShutdown(t *testing.T) {
	ln, err := listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	reg := prometheus.NewRegistry()
	go func() { served <- serve(ctx, defaultConfig(), log.NewNopLogger(), reg, reg, ln) }()

	// A parked poll is answered when the proxy stops, so its client moves on.
	parked := make(chan *http.Response, 1)
	go func() {
		resp, err := http.Post(base+"/poll", "text/plain", strings.NewReader("node1"))
		if err != nil {
			t.Errorf("poll: %v", err)
			close(parked)
			return
		}
		parked <- resp
	}()
	waitParkedAt(t, base, 1)
	stop()
	resp := <-parked
	if resp == nil {
		t.FailNow()
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Errorf("parked poll answered %s, want 408", resp.Status)
	}
	if err := <-served; err != nil {
		t.Errorf("serve returned %v", err)
	}
	if _, err := http.Get(base + "/metrics"); err == nil {
		t.Errorf("proxy still serving after shutdown")
	}
}

func TestShutdownLetsHandedScrapesFinish(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	client := &fakeClient{tp: tp, fqdn: "node1", answer: func(*http.Request) *http.Response {
		// The proxy stops while this scrape is with the client.
		tp.hub.Shutdown()
		return textResponse(http.StatusOK, "finished\n")
	}}
	done := make(chan struct{})
	go func() { defer close(done); client.serve(t, 1) }()
	tp.waitParked(t, 1)
	resp := tp.scrape(t, "http://node1:9100/metrics", http.Header{util.HeaderScrapeTimeoutSeconds: {"30"}})
	body, _ := io.ReadAll(resp.Body)
	await(t, "the client", done)
	if resp.StatusCode != http.StatusOK || string(body) != "finished\n" {
		t.Errorf("got %s %q, want the pushed answer", resp.Status, body)
	}
	if err := tp.shutdown(context.Background()); err != nil {
		t.Errorf("drain: %v", err)
	}
	resp = tp.scrape(t, "http://node1:9100/metrics", nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("scrape after shutdown: %s, want 503", resp.Status)
	}
}
