package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/go-kit/log/level"

	"github.com/rancher/pushprox/util"
)

// clientGroup is a target group of Prometheus' file_sd and http_sd formats.
type clientGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// handleClients lists the known clients as file_sd and http_sd target
// groups, one group per client and per target a client answers for from
// its targets file (listed as the file writes it, host:port), written as they are encoded so that a
// large fleet costs no more memory than a snapshot of it. Query parameters
// label=name=value keep only clients with those labels.
func (p *proxy) handleClients(w http.ResponseWriter, r *http.Request) {
	filter := map[string]string{}
	for _, pair := range r.URL.Query()["label"] {
		name, value, err := util.ParseLabel(pair)
		if err != nil {
			httpError(w, http.StatusBadRequest, "bad label filter: %v", err)
			return
		}
		filter[name] = value
	}
	w.Header().Set("Content-Type", "application/json")
	out := bufio.NewWriterSize(w, 32<<10)
	out.WriteByte('[')
	first := true
	for _, client := range p.hub.Clients(0, 0) {
		if !matchLabels(client.Labels, filter) {
			continue
		}
		if !first {
			out.WriteByte(',')
		}
		first = false
		target := client.Target
		if target == "" {
			target = discoveryTarget(client.FQDN)
		}
		group, err := json.Marshal(clientGroup{Targets: []string{target}, Labels: client.Labels})
		if err != nil {
			level.Debug(p.logger).Log("msg", "encoding client list failed", "err", err)
			return
		}
		out.Write(group)
	}
	out.WriteString("]\n")
	if err := out.Flush(); err != nil {
		level.Debug(p.logger).Log("msg", "writing client list failed", "err", err)
	}
}

// discoveryTarget is how a client's name is listed: an IPv6 address in
// brackets, so that appending ":port" (the usual relabelling) gives a
// valid address.
func discoveryTarget(fqdn string) string {
	if strings.Contains(fqdn, ":") && !strings.HasPrefix(fqdn, "[") {
		return "[" + fqdn + "]"
	}
	return fqdn
}

// matchLabels reports whether labels has every name and value of filter.
func matchLabels(labels, filter map[string]string) bool {
	for name, value := range filter {
		if got, ok := labels[name]; !ok || got != value {
			return false
		}
	}
	return true
}
