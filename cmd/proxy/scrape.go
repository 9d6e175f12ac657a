package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/go-kit/log/level"
	"github.com/google/uuid"

	"github.com/rancher/pushprox/internal/rendezvous"
	"github.com/rancher/pushprox/util"
)

// relayBufferSize is the copy buffer of a relay: large enough that a
// typical scrape is read in one piece and goes out in one write after
// the head (a tunnel's answers arrive in frames of up to 128 KiB).
const relayBufferSize = 64 << 10

// handleScrape serves a Prometheus proxy request: it hands the scrape to a
// client of the target's FQDN and relays the client's answer.
func (p *proxy) handleScrape(w http.ResponseWriter, r *http.Request) {
	outcome, code := p.scrape(w, r)
	p.metrics.scrapes.WithLabelValues(outcome).Inc()
	p.metrics.proxied.WithLabelValues(strconv.Itoa(code)).Inc()
}

// scrape serves a proxy request and returns its outcome and status.
func (p *proxy) scrape(w http.ResponseWriter, r *http.Request) (outcome string, code int) {
	fqdn, err := util.ParseFQDN(r.URL.Hostname())
	if err != nil {
		return outcomeRefused, httpError(w, http.StatusBadRequest, "bad scrape target: %v", err)
	}
	timeout := util.ScrapeTimeout(r.Header, p.cfg.defaultTimeout, p.cfg.maxTimeout)
	// The proxy gives up waiting for a client a little before Prometheus
	// does, so that Prometheus reads the reason instead of its own timeout.
	// An answer already streaming may use the full timeout.
	start := time.Now()
	deadline := start.Add(timeout)
	ctx, cancel := context.WithDeadline(r.Context(), deadline.Add(-util.AnswerMargin(timeout)))
	defer cancel()
	id := uuid.NewString()
	// A request body that trickles in must not hold the scrape past its
	// deadline; Prometheus' GETs have none, and their connection is left
	// alone. The deadline is lifted once the body is in, before it can hit
	// net/http's background read (see handlePush); on an error it stays, as
	// net/http reads what is left of the body before it answers.
	var rc *http.ResponseController
	if r.Body != http.NoBody {
		rc = http.NewResponseController(w)
		_ = rc.SetReadDeadline(deadline)
	}
	request, err := util.EncodeScrapeRequest(r, id, timeout)
	if err != nil {
		return outcomeRefused, httpError(w, readErrorStatus(err), "bad scrape request: %v", err)
	}
	if rc != nil {
		_ = rc.SetReadDeadline(time.Time{})
	}
	s := &rendezvous.Scrape{ID: id, FQDN: fqdn, Port: scrapePort(r.URL), Request: request, Deadline: deadline}
	answer, err := p.hub.Scrape(ctx, s)
	if err != nil {
		code, outcome := hubError(err)
		p.hub.Record(s, outcome)
		if code == 499 {
			return outcome, code // nobody reads an answer
		}
		return outcome, httpError(w, code, "%s", scrapeErrorText(err, fqdn, timeout))
	}
	p.metrics.scrapeWait.Observe(answer.Handed.Sub(start).Seconds())
	p.metrics.scrapeClient.Observe(time.Since(answer.Handed).Seconds())
	outcome, code = p.relay(w, s, answer)
	p.hub.Record(s, outcome)
	return outcome, code
}

// scrapeErrorText is the reason Prometheus reads for a failed scrape.
func scrapeErrorText(err error, fqdn string, timeout time.Duration) string {
	switch {
	case errors.Is(err, rendezvous.ErrClientTimeout):
		return "client " + strconv.Quote(fqdn) + " took the scrape but did not answer within " + timeout.String()
	case errors.Is(err, rendezvous.ErrClientIdle):
		return "client " + strconv.Quote(fqdn) + " is known but did not poll within " + timeout.String()
	case errors.Is(err, rendezvous.ErrNoClient):
		return "no client connected as " + strconv.Quote(fqdn) + " within " + timeout.String()
	case errors.Is(err, rendezvous.ErrClientLost):
		return "client " + strconv.Quote(fqdn) + ": " + err.Error()
	}
	return err.Error()
}

// relay streams a client's answer to Prometheus and reports the end of the
// copy to the answer's sender.
func (p *proxy) relay(w http.ResponseWriter, s *rendezvous.Scrape, answer *rendezvous.Answer) (outcome string, code int) {
	resp := answer.Response
	header := w.Header()
	for name, values := range resp.Header {
		header[name] = values
	}
	util.RemoveHopByHopHeaders(header)
	util.RemoveInternalHeaders(header)
	if resp.ContentLength >= 0 {
		header.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	} else {
		header.Del("Content-Length")
	}
	rc := http.NewResponseController(w)
	// Prometheus stops waiting at the deadline; so does the copy.
	_ = rc.SetWriteDeadline(s.Deadline)
	w.WriteHeader(resp.StatusCode)
	// A plain io.Writer hides the ResponseWriter's ReadFrom, which would
	// sniff the content and send the head and the first 512 bytes of a
	// small answer in separate writes.
	buf, _ := p.buffers.Get().(*[relayBufferSize]byte)
	if buf == nil {
		buf = new([relayBufferSize]byte)
	}
	n, err := io.CopyBuffer(struct{ io.Writer }{w}, resp.Body, buf[:])
	p.buffers.Put(buf)
	p.metrics.proxiedBytes.Add(float64(n))
	if err == nil {
		err = rc.Flush()
	}
	answer.Done(err)
	if err != nil {
		level.Debug(p.logger).Log("msg", "relaying scrape answer failed", "fqdn", s.FQDN, "scrape_id", s.ID, "err", err)
		p.metrics.scrapes.WithLabelValues(outcomeAborted).Inc()
		p.metrics.proxied.WithLabelValues(strconv.Itoa(resp.StatusCode)).Inc()
		p.hub.Record(s, outcomeAborted)
		// Abort the response so that Prometheus sees a broken transfer,
		// not a complete but truncated body.
		panic(http.ErrAbortHandler)
	}
	if resp.StatusCode >= 500 {
		return outcomeTargetError, resp.StatusCode
	}
	return outcomeDelivered, resp.StatusCode
}
