#!/usr/bin/env bash
# Installs, from Debian's packages, every third-party client and peer server the tests
# use: curl, busybox udhcpc and dhclient (DHCP), tftp-hpa and atftp (TFTP), lftp (FTP),
# openssl (TLS), chromium (dashboard), iproute2 and nftables (network namespaces, loss),
# dnsmasq and nginx (the simulator's peer-stack test). Needs root; idempotent and quick
# when everything is already there.
set -euo pipefail
# The packaging tests' tools (DHCP servers' config checkers, systemd-analyze, hadolint).
bash "$(dirname "$0")/../packaging/install-test-deps.sh"
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have curl        || need+=(curl)
have busybox     || need+=(busybox)
have udhcpc      || need+=(udhcpc)
have dhclient    || need+=(isc-dhcp-client)
have lftp        || need+=(lftp)
have tftp        || need+=(tftp-hpa)
have atftp       || need+=(atftp)
have in.tftpd    || need+=(tftpd-hpa)
have openssl     || need+=(openssl)
have chromium    || need+=(chromium)
have ip          || need+=(iproute2)
have nft         || need+=(nftables)
have dnsmasq     || need+=(dnsmasq-base)
have nginx       || need+=(nginx-light)
have vsftpd      || need+=(vsftpd)
have ps          || need+=(procps)
have kea-dhcp4   || need+=(kea-dhcp4-server)
if [ ${#need[@]} -eq 0 ]; then
  echo "test dependencies: all present"
else
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${need[*]}; run this script as root (sudo $0)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  echo "test dependencies installed: ${need[*]}"
fi
# The packaging tests' tools (DHCP servers' config checkers, systemd-analyze, hadolint...).
bash "$(dirname "$0")/../packaging/install-test-deps.sh"
