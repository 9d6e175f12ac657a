package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rancher/pushprox/internal/rendezvous"
	"github.com/rancher/pushprox/internal/testclock"
	"github.com/rancher/pushprox/util"
)

// getBody fetches url and returns status, content type and body.
func getBody(t *testing.T, url string) (int, string, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(body)
}

func TestClientLabelsInDiscovery(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	tp.startClient(t, "node1.example", "--label=env=prod", "--label=team=infra")
	// A second client with the same FQDN and other labels: a replica.
	tp.startClient(t, "node1.example", "--label=env=staging")
	tp.startClient(t, "node2.example")

	for _, tc := range []struct {
		name  string
		query string
		want  []clientGroup
	}{
		{name: "all", want: []clientGroup{
			{Targets: []string{"node1.example"}, Labels: map[string]string{"env": "prod", "team": "infra"}},
			{Targets: []string{"node1.example"}, Labels: map[string]string{"env": "staging"}},
			{Targets: []string{"node2.example"}},
		}},
		{name: "filtered", query: "?label=env=prod", want: []clientGroup{
			{Targets: []string{"node1.example"}, Labels: map[string]string{"env": "prod", "team": "infra"}},
		}},
		{name: "no match", query: "?label=env=dev", want: []clientGroup{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, contentType, body := getBody(t, tp.srv.URL+"/clients"+tc.query)
			if code != http.StatusOK || contentType != "application/json" {
				t.Fatalf("got %d %q: %s", code, contentType, body)
			}
			var got []clientGroup
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("not JSON: %v: %s", err, body)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %s, want %d groups", body, len(tc.want))
			}
			for i := range got {
				if strings.Join(got[i].Targets, ",") != strings.Join(tc.want[i].Targets, ",") ||
					util.LabelsKey(got[i].Labels) != util.LabelsKey(tc.want[i].Labels) {
					t.Errorf("group %d = %+v, want %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
	if code, _, body := getBody(t, tp.srv.URL+"/clients?label=__bad=x"); code != http.StatusBadRequest {
		t.Errorf("bad filter answered %d: %s", code, body)
	}

	code, contentType, page := getBody(t, tp.srv.URL+"/")
	if code != http.StatusOK || !strings.HasPrefix(contentType, "text/html") {
		t.Fatalf("landing page: %d %q", code, contentType)
	}
	for _, want := range []string{"node1.example", "node2.example", `env=&#34;prod&#34;`} {
		if !strings.Contains(page, want) {
			t.Errorf("landing page lacks %s", want)
		}
	}
}

func TestPollWithBadLabelsIsRejected(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	for _, labels := range []string{"__name__=x", "1bad=x", "a=1&a=2", "%zz"} {
		resp, err := tp.poll(context.Background(), "node1", http.Header{util.HeaderLabels: {labels}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("labels %q: %s, want 400", labels, resp.Status)
		}
	}
}

func TestHealthAndReadiness(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	if code, _, _ := getBody(t, tp.srv.URL+"/-/healthy"); code != http.StatusOK {
		t.Errorf("/-/healthy: %d", code)
	}
	if code, _, _ := getBody(t, tp.srv.URL+"/-/ready"); code != http.StatusOK {
		t.Errorf("/-/ready: %d", code)
	}
	tp.hub.Shutdown()
	if code, _, _ := getBody(t, tp.srv.URL+"/-/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("/-/ready while shutting down: %d, want 503", code)
	}
	if code, _, _ := getBody(t, tp.srv.URL+"/-/healthy"); code != http.StatusOK {
		t.Errorf("/-/healthy while shutting down: %d", code)
	}
}

func TestClientServesEveryProxy(t *testing.T) {
	for _, dies := range []int{0, 1} {
		t.Run(fmt.Sprintf("proxy %d dies", dies), func(t *testing.T) {
			proxies := []*testProxy{startProxy(t, defaultConfig()), startProxy(t, defaultConfig())}
			target := startTarget(t, "up 1\n")
			proxies[0].startClient(t, "127.0.0.1", "--proxy-url="+proxies[1].srv.URL)
			proxies[1].waitParked(t, 1)

			scrapeOK := func(tp *testProxy) {
				t.Helper()
				resp := tp.scrape(t, target.URL+"/metrics", http.Header{util.HeaderScrapeTimeoutSeconds: {"30"}})
				if body, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || string(body) != "up 1\n" {
					t.Fatalf("scrape: %s %q", resp.Status, body)
				}
			}
			for i := 0; i < 3; i++ {
				scrapeOK(proxies[0])
				scrapeOK(proxies[1])
			}
			// One proxy goes away; the other keeps serving every scrape.
			dead, alive := proxies[dies], proxies[1-dies]
			dead.hub.Shutdown()
			dead.srv.CloseClientConnections()
			dead.srv.Close()
			for i := 0; i < 5; i++ {
				scrapeOK(alive)
			}
		})
	}
}

func TestVersionFlag(t *testing.T) {
	var out strings.Builder
	if code := run([]string{"--version"}, &out); code != 0 {
		t.Fatalf("--version exited %d: %s", code, out.String())
	}
	if !strings.Contains(out.String(), "pushprox-proxy, version") {
		t.Errorf("--version printed %q", out.String())
	}
}

func TestFlagsFromEnvironment(t *testing.T) {
	t.Setenv("PUSHPROX_PROXY_SCRAPE_DEFAULT_TIMEOUT", "7s")
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.defaultTimeout.String() != "7s" {
		t.Errorf("default timeout %s, want 7s from the environment", cfg.defaultTimeout)
	}
	t.Setenv("PUSHPROX_PROXY_SCRAPE_DEFAULT_TIMEOUT", "soon")
	if _, err := parseFlags(nil, io.Discard); err == nil || !strings.Contains(err.Error(), "PUSHPROX_PROXY_SCRAPE_DEFAULT_TIMEOUT") {
		t.Errorf("bad environment value: %v", err)
	}
}

func TestLabelSetsPerFQDNAreBounded(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	pollWithLabels := func(env string) int {
		t.Helper()
		header := http.Header{util.HeaderPrefer: {"wait=0"}, util.HeaderLabels: {"env=" + env}}
		resp, err := tp.poll(context.Background(), "node1.example", header)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := 0; i < rendezvous.MaxLabelSetsPerFQDN; i++ {
		if code := pollWithLabels(fmt.Sprint(i)); code != http.StatusNoContent {
			t.Fatalf("label set %d: %d, want 204", i, code)
		}
	}
	if code := pollWithLabels("one-too-many"); code != http.StatusTooManyRequests {
		t.Errorf("label set beyond the bound: %d, want 429", code)
	}
	if code := pollWithLabels("0"); code != http.StatusNoContent {
		t.Errorf("a registered label set: %d, want 204", code)
	}
	if got := len(tp.hub.Clients(0, 0)); got != rendezvous.MaxLabelSetsPerFQDN {
		t.Errorf("%d registrations listed, want %d", got, rendezvous.MaxLabelSetsPerFQDN)
	}
}

func TestRegistrationsAreBoundedInTotal(t *testing.T) {
	clock := testclock.New(time.Unix(1e9, 0))
	cfg := defaultConfig()
	cfg.maxClients = 3
	cfg.registrationTimeout = time.Minute
	cfg.clock = clock.Now
	tp := startProxy(t, cfg)
	pollAs := func(fqdn string) int {
		t.Helper()
		resp, err := tp.poll(context.Background(), fqdn, http.Header{util.HeaderPrefer: {"wait=0"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, fqdn := range []string{"a.example", "b.example", "c.example"} {
		if code := pollAs(fqdn); code != http.StatusNoContent {
			t.Fatalf("%s: %d, want 204", fqdn, code)
		}
	}
	// A full registry makes room by forgetting the client seen least
	// recently among those without a live poll.
	clock.Advance(time.Second)
	if code := pollAs("b.example"); code != http.StatusNoContent {
		t.Errorf("a known client: %d, want 204", code)
	}
	if code := pollAs("d.example"); code != http.StatusNoContent {
		t.Errorf("a client beyond --registration.max-clients with idle ones to forget: %d, want 204", code)
	}
	if tp.hub.Known("a.example") || !tp.hub.Known("b.example") {
		t.Errorf("the least recently seen client a.example should be the one forgotten")
	}
	// Clients with live polls are never forgotten for a newcomer: it gets 429.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, fqdn := range []string{"b.example", "c.example", "d.example"} {
		go func() {
			if resp, err := tp.poll(ctx, fqdn, nil); err == nil {
				resp.Body.Close()
			}
		}()
	}
	tp.waitParked(t, 3)
	if code := pollAs("e.example"); code != http.StatusTooManyRequests {
		t.Errorf("a client beyond --registration.max-clients, all connected: %d, want 429", code)
	}
	cancel()
	tp.waitParked(t, 0)
	// Once the others are forgotten, there is room again.
	clock.Advance(2 * cfg.registrationTimeout)
	tp.hub.CollectGarbage()
	if code := pollAs("e.example"); code != http.StatusNoContent {
		t.Errorf("after garbage collection: %d, want 204", code)
	}
}

func TestDiscoveryListsAClientAsItSpellsItsName(t *testing.T) {
	// A reference client answers only scrapes of its FQDN as it spells
	// it: a Prometheus that discovers it must scrape that spelling.
	for _, fqdn := range []string{"LocalHost", "node1.example."} {
		t.Run(fqdn, func(t *testing.T) {
			tp := startProxy(t, defaultConfig())
			rawPoll(t, strings.TrimPrefix(tp.srv.URL, "http://"), fqdn)
			tp.waitParked(t, 1)
			code, _, body := getBody(t, tp.srv.URL+"/clients")
			var got []clientGroup
			if err := json.Unmarshal([]byte(body), &got); code != http.StatusOK || err != nil {
				t.Fatalf("/clients: %d %v: %s", code, err, body)
			}
			if len(got) != 1 || len(got[0].Targets) != 1 || got[0].Targets[0] != fqdn {
				t.Errorf("/clients lists %s, want the one target %q", body, fqdn)
			}
		})
	}
}
