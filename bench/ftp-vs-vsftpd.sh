#!/usr/bin/env bash
# ftp-vs-vsftpd.sh [ROUNDS]
# Runs the shared FTP benchmark (../shared/bench/ftp.sh: 64 MiB RETR with curl and lftp,
# 1 KiB fetch latency, 20 concurrent 64 MiB RETRs) against vsftpd and against provbox's
# FTP server (protocols/examples/ftpd, release build) in one session, alternating
# vsftpd / provbox each round so both see the same machine load. Each run goes through
# repeat.sh (idle wait, foreign-CPU check). Prints per figure: vsftpd median, provbox
# median, provbox/vsftpd ratio (for latency figures lower is better).
# env: SHARED_BENCH (/work/shared/bench), BENCH_STORE (/tmp/provbox-bench-store),
#      BENCH_RUN (target/bench-run), VS_PORT (20021), PB_PORT (20121),
#      PB_PASV (20500-20599), RESULTS (target/bench-results/ftp-<time>.txt), FTPD (prebuilt binary)
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHARED=${SHARED_BENCH:-/work/shared/bench}
ROUNDS=${1:-3}
case "$ROUNDS" in ''|*[!0-9]*) echo "ROUNDS must be a number" >&2; exit 2;; esac
export BENCH_STORE=${BENCH_STORE:-/tmp/provbox-bench-store}
export BENCH_RUN=${BENCH_RUN:-$ROOT/target/bench-run}
VS_PORT=${VS_PORT:-20021}; PB_PORT=${PB_PORT:-20121}; PB_PASV=${PB_PASV:-20500-20599}
. "$SHARED/lib.sh"
mkdir -p "$BENCH_RUN" "$ROOT/target/bench-results"
RESULTS=${RESULTS:-$ROOT/target/bench-results/ftp-$(date +%Y%m%d-%H%M%S).txt}
W=$(mktemp -d /tmp/provbox-ftp-bench.XXXXXX)
PB_STATE="$W/state"

cleanup() {
  "$SHARED/peers/stop.sh" vsftpd provbox-ftpd >/dev/null 2>&1
  rm -rf "$W"
}
trap cleanup EXIT

[ -s "$BENCH_STORE/SHA256SUMS" ] || "$SHARED/make-files.sh" "$BENCH_STORE" >/dev/null || die "make-files.sh failed"
# vsftpd serves as the ftp user: the store must be world-readable.
chmod o+rx "$BENCH_STORE"

FTPD=${FTPD:-}
if [ -z "$FTPD" ]; then
  log "building the provbox ftpd example (release)"
  (cd "$ROOT" && cargo build --release -q -p provbox-protocols --example ftpd) || die "build failed"
  FTPD="$ROOT/target/release/examples/ftpd"
fi

"$SHARED/peers/start-vsftpd.sh" "$VS_PORT" "$BENCH_STORE" || die "vsftpd did not start"

"$FTPD" --root "$BENCH_STORE" --state "$PB_STATE" --bind "127.0.0.1:$PB_PORT" --passive "$PB_PASV" \
  >"$BENCH_RUN/provbox-ftpd.out" 2>"$BENCH_RUN/provbox-ftpd.log" </dev/null &
echo $! >"$BENCH_RUN/provbox-ftpd.pid"
for _ in $(seq 1 100); do grep -q '^listening on' "$BENCH_RUN/provbox-ftpd.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^listening on' "$BENCH_RUN/provbox-ftpd.out" || { cat "$BENCH_RUN/provbox-ftpd.log" >&2; die "provbox ftpd did not start"; }
log "provbox ftpd $(cat "$BENCH_RUN/provbox-ftpd.out"), pid $(cat "$BENCH_RUN/provbox-ftpd.pid")"

for r in $(seq 1 "$ROUNDS"); do
  log "round $r/$ROUNDS: vsftpd"
  REPEAT_LABEL=vsftpd "$SHARED/repeat.sh" 1 "$SHARED/ftp.sh" 127.0.0.1 "$VS_PORT" >"$W/round-vs.$r" || log "vsftpd round $r reported failures"
  log "round $r/$ROUNDS: provbox"
  REPEAT_LABEL=provbox "$SHARED/repeat.sh" 1 "$SHARED/ftp.sh" 127.0.0.1 "$PB_PORT" >"$W/round-pb.$r" || log "provbox round $r reported failures"
done

# The 1 KiB fetch as a distribution, not a mean: curl 7.88 waits for its 200 ms
# happy-eyeballs timer before opening the data connection when the EPSV reply arrives
# while it is still sending (a fast server triggers it; fixed in curl 8.4,
# curl/curl#11939), so the mean hides two populations.
dist() { # PORT -> "p50 p90 slow_count"
  for _ in $(seq 1 40); do curl -sS --max-time 10 -o /dev/null -w '%{time_total}\n' "ftp://127.0.0.1:$1/$F_CFG"; done |
    sort -n | awk '{a[NR]=$1*1000; if ($1 > 0.15) slow++} END {printf "%.2f %.2f %d", a[int(NR*.5)], a[int(NR*.9)], slow}'
}
read -r v50 v90 vslow <<<"$(dist "$VS_PORT")"
read -r p50 p90 pslow <<<"$(dist "$PB_PORT")"
# The same stall lands on single 64 MiB RETRs (+200 ms on a ~100 ms transfer). A
# second single-transfer figure with curl's timer at 1 ms (client-side, the same for
# both servers) shows the servers without it: 10 alternations, median MB/s.
fast64() { curl -sS --max-time 60 --happy-eyeballs-timeout-ms 1 -o /dev/null -w '%{speed_download}\n' "ftp://127.0.0.1:$1/$F_IMG64"; }
for _ in $(seq 1 10); do fast64 "$VS_PORT" >>"$W/he-vs"; fast64 "$PB_PORT" >>"$W/he-pb"; done
m64() { sort -n "$1" | awk '{a[NR]=$1/1e6} END {printf "%.2f", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
hv=$(m64 "$W/he-vs"); hp=$(m64 "$W/he-pb")

# Median per figure and server, then the table.
med() { # FILES... -> "figure median unit"
  awk '{v[$1]=v[$1] " " $2; u[$1]=$3} END { for (f in v) { n=split(v[f], a, " "); 
    for (i=1;i<=n;i++) for (j=i+1;j<=n;j++) if (a[j]+0 < a[i]+0) { t=a[i]; a[i]=a[j]; a[j]=t }
    m = (n%2) ? a[(n+1)/2] : (a[n/2]+a[n/2+1])/2; print f, m, u[f], n } }' "$@" | sort
}
med "$W"/round-vs.* >"$W/vs.med"
med "$W"/round-pb.* >"$W/pb.med"
{
  printf '# ftp.sh, %s rounds, vsftpd :%s vs provbox :%s, %s\n' "$ROUNDS" "$VS_PORT" "$PB_PORT" "$(date -Is)"
  printf '%-24s %12s %12s %8s %s\n' figure vsftpd provbox ratio unit
  join "$W/vs.med" "$W/pb.med" | awk '{ r = ($2+0 > 0) ? sprintf("%.2f", $5/$2) : "-"; printf "%-24s %12s %12s %8s %s\n", $1, $2, $5, r, $3 }'
  printf '%-24s %12s %12s %8s %s\n' curl_64m_he1ms "$hv" "$hp" "$(awk -v a="$hv" -v b="$hp" 'BEGIN{printf "%.2f", b/a}')" MB/s
  printf '%-24s %12s %12s %8s %s\n' cfg1k_curl_p50 "$v50" "$p50" - ms
  printf '%-24s %12s %12s %8s %s\n' cfg1k_curl_p90 "$v90" "$p90" - ms
  printf '%-24s %12s %12s %8s %s\n' cfg1k_curl_over_150ms "$vslow" "$pslow" - "of 40"
  echo "# raw runs"
  for f in "$W"/round-vs.* "$W"/round-pb.*; do sed "s|^|$(basename "$f") |" "$f"; done
} | tee "$RESULTS"
log "results in $RESULTS"
