#!/usr/bin/env bash
# Cluster mode (issue 9, "Speed"): a 3-member etcd on loopback, two Switchyard nodes A and B
# on one prefix, and examples/cluster_bench.rs against them (propagation A -> B, a burst of
# 10,000 registrations, heartbeat cost). Builds the release binary and the example first.
#   bench/cluster.sh [cluster_bench options...]      e.g. --phases propagation --registrations 200
# Environment: CLUSTER_BENCH_RUNS=N (default 1; each run on a fresh etcd and fresh nodes),
#   SWITCHYARD_BENCH_NO_BUILD=1 (skip the build), CLUSTER_BENCH_KEEP=DIR (keep logs there),
#   CARGO_TARGET_DIR (where the binaries are built and looked for), CLUSTER_BENCH_ETCD_NICE=N
#   (run the etcd members at nice N: a control for how much etcd's own CPU moves the proxy),
#   CLUSTER_BENCH_ETCD_CPUS / CLUSTER_BENCH_NODE_CPUS / CLUSTER_BENCH_CLIENT_CPUS=LIST (pin
#   the etcd members / the two nodes / the client with `taskset -c LIST`; e.g. etcd on CPU 0
#   stands in for etcd on machines of its own, as in production), CLUSTER_BENCH_PRIORITY=
#   background|normal (the nodes' `[admin] priority`; unset: the cluster-mode default).
# Needs etcd + etcdctl (Debian: etcd-server etcd-client), curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/switchyard
example=$target/release/examples/cluster_bench
runs=${CLUSTER_BENCH_RUNS:-1}

if [ -z "${SWITCHYARD_BENCH_NO_BUILD:-}" ]; then
    # Same code as the fat-LTO release profile, much faster to link (as .ci/run does).
    CARGO_PROFILE_RELEASE_LTO=${CARGO_PROFILE_RELEASE_LTO:-false} \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=${CARGO_PROFILE_RELEASE_CODEGEN_UNITS:-16} \
        cargo build --release --bin switchyard --example cluster_bench
fi
for tool in etcd etcdctl curl python3; do
    command -v "$tool" >/dev/null || { echo "cluster.sh: $tool is not installed" >&2; exit 1; }
done

dir=
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
    if [ -n "$dir" ]; then
        if [ -n "${CLUSTER_BENCH_KEEP:-}" ]; then
            mkdir -p "$CLUSTER_BENCH_KEEP"
            cp "$dir"/*.log "$dir"/*.toml "$CLUSTER_BENCH_KEEP"/ 2>/dev/null || true
        fi
        rm -rf "$dir"
        dir=
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# N free loopback ports (bound together, then released: a small race with other programs).
free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

pin() { # LIST command...: exec under `taskset -c LIST`, or as is when LIST is empty.
    # Execs, so a job started with `pin ... &` has the command's own pid in $!
    # (CPU accounting reads /proc/PID/stat); run it in ( ) in the foreground.
    local cpus=$1; shift
    if [ -n "$cpus" ]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

wait_for() { # what, command...: retry for up to 30 s
    local what=$1; shift
    for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "cluster.sh: $what did not come up within 30 s" >&2
    return 1
}

run_once() {
    dir=$(mktemp -d /tmp/cluster-bench.XXXXXX)
    # 3 x (client, peer) for etcd, 2 x (proxy, admin) for the nodes, 1 backend.
    read -r c1 p1 c2 p2 c3 p3 pa aa pb ab backend <<< "$(free_ports 11)"
    local clients=("$c1" "$c2" "$c3") peers=("$p1" "$p2" "$p3") i
    local cluster="m1=http://127.0.0.1:$p1,m2=http://127.0.0.1:$p2,m3=http://127.0.0.1:$p3"
    local etcd_pids=()
    for i in 0 1 2; do
        pin "${CLUSTER_BENCH_ETCD_CPUS:-}" nice -n "${CLUSTER_BENCH_ETCD_NICE:-0}" etcd --name "m$((i + 1))" --data-dir "$dir/etcd-m$((i + 1))" \
            --listen-client-urls "http://127.0.0.1:${clients[i]}" \
            --advertise-client-urls "http://127.0.0.1:${clients[i]}" \
            --listen-peer-urls "http://127.0.0.1:${peers[i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${peers[i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "cluster-bench-$p1" \
            --logger zap --log-outputs stderr >"$dir/etcd-m$((i + 1)).log" 2>&1 &
        pids+=($!)
        etcd_pids+=($!)
    done
    local endpoints="127.0.0.1:$c1,127.0.0.1:$c2,127.0.0.1:$c3"
    wait_for "etcd" env ETCDCTL_API=3 etcdctl --endpoints "$endpoints" --command-timeout 2s \
        endpoint health
    local name proxy admin
    for name in a b; do
        if [ $name = a ]; then proxy=$pa admin=$aa; else proxy=$pb admin=$ab; fi
        cat > "$dir/node-$name.toml" <<TOML
[proxy]
listen = ["127.0.0.1:$proxy"]
[admin]
listen = "127.0.0.1:$admin"
${CLUSTER_BENCH_PRIORITY:+priority = \"$CLUSTER_BENCH_PRIORITY\"}
[registry]
store = "etcd://$endpoints/cluster-bench"
[registry.etcd]
dial_timeout = "5s"
[services.load]
backends = ["127.0.0.1:$backend"]
TOML
        RUST_LOG=${CLUSTER_BENCH_LOG:-info} pin "${CLUSTER_BENCH_NODE_CPUS:-}" "$bin" serve --config "$dir/node-$name.toml" \
            >"$dir/node-$name.log" 2>&1 &
        pids+=($!)
        if [ $name = a ]; then a_pid=$!; else b_pid=$!; fi
    done
    wait_for "node A" curl -sf "http://127.0.0.1:$aa/readyz"
    wait_for "node B" curl -sf "http://127.0.0.1:$ab/readyz"
    echo "etcd $(etcd --version | head -1 | cut -d' ' -f3) members on 127.0.0.1:{$c1,$c2,$c3}," \
        "leader: $(ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint status -w simple \
            | awk -F', ' '$5 == "true" {print $1}')"
    (pin "${CLUSTER_BENCH_CLIENT_CPUS:-}" "$example" --a-admin "127.0.0.1:$aa" --a-proxy "127.0.0.1:$pa" \
        --b-admin "127.0.0.1:$ab" --b-proxy "127.0.0.1:$pb" --backend "127.0.0.1:$backend" \
        --a-pid "$a_pid" --b-pid "$b_pid" \
        --etcd "$endpoints" --etcd-pids "$(IFS=,; echo "${etcd_pids[*]}")" "$@")
    local warnings
    warnings=$(grep -ciE '"level":"(warn|error)"|WARN|ERROR' "$dir/node-a.log" "$dir/node-b.log" || true)
    echo "node logs, warning/error lines: $(echo "$warnings" | tr '\n' ' ')"
    cleanup
}

for run in $(seq "$runs"); do
    [ "$runs" -gt 1 ] && echo "=== run $run of $runs, $(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    run_once "$@"
done
