# syntax=docker/dockerfile:1
#
# Switchyard container image.
#
#   docker build -t switchyard .
#   docker run --rm -p 8080:8080 -p 9091:9091 \
#       -e SWITCHYARD_ADMIN_TOKEN="$(openssl rand -hex 32)" switchyard
#
# The admin listener binds 0.0.0.0:9091 inside the container, and Switchyard refuses to
# start with a non-loopback admin listener and no token: the container MUST be given
# SWITCHYARD_ADMIN_TOKEN (see config/docker.toml). To use your own config, mount it over
# /etc/switchyard/switchyard.toml (or elsewhere and pass `serve --config <path>`).

# ---------------------------------------------------------------------------------------
# Build stage: official Rust image on Debian 12, same glibc as the run stage below.
# ---------------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /build

# protoc and the well-known .proto files: the etcd client (cluster mode) compiles etcd's
# API definitions at build time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*

# 1. Dependencies only. Copy the manifests, build once against a dummy lib + bin so that
#    every dependency is compiled into this layer; it is reused until Cargo.toml or
#    Cargo.lock change. (If Cargo.toml ever declares targets with explicit paths, e.g.
#    [[bench]] or a build script, add matching dummies here.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# 2. The real source (the whole context minus .dockerignore, so files pulled in with
#    include_str!/include_bytes! from outside src/ are present too). COPY keeps the
#    context's mtimes, which can be older than the dummy build's artifacts: touch the
#    crate roots so cargo rebuilds the crate itself rather than reusing the dummy.
COPY . .
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin switchyard \
 && install -m 0755 target/release/switchyard /usr/local/bin/switchyard \
 && /usr/local/bin/switchyard --version

# ---------------------------------------------------------------------------------------
# Run stage: slim Debian 12, CA roots for TLS to backends, non-root user.
# ---------------------------------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Fixed UID/GID 10001 so that orchestrators can check runAsNonRoot / runAsUser.
RUN groupadd --system --gid 10001 switchyard \
 && useradd --system --uid 10001 --gid switchyard --home-dir /var/lib/switchyard \
        --no-create-home --shell /usr/sbin/nologin switchyard \
 && mkdir -p /etc/switchyard /var/lib/switchyard \
 && chown switchyard:switchyard /var/lib/switchyard

COPY --from=build /usr/local/bin/switchyard /usr/local/bin/switchyard
COPY config/docker.toml /etc/switchyard/switchyard.toml

# Writable state (e.g. `[registry] store = "file:/var/lib/switchyard/registry.json"`).
VOLUME ["/var/lib/switchyard"]
WORKDIR /var/lib/switchyard

ENV RUST_LOG=info
USER switchyard:switchyard

# 8080: proxy (HTTP/1.1 + h2c). 9091: admin (/metrics, /healthz, /readyz, /v1/..., dashboard).
# Liveness/readiness probes: GET :9091/healthz and :9091/readyz (no token needed).
EXPOSE 8080 9091

# SIGTERM = graceful drain (stop accepting, /readyz 503, finish in-flight requests up to
# [proxy] drain_timeout, default 30s). Give `docker stop -t` / terminationGracePeriodSeconds
# more than drain_timeout. Switchyard runs as PID 1 and handles SIGTERM/SIGINT/SIGHUP itself.
STOPSIGNAL SIGTERM

ENTRYPOINT ["switchyard"]
CMD ["serve", "--config", "/etc/switchyard/switchyard.toml"]
