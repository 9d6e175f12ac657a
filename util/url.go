package util

import (
	"fmt"
	"net/url"
)

// Paths of the proxy's endpoints for clients.
const (
	PollPath = "poll"
	PushPath = "push"
)

// ParseProxyURL parses the base URL of a proxy, as given to the client.
func ParseProxyURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("invalid proxy URL %q: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("invalid proxy URL %q: scheme must be http or https", raw)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("invalid proxy URL %q: no host", raw)
	}
	return u, nil
}

// ResolveProxyPath returns the URL of an endpoint below a proxy's base URL,
// whether or not the base ends in a slash: http://p/x and http://p/x/ both
// give http://p/x/poll.
func ResolveProxyPath(base *url.URL, path string) *url.URL {
	u := base.JoinPath(path)
	u.RawQuery = base.RawQuery
	u.Fragment = ""
	return u
}
