#!/usr/bin/env python3
"""The disk's floor under sequential durable writes: N appends of a
journal-sized line (~200 bytes), each followed by fdatasync, on the
filesystem of DIR (default: the temp folder, where registry_burst keeps its
store). Prints the total and the per-write percentiles.

    bench/fsync_floor.py [N] [DIR]
"""
import os
import sys
import tempfile
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
folder = tempfile.mkdtemp(dir=sys.argv[2] if len(sys.argv) > 2 else None)
path = os.path.join(folder, "log")
line = (b'{"seq":1,"put":{"service":"burst","id":"i1","address":"10.0.0.1:8080",'
        b'"resolved":"10.0.0.1:8080","weight":1,"ttl":"0s","expires_at":null}}\n')
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
times = []
start = time.perf_counter()
for _ in range(n):
    t = time.perf_counter()
    os.write(fd, line)
    os.fdatasync(fd)
    times.append(time.perf_counter() - t)
total = time.perf_counter() - start
os.close(fd)
os.remove(path)
os.rmdir(folder)
times.sort()
pct = lambda q: times[min(len(times) - 1, int(len(times) * q))] * 1e3
print(f"{n} x (write + fdatasync): {total:.3f} s; per write p50 {pct(0.5):.3f} ms, "
      f"p99 {pct(0.99):.3f} ms, max {times[-1] * 1e3:.3f} ms")
