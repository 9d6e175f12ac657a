package main

import (
	"html/template"
	"io"
	"net/http"
	"sort"
	"strconv"
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
	case <-p.hub.ShuttingDown():
		http.Error(w, "Shutting down.", http.StatusServiceUnavailable)
	default:
		io.WriteString(w, "Ready.\n")
	}
}

// landingPageSize is how many clients one landing page shows, so that the
// page of a large fleet stays small.
const landingPageSize = 100

var landingPage = template.Must(template.New("landing").Parse(`<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>PushProx proxy</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}</style>
</head>
<body>
<h1>PushProx proxy</h1>
<p>Version {{.Version}}. <a href="/metrics">Metrics</a> · <a href="/clients">Clients (service discovery)</a> · <a href="/-/ready">Ready</a></p>
<h2>Clients ({{.Total}})</h2>
{{if .Clients}}<p>Showing {{.First}}–{{.Last}}.{{if .Prev}} <a href="/?page={{.Prev}}">Previous</a>{{end}}{{if .Next}} <a href="/?page={{.Next}}">Next</a>{{end}}</p>
<table>
<tr><th>FQDN or target</th><th>Targets</th><th>Labels</th><th>Transport</th><th>Connections</th><th>Last contact</th><th>Recent scrapes (oldest first)</th></tr>
{{range .Clients}}<tr><td>{{.FQDN}}</td><td>{{.Targets}}</td><td>{{.Labels}}</td><td>{{.Transport}}</td><td>{{.Connections}}</td><td>{{.LastContact}}</td><td>{{.Outcomes}}</td></tr>
{{end}}</table>{{else}}<p>No client has polled within the registration timeout.</p>{{end}}
</body>
</html>
`))

// clientRow is a client as the landing page shows it.
type clientRow struct {
	FQDN string
	// Targets is, for a client, how many targets it answers for from its
	// targets file; for a target, which client announced it.
	Targets     string
	Labels      string
	Transport   string
	Connections int
	LastContact string
	Outcomes    string
}

// handleLandingPage shows a page of the known clients and the targets they
// answer for, with their labels,
// transport, the age of their last contact and their recent scrape
// outcomes.
func (p *proxy) handleLandingPage(w http.ResponseWriter, r *http.Request) {
	page, err := strconv.Atoi(r.URL.Query().Get("page"))
	if err != nil || page < 1 {
		page = 1
	}
	now := p.hub.Now()
	total := p.hub.Stats().Clients
	offset := (page - 1) * landingPageSize
	var rows []clientRow
	for _, client := range p.hub.Clients(offset, landingPageSize) {
		lastContact := "connected now"
		if !client.Connected() {
			lastContact = now.Sub(client.LastSeen).Truncate(time.Second).String() + " ago"
		}
		name, targets := client.FQDN, strconv.Itoa(client.Targets)
		if client.Target != "" {
			name, targets = client.Target, "via "+client.Via
		}
		rows = append(rows, clientRow{
			FQDN:        name,
			Targets:     targets,
			Labels:      formatLabels(client.Labels),
			Transport:   client.Transport,
			Connections: client.Polls + client.Tunnels,
			LastContact: lastContact,
			Outcomes:    strings.Join(client.Outcomes, " "),
		})
	}
	data := struct {
		Version                        string
		Total, First, Last, Prev, Next int
		Clients                        []clientRow
	}{Version: version.Version, Total: total, Clients: rows, First: offset + 1, Last: offset + len(rows)}
	if page > 1 {
		data.Prev = page - 1
	}
	if offset+len(rows) < total {
		data.Next = page + 1
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := landingPage.Execute(w, data); err != nil {
		level.Debug(p.logger).Log("msg", "writing landing page failed", "err", err)
	}
}

// formatLabels renders labels as Prometheus does: {a="1", b="2"}, with
// values quoted so that one holding `", x="` reads as one value.
func formatLabels(labels map[string]string) string {
	pairs := make([]string, 0, len(labels))
	for name, value := range labels {
		pairs = append(pairs, name+"="+strconv.Quote(value))
	}
	sort.Strings(pairs)
	return "{" + strings.Join(pairs, ", ") + "}"
}
