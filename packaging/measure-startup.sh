#!/usr/bin/env bash
# Measures the release binary's size and its start-up time to ready: from exec to the
# HTTP server's "listening" log line (its own timestamp, so exact), and to the first
# HTTP answer and /healthz answering (polled with curl: a few ms of resolution). Cold
# runs start with a fresh state directory (the TLS certificate is generated, 20 store
# files are snapshotted and hashed); warm runs restart on the same state.
# Loopback high ports only; no root needed.
#   packaging/measure-startup.sh [--binary PATH] [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/provbox
RUNS=10
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BIN=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) echo "measure-startup.sh: unknown argument $1" >&2; exit 64 ;;
  esac
done
[ -x "$BIN" ] || { echo "measure-startup.sh: $BIN is missing: cargo build --release --locked -p provbox" >&2; exit 1; }
command -v curl >/dev/null || { echo "measure-startup.sh: curl is missing" >&2; exit 1; }
echo "binary: $BIN, $(stat -c %s "$BIN") bytes ($(( $(stat -c %s "$BIN") / 1024 )) KiB)"
WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
now() { date +%s%N; }
declare -A MS
record() { MS[$1]="${MS[$1]:-} $2"; }
start_once() {  # $1 = dir, $2 = label (cold|warm)
  local d=$1 label=$2 PORT API t0 t_http="" t_health="" ts
  # Below the kernel's ephemeral range (32768+), where clients' ports come from.
  PORT=$((20000 + RANDOM % 12000)); API=$((PORT + 1))
  : > "$d/log"
  t0=$(now)
  PROVBOX_STORE_ROOT=$d/store PROVBOX_STATE_DIR=$d/state PROVBOX_DHCP_ENABLED=false \
  PROVBOX_HTTP_BIND=127.0.0.1:$PORT PROVBOX_HTTPS_BIND=127.0.0.1:0 PROVBOX_TFTP_BIND=127.0.0.1:0 \
  PROVBOX_FTP_BIND=127.0.0.1:0 PROVBOX_API_BIND=127.0.0.1:$API PROVBOX_LOG_FORMAT=json \
    "$BIN" serve > "$d/log" 2>&1 &
  PID=$!
  for _ in $(seq 1 5000); do
    if [ -z "$t_http" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/file1.cfg")" != 000 ]; then t_http=$(now); fi
    if [ -z "$t_health" ] && curl -sf -o /dev/null "http://127.0.0.1:$API/healthz"; then t_health=$(now); fi
    if [ -n "$t_http" ] && { [ -n "$t_health" ] || ! grep -q '"service":"api"' "$d/log"; }; then break; fi
    if ! kill -0 "$PID" 2>/dev/null; then
      wait "$PID" 2>/dev/null || true; PID=""
      grep -q 'already in use' "$d/log" && return 1   # a port was taken: try others
      cat "$d/log" >&2; echo "provbox exited" >&2; exit 1
    fi
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  ts=$(grep '"listening"' "$d/log" | grep '"service":"http"' | sed -n 's/.*"timestamp":"\([^"]*\)".*/\1/p' | head -1)
  [ -n "$ts" ] && record "$label-listen" $(( ($(date -d "$ts" +%s%N) - t0) / 1000000 ))
  [ -n "$t_http" ] && record "$label-http" $(( (t_http - t0) / 1000000 ))
  [ -n "$t_health" ] && record "$label-health" $(( (t_health - t0) / 1000000 ))
  return 0
}
for run in $(seq 1 "$RUNS"); do
  d=$WORK/run$run
  mkdir -p "$d/store"
  for i in $(seq 1 20); do head -c 65536 /dev/urandom > "$d/store/file$i.cfg"; done
  for _ in 1 2 3 4 5; do start_once "$d" cold && break; rm -rf "$d/state"; done
  for _ in 1 2 3 4 5; do start_once "$d" warm && break; done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "n/a"}'; }
range() { printf '%s\n' "$@" | sort -n | awk 'NR==1{lo=$1} {hi=$1} END {if (NR) print lo "-" hi; else print "n/a"}'; }
echo "runs: $RUNS cold + $RUNS warm (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
for label in cold warm; do
  for what in listen http health; do
    # shellcheck disable=SC2086
    set -- ${MS[$label-$what]:-}
    case $what in
      listen) name="exec -> 'listening' (http, log timestamp)" ;;
      http) name="exec -> first HTTP answer" ;;
      health) name="exec -> /healthz answers" ;;
    esac
    if [ $# -gt 0 ]; then
      printf '%-5s %-42s median %4s ms, range %s ms\n' "$label" "$name" "$(median "$@")" "$(range "$@")"
    else
      printf '%-5s %-42s n/a\n' "$label" "$name"
    fi
  done
done
