"""rpc_seed.py -- seed 001's Python RPC (RPCHandler, RPCProxy, rpc_server),
driven by tests/test_rpc.c to check that mproc's RPC talks to it both ways.

  rpc_seed.py client ADDRESS KEYHEX
      The seed's RPCProxy, unmodified, calls a C server and prints one line
      per result; "done" at the end.
  rpc_seed.py server ADDRESS KEYHEX
      rpc_server of the seed's design (RPCHandler + Listener + a thread per
      client) prints "address ADDRESS" once it listens, and serves until
      stdin is closed.

ADDRESS is mproc's syntax: tcp:HOST:PORT, unix:/path or unix:@abstract.
"""
import pickle
import sys
from multiprocessing.connection import Client, Listener
from threading import Thread


# ---------------------------------------------------- seed 001, verbatim

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
        # 重写，实现远程调用。比如 proxy.sum(1,2)
        def do_rpc(*args, **kwargs):
            self._conn.send(pickle.dumps((item, args, kwargs)))
            result = pickle.loads(self._conn.recv())
            if isinstance(result, Exception):
                raise result
            return result
        return do_rpc


# The seed's rpc_server plus one line: say where it listens (port 0 picks one).
def rpc_server(handler, addr, authkey):
    sock = Listener(addr, authkey=authkey)
    print("address", mproc_address(sock.address), flush=True)
    while True:
        client = sock.accept()
        # 启动一个新的线程处理远程请求
        t = Thread(target=handler.handle_connection, args=(client, ))
        t.daemon = True
        t.start()


# ---------------------------------------------------- the seed's examples

def add(x, y):
    return x + y


def sub(x, y):
    return x - y


def div(x, y):
    return x // y


def scale(x, factor=1):
    return x * factor


def echo(*args, **kwargs):
    return [list(args), kwargs or None]


def oserror():
    raise FileNotFoundError(2, "nope")


class CustomError(Exception):
    pass


def custom():
    raise CustomError("mine")


# ---------------------------------------------------- driver

def python_address(a):
    if a.startswith("tcp:"):
        host, port = a[4:].rsplit(":", 1)
        return (host, int(port))
    if a.startswith("unix:@"):
        return "\0" + a[6:]
    if a.startswith("unix:"):
        return a[5:]
    raise ValueError("bad address " + a)


def mproc_address(a):
    if isinstance(a, tuple):
        return "tcp:%s:%d" % (a[0], a[1])
    if isinstance(a, bytes):  # an abstract name comes back from getsockname as bytes
        a = a.decode()
    if a.startswith("\0"):
        return "unix:@" + a[1:]
    return "unix:" + a


def client(addr, key):
    c = Client(addr, authkey=key)
    proxy = RPCProxy(c)
    print("add", proxy.add(2, 3))
    print("sub", proxy.sub(10, 4))
    print("scale", proxy.scale(3, factor=4))
    print("echo", repr(proxy.echo(1, 2.5, "s", b"b", None, True, [1, [2]], {"k": "v"})))
    try:
        proxy.add("a", 1)
        print("no TypeError")
    except TypeError as e:
        print("TypeError", e)
    try:
        proxy.nosuch(1)
        print("no error for nosuch")
    except Exception as e:
        print(type(e).__name__, e)
    try:
        proxy.div(1, 0)
        print("no ZeroDivisionError")
    except ZeroDivisionError as e:
        print("ZeroDivisionError", e)
    print("add", proxy.add(40, 2))  # still usable after errors
    c.close()
    print("done", flush=True)


def server(addr, key):
    handler = RPCHandler()
    for f in (add, sub, div, scale, echo, oserror, custom):
        handler.register_function(f)
    t = Thread(target=rpc_server, args=(handler, addr, key), daemon=True)
    t.start()
    sys.stdin.read()  # until the test closes our stdin


def main():
    mode, addr, keyhex = sys.argv[1:4]
    key = bytes.fromhex(keyhex) if keyhex != "-" else None
    if mode == "client":
        client(python_address(addr), key)
    elif mode == "server":
        server(python_address(addr), key)
    else:
        raise SystemExit("unknown mode " + mode)


if __name__ == "__main__":
    main()
