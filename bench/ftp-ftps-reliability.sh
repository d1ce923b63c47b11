#!/usr/bin/env bash
# ftp-ftps-reliability.sh [N] [PARALLEL]
# Explicit-FTPS reliability: N `curl --ssl-reqd` downloads (AUTH TLS, PBSZ 0, PROT P) of
# the 1 KiB cfg from provbox's FTP server (protocols/examples/ftpd, release), checked
# byte for byte, in PARALLEL workers (default 1, i.e. sequential), then 30 lftp 64 MiB
# downloads with ftp:ssl-force, checked by sha256. The figures the FTPS issue asks for.
# Prints: ftps_curl_ok, ftps_curl_failed, ftps_lftp_ok, ftps_lftp_failed.
# env: SHARED_BENCH (/work/shared/bench), BENCH_STORE (/tmp/provbox-bench-store),
#      PB_PORT (20130), PB_PASV (20800-20899), FTPD (prebuilt binary)
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHARED=${SHARED_BENCH:-/work/shared/bench}
N=${1:-200}; PAR=${2:-1}
case "$N$PAR" in *[!0-9]*) echo "N and PARALLEL must be numbers" >&2; exit 2;; esac
export BENCH_STORE=${BENCH_STORE:-/tmp/provbox-bench-store}
. "$SHARED/lib.sh"
need curl lftp cmp sha256sum
PB_PORT=${PB_PORT:-20130}; PB_PASV=${PB_PASV:-20800-20899}
W=$(mktemp -d /tmp/provbox-ftps.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
[ -s "$BENCH_STORE/SHA256SUMS" ] || "$SHARED/make-files.sh" "$BENCH_STORE" >/dev/null || die "make-files.sh failed"
FTPD=${FTPD:-}
if [ -z "$FTPD" ]; then
  (cd "$ROOT" && cargo build --release -q -p provbox-protocols --example ftpd) || die "build failed"
  FTPD="$ROOT/target/release/examples/ftpd"
fi
"$FTPD" --root "$BENCH_STORE" --state "$W/state" --bind "127.0.0.1:$PB_PORT" --passive "$PB_PASV" --ftps \
  >"$W/out" 2>"$W/log" </dev/null &
PID=$!
for _ in $(seq 1 100); do grep -q '^listening on' "$W/out" 2>/dev/null && break; sleep 0.1; done
grep -q '^listening on' "$W/out" || { cat "$W/log" >&2; die "ftpd did not start"; }
CA="$W/state/tls/cert.pem"
URL="ftp://127.0.0.1:$PB_PORT/$F_CFG"

worker() { # ID COUNT
  local ok=0
  for _ in $(seq 1 "$2"); do
    rm -f "$W/c$1"
    if curl -sS --max-time 20 --ssl-reqd --cacert "$CA" -o "$W/c$1" "$URL" 2>>"$W/e$1" && cmp -s "$W/c$1" "$BENCH_STORE/$F_CFG"; then
      ok=$((ok+1))
    fi
  done
  echo "$ok" >"$W/ok$1"
}
per=$(( (N + PAR - 1) / PAR )); pids=()
for w in $(seq 1 "$PAR"); do worker "$w" "$per" & pids+=($!); done
wait "${pids[@]}"
total=$((per * PAR)); ok=$(cat "$W"/ok* | awk '{s+=$1} END{print s+0}')
fig ftps_curl_ok "$ok" count
fig ftps_curl_failed $((total - ok)) count
[ "$ok" -eq "$total" ] || { log "curl errors:"; cat "$W"/e* | sort | uniq -c | head >&2; }

H64=$(sum_of "$BENCH_STORE/$F_SUMS" "$F_IMG64"); lok=0
for _ in $(seq 1 30); do
  rm -f "$W/l"
  timeout 60 lftp -p "$PB_PORT" -e "set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:verify-certificate no; set net:max-retries 1; set cmd:fail-exit yes; get $F_IMG64 -o $W/l; bye" 127.0.0.1 >/dev/null 2>>"$W/lerr" \
    && [ "$(sha256sum <"$W/l" | cut -d' ' -f1)" = "$H64" ] && lok=$((lok+1))
done
fig ftps_lftp_ok "$lok" count
fig ftps_lftp_failed $((30 - lok)) count
[ "$ok" -eq "$total" ] && [ "$lok" -eq 30 ]
