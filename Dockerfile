# provbox container image (minimal; the packaging work completes it).
# Build: docker build -t provbox .
# Run DHCP on a lab VLAN:   docker run --network host -v $PWD/store:/store -v provbox-state:/state provbox
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p provbox

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /state provbox && mkdir -p /store /state && chown provbox /state
COPY --from=build /src/target/release/provbox /usr/local/bin/provbox
USER provbox
VOLUME ["/store", "/state"]
ENV PROVBOX_CONFIG=""
EXPOSE 67/udp 69/udp 21/tcp 80/tcp 443/tcp 8080/tcp
ENTRYPOINT ["/usr/local/bin/provbox"]
CMD ["serve"]
