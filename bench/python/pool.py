#!/usr/bin/env python3
"""Python anchor for bench/pool.c: multiprocessing.Pool and
concurrent.futures.ProcessPoolExecutor (fork context, 2 workers).

Prints one machine-readable line per workload on stdout:

    map_ips     <items/s, Pool.map(square, range(--map)), default chunksize>
    imapu_tps   <tasks/s, Pool.imap_unordered(square, range(--imap), chunksize=1), drained>
    apply_tps   <tasks/s, --apply Pool.apply_async(square, (i,)), then .get() of each>
    exec_tps    <tasks/s, --executor ProcessPoolExecutor.submit(square, i), then .result() of each>

As in the C benchmark, the pool (executor) is started and warmed up (one small
call, so every worker is running) before the clock starts; only the work is
timed. Outputs are checked, so a wrong answer fails the anchor instead of
reporting a figure. Each figure is the median of --rounds.
"""
import os
import sys

# Keep this file's directory off the module path (as bench/python/queue.py must
# for queue.py), so nothing here can shadow a standard-library module.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import concurrent.futures as cf  # noqa: E402
import multiprocessing as mp  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

WORKERS = 2


def square(x):
    return x * x


def check(ok, what):
    if not ok:
        raise SystemExit(f"python anchor: {what}: wrong result")


def bench_map(pool, n):
    t0 = time.perf_counter()
    out = pool.map(square, range(n))
    dt = time.perf_counter() - t0
    check(len(out) == n and out[-1] == (n - 1) * (n - 1) and out[n // 2] == (n // 2) ** 2, "map")
    return n / dt


def bench_imap_unordered(pool, n):
    t0 = time.perf_counter()
    s = 0
    k = 0
    for y in pool.imap_unordered(square, range(n), chunksize=1):
        s += y
        k += 1
    dt = time.perf_counter() - t0
    check(k == n and s == sum(i * i for i in range(n)), "imap_unordered")
    return n / dt


def bench_apply_async(pool, n):
    t0 = time.perf_counter()
    rs = [pool.apply_async(square, (i,)) for i in range(n)]
    s = 0
    for r in rs:
        s += r.get()
    dt = time.perf_counter() - t0
    check(s == sum(i * i for i in range(n)), "apply_async")
    return n / dt


def bench_executor(ex, n):
    t0 = time.perf_counter()
    fs = [ex.submit(square, i) for i in range(n)]
    s = 0
    for f in fs:
        s += f.result()
    dt = time.perf_counter() - t0
    check(s == sum(i * i for i in range(n)), "executor")
    return n / dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--map", type=int, default=1000000)
    ap.add_argument("--imap", type=int, default=100000)
    ap.add_argument("--apply", type=int, default=100000)
    ap.add_argument("--executor", type=int, default=100000)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    ctx = mp.get_context("fork")

    def med(fn, obj, n):
        return statistics.median(fn(obj, n) for _ in range(a.rounds))

    with ctx.Pool(WORKERS) as pool:
        pool.map(square, range(100), chunksize=1)  # warm-up: every worker has run a task
        print("map_ips", med(bench_map, pool, a.map), flush=True)
        print("imapu_tps", med(bench_imap_unordered, pool, a.imap), flush=True)
        print("apply_tps", med(bench_apply_async, pool, a.apply), flush=True)

    with cf.ProcessPoolExecutor(max_workers=WORKERS, mp_context=ctx) as ex:
        for f in [ex.submit(square, i) for i in range(100)]:  # warm-up
            f.result()
        print("exec_tps", med(bench_executor, ex, a.executor), flush=True)


if __name__ == "__main__":
    main()
