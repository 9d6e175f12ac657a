#!/usr/bin/env bash
# End-to-end test: a real Prometheus scrapes node exporters through
# pushprox-proxy and pushprox-client, all on 127.0.0.1 with free ports.
#
# Expects ./pushprox-proxy and ./pushprox-client next to this script
# (`make build`), and prometheus, promtool, prometheus-node-exporter, curl,
# jq, openssl and python3 on PATH. Exits 0 only if every check passes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

readonly PROXY_BIN=./pushprox-proxy
readonly CLIENT_BIN=./pushprox-client
readonly FQDN=127.0.0.1
readonly TOTAL_BUDGET=110 # seconds; every wait is also capped by this

START_TIME=$(date +%s)
TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pushprox-e2e.XXXXXX")
PIDS=()
NAMES=()
FAILED=()

log() { printf '%s %s\n' "$(date +%T)" "$*"; }

# ---------------------------------------------------------------- cleanup

cleanup() {
  local rc=$? i pid n
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill "${PIDS[i]}" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for ((n = 0; n < 50; n++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers

# start_bg NAME CMD [ARGS...]: run CMD in the background, logging to
# $TMP_DIR/NAME.log, and remember its pid for cleanup.
start_bg() {
  local name=$1
  shift
  "$@" >"$TMP_DIR/$name.log" 2>&1 &
  PIDS+=("$!")
  NAMES+=("$name")
  log "started $name (pid $!)"
}

# Fail early if a started process has already exited.
check_alive() {
  local i
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
      log "process ${NAMES[i]} (pid ${PIDS[i]}) exited unexpectedly"
      return 1
    fi
  done
}

dump_logs() {
  local name
  for name in "${NAMES[@]}"; do
    echo "----- last 40 lines of $name.log -----"
    tail -n 40 "$TMP_DIR/$name.log" 2>/dev/null || true
  done
  echo "----- end of logs -----"
}

dump_targets() {
  echo "----- /api/v1/targets -----"
  curl -fsS --max-time 5 "http://127.0.0.1:$PROM_PORT/api/v1/targets" 2>&1 |
    jq . 2>&1 || true
}

die() {
  log "FATAL: $*"
  dump_logs
  exit 1
}

remaining_budget() {
  echo $((START_TIME + TOTAL_BUDGET - $(date +%s)))
}

# wait_for CAP_SECONDS CMD [ARGS...]: run CMD every second until it succeeds
# or CAP_SECONDS (further capped by the script's total budget) have passed.
wait_for() {
  local cap=$1 left deadline
  shift
  left=$(remaining_budget)
  ((cap > left)) && cap=$left
  ((cap < 1)) && cap=1
  deadline=$(($(date +%s) + cap))
  while true; do
    if "$@"; then
      return 0
    fi
    if (($(date +%s) >= deadline)); then
      return 1
    fi
    check_alive || return 1
    sleep 1
  done
}

# free_ports N: print N distinct free TCP ports on 127.0.0.1, one per line.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
    s.close()
EOF
}

http_ok() { curl -fsS --max-time 2 -o /dev/null "$@" 2>/dev/null; }

# prom_query EXPR: print the JSON result vector of an instant query.
prom_query() {
  curl -fsS --max-time 3 "http://127.0.0.1:$PROM_PORT/api/v1/query" \
    --data-urlencode "query=$1" 2>/dev/null | jq -c '.data.result'
}

# query_matches EXPR JQ_FILTER: the query result satisfies JQ_FILTER.
query_matches() {
  local result
  result=$(prom_query "$1") || return 1
  jq -e "$2" <<<"$result" >/dev/null
}

# target_info JOB: print the active targets of JOB as JSON.
target_info() {
  curl -fsS --max-time 3 "http://127.0.0.1:$PROM_PORT/api/v1/targets?state=active" 2>/dev/null |
    jq -c --arg job "$1" '[.data.activeTargets[] | select(.scrapePool == $job)
      | {health, lastError, scrapeUrl}]'
}

# noclient_down_with_error: the noclient target is down with a lastError.
noclient_down_with_error() {
  query_matches 'up{job="noclient"}' 'length > 0 and all(.[]; .value[1] == "0")' &&
    target_info noclient |
    jq -e 'length > 0 and all(.[]; .health == "down" and (.lastError // "") != "")' >/dev/null
}

# check NAME CAP CMD [ARGS...]: bounded wait for CMD; record PASS/FAIL.
check() {
  local name=$1 cap=$2
  shift 2
  if wait_for "$cap" "$@"; then
    log "PASS: $name"
  else
    log "FAIL: $name"
    FAILED+=("$name")
  fi
}

# check_query NAME CAP EXPR JQ_FILTER
check_query() {
  check "$1" "$2" query_matches "$3" "$4"
}

readonly ALL_ONE='length > 0 and all(.[]; .value[1] == "1")'
readonly NON_EMPTY='length > 0'

# ---------------------------------------------------------------- setup

for bin in "$PROXY_BIN" "$CLIENT_BIN"; do
  [[ -x $bin ]] || { echo "missing $bin; run 'make build' first" >&2; exit 1; }
done
for tool in prometheus promtool prometheus-node-exporter curl jq openssl python3; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

mapfile -t PORTS < <(free_ports 5)
NE_PORT=${PORTS[0]}
NE_TLS_PORT=${PORTS[1]}
PROXY_PORT=${PORTS[2]}
CLIENT_PORT=${PORTS[3]}
PROM_PORT=${PORTS[4]}
PROXY_URL="http://127.0.0.1:$PROXY_PORT"
log "ports: node-exporter=$NE_PORT node-exporter-tls=$NE_TLS_PORT proxy=$PROXY_PORT client=$CLIENT_PORT prometheus=$PROM_PORT"

make_certs() {
  local d=$TMP_DIR/tls
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=pushprox-e2e-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf '%s\n' \
    'subjectAltName = IP:127.0.0.1, DNS:localhost' \
    'basicConstraints = CA:FALSE' \
    'keyUsage = digitalSignature, keyEncipherment' \
    'extendedKeyUsage = serverAuth' >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
    -CAcreateserial -days 1 -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null
  cat >"$TMP_DIR/node-exporter-web.yml" <<EOF
tls_server_config:
  cert_file: $d/server.crt
  key_file: $d/server.key
EOF
}

node_exporter_args() {
  echo --collector.disable-defaults --collector.loadavg --collector.meminfo \
    --web.listen-address="127.0.0.1:$1"
}

write_prometheus_config() {
  cat >"$TMP_DIR/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  scrape_timeout: 1500ms
  evaluation_interval: 1m
scrape_configs:
  - job_name: static
    proxy_url: $PROXY_URL/
    static_configs:
      - targets: ['$FQDN:$NE_PORT']
  - job_name: filesd
    proxy_url: $PROXY_URL/
    file_sd_configs:
      - files: ['$TMP_DIR/clients.json']
        refresh_interval: 5s
    relabel_configs:
      # /clients lists bare FQDNs; add the node exporter's port.
      - source_labels: [__address__]
        regex: '([^:]+)(?::\d+)?'
        target_label: __address__
        replacement: '\${1}:$NE_PORT'
  - job_name: https
    proxy_url: $PROXY_URL/
    params:
      _scheme: [https]
    static_configs:
      - targets: ['$FQDN:$NE_TLS_PORT']
  - job_name: noclient
    proxy_url: $PROXY_URL/
    static_configs:
      - targets: ['no-such-client.invalid:9100']
EOF
}

client_registered() {
  curl -fsS --max-time 2 "$PROXY_URL/clients" 2>/dev/null |
    jq -e --arg fqdn "$FQDN" 'type == "array" and any(.[]; (.targets // []) | index($fqdn))' >/dev/null
}

make_certs

# shellcheck disable=SC2046 # word splitting of the fixed argument list is intended
start_bg node-exporter prometheus-node-exporter $(node_exporter_args "$NE_PORT")
# shellcheck disable=SC2046
start_bg node-exporter-tls prometheus-node-exporter $(node_exporter_args "$NE_TLS_PORT") \
  --web.config.file="$TMP_DIR/node-exporter-web.yml"
start_bg proxy "$PROXY_BIN" --web.listen-address="127.0.0.1:$PROXY_PORT" --log.level=debug
start_bg client "$CLIENT_BIN" --fqdn="$FQDN" --proxy-url="$PROXY_URL" \
  --metrics-addr="127.0.0.1:$CLIENT_PORT" --tls.cacert="$TMP_DIR/tls/ca.crt" --log.level=debug

wait_for 15 http_ok "http://127.0.0.1:$NE_PORT/metrics" ||
  die "node exporter did not come up"
wait_for 15 http_ok --cacert "$TMP_DIR/tls/ca.crt" "https://127.0.0.1:$NE_TLS_PORT/metrics" ||
  die "TLS node exporter did not come up (or its certificate is not trusted)"
wait_for 15 http_ok "$PROXY_URL/metrics" ||
  die "proxy did not come up"
wait_for 20 client_registered ||
  die "client did not show up in $PROXY_URL/clients"
log "client registered"

curl -fsS --max-time 5 "$PROXY_URL/clients" >"$TMP_DIR/clients.json" ||
  die "could not fetch $PROXY_URL/clients"
log "clients.json: $(cat "$TMP_DIR/clients.json")"

write_prometheus_config
promtool check config "$TMP_DIR/prometheus.yml" >"$TMP_DIR/promtool.log" 2>&1 ||
  { cat "$TMP_DIR/promtool.log"; die "generated prometheus.yml is invalid"; }

start_bg prometheus prometheus --config.file="$TMP_DIR/prometheus.yml" \
  --storage.tsdb.path="$TMP_DIR/tsdb" --web.listen-address="127.0.0.1:$PROM_PORT"
wait_for 20 http_ok "http://127.0.0.1:$PROM_PORT/-/ready" ||
  die "prometheus did not become ready"
log "prometheus ready"

# ---------------------------------------------------------------- checks

check_query 'up{job="static"} == 1' 40 'up{job="static"}' "$ALL_ONE"
check_query 'node_exporter_build_info{job="static"} present' 10 \
  'node_exporter_build_info{job="static"}' "$NON_EMPTY"
check_query 'up{job="filesd"} == 1' 30 'up{job="filesd"}' "$ALL_ONE"
check_query 'up{job="https"} == 1' 20 'up{job="https"}' "$ALL_ONE"
check 'up{job="noclient"} == 0 with lastError' 20 noclient_down_with_error
log "noclient lastError: $(target_info noclient | jq -r '.[0].lastError // "<none>"' 2>/dev/null || true)"

# The failing job must not disturb the others: each must have at least three
# scrapes in the last 8s (four intervals), and all of them successful.
for job in static filesd https; do
  check_query "up{job=\"$job\"} stays 1" 15 \
    "min_over_time(up{job=\"$job\"}[8s]) == 1 and count_over_time(up{job=\"$job\"}[8s]) >= 3" \
    "$ALL_ONE"
done

if ((${#FAILED[@]} > 0)); then
  log "FAILED checks:"
  printf '  - %s\n' "${FAILED[@]}"
  dump_targets
  dump_logs
  log "RESULT: FAIL"
  exit 1
fi
log "RESULT: PASS (all checks passed)"
