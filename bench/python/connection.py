#!/usr/bin/env python3
"""Python anchor for bench/connection.c: multiprocessing.Pipe() (a socketpair).

Prints one machine-readable line per workload on stdout, µs per message:

    rt_us    <64-byte send_bytes to a child and back (round trip)>
    small_us <a child streams --small 64-byte messages; recv_bytes each>
    big_us   <a child streams --big 1 MiB messages; recv_bytes each>
"""
import argparse
import multiprocessing as mp
import statistics
import time

SMALL = 64
BIG = 1 << 20


def echo(conn):
    # An empty message ends it: the fork child holds a copy of the parent's end,
    # so the parent closing its end would never give it EOF.
    while True:
        m = conn.recv_bytes()
        if not m:
            return
        conn.send_bytes(m)


def stream(conn, size, count):
    conn.recv_bytes()
    payload = bytes(size)
    for _ in range(count):
        conn.send_bytes(payload)


def round_trips(ctx, n):
    a, b = ctx.Pipe()
    p = ctx.Process(target=echo, args=(b,))
    p.start()
    b.close()
    msg = bytes(SMALL)
    a.send_bytes(msg)
    a.recv_bytes()
    t0 = time.perf_counter()
    for _ in range(n):
        a.send_bytes(msg)
        a.recv_bytes()
    t = time.perf_counter() - t0
    a.send_bytes(b"")
    a.close()
    p.join()
    return t / n * 1e6


def streamed(ctx, size, n):
    a, b = ctx.Pipe()
    p = ctx.Process(target=stream, args=(b, size, n))
    p.start()
    b.close()
    t0 = time.perf_counter()
    a.send_bytes(b"go")
    for _ in range(n):
        a.recv_bytes()
    t = time.perf_counter() - t0
    a.close()
    p.join()
    return t / n * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rt", type=int, default=20000)
    ap.add_argument("--small", type=int, default=200000)
    ap.add_argument("--big", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    ctx = mp.get_context("fork")
    print("rt_us", statistics.median(round_trips(ctx, a.rt) for _ in range(a.rounds)), flush=True)
    print("small_us", statistics.median(streamed(ctx, SMALL, a.small) for _ in range(a.rounds)),
          flush=True)
    print("big_us", statistics.median(streamed(ctx, BIG, a.big) for _ in range(a.rounds)),
          flush=True)


if __name__ == "__main__":
    main()
