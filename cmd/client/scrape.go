package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/rancher/pushprox/util"
)

// One scrape, whatever carries it. A transport (a poll loop, or a tunnel
// with one stream per scrape) decodes a scrape request and hands it to
// startScrape with a function that sends the answer back in the wire form
// (answerHead and the body, or writeAnswer). startScrape bounds the
// scrapes at once, counts them for the drain at shutdown, times them and
// logs their outcome; answer makes the scrape itself.

// startScrape makes the scrape of req, taken from a transport at taken, in
// a goroutine under scrapeCtx once a scrape slot is free, and sends its
// answer with send. When ctx (the transport's) ends before a slot is free,
// the scrape is refused through send at once and startScrape reports
// false.
func (c *client) startScrape(ctx, scrapeCtx context.Context, req *http.Request, taken time.Time, send func(*http.Response) error) bool {
	if !c.takeSlot(ctx, scrapeCtx, req, taken, send) {
		return false
	}
	go c.scrapeInSlot(scrapeCtx, req, taken, send)
	return true
}

// serveScrape is startScrape in the calling goroutine: it returns once the
// answer has been sent. A tunnel stream, which has a goroutine of its own,
// saves a hand-over to another one.
func (c *client) serveScrape(ctx, scrapeCtx context.Context, req *http.Request, taken time.Time, send func(*http.Response) error) bool {
	if !c.takeSlot(ctx, scrapeCtx, req, taken, send) {
		return false
	}
	c.scrapeInSlot(scrapeCtx, req, taken, send)
	return true
}

// takeSlot waits for a scrape slot for req, or refuses req through send
// when ctx ends first.
func (c *client) takeSlot(ctx, scrapeCtx context.Context, req *http.Request, taken time.Time, send func(*http.Response) error) bool {
	// A free slot serves the scrape even when ctx just ended: the proxy
	// gave it to this client and gives it to no other.
	select {
	case c.slots <- struct{}{}:
	default:
		select {
		case c.slots <- struct{}{}:
		case <-ctx.Done():
			resp, done := c.errorAnswer(scrapeCtx, req, errors.New("client is shutting down"))
			c.sendAnswer(req, resp, taken, send)
			done()
			return false
		}
	}
	c.scrapes.Add(1)
	return true
}

// scrapeInSlot makes the scrape of req in the slot taken for it and sends
// the answer.
func (c *client) scrapeInSlot(scrapeCtx context.Context, req *http.Request, taken time.Time, send func(*http.Response) error) {
	defer c.scrapes.Done()
	defer func() { <-c.slots }()
	resp, done := c.answer(scrapeCtx, req)
	defer done()
	c.sendAnswer(req, resp, taken, send)
}

// sendAnswer sends the answer to req, taken at taken, with send; it logs
// and counts the outcome and times the scrape.
func (c *client) sendAnswer(req *http.Request, resp *http.Response, taken time.Time, send func(*http.Response) error) {
	defer func() { c.metrics.scrapeDuration.Observe(time.Since(taken).Seconds()) }()
	logger := scrapeLogger(c.logger, req)
	if err := send(resp); err != nil {
		c.metrics.pushErrors.Inc()
		level.Warn(logger).Log("msg", "sending answer failed", "status", resp.StatusCode, "err", err)
		return
	}
	level.Debug(logger).Log("msg", "scraped", "status", resp.StatusCode, "duration", time.Since(taken))
}

// answer makes the scrape that req asks for: it applies the client's rules
// and the request's timeout, and returns the target's response with its
// body unread, or util.ErrorAnswer with the reason when the scrape is
// refused or fails (counted and logged here). The context of resp.Request
// carries the deadline by which the answer must be sent; done releases the
// scrape and must be called once the answer has been sent or given up.
func (c *client) answer(ctx context.Context, req *http.Request) (resp *http.Response, done func()) {
	if req.Method == http.MethodConnect {
		// Only a proxy that hands a poll Prometheus' CONNECT as it came
		// (the reference proxy) gets here, and such a CONNECT carries no
		// timeout: the reason goes back before anything else is read.
		return c.errorAnswer(ctx, req, fmt.Errorf("scrape refused: CONNECT %s: a scheme: https target is carried only on a tunnel to a proxy that offers tunnels; through this proxy, scrape it over http with the _scheme=https parameter", req.Host))
	}
	timeout, err := util.HeaderTimeout(req.Header, util.HeaderScrapeTimeoutSeconds)
	if err != nil {
		return c.errorAnswer(ctx, req, err)
	}
	scrapeCtx, cancel := context.WithTimeout(ctx, util.TargetTimeout(timeout))
	out, err := c.targetRequest(scrapeCtx, req, timeout)
	if err == nil {
		resp, err = c.targetClient.Do(out)
		if err != nil {
			err = fmt.Errorf("scraping target: %w", err)
		}
	}
	if err == nil {
		err = checkAnswerHead(resp, req.Header.Get(util.HeaderID))
		if err != nil {
			resp.Body.Close()
		}
	}
	if err != nil {
		cancel()
		// Not under scrapeCtx: when its deadline is what failed the scrape,
		// sending under it would fail too and the reason would be lost.
		return c.errorAnswer(ctx, req, err)
	}
	// The answer is sent under the scrape's deadline.
	resp.Request = resp.Request.WithContext(scrapeCtx)
	return resp, func() {
		resp.Body.Close()
		cancel()
	}
}

// errorAnswer is the answer to a scrape that was refused or failed: a 500
// whose body is the reason, to be sent within the refuse timeout.
func (c *client) errorAnswer(ctx context.Context, req *http.Request, reason error) (*http.Response, func()) {
	c.metrics.scrapeErrors.Inc()
	level.Warn(scrapeLogger(c.logger, req)).Log("msg", "scrape failed", "err", reason)
	sendCtx, cancel := context.WithTimeout(ctx, cmp.Or(c.cfg.refuseTimeout, defaultRefuseTimeout))
	resp := util.ErrorAnswer(reason)
	resp.Request = req.WithContext(sendCtx)
	return resp, cancel
}

// scrapeLogger is logger with the scrape's Id and URL.
func scrapeLogger(logger log.Logger, req *http.Request) log.Logger {
	return log.With(logger, "scrape_id", req.Header.Get(util.HeaderID), "url", req.URL.Redacted())
}

// answerHeadSlack bounds what an answer's head adds to the target's
// status line and headers: the Id, the seconds left and the length.
const answerHeadSlack = 256

// checkAnswerHead refuses a target answer whose head the proxy could not
// read: one larger than util.MaxAnswerHead once encoded. It counts the
// bytes rather than encoding the head, which is done once, when sent.
func checkAnswerHead(resp *http.Response, id string) error {
	size := len(resp.Status) + len(id) + answerHeadSlack
	for name, values := range resp.Header {
		for _, value := range values {
			size += len(name) + len(value) + len(": \r\n")
		}
	}
	if size > util.MaxAnswerHead {
		return fmt.Errorf("target answer head of about %d bytes is larger than the %d bytes a proxy reads", size, util.MaxAnswerHead)
	}
	return nil
}
