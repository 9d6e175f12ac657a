package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
)

// listenPair listens on the same port of 127.0.0.1 and 127.0.0.2, as two
// replicas behind one name would.
func listenPair(t *testing.T) (net.Listener, net.Listener, string) {
	t.Helper()
	for attempt := 0; attempt < 20; attempt++ {
		first, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(first.Addr().String())
		second, err := net.Listen("tcp", "127.0.0.2:"+port)
		if err == nil {
			return first, second, port
		}
		first.Close()
	}
	t.Skip("no port free on both 127.0.0.1 and 127.0.0.2")
	return nil, nil, ""
}

func TestResolveAllPollsEveryReplica(t *testing.T) {
	for _, withPassword := range []bool{false, true} {
		t.Run(fmt.Sprintf("proxy password %v", withPassword), func(t *testing.T) {
			testResolveAll(t, withPassword)
		})
	}
}

func testResolveAll(t *testing.T, withPassword bool) {
	ln1, ln2, proxyPort := listenPair(t)
	replicas := []*fakeProxy{startFakeProxyOn(t, ln1), startFakeProxyOn(t, ln2)}
	target, seen := recordingTarget(t, false, http.StatusOK, "up 1\n")

	proxyURL, _ := url.Parse("http://pushprox-headless.example:" + proxyPort)
	cfg := testConfig(proxyURL, "127.0.0.1")
	cfg.proxyResolveAll = true
	cfg.resolveInterval = 20 * time.Millisecond
	wantAuth := ""
	if withPassword {
		passwordFile := filepath.Join(t.TempDir(), "password")
		if err := os.WriteFile(passwordFile, []byte("secret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.security.proxyUsername = "node1"
		cfg.security.proxyPasswordFile = passwordFile
		wantAuth = "Basic " + base64.StdEncoding.EncodeToString([]byte("node1:secret"))
	}
	c, err := newClient(cfg, log.NewNopLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	c.lookupHost = func(ctx context.Context, host string) ([]string, error) {
		if host != "pushprox-headless.example" {
			t.Errorf("resolved %q", host)
		}
		return []string{"127.0.0.1", "127.0.0.2"}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		c.Run(ctx)
	}()
	defer func() {
		cancel()
		<-stopped
	}()

	for i, replica := range replicas {
		poll := replica.nextPoll(t)
		if poll.body != "127.0.0.1" {
			t.Errorf("replica %d polled as %q", i, poll.body)
		}
		if got := poll.header.Get("Authorization"); got != wantAuth {
			t.Errorf("replica %d: Authorization %q, want %q", i, got, wantAuth)
		}
	}
	// A scrape handed out by the second replica is pushed back to it.
	id := replicas[1].queueScrape(t, "http://127.0.0.1:"+port(t, target)+"/metrics", nil)
	received(t, seen)
	replicas[1].expectPush(t, id, http.StatusOK, "up 1")
	replicas[0].noMorePushes(t)
}
