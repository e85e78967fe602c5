#!/usr/bin/env bash
# Switchyard as a candidate of the shared benchmark harness (../shared/bench, README
# "Adding a candidate"). bench.py runs this with `bash -c 'exec .../candidate.sh'`, pinned
# with taskset, and exports:
#   BENCH_PORT      HTTP/1.1 port to listen on
#   BENCH_H2_PORT   h2c port (may be empty). Plain listeners serve HTTP/1.1 and h2c alike,
#                   so it is simply a second entry in [proxy] listen
#   BENCH_BACKENDS  comma-separated host:port list (the backend nginx)
#   BENCH_RT        scratch directory for the config
#   BENCH_NAME      the candidate's name (config file name)
# It writes a config shaped like the anchors' (one worker thread, round robin over the
# same backends, keep-alive pool, no access log, no health checks) and execs Switchyard in
# the foreground: the harness measures the process tree under the PID it started and
# stops it with SIGTERM.
#
# SWITCHYARD_BIN overrides the binary (default <repo>/target/release/switchyard);
# SWITCHYARD_WORKERS the worker threads (default 1, like the 1-worker anchors; give the
# harness --candidate-cpus 0-1 for 2).
set -euo pipefail
: "${BENCH_PORT:?}" "${BENCH_BACKENDS:?}" "${BENCH_RT:?}" "${BENCH_NAME:?}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${SWITCHYARD_BIN:-$repo/target/release/switchyard}"
[ -x "$bin" ] || { echo "candidate.sh: $bin missing; run cargo build --release" >&2; exit 1; }

cfg="$BENCH_RT/$BENCH_NAME.toml"

listen="\"127.0.0.1:$BENCH_PORT\""
[ -n "${BENCH_H2_PORT:-}" ] && listen="$listen, \"127.0.0.1:$BENCH_H2_PORT\""

backends=""
IFS=, read -ra ups <<< "$BENCH_BACKENDS"
for u in "${ups[@]}"; do
  [ -n "$u" ] && backends="$backends  \"$u\",
"
done

cat > "$cfg" <<TOML
# Written by bench/candidate.sh for the benchmark harness; not hand-edited.
[proxy]
listen = [$listen]
workers = ${SWITCHYARD_WORKERS:-1}
header_read_timeout = "300s"
idle_timeout = "300s"
body_idle_timeout = "300s"
drain_timeout = "1s"
max_connections = 10000

[admin]
listen = "127.0.0.1:0"

[services.bench]
balance = "round_robin"
connect_timeout = "5s"
request_timeout = "300s"
backends = [
$backends]

[[routes]]
path_prefix = "/"
service = "bench"

[log]
format = "text"
TOML

export RUST_LOG=warn
exec "$bin" serve --config "$cfg"
