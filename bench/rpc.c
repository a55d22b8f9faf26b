/* rpc.c — the cost of one RPC call: add(2, 3) called by one client and
 * answered, call after call, by mproc's RPC, next to seed 001's Python RPC
 * and raw ZeroMQ REQ/REP measured in the same run.
 *
 * The servers run in one child process (fork), the client in the parent;
 * each call is mproc_rpc_call(proxy, "add", [2, 3]) and its answer checked:
 *   msgpack-rpc, AF_UNIX   msgpack-rpc over a Connection at an abstract unix
 *                          address, with an authkey (the seed's setting); the
 *                          proxy moves to shared memory after the handshake,
 *                          as every local proxy does by default;
 *   msgpack-rpc, TCP       the same at tcp:127.0.0.1 (port 0);
 *   Python wire, TCP       seed 001's wire (a pickled bytes object holding the
 *                          pickled (name, args, kwargs), answered alike) over
 *                          a Connection at TCP, with the authkey;
 *   AF_UNIX / TCP, socket path
 *                          the first two with no_shm: every call on the
 *                          socket, as for a client on another machine;
 *   msgpack stream, TCP    msgpack-rpc's own transport: MessagePack objects
 *                          straight on the socket, no framing, no authkey;
 *   msgpack-rpc, ZeroMQ    mproc's ZeroMQ transport, when the library has one
 *                          (mproc_rpc_have_zmq()); n/a otherwise.
 * Anchors:
 *   Python   bench/python/rpc.py: the seed's RPCHandler + rpc_server in one
 *            python3 process, its RPCProxy in another, proxy.add(2, 3) over a
 *            unix socket path and over ('127.0.0.1', 0). The AF_UNIX row is
 *            compared with the unix figure, every other row with TCP's;
 *   ZeroMQ   raw REQ/REP with libzmq and no mproc: the REQ sends the two
 *            operands (two int64, 16 bytes), a REP thread in the server child
 *            answers their sum (8 bytes); ipc:// (abstract) for the AF_UNIX
 *            row, tcp://127.0.0.1 for the others. Built only when pkg-config
 *            finds libzmq (Debian: libzmq3-dev, which `make bench` installs).
 * Figures are µs per call: the median of --rounds (rows interleaved round by
 * round, so machine noise hits them alike), Python's the median of
 * --py-rounds. A measurement stops after its count or after --max-time
 * seconds, whichever comes first.
 *
 * Targets (issue 8): >= 20x faster than the seed's Python RPC; at least as
 * fast as raw ZeroMQ REQ/REP.
 *
 * Usage: bench_rpc [--quick] [--scale X] [--rounds R] [--py-rounds R]
 *                  [--max-time S] [--no-python] [--no-zmq] [--python PATH]
 *   --quick   smoke run: counts / 20, 1 round, Python 1 round */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mproc.h>
#include <mproc/rpc.h>

#ifdef MPROC_BENCH_HAVE_ZMQ
#include <zmq.h>
#endif

#include "bench.h"

#ifndef MPROC_BENCH_PYDIR
#define MPROC_BENCH_PYDIR "bench/python"
#endif

#define PYTHON_TARGET 20.0
#define ZMQ_TARGET 1.0
#define AUTHKEY "1234" /* the seed's */
/* Longest the server child or one answer may take before the benchmark
 * calls it hung. */
#define WAIT_S 30.0
/* Calls between two looks at the clock. */
#define CLOCK_EVERY 64

/* mproc rows, then the raw ZeroMQ anchors (measured in the same loop). */
enum { W_UNIX, W_TCP, W_PYWIRE, W_UNIX_SOCK, W_TCP_SOCK, W_STREAM, W_ZMQT, NW,
       A_ZIPC = NW, A_ZTCP, NM };
static const char *wname[NM] = {"msgpack-rpc, AF_UNIX", "msgpack-rpc, TCP", "Python wire, TCP",
                                "AF_UNIX, socket path", "TCP, socket path",
                                "msgpack stream, TCP", "msgpack-rpc, ZeroMQ",
                                "raw ZeroMQ REQ/REP, ipc", "raw ZeroMQ REQ/REP, tcp"};
static const mproc_rpc_wire wwire[NW] = {MPROC_RPC_MSGPACK, MPROC_RPC_MSGPACK, MPROC_RPC_PYTHON,
                                         MPROC_RPC_MSGPACK, MPROC_RPC_MSGPACK,
                                         MPROC_RPC_MSGPACK, MPROC_RPC_MSGPACK};
static const bool wkey[NW] = {true, true, true, true, true, false, false};
/* The proxy stays on its socket (no_shm): the path of a client on another
 * machine, shown beside the default. */
static const bool wsock[NW] = {false, false, false, true, true, false, false};
/* Rows the targets are judged on: what a proxy gets by default over
 * AF_UNIX and TCP loopback. The socket-path rows, the stream transport (for
 * msgpack-rpc clients of other languages) and ZeroMQ are shown, not
 * counted. */
static const bool wjudged[NW] = {true, true, true, false, false, false, false};
/* Calls per measurement at scale 1. */
static const long wcount[NM] = {50000, 50000, 50000, 50000, 50000, 50000, 50000, 20000, 20000};
static const long py_count = 5000;

static mproc_rpc_transport wtransport(int w)
{
#ifdef MPROC_BENCH_HAVE_RPC_ZMQ
    if (w == W_ZMQT)
        return MPROC_RPC_ZMQ;
#endif
    return w == W_STREAM ? MPROC_RPC_STREAM : MPROC_RPC_CONNECTION;
}

/* Whether this library has a ZeroMQ transport to measure. */
static bool have_zmq_transport(void)
{
#ifdef MPROC_BENCH_HAVE_RPC_ZMQ
    return mproc_rpc_have_zmq();
#else
    return false;
#endif
}

/* ---------------------------------------------------------------- helpers */

static void fail(const char *what)
{
    fprintf(stderr, "bench_rpc: %s\n", what);
    exit(1);
}

static mproc_value *xv(mproc_value *v)
{
    if (!v)
        die("building a value", MPROC_ENOMEM);
    return v;
}

/* ------------------------------------------------------ the server child */

static int fn_add(mproc_value *const *args, size_t nargs, const mproc_value *kwargs,
                  mproc_value **result, void *ud)
{
    (void)kwargs, (void)ud;
    if (nargs != 2 || mproc_value_type(args[0]) != MPROC_V_INT ||
        mproc_value_type(args[1]) != MPROC_V_INT)
        return mproc_rpc_error("TypeError", "add() takes two ints");
    *result = mproc_value_int(mproc_value_as_int(args[0]) + mproc_value_as_int(args[1]));
    return *result ? 0 : MPROC_ENOMEM;
}

static int fn_sub(mproc_value *const *args, size_t nargs, const mproc_value *kwargs,
                  mproc_value **result, void *ud)
{
    (void)kwargs, (void)ud;
    if (nargs != 2 || mproc_value_type(args[0]) != MPROC_V_INT ||
        mproc_value_type(args[1]) != MPROC_V_INT)
        return mproc_rpc_error("TypeError", "sub() takes two ints");
    *result = mproc_value_int(mproc_value_as_int(args[0]) - mproc_value_as_int(args[1]));
    return *result ? 0 : MPROC_ENOMEM;
}

/* A fatal error in the server child: say so and exit (the parent notices). */
static void cfail(const char *what, int rc)
{
    fprintf(stderr, "bench_rpc: server child: %s: %s (%s) %s\n", what, mproc_strerror(rc),
            mproc_errname(rc), mproc_errmsg());
    _exit(3);
}

static void csend(mproc_connection *c, const char *s)
{
    int rc = mproc_connection_send_bytes(c, s, strlen(s));
    if (rc)
        cfail("reporting to the parent", rc);
}

#ifdef MPROC_BENCH_HAVE_ZMQ
/* The raw REP side: answer the sum of two int64 until an empty request. */
static void *rep_main(void *sock)
{
    for (;;) {
        int64_t in[2];
        int n = zmq_recv(sock, in, sizeof in, 0);
        if (n < 0) {
            if (zmq_errno() == EINTR)
                continue;
            fprintf(stderr, "bench_rpc: zmq REP recv: %s\n", zmq_strerror(zmq_errno()));
            _exit(3);
        }
        int64_t sum = n == (int)sizeof in ? in[0] + in[1] : 0;
        while (zmq_send(sock, &sum, n ? sizeof sum : 0, 0) < 0)
            if (zmq_errno() != EINTR) {
                fprintf(stderr, "bench_rpc: zmq REP send: %s\n", zmq_strerror(zmq_errno()));
                _exit(3);
            }
        if (n == 0)
            return NULL;
    }
}
#endif

/* The server child: args (connection to the parent, mask of the rows to
 * serve, raw ZeroMQ wanted). Reports one address per row ("" when not served,
 * "!message" when the server could not start), then the raw REP endpoints
 * (ipc, tcp; "" without), and serves until the parent sends "stop". */
static int server_main(mproc_args *a)
{
    mproc_connection *c = mproc_args_object(a, 0, &mproc_connection_type);
    int64_t mask = 0, raw = 0;
    mproc_args_get_int(a, 1, &mask);
    mproc_args_get_int(a, 2, &raw);
    mproc_rpc_handler *h;
    int rc = mproc_rpc_handler_new(&h);
    if (!rc)
        rc = mproc_rpc_handler_register(h, "add", fn_add, NULL);
    if (!rc)
        rc = mproc_rpc_handler_register(h, "sub", fn_sub, NULL);
    if (rc)
        cfail("the handler", rc);
    mproc_rpc_server *s[NW] = {0};
    for (int w = 0; w < NW; w++) {
        if (!(mask & (1 << w))) {
            csend(c, "");
            continue;
        }
        char addr[64];
        if (w == W_UNIX || w == W_UNIX_SOCK)
            snprintf(addr, sizeof addr, "unix:@mproc-bench-rpc-%d-%d", (int)getpid(), w);
        else if (w == W_ZMQT)
            snprintf(addr, sizeof addr, "zmq:tcp://127.0.0.1:*");
        else
            snprintf(addr, sizeof addr, "tcp:127.0.0.1:0");
        mproc_rpc_server_opts o = {.wire = wwire[w], .transport = wtransport(w)};
        if (wkey[w])
            o.authkey = AUTHKEY, o.authkey_len = strlen(AUTHKEY);
        rc = mproc_rpc_server_new(&s[w], h, addr, &o);
        if (!rc)
            rc = mproc_rpc_server_start(s[w]);
        if (rc) {
            char msg[512];
            snprintf(msg, sizeof msg, "!%s (%s): %s", mproc_strerror(rc), mproc_errname(rc),
                     mproc_errmsg());
            csend(c, msg);
            mproc_rpc_server_free(s[w]);
            s[w] = NULL;
            continue;
        }
        csend(c, mproc_rpc_server_address(s[w]));
    }
#ifdef MPROC_BENCH_HAVE_ZMQ
    void *zctx = NULL, *zs = NULL;
    pthread_t rep;
    if (raw) {
        char ipc[128], tcp[128];
        size_t n = sizeof tcp;
        int linger = 0;
        snprintf(ipc, sizeof ipc, "ipc://@mproc-bench-rpc-zmq-%d", (int)getpid());
        zctx = zmq_ctx_new();
        zs = zctx ? zmq_socket(zctx, ZMQ_REP) : NULL;
        if (!zs || zmq_setsockopt(zs, ZMQ_LINGER, &linger, sizeof linger) < 0 ||
            zmq_bind(zs, ipc) < 0 || zmq_bind(zs, "tcp://127.0.0.1:*") < 0 ||
            zmq_getsockopt(zs, ZMQ_LAST_ENDPOINT, tcp, &n) < 0) {
            fprintf(stderr, "bench_rpc: zmq REP: %s\n", zmq_strerror(zmq_errno()));
            _exit(3);
        }
        if (pthread_create(&rep, NULL, rep_main, zs) != 0)
            cfail("the REP thread", MPROC_ENOMEM);
        csend(c, ipc);
        csend(c, tcp);
    } else {
        csend(c, "");
        csend(c, "");
    }
#else
    (void)raw;
    csend(c, "");
    csend(c, "");
#endif
    void *msg;
    size_t len;
    rc = mproc_connection_recv_bytes(c, &msg, &len, MPROC_FOREVER);
    if (rc)
        cfail("waiting for stop", rc);
    free(msg);
    for (int w = 0; w < NW; w++)
        if (s[w] && (rc = mproc_rpc_server_stop(s[w], 5.0)) != 0)
            cfail("stopping a server", rc);
    for (int w = 0; w < NW; w++)
        mproc_rpc_server_free(s[w]);
    mproc_rpc_handler_free(h);
#ifdef MPROC_BENCH_HAVE_ZMQ
    if (zs) { /* the parent has sent the REP its empty request */
        pthread_join(rep, NULL);
        zmq_close(zs);
        zmq_ctx_term(zctx);
    }
#endif
    csend(c, "stopped");
    return 0;
}

typedef struct server {
    mproc_process *p;
    mproc_connection *c;
    char *addr[NM]; /* per row: address, "" (not served) or "!error" */
} server;

static char *recv_str(mproc_connection *c)
{
    void *b;
    size_t n;
    OK(mproc_connection_recv_bytes(c, &b, &n, WAIT_S));
    char *s = strndup(b, n);
    free(b);
    if (!s)
        die("strndup", MPROC_ENOMEM);
    return s;
}

static void server_start(server *sv, int mask, bool raw)
{
    mproc_connection *child_end;
    OK(mproc_pipe(&sv->c, &child_end, true, NULL));
    mproc_args *a = mproc_args_new();
    if (!a)
        die("mproc_args_new", MPROC_ENOMEM);
    OK(mproc_args_add_object(a, &mproc_connection_type, child_end));
    OK(mproc_args_add_int(a, mask));
    OK(mproc_args_add_int(a, raw));
    mproc_process_opts po = {.name = "bench-rpc-server", .daemon = true,
                             .ctx = mproc_get_context(MPROC_START_FORK)};
    OK(mproc_process_new(&sv->p, server_main, a, &po));
    OK(mproc_process_start(sv->p));
    mproc_args_free(a);
    mproc_connection_close(child_end);
    for (int w = 0; w < NM; w++)
        sv->addr[w] = recv_str(sv->c);
}

static void server_stop(server *sv)
{
    OK(mproc_connection_send_bytes(sv->c, "stop", 4));
    free(recv_str(sv->c)); /* "stopped": every server stopped cleanly */
    OK(mproc_process_join(sv->p, WAIT_S));
    if (mproc_process_exitcode(sv->p) != 0)
        fail("the server child failed");
    mproc_process_close(sv->p);
    mproc_connection_close(sv->c);
    for (int w = 0; w < NM; w++)
        free(sv->addr[w]);
}

/* ------------------------------------------------------------ the calls */

/* Up to n calls of add(2, 3) through p, stopping early once the clock passes
 * `until`. Returns the calls made. */
static long rpc_calls(mproc_rpc_proxy *p, const mproc_value *args, long n, double until)
{
    long i = 0;
    for (; i < n; i++) {
        if (i % CLOCK_EVERY == CLOCK_EVERY - 1 && now_s() > until)
            break;
        mproc_value *r = NULL;
        OK(mproc_rpc_call(p, "add", args, &r, WAIT_S));
        if (mproc_value_type(r) != MPROC_V_INT || mproc_value_as_int(r) != 5)
            fail("add(2, 3) came back wrong");
        mproc_value_free(r);
    }
    return i;
}

#ifdef MPROC_BENCH_HAVE_ZMQ
static void zfail(const char *what)
{
    fprintf(stderr, "bench_rpc: zmq %s: %s\n", what, zmq_strerror(zmq_errno()));
    exit(1);
}

static long zmq_calls(void *s, long n, double until)
{
    const int64_t in[2] = {2, 3};
    long i = 0;
    for (; i < n; i++) {
        if (i % CLOCK_EVERY == CLOCK_EVERY - 1 && now_s() > until)
            break;
        int64_t sum = 0;
        while (zmq_send(s, in, sizeof in, 0) < 0)
            if (zmq_errno() != EINTR)
                zfail("send");
        int got;
        while ((got = zmq_recv(s, &sum, sizeof sum, 0)) < 0)
            if (zmq_errno() != EINTR)
                zfail("recv (or the REP did not answer in time)");
        if (got != (int)sizeof sum || sum != 5)
            fail("raw ZeroMQ: the sum came back wrong");
    }
    return i;
}
#endif

/* What the parent calls through: a proxy, or a raw REQ socket. */
typedef struct client {
    mproc_rpc_proxy *p;
    void *zs;
} client;

static long calls(const client *c, const mproc_value *args, long n, double until)
{
#ifdef MPROC_BENCH_HAVE_ZMQ
    if (c->zs)
        return zmq_calls(c->zs, n, until);
#endif
    return rpc_calls(c->p, args, n, until);
}

typedef struct meas {
    double us;
    long calls;
} meas;

/* Each measurement starts hot: the rows before it let both sides sleep, and
 * the first calls after that pay for waking up and settling on the CPUs. */
static meas measure(const client *c, const mproc_value *args, long n, double max_s)
{
    calls(c, args, n / 20 > 50 ? n / 20 : 50, now_s() + max_s);
    double t0 = now_s();
    long done = calls(c, args, n, t0 + max_s);
    return (meas){(now_s() - t0) / (double)done * 1e6, done};
}

/* ---------------------------------------------------------------- python */

typedef struct py_results {
    bool ok;
    double unix_us, tcp_us;
    long n;
} py_results;

static py_results run_python(const char *python, double scale, int rounds)
{
    py_results r = {0};
    r.n = (long)((double)py_count * scale);
    if (r.n < 10)
        r.n = 10;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s %s/rpc.py --unix %ld --tcp %ld --rounds %d", python,
             MPROC_BENCH_PYDIR, r.n, r.n, rounds);
    static const char *const keys[2] = {"unix_us", "tcp_us"};
    double v[2] = {0};
    r.ok = bench_python_keys(cmd, keys, v, 2);
    r.unix_us = v[0];
    r.tcp_us = v[1];
    return r;
}

/* ------------------------------------------------------------------ main */

static void fmt_us(char *out, size_t n, double us)
{
    if (us >= 100)
        snprintf(out, n, "%.0f", us);
    else if (us >= 1)
        snprintf(out, n, "%.2f", us);
    else
        snprintf(out, n, "%.3f", us);
}

static void fmt_rate(char *out, size_t n, double us)
{
    double r = 1e6 / us;
    if (r >= 1e6)
        snprintf(out, n, "%.2fM", r / 1e6);
    else if (r >= 1e3)
        snprintf(out, n, "%.1fk", r / 1e3);
    else
        snprintf(out, n, "%.0f", r);
}

static void usage(FILE *f, const char *argv0)
{
    fprintf(f,
            "usage: %s [--quick] [--scale X] [--rounds R] [--py-rounds R] [--max-time S] "
            "[--no-python] [--no-zmq] [--python PATH]\n"
            "  --quick         smoke run: counts / 20, 1 round, Python 1 round\n"
            "  --scale X       multiply every count by X (default 1)\n"
            "  --rounds R      mproc and ZeroMQ rounds, median taken (default 5)\n"
            "  --py-rounds R   Python rounds, median taken (default 3)\n"
            "  --max-time S    a measurement stops after S seconds (default 1)\n"
            "  --no-python     leave out the Python anchor\n"
            "  --no-zmq        leave out raw ZeroMQ and the ZeroMQ transport\n",
            argv0);
}

/* The worst row's ratio against an anchor (anchor µs / mproc µs), or 0. */
typedef struct worst {
    double ratio;
    int row;
} worst;

static void note_ratio(worst *w, double ratio, int row)
{
    if (ratio > 0 && (w->ratio == 0 || ratio < w->ratio))
        *w = (worst){ratio, row};
}

static void target_text(char *out, size_t n, const worst *w, double target, const char *none)
{
    if (w->ratio == 0)
        snprintf(out, n, "%s", none);
    else
        snprintf(out, n, "%s (worst %.2fx: %s)", w->ratio >= target ? "met" : "MISSED", w->ratio,
                 wname[w->row]);
}

int main(int argc, char **argv)
{
    bench_prog = "bench_rpc";
    OK(mproc_init(&argc, &argv));
    double scale = 1.0, max_s = 1.0;
    int rounds = 5, py_rounds = 3;
    bool python = true, zmq = true, quick = false, rounds_set = false, py_rounds_set = false;
    const char *py = "python3";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = true;
        else if (!strcmp(argv[i], "--scale") && i + 1 < argc)
            scale = atof(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]), rounds_set = true;
        else if (!strcmp(argv[i], "--py-rounds") && i + 1 < argc)
            py_rounds = atoi(argv[++i]), py_rounds_set = true;
        else if (!strcmp(argv[i], "--max-time") && i + 1 < argc)
            max_s = atof(argv[++i]);
        else if (!strcmp(argv[i], "--no-python"))
            python = false;
        else if (!strcmp(argv[i], "--no-zmq"))
            zmq = false;
        else if (!strcmp(argv[i], "--python") && i + 1 < argc)
            py = argv[++i];
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout, argv[0]);
            return 0;
        } else {
            usage(stderr, argv[0]);
            return 2;
        }
    }
    if (quick) {
        scale /= 20;
        if (!rounds_set)
            rounds = 1;
        if (!py_rounds_set)
            py_rounds = 1;
    }
    if (!(scale > 0) || !(max_s > 0) || rounds < 1 || rounds > 99 || py_rounds < 1 ||
        py_rounds > 99) {
        fprintf(stderr, "bench_rpc: scale > 0, max-time > 0, 1 <= rounds <= 99, "
                        "1 <= py-rounds <= 99\n");
        return 2;
    }
    long n[NM];
    for (int w = 0; w < NM; w++) {
        n[w] = (long)((double)wcount[w] * scale);
        if (n[w] < 10)
            n[w] = 10;
    }

    /* Which rows run. */
    bool have[NM] = {0};
    const char *why[NM] = {0};
    for (int w = 0; w < W_ZMQT; w++)
        have[w] = true;
    have[W_ZMQT] = zmq && have_zmq_transport();
    why[W_ZMQT] = !zmq ? "--no-zmq" : "this libmproc has no ZeroMQ transport";
#ifdef MPROC_BENCH_HAVE_ZMQ
    have[A_ZIPC] = have[A_ZTCP] = zmq;
    why[A_ZIPC] = why[A_ZTCP] = "--no-zmq";
#else
    why[A_ZIPC] = why[A_ZTCP] = "libzmq not found at build time";
#endif
    int mask = 0;
    for (int w = 0; w < NW; w++)
        mask |= have[w] ? 1 << w : 0;

    server sv;
    server_start(&sv, mask, have[A_ZIPC]);
    client cl[NM] = {{0}};
    for (int w = 0; w < NW; w++) {
        if (!have[w])
            continue;
        if (sv.addr[w][0] == '!') { /* only the ZeroMQ transport may be missing */
            if (w != W_ZMQT) {
                fprintf(stderr, "bench_rpc: the %s server: %s\n", wname[w], sv.addr[w] + 1);
                exit(1);
            }
            fprintf(stderr, "bench_rpc: the ZeroMQ transport server did not start: %s\n",
                    sv.addr[w] + 1);
            have[w] = false;
            why[w] = "its server did not start";
            continue;
        }
        mproc_rpc_proxy_opts o = {.wire = wwire[w], .transport = wtransport(w),
                                  .no_shm = wsock[w]};
        if (wkey[w])
            o.authkey = AUTHKEY, o.authkey_len = strlen(AUTHKEY);
        OK(mproc_rpc_connect(&cl[w].p, sv.addr[w], &o));
    }
#ifdef MPROC_BENCH_HAVE_ZMQ
    void *zctx = NULL;
    if (have[A_ZIPC]) {
        zctx = zmq_ctx_new();
        if (!zctx)
            zfail("ctx_new");
        for (int w = A_ZIPC; w <= A_ZTCP; w++) {
            int linger = 0, ms = (int)(WAIT_S * 1000);
            cl[w].zs = zmq_socket(zctx, ZMQ_REQ);
            if (!cl[w].zs || zmq_setsockopt(cl[w].zs, ZMQ_LINGER, &linger, sizeof linger) < 0 ||
                zmq_setsockopt(cl[w].zs, ZMQ_RCVTIMEO, &ms, sizeof ms) < 0 ||
                zmq_connect(cl[w].zs, sv.addr[w]) < 0)
                zfail("REQ socket");
        }
    }
#endif

    /* Warm-up: every path has run (connections, buffers, the REP's peers). */
    mproc_value *args = xv(mproc_value_list());
    OK(mproc_value_append(args, xv(mproc_value_int(2))));
    OK(mproc_value_append(args, xv(mproc_value_int(3))));
    for (int w = 0; w < NM; w++)
        if (have[w])
            calls(&cl[w], args, n[w] / 10 > 100 ? n[w] / 10 : 100, now_s() + max_s);

    double v[NM][99];
    long total[NM] = {0};
    for (int r = 0; r < rounds; r++)
        for (int w = 0; w < NM; w++) {
            if (!have[w])
                continue;
            meas m = measure(&cl[w], args, n[w], max_s);
            v[w][r] = m.us;
            total[w] += m.calls;
        }
    double med[NM] = {0};
    for (int w = 0; w < NM; w++)
        if (have[w])
            med[w] = median(v[w], rounds);

    for (int w = 0; w < NW; w++)
        mproc_rpc_close(cl[w].p);
#ifdef MPROC_BENCH_HAVE_ZMQ
    if (have[A_ZIPC]) { /* an empty request ends the REP thread */
        while (zmq_send(cl[A_ZTCP].zs, "", 0, 0) < 0)
            if (zmq_errno() != EINTR)
                zfail("send (stop)");
        char b[8];
        while (zmq_recv(cl[A_ZTCP].zs, b, sizeof b, 0) < 0)
            if (zmq_errno() != EINTR)
                zfail("recv (stop)");
    }
    for (int w = A_ZIPC; w <= A_ZTCP; w++)
        if (cl[w].zs)
            zmq_close(cl[w].zs);
    if (zctx)
        zmq_ctx_term(zctx);
#endif
    server_stop(&sv);
    mproc_value_free(args);

    py_results pr = {0};
    if (python) {
        pr = run_python(py, scale, py_rounds);
        if (!pr.ok)
            fprintf(stderr, "bench_rpc: the Python anchor failed; Python columns are n/a\n");
    }

    char py_note[32] = "not run";
    if (python)
        snprintf(py_note, sizeof py_note, "median of %d", py_rounds);
    printf("\nRPC: add(2, 3) called and answered in sequence, one client, the server in another "
           "process (mproc and raw ZeroMQ: median of %d rounds; Python: %s)\n", rounds, py_note);
    printf("| workload              | calls  | mproc µs | calls/s | Python µs     | vs Python "
           "| ZeroMQ µs     | vs ZeroMQ |\n");
    printf("|-----------------------|-------:|---------:|--------:|--------------:|----------:"
           "|--------------:|----------:|\n");
    worst wp = {0, 0}, wz = {0, 0};
    bool capped = false;
    for (int w = 0; w < NW; w++) {
        bool unx = w == W_UNIX || w == W_UNIX_SOCK;
        char cnt[32] = "n/a", us[32] = "n/a", rate[32] = "n/a", pus[32] = "n/a",
             pr_s[32] = "n/a", zus[32] = "n/a", zr[32] = "n/a";
        double pyv = pr.ok ? unx ? pr.unix_us : pr.tcp_us : 0;
        int za = unx ? A_ZIPC : A_ZTCP;
        if (pyv > 0) {
            char t[24];
            fmt_us(t, sizeof t, pyv);
            snprintf(pus, sizeof pus, "%s (%s)", t, unx ? "unix" : "tcp");
        }
        if (have[za]) {
            char t[24];
            fmt_us(t, sizeof t, med[za]);
            snprintf(zus, sizeof zus, "%s (%s)", t, unx ? "ipc" : "tcp");
        }
        if (have[w]) {
            long mean = total[w] / rounds;
            capped |= mean < n[w];
            snprintf(cnt, sizeof cnt, "%ld%s", mean, mean < n[w] ? "*" : "");
            fmt_us(us, sizeof us, med[w]);
            fmt_rate(rate, sizeof rate, med[w]);
            /* The targets are judged on mproc's own transports; the ZeroMQ
             * transport is ZeroMQ plus mproc, so it is reported apart. */
            if (pyv > 0) {
                snprintf(pr_s, sizeof pr_s, "%.1fx", pyv / med[w]);
                if (wjudged[w])
                    note_ratio(&wp, pyv / med[w], w);
            }
            if (have[za]) {
                snprintf(zr, sizeof zr, "%.2fx", med[za] / med[w]);
                if (wjudged[w])
                    note_ratio(&wz, med[za] / med[w], w);
            }
        }
        printf("| %-21s | %6s | %8s | %7s | %13s | %9s | %13s | %9s |\n", wname[w], cnt, us, rate,
               pus, pr_s, zus, zr);
    }
    printf("(µs: per call, answer included. Python: seed 001's RPCProxy -> rpc_server; ZeroMQ: "
           "raw REQ/REP, 16 bytes out, 8 back; both on the row's medium. vs: anchor µs / mproc "
           "µs, higher is better)\n");
    for (int w = 0; w < NM; w++)
        if (!have[w] && (w == W_ZMQT || w >= NW))
            printf("(%s: n/a, %s)\n", wname[w], why[w]);
    if (capped)
        printf("(*: stopped by --max-time %.1f s before its count; the mean count done is shown)\n",
               max_s);

    char s1[128], s2[128];
    target_text(s1, sizeof s1, &wp, PYTHON_TARGET, python ? "no Python" : "not measured");
    target_text(s2, sizeof s2, &wz, ZMQ_TARGET,
                have[A_ZIPC] ? "no mproc row" : zmq ? "no ZeroMQ" : "not measured");
    printf("\ntargets: >= %.0fx the seed's Python RPC: %s; at least as fast as raw ZeroMQ "
           "REQ/REP: %s\n", PYTHON_TARGET, s1, s2);
    printf("(judged on the first three rows, what a proxy gets by default over AF_UNIX and TCP "
           "loopback: shared memory after the handshake. Shown, not counted: the socket path "
           "(no_shm, what a client on another machine takes), the stream transport (msgpack-rpc "
           "clients of other languages) and the ZeroMQ transport (ZeroMQ with mproc on top)%s)\n",
           have[W_ZMQT] ? "" : ", n/a here");
    return 0;
}
