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
// any of the name's targets, as the reference proxy routes them. A proxy
// that answers an empty poll as this project's does (it honoured the
// wait, with Preference-Applied) keeps every poll: the turns end.

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
	taking atomic.Bool // set once the proxy evicted a poll, until it keeps two

	mu sync.Mutex // guards loops and tokens
	// loops counts the poll loops running per name.
	loops map[string]int
	// tokens hold a token per name while loops of it run; holding its one
	// value is the turn.
	tokens map[string]chan struct{}
}

// join counts a poll loop of name until the returned function is called.
func (t *pollTurns) join(name string) (leave func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.loops == nil {
		t.loops, t.tokens = map[string]int{}, map[string]chan struct{}{}
	}
	t.loops[name]++
	if t.tokens[name] == nil {
		t.tokens[name] = make(chan struct{}, 1)
	}
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.loops[name]--; t.loops[name] == 0 {
			delete(t.loops, name)
			delete(t.tokens, name)
		}
	}
}

// shared says whether more than one poll loop of name runs.
func (t *pollTurns) shared(name string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.loops[name] > 1
}

// start makes the loops take turns from now on, and says whether they
// did not already.
func (t *pollTurns) start() bool { return !t.taking.Swap(true) }

// end lets every loop poll at once again: the proxy keeps more than one
// poll per name. It says whether the loops took turns.
func (t *pollTurns) end() bool { return t.taking.Swap(false) }

// take waits for the turn of name, whose loop joined, when loops take
// turns, and returns the function that ends it; false if ctx ended first.
func (t *pollTurns) take(ctx context.Context, name string) (end func(), ok bool) {
	if !t.taking.Load() {
		return func() {}, true
	}
	t.mu.Lock()
	token := t.tokens[name]
	t.mu.Unlock()
	select {
	case token <- struct{}{}:
		return func() { <-token }, true
	case <-ctx.Done():
		return nil, false
	}
}
