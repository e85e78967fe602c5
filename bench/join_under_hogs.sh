#!/usr/bin/env bash
# How fast a registration joins balancing while every core is busy: one busy loop per
# core at normal priority, then three times: register an instance (PUT) and poll the
# proxy until it routes to it. Compare `[admin] priority` background and normal.
#   bench/join_under_hogs.sh background|normal [BIN]
set -euo pipefail
priority=${1:?usage: $0 background|normal [BIN]}
bin=${2:-target/release/switchyard}
dir=$(mktemp -d)
proxy=127.0.0.1:18300 admin=127.0.0.1:18390 backend_port=18381
cat > "$dir/switchyard.toml" <<TOML
[proxy]
listen = ["$proxy"]
[admin]
listen = "$admin"
priority = "$priority"
TOML
# The backend answers 200 for /svcN/ (the implicit route keeps the path).
mkdir -p "$dir/www/svc1" "$dir/www/svc2" "$dir/www/svc3"
python3 -m http.server "$backend_port" --bind 127.0.0.1 --directory "$dir/www" >/dev/null 2>&1 &
backend=$!
"$bin" serve --config "$dir/switchyard.toml" 2>"$dir/switchyard.log" &
server=$!
hogs=()
trap 'kill $server $backend "${hogs[@]}" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do curl -sf -o /dev/null "http://$admin/healthz" && break; sleep 0.1; done
for _ in $(seq "$(nproc)"); do
    timeout 60 sh -c 'while :; do :; done' &
    hogs+=($!)
done
sleep 1
for n in 1 2 3; do
    start=$(date +%s.%N)
    curl -sf -o /dev/null -X PUT -d "{\"address\":\"127.0.0.1:$backend_port\",\"ttl\":\"30s\"}" \
        "http://$admin/v1/services/svc$n/instances/a"
    registered=$(date +%s.%N)
    routed=
    for _ in $(seq 1000); do # at most ~10 s
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$proxy/svc$n/")" = 200 ]; then
            routed=$(date +%s.%N)
            break
        fi
        sleep 0.01
    done
    [ -n "$routed" ] || { echo "priority=$priority: svc$n not routed within 10 s"; exit 1; }
    echo "priority=$priority: PUT answered after $(echo "$registered - $start" | bc) s, routed after $(echo "$routed - $start" | bc) s"
done
