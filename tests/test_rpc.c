/* test_rpc.c — RPC: the handler, servers and proxies over both wires and both
 * transports, limits, timeouts and stop, interop with seed 001's Python RPC
 * and an independent python3-msgpack client, a load test and malformed input. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "mtest.h"

#ifndef RPC_SEED_PY
#define RPC_SEED_PY "tests/rpc_seed.py"
#endif
#ifndef RPC_MSGPACK_PY
#define RPC_MSGPACK_PY "tests/rpc_msgpack_client.py"
#endif

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

#ifdef UNDER_ASAN
#define LOAD_CALLS 4000 /* per client: ASan makes each call dearer */
#else
#define LOAD_CALLS 10000
#endif
#define LOAD_CLIENTS 32

extern char **environ;

#include "peer.h"
#include "rpc_common.h"

/* ------------------------------------------------------ the functions */

FN(fn_sub)
{
    (void)kwargs, (void)ud;
    if (nargs != 2 || !is_int(args[0]) || !is_int(args[1]))
        return mproc_rpc_error("TypeError", "sub() takes two ints");
    return give(result, mproc_value_int(mproc_value_as_int(args[0]) - mproc_value_as_int(args[1])));
}

FN(fn_nothing)
{
    (void)args, (void)nargs, (void)kwargs, (void)result, (void)ud;
    return 0;
}

FN(fn_value_error)
{
    (void)args, (void)nargs, (void)kwargs, (void)result, (void)ud;
    return mproc_rpc_error("ValueError", "bad value %d", 42);
}

/* 300 two-byte characters: the message is cut to a fixed buffer, which
 * falls in the middle of one. */
FN(fn_utf8_error)
{
    (void)args, (void)nargs, (void)kwargs, (void)result, (void)ud;
    char m[601];
    for (int i = 0; i < 300; i++)
        m[2 * i] = (char)0xc3, m[2 * i + 1] = (char)0xa9; /* é */
    m[600] = 0;
    return mproc_rpc_error("ValueError", "%s", m);
}

FN(fn_long_error)
{
    (void)args, (void)nargs, (void)kwargs, (void)result, (void)ud;
    char m[1001];
    memset(m, 'm', 1000);
    m[1000] = 0;
    return mproc_rpc_error(NULL, "%s", m);
}

/* Sets an exception, then succeeds: the exception must not leak into a later call. */
FN(fn_error_then_ok)
{
    (void)args, (void)nargs, (void)kwargs, (void)ud;
    mproc_rpc_error("KeyError", "stale");
    return give(result, mproc_value_int(1));
}

FN(fn_block)
{
    (void)args, (void)nargs, (void)kwargs, (void)ud;
    if (mproc_write_all(g_entered[1], "e", 1) != 0)
        return mproc_rpc_error("OSError", "cannot signal entry");
    char c;
    if (mproc_wait_fd(g_release[0], POLLIN, 30.0) != 0 || read(g_release[0], &c, 1) != 1)
        return mproc_rpc_error("TimeoutError", "never released");
    return give(result, mproc_value_str("late"));
}

/* big(n): a str of n bytes */
FN(fn_big)
{
    (void)kwargs, (void)ud;
    if (nargs != 1 || !is_int(args[0]) || mproc_value_as_int(args[0]) < 0 ||
        mproc_value_as_int(args[0]) > (1 << 24))
        return mproc_rpc_error("ValueError", "big() takes 0..16Mi");
    size_t n = (size_t)mproc_value_as_int(args[0]);
    char *s = malloc(n + 1);
    if (!s)
        return MPROC_ENOMEM;
    memset(s, 'x', n);
    int rc = give(result, mproc_value_strn(s, n));
    free(s);
    return rc;
}

/* An EXT value: msgpack carries it, pickle has no form for it. */
FN(fn_ext)
{
    (void)args, (void)nargs, (void)kwargs, (void)ud;
    return give(result, mproc_value_ext(5, "abc", 3));
}

typedef struct fn_def {
    const char *name;
    mproc_rpc_fn fn;
} fn_def;

static const fn_def SAFE_FNS[] = {
    {"add", fn_add},       {"sub", fn_sub},           {"div", fn_div},
    {"nothing", fn_nothing}, {"fail_code", fn_fail_code}, {"value_error", fn_value_error},
    {"echo", fn_echo},     {"scale", fn_scale},       {"record", fn_record},
    {"recorded", fn_recorded},
};

/* Every function; with `all` false only those a fuzzer may call at random
 * (no block, no big). */
static mproc_rpc_handler *new_handler(bool all)
{
    mproc_rpc_handler *h;
    CHECK_OK(mproc_rpc_handler_new(&h));
    for (size_t i = 0; i < sizeof SAFE_FNS / sizeof SAFE_FNS[0]; i++)
        CHECK_OK(mproc_rpc_handler_register(h, SAFE_FNS[i].name, SAFE_FNS[i].fn, NULL));
    if (all) {
        CHECK_OK(mproc_rpc_handler_register(h, "block", fn_block, NULL));
        CHECK_OK(mproc_rpc_handler_register(h, "big", fn_big, NULL));
        CHECK_OK(mproc_rpc_handler_register(h, "long_error", fn_long_error, NULL));
        CHECK_OK(mproc_rpc_handler_register(h, "utf8_error", fn_utf8_error, NULL));
        CHECK_OK(mproc_rpc_handler_register(h, "error_then_ok", fn_error_then_ok, NULL));
        CHECK_OK(mproc_rpc_handler_register(h, "ext", fn_ext, NULL));
    }
    return h;
}

static void rig_close(void)
{
    close(g_entered[0]);
    close(g_entered[1]);
    close(g_release[0]);
    close(g_release[1]);
}

/* ------------------------------------------------------ values */

static mproc_value *big_str(size_t n)
{
    char *s = malloc(n);
    CHECK(s);
    memset(s, 'y', n);
    mproc_value *v = mproc_value_strn(s, n);
    free(s);
    CHECK(v);
    return v;
}

/* A value of every kind both wires carry. */
static mproc_value *rich_args(void)
{
    return list_of(10, mproc_value_int(42), mproc_value_int(-7), mproc_value_float(2.5),
                   mproc_value_str("h\xc3\xa9llo"), mproc_value_bytes("\0\1\2", 3),
                   mproc_value_bool(true), mproc_value_nil(),
                   list_of(2, mproc_value_int(1), list_of(1, mproc_value_int(2))),
                   map1("k", mproc_value_str("v")), mproc_value_int(INT64_MIN));
}

static void check_repr(const mproc_value *v, const char *want)
{
    char *r = mproc_value_repr(v);
    CHECK(r);
    if (strcmp(r, want) != 0) {
        fprintf(stderr, "got %s, want %s\n", r, want);
        CHECK(0);
    }
    free(r);
}

/* ------------------------------------------------------ servers and proxies */

static int g_addr_seq;

static void unix_addr(char *buf, size_t cap)
{
    snprintf(buf, cap, "unix:@mproc-rpc-test-%d-%d", (int)getpid(), g_addr_seq++);
}

static mproc_rpc_server_opts sopts(mproc_rpc_wire w, mproc_rpc_transport t, bool key)
{
    return (mproc_rpc_server_opts){.wire = w,
                                   .transport = t,
                                   .authkey = key ? KEY : NULL,
                                   .authkey_len = key ? strlen(KEY) : 0};
}

static mproc_rpc_server *serve(mproc_rpc_handler *h, bool tcp, const mproc_rpc_server_opts *o)
{
    char addr[128];
    if (tcp)
        snprintf(addr, sizeof addr, "tcp:127.0.0.1:0");
    else
        unix_addr(addr, sizeof addr);
    mproc_rpc_server *s;
    CHECK_OK(mproc_rpc_server_new(&s, h, addr, o));
    CHECK_OK(mproc_rpc_server_start(s));
    return s;
}

/* ctest runs this file twice: as is (local proxies move to shared memory)
 * and with RPC_TEST_NO_SHM set (every call on the socket). */
static bool no_shm(void)
{
    return getenv("RPC_TEST_NO_SHM") != NULL;
}

static int connect_like(mproc_rpc_proxy **p, const mproc_rpc_server *s,
                        const mproc_rpc_server_opts *o, size_t max_message)
{
    mproc_rpc_proxy_opts po = {.wire = o->wire,
                               .transport = o->transport,
                               .authkey = o->authkey,
                               .authkey_len = o->authkey_len,
                               .max_message = max_message,
                               .connect_timeout = 10.0,
                               .no_shm = no_shm()};
    return mproc_rpc_connect(p, mproc_rpc_server_address(s), &po);
}

static mproc_rpc_proxy *proxy_for(const mproc_rpc_server *s, const mproc_rpc_server_opts *o)
{
    mproc_rpc_proxy *p;
    CHECK_OK(connect_like(&p, s, o, 0));
    return p;
}

/* A raw client: a connected socket (the Connection only to get one; no authkey). */
static mproc_connection *raw_connect(const mproc_rpc_server *s)
{
    mproc_client_opts co = {.connect_timeout = 10.0};
    mproc_connection *c;
    CHECK_OK(mproc_client_connect(&c, mproc_rpc_server_address(s), &co));
    return c;
}

/* Call and take the int result; `args` is consumed. */
static int64_t call_int(mproc_rpc_proxy *p, const char *method, mproc_value *args)
{
    mproc_value *r = NULL;
    int rc = mproc_rpc_call(p, method, args, &r, 30.0);
    mproc_value_free(args);
    CHECK_OK(rc);
    CHECK_EQ(mproc_value_type(r), MPROC_V_INT);
    int64_t i = mproc_value_as_int(r);
    mproc_value_free(r);
    CHECK_EQ(mproc_rpc_proxy_error_type(p)[0], 0);
    return i;
}

/* ------------------------------------------------------ handler */

MTEST(test_handler_register_unregister_and_sorted_names)
{
    mproc_rpc_handler *h;
    CHECK_OK(mproc_rpc_handler_new(&h));
    mproc_value *names;
    CHECK_OK(mproc_rpc_handler_names(h, &names));
    check_repr(names, "[]");
    mproc_value_free(names);
    const char *order[] = {"sub", "add", "zeta", "Mid", "b", "add2"};
    for (size_t i = 0; i < 6; i++)
        CHECK_OK(mproc_rpc_handler_register(h, order[i], fn_add, NULL));
    CHECK_EQ(mproc_rpc_handler_register(h, "add", fn_sub, NULL), MPROC_EEXIST);
    CHECK_OK(mproc_rpc_handler_names(h, &names));
    check_repr(names, "['Mid', 'add', 'add2', 'b', 'sub', 'zeta']");
    mproc_value_free(names);

    CHECK_OK(mproc_rpc_handler_unregister(h, "b"));
    CHECK_EQ(mproc_rpc_handler_unregister(h, "b"), MPROC_ENOENT);
    CHECK_EQ(mproc_rpc_handler_unregister(h, "nosuch"), MPROC_ENOENT);
    CHECK_OK(mproc_rpc_handler_unregister(h, "Mid"));
    CHECK_OK(mproc_rpc_handler_unregister(h, "zeta"));
    CHECK_OK(mproc_rpc_handler_names(h, &names));
    check_repr(names, "['add', 'add2', 'sub']");
    mproc_value_free(names);
    /* a removed name can be registered again, with another function */
    CHECK_OK(mproc_rpc_handler_register(h, "b", fn_sub, NULL));
    mproc_value *r;
    mproc_value *a = ints2(5, 3);
    CHECK_OK(mproc_rpc_handler_call(h, "b", (mproc_value *const[]){mproc_value_at(a, 0), mproc_value_at(a, 1)}, 2, NULL, &r, NULL));
    CHECK_EQ(mproc_value_as_int(r), 2);
    mproc_value_free(r);
    mproc_value_free(a);

    /* many names: the array grows past its first allocation, order kept */
    for (int i = 99; i >= 0; i--) {
        char n[16];
        snprintf(n, sizeof n, "f%03d", i);
        CHECK_OK(mproc_rpc_handler_register(h, n, fn_add, NULL));
    }
    CHECK_OK(mproc_rpc_handler_names(h, &names));
    CHECK_EQ(mproc_value_len(names), 104);
    for (size_t i = 1; i < mproc_value_len(names); i++)
        CHECK(strcmp(mproc_value_as_str(mproc_value_at(names, i - 1), NULL),
                     mproc_value_as_str(mproc_value_at(names, i), NULL)) < 0);
    mproc_value_free(names);
    mproc_rpc_handler_free(h);
    mproc_rpc_handler_free(NULL);
}

MTEST(test_handler_rejects_bad_arguments)
{
    mproc_rpc_handler *h;
    CHECK_EQ(mproc_rpc_handler_new(NULL), MPROC_EINVAL);
    CHECK_OK(mproc_rpc_handler_new(&h));
    char name[300];
    memset(name, 'n', sizeof name);
    name[256] = 0; /* 256 bytes: one too many */
    CHECK_EQ(mproc_rpc_handler_register(h, name, fn_add, NULL), MPROC_EINVAL);
    name[255] = 0; /* 255: the longest allowed */
    CHECK_OK(mproc_rpc_handler_register(h, name, fn_add, NULL));
    CHECK_EQ(mproc_rpc_handler_register(h, "", fn_add, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_handler_register(h, NULL, fn_add, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_handler_register(h, "f", NULL, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_handler_register(NULL, "f", fn_add, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_handler_unregister(h, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_handler_unregister(NULL, "f"), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_handler_names(h, NULL), MPROC_EINVAL);
    mproc_value *r = NULL;
    CHECK_EQ(mproc_rpc_handler_call(h, name, NULL, 0, NULL, NULL, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_handler_call(h, name, NULL, 2, NULL, &r, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_handler_call(h, NULL, NULL, 0, NULL, &r, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_handler_call(NULL, "f", NULL, 0, NULL, &r, NULL), MPROC_EINVAL);
    CHECK(r == NULL);
    mproc_rpc_handler_free(h);
}

/* Call `name` on `h` with the items of `args` (consumed). */
static int hcall(mproc_rpc_handler *h, const char *name, mproc_value *args, const mproc_value *kw,
                 mproc_value **r, const char **type)
{
    mproc_value *argv[16];
    size_t n = args ? mproc_value_len(args) : 0;
    CHECK(n <= 16);
    for (size_t i = 0; i < n; i++)
        argv[i] = mproc_value_at(args, i);
    int rc = mproc_rpc_handler_call(h, name, argv, n, kw, r, type);
    mproc_value_free(args);
    return rc;
}

MTEST(test_handler_call_results_and_errors)
{
    mproc_rpc_handler *h = new_handler(true);
    mproc_value *r;
    const char *type = "unset";

    CHECK_OK(hcall(h, "add", ints2(2, 3), NULL, &r, &type));
    CHECK_EQ(mproc_value_as_int(r), 5);
    CHECK_EQ(strcmp(type, ""), 0);
    mproc_value_free(r);

    CHECK_OK(hcall(h, "nothing", NULL, NULL, &r, &type)); /* a function storing nothing: nil */
    CHECK(r != NULL);
    CHECK_EQ(mproc_value_type(r), MPROC_V_NIL);
    mproc_value_free(r);

    mproc_value *kw = map1("factor", mproc_value_int(4));
    CHECK_OK(hcall(h, "echo", ints2(1, 2), kw, &r, NULL));
    check_repr(r, "[[1, 2], {'factor': 4}]");
    mproc_value_free(r);
    CHECK_OK(hcall(h, "scale", list_of(1, mproc_value_int(3)), kw, &r, NULL));
    CHECK_EQ(mproc_value_as_int(r), 12);
    mproc_value_free(r);
    mproc_value_free(kw);

    r = (mproc_value *)0x1;
    CHECK_EQ(hcall(h, "value_error", NULL, NULL, &r, &type), MPROC_EREMOTE);
    CHECK(r == NULL);
    CHECK_EQ(strcmp(type, "ValueError"), 0);
    CHECK_EQ(strcmp(mproc_errmsg(), "bad value 42"), 0);

    CHECK_EQ(hcall(h, "div", ints2(1, 0), NULL, &r, &type), MPROC_EREMOTE);
    CHECK_EQ(strcmp(type, "ZeroDivisionError"), 0);
    CHECK_EQ(strcmp(mproc_errmsg(), "division by zero"), 0);

    /* a bare negative code: returned as is, sent as "Exception" naming the function */
    CHECK_EQ(hcall(h, "fail_code", NULL, NULL, &r, &type), MPROC_EINVAL);
    CHECK_EQ(strcmp(type, "Exception"), 0);
    CHECK(strstr(mproc_errmsg(), "fail_code"));

    /* type NULL is "Exception"; the message is cut at 255 bytes */
    CHECK_EQ(hcall(h, "long_error", NULL, NULL, &r, &type), MPROC_EREMOTE);
    CHECK_EQ(strcmp(type, "Exception"), 0);
    CHECK_EQ(strlen(mproc_errmsg()), 255);

    /* an exception set by a call that then succeeded does not leak into the next failure */
    CHECK_OK(hcall(h, "error_then_ok", NULL, NULL, &r, &type));
    CHECK_EQ(strcmp(type, ""), 0);
    mproc_value_free(r);
    CHECK_EQ(hcall(h, "fail_code", NULL, NULL, &r, &type), MPROC_EINVAL);
    CHECK_EQ(strcmp(type, "Exception"), 0);

    CHECK_EQ(hcall(h, "nosuch", NULL, NULL, &r, &type), MPROC_ENOENT);
    CHECK_EQ(strcmp(type, "AttributeError"), 0);
    CHECK(strstr(mproc_errmsg(), "nosuch"));
    CHECK_EQ(hcall(h, "add", list_of(1, mproc_value_str("a")), NULL, &r, NULL), MPROC_EREMOTE);
    mproc_rpc_handler_free(h);
}

/* ------------------------------------------------------ server + proxy */

/* Everything a client sees, on one wire/transport/address kind. */
static void scenario_basic(bool tcp, mproc_rpc_wire wire, mproc_rpc_transport t, bool key)
{
    atomic_store(&g_recorded, 0);
    mproc_rpc_handler *h = new_handler(true);
    mproc_rpc_server_opts so = sopts(wire, t, key);
    mproc_rpc_server *s = serve(h, tcp, &so);
    const char *addr = mproc_rpc_server_address(s);
    if (tcp)
        CHECK(strncmp(addr, "tcp:127.0.0.1:", 14) == 0 && strcmp(addr + 14, "0") != 0);
    else
        CHECK(strncmp(addr, "unix:@", 6) == 0);
    mproc_rpc_proxy *p = proxy_for(s, &so);

    CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5);
    CHECK_EQ(call_int(p, "sub", ints2(10, 4)), 6);
    mproc_value *r;
    CHECK_OK(mproc_rpc_call(p, "nothing", NULL, &r, 30.0));
    CHECK_EQ(mproc_value_type(r), MPROC_V_NIL);
    mproc_value_free(r);
    mproc_value *a = ints2(1, 1);
    CHECK_OK(mproc_rpc_call(p, "add", a, NULL, 30.0)); /* result dropped */
    mproc_value_free(a);

    a = rich_args();
    CHECK_OK(mproc_rpc_call(p, "echo", a, &r, 30.0));
    CHECK_EQ(mproc_value_type(r), MPROC_V_LIST);
    CHECK(mproc_value_equal(mproc_value_at(r, 0), a));
    CHECK_EQ(mproc_value_type(mproc_value_at(r, 1)), MPROC_V_NIL);
    mproc_value_free(r);
    mproc_value_free(a);

    expect_remote(p, "div", ints2(1, 0), "ZeroDivisionError", "division by zero");
    expect_remote(p, "value_error", NULL, "ValueError", "bad value 42");
    expect_remote(p, "fail_code", NULL, "Exception", "fail_code");
    expect_remote(p, "nosuch", ints2(1, 2), "AttributeError", "nosuch");
    expect_remote(p, "add", list_of(2, mproc_value_str("a"), mproc_value_int(1)), "TypeError",
                  "add() takes two ints");
    CHECK_EQ(call_int(p, "add", ints2(40, 2)), 42); /* usable after errors; type cleared */

    mproc_value *kw = map1("factor", mproc_value_int(4));
    a = list_of(1, mproc_value_int(3));
    if (wire == MPROC_RPC_PYTHON) {
        CHECK_OK(mproc_rpc_call_kw(p, "scale", a, kw, &r, 30.0));
        CHECK_EQ(mproc_value_as_int(r), 12);
        mproc_value_free(r);
        CHECK_OK(mproc_rpc_call_kw(p, "echo", a, kw, &r, 30.0));
        check_repr(r, "[[3], {'factor': 4}]");
        mproc_value_free(r);
        mproc_value *notmap = mproc_value_int(1);
        CHECK_EQ(mproc_rpc_call_kw(p, "scale", a, notmap, &r, 30.0), MPROC_EINVAL);
        mproc_value_free(notmap);
        CHECK_EQ(mproc_rpc_notify(p, "record", a), MPROC_EINVAL);
    } else {
        CHECK_EQ(mproc_rpc_call_kw(p, "scale", a, kw, &r, 30.0), MPROC_EINVAL);
        CHECK(r == NULL);
        CHECK_OK(mproc_rpc_call_kw(p, "scale", a, NULL, &r, 30.0)); /* NULL kwargs are fine */
        CHECK_EQ(mproc_value_as_int(r), 3);
        mproc_value_free(r);
        /* notifications run in order before the next call on the connection */
        mproc_value *n7 = list_of(1, mproc_value_int(7)), *n5 = list_of(1, mproc_value_int(5)),
                    *bad = list_of(1, mproc_value_str("x"));
        CHECK_OK(mproc_rpc_notify(p, "record", n7));
        CHECK_OK(mproc_rpc_notify(p, "record", bad)); /* fails remotely: nobody hears */
        CHECK_OK(mproc_rpc_notify(p, "nosuch", NULL));
        CHECK_OK(mproc_rpc_notify(p, "record", n5));
        CHECK_EQ(call_int(p, "recorded", NULL), 12);
        mproc_value_free(n7);
        mproc_value_free(n5);
        mproc_value_free(bad);
    }
    mproc_value_free(kw);
    mproc_value_free(a);

    mproc_value *notlist = mproc_value_int(1);
    CHECK_EQ(mproc_rpc_call(p, "add", notlist, &r, 30.0), MPROC_EINVAL);
    mproc_value_free(notlist);
    CHECK_EQ(mproc_rpc_call(p, NULL, NULL, &r, 30.0), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_call(NULL, "add", NULL, &r, 30.0), MPROC_EINVAL);
    CHECK_EQ(call_int(p, "add", ints2(1, 2)), 3);

    /* a second client at the same time */
    mproc_rpc_proxy *p2 = proxy_for(s, &so);
    CHECK_EQ(call_int(p2, "add", ints2(5, 5)), 10);
    CHECK_EQ(call_int(p, "add", ints2(6, 6)), 12);
    CHECK_EQ(mproc_rpc_server_connections(s), 2);
    mproc_rpc_close(p2);
    mproc_rpc_close(p);
    mproc_rpc_close(NULL);
    CHECK_OK(mproc_rpc_server_stop(s, 5.0));
    CHECK_EQ(mproc_rpc_server_connections(s), 0);
    CHECK_OK(mproc_rpc_server_stop(s, 5.0)); /* idempotent */
    CHECK_EQ(mproc_rpc_server_start(s), MPROC_ESTATE);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

MTEST(test_msgpack_unix_connection) { scenario_basic(false, MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION, false); }
MTEST(test_msgpack_tcp_connection) { scenario_basic(true, MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION, false); }
MTEST(test_msgpack_unix_connection_authkey) { scenario_basic(false, MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION, true); }
MTEST(test_msgpack_tcp_connection_authkey) { scenario_basic(true, MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION, true); }
MTEST(test_python_unix_connection) { scenario_basic(false, MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION, false); }
MTEST(test_python_unix_connection_authkey) { scenario_basic(false, MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION, true); }
MTEST(test_python_tcp_connection_authkey) { scenario_basic(true, MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION, true); }
MTEST(test_msgpack_unix_stream) { scenario_basic(false, MPROC_RPC_MSGPACK, MPROC_RPC_STREAM, false); }
MTEST(test_msgpack_tcp_stream) { scenario_basic(true, MPROC_RPC_MSGPACK, MPROC_RPC_STREAM, false); }

/* The stream transport finds where a message ends however it is cut: a
 * request of every kind of value (a 70 KB str, nested arrays and maps, an
 * ext) sent one byte at a time at both ends and in 4 KiB pieces between,
 * followed by a second request in the same write as the first one's tail.
 * Both answers come back whole. */
MTEST(test_stream_request_split_anywhere)
{
    mproc_rpc_handler *h = new_handler(false);
    mproc_rpc_server_opts o = sopts(MPROC_RPC_MSGPACK, MPROC_RPC_STREAM, false);
    mproc_rpc_server *s = serve(h, true, &o);
    mproc_connection *c = raw_connect(s);
    int fd = mproc_connection_fileno(c);

    mproc_value *args = rich_args();
    CHECK_OK(mproc_value_append(args, big_str(70000)));
    CHECK_OK(mproc_value_append(args, mproc_value_ext(5, "abc", 3)));
    mproc_value *req = list_of(4, mproc_value_int(0), mproc_value_int(7), mproc_value_str("echo"),
                               list_of(1, mproc_value_copy(args)));
    mproc_value *req2 = list_of(4, mproc_value_int(0), mproc_value_int(8), mproc_value_str("add"),
                                list_of(2, mproc_value_int(2), mproc_value_int(3)));
    mproc_buf b = {0};
    CHECK_OK(mproc_msgpack_encode(req, &b));
    size_t first = b.len;
    CHECK_OK(mproc_msgpack_encode(req2, &b));
    size_t i = 0;
    while (i < first - 300) {
        size_t step = i < 300 ? 1 : (first - 300 - i < 4096 ? first - 300 - i : 4096);
        CHECK_OK(mproc_write_all(fd, b.data + i, step));
        i += step;
    }
    for (; i < first - 1; i++)
        CHECK_OK(mproc_write_all(fd, b.data + i, 1));
    CHECK_OK(mproc_write_all(fd, b.data + i, b.len - i)); /* the last byte and all of req2 */

    /* Read both answers: [1, 7, nil, [args]] then [1, 8, nil, 5]. */
    uint8_t *in = NULL;
    size_t have = 0, cap = 0, used = 0;
    mproc_deadline d = mproc_deadline_after(20.0);
    for (int want = 0; want < 2;) {
        mproc_value *v = NULL;
        size_t n = 0;
        /* try every prefix length: a complete answer decodes exactly */
        for (size_t k = used + 1; k <= have && !v; k++)
            if (mproc_msgpack_decode(in + used, k - used, NULL, &v) == 0)
                n = k - used;
        if (v) {
            CHECK(mproc_value_type(v) == MPROC_V_LIST && mproc_value_len(v) == 4);
            CHECK_EQ(mproc_value_as_int(mproc_value_at(v, 1)), want == 0 ? 7 : 8);
            CHECK(mproc_value_type(mproc_value_at(v, 2)) == MPROC_V_NIL);
            if (want == 0) /* echo answers [[args...], None]: our one argument is `args` */
                CHECK(mproc_value_equal(mproc_value_at(mproc_value_at(mproc_value_at(v, 3), 0), 0),
                                        args));
            else
                CHECK_EQ(mproc_value_as_int(mproc_value_at(v, 3)), 5);
            mproc_value_free(v);
            used += n;
            want++;
            continue;
        }
        CHECK(!mproc_deadline_expired(d));
        if (cap - have < 65536) {
            cap = cap ? cap * 2 : 262144;
            in = realloc(in, cap);
            CHECK(in);
        }
        CHECK_OK(mproc_wait_fd(fd, POLLIN, mproc_deadline_remaining(d)));
        ssize_t got = read(fd, in + have, cap - have);
        CHECK(got > 0);
        have += (size_t)got;
    }
    free(in);
    free(b.data);
    mproc_value_free(req);
    mproc_value_free(req2);
    mproc_value_free(args);
    mproc_connection_close(c);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

/* Review regressions. (1) A call's timeout covers sending: a listener that
 * never accepts nor reads cannot hold an 8 MiB call past it. */
MTEST(test_call_timeout_covers_a_send_the_server_never_reads)
{
    char addr[128];
    unix_addr(addr, sizeof addr);
    mproc_listener *l;
    CHECK_OK(mproc_listener_new(&l, addr, NULL));
    for (int t = 0; t < 2; t++) {
        mproc_rpc_proxy_opts po = {.transport = t ? MPROC_RPC_STREAM : MPROC_RPC_CONNECTION,
                                   .max_message = (size_t)64 << 20,
                                   .no_shm = true}; /* nobody would answer the question */
        mproc_rpc_proxy *p;
        CHECK_OK(mproc_rpc_connect(&p, mproc_listener_address(l), &po));
        mproc_value *args = list_of(1, big_str((size_t)8 << 20));
        double t0 = mproc_monotonic();
        CHECK_EQ(mproc_rpc_call(p, "echo", args, NULL, 0.3), MPROC_ETIMEDOUT);
        CHECK(mproc_monotonic() - t0 < 5.0);
        CHECK_EQ(mproc_rpc_call(p, "echo", NULL, NULL, 0.3), MPROC_ECLOSED); /* out of step: closed */
        mproc_value_free(args);
        mproc_rpc_close(p);
    }
    mproc_listener_close(l);
}

FN(fn_custom_error)
{
    (void)args, (void)nargs, (void)kwargs, (void)result, (void)ud;
    return mproc_rpc_error(nargs ? "MyCustomError" : "Custom", "the real message 42");
}

/* (2) On the Python wire an exception type Python does not have travels as
 * Exception("Type: message"), message intact. */
MTEST(test_python_wire_unknown_exception_type_keeps_its_message)
{
    mproc_rpc_handler *h = new_handler(false);
    CHECK_OK(mproc_rpc_handler_register(h, "custom", fn_custom_error, NULL));
    mproc_rpc_server_opts o = sopts(MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION, false);
    mproc_rpc_server *s = serve(h, false, &o);
    mproc_rpc_proxy *p = proxy_for(s, &o);
    for (int i = 0; i < 2; i++) {
        mproc_value *args = i ? list_of(1, mproc_value_int(1)) : NULL;
        CHECK_EQ(mproc_rpc_call(p, "custom", args, NULL, 10.0), MPROC_EREMOTE);
        CHECK(strcmp(mproc_rpc_proxy_error_type(p), "Exception") == 0);
        CHECK(strstr(mproc_errmsg(), i ? "MyCustomError: the real message 42"
                                       : "Custom: the real message 42"));
        mproc_value_free(args);
    }
    mproc_rpc_close(p);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

/* (3) Stopping with only idle clients cuts no call: 0, even at timeout 0. */
MTEST(test_stop_with_idle_clients_is_not_a_timeout)
{
    mproc_rpc_handler *h = new_handler(false);
    for (int t = 0; t < 2; t++) {
        mproc_rpc_server_opts o =
            sopts(MPROC_RPC_MSGPACK, t ? MPROC_RPC_STREAM : MPROC_RPC_CONNECTION, false);
        mproc_rpc_server *s = serve(h, false, &o);
        mproc_rpc_proxy *p = proxy_for(s, &o);
        CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5);
        CHECK_OK(mproc_rpc_server_stop(s, 0));
        mproc_rpc_close(p);
        mproc_rpc_server_free(s);
    }
    mproc_rpc_handler_free(h);
}

MTEST(test_wrong_authkey_is_eauth_and_server_keeps_serving)
{
    for (int w = 0; w < 2; w++) {
        mproc_rpc_handler *h = new_handler(false);
        mproc_rpc_server_opts so = sopts((mproc_rpc_wire)w, MPROC_RPC_CONNECTION, true);
        mproc_rpc_server *s = serve(h, w == 1, &so);
        mproc_rpc_server_opts bad = so;
        bad.authkey = "wrong-key";
        bad.authkey_len = 9;
        mproc_rpc_proxy *p = (mproc_rpc_proxy *)0x1;
        CHECK_EQ(connect_like(&p, s, &bad, 0), MPROC_EAUTH);
        CHECK(p == NULL);
        bad.authkey_len = 0; /* an empty key is a key, and a wrong one */
        CHECK_EQ(connect_like(&p, s, &bad, 0), MPROC_EAUTH);
        p = proxy_for(s, &so);
        CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5);
        mproc_rpc_close(p);
        mproc_rpc_server_free(s);
        mproc_rpc_handler_free(h);
    }
}

MTEST(test_invalid_options_are_einval)
{
    mproc_rpc_handler *h = new_handler(false);
    char addr[128];
    unix_addr(addr, sizeof addr);
    mproc_rpc_server *s = (mproc_rpc_server *)0x1;
    mproc_rpc_server_opts so = sopts(MPROC_RPC_PYTHON, MPROC_RPC_STREAM, false);
    CHECK_EQ(mproc_rpc_server_new(&s, h, addr, &so), MPROC_EINVAL);
    CHECK(s == NULL);
    so = sopts(MPROC_RPC_MSGPACK, MPROC_RPC_STREAM, true);
    CHECK_EQ(mproc_rpc_server_new(&s, h, addr, &so), MPROC_EINVAL);
    so = (mproc_rpc_server_opts){.authkey = NULL, .authkey_len = 4};
    CHECK_EQ(mproc_rpc_server_new(&s, h, addr, &so), MPROC_EINVAL);
    so = (mproc_rpc_server_opts){.wire = (mproc_rpc_wire)7};
    CHECK_EQ(mproc_rpc_server_new(&s, h, addr, &so), MPROC_EINVAL);
    so = (mproc_rpc_server_opts){.transport = (mproc_rpc_transport)9};
    CHECK_EQ(mproc_rpc_server_new(&s, h, addr, &so), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_server_new(&s, NULL, addr, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_server_new(&s, h, NULL, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_server_new(NULL, h, addr, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_server_new(&s, h, "bogus:1", NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_server_start(NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_server_stop(NULL, 1.0), MPROC_EINVAL);
    mproc_rpc_server_free(NULL);

    /* the same checks on the client side, before any connection is tried */
    mproc_rpc_proxy *p = (mproc_rpc_proxy *)0x1;
    mproc_rpc_proxy_opts po = {.wire = MPROC_RPC_PYTHON, .transport = MPROC_RPC_STREAM};
    CHECK_EQ(mproc_rpc_connect(&p, addr, &po), MPROC_EINVAL);
    CHECK(p == NULL);
    po = (mproc_rpc_proxy_opts){.transport = MPROC_RPC_STREAM, .authkey = KEY, .authkey_len = 3};
    CHECK_EQ(mproc_rpc_connect(&p, addr, &po), MPROC_EINVAL);
    po = (mproc_rpc_proxy_opts){.authkey_len = 3};
    CHECK_EQ(mproc_rpc_connect(&p, addr, &po), MPROC_EINVAL);
    po = (mproc_rpc_proxy_opts){.wire = (mproc_rpc_wire)-1};
    CHECK_EQ(mproc_rpc_connect(&p, addr, &po), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_connect(&p, NULL, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_rpc_connect(NULL, addr, NULL), MPROC_EINVAL);
    /* a valid address nobody listens at */
    CHECK_EQ(mproc_rpc_connect(&p, "tcp:127.0.0.1:1", NULL), MPROC_ECONNREFUSED);
    CHECK(p == NULL);
    mproc_rpc_handler_free(h);
}

MTEST(test_server_lifecycle_edges)
{
    mproc_rpc_handler *h = new_handler(false);
    char addr[128];
    unix_addr(addr, sizeof addr);
    mproc_rpc_server *s;
    CHECK_OK(mproc_rpc_server_new(&s, h, addr, NULL));
    mproc_rpc_server_free(s); /* never started */
    CHECK_OK(mproc_rpc_server_new(&s, h, addr, NULL)); /* the abstract name is free again */
    CHECK_OK(mproc_rpc_server_start(s));
    CHECK_EQ(mproc_rpc_server_start(s), MPROC_ESTATE);
    CHECK_EQ(mproc_rpc_server_connections(s), 0);
    mproc_rpc_server_free(s);
    CHECK_OK(mproc_rpc_server_new(&s, h, addr, NULL));
    CHECK_OK(mproc_rpc_server_stop(s, 1.0)); /* stopped before it started */
    CHECK_EQ(mproc_rpc_server_start(s), MPROC_ESTATE);
    mproc_rpc_server_free(s);
    CHECK_EQ(mproc_rpc_server_connections(NULL), 0);
    CHECK_EQ(strcmp(mproc_rpc_proxy_error_type(NULL), ""), 0);
    mproc_rpc_handler_free(h);
}

/* A client speaking the other wire or transport fails at once, never hangs. */
MTEST(test_mismatched_wire_or_transport_fails_cleanly)
{
    static const struct {
        mproc_rpc_wire sw, pw;
        mproc_rpc_transport st, pt;
    } pairs[] = {
        {MPROC_RPC_PYTHON, MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION, MPROC_RPC_CONNECTION},
        {MPROC_RPC_MSGPACK, MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION, MPROC_RPC_CONNECTION},
        {MPROC_RPC_MSGPACK, MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION, MPROC_RPC_STREAM},
        {MPROC_RPC_MSGPACK, MPROC_RPC_MSGPACK, MPROC_RPC_STREAM, MPROC_RPC_CONNECTION},
        {MPROC_RPC_PYTHON, MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION, MPROC_RPC_STREAM},
    };
    mproc_rpc_handler *h = new_handler(false);
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        mproc_rpc_server_opts so = sopts(pairs[i].sw, pairs[i].st, false);
        mproc_rpc_server *s = serve(h, i % 2, &so);
        mproc_rpc_server_opts co = sopts(pairs[i].pw, pairs[i].pt, false);
        mproc_rpc_proxy *p = NULL;
        /* fails at connect (the shared-memory question) or at the call */
        int rc = connect_like(&p, s, &co, 0);
        if (!rc)
            rc = call_rc(p, "add", ints2(2, 3), 10.0);
        if (rc == 0 || rc == MPROC_ETIMEDOUT) {
            fprintf(stderr, "pair %zu: %s\n", i, mproc_errname(rc));
            CHECK(0);
        }
        mproc_rpc_close(p);
        p = proxy_for(s, &so); /* the server is fine */
        CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5);
        mproc_rpc_close(p);
        mproc_rpc_server_free(s);
    }
    mproc_rpc_handler_free(h);
}

MTEST(test_functions_registered_while_serving)
{
    mproc_rpc_handler *h = new_handler(false);
    mproc_rpc_server_opts so = sopts(MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION, false);
    mproc_rpc_server *s = serve(h, false, &so);
    mproc_rpc_proxy *p = proxy_for(s, &so);
    expect_remote(p, "late_fn", ints2(1, 2), "AttributeError", "late_fn");
    CHECK_OK(mproc_rpc_handler_register(h, "late_fn", fn_sub, NULL));
    CHECK_EQ(call_int(p, "late_fn", ints2(1, 2)), -1);
    CHECK_OK(mproc_rpc_handler_unregister(h, "late_fn"));
    expect_remote(p, "late_fn", ints2(1, 2), "AttributeError", "late_fn");
    mproc_rpc_close(p);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

/* ------------------------------------------------------ slow calls, timeouts, stop */

typedef struct call_job {
    mproc_rpc_proxy *p;
    const char *method;
    double timeout;
    bool release_after; /* then let the blocked function finish */
    int rc;
    mproc_value *result;
} call_job;

static void *call_thread(void *arg)
{
    call_job *j = arg;
    j->rc = mproc_rpc_call(j->p, j->method, NULL, &j->result, j->timeout);
    if (j->release_after)
        release_one();
    return NULL;
}

static pid_t g_main_tid;

/* Release the blocked function once the main thread sleeps (in stop). */
static void *release_when_main_parked(void *arg)
{
    (void)arg;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)g_main_tid);
    mtest_wait_parked(path);
    release_one();
    return NULL;
}

static void check_late(const mproc_value *v)
{
    CHECK_EQ(mproc_value_type(v), MPROC_V_STR);
    CHECK_EQ(strcmp(mproc_value_as_str(v, NULL), "late"), 0);
}

MTEST(test_blocked_call_does_not_hold_other_clients)
{
    rig_open();
    mproc_rpc_handler *h = new_handler(true);
    mproc_rpc_server_opts so = sopts(MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION, false);
    mproc_rpc_server *s = serve(h, false, &so);
    mproc_rpc_proxy *p1 = proxy_for(s, &so), *p2 = proxy_for(s, &so);
    call_job j = {.p = p1, .method = "block", .timeout = 30.0};
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, call_thread, &j), 0);
    wait_entered();
    for (int i = 0; i < 100; i++)
        CHECK_EQ(call_int(p2, "add", ints2(i, i)), 2 * i);
    release_one();
    CHECK_EQ(pthread_join(th, NULL), 0);
    CHECK_OK(j.rc);
    check_late(j.result);
    mproc_value_free(j.result);
    mproc_rpc_close(p1);
    mproc_rpc_close(p2);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
    rig_close();
}

/* Error messages cut mid-character, and unknown non-ASCII names cut in the
 * server's message, still travel as valid strings; a method name that is
 * not UTF-8 is refused before anything is sent. The proxy stays usable. */
MTEST(test_non_ascii_errors_and_names)
{
    mproc_rpc_handler *h = new_handler(true);
    for (int k = 0; k < 2; k++) {
        mproc_rpc_server_opts so = sopts(k ? MPROC_RPC_PYTHON : MPROC_RPC_MSGPACK,
                                         MPROC_RPC_CONNECTION, false);
        mproc_rpc_server *s = serve(h, false, &so);
        mproc_rpc_proxy *p = proxy_for(s, &so);
        CHECK_EQ(call_rc(p, "utf8_error", NULL, 10.0), MPROC_EREMOTE);
        if (!strstr(mproc_errmsg(), "\xc3\xa9\xc3\xa9"))
            fprintf(stderr, "errmsg: %.120s\n", mproc_errmsg());
        CHECK(strstr(mproc_errmsg(), "\xc3\xa9\xc3\xa9") != NULL);
        char name[403];
        for (int i = 0; i < 201; i++)
            name[2 * i] = (char)0xc3, name[2 * i + 1] = (char)0xa9;
        name[402] = 0;
        CHECK_EQ(call_rc(p, name, NULL, 10.0), MPROC_EREMOTE); /* no such function */
        CHECK_EQ(call_rc(p, "caf\xe9", NULL, 10.0), MPROC_EINVAL);
        CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5);
        mproc_rpc_close(p);
        mproc_rpc_server_free(s);
    }
    mproc_rpc_handler_free(h);
}

/* idle_timeout closes a connection that sends nothing, never one whose call
 * is running, and is checked at server_new. */
MTEST(test_idle_timeout_closes_silent_connections_only)
{
    rig_open();
    mproc_rpc_handler *h = new_handler(true);
    for (int t = 0; t < 2; t++) {
        mproc_rpc_server_opts so =
            sopts(MPROC_RPC_MSGPACK, t ? MPROC_RPC_STREAM : MPROC_RPC_CONNECTION, false);
        so.idle_timeout = 0.3;
        mproc_rpc_server *s = serve(h, false, &so);
        mproc_rpc_proxy *idle = proxy_for(s, &so), *busy = proxy_for(s, &so);
        CHECK_EQ(call_int(idle, "add", ints2(1, 2)), 3);
        call_job j = {.p = busy, .method = "block", .timeout = 30.0};
        pthread_t th;
        CHECK_EQ(pthread_create(&th, NULL, call_thread, &j), 0);
        wait_entered();
        wait_connections(s, 1); /* the silent one went; the running call stays */
        CHECK_EQ(call_rc(idle, "add", ints2(1, 2), 10.0), MPROC_ECLOSED);
        release_one();
        CHECK_EQ(pthread_join(th, NULL), 0);
        CHECK_OK(j.rc);
        check_late(j.result);
        mproc_value_free(j.result);
        CHECK_EQ(call_int(busy, "add", ints2(2, 2)), 4);
        mproc_rpc_close(idle);
        mproc_rpc_close(busy);
        mproc_rpc_server_free(s);
    }
    char addr[128];
    unix_addr(addr, sizeof addr);
    mproc_rpc_server *s = NULL;
    mproc_rpc_server_opts bad = {.idle_timeout = -1};
    CHECK_EQ(mproc_rpc_server_new(&s, h, addr, &bad), MPROC_EINVAL);
    bad.idle_timeout = NAN;
    CHECK_EQ(mproc_rpc_server_new(&s, h, addr, &bad), MPROC_EINVAL);
    CHECK(s == NULL);
    mproc_rpc_handler_free(h);
    rig_close();
}

static void scenario_msgpack_timeout(mproc_rpc_transport t)
{
    rig_open();
    mproc_rpc_handler *h = new_handler(true);
    mproc_rpc_server_opts so = sopts(MPROC_RPC_MSGPACK, t, false);
    mproc_rpc_server *s = serve(h, false, &so);
    mproc_rpc_proxy *p = proxy_for(s, &so);
    for (int round = 0; round < 3; round++) {
        double t0 = mproc_monotonic();
        CHECK_EQ(call_rc(p, "block", NULL, 0.3), MPROC_ETIMEDOUT);
        CHECK(mproc_monotonic() - t0 >= 0.25);
        wait_entered();
        release_one();
        /* the late "late" answer comes first on the connection and is skipped by its msgid */
        CHECK_EQ(call_int(p, "add", ints2(round, 3)), round + 3);
    }
    /* a timeout of 0 gives up at once (the answer comes later and is skipped) */
    CHECK_EQ(call_rc(p, "block", NULL, 0), MPROC_ETIMEDOUT);
    wait_entered();
    release_one();
    CHECK_EQ(call_int(p, "add", ints2(7, 3)), 10);
    mproc_rpc_close(p);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
    rig_close();
}

MTEST(test_msgpack_timeout_keeps_proxy_and_skips_late_answer) { scenario_msgpack_timeout(MPROC_RPC_CONNECTION); }
MTEST(test_msgpack_stream_timeout_keeps_proxy_and_skips_late_answer) { scenario_msgpack_timeout(MPROC_RPC_STREAM); }

MTEST(test_python_timeout_closes_proxy)
{
    rig_open();
    mproc_rpc_handler *h = new_handler(true);
    mproc_rpc_server_opts so = sopts(MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION, true);
    mproc_rpc_server *s = serve(h, false, &so);
    mproc_rpc_proxy *p = proxy_for(s, &so);
    CHECK_EQ(call_rc(p, "block", NULL, 0.3), MPROC_ETIMEDOUT);
    wait_entered();
    release_one();
    CHECK_EQ(call_rc(p, "add", ints2(1, 2), 10.0), MPROC_ECLOSED);
    CHECK_EQ(call_rc(p, "add", ints2(1, 2), 10.0), MPROC_ECLOSED);
    mproc_rpc_close(p);
    p = proxy_for(s, &so); /* the server is fine */
    CHECK_EQ(call_int(p, "add", ints2(1, 2)), 3);
    mproc_rpc_close(p);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
    rig_close();
}

static void scenario_stop_graceful(mproc_rpc_wire w, mproc_rpc_transport t)
{
    rig_open();
    g_main_tid = (pid_t)syscall(SYS_gettid);
    mproc_rpc_handler *h = new_handler(true);
    mproc_rpc_server_opts so = sopts(w, t, false);
    mproc_rpc_server *s = serve(h, false, &so);
    mproc_rpc_proxy *p = proxy_for(s, &so);
    call_job j = {.p = p, .method = "block", .timeout = 30.0};
    pthread_t th, rel;
    CHECK_EQ(pthread_create(&th, NULL, call_thread, &j), 0);
    wait_entered();
    CHECK_EQ(pthread_create(&rel, NULL, release_when_main_parked, NULL), 0);
    CHECK_OK(mproc_rpc_server_stop(s, 20.0)); /* the call in flight finishes */
    CHECK_EQ(pthread_join(rel, NULL), 0);
    CHECK_EQ(pthread_join(th, NULL), 0);
    CHECK_OK(j.rc);
    check_late(j.result);
    mproc_value_free(j.result);
    CHECK_EQ(mproc_rpc_server_connections(s), 0);
    CHECK_EQ(call_rc(p, "add", ints2(1, 2), 10.0), MPROC_ECLOSED);
    mproc_rpc_close(p);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
    rig_close();
}

MTEST(test_stop_lets_call_in_flight_finish_msgpack) { scenario_stop_graceful(MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION); }
MTEST(test_stop_lets_call_in_flight_finish_python) { scenario_stop_graceful(MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION); }
MTEST(test_stop_lets_call_in_flight_finish_stream) { scenario_stop_graceful(MPROC_RPC_MSGPACK, MPROC_RPC_STREAM); }

static void scenario_stop_cuts(mproc_rpc_wire w, mproc_rpc_transport t)
{
    rig_open();
    mproc_rpc_handler *h = new_handler(true);
    mproc_rpc_server_opts so = sopts(w, t, false);
    mproc_rpc_server *s = serve(h, false, &so);
    mproc_rpc_proxy *p = proxy_for(s, &so), *idle = proxy_for(s, &so);
    CHECK_EQ(call_int(idle, "add", ints2(1, 1)), 2);
    /* the caller sees its connection cut, then lets the function end */
    call_job j = {.p = p, .method = "block", .timeout = 30.0, .release_after = true};
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, call_thread, &j), 0);
    wait_entered();
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_rpc_server_stop(s, 0.3), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 >= 0.25);
    CHECK_EQ(pthread_join(th, NULL), 0);
    CHECK_EQ(j.rc, MPROC_ECLOSED);
    CHECK(j.result == NULL);
    CHECK_EQ(mproc_rpc_server_connections(s), 0);
    CHECK_EQ(call_rc(idle, "add", ints2(1, 2), 10.0), MPROC_ECLOSED);
    CHECK_EQ(call_rc(p, "add", ints2(1, 2), 10.0), MPROC_ECLOSED);
    mproc_rpc_close(p);
    mproc_rpc_close(idle);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
    rig_close();
}

MTEST(test_stop_cuts_call_longer_than_timeout_msgpack) { scenario_stop_cuts(MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION); }
MTEST(test_stop_cuts_call_longer_than_timeout_python) { scenario_stop_cuts(MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION); }
MTEST(test_stop_cuts_call_longer_than_timeout_stream) { scenario_stop_cuts(MPROC_RPC_MSGPACK, MPROC_RPC_STREAM); }

static void scenario_stopped(mproc_rpc_wire w, mproc_rpc_transport t)
{
    mproc_rpc_handler *h = new_handler(false);
    mproc_rpc_server_opts so = sopts(w, t, false);
    mproc_rpc_server *s = serve(h, false, &so);
    mproc_rpc_proxy *p = proxy_for(s, &so);
    CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5);
    CHECK_OK(mproc_rpc_server_stop(s, 5.0));
    CHECK_EQ(call_rc(p, "add", ints2(2, 3), 10.0), MPROC_ECLOSED);
    CHECK_EQ(call_rc(p, "add", ints2(2, 3), 10.0), MPROC_ECLOSED);
    if (w == MPROC_RPC_MSGPACK) {
        mproc_value *a = ints2(1, 2);
        int rc = mproc_rpc_notify(p, "record", a); /* closed proxy: refused */
        mproc_value_free(a);
        CHECK_EQ(rc, MPROC_ECLOSED);
    }
    mproc_rpc_close(p);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

MTEST(test_stopped_server_gives_eclosed_msgpack) { scenario_stopped(MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION); }
MTEST(test_stopped_server_gives_eclosed_python) { scenario_stopped(MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION); }
MTEST(test_stopped_server_gives_eclosed_stream) { scenario_stopped(MPROC_RPC_MSGPACK, MPROC_RPC_STREAM); }

/* "accept no more connections": a client arriving after stop must not be left
 * hanging in the listen backlog until its own timeout. */
MTEST(test_stopped_server_refuses_new_connections)
{
    int hung = 0;
    for (int t = 0; t < 2; t++) {
        mproc_rpc_handler *h = new_handler(false);
        mproc_rpc_server_opts so = sopts(MPROC_RPC_MSGPACK, (mproc_rpc_transport)t, false);
        mproc_rpc_server *s = serve(h, t == 1, &so);
        CHECK_OK(mproc_rpc_server_stop(s, 5.0));
        mproc_rpc_proxy *p = NULL;
        int rc = connect_like(&p, s, &so, 0);
        if (rc == 0) {
            rc = call_rc(p, "add", ints2(2, 3), 3.0);
            mproc_rpc_close(p);
        }
        if (rc != MPROC_ECONNREFUSED && rc != MPROC_ENOENT && rc != MPROC_ECLOSED) {
            fprintf(stderr, "%s transport: a client of a stopped server got %s (%s)\n",
                    t ? "stream" : "connection", mproc_errname(rc), mproc_errmsg());
            hung++;
        }
        mproc_rpc_server_free(s);
        mproc_rpc_handler_free(h);
    }
    CHECK_EQ(hung, 0);
}

static void scenario_killed(mproc_rpc_wire w, mproc_rpc_transport t)
{
    int ap[2], hold[2];
    CHECK(pipe2(ap, O_CLOEXEC) == 0);
    CHECK(pipe2(hold, O_CLOEXEC) == 0);
    mproc_rpc_server_opts so = sopts(w, t, w == MPROC_RPC_PYTHON);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) { /* the server's process */
        close(ap[0]);
        close(hold[1]);
        mproc_rpc_handler *h = new_handler(false);
        mproc_rpc_server *s = serve(h, false, &so);
        const char *a = mproc_rpc_server_address(s);
        CHECK_OK(mproc_write_all(ap[1], a, strlen(a) + 1));
        char c;
        (void)!read(hold[0], &c, 1); /* until killed */
        _exit(0);
    }
    close(ap[1]);
    close(hold[0]);
    char addr[128];
    size_t n = 0;
    for (;;) {
        CHECK(n < sizeof addr);
        CHECK_OK(mproc_wait_fd(ap[0], POLLIN, 30.0));
        CHECK_EQ(read(ap[0], addr + n, 1), 1);
        if (addr[n++] == 0)
            break;
    }
    mproc_rpc_proxy_opts po = {.wire = w, .transport = t, .authkey = so.authkey,
                               .authkey_len = so.authkey_len};
    mproc_rpc_proxy *p;
    CHECK_OK(mproc_rpc_connect(&p, addr, &po));
    CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5);
    CHECK_EQ(kill(pid, SIGKILL), 0);
    int st;
    CHECK_EQ(waitpid(pid, &st, 0), pid);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    CHECK_EQ(call_rc(p, "add", ints2(2, 3), 10.0), MPROC_ECLOSED);
    CHECK_EQ(call_rc(p, "add", ints2(2, 3), 10.0), MPROC_ECLOSED);
    mproc_rpc_close(p);
    close(ap[0]);
    close(hold[1]);
}

MTEST(test_killed_server_gives_eclosed_msgpack) { scenario_killed(MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION); }
MTEST(test_killed_server_gives_eclosed_python) { scenario_killed(MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION); }
MTEST(test_killed_server_gives_eclosed_stream) { scenario_killed(MPROC_RPC_MSGPACK, MPROC_RPC_STREAM); }

/* ------------------------------------------------------ limits */

static void scenario_max_connections(mproc_rpc_wire w, mproc_rpc_transport t, bool key)
{
    mproc_rpc_handler *h = new_handler(false);
    mproc_rpc_server_opts so = sopts(w, t, key);
    so.max_connections = 2;
    mproc_rpc_server *s = serve(h, false, &so);
    mproc_rpc_proxy *p1 = proxy_for(s, &so), *p2 = proxy_for(s, &so);
    CHECK_EQ(call_int(p1, "add", ints2(1, 1)), 2);
    CHECK_EQ(call_int(p2, "add", ints2(2, 2)), 4);
    CHECK_EQ(mproc_rpc_server_connections(s), 2);
    for (int i = 0; i < 3; i++) { /* the third is closed at accept */
        mproc_rpc_proxy *p3 = NULL;
        int rc = connect_like(&p3, s, &so, 0);
        if (key) {
            CHECK(rc != 0); /* closed during the handshake */
        } else if (t == MPROC_RPC_CONNECTION && !no_shm()) {
            CHECK_EQ(rc, MPROC_ECLOSED); /* closed before it answered the shm question */
        } else {
            CHECK_OK(rc);
            CHECK_EQ(call_rc(p3, "add", ints2(3, 3), 10.0), MPROC_ECLOSED);
            mproc_rpc_close(p3);
        }
    }
    CHECK_EQ(mproc_rpc_server_connections(s), 2);
    CHECK_EQ(call_int(p2, "add", ints2(2, 2)), 4); /* the others are untouched */
    mproc_rpc_close(p1);
    wait_connections(s, 1);
    mproc_rpc_proxy *p4 = proxy_for(s, &so);
    CHECK_EQ(call_int(p4, "add", ints2(4, 4)), 8);
    mproc_rpc_close(p4);
    mproc_rpc_close(p2);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

MTEST(test_max_connections_closes_extra_msgpack) { scenario_max_connections(MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION, false); }
MTEST(test_max_connections_closes_extra_python_authkey) { scenario_max_connections(MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION, true); }
MTEST(test_max_connections_closes_extra_stream) { scenario_max_connections(MPROC_RPC_MSGPACK, MPROC_RPC_STREAM, false); }

MTEST(test_request_over_proxy_max_message_is_emsgsize)
{
    for (int k = 0; k < 3; k++) {
        mproc_rpc_wire w = k == 1 ? MPROC_RPC_PYTHON : MPROC_RPC_MSGPACK;
        mproc_rpc_transport t = k == 2 ? MPROC_RPC_STREAM : MPROC_RPC_CONNECTION;
        mproc_rpc_handler *h = new_handler(true);
        mproc_rpc_server_opts so = sopts(w, t, false);
        mproc_rpc_server *s = serve(h, false, &so);
        mproc_rpc_proxy *p;
        CHECK_OK(connect_like(&p, s, &so, 1024));
        CHECK_EQ(call_rc(p, "echo", list_of(1, big_str(2000)), 10.0), MPROC_EMSGSIZE);
        CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5); /* nothing was sent: still usable */
        mproc_value *r;
        mproc_value *a = list_of(1, big_str(900));
        CHECK_OK(mproc_rpc_call(p, "echo", a, &r, 10.0)); /* under the limit both ways */
        mproc_value_free(r);
        mproc_value_free(a);
        /* an answer over the proxy's limit: refused, and the connection is done */
        int rc = call_rc(p, "big", list_of(1, mproc_value_int(4000)), 10.0);
        CHECK_EQ(rc, MPROC_EMSGSIZE);
        CHECK_EQ(call_rc(p, "add", ints2(2, 3), 10.0), MPROC_ECLOSED);
        mproc_rpc_close(p);
        mproc_rpc_server_free(s);
        mproc_rpc_handler_free(h);
    }
}

MTEST(test_server_max_message_drops_oversized_request_and_keeps_serving)
{
    for (int k = 0; k < 3; k++) {
        mproc_rpc_wire w = k == 1 ? MPROC_RPC_PYTHON : MPROC_RPC_MSGPACK;
        mproc_rpc_transport t = k == 2 ? MPROC_RPC_STREAM : MPROC_RPC_CONNECTION;
        mproc_rpc_handler *h = new_handler(true);
        mproc_rpc_server_opts so = sopts(w, t, false);
        so.max_message = 4096;
        mproc_rpc_server *s = serve(h, false, &so);
        mproc_rpc_proxy *good = proxy_for(s, &so), *big;
        CHECK_OK(connect_like(&big, s, &so, 1 << 20));
        CHECK_EQ(call_int(good, "add", ints2(2, 3)), 5);
        if (mproc_rpc_proxy_shm(big)) { /* the queue knows the limit: nothing is sent */
            CHECK_EQ(call_rc(big, "echo", list_of(1, big_str(8000)), 10.0), MPROC_EMSGSIZE);
            CHECK_EQ(call_int(big, "add", ints2(1, 1)), 2);
        } else {
            CHECK_EQ(call_rc(big, "echo", list_of(1, big_str(8000)), 10.0), MPROC_ECLOSED);
        }
        CHECK_EQ(call_int(good, "add", ints2(2, 4)), 6);
        mproc_rpc_close(big);
        mproc_rpc_proxy *fresh = proxy_for(s, &so);
        CHECK_EQ(call_int(fresh, "add", ints2(2, 5)), 7);
        /* a result over the server's limit comes back as an error instead */
        expect_remote(fresh, "big", list_of(1, mproc_value_int(8000)), "ValueError", "max_message");
        CHECK_EQ(call_int(fresh, "add", ints2(2, 6)), 8);
        mproc_rpc_close(fresh);
        mproc_rpc_close(good);
        mproc_rpc_server_free(s);
        mproc_rpc_handler_free(h);
    }
}

/* A result the wire cannot carry becomes an error answer, not a dead connection. */
MTEST(test_unencodable_result_is_typeerror_on_python_wire)
{
    mproc_rpc_handler *h = new_handler(true);
    for (int w = 0; w < 2; w++) {
        mproc_rpc_server_opts so = sopts((mproc_rpc_wire)w, MPROC_RPC_CONNECTION, false);
        mproc_rpc_server *s = serve(h, false, &so);
        mproc_rpc_proxy *p = proxy_for(s, &so);
        if (w == MPROC_RPC_PYTHON) {
            expect_remote(p, "ext", NULL, "TypeError", "cannot be encoded");
        } else {
            mproc_value *r;
            CHECK_OK(mproc_rpc_call(p, "ext", NULL, &r, 30.0));
            CHECK_EQ(mproc_value_type(r), MPROC_V_EXT);
            CHECK_EQ(mproc_value_ext_type(r), 5);
            mproc_value_free(r);
        }
        CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5);
        mproc_rpc_close(p);
        mproc_rpc_server_free(s);
    }
    mproc_rpc_handler_free(h);
}

/* Names travel length-counted: "add\0junk" is not "add". */
MTEST(test_method_name_with_nul_does_not_match_a_shorter_name)
{
    mproc_rpc_handler *h = new_handler(false);
    int ran = 0;
    for (int w = 0; w < 2; w++) {
        mproc_rpc_server_opts so = sopts((mproc_rpc_wire)w, MPROC_RPC_CONNECTION, false);
        mproc_rpc_server *s = serve(h, false, &so);
        mproc_rpc_proxy *p = proxy_for(s, &so);
        mproc_value *name = mproc_value_strn("add\0junk", 8);
        CHECK(name);
        /* the proxy API takes a C string, so build the request by hand */
        mproc_connection *c = raw_connect(s);
        mproc_buf m = {0};
        mproc_value *args = ints2(1, 2);
        if (w == MPROC_RPC_MSGPACK) {
            mproc_value *req = list_of(4, mproc_value_int(0), mproc_value_int(1), name, args);
            CHECK_OK(mproc_msgpack_encode(req, &m));
            mproc_value_free(req);
        } else {
            mproc_value *req = list_of(3, name, args, mproc_value_map());
            mproc_buf inner = {0};
            CHECK_OK(mproc_pickle_encode(req, 4, &inner));
            mproc_value *by = mproc_value_bytes(inner.data, inner.len);
            CHECK_OK(mproc_pickle_encode(by, 4, &m));
            mproc_value_free(by);
            mproc_value_free(req);
            free(inner.data);
        }
        CHECK_OK(mproc_connection_send_bytes(c, m.data, m.len));
        free(m.data);
        void *buf;
        size_t n;
        CHECK_OK(mproc_connection_recv_bytes(c, &buf, &n, 30.0));
        mproc_value *v = NULL;
        if (w == MPROC_RPC_MSGPACK) {
            mproc_value *resp;
            CHECK_OK(mproc_msgpack_decode(buf, n, NULL, &resp));
            char *r = mproc_value_repr(resp);
            if (mproc_value_type(mproc_value_at(resp, 2)) == MPROC_V_NIL) {
                fprintf(stderr, "msgpack: 'add\\0junk' ran add: %s\n", r);
                ran++;
            }
            free(r);
            mproc_value_free(resp);
        } else {
            mproc_value *outer;
            CHECK_OK(mproc_pickle_decode(buf, n, NULL, &outer));
            size_t bn;
            const void *inner = mproc_value_as_bytes(outer, &bn);
            CHECK_OK(mproc_pickle_decode(inner, bn, NULL, &v));
            if (mproc_value_type(v) != MPROC_V_ERROR) {
                char *r = mproc_value_repr(v);
                fprintf(stderr, "python: 'add\\0junk' ran add: %s\n", r);
                free(r);
                ran++;
            }
            mproc_value_free(v);
            mproc_value_free(outer);
        }
        free(buf);
        mproc_connection_close(c);
        CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5);
        mproc_rpc_close(p);
        mproc_rpc_server_free(s);
    }
    mproc_rpc_handler_free(h);
    CHECK_EQ(ran, 0);
}

/* ------------------------------------------------------ python3 peers */

/* argv ran and exited 0. */
static bool run_ok(char *const argv[])
{
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return false;
    int st;
    CHECK_EQ(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static bool have_python(void)
{
    char *argv[] = {"python3", "-c", "import multiprocessing.connection", NULL};
    if (run_ok(argv))
        return true;
    printf("SKIP: python3 is not on PATH (or cannot import multiprocessing)\n");
    return false;
}

/* (a) seed 001's RPCProxy, unmodified, against a C server. */
static void scenario_seed_proxy_calls_c(bool tcp)
{
    if (!have_python())
        return;
    mproc_rpc_handler *h = new_handler(false);
    mproc_rpc_server_opts so = sopts(MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION, true);
    mproc_rpc_server *s = serve(h, tcp, &so);
    peer py;
    char *argv[] = {"python3", RPC_SEED_PY, "client", (char *)mproc_rpc_server_address(s),
                    (char *)KEY_HEX, NULL};
    peer_start(&py, argv, false);
    peer_expect(&py, "add 5");
    peer_expect(&py, "sub 6");
    peer_expect(&py, "scale 12");
    peer_expect(&py, "echo [[1, 2.5, 's', b'b', None, True, [1, [2]], {'k': 'v'}], None]");
    peer_expect(&py, "TypeError add() takes two ints");
    peer_expect_prefix(&py, "AttributeError ");
    peer_expect(&py, "ZeroDivisionError division by zero");
    peer_expect(&py, "add 42");
    peer_expect(&py, "done");
    peer_finish(&py);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

MTEST(test_seed_rpcproxy_calls_c_server_tcp) { scenario_seed_proxy_calls_c(true); }
MTEST(test_seed_rpcproxy_calls_c_server_unix) { scenario_seed_proxy_calls_c(false); }

/* (b) a C proxy against rpc_server of the seed's design in python3. */
static void scenario_c_proxy_calls_seed(bool tcp)
{
    if (!have_python())
        return;
    char want[128];
    if (tcp)
        snprintf(want, sizeof want, "tcp:127.0.0.1:0");
    else
        unix_addr(want, sizeof want);
    peer py;
    char *argv[] = {"python3", RPC_SEED_PY, "server", want, (char *)KEY_HEX, NULL};
    peer_start(&py, argv, true);
    char line[256];
    peer_line(&py, line, sizeof line);
    CHECK(strncmp(line, "address ", 8) == 0);
    const char *addr = line + 8;
    if (!tcp)
        CHECK_EQ(strcmp(addr, want), 0);
    mproc_rpc_proxy_opts po = {.wire = MPROC_RPC_PYTHON, .authkey = KEY, .authkey_len = strlen(KEY)};
    mproc_rpc_proxy *p, *p2;
    CHECK_OK(mproc_rpc_connect(&p, addr, &po));
    CHECK_OK(mproc_rpc_connect(&p2, addr, &po)); /* a thread per client there */
    CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5);
    CHECK_EQ(call_int(p2, "sub", ints2(10, 4)), 6);
    CHECK_EQ(call_int(p, "div", ints2(7, 2)), 3);

    mproc_value *kw = map1("factor", mproc_value_int(4)), *a = list_of(1, mproc_value_int(3)), *r;
    CHECK_OK(mproc_rpc_call_kw(p, "scale", a, kw, &r, 30.0));
    CHECK_EQ(mproc_value_as_int(r), 12);
    mproc_value_free(r);
    CHECK_OK(mproc_rpc_call_kw(p, "echo", a, kw, &r, 30.0));
    check_repr(r, "[[3], {'factor': 4}]");
    mproc_value_free(r);
    mproc_value_free(a);
    mproc_value_free(kw);

    a = rich_args();
    CHECK_OK(mproc_rpc_call(p2, "echo", a, &r, 30.0));
    CHECK(mproc_value_equal(mproc_value_at(r, 0), a));
    CHECK_EQ(mproc_value_type(mproc_value_at(r, 1)), MPROC_V_NIL);
    mproc_value_free(r);
    mproc_value_free(a);

    /* Python says "integer division or modulo by zero" for // */
    expect_remote(p, "div", ints2(1, 0), "ZeroDivisionError", "by zero");
    expect_remote(p, "add", list_of(2, mproc_value_str("a"), mproc_value_int(1)), "TypeError",
                  "can only concatenate str");
    expect_remote(p2, "nosuch", NULL, "KeyError", "nosuch"); /* the seed's dict lookup */
    /* args (2, 'nope'); the message is not checked: the pickle decoder keeps
     * only the first argument ("2") where Python's str() says "[Errno 2] nope" */
    expect_remote(p2, "oserror", NULL, "FileNotFoundError", "");
    CHECK_EQ(call_int(p2, "add", ints2(1, 1)), 2);
    /* an exception of a class defined in Python's __main__: C cannot rebuild
     * it (decoding never imports), so the answer is refused */
    mproc_rpc_proxy *p3;
    CHECK_OK(mproc_rpc_connect(&p3, addr, &po));
    CHECK_EQ(call_rc(p3, "custom", NULL, 30.0), MPROC_EPROTO);
    mproc_rpc_close(p3);
    CHECK_EQ(call_int(p, "add", ints2(40, 2)), 42);
    mproc_rpc_close(p);
    mproc_rpc_close(p2);
    peer_finish(&py); /* closing its stdin ends it */
}

MTEST(test_c_proxy_calls_seed_python_server_tcp) { scenario_c_proxy_calls_seed(true); }
MTEST(test_c_proxy_calls_seed_python_server_unix) { scenario_c_proxy_calls_seed(false); }

/* An independent msgpack-rpc client: Debian's python3-msgpack on a plain socket. */
MTEST(test_python_msgpack_client_over_stream)
{
    char *probe[] = {"/usr/bin/python3", "-c", "import msgpack", NULL};
    if (!run_ok(probe)) {
        printf("SKIP: /usr/bin/python3 cannot import msgpack (apt-get install python3-msgpack; "
               "`make deps` does it)\n");
        return;
    }
    for (int tcp = 0; tcp < 2; tcp++) {
        atomic_store(&g_recorded, 0);
        mproc_rpc_handler *h = new_handler(false);
        mproc_rpc_server_opts so = sopts(MPROC_RPC_MSGPACK, MPROC_RPC_STREAM, false);
        mproc_rpc_server *s = serve(h, tcp, &so);
        peer py;
        char *argv[] = {"/usr/bin/python3", RPC_MSGPACK_PY, (char *)mproc_rpc_server_address(s),
                        NULL};
        peer_start(&py, argv, false);
        peer_expect(&py, "ok 2510");
        peer_finish(&py);
        mproc_rpc_server_free(s);
        mproc_rpc_handler_free(h);
    }
}

/* ------------------------------------------------------ load */

static void load_client(const char *addr, int idx, int ncalls)
{
    mproc_rpc_proxy *p;
    int rc = mproc_rpc_connect(&p, addr, NULL);
    if (rc) {
        fprintf(stderr, "client %d: connect: %s\n", idx, mproc_errname(rc));
        _exit(2);
    }
    int64_t base = (int64_t)(idx + 1) << 32;
    for (int k = 0; k < ncalls; k++) {
        mproc_value *a = ints2(base + k, (int64_t)k * 3 + idx), *r = NULL;
        rc = mproc_rpc_call(p, "add", a, &r, 30.0);
        mproc_value_free(a);
        if (rc || mproc_value_type(r) != MPROC_V_INT ||
            mproc_value_as_int(r) != base + k + (int64_t)k * 3 + idx) {
            fprintf(stderr, "client %d call %d: %s %s\n", idx, k, mproc_errname(rc), mproc_errmsg());
            _exit(1);
        }
        mproc_value_free(r);
    }
    mproc_rpc_close(p);
    _exit(0);
}

MTEST(test_load_32_clients_many_calls_each)
{
    mproc_rpc_handler *h = new_handler(false);
    char addr[128];
    unix_addr(addr, sizeof addr);
    mproc_rpc_server *s;
    CHECK_OK(mproc_rpc_server_new(&s, h, addr, NULL));
    /* The clients are forked before the server has threads; the kernel's
     * backlog holds their connections until it starts. */
    pid_t pids[LOAD_CLIENTS];
    for (int i = 0; i < LOAD_CLIENTS; i++) {
        fflush(NULL);
        pids[i] = fork();
        CHECK(pids[i] >= 0);
        if (pids[i] == 0)
            load_client(mproc_rpc_server_address(s), i, LOAD_CALLS);
    }
    double t0 = mproc_monotonic();
    CHECK_OK(mproc_rpc_server_start(s));
    int failed = 0;
    for (int i = 0; i < LOAD_CLIENTS; i++) {
        int st;
        CHECK_EQ(waitpid(pids[i], &st, 0), pids[i]);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed++;
    }
    double dt = mproc_monotonic() - t0;
    printf("load: %d clients x %d calls in %.2f s (%.0f calls/s)\n", LOAD_CLIENTS, LOAD_CALLS, dt,
           LOAD_CLIENTS * (double)LOAD_CALLS / dt);
    CHECK_EQ(failed, 0);
    CHECK_OK(mproc_rpc_server_stop(s, 10.0));
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

/* ------------------------------------------------------ malformed input */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545f4914f6cdd1dull;
}

static size_t rnd_below(size_t n)
{
    return (size_t)(rnd() % n);
}

static void buf_add(mproc_buf *b, const void *p, size_t n)
{
    CHECK_OK(mproc_buf_append(b, p, n));
}

static void buf_random(mproc_buf *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)rnd();
        buf_add(b, &c, 1);
    }
}

static void buf_msgpack(mproc_buf *b, mproc_value *v) /* consumes v */
{
    CHECK(v);
    CHECK_OK(mproc_msgpack_encode(v, b));
    mproc_value_free(v);
}

/* Python wire framing: pickle(bytes(pickle(v))). */
static void buf_pywire(mproc_buf *b, mproc_value *v) /* consumes v */
{
    mproc_buf inner = {0};
    CHECK(v);
    CHECK_OK(mproc_pickle_encode(v, 4, &inner));
    mproc_value *by = mproc_value_bytes(inner.data, inner.len);
    CHECK(by);
    CHECK_OK(mproc_pickle_encode(by, 4, b));
    mproc_value_free(by);
    mproc_value_free(v);
    free(inner.data);
}

static mproc_value *msgpack_req(int64_t msgid, const char *method, mproc_value *params)
{
    return list_of(4, mproc_value_int(0), mproc_value_int(msgid), mproc_value_str(method), params);
}

static mproc_value *py_req(const char *method, mproc_value *args)
{
    return list_of(3, mproc_value_str(method), args, mproc_value_map());
}

/* A Connection frame around data (Python's header: 4-byte big-endian length). */
static void frame(mproc_buf *out, const void *data, size_t n)
{
    uint8_t h[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
    buf_add(out, h, 4);
    buf_add(out, data, n);
}

/* Send `b` raw, half-close, and read until the server closes (30 s at most):
 * proves it has dealt with everything sent. What it answered goes to *got. */
static void send_and_drain(mproc_connection *c, const mproc_buf *b, mproc_buf *got)
{
    int fd = mproc_connection_fileno(c);
    int rc = b->len ? mproc_write_all(fd, b->data, b->len) : 0;
    CHECK(rc == 0 || rc == MPROC_EPIPE || rc == MPROC_ECONNRESET); /* it may close early */
    shutdown(fd, SHUT_WR);
    for (;;) {
        CHECK_OK(mproc_wait_fd(fd, POLLIN, 30.0));
        uint8_t tmp[65536];
        ssize_t n = read(fd, tmp, sizeof tmp);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            break;
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n > 0);
        if (got)
            buf_add(got, tmp, (size_t)n);
    }
    mproc_connection_close(c);
}

/* One malformed message for a msgpack-rpc server (no framing). */
static void gen_msgpack_garbage(mproc_buf *b)
{
    mproc_buf v = {0};
    switch (rnd_below(9)) {
    case 0: /* random bytes */
        buf_random(b, 1 + rnd_below(256));
        break;
    case 1: /* a valid request, cut short */
        buf_msgpack(&v, msgpack_req((int64_t)rnd_below(1000), "add", ints2(1, 2)));
        buf_add(b, v.data, rnd_below(v.len));
        break;
    case 2: /* a valid request with bytes flipped */
        buf_msgpack(&v, msgpack_req((int64_t)rnd_below(1000), "echo", rich_args()));
        for (int i = 0, n = 1 + (int)rnd_below(4); i < n; i++)
            v.data[rnd_below(v.len)] ^= (uint8_t)(1 + rnd_below(255));
        buf_add(b, v.data, v.len);
        break;
    case 3: { /* huge declared lengths */
        static const uint8_t heads[][5] = {
            {0xdd, 0xff, 0xff, 0xff, 0xff}, {0xdb, 0xff, 0xff, 0xff, 0xff},
            {0xc6, 0xff, 0xff, 0xff, 0xff}, {0xdf, 0xff, 0xff, 0xff, 0xff},
            {0xc9, 0x7f, 0xff, 0xff, 0xff}, {0xdc, 0xff, 0xff, 0x00, 0x00},
        };
        uint8_t a = 0x94, z = 0x00;
        if (rnd_below(2)) /* inside a request */
            buf_add(b, &a, 1), buf_add(b, &z, 1), buf_add(b, &z, 1);
        buf_add(b, heads[rnd_below(6)], 5);
        buf_random(b, rnd_below(32));
        break;
    }
    case 4: { /* deep nesting */
        uint8_t one = 0x91, nil = 0xc0;
        for (size_t i = 0, n = 100 + rnd_below(3000); i < n; i++)
            buf_add(b, &one, 1);
        buf_add(b, &nil, 1);
        break;
    }
    case 5: { /* wrong shapes */
        mproc_value *shapes[] = {
            list_of(4, mproc_value_int(0), mproc_value_str("x"), mproc_value_str("add"), mproc_value_list()),
            list_of(1, mproc_value_int(5)),
            mproc_value_list(),
            mproc_value_str("add"),
            msgpack_req(1, "add", mproc_value_int(5)),
            list_of(4, mproc_value_int(0), mproc_value_int(2), mproc_value_int(42), mproc_value_list()),
            msgpack_req(-1, "add", ints2(1, 2)),
            msgpack_req(INT64_C(4294967296), "add", ints2(1, 2)),
            list_of(2, mproc_value_int(2), mproc_value_str("add")),
            list_of(4, mproc_value_int(1), mproc_value_int(3), mproc_value_nil(), mproc_value_nil()),
            list_of(5, mproc_value_int(0), mproc_value_int(4), mproc_value_str("add"), ints2(1, 2), mproc_value_nil()),
            map1("add", ints2(1, 2)),
        };
        size_t n = sizeof shapes / sizeof shapes[0], pick = rnd_below(n);
        for (size_t i = 0; i < n; i++) {
            if (i == pick)
                buf_msgpack(b, shapes[i]);
            else
                mproc_value_free(shapes[i]);
        }
        break;
    }
    case 6: /* a good request, then garbage */
        buf_msgpack(b, msgpack_req(5, "add", ints2(1, 2)));
        buf_random(b, 1 + rnd_below(64));
        break;
    case 7: { /* random type bytes with random payload */
        for (size_t i = 0, n = 1 + rnd_below(40); i < n; i++) {
            uint8_t c = (uint8_t)(0xc0 + rnd_below(0x20));
            buf_add(b, &c, 1);
            buf_random(b, rnd_below(5));
        }
        break;
    }
    default: /* over the server's max_message */
        buf_msgpack(b, msgpack_req(1, "echo", list_of(1, big_str(70000 + rnd_below(10000)))));
        break;
    }
    free(v.data);
}

/* Would create a file if a decoder ran what it says. */
#define EVIL_SYSTEM "cos\nsystem\n(S'touch /tmp/mproc-rpc-pwned'\ntR."

/* One malformed frame payload for the Python wire. */
static void gen_python_garbage(mproc_buf *b)
{
    mproc_buf v = {0};
    switch (rnd_below(8)) {
    case 0:
        buf_random(b, rnd_below(256));
        break;
    case 1: /* valid, cut short */
        buf_pywire(&v, py_req("add", ints2(1, 2)));
        buf_add(b, v.data, rnd_below(v.len));
        break;
    case 2: /* valid with bytes flipped */
        buf_pywire(&v, py_req("echo", rich_args()));
        for (int i = 0, n = 1 + (int)rnd_below(4); i < n; i++)
            v.data[rnd_below(v.len)] ^= (uint8_t)(1 + rnd_below(255));
        buf_add(b, v.data, v.len);
        break;
    case 3: { /* a bytes object holding garbage */
        mproc_buf g = {0};
        buf_random(&g, rnd_below(200));
        mproc_value *by = mproc_value_bytes(g.data, g.len);
        CHECK_OK(mproc_pickle_encode(by, 4, b));
        mproc_value_free(by);
        free(g.data);
        break;
    }
    case 4: { /* what a hostile peer sends: imports and calls */
#define BYTES(s) {s, sizeof s - 1}
        static const struct {
            const char *p;
            size_t n;
        } evil[] = {
            BYTES(EVIL_SYSTEM),
            BYTES("\x80\x04\x8c\x08" "builtins" "\x8c\x04" "eval" "\x93\x8c\x03" "1+1" "\x85R."),
            BYTES("c__builtin__\ngetattr\n(c__builtin__\nobject\nS'__subclasses__'\ntR."),
            BYTES("\x80\x02((((((((((((((((((((((((((((((((((((((((."),
        };
#undef BYTES
        size_t k = rnd_below(4);
        buf_add(b, evil[k].p, evil[k].n);
        break;
    }
    case 5: { /* a memo bomb: every level holds the one below ten times */
        const char *head = "\x80\x02]q\x00";
        buf_add(b, head, strlen(head));
        for (int level = 0; level < 30; level++) {
            uint8_t mark = '(', get[2] = {'h', (uint8_t)level}, list = 'l', put[2] = {'q', (uint8_t)(level + 1)};
            buf_add(b, &mark, 1);
            for (int k = 0; k < 10; k++)
                buf_add(b, get, 2);
            buf_add(b, &list, 1);
            buf_add(b, put, 2);
        }
        uint8_t stop = '.';
        buf_add(b, &stop, 1);
        break;
    }
    case 6: { /* wrong shapes */
        mproc_value *shapes[] = {
            mproc_value_int(42),
            list_of(1, mproc_value_str("add")),
            list_of(3, mproc_value_int(1), mproc_value_list(), mproc_value_map()),
            list_of(3, mproc_value_str("add"), mproc_value_int(5), mproc_value_map()),
            list_of(3, mproc_value_str("add"), mproc_value_list(), mproc_value_int(5)),
            map1("add", ints2(1, 2)),
        };
        size_t n = sizeof shapes / sizeof shapes[0], pick = rnd_below(n);
        for (size_t i = 0; i < n; i++) {
            if (i == pick)
                buf_pywire(b, shapes[i]);
            else
                mproc_value_free(shapes[i]);
        }
        break;
    }
    default: { /* deep nesting: ((((...llll */
        const char *head = "\x80\x02";
        buf_add(b, head, 2);
        size_t n = 1000 + rnd_below(20000);
        for (size_t i = 0; i < n; i++)
            buf_add(b, "(", 1);
        for (size_t i = 0; i < n; i++)
            buf_add(b, "l", 1);
        buf_add(b, ".", 1);
        break;
    }
    }
    free(v.data);
}

static void scenario_fuzz(mproc_rpc_wire w, mproc_rpc_transport t, int iterations)
{
    g_rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)(w * 3 + t);
    printf("fuzz seed %#llx, %d iterations\n", (unsigned long long)g_rng, iterations);
    mproc_rpc_handler *h = new_handler(false);
    mproc_rpc_server_opts so = sopts(w, t, false);
    so.max_message = 65536;
    mproc_rpc_server *s = serve(h, false, &so);
    mproc_rpc_proxy *good = proxy_for(s, &so);
    for (int i = 0; i < iterations; i++) {
        mproc_buf payload = {0}, out = {0};
        if (w == MPROC_RPC_PYTHON)
            gen_python_garbage(&payload);
        else
            gen_msgpack_garbage(&payload);
        if (t == MPROC_RPC_CONNECTION) {
            switch (rnd_below(8)) {
            case 0: { /* a broken frame header */
                static const uint8_t heads[][12] = {
                    {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
                    {0x80, 0x00, 0x00, 0x00},
                    {0x7f, 0xff, 0xff, 0xff},
                    {0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00},
                };
                size_t k = rnd_below(4);
                buf_add(&out, heads[k], k == 1 || k == 2 ? 4 : 12);
                buf_add(&out, payload.data, payload.len);
                break;
            }
            case 1: /* a frame cut short */
                frame(&out, payload.data, payload.len);
                out.len = rnd_below(out.len + 1);
                break;
            default:
                frame(&out, payload.data, payload.len);
                break;
            }
        } else {
            buf_add(&out, payload.data, payload.len);
        }
        send_and_drain(raw_connect(s), &out, NULL);
        free(payload.data);
        free(out.data);
        CHECK_EQ(call_int(good, "add", ints2(i, 1)), i + 1);
        if (i % 16 == 15) {
            mproc_rpc_proxy *fresh = proxy_for(s, &so);
            CHECK_EQ(call_int(fresh, "sub", ints2(i, 1)), i - 1);
            mproc_rpc_close(fresh);
        }
    }
    wait_connections(s, 1); /* only the good client is left */
    mproc_rpc_close(good);
    CHECK_OK(mproc_rpc_server_stop(s, 10.0));
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
    CHECK(access("/tmp/mproc-rpc-pwned", F_OK) != 0);
}

MTEST(test_fuzz_msgpack_connection) { scenario_fuzz(MPROC_RPC_MSGPACK, MPROC_RPC_CONNECTION, 300); }
MTEST(test_fuzz_python_connection) { scenario_fuzz(MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION, 300); }
MTEST(test_fuzz_msgpack_stream) { scenario_fuzz(MPROC_RPC_MSGPACK, MPROC_RPC_STREAM, 300); }

/* Decode the answer frames a Connection transport sent (or the stream's objects). */
static mproc_value *answers(const mproc_buf *got, mproc_rpc_transport t, mproc_rpc_wire w)
{
    mproc_value *l = mproc_value_list();
    CHECK(l);
    size_t off = 0;
    while (off < got->len) {
        const uint8_t *p = got->data + off;
        size_t n;
        if (t == MPROC_RPC_CONNECTION) {
            CHECK(got->len - off >= 4);
            n = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
            p += 4;
            CHECK(got->len - off - 4 >= n);
            off += 4 + n;
        } else {
            n = got->len - off; /* tests put one answer at most on a stream */
            off = got->len;
        }
        mproc_value *v;
        if (w == MPROC_RPC_MSGPACK) {
            CHECK_OK(mproc_msgpack_decode(p, n, NULL, &v));
        } else {
            mproc_value *outer;
            CHECK_OK(mproc_pickle_decode(p, n, NULL, &outer));
            size_t bn;
            const void *inner = mproc_value_as_bytes(outer, &bn);
            CHECK(inner);
            CHECK_OK(mproc_pickle_decode(inner, bn, NULL, &v));
            mproc_value_free(outer);
        }
        CHECK_OK(mproc_value_append(l, v));
    }
    return l;
}

/* Requests of a bad shape: answered when their msgid could be read, and the
 * connection is closed either way; the server goes on serving. */
/* A server that answers each request of one connection with crafted bytes:
 * answer(msgid, k, out) writes the k-th answer frame(s) for the request. */
typedef struct crafted {
    mproc_listener *l;
    int (*answer)(uint32_t id, int k, mproc_buf *out, size_t *cut); /* frames: out split at cut */
    int served;
} crafted;

static void *crafted_main(void *arg)
{
    crafted *cr = arg;
    for (int conn = 0, k = 0; conn < 2; conn++) {
        mproc_connection *c;
        if (mproc_listener_accept(cr->l, &c, 30.0) != 0)
            return NULL;
        for (;; k++) {
            void *buf;
            size_t n;
            if (mproc_connection_recv_bytes(c, &buf, &n, 30.0) != 0)
                break;
            mproc_value *req = NULL;
            int rc = mproc_msgpack_decode(buf, n, NULL, &req);
            free(buf);
            if (rc)
                break;
            uint32_t id = (uint32_t)mproc_value_as_int(mproc_value_at(req, 1));
            mproc_value_free(req);
            mproc_buf out = {0};
            size_t cut = 0;
            int frames = cr->answer(id, k, &out, &cut);
            if (frames == 2)
                rc = mproc_connection_send_bytes(c, out.data, cut) ||
                     mproc_connection_send_bytes(c, out.data + cut, out.len - cut);
            else
                rc = mproc_connection_send_bytes(c, out.data, out.len);
            free(out.data);
            cr->served++;
            if (rc)
                break;
        }
        mproc_connection_close(c);
    }
    return NULL;
}

/* The answers a proxy reads in place ([1, msgid, nil, result]) and those
 * it decodes whole, case k: */
static int crafted_answer(uint32_t id, int k, mproc_buf *out, size_t *cut)
{
    uint8_t h[16];
    switch (k) {
    case 0: /* msgid as uint32, result 5 */
        h[0] = 0x94, h[1] = 0x01, h[2] = 0xce;
        h[3] = (uint8_t)(id >> 24), h[4] = (uint8_t)(id >> 16), h[5] = (uint8_t)(id >> 8), h[6] = (uint8_t)id;
        h[7] = 0xc0, h[8] = 0x05;
        buf_add(out, h, 9);
        return 1;
    case 1: /* a late answer (another msgid), then this one's: 8 */
        buf_add(out, "\x94\x01\xcd\xff\xfe\xc0\x07", 7);
        *cut = out->len;
        buf_msgpack(out, list_of(4, mproc_value_int(1), mproc_value_int(id), mproc_value_nil(),
                                 mproc_value_int(8)));
        return 2;
    case 2: /* an error: decoded whole */
        buf_msgpack(out, list_of(4, mproc_value_int(1), mproc_value_int(id),
                                 list_of(2, mproc_value_str("ValueError"), mproc_value_str("bad")),
                                 mproc_value_nil()));
        return 1;
    case 3: /* a result that is not msgpack: EPROTO, and the proxy is done */
        h[0] = 0x94, h[1] = 0x01, h[2] = (uint8_t)(id & 0x7f), h[3] = 0xc0, h[4] = 0xc1;
        buf_add(out, h, 5);
        return 1;
    default: /* (second connection) a late answer that is not msgpack: the same */
        buf_add(out, "\x94\x01\xcd\xff\xfe\xc0\xc1", 7);
        return 1;
    }
}

MTEST(test_proxy_reads_answers_in_place_and_whole)
{
    crafted cr = {.answer = crafted_answer};
    char addr[64];
    snprintf(addr, sizeof addr, "unix:@mproc-test-crafted-%d", (int)getpid());
    CHECK_OK(mproc_listener_new(&cr.l, addr, NULL));
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, crafted_main, &cr), 0);
    mproc_rpc_proxy_opts po = {.wire = MPROC_RPC_MSGPACK, .no_shm = true};
    mproc_rpc_proxy *p;
    CHECK_OK(mproc_rpc_connect(&p, mproc_listener_address(cr.l), &po));
    CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5);
    CHECK_EQ(call_int(p, "add", ints2(4, 4)), 8);
    expect_remote(p, "add", ints2(0, 0), "ValueError", "bad");
    CHECK_EQ(call_rc(p, "add", ints2(1, 1), 30.0), MPROC_EPROTO);
    CHECK(strstr(mproc_errmsg(), "malformed answer"));
    CHECK_EQ(call_rc(p, "add", ints2(1, 1), 30.0), MPROC_ECLOSED); /* broken now */
    mproc_rpc_close(p);
    CHECK_OK(mproc_rpc_connect(&p, mproc_listener_address(cr.l), &po));
    CHECK_EQ(call_rc(p, "add", ints2(1, 1), 30.0), MPROC_EPROTO);
    CHECK(strstr(mproc_errmsg(), "malformed answer"));
    mproc_rpc_close(p);
    CHECK_EQ(pthread_join(th, NULL), 0);
    CHECK_EQ(cr.served, 5);
    mproc_listener_close(cr.l);
}

static void scenario_msgpack_shapes(mproc_rpc_transport t)
{
    mproc_rpc_handler *h = new_handler(false);
    mproc_rpc_server_opts so = sopts(MPROC_RPC_MSGPACK, t, false);
    mproc_rpc_server *s = serve(h, false, &so);
    struct {
        mproc_value *msg; /* NULL: raw bytes */
        const char *raw;
        size_t rawlen;
        const char *want; /* repr of the answers */
    } cases[] = {
        {list_of(4, mproc_value_int(0), mproc_value_str("x"), mproc_value_str("add"), mproc_value_list()), NULL, 0, "[]"},
        {list_of(1, mproc_value_int(5)), NULL, 0, "[]"},
        {mproc_value_list(), NULL, 0, "[]"},
        {mproc_value_str("add"), NULL, 0, "[]"},
        {msgpack_req(-1, "add", ints2(1, 2)), NULL, 0, "[]"},
        {msgpack_req(INT64_C(4294967296), "add", ints2(1, 2)), NULL, 0, "[]"},
        {list_of(2, mproc_value_int(2), mproc_value_str("add")), NULL, 0, "[]"},
        {list_of(4, mproc_value_int(1), mproc_value_int(3), mproc_value_nil(), mproc_value_nil()), NULL, 0, "[]"},
        {list_of(5, mproc_value_int(0), mproc_value_int(4), mproc_value_str("add"), ints2(1, 2), mproc_value_nil()), NULL, 0, "[]"},
        {NULL, "\xdd\xff\xff\xff\xff", 5, "[]"},
        {NULL, "\x94\x00\x07\xdb\xff\xff\xff\xff" "abc", 11, "[]"},
        {NULL, "\xc1", 1, "[]"},
        {msgpack_req(1, "add", mproc_value_int(5)), NULL, 0, "[[1, 1, ['TypeError', "},
        {list_of(4, mproc_value_int(0), mproc_value_int(2), mproc_value_int(42), mproc_value_list()), NULL, 0, "[[1, 2, ['TypeError', "},
        {msgpack_req(UINT32_MAX, "add", ints2(1, 2)), NULL, 0, "[[1, 4294967295, None, 3]]"},
#define RAW(lit) NULL, lit, sizeof lit - 1
        /* headers the server reads in place: each msgid and str width */
        {RAW("\x94\x00\xcc\xc8\xa3" "add" "\x92\x01\x02"), "[[1, 200, None, 3]]"},
        {RAW("\x94\x00\xcd\x01\x00\xa3" "add" "\x92\x01\x02"), "[[1, 256, None, 3]]"},
        {RAW("\x94\x00\xce\x00\x01\x00\x00\xa3" "add" "\x92\x01\x02"), "[[1, 65536, None, 3]]"},
        {RAW("\x94\x00\xcf\x00\x00\x00\x00\x00\x00\x00\x05\xa3" "add" "\x92\x01\x02"), "[[1, 5, None, 3]]"},
        {RAW("\x94\x00\x01\xd9\x03" "add" "\x92\x01\x02"), "[[1, 1, None, 3]]"},
        {RAW("\x94\x00\x01\xda\x00\x03" "add" "\x92\x01\x02"), "[[1, 1, None, 3]]"},
        {RAW("\x94\x00\x02\xa4" "ad\x00" "d" "\x90"), "[[1, 2, ['TypeError', 'malformed request: a NUL"},
        {RAW("\x94\x00\x03\xa3\xff\xfe\xfd\x90"), "[]"},
        {RAW("\x94\x00\x03\xa3" "add" "\x05"), "[[1, 3, ['TypeError', 'malformed request: method must"},
        {RAW("\x94\x00\x06\xd9\x46" "a_method_name_longer_than_the_buffer_kept_for_names_in_the_request_xyz" "\x90"),
         "[[1, 6, ['AttributeError', \"no function 'a_method_name_longer_than_the_buffer_kept_for_names_in_the_request_xyz'\"]"},
        {RAW("\x94\x00\x04\xa3" "add" "\x92\x01\xc1"), "[]"},
        {RAW("\x94\x00\x02\xa4" "ad\x00" "d" "\xc1"), "[]"}, /* the params fail first */
#undef RAW
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mproc_buf m = {0}, out = {0}, got = {0};
        if (cases[i].msg)
            buf_msgpack(&m, cases[i].msg);
        else
            buf_add(&m, cases[i].raw, cases[i].rawlen);
        if (t == MPROC_RPC_CONNECTION)
            frame(&out, m.data, m.len);
        else
            buf_add(&out, m.data, m.len);
        send_and_drain(raw_connect(s), &out, &got);
        mproc_value *a = answers(&got, t, MPROC_RPC_MSGPACK);
        char *r = mproc_value_repr(a);
        if (strncmp(r, cases[i].want, strlen(cases[i].want)) != 0) {
            fprintf(stderr, "case %zu: answers %s, want %s...\n", i, r, cases[i].want);
            CHECK(0);
        }
        free(r);
        mproc_value_free(a);
        free(m.data);
        free(out.data);
        free(got.data);
    }
    /* a good request, then a bad one, on one connection: the first is answered */
    mproc_buf m = {0}, out = {0}, got = {0};
    buf_msgpack(&m, msgpack_req(9, "add", ints2(1, 2)));
    if (t == MPROC_RPC_CONNECTION) {
        frame(&out, m.data, m.len);
        frame(&out, "\xc1", 1);
    } else {
        buf_add(&out, m.data, m.len);
        buf_add(&out, "\xc1", 1);
    }
    send_and_drain(raw_connect(s), &out, &got);
    mproc_value *a = answers(&got, t, MPROC_RPC_MSGPACK);
    check_repr(a, "[[1, 9, None, 3]]");
    mproc_value_free(a);
    free(m.data);
    free(out.data);
    free(got.data);

    mproc_rpc_proxy *p = proxy_for(s, &so);
    CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5);
    mproc_rpc_close(p);
    wait_connections(s, 0);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

MTEST(test_msgpack_bad_shapes_answered_or_closed_connection) { scenario_msgpack_shapes(MPROC_RPC_CONNECTION); }
MTEST(test_msgpack_bad_shapes_answered_or_closed_stream) { scenario_msgpack_shapes(MPROC_RPC_STREAM); }

/* On the Python wire every bad frame is answered with a TypeError and the
 * connection goes on (the wire has no ids to lose track of). */
MTEST(test_python_bad_frames_get_typeerror_and_connection_goes_on)
{
    mproc_rpc_handler *h = new_handler(false);
    mproc_rpc_server_opts so = sopts(MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION, false);
    so.max_message = 65536;
    mproc_rpc_server *s = serve(h, false, &so);
    mproc_connection *c = raw_connect(s);
    g_rng = 12345;
    for (int i = 0; i < 120; i++) {
        mproc_buf m = {0};
        gen_python_garbage(&m);
        if (m.len > 65536) { /* over max_message: not here */
            free(m.data);
            continue;
        }
        CHECK_OK(mproc_connection_send_bytes(c, m.data, m.len));
        free(m.data);
        void *buf;
        size_t n;
        CHECK_OK(mproc_connection_recv_bytes(c, &buf, &n, 30.0));
        mproc_buf got = {0};
        frame(&got, buf, n);
        free(buf);
        mproc_value *a = answers(&got, MPROC_RPC_CONNECTION, MPROC_RPC_PYTHON);
        free(got.data);
        mproc_value *v = mproc_value_at(a, 0);
        /* a flipped byte can leave a request that runs: any answer is fine then */
        if (mproc_value_type(v) == MPROC_V_ERROR && strcmp(mproc_value_error_type(v), "TypeError") != 0 &&
            strcmp(mproc_value_error_type(v), "AttributeError") != 0) {
            char *r = mproc_value_repr(v);
            fprintf(stderr, "iteration %d: answer %s\n", i, r);
            free(r);
            CHECK(0);
        }
        mproc_value_free(a);
    }
    /* the fixed cases, each answered exactly */
    struct {
        const char *raw;
        size_t len;
        mproc_value *req; /* pywire-encoded if not raw */
        const char *want;
    } cases[] = {
        {"", 0, NULL, "TypeError"},
        {"garbage", 7, NULL, "TypeError"},
        {EVIL_SYSTEM, sizeof EVIL_SYSTEM - 1, NULL, "TypeError"},
        {NULL, 0, mproc_value_int(42), "TypeError"},
        {NULL, 0, list_of(3, mproc_value_str("add"), mproc_value_int(5), mproc_value_map()), "TypeError"},
        {NULL, 0, list_of(3, mproc_value_str("add"), ints2(1, 2), mproc_value_nil()), "3"},
        {NULL, 0, py_req("add", ints2(20, 22)), "42"},
        {NULL, 0, py_req("nosuch", mproc_value_list()), "AttributeError"},
        /* the outer layer read without decoding it: each bytes op, with
         * and without PROTO, FRAME and MEMOIZE, and lengths that lie */
#define INNER "\x80\x04\x8c\x03" "add" "K\x14K\x16\x86}\x87." /* ('add', (20, 22), {}) */
        {"\x80\x04" "B\x0f\x00\x00\x00" INNER ".", 23, NULL, "42"},
        {"\x8e\x0f\x00\x00\x00\x00\x00\x00\x00" INNER ".", 25, NULL, "42"},
        {"\x80\x04\x95\x12\x00\x00\x00\x00\x00\x00\x00" "C\x0f" INNER "\x94.", 30, NULL, "42"},
        {"\x80\x04" "C\x14" INNER ".", 20, NULL, "TypeError"},
        {"\x80\x04" "C\x0e" INNER ".", 20, NULL, "TypeError"},
        {"\x80\x04" "C\x0f" INNER ".x", 21, NULL, "TypeError"},
        {"\x80\x04" "C\x0f" INNER, 19, NULL, "TypeError"},
        {"\x80\x04" "C\x0f" INNER "\x94", 20, NULL, "TypeError"},
        {"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\xff" INNER ".", 27, NULL, "TypeError"},
        {"\x80\x04\x95\x01", 4, NULL, "TypeError"},
        {"\x80\x04" "B\x0f\x00", 5, NULL, "TypeError"},
        {"\x80\x06" "C\x0f" INNER ".", 20, NULL, "TypeError"}, /* protocol 6 */
        {"\x80\x04\x95\xff\x00\x00\x00\x00\x00\x00\x00" "C\x0f" INNER ".", 29, NULL, "TypeError"},
#undef INNER
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mproc_buf m = {0};
        if (cases[i].req)
            buf_pywire(&m, cases[i].req);
        else
            buf_add(&m, cases[i].raw, cases[i].len);
        CHECK_OK(mproc_connection_send_bytes(c, m.data, m.len));
        free(m.data);
        void *buf;
        size_t n;
        CHECK_OK(mproc_connection_recv_bytes(c, &buf, &n, 30.0));
        mproc_buf got = {0};
        frame(&got, buf, n);
        free(buf);
        mproc_value *a = answers(&got, MPROC_RPC_CONNECTION, MPROC_RPC_PYTHON);
        free(got.data);
        mproc_value *v = mproc_value_at(a, 0);
        char *r = mproc_value_repr(v);
        const char *type = mproc_value_type(v) == MPROC_V_ERROR ? mproc_value_error_type(v) : r;
        if (strcmp(type, cases[i].want) != 0) {
            fprintf(stderr, "case %zu: answer %s, want %s\n", i, r, cases[i].want);
            CHECK(0);
        }
        free(r);
        mproc_value_free(a);
    }
    /* the request sent as the tuple itself (conn.send((name, args, kwargs))) works too */
    mproc_value *req = py_req("add", ints2(1, 1));
    CHECK_OK(mproc_connection_send(c, req));
    mproc_value_free(req);
    mproc_value *ans;
    CHECK_OK(mproc_connection_recv(c, &ans, 30.0));
    size_t bn;
    const void *inner = mproc_value_as_bytes(ans, &bn);
    CHECK(inner);
    mproc_value *v;
    CHECK_OK(mproc_pickle_decode(inner, bn, NULL, &v));
    CHECK_EQ(mproc_value_as_int(v), 2);
    mproc_value_free(v);
    mproc_value_free(ans);
    /* a frame over max_message ends the connection */
    mproc_buf big = {0};
    buf_pywire(&big, py_req("echo", list_of(1, big_str(70000))));
    mproc_buf out = {0};
    frame(&out, big.data, big.len);
    send_and_drain(c, &out, NULL);
    free(big.data);
    free(out.data);
    CHECK(access("/tmp/mproc-rpc-pwned", F_OK) != 0);

    mproc_rpc_proxy *p = proxy_for(s, &so);
    CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5);
    mproc_rpc_close(p);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

/* Garbage or silence where the authkey handshake belongs: the server drops
 * such clients and keeps accepting (the handshake runs off the accept thread). */
MTEST(test_handshake_garbage_and_stalled_clients_do_not_stop_the_server)
{
    mproc_rpc_handler *h = new_handler(false);
    mproc_rpc_server_opts so = sopts(MPROC_RPC_PYTHON, MPROC_RPC_CONNECTION, true);
    mproc_rpc_server *s = serve(h, false, &so);
    mproc_connection *stalled = raw_connect(s); /* says nothing */
    g_rng = 777;
    for (int i = 0; i < 50; i++) {
        mproc_buf out = {0};
        if (i % 2)
            buf_random(&out, rnd_below(300));
        else
            frame(&out, "#CHALLENGE#", 11);
        send_and_drain(raw_connect(s), &out, NULL);
        free(out.data);
    }
    mproc_rpc_proxy *p = proxy_for(s, &so);
    CHECK_EQ(call_int(p, "add", ints2(2, 3)), 5);
    CHECK_EQ(mproc_rpc_server_connections(s), 2); /* the stalled one and p */
    mproc_connection_close(stalled);
    wait_connections(s, 1);
    mproc_rpc_close(p);
    mproc_rpc_server_free(s);
    mproc_rpc_handler_free(h);
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    signal(SIGPIPE, SIG_IGN);
    static const mtest_case cases[] = {
        MTEST_ENTRY(test_handler_register_unregister_and_sorted_names),
        MTEST_ENTRY(test_handler_rejects_bad_arguments),
        MTEST_ENTRY(test_handler_call_results_and_errors),
        MTEST_ENTRY(test_msgpack_unix_connection),
        MTEST_ENTRY(test_msgpack_tcp_connection),
        MTEST_ENTRY(test_msgpack_unix_connection_authkey),
        MTEST_ENTRY(test_msgpack_tcp_connection_authkey),
        MTEST_ENTRY(test_python_unix_connection),
        MTEST_ENTRY(test_python_unix_connection_authkey),
        MTEST_ENTRY(test_python_tcp_connection_authkey),
        MTEST_ENTRY(test_msgpack_unix_stream),
        MTEST_ENTRY(test_msgpack_tcp_stream),
        MTEST_ENTRY(test_stream_request_split_anywhere),
        MTEST_ENTRY(test_call_timeout_covers_a_send_the_server_never_reads),
        MTEST_ENTRY(test_python_wire_unknown_exception_type_keeps_its_message),
        MTEST_ENTRY(test_stop_with_idle_clients_is_not_a_timeout),
        MTEST_ENTRY(test_idle_timeout_closes_silent_connections_only),
        MTEST_ENTRY(test_non_ascii_errors_and_names),
        MTEST_ENTRY(test_wrong_authkey_is_eauth_and_server_keeps_serving),
        MTEST_ENTRY(test_invalid_options_are_einval),
        MTEST_ENTRY(test_server_lifecycle_edges),
        MTEST_ENTRY(test_mismatched_wire_or_transport_fails_cleanly),
        MTEST_ENTRY(test_functions_registered_while_serving),
        MTEST_ENTRY(test_blocked_call_does_not_hold_other_clients),
        MTEST_ENTRY(test_msgpack_timeout_keeps_proxy_and_skips_late_answer),
        MTEST_ENTRY(test_msgpack_stream_timeout_keeps_proxy_and_skips_late_answer),
        MTEST_ENTRY(test_python_timeout_closes_proxy),
        MTEST_ENTRY(test_stop_lets_call_in_flight_finish_msgpack),
        MTEST_ENTRY(test_stop_lets_call_in_flight_finish_python),
        MTEST_ENTRY(test_stop_lets_call_in_flight_finish_stream),
        MTEST_ENTRY(test_stop_cuts_call_longer_than_timeout_msgpack),
        MTEST_ENTRY(test_stop_cuts_call_longer_than_timeout_python),
        MTEST_ENTRY(test_stop_cuts_call_longer_than_timeout_stream),
        MTEST_ENTRY(test_stopped_server_gives_eclosed_msgpack),
        MTEST_ENTRY(test_stopped_server_gives_eclosed_python),
        MTEST_ENTRY(test_stopped_server_gives_eclosed_stream),
        MTEST_ENTRY(test_stopped_server_refuses_new_connections),
        MTEST_ENTRY(test_killed_server_gives_eclosed_msgpack),
        MTEST_ENTRY(test_killed_server_gives_eclosed_python),
        MTEST_ENTRY(test_killed_server_gives_eclosed_stream),
        MTEST_ENTRY(test_max_connections_closes_extra_msgpack),
        MTEST_ENTRY(test_max_connections_closes_extra_python_authkey),
        MTEST_ENTRY(test_max_connections_closes_extra_stream),
        MTEST_ENTRY(test_request_over_proxy_max_message_is_emsgsize),
        MTEST_ENTRY(test_server_max_message_drops_oversized_request_and_keeps_serving),
        MTEST_ENTRY(test_unencodable_result_is_typeerror_on_python_wire),
        MTEST_ENTRY(test_method_name_with_nul_does_not_match_a_shorter_name),
        MTEST_ENTRY(test_seed_rpcproxy_calls_c_server_tcp),
        MTEST_ENTRY(test_seed_rpcproxy_calls_c_server_unix),
        MTEST_ENTRY(test_c_proxy_calls_seed_python_server_tcp),
        MTEST_ENTRY(test_c_proxy_calls_seed_python_server_unix),
        MTEST_ENTRY(test_python_msgpack_client_over_stream),
        MTEST_ENTRY(test_load_32_clients_many_calls_each),
        MTEST_ENTRY(test_fuzz_msgpack_connection),
        MTEST_ENTRY(test_fuzz_python_connection),
        MTEST_ENTRY(test_fuzz_msgpack_stream),
        MTEST_ENTRY(test_proxy_reads_answers_in_place_and_whole),
        MTEST_ENTRY(test_msgpack_bad_shapes_answered_or_closed_connection),
        MTEST_ENTRY(test_msgpack_bad_shapes_answered_or_closed_stream),
        MTEST_ENTRY(test_python_bad_frames_get_typeerror_and_connection_goes_on),
        MTEST_ENTRY(test_handshake_garbage_and_stalled_clients_do_not_stop_the_server),
    };
    return mtest_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
