# syntax=docker/dockerfile:1
# provbox container image: a release build, then a slim runtime that runs as a non-root
# user with only CAP_NET_BIND_SERVICE (a file capability on the binary).
#
#   docker build -t provbox .
#
# DHCP on a lab VLAN needs the host's network (broadcasts do not cross a bridge):
#   docker run -d --name provbox --network host \
#     -e PROVBOX_DHCP_INTERFACE=eth1 -e PROVBOX_DHCP_SERVER_IP=192.0.2.1 \
#     -e PROVBOX_DHCP_POOL=192.0.2.100-192.0.2.199 \
#     -v "$PWD/store:/store:ro" -v provbox-state:/state provbox
# File services only, on a bridge network: docs/deployment.md ("Container").
# Every config field is a PROVBOX_<SECTION>_<FIELD> variable; a file can be mounted
# and named with PROVBOX_CONFIG=/etc/provbox/provbox.toml.
#
# No Docker engine runs in CI: packaging/verify-image.sh runs this file's runtime stage
# in a debootstrap chroot, and tests/tests/packaging.rs lints this file with hadolint.

ARG RUST_VERSION=1.95
ARG DEBIAN_SUITE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_SUITE} AS build
WORKDIR /src
# Dependencies first, in a layer of their own: manifests, the lock file and stand-in
# sources, so this layer is rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY config/Cargo.toml config/
COPY storage/Cargo.toml storage/
COPY protocols/Cargo.toml protocols/
COPY appliance/Cargo.toml appliance/
COPY tests/Cargo.toml tests/
# Patched (vendored) crates are dependencies: they belong in this layer, whole.
COPY vendor/ vendor/
COPY packaging/stub-workspace.sh packaging/
RUN sh packaging/stub-workspace.sh && cargo build --release --locked -p provbox
# Then the sources. COPY keeps the context's mtimes, which can be older than the
# stand-ins' build: touch them so cargo rebuilds the workspace crates.
COPY . .
RUN find config storage protocols appliance tests -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p provbox \
 && install -D -m 0755 target/release/provbox /out/provbox

FROM debian:${DEBIAN_SUITE}-slim AS runtime
# One layer: the binary (bind-mounted from the build stage, so it is stored once),
# its file capability (setcap is then removed again), the user and the volumes.
# packaging/verify-image.sh runs exactly this RUN in a chroot.
# hadolint ignore=DL3008
RUN --mount=type=bind,from=build,source=/out,target=/mnt/build \
    apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && install -m 0755 /mnt/build/provbox /usr/local/bin/provbox \
 && setcap cap_net_bind_service=+ep /usr/local/bin/provbox \
 && apt-get purge -y --auto-remove libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /state --no-create-home --shell /usr/sbin/nologin provbox \
 && install -d -o provbox -g provbox -m 0750 /state \
 && install -d -m 0755 /store
ENV PROVBOX_STORE_ROOT=/store \
    PROVBOX_STATE_DIR=/state
VOLUME ["/store", "/state"]
# DHCP, TFTP, FTP control and passive range, HTTP, HTTPS; the API stays on loopback
# unless PROVBOX_API_BIND (and PROVBOX_API_TOKEN) say otherwise.
EXPOSE 67/udp 69/udp 21/tcp 30000-30099/tcp 80/tcp 443/tcp
USER 10001:10001
WORKDIR /state
# `provbox healthcheck` asks the API's /healthz on loopback (no curl in the image).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["/usr/local/bin/provbox", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/provbox"]
CMD ["serve"]
