#!/usr/bin/env bash
# End-to-end test of the monitoring mixin: a real Prometheus loads
# mixin/alerts.yaml while scraping the real binaries (a proxy, a client that
# serves a node exporter through it, and a second proxy with a web config
# file), and
#   - every rule evaluates without error, and every recording rule has data;
#   - every query of mixin/dashboards/pushprox.json, with its template
#     variables filled in, evaluates without error and returns data;
#   - every metric name the rules and the dashboard use is one the binaries
#     export (or a recording rule, or Prometheus' own `up`), so that a
#     renamed metric fails here rather than in a dashboard;
#   - with a copy of the rules whose `for:` is a few seconds, no alert is
#     active while all is well, and stopping the client, breaking the web
#     config file and stopping the second proxy each make their alert go
#     pending (or firing).
#
# Expects ./pushprox-proxy and ./pushprox-client in the repository root
# (`make build`), and prometheus, promtool, prometheus-node-exporter, curl,
# jq and python3 on PATH. All on 127.0.0.1 with free ports. Exits 0 only if
# every check passes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)

readonly PROXY_BIN=$REPO/pushprox-proxy
readonly CLIENT_BIN=$REPO/pushprox-client
readonly RULES=$REPO/mixin/alerts.yaml
readonly DASHBOARD=$REPO/mixin/dashboards/pushprox.json
readonly TOOL=$REPO/mixin/mixin_tool.py
readonly FQDN=127.0.0.1
readonly TOTAL_BUDGET=110 # seconds; every wait is also capped by this
# The password Prometheus uses with the second proxy (its bcrypt hash, cost
# 10, is in the web config below). A fixed test value.
readonly PROM_PASSWORD=prom-secret
# shellcheck disable=SC2016 # a literal bcrypt hash
readonly PROM_HASH='$2a$10$ec1tRtxavf9U2vuvJiNPhOmI6.PlZW3Og7kZkJWNEmyrUAeVy5rty'

START_TIME=$(date +%s)
TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pushprox-mixin-e2e.XXXXXX")
FAILED=()
PASSED=0

# shellcheck source=../e2e-lib.sh
source "$REPO/e2e-lib.sh"


prom_api() {
  curl -fsS --max-time 5 "http://127.0.0.1:$PROM_PORT/api/v1/$1" 2>/dev/null
}

# prom_query EXPR: print the whole JSON answer of an instant query (also
# when Prometheus answers with an error status).
prom_query() {
  curl -sS --max-time 5 "http://127.0.0.1:$PROM_PORT/api/v1/query" \
    --data-urlencode "query=$1" 2>/dev/null
}

# query_matches EXPR JQ_FILTER: the query result satisfies JQ_FILTER.
query_matches() {
  local answer
  answer=$(prom_query "$1") || return 1
  jq -e ".status == \"success\" and (.data.result | $2)" <<<"$answer" >/dev/null
}

# check NAME CAP CMD [ARGS...]: bounded wait for CMD; record PASS/FAIL.
check() {
  local name=$1 cap=$2
  shift 2
  if wait_for "$cap" "$@"; then
    log "PASS: $name"
    PASSED=$((PASSED + 1))
  else
    log "FAIL: $name"
    FAILED+=("$name")
  fi
}

# ---------------------------------------------------------------- setup

for bin in "$PROXY_BIN" "$CLIENT_BIN"; do
  [[ -x $bin ]] || { echo "missing $bin; run 'make build' first" >&2; exit 1; }
done
for tool in prometheus promtool prometheus-node-exporter curl jq python3; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

mapfile -t PORTS < <(free_ports 6)
NE_PORT=${PORTS[0]}
PROXY_PORT=${PORTS[1]}
CLIENT_PORT=${PORTS[2]}
LOCKED_PORT=${PORTS[3]}
PROM_PORT=${PORTS[4]}
POLL_CLIENT_PORT=${PORTS[5]}
PROXY_URL="http://127.0.0.1:$PROXY_PORT"
LOCKED_URL="http://127.0.0.1:$LOCKED_PORT"
log "ports: node-exporter=$NE_PORT proxy=$PROXY_PORT client=$CLIENT_PORT locked-proxy=$LOCKED_PORT prometheus=$PROM_PORT"

# The second proxy has a web config file, so that it exports the metrics
# that only exist with one (auth failures, last reload). Basic auth without
# TLS: only loopback is involved.
cat >"$TMP_DIR/locked-web.yml" <<EOF
basic_auth_users:
  prometheus: $PROM_HASH
EOF

# write_prometheus_config RULE_FILE
write_prometheus_config() {
  cat >"$TMP_DIR/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files:
  - $1
scrape_configs:
  - job_name: pushprox-proxy
    static_configs:
      - targets: ['127.0.0.1:$PROXY_PORT']
  - job_name: pushprox-proxy-locked
    basic_auth:
      username: prometheus
      password: $PROM_PASSWORD
    static_configs:
      - targets: ['127.0.0.1:$LOCKED_PORT']
  - job_name: pushprox-client
    static_configs:
      - targets: ['127.0.0.1:$CLIENT_PORT']
  # A target behind the client, so that the proxy has scrapes to count.
  - job_name: node
    proxy_url: $PROXY_URL/
    static_configs:
      - targets: ['$FQDN:$NE_PORT']
EOF
}

client_registered() {
  curl -fsS --max-time 2 "$PROXY_URL/clients" 2>/dev/null |
    jq -e --arg fqdn "$FQDN" 'any(.[]; .targets | index($fqdn))' >/dev/null
}

start_bg node-exporter prometheus-node-exporter --collector.disable-defaults --collector.loadavg \
  --web.listen-address="127.0.0.1:$NE_PORT"
start_bg proxy "$PROXY_BIN" --web.listen-address="127.0.0.1:$PROXY_PORT" --registration.max-clients=1000
start_bg locked-proxy "$PROXY_BIN" --web.listen-address="127.0.0.1:$LOCKED_PORT" \
  --web.config.file="$TMP_DIR/locked-web.yml"
start_bg client "$CLIENT_BIN" --fqdn="$FQDN" --proxy-url="$PROXY_URL" \
  --metrics-addr="127.0.0.1:$CLIENT_PORT"
# A second client on the poll transport, so that the panels of both
# transports have data (the first one uses a tunnel).
start_bg poll-client "$CLIENT_BIN" --fqdn=poll-client --proxy-url="$PROXY_URL" \
  --proxy.transport=poll --proxy.poll-wait=1s --metrics-addr="127.0.0.1:$POLL_CLIENT_PORT"

wait_for 15 http_ok "http://127.0.0.1:$NE_PORT/metrics" || die "node exporter did not come up"
wait_for 15 http_ok "$PROXY_URL/metrics" || die "proxy did not come up"
wait_for 15 http_ok -u "prometheus:$PROM_PASSWORD" "$LOCKED_URL/metrics" || die "locked-down proxy did not come up"
wait_for 15 http_ok "http://127.0.0.1:$CLIENT_PORT/metrics" || die "client did not come up"
wait_for 20 client_registered || die "client did not show up in $PROXY_URL/clients"
log "client registered"

# The shipped rules must pass promtool before a Prometheus sees them.
promtool check rules "$RULES" >"$TMP_DIR/promtool.log" 2>&1 ||
  { cat "$TMP_DIR/promtool.log"; die "promtool check rules $RULES failed"; }
write_prometheus_config "$RULES"
promtool check config "$TMP_DIR/prometheus.yml" >"$TMP_DIR/promtool.log" 2>&1 ||
  { cat "$TMP_DIR/promtool.log"; die "generated prometheus.yml is invalid"; }

start_bg prometheus prometheus --config.file="$TMP_DIR/prometheus.yml" \
  --storage.tsdb.path="$TMP_DIR/tsdb" --web.listen-address="127.0.0.1:$PROM_PORT"
wait_for 20 http_ok "http://127.0.0.1:$PROM_PORT/-/ready" || die "prometheus did not become ready"
log "prometheus ready"

# ---------------------------------------------------------------- the shipped rules

check 'every target is up' 30 query_matches 'up' \
  'length == 4 and all(.[]; .value[1] == "1")'
# Rates need two samples of each series, the recorded percentiles some
# delivered scrapes: wait until the slowest rule has data.
check 'scrapes delivered through the proxy' 20 query_matches \
  'increase(pushprox_proxy_scrapes_total{outcome="delivered"}[1m]) > 0' 'length > 0'

# all_rules_healthy FILE: every rule of FILE was evaluated, without error.
all_rules_healthy() {
  prom_api rules >"$TMP_DIR/rules.json" || return 1
  jq -e --arg file "$1" '
    [.data.groups[] | select(.file == $file) | .rules[]] as $rules
    | ($rules | length) > 0
      and all($rules[]; .health == "ok" and (.lastError // "") == ""
              and (.lastEvaluation | startswith("0001") | not))' "$TMP_DIR/rules.json" >/dev/null
}
check 'every rule of alerts.yaml evaluates healthy' 20 all_rules_healthy "$RULES"
jq -r '.data.groups[].rules[] | select(.health != "ok" or (.lastError // "") != "")
  | "  unhealthy: \(.name): \(.lastError // .health)"' "$TMP_DIR/rules.json" 2>/dev/null || true

RULE_COUNT=$(jq '[.data.groups[].rules[]] | length' "$TMP_DIR/rules.json")
EXPECTED_RULES=$(grep -cE '^\s*- (record|alert):' "$RULES")
check "Prometheus loaded all $EXPECTED_RULES rules of alerts.yaml" 1 test "$RULE_COUNT" -eq "$EXPECTED_RULES"

# alerts_documented: every alert, as Prometheus loaded it, has a severity,
# a summary, a description and a runbook_url to its own section of the
# runbook.
alerts_documented() {
  "$TOOL" check-alerts "$TMP_DIR/rules.json" "$REPO/docs/runbook.md" >"$TMP_DIR/check-alerts.log"
}
check 'every alert has severity, summary, description and a runbook section' 1 alerts_documented
sed 's/^/  /' "$TMP_DIR/check-alerts.log"

mapfile -t RECORDED < <(jq -r '[.data.groups[].rules[] | select(.type == "recording") | .name] | unique[]' "$TMP_DIR/rules.json")
for name in "${RECORDED[@]}"; do
  check "recording rule $name has data" 20 query_matches "$name" 'length > 0'
done

# ---------------------------------------------------------------- the dashboard

"$TOOL" dashboard-exprs "$DASHBOARD" >"$TMP_DIR/dashboard-exprs.jsonl" ||
  die "could not read the queries of $DASHBOARD"
log "dashboard: $(wc -l <"$TMP_DIR/dashboard-exprs.jsonl") queries"
# Each query, once Prometheus has had time for the rates above, must
# evaluate and return data: an empty answer means a wrong metric or label.
while IFS= read -r line; do
  where=$(jq -r .where <<<"$line")
  expr=$(jq -r .expr <<<"$line")
  check "dashboard $where evaluates with data" 10 query_matches "$expr" 'length > 0'
done <"$TMP_DIR/dashboard-exprs.jsonl"

# ---------------------------------------------------------------- metric names

{
  curl -fsS --max-time 5 "$PROXY_URL/metrics"
  curl -fsS --max-time 5 -u "prometheus:$PROM_PASSWORD" "$LOCKED_URL/metrics"
  curl -fsS --max-time 5 "http://127.0.0.1:$CLIENT_PORT/metrics"
} | "$TOOL" exported >"$TMP_DIR/exported.txt" || die "could not read the binaries' /metrics"
{
  cat "$TMP_DIR/exported.txt"
  printf '%s\n' "${RECORDED[@]}"
  echo up # Prometheus' own series of each target
} | sort -u >"$TMP_DIR/known.txt"
{
  jq -c '.data.groups[].rules[].query' "$TMP_DIR/rules.json"
  jq -c .expr "$TMP_DIR/dashboard-exprs.jsonl"
} | "$TOOL" names >"$TMP_DIR/used.txt"
log "the mixin uses $(wc -l <"$TMP_DIR/used.txt") metric names"
unknown=$(comm -23 "$TMP_DIR/used.txt" "$TMP_DIR/known.txt")
check 'every metric name the mixin uses is exported by the binaries' 1 test -z "$unknown"
[[ -z $unknown ]] || printf '  unknown metric name: %s\n' $unknown
# The extraction must find something real, or the check above proves nothing.
check 'the name extraction finds the proxy and client metrics' 1 \
  grep -qx -e pushprox_proxy_client_connected -e pushprox_client_scrape_duration_seconds_bucket "$TMP_DIR/used.txt"

# ---------------------------------------------------------------- alerts going off

# A copy of the rules whose every `for:` is 2 seconds; the shipped file is
# left as it is. Prometheus switches to it on SIGHUP.
FAST_RULES=$TMP_DIR/alerts-fast.yaml
sed -E 's/^(\s*for:).*/\1 2s/' "$RULES" >"$FAST_RULES"
grep -qE '^\s*for: 2s' "$FAST_RULES" || die "no for: in $RULES to shorten"
write_prometheus_config "$FAST_RULES"
kill -HUP "$(pid_of prometheus)"
check 'Prometheus reloaded the rules with short for:' 15 all_rules_healthy "$FAST_RULES"

# alerts_active: print the active alerts as "name state labels" lines.
alerts_active() {
  prom_api alerts | jq -r '.data.alerts[] | "\(.labels.alertname) \(.state) \(.labels | tostring)"'
}
# no_alert_active: nothing is pending or firing.
no_alert_active() {
  local active
  active=$(alerts_active) || return 1
  [[ -z $active ]]
}
# alert_active NAME JQ_LABEL_FILTER: alert NAME is pending or firing with
# labels that satisfy the filter.
alert_active() {
  prom_api alerts | jq -e --arg name "$1" "any(.data.alerts[]; .labels.alertname == \$name
    and (.state == \"pending\" or .state == \"firing\") and (.labels | $2))" >/dev/null
}

# With every `for:` at 2s an alert whose condition holds shows at once; all
# is well, so none may. Give the fast rules a few evaluations first.
check 'no alert is active while all is well' 15 no_alert_active
alerts_active | sed 's/^/  active: /'

stop client
check 'PushProxClientGoneSilent goes off for the stopped client' 30 \
  alert_active PushProxClientGoneSilent ".fqdn == \"$FQDN\" and .job == \"pushprox-proxy\""
check 'PushProxScrapesFailingNoClient goes off for its proxy' 30 \
  alert_active PushProxScrapesFailingNoClient '.outcome == "no_client" and .job == "pushprox-proxy"'

printf 'basic_auth_users: [not a map\n' >"$TMP_DIR/locked-web.yml"
check 'PushProxWebConfigReloadFailed goes off for the proxy with a broken web config' 20 \
  alert_active PushProxWebConfigReloadFailed '.job == "pushprox-proxy-locked"'

stop locked-proxy
check 'PushProxProxyDown goes off for the stopped proxy' 20 \
  alert_active PushProxProxyDown '.job == "pushprox-proxy-locked"'
alerts_active | sed 's/^/  active: /'

# ---------------------------------------------------------------- result

log "took $(($(date +%s) - START_TIME))s"
if ((${#FAILED[@]} > 0)); then
  log "FAILED checks:"
  printf '  - %s\n' "${FAILED[@]}"
  dump_logs
  echo "mixin e2e: ${PASSED} passed, ${#FAILED[@]} failed"
  exit 1
fi
echo "mixin e2e: ${PASSED} passed, 0 failed"
