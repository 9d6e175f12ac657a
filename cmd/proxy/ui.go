package main

import (
	"html/template"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/go-kit/log/level"
	"github.com/prometheus/common/version"
)

// handleHealthy answers that the process is alive.
func handleHealthy(w http.ResponseWriter, _ *http.Request) {
	io.WriteString(w, "Healthy.\n")
}

// handleReady answers whether the proxy takes polls and scrapes: not once
// it is shutting down, so that load balancers stop sending it work.
func (p *proxy) handleReady(w http.ResponseWriter, _ *http.Request) {
	select {
	case <-p.coord.closed:
		http.Error(w, "Shutting down.", http.StatusServiceUnavailable)
	default:
		io.WriteString(w, "Ready.\n")
	}
}

var landingPage = template.Must(template.New("landing").Parse(`<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>PushProx proxy</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}</style>
</head>
<body>
<h1>PushProx proxy</h1>
<p>Version {{.Version}}. <a href="/metrics">Metrics</a> · <a href="/clients">Clients (service discovery)</a> · <a href="/-/ready">Ready</a></p>
<h2>Clients ({{len .Clients}})</h2>
{{if .Clients}}<table>
<tr><th>FQDN</th><th>Labels</th><th>Polls parked</th><th>Last poll</th><th>Recent scrapes (oldest first)</th></tr>
{{range .Clients}}<tr><td>{{.FQDN}}</td><td>{{.Labels}}</td><td>{{.Polls}}</td><td>{{.LastPoll}}</td><td>{{.Outcomes}}</td></tr>
{{end}}</table>{{else}}<p>No client has polled within the registration timeout.</p>{{end}}
</body>
</html>
`))

// clientRow is a client as the landing page shows it.
type clientRow struct {
	FQDN     string
	Labels   string
	Polls    int
	LastPoll string
	Outcomes string
}

// handleLandingPage shows the connected clients, with their labels, the age
// of their last poll and their recent scrape outcomes.
func (p *proxy) handleLandingPage(w http.ResponseWriter, _ *http.Request) {
	now := p.coord.now()
	var rows []clientRow
	for _, client := range p.coord.clientList() {
		lastPoll := "parked now"
		if client.Polls == 0 {
			lastPoll = now.Sub(client.LastSeen).Truncate(time.Second).String() + " ago"
		}
		rows = append(rows, clientRow{
			FQDN:     client.FQDN,
			Labels:   formatLabels(client.Labels),
			Polls:    client.Polls,
			LastPoll: lastPoll,
			Outcomes: strings.Join(client.Outcomes, " "),
		})
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	err := landingPage.Execute(w, struct {
		Version string
		Clients []clientRow
	}{version.Version, rows})
	if err != nil {
		level.Debug(p.logger).Log("msg", "writing landing page failed", "err", err)
	}
}

// formatLabels renders labels as Prometheus does: {a="1", b="2"}.
func formatLabels(labels map[string]string) string {
	pairs := make([]string, 0, len(labels))
	for name, value := range labels {
		pairs = append(pairs, name+"="+`"`+value+`"`)
	}
	sort.Strings(pairs)
	return "{" + strings.Join(pairs, ", ") + "}"
}
