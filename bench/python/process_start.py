#!/usr/bin/env python3
"""Python anchor for bench/process_start.c.

Times multiprocessing Process(target=noop).start() + join() per start method and
prints one machine-readable line per method on stdout:

    <method> <median_us> <mean_us> <iterations>

Warm-up iterations (not timed) come first, so the fork server and the resource
tracker are already running when timing starts. spawn and forkserver use fewer
iterations than fork because Python's spawn re-imports the interpreter each time.
"""
import argparse
import multiprocessing as mp
import statistics
import sys
import time


def noop():
    pass


def measure(method, iters, warmup):
    ctx = mp.get_context(method)
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter_ns()
        p = ctx.Process(target=noop)
        p.start()
        p.join()
        t1 = time.perf_counter_ns()
        if p.exitcode != 0:
            raise SystemExit(f"{method}: child exit code {p.exitcode}")
        p.close()
        if i >= warmup:
            times.append((t1 - t0) / 1000.0)
    return statistics.median(times), statistics.fmean(times), len(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--methods", default="fork,spawn,forkserver")
    a = ap.parse_args()
    if a.iters < 1 or a.warmup < 0:
        ap.error("--iters must be >= 1 and --warmup >= 0")
    limits = {"fork": a.iters, "forkserver": min(a.iters, 100), "spawn": min(a.iters, 50)}
    available = mp.get_all_start_methods()
    for method in a.methods.split(","):
        if method not in limits:
            ap.error(f"unknown start method {method!r}")
        if method not in available:
            print(f"# {method}: not available on this platform", file=sys.stderr)
            continue
        med, mean, n = measure(method, limits[method], min(a.warmup, limits[method]))
        print(f"{method} {med:.1f} {mean:.1f} {n}", flush=True)


if __name__ == "__main__":
    main()
