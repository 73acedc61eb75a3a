# Multi-stage build: compile in the Rust image, run in a small Debian image as
# a non-root user. The configuration is mounted at /etc/grpc-edge.
#
#   docker build -t grpc-edge .
#   docker run -p 8080:8080 -v "$PWD/config:/etc/grpc-edge:ro" grpc-edge

FROM rust:1.91-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that editing the source does not rebuild them.
COPY Cargo.toml Cargo.lock ./
# Cargo reads every target the manifest names, so the benches get stubs too.
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && echo 'fn main() {}' > benches/proxy.rs && echo 'fn main() {}' > benches/in_process.rs \
    && cargo fetch --locked
COPY . .
RUN cargo build --release --locked --bin grpc-edge \
    && strip target/release/grpc-edge

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin grpc-edge
COPY --from=build /src/target/release/grpc-edge /usr/local/bin/grpc-edge
COPY config/gateway.yaml /etc/grpc-edge/gateway.yaml
COPY descriptors/demo.binpb /etc/descriptors/demo.binpb
USER 10001:10001
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/grpc-edge"]
CMD ["serve", "--config", "/etc/grpc-edge/gateway.yaml"]
