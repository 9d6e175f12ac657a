package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rancher/pushprox/util"
)

func TestLabelsAreAnnouncedWithEachPoll(t *testing.T) {
	fp := startFakeProxy(t)
	cfg := testConfig(fp.url(t), "node1.example")
	cfg.labels = map[string]string{"env": "prod", "rack": "r 12"}
	startClient(t, cfg)
	for i := 0; i < 2; i++ {
		if i > 0 {
			fp.answer(http.StatusNoContent, nil, "")
		}
		poll := fp.nextPoll(t)
		labels, err := util.DecodeLabels(poll.header.Get(util.HeaderLabels))
		if err != nil || labels["env"] != "prod" || labels["rack"] != "r 12" || len(labels) != 2 {
			t.Errorf("poll %d announced %q (%v)", i, poll.header.Get(util.HeaderLabels), err)
		}
	}
}

func TestLabelFlags(t *testing.T) {
	for _, tc := range []struct {
		name  string
		label string
		ok    bool
	}{
		{name: "valid", label: "env=prod", ok: true},
		{name: "empty value", label: "env=", ok: true},
		{name: "no value", label: "env", ok: false},
		{name: "reserved name", label: "__address__=x", ok: false},
		{name: "bad name", label: "1env=x", ok: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseFlags([]string{"--proxy-url=http://127.0.0.1:1", "--fqdn=node1", "--label=" + tc.label}, io.Discard)
			if (err == nil) != tc.ok {
				t.Errorf("--label=%s: err %v, want ok=%v", tc.label, err, tc.ok)
			}
		})
	}
}

// readiness fetches /-/ready from the client's metrics handler.
func readiness(t *testing.T, srv *httptest.Server) int {
	t.Helper()
	resp, err := http.Get(srv.URL + "/-/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestReadyWhilePollingSucceeds(t *testing.T) {
	fp := startFakeProxy(t)
	// The first poll fails; readiness waits for one that succeeds.
	fp.answer(http.StatusBadGateway, nil, "<html>bad gateway</html>")
	dead, _ := url.Parse("http://127.0.0.1:1/")
	cfg := testConfig(fp.url(t), "node1.example")
	cfg.proxyURLs = append(cfg.proxyURLs, dead)
	rc := startClient(t, cfg)
	srv := httptest.NewServer(rc.metricsHandler(prometheus.NewRegistry()))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/-/healthy")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/-/healthy: %s", resp.Status)
	}
	fp.nextPoll(t)
	fp.nextPoll(t) // the retry after the 502
	if code := readiness(t, srv); code != http.StatusServiceUnavailable {
		t.Errorf("/-/ready before any successful poll: %d, want 503", code)
	}
	fp.answer(http.StatusNoContent, nil, "")
	// The client counts a poll as successful before it polls again.
	fp.nextPoll(t)
	if code := readiness(t, srv); code != http.StatusOK {
		t.Errorf("/-/ready after a successful poll to one of two proxies: %d, want 200", code)
	}
}
