/* test_rpc_zmq.c — the RPC layer over ZeroMQ (MPROC_RPC_ZMQ): both wires
 * over tcp and ipc, errors, timeouts, many client processes, stop. Every
 * test passes (skips) when mproc was built without libzmq. */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "mtest.h"

#ifdef MPROC_TEST_HAVE_ZMQ
#include <zmq.h>
#endif

#define TCP_ANY "zmq:tcp://127.0.0.1:*"

static atomic_int g_running; /* fn_sleep began */
static atomic_int g_count;   /* fn_count calls */

/* ------------------------------------------------------------ functions */

static int fn_add(mproc_value *const *args, size_t nargs, const mproc_value *kwargs,
                  mproc_value **result, void *ud)
{
    (void)kwargs, (void)ud;
    if (nargs != 2 || mproc_value_type(args[0]) != MPROC_V_INT ||
        mproc_value_type(args[1]) != MPROC_V_INT)
        return mproc_rpc_error("TypeError", "add wants two ints");
    *result = mproc_value_int(mproc_value_as_int(args[0]) + mproc_value_as_int(args[1]));
    return *result ? 0 : MPROC_ENOMEM;
}

static int fn_fail(mproc_value *const *args, size_t nargs, const mproc_value *kwargs,
                   mproc_value **result, void *ud)
{
    (void)kwargs, (void)ud, (void)result;
    return mproc_rpc_error("ValueError", "bad %lld",
                           nargs ? (long long)mproc_value_as_int(args[0]) : -1LL);
}

/* sleep(ms): says it began, sleeps, returns "slept". */
static int fn_sleep(mproc_value *const *args, size_t nargs, const mproc_value *kwargs,
                    mproc_value **result, void *ud)
{
    (void)kwargs, (void)ud;
    int64_t ms = nargs ? mproc_value_as_int(args[0]) : 0;
    atomic_fetch_add(&g_running, 1);
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0)
        ;
    *result = mproc_value_str("slept");
    return *result ? 0 : MPROC_ENOMEM;
}

static int fn_count(mproc_value *const *args, size_t nargs, const mproc_value *kwargs,
                    mproc_value **result, void *ud)
{
    (void)args, (void)nargs, (void)kwargs, (void)ud, (void)result;
    atomic_fetch_add(&g_count, 1);
    return 0;
}

/* ------------------------------------------------------------ helpers */

/* true (after a note) when mproc has no ZeroMQ: then MPROC_RPC_ZMQ must
 * give MPROC_ENOSYS. */
static bool skip_without_zmq(void)
{
    if (mproc_rpc_have_zmq())
        return false;
    mproc_rpc_handler *h;
    CHECK_OK(mproc_rpc_handler_new(&h));
    mproc_rpc_server *s = NULL;
    mproc_rpc_server_opts so = {.transport = MPROC_RPC_ZMQ};
    CHECK_EQ(mproc_rpc_server_new(&s, h, TCP_ANY, &so), MPROC_ENOSYS);
    mproc_rpc_proxy *p = NULL;
    mproc_rpc_proxy_opts po = {.transport = MPROC_RPC_ZMQ};
    CHECK_EQ(mproc_rpc_connect(&p, "zmq:tcp://127.0.0.1:1", &po), MPROC_ENOSYS);
    mproc_rpc_handler_free(h);
    fprintf(stderr, "skipped: built without ZeroMQ\n");
    return true;
}

static mproc_rpc_handler *handler(void)
{
    mproc_rpc_handler *h;
    CHECK_OK(mproc_rpc_handler_new(&h));
    CHECK_OK(mproc_rpc_handler_register(h, "add", fn_add, NULL));
    CHECK_OK(mproc_rpc_handler_register(h, "fail", fn_fail, NULL));
    CHECK_OK(mproc_rpc_handler_register(h, "sleep", fn_sleep, NULL));
    CHECK_OK(mproc_rpc_handler_register(h, "count", fn_count, NULL));
    return h;
}

static mproc_rpc_server *serve_n(mproc_rpc_handler *h, mproc_rpc_wire wire, const char *address,
                                 size_t workers)
{
    mproc_rpc_server *s;
    mproc_rpc_server_opts o = {.wire = wire, .transport = MPROC_RPC_ZMQ,
                               .max_connections = workers};
    CHECK_OK(mproc_rpc_server_new(&s, h, address, &o));
    CHECK_OK(mproc_rpc_server_start(s));
    return s;
}

static mproc_rpc_server *serve(mproc_rpc_handler *h, mproc_rpc_wire wire, const char *address)
{
    return serve_n(h, wire, address, 0);
}

static mproc_rpc_proxy *proxy(const char *address, mproc_rpc_wire wire)
{
    mproc_rpc_proxy *p;
    mproc_rpc_proxy_opts o = {.wire = wire, .transport = MPROC_RPC_ZMQ};
    CHECK_OK(mproc_rpc_connect(&p, address, &o));
    return p;
}

static mproc_value *ints(int64_t a, int64_t b)
{
    mproc_value *l = mproc_value_list();
    CHECK(l);
    CHECK_OK(mproc_value_append(l, mproc_value_int(a)));
    CHECK_OK(mproc_value_append(l, mproc_value_int(b)));
    return l;
}

static mproc_value *one_int(int64_t a)
{
    mproc_value *l = mproc_value_list();
    CHECK(l);
    CHECK_OK(mproc_value_append(l, mproc_value_int(a)));
    return l;
}

/* add(a, b) over `p`, checked. */
static void check_add(mproc_rpc_proxy *p, int64_t a, int64_t b)
{
    mproc_value *args = ints(a, b), *r = NULL;
    CHECK_OK(mproc_rpc_call(p, "add", args, &r, 10.0));
    CHECK_EQ(mproc_value_type(r), MPROC_V_INT);
    CHECK_EQ(mproc_value_as_int(r), a + b);
    mproc_value_free(r);
    mproc_value_free(args);
}

/* Wait (10 s at most) for the server's connection count to reach `want`. */
static void wait_connections(mproc_rpc_server *s, size_t want)
{
    mproc_deadline d = mproc_deadline_after(10.0);
    while (mproc_rpc_server_connections(s) != want) {
        CHECK(!mproc_deadline_expired(d));
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void ipc_address(char *buf, size_t len, const char *tag)
{
    snprintf(buf, len, "zmq:ipc:///tmp/mproc-rpc-zmq-%s-%d", tag, (int)getpid());
}

static void ipc_remove(const char *address)
{
    const char *path = address + strlen("zmq:ipc://");
    unlink(path); /* ZeroMQ removes it on close; make sure */
    CHECK(access(path, F_OK) != 0);
}

/* ------------------------------------------------------------ tests */

static void add_over(mproc_rpc_wire wire, bool ipc)
{
    if (skip_without_zmq())
        return;
    char ipcaddr[128];
    ipc_address(ipcaddr, sizeof ipcaddr, wire == MPROC_RPC_PYTHON ? "py" : "mp");
    mproc_rpc_handler *h = handler();
    mproc_rpc_server *s;
    mproc_rpc_server_opts o = {.wire = wire, .transport = MPROC_RPC_ZMQ};
    CHECK_OK(mproc_rpc_server_new(&s, h, ipc ? ipcaddr : TCP_ANY, &o));
    const char *addr = mproc_rpc_server_address(s);
    if (ipc) {
        CHECK(strcmp(addr, ipcaddr) == 0);
    } else { /* the real port, not the wildcard */
        CHECK(strncmp(addr, "zmq:tcp://127.0.0.1:", 20) == 0);
        CHECK(atoi(addr + 20) > 0);
    }
    /* connected before the server serves: the call waits for it, and the
     * connection is counted once it serves */
    mproc_rpc_proxy *p = proxy(addr, wire);
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    CHECK_EQ(mproc_rpc_server_connections(s), 0);
    CHECK_OK(mproc_rpc_server_start(s));
    check_add(p, 2, 3);
    check_add(p, -40, 2);
    wait_connections(s, 1);
    mproc_rpc_close(p);
    wait_connections(s, 0);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
    if (ipc)
        ipc_remove(ipcaddr);
}

MTEST(test_rpc_zmq_add_msgpack_over_tcp) { add_over(MPROC_RPC_MSGPACK, false); }
MTEST(test_rpc_zmq_add_python_over_tcp) { add_over(MPROC_RPC_PYTHON, false); }
MTEST(test_rpc_zmq_add_msgpack_over_ipc) { add_over(MPROC_RPC_MSGPACK, true); }
MTEST(test_rpc_zmq_add_python_over_ipc) { add_over(MPROC_RPC_PYTHON, true); }

static void remote_errors(mproc_rpc_wire wire)
{
    if (skip_without_zmq())
        return;
    mproc_rpc_handler *h = handler();
    mproc_rpc_server *s = serve(h, wire, TCP_ANY);
    mproc_rpc_proxy *p = proxy(mproc_rpc_server_address(s), wire);
    mproc_value *args = one_int(7), *r = NULL;
    CHECK_EQ(mproc_rpc_call(p, "fail", args, &r, 10.0), MPROC_EREMOTE);
    CHECK(r == NULL);
    CHECK(strcmp(mproc_rpc_proxy_error_type(p), "ValueError") == 0);
    CHECK(strstr(mproc_errmsg(), "bad 7"));
    CHECK_EQ(mproc_rpc_call(p, "nosuch", args, &r, 10.0), MPROC_EREMOTE);
    CHECK(strcmp(mproc_rpc_proxy_error_type(p), "AttributeError") == 0);
    CHECK(strstr(mproc_errmsg(), "nosuch"));
    CHECK_EQ(mproc_rpc_call(p, "add", args, &r, 10.0), MPROC_EREMOTE); /* one arg */
    CHECK(strcmp(mproc_rpc_proxy_error_type(p), "TypeError") == 0);
    check_add(p, 2, 3); /* errors leave the proxy usable */
    mproc_value_free(args);
    mproc_rpc_close(p);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

MTEST(test_rpc_zmq_remote_errors_carry_their_type_msgpack) { remote_errors(MPROC_RPC_MSGPACK); }
MTEST(test_rpc_zmq_remote_errors_carry_their_type_python) { remote_errors(MPROC_RPC_PYTHON); }

MTEST(test_rpc_zmq_msgpack_timeout_skips_the_late_answer)
{
    if (skip_without_zmq())
        return;
    mproc_rpc_handler *h = handler();
    mproc_rpc_server *s = serve(h, MPROC_RPC_MSGPACK, TCP_ANY);
    mproc_rpc_proxy *p = proxy(mproc_rpc_server_address(s), MPROC_RPC_MSGPACK);
    check_add(p, 1, 1); /* connected */
    mproc_value *args = one_int(300), *r = NULL;
    CHECK_EQ(mproc_rpc_call(p, "sleep", args, &r, 0.05), MPROC_ETIMEDOUT);
    /* the sleep's answer comes first and is skipped by its msgid */
    check_add(p, 2, 3);
    check_add(p, 4, 5);
    mproc_value_free(args);
    mproc_rpc_close(p);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

MTEST(test_rpc_zmq_python_timeout_breaks_the_proxy)
{
    if (skip_without_zmq())
        return;
    mproc_rpc_handler *h = handler();
    mproc_rpc_server *s = serve(h, MPROC_RPC_PYTHON, TCP_ANY);
    mproc_rpc_proxy *p = proxy(mproc_rpc_server_address(s), MPROC_RPC_PYTHON);
    check_add(p, 1, 1);
    mproc_value *args = one_int(200), *r = NULL;
    CHECK_EQ(mproc_rpc_call(p, "sleep", args, &r, 0.05), MPROC_ETIMEDOUT);
    mproc_value *two = ints(2, 3);
    CHECK_EQ(mproc_rpc_call(p, "add", two, &r, 5.0), MPROC_ECLOSED);
    mproc_value_free(two);
    mproc_value_free(args);
    mproc_rpc_close(p);
    /* a new proxy works */
    p = proxy(mproc_rpc_server_address(s), MPROC_RPC_PYTHON);
    check_add(p, 2, 3);
    mproc_rpc_close(p);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

MTEST(test_rpc_zmq_notify_runs_without_an_answer)
{
    if (skip_without_zmq())
        return;
    mproc_rpc_handler *h = handler();
    mproc_rpc_server *s = serve(h, MPROC_RPC_MSGPACK, TCP_ANY);
    mproc_rpc_proxy *p = proxy(mproc_rpc_server_address(s), MPROC_RPC_MSGPACK);
    atomic_store(&g_count, 0);
    for (int i = 0; i < 10; i++)
        CHECK_OK(mproc_rpc_notify(p, "count", NULL));
    check_add(p, 1, 2); /* no stray answers before this one */
    mproc_deadline d = mproc_deadline_after(10.0);
    while (atomic_load(&g_count) != 10) /* workers may still be at it */
        CHECK(!mproc_deadline_expired(d));
    mproc_rpc_close(p);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

/* A client process: 2,000 add calls, every result checked. */
static int client_target(mproc_args *a)
{
    const char *addr = mproc_args_str(a, 0);
    int64_t base = 0;
    if (!addr || mproc_args_get_int(a, 1, &base))
        return 2;
    mproc_rpc_proxy *p;
    mproc_rpc_proxy_opts o = {.wire = MPROC_RPC_MSGPACK, .transport = MPROC_RPC_ZMQ};
    if (mproc_rpc_connect(&p, addr, &o))
        return 3;
    int rc = 0;
    for (int64_t i = 0; i < 2000 && !rc; i++) {
        mproc_value *args = mproc_value_list(), *r = NULL;
        mproc_value_append(args, mproc_value_int(base));
        mproc_value_append(args, mproc_value_int(i));
        if (mproc_rpc_call(p, "add", args, &r, 30.0) != 0)
            rc = 4;
        else if (mproc_value_type(r) != MPROC_V_INT || mproc_value_as_int(r) != base + i)
            rc = 5;
        mproc_value_free(r);
        mproc_value_free(args);
    }
    mproc_rpc_close(p);
    return rc;
}

/* The clients are forked before the server exists, so no thread of ours is
 * forked (a child of a threaded parent may inherit a held allocator lock,
 * as ASan's); their first requests wait in ZeroMQ until the server binds. */
MTEST(test_rpc_zmq_eight_client_processes_get_their_own_answers)
{
    if (skip_without_zmq())
        return;
    char addr[128];
    ipc_address(addr, sizeof addr, "many");
    mproc_process *kids[8];
    for (int i = 0; i < 8; i++) {
        mproc_args *a = mproc_args_new();
        CHECK(a);
        CHECK_OK(mproc_args_add_str(a, addr));
        CHECK_OK(mproc_args_add_int(a, 1000000 * (i + 1)));
        kids[i] = mtest_start(MPROC_START_FORK, client_target, a);
        mproc_args_free(a);
    }
    mproc_rpc_handler *h = handler();
    mproc_rpc_server *s = serve_n(h, MPROC_RPC_MSGPACK, addr, 4);
    for (int i = 0; i < 8; i++)
        mtest_join(kids[i], 0);
    wait_connections(s, 0);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
    ipc_remove(addr);
}

/* A call from another thread: sleep(ms) with `timeout`, its code in rc. */
typedef struct caller {
    const char *addr;
    int64_t ms;
    double timeout;
    int rc;
    pthread_t thr;
} caller;

static void *caller_main(void *arg)
{
    caller *c = arg;
    mproc_rpc_proxy *p = proxy(c->addr, MPROC_RPC_MSGPACK);
    mproc_value *args = one_int(c->ms), *r = NULL;
    c->rc = mproc_rpc_call(p, "sleep", args, &r, c->timeout);
    if (!c->rc && strcmp(mproc_value_as_str(r, NULL), "slept") != 0)
        c->rc = -1;
    mproc_value_free(r);
    mproc_value_free(args);
    mproc_rpc_close(p);
    return NULL;
}

static void call_in_thread(caller *c, const char *addr, int64_t ms, double timeout)
{
    *c = (caller){.addr = addr, .ms = ms, .timeout = timeout};
    CHECK_EQ(pthread_create(&c->thr, NULL, caller_main, c), 0);
}

static void wait_running(int n)
{
    mproc_deadline d = mproc_deadline_after(10.0);
    while (atomic_load(&g_running) < n)
        CHECK(!mproc_deadline_expired(d));
}

MTEST(test_rpc_zmq_slow_calls_run_on_separate_workers)
{
    if (skip_without_zmq())
        return;
    mproc_rpc_handler *h = handler();
    mproc_rpc_server *s = serve_n(h, MPROC_RPC_MSGPACK, TCP_ANY, 2);
    atomic_store(&g_running, 0);
    caller c[2];
    double t0 = mproc_monotonic();
    for (int i = 0; i < 2; i++)
        call_in_thread(&c[i], mproc_rpc_server_address(s), 400, 10.0);
    for (int i = 0; i < 2; i++) {
        pthread_join(c[i].thr, NULL);
        CHECK_OK(c[i].rc);
    }
    double took = mproc_monotonic() - t0;
    CHECK(took < 0.75); /* together, not one after the other (0.8 s) */
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

MTEST(test_rpc_zmq_stop_lets_a_call_in_flight_finish)
{
    if (skip_without_zmq())
        return;
    mproc_rpc_handler *h = handler();
    mproc_rpc_server *s = serve(h, MPROC_RPC_MSGPACK, TCP_ANY);
    atomic_store(&g_running, 0);
    caller c;
    call_in_thread(&c, mproc_rpc_server_address(s), 300, 10.0);
    wait_running(1);
    double t0 = mproc_monotonic();
    CHECK_OK(mproc_rpc_server_stop(s, 5.0));
    CHECK(mproc_monotonic() - t0 < 2.0);
    pthread_join(c.thr, NULL);
    CHECK_OK(c.rc); /* its answer went out before the server closed */
    CHECK_OK(mproc_rpc_server_stop(s, 5.0)); /* idempotent */
    CHECK_EQ(mproc_rpc_server_start(s), MPROC_ESTATE);
    CHECK_EQ(mproc_rpc_server_connections(s), 0);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

MTEST(test_rpc_zmq_stop_past_its_timeout_cuts_the_call)
{
    if (skip_without_zmq())
        return;
    mproc_rpc_handler *h = handler();
    mproc_rpc_server *s = serve(h, MPROC_RPC_MSGPACK, TCP_ANY);
    atomic_store(&g_running, 0);
    caller c;
    call_in_thread(&c, mproc_rpc_server_address(s), 800, 1.5);
    wait_running(1);
    CHECK_EQ(mproc_rpc_server_stop(s, 0.1), MPROC_ETIMEDOUT);
    pthread_join(c.thr, NULL);
    CHECK_EQ(c.rc, MPROC_ETIMEDOUT); /* no answer, and no ECLOSED on ZeroMQ */
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

MTEST(test_rpc_zmq_dead_server_times_out_then_a_new_one_answers)
{
    if (skip_without_zmq())
        return;
    char addr[128];
    ipc_address(addr, sizeof addr, "dead");
    mproc_rpc_handler *h = handler();
    mproc_rpc_server *s = serve(h, MPROC_RPC_MSGPACK, addr);
    mproc_rpc_proxy *p = proxy(addr, MPROC_RPC_MSGPACK);
    check_add(p, 1, 2);
    mproc_rpc_server_free(s);
    mproc_value *args = ints(2, 3), *r = NULL;
    CHECK_EQ(mproc_rpc_call(p, "add", args, &r, 0.2), MPROC_ETIMEDOUT);
    CHECK_EQ(mproc_rpc_call(p, "add", args, &r, 0.0), MPROC_ETIMEDOUT);
    s = serve(h, MPROC_RPC_MSGPACK, addr); /* ZeroMQ reconnects by itself */
    check_add(p, 2, 3);
    mproc_value_free(args);
    mproc_rpc_close(p);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
    ipc_remove(addr);
}

MTEST(test_rpc_zmq_rejects_authkeys_and_bad_addresses)
{
    if (skip_without_zmq())
        return;
    mproc_rpc_handler *h = handler();
    mproc_rpc_server *s = NULL;
    mproc_rpc_server_opts so = {.transport = MPROC_RPC_ZMQ, .authkey = "k", .authkey_len = 1};
    CHECK_EQ(mproc_rpc_server_new(&s, h, TCP_ANY, &so), MPROC_EINVAL);
    CHECK(strstr(mproc_errmsg(), "CURVE"));
    so.authkey = NULL, so.authkey_len = 0;
    CHECK_EQ(mproc_rpc_server_new(&s, h, "tcp:127.0.0.1:0", &so), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_server_new(&s, h, "zmq:bogus://x", &so), MPROC_EINVAL);
    CHECK(s == NULL);
    mproc_rpc_proxy *p = NULL;
    mproc_rpc_proxy_opts po = {.transport = MPROC_RPC_ZMQ, .authkey = "k", .authkey_len = 1};
    CHECK_EQ(mproc_rpc_connect(&p, "zmq:tcp://127.0.0.1:1", &po), MPROC_EINVAL);
    po.authkey = NULL, po.authkey_len = 0;
    CHECK_EQ(mproc_rpc_connect(&p, "zmq:", &po), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_connect(&p, "zmq:bogus://x", &po), MPROC_EINVAL);
    CHECK(p == NULL);
    /* a server that is never started frees cleanly; start twice is refused */
    CHECK_OK(mproc_rpc_server_new(&s, h, TCP_ANY, &so));
    mproc_rpc_server_free(s);
    CHECK_OK(mproc_rpc_server_new(&s, h, TCP_ANY, &so));
    CHECK_OK(mproc_rpc_server_start(s));
    CHECK_EQ(mproc_rpc_server_start(s), MPROC_ESTATE);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

#ifdef MPROC_TEST_HAVE_ZMQ
/* A plain ZeroMQ REQ socket speaking msgpack-rpc, as another language would. */
MTEST(test_rpc_zmq_a_plain_req_socket_is_served)
{
    mproc_rpc_handler *h = handler();
    mproc_rpc_server *s = serve(h, MPROC_RPC_MSGPACK, TCP_ANY);
    void *ctx = zmq_ctx_new();
    void *req = zmq_socket(ctx, ZMQ_REQ);
    CHECK(req);
    CHECK_EQ(zmq_connect(req, mproc_rpc_server_address(s) + 4), 0);
    mproc_value *m = mproc_value_list();
    CHECK_OK(mproc_value_append(m, mproc_value_int(0)));
    CHECK_OK(mproc_value_append(m, mproc_value_int(77)));
    CHECK_OK(mproc_value_append(m, mproc_value_str("add")));
    CHECK_OK(mproc_value_append(m, ints(20, 22)));
    mproc_buf b = {0};
    CHECK_OK(mproc_msgpack_encode(m, &b));
    CHECK_EQ(zmq_send(req, b.data, b.len, 0), (long long)b.len);
    char ans[256];
    int n = zmq_recv(req, ans, sizeof ans, 0);
    CHECK(n > 0 && n < (int)sizeof ans);
    mproc_value *v = NULL;
    CHECK_OK(mproc_msgpack_decode(ans, (size_t)n, NULL, &v));
    CHECK_EQ(mproc_value_len(v), 4);
    CHECK_EQ(mproc_value_as_int(mproc_value_at(v, 0)), 1);
    CHECK_EQ(mproc_value_as_int(mproc_value_at(v, 1)), 77);
    CHECK_EQ(mproc_value_type(mproc_value_at(v, 2)), MPROC_V_NIL);
    CHECK_EQ(mproc_value_as_int(mproc_value_at(v, 3)), 42);
    mproc_value_free(v);
    mproc_value_free(m);
    free(b.data);
    int zero = 0;
    zmq_setsockopt(req, ZMQ_LINGER, &zero, sizeof zero);
    zmq_close(req);
    zmq_ctx_term(ctx);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}
#endif

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    static const mtest_case cases[] = {
        MTEST_ENTRY(test_rpc_zmq_add_msgpack_over_tcp),
        MTEST_ENTRY(test_rpc_zmq_add_python_over_tcp),
        MTEST_ENTRY(test_rpc_zmq_add_msgpack_over_ipc),
        MTEST_ENTRY(test_rpc_zmq_add_python_over_ipc),
        MTEST_ENTRY(test_rpc_zmq_remote_errors_carry_their_type_msgpack),
        MTEST_ENTRY(test_rpc_zmq_remote_errors_carry_their_type_python),
        MTEST_ENTRY(test_rpc_zmq_msgpack_timeout_skips_the_late_answer),
        MTEST_ENTRY(test_rpc_zmq_python_timeout_breaks_the_proxy),
        MTEST_ENTRY(test_rpc_zmq_notify_runs_without_an_answer),
        MTEST_ENTRY(test_rpc_zmq_eight_client_processes_get_their_own_answers),
        MTEST_ENTRY(test_rpc_zmq_slow_calls_run_on_separate_workers),
        MTEST_ENTRY(test_rpc_zmq_stop_lets_a_call_in_flight_finish),
        MTEST_ENTRY(test_rpc_zmq_stop_past_its_timeout_cuts_the_call),
        MTEST_ENTRY(test_rpc_zmq_dead_server_times_out_then_a_new_one_answers),
        MTEST_ENTRY(test_rpc_zmq_rejects_authkeys_and_bad_addresses),
#ifdef MPROC_TEST_HAVE_ZMQ
        MTEST_ENTRY(test_rpc_zmq_a_plain_req_socket_is_served),
#endif
    };
    return mtest_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
