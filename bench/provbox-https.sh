# shellcheck shell=bash
# Sourced by the HTTPS bench scripts (after setting REPO and SB):
#   provbox_bench_env       the shared settings: BENCH_STORE and BENCH_RUN (exported, with
#                           their defaults), the test files, PROVBOX (built if missing);
#   provbox_https_config O  writes O/provbox.toml, an appliance serving only HTTPS on
#                           127.0.0.1:20444 from $BENCH_STORE, state in O/state;
#   provbox_https_start O   that config, then `provbox serve` in the background: PID;
#   provbox_https_wait      until it answers (at most 10 s).
provbox_bench_env() {
  export BENCH_STORE=${BENCH_STORE:-/var/tmp/provbox-bench/store}
  export BENCH_RUN=${BENCH_RUN:-/var/tmp/provbox-bench/run}
  mkdir -p "$BENCH_RUN"
  [ -s "$BENCH_STORE/SHA256SUMS" ] || "$SB/make-files.sh" "$BENCH_STORE" >/dev/null
  PROVBOX=${PROVBOX:-$REPO/target/release/provbox}
  [ -x "$PROVBOX" ] || (cd "$REPO" && cargo build --release -p provbox)
}

provbox_https_start() {
  provbox_https_config "$1"
  "$PROVBOX" --log-level warn serve -c "$1/provbox.toml" 2>"$1/provbox.log" &
  # shellcheck disable=SC2034 # read by the sourcing script
  PID=$!
}

provbox_https_wait() {
  for _ in $(seq 100); do curl -skf -o /dev/null https://127.0.0.1:20444/SHA256SUMS && break; sleep 0.1; done
}

provbox_https_config() {
  cat >"$1/provbox.toml" <<CONF
[store]
root = "$BENCH_STORE"
[state]
dir = "$1/state"
[dhcp]
enabled = false
[tftp]
enabled = false
[ftp]
enabled = false
[http]
enabled = false
[https]
bind = "127.0.0.1:20444"
[api]
enabled = false
CONF
}
