#!/usr/bin/env bash
# https-vs-nginx.sh [N]: provbox's HTTPS file serving against nginx, in the same run,
# with the shared bench harness (../shared/bench/https.sh through repeat.sh).
# Prints both sets of figures, the ratio provbox/nginx for each, and provbox's peak RSS.
# Env: SHARED_BENCH (default ../shared/bench), BENCH_STORE / BENCH_RUN (default under
# /var/tmp/provbox-bench), PROVBOX (default target/release/provbox, built if missing).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SB=${SHARED_BENCH:-$REPO/../shared/bench}
N=${1:-3}
# shellcheck source=provbox-https.sh
source "$REPO/bench/provbox-https.sh"
provbox_bench_env
OUT=$(mktemp -d /var/tmp/provbox-bench/https.XXXXXX)

echo "== nginx" >&2
"$SB/peers/start-nginx.sh" 20443 "$BENCH_STORE" >&2
"$SB/repeat.sh" "$N" "$SB/https.sh" 127.0.0.1 20443 | tee "$OUT/nginx.txt"
"$SB/peers/stop.sh" nginx >&2

echo "== provbox" >&2
provbox_https_start "$OUT"
echo "$PID" >"$BENCH_RUN/appliance.pid"
trap 'kill "$PID" 2>/dev/null || true; rm -f "$BENCH_RUN/appliance.pid"' EXIT
provbox_https_wait
# Peak RSS sampler (VmHWM is the kernel's own high-water mark).
REPEAT_ROOTS="$PID" "$SB/repeat.sh" "$N" "$SB/https.sh" 127.0.0.1 20444 | tee "$OUT/provbox.txt"
HWM=$(awk '/VmHWM/{print $2}' "/proc/$PID/status")
kill "$PID"; wait "$PID" 2>/dev/null || true

echo
echo "figure provbox nginx ratio"
awk 'NR==FNR{n[$1]=$2; next} ($1 in n) && n[$1]+0>0 {printf "%s %s %s %.2f\n", $1, $2, n[$1], $2/n[$1]}' "$OUT/nginx.txt" "$OUT/provbox.txt"
echo "provbox_peak_rss $((HWM / 1024)) MiB"
echo "(raw results in $OUT)"
