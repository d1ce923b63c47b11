#!/usr/bin/env bash
# Proves the Dockerfile's runtime stage without a Docker engine (none runs on these
# machines): builds a Debian minbase root with debootstrap (what debian:bookworm-slim
# is made from), runs the Dockerfile's own runtime RUN instruction in it (read from the
# Dockerfile, so the two cannot drift), then starts `provbox serve` inside it as the
# image's non-root USER, with the image's ENV, in a network namespace of its own, and
# checks that:
#   - the process runs as uid 10001 with no capability but CAP_NET_BIND_SERVICE,
#   - it bound the privileged ports 80, 443, 21 and 69 (the file capability works),
#   - a file in /store downloads over HTTP byte for byte,
#   - the image's HEALTHCHECK command (`provbox healthcheck`) reports healthy.
# The build stage's command is the one CI already runs (`cargo build --release --locked
# -p provbox`); this script uses that binary.
#
# Usage (as root; debootstrap needs Debian's mirror, which is why this is a script and
# not a CI test: tests only talk to loopback, and debootstrap takes about 2.5 minutes):
#   packaging/verify-image.sh [--binary PATH] [--cache DIR] [--keep] [-e KEY=VALUE]...
#     --binary   the provbox binary (default: target/release/provbox)
#     --cache    keep the fresh debootstrap root as DIR/bookworm-minbase.tar, reuse it
#     --keep     leave the chroot in place (its path is printed)
#     -e         an extra environment variable for serve and healthcheck, as with
#                `docker run -e` (e.g. -e PROVBOX_API_ENABLED=false before the API exists)
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=target/release/provbox
CACHE=""
KEEP=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BIN=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -e) EXTRA+=("$2"); shift 2 ;;
    *) echo "verify-image.sh: unknown argument $1 (see the header of this script)" >&2; exit 64 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "verify-image.sh: run as root (debootstrap, chroot, ip netns)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "verify-image.sh: $BIN is missing: cargo build --release --locked -p provbox" >&2; exit 1; }
for tool in debootstrap chroot ip curl getcap ss; do
  command -v "$tool" >/dev/null || { echo "verify-image.sh: $tool is missing (apt-get install debootstrap iproute2 curl libcap2-bin)" >&2; exit 1; }
done

# The Debian mirror apt is configured with (deb822 or one-line sources).
MIRROR=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 || true)
[ -n "$MIRROR" ] || MIRROR=$(sed -n 's/^deb  *\(\[[^]]*\] *\)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | grep -v security | head -1 || true)
[ -n "$MIRROR" ] || { echo "verify-image.sh: no Debian mirror found in /etc/apt/sources.list*" >&2; exit 1; }
SUITE=$(sed -n 's/^ARG DEBIAN_SUITE=//p' Dockerfile)
[ -n "$SUITE" ] || { echo "verify-image.sh: no ARG DEBIAN_SUITE in Dockerfile" >&2; exit 1; }

WORK=$(mktemp -d /var/tmp/provbox-image.XXXXXX)
R=$WORK/root
NS=provbox-image-$$
PID=""
cleanup() {
  set +e
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  mountpoint -q "$R/proc" && umount "$R/proc"
  if [ "$KEEP" -eq 1 ]; then echo "kept: $R"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
step() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; [ -f "$WORK/serve.log" ] && sed 's/^/  serve: /' "$WORK/serve.log" >&2; exit 1; }

step "debootstrap --variant=minbase $SUITE from $MIRROR"
if [ -n "$CACHE" ] && [ -f "$CACHE/$SUITE-minbase.tar" ]; then
  mkdir -p "$R" && tar -C "$R" -xf "$CACHE/$SUITE-minbase.tar"
else
  debootstrap --variant=minbase "$SUITE" "$R" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
  if [ -n "$CACHE" ]; then mkdir -p "$CACHE" && tar -C "$R" -cf "$CACHE/$SUITE-minbase.tar" .; fi
fi
cp /etc/resolv.conf "$R/etc/resolv.conf"
mount -t proc proc "$R/proc"

# The runtime stage's RUN (continuation lines joined, --mount flags dropped), and the
# stage's ENV, USER and HEALTHCHECK.
RUNTIME=$(awk '/^FROM .* AS runtime/{on=1} on' Dockerfile)
RUN_CMD=$(printf '%s\n' "$RUNTIME" | awk '
  /^RUN /{on=1}
  on { line=$0; sub(/\\$/, "", line); cmd = cmd " " line; if ($0 !~ /\\$/) { print cmd; exit } }' \
  | sed -e 's/^ *RUN //' -e 's/--mount=[^ ]* *//g')
ENVS=$(printf '%s\n' "$RUNTIME" | awk '
  /^ENV /{on=1}
  on { line=$0; sub(/\\$/, "", line); sub(/^ENV /, "", line); print line; if ($0 !~ /\\$/) on=0 }' | tr -s ' ' '\n' | grep -F '=' || true)
USERSPEC=$(printf '%s\n' "$RUNTIME" | sed -n 's/^USER //p')
grep -q 'CMD \["/usr/local/bin/provbox", "healthcheck"\]' Dockerfile || fail "the HEALTHCHECK is not provbox healthcheck"
if [ -z "$RUN_CMD" ] || [ -z "$USERSPEC" ]; then fail "cannot read the runtime stage from the Dockerfile"; fi

step "runtime stage: RUN $RUN_CMD"
install -D -m 0755 "$BIN" "$R/mnt/build/provbox"
chroot "$R" /bin/sh -ec "$RUN_CMD" > "$WORK/run.log" 2>&1 || { tail -20 "$WORK/run.log" >&2; fail "the runtime RUN"; }
rm -rf "$R/mnt/build"
CAPS=$(getcap "$R/usr/local/bin/provbox")
echo "   $CAPS"
case "$CAPS" in *cap_net_bind_service=ep*) ;; *) fail "the binary has no cap_net_bind_service=ep" ;; esac
chroot "$R" sh -c 'command -v setcap' >/dev/null && fail "setcap is still in the image"

step "a store file and the network namespace $NS"
head -c 1048576 /dev/urandom > "$R/store/450HD_3.4.8.198.img"
chmod 0644 "$R/store/450HD_3.4.8.198.img"
WANT=$(sha256sum < "$R/store/450HD_3.4.8.198.img" | cut -d' ' -f1)
ip netns add "$NS"
ip -n "$NS" link set lo up
# The container's environment: the image's ENV, then -e overrides.
ENV_ARGS=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/state)
while IFS= read -r kv; do [ -n "$kv" ] && ENV_ARGS+=("$kv"); done <<< "$ENVS"
ENV_ARGS+=("${EXTRA[@]}")
in_image() { ip netns exec "$NS" chroot --userspec="$USERSPEC" "$R" /usr/bin/env -i "${ENV_ARGS[@]}" "$@"; }

step "provbox serve as $USERSPEC (${ENV_ARGS[*]:2})"
START=$(date +%s%N)
ip netns exec "$NS" chroot --userspec="$USERSPEC" "$R" /bin/sh -c 'cd /state && exec "$@"' sh \
  /usr/bin/env -i "${ENV_ARGS[@]}" /usr/local/bin/provbox serve > "$WORK/serve.log" 2>&1 &
PID=$!
# Text log lines, colour codes (if any) removed: `listening service="http" addr=...`.
listening() { sed 's/\x1b\[[0-9;]*m//g' "$WORK/serve.log" 2>/dev/null | grep -E "listening service=\"?$1\"? "; }
for _ in $(seq 1 200); do
  listening http >/dev/null && break
  kill -0 "$PID" 2>/dev/null || fail "provbox serve exited"
  sleep 0.05
done
listening http >/dev/null || fail "no 'listening' line for http within 10 s"
echo "   listening after $(( ($(date +%s%N) - START) / 1000000 )) ms"

step "identity and capabilities of the running process"
# ip netns exec, chroot, sh and env all exec: $PID is provbox itself.
SPID=$PID
[ "$(readlink "/proc/$SPID/root")" = "$R" ] || fail "pid $SPID is not running in $R"
UIDS=$(awk '/^Uid:/{print $2, $3}' "/proc/$SPID/status")
CAPEFF=$(awk '/^CapEff:/{print $2}' "/proc/$SPID/status")
echo "   pid $SPID uid/euid $UIDS CapEff $CAPEFF"
[ "$UIDS" = "10001 10001" ] || fail "serve runs as uid $UIDS, not 10001"
[ "$CAPEFF" = "0000000000000400" ] || fail "effective capabilities $CAPEFF, want only CAP_NET_BIND_SERVICE (0x400)"

step "privileged ports bound by the non-root process"
SOCKETS=$(ip netns exec "$NS" ss -H -ltunp)
printf '%s\n' "$SOCKETS" | sed 's/^/   /'
for port in 80 443; do
  printf '%s\n' "$SOCKETS" | grep -q ":$port .*pid=$SPID," || fail "nothing of pid $SPID listens on port $port"
done
# Every other port a server logged (DHCP once a pool is set, TFTP, FTP, the API).
for port in $(listening '[a-z]+' | sed -n 's/.*addr=[0-9.]*:\([0-9]*\).*/\1/p'); do
  printf '%s\n' "$SOCKETS" | grep -q ":$port .*pid=$SPID," || fail "port $port was logged but is not bound"
  echo "   port $port bound by pid $SPID"
done

step "download /450HD_3.4.8.198.img over HTTP"
GOT=$(ip netns exec "$NS" curl -sS --max-time 20 -f http://127.0.0.1/450HD_3.4.8.198.img | sha256sum | cut -d' ' -f1) \
  || fail "the download failed"
[ "$GOT" = "$WANT" ] || fail "downloaded sha256 $GOT, want $WANT"
echo "   sha256 $GOT"

step "HEALTHCHECK: provbox healthcheck"
if ! in_image /usr/local/bin/provbox healthcheck > "$WORK/health.log" 2>&1; then
  sed 's/^/   /' "$WORK/health.log"
  fail "provbox healthcheck reported unhealthy"
fi
sed 's/^/   /' "$WORK/health.log"

echo "PASS: the runtime stage of the Dockerfile runs provbox as uid 10001 with CAP_NET_BIND_SERVICE only"
