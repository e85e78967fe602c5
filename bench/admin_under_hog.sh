#!/usr/bin/env bash
# What `[admin] priority` costs: the admin API's response times while a busy loop at
# normal priority holds Switchyard's core (as saturated proxy workers would).
# Switchyard and the hog share CPU 1; curl runs on CPU 0. Needs a release build.
#   bench/admin_under_hog.sh background|normal [BIN]
set -euo pipefail
priority=${1:?usage: $0 background|normal [BIN]}
bin=${2:-target/release/switchyard}
dir=$(mktemp -d)
admin=127.0.0.1:18190
cat > "$dir/switchyard.toml" <<TOML
[proxy]
listen = ["127.0.0.1:18100"]
workers = 1
[admin]
listen = "$admin"
priority = "$priority"
TOML
taskset -c 1 "$bin" serve --config "$dir/switchyard.toml" 2>"$dir/switchyard.log" &
server=$!
hog=
trap 'kill $server $hog 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do curl -sf -o /dev/null "http://$admin/healthz" && break; sleep 0.1; done
taskset -c 1 timeout 60 sh -c 'while :; do :; done' &
hog=$!
sleep 1
echo "priority=$priority, CPU 1 held by a busy loop"
for _ in 1 2 3 4 5; do
    taskset -c 0 curl -s -o /dev/null -w "GET /readyz %{time_total} s\n" "http://$admin/readyz"
done
start=$(date +%s.%N)
for i in $(seq 1 50); do
    taskset -c 0 curl -sf -o /dev/null -X PUT -d "{\"address\":\"10.0.0.$i:8080\",\"ttl\":\"0s\"}" \
        "http://$admin/v1/services/x/instances/i$i"
done
end=$(date +%s.%N)
echo "50 PUT registrations (one curl each): $(echo "$end - $start" | bc) s"
taskset -c 0 curl -s -o /dev/null -w "GET /metrics %{time_total} s\n" "http://$admin/metrics"
