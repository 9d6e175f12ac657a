#!/usr/bin/env python3
"""Helpers of mixin/e2e-test.sh (standard library only).

  mixin_tool.py dashboard-exprs DASHBOARD.json
      Prints every PromQL expression of the dashboard, panel targets and
      template variable queries, with the template variables replaced by
      values Prometheus accepts, as one JSON object per line:
      {"where": ..., "expr": ...}.
  mixin_tool.py names
      Reads JSON strings (PromQL expressions), one per line, on standard input
      and prints the metric names they select, one per line, sorted.
  mixin_tool.py exported
      Reads Prometheus text exposition on standard input and prints every
      series name it can have: the sample names, and for histograms and
      summaries the _bucket, _sum and _count series even where a family has
      no sample yet.
  mixin_tool.py check-alerts RULES.json RUNBOOK.md
      Reads Prometheus' /api/v1/rules answer and checks that every alert has
      a severity label, summary and description annotations, and a
      runbook_url whose anchor is a heading of the runbook.
  mixin_tool.py selftest
      Checks the functions above on known inputs.

The metric name extraction is a small tokenizer, not a PromQL parser: it
drops strings, label matchers, ranges, grouping label lists, numbers,
keywords and function names, and what remains are metric names. It is
enough for the expressions of this mixin, and selftest keeps it honest.
"""

import json
import re
import sys

# Grafana's interval variables, as a dashboard shows about an hour.
INTERVALS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "60000",
}

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan", "atan2",
}

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
MATCHERS = re.compile(r"\{[^{}]*\}")
RANGES = re.compile(r"\[[^\[\]]*\]")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
NUMBER = re.compile(r"(?<![A-Za-z0-9_:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?[a-z]*|\.\d+)")
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.DOTALL)


def metric_names(expr):
    """Returns the set of metric names an expression selects."""
    s = STRING.sub('""', expr)
    s = MATCHERS.sub("{}", s)
    s = RANGES.sub("[]", s)
    s = GROUPING.sub(r"\1", s)
    s = NUMBER.sub(" ", s)
    names = set()
    for m in IDENT.finditer(s):
        word = m.group(0)
        rest = s[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function, or an aggregation
        if re.match(r"(by|without)\b", rest, re.IGNORECASE):
            continue  # an aggregation with its grouping first: sum by (...) (...)
        if word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def substitute(expr):
    """Replaces Grafana variables by values Prometheus evaluates: interval
    variables by durations, the others (used in =~ matchers) by .+"""
    def repl(m):
        return INTERVALS.get(m.group(1), ".+")
    return VARIABLE.sub(repl, expr)


def dashboard_exprs(dashboard):
    """Yields (where, expr) for every query of a dashboard, substituted."""
    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                yield f'panel "{p.get("title")}" query {t.get("refId")}', substitute(t["expr"])
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        m = LABEL_VALUES.match(q or "")
        if not m:
            raise ValueError(f"variable {v.get('name')}: only label_values(SELECTOR, LABEL) queries are checked, not {q!r}")
        yield f'variable "{v.get("name")}"', substitute(m.group(1))


def exported_names(text):
    """Returns the set of series names a text exposition can have."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            names.add(name)
            if kind.strip() == "histogram":
                names.update({name + "_bucket", name + "_sum", name + "_count"})
            elif kind.strip() == "summary":
                names.update({name + "_sum", name + "_count"})
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def github_anchor(heading):
    """Returns the anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors(markdown):
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            anchors.add(github_anchor(line.lstrip("#")))
    return anchors


def check_alerts(rules, markdown):
    """Returns the problems of the alerting rules in a /api/v1/rules answer."""
    anchors = runbook_anchors(markdown)
    problems = []
    alerts = [r for g in rules["data"]["groups"] for r in g["rules"] if r.get("type") == "alerting"]
    if not alerts:
        problems.append("no alerting rules")
    for r in alerts:
        name = r["name"]
        labels, annotations = r.get("labels", {}), r.get("annotations", {})
        if labels.get("severity") not in ("critical", "warning", "info"):
            problems.append(f"{name}: severity label {labels.get('severity')!r}")
        for key in ("summary", "description", "runbook_url"):
            if not annotations.get(key, "").strip():
                problems.append(f"{name}: no {key} annotation")
        url = annotations.get("runbook_url", "")
        if not url.startswith("https://github.com/rancher/pushprox/blob/main/docs/runbook.md#"):
            problems.append(f"{name}: runbook_url {url!r} is not into docs/runbook.md")
        anchor = url.partition("#")[2]
        if anchor not in anchors:
            problems.append(f"{name}: runbook_url anchor #{anchor} is no heading of docs/runbook.md")
        if anchor != name.lower():
            problems.append(f"{name}: runbook_url anchor #{anchor} is not the alert's own section")
    return problems


def selftest():
    cases = {
        'sum by (job, instance, outcome) (rate(pushprox_proxy_scrapes_total[5m]))': {"pushprox_proxy_scrapes_total"},
        'a:b:rate5m / ignoring (outcome) group_left () sum by (job) (a:b:rate5m)': {"a:b:rate5m"},
        'max_over_time(x_seconds{fqdn=~"a|b(c)"}[1h]) unless on (job, instance, fqdn) (y == 1) and on (job, instance) (up == 1)':
            {"x_seconds", "y", "up"},
        'histogram_quantile(0.99, sum by (le) (rate(h_bucket{path!="/poll", job=~".+"}[1m]))) > 1e3': {"h_bucket"},
        'count(c{a="{}"} == 0) or vector(0)': {"c"},
        'topk(10, sum by (instance) (rate(e_total[1m] offset 5m)))': {"e_total"},
        'x * 600 > 1 and bool y': {"x", "y"},
        'time() - z': {"z"},
        '(time() - max by (instance, fqdn) (l)) * on (instance, fqdn) group_left (transport) (0 * max by (instance, fqdn, transport) (c) + 1)':
            {"l", "c"},
    }
    failed = 0
    for expr, want in cases.items():
        got = metric_names(expr)
        if got != want:
            print(f"metric_names({expr!r}) = {sorted(got)}, want {sorted(want)}", file=sys.stderr)
            failed += 1
    sub = substitute('rate(x{job=~"$job|${client_job}", i=~"$instance"}[$__rate_interval])')
    if sub != 'rate(x{job=~".+|.+", i=~".+"}[1m])':
        print(f"substitute gave {sub!r}", file=sys.stderr)
        failed += 1
    exposition = "\n".join([
        "# HELP h_seconds x", "# TYPE h_seconds histogram",
        "# TYPE c_total counter", 'c_total{a="b"} 1',
        "# TYPE s summary",
    ])
    want = {"h_seconds", "h_seconds_bucket", "h_seconds_sum", "h_seconds_count", "c_total", "s", "s_sum", "s_count"}
    if exported_names(exposition) != want:
        print(f"exported_names gave {sorted(exported_names(exposition))}", file=sys.stderr)
        failed += 1
    dash = {"panels": [{"type": "row", "panels": [{"title": "t", "targets": [{"refId": "A", "expr": "m{job=~\"$job\"}"}]}]}],
            "templating": {"list": [{"type": "query", "name": "job", "query": {"query": "label_values(v{a=~\"$x\"}, job)"}}]}}
    got = list(dashboard_exprs(dash))
    if got != [('panel "t" query A', 'm{job=~".+"}'), ('variable "job"', 'v{a=~".+"}')]:
        print(f"dashboard_exprs gave {got}", file=sys.stderr)
        failed += 1
    md = "# Title\n\n## PushProxProxyDown\n\n```\n## not a heading\n```\n### What (to) do, now?\n"
    if runbook_anchors(md) != {"title", "pushproxproxydown", "what-to-do-now"}:
        print(f"runbook_anchors gave {sorted(runbook_anchors(md))}", file=sys.stderr)
        failed += 1
    base = "https://github.com/rancher/pushprox/blob/main/docs/runbook.md#"
    good = {"name": "PushProxProxyDown", "type": "alerting", "labels": {"severity": "critical"},
            "annotations": {"summary": "s", "description": "d", "runbook_url": base + "pushproxproxydown"}}
    bad = {"name": "PushProxOther", "type": "alerting", "labels": {},
           "annotations": {"summary": "s", "runbook_url": base + "not-there"}}
    rules = {"data": {"groups": [{"rules": [good, {"name": "r", "type": "recording"}]}]}}
    if check_alerts(rules, md):
        print(f"check_alerts found problems in a good rule: {check_alerts(rules, md)}", file=sys.stderr)
        failed += 1
    rules["data"]["groups"][0]["rules"].append(bad)
    if len(check_alerts(rules, md)) != 4:
        print(f"check_alerts on a bad rule gave {check_alerts(rules, md)}", file=sys.stderr)
        failed += 1
    print(f"mixin_tool selftest: {failed} failed")
    return 1 if failed else 0


def main(argv):
    if argv[1:2] == ["dashboard-exprs"] and len(argv) == 3:
        with open(argv[2]) as f:
            for where, expr in dashboard_exprs(json.load(f)):
                print(json.dumps({"where": where, "expr": expr}))
        return 0
    if argv[1:] == ["names"]:
        names = set()
        for line in sys.stdin:
            if line.strip():
                names |= metric_names(json.loads(line))
        print("\n".join(sorted(names)))
        return 0
    if argv[1:] == ["exported"]:
        print("\n".join(sorted(exported_names(sys.stdin.read()))))
        return 0
    if argv[1:2] == ["check-alerts"] and len(argv) == 4:
        with open(argv[2]) as f:
            rules = json.load(f)
        with open(argv[3]) as f:
            problems = check_alerts(rules, f.read())
        for p in problems:
            print(p)
        return 1 if problems else 0
    if argv[1:] == ["selftest"]:
        return selftest()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
