#!/usr/bin/env bash
# Run each fuzz target in fuzz/ for MINUTES (default 10), one after another, and print
# executions, speed and coverage per target.
#
#   bench/fuzz.sh            every target, 10 minutes each (~40 min plus the build)
#   bench/fuzz.sh 1          one minute each (a smoke run)
#   FUZZ_TARGETS="framing address" bench/fuzz.sh 5
#
# Targets (fuzz/fuzz_targets/, properties in fuzz/checks/):
#   framing     the HTTP/1 request-smuggling guard, differential against httparse + hyper
#   config      the config loader and validator on arbitrary TOML text
#   admin_json  the admin API's registration and PATCH bodies
#   address     the registry's address parser and network policy
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a C++ compiler (libFuzzer is
# built from source). libFuzzer needs nightly compiler flags; on a stable toolchain this
# script sets RUSTC_BOOTSTRAP=1, which lets stable rustc accept them.
#
# Build: fuzz/Cargo.toml's release profile (opt-level 1, debug assertions and overflow
# checks on), target dir $CARGO_TARGET_DIR/fuzz (target/fuzz when unset), no sanitizer by
# default: the crate forbids `unsafe`. FUZZ_SANITIZER=address turns ASan on (slower).
# Everything runs under `nice -n 10`, one target at a time.
#
# Files:
#   fuzz/corpus/<target>/     the corpus, kept between runs (not committed, .gitignore)
#   fuzz/seeds/<target>/      committed starting inputs, read but never written
#   fuzz/dict/<target>.dict   libFuzzer dictionaries
#   fuzz/artifacts/<target>/  any crasher (crash-*, timeout-*, oom-*); turn each into a
#                             regression test: copy it to tests/fuzz-regressions/<target>/
#                             (tests/fuzz_regressions.rs replays them in `cargo test`)
#   $FUZZ_RESULTS/<stamp>/<target>.log   libFuzzer's output (default /tmp/switchyard-fuzz)
#
# Exit status: 1 when a target found a crasher (the others still run), else 0.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
minutes="${1:-10}"
case "$minutes" in
  ''|*[!0-9]*|0) echo "bench/fuzz.sh: MINUTES must be a whole number >= 1, got '$minutes'" >&2; exit 2 ;;
esac
seconds=$((minutes * 60))
targets="${FUZZ_TARGETS:-framing config admin_json address}"
sanitizer="${FUZZ_SANITIZER:-none}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}/fuzz"
results="${FUZZ_RESULTS:-/tmp/switchyard-fuzz}/$(date -u +%Y%m%dT%H%M%SZ)"

command -v cargo-fuzz >/dev/null 2>&1 || {
  echo "bench/fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2; exit 2; }
rustc --version | grep -q nightly || export RUSTC_BOOTSTRAP=1

cd "$repo"
mkdir -p "$results"
echo "==> building fuzz targets (sanitizer: $sanitizer, target dir: $target_dir)"
nice -n 10 cargo fuzz build -s "$sanitizer" --target-dir "$target_dir"
bin_dir="$target_dir/$(rustc -vV | sed -n 's/^host: //p')/release"

found=0
summary="$results/summary.txt"
printf '%-11s %12s %9s %7s %8s %7s  %s\n' target execs exec/s cov ft corpus result >"$summary"
for target in $targets; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  seeds=()
  [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
  dict=()
  [ -f "fuzz/dict/$target.dict" ] && dict=("-dict=fuzz/dict/$target.dict")
  log="$results/$target.log"
  echo "==> $target for $minutes min (log: $log)"
  status=0
  # The binary itself, not `cargo fuzz run`, which would rebuild first when the
  # sources changed since the build above.
  nice -n 10 "$bin_dir/$target" "$corpus" "${seeds[@]}" \
    -artifact_prefix="fuzz/artifacts/$target/" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${dict[@]}" >"$log" 2>&1 || status=$?
  # libFuzzer's last status line: "#N DONE cov: C ft: F corp: K/... exec/s: E ..."
  last="$(grep -E '^#[0-9]+' "$log" | grep -E 'cov: ' | tail -n 1 || true)"
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  speed="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
  ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
  corp="$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")"
  result=ok
  if [ "$status" -ne 0 ]; then
    found=1
    artifact="$(sed -n 's/.*Test unit written to \(.*\)/\1/p' "$log" | tail -n 1)"
    result="FOUND (exit $status) ${artifact:-see log}"
  fi
  printf '%-11s %12s %9s %7s %8s %7s  %s\n' "$target" "${execs:-?}" "${speed:-?}" \
    "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result" | tee -a "$summary"
done
echo
echo "==> summary ($summary)"
cat "$summary"
exit "$found"
