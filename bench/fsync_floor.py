#!/usr/bin/env python3
"""The disk's floor under sequential durable writes: N writes of a
journal-sized line (~200 bytes), each followed by fdatasync, on the
filesystem of DIR (default: the temp folder, where registry_burst keeps its
store). Two ways, interleaved over REPS rounds:

* append: the file grows with each write (its size must be flushed too);
* preallocated: the file is fallocate'd to 4 MiB first and the lines are
  written into it, as the registry journal does (and etcd's WAL).

Prints the total and the per-write percentiles of each run.

    bench/fsync_floor.py [N] [DIR] [REPS]
"""
import os
import sys
import tempfile
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
folder = tempfile.mkdtemp(dir=sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None)
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 1
line = (b'{"seq":1,"put":{"service":"burst","id":"i1","address":"10.0.0.1:8080",'
        b'"resolved":"10.0.0.1:8080","weight":1,"ttl":"0s","expires_at":null}}\n')


def run(preallocated):
    path = os.path.join(folder, "log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if preallocated:
        os.posix_fallocate(fd, 0, 4 * 1024 * 1024)
        os.fsync(fd)
    times = []
    offset = 0
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        os.pwrite(fd, line, offset)
        offset += len(line)
        os.fdatasync(fd)
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    os.close(fd)
    os.remove(path)
    times.sort()
    pct = lambda q: times[min(len(times) - 1, int(len(times) * q))] * 1e3
    mode = "preallocated" if preallocated else "append"
    print(f"{mode:>12}: {n} x (write + fdatasync): {total:.3f} s; per write p50 "
          f"{pct(0.5):.3f} ms, p99 {pct(0.99):.3f} ms, max {times[-1] * 1e3:.3f} ms")


for _ in range(reps):
    run(False)
    run(True)
os.rmdir(folder)
