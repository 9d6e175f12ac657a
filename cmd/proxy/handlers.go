package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rancher/pushprox/util"
)

const (
	// maxPollBody bounds a poll body, which holds only an FQDN.
	maxPollBody = 4 << 10
	// maxPushHead bounds the status line and headers of a pushed response.
	maxPushHead = 1 << 20
	// maxScrapeBody bounds the body of a proxied request; scrapes are GETs.
	maxScrapeBody = 1 << 20
	// bodyReadTimeout bounds the time to read a poll body.
	bodyReadTimeout = 30 * time.Second
	// maxPollWait bounds a client's wait preference.
	maxPollWait = 10 * time.Minute
)

// proxy serves Prometheus' proxy requests and the clients' polls and pushes.
type proxy struct {
	cfg     config
	logger  log.Logger
	coord   *coordinator
	metrics *metrics
	mux     *http.ServeMux
}

func newProxy(cfg config, logger log.Logger, reg prometheus.Registerer, gatherer prometheus.Gatherer) *proxy {
	clock := cfg.clock
	if clock == nil {
		clock = time.Now
	}
	coord := newCoordinator(logger, cfg.registrationTimeout, cfg.maxClients, clock)
	p := &proxy{
		cfg:     cfg,
		logger:  logger,
		coord:   coord,
		metrics: newMetrics(reg, coord),
		mux:     http.NewServeMux(),
	}
	p.mux.Handle("POST /poll", p.metrics.instrument("/poll", p.handlePoll))
	p.mux.Handle("POST /push", p.metrics.instrument("/push", p.handlePush))
	p.mux.Handle("GET /clients", p.metrics.instrument("/clients", p.handleClients))
	p.mux.Handle("GET /metrics", p.metrics.instrument("/metrics",
		promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}).ServeHTTP))
	p.mux.HandleFunc("GET /-/healthy", handleHealthy)
	p.mux.HandleFunc("GET /-/ready", p.handleReady)
	p.mux.HandleFunc("GET /{$}", p.handleLandingPage)
	return p
}

// ServeHTTP routes proxy requests (absolute-form request targets) to the
// scrape handler and everything else to the proxy's own endpoints.
func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Host != "" || r.Method == http.MethodConnect {
		p.handleScrape(w, r)
		return
	}
	p.mux.ServeHTTP(w, r)
}

// shutdown stops taking polls and scrapes, answers parked polls, and waits
// until scrapes already handed to clients end or ctx does.
func (p *proxy) shutdown(ctx context.Context) error {
	p.coord.shutdown()
	return p.coord.drain(ctx)
}

// close stops the proxy's background work.
func (p *proxy) close() {
	p.coord.close()
}

// handlePoll parks a client's poll until a scrape for its FQDN arrives.
func (p *proxy) handlePoll(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	// A client that sends its FQDN byte by byte cannot hold a handler; the
	// deadline is lifted once the body is in, as a parked poll reads nothing.
	// On an error it stays, as net/http reads what is left of the body
	// before it answers.
	_ = rc.SetReadDeadline(time.Now().Add(cmp.Or(p.cfg.pollBodyTimeout, bodyReadTimeout)))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPollBody))
	if err != nil {
		httpError(w, readErrorStatus(err), "reading poll body: %v", err)
		return
	}
	_ = rc.SetReadDeadline(time.Time{})
	fqdn, err := util.ParseFQDN(string(body))
	if err != nil {
		httpError(w, http.StatusBadRequest, "bad poll: %v", err)
		return
	}
	labels, err := util.DecodeLabels(r.Header.Get(util.HeaderLabels))
	if err != nil {
		httpError(w, http.StatusBadRequest, "bad poll: %v", err)
		return
	}
	if err := p.authorizePoll(r, fqdn); err != nil {
		httpError(w, http.StatusForbidden, "%v", err)
		return
	}
	pl := &poll{ctx: r.Context(), fqdn: fqdn, labels: labels, identity: requestIdentity(r), handed: make(chan *scrape, 1)}
	s, err := p.coord.park(pl)
	if errors.Is(err, errTooManyLabelSets) || errors.Is(err, errTooManyClients) {
		httpError(w, http.StatusTooManyRequests, "poll refused: %v", err)
		return
	}
	if err != nil {
		httpError(w, http.StatusServiceUnavailable, "%v", err)
		return
	}
	defer p.coord.release(pl)
	if s == nil {
		s = p.waitForScrape(w, r, pl)
		if s == nil {
			return
		}
	}
	if err := p.deliver(w, r, s); err != nil {
		// The poll's connection ended before it could be answered.
		p.metrics.pollsCut.Inc()
		level.Debug(p.logger).Log("msg", "poll gone before its scrape was delivered, scrape requeued", "fqdn", fqdn, "scrape_id", s.id, "err", err)
		p.coord.requeue(s)
		return
	}
	level.Debug(p.logger).Log("msg", "scrape handed to client", "fqdn", fqdn, "scrape_id", s.id)
}

// waitForScrape waits for a scrape to be handed to a parked poll. It answers
// the poll itself and returns nil if none comes.
func (p *proxy) waitForScrape(w http.ResponseWriter, r *http.Request, pl *poll) *scrape {
	wait, bounded := util.ParsePreferWait(r.Header)
	var expired <-chan time.Time
	if bounded {
		wait = min(wait, maxPollWait)
		timer := time.NewTimer(wait)
		defer timer.Stop()
		expired = timer.C
	}
	select {
	case s := <-pl.handed:
		return s
	case <-r.Context().Done():
		// The client is gone, or something in between cut the poll; a
		// scrape handed meanwhile goes to another poll.
		p.metrics.pollsCut.Inc()
		if s := p.coord.unpark(pl); s != nil {
			p.coord.requeue(s)
		}
		abandonPoll(w)
		return nil
	case <-expired:
		if s := p.coord.unpark(pl); s != nil {
			return s
		}
		p.metrics.pollsEmpty.Inc()
		w.Header().Set(util.HeaderPreferenceApplied, "wait="+strconv.Itoa(int(wait/time.Second)))
		w.WriteHeader(http.StatusNoContent)
		return nil
	case <-p.coord.closed:
		if s := p.coord.unpark(pl); s != nil {
			return s
		}
		httpError(w, http.StatusRequestTimeout, "poll given up: %v", errShuttingDown)
		return nil
	}
}

// abandonPoll answers a poll whose connection looks gone. Usually nobody
// reads the answer; if the client is there after all, it gets a clear
// failure rather than an empty 200.
func abandonPoll(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	w.WriteHeader(http.StatusServiceUnavailable)
}

// deliver answers a poll with a scrape request.
func (p *proxy) deliver(w http.ResponseWriter, r *http.Request, s *scrape) error {
	if err := r.Context().Err(); err != nil {
		abandonPoll(w)
		return err
	}
	rc := http.NewResponseController(w)
	// A client that stops reading cannot hold the scrape past its deadline.
	_ = rc.SetWriteDeadline(s.deadline)
	w.Header().Set("Content-Type", "application/http")
	w.Header().Set("Content-Length", strconv.Itoa(len(s.head)))
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(s.head); err != nil {
		return err
	}
	return rc.Flush()
}

// handleScrape serves a Prometheus proxy request: it hands the scrape to a
// client of the target's FQDN and relays the client's answer.
func (p *proxy) handleScrape(w http.ResponseWriter, r *http.Request) {
	outcome, code := p.scrape(w, r)
	p.metrics.scrapes.WithLabelValues(outcome).Inc()
	p.metrics.proxied.WithLabelValues(strconv.Itoa(code)).Inc()
}

// scrape serves a proxy request and returns its outcome and status.
func (p *proxy) scrape(w http.ResponseWriter, r *http.Request) (outcome string, code int) {
	if r.Method == http.MethodConnect {
		return outcomeRefused, httpError(w, http.StatusMethodNotAllowed,
			"CONNECT is not supported: to scrape an HTTPS target, use plain http with the URL parameter _scheme=https")
	}
	fqdn, err := util.ParseFQDN(r.URL.Hostname())
	if err != nil {
		return outcomeRefused, httpError(w, http.StatusBadRequest, "bad scrape target: %v", err)
	}
	timeout := util.ScrapeTimeout(r.Header, p.cfg.defaultTimeout, p.cfg.maxTimeout)
	// The proxy gives up waiting for a client a little before Prometheus
	// does, so that Prometheus reads the reason instead of its own timeout.
	// A push already streaming may use the full timeout.
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
	head, err := scrapeRequest(r, id, timeout)
	if err != nil {
		return outcomeRefused, httpError(w, readErrorStatus(err), "bad scrape request: %v", err)
	}
	if rc != nil {
		_ = rc.SetReadDeadline(time.Time{})
	}
	s := &scrape{id: id, fqdn: fqdn, head: head, deadline: deadline, ctx: ctx, pushed: make(chan *pushed, 1)}
	if err := p.coord.submit(s); err != nil {
		return outcomeRefused, httpError(w, http.StatusServiceUnavailable, "%v", err)
	}
	defer func() {
		// A relay that aborts records its outcome itself.
		if outcome != "" {
			p.coord.recordOutcome(s, outcome)
		}
	}()
	closed := p.coord.closed
	for {
		select {
		case answer := <-s.pushed:
			if answer == nil {
				return outcomeRefused, httpError(w, http.StatusServiceUnavailable, "%v", errShuttingDown)
			}
			// handedAt was set under the coordinator's lock before the push
			// could take the scrape, so it is safe to read here.
			p.metrics.scrapeWait.Observe(s.handedAt.Sub(start).Seconds())
			p.metrics.scrapeClient.Observe(time.Since(s.handedAt).Seconds())
			return p.relay(w, s, answer)
		case <-closed:
			if p.coord.withdrawQueued(s) {
				return outcomeRefused, httpError(w, http.StatusServiceUnavailable, "%v", errShuttingDown)
			}
			// A client has the scrape; its push is still accepted.
			closed = nil
		case <-ctx.Done():
			handed := p.coord.withdraw(s)
			if r.Context().Err() != nil {
				return outcomeAborted, 499
			}
			if handed {
				return outcomeClientTimeout, httpError(w, http.StatusGatewayTimeout,
					"client %q took the scrape but did not answer within %s", fqdn, timeout)
			}
			if p.coord.known(fqdn) {
				return outcomeNoClient, httpError(w, http.StatusServiceUnavailable,
					"client %q is known but did not poll within %s", fqdn, timeout)
			}
			return outcomeNoClient, httpError(w, http.StatusServiceUnavailable,
				"no client connected as %q within %s", fqdn, timeout)
		}
	}
}

// scrapeRequest serializes the request a client will make: Prometheus'
// request in proxy form, without hop-by-hop headers, with the scrape's Id
// and effective timeout.
func scrapeRequest(r *http.Request, id string, timeout time.Duration) ([]byte, error) {
	out := r.Clone(r.Context())
	util.RemoveHopByHopHeaders(out.Header)
	util.RemoveInternalHeaders(out.Header)
	out.Header.Set(util.HeaderID, id)
	out.Header.Set(util.HeaderScrapeTimeoutSeconds, util.FormatSeconds(timeout))
	out.TransferEncoding = nil
	out.Close = false
	body, err := io.ReadAll(io.LimitReader(r.Body, maxScrapeBody+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxScrapeBody {
		return nil, &http.MaxBytesError{Limit: maxScrapeBody}
	}
	out.Body = io.NopCloser(bytes.NewReader(body))
	out.ContentLength = int64(len(body))
	if len(body) == 0 {
		out.Body = nil
	}
	var buf bytes.Buffer
	if err := out.WriteProxy(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// relay streams a client's pushed answer to Prometheus and reports the end
// of the copy to the push handler.
func (p *proxy) relay(w http.ResponseWriter, s *scrape, answer *pushed) (outcome string, code int) {
	resp := answer.resp
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
	_ = rc.SetWriteDeadline(s.deadline)
	w.WriteHeader(resp.StatusCode)
	// Copying through a plain io.Writer skips the ResponseWriter's content
	// sniffing, which would split a small answer into two writes.
	n, err := io.Copy(struct{ io.Writer }{w}, resp.Body)
	p.metrics.proxiedBytes.Add(float64(n))
	if err == nil {
		err = rc.Flush()
	}
	answer.done <- err
	if err != nil {
		level.Debug(p.logger).Log("msg", "relaying pushed scrape failed", "fqdn", s.fqdn, "scrape_id", s.id, "err", err)
		p.metrics.scrapes.WithLabelValues(outcomeAborted).Inc()
		p.metrics.proxied.WithLabelValues(strconv.Itoa(resp.StatusCode)).Inc()
		p.coord.recordOutcome(s, outcomeAborted)
		// Abort the response so that Prometheus sees a broken transfer,
		// not a complete but truncated body.
		panic(http.ErrAbortHandler)
	}
	if resp.StatusCode >= 500 {
		return outcomeTargetError, resp.StatusCode
	}
	return outcomeDelivered, resp.StatusCode
}

// handlePush takes a client's answer to a scrape and streams it to the
// waiting Prometheus request.
func (p *proxy) handlePush(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	// No scrape lives longer than the maximum timeout, so neither may a push.
	_ = rc.SetReadDeadline(time.Now().Add(p.cfg.maxTimeout))
	body := http.MaxBytesReader(w, r.Body, p.cfg.maxPushBytes)
	// The head is read under its own, smaller limit; the body then gets the
	// rest of the push limit.
	limited := &io.LimitedReader{R: body, N: maxPushHead}
	resp, err := http.ReadResponse(bufio.NewReader(limited), nil)
	if err != nil {
		p.rejectPush(w, "malformed", readErrorStatus(err), "push body is not an HTTP response: %v", err)
		return
	}
	limited.N = math.MaxInt64
	// Only a final status can be relayed: WriteHeader panics below 100, and
	// a 1xx would reach Prometheus as an empty 200.
	if resp.StatusCode < 200 {
		p.rejectPush(w, "malformed", http.StatusBadRequest, "pushed response has status %03d, not a final status", resp.StatusCode)
		return
	}
	id := resp.Header.Get(util.HeaderID)
	if id == "" {
		p.rejectPush(w, "malformed", http.StatusBadRequest, "pushed response has no %s header", util.HeaderID)
		return
	}
	s, err := p.coord.take(id, requestIdentity(r))
	switch {
	case errors.Is(err, errUnknownID):
		p.rejectPush(w, "unknown_id", http.StatusNotFound, "scrape %q: %v", id, err)
		return
	case errors.Is(err, errExpiredID):
		p.rejectPush(w, "expired", http.StatusGone, "scrape %q: %v", id, err)
		return
	case errors.Is(err, errWrongClient):
		p.rejectPush(w, "forbidden", http.StatusForbidden, "scrape %q: %v", id, err)
		return
	}
	// Reading the push stops when Prometheus stops waiting. A read deadline
	// that passes once the body is read to its end also cancels the
	// context of every later request on this connection (net/http's
	// background read fails), so such a connection is closed after the
	// answer rather than reused.
	_ = rc.SetReadDeadline(s.deadline)
	answer := &pushed{resp: resp, done: make(chan error, 1)}
	s.pushed <- answer
	select {
	case err = <-answer.done:
	case <-s.ctx.Done():
		select {
		case err = <-answer.done:
			// The relay ended as the scrape did.
		case <-s.pushed:
			// Prometheus went away before the answer was picked up.
			w.Header().Set("Connection", "close")
			p.rejectPush(w, "expired", http.StatusGone, "scrape %q: %v", id, errExpiredID)
			return
		default:
			if errors.Is(s.ctx.Err(), context.Canceled) {
				// Prometheus went away during the relay: end its read
				// of this push now, not at the scrape's deadline. If the
				// body was all read, the cut hits net/http's background
				// read, which cancels the context of every later request
				// on this connection: so it is not reused.
				w.Header().Set("Connection", "close")
				_ = rc.SetReadDeadline(time.Now())
			}
			// Otherwise the relay may use the full timeout.
			err = <-answer.done
		}
	}
	_ = rc.SetReadDeadline(time.Time{})
	if err != nil || !time.Now().Before(s.deadline) {
		w.Header().Set("Connection", "close")
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			p.rejectPush(w, "too_large", http.StatusRequestEntityTooLarge, "scrape %q: pushed body exceeds %d bytes", id, tooBig.Limit)
			return
		}
		p.rejectPush(w, "undelivered", http.StatusBadGateway, "scrape %q: relaying to Prometheus failed: %v", id, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (p *proxy) rejectPush(w http.ResponseWriter, reason string, code int, format string, args ...any) {
	p.metrics.pushesRejected.WithLabelValues(reason).Inc()
	level.Debug(p.logger).Log("msg", "push rejected", "reason", reason, "err", fmt.Sprintf(format, args...))
	// The rest of a refused push is not read: the connection closes.
	w.Header().Set("Connection", "close")
	httpError(w, code, format, args...)
}

// clientGroup is a target group of Prometheus' file_sd and http_sd formats.
type clientGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// handleClients lists the known clients as file_sd and http_sd target
// groups. Query parameters label=name=value keep only clients with those
// labels.
func (p *proxy) handleClients(w http.ResponseWriter, r *http.Request) {
	filter := map[string]string{}
	for _, pair := range r.URL.Query()["label"] {
		name, value, err := util.ParseLabel(pair)
		if err != nil {
			httpError(w, http.StatusBadRequest, "bad label filter: %v", err)
			return
		}
		filter[name] = value
	}
	groups := []clientGroup{}
	for _, client := range p.coord.clientList() {
		if matchLabels(client.Labels, filter) {
			groups = append(groups, clientGroup{Targets: []string{client.FQDN}, Labels: client.Labels})
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(groups); err != nil {
		level.Debug(p.logger).Log("msg", "writing client list failed", "err", err)
	}
}

// matchLabels reports whether labels has every name and value of filter.
func matchLabels(labels, filter map[string]string) bool {
	for name, value := range filter {
		if got, ok := labels[name]; !ok || got != value {
			return false
		}
	}
	return true
}

// httpError answers with a one-line plain text reason and returns the code.
func httpError(w http.ResponseWriter, code int, format string, args ...any) int {
	http.Error(w, fmt.Sprintf(format, args...), code)
	return code
}

// readErrorStatus maps an error reading a request body to a status.
func readErrorStatus(err error) int {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusBadRequest
}
