package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rancher/pushprox/util"
)

// evictingProxy keeps one parked poll per name, as the reference proxy
// does: a second poll of a name evicts the first with a 408. A scrape goes
// to the parked poll of its host, and its answer comes back as a push.
type evictingProxy struct {
	srv *httptest.Server
	// keepAll makes it a proxy that keeps every poll, as this project's
	// does: each is answered 204 with Preference-Applied after a moment.
	keepAll atomic.Bool

	mu        sync.Mutex
	parked    map[string]chan []byte         // by name: the request handed to the poll, nil to evict it
	answers   map[string]chan *http.Response // by scrape Id
	evictions int
	inFlight  map[string]int // keepAll polls being held, by name
	most      map[string]int // the most keepAll polls of a name held at once
}

func startEvictingProxy(t *testing.T) *evictingProxy {
	t.Helper()
	p := &evictingProxy{parked: map[string]chan []byte{}, answers: map[string]chan *http.Response{}, inFlight: map[string]int{}, most: map[string]int{}}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *evictingProxy) serve(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/poll":
		name, _ := io.ReadAll(r.Body)
		if p.keepAll.Load() {
			p.hold(w, r, string(name))
			return
		}
		handed := make(chan []byte, 1)
		p.mu.Lock()
		if old := p.parked[string(name)]; old != nil {
			old <- nil
			p.evictions++
		}
		p.parked[string(name)] = handed
		p.mu.Unlock()
		select {
		case request := <-handed:
			if request == nil {
				http.Error(w, "Error WaitForScrapeInstruction: "+evictedText, http.StatusRequestTimeout)
				return
			}
			_, _ = w.Write(request)
		case <-r.Context().Done():
			p.mu.Lock()
			if p.parked[string(name)] == handed {
				delete(p.parked, string(name))
			}
			p.mu.Unlock()
		}
	case "/push":
		resp, err := http.ReadResponse(bufio.NewReader(r.Body), nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body = io.NopCloser(bytes.NewReader(body))
		p.mu.Lock()
		answer := p.answers[resp.Header.Get(util.HeaderID)]
		p.mu.Unlock()
		if answer != nil {
			answer <- resp
		}
	default:
		http.NotFound(w, r)
	}
}

// hold holds a poll a moment, as a proxy that keeps every poll would
// hold it for its wait, and answers it without work.
func (p *evictingProxy) hold(w http.ResponseWriter, r *http.Request, name string) {
	p.mu.Lock()
	p.inFlight[name]++
	p.most[name] = max(p.most[name], p.inFlight[name])
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.inFlight[name]--
		p.mu.Unlock()
	}()
	select {
	case <-time.After(20 * time.Millisecond):
	case <-r.Context().Done():
		return
	}
	w.Header().Set(util.HeaderPreferenceApplied, "wait=0")
	w.WriteHeader(http.StatusNoContent)
}

// evict evicts the parked poll of name, as a poll from elsewhere would,
// and says whether one was parked.
func (p *evictingProxy) evict(name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.parked[name]
	if old == nil {
		return false
	}
	old <- nil
	delete(p.parked, name)
	p.evictions++
	return true
}

// scrape hands a scrape of target to the poll parked for its host, once
// there is one, and returns the answer's status and body.
func (p *evictingProxy) scrape(t *testing.T, target string) (int, string) {
	t.Helper()
	u, err := url.Parse("http://" + target + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.NewString()
	req := httptest.NewRequest(http.MethodGet, u.String(), nil)
	request, err := util.EncodeScrapeRequest(req, id, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	answer := make(chan *http.Response, 1)
	p.mu.Lock()
	p.answers[id] = answer
	p.mu.Unlock()
	eventually(t, "a poll of "+u.Hostname()+" parked", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		handed := p.parked[u.Hostname()]
		if handed == nil {
			return false
		}
		delete(p.parked, u.Hostname())
		handed <- request
		return true
	})
	select {
	case resp := <-answer:
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	case <-time.After(waitLimit):
		t.Fatalf("no answer to the scrape of %s within %s", target, waitLimit)
		return 0, ""
	}
}

// waitParked waits until a poll of name is parked.
func (p *evictingProxy) waitParked(t *testing.T, name string) {
	t.Helper()
	eventually(t, "a poll of "+name+" parked", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.parked[name] != nil
	})
}

// eventually waits until cond holds, looking every millisecond, and fails
// the test after waitLimit.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestTargetsOfOneHostTakeTurnsOnAProxyThatKeepsOnePollPerName(t *testing.T) {
	p := startEvictingProxy(t)
	first, _ := recordingTarget(t, false, http.StatusOK, "first 1\n")
	second, _ := recordingTarget(t, false, http.StatusOK, "second 1\n")
	dir := t.TempDir()
	file := filepath.Join(dir, "targets.yml")
	targets := []string{"127.0.0.1:" + port(t, first), "127.0.0.1:" + port(t, second)}
	if err := os.WriteFile(file, []byte(fmt.Sprintf("- targets: [%q, %q]\n", targets[0], targets[1])), 0o600); err != nil {
		t.Fatal(err)
	}
	proxyURL, _ := url.Parse(p.srv.URL)
	cfg := testConfig(proxyURL, "gw")
	cfg.transport = transportPoll
	cfg.targetsFile = file
	c := startClient(t, cfg)

	for i := range 20 {
		target, want := targets[i%2], []string{"first 1\n", "second 1\n"}[i%2]
		if code, body := p.scrape(t, target); code != http.StatusOK || body != want {
			t.Fatalf("scrape %d of %s: %d %q, want 200 %q", i, target, code, body, want)
		}
	}
	p.waitParked(t, "127.0.0.1")
	// The two loops met as they started, and then took turns.
	p.mu.Lock()
	evictions := p.evictions
	p.mu.Unlock()
	if evictions > 4 {
		t.Errorf("%d polls evicted, want the loops of one host to take turns once they met", evictions)
	}
	if got := testutil.ToFloat64(c.metrics.pollErrors); got != 0 {
		t.Errorf("poll errors = %v, want 0: an eviction by the client's own loop is no failure", got)
	}

	// Replaced by a proxy that keeps every poll, which says so in its
	// empty answers, the loops poll at once again.
	p.keepAll.Store(true)
	if !p.evict("127.0.0.1") {
		t.Fatal("no poll parked to evict")
	}
	eventually(t, "the two loops polling together", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.most["127.0.0.1"] >= 2
	})
}

func TestAnEvictionOfAClientsOnlyLoopOfANameIsAFailure(t *testing.T) {
	// Another process polls as the same name: polling again at once
	// would evict each other in a tight loop.
	p := startEvictingProxy(t)
	proxyURL, _ := url.Parse(p.srv.URL)
	cfg := testConfig(proxyURL, "node1")
	cfg.transport = transportPoll
	c := startClient(t, cfg)
	p.waitParked(t, "node1")
	if !p.evict("node1") {
		t.Fatal("no poll parked to evict")
	}
	eventually(t, "a poll error after an eviction from elsewhere", func() bool {
		return testutil.ToFloat64(c.metrics.pollErrors) >= 1
	})
	p.waitParked(t, "node1")
}
