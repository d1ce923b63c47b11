#!/usr/bin/env bash
# fleet.sh [N=500] [SIZE=20MiB]: time to provision N simulated phones (one SIZE image
# each, plus its config) on loopback, per protocol, against the physical limit
# bytes ÷ loopback throughput (iperf3 TCP, the better of 1 and 4 streams, measured
# before and after each row and averaged). For TFTP the single-stream UDP figure
# (1468-byte datagrams) is shown too; iperf3's UDP sender is CPU-bound, so many TFTP
# transfers together can beat it. The appliance (`provbox serve`) and the phones
# (`provbox sim`) run as two processes, so each gets its own CPU time and peak RSS.
#
# Env:
#   PROTOCOLS      protocols to run (default "http https tftp ftp"; FTP is skipped with
#                  a note when the appliance does not serve it)
#   TFTP_N         phones for TFTP (default N)
#   TFTP_BLKSIZE   blksize the phones ask for (default 1428, what the phones use)
#   TFTP_WINDOW    windowsize the phones ask for (default 1: lock-step, like the phones;
#                  the appliance grants up to [tftp] max_windowsize)
#   STAGGER        delay between phones powering on (default 0ms)
#   BENCH_DIR      work directory (default /var/tmp/provbox-fleet); stores are reused
#   PROVBOX        the binary (default target/release/provbox, built first)
#   SECS           iperf3 seconds (default 5)
#   PEERS          1: after each provbox row, the same fleet fetches its files from the
#                  peer for that protocol (nginx for https, vsftpd for ftp, tftpd-hpa
#                  for tftp; plain http has no peer script), with provbox still giving
#                  DHCP; started through SHARED_BENCH/peers (default ../shared/bench)
# Output: one line per protocol, then the raw reports' location.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-500}
SIZE=${2:-20MiB}
PROTOCOLS=${PROTOCOLS:-http https tftp ftp}
TFTP_N=${TFTP_N:-$N}
TFTP_BLKSIZE=${TFTP_BLKSIZE:-1428}
TFTP_WINDOW=${TFTP_WINDOW:-1}
STAGGER=${STAGGER:-0ms}
SECS=${SECS:-5}
BENCH_DIR=${BENCH_DIR:-/var/tmp/provbox-fleet}
PROVBOX=${PROVBOX:-$REPO/target/release/provbox}
PEERS=${PEERS:-}
SB=${SHARED_BENCH:-$REPO/../shared/bench}
export BENCH_RUN=${BENCH_RUN:-$BENCH_DIR/peers-run}
mkdir -p "$BENCH_DIR"
OUT=$(mktemp -d "$BENCH_DIR/run.XXXXXX")

for tool in iperf3 jq curl ss /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "fleet.sh: $tool is missing (scripts/install-test-deps.sh installs it)" >&2; exit 1; }
done
if [ -z "${PROVBOX_NO_BUILD:-}" ]; then
  (cd "$REPO" && cargo build --release -p provbox >&2)
fi

SERVE_PID=
IPERF_PID=
PEER_UP=
cleanup() {
  if [ -n "$PEER_UP" ]; then "$SB/peers/stop.sh" "$PEER_UP" >/dev/null 2>&1 || true; fi
  if [ -n "$SERVE_PID" ]; then kill "$SERVE_PID" 2>/dev/null || true; fi
  if [ -n "$IPERF_PID" ]; then kill "$IPERF_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
# CPU seconds (user+system) of a process, from /proc/PID/stat fields 14 and 15.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$1/stat"; }

# --- physical limits -------------------------------------------------------------
iperf_gbps() {  # extra client args...
  local port
  port=$(free_port)
  iperf3 -s -1 -B 127.0.0.1 -p "$port" >"$OUT/iperf-srv.txt" 2>&1 &
  IPERF_PID=$!
  sleep 0.5
  iperf3 -c 127.0.0.1 -p "$port" -t "$SECS" -f m "$@" >"$OUT/iperf-cli.txt" 2>&1 || true
  wait "$IPERF_PID" 2>/dev/null || true
  IPERF_PID=
  awk '/receiver/{for(i=1;i<=NF;i++) if($i=="Mbits/sec") v=$(i-1)} END{printf "%.2f", v/1000}' "$OUT/iperf-cli.txt"
}
# Measured right before and right after every row, and the two averaged: this VM's
# loopback moved between 15 and 39 Gbit/s from one minute to the next, and one figure
# taken minutes earlier made the same wall time read as 1.0x in one run and 1.6x in
# the next.
measure_limits() {  # proto
  TCP1_GBPS=$(iperf_gbps)
  TCP4_GBPS=$(iperf_gbps -P 4)
  TCP_GBPS=$(awk -v a="$TCP1_GBPS" -v b="$TCP4_GBPS" 'BEGIN{print (a > b ? a : b)}')
  UDP_GBPS=0
  local udp=
  if [ "$1" = tftp ]; then
    UDP_GBPS=$(iperf_gbps -u -l 1468 -b 0)
    udp="; UDP(1468 B) $UDP_GBPS Gbit/s"
  fi
  echo "$1: loopback TCP $TCP1_GBPS Gbit/s (1 stream), $TCP4_GBPS Gbit/s (4 streams)$udp" >&2
}
echo "load before: $(load)" >&2

# --- the store: one image, N configs ------------------------------------------------
STORE="$BENCH_DIR/store-$N-$SIZE"
if [ ! -s "$STORE/.done" ]; then
  rm -rf "$STORE"; mkdir -p "$STORE"
  "$PROVBOX" sim make-image --model 450HD --version 3.4.8.198 --size "$SIZE" --out "$STORE/450HD_3.4.8.198.img" >&2
  # MACs 00:90:8f:20:00:01 onwards, as `provbox sim --mac-start` numbers them.
  for i in $(seq 0 $((N - 1))); do
    mac=$(printf '00908F2%05X' $((i + 1)))
    printf 'system/type=450HD\nvoip/line/0/enabled=1\nvoip/line/0/id=%s\n' "$mac" >"$STORE/$mac.cfg"
  done
  touch "$STORE/.done"
fi
IMG_BYTES=$(stat -c %s "$STORE/450HD_3.4.8.198.img")
# The peers' store: the same files by hard link, plus what provbox resolves itself —
# the model alias 450HD.img and each config under the lower-case MAC some firmware asks for.
PSTORE="$BENCH_DIR/peerstore-$N-$SIZE"
if [ -n "$PEERS" ] && [ ! -s "$PSTORE/.done" ]; then
  rm -rf "$PSTORE"; mkdir -p "$PSTORE"
  for f in "$STORE"/*; do ln "$f" "$PSTORE/$(basename "$f")"; done
  ln "$STORE/450HD_3.4.8.198.img" "$PSTORE/450HD.img"
  for f in "$STORE"/00908F*.cfg; do
    b=$(basename "$f"); ln "$f" "$PSTORE/$(echo "${b%.cfg}" | tr 'A-F' 'a-f').cfg"
  done
  chmod -R a+rX "$PSTORE"; touch "$PSTORE/.done"
fi

NCPU=$(nproc)
printf '%-6s %7s %11s %8s %6s %8s %6s %6s %8s %9s %9s %10s %9s %10s %9s %s\n' \
  proto phones bytes wall_s tcp_gb limit_s ratio dl_s dl_ratio udp_lim_s srv_cpu_s srv_rss_mb sim_cpu_s sim_rss_mb cpu_lim_s load >"$OUT/table.txt"

run_proto() {
  local proto=$1 n=$2 peer=${3:-}
  local P_DHCP P_TFTP P_HTTP P_HTTPS P_FTP P_API url
  P_DHCP=$(free_port); P_TFTP=$(free_port); P_HTTP=$(free_port); P_HTTPS=$(free_port)
  P_FTP=$(free_port); P_API=$(free_port)
  # One passive port per phone downloading at once, in a range that holds none of the
  # ports just picked (the appliance refuses a passive range with its control port).
  local PASV p clash
  while :; do
    PASV=$((20000 + RANDOM % 20 * 1000)); clash=
    for p in $P_DHCP $P_TFTP $P_HTTP $P_HTTPS $P_FTP $P_API; do
      if [ "$p" -ge "$PASV" ] && [ "$p" -le $((PASV + 999)) ]; then clash=1; fi
    done
    [ -z "$clash" ] && break
  done
  local P_PEER label=$proto ca
  P_PEER=$(free_port)
  case $proto in
    http) url="http://{server}:{http_port}/450HD.img;<MAC>.cfg" ;;
    https) url="https://{server}:{https_port}/450HD.img;<MAC>.cfg" ;;
    tftp) url="tftp://{server}:{tftp_port}/450HD.img;<MAC>.cfg" ;;
    ftp) url="ftp://{server}:{ftp_port}/450HD.img;<MAC>.cfg" ;;
  esac
  local W="$OUT/$proto"
  ca="$W/state/tls/cert.pem"
  if [ -n "$peer" ]; then
    # The files come from the peer; provbox still hands out leases and the URL.
    label="$peer"
    W="$OUT/$proto-$peer"
    url="${url%%://*}://127.0.0.1:$P_PEER/450HD.img;<MAC>.cfg"
    case $peer in
      # nginx's openssl certificate is a CA, which webpki refuses as a server's own:
      # the phones accept any certificate instead (the default without --ca).
      nginx) "$SB/peers/start-nginx.sh" "$P_PEER" "$PSTORE" >&2; ca= ;;
      vsftpd) PASV_MIN=$PASV PASV_MAX=$((PASV + 999)) "$SB/peers/start-vsftpd.sh" "$P_PEER" "$PSTORE" >&2 ;;
      tftpd-hpa) TFTP_PORT_RANGE="$PASV:$((PASV + 999))" "$SB/peers/start-tftpd-hpa.sh" "$P_PEER" "$PSTORE" >&2 ;;
    esac
    PEER_UP=$peer
  fi
  mkdir -p "$W"
  cat >"$W/provbox.toml" <<CONF
[store]
root = "$STORE"
settle = "100ms"
[state]
dir = "$W/state"
[dhcp]
bind = "127.0.0.1:$P_DHCP"
server_ip = "127.0.0.1"
subnet = "127.77.0.0/16"
pool = "127.77.0.10-127.77.7.250"
router = "127.77.0.1"
provisioning_url = "$url"
[tftp]
bind = "127.0.0.1:$P_TFTP"
[ftp]
bind = "127.0.0.1:$P_FTP"
passive_ports = "$PASV-$((PASV + 999))"
# Every phone holds a control connection, and one that has just sent QUIT may still be
# counted while its next one opens: size the cap for the fleet, as a lab would.
max_connections = $((N * 2 > 500 ? N * 2 : 500))
[http]
bind = "127.0.0.1:$P_HTTP"
[https]
bind = "127.0.0.1:$P_HTTPS"
[api]
bind = "127.0.0.1:$P_API"
[tracker]
default_burn_time = "1s"
CONF
  "$PROVBOX" --log-level warn serve -c "$W/provbox.toml" >"$W/serve.log" 2>&1 &
  SERVE_PID=$!
  local ok=
  for _ in $(seq 200); do
    if curl -sf -o /dev/null "http://127.0.0.1:$P_API/healthz"; then ok=1; break; fi
    kill -0 "$SERVE_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$ok" ]; then
    echo "fleet.sh: provbox serve did not come up:" >&2; cat "$W/serve.log" >&2; exit 1
  fi
  if [ "$proto" = ftp ] && ! ss -ltnH "sport = :$P_FTP" | grep -q .; then
    echo "ftp: not measured: the appliance does not serve FTP yet (branch ftp)" | tee -a "$OUT/table.txt" >&2
    kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; SERVE_PID=
    return
  fi
  local cpu0 ld
  cpu0=$(cpu_s "$SERVE_PID")
  ld=$(load | tr ' ' '/')
  echo "$proto: $n phones..." >&2
  /usr/bin/time -f '%e %U %S %M' -o "$W/sim.time" \
    "$PROVBOX" --log-level error sim --dhcp "127.0.0.1:$P_DHCP" --giaddr 127.77.0.1 \
      --phones "$n" --model 450HD --mac-start 00:90:8f:20:00:01 \
      --burn 0s --reboot 0s --stagger "$STAGGER" --retry-backoff 1s,2s,4s \
      --dhcp-attempts 8 --read-timeout 120s --time-limit 60m \
      --tftp-port "$P_TFTP" --tftp-blksize "$TFTP_BLKSIZE" --tftp-windowsize "$TFTP_WINDOW" \
      ${ca:+--ca "$ca"} --json --quiet >"$W/report.json" 2>"$W/sim.log" || true
  local cpu1 hwm
  cpu1=$(cpu_s "$SERVE_PID")
  hwm=$(awk '/VmHWM/{print $2}' "/proc/$SERVE_PID/status")
  kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; SERVE_PID=
  if [ -n "$peer" ]; then
    "$SB/peers/stop.sh" "$peer" >/dev/null 2>&1 || true; PEER_UP=
  fi
  # The figures after this row are also the "before" of a peer row that follows it.
  local tcp_before=$TCP_GBPS udp_before=$UDP_GBPS tcp_row udp_row
  measure_limits "$proto"
  tcp_row=$(awk -v a="$tcp_before" -v b="$TCP_GBPS" 'BEGIN{printf "%.2f", (a + b) / 2}')
  udp_row=$(awk -v a="$udp_before" -v b="$UDP_GBPS" 'BEGIN{printf "%.2f", (a + b) / 2}')
  if [ -n "$peer" ]; then
    # The peer's CPU and memory are spread over forked or worker processes; only its
    # time is compared (provbox's own serve process above did DHCP only).
    cpu0=0; cpu1=0; hwm=0
  fi
  local prov total bytes wall
  prov=$(jq .provisioned "$W/report.json"); total=$(jq .total "$W/report.json")
  bytes=$(jq .bytes "$W/report.json"); wall=$(jq '.elapsed_ms/1000' "$W/report.json")
  if [ "$prov" != "$total" ]; then
    echo "$proto: only $prov of $total phones provisioned; outcomes: $(jq -c .outcomes "$W/report.json")" >&2
  fi
  read -r _e sim_u sim_s sim_kb <"$W/sim.time"
  # The bulk phase: from the first image download starting to the last phone starting
  # its burn (every phone's clock starts at its power-on; STAGGER=0 starts them together).
  local dl
  dl=$(jq '([.phones[] | [.timeline[] | select(.phase=="burning") | .at_ms] | min // 0] | max)
           - ([.phones[] | .timeline[] | select(.phase=="firmware_download") | .at_ms] | min // 0)' "$W/report.json")
  awk -v p="$label" -v pr="$proto" -v n="$prov/$total" -v b="$bytes" -v w="$wall" -v g="$tcp_row" -v ug="$udp_row" \
      -v dl="$dl" -v ib="$IMG_BYTES" -v np="$2" \
      -v c="$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{print b-a}')" -v r="$hwm" \
      -v su="$sim_u" -v ss="$sim_s" -v sk="$sim_kb" -v ld="$ld" -v ncpu="$NCPU" -v peer="$peer" 'BEGIN{
        lim = b * 8 / (g * 1e9);
        ulim = (pr == "tftp") ? sprintf("%.1f", b * 8 / (ug * 1e9)) : "-";
        dlim = ib * np * 8 / (g * 1e9);
        clim = (peer == "") ? sprintf("%.1f", (c + su + ss) / ncpu) : "-";
        printf "%-6s %7s %11.0f %8.1f %6.1f %8.1f %6.2f %6.1f %8.2f %9s %9.1f %10.0f %9.1f %10.0f %9s %s\n",
          p, n, b, w, g, lim, w / lim, dl / 1000, (dl / 1000) / dlim, ulim, c, r / 1024, su + ss, sk / 1024, clim, ld }' >>"$OUT/table.txt"
}

for proto in $PROTOCOLS; do
  n=$N
  [ "$proto" = tftp ] && n=$TFTP_N
  measure_limits "$proto"
  run_proto "$proto" "$n"
  if [ -n "$PEERS" ]; then
    case $proto in
      https) run_proto https "$n" nginx ;;
      ftp) run_proto ftp "$n" vsftpd ;;
      tftp) run_proto tftp "$n" tftpd-hpa ;;
    esac
  fi
done
echo "load after: $(load)" >&2
echo "image $IMG_BYTES bytes; loopback measured with iperf3 before and after each row (tcp_gb = the mean of the two, each the better of 1 and 4 streams)"
echo "limit = bytes x 8 / tcp_gb; ratio = wall / limit; udp_lim = bytes x 8 / UDP(1468 B) throughput"
echo "dl_s = the fleet's image phase (first download start to last burn start); dl_ratio = dl_s / (images' bytes x 8 / TCP throughput)"
echo "wall also holds each phone's three DHCP exchanges, header checks, two config fetches and reboots"
echo "cpu_lim_s = (server + simulator CPU) / $NCPU cores: the wall time if every core were busy all along (not for peer rows, whose CPU is not measured)"
cat "$OUT/table.txt"
echo "(srv = provbox serve, sim = provbox sim; cpu in seconds, rss = peak VmHWM / max RSS in MiB; a peer row (nginx, vsftpd, tftpd-hpa) measures no server CPU or RSS; raw reports in $OUT)"
