#!/usr/bin/env python3
"""Writes pushprox.json, the PushProx Grafana dashboard, next to this file.

The dashboard is generated rather than edited by hand so that panel ids,
positions, data sources and selectors stay consistent. Change this file, run
it, and commit both; `--check` (run by `make mixin-test`) fails when the
committed JSON is not what this file generates.

Only the Python standard library is used.
"""

import json
import pathlib
import sys

OUT = pathlib.Path(__file__).with_name("pushprox.json")

DS = {"type": "prometheus", "uid": "${datasource}"}

# Selectors of the template variables: the proxies' job and instance, and the
# job(s) under which the clients' own metrics are scraped.
PROXY = 'job=~"$job", instance=~"$instance"'
CLIENT = 'job=~"$client_job"'


def target(expr, legend="", ref="A", instant=False, fmt=None):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t.update({"instant": True, "range": False})
    else:
        t.update({"instant": False, "range": True})
    if fmt:
        t["format"] = fmt
    return t


def timeseries(title, targets, unit="short", description="", stack=False, width=12, height=8, overrides=None):
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 20 if stack else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, "min": 0, "custom": custom, "color": {"mode": "palette-classic"}},
            "overrides": overrides or [],
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "_size": (width, height),
    }


def stat(title, targets, unit="short", description="", thresholds=None, width=4, height=4):
    steps = [{"color": "green", "value": None}]
    for value, color in thresholds or []:
        steps.append({"color": color, "value": value})
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": steps},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        },
        "_size": (width, height),
    }


def table(title, targets, description="", transformations=None, overrides=None, width=24, height=10):
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "transformations": transformations or [],
        "fieldConfig": {"defaults": {"custom": {"align": "auto", "filterable": True}}, "overrides": overrides or []},
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""}},
        "_size": (width, height),
    }


def override(name, **props):
    return {"matcher": {"id": "byName", "options": name}, "properties": [{"id": k.replace("_", "."), "value": v} for k, v in props.items()]}


ROWS = [
    ("Fleet", [
        stat("Clients known", [target(f"sum(pushprox_proxy_clients{{{PROXY}}})")],
             description="Client registrations (FQDN and label set) heard from within --registration.timeout, or connected."),
        stat("Clients connected", [target(f"sum by (transport) (pushprox_proxy_clients_connected{{{PROXY}}})", "{{transport}}")],
             description="Client registrations with a live connection now, by transport."),
        stat("Silent clients", [target(f"count(pushprox_proxy_client_connected{{{PROXY}}} == 0) or vector(0)")],
             description="FQDNs the proxies know but that have no connection now (see PushProxClientGoneSilent).",
             thresholds=[(1, "orange")]),
        stat("Parked polls", [target(f"sum(pushprox_proxy_parked_polls{{{PROXY}}})")],
             description="Polls waiting for a scrape."),
        stat("Client limit used", [target(f"max(pushprox_proxy_clients{{{PROXY}}} / pushprox_proxy_max_clients{{{PROXY}}})")],
             unit="percentunit", thresholds=[(0.8, "orange"), (0.95, "red")],
             description="Known clients as a share of --registration.max-clients, on the fullest proxy (see PushProxClientsNearLimit)."),
        stat("Scrapes delivered", [target(
            f'sum(instance_outcome:pushprox_proxy_scrapes:rate5m{{{PROXY}, outcome="delivered"}})'
            f" / sum(instance_outcome:pushprox_proxy_scrapes:rate5m{{{PROXY}}})")],
             unit="percentunit", description="Share of scrapes over the last 5 minutes whose answer reached Prometheus."),
        timeseries("Clients", [
            target(f"sum by (transport) (pushprox_proxy_clients_connected{{{PROXY}}})", "connected ({{transport}})"),
            target(f"sum(pushprox_proxy_clients{{{PROXY}}})", "known", ref="B"),
        ], description="Known clients, and those with a live connection by transport."),
        timeseries("Scrapes by outcome", [
            target(f"sum by (outcome) (rate(pushprox_proxy_scrapes_total{{{PROXY}}}[$__rate_interval]))", "{{outcome}}"),
        ], unit="reqps", stack=True,
            description="Scrapes through the proxies per second: delivered, target_error (the client pushed a 5xx), "
                        "no_client (no poll in time), client_timeout (taken but not answered in time), aborted, refused."),
        timeseries("Failed scrapes by cause (share, 5m)", [
            target(f'instance_outcome:pushprox_proxy_scrapes:ratio_rate5m{{{PROXY}, outcome!="delivered"}}', "{{instance}} {{outcome}}"),
        ], unit="percentunit",
            description="Share of each failing outcome in all scrapes of each proxy; the alerts fire on these ratios."),
        timeseries("Proxied scrapes by status", [
            target(f"sum by (code) (rate(pushproxy_proxied_requests_total{{{PROXY}}}[$__rate_interval]))", "{{code}}"),
        ], unit="reqps", stack=True, description="Scrapes by the HTTP status answered to Prometheus."),
    ]),
    ("Latency", [
        timeseries("Scrape latency by phase", [
            target(f'max by (phase, quantile) (instance_phase_quantile:pushprox_proxy_scrape_phase_seconds:histogram_quantile_rate5m{{{PROXY}}})',
                   "{{phase}} p{{quantile}}"),
        ], unit="s",
            description="Percentiles over 5 minutes of delivered scrapes: waiting for a poll of the target's client "
                        "(wait_for_poll), and the client's round trip until its push arrives (client). Worst proxy."),
        timeseries("Endpoint latency p99", [
            target(f'histogram_quantile(0.99, sum by (path, le) (rate(pushprox_http_duration_seconds_bucket{{{PROXY}, path!="/poll"}}[$__rate_interval])))',
                   "{{path}}"),
        ], unit="s",
            description="Time the proxy takes to answer its own endpoints. /poll is left out: a poll waits for work by design."),
    ]),
    ("Traffic", [
        timeseries("Bytes proxied", [
            target(f"sum by (instance) (rate(pushprox_proxy_proxied_bytes_total{{{PROXY}}}[$__rate_interval]))", "{{instance}}"),
        ], unit="Bps", description="Bytes of scrape answers relayed to Prometheus."),
        timeseries("Polls", [
            target(f'sum by (code) (rate(pushprox_http_requests_total{{{PROXY}, path="/poll"}}[$__rate_interval]))', "answered {{code}}"),
            target(f"sum(rate(pushprox_proxy_polls_empty_total{{{PROXY}}}[$__rate_interval]))", "empty (wait passed)", ref="B"),
            target(f"sum(rate(pushprox_proxy_polls_cut_total{{{PROXY}}}[$__rate_interval]))", "cut", ref="C"),
        ], unit="reqps",
            description="Polls ended per second: by status, those answered empty because the client's wait passed, "
                        "and those whose connection ended first (cut by a load balancer, or the client went away)."),
        timeseries("Client connections established", [
            target(f"sum by (transport) (rate(pushprox_proxy_client_connects_total{{{PROXY}}}[$__rate_interval]))", "{{transport}}"),
        ], unit="ops", description="New connections per second: registrations created (poll) and tunnels accepted (see PushProxClientsFlapping)."),
        timeseries("Refusals", [
            target(f"sum by (reason) (rate(pushprox_proxy_pushes_rejected_total{{{PROXY}}}[$__rate_interval]))", "push: {{reason}}"),
            target(f"sum by (endpoint) (rate(pushprox_proxy_auth_failures_total{{{PROXY}}}[$__rate_interval]))", "auth: {{endpoint}}", ref="B"),
        ], unit="reqps", description="Pushes refused by reason, and requests refused for missing or wrong credentials by endpoint."),
    ]),
    ("Clients", [
        table("Clients", [
            target(f"max by (instance, fqdn, transport) (pushprox_proxy_client_connected{{{PROXY}}})", ref="A", instant=True, fmt="table"),
            target(f"(time() - max by (instance, fqdn) (pushprox_proxy_client_last_seen_timestamp_seconds{{{PROXY}}}))"
                   f" * on (instance, fqdn) group_left (transport) (0 * max by (instance, fqdn, transport) (pushprox_proxy_client_connected{{{PROXY}}}) + 1)",
                   ref="B", instant=True, fmt="table"),
            target(f"sum by (instance, fqdn, transport) (changes(pushprox_proxy_client_connected{{{PROXY}}}[1h]))", ref="C", instant=True, fmt="table"),
        ], description="One row per FQDN a proxy knows (at most 10000 per proxy): whether a client of it is connected, "
                       "how long since its last contact, and how often its connection came and went in the last hour.",
            transformations=[
                {"id": "merge", "options": {}},
                {"id": "organize", "options": {
                    "excludeByName": {"Time": True},
                    "indexByName": {"fqdn": 0, "instance": 1, "transport": 2, "Value #A": 3, "Value #B": 4, "Value #C": 5},
                    "renameByName": {"fqdn": "FQDN", "instance": "Proxy", "transport": "Transport",
                                     "Value #A": "Connected", "Value #B": "Since last contact",
                                     "Value #C": "Connection changes (1h)"},
                }},
                {"id": "sortBy", "options": {"sort": [{"field": "Connected"}]}},
            ],
            overrides=[
                {"matcher": {"id": "byName", "options": "Connected"}, "properties": [
                    {"id": "mappings", "value": [{"type": "value", "options": {
                        "0": {"text": "no", "color": "red", "index": 0},
                        "1": {"text": "yes", "color": "green", "index": 1}}}]},
                    {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                ]},
                override("Since last contact", unit="s"),
            ]),
    ]),
    ("Client binaries", [
        timeseries("Client errors", [
            target(f"sum(rate(pushprox_client_scrape_errors_total{{{CLIENT}}}[$__rate_interval]))", "scrape errors"),
            target(f"sum(rate(pushprox_client_push_errors_total{{{CLIENT}}}[$__rate_interval]))", "push errors", ref="B"),
            target(f"sum(rate(pushprox_client_poll_errors_total{{{CLIENT}}}[$__rate_interval]))", "poll errors", ref="C"),
            target(f"sum(rate(pushprox_client_poll_cuts_total{{{CLIENT}}}[$__rate_interval]))", "poll cuts", ref="D"),
        ], unit="ops",
            description="From the clients' own metrics: scrapes failed or refused (pushed back as 500), pushes failed, "
                        "polls failed, and polls cut by a 502/503/504 from something in between (also counted as poll errors)."),
        timeseries("Client scrape duration", [
            target(f"histogram_quantile({q}, sum by (le) (job_le:pushprox_client_scrape_duration_seconds_bucket:rate5m{{{CLIENT}}}))", f"p{q}", ref=ref)
            for q, ref in (("0.5", "A"), ("0.9", "B"), ("0.99", "C"))
        ], unit="s", description="From taking a scrape request to the end of pushing its answer, failed scrapes included, over all clients."),
        timeseries("Clients by transport", [
            target(f"sum by (transport) (pushprox_client_transport{{{CLIENT}}})", "{{transport}}"),
        ], description="Clients whose metrics are scraped, by the transport they use now."),
        timeseries("Clients with the most scrape errors", [
            target(f"topk(10, sum by (instance) (rate(pushprox_client_scrape_errors_total{{{CLIENT}}}[$__rate_interval])))", "{{instance}}"),
        ], unit="ops", description="The ten clients failing or refusing the most scrapes."),
    ]),
    ("Build", [
        table("Versions running", [
            target('count by (job, version, revision, branch, goversion) (pushprox_build_info{job=~"$job|$client_job"})',
                   instant=True, fmt="table"),
        ], description="Proxies and clients by build, from pushprox_build_info.",
            transformations=[{"id": "organize", "options": {
                "excludeByName": {"Time": True},
                "renameByName": {"Value": "Processes"},
            }}], height=6),
    ]),
]


def variable(name, label, query, include_all=True):
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "StandardVariableQuery"},
        "refresh": 2,
        "includeAll": include_all,
        "allValue": ".+",
        "multi": True,
        "sort": 1,
        "current": {},
        "hide": 0,
        "regex": "",
        "options": [],
        "skipUrlSync": False,
    }


def layout():
    panels = []
    next_id = 1
    y = 0
    for title, members in ROWS:
        panels.append({"type": "row", "title": title, "collapsed": False, "id": next_id,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in members:
            w, h = panel.pop("_size")
            if x + w > 24:
                x, y = 0, y + row_height
                row_height = 0
            panel["id"] = next_id
            next_id += 1
            panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            x += w
            row_height = max(row_height, h)
            panels.append(panel)
        y += row_height
    return panels


def dashboard():
    return {
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "description": "PushProx proxies and clients: fleet, scrape outcomes and latency, traffic, per-client state, builds. "
                       "Needs the recording rules of the PushProx mixin (mixin/alerts.yaml).",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": layout(),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["pushprox", "prometheus"],
        "templating": {"list": [
            {
                "type": "datasource",
                "name": "datasource",
                "label": "Data source",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "refresh": 1,
                "regex": "",
                "options": [],
                "skipUrlSync": False,
            },
            variable("job", "Proxy job", "label_values(pushprox_proxy_clients, job)"),
            variable("instance", "Proxy", 'label_values(pushprox_proxy_clients{job=~"$job"}, instance)'),
            variable("client_job", "Client job", "label_values(pushprox_client_poll_errors_total, job)"),
        ]},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "PushProx",
        "uid": "pushprox-overview",
        "version": 1,
        "weekStart": "",
    }


def validate(d):
    """Returns what is wrong with a dashboard that Grafana would not say
    until someone looked: duplicate ids, overlapping or out-of-grid panels,
    panels without a query or with duplicate query ids."""
    problems = []
    seen_ids = set()
    cells = {}
    for p in d["panels"]:
        title = p.get("title")
        if p["id"] in seen_ids:
            problems.append(f"panel {title!r}: duplicate id {p['id']}")
        seen_ids.add(p["id"])
        g = p["gridPos"]
        if g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24:
            problems.append(f"panel {title!r}: outside the 24-column grid: {g}")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problems.append(f"panel {title!r} overlaps {cells[(x, y)]!r} at {x},{y}")
                    break
                cells[(x, y)] = title
            else:
                continue
            break
        if p["type"] == "row":
            continue
        refs = [t["refId"] for t in p.get("targets", [])]
        if not refs:
            problems.append(f"panel {title!r}: no query")
        if len(refs) != len(set(refs)):
            problems.append(f"panel {title!r}: duplicate refIds {refs}")
        if p.get("datasource") != DS or any(t.get("datasource") != DS for t in p.get("targets", [])):
            problems.append(f"panel {title!r}: not on the ${{datasource}} variable")
    return problems


def render():
    d = dashboard()
    problems = validate(d)
    if problems:
        raise SystemExit("\n".join(problems))
    return json.dumps(d, indent=2, sort_keys=False) + "\n"


def main(argv):
    text = render()
    if argv[1:] == ["--check"]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is not what {__file__} generates: run it and commit the result", file=sys.stderr)
            return 1
        return 0
    if argv[1:]:
        print(f"usage: {argv[0]} [--check]", file=sys.stderr)
        return 2
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
