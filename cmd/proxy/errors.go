package main

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/rancher/pushprox/internal/rendezvous"
)

// Outcomes of a proxied scrape, the values of the outcome label.
const (
	outcomeDelivered     = "delivered"      // the client's answer reached Prometheus
	outcomeTargetError   = "target_error"   // the client answered a 5xx: target down or scrape refused
	outcomeNoClient      = "no_client"      // no carrier of the FQDN took it in time
	outcomeClientTimeout = "client_timeout" // a client took the scrape but did not answer in time
	outcomeAborted       = "aborted"        // Prometheus went away, or the transfer broke
	outcomeRefused       = "refused"        // bad request, or the proxy is shutting down
)

// hubErrors maps each error of the rendezvous to the status answered and
// the outcome counted for it: the one place where they meet HTTP.
var hubErrors = []struct {
	err     error
	code    int
	outcome string
}{
	{rendezvous.ErrShuttingDown, http.StatusServiceUnavailable, outcomeRefused},
	{rendezvous.ErrTooManyClients, http.StatusTooManyRequests, outcomeRefused},
	{rendezvous.ErrTooManyLabelSets, http.StatusTooManyRequests, outcomeRefused},
	{rendezvous.ErrNoClient, http.StatusServiceUnavailable, outcomeNoClient},
	{rendezvous.ErrClientIdle, http.StatusServiceUnavailable, outcomeNoClient},
	{rendezvous.ErrClientTimeout, http.StatusGatewayTimeout, outcomeClientTimeout},
	{rendezvous.ErrClientLost, http.StatusBadGateway, outcomeClientTimeout},
	{rendezvous.ErrAbandoned, 499, outcomeAborted},
	{rendezvous.ErrPollGone, http.StatusServiceUnavailable, outcomeAborted},
	{rendezvous.ErrUnknownID, http.StatusNotFound, outcomeRefused},
	{rendezvous.ErrExpiredID, http.StatusGone, outcomeRefused},
	{rendezvous.ErrWrongClient, http.StatusForbidden, outcomeRefused},
}

// hubError returns the status and outcome of an error of the rendezvous;
// anything else is an internal error.
func hubError(err error) (code int, outcome string) {
	for _, e := range hubErrors {
		if errors.Is(err, e.err) {
			return e.code, e.outcome
		}
	}
	return http.StatusInternalServerError, outcomeRefused
}

// countRegistrationRefused counts a registration the hub refused, if err
// says it did.
func (m *metrics) countRegistrationRefused(err error) {
	switch {
	case errors.Is(err, rendezvous.ErrTooManyClients):
		m.registrationsRefused.WithLabelValues(refusedTooManyClients).Inc()
	case errors.Is(err, rendezvous.ErrTooManyLabelSets):
		m.registrationsRefused.WithLabelValues(refusedTooManyLabelSets).Inc()
	}
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
