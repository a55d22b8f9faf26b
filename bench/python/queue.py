#!/usr/bin/env python3
"""Python anchor for bench/queue.c: multiprocessing.Queue (fork context).

Prints one machine-readable line per workload on stdout:

    t64_mps   <messages/s, 1 producer -> 1 consumer, --small 64-byte messages>
    t4k_mps   <the same with --medium 4 KiB messages>
    t1m_mps   <the same with --big 1 MiB messages>
    mpmc_mps  <messages/s, 2 producers x --mpmc 64-byte messages -> 2 consumers>
    rt_us     <µs per 64-byte round trip through two Queues (parent -> child -> parent)>

As in the C benchmark, producers and consumers are child processes: the parent
starts them, waits until every one is ready, releases the producers at once
and takes the time until the last consumer has its last message. Producers put
the same bytes object each time (the cheapest put there is) and end with one
None each; a consumer stops at its first None and reports its count.
Throughput figures are the median of --rounds, the round trip the median of
--batches batches.
"""
import os
import sys

# This file is named queue.py: drop its directory from the module path, or it
# would shadow the standard library's queue module that multiprocessing imports.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

SMALL = 64
MEDIUM = 4096
BIG = 1 << 20


def producer(q, ready, go, size, n):
    payload = bytes(size)
    put = q.put
    ready.release()
    go.wait()
    for _ in range(n):
        put(payload)
    put(None)


def consumer(q, ready, res, size):
    get = q.get
    n = 0
    ready.release()
    while True:
        m = get()
        if m is None:
            break
        if len(m) != size:
            raise SystemExit(f"python anchor: message of {len(m)} bytes, want {size}")
        n += 1
    res.put((n, time.monotonic()))


def throughput(ctx, size, n, nprod=1, ncons=1):
    q, res = ctx.Queue(), ctx.Queue()
    ready, go = ctx.Semaphore(0), ctx.Event()
    cons = [ctx.Process(target=consumer, args=(q, ready, res, size)) for _ in range(ncons)]
    prods = [ctx.Process(target=producer, args=(q, ready, go, size, n)) for _ in range(nprod)]
    for p in cons + prods:
        p.start()
    for _ in cons + prods:
        if not ready.acquire(timeout=60):
            raise SystemExit("python anchor: a child did not get ready")
    t0 = time.monotonic()
    go.set()
    got = [res.get(timeout=300) for _ in cons]
    for p in cons + prods:
        p.join()
    total = sum(g[0] for g in got)
    if total != n * nprod or any(p.exitcode for p in cons + prods):
        raise SystemExit(f"python anchor: received {total} messages, want {n * nprod}")
    return total / (max(g[1] for g in got) - t0)


def echo(a, b):
    while True:
        m = a.get()
        if m is None:
            return
        b.put(m)


def round_trip(ctx, n, batches):
    a, b = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=echo, args=(a, b))
    p.start()
    msg = bytes(SMALL)
    for _ in range(max(100, n // 10)):  # warm-up
        a.put(msg)
        b.get()
    out = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(n):
            a.put(msg)
            b.get()
        out.append((time.perf_counter() - t0) / n * 1e6)
    a.put(None)
    p.join()
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=100000)
    ap.add_argument("--medium", type=int, default=50000)
    ap.add_argument("--big", type=int, default=200)
    ap.add_argument("--mpmc", type=int, default=50000)
    ap.add_argument("--rt", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=5)
    a = ap.parse_args()
    ctx = mp.get_context("fork")

    def med(size, n, k=1):
        return statistics.median(throughput(ctx, size, n, k, k) for _ in range(a.rounds))

    print("t64_mps", med(SMALL, a.small), flush=True)
    print("t4k_mps", med(MEDIUM, a.medium), flush=True)
    print("t1m_mps", med(BIG, a.big), flush=True)
    print("mpmc_mps", med(SMALL, a.mpmc, 2), flush=True)
    print("rt_us", round_trip(ctx, a.rt, a.batches), flush=True)


if __name__ == "__main__":
    main()
