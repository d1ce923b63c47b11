#!/usr/bin/env bash
# https-cpu-per-request.sh [N]: server CPU per 1 KiB HTTPS keep-alive request, nginx and
# provbox alternating (N rounds of 8 s wrk -t2 -c50 each), from /proc/PID/stat.
# Less sensitive to this machine's speed drift than req/s alone. Caveat: provbox's journal
# writeback (kernel threads) is charged to neither, and may fall into nginx's next round.
# Env: SHARED_BENCH (default ../shared/bench), BENCH_STORE (default
# /var/tmp/provbox-bench/store), PROVBOX (default target/release/provbox).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SB=${SHARED_BENCH:-$REPO/../shared/bench}
N=${1:-3}
# shellcheck source=provbox-https.sh
source "$REPO/bench/provbox-https.sh"
provbox_bench_env
OUT=$(mktemp -d /var/tmp/provbox-bench/cpr.XXXXXX)
provbox_https_start "$OUT"
trap 'kill "$PID" 2>/dev/null || true; "$SB/peers/stop.sh" nginx >/dev/null 2>&1 || true' EXIT
"$SB/peers/start-nginx.sh" 20443 "$BENCH_STORE" >/dev/null 2>&1
provbox_https_wait
NGINX_PIDS=$(pgrep -x nginx | tr '\n' ' ')
HZ=$(getconf CLK_TCK)
ticks() { local t=0 s p; for p in "$@"; do s=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0); t=$((t + s)); done; echo "$t"; }
echo "server   req/s  cpu_s  us/req"
for _ in $(seq "$N"); do
  for who in nginx provbox; do
    if [ "$who" = nginx ]; then port=20443; pids=$NGINX_PIDS; else port=20444; pids=$PID; fi
    # shellcheck disable=SC2086
    a=$(ticks $pids)
    r=$(timeout 40 wrk -t2 -c50 -d8s "https://127.0.0.1:$port/cfg1k.cfg" | awk '/Requests\/sec/{print $2}')
    # shellcheck disable=SC2086
    b=$(ticks $pids)
    awk -v w="$who" -v r="$r" -v c=$((b - a)) -v hz="$HZ" \
      'BEGIN { cpu = c / hz; printf "%-7s %7.0f %6.2f %7.1f\n", w, r, cpu, cpu * 1e6 / (r * 8) }'
  done
done
echo "provbox peak RSS $(awk '/VmHWM/{print int($2/1024)}' "/proc/$PID/status") MiB (raw in $OUT)"
