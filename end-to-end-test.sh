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
FAILED=()

# shellcheck source=e2e-lib.sh
source ./e2e-lib.sh

dump_targets() {
  echo "----- /api/v1/targets -----"
  curl -fsS --max-time 5 "http://127.0.0.1:$PROM_PORT/api/v1/targets" 2>&1 |
    jq . 2>&1 || true
}


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

# promtool_lint URL: the metrics at URL pass promtool's checks.
promtool_lint() {
  local out
  out=$(curl -fsS --max-time 3 "$1" 2>/dev/null) || return 1
  promtool check metrics <<<"$out" >"$TMP_DIR/promtool-metrics.log" 2>&1
}

# health_ok: both binaries report healthy and ready.
health_ok() {
  local url
  for url in "$PROXY_URL" "http://127.0.0.1:$CLIENT_PORT"; do
    http_ok "$url/-/healthy" && http_ok "$url/-/ready" || return 1
  done
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

mapfile -t PORTS < <(free_ports 19)
NE_PORT=${PORTS[0]}
NE_TLS_PORT=${PORTS[1]}
PROXY_PORT=${PORTS[2]}
CLIENT_PORT=${PORTS[3]}
PROM_PORT=${PORTS[4]}
NE_AUTH_PORT=${PORTS[5]}
LOCKED_PROXY_PORT=${PORTS[6]}
LOCKED_CLIENT_PORT=${PORTS[7]}
NGINX_PLAIN_PORT=${PORTS[8]}
NGINX_WS_PORT=${PORTS[9]}
NGINX_PLAIN_CLIENT_PORT=${PORTS[10]}
NGINX_WS_CLIENT_PORT=${PORTS[11]}
# nginx cuts requests idle for this long: polls and tunnels must survive it.
readonly NGINX_READ_TIMEOUT=3
BLACKBOX_PORT=${PORTS[12]}
HANGING_PORT=${PORTS[13]}
# One gateway client for a site: node exporters on two other loopback
# addresses, listed in its targets file.
GW_CLIENT_PORT=${PORTS[14]}
NE_SITE_A_PORT=${PORTS[15]}
NE_SITE_B_PORT=${PORTS[16]}
# nginx with an upstream keep-alive pool, as ingress-nginx runs by default.
NGINX_POOL_PORT=${PORTS[17]}
NGINX_POOL_CLIENT_PORT=${PORTS[18]}
PROXY_URL="http://127.0.0.1:$PROXY_PORT"
LOCKED_PROXY_URL="https://127.0.0.1:$LOCKED_PROXY_PORT"
log "ports: node-exporter=$NE_PORT node-exporter-tls=$NE_TLS_PORT proxy=$PROXY_PORT client=$CLIENT_PORT prometheus=$PROM_PORT"
log "locked-down ports: node-exporter-auth=$NE_AUTH_PORT proxy=$LOCKED_PROXY_PORT client=$LOCKED_CLIENT_PORT"

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

# The locked-down deployment: a proxy with TLS and basic auth, a client that
# authenticates with a password file and may scrape one target only, and a
# target that wants its own credentials. Fixed test passwords, bcrypt cost 10.
readonly PROM_PASSWORD=prom-secret     # Prometheus to the proxy
readonly CLIENT_PASSWORD=client-secret # the client to the proxy
readonly TARGET_PASSWORD=target-secret # Prometheus to the target, through both
# shellcheck disable=SC2016 # a literal bcrypt hash
readonly PROM_HASH='$2a$10$ec1tRtxavf9U2vuvJiNPhOmI6.PlZW3Og7kZkJWNEmyrUAeVy5rty'
# shellcheck disable=SC2016 # a literal bcrypt hash
readonly CLIENT_HASH='$2a$10$yk9wr083UhKCwPtzIey79O8VtXt97aSb/6iHNy.lYxBZFBhIzDbIC'
# shellcheck disable=SC2016 # a literal bcrypt hash
readonly TARGET_HASH='$2a$10$BK/ES2sG.lPNh.SXqNGoUubC/OxDKC5r4wVPdiSswfT.tYFIK1ewW'

write_locked_configs() {
  local d=$TMP_DIR/tls
  cat >"$TMP_DIR/locked-proxy-web.yml" <<EOF
tls_server_config:
  cert_file: $d/server.crt
  key_file: $d/server.key
basic_auth_users:
  prometheus: $PROM_HASH
  client: $CLIENT_HASH
EOF
  cat >"$TMP_DIR/node-exporter-auth-web.yml" <<EOF
tls_server_config:
  cert_file: $d/server.crt
  key_file: $d/server.key
basic_auth_users:
  target: $TARGET_HASH
EOF
  # The client's own metrics listener: TLS, and Prometheus' user.
  cat >"$TMP_DIR/locked-client-web.yml" <<EOF
tls_server_config:
  cert_file: $d/server.crt
  key_file: $d/server.key
basic_auth_users:
  prometheus: $PROM_HASH
EOF
  printf '%s\n' "$CLIENT_PASSWORD" >"$TMP_DIR/client.password"
  chmod 600 "$TMP_DIR/client.password"
}

# A real nginx between clients and the proxy, with a short
# proxy_read_timeout: once with nginx' defaults (no Upgrade passed, so the
# client polls and takes nginx' 504s for cuts), once set up for WebSockets
# (the client's tunnel passes, kept alive by its pings), and once with a
# pool of upstream connections kept alive between requests (no Upgrade
# passed either), as ingress-nginx runs by default: the proxy takes each
# answered poll's connection back for the next request nginx sends on it.
write_nginx_config() {
  local d=$TMP_DIR/nginx
  mkdir -p "$d/tmp"
  chmod 777 "$d/tmp"
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  server {
    listen 127.0.0.1:$NGINX_PLAIN_PORT;
    location / {
      proxy_pass http://127.0.0.1:$PROXY_PORT;
      proxy_read_timeout ${NGINX_READ_TIMEOUT}s;
    }
  }
  upstream pushprox_pool {
    server 127.0.0.1:$PROXY_PORT;
    keepalive 4;
  }
  server {
    listen 127.0.0.1:$NGINX_POOL_PORT;
    location / {
      proxy_pass http://pushprox_pool;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout ${NGINX_READ_TIMEOUT}s;
    }
  }
  server {
    listen 127.0.0.1:$NGINX_WS_PORT;
    location / {
      proxy_pass http://127.0.0.1:$PROXY_PORT;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout ${NGINX_READ_TIMEOUT}s;
      proxy_buffering off;
    }
  }
}
EOF
}

# nginx_client_on TRANSPORT FQDN: the proxy has the client FQDN connected
# by TRANSPORT now.
nginx_client_on() {
  curl -fsS --max-time 2 "$PROXY_URL/metrics" 2>/dev/null |
    grep -q "^pushprox_proxy_client_connected{fqdn=\"$2\",transport=\"$1\"} 1"
}

# A blackbox exporter whose probe target accepts connections and never
# answers: through the proxy, the probe must fail within the time the
# client gives it (probe_success 0) while the scrape itself succeeds (up 1),
# as without a proxy.
write_blackbox_config() {
  cat >"$TMP_DIR/blackbox.yml" <<EOF
modules:
  http_2xx:
    prober: http
    timeout: 60s
EOF
}

start_hanging_target() {
  start_bg hanging-target python3 -c '
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
held = []
while True:
    conn, _ = s.accept()
    held.append(conn)
' "$HANGING_PORT"
}

node_exporter_args() {
  echo --collector.disable-defaults --collector.loadavg --collector.meminfo \
    --web.listen-address="${2:-127.0.0.1}:$1"
}

# The gateway's targets file: each group's labels are merged over the
# gateway's own --label.
write_gateway_targets() {
  cat >"$TMP_DIR/gateway-targets.yml" <<EOF
- targets: ['127.0.0.2:$NE_SITE_A_PORT']
  labels: {site: branch-a, exporter: node}
- targets: ['127.0.0.3:$NE_SITE_B_PORT']
  labels: {site: branch-b, exporter: node}
EOF
}

# gateway_targets_listed: /clients lists both targets of the gateway.
gateway_targets_listed() {
  curl -fsS --max-time 2 "$PROXY_URL/clients?label=exporter=node" 2>/dev/null |
    jq -e 'length == 2' >/dev/null
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
  # http_sd straight from the proxy, filtered by the client's labels.
  - job_name: httpsd
    proxy_url: $PROXY_URL/
    http_sd_configs:
      - url: $PROXY_URL/clients?label=env=e2e
        refresh_interval: 5s
    relabel_configs:
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
  # scheme: https the normal way: Prometheus sends CONNECT, the client
  # dials the target, and TLS runs from Prometheus to the node exporter.
  - job_name: connect
    scheme: https
    proxy_url: $PROXY_URL/
    tls_config:
      ca_file: $TMP_DIR/tls/ca.crt
    static_configs:
      - targets: ['$FQDN:$NE_TLS_PORT']
  # Through nginx with a ${NGINX_READ_TIMEOUT}s proxy_read_timeout, scraped less often
  # than that, so that every client connection sits idle past it.
  - job_name: nginx-plain
    scrape_interval: 5s
    scrape_timeout: 4s
    proxy_url: $PROXY_URL/
    static_configs:
      - targets: ['nginx-plain:$NE_PORT']
  - job_name: nginx-ws
    scrape_interval: 5s
    scrape_timeout: 4s
    proxy_url: $PROXY_URL/
    static_configs:
      - targets: ['nginx-ws:$NE_PORT']
  - job_name: nginx-pool
    scrape_interval: 5s
    scrape_timeout: 4s
    proxy_url: $PROXY_URL/
    static_configs:
      - targets: ['nginx-pool:$NE_PORT']
  - job_name: blackbox
    scrape_interval: 5s
    scrape_timeout: 4s
    proxy_url: $PROXY_URL/
    metrics_path: /probe
    params:
      module: [http_2xx]
      target: ['http://127.0.0.1:$HANGING_PORT/']
    static_configs:
      - targets: ['$FQDN:$BLACKBOX_PORT']
  # One gateway client for a site: /clients lists each target of its
  # targets file as host:port with its labels, so no relabelling is needed.
  - job_name: gateway
    proxy_url: $PROXY_URL/
    http_sd_configs:
      - url: $PROXY_URL/clients?label=exporter=node
        refresh_interval: 5s
  - job_name: noclient
    proxy_url: $PROXY_URL/
    static_configs:
      - targets: ['no-such-client.invalid:9100']
  # Locked down: TLS and credentials to the proxy in proxy_url (sent as
  # Proxy-Authorization); tls_config verifies the proxy, as the targets are
  # plain http to Prometheus. basic_auth is the target's own.
  - job_name: locked
    proxy_url: https://prometheus:$PROM_PASSWORD@127.0.0.1:$LOCKED_PROXY_PORT/
    tls_config:
      ca_file: $TMP_DIR/tls/ca.crt
    basic_auth:
      username: target
      password: $TARGET_PASSWORD
    params:
      _scheme: [https]
    static_configs:
      - targets: ['$FQDN:$NE_AUTH_PORT']
  - job_name: locked-wrong-password
    proxy_url: https://prometheus:not-$PROM_PASSWORD@127.0.0.1:$LOCKED_PROXY_PORT/
    tls_config:
      ca_file: $TMP_DIR/tls/ca.crt
    basic_auth:
      username: target
      password: $TARGET_PASSWORD
    params:
      _scheme: [https]
    static_configs:
      - targets: ['$FQDN:$NE_AUTH_PORT']
EOF
}

client_registered() {
  curl -fsS --max-time 2 "$PROXY_URL/clients" 2>/dev/null |
    jq -e --arg fqdn "$FQDN" 'type == "array" and any(.[]; (.targets // []) | index($fqdn))' >/dev/null
}

# locked_client_registered: the locked-down client is listed by its proxy.
locked_client_registered() {
  curl -fsS --max-time 2 --cacert "$TMP_DIR/tls/ca.crt" -u "prometheus:$PROM_PASSWORD" \
    "$LOCKED_PROXY_URL/clients" 2>/dev/null |
    jq -e --arg fqdn "$FQDN" 'type == "array" and any(.[]; (.targets // []) | index($fqdn))' >/dev/null
}

# locked_status EXPECTED CURL_ARGS...: curl answers with status EXPECTED.
locked_status() {
  local want=$1 got
  shift
  got=$(curl -sS --max-time 5 -o "$TMP_DIR/locked-answer" -w '%{http_code}' \
    --cacert "$TMP_DIR/tls/ca.crt" "$@" 2>/dev/null) || return 1
  [[ $got == "$want" ]]
}

# locked_refuses_other_target: asked for a target not in its --scrape.allow,
# the client pushes the reason back.
locked_refuses_other_target() {
  locked_status 500 --proxy "$LOCKED_PROXY_URL" --proxy-user "prometheus:$PROM_PASSWORD" \
    --proxy-cacert "$TMP_DIR/tls/ca.crt" -H 'X-Prometheus-Scrape-Timeout-Seconds: 5' \
    "http://$FQDN:$NE_PORT/metrics" &&
    grep -q 'not allowed by --scrape.allow' "$TMP_DIR/locked-answer"
}

# locked_wrong_password_down: the job with a wrong proxy password is down
# with the proxy's 407.
locked_wrong_password_down() {
  target_info locked-wrong-password |
    jq -e 'length > 0 and all(.[]; .health == "down" and ((.lastError // "") | test("407")))' >/dev/null
}

make_certs
write_locked_configs
write_nginx_config
write_blackbox_config
write_gateway_targets

# shellcheck disable=SC2046 # word splitting of the fixed argument list is intended
start_bg node-exporter prometheus-node-exporter $(node_exporter_args "$NE_PORT")
# shellcheck disable=SC2046
start_bg node-exporter-tls prometheus-node-exporter $(node_exporter_args "$NE_TLS_PORT") \
  --web.config.file="$TMP_DIR/node-exporter-web.yml"
start_bg proxy "$PROXY_BIN" --web.listen-address="127.0.0.1:$PROXY_PORT" --log.level=debug
start_bg client "$CLIENT_BIN" --fqdn="$FQDN" --proxy-url="$PROXY_URL" \
  --metrics-addr="127.0.0.1:$CLIENT_PORT" --tls.cacert="$TMP_DIR/tls/ca.crt" --log.level=debug \
  --label=env=e2e --label=rack=r1
# shellcheck disable=SC2046
start_bg node-exporter-auth prometheus-node-exporter $(node_exporter_args "$NE_AUTH_PORT") \
  --web.config.file="$TMP_DIR/node-exporter-auth-web.yml"
start_bg locked-proxy "$PROXY_BIN" --web.listen-address="127.0.0.1:$LOCKED_PROXY_PORT" \
  --web.config.file="$TMP_DIR/locked-proxy-web.yml" --log.level=debug
start_bg locked-client "$CLIENT_BIN" --fqdn="$FQDN" --proxy-url="$LOCKED_PROXY_URL" \
  --tls.cacert="$TMP_DIR/tls/ca.crt" --proxy.username=client \
  --proxy.password-file="$TMP_DIR/client.password" \
  --scrape.tls.cacert="$TMP_DIR/tls/ca.crt" --scrape.allow="$FQDN:$NE_AUTH_PORT/metrics" \
  --metrics-addr="127.0.0.1:$LOCKED_CLIENT_PORT" --web.config.file="$TMP_DIR/locked-client-web.yml" \
  --log.level=debug

# shellcheck disable=SC2046
start_bg node-exporter-site-a prometheus-node-exporter $(node_exporter_args "$NE_SITE_A_PORT" 127.0.0.2)
# shellcheck disable=SC2046
start_bg node-exporter-site-b prometheus-node-exporter $(node_exporter_args "$NE_SITE_B_PORT" 127.0.0.3)
start_bg client-gateway "$CLIENT_BIN" --fqdn=gateway.e2e --proxy-url="$PROXY_URL" \
  --targets.file="$TMP_DIR/gateway-targets.yml" --label=gateway=gw1 \
  --metrics-addr="127.0.0.1:$GW_CLIENT_PORT" --log.level=debug

start_hanging_target
start_bg blackbox prometheus-blackbox-exporter --config.file="$TMP_DIR/blackbox.yml" \
  --web.listen-address="127.0.0.1:$BLACKBOX_PORT"
start_bg nginx nginx -p "$TMP_DIR/nginx" -c "$TMP_DIR/nginx/nginx.conf" -g 'daemon off;'
# The clients answer for a name of their own and scrape the node exporter
# on 127.0.0.1.
start_bg client-nginx-plain "$CLIENT_BIN" --fqdn=nginx-plain --proxy-url="http://127.0.0.1:$NGINX_PLAIN_PORT" \
  --use-localhost --allow-port="$NE_PORT" --metrics-addr="127.0.0.1:$NGINX_PLAIN_CLIENT_PORT" --log.level=debug
start_bg client-nginx-ws "$CLIENT_BIN" --fqdn=nginx-ws --proxy-url="http://127.0.0.1:$NGINX_WS_PORT" \
  --use-localhost --allow-port="$NE_PORT" --metrics-addr="127.0.0.1:$NGINX_WS_CLIENT_PORT" \
  --tunnel.ping-interval=1s --log.level=debug
start_bg client-nginx-pool "$CLIENT_BIN" --fqdn=nginx-pool --proxy-url="http://127.0.0.1:$NGINX_POOL_PORT" \
  --use-localhost --allow-port="$NE_PORT" --metrics-addr="127.0.0.1:$NGINX_POOL_CLIENT_PORT" --log.level=debug

wait_for 15 http_ok "http://127.0.0.1:$NE_PORT/metrics" ||
  die "node exporter did not come up"
wait_for 15 http_ok --cacert "$TMP_DIR/tls/ca.crt" "https://127.0.0.1:$NE_TLS_PORT/metrics" ||
  die "TLS node exporter did not come up (or its certificate is not trusted)"
wait_for 15 http_ok "$PROXY_URL/metrics" ||
  die "proxy did not come up"
wait_for 20 client_registered ||
  die "client did not show up in $PROXY_URL/clients"
log "client registered"
wait_for 20 locked_client_registered ||
  die "locked-down client did not show up in $LOCKED_PROXY_URL/clients"
log "locked-down client registered"
wait_for 20 gateway_targets_listed ||
  die "the gateway's targets did not show up in $PROXY_URL/clients"
log "gateway targets: $(curl -fsS --max-time 2 "$PROXY_URL/clients?label=exporter=node")"

# The gateway's entries have a job of their own, so the filesd job, which
# relabels every entry to the node exporter's port, leaves them out.
curl -fsS --max-time 5 "$PROXY_URL/clients" | jq '[.[] | select(.labels.gateway == null)]' >"$TMP_DIR/clients.json" ||
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
check_query 'up{job="filesd"} carries the client labels env="e2e", rack="r1"' 10 \
  'up{job="filesd",env="e2e",rack="r1"}' "$ALL_ONE"
check_query 'up{job="httpsd"} == 1 with the client labels (http_sd from /clients?label=env=e2e)' 30 \
  'up{job="httpsd",env="e2e",rack="r1"}' "$ALL_ONE"
check_query 'up{job="https"} == 1' 20 'up{job="https"}' "$ALL_ONE"
check_query 'up{job="connect"} == 1 (scheme: https through CONNECT, TLS end to end)' 20 'up{job="connect"}' "$ALL_ONE"
check 'nginx with defaults: the client polls through it' 20 nginx_client_on poll nginx-plain
check 'nginx set up for WebSockets: the client keeps a tunnel through it' 20 nginx_client_on tunnel nginx-ws
check_query 'up{job="nginx-plain"} == 1 (polls through nginx)' 30 'up{job="nginx-plain"}' "$ALL_ONE"
check_query 'up{job="nginx-ws"} == 1 (a tunnel through nginx)' 30 'up{job="nginx-ws"}' "$ALL_ONE"
check 'nginx with an upstream keep-alive pool: the client polls through it' 20 nginx_client_on poll nginx-pool
check_query 'up{job="nginx-pool"} == 1 (polls through pooled nginx connections)' 30 'up{job="nginx-pool"}' "$ALL_ONE"
check_query 'blackbox probe of a hanging target through the proxy: up == 1' 30 'up{job="blackbox"}' "$ALL_ONE"
check_query 'blackbox probe of a hanging target through the proxy: probe_success == 0' 10 \
  'probe_success{job="blackbox"} == 0' "$NON_EMPTY"
check_query 'one gateway client: up{job="gateway"} == 1 for the node exporter of site branch-a on 127.0.0.2' 30 \
  "up{job=\"gateway\",instance=\"127.0.0.2:$NE_SITE_A_PORT\",site=\"branch-a\",gateway=\"gw1\"}" "$ALL_ONE"
check_query 'one gateway client: up{job="gateway"} == 1 for the node exporter of site branch-b on 127.0.0.3' 10 \
  "up{job=\"gateway\",instance=\"127.0.0.3:$NE_SITE_B_PORT\",site=\"branch-b\",gateway=\"gw1\"}" "$ALL_ONE"
check_query 'one gateway client: node_exporter_build_info of both sites' 10 \
  'count(node_exporter_build_info{job="gateway"}) == 2' "$NON_EMPTY"
check 'up{job="noclient"} == 0 with lastError' 20 noclient_down_with_error
log "noclient lastError: $(target_info noclient | jq -r '.[0].lastError // "<none>"' 2>/dev/null || true)"

check_query 'up{job="locked"} == 1 (TLS and basic auth to the proxy, basic auth to the target)' 20 \
  'up{job="locked"}' "$ALL_ONE"
check_query 'node_exporter_build_info{job="locked"} present' 10 \
  'node_exporter_build_info{job="locked"}' "$NON_EMPTY"
check 'locked proxy: wrong proxy password in Prometheus is down with 407' 20 locked_wrong_password_down
log "locked-wrong-password lastError: $(target_info locked-wrong-password | jq -r '.[0].lastError // "<none>"' 2>/dev/null || true)"
check 'locked proxy: scrape without credentials gets 407' 5 \
  locked_status 407 --proxy "$LOCKED_PROXY_URL" --proxy-cacert "$TMP_DIR/tls/ca.crt" "http://$FQDN:$NE_AUTH_PORT/metrics"
check 'locked proxy: /clients without credentials gets 401' 5 \
  locked_status 401 "$LOCKED_PROXY_URL/clients"
check 'locked proxy: poll with the wrong password gets 401' 5 \
  locked_status 401 -u "client:$PROM_PASSWORD" --data-binary "$FQDN" "$LOCKED_PROXY_URL/poll"
check 'locked client: target outside --scrape.allow refused with the reason' 10 locked_refuses_other_target
check 'locked client: metrics listener wants credentials' 5 \
  locked_status 401 "https://127.0.0.1:$LOCKED_CLIENT_PORT/metrics"
check 'locked client: metrics listener with credentials' 5 \
  locked_status 200 -u "prometheus:$PROM_PASSWORD" "https://127.0.0.1:$LOCKED_CLIENT_PORT/metrics"

check 'proxy metrics pass promtool check metrics' 5 promtool_lint "$PROXY_URL/metrics"
check 'client metrics pass promtool check metrics' 5 promtool_lint "http://127.0.0.1:$CLIENT_PORT/metrics"
check 'proxy and client answer /-/healthy and /-/ready' 10 health_ok

# The failing job must not disturb the others: each must have at least three
# scrapes in the last 8s (four intervals), and all of them successful.
for job in static filesd httpsd https connect locked; do
  check_query "up{job=\"$job\"} stays 1" 15 \
    "min_over_time(up{job=\"$job\"}[8s]) == 1 and count_over_time(up{job=\"$job\"}[8s]) >= 3" \
    "$ALL_ONE"
done

# Across idle gaps longer than nginx' read timeout, every scrape through it
# succeeds: at least three in the last 14s, all up.
for job in nginx-plain nginx-ws nginx-pool; do
  check_query "up{job=\"$job\"} stays 1 across nginx' idle cuts" 20 \
    "min_over_time(up{job=\"$job\"}[14s]) == 1 and count_over_time(up{job=\"$job\"}[14s]) >= 3" \
    "$ALL_ONE"
done
check 'nginx with WebSockets: the tunnel was never replaced' 5 \
  bash -c "[[ \$(grep -c 'tunnel open' '$TMP_DIR/client-nginx-ws.log') == 1 ]]"

if ((${#FAILED[@]} > 0)); then
  log "FAILED checks:"
  printf '  - %s\n' "${FAILED[@]}"
  dump_targets
  dump_logs
  log "RESULT: FAIL"
  exit 1
fi
log "RESULT: PASS (all checks passed)"
