#!/usr/bin/env bash
# tftp-vs-peers.sh [REPS]
# provbox's TFTP server against tftpd-hpa and dnsmasq, in one run, with the shared harness
# (../shared/bench: tftp.sh, repeat.sh, peers/*): the same clients, blksizes and files for all.
#
#   1. lo: tftp.sh against in.tftpd (127.0.0.1:20069) and provbox (127.0.0.1:20169):
#      64 MiB with curl/atftp at 512 and 1468, tftp-hpa at 512, atftp with windowsize 8
#      where the server grants it (provbox does; neither peer does), 1 KiB fetches,
#      20 and 100 concurrent curl clients of 8 MiB (blksize 1468, all hash-checked);
#      then provbox alone with atftp windowsize 16 and 64. dnsmasq (netns pbsrv, its lo).
#   2. provbox's peak RSS (VmHWM) over all of the above.
#   3. 1 % random loss each way (peers/netns.sh loss 1, nftables), 8 MiB with atftp at
#      blksize 1468 from pbcli to each server in pbsrv, 150 s cap.
# Prints figure lines per section and a summary of provbox/peer ratios; raw output in
# target/tftp-bench/results-<time>.txt.
#
# env: SHARED_BENCH (default: <repo>/../shared/bench), TFTPD (a built provbox tftpd example;
#      default: cargo build --release --example tftpd), REPEAT_MAX_FOREIGN (repeat.sh, default
#      20; set 1000 on a shared box to keep every run), ONLY ("lo dnsmasq loss")
set -u -o pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SB=${SHARED_BENCH:-$REPO/../shared/bench}
[ -x "$SB/tftp.sh" ] || { echo "no shared bench at $SB (set SHARED_BENCH)" >&2; exit 1; }
REPS=${1:-3}; ONLY=" ${ONLY:-lo dnsmasq loss} "
WORK=$REPO/target/tftp-bench
export BENCH_STORE=$WORK/store BENCH_RUN=$WORK/run
mkdir -p "$WORK" "$BENCH_RUN"
. "$SB/lib.sh"
P=$SB/peers
OUT=$WORK/results-$(date +%Y%m%d-%H%M%S).txt
PB_PORT=20169

if [ -z "${TFTPD:-}" ]; then
  (cd "$REPO" && cargo build --release -q -p provbox-protocols --example tftpd) || die "build"
  TFTPD=$REPO/target/release/examples/tftpd
fi
[ -s "$BENCH_STORE/$F_SUMS" ] || "$SB/make-files.sh" >/dev/null || die "make-files"
chmod 0755 "$WORK"

cleanup() { "$P/stop.sh" >&2 2>/dev/null; "$P/netns.sh" down >&2 2>/dev/null; }
trap cleanup EXIT

# start_provbox NAME ADDR [NETNS]: the provbox TFTP server over the bench store
start_provbox() {
  local name=$1 addr=$2 ns=${3:-}
  local pre=(); [ -n "$ns" ] && pre=(ip netns exec "$ns")
  "${pre[@]}" "$TFTPD" --root "$BENCH_STORE" --bind "$addr" --port-range 20900-20999 \
    >"$BENCH_RUN/$name.log" 2>&1 </dev/null &
  echo $! >"$BENCH_RUN/$name.pid"
  for _ in $(seq 1 100); do grep -q '^listening' "$BENCH_RUN/$name.log" && return 0; sleep 0.1; done
  die "$name did not start: $(cat "$BENCH_RUN/$name.log")"
}

section() {  # section LABEL CMD...  (repeat.sh REPS, output appended to $OUT and shown)
  local label=$1; shift
  log "=== $label"
  { echo "## $label"; REPEAT_LABEL="$label" "$SB/repeat.sh" "${SREPS:-$REPS}" "$@"; echo; } | tee -a "$OUT"
}
on() { [[ $ONLY == *" $1 "* ]]; }
val() { awk -v s="## $1" -v f="$2" '$0==s {in_s=1; next} /^## /{in_s=0} in_s && $1==f {print $2; exit}' "$OUT"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a=="" || b=="" || b+0==0) print "n/a"; else printf "%.2f", a/b }'; }

"$P/netns.sh" up || die "netns"
if on lo; then
  "$P/start-tftpd-hpa.sh" 20069 "$BENCH_STORE" || die "tftpd-hpa"
  start_provbox provbox 127.0.0.1:$PB_PORT
  section "tftpd-hpa lo" "$SB/tftp.sh" 127.0.0.1 20069
  section "provbox lo" "$SB/tftp.sh" 127.0.0.1 $PB_PORT
  for w in 16 64; do
    SREPS=$REPS section "provbox lo atftp w$w" env WINDOWSIZE=$w SKIP="curl atftp hpa cfg conc" "$SB/tftp.sh" 127.0.0.1 $PB_PORT
  done
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$(cat "$BENCH_RUN/provbox.pid")/status")
  { echo "## provbox memory"; fig provbox_peak_rss "$((rss / 1024))" MiB; echo; } | tee -a "$OUT"
  "$P/stop.sh" tftpd-hpa provbox
fi
if on dnsmasq; then
  TFTP_MAX=200 "$P/start-dnsmasq-tftp.sh" 20070 "$BENCH_STORE" || die "dnsmasq"
  section "dnsmasq lo(netns)" ip netns exec pbsrv "$SB/tftp.sh" 127.0.0.1 20070
  "$P/stop.sh" dnsmasq-tftp
fi
if on loss; then
  PEER_NAME=tftpd-hpa-ns NETNS=pbsrv "$P/start-tftpd-hpa.sh" 20069 "$BENCH_STORE" || die "tftpd-hpa ns"
  TFTP_MAX=200 "$P/start-dnsmasq-tftp.sh" 20070 "$BENCH_STORE" || die "dnsmasq"
  start_provbox provbox-ns 198.18.0.1:$PB_PORT pbsrv
  "$P/netns.sh" loss 1
  for t in "tftpd-hpa 20069" "dnsmasq 20070" "provbox $PB_PORT"; do
    # shellcheck disable=SC2086 # split "name port" into $1 and $2 on purpose
    set -- $t
    SREPS=1 REPEAT_MAX_FOREIGN=1000 section "$1 veth loss 1%" ip netns exec pbcli \
      env SINGLE_FILE="$F_IMG8" SKIP="curl hpa window cfg conc" BLKSIZES=1468 XFER_TIMEOUT=150 \
      "$SB/tftp.sh" 198.18.0.1 "$2"
  done
  "$P/netns.sh" noloss
fi

{
  echo "## summary: provbox / tftpd-hpa (lo), same client and blksize"
  for f in tftp_curl_b512_64m tftp_curl_b1468_64m tftp_atftp_b512_64m tftp_atftp_b1468_64m tftp_hpa_b512_64m \
           tftp_c20_8m_agg tftp_c100_8m_agg; do
    echo "$f $(val "provbox lo" $f) vs $(val "tftpd-hpa lo" $f) MB/s: x$(ratio "$(val "provbox lo" $f)" "$(val "tftpd-hpa lo" $f)")"
  done
  hpa=$(val "tftpd-hpa lo" tftp_atftp_b1468_64m)
  for w in 8 16 64; do
    s="provbox lo"; [ $w != 8 ] && s="provbox lo atftp w$w"
    v=$(val "$s" tftp_atftp_b1468_w${w}_64m)
    echo "tftp_atftp_b1468_w${w}_64m (provbox, windowsize $w) $v MB/s vs tftpd-hpa atftp b1468 (no windowsize) $hpa MB/s: x$(ratio "$v" "$hpa")"
  done
  echo "tftp_cfg1k_fetch $(val "provbox lo" tftp_cfg1k_fetch) vs $(val "tftpd-hpa lo" tftp_cfg1k_fetch) ms"
  echo "failures provbox c100: $(val "provbox lo" tftp_c100_8m_failed) failed, $(val "provbox lo" tftp_c100_8m_hash_bad) bad hashes"
  p=$(val "provbox veth loss 1%" tftp_atftp_b1468_8m); h=$(val "tftpd-hpa veth loss 1%" tftp_atftp_b1468_8m)
  d=$(val "dnsmasq veth loss 1%" tftp_atftp_b1468_8m)
  echo "1% loss, atftp b1468 8 MiB: provbox $p MB/s, tftpd-hpa ${h:-failed} MB/s, dnsmasq ${d:-failed} MB/s: provbox/tftpd-hpa x$(ratio "$p" "$h")"
} | tee -a "$OUT"
log "results: $OUT"
