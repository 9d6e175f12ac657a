package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/go-kit/log/level"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/rancher/pushprox/internal/rendezvous"
	"github.com/rancher/pushprox/util"
)

// connectDialTimeout bounds how long a client may take to connect to the
// target of a CONNECT before the proxy answers 502.
const connectDialTimeout = 10 * time.Second

// connectMetrics count the CONNECT tunnels carried to clients.
type connectMetrics struct {
	opened  prometheus.Counter
	refused *prometheus.CounterVec
	open    prometheus.Gauge
	bytes   *prometheus.CounterVec
}

// Causes of refused CONNECTs, the values of the cause label.
const (
	connectBadRequest = "bad_request"
	connectNoClient   = "no_client"
	connectPollOnly   = "poll_only"
	connectTooMany    = "too_many"
	connectClientFail = "client_unreachable"
	connectForbidden  = "forbidden"
	connectDialFail   = "dial_failed"
	connectShutdown   = "shutting_down"
)

func newConnectMetrics(reg prometheus.Registerer) *connectMetrics {
	factory := promauto.With(reg)
	m := &connectMetrics{
		opened: factory.NewCounter(prometheus.CounterOpts{
			Name: "pushprox_proxy_connect_tunnels_opened_total",
			Help: "CONNECT tunnels established to a target through a client.",
		}),
		refused: factory.NewCounterVec(prometheus.CounterOpts{
			Name: "pushprox_proxy_connect_tunnels_refused_total",
			Help: "CONNECT requests refused, by cause.",
		}, []string{"cause"}),
		open: factory.NewGauge(prometheus.GaugeOpts{
			Name: "pushprox_proxy_connect_tunnels_open",
			Help: "CONNECT tunnels open now.",
		}),
		bytes: factory.NewCounterVec(prometheus.CounterOpts{
			Name: "pushprox_proxy_connect_bytes_total",
			Help: "Bytes carried by CONNECT tunnels, by direction: to_target (from Prometheus) and from_target.",
		}, []string{"direction"}),
	}
	for _, cause := range []string{connectBadRequest, connectNoClient, connectPollOnly, connectTooMany, connectClientFail, connectForbidden, connectDialFail, connectShutdown} {
		m.refused.WithLabelValues(cause)
	}
	m.bytes.WithLabelValues("to_target")
	m.bytes.WithLabelValues("from_target")
	return m
}

// streamOpener is a carrier that can open a byte stream to a target
// through its client: a tunnel.
type streamOpener interface {
	Connect(ctx context.Context, id, target string, dialTimeout time.Duration) (util.SpliceConn, *http.Response, error)
}

// handleConnect carries a CONNECT from Prometheus to a tunnel client of the
// target's host, which dials the target; once it has, the bytes pass
// untouched both ways, so that TLS runs from Prometheus to the target.
// Refusals are answered at once with the reason.
func (p *proxy) handleConnect(w http.ResponseWriter, r *http.Request) {
	refuse := func(cause string, code int, format string, args ...any) {
		p.connects.refused.WithLabelValues(cause).Inc()
		level.Debug(p.logger).Log("msg", "connect refused", "target", r.Host, "cause", cause, "err", fmt.Sprintf(format, args...))
		httpError(w, code, format, args...)
	}
	host, port, err := net.SplitHostPort(r.Host)
	if err != nil || port == "" {
		refuse(connectBadRequest, http.StatusBadRequest, "bad CONNECT target %q: want host:port", r.Host)
		return
	}
	fqdn, err := util.ParseFQDN(host)
	if err != nil {
		refuse(connectBadRequest, http.StatusBadRequest, "bad CONNECT target: %v", err)
		return
	}
	if p.connectsOpen.Add(1) > int64(p.cfg.connectMaxTotal) {
		p.connectsOpen.Add(-1)
		refuse(connectTooMany, http.StatusServiceUnavailable, "too many CONNECT tunnels open (--connect.max-total=%d)", p.cfg.connectMaxTotal)
		return
	}
	defer p.connectsOpen.Add(-1)
	carrier, release, err := p.hub.Stream(fqdn, port, p.cfg.connectMaxPerClient)
	switch {
	case errors.Is(err, rendezvous.ErrPollOnly):
		refuse(connectPollOnly, http.StatusBadGateway, "client %q: %v", fqdn, err)
		return
	case errors.Is(err, rendezvous.ErrTooManyStreams):
		refuse(connectTooMany, http.StatusServiceUnavailable, "client %q: %v (--connect.max-per-client=%d)", fqdn, err, p.cfg.connectMaxPerClient)
		return
	case errors.Is(err, rendezvous.ErrShuttingDown):
		refuse(connectShutdown, http.StatusServiceUnavailable, "%v", err)
		return
	case errors.Is(err, rendezvous.ErrClientIdle):
		refuse(connectNoClient, http.StatusServiceUnavailable, "client %q is known but has no tunnel open", fqdn)
		return
	case err != nil:
		refuse(connectNoClient, http.StatusServiceUnavailable, "no client connected as %q", fqdn)
		return
	}
	defer release()
	opener, ok := carrier.(streamOpener)
	if !ok {
		refuse(connectPollOnly, http.StatusBadGateway, "client %q cannot carry a CONNECT", fqdn)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), connectDialTimeout+time.Second)
	defer cancel()
	remote, answer, err := opener.Connect(ctx, uuid.NewString(), r.Host, connectDialTimeout)
	if err != nil {
		refuse(connectClientFail, http.StatusBadGateway, "client %q could not be reached through its tunnel: %v", fqdn, err)
		return
	}
	if answer.StatusCode != http.StatusOK {
		reason, _ := io.ReadAll(io.LimitReader(answer.Body, 4<<10))
		remote.Close()
		cause := connectDialFail
		if answer.StatusCode == http.StatusForbidden {
			cause = connectForbidden
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(reason)), "\n")
		refuse(cause, answer.StatusCode, "client %q: %s", fqdn, line)
		return
	}
	conn, buffered, err := http.NewResponseController(w).Hijack()
	if err != nil {
		remote.Close()
		refuse(connectBadRequest, http.StatusInternalServerError, "cannot take over the connection: %v", err)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		conn.Close()
		remote.Close()
		return
	}
	p.connects.opened.Inc()
	p.connects.open.Inc()
	defer p.connects.open.Dec()
	toTarget, fromTarget := p.connects.bytes.WithLabelValues("to_target"), p.connects.bytes.WithLabelValues("from_target")
	prometheusSide := util.BufferedConn{SpliceConn: conn, Reader: buffered.Reader}
	util.Splice(prometheusSide, remote, p.cfg.connectIdleTimeout, func(forward bool, n int) {
		if forward {
			toTarget.Add(float64(n))
		} else {
			fromTarget.Add(float64(n))
		}
	})
}

// Connect opens a stream that asks the client to dial target, and reads
// its answer: 200 once connected, or the reason it did not. The returned
// connection is the stream from where the answer ends.
func (t *tunnel) Connect(ctx context.Context, id, target string, dialTimeout time.Duration) (util.SpliceConn, *http.Response, error) {
	stream, err := t.session.Open()
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { stream.Close() })
	defer stop()
	if _, err := stream.Write(util.EncodeConnectRequest(target, id, dialTimeout)); err != nil {
		stream.Close()
		return nil, nil, err
	}
	_ = stream.SetReadDeadline(time.Now().Add(dialTimeout + time.Second))
	reader := bufio.NewReaderSize(stream, 4<<10)
	resp, err := http.ReadResponse(reader, &http.Request{Method: http.MethodConnect})
	if err != nil {
		stream.Close()
		return nil, nil, err
	}
	_ = stream.SetReadDeadline(time.Time{})
	if ctx.Err() != nil {
		stream.Close()
		return nil, nil, ctx.Err()
	}
	return util.BufferedConn{SpliceConn: stream, Reader: reader}, resp, nil
}
