#!/usr/bin/env python3
"""RSS per registration (issue 13, item 3): starts `switchyard serve` on a fresh
memory-store config (caps raised), registers 200 warm-up instances, then N
instances either all into one service or each into a service of its own, one
keep-alive client, and prints the growth of VmRSS per registration.

    bench/registry_rss.py BINARY one|services N [--scrape]

--scrape: GET /metrics once after the warm-up and once after the N
registrations, before RSS is read (what a Prometheus server adds).
Everything runs on 127.0.0.1; the server is killed at the end.
"""
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time

binary, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
scrape = "--scrape" in sys.argv[4:]
d = tempfile.mkdtemp()
cfg = os.path.join(d, "c.toml")
with open(cfg, "w") as f:
    f.write('[proxy]\nlisten=["127.0.0.1:0"]\n[admin]\nlisten="127.0.0.1:0"\n'
            '[registry]\nmax_services=100000\nmax_instances=1000000\n'
            'max_instances_per_service=100000\n')
p = subprocess.Popen([binary, "serve", "--config", cfg], stderr=subprocess.PIPE, text=True,
                     env=dict(os.environ, RUST_LOG="info"))
try:
    admin = None
    deadline = time.time() + 30
    while admin is None and time.time() < deadline:
        line = p.stderr.readline()
        m = re.search(r"admin listening on ([0-9.:]+)", line)
        if m:
            admin = m.group(1)
    assert admin, "no admin listener"
    host, port = admin.rsplit(":", 1)

    def rss_kib():
        with open(f"/proc/{p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1])

    c = http.client.HTTPConnection(host, int(port))

    def put(svc, i):
        body = json.dumps({"address": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:8080",
                           "ttl": "0s"})
        c.request("PUT", f"/v1/services/{svc}/instances/i{i}", body=body)
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status

    def metrics():
        c.request("GET", "/metrics")
        r = c.getresponse()
        r.read()

    for i in range(200):
        put("warm", i)
    if scrape:
        metrics()
    time.sleep(1)
    before = rss_kib()
    for i in range(n):
        put(f"s{i}" if mode == "services" else "one", i)
    time.sleep(2)
    if scrape:
        metrics()
        time.sleep(1)
    after = rss_kib()
    print(mode, n, "scrape" if scrape else "no scrape", "KiB per registration:",
          round((after - before) / n, 2), "rss", before, "->", after)
finally:
    p.kill()
