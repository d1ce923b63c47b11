#!/usr/bin/env bash
# Measures the release binary's size and its start-up time to ready: from exec to the
# first "listening" log line of the HTTP server, and to the first HTTP answer (and to
# /healthz answering, once the API is in the build). Each run starts cold: a fresh
# state directory (so the TLS certificate is generated) and a store of 20 files.
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
listen_ms=(); http_ms=(); health_ms=()
for run in $(seq 1 "$RUNS"); do
  d=$WORK/run$run
  mkdir -p "$d/store"
  for i in $(seq 1 20); do head -c 65536 /dev/urandom > "$d/store/file$i.cfg"; done
  PORT=$((20000 + RANDOM % 20000))
  API=$((PORT + 1))
  t0=$(now)
  PROVBOX_STORE_ROOT=$d/store PROVBOX_STATE_DIR=$d/state PROVBOX_DHCP_ENABLED=false \
  PROVBOX_HTTP_BIND=127.0.0.1:$PORT PROVBOX_HTTPS_BIND=127.0.0.1:0 PROVBOX_TFTP_BIND=127.0.0.1:0 \
  PROVBOX_FTP_BIND=127.0.0.1:0 PROVBOX_API_BIND=127.0.0.1:$API PROVBOX_LOG_FORMAT=json \
    "$BIN" serve > "$d/log" 2>&1 &
  PID=$!
  t_listen=""; t_http=""; t_health=""
  for _ in $(seq 1 5000); do
    [ -z "$t_listen" ] && grep -q '"listening"' "$d/log" && grep -q '"service":"http"' "$d/log" && t_listen=$(now)
    if [ -z "$t_http" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/file1.cfg")" != 000 ]; then t_http=$(now); fi
    if [ -z "$t_health" ] && curl -sf -o /dev/null "http://127.0.0.1:$API/healthz"; then t_health=$(now); fi
    if [ -n "$t_listen" ] && [ -n "$t_http" ] && { [ -n "$t_health" ] || ! grep -q '"service":"api"' "$d/log"; }; then break; fi
    kill -0 "$PID" 2>/dev/null || { cat "$d/log" >&2; echo "provbox exited" >&2; exit 1; }
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  [ -n "$t_listen" ] && listen_ms+=($(( (t_listen - t0) / 1000000 )))
  [ -n "$t_http" ] && http_ms+=($(( (t_http - t0) / 1000000 )))
  [ -n "$t_health" ] && health_ms+=($(( (t_health - t0) / 1000000 )))
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "n/a"}'; }
range() { printf '%s\n' "$@" | sort -n | awk 'NR==1{lo=$1} {hi=$1} END {if (NR) print lo "-" hi; else print "n/a"}'; }
echo "runs: $RUNS (cold: fresh state, certificate generated, 20 files indexed)"
echo "exec -> 'listening' (http):   median ${listen_ms[*]:+$(median "${listen_ms[@]}")} ms, range $(range "${listen_ms[@]}") ms"
echo "exec -> first HTTP answer:    median ${http_ms[*]:+$(median "${http_ms[@]}")} ms, range $(range "${http_ms[@]}") ms"
if [ ${#health_ms[@]} -gt 0 ]; then
  echo "exec -> /healthz answers:     median $(median "${health_ms[@]}") ms, range $(range "${health_ms[@]}") ms"
else
  echo "exec -> /healthz answers:     n/a (no API in this build)"
fi
echo "(polling resolution: one curl per iteration, a few ms)"
