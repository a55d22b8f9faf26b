#!/usr/bin/env python3
"""Python peers for tests/test_connection.c (interop with CPython's
multiprocessing.connection, and a hand-written 3.12+ "{digest}" handshake).

usage: conn_peer.py MODE ADDRESS KEYHEX     (KEYHEX "-" = no authkey)
       conn_peer.py pipe FD

Addresses use mproc's syntax (unix:/path, unix:@name, tcp:host:port). Every
mode prints one line of result on stdout ("ok", "auth-error: ...", ...).
"""
import hashlib
import hmac
import os
import sys
from multiprocessing.connection import AuthenticationError, Client, Connection, Listener

VALUE = [42, None, 'hello']


def py_address(a):
    if a.startswith("unix:@"):
        return "\0" + a[6:]
    if a.startswith("unix:"):
        return a[5:]
    host, _, port = a[4:].rpartition(":")
    return (host.strip("[]"), int(port))


def mproc_address(a):
    if isinstance(a, tuple):
        return "tcp:%s:%d" % a[:2]
    if isinstance(a, bytes):  # abstract names come back as bytes
        a = a.decode()
    if a.startswith("\0"):
        return "unix:@" + a[1:]
    return "unix:" + a


def say(*a):
    print(*a, flush=True)


def echo(c):
    try:
        while True:
            c.send_bytes(c.recv_bytes())
    except EOFError:
        pass


def client_session(c):
    c.send_bytes(b"hello")
    assert c.recv_bytes() == b"hello"
    c.send_bytes(b"")
    assert c.recv_bytes() == b""
    big = os.urandom(100000)
    c.send_bytes(big)
    assert c.recv_bytes() == big
    c.send(VALUE)
    got = c.recv()
    assert got == VALUE, got


# ---- the 3.12+ handshake, written out by hand (this machine has 3.11) ----
CHALLENGE, WELCOME, FAILURE = b"#CHALLENGE#", b"#WELCOME#", b"#FAILURE#"


def modern_deliver(c, key, digest="sha256"):
    msg = b"{%s}" % digest.encode() + os.urandom(40)
    c.send_bytes(CHALLENGE + msg)
    resp = c.recv_bytes(256)
    prefix = b"{%s}" % digest.encode()
    if not resp.startswith(prefix):
        c.send_bytes(FAILURE)
        raise AuthenticationError("reply not in the modern form: %r" % resp[:12])
    want = hmac.new(key, msg, digest).digest()
    if not hmac.compare_digest(want, resp[len(prefix):]):
        c.send_bytes(FAILURE)
        raise AuthenticationError("digest received was wrong")
    c.send_bytes(WELCOME)


def modern_answer(c, key):
    msg = c.recv_bytes(256)
    assert msg.startswith(CHALLENGE)
    msg = msg[len(CHALLENGE):]
    if not msg.startswith(b"{sha256}") or len(msg) != 48:
        raise AuthenticationError("challenge not in the default modern form: %r" % msg[:12])
    c.send_bytes(b"{sha256}" + hmac.new(key, msg, "sha256").digest())
    if c.recv_bytes(256) != WELCOME:
        raise AuthenticationError("digest sent was rejected")


def main():
    mode = sys.argv[1]
    if mode == "pipe":
        c = Connection(int(sys.argv[2]))
        c.send(VALUE)
        say(repr(c.recv()))
        return
    addr = py_address(sys.argv[2])
    key = None if sys.argv[3] == "-" else bytes.fromhex(sys.argv[3])
    try:
        if mode == "listen":
            with Listener(addr, authkey=key) as l:
                say("address", mproc_address(l.address))
                c = l.accept()
                say("accepted")
                echo(c)
            say("ok")
        elif mode == "client":
            c = Client(addr, authkey=key)
            client_session(c)
            c.close()
            say("ok")
        elif mode == "modern-listen":
            with Listener(addr) as l:
                say("address", mproc_address(l.address))
                c = l.accept()
                modern_deliver(c, key)
                modern_answer(c, key)
                say("accepted")
                echo(c)
            say("ok")
        elif mode == "modern-client":
            c = Client(addr)
            modern_answer(c, key)
            modern_deliver(c, key)
            client_session(c)
            c.close()
            say("ok")
        else:
            raise SystemExit("unknown mode " + mode)
    except AuthenticationError as e:
        say("auth-error:", e)
    except EOFError:
        say("eof")


if __name__ == "__main__":
    main()
