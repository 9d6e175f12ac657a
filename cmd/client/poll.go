package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/rancher/pushprox/util"
)

// The poll transport: each scrape request is the answer to a POST /poll,
// and each answer goes back as the body of a POST /push.

// Bounds of the poll loop.
const (
	// maxPollResponse bounds a poll answer, which holds one scrape request.
	maxPollResponse = util.MaxScrapeRequest
	// minEmptyPollTime is the least time a proxy that honours the client's
	// wait preference takes to answer a poll without work. A poll answered
	// without work, or cut by a gateway, sooner than this is followed by a
	// pause, so that no proxy or gateway can make the client poll in a
	// tight loop.
	minEmptyPollTime = 500 * time.Millisecond
	// parkedPollTime is how long a poll must have been held to prove the
	// proxy reachable even though it then failed (a proxy restarting cuts
	// its parked polls): the backoff then starts again from the initial
	// wait, so that clients reappear soon after the proxy does.
	parkedPollTime = time.Second
	// defaultPollBodyMargin is added to the poll wait to bound the reading
	// of a poll answer's body, so that a proxy that stalls mid-body cannot
	// hold a poll for ever. A scrape request is at most 1 MiB.
	defaultPollBodyMargin = 10 * time.Second
	// cutWaitFraction of a cut poll's time is the wait preferred after it,
	// so that the next poll ends before the gateway cuts it, whatever
	// delay the gateway adds.
	cutWaitNumerator, cutWaitDenominator = 3, 4
	// minCutWait is the shortest wait preferred after cuts; Prefer: wait
	// counts whole seconds.
	minCutWait = time.Second
)

// Run polls every proxy, and watches the targets file, until ctx ends;
// then it waits for scrapes in flight, at most --web.shutdown-timeout,
// before cancelling them.
func (c *client) Run(ctx context.Context) {
	// A scrape already taken is finished even when the client stops.
	scrapeCtx, cancelScrapes := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelScrapes()
	var loops sync.WaitGroup
	if c.targets != nil {
		loops.Add(1)
		go func() {
			defer loops.Done()
			c.targets.watch(ctx, c.cfg.targetsRefresh, c.logger)
		}()
	}
	for _, proxyURL := range c.cfg.proxyURLs {
		loops.Add(1)
		go func() {
			defer loops.Done()
			if c.cfg.proxyResolveAll {
				c.resolveLoop(ctx, scrapeCtx, proxyURL)
				return
			}
			c.serveUpstream(ctx, scrapeCtx, &upstream{url: proxyURL, http: c.proxyClient})
		}()
	}
	loops.Wait()
	c.drain(cancelScrapes)
	c.proxyClient.CloseIdleConnections()
	c.targetClient.CloseIdleConnections()
}

// drain waits for the scrapes in flight, at most the shutdown timeout;
// then it cancels them, and their errors are sent back at once or given
// up.
func (c *client) drain(cancelScrapes context.CancelFunc) {
	drained := make(chan struct{})
	go func() {
		c.scrapes.Wait()
		close(drained)
	}()
	timer := time.NewTimer(c.cfg.shutdownTimeout)
	defer timer.Stop()
	select {
	case <-drained:
		return
	case <-timer.C:
	}
	level.Warn(c.logger).Log("msg", "scrapes still in flight at the end of the shutdown timeout, cancelling them", "timeout", c.cfg.shutdownTimeout)
	cancelScrapes()
	<-drained
}

// pollLoop polls one proxy as as, starting a scrape for each request it
// is given under scrapeCtx and polling again at once. Failed polls are
// retried with backoff; polls cut by a gateway are made again at once,
// with a shorter wait.
func (c *client) pollLoop(ctx, scrapeCtx context.Context, up *upstream, as pollAs) {
	logger := log.With(c.logger, "proxy", up.String())
	if as.target != "" {
		logger = log.With(logger, "target", as.target)
	}
	retry := newBackoff(c.cfg.retryInitialWait, c.cfg.retryMaxWait)
	wait := c.cfg.pollWait
	connected := false
	// setConnected keeps c.connected counting this proxy while its last
	// poll succeeded.
	setConnected := func(ok bool) {
		switch {
		case ok && !connected:
			c.connected.Add(1)
		case !ok && connected:
			c.connected.Add(-1)
		}
		connected = ok
	}
	defer setConnected(false)
	defer up.turns.join(as.fqdn)()
	for ctx.Err() == nil {
		endTurn, ok := up.turns.take(ctx, as.fqdn)
		if !ok {
			return
		}
		start := time.Now()
		req, err := c.poll(ctx, up, wait, as)
		endTurn()
		held := time.Since(start)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if isEvicted(err) && up.turns.shared(as.fqdn) {
				// Another loop of this client polls as the same name, and
				// the proxy keeps one poll per name: they take turns. A
				// loop alone with its name was evicted by another
				// process's poll, a failure like any other.
				if up.turns.start() {
					level.Info(logger).Log("msg", "proxy keeps one poll per name: the poll loops of each name take turns on it", "err", err)
				}
				continue
			}
			if isGatewayCut(err) && held >= minEmptyPollTime {
				c.metrics.pollCuts.Inc()
				if shorter := cutWait(held); wait == 0 || shorter < wait {
					wait = shorter
					level.Info(logger).Log("msg", "poll cut by a gateway, polling with a shorter wait", "held", held, "wait", wait, "err", err)
				} else {
					level.Debug(logger).Log("msg", "poll cut by a gateway", "held", held, "err", err)
				}
				continue
			}
			setConnected(false)
			c.metrics.pollErrors.Inc()
			if held >= parkedPollTime {
				retry.Reset()
			}
			pause := retry.NextBackOff()
			level.Warn(logger).Log("msg", "poll failed, retrying", "wait", pause, "err", err)
			if !util.Sleep(ctx, pause) {
				return
			}
			continue
		}
		retry.Reset()
		setConnected(true)
		if req == nil {
			// A proxy honouring the wait answers "no work" only after it.
			// One that answers at once would have the client poll in a
			// tight loop, so it is given a pause.
			if held < minEmptyPollTime && !util.Sleep(ctx, c.cfg.retryInitialWait) {
				return
			}
			continue
		}
		taken := time.Now()
		id := req.Header.Get(util.HeaderID)
		push := func(resp *http.Response) error { return c.push(up, id, resp) }
		// Wait for a free slot before taking more work from this proxy.
		if !c.startScrape(ctx, scrapeCtx, req, taken, push) {
			return
		}
	}
}

// cutWait is the wait preferred after a poll cut by a gateway after held:
// enough less that the next poll ends before the gateway cuts it.
func cutWait(held time.Duration) time.Duration {
	wait := held * cutWaitNumerator / cutWaitDenominator
	return max(wait.Truncate(time.Second), minCutWait)
}

// newBackoff returns the retry policy for failed polls: exponential by 1.5
// from initial to max, never giving up.
func newBackoff(initial, max time.Duration) *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = initial
	b.MaxInterval = max
	b.Multiplier = 1.5
	b.RandomizationFactor = 0
	b.MaxElapsedTime = 0
	b.Reset()
	return b
}

// pollStatusError is a poll answered with neither a scrape nor "no work".
type pollStatusError struct {
	status string
	code   int
	text   string // the start of the answer's body
}

func (e *pollStatusError) Error() string {
	return fmt.Sprintf("poll answered %s: %s", e.status, e.text)
}

// isGatewayCut reports whether a failed poll was answered 502, 503 or 504:
// the statuses with which reverse proxies and load balancers between client
// and proxy cut requests idle for too long. The rule is the status alone;
// the proxy's own answers to a parked poll are 200, 204 and 408 (it answers
// 503 only to polls it refuses at once, which are failures by their
// quickness, and to polls whose client is gone).
func isGatewayCut(err error) bool {
	var status *pollStatusError
	if !errors.As(err, &status) {
		return false
	}
	switch status.code {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// poll asks a proxy for a scrape as as, preferring to wait at most wait (zero:
// as long as the proxy likes). It returns nil without error when the proxy
// had none within the poll's wait.
func (c *client) poll(ctx context.Context, up *upstream, wait time.Duration, as pollAs) (*http.Request, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pollURL := util.ResolveProxyPath(up.url, util.PollPath)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, pollURL.String(), strings.NewReader(as.fqdn))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "text/plain")
	if as.labels != "" {
		req.Header.Set(util.HeaderLabels, as.labels)
	}
	if as.target != "" {
		req.Header.Set(util.HeaderTarget, as.target)
		req.Header.Set(util.HeaderVia, c.cfg.fqdn)
	}
	if wait > 0 {
		req.Header.Set(util.HeaderPrefer, "wait="+strconv.Itoa(int(wait/time.Second)))
	}
	resp, err := up.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	// The head has come; a proxy that stalls mid-body cannot hold the poll
	// for ever.
	stalled := time.AfterFunc(wait+cmp.Or(c.cfg.pollBodyMargin, defaultPollBodyMargin), cancel)
	defer stalled.Stop()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPollResponse+1))
	if err != nil {
		return nil, fmt.Errorf("reading poll answer: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusNoContent:
		if resp.Header.Get(util.HeaderPreferenceApplied) != "" && up.turns.end() {
			level.Info(c.logger).Log("msg", "proxy keeps every poll: the poll loops of each name poll at once again", "proxy", up.String())
		}
		return nil, nil
	case resp.StatusCode != http.StatusOK:
		return nil, &pollStatusError{status: resp.Status, code: resp.StatusCode, text: firstLine(body)}
	case len(body) > maxPollResponse:
		return nil, fmt.Errorf("poll answer larger than %d bytes", maxPollResponse)
	}
	return parseScrapeRequest(body)
}

// parseScrapeRequest reads the scrape request in a poll answer. A CONNECT
// is read too, so that it is refused with the reason like any request the
// client does not serve: a proxy that hands one to a poll (the reference
// proxy, for a scheme: https target) is working, and the scrape, not the
// poll, failed.
func parseScrapeRequest(body []byte) (*http.Request, error) {
	req, err := util.DecodeStreamRequest(bufio.NewReader(bytes.NewReader(body)))
	if err != nil {
		return nil, fmt.Errorf("poll answer: %w", err)
	}
	return req, nil
}

// pushReasonLimit bounds the part of a refused push's answer kept for the
// message.
const pushReasonLimit = 512

// push sends an answer to scrape id to the proxy as the body of a /push,
// under the context of resp.Request: its head, then its body streamed as it
// arrives. When the answer has a length, so does the push; otherwise the
// push is chunked and the answer's body ends with it.
func (c *client) push(up *upstream, id string, resp *http.Response) error {
	head, length := util.AnswerHead(resp, id, false)
	body := io.MultiReader(bytes.NewReader(head), util.AnswerBody(resp, length))
	pushURL := util.ResolveProxyPath(up.url, util.PushPath)
	req, err := http.NewRequestWithContext(resp.Request.Context(), http.MethodPost, pushURL.String(), body)
	if err != nil {
		return err
	}
	req.ContentLength = -1
	if length >= 0 {
		req.ContentLength = int64(len(head)) + length
	}
	res, err := up.http.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	reason, _ := io.ReadAll(io.LimitReader(res.Body, pushReasonLimit))
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("push answered %s: %s", res.Status, firstLine(reason))
	}
	return nil
}
