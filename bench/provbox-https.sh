# Sourced by the HTTPS bench scripts: provbox_https_config OUT writes OUT/provbox.toml,
# an appliance serving only HTTPS on 127.0.0.1:20444 from $BENCH_STORE, state in OUT/state.
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
