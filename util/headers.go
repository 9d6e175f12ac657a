// Package util holds what the proxy and the client share: the names of the
// protocol's headers, the timeout rule, URL joining and FQDN validation.
package util

import (
	"net/http"
	"strings"
)

// Header names of the PushProx wire protocol.
const (
	// HeaderID names the scrape in the request handed to a client and in the
	// response it pushes back.
	HeaderID = "Id"
	// HeaderScrapeTimeoutSeconds carries the effective scrape timeout, in
	// seconds, from Prometheus (and the proxy) to the client.
	HeaderScrapeTimeoutSeconds = "X-Prometheus-Scrape-Timeout-Seconds"
	// HeaderScrapeTimeout carries the seconds left of the scrape's timeout
	// from the client back to the proxy.
	HeaderScrapeTimeout = "X-Prometheus-Scrape-Timeout"
	// HeaderPrefer is the RFC 7240 header a client uses to bound its poll.
	HeaderPrefer = "Prefer"
	// HeaderPreferenceApplied acknowledges a honoured Prefer header.
	HeaderPreferenceApplied = "Preference-Applied"
)

// hopHeaders are meaningful for a single connection only (RFC 9110 §7.6.1).
// Proxy-Authorization is among them: credentials for the proxy must never
// reach a client or a target.
var hopHeaders = []string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// RemoveHopByHopHeaders deletes the hop-by-hop headers from h, including
// those named in its Connection header.
func RemoveHopByHopHeaders(h http.Header) {
	for _, value := range h.Values("Connection") {
		for _, name := range strings.Split(value, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}

// RemoveInternalHeaders deletes the protocol's own headers, which must not
// reach Prometheus.
func RemoveInternalHeaders(h http.Header) {
	h.Del(HeaderID)
	h.Del(HeaderScrapeTimeout)
	h.Del(HeaderScrapeTimeoutSeconds)
}
