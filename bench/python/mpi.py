#!/usr/bin/env python3
"""Python anchor for bench/mpi.c: mpi4py.futures.MPIPoolExecutor, run as

    mpirun -n 3 /usr/bin/python3 -m mpi4py.futures bench/python/mpi.py --n N --rounds R

(rank 0 runs this script, the other ranks are the executor's workers).
Prints one machine-readable line per workload on stdout:

    py_cs1     <tasks/s, list(ex.map(square, range(N), chunksize=1))>
    py_cs1000  <tasks/s, list(ex.map(square, range(N), chunksize=1000))>

As in the C benchmark the executor is started and warmed up (a small map on
every worker) before the clock starts, outputs are checked, and each figure
is the median of --rounds.
"""
import os
import sys

# Keep this file's directory off the module path (as the other anchors do),
# so nothing here can shadow a standard-library module.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from mpi4py.futures import MPIPoolExecutor  # noqa: E402


def square(x):
    return x * x


def bench_map(ex, n, chunksize):
    t0 = time.perf_counter()
    out = list(ex.map(square, range(n), chunksize=chunksize))
    dt = time.perf_counter() - t0
    if len(out) != n or out[-1] != (n - 1) * (n - 1) or out[n // 2] != (n // 2) ** 2:
        raise SystemExit("python anchor: map: wrong result")
    return n / dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    with MPIPoolExecutor() as ex:
        list(ex.map(square, range(200), chunksize=1))  # warm-up
        for cs in (1, 1000):
            rate = statistics.median(bench_map(ex, a.n, cs) for _ in range(a.rounds))
            print(f"py_cs{cs}", rate, flush=True)


if __name__ == "__main__":
    main()
