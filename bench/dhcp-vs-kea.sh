#!/usr/bin/env bash
# bench/dhcp-vs-kea.sh [ROUNDS]   (root; needs perfdhcp and kea-dhcp4, as ../shared/bench/install-peers.sh installs)
# DORA rate of provbox's DHCP server against kea-dhcp4 (memfile, persist on), in the same run,
# each in its own turn inside netns SRV (198.18.0.1 on pbs0), perfdhcp in netns CLI
# (198.18.0.2 on pbc0), exactly as ../shared/bench/peers/dhcp-fresh.sh measures the peers:
# server pinned to CPU 0, perfdhcp to CPU 1, `perfdhcp -4 -g single -r RATE -R 5000 -p 10`,
# a fresh (empty) lease database before every run, the rate ramp upwards within a run.
# provbox makes every lease durable (redb, fsync, group commit) before its ACK leaves; after each
# run the script stops it and counts the leases in its database.
# Output: the figures of dhcp.sh prefixed kea_ and provbox_, then the ratio of clean rates per round.
# env: RATES ("4000 8000 12000 16000 20000"), PERIOD (10), CLIENTS (5000), SHARED_BENCH (../shared/bench),
#      PB_SRV_NS / PB_CLI_NS (pbxsrv / pbxcli: not the shared default names, so another bench can run)
set -u -o pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$REPO/../shared/bench}
[ -d "$SHARED_BENCH" ] || { echo "no shared bench at $SHARED_BENCH (set SHARED_BENCH)" >&2; exit 1; }
SHARED_BENCH=$(cd "$SHARED_BENCH" && pwd)
export BENCH_RUN=${BENCH_RUN:-$REPO/bench/.run}
export PB_SRV_NS=${PB_SRV_NS:-pbxsrv} PB_CLI_NS=${PB_CLI_NS:-pbxcli}
export CLIENT_NS=$PB_CLI_NS NETNS=$PB_SRV_NS
export RATES=${RATES:-4000 8000 12000 16000 20000} PERIOD=${PERIOD:-10} CLIENTS=${CLIENTS:-5000}
ROUNDS=${1:-1}
mkdir -p "$BENCH_RUN"
log() { printf '[dhcp-vs-kea] %s\n' "$*" >&2; }

(cd "$REPO" && cargo build --release -q -p provbox-protocols --example dhcpd) || { log "build failed"; exit 1; }
DHCPD=$REPO/target/release/examples/dhcpd

"$SHARED_BENCH/peers/netns.sh" up || exit 1
PB_PID=
cleanup() {
  [ -n "$PB_PID" ] && kill "$PB_PID" 2>/dev/null && wait "$PB_PID" 2>/dev/null
  "$SHARED_BENCH/peers/stop.sh" kea-dhcp4 >/dev/null 2>&1
  "$SHARED_BENCH/peers/netns.sh" down
}
trap cleanup EXIT

STATE=$BENCH_RUN/provbox-state
CONF=$BENCH_RUN/provbox-dhcp.toml
cat >"$CONF" <<CONF
[state]
dir = "$STATE"
[dhcp]
bind = "0.0.0.0:67"
interface = "pbs0"
server_ip = "198.18.0.1"
subnet = "198.18.0.0/16"
pool = "198.18.1.0-198.18.255.254"
router = "198.18.0.1"
tftp_server = "198.18.0.1"
lease_time = "1h"
renew_time = "15m"
rebind_time = "30m"
per_mac_rate = 1000
CONF

run_kea() {
  "$SHARED_BENCH/peers/stop.sh" kea-dhcp4 >/dev/null 2>&1
  SERVER_CPUS=0 "$SHARED_BENCH/peers/start-kea-dhcp4.sh" pbs0 >&2 || return 1
  sleep 1
  CLIENT_CPUS=1 SERVER_PID=$(cat "$BENCH_RUN/kea-dhcp4.pid") "$SHARED_BENCH/dhcp.sh" 198.18.0.1 | sed 's/^/kea_/'
  "$SHARED_BENCH/peers/stop.sh" kea-dhcp4 >/dev/null 2>&1
}

run_provbox() {
  rm -rf "$STATE"
  ip netns exec "$PB_SRV_NS" taskset -c 0 env RUST_LOG=warn "$DHCPD" "$CONF" >"$BENCH_RUN/provbox.out" 2>"$BENCH_RUN/provbox.err" &
  PB_PID=$!
  for _ in $(seq 1 50); do grep -q '^listening' "$BENCH_RUN/provbox.out" 2>/dev/null && break; sleep 0.1; done
  grep -q '^listening' "$BENCH_RUN/provbox.out" || { cat "$BENCH_RUN/provbox.err" >&2; return 1; }
  sleep 1
  CLIENT_CPUS=1 SERVER_PID=$PB_PID "$SHARED_BENCH/dhcp.sh" 198.18.0.1 | sed 's/^/provbox_/'
  kill "$PB_PID"; wait "$PB_PID" 2>/dev/null; PB_PID=
  # Leases in the database after a clean stop (one per distinct MAC that got an ACK).
  local n; n=$(sed -n 's/^stopped; \([0-9]*\) lease records.*/\1/p' "$BENCH_RUN/provbox.err")
  printf 'provbox_lease_records %s count\n' "${n:-nan}"
}

for r in $(seq 1 "$ROUNDS"); do
  log "round $r/$ROUNDS: kea-dhcp4"
  k=$(run_kea) || { log "kea run failed"; exit 1; }
  echo "$k"
  log "round $r/$ROUNDS: provbox"
  p=$(run_provbox) || { log "provbox run failed"; exit 1; }
  echo "$p"
  kc=$(awk '$1=="kea_dhcp_max_clean_rate"{print $2}' <<<"$k")
  pc=$(awk '$1=="provbox_dhcp_max_clean_rate"{print $2}' <<<"$p")
  km=$(awk '$1=="kea_dhcp_max_4way"{print $2}' <<<"$k")
  pm=$(awk '$1=="provbox_dhcp_max_4way"{print $2}' <<<"$p")
  awk -v a="$pc" -v b="$kc" 'BEGIN{ if (b>0) printf "ratio_clean_rate %.2f x\n", a/b; else print "ratio_clean_rate nan x" }'
  awk -v a="$pm" -v b="$km" 'BEGIN{ if (b>0) printf "ratio_max_4way %.2f x\n", a/b; else print "ratio_max_4way nan x" }'
done
