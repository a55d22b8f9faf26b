"""rpc_msgpack_client.py -- an independent msgpack-rpc client (Debian's
python3-msgpack and a plain socket, no mproc code) for tests/test_rpc.c: it
speaks the spec's stream transport to a C server ([0, msgid, method, params]
-> [1, msgid, error, result], [2, method, params]) and prints "ok CALLS" when
every answer was right. Any mismatch exits non-zero with the reason.

  rpc_msgpack_client.py ADDRESS      (tcp:HOST:PORT or unix:@abstract)
"""
import socket
import sys

import msgpack


def connect(a):
    if a.startswith("tcp:"):
        host, port = a[4:].rsplit(":", 1)
        return socket.create_connection((host, int(port)), timeout=30)
    if a.startswith("unix:"):
        path = a[5:]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect("\0" + path[1:] if path.startswith("@") else path)
        return s
    raise SystemExit("bad address " + a)


class Peer:
    def __init__(self, sock):
        self.sock = sock
        self.unp = msgpack.Unpacker(raw=False)
        self.msgid = 0
        self.calls = 0

    def send(self, obj):
        self.sock.sendall(msgpack.packb(obj, use_bin_type=True))

    def recv(self):
        while True:
            for obj in self.unp:
                return obj
            data = self.sock.recv(65536)
            if not data:
                raise SystemExit("server closed the connection")
            self.unp.feed(data)

    def request(self, method, params):
        self.msgid = (self.msgid + 1) & 0xFFFFFFFF
        self.send([0, self.msgid, method, params])
        return self.msgid

    def answer(self, msgid):
        msg = self.recv()
        if not (isinstance(msg, list) and len(msg) == 4 and msg[0] == 1):
            raise SystemExit("not a response: %r" % (msg,))
        if msg[1] != msgid:
            raise SystemExit("msgid %r, wanted %r" % (msg[1], msgid))
        self.calls += 1
        return msg[2], msg[3]

    def call(self, method, *params):
        return self.answer(self.request(method, list(params)))


def expect(cond, what):
    if not cond:
        raise SystemExit("FAILED: " + what)


def main():
    p = Peer(connect(sys.argv[1]))

    for i in range(2000):  # one at a time
        err, res = p.call("add", i, 2 * i)
        expect(err is None and res == 3 * i, "add(%d, %d) -> %r %r" % (i, 2 * i, err, res))

    # Pipelined, 100 in flight at a time: a client that writes without reading
    # deadlocks any server once the socket buffers fill (both sides block in
    # send), and on a unix socket every small answer costs a whole skb.
    for window in range(5):
        ids = [p.request("add", [i, -i - 1]) for i in range(100)]
        for i, msgid in enumerate(ids):
            err, res = p.answer(msgid)
            expect(err is None and res == -1, "pipelined add #%d -> %r %r" % (i, err, res))

    err, res = p.call("div", 1, 0)
    expect(err == ["ZeroDivisionError", "division by zero"] and res is None,
           "div(1, 0) -> %r %r" % (err, res))
    err, res = p.call("value_error")
    expect(err == ["ValueError", "bad value 42"], "value_error -> %r" % (err,))
    err, res = p.call("nosuch", 1)
    expect(isinstance(err, list) and err[0] == "AttributeError" and "nosuch" in err[1],
           "nosuch -> %r" % (err,))
    err, res = p.call("add", "a", 1)
    expect(err == ["TypeError", "add() takes two ints"], "add('a', 1) -> %r" % (err,))

    p.send([2, "record", [7]])  # notifications: no answer
    p.send([2, "record", [5]])
    p.send([2, "nosuch", []])
    err, res = p.call("recorded")
    expect(err is None and res == 12, "recorded after notifications -> %r %r" % (err, res))

    value = [1, -2, 2.5, "héllo", b"\x00\x01", True, None, [1, [2]], {"k": "v", "n": 3}]
    err, res = p.call("echo", *value)
    expect(err is None and res == [value, None], "echo -> %r %r" % (err, res))
    err, res = p.call("nothing")
    expect(err is None and res is None, "nothing -> %r %r" % (err, res))

    p.msgid = 0xFFFFFFFE  # the largest msgid, then wrap to 0
    for _ in range(3):
        err, res = p.call("add", 1, 1)
        expect(err is None and res == 2, "add near msgid wrap -> %r %r" % (err, res))

    p.sock.close()
    print("ok", p.calls, flush=True)


if __name__ == "__main__":
    main()
