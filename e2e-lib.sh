# Helpers the end-to-end scripts share: processes started in the background
# and stopped on exit, bounded waits, free ports. Source it after setting
# TMP_DIR (removed on exit), START_TIME and TOTAL_BUDGET (seconds every wait
# is capped by).
# shellcheck shell=bash

PIDS=()
NAMES=()

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

# pid_of NAME: the pid of a process started with start_bg.
pid_of() {
  local i
  for i in "${!NAMES[@]}"; do
    [[ ${NAMES[i]} == "$1" ]] && { echo "${PIDS[i]}"; return 0; }
  done
  return 1
}

# stop NAME: stop a process started with start_bg, and forget it.
stop() {
  local pid i n
  pid=$(pid_of "$1")
  kill "$pid" 2>/dev/null || true
  for ((n = 0; n < 50; n++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for i in "${!NAMES[@]}"; do
    [[ ${NAMES[i]} == "$1" ]] && NAMES[i]="$1 (stopped)"
  done
  log "stopped $1 (pid $pid)"
}

# Fail early if a started process has already exited.
check_alive() {
  local i
  for i in "${!PIDS[@]}"; do
    [[ ${NAMES[i]} == *"(stopped)" ]] && continue
    if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
      log "process ${NAMES[i]} (pid ${PIDS[i]}) exited unexpectedly"
      return 1
    fi
  done
}

dump_logs() {
  local name
  for name in "${NAMES[@]}"; do
    name=${name% (stopped)}
    echo "----- last 40 lines of $name.log -----"
    tail -n 40 "$TMP_DIR/$name.log" 2>/dev/null || true
  done
  echo "----- end of logs -----"
}

die() {
  log "FATAL: $*"
  dump_logs
  exit 1
}

remaining_budget() {
  echo $((START_TIME + TOTAL_BUDGET - $(date +%s)))
}

# wait_for CAP_SECONDS CMD [ARGS...]: run CMD every half second until it
# succeeds or CAP_SECONDS (further capped by the script's total budget) have
# passed.
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
    sleep 0.5
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
