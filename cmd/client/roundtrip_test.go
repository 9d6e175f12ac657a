package main

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/rancher/pushprox/util"
)

func TestRoundTripThroughRealProxy(t *testing.T) {
	const metrics = "# TYPE node_up gauge\nnode_up 1\n# EOF\n"
	compressed := gzipped(t, metrics)
	targetSaw := make(chan http.Header, 16)
	target := startTarget(t, false, func(w http.ResponseWriter, r *http.Request) {
		targetSaw <- r.Header.Clone()
		switch r.URL.Path {
		case "/metrics":
			w.Header().Set("Content-Type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
			w.Header().Set("X-Target", "node")
			if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
				w.Header().Set("Content-Encoding", "gzip")
				_, _ = w.Write(compressed)
				return
			}
			_, _ = io.WriteString(w, metrics)
		default:
			http.Error(w, "no such page", http.StatusNotFound)
		}
	})
	targetPort := port(t, target)
	otherPort := "9100"
	if otherPort == targetPort {
		otherPort = "9101"
	}

	proxyURL := realProxy(t)
	// The client registers as a name that does not resolve and scrapes
	// 127.0.0.1, as on a node whose exporter listens on loopback only.
	cfg := testConfig(proxyURL, "node.example")
	cfg.useLocalhost = true
	cfg.allowPort = targetPort
	startClient(t, cfg)

	// scraper plays Prometheus, which leaves compression to the target.
	scraper := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableCompression: true}}
	t.Cleanup(scraper.CloseIdleConnections)

	for _, tc := range []struct {
		name          string
		url           string
		header        http.Header
		wantStatus    int
		wantBody      []byte // exact, unless wantText is set
		wantText      string // contained in the body
		wantHeader    http.Header
		reachesTarget bool
	}{
		{
			name: "metrics with Prometheus' headers",
			url:  "http://node.example:" + targetPort + "/metrics",
			header: http.Header{
				"Accept":                        {"application/openmetrics-text;version=1.0.0"},
				"Authorization":                 {"Bearer for-the-target"},
				util.HeaderScrapeTimeoutSeconds: {"10"},
			},
			wantStatus:    http.StatusOK,
			wantBody:      []byte(metrics),
			wantHeader:    http.Header{"X-Target": {"node"}, "Content-Type": {"application/openmetrics-text; version=1.0.0; charset=utf-8"}},
			reachesTarget: true,
		},
		{
			name:          "no timeout header",
			url:           "http://node.example:" + targetPort + "/metrics",
			wantStatus:    http.StatusOK,
			wantBody:      []byte(metrics),
			reachesTarget: true,
		},
		{
			name:          "gzip byte for byte",
			url:           "http://node.example:" + targetPort + "/metrics",
			header:        http.Header{"Accept-Encoding": {"gzip"}, util.HeaderScrapeTimeoutSeconds: {"10"}},
			wantStatus:    http.StatusOK,
			wantBody:      compressed,
			wantHeader:    http.Header{"Content-Encoding": {"gzip"}},
			reachesTarget: true,
		},
		{
			name:          "target's error status",
			url:           "http://node.example:" + targetPort + "/nowhere",
			wantStatus:    http.StatusNotFound,
			wantText:      "no such page",
			reachesTarget: true,
		},
		{
			name:       "refused port",
			url:        "http://node.example:" + otherPort + "/metrics",
			wantStatus: http.StatusInternalServerError,
			wantText:   "port " + otherPort + " is not allowed",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, tc.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			for name, values := range tc.header {
				req.Header[name] = values
			}
			resp, err := scraper.Do(req)
			if err != nil {
				t.Fatalf("scrape: %v", err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("reading scrape: %v", err)
			}
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("status %s, want %d; body %q", resp.Status, tc.wantStatus, body)
			}
			if tc.wantText != "" && !strings.Contains(string(body), tc.wantText) {
				t.Errorf("body %q, want it to contain %q", body, tc.wantText)
			}
			if tc.wantText == "" && !bytes.Equal(body, tc.wantBody) {
				t.Errorf("body %q, want %q", body, tc.wantBody)
			}
			for name := range tc.wantHeader {
				if got := resp.Header.Get(name); got != tc.wantHeader.Get(name) {
					t.Errorf("header %s = %q, want %q", name, got, tc.wantHeader.Get(name))
				}
			}
			for _, name := range []string{util.HeaderID, util.HeaderScrapeTimeout, util.HeaderScrapeTimeoutSeconds} {
				if v := resp.Header.Get(name); v != "" {
					t.Errorf("internal header %s reached Prometheus: %q", name, v)
				}
			}
			if !tc.reachesTarget {
				select {
				case h := <-targetSaw:
					t.Errorf("target was contacted: %v", h)
				default:
				}
				return
			}
			var saw http.Header
			select {
			case saw = <-targetSaw:
			default:
				// The target answered before Prometheus got its answer.
				t.Fatal("target was not contacted")
			}
			for _, name := range []string{"Accept", "Authorization", "Accept-Encoding"} {
				if saw.Get(name) != req.Header.Get(name) {
					t.Errorf("target saw %s %q, want %q", name, saw.Get(name), req.Header.Get(name))
				}
			}
			if v := saw.Get(util.HeaderID); v != "" {
				t.Errorf("target saw Id %q", v)
			}
		})
	}
}
