package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rancher/pushprox/internal/rendezvous"
	"github.com/rancher/pushprox/internal/testbin"
	"github.com/rancher/pushprox/util"
)

// reloadBound is how long a change of a targets file may take to show in
// /clients and routing, with the client checking the file every 100ms.
const reloadBound = 10 * time.Second

// startTargetOn serves an exporter answering body on address (a loopback
// address other than 127.0.0.1, as a target next to a gateway would be).
// Each request is announced on arrived and waits for release when it is
// not nil.
func startTargetOn(t *testing.T, host, body string, release <-chan struct{}) (address string, arrived <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("listening on %s: %v", host, err)
	}
	requests := make(chan struct{}, 100)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests <- struct{}{}
		if release != nil {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		io.WriteString(w, body)
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return ln.Addr().String(), requests
}

// group is a target group of a targets file, and of /clients.
type group struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// writeTargets replaces the targets file at path as editors do: a new file
// renamed over the old one.
func writeTargets(t *testing.T, path string, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func targetsJSON(t *testing.T, groups ...group) string {
	t.Helper()
	b, err := json.Marshal(groups)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// listed returns the targets /clients lists, with their labels.
func (tp *testProxy) listed(t *testing.T) map[string]map[string]string {
	t.Helper()
	resp, err := http.Get(tp.srv.URL + "/clients")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var groups []group
	if err := json.NewDecoder(resp.Body).Decode(&groups); err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]string{}
	for _, g := range groups {
		for _, target := range g.Targets {
			out[target] = g.Labels
		}
	}
	return out
}

// waitListed waits until /clients lists exactly want among the targets
// with a port (the client itself is listed by its name alone).
func (tp *testProxy) waitListed(t *testing.T, what string, want map[string]map[string]string) {
	t.Helper()
	deadline := time.Now().Add(reloadBound)
	var got map[string]map[string]string
	for {
		got = tp.listed(t)
		for target := range got {
			if !strings.Contains(target, ":") {
				delete(got, target)
			}
		}
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: /clients lists %v after %s, want %v", what, got, reloadBound, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gatewayTransport is a way a gateway reaches the proxy.
type gatewayTransport struct {
	name string
	args []string
	// says is what the gateway logs on this transport.
	says string
	// front returns the URL the client and Prometheus use for tp.
	front func(t *testing.T, tp *testProxy) string
}

// gatewayTransports are a tunnel announcing its targets; polls (one per
// target) to a proxy that refuses tunnels, as the reference proxy does;
// and polls for the targets beside a tunnel of a proxy that takes no
// targets on tunnels, as proxies before targets files.
func gatewayTransports() []gatewayTransport {
	return []gatewayTransport{
		{"tunnel", []string{"--proxy.transport=tunnel"}, `msg="targets announced"`, func(_ *testing.T, tp *testProxy) string { return tp.srv.URL }},
		{"polls to a proxy without tunnels", []string{"--proxy.transport=auto"}, `msg="proxy offers no tunnel, polling instead"`, func(t *testing.T, tp *testProxy) string {
			old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/tunnel" {
					http.NotFound(w, r)
					return
				}
				tp.proxy.ServeHTTP(w, r)
			}))
			t.Cleanup(old.Close)
			return old.URL
		}},
		{"polls beside a tunnel of a proxy that takes no targets on it", []string{"--proxy.transport=tunnel"}, `msg="proxy takes no targets on tunnels, polling for them"`, func(t *testing.T, tp *testProxy) string {
			old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/tunnel" {
					w = noTargetsHeader{w}
				}
				tp.proxy.ServeHTTP(w, r)
			}))
			t.Cleanup(old.Close)
			return old.URL
		}},
	}
}

// noTargetsHeader is the ResponseWriter of a proxy whose tunnel handshake
// does not say that it takes targets: the header is cut from the 101.
type noTargetsHeader struct{ http.ResponseWriter }

func (w noTargetsHeader) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	return &cutFirstWrite{Conn: conn, cut: util.HeaderTargets + ": " + util.TargetsVersion + "\r\n"}, rw, err
}

// cutFirstWrite removes cut from the first write on its connection.
type cutFirstWrite struct {
	net.Conn
	cut  string
	once sync.Once
}

func (c *cutFirstWrite) Write(b []byte) (int, error) {
	first := false
	c.once.Do(func() { first = true })
	if !first {
		return c.Conn.Write(b)
	}
	if _, err := c.Conn.Write([]byte(strings.Replace(string(b), c.cut, "", 1))); err != nil {
		return 0, err
	}
	return len(b), nil
}

// startGateway runs the real client as gw.example with the targets file
// at path, labelled region=eu, checking the file every 100ms unless args
// say otherwise.
func startGateway(t *testing.T, front, path string, args ...string) *testbin.Process {
	t.Helper()
	args = append([]string{"--targets.file=" + path, "--label=region=eu"}, args...)
	if !slices.ContainsFunc(args, func(arg string) bool { return strings.HasPrefix(arg, "--targets.file.refresh-interval=") }) {
		args = append(args, "--targets.file.refresh-interval=100ms")
	}
	return testbin.Start(t, clientBinary, clientArgs("gw.example", front, args...)...)
}

func TestOneClientServesTargetsOnOtherLoopbackAddressesListedWithTheirLabels(t *testing.T) {
	for _, transport := range gatewayTransports() {
		t.Run(transport.name, func(t *testing.T) {
			tp := startProxy(t, defaultConfig())
			front := transport.front(t, tp)
			a, _ := startTargetOn(t, "127.0.0.2", "a 1\n", nil)
			b, _ := startTargetOn(t, "127.0.0.3", "b 1\n", nil)
			path := filepath.Join(t.TempDir(), "targets.json")
			writeTargets(t, path, targetsJSON(t,
				group{Targets: []string{a}, Labels: map[string]string{"site": "a"}},
				group{Targets: []string{b}, Labels: map[string]string{"site": "b", "region": "us"}}))
			startGateway(t, front, path, transport.args...).WaitForOutput(regexp.MustCompile(transport.says))
			tp.waitListed(t, "the gateway's targets", map[string]map[string]string{
				a: {"site": "a", "region": "eu"},
				b: {"site": "b", "region": "us"},
			})
			for target, want := range map[string]string{a: "a 1\n", b: "b 1\n"} {
				if r := scrapeThrough(context.Background(), front, "http://"+target+"/metrics", "10"); r.err != nil || r.status != http.StatusOK || r.body != want {
					t.Errorf("scrape of %s: %d %q %v, want %q", target, r.status, r.body, r.err, want)
				}
			}
			// Another port of a listed host reaches the gateway, which
			// refuses it with the reason.
			_, portB, _ := net.SplitHostPort(b)
			unlisted := net.JoinHostPort("127.0.0.2", portB)
			if r := scrapeThrough(context.Background(), front, "http://"+unlisted+"/metrics", "10"); r.status != http.StatusInternalServerError || !strings.Contains(r.body, "nor listed in") {
				t.Errorf("scrape of the unlisted %s: %d %q %v, want a 500 saying it is not listed", unlisted, r.status, r.body, r.err)
			}
			// A host no target is on has no client.
			if r := scrapeThrough(context.Background(), front, "http://127.0.0.9:9100/metrics", "0.5"); r.status != http.StatusServiceUnavailable {
				t.Errorf("scrape of a host with no target: %d %q %v, want 503", r.status, r.body, r.err)
			}
		})
	}
}

func TestARewrittenTargetsFileChangesDiscoveryAndRoutingWhileAScrapeInFlightIsDelivered(t *testing.T) {
	for _, transport := range gatewayTransports() {
		t.Run(transport.name, func(t *testing.T) {
			cfg := defaultConfig()
			// Polls of a withdrawn target just stop; the proxy forgets it
			// after the registration timeout, as any client gone.
			cfg.registrationTimeout = 2 * time.Second
			tp := startProxy(t, cfg)
			front := transport.front(t, tp)
			release := make(chan struct{})
			t.Cleanup(func() {
				select {
				case <-release:
				default:
					close(release)
				}
			})
			slow, arrived := startTargetOn(t, "127.0.0.2", "slow 1\n", release)
			b, _ := startTargetOn(t, "127.0.0.3", "b 1\n", nil)
			c, _ := startTargetOn(t, "127.0.0.4", "c 1\n", nil)
			path := filepath.Join(t.TempDir(), "targets.yml")
			writeTargets(t, path, fmt.Sprintf("- targets: ['%s']\n  labels: {site: slow}\n- targets: ['%s']\n  labels: {site: b}\n", slow, b))
			startGateway(t, front, path, transport.args...).WaitForOutput(regexp.MustCompile(transport.says))
			tp.waitListed(t, "the first targets", map[string]map[string]string{
				slow: {"site": "slow", "region": "eu"},
				b:    {"site": "b", "region": "eu"},
			})

			inFlight := goScrape(context.Background(), front, "http://"+slow+"/metrics", "30")
			<-arrived
			writeTargets(t, path, fmt.Sprintf("- targets: ['%s']\n  labels: {site: b2}\n- targets: ['%s']\n  labels: {site: c}\n", b, c))
			tp.waitListed(t, "the rewritten targets", map[string]map[string]string{
				b: {"site": "b2", "region": "eu"},
				c: {"site": "c", "region": "eu"},
			})
			if r := scrapeThrough(context.Background(), front, "http://"+c+"/metrics", "10"); r.err != nil || r.status != http.StatusOK || r.body != "c 1\n" {
				t.Errorf("scrape of the added %s: %d %q %v", c, r.status, r.body, r.err)
			}
			if r := scrapeThrough(context.Background(), front, "http://"+slow+"/metrics", "0.5"); r.status == http.StatusOK {
				t.Errorf("the withdrawn %s was still scraped", slow)
			}
			close(release)
			if r := <-inFlight; r.err != nil || r.status != http.StatusOK || r.body != "slow 1\n" {
				t.Errorf("the scrape in flight during the reload: %d %q %v, want it delivered", r.status, r.body, r.err)
			}
		})
	}
}

func TestABrokenTargetsFileKeepsTheTargetsServed(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	a, _ := startTargetOn(t, "127.0.0.2", "a 1\n", nil)
	path := filepath.Join(t.TempDir(), "targets.json")
	writeTargets(t, path, targetsJSON(t, group{Targets: []string{a}}))
	gateway := startGateway(t, tp.srv.URL, path, "--proxy.transport=tunnel")
	want := map[string]map[string]string{a: {"region": "eu"}}
	tp.waitListed(t, "the target", want)
	writeTargets(t, path, `[{"targets": ["127.0.0.3:1"`)
	gateway.WaitForOutput(regexp.MustCompile(`msg="targets file not reloaded, keeping the previous targets"`))
	tp.waitListed(t, "the target after a broken file", want)
	if r := scrapeThrough(context.Background(), tp.srv.URL, "http://"+a+"/metrics", "10"); r.err != nil || r.status != http.StatusOK {
		t.Errorf("scrape after a broken file: %d %q %v", r.status, r.body, r.err)
	}
}

func TestAnnouncedTargetsTheCertificateDoesNotNameAreRefusedWithTheReason(t *testing.T) {
	cfg := defaultConfig()
	cfg.bindFQDNToCert = true
	cfg.maxTargetsPerClient = 6
	tp := startProxy(t, cfg)
	session, err := tp.hub.Attach(rendezvous.Client{FQDN: "gw.example"}, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer session.Detach()
	// Four targets of the gateway's bound are spent by its polls, so that
	// two of the announcement's fit.
	for i := range 4 {
		polled := rendezvous.Client{FQDN: fmt.Sprintf("polled-%d.site.example", i), Target: fmt.Sprintf("polled-%d.site.example:9100", i), Via: "gw.example"}
		if _, err := tp.hub.Poll(context.Background(), polled, 0); !errors.Is(err, rendezvous.ErrNoWork) {
			t.Fatalf("poll of %s: %v", polled.Target, err)
		}
	}
	leaf := &x509.Certificate{DNSNames: []string{"gw.example", "*.site.example"}}
	r := &http.Request{TLS: &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}}}
	answer := tp.applyTargets(r, session, util.Announcement{Targets: []util.AnnouncedTarget{
		{Target: "nas.site.example:9100"},
		{Target: "nas.site.example:9100"},
		{Target: "other.example:9100"},
		{Target: "printer.site.example:161", Labels: map[string]string{"__bad": "x"}},
		{Target: "router.site.example:9116"},
		{Target: "switch.site.example:9116"},
	}})
	reasons := map[string]string{}
	for _, refused := range answer.Refused {
		reasons[refused.Target] += refused.Reason
	}
	for target, want := range map[string]string{
		"nas.site.example:9100":    "listed twice",
		"other.example:9100":       "does not name",
		"printer.site.example:161": "reserved",
		"switch.site.example:9116": "--registration.max-targets-per-client",
	} {
		if !strings.Contains(reasons[target], want) {
			t.Errorf("%s refused for %q, want a reason saying %q", target, reasons[target], want)
		}
	}
	listed := tp.listed(t)
	if _, ok := listed["router.site.example:9116"]; !ok || len(answer.Refused) != 4 {
		t.Errorf("listed %v with %d refusals, want the targets the certificate names served", listed, len(answer.Refused))
	}
	if slices.ContainsFunc(answer.Refused, func(r util.RefusedTarget) bool { return r.Target == "router.site.example:9116" }) {
		t.Errorf("router.site.example:9116 refused: %v", answer.Refused)
	}
}

func TestTheLandingPageAndMetricsShowTheTargetsOfEachClient(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	session, err := tp.hub.Attach(rendezvous.Client{FQDN: "gw.example"}, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer session.Detach()
	for _, err := range session.SetTargets([]rendezvous.Target{
		{Name: "nas.example:9100", Host: "nas.example"},
		{Name: "nas.example:9633", Host: "nas.example", Labels: map[string]string{"exporter": "smart"}},
	}, nil) {
		if err != nil {
			t.Fatal(err)
		}
	}
	code, _, page := getBody(t, tp.srv.URL+"/")
	if code != http.StatusOK {
		t.Fatalf("landing page answered %d", code)
	}
	for _, want := range []string{"<td>gw.example</td><td>2</td>", "<td>nas.example:9100</td><td>via gw.example</td>", "<td>nas.example:9633</td><td>via gw.example</td>"} {
		if !strings.Contains(page, want) {
			t.Errorf("landing page lacks %s", want)
		}
	}
	if got := tp.gauge(t, "pushprox_proxy_targets", ""); got != 2 {
		t.Errorf("pushprox_proxy_targets = %v, want 2", got)
	}
}

func TestSIGHUPReloadsTheTargetsFileAtOnce(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	a, _ := startTargetOn(t, "127.0.0.2", "a 1\n", nil)
	b, _ := startTargetOn(t, "127.0.0.3", "b 1\n", nil)
	path := filepath.Join(t.TempDir(), "targets.json")
	writeTargets(t, path, targetsJSON(t, group{Targets: []string{a}}))
	// Checked for changes only hourly: the reload is SIGHUP's.
	gateway := startGateway(t, tp.srv.URL, path, "--proxy.transport=tunnel", "--targets.file.refresh-interval=1h")
	tp.waitListed(t, "the first target", map[string]map[string]string{a: {"region": "eu"}})
	writeTargets(t, path, targetsJSON(t, group{Targets: []string{a, b}}))
	gateway.Signal(syscall.SIGHUP)
	tp.waitListed(t, "both targets after SIGHUP", map[string]map[string]string{a: {"region": "eu"}, b: {"region": "eu"}})
	if r := scrapeThrough(context.Background(), tp.srv.URL, "http://"+b+"/metrics", "10"); r.err != nil || r.status != http.StatusOK || r.body != "b 1\n" {
		t.Errorf("scrape of the target added on SIGHUP: %d %q %v", r.status, r.body, r.err)
	}
}

// Pushprox-Via is what the poller says: polls from another host that name
// a client as Via must not spend that client's
// --registration.max-targets-per-client, or its own tunnel's targets
// would then be refused.
func TestPollsNamingAnotherClientAsViaDoNotSpendItsTargets(t *testing.T) {
	cfg := defaultConfig()
	cfg.maxTargetsPerClient = 3
	tp := startProxy(t, cfg)
	squatter := clientFrom(t, "127.0.0.2")
	squat := func(i int) (int, string) {
		host := fmt.Sprintf("squat-%d.example", i)
		req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, tp.srv.URL+"/poll", strings.NewReader(host))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(util.HeaderTarget, host+":9100")
		req.Header.Set(util.HeaderVia, "victim")
		req.Header.Set(util.HeaderPrefer, "wait=0")
		resp, err := squatter.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		text, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(text)
	}
	for i := range 3 {
		if code, text := squat(i); code != http.StatusNoContent {
			t.Fatalf("poll %d of the squatter: %d %s", i, code, text)
		}
	}
	control := openControl(t, dialStreamPeer(t, tp, "victim", util.TunnelProtocolReuse, silentPeer))
	if answer := announce(t, control, "nas.example:9100"); len(answer.Refused) > 0 {
		t.Errorf("the victim's own target was refused: %+v", answer.Refused)
	}
	// The squatter's own bound is spent.
	if code, text := squat(3); code == http.StatusNoContent || !strings.Contains(text, "--registration.max-targets-per-client") {
		t.Errorf("a fourth target of the squatter: %d %q, want it refused for the bound", code, text)
	}
}

// A gateway announcing nas:9633 must not be given the scrapes of the other
// ports of nas ahead of nas's own client parked on a poll: the gateway
// would refuse nas:9100, which is not in its targets file, and Prometheus
// would get that refusal.
func TestAScrapeOfAHostsOwnClientIsNotGivenToAGatewayThatListsAnotherPortOfIt(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	var toGateway atomic.Int64
	gw := dialStreamPeer(t, tp, "gw", util.TunnelProtocolReuse, func(w io.Writer, req *http.Request) bool {
		toGateway.Add(1)
		resp := util.ErrorAnswer(io.ErrUnexpectedEOF)
		header := util.AnswerHeader(resp.Header, req.Header.Get(util.HeaderID), 0, false, 0)
		w.Write(util.EncodeAnswerHead(http.StatusInternalServerError, "", header))
		return true
	})
	control, err := gw.session.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	if err := util.WriteTargetsMessage(control, util.Announcement{Targets: []util.AnnouncedTarget{{Target: "nas:9633"}}}); err != nil {
		t.Fatal(err)
	}
	var answer util.AnnouncementAnswer
	if err := util.ReadTargetsMessage(control, &answer); err != nil || len(answer.Refused) > 0 {
		t.Fatalf("announcing: %v %+v", err, answer.Refused)
	}
	// nas's own client parks a poll.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		if resp, err := tp.poll(ctx, "nas", nil); err == nil {
			resp.Body.Close()
		}
	}()
	tp.waitParked(t, 1)
	// Answered by the gateway at once, or taken by the poll and given up
	// after its timeout, as this test pushes no answer.
	r := scrapeThrough(context.Background(), tp.srv.URL, "http://nas:9100/metrics", "2")
	t.Logf("Prometheus got %d %q", r.status, r.body)
	if n := toGateway.Load(); n > 0 {
		t.Errorf("a scrape of nas:9100 went to the gateway that lists only nas:9633 (%d times)", n)
	}
}
