package main

import (
	"cmp"
	"context"
	"net"
	"net/http"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/go-kit/log/level"
)

// upstream is a proxy as the client reaches it: its base URL and the HTTP
// client for it. A scrape is pushed back through the upstream that handed
// it out, as only that proxy waits for it.
type upstream struct {
	url     *url.URL
	http    *http.Client
	address string // the one address dialled, with --proxy.resolve-all
	// turns are taken by the poll loops of one name on a proxy that
	// keeps one poll per name (turns.go).
	turns pollTurns
}

// String names the upstream in logs, without credentials.
func (up *upstream) String() string {
	if up.address == "" {
		return up.url.Redacted()
	}
	return up.url.Redacted() + " at " + up.address
}

// defaultResolveInterval is how often --proxy.resolve-all resolves a proxy
// name: replicas that come and go are polled within it.
const defaultResolveInterval = 30 * time.Second

// resolveLoop polls every address the host of proxyURL resolves to, each
// with a poll loop and connections of its own, so that every replica behind
// a name (a Kubernetes headless Service) has a poll parked. The name is
// resolved again every resolveInterval; loops for addresses that are gone
// stop, and their scrapes in flight finish.
func (c *client) resolveLoop(ctx, scrapeCtx context.Context, proxyURL *url.URL) {
	port := portOr(proxyURL.Port(), proxyURL.Scheme)
	var loops sync.WaitGroup
	running := map[string]context.CancelFunc{} // by address; owned by this goroutine
	defer func() {
		for _, stop := range running {
			stop()
		}
		loops.Wait()
	}()
	ticker := time.NewTicker(cmp.Or(c.cfg.resolveInterval, defaultResolveInterval))
	defer ticker.Stop()
	for {
		hosts, err := c.lookupHost(ctx, proxyURL.Hostname())
		if err != nil {
			// The loops already running keep going on a failed lookup.
			c.metrics.pollErrors.Inc()
			level.Warn(c.logger).Log("msg", "resolving proxy failed", "proxy", proxyURL.Redacted(), "err", err)
		} else {
			want := map[string]bool{}
			for _, host := range hosts {
				want[net.JoinHostPort(host, port)] = true
			}
			for address, stop := range running {
				if !want[address] {
					stop()
					delete(running, address)
				}
			}
			for _, address := range sortedKeys(want) {
				if running[address] != nil {
					continue
				}
				loopCtx, stop := context.WithCancel(ctx)
				running[address] = stop
				up := &upstream{url: proxyURL, http: c.newProxyClient(address), address: address}
				loops.Add(1)
				go func() {
					defer loops.Done()
					defer up.http.CloseIdleConnections()
					c.serveUpstream(loopCtx, scrapeCtx, up)
				}()
			}
		}
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return
		}
	}
}

func sortedKeys(set map[string]bool) []string {
	keys := make([]string, 0, len(set))
	for key := range set {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	return keys
}
