#!/usr/bin/env python3
"""Python anchor for bench/rpc.c: seed 001's RPC (RPCHandler, rpc_server, RPCProxy).

Prints one machine-readable line per workload on stdout:

    unix_us  <µs per proxy.add(2, 3), the server at a unix socket path>
    tcp_us   <µs per proxy.add(2, 3), the server at ('127.0.0.1', 0)>

The server is a separate python3 process (this file with --serve) running the
seed's RPCHandler and rpc_server unchanged; the client, this process, calls it
through the seed's RPCProxy over a Client connection with the authkey. The only
addition is a Listener subclass that prints the address it is bound to, so a
server on port 0 can be found: rpc_server itself is the seed's. Every answer
is checked. Each figure is the median of --rounds runs of --unix / --tcp calls
after a warm-up; a count of 0 leaves that workload out.
"""
import os
import sys

# Keep this file's directory off the module path (see bench/python/manager.py).
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from multiprocessing import connection as _mpc  # noqa: E402
from multiprocessing.connection import Client  # noqa: E402
from threading import Thread  # noqa: E402

AUTHKEY = b"1234"


class Listener(_mpc.Listener):
    """multiprocessing's Listener, telling the parent where it listens."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        addr = self.address
        if isinstance(addr, tuple):
            print("tcp", addr[0], addr[1], flush=True)
        else:
            print("unix", addr, flush=True)


# ---- seed 001, verbatim (comments translated) ----

class RPCHandler:

    def __init__(self):
        self._functions = {}

    def register_function(self, func):
        self._functions[func.__name__] = func

    def handle_connection(self, conn):
        try:
            while True:
                func_name, args, kwargs = pickle.loads(conn.recv())
                try:
                    r = self._functions[func_name](*args, **kwargs)
                    conn.send(pickle.dumps(r))
                except Exception as e:
                    conn.send(pickle.dumps(e))

        except EOFError:
            pass

class RPCProxy:

    def __init__(self, conn):
        self._conn = conn

    def __getattr__(self, item):
        # overridden to call remotely, e.g. proxy.sum(1,2)
        def do_rpc(*args, **kwargs):
            self._conn.send(pickle.dumps((item, args, kwargs)))
            result = pickle.loads(self._conn.recv())
            if isinstance(result, Exception):
                raise result
            return result
        return do_rpc


def rpc_server(handler, addr, authkey):
    sock = Listener(addr, authkey=authkey)
    while True:
        client = sock.accept()
        # a new thread serves each connection
        t = Thread(target=handler.handle_connection, args=(client, ))
        t.daemon = True
        t.start()


def add(x, y):
    return x + y


def sub(x, y):
    return x - y

# ---- end of the seed ----


def serve(kind, path):
    handler = RPCHandler()
    handler.register_function(add)
    handler.register_function(sub)
    rpc_server(handler, ("127.0.0.1", 0) if kind == "tcp" else path, authkey=AUTHKEY)


def start_server(kind, path):
    """The server process and the address it reports."""
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", kind,
                          "--path", path or ""], stdout=subprocess.PIPE, text=True)
    words = p.stdout.readline().split()
    if not words or words[0] != kind:
        p.kill()
        p.wait()
        raise SystemExit(f"python anchor: the {kind} server did not start")
    return p, (words[1], int(words[2])) if kind == "tcp" else words[1]


def calls(proxy, n):
    t0 = time.perf_counter()
    for _ in range(n):
        if proxy.add(2, 3) != 5:
            raise SystemExit("python anchor: add(2, 3) came back wrong")
    return (time.perf_counter() - t0) / n * 1e6


def measure(kind, n, rounds, tmp):
    p, addr = start_server(kind, os.path.join(tmp, "rpc.sock") if kind == "unix" else None)
    try:
        c = Client(addr, authkey=AUTHKEY)
        proxy = RPCProxy(c)
        calls(proxy, max(10, n // 10))  # warm-up
        us = statistics.median(calls(proxy, n) for _ in range(rounds))
        c.close()
        return us
    finally:
        p.terminate()  # the seed's rpc_server never returns
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", choices=("unix", "tcp"))
    ap.add_argument("--path", default="")
    ap.add_argument("--unix", type=int, default=5000)
    ap.add_argument("--tcp", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve, a.path)
        return
    tmp = tempfile.mkdtemp(prefix="mproc-bench-rpc-")
    try:
        if a.unix > 0:
            print("unix_us", measure("unix", a.unix, a.rounds, tmp), flush=True)
        if a.tcp > 0:
            print("tcp_us", measure("tcp", a.tcp, a.rounds, tmp), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
