package main

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
)

// A client with a targets file keeps a poll loop per target, and targets
// may share a host (nas:9100 and nas:9633), or be on the client's own
// host. This proxy routes each poll by host and port; the reference proxy
// keeps one parked poll per name, and a second poll of a name evicts the
// first with a 408, which would evict the second as it came back, and so
// on. Once a proxy has evicted a poll, the loops of each name take turns
// on it: one poll of a name is parked at a time, and it serves a scrape of
// any of the name's targets, as the reference proxy routes them.

// evictedText is in the reference proxy's answer to a poll that another
// poll of the same name evicted.
const evictedText = "request is expired"

// isEvicted reports whether a poll failed because the proxy evicted it
// for a newer poll of the same name.
func isEvicted(err error) bool {
	var status *pollStatusError
	return errors.As(err, &status) && status.code == http.StatusRequestTimeout && strings.Contains(status.text, evictedText)
}

// pollTurns are the turns the poll loops of each name take on one proxy,
// once it evicted a poll.
type pollTurns struct {
	taking atomic.Bool // set once the proxy evicted a poll

	mu sync.Mutex // guards tokens
	// tokens hold a token per name polled as; holding its one value is
	// the turn. The names are the client's own and its targets' hosts: a
	// name dropped from the targets file keeps its few bytes.
	tokens map[string]chan struct{}
}

// start makes the loops take turns from now on, and says whether they
// did not already.
func (t *pollTurns) start() bool { return !t.taking.Swap(true) }

// take waits for name's turn, when loops take turns, and returns the
// function that ends it; false if ctx ended first.
func (t *pollTurns) take(ctx context.Context, name string) (end func(), ok bool) {
	if !t.taking.Load() {
		return func() {}, true
	}
	t.mu.Lock()
	if t.tokens == nil {
		t.tokens = map[string]chan struct{}{}
	}
	token := t.tokens[name]
	if token == nil {
		token = make(chan struct{}, 1)
		t.tokens[name] = token
	}
	t.mu.Unlock()
	select {
	case token <- struct{}{}:
		return func() { <-token }, true
	case <-ctx.Done():
		return nil, false
	}
}
