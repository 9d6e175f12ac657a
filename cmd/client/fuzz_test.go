package main

import (
	"io"
	"net/http"
	"testing"

	"github.com/rancher/pushprox/util"
)

// FuzzParseScrapeRequest feeds arbitrary poll answers to the parser: it must
// not panic, and whatever it accepts must be something the client can scrape,
// or a CONNECT with its target, which the client refuses with the reason.
func FuzzParseScrapeRequest(f *testing.F) {
	for _, seed := range []string{
		"GET http://node1:9100/metrics HTTP/1.1\r\nHost: node1:9100\r\nId: 1\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n",
		"GET http://node1:9100/metrics?_scheme=https&collect%5B%5D=cpu HTTP/1.1\r\nHost: node1:9100\r\nId: 2\r\nAccept-Encoding: gzip\r\n\r\n",
		"POST http://[::1]:9100/probe HTTP/1.1\r\nHost: [::1]:9100\r\nId: 3\r\nContent-Length: 5\r\n\r\nhello",
		"POST http://node1/x HTTP/1.1\r\nHost: node1\r\nId: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"GET /metrics HTTP/1.1\r\nHost: node1\r\nId: 5\r\n\r\n",
		"CONNECT node1:443 HTTP/1.1\r\nHost: node1:443\r\nId: 6\r\n\r\n",
		"GET http://node1:9100/metrics HTTP/1.1\r\nHost: node1:9100\r\n\r\n",
		"<html><body>502 Bad Gateway</body></html>",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := parseScrapeRequest(body)
		if err != nil {
			if req != nil {
				t.Fatalf("request returned with error %v", err)
			}
			return
		}
		switch {
		case req.Method == http.MethodConnect:
			if req.Host == "" {
				t.Fatalf("accepted a CONNECT without a target")
			}
		case !req.URL.IsAbs() || req.URL.Host == "":
			t.Fatalf("accepted request for %q, which is not an absolute URL", req.URL)
		}
		if req.Header.Get(util.HeaderID) == "" {
			t.Fatalf("accepted request without %s", util.HeaderID)
		}
		// The body was read with the request: reading it again cannot fail.
		if _, err := io.ReadAll(req.Body); err != nil {
			t.Fatalf("reading accepted request's body: %v", err)
		}
	})
}
