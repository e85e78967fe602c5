#!/usr/bin/env python3
"""Memory per idle keep-alive client connection, plain or TLS, and what is left after they close.

    bench/idle_memory.py BINARY [--conns N] [--tls] [--rounds R]

Starts one backend (python's http.server on an ephemeral loopback port), Switchyard
(BINARY) with one worker in front of it, opens N keep-alive connections that each send
one GET and read the answer, then holds them open and idle: RSS (VmRSS of the
Switchyard process) before, with the connections held, and 3 s after they close.
Repeats R rounds on the same process (so the second round shows whether memory freed by
the first is reused). Everything stays on 127.0.0.1; every wait is bounded.
"""
import argparse
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"hello from the backend\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def read_response(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk
    return int(head.split()[1])


def wait_listening(port, deadline):
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="sy-idle-")
    backend = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port, admin = free_port(), free_port()
    tls_block, ctx = "", None
    if a.tls:
        cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                        "/CN=localhost", "-keyout", key, "-out", cert],
                       check=True, capture_output=True, timeout=30)
        tls_block = (f'[[proxy.tls]]\nlisten = "127.0.0.1:{port}"\n'
                     f'certs = [{{ cert = "{cert}", key = "{key}" }}]\nalpn = ["http/1.1"]\n')
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        listen = f'"127.0.0.1:{free_port()}"'
    else:
        listen = f'"127.0.0.1:{port}"'
    config = os.path.join(work, "switchyard.toml")
    with open(config, "w") as f:
        f.write(f"[proxy]\nlisten = [{listen}]\nworkers = 1\n{tls_block}\n"
                f'[admin]\nlisten = "127.0.0.1:{admin}"\n\n'
                f'[services.b]\nbackends = ["127.0.0.1:{backend.server_address[1]}"]\n\n'
                '[[routes]]\npath_prefix = "/"\nservice = "b"\n')
    proc = subprocess.Popen(["timeout", "600", a.binary, "serve", "--config", config],
                            stderr=subprocess.DEVNULL)
    try:
        if not wait_listening(port, time.monotonic() + 20):
            sys.exit("switchyard did not start listening")
        pid = int(subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                 text=True, timeout=5).stdout.split()[0])
        request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
        kind = "TLS" if a.tls else "plain"
        for r in range(1, a.rounds + 1):
            before = rss_kib(pid)
            socks, failed = [], 0
            deadline = time.monotonic() + 120
            for _ in range(a.conns):
                if time.monotonic() > deadline:
                    break
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    if ctx:
                        s = ctx.wrap_socket(s, server_hostname="localhost")
                    s.sendall(request)
                    if read_response(s) != 200:
                        failed += 1
                    socks.append(s)
                except OSError:
                    failed += 1
            time.sleep(1)
            held = rss_kib(pid)
            for s in socks:
                s.close()
            time.sleep(3)
            after = rss_kib(pid)
            per = (held - before) / max(1, len(socks))
            print(f"{kind} round {r}: {len(socks)} idle connections ({failed} failed): "
                  f"RSS {before / 1024:.1f} -> {held / 1024:.1f} MiB ({per:.2f} KiB/conn), "
                  f"{after / 1024:.1f} MiB 3 s after they closed", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        backend.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
