"""A demo backend for the Switchyard compose example (Python standard library only).

It serves HTTP on $PORT and registers itself with Switchyard's admin API:
PUT /v1/services/$SERVICE/instances/$INSTANCE_ID with a lease of $TTL, renews
it with PUT .../heartbeat every third of the lease (registering again if the
lease was lost, e.g. after a Switchyard restart), and deregisters with DELETE
on SIGTERM/SIGINT before exiting, so `docker compose stop` takes it out of
rotation at once.

Environment:
  SWITCHYARD_ADMIN          admin API base URL (default http://switchyard:9091)
  SWITCHYARD_ADMIN_TOKEN    bearer token for the admin API (required by a non-loopback admin)
  SERVICE                   service to join (default "web")
  INSTANCE_ID               instance id (default: the container's host name)
  ADVERTISE                 host:port Switchyard should send requests to
                            (default: this container's host name and $PORT)
  PORT                      port to listen on (default 8000)
  TTL                       lease length (default "15s")
  WEIGHT                    balancing weight (default 1)
  DELAY_MS                  extra latency per request, to make the latency panels move (default 0)
  ERROR_PERCENT             share of requests answered 500, for the error panels (default 0)
"""

import json
import os
import random
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADMIN = os.environ.get("SWITCHYARD_ADMIN", "http://switchyard:9091").rstrip("/")
TOKEN = os.environ.get("SWITCHYARD_ADMIN_TOKEN", "")
SERVICE = os.environ.get("SERVICE", "web")
INSTANCE_ID = os.environ.get("INSTANCE_ID", socket.gethostname())
PORT = int(os.environ.get("PORT", "8000"))
ADVERTISE = os.environ.get("ADVERTISE", f"{socket.gethostname()}:{PORT}")
TTL = os.environ.get("TTL", "15s")
WEIGHT = int(os.environ.get("WEIGHT", "1"))
DELAY_MS = float(os.environ.get("DELAY_MS", "0"))
ERROR_PERCENT = float(os.environ.get("ERROR_PERCENT", "0"))

INSTANCE_PATH = f"/v1/services/{SERVICE}/instances/{INSTANCE_ID}"
stopping = threading.Event()


def log(message):
    print(f"[{INSTANCE_ID}] {message}", file=sys.stderr, flush=True)


def ttl_seconds(ttl):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if ttl.endswith(suffix):
            return float(ttl[: -len(suffix)]) * units[suffix]
    return float(ttl)


def admin(method, path, body=None):
    """One admin API call; returns the status code (0 when Switchyard is unreachable)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(ADMIN + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if TOKEN:
        request.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace").strip()
        log(f"{method} {path}: {error.code} {detail}")
        return error.code
    except OSError as error:
        log(f"{method} {path}: {error}")
        return 0


def register():
    body = {"address": ADVERTISE, "ttl": TTL, "weight": WEIGHT, "metadata": {"demo": "true"}}
    return admin("PUT", INSTANCE_PATH, body) == 200


def keep_registered():
    """Register, then renew every third of the lease; register again when it was lost."""
    period = max(ttl_seconds(TTL) / 3, 1.0)
    registered = False
    while not stopping.is_set():
        if not registered:
            registered = register()
            if registered:
                log(f"registered {SERVICE}/{INSTANCE_ID} at {ADVERTISE} (ttl {TTL})")
        else:
            status = admin("PUT", INSTANCE_PATH + "/heartbeat")
            if status == 404:
                log("lease lost; registering again")
                registered = register()
        stopping.wait(period if registered else 2.0)


class Handler(BaseHTTPRequestHandler):
    server_version = "switchyard-demo-backend"

    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(200, "ok\n")
        if DELAY_MS > 0:
            time.sleep(random.expovariate(1.0 / (DELAY_MS / 1000.0)))
        if random.uniform(0, 100) < ERROR_PERCENT:
            return self.answer(500, f"{INSTANCE_ID}: simulated failure\n")
        return self.answer(200, f"hello from {INSTANCE_ID} ({SERVICE}), path {self.path}\n")

    def answer(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Instance", INSTANCE_ID)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # one line per request would drown the registration messages


def main():
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True

    def stop(signum, _frame):
        log(f"signal {signum}: deregistering")
        stopping.set()
        admin("DELETE", INSTANCE_PATH)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=keep_registered, daemon=True).start()
    log(f"listening on :{PORT}")
    server.serve_forever()


if __name__ == "__main__":
    main()
