package main

import (
	"errors"
	"fmt"
	"net"
	"path"
	"strings"
)

// allowRule is one --scrape.allow pattern, HOST:PORT/PATH, each part a
// path.Match glob: '*' matches within a part but never across '/'.
type allowRule struct {
	raw  string
	host string // lower case, without a trailing dot
	port string
	path string // starts with '/'
}

// allowList is the repeatable --scrape.allow flag. Empty, it allows every
// target, as before the flag existed; otherwise a target that matches no
// rule is refused, so that a compromised proxy cannot use the client to
// reach other services on its machine.
type allowList []allowRule

// Set implements kingpin.Value: it adds one rule.
func (l *allowList) Set(raw string) error {
	rule, err := parseAllowRule(raw)
	if err != nil {
		return err
	}
	*l = append(*l, rule)
	return nil
}

// String implements kingpin.Value.
func (l *allowList) String() string {
	raws := make([]string, len(*l))
	for i, rule := range *l {
		raws[i] = rule.raw
	}
	return strings.Join(raws, ",")
}

// IsCumulative makes the flag repeatable.
func (l *allowList) IsCumulative() bool { return true }

func parseAllowRule(raw string) (allowRule, error) {
	hostPort, rest, ok := strings.Cut(raw, "/")
	if !ok {
		return allowRule{}, fmt.Errorf("%q is not HOST:PORT/PATH (e.g. '*:9100/metrics')", raw)
	}
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil || host == "" || port == "" {
		return allowRule{}, fmt.Errorf("%q is not HOST:PORT/PATH (e.g. '*:9100/metrics')", raw)
	}
	rule := allowRule{raw: raw, host: normalizeHost(host), port: port, path: "/" + rest}
	for _, pattern := range []string{rule.host, rule.port, rule.path} {
		if _, err := path.Match(pattern, ""); err != nil {
			return allowRule{}, fmt.Errorf("%q: bad pattern %q: %w", raw, pattern, err)
		}
	}
	return rule, nil
}

// check says why a scrape of urlPath on host:port is refused, if it is.
func (l allowList) check(host, port, urlPath string) error {
	if err := l.match(host, port, urlPath); err != nil {
		return fmt.Errorf("scrape refused: %w", err)
	}
	return nil
}

// match says why urlPath on host:port, the host as the proxy names it (the
// FQDN, also under --use-localhost), matches no rule, if it does not. The
// query is not checked.
func (l allowList) match(host, port, urlPath string) error {
	if len(l) == 0 {
		return nil
	}
	if urlPath == "" {
		urlPath = "/"
	}
	target := net.JoinHostPort(host, port) + urlPath
	// A path with dot segments or doubled slashes could name another
	// resource on the target than the one its text matches.
	if cleaned := path.Clean(urlPath); cleaned != urlPath && cleaned+"/" != urlPath {
		return fmt.Errorf("target %s has a path that is not clean, which --scrape.allow does not accept", target)
	}
	host = normalizeHost(host)
	for _, rule := range l {
		if globMatch(rule.host, host) && globMatch(rule.port, port) && globMatch(rule.path, urlPath) {
			return nil
		}
	}
	return errors.New("target " + target + " is not allowed by --scrape.allow")
}

func globMatch(pattern, name string) bool {
	ok, _ := path.Match(pattern, name)
	return ok
}

// normalizeHost spells a host name as DNS compares it.
func normalizeHost(host string) string {
	return strings.ToLower(strings.TrimSuffix(host, "."))
}
