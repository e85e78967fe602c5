#!/usr/bin/env bash
# Benchmark Switchyard beside the anchors (nginx, HAProxy, Caddy) with the shared harness.
#
#   bench/run.sh                     full run (~8 min on the 2-core box)
#   bench/run.sh --quick             smoke test (~1.5 min)
#   bench/run.sh --quick --no-2w --no-h2 --no-idle \
#       --targets direct,haproxy-1w,nginx-1w,switchyard
#
# Every argument is passed through to ../shared/bench/run.sh (see its --help). Steps:
#   1. cargo build --release   (the release profile in Cargo.toml, as shipped)
#   2. ../shared/bench/setup.sh when nginx/haproxy/wrk/h2load are missing (needs root;
#      idempotent)
#   3. ../shared/bench/run.sh with Switchyard as candidate "switchyard": h1 port 18401,
#      h2c port 18411, one worker thread on CPU 1 (like the 1-worker anchors), started by
#      bench/candidate.sh
# Results: printed, and written to /tmp/switchyard-bench/<stamp>/ ($BENCH_RESULTS/<stamp>
# when set). See bench/README.md.
#
# Environment: SWITCHYARD_BENCH_HARNESS = the harness folder (default ../shared/bench next
# to the repo); SWITCHYARD_BENCH_NO_BUILD=1 skips the build; SWITCHYARD_BIN, SWITCHYARD_WORKERS
# as in candidate.sh.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
harness="${SWITCHYARD_BENCH_HARNESS:-$repo/../shared/bench}"
[ -f "$harness/run.sh" ] || {
  echo "bench/run.sh: harness not found at $harness (set SWITCHYARD_BENCH_HARNESS)" >&2; exit 1; }
harness="$(cd "$harness" && pwd)"

if [ "${SWITCHYARD_BENCH_NO_BUILD:-0}" != 1 ]; then
  echo "==> cargo build --release"
  (cd "$repo" && cargo build --release --bin switchyard)
fi
bin="${SWITCHYARD_BIN:-$repo/target/release/switchyard}"
[ -x "$bin" ] || { echo "bench/run.sh: $bin missing" >&2; exit 1; }
"$bin" --version || true

missing=()
for tool in nginx haproxy wrk h2load; do
  var="BENCH_$(echo "$tool" | tr a-z A-Z)"
  command -v "${!var:-$tool}" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> $harness/setup.sh (missing: ${missing[*]})"
  if [ "$(id -u)" = 0 ]; then
    bash "$harness/setup.sh"
  elif command -v sudo >/dev/null 2>&1; then
    sudo bash "$harness/setup.sh"
  else
    echo "bench/run.sh: ${missing[*]} missing and not root; run $harness/setup.sh as root" >&2
    exit 1
  fi
fi

echo "==> $harness/run.sh (candidate: switchyard on :18401, h2c :18411)"
exec bash "$harness/run.sh" \
  --candidate-name switchyard \
  --candidate-port 18401 \
  --candidate-h2-port 18411 \
  --candidate-cmd "exec $(printf '%q' "$repo/bench/candidate.sh")" \
  "$@"
