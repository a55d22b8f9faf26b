/* rpc_common.h — what test_rpc.c and test_rpc_shm.c share: the key, the
 * functions both servers register, the "block" rig, value builders and
 * call checks. Include after mtest.h and the mproc headers. */
#ifndef MPROC_TESTS_RPC_COMMON_H
#define MPROC_TESTS_RPC_COMMON_H

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#endif

static const char KEY[] = "rpc-secret";
static const char KEY_HEX[] = "7270632d736563726574";

/* ------------------------------------------------------ the functions */

static atomic_llong g_recorded;
/* "block" tells the test it runs (g_entered) and waits for a byte on
 * g_release: calls whose end the test controls. */
static int g_entered[2] = {-1, -1}, g_release[2] = {-1, -1};

#define FN(name)                                                                             \
    static int name(mproc_value *const *args, size_t nargs, const mproc_value *kwargs,       \
                    mproc_value **result, void *ud)

static bool is_int(const mproc_value *v)
{
    return mproc_value_type(v) == MPROC_V_INT;
}

static int give(mproc_value **result, mproc_value *v)
{
    *result = v;
    return v ? 0 : MPROC_ENOMEM;
}

FN(fn_add)
{
    (void)kwargs, (void)ud;
    if (nargs != 2 || !is_int(args[0]) || !is_int(args[1]))
        return mproc_rpc_error("TypeError", "add() takes two ints");
    return give(result, mproc_value_int(mproc_value_as_int(args[0]) + mproc_value_as_int(args[1])));
}

FN(fn_div)
{
    (void)kwargs, (void)ud;
    if (nargs != 2 || !is_int(args[0]) || !is_int(args[1]))
        return mproc_rpc_error("TypeError", "div() takes two ints");
    if (mproc_value_as_int(args[1]) == 0)
        return mproc_rpc_error("ZeroDivisionError", "division by zero");
    return give(result, mproc_value_int(mproc_value_as_int(args[0]) / mproc_value_as_int(args[1])));
}

FN(fn_fail_code)
{
    (void)args, (void)nargs, (void)kwargs, (void)result, (void)ud;
    return MPROC_EINVAL;
}

/* echo(*args, **kwargs) -> [[args...], kwargs or None] */
FN(fn_echo)
{
    (void)ud;
    mproc_value *a = mproc_value_list(), *r = mproc_value_list();
    int rc = a && r ? 0 : MPROC_ENOMEM;
    for (size_t i = 0; i < nargs && !rc; i++)
        rc = mproc_value_append(a, mproc_value_copy(args[i]));
    if (!rc)
        rc = mproc_value_append(r, a);
    else
        mproc_value_free(a);
    if (!rc)
        rc = mproc_value_append(r, kwargs ? mproc_value_copy(kwargs) : mproc_value_nil());
    if (rc) {
        mproc_value_free(r);
        return rc;
    }
    return give(result, r);
}

/* scale(x, factor=1) */
FN(fn_scale)
{
    (void)ud;
    const mproc_value *f = kwargs ? mproc_value_get(kwargs, "factor") : NULL;
    if (nargs != 1 || !is_int(args[0]) || (f && !is_int(f)))
        return mproc_rpc_error("TypeError", "scale(x, factor=1) takes ints");
    return give(result, mproc_value_int(mproc_value_as_int(args[0]) * (f ? mproc_value_as_int(f) : 1)));
}

FN(fn_record)
{
    (void)kwargs, (void)result, (void)ud;
    if (nargs != 1 || !is_int(args[0]))
        return mproc_rpc_error("TypeError", "record() takes an int");
    atomic_fetch_add(&g_recorded, mproc_value_as_int(args[0]));
    return 0;
}

FN(fn_recorded)
{
    (void)args, (void)nargs, (void)kwargs, (void)ud;
    return give(result, mproc_value_int(atomic_load(&g_recorded)));
}

static void rig_open(void)
{
    CHECK(pipe2(g_entered, O_CLOEXEC) == 0);
    CHECK(pipe2(g_release, O_CLOEXEC) == 0);
}

static void wait_entered(void)
{
    CHECK_OK(mproc_wait_fd(g_entered[0], POLLIN, 30.0));
    char c;
    CHECK_EQ(read(g_entered[0], &c, 1), 1);
}

static void release_one(void)
{
    CHECK_OK(mproc_write_all(g_release[1], "r", 1));
}

static mproc_value *list_of(int n, ...)
{
    mproc_value *l = mproc_value_list();
    CHECK(l);
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++) {
        mproc_value *v = va_arg(ap, mproc_value *);
        CHECK(v);
        CHECK_OK(mproc_value_append(l, v));
    }
    va_end(ap);
    return l;
}

static mproc_value *ints2(int64_t a, int64_t b)
{
    return list_of(2, mproc_value_int(a), mproc_value_int(b));
}

static mproc_value *map1(const char *k, mproc_value *v)
{
    mproc_value *m = mproc_value_map();
    CHECK(m && v);
    CHECK_OK(mproc_value_map_set(m, mproc_value_str(k), v));
    return m;
}

/* The call's return code; `args` is consumed, the result dropped. */
static int call_rc(mproc_rpc_proxy *p, const char *method, mproc_value *args, double timeout)
{
    mproc_value *r = NULL;
    int rc = mproc_rpc_call(p, method, args, &r, timeout);
    mproc_value_free(args);
    mproc_value_free(r);
    return rc;
}

static void expect_remote(mproc_rpc_proxy *p, const char *method, mproc_value *args,
                          const char *type, const char *msg_part)
{
    mproc_value *r = (mproc_value *)0x1;
    int rc = mproc_rpc_call(p, method, args, &r, 30.0);
    mproc_value_free(args);
    if (rc != MPROC_EREMOTE || strcmp(mproc_rpc_proxy_error_type(p), type) != 0 ||
        !strstr(mproc_errmsg(), msg_part)) {
        fprintf(stderr, "%s: rc %s, type '%s', message '%s'; want MPROC_EREMOTE, '%s', '...%s...'\n",
                method, mproc_errname(rc), mproc_rpc_proxy_error_type(p), mproc_errmsg(), type,
                msg_part);
        CHECK(0);
    }
    CHECK(r == NULL);
}

/* Wait (10 s at most) until the server serves `n` connections. */
static void wait_connections(const mproc_rpc_server *s, size_t n)
{
    mproc_deadline d = mproc_deadline_after(10.0);
    while (mproc_rpc_server_connections(s) != n) {
        if (mproc_deadline_expired(d)) {
            fprintf(stderr, "server has %zu connections, want %zu\n",
                    mproc_rpc_server_connections(s), n);
            CHECK(0);
        }
        sched_yield();
    }
}

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#endif
