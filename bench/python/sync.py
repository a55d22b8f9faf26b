#!/usr/bin/env python3
"""Python anchor for bench/sync.c.

Prints one machine-readable line per workload on stdout:

    lock_ns  <ns per uncontended mp.Lock acquire+release>
    rlock_ns <ns per uncontended mp.RLock acquire+release>
    sem_ns   <ns per uncontended mp.Semaphore acquire+release>
    value_s  <seconds for 2 processes x --adds increments of a Value('l')
              under `with v.get_lock(): v.value += 1`>
"""
import argparse
import multiprocessing as mp
import statistics
import time


def per_op_ns(obj, iters, rounds=5):
    acquire, release = obj.acquire, obj.release
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(iters):
            acquire()
            release()
        out.append((time.perf_counter_ns() - t0) / iters)
    return statistics.median(out)


def adder(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=200000)
    ap.add_argument("--adds", type=int, default=1000000)
    a = ap.parse_args()
    ctx = mp.get_context("fork")
    print("lock_ns", per_op_ns(ctx.Lock(), a.iters), flush=True)
    print("rlock_ns", per_op_ns(ctx.RLock(), a.iters), flush=True)
    print("sem_ns", per_op_ns(ctx.Semaphore(1), a.iters), flush=True)
    v = ctx.Value("l", 0)
    ps = [ctx.Process(target=adder, args=(v, a.adds)) for _ in range(2)]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    t = time.perf_counter() - t0
    if v.value != 2 * a.adds or any(p.exitcode for p in ps):
        raise SystemExit(f"python anchor: got {v.value}, want {2 * a.adds}")
    print("value_s", t, flush=True)


if __name__ == "__main__":
    main()
