package util

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ScrapeTimeout returns the effective timeout of a scrape: the
// X-Prometheus-Scrape-Timeout-Seconds header when it parses as a positive
// number of seconds, else def; then clamped to at most max.
func ScrapeTimeout(h http.Header, def, max time.Duration) time.Duration {
	timeout, err := HeaderTimeout(h, HeaderScrapeTimeoutSeconds)
	if err != nil {
		timeout = def
	}
	if timeout > max {
		timeout = max
	}
	return timeout
}

// AnswerMargin is how long before a scrape's timeout the proxy stops
// waiting for a client and answers Prometheus itself: a tenth of the
// timeout, at most half a second. Prometheus then reads the proxy's reason
// instead of running into its own timeout.
func AnswerMargin(timeout time.Duration) time.Duration {
	return min(timeout/10, 500*time.Millisecond)
}

// TargetTimeout is how long a client gives the target of a scrape with the
// given timeout: two answer margins less, so that the reason for a target
// that does not answer in time still reaches the proxy before it stops
// waiting.
func TargetTimeout(timeout time.Duration) time.Duration {
	return timeout - 2*AnswerMargin(timeout)
}

// HeaderTimeout parses the named header as a positive, finite number of
// seconds.
func HeaderTimeout(h http.Header, name string) (time.Duration, error) {
	value := strings.TrimSpace(h.Get(name))
	if value == "" {
		return 0, fmt.Errorf("missing %s header", name)
	}
	seconds, err := strconv.ParseFloat(value, 64)
	if err != nil || math.IsNaN(seconds) || math.IsInf(seconds, 0) || seconds <= 0 {
		return 0, fmt.Errorf("invalid %s header %q: want a positive number of seconds", name, value)
	}
	// Durations beyond about 292 years overflow; nobody means them.
	if seconds > math.MaxInt64/float64(time.Second) {
		return time.Duration(math.MaxInt64), nil
	}
	timeout := time.Duration(seconds * float64(time.Second))
	if timeout <= 0 {
		return 0, fmt.Errorf("invalid %s header %q: shorter than a nanosecond", name, value)
	}
	return timeout, nil
}

// FormatSeconds renders d as the seconds value of a timeout header.
func FormatSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
}

// ParsePreferWait returns the wait=N preference of RFC 7240 Prefer headers,
// and whether one was given.
func ParsePreferWait(h http.Header) (time.Duration, bool) {
	for _, value := range h.Values(HeaderPrefer) {
		for _, pref := range strings.Split(value, ",") {
			// Parameters of a preference follow a ';' and do not matter here.
			pref, _, _ = strings.Cut(pref, ";")
			name, arg, ok := strings.Cut(strings.TrimSpace(pref), "=")
			if !ok || !strings.EqualFold(strings.TrimSpace(name), "wait") {
				continue
			}
			seconds, err := strconv.ParseUint(strings.Trim(strings.TrimSpace(arg), `"`), 10, 32)
			if err != nil {
				continue
			}
			return time.Duration(seconds) * time.Second, true
		}
	}
	return 0, false
}
