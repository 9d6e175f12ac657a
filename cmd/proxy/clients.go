package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/go-kit/log/level"

	"github.com/rancher/pushprox/internal/rendezvous"
	"github.com/rancher/pushprox/util"
)

const (
	// maxPollBody bounds a poll body, which holds only an FQDN.
	maxPollBody = 4 << 10
	// bodyReadTimeout bounds the time to read a poll body.
	bodyReadTimeout = 30 * time.Second
	// maxPollWait bounds a client's wait preference.
	maxPollWait = 10 * time.Minute
)

// handlePoll parks a client's poll until a scrape for its FQDN arrives.
func (p *proxy) handlePoll(w http.ResponseWriter, r *http.Request) {
	started := time.Now()
	rec := &statusRecorder{ResponseWriter: w}
	if p.pollRequest(rec, r, started) {
		p.metrics.observeHTTP("/poll", rec.status, started)
	}
}

// pollRequest serves a poll and reports whether it answered it; false
// means the poll left net/http (detach) and answers itself.
func (p *proxy) pollRequest(w http.ResponseWriter, r *http.Request, started time.Time) (answered bool) {
	rc := http.NewResponseController(w)
	// A client that sends its FQDN byte by byte cannot hold a handler; the
	// deadline is lifted once the body is in, as a parked poll reads nothing.
	// On an error it stays, as net/http reads what is left of the body
	// before it answers.
	_ = rc.SetReadDeadline(time.Now().Add(cmp.Or(p.cfg.pollBodyTimeout, bodyReadTimeout)))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPollBody))
	if err != nil {
		httpError(w, readErrorStatus(err), "reading poll body: %v", err)
		return true
	}
	_ = rc.SetReadDeadline(time.Time{})
	client, err := p.clientOf(r, string(body))
	if err != nil {
		httpError(w, clientErrorStatus(err), "%v", err)
		return true
	}
	if !p.admit(w, r, client) {
		return true
	}
	wait := rendezvous.WaitForever
	if preferred, bounded := util.ParsePreferWait(r.Header); bounded {
		wait = min(preferred, maxPollWait)
	}
	if p.detach(w, r, client, wait, started) {
		return false
	}
	work, err := p.hub.Poll(r.Context(), client, wait)
	p.answerPoll(r.Context(), w, client, wait, work, err)
	return true
}

// answerPoll answers a poll with what the hub's Poll returned. ctx ends
// when the client's connection does.
func (p *proxy) answerPoll(ctx context.Context, w http.ResponseWriter, client rendezvous.Client, wait time.Duration, work *rendezvous.Work, err error) {
	switch {
	case errors.Is(err, rendezvous.ErrNoWork):
		p.metrics.pollsEmpty.Inc()
		w.Header().Set(util.HeaderPreferenceApplied, "wait="+strconv.Itoa(int(wait/time.Second)))
		w.WriteHeader(http.StatusNoContent)
		return
	case errors.Is(err, rendezvous.ErrPollGone):
		abandonPoll(w)
		return
	case errors.Is(err, rendezvous.ErrShuttingDown):
		w.Header().Set("Connection", "close")
		httpError(w, http.StatusRequestTimeout, "poll given up: %v", err)
		return
	case err != nil:
		p.metrics.countRegistrationRefused(err)
		code, _ := hubError(err)
		httpError(w, code, "poll refused: %v", err)
		return
	}
	if err := deliver(ctx, w, work); err != nil {
		level.Debug(p.logger).Log("msg", "poll gone before its scrape was delivered, scrape requeued", "fqdn", client.FQDN, "scrape_id", work.ID, "err", err)
		work.Undelivered()
		return
	}
	work.Delivered()
	level.Debug(p.logger).Log("msg", "scrape handed to client", "fqdn", client.FQDN, "scrape_id", work.ID)
}

// clientError is a poll or tunnel request that names no acceptable client.
type clientError struct {
	code int
	err  error
}

func (e *clientError) Error() string { return e.err.Error() }

// clientErrorStatus is the status for an error of clientOf.
func clientErrorStatus(err error) int {
	var ce *clientError
	if errors.As(err, &ce) {
		return ce.code
	}
	return http.StatusBadRequest
}

// clientOf checks who a poll or tunnel request says it is: its FQDN, its
// labels, and that its credentials may answer for that FQDN.
func (p *proxy) clientOf(r *http.Request, rawFQDN string) (rendezvous.Client, error) {
	fqdn, err := util.ParseFQDN(rawFQDN)
	if err != nil {
		return rendezvous.Client{}, &clientError{http.StatusBadRequest, fmt.Errorf("bad poll: %w", err)}
	}
	labels, err := util.DecodeLabels(r.Header.Get(util.HeaderLabels))
	if err != nil {
		return rendezvous.Client{}, &clientError{http.StatusBadRequest, fmt.Errorf("bad poll: %w", err)}
	}
	if err := p.authorizePoll(r, fqdn); err != nil {
		return rendezvous.Client{}, &clientError{http.StatusForbidden, err}
	}
	identity := requestIdentity(r)
	client := rendezvous.Client{FQDN: fqdn, Labels: labels, Identity: identity, Owner: targetsOwner(r, identity, fqdn)}
	return client, p.pollTarget(r, &client)
}

// abandonPoll answers a poll whose connection looks gone. Usually nobody
// reads the answer; if the client is there after all, it gets a clear
// failure rather than an empty 200.
func abandonPoll(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	w.WriteHeader(http.StatusServiceUnavailable)
}

// deliver answers a poll with a scrape request.
func deliver(ctx context.Context, w http.ResponseWriter, work *rendezvous.Work) error {
	if err := ctx.Err(); err != nil {
		abandonPoll(w)
		return err
	}
	rc := http.NewResponseController(w)
	// A client that stops reading cannot hold the scrape past its deadline.
	_ = rc.SetWriteDeadline(work.Deadline)
	w.Header().Set("Content-Type", "application/http")
	w.Header().Set("Content-Length", strconv.Itoa(len(work.Request)))
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(work.Request); err != nil {
		return err
	}
	return rc.Flush()
}

// handlePush takes a client's answer to a scrape and streams it to the
// waiting Prometheus request.
func (p *proxy) handlePush(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	// No scrape lives longer than the maximum timeout, so neither may a push.
	_ = rc.SetReadDeadline(time.Now().Add(p.cfg.maxTimeout))
	body := http.MaxBytesReader(w, r.Body, p.cfg.maxPushBytes)
	resp, err := util.DecodeAnswer(body)
	if err != nil {
		p.rejectPush(w, "malformed", readErrorStatus(err), "push body is not an answer: %v", err)
		return
	}
	id := resp.Header.Get(util.HeaderID)
	claim, err := p.hub.Claim(id, requestIdentity(r))
	if err != nil {
		code, _ := hubError(err)
		p.rejectPush(w, pushRejectReason(err), code, "scrape %q: %v", id, err)
		return
	}
	if resp.ContentLength > p.cfg.maxPushBytes {
		// Known to be too large before a byte is relayed: Prometheus
		// gets the reason rather than a truncated body.
		resp.Body = io.NopCloser(http.NoBody)
		tooLarge := util.ErrorAnswer(fmt.Errorf("client's answer of %d bytes exceeds the proxy's --push.max-body-size of %d bytes", resp.ContentLength, p.cfg.maxPushBytes))
		tooLarge.StatusCode = http.StatusBadGateway
		tooLarge.Header.Set(util.HeaderID, id)
		_ = claim.Deliver(tooLarge, nil)
		p.rejectPush(w, "too_large", http.StatusRequestEntityTooLarge, "scrape %q: pushed body of %d bytes exceeds %d bytes", id, resp.ContentLength, p.cfg.maxPushBytes)
		return
	}
	// Reading the push stops when Prometheus stops waiting. A read deadline
	// that passes once net/http has the whole body also cancels the
	// context of every later request on this connection (its background
	// read fails), so a push cut that way closes its connection after the
	// answer.
	deadline := claim.Deadline()
	_ = rc.SetReadDeadline(deadline)
	answerBody := &endReader{ReadCloser: resp.Body}
	resp.Body = answerBody
	err = claim.Deliver(resp, func() {
		if answerBody.ended.Load() {
			// Prometheus went away once it had the whole answer, before
			// the relay reported its end: nothing is left to stop.
			return
		}
		// Prometheus went away during the relay: end its read of this
		// push now, not at the scrape's deadline. If net/http had read the
		// whole body, though the relay had not seen its end, the cut hits
		// net/http's background read, which cancels the context of every
		// later request on this connection: so it is not reused.
		w.Header().Set("Connection", "close")
		_ = rc.SetReadDeadline(time.Now())
	})
	_ = rc.SetReadDeadline(time.Time{})
	if err != nil || !time.Now().Before(deadline) {
		w.Header().Set("Connection", "close")
	}
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		w.WriteHeader(http.StatusOK)
	case errors.Is(err, rendezvous.ErrExpiredID):
		p.rejectPush(w, "expired", http.StatusGone, "scrape %q: %v", id, err)
	case errors.As(err, &tooBig):
		p.rejectPush(w, "too_large", http.StatusRequestEntityTooLarge, "scrape %q: pushed body exceeds %d bytes", id, tooBig.Limit)
	default:
		p.rejectPush(w, "undelivered", http.StatusBadGateway, "scrape %q: relaying to Prometheus failed: %v", id, err)
	}
}

// endReader notes when its reader has come to the end.
type endReader struct {
	io.ReadCloser
	ended atomic.Bool
}

func (r *endReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err == io.EOF {
		r.ended.Store(true)
	}
	return n, err
}

// pushRejectReason is the reason label of a push refused by the hub.
func pushRejectReason(err error) string {
	switch {
	case errors.Is(err, rendezvous.ErrExpiredID):
		return "expired"
	case errors.Is(err, rendezvous.ErrWrongClient):
		return "forbidden"
	}
	return "unknown_id"
}

func (p *proxy) rejectPush(w http.ResponseWriter, reason string, code int, format string, args ...any) {
	p.metrics.pushesRejected.WithLabelValues(reason).Inc()
	level.Debug(p.logger).Log("msg", "push rejected", "reason", reason, "err", fmt.Sprintf(format, args...))
	// The rest of a refused push is not read: the connection closes.
	w.Header().Set("Connection", "close")
	httpError(w, code, format, args...)
}
