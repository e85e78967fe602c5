#!/usr/bin/env bash
# Access-log cost: CPU µs per proxied HTTP/1.1 request of the Switchyard process with the
# access log off vs on (JSON to a file), same load, rounds interleaved (off, on, off, on...).
#
#   bench/access_log.sh                 3 rounds of 20,000 requests per setting
#
# Topology: h2load --h1 (16 keep-alive connections) -> Switchyard under test (workers = 1,
# pinned to CPU 1) -> a backend on CPU 0. The backend is a second Switchyard that answers
# every request itself (a 36-byte "404 no route"), so nothing beyond this repository and
# h2load (Debian: nghttp2-client) is needed; the proxy under test forwards that answer like
# any other (a backend's 404 is not retried). CPU = utime + stime of the proxy's process
# (all threads, the access-log writer thread included; /proc/PID/stat), after - before the
# measured run, / requests done. Every run is bounded by -n and by `timeout`.
#
# Environment: SWITCHYARD_BIN (default $CARGO_TARGET_DIR/release/switchyard, or
# target/release/switchyard), ACCESS_LOG_BENCH_REQUESTS (20000), ACCESS_LOG_BENCH_CONNS (16),
# ACCESS_LOG_BENCH_ROUNDS (3), ACCESS_LOG_BENCH_FORMAT (json | combined).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SWITCHYARD_BIN:-${CARGO_TARGET_DIR:-target}/release/switchyard}
requests=${ACCESS_LOG_BENCH_REQUESTS:-20000}
conns=${ACCESS_LOG_BENCH_CONNS:-16}
rounds=${ACCESS_LOG_BENCH_ROUNDS:-3}
format=${ACCESS_LOG_BENCH_FORMAT:-json}
[ -x "$bin" ] || { echo "access_log.sh: $bin missing (cargo build --release)" >&2; exit 1; }
for tool in h2load python3 taskset; do
    command -v "$tool" >/dev/null || { echo "access_log.sh: $tool is not installed" >&2; exit 1; }
done

dir=$(mktemp -d /tmp/sy-access-log-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_listening() { # port
    for _ in $(seq 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "access_log.sh: nothing listens on $1" >&2; exit 1
}

backend_port=$(free_port)
cat > "$dir/backend.toml" <<TOML
[proxy]
listen = ["127.0.0.1:$backend_port"]
workers = 1
[admin]
listen = "127.0.0.1:0"
TOML
timeout 900 taskset -c 0 "$bin" serve --config "$dir/backend.toml" 2>"$dir/backend.err" &
pids+=($!)
wait_listening "$backend_port"

cpu_ticks() { # pid -> utime + stime (clock ticks)
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

run_one() { # off|on -> prints "µs/req req/s"
    local mode=$1 port cfg pid spid before after done_ tick secs
    port=$(free_port)
    cfg="$dir/proxy-$mode.toml"
    cat > "$cfg" <<TOML
[proxy]
listen = ["127.0.0.1:$port"]
workers = 1
[admin]
listen = "127.0.0.1:0"
[services.bench]
backends = ["127.0.0.1:$backend_port"]
[[routes]]
path_prefix = "/"
service = "bench"
TOML
    if [ "$mode" = on ]; then
        rm -f "$dir/access.log"
        printf '[access_log]\npath = "%s"\nformat = "%s"\n' "$dir/access.log" "$format" >> "$cfg"
    fi
    timeout 300 taskset -c 1 "$bin" serve --config "$cfg" 2>"$dir/proxy-$mode.err" &
    pid=$!
    wait_listening "$port"
    # `timeout` forks; the proxy (taskset exec'ed it) is its child.
    spid=$(pgrep -P "$pid" | head -1)
    timeout 120 taskset -c 0 h2load --h1 -n 2000 -c "$conns" "http://127.0.0.1:$port/warm" >/dev/null
    before=$(cpu_ticks "$spid")
    local start end
    start=$(date +%s.%N)
    out=$(timeout 300 taskset -c 0 h2load --h1 -n "$requests" -c "$conns" "http://127.0.0.1:$port/bench/x")
    end=$(date +%s.%N)
    after=$(cpu_ticks "$spid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    done_=$(echo "$out" | awk '/^requests:/ { print $6 }')
    tick=$(getconf CLK_TCK)
    if [ "$mode" = on ]; then
        lines=$(wc -l < "$dir/access.log")
        [ "$lines" -ge "$requests" ] || echo "  (warning: $lines access-log lines for $requests requests)" >&2
    fi
    python3 -c "
t=($after-$before)/$tick; n=$done_; w=$end-$start
print(f'{t/n*1e6:.1f} {n/w:.0f}')"
}

echo "binary: $bin"
echo "$(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "requests per run: $requests over $conns connections, $rounds rounds, log format $format"
declare -a off on
for r in $(seq "$rounds"); do
    read -r us rps < <(run_one off); off+=("$us"); echo "round $r off: $us µs/req, $rps req/s"
    read -r us rps < <(run_one on); on+=("$us"); echo "round $r on:  $us µs/req, $rps req/s"
done
python3 - "${off[*]}" "${on[*]}" <<'PY'
import statistics, sys
off = [float(x) for x in sys.argv[1].split()]
on = [float(x) for x in sys.argv[2].split()]
mo, mn = statistics.median(off), statistics.median(on)
print(f"median off: {mo:.1f} µs/req {off}")
print(f"median on:  {mn:.1f} µs/req {on}")
print(f"access log cost: {mn - mo:+.1f} µs/req ({(mn / mo - 1) * 100:+.1f} %)")
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
