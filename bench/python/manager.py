#!/usr/bin/env python3
"""Python anchor for bench/manager.c: multiprocessing managers (fork context).

Prints one machine-readable line per workload on stdout:

    dict1_ops  <ops/s, one client: --single times d[k] = v then d[k] on a Manager().dict()>
    dictN_ops  <ops/s, --procs processes each doing --multi times d[k] = v; d[k] on one shared dict>
    qrt_rtps   <round trips/s: put on one Manager().Queue(), a child gets it and puts it on a
                second, the parent gets it back (--rt round trips)>
    tcp_ops    <ops/s, as dict1_ops with the manager at ('127.0.0.1', 0): --tcp iterations>

Each set and each get counts as one operation. Keys are ints (distinct per
process), the value a 16-character str, as in the C benchmark. Every get is
checked. For the multi-process workload the children are started and have
made one call each (their connection is open) before the clock starts; the
parent releases them at once and takes the time until the last one is done.
Each figure is the median of --rounds.
"""
import os
import sys

# Keep this file's directory off the module path (as bench/python/queue.py must
# for queue.py), so nothing here can shadow a standard-library module.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from multiprocessing.managers import SyncManager  # noqa: E402

VALUE = "value-0123456789"


def set_get(d, base, n):
    for k in range(base, base + n):
        d[k] = VALUE
        if d[k] != VALUE:
            raise SystemExit(f"python anchor: d[{k}] read back wrong")


def single(d, n):
    t0 = time.perf_counter()
    set_get(d, 0, n)
    return 2 * n / (time.perf_counter() - t0)


def client(d, base, n, ready, go, res):
    d[-1 - base] = VALUE  # warm-up: the connection is open before the clock starts
    ready.release()
    go.wait()
    set_get(d, base, n)
    res.put(time.monotonic())


def multi(ctx, d, procs, n):
    ready, go, res = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=client, args=(d, c * n, n, ready, go, res)) for c in range(procs)]
    for p in ps:
        p.start()
    for _ in ps:
        if not ready.acquire(timeout=60):
            raise SystemExit("python anchor: a client did not get ready")
    t0 = time.monotonic()
    go.set()
    ends = [res.get(timeout=600) for _ in ps]
    for p in ps:
        p.join()
    if any(p.exitcode for p in ps):
        raise SystemExit("python anchor: a client failed")
    return 2 * n * procs / (max(ends) - t0)


def echo(a, b):
    while True:
        m = a.get()
        if m is None:
            return
        b.put(m)


def round_trip(ctx, mgr, n):
    a, b = mgr.Queue(), mgr.Queue()
    p = ctx.Process(target=echo, args=(a, b))
    p.start()
    for _ in range(max(10, n // 10)):  # warm-up
        a.put(VALUE)
        b.get()
    t0 = time.perf_counter()
    for _ in range(n):
        a.put(VALUE)
        if b.get() != VALUE:
            raise SystemExit("python anchor: the echo came back wrong")
    dt = time.perf_counter() - t0
    a.put(None)
    p.join()
    return n / dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--single", type=int, default=10000)
    ap.add_argument("--multi", type=int, default=1250)
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--rt", type=int, default=2000)
    ap.add_argument("--tcp", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    ctx = mp.get_context("fork")

    def med(fn, *args):
        return statistics.median(fn(*args) for _ in range(a.rounds))

    with ctx.Manager() as mgr:
        d = mgr.dict()
        set_get(d, 0, 100)  # warm-up
        print("dict1_ops", med(single, d, a.single), flush=True)
        d2 = mgr.dict()
        print("dictN_ops", med(multi, ctx, d2, a.procs, a.multi), flush=True)
        print("qrt_rtps", med(round_trip, ctx, mgr, a.rt), flush=True)

    if a.tcp > 0:
        with SyncManager(address=("127.0.0.1", 0), ctx=ctx) as mgr:
            d = mgr.dict()
            set_get(d, 0, 100)
            print("tcp_ops", med(single, d, a.tcp), flush=True)


if __name__ == "__main__":
    main()
