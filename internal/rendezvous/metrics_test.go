package rendezvous

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The HELP lines of the metrics checked, as the expositions compared must
// spell them.
const (
	helpClients         = "# HELP pushprox_proxy_clients Number of known clients.\n# TYPE pushprox_proxy_clients gauge\n"
	helpParked          = "# HELP pushprox_proxy_parked_polls Number of client polls parked, waiting for a scrape.\n# TYPE pushprox_proxy_parked_polls gauge\n"
	helpConnected       = "# HELP pushprox_proxy_clients_connected Client registrations with a live connection now, by transport.\n# TYPE pushprox_proxy_clients_connected gauge\n"
	helpConnects        = "# HELP pushprox_proxy_client_connects_total Client connections established: tunnels accepted, and registrations created by a poll.\n# TYPE pushprox_proxy_client_connects_total counter\n"
	helpPollsCut        = "# HELP pushprox_proxy_polls_cut_total Parked polls whose connection ended before they were answered: cut by something in between, or the client went away.\n# TYPE pushprox_proxy_polls_cut_total counter\n"
	helpClientConnected = "# HELP pushprox_proxy_client_connected 1 while a client of the FQDN has a live connection, 0 while it is known but not connected; transport of its latest connection.\n# TYPE pushprox_proxy_client_connected gauge\n"
	helpTunnels         = "# HELP pushprox_proxy_tunnels Tunnels attached now.\n# TYPE pushprox_proxy_tunnels gauge\n"
	helpMaxClients      = "# HELP pushprox_proxy_max_clients Most client registrations kept at once (--registration.max-clients).\n# TYPE pushprox_proxy_max_clients gauge\n"
)

// checkMetrics compares the hub's gathered metrics of the names in want
// with want.
func checkMetrics(t *testing.T, h *testHub, want map[string]string) {
	t.Helper()
	var exposition strings.Builder
	var names []string
	for name, text := range want {
		exposition.WriteString(text)
		names = append(names, name)
	}
	if err := testutil.GatherAndCompare(h.metrics, strings.NewReader(exposition.String()), names...); err != nil {
		t.Fatal(err)
	}
}

func TestTheMetricsCountClientsAndTheirConnections(t *testing.T) {
	h := newTestHub(t, 10)
	// Fresh, the hub exports its fleet-wide series at zero.
	checkMetrics(t, h, map[string]string{
		"pushprox_proxy_clients":               helpClients + "pushprox_proxy_clients 0\n",
		"pushprox_proxy_parked_polls":          helpParked + "pushprox_proxy_parked_polls 0\n",
		"pushprox_proxy_clients_connected":     helpConnected + "pushprox_proxy_clients_connected{transport=\"poll\"} 0\npushprox_proxy_clients_connected{transport=\"tunnel\"} 0\n",
		"pushprox_proxy_client_connects_total": helpConnects + "pushprox_proxy_client_connects_total{transport=\"poll\"} 0\npushprox_proxy_client_connects_total{transport=\"tunnel\"} 0\n",
		"pushprox_proxy_polls_cut_total":       helpPollsCut + "pushprox_proxy_polls_cut_total 0\n",
		"pushprox_proxy_client_connected":      "",
		"pushprox_proxy_max_clients":           helpMaxClients + "pushprox_proxy_max_clients 10\n",
	})

	h.register(t, client("idle"))
	parked := h.park(t, context.Background(), client("parked"))
	session := attach(t, h, client("tunnelled"), newFakeTunnel(), 4)
	ctx, cancel := context.WithCancel(context.Background())
	cut := h.park(t, ctx, client("cut"))
	cancel()
	if _, err := await(t, "the cut poll", cut); !errors.Is(err, ErrPollGone) {
		t.Fatalf("cut poll = %v, want ErrPollGone", err)
	}
	// Polls of a registration already known are no new connection.
	h.register(t, client("idle"))

	checkMetrics(t, h, map[string]string{
		"pushprox_proxy_clients":               helpClients + "pushprox_proxy_clients 4\n",
		"pushprox_proxy_parked_polls":          helpParked + "pushprox_proxy_parked_polls 1\n",
		"pushprox_proxy_clients_connected":     helpConnected + "pushprox_proxy_clients_connected{transport=\"poll\"} 1\npushprox_proxy_clients_connected{transport=\"tunnel\"} 1\n",
		"pushprox_proxy_client_connects_total": helpConnects + "pushprox_proxy_client_connects_total{transport=\"poll\"} 3\npushprox_proxy_client_connects_total{transport=\"tunnel\"} 1\n",
		"pushprox_proxy_polls_cut_total":       helpPollsCut + "pushprox_proxy_polls_cut_total 1\n",
		"pushprox_proxy_tunnels":               helpTunnels + "pushprox_proxy_tunnels 1\n",
		"pushprox_proxy_client_connected": helpClientConnected +
			"pushprox_proxy_client_connected{fqdn=\"cut\",transport=\"poll\"} 0\n" +
			"pushprox_proxy_client_connected{fqdn=\"idle\",transport=\"poll\"} 0\n" +
			"pushprox_proxy_client_connected{fqdn=\"parked\",transport=\"poll\"} 1\n" +
			"pushprox_proxy_client_connected{fqdn=\"tunnelled\",transport=\"tunnel\"} 1\n",
	})

	// The poll takes a scrape, the tunnel goes, and time passes: the
	// idle and cut clients are forgotten, the others seen later stay.
	h.clock.Advance(registrationTimeout)
	scraped := h.startScrape(context.Background(), h.newScrape("a", "parked"))
	work, err := await(t, "Poll", parked)
	if err != nil {
		t.Fatalf("Poll: %v", err)
	}
	work.Delivered()
	session.Detach()
	h.clock.Advance(time.Second)
	h.CollectGarbage()

	checkMetrics(t, h, map[string]string{
		"pushprox_proxy_clients":               helpClients + "pushprox_proxy_clients 2\n",
		"pushprox_proxy_parked_polls":          helpParked + "pushprox_proxy_parked_polls 0\n",
		"pushprox_proxy_clients_connected":     helpConnected + "pushprox_proxy_clients_connected{transport=\"poll\"} 0\npushprox_proxy_clients_connected{transport=\"tunnel\"} 0\n",
		"pushprox_proxy_client_connects_total": helpConnects + "pushprox_proxy_client_connects_total{transport=\"poll\"} 3\npushprox_proxy_client_connects_total{transport=\"tunnel\"} 1\n",
		"pushprox_proxy_tunnels":               helpTunnels + "pushprox_proxy_tunnels 0\n",
		"pushprox_proxy_client_connected": helpClientConnected +
			"pushprox_proxy_client_connected{fqdn=\"parked\",transport=\"poll\"} 0\n" +
			"pushprox_proxy_client_connected{fqdn=\"tunnelled\",transport=\"tunnel\"} 0\n",
	})

	claim, err := h.Claim("a", client("parked").Identity)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	go func() { _ = claim.Deliver(response("ok"), nil) }()
	finish(t, "scrape a", scraped, "ok")
}

func TestTheLastSeenSeriesSaysWhenAClientWasSeen(t *testing.T) {
	h := newTestHub(t, 10)
	seen := h.clock.Now()
	h.register(t, client("node1"))
	h.clock.Advance(time.Minute)
	want := "# HELP pushprox_proxy_client_last_seen_timestamp_seconds Unix time of the latest contact with a client of the FQDN (now, while connected).\n" +
		"# TYPE pushprox_proxy_client_last_seen_timestamp_seconds gauge\n" +
		"pushprox_proxy_client_last_seen_timestamp_seconds{fqdn=\"node1\"} " + formatSeconds(seen) + "\n"
	if err := testutil.GatherAndCompare(h.metrics, strings.NewReader(want), "pushprox_proxy_client_last_seen_timestamp_seconds"); err != nil {
		t.Fatal(err)
	}
}

func TestAHubWithoutARegistererRuns(t *testing.T) {
	h := New(Config{RegistrationTimeout: time.Minute, MaxClients: 1}, log.NewNopLogger(), nil)
	defer h.Close()
	if _, err := h.Poll(context.Background(), client("node1"), 0); !errors.Is(err, ErrNoWork) {
		t.Fatalf("Poll = %v, want ErrNoWork", err)
	}
	if !h.Known("node1") || h.Now().IsZero() {
		t.Fatal("the hub without metrics does not know its client")
	}
}

// formatSeconds spells t in Unix seconds; the comparison parses it, so
// any float spelling does.
func formatSeconds(t time.Time) string {
	return strconv.FormatFloat(float64(t.UnixNano())/1e9, 'f', -1, 64)
}

func TestTheTransportOfAnFQDNWithPollAndTunnelIsStable(t *testing.T) {
	h := newTestHub(t, 10)
	polled := h.park(t, context.Background(), Client{FQDN: "node1", Labels: map[string]string{"set": "a"}, Identity: "id"})
	attach(t, h, Client{FQDN: "node1", Labels: map[string]string{"set": "b"}, Identity: "id"}, newFakeTunnel(), 1)
	want := helpClientConnected + "pushprox_proxy_client_connected{fqdn=\"node1\",transport=\"tunnel\"} 1\n"
	for range 50 {
		if err := testutil.GatherAndCompare(h.metrics, strings.NewReader(want), "pushprox_proxy_client_connected"); err != nil {
			t.Fatal(err)
		}
	}
	h.Shutdown()
	if _, err := await(t, "Poll", polled); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("Poll = %v, want ErrShuttingDown", err)
	}
}
