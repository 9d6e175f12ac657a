package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/rancher/pushprox/internal/testpki"
	"github.com/rancher/pushprox/util"
)

// The fakes every client test shares: one fake proxy, plain or over TLS,
// scrape requests encoded as the proxy encodes them, a client running
// in-process, and targets.

// pollAnswer is one scripted answer of the fake proxy to a poll.
type pollAnswer struct {
	status int
	header http.Header
	body   []byte
	delay  time.Duration // held this long before answering
	stall  bool          // only the first half of body is sent, then nothing
}

// polled is a request the fake proxy received, with what identifies its
// sender.
type polled struct {
	path          string
	header        http.Header
	body          string
	authorization string
	clientCert    *x509.Certificate // nil when none was presented
}

// pushed is a push the fake proxy received, parsed.
type pushed struct {
	path   string
	status int
	header http.Header
	body   []byte
}

// fakeProxy plays the proxy for an in-process client: polls get the
// scripted answers in order, and are held until the client gives up when
// there is none; pushes are parsed and handed to the test. Every request,
// poll or push, is also reported on requests.
type fakeProxy struct {
	srv      *httptest.Server
	ca       *testpki.CA // of the TLS certificate; nil over plain HTTP
	caFile   string      // ca as a PEM file, for --tls.cacert
	answers  chan pollAnswer
	polls    chan polled
	pushes   chan pushed
	requests chan polled
	// honourWait makes polls without a scripted answer end with 204 after
	// their Prefer: wait, as the real proxy does; set before the first
	// poll.
	honourWait bool
	// holdPushes makes pushes wait until their client gives up, each then
	// reported on pushesGivenUp; set before the first push.
	holdPushes    bool
	pushesGivenUp chan struct{}
}

// startFakeProxy starts a fake proxy over plain HTTP.
func startFakeProxy(t *testing.T) *fakeProxy {
	t.Helper()
	return startFakeProxyOn(t, nil)
}

// startFakeProxyOn is startFakeProxy listening on ln, or on a port of its
// own when ln is nil.
func startFakeProxyOn(t *testing.T, ln net.Listener) *fakeProxy {
	t.Helper()
	fp := newFakeProxy(t)
	if ln != nil {
		fp.srv.Listener.Close()
		fp.srv.Listener = ln
	}
	fp.srv.Start()
	t.Cleanup(fp.srv.Close)
	return fp
}

// startTLSFakeProxy starts a fake proxy over TLS with a certificate of ca
// (a new CA when nil), which verifies client certificates when given.
func startTLSFakeProxy(t *testing.T, ca *testpki.CA) *fakeProxy {
	t.Helper()
	if ca == nil {
		ca = testpki.NewCA(t, "proxy CA")
	}
	fp := newFakeProxy(t)
	fp.ca = ca
	fp.caFile = testpki.WriteFile(t, t.TempDir(), "proxy-ca.crt", ca.PEM)
	fp.srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{ca.Server(t).TLSCertificate(t)},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    ca.Pool(),
	}
	fp.srv.StartTLS()
	t.Cleanup(fp.srv.Close)
	return fp
}

func newFakeProxy(t *testing.T) *fakeProxy {
	fp := &fakeProxy{
		answers:       make(chan pollAnswer, 64),
		polls:         make(chan polled, 64),
		pushes:        make(chan pushed, 64),
		requests:      make(chan polled, 256),
		pushesGivenUp: make(chan struct{}, 16),
	}
	fp.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/tunnel") {
			// As the reference proxy: no tunnels, so the client polls.
			http.NotFound(w, r)
			return
		}
		seen := polled{path: r.URL.Path, header: r.Header.Clone(), authorization: r.Header.Get("Authorization")}
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			seen.clientCert = r.TLS.PeerCertificates[0]
		}
		select {
		case fp.requests <- seen:
		default: // Tests that look at requests read the first few only.
		}
		switch {
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/poll"):
			fp.handlePoll(w, r, seen)
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/push"):
			fp.handlePush(t, w, r)
		default:
			t.Errorf("fake proxy: unexpected %s %s", r.Method, r.URL)
			http.NotFound(w, r)
		}
	}))
	return fp
}

func (fp *fakeProxy) handlePoll(w http.ResponseWriter, r *http.Request, seen polled) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	seen.body = string(body)
	select {
	case fp.polls <- seen:
	default: // Tests that look at polls read the first few only.
	}
	var expired <-chan time.Time
	if wait, ok := util.ParsePreferWait(r.Header); ok && fp.honourWait {
		timer := time.NewTimer(wait)
		defer timer.Stop()
		expired = timer.C
	}
	select {
	case a := <-fp.answers:
		if !util.Sleep(r.Context(), a.delay) {
			return
		}
		for name, values := range a.header {
			w.Header()[name] = values
		}
		if a.stall {
			w.Header().Set("Content-Length", strconv.Itoa(len(a.body)))
			w.WriteHeader(a.status)
			_, _ = w.Write(a.body[:len(a.body)/2])
			http.NewResponseController(w).Flush()
			<-r.Context().Done()
			return
		}
		w.WriteHeader(a.status)
		_, _ = w.Write(a.body)
	case <-expired:
		w.WriteHeader(http.StatusNoContent)
	case <-r.Context().Done():
	}
}

func (fp *fakeProxy) handlePush(t *testing.T, w http.ResponseWriter, r *http.Request) {
	if fp.holdPushes {
		// Read, so that the server notices the client going away.
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
		fp.pushesGivenUp <- struct{}{}
		return
	}
	resp, err := util.DecodeAnswer(r.Body)
	if err != nil {
		t.Errorf("fake proxy: push is not an answer: %v", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("fake proxy: reading pushed body: %v", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	fp.pushes <- pushed{path: r.URL.Path, status: resp.StatusCode, header: resp.Header, body: body}
}

// url returns the fake proxy's base URL.
func (fp *fakeProxy) url(t *testing.T) *url.URL {
	u, err := url.Parse(fp.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// answer queues a raw answer to a poll.
func (fp *fakeProxy) answer(status int, header http.Header, body string) {
	fp.answers <- pollAnswer{status: status, header: header, body: []byte(body)}
}

// queueScrape queues a scrape of target with Prometheus' headers and returns
// its Id. The scrape carries a 10 s timeout unless header names one.
func (fp *fakeProxy) queueScrape(t *testing.T, target string, header http.Header) string {
	t.Helper()
	id := uuid.NewString()
	fp.answers <- pollAnswer{status: http.StatusOK, body: scrapeRequest(t, target, id, header)}
	return id
}

// defaultTestTimeout is the timeout of a test scrape that names none.
const defaultTestTimeout = 10 * time.Second

// scrapeRequest encodes a scrape request as the proxy hands it out.
func scrapeRequest(t testing.TB, target, id string, header http.Header) []byte {
	t.Helper()
	return proxiedRequest(t, http.MethodGet, target, nil, id, header)
}

// proxiedRequest is scrapeRequest with any method and body, as a proxy
// could hand it out. Its timeout is the X-Prometheus-Scrape-Timeout-Seconds
// of header, as the proxy takes it, or 10 s.
func proxiedRequest(t testing.TB, method, target string, body io.Reader, id string, header http.Header) []byte {
	t.Helper()
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		t.Fatal(err)
	}
	for name, values := range header {
		req.Header[name] = values
	}
	timeout := util.ScrapeTimeout(header, defaultTestTimeout, time.Hour)
	encoded, err := util.EncodeScrapeRequest(req, id, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return encoded
}

// withTimeoutHeader replaces the timeout header of an encoded scrape
// request with values (none when nil), as a proxy that does not check
// them could send.
func withTimeoutHeader(t testing.TB, encoded []byte, values []string) []byte {
	t.Helper()
	line := []byte(util.HeaderScrapeTimeoutSeconds + ": " + util.FormatSeconds(defaultTestTimeout) + "\r\n")
	if !bytes.Contains(encoded, line) {
		t.Fatalf("no timeout header %q in %q", line, encoded)
	}
	var replacement []byte
	for _, value := range values {
		replacement = append(replacement, util.HeaderScrapeTimeoutSeconds+": "+value+"\r\n"...)
	}
	return bytes.Replace(encoded, line, replacement, 1)
}

// nextPush waits for the next push.
func (fp *fakeProxy) nextPush(t *testing.T) pushed {
	t.Helper()
	select {
	case p := <-fp.pushes:
		return p
	case <-time.After(waitLimit):
		t.Fatalf("no push within %s", waitLimit)
		return pushed{}
	}
}

// nextPoll waits for the next poll.
func (fp *fakeProxy) nextPoll(t *testing.T) polled {
	t.Helper()
	select {
	case p := <-fp.polls:
		return p
	case <-time.After(waitLimit):
		t.Fatalf("no poll within %s", waitLimit)
		return polled{}
	}
}

// nextRequest waits for the next request, poll or push.
func (fp *fakeProxy) nextRequest(t *testing.T) polled {
	t.Helper()
	select {
	case p := <-fp.requests:
		return p
	case <-time.After(waitLimit):
		t.Fatalf("no request to the proxy within %s", waitLimit)
		return polled{}
	}
}

// pushOf waits for the next push and checks that it is of scrape id.
func (fp *fakeProxy) pushOf(t *testing.T, id string) pushed {
	t.Helper()
	p := fp.nextPush(t)
	if got := p.header.Get(util.HeaderID); got != id {
		t.Fatalf("push for %q, want %q", got, id)
	}
	return p
}

// expectPush waits for the push of scrape id and checks its status and that
// its body contains want.
func (fp *fakeProxy) expectPush(t *testing.T, id string, status int, want string) pushed {
	t.Helper()
	p := fp.nextPush(t)
	if got := p.header.Get(util.HeaderID); got != id {
		t.Errorf("push has Id %q, want %q", got, id)
	}
	if p.status != status || !strings.Contains(string(p.body), want) {
		t.Errorf("pushed %d %q, want %d with %q", p.status, p.body, status, want)
	}
	return p
}

// noMorePushes fails if a push is waiting. It is meant for after the client
// stopped, when every push it would make has been made.
func (fp *fakeProxy) noMorePushes(t *testing.T) {
	t.Helper()
	select {
	case p := <-fp.pushes:
		t.Errorf("unexpected push: %d %q", p.status, p.body)
	default:
	}
}
