#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind (deterministic where
# wall-clock CPU time on a shared, noisy box is not).
#
#   bench/callgrind.sh BINARY OUT_DIR [REQUESTS]
#
# One Switchyard worker (`workers = 1`) under `valgrind --tool=callgrind`,
# round robin over three nginx backends (HTTP/1.1 keep-alive, 21-byte
# bodies, as in bench/run.sh). After a warm-up, the counters are zeroed, a
# bounded h2load run goes through (HTTP/1.1 at 64 connections, then h2c at
# 64 connections, one stream each), and the counters are dumped: the dump's
# total over the requests answered is the figure. Every thread counts (the
# control thread's reaper too). Needs valgrind, nginx, h2load, curl.
set -euo pipefail

bin=${1:?binary}
out=${2:?output folder}
requests=${3:-20000}
mkdir -p "$out"
rt=$(mktemp -d)
trap 'kill $(cat "$rt"/pids 2>/dev/null) 2>/dev/null || true; rm -rf "$rt"' EXIT
b1=18501 b2=18502 b3=18503 port=18590 admin=18591

mkdir -p "$rt/backend-tmp"
cat > "$rt/backend.conf" <<EOF
worker_processes 1; daemon off; pid $rt/backend.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; default_type text/plain; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path $rt/backend-tmp;
  server { listen 127.0.0.1:$b1; location / { return 200 "hello from backend 1\n"; } }
  server { listen 127.0.0.1:$b2; location / { return 200 "hello from backend 2\n"; } }
  server { listen 127.0.0.1:$b3; location / { return 200 "hello from backend 3\n"; } } }
EOF
nginx -c "$rt/backend.conf" -p "$rt" &
echo $! >> "$rt/pids"

# Its own folder: the config watch must not see nginx's files change.
mkdir -p "$rt/sy"
cat > "$rt/sy/switchyard.toml" <<EOF
[proxy]
listen = ["127.0.0.1:$port"]
workers = 1
[admin]
listen = "127.0.0.1:$admin"
[services.bench]
backends = ["127.0.0.1:$b1", "127.0.0.1:$b2", "127.0.0.1:$b3"]
[[routes]]
path_prefix = "/"
service = "bench"
EOF

RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
    "$bin" serve --config "$rt/sy/switchyard.toml" 2> "$out/valgrind.log" &
proxy=$!
echo $proxy >> "$rt/pids"
for _ in $(seq 1 600); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break
    sleep 0.2
done

run() { # name, h2load arguments...
    local name=$1
    shift
    h2load "$@" "http://127.0.0.1:$port/" > "$out/$name.warmup.txt"
    callgrind_control -z "$proxy" > /dev/null
    h2load "$@" -n "$requests" "http://127.0.0.1:$port/" > "$out/$name.h2load.txt"
    callgrind_control -d "$name" "$proxy" > /dev/null
    local ok
    ok=$(awk '/^requests:/ {print $8}' "$out/$name.h2load.txt")
    echo "$name: $ok requests answered" >&2
    echo "$name $ok" >> "$out/requests.txt"
}
: > "$out/requests.txt"
run h1 --h1 -c 64 -n 2000 -t 1
run h2c -c 64 -m 1 -n 2000 -t 1
kill -TERM "$proxy"
wait "$proxy" || true

# Instructions per request from each dump's totals.
for dump in "$out"/callgrind.out.*; do
    name=$(sed -n 's/^desc: Trigger: dump //p' "$dump")
    [ -n "$name" ] || continue
    total=$(sed -n 's/^summary: //p' "$dump" | awk '{print $1}')
    ok=$(awk -v n="$name" '$1 == n {print $2}' "$out/requests.txt")
    callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null | head -120 > "$out/$name.inclusive.txt" || true
    callgrind_annotate --threshold=100 "$dump" 2>/dev/null | head -80 > "$out/$name.self.txt" || true
    echo "$name: $total instructions / $ok requests = $((total / ok)) per request"
done | tee "$out/summary.txt"
