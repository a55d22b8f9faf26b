/* test_pool.c — Pool: every call (apply, apply_bytes, apply_async, map,
 * map_async, starmap, imap, imap_unordered, map_array) with its ordering,
 * callbacks, errors and timeouts; close / join / terminate / free with work in
 * flight; maxtasksperchild; crashed workers (an item killed, retried, a broken
 * initializer); a chaos run that SIGKILLs 100 random workers during a long
 * map; every start method. The runner checks for leaked children, zombies,
 * fds and /dev/shm entries after each test.
 *
 * Tasks that must wait for the test (gates, pacing) poll a MAP_SHARED page
 * mapped before the pool starts, so those tests use the fork start method. */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <time.h>

#include "mtest.h"

/* ------------------------------------------------------------ shared state */

#include "pool_test.h"

static void busy(double secs)
{
    double t0 = mproc_monotonic();
    while (mproc_monotonic() - t0 < secs)
        ;
}

/* ------------------------------------------------------------------- tasks */

static int t_nil(const mproc_value *arg, mproc_value **out)
{
    (void)arg;
    *out = NULL;
    return 0;
}

static int t_long_error(const mproc_value *arg, mproc_value **out)
{
    (void)arg;
    (void)out;
    char big[3000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    return mproc_task_error("%sEND", big);
}

static int t_bare_code(const mproc_value *arg, mproc_value **out)
{
    (void)arg;
    (void)out;
    return MPROC_ERANGE;
}

/* Wait (at most 20 s) until the test opens gate g; returns g. */
static int wait_gate(int64_t g)
{
    if (g < 0 || g >= NGATES || !S)
        return mproc_task_error("bad gate %lld", (long long)g);
    atomic_store(&S->started[g], 1);
    mproc_deadline d = mproc_deadline_after(20.0);
    while (!atomic_load(&S->gate[g])) {
        if (mproc_deadline_expired(d))
            return mproc_task_error("gate %lld never opened", (long long)g);
        nap();
    }
    return 0;
}

static int t_gate(const mproc_value *arg, mproc_value **out)
{
    int64_t g = mproc_value_as_int(arg);
    int rc = wait_gate(g);
    return rc ? rc : set_int(out, g);
}

/* x*x, but item 0 waits for gate 0. */
static int t_square_gate0(const mproc_value *arg, mproc_value **out)
{
    int64_t x = mproc_value_as_int(arg);
    if (x == 0) {
        int rc = wait_gate(0);
        if (rc)
            return rc;
    }
    return set_int(out, x * x);
}

static int t_crash_always(const mproc_value *arg, mproc_value **out)
{
    (void)arg;
    (void)out;
    raise(SIGKILL);
    return 0;
}

/* The sum of a bytes value's bytes. */
static int t_byte_sum(const mproc_value *arg, mproc_value **out)
{
    size_t n = 0;
    const uint8_t *p = mproc_value_as_bytes(arg, &n);
    if (!p)
        return mproc_task_error("not bytes");
    int64_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += p[i];
    return set_int(out, s);
}

/* Star task: the product of the int arguments. */
static int t_mul(mproc_value *const *args, size_t nargs, mproc_value **out)
{
    if (nargs == 0)
        return mproc_task_error("no arguments");
    int64_t p = 1;
    for (size_t i = 0; i < nargs; i++) {
        if (mproc_value_type(args[i]) != MPROC_V_INT)
            return mproc_task_error("argument %zu is not an int", i);
        p *= mproc_value_as_int(args[i]);
    }
    return set_int(out, p);
}

/* A list of n ints (n = arg). */
static int t_list_of(const mproc_value *arg, mproc_value **out)
{
    mproc_value *l = mproc_value_list();
    if (!l)
        return MPROC_ENOMEM;
    for (int64_t i = 0; i < mproc_value_as_int(arg); i++)
        if (mproc_value_append(l, mproc_value_int(i)))
            return MPROC_ENOMEM;
    *out = l;
    return 0;
}

/* Bytes task: the input with every byte incremented, in one append. */
static int t_inc_bytes(const void *in, size_t len, mproc_buf *out)
{
    uint8_t *tmp = malloc(len ? len : 1);
    if (!tmp)
        return MPROC_ENOMEM;
    for (size_t i = 0; i < len; i++)
        tmp[i] = (uint8_t)(((const uint8_t *)in)[i] + 1);
    int rc = mproc_buf_append(out, tmp, len);
    free(tmp);
    return rc;
}

/* Element tasks. */
static int e_square_i64(const void *in, void *out, const void *arg)
{
    (void)arg;
    int64_t x;
    memcpy(&x, in, 8);
    x *= x;
    memcpy(out, &x, 8);
    return 0;
}

static int e_square_nonneg(const void *in, void *out, const void *arg)
{
    (void)arg;
    int64_t x;
    memcpy(&x, in, 8);
    if (x < 0)
        return mproc_task_error("negative element %lld", (long long)x);
    x *= x;
    memcpy(out, &x, 8);
    return 0;
}

static int e_i32_square_to_i64(const void *in, void *out, const void *arg)
{
    (void)arg;
    int32_t x;
    memcpy(&x, in, 4);
    int64_t y = (int64_t)x * x;
    memcpy(out, &y, 8);
    return 0;
}

/* out = in * k + c, with {k, c} from the call's opts.arg (k = 1, c = 0 without one). */
static int e_affine(const void *in, void *out, const void *arg)
{
    int64_t x, kc[2] = {1, 0};
    if (arg)
        memcpy(kc, arg, sizeof kc);
    memcpy(&x, in, 8);
    x = x * kc[0] + kc[1];
    memcpy(out, &x, 8);
    return 0;
}

/* Element task: waits for gate in[0] (an int64), then copies it out. */
static int e_gate(const void *in, void *out, const void *arg)
{
    (void)arg;
    int64_t g;
    memcpy(&g, in, 8);
    int rc = wait_gate(g);
    if (rc)
        return rc;
    memcpy(out, &g, 8);
    return 0;
}

/* x >= 0: wait for gate x, give x. x < 0: fail once the item of gate -x has
 * started (so that item is still running when this one fails the call). */
static int t_gate_or_fail_once_started(const mproc_value *arg, mproc_value **out)
{
    int64_t x = mproc_value_as_int(arg);
    if (x >= 0) {
        int rc = wait_gate(x);
        return rc ? rc : set_int(out, x);
    }
    if (-x >= NGATES)
        return mproc_task_error("bad gate %lld", (long long)-x);
    mproc_deadline d = mproc_deadline_after(5.0);
    while (!atomic_load(&S->started[-x]) && !mproc_deadline_expired(d))
        nap();
    return mproc_task_error("item %lld fails", (long long)x);
}

/* Counts its run in S->runs, waits for gate 0, gives x*x. */
static int t_count_then_gate0(const mproc_value *arg, mproc_value **out)
{
    atomic_fetch_add(&S->runs, 1);
    int rc = wait_gate(0);
    if (rc)
        return rc;
    int64_t x = mproc_value_as_int(arg);
    return set_int(out, x * x);
}

/* Per-item run counts (a MAP_SHARED page) for t_count_kill_on_3. */
static _Atomic int64_t *g_item_runs;
#define ITEM_RUNS_MAX 64

/* Counts each item's runs; item 3 kills its worker. */
static int t_count_kill_on_3(const mproc_value *arg, mproc_value **out)
{
    int64_t x = mproc_value_as_int(arg);
    if (x < 0 || x >= ITEM_RUNS_MAX)
        return mproc_task_error("bad item %lld", (long long)x);
    atomic_fetch_add(&g_item_runs[x], 1);
    if (x == 3)
        raise(SIGKILL);
    return set_int(out, x);
}

/* Initializers. */
static int64_t g_base = -1;
static char g_tag[64] = "unset";

static int init_base(mproc_args *a)
{
    int64_t b;
    if (mproc_args_get_int(a, 0, &b))
        return 2;
    const char *tag = mproc_args_str(a, 1);
    if (!tag)
        return 3;
    g_base = b;
    snprintf(g_tag, sizeof g_tag, "%s", tag);
    return 0;
}

static int t_base_plus(const mproc_value *arg, mproc_value **out)
{
    return set_int(out, g_base + mproc_value_as_int(arg));
}

/* Set by the test before the pool starts: fork workers see it, spawn and
 * forkserver workers (fresh programs) do not. */
static int64_t g_parent_mark;

static int t_parent_mark(const mproc_value *arg, mproc_value **out)
{
    (void)arg;
    return set_int(out, g_parent_mark);
}

static int t_tag(const mproc_value *arg, mproc_value **out)
{
    (void)arg;
    *out = mproc_value_str(g_tag);
    return *out ? 0 : MPROC_ENOMEM;
}

static int init_refuse(mproc_args *a)
{
    const char *why = mproc_args_str(a, 0);
    return mproc_task_error("initializer refused: %s", why ? why : "?");
}

static int init_exit3(mproc_args *a)
{
    (void)a;
    return 3;
}

static int init_crash(mproc_args *a)
{
    (void)a;
    raise(SIGKILL);
    return 0;
}

/* The first run succeeds, every later one (a replacement worker) fails. */
static int init_only_first(mproc_args *a)
{
    (void)a;
    if (atomic_fetch_add(&S->inits, 1) >= 1)
        return mproc_task_error("replacement initializer fails");
    return 0;
}

/* The two first runs (the first workers of a 2-process pool) succeed, every
 * later one (a replacement) fails. */
static int init_fail_after_2(mproc_args *a)
{
    (void)a;
    if (atomic_fetch_add(&S->inits, 1) >= 2)
        return mproc_task_error("replacement initializer fails");
    return 0;
}

/* The first run succeeds, every later one (a replacement) kills its worker. */
static int init_crash_after_1(mproc_args *a)
{
    (void)a;
    if (atomic_fetch_add(&S->inits, 1) >= 1)
        raise(SIGKILL);
    return 0;
}

/* ----------------------------------------------------------------- helpers */

static mproc_value *ints(int64_t from, size_t n)
{
    mproc_value *l = mproc_value_list();
    CHECK(l);
    for (size_t i = 0; i < n; i++)
        CHECK_OK(mproc_value_append(l, mproc_value_int(from + (int64_t)i)));
    return l;
}

static mproc_pool *new_pool(int processes)
{
    mproc_pool_opts o = {.processes = processes};
    mproc_pool *p = NULL;
    CHECK_OK(mproc_pool_new(&p, &o));
    CHECK(p != NULL);
    CHECK_EQ(mproc_pool_processes(p), processes);
    return p;
}

static int apply_rc(mproc_pool *p, mproc_value_fn f, int64_t x, double timeout, int64_t *res)
{
    mproc_value *a = mproc_value_int(x), *out = NULL;
    CHECK(a);
    int rc = mproc_pool_apply(p, mproc_task_value(f), a, &out, timeout);
    mproc_value_free(a);
    if (rc == 0) {
        CHECK(out && mproc_value_type(out) == MPROC_V_INT);
        if (res)
            *res = mproc_value_as_int(out);
    } else {
        CHECK(out == NULL);
    }
    mproc_value_free(out);
    return rc;
}

static int64_t apply_int(mproc_pool *p, mproc_value_fn f, int64_t x)
{
    int64_t r = 0;
    CHECK_OK(apply_rc(p, f, x, 30.0, &r));
    return r;
}

static mproc_result *async_int(mproc_pool *p, mproc_value_fn f, int64_t x, const mproc_call_opts *o)
{
    mproc_value *a = mproc_value_int(x);
    CHECK(a);
    mproc_result *r = NULL;
    CHECK_OK(mproc_pool_apply_async(p, mproc_task_value(f), a, o, &r));
    CHECK(r != NULL);
    mproc_value_free(a);
    return r;
}

static int64_t result_int(mproc_result *r)
{
    const mproc_value *v = NULL;
    CHECK_OK(mproc_result_get(r, &v, 30.0));
    CHECK(v && mproc_value_type(v) == MPROC_V_INT);
    return mproc_value_as_int(v);
}

static int64_t list_int(const mproc_value *l, size_t i)
{
    const mproc_value *v = mproc_value_at(l, i);
    CHECK(v && mproc_value_type(v) == MPROC_V_INT);
    return mproc_value_as_int(v);
}

static void check_squares(const mproc_value *l, int64_t from, size_t n)
{
    CHECK(l && mproc_value_type(l) == MPROC_V_LIST);
    CHECK_EQ(mproc_value_len(l), n);
    for (size_t i = 0; i < n; i++) {
        int64_t x = from + (int64_t)i;
        CHECK_EQ(list_int(l, i), x * x);
    }
}

static mproc_pool_stats stats(mproc_pool *p)
{
    mproc_pool_stats st;
    memset(&st, 0xff, sizeof st);
    mproc_pool_stats_get(p, &st);
    return st;
}

static bool pid_in(const pid_t *pids, size_t n, pid_t pid)
{
    for (size_t i = 0; i < n; i++)
        if (pids[i] == pid)
            return true;
    return false;
}

static size_t live_workers(mproc_pool *p)
{
    pid_t pids[64];
    return mproc_pool_worker_pids(p, pids, 64);
}

/* Every worker the pool started has died (and been handled). */
static bool every_worker_died(mproc_pool *p)
{
    mproc_pool_stats st = stats(p);
    return st.workers_died == st.workers_started;
}

static size_t count_distinct(const int64_t *v, size_t n)
{
    size_t d = 0;
    for (size_t i = 0; i < n; i++) {
        bool seen = false;
        for (size_t j = 0; j < i; j++)
            seen |= v[j] == v[i];
        d += !seen;
    }
    return d;
}

static void close_join_free(mproc_pool *p)
{
    CHECK_OK(mproc_pool_close(p));
    CHECK_OK(mproc_pool_join(p, 30.0));
    mproc_pool_free(p);
}

/* ------------------------------------------------------------ construction */

MTEST(test_pool_new_checks_opts_and_defaults_to_cpu_count)
{
    mproc_pool *p = NULL;
    mproc_pool_opts o = {.processes = -1};
    CHECK_EQ(mproc_pool_new(&p, &o), MPROC_EINVAL);
    o = (mproc_pool_opts){.processes = 0};
    CHECK_OK(mproc_pool_new(&p, &o));
    CHECK_EQ(mproc_pool_processes(p), mproc_cpu_count());
    WAIT_UNTIL(live_workers(p) == (size_t)mproc_cpu_count(), 10.0);
    pid_t one[1] = {0};
    CHECK_EQ(mproc_pool_worker_pids(p, one, 1), 1); /* no more than asked for */
    CHECK(one[0] > 0 && one[0] != getpid());
    mproc_pool_stats st = stats(p);
    CHECK_EQ(st.workers_started, mproc_cpu_count());
    CHECK_EQ(st.workers_died, 0);
    CHECK_EQ(st.items_done, 0);
    close_join_free(p);
    CHECK_OK(mproc_pool_new(&p, NULL));
    CHECK_EQ(mproc_pool_processes(p), mproc_cpu_count());
    CHECK_EQ(apply_int(p, t_square, 12), 144);
    mproc_pool_free(p); /* without close: terminate + join */
    mproc_pool_free(NULL);
}

MTEST(test_pool_initializer_sets_a_global_the_tasks_read)
{
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_int(a, 1000));
    CHECK_OK(mproc_args_add_str(a, "from-init"));
    mproc_pool_opts o = {.processes = 3, .initializer = init_base, .initargs = a};
    mproc_pool *p;
    CHECK_OK(mproc_pool_new(&p, &o));
    mproc_args_free(a); /* copied by mproc_pool_new */
    mproc_value *items = ints(0, 30), *out = NULL;
    CHECK_OK(mproc_pool_map(p, mproc_task_value(t_base_plus), items, NULL, &out, 30.0));
    for (size_t i = 0; i < 30; i++)
        CHECK_EQ(list_int(out, i), 1000 + (int64_t)i);
    mproc_value_free(out);
    mproc_value *tag = NULL;
    CHECK_OK(mproc_pool_apply(p, mproc_task_value(t_tag), NULL, &tag, 30.0));
    CHECK(tag && mproc_value_type(tag) == MPROC_V_STR);
    size_t tl;
    CHECK(strcmp(mproc_value_as_str(tag, &tl), "from-init") == 0);
    mproc_value_free(tag);
    CHECK_EQ(g_base, -1); /* the initializer ran in the workers, not here */
    mproc_value_free(items);
    close_join_free(p);
}

MTEST(test_pool_initializer_failure_fails_new_with_eremote_and_its_message)
{
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_str(a, "no database"));
    mproc_pool_opts o = {.processes = 2, .initializer = init_refuse, .initargs = a};
    mproc_pool *p = NULL;
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_pool_new(&p, &o), MPROC_EREMOTE);
    CHECK(mproc_monotonic() - t0 < 20.0);
    if (!strstr(mproc_errmsg(), "initializer refused: no database")) {
        fprintf(stderr, "errmsg: '%s'\n", mproc_errmsg());
        CHECK(!"the initializer's message reaches mproc_errmsg()");
    }
    mproc_args_free(a);
}

MTEST(test_pool_initializer_plain_nonzero_return_fails_new_with_eremote)
{
    mproc_pool_opts o = {.processes = 2, .initializer = init_exit3};
    mproc_pool *p = NULL;
    CHECK_EQ(mproc_pool_new(&p, &o), MPROC_EREMOTE);
    CHECK(mproc_errmsg()[0] != 0);
}

MTEST(test_pool_new_fails_in_bounded_time_when_an_initializer_crashes)
{
    mproc_pool_opts o = {.processes = 2, .initializer = init_crash, .start_timeout = 10.0};
    mproc_pool *p = NULL;
    double t0 = mproc_monotonic();
    int rc = mproc_pool_new(&p, &o);
    CHECK(rc != 0);
    CHECK(mproc_monotonic() - t0 < 15.0);
    fprintf(stderr, "crashing initializer: %s %s\n", mproc_errname(rc), mproc_errmsg());
}

/* ----------------------------------------------------------------- apply */

MTEST(test_pool_apply_runs_value_star_and_bytes_tasks)
{
    mproc_pool *p = new_pool(2);
    CHECK_EQ(apply_int(p, t_square, -9), 81);
    /* a value task returning NULL gives nil */
    mproc_value *out = (mproc_value *)1;
    CHECK_OK(mproc_pool_apply(p, mproc_task_value(t_nil), NULL, &out, 30.0));
    CHECK(out == NULL || mproc_value_type(out) == MPROC_V_NIL);
    mproc_value_free(out);
    /* star: the list is unpacked into the arguments */
    mproc_value *args = ints(2, 4); /* 2*3*4*5 */
    CHECK_OK(mproc_pool_apply(p, mproc_task_star(t_mul), args, &out, 30.0));
    CHECK_EQ(mproc_value_as_int(out), 120);
    mproc_value_free(out);
    mproc_value_free(args);
    /* bytes task through apply: bytes or str in, bytes out */
    mproc_value *b = mproc_value_bytes("abc", 3);
    CHECK_OK(mproc_pool_apply(p, mproc_task_bytes(t_reverse), b, &out, 30.0));
    size_t n = 0;
    const void *d = mproc_value_as_bytes(out, &n);
    CHECK(d && n == 3 && memcmp(d, "cba", 3) == 0);
    mproc_value_free(out);
    mproc_value_free(b);
    mproc_value *s = mproc_value_str("hello");
    CHECK_OK(mproc_pool_apply(p, mproc_task_bytes(t_reverse), s, &out, 30.0));
    d = mproc_value_as_bytes(out, &n);
    CHECK(d && n == 5 && memcmp(d, "olleh", 5) == 0);
    mproc_value_free(out);
    mproc_value_free(s);
    /* a large value argument (through the arena) */
    size_t big = 3 << 20;
    uint8_t *buf = malloc(big);
    int64_t sum = 0;
    for (size_t i = 0; i < big; i++)
        sum += buf[i] = (uint8_t)(i * 31 + 7);
    b = mproc_value_bytes(buf, big);
    CHECK_OK(mproc_pool_apply(p, mproc_task_value(t_byte_sum), b, &out, 30.0));
    CHECK_EQ(mproc_value_as_int(out), sum);
    mproc_value_free(out);
    mproc_value_free(b);
    free(buf);
    close_join_free(p);
}

MTEST(test_pool_apply_checks_the_argument_shape)
{
    mproc_pool *p = new_pool(1);
    mproc_value *i = mproc_value_int(3), *out = NULL;
    CHECK_EQ(mproc_pool_apply(p, mproc_task_bytes(t_reverse), i, &out, 5.0), MPROC_EINVAL);
    CHECK_EQ(mproc_pool_apply(p, mproc_task_star(t_mul), i, &out, 5.0), MPROC_EINVAL);
    CHECK(out == NULL);
    mproc_result *r = NULL;
    CHECK_EQ(mproc_pool_apply_async(p, mproc_task_star(t_mul), i, NULL, &r), MPROC_EINVAL);
    CHECK_EQ(mproc_pool_map(p, mproc_task_value(t_square), i, NULL, &out, 5.0), MPROC_EINVAL);
    CHECK_EQ(mproc_pool_starmap(p, t_mul, i, NULL, &out, 5.0), MPROC_EINVAL);
    mproc_value *l = ints(1, 3); /* starmap items must be lists */
    CHECK_EQ(mproc_pool_starmap(p, t_mul, l, NULL, &out, 5.0), MPROC_EINVAL);
    mproc_task bad = {.kind = (mproc_task_kind)42};
    bad.fn.value = t_square;
    CHECK_EQ(mproc_pool_apply(p, bad, i, &out, 5.0), MPROC_EINVAL);
    int64_t v[2] = {1, 2};
    CHECK_EQ(mproc_pool_map_array(p, e_square_i64, v, 0, v, 8, 2, NULL, 5.0), MPROC_EINVAL);
    CHECK_EQ(mproc_pool_map_array(p, NULL, v, 8, v, 8, 2, NULL, 5.0), MPROC_EINVAL);
    mproc_value_free(l);
    mproc_value_free(i);
    CHECK_EQ(apply_int(p, t_square, 4), 16); /* still fine */
    close_join_free(p);
}

MTEST(test_pool_apply_bytes_round_trips_raw_buffers)
{
    mproc_pool *p = new_pool(2);
    void *out = NULL;
    size_t n = 99;
    CHECK_OK(mproc_pool_apply_bytes(p, t_reverse, "abcdef", 6, &out, &n, 30.0));
    CHECK(out && n == 6 && memcmp(out, "fedcba", 6) == 0);
    free(out);
    out = NULL;
    CHECK_OK(mproc_pool_apply_bytes(p, t_reverse, "", 0, &out, &n, 30.0));
    CHECK(out != NULL);
    CHECK_EQ(n, 0);
    free(out);
    size_t big = 8 << 20;
    uint8_t *in = malloc(big);
    for (size_t i = 0; i < big; i++)
        in[i] = (uint8_t)(i ^ (i >> 9));
    CHECK_OK(mproc_pool_apply_bytes(p, t_inc_bytes, in, big, &out, &n, 30.0));
    CHECK_EQ(n, big);
    for (size_t i = 0; i < big; i++)
        if (((uint8_t *)out)[i] != (uint8_t)(in[i] + 1))
            CHECK(!"output byte differs");
    free(out);
    free(in);
    close_join_free(p);
}

/* --------------------------------------------------------- result objects */

MTEST(test_pool_result_get_take_wait_ready_successful_error)
{
    shared_new();
    mproc_pool *p = new_pool(2);
    mproc_result *r = async_int(p, t_gate, 0, NULL);
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    CHECK(!mproc_result_ready(r));
    CHECK_EQ(mproc_result_successful(r), MPROC_ESTATE);
    CHECK(mproc_result_error(r) == NULL);
    CHECK_EQ(mproc_result_wait(r, 0), MPROC_ETIMEDOUT);
    const mproc_value *v = (const mproc_value *)1;
    CHECK_EQ(mproc_result_get(r, &v, 0), MPROC_ETIMEDOUT);
    mproc_value *tv = NULL;
    CHECK_EQ(mproc_result_take(r, &tv, 0), MPROC_ETIMEDOUT);
    atomic_store(&S->gate[0], 1);
    CHECK_OK(mproc_result_wait(r, 30.0));
    CHECK(mproc_result_ready(r));
    CHECK_EQ(mproc_result_successful(r), 1);
    CHECK(mproc_result_error(r) == NULL);
    CHECK_EQ(result_int(r), 0);
    CHECK_EQ(result_int(r), 0); /* get is repeatable */
    CHECK_OK(mproc_result_take(r, &tv, 0));
    CHECK(tv && mproc_value_as_int(tv) == 0);
    mproc_value_free(tv);
    v = (const mproc_value *)1;
    CHECK_OK(mproc_result_get(r, &v, 0));
    CHECK(v == NULL); /* taken */
    mproc_result_free(r);

    mproc_result *f = async_int(p, t_fail_on_7, 7, NULL);
    CHECK_EQ(mproc_result_get(f, &v, 30.0), MPROC_EREMOTE);
    CHECK(strstr(mproc_errmsg(), "item 7 is bad") != NULL);
    CHECK(mproc_result_ready(f));
    CHECK_EQ(mproc_result_successful(f), 0);
    CHECK(mproc_result_error(f) && strstr(mproc_result_error(f), "item 7 is bad"));
    CHECK_EQ(mproc_result_take(f, &tv, 0), MPROC_EREMOTE);
    mproc_result_free(f);
    mproc_result_free(NULL);
    close_join_free(p);
    shared_free();
}

/* -------------------------------------------------------------------- map */

MTEST(test_pool_map_keeps_input_order_for_every_chunksize)
{
    mproc_pool *p = new_pool(3);
    static const size_t chunks[] = {0, 1, 2, 3, 7, 100, 1000};
    mproc_value *items = ints(-50, 100);
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        mproc_call_opts o = {.chunksize = chunks[c]};
        mproc_value *out = NULL;
        CHECK_OK(mproc_pool_map(p, mproc_task_value(t_square), items, &o, &out, 30.0));
        check_squares(out, -50, 100);
        mproc_value_free(out);
    }
    /* bytes tasks over bytes items */
    mproc_value *bl = mproc_value_list();
    for (int i = 0; i < 20; i++) {
        char s[16];
        int n = snprintf(s, sizeof s, "item%02d", i);
        CHECK_OK(mproc_value_append(bl, mproc_value_bytes(s, (size_t)n)));
    }
    mproc_call_opts o3 = {.chunksize = 3};
    mproc_value *out = NULL;
    CHECK_OK(mproc_pool_map(p, mproc_task_bytes(t_reverse), bl, &o3, &out, 30.0));
    CHECK_EQ(mproc_value_len(out), 20);
    for (int i = 0; i < 20; i++) {
        char want[16] = {(char)('0' + i % 10), (char)('0' + i / 10), 'm', 'e', 't', 'i', 0};
        size_t n;
        const char *got = mproc_value_as_bytes(mproc_value_at(out, (size_t)i), &n);
        CHECK(got && n == 6 && memcmp(got, want, 6) == 0);
    }
    mproc_value_free(out);
    mproc_value_free(bl);
    mproc_value_free(items);
    close_join_free(p);
}

MTEST(test_pool_map_of_an_empty_list_is_an_empty_list)
{
    mproc_pool *p = new_pool(2);
    mproc_value *empty = mproc_value_list(), *out = NULL;
    CHECK_OK(mproc_pool_map(p, mproc_task_value(t_square), empty, NULL, &out, 10.0));
    CHECK(out && mproc_value_type(out) == MPROC_V_LIST && mproc_value_len(out) == 0);
    mproc_value_free(out);
    mproc_result *r;
    CHECK_OK(mproc_pool_map_async(p, mproc_task_value(t_square), empty, NULL, &r));
    const mproc_value *v;
    CHECK_OK(mproc_result_get(r, &v, 10.0));
    CHECK(v && mproc_value_len(v) == 0);
    mproc_result_free(r);
    mproc_imap *it;
    CHECK_OK(mproc_pool_imap(p, mproc_task_value(t_square), empty, NULL, &it));
    CHECK_EQ(mproc_imap_length(it), 0);
    CHECK_EQ(mproc_imap_next(it, &out, NULL, 10.0), MPROC_ECLOSED);
    mproc_imap_free(it);
    int64_t none[1] = {5};
    CHECK_OK(mproc_pool_map_array(p, e_square_i64, none, 8, none, 8, 0, NULL, 10.0));
    CHECK_EQ(none[0], 5);
    mproc_value_free(empty);
    close_join_free(p);
}

MTEST(test_pool_map_fails_with_the_first_error_and_its_message)
{
    mproc_pool *p = new_pool(2);
    mproc_value *items = ints(0, 20), *out = NULL;
    mproc_call_opts o = {.chunksize = 2};
    CHECK_EQ(mproc_pool_map(p, mproc_task_value(t_fail_on_7), items, &o, &out, 30.0),
             MPROC_EREMOTE);
    CHECK(out == NULL);
    CHECK(strstr(mproc_errmsg(), "item 7 is bad") != NULL);
    mproc_result *r;
    CHECK_OK(mproc_pool_map_async(p, mproc_task_value(t_fail_on_7), items, &o, &r));
    const mproc_value *v;
    CHECK_EQ(mproc_result_get(r, &v, 30.0), MPROC_EREMOTE);
    CHECK(strstr(mproc_result_error(r), "item 7 is bad") != NULL);
    CHECK_EQ(mproc_result_successful(r), 0);
    mproc_result_free(r);
    /* pool.h: chunks already given to workers finish, the others are not
     * run: the pool settles with each failed item counted once per call */
    CHECK_EQ(stats(p).items_failed, 2);
    CHECK(stats(p).items_done <= 40);
    /* and it stays usable */
    mproc_value *ok_items = ints(0, 4), *ok_out = NULL;
    CHECK_OK(mproc_pool_map(p, mproc_task_value(t_square), ok_items, NULL, &ok_out, 30.0));
    check_squares(ok_out, 0, 4);
    mproc_value_free(ok_out);
    mproc_value_free(ok_items);
    mproc_value_free(items);
    close_join_free(p);
}

MTEST(test_pool_map_async_result_is_the_list)
{
    mproc_pool *p = new_pool(2);
    mproc_value *items = ints(0, 500);
    mproc_call_opts o = {.chunksize = 0};
    mproc_result *r;
    CHECK_OK(mproc_pool_map_async(p, mproc_task_value(t_square), items, &o, &r));
    mproc_value_free(items); /* encoded before the call returned */
    const mproc_value *v;
    CHECK_OK(mproc_result_get(r, &v, 30.0));
    check_squares(v, 0, 500);
    mproc_value *owned = NULL;
    CHECK_OK(mproc_result_take(r, &owned, 0));
    mproc_result_free(r);
    check_squares(owned, 0, 500); /* taken: survives the result object */
    mproc_value_free(owned);
    close_join_free(p);
}

MTEST(test_pool_starmap_and_starmap_async_unpack_each_item)
{
    mproc_pool *p = new_pool(2);
    mproc_value *items = mproc_value_list();
    for (int i = 0; i < 40; i++) {
        mproc_value *pair = mproc_value_list();
        CHECK_OK(mproc_value_append(pair, mproc_value_int(i)));
        CHECK_OK(mproc_value_append(pair, mproc_value_int(i + 1)));
        CHECK_OK(mproc_value_append(items, pair));
    }
    mproc_call_opts o = {.chunksize = 3};
    mproc_value *out = NULL;
    CHECK_OK(mproc_pool_starmap(p, t_mul, items, &o, &out, 30.0));
    CHECK_EQ(mproc_value_len(out), 40);
    for (int i = 0; i < 40; i++)
        CHECK_EQ(list_int(out, (size_t)i), (int64_t)i * (i + 1));
    mproc_value_free(out);
    mproc_result *r;
    CHECK_OK(mproc_pool_starmap_async(p, t_mul, items, NULL, &r));
    const mproc_value *v;
    CHECK_OK(mproc_result_get(r, &v, 30.0));
    for (int i = 0; i < 40; i++)
        CHECK_EQ(list_int(v, (size_t)i), (int64_t)i * (i + 1));
    mproc_result_free(r);
    /* an empty argument list reaches the task (which refuses it) */
    CHECK_OK(mproc_value_append(items, mproc_value_list()));
    CHECK_EQ(mproc_pool_starmap(p, t_mul, items, NULL, &out, 30.0), MPROC_EREMOTE);
    CHECK(strstr(mproc_errmsg(), "no arguments") != NULL);
    mproc_value_free(items);
    close_join_free(p);
}

/* ------------------------------------------------------------------- imap */

MTEST(test_pool_imap_yields_in_input_order_when_the_first_item_is_slow)
{
    shared_new();
    mproc_pool *p = new_pool(3);
    mproc_value *items = ints(0, 30);
    mproc_imap *it;
    CHECK_OK(mproc_pool_imap(p, mproc_task_value(t_square_gate0), items, NULL, &it));
    mproc_value_free(items);
    CHECK_EQ(mproc_imap_length(it), 30);
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    WAIT_UNTIL(stats(p).items_done >= 10, 20.0); /* later items are done... */
    mproc_value *v = NULL;
    size_t idx = 99;
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_imap_next(it, &v, &idx, 0.05), MPROC_ETIMEDOUT); /* ...but not given first */
    CHECK(mproc_monotonic() - t0 < 2.0);
    CHECK(v == NULL);
    atomic_store(&S->gate[0], 1);
    for (size_t i = 0; i < 30; i++) {
        CHECK_OK(mproc_imap_next(it, &v, &idx, 30.0));
        CHECK_EQ(idx, i);
        CHECK_EQ(mproc_value_as_int(v), (int64_t)(i * i));
        mproc_value_free(v);
    }
    CHECK_EQ(mproc_imap_next(it, &v, &idx, 1.0), MPROC_ECLOSED);
    CHECK_EQ(mproc_imap_next(it, &v, &idx, 0), MPROC_ECLOSED);
    mproc_imap_free(it);
    close_join_free(p);
    shared_free();
}

MTEST(test_pool_imap_unordered_yields_every_index_once_in_completion_order)
{
    shared_new();
    mproc_pool *p = new_pool(3);
    mproc_value *items = ints(0, 30);
    mproc_imap *it;
    CHECK_OK(mproc_pool_imap_unordered(p, mproc_task_value(t_square_gate0), items, NULL, &it));
    mproc_value_free(items);
    CHECK_EQ(mproc_imap_length(it), 30);
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    WAIT_UNTIL(stats(p).items_done >= 10, 20.0);
    bool seen[30] = {false};
    mproc_value *v;
    size_t idx;
    for (int k = 0; k < 10; k++) { /* done ones come first: item 0 is still running */
        CHECK_OK(mproc_imap_next(it, &v, &idx, 10.0));
        CHECK(idx > 0 && idx < 30 && !seen[idx]);
        seen[idx] = true;
        CHECK_EQ(mproc_value_as_int(v), (int64_t)(idx * idx));
        mproc_value_free(v);
    }
    atomic_store(&S->gate[0], 1);
    for (int k = 10; k < 30; k++) {
        CHECK_OK(mproc_imap_next(it, &v, &idx, 30.0));
        CHECK(idx < 30 && !seen[idx]);
        seen[idx] = true;
        CHECK_EQ(mproc_value_as_int(v), (int64_t)(idx * idx));
        mproc_value_free(v);
    }
    CHECK_EQ(mproc_imap_next(it, &v, &idx, 1.0), MPROC_ECLOSED);
    mproc_imap_free(it);
    close_join_free(p);
    shared_free();
}

MTEST(test_pool_imap_chunksizes_keep_order_and_cover_every_item)
{
    mproc_pool *p = new_pool(2);
    mproc_value *items = ints(0, 101);
    static const size_t chunks[] = {1, 4, 10, 101, 500};
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        mproc_call_opts o = {.chunksize = chunks[c]};
        mproc_imap *it;
        CHECK_OK(mproc_pool_imap(p, mproc_task_value(t_square), items, &o, &it));
        mproc_value *v;
        size_t idx;
        for (size_t i = 0; i < 101; i++) {
            CHECK_OK(mproc_imap_next(it, &v, &idx, 30.0));
            CHECK_EQ(idx, i);
            CHECK_EQ(mproc_value_as_int(v), (int64_t)(i * i));
            mproc_value_free(v);
        }
        CHECK_EQ(mproc_imap_next(it, &v, NULL, 1.0), MPROC_ECLOSED);
        mproc_imap_free(it);
        CHECK_OK(mproc_pool_imap_unordered(p, mproc_task_value(t_square), items, &o, &it));
        bool seen[101] = {false};
        for (size_t i = 0; i < 101; i++) {
            CHECK_OK(mproc_imap_next(it, &v, &idx, 30.0));
            CHECK(idx < 101 && !seen[idx]);
            seen[idx] = true;
            CHECK_EQ(mproc_value_as_int(v), (int64_t)(idx * idx));
            mproc_value_free(v);
        }
        CHECK_EQ(mproc_imap_next(it, &v, NULL, 1.0), MPROC_ECLOSED);
        mproc_imap_free(it);
    }
    mproc_value_free(items);
    close_join_free(p);
}

MTEST(test_pool_imap_reports_a_failed_item_at_its_index_and_goes_on)
{
    mproc_pool *p = new_pool(2);
    mproc_value *items = ints(0, 12);
    mproc_call_opts o = {.chunksize = 3};
    mproc_imap *it;
    CHECK_OK(mproc_pool_imap(p, mproc_task_value(t_fail_on_7), items, &o, &it));
    mproc_value_free(items);
    CHECK(mproc_imap_error(it) == NULL);
    for (size_t i = 0; i < 12; i++) {
        mproc_value *v = NULL;
        size_t idx = 99;
        int rc = mproc_imap_next(it, &v, &idx, 30.0);
        CHECK_EQ(idx, i);
        if (i == 7) {
            CHECK_EQ(rc, MPROC_EREMOTE);
            CHECK(v == NULL);
            CHECK(strstr(mproc_errmsg(), "item 7 is bad") != NULL);
            CHECK(mproc_imap_error(it) && strstr(mproc_imap_error(it), "item 7 is bad"));
        } else {
            CHECK_OK(rc);
            CHECK_EQ(mproc_value_as_int(v), (int64_t)i * 10);
            mproc_value_free(v);
        }
    }
    mproc_value *v;
    CHECK_EQ(mproc_imap_next(it, &v, NULL, 1.0), MPROC_ECLOSED);
    mproc_imap_free(it);
    close_join_free(p);
}

MTEST(test_pool_imap_freed_before_the_end_lets_its_tasks_run_on)
{
    mproc_pool *p = new_pool(2);
    mproc_value *items = ints(0, 200);
    mproc_imap *it;
    CHECK_OK(mproc_pool_imap(p, mproc_task_value(t_square), items, NULL, &it));
    mproc_value *v;
    CHECK_OK(mproc_imap_next(it, &v, NULL, 30.0));
    mproc_value_free(v);
    mproc_imap_free(it);
    mproc_imap_free(NULL);
    CHECK_EQ(apply_int(p, t_square, 5), 25);
    close_join_free(p); /* finishes the iterator's remaining items */
    mproc_value_free(items);
}

/* -------------------------------------------------------------- map_array */

MTEST(test_pool_map_array_squares_a_million_int64)
{
    mproc_pool *p = new_pool(2);
    size_t n = 1000000;
    int64_t *in = malloc(n * 8), *out = malloc(n * 8);
    for (size_t i = 0; i < n; i++) {
        in[i] = (int64_t)i - 500000;
        out[i] = -1;
    }
    CHECK_OK(mproc_pool_map_array(p, e_square_i64, in, 8, out, 8, n, NULL, 60.0));
    for (size_t i = 0; i < n; i++)
        if (out[i] != in[i] * in[i])
            CHECK_EQ(out[i], in[i] * in[i]);
    CHECK_EQ(in[0], -500000); /* the input is left alone */
    /* in place: in == out */
    CHECK_OK(mproc_pool_map_array(p, e_square_i64, in, 8, in, 8, n, NULL, 60.0));
    CHECK(memcmp(in, out, n * 8) == 0);
    free(in);
    free(out);
    close_join_free(p);
}

MTEST(test_pool_map_array_every_chunksize_covers_every_element)
{
    mproc_pool *p = new_pool(3);
    size_t n = 5003;
    int64_t *in = malloc(n * 8), *out = malloc(n * 8);
    static const size_t chunks[] = {0, 1, 7, 1000, 5003, 9000};
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        for (size_t i = 0; i < n; i++) {
            in[i] = (int64_t)(i * 3 + c);
            out[i] = -1;
        }
        mproc_call_opts o = {.chunksize = chunks[c]};
        CHECK_OK(mproc_pool_map_array(p, e_square_i64, in, 8, out, 8, n, &o, 60.0));
        for (size_t i = 0; i < n; i++)
            CHECK_EQ(out[i], in[i] * in[i]);
        CHECK_OK(mproc_pool_map_array(p, e_square_i64, in, 8, in, 8, n, &o, 60.0));
        CHECK(memcmp(in, out, n * 8) == 0);
    }
    free(in);
    free(out);
    close_join_free(p);
}

MTEST(test_pool_map_array_converts_int32_elements_to_int64)
{
    mproc_pool *p = new_pool(2);
    size_t n = 10000;
    int32_t *in = malloc(n * 4);
    int64_t *out = malloc(n * 8);
    for (size_t i = 0; i < n; i++)
        in[i] = (int32_t)(i * 99991 % 2000003) - 1000000;
    mproc_call_opts o = {.chunksize = 333};
    CHECK_OK(mproc_pool_map_array(p, e_i32_square_to_i64, in, 4, out, 8, n, &o, 30.0));
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(out[i], (int64_t)in[i] * in[i]);
    free(in);
    free(out);
    close_join_free(p);
}

MTEST(test_pool_map_array_passes_the_call_arg_bytes_to_every_element)
{
    mproc_pool *p = new_pool(2);
    size_t n = 20000;
    int64_t *in = malloc(n * 8), *out = malloc(n * 8);
    for (size_t i = 0; i < n; i++)
        in[i] = (int64_t)i;
    int64_t kc[2] = {3, -7};
    mproc_call_opts o = {.chunksize = 1000, .arg = kc, .arg_len = sizeof kc};
    CHECK_OK(mproc_pool_map_array(p, e_affine, in, 8, out, 8, n, &o, 30.0));
    kc[0] = 100; /* copied with the call: later changes do not matter */
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(out[i], (int64_t)i * 3 - 7);
    mproc_result *r;
    CHECK_OK(mproc_pool_map_array_async(p, e_affine, in, 8, out, 8, n, &o, &r));
    kc[0] = 5; /* after the async call returned */
    CHECK_OK(mproc_result_wait(r, 30.0));
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(out[i], (int64_t)i * 100 - 7);
    mproc_result_free(r);
    /* without arg the task gets NULL */
    CHECK_OK(mproc_pool_map_array(p, e_affine, in, 8, out, 8, n, NULL, 30.0));
    CHECK(memcmp(in, out, n * 8) == 0);
    free(in);
    free(out);
    close_join_free(p);
}

MTEST(test_pool_shared_alloc_arrays_are_used_in_place_by_map_array)
{
    mproc_pool_opts po = {.processes = 2, .arena_size = 64 << 20};
    mproc_pool *p;
    CHECK_OK(mproc_pool_new(&p, &po));
    size_t n = 200000;
    int64_t *in = mproc_pool_shared_alloc(p, n * 8), *out = mproc_pool_shared_alloc(p, n * 8);
    CHECK(in && out && in != out);
    CHECK_EQ((uintptr_t)in % 64, 0);
    CHECK_EQ((uintptr_t)out % 64, 0);
    for (size_t i = 0; i < n; i++)
        in[i] = (int64_t)i - 1000;
    CHECK_OK(mproc_pool_map_array(p, e_square_i64, in, 8, out, 8, n, NULL, 30.0));
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(out[i], in[i] * in[i]);
    /* in place, in the arena */
    mproc_call_opts o = {.chunksize = 777};
    CHECK_OK(mproc_pool_map_array(p, e_square_i64, in, 8, in, 8, n, &o, 30.0));
    CHECK(memcmp(in, out, n * 8) == 0);
    /* async with an arena input: kept intact until ready */
    int64_t kc[2] = {2, 3};
    mproc_call_opts oa = {.arg = kc, .arg_len = sizeof kc};
    mproc_result *r;
    CHECK_OK(mproc_pool_map_array_async(p, e_affine, in, 8, out, 8, n, &oa, &r));
    CHECK_OK(mproc_result_wait(r, 30.0));
    CHECK_EQ(mproc_result_successful(r), 1);
    mproc_result_free(r);
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(out[i], in[i] * 2 + 3);
    /* a malloc'd output from an arena input, and the reverse */
    int64_t *heap = malloc(n * 8);
    CHECK_OK(mproc_pool_map_array(p, e_affine, in, 8, heap, 8, n, NULL, 30.0));
    CHECK(memcmp(heap, in, n * 8) == 0);
    CHECK_OK(mproc_pool_map_array(p, e_affine, heap, 8, out, 8, n, &oa, 30.0));
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(out[i], heap[i] * 2 + 3);
    free(heap);
    /* more than the arena holds: NULL, with a message */
    CHECK(mproc_pool_shared_alloc(p, (size_t)1 << 40) == NULL);
    CHECK(mproc_errmsg()[0] != 0);
    mproc_pool_shared_free(p, out);
    mproc_pool_shared_free(p, in);
    mproc_pool_shared_free(p, NULL);
    int64_t not_a_block;
    mproc_pool_shared_free(p, &not_a_block); /* ignored */
    /* the space comes back */
    void *again = mproc_pool_shared_alloc(p, 40 << 20);
    CHECK(again != NULL);
    mproc_pool_shared_free(p, again);
    close_join_free(p);
}

MTEST(test_pool_map_array_larger_than_the_arena_fails_with_enomem)
{
    mproc_pool_opts po = {.processes = 2, .arena_size = 4096};
    mproc_pool *p;
    CHECK_EQ(mproc_pool_new(&p, &po), MPROC_EINVAL); /* no room for anything */
    po.arena_size = 4 << 20;
    CHECK_OK(mproc_pool_new(&p, &po));
    size_t n = 1 << 20; /* 8 MiB in, 8 MiB out */
    int64_t *in = calloc(n, 8), *out = malloc(n * 8);
    memset(out, 0x5a, n * 8);
    CHECK_EQ(mproc_pool_map_array(p, e_square_i64, in, 8, out, 8, n, NULL, 30.0), MPROC_ENOMEM);
    CHECK_EQ(((uint8_t *)out)[0], 0x5a);
    mproc_result *r = NULL;
    int rc = mproc_pool_map_array_async(p, e_square_i64, in, 8, out, 8, n, NULL, &r);
    if (rc == 0) { /* or the failure is the result's */
        const mproc_value *v;
        rc = mproc_result_get(r, &v, 30.0);
        mproc_result_free(r);
    }
    CHECK_EQ(rc, MPROC_ENOMEM);
    /* what fits still runs */
    for (size_t i = 0; i < 1000; i++)
        in[i] = (int64_t)i;
    CHECK_OK(mproc_pool_map_array(p, e_square_i64, in, 8, out, 8, 1000, NULL, 30.0));
    for (size_t i = 0; i < 1000; i++)
        CHECK_EQ(out[i], (int64_t)(i * i));
    free(in);
    free(out);
    close_join_free(p);
}

MTEST(test_pool_shared_alloc_of_absurd_size_fails)
{
    mproc_pool_opts po = {.processes = 1, .arena_size = 4 << 20};
    mproc_pool *p;
    CHECK_OK(mproc_pool_new(&p, &po));
    /* sizes whose rounding to the arena's alignment wraps around */
    static const size_t absurd[] = {SIZE_MAX,       SIZE_MAX - 1,   SIZE_MAX - 63,
                                    SIZE_MAX - 64,  SIZE_MAX - 100, SIZE_MAX - 127,
                                    SIZE_MAX - 128, SIZE_MAX / 2,   (size_t)1 << 40,
                                    4 << 20};
    for (size_t i = 0; i < sizeof absurd / sizeof absurd[0]; i++) {
        void *b = mproc_pool_shared_alloc(p, absurd[i]);
        if (b)
            fprintf(stderr, "shared_alloc(SIZE_MAX - %zu) gave %p\n", SIZE_MAX - absurd[i], b);
        CHECK(b == NULL);
        CHECK(mproc_errmsg()[0] != 0);
    }
    /* the arena is intact: what fits is still given, and does not overlap */
    uint8_t *a = mproc_pool_shared_alloc(p, 64), *big = mproc_pool_shared_alloc(p, 2 << 20);
    CHECK(a && big);
    CHECK(big >= a + 64 || big + (2 << 20) <= a);
    memset(a, 1, 64);
    memset(big, 2, 2 << 20);
    CHECK_EQ(a[63], 1);
    mproc_pool_shared_free(p, big);
    mproc_pool_shared_free(p, a);
    close_join_free(p);
}

MTEST(test_pool_decode_limits_refuse_an_oversized_result_and_the_pool_goes_on)
{
    mproc_pool_opts po = {.processes = 1, .limits = {.max_items = 50}};
    mproc_pool *p;
    CHECK_OK(mproc_pool_new(&p, &po));
    mproc_value *a = mproc_value_int(10), *out = NULL;
    CHECK_OK(mproc_pool_apply(p, mproc_task_value(t_list_of), a, &out, 30.0));
    CHECK_EQ(mproc_value_len(out), 10);
    mproc_value_free(out);
    out = NULL;
    mproc_value_free(a);
    a = mproc_value_int(1000);
    int rc = mproc_pool_apply(p, mproc_task_value(t_list_of), a, &out, 30.0);
    fprintf(stderr, "oversized result: %s %s\n", mproc_errname(rc), mproc_errmsg());
    CHECK(rc != 0 && out == NULL);
    CHECK(rc != MPROC_ETIMEDOUT && rc != MPROC_EWORKER);
    mproc_value_free(a);
    CHECK_EQ(apply_int(p, t_square, 12), 144);
    close_join_free(p);
}

MTEST(test_pool_map_array_element_error_fails_the_call_and_leaves_out_untouched)
{
    mproc_pool *p = new_pool(2);
    size_t n = 10000;
    int64_t *in = malloc(n * 8), *out = malloc(n * 8), *copy = malloc(n * 8);
    for (size_t i = 0; i < n; i++)
        in[i] = (int64_t)i;
    in[1234] = -1;
    memset(out, 0x5a, n * 8);
    mproc_call_opts o = {.chunksize = 100};
    CHECK_EQ(mproc_pool_map_array(p, e_square_nonneg, in, 8, out, 8, n, &o, 30.0), MPROC_EREMOTE);
    CHECK(strstr(mproc_errmsg(), "negative element -1") != NULL);
    for (size_t i = 0; i < n * 8; i++)
        CHECK_EQ(((uint8_t *)out)[i], 0x5a);
    memcpy(copy, in, n * 8); /* in place: the input survives the failure */
    CHECK_EQ(mproc_pool_map_array(p, e_square_nonneg, in, 8, in, 8, n, NULL, 30.0), MPROC_EREMOTE);
    CHECK(memcmp(in, copy, n * 8) == 0);
    mproc_result *r;
    CHECK_OK(mproc_pool_map_array_async(p, e_square_nonneg, in, 8, out, 8, n, &o, &r));
    const mproc_value *v;
    CHECK_EQ(mproc_result_get(r, &v, 30.0), MPROC_EREMOTE);
    CHECK(strstr(mproc_result_error(r), "negative element -1") != NULL);
    mproc_result_free(r);
    free(in);
    free(out);
    free(copy);
    close_join_free(p);
}

typedef struct progrec {
    _Atomic size_t calls, last, total;
    _Atomic int backwards, total_changed;
} progrec;

static void cb_progress(size_t done, size_t total, void *ud)
{
    progrec *pr = ud;
    if (done < atomic_load(&pr->last) || done > total)
        atomic_store(&pr->backwards, 1);
    size_t t0 = atomic_load(&pr->total);
    if (t0 && t0 != total)
        atomic_store(&pr->total_changed, 1);
    atomic_store(&pr->total, total);
    atomic_store(&pr->last, done);
    atomic_fetch_add(&pr->calls, 1);
}

MTEST(test_pool_map_array_async_copies_in_and_fills_out_when_ready)
{
    mproc_pool *p = new_pool(2);
    size_t n = 100000;
    int64_t *in = malloc(n * 8), *out = malloc(n * 8);
    for (size_t i = 0; i < n; i++)
        in[i] = (int64_t)i;
    progrec pr = {0};
    mproc_call_opts o = {.chunksize = 5000, .on_progress = cb_progress, .ud = &pr};
    mproc_result *r;
    CHECK_OK(mproc_pool_map_array_async(p, e_square_i64, in, 8, out, 8, n, &o, &r));
    memset(in, 0, n * 8); /* `in` was copied before the call returned */
    const mproc_value *v = (const mproc_value *)1;
    CHECK_OK(mproc_result_get(r, &v, 30.0));
    CHECK(v == NULL);
    for (size_t i = 0; i < n; i++)
        CHECK_EQ(out[i], (int64_t)(i * i));
    WAIT_UNTIL(atomic_load(&pr.last) == n, 10.0);
    CHECK_EQ(pr.total, n);
    CHECK(!pr.backwards && !pr.total_changed);
    CHECK(pr.calls >= 1 && pr.calls <= 20);
    mproc_result_free(r);
    free(in);
    free(out);
    close_join_free(p);
}

/* -------------------------------------------------------------- callbacks */

typedef struct cbrec {
    pthread_t main;
    _Atomic int successes, errors, off_main;
    _Atomic int64_t value;
    _Atomic int err;
    _Atomic size_t list_len;
    char msg[256];
} cbrec;

static void cb_success(const mproc_value *res, void *ud)
{
    cbrec *c = ud;
    if (!pthread_equal(pthread_self(), c->main))
        atomic_store(&c->off_main, 1);
    if (res && mproc_value_type(res) == MPROC_V_INT)
        atomic_store(&c->value, mproc_value_as_int(res));
    if (res && mproc_value_type(res) == MPROC_V_LIST)
        atomic_store(&c->list_len, mproc_value_len(res));
    atomic_fetch_add(&c->successes, 1);
}

static void cb_error(int err, const char *message, void *ud)
{
    cbrec *c = ud;
    if (!pthread_equal(pthread_self(), c->main))
        atomic_store(&c->off_main, 1);
    snprintf(c->msg, sizeof c->msg, "%s", message ? message : "(null)");
    atomic_store(&c->err, err);
    atomic_fetch_add(&c->errors, 1);
}

MTEST(test_pool_callbacks_run_on_the_results_thread_before_the_result_is_ready)
{
    mproc_pool *p = new_pool(2);
    cbrec c = {.main = pthread_self()};
    mproc_call_opts o = {.on_success = cb_success, .on_error = cb_error, .ud = &c};
    mproc_result *r = async_int(p, t_square, 9, &o);
    CHECK_OK(mproc_result_wait(r, 30.0));
    /* ready means the callback has already run: no polling */
    CHECK_EQ(c.successes, 1);
    CHECK_EQ(c.errors, 0);
    CHECK_EQ(c.value, 81);
    CHECK(c.off_main);
    mproc_result_free(r);

    r = async_int(p, t_fail_on_7, 7, &o);
    CHECK_OK(mproc_result_wait(r, 30.0));
    CHECK_EQ(c.errors, 1);
    CHECK_EQ(c.successes, 1);
    CHECK_EQ(c.err, MPROC_EREMOTE);
    CHECK(strstr(c.msg, "item 7 is bad") != NULL);
    mproc_result_free(r);

    /* map_async: on_success gets the list */
    mproc_value *items = ints(0, 50);
    CHECK_OK(mproc_pool_map_async(p, mproc_task_value(t_square), items, &o, &r));
    CHECK_OK(mproc_result_wait(r, 30.0));
    CHECK_EQ(c.successes, 2);
    CHECK_EQ(c.list_len, 50);
    mproc_result_free(r);
    /* synchronous map with callbacks: they have run when it returns */
    mproc_value *out = NULL;
    CHECK_OK(mproc_pool_map(p, mproc_task_value(t_square), items, &o, &out, 30.0));
    CHECK_EQ(c.successes, 3);
    mproc_value_free(out);
    /* worker death reaches on_error as MPROC_EWORKER */
    r = async_int(p, t_crash_always, 0, &o);
    CHECK_OK(mproc_result_wait(r, 30.0));
    CHECK_EQ(c.errors, 2);
    CHECK_EQ(c.err, MPROC_EWORKER);
    mproc_result_free(r);
    mproc_value_free(items);
    close_join_free(p);
}

MTEST(test_pool_on_progress_is_monotonic_and_reaches_the_total)
{
    mproc_pool *p = new_pool(3);
    mproc_value *items = ints(0, 200);
    progrec pr = {0};
    mproc_call_opts o = {.chunksize = 10, .on_progress = cb_progress, .ud = &pr};
    mproc_result *r;
    CHECK_OK(mproc_pool_map_async(p, mproc_task_value(t_square), items, &o, &r));
    const mproc_value *v;
    CHECK_OK(mproc_result_get(r, &v, 30.0));
    check_squares(v, 0, 200);
    WAIT_UNTIL(atomic_load(&pr.last) == 200, 10.0);
    CHECK_EQ(pr.total, 200);
    CHECK(!pr.backwards && !pr.total_changed);
    CHECK(pr.calls >= 1 && pr.calls <= 20); /* after each chunk at most */
    mproc_result_free(r);
    /* starmap and the synchronous map report progress too */
    progrec p2 = {0};
    o.ud = &p2;
    mproc_value *out;
    CHECK_OK(mproc_pool_map(p, mproc_task_value(t_square), items, &o, &out, 30.0));
    mproc_value_free(out);
    WAIT_UNTIL(atomic_load(&p2.last) == 200, 10.0);
    CHECK(!p2.backwards);
    mproc_value_free(items);
    close_join_free(p);
}

/* Records the order of progress and finish callbacks. */
typedef struct ordrec {
    _Atomic size_t last;      /* the last progress count */
    _Atomic size_t at_finish; /* the progress count when the finish callback ran */
    _Atomic int finished, after_finish;
} ordrec;

static void ord_progress(size_t done, size_t total, void *ud)
{
    (void)total;
    ordrec *o = ud;
    if (atomic_load(&o->finished))
        atomic_fetch_add(&o->after_finish, 1);
    atomic_store(&o->last, done);
}

static void ord_finish(const mproc_value *res, void *ud)
{
    (void)res;
    ordrec *o = ud;
    atomic_store(&o->at_finish, atomic_load(&o->last));
    atomic_store(&o->finished, 1);
}

MTEST(test_pool_progress_comes_before_ready)
{
    mproc_pool *p = new_pool(2);
    /* map_async: the last chunk's progress runs before on_success, and both
     * before the result is ready (no polling after the wait) */
    mproc_value *items = ints(0, 8);
    ordrec o1 = {0};
    mproc_call_opts o = {.chunksize = 2, .on_progress = ord_progress, .on_success = ord_finish,
                         .ud = &o1};
    mproc_result *r;
    CHECK_OK(mproc_pool_map_async(p, mproc_task_value(t_square), items, &o, &r));
    CHECK_OK(mproc_result_wait(r, 30.0));
    CHECK_EQ(o1.at_finish, 8);
    CHECK_EQ(o1.last, 8);
    CHECK_EQ(o1.after_finish, 0);
    mproc_result_free(r);
    /* map_array_async, the same */
    size_t n = 1000;
    int64_t *in = malloc(n * 8), *out = malloc(n * 8);
    CHECK(in && out);
    for (size_t i = 0; i < n; i++)
        in[i] = (int64_t)i;
    ordrec o2 = {0};
    mproc_call_opts oa = {.chunksize = 100, .on_progress = ord_progress, .on_success = ord_finish,
                          .ud = &o2};
    CHECK_OK(mproc_pool_map_array_async(p, e_square_i64, in, 8, out, 8, n, &oa, &r));
    CHECK_OK(mproc_result_wait(r, 30.0));
    CHECK_EQ(o2.at_finish, n);
    CHECK_EQ(o2.last, n);
    CHECK_EQ(o2.after_finish, 0);
    mproc_result_free(r);
    CHECK_EQ(out[n - 1], (int64_t)((n - 1) * (n - 1)));
    /* a synchronous map: every progress callback has run when it returns */
    for (int k = 0; k < 5; k++) {
        ordrec o3 = {0};
        mproc_call_opts os = {.chunksize = 2, .on_progress = ord_progress, .ud = &o3};
        mproc_value *res = NULL;
        CHECK_OK(mproc_pool_map(p, mproc_task_value(t_square), items, &os, &res, 30.0));
        CHECK_EQ(o3.last, 8);
        mproc_value_free(res);
        ordrec o4 = {0};
        os.chunksize = 100;
        os.ud = &o4;
        CHECK_OK(mproc_pool_map_array(p, e_square_i64, in, 8, out, 8, n, &os, 30.0));
        CHECK_EQ(o4.last, n);
    }
    free(in);
    free(out);
    mproc_value_free(items);
    close_join_free(p);
}

/* Counts callbacks, and those that run after the call that set them returned. */
typedef struct latecb {
    _Atomic int returned, calls, late;
} latecb;

static void late_note(void *ud)
{
    latecb *l = ud;
    atomic_fetch_add(&l->calls, 1);
    if (atomic_load(&l->returned))
        atomic_fetch_add(&l->late, 1);
}

static void late_progress(size_t done, size_t total, void *ud)
{
    (void)done;
    (void)total;
    late_note(ud);
}

static void late_success(const mproc_value *res, void *ud)
{
    (void)res;
    late_note(ud);
}

static void late_error(int err, const char *message, void *ud)
{
    (void)err;
    (void)message;
    late_note(ud);
}

/* Every callback event queued so far has run once this returns: events run in
 * order on the results thread, and a call is ready only after its own. */
static void flush_callbacks(mproc_pool *p)
{
    mproc_result *r = async_int(p, t_square, 2, NULL);
    CHECK_OK(mproc_result_wait(r, 10.0));
    mproc_result_free(r);
}

MTEST(test_pool_callbacks_never_run_after_a_sync_call_returned)
{
    shared_new();
    mproc_pool *p = new_pool(2);
    /* map_array that times out while its two elements run (one per worker) */
    latecb l1 = {0};
    mproc_call_opts o = {.chunksize = 1, .on_progress = late_progress, .on_success = late_success,
                         .on_error = late_error, .ud = &l1};
    int64_t in[2] = {0, 1}, out[2] = {-1, -1};
    uint64_t base = stats(p).items_done;
    CHECK_EQ(mproc_pool_map_array(p, e_gate, in, 8, out, 8, 2, &o, 0.1), MPROC_ETIMEDOUT);
    atomic_store(&l1.returned, 1);
    WAIT_UNTIL(atomic_load(&S->started[0]) && atomic_load(&S->started[1]), 10.0);
    atomic_store(&S->gate[0], 1);
    atomic_store(&S->gate[1], 1);
    WAIT_UNTIL(stats(p).items_done >= base + 2, 10.0);
    flush_callbacks(p);
    CHECK_EQ(out[0], -1); /* nor was out written */
    CHECK_EQ(out[1], -1);
    /* map that times out, then succeeds in the workers */
    latecb l2 = {0};
    o.ud = &l2;
    mproc_value *items = mproc_value_list(), *res = NULL;
    CHECK_OK(mproc_value_append(items, mproc_value_int(2)));
    CHECK_OK(mproc_value_append(items, mproc_value_int(3)));
    base = stats(p).items_done;
    CHECK_EQ(mproc_pool_map(p, mproc_task_value(t_gate), items, &o, &res, 0.1), MPROC_ETIMEDOUT);
    atomic_store(&l2.returned, 1);
    CHECK(res == NULL);
    WAIT_UNTIL(atomic_load(&S->started[2]) && atomic_load(&S->started[3]), 10.0);
    atomic_store(&S->gate[2], 1);
    atomic_store(&S->gate[3], 1);
    WAIT_UNTIL(stats(p).items_done >= base + 2, 10.0);
    flush_callbacks(p);
    mproc_value_free(items);
    /* map that fails (item -5) while its other item (gate 5) still runs */
    latecb l3 = {0};
    o.ud = &l3;
    items = mproc_value_list();
    CHECK_OK(mproc_value_append(items, mproc_value_int(-5)));
    CHECK_OK(mproc_value_append(items, mproc_value_int(5)));
    base = stats(p).items_done;
    mproc_task fail5 = mproc_task_value(t_gate_or_fail_once_started);
    CHECK_EQ(mproc_pool_map(p, fail5, items, &o, &res, 30.0), MPROC_EREMOTE);
    atomic_store(&l3.returned, 1);
    CHECK(res == NULL);
    CHECK(atomic_load(&l3.calls) >= 1); /* on_error, before it returned */
    atomic_store(&S->gate[5], 1);
    WAIT_UNTIL(stats(p).items_done >= base + 2, 10.0);
    flush_callbacks(p);
    mproc_value_free(items);
    fprintf(stderr, "late callbacks: map_array timed out %d, map timed out %d, map failed %d\n",
            (int)l1.late, (int)l2.late, (int)l3.late);
    CHECK_EQ(l1.late, 0);
    CHECK_EQ(l2.late, 0);
    CHECK_EQ(l3.late, 0);
    close_join_free(p);
    shared_free();
}

typedef struct blockctx {
    mproc_pool *pool;
    mproc_result *other; /* not ready while the callback runs */
    _Atomic int apply_rc, bytes_rc, map_rc, starmap_rc, array_rc, get_rc, take_rc, join_rc;
    _Atomic int called;
} blockctx;

static void cb_blocking(const mproc_value *res, void *ud)
{
    (void)res;
    blockctx *b = ud;
    mproc_value *a = mproc_value_int(2), *out = NULL;
    b->apply_rc = mproc_pool_apply(b->pool, mproc_task_value(t_square), a, &out, 5.0);
    mproc_value_free(out);
    out = NULL;
    void *bo = NULL;
    size_t bn;
    b->bytes_rc = mproc_pool_apply_bytes(b->pool, t_reverse, "ab", 2, &bo, &bn, 5.0);
    free(bo);
    mproc_value *l = ints(0, 3);
    b->map_rc = mproc_pool_map(b->pool, mproc_task_value(t_square), l, NULL, &out, 5.0);
    mproc_value_free(out);
    out = NULL;
    mproc_value_free(l);
    mproc_value *sl = mproc_value_list(), *pair = ints(1, 2);
    mproc_value_append(sl, pair);
    b->starmap_rc = mproc_pool_starmap(b->pool, t_mul, sl, NULL, &out, 5.0);
    mproc_value_free(out);
    mproc_value_free(sl);
    int64_t arr[2] = {1, 2};
    b->array_rc = mproc_pool_map_array(b->pool, e_square_i64, arr, 8, arr, 8, 2, NULL, 5.0);
    const mproc_value *v;
    b->get_rc = mproc_result_get(b->other, &v, 5.0);
    mproc_value *tv = NULL;
    b->take_rc = mproc_result_take(b->other, &tv, 5.0);
    mproc_value_free(tv);
    b->join_rc = mproc_pool_join(b->pool, 5.0);
    mproc_value_free(a);
    atomic_store(&b->called, 1);
}

MTEST(test_pool_blocking_calls_from_a_callback_fail_with_edeadlk)
{
    shared_new();
    mproc_pool *p = new_pool(2);
    blockctx b = {.pool = p};
    b.other = async_int(p, t_gate, 0, NULL);
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    mproc_call_opts o = {.on_success = cb_blocking, .ud = &b};
    double t0 = mproc_monotonic();
    mproc_result *r = async_int(p, t_square, 3, &o);
    CHECK_EQ(result_int(r), 9);
    CHECK(b.called);
    CHECK(mproc_monotonic() - t0 < 4.0); /* nothing waited for its 5 s timeout */
    CHECK_EQ(b.apply_rc, MPROC_EDEADLK);
    CHECK_EQ(b.bytes_rc, MPROC_EDEADLK);
    CHECK_EQ(b.map_rc, MPROC_EDEADLK);
    CHECK_EQ(b.starmap_rc, MPROC_EDEADLK);
    CHECK_EQ(b.array_rc, MPROC_EDEADLK);
    CHECK_EQ(b.get_rc, MPROC_EDEADLK);
    CHECK_EQ(b.take_rc, MPROC_EDEADLK);
    CHECK_EQ(b.join_rc, MPROC_EDEADLK);
    atomic_store(&S->gate[0], 1);
    CHECK_EQ(result_int(b.other), 0);
    mproc_result_free(b.other);
    mproc_result_free(r);
    close_join_free(p);
    shared_free();
}

typedef struct chainctx {
    mproc_pool *pool;
    _Atomic(mproc_result *) chained;
    _Atomic int rc;
} chainctx;

static void cb_chain(const mproc_value *res, void *ud)
{
    chainctx *c = ud;
    mproc_result *r = NULL;
    mproc_value *a = mproc_value_int(mproc_value_as_int(res) + 1);
    c->rc = mproc_pool_apply_async(c->pool, mproc_task_value(t_square), a, NULL, &r);
    mproc_value_free(a);
    atomic_store(&c->chained, r);
}

MTEST(test_pool_callback_may_submit_more_work_with_apply_async)
{
    mproc_pool *p = new_pool(2);
    chainctx c = {.pool = p};
    mproc_call_opts o = {.on_success = cb_chain, .ud = &c};
    mproc_result *r = async_int(p, t_square, 3, &o); /* 9, then (9+1)^2 */
    CHECK_EQ(result_int(r), 9);
    CHECK_OK(c.rc);
    mproc_result *ch = atomic_load(&c.chained);
    CHECK(ch != NULL);
    CHECK_EQ(result_int(ch), 100);
    mproc_result_free(ch);
    mproc_result_free(r);
    close_join_free(p);
}

MTEST(test_pool_result_freed_before_ready_still_fires_its_callbacks)
{
    shared_new();
    mproc_pool *p = new_pool(2);
    cbrec c = {.main = pthread_self()};
    mproc_call_opts o = {.on_success = cb_success, .ud = &c};
    mproc_result *r = async_int(p, t_gate, 3, &o);
    mproc_result_free(r); /* the task runs on */
    WAIT_UNTIL(atomic_load(&S->started[3]), 10.0);
    atomic_store(&S->gate[3], 1);
    WAIT_UNTIL(atomic_load(&c.successes) == 1, 20.0);
    CHECK_EQ(c.value, 3);
    close_join_free(p);
    shared_free();
}

/* ------------------------------------------------------- errors, timeouts */

MTEST(test_pool_task_error_message_reaches_the_caller)
{
    mproc_pool *p = new_pool(2);
    CHECK_EQ(apply_rc(p, t_fail_on_7, 7, 30.0, NULL), MPROC_EREMOTE);
    CHECK(strstr(mproc_errmsg(), "item 7 is bad") != NULL);
    CHECK_EQ(apply_int(p, t_fail_on_7, 8), 80); /* the worker is fine */
    mproc_result *r = async_int(p, t_fail_on_7, 7, NULL);
    CHECK_OK(mproc_result_wait(r, 30.0));
    CHECK(strstr(mproc_result_error(r), "item 7 is bad") != NULL);
    mproc_result_free(r);
    /* a long message is cut at 1 KiB, not lost */
    r = async_int(p, t_long_error, 0, NULL);
    const mproc_value *v;
    CHECK_EQ(mproc_result_get(r, &v, 30.0), MPROC_EREMOTE);
    const char *m = mproc_result_error(r);
    CHECK(m && strncmp(m, "aaaaaaaa", 8) == 0 && strstr(m, "END") == NULL);
    CHECK(strlen(m) >= 500 && strlen(m) <= 1024);
    CHECK(strncmp(mproc_errmsg(), "aaaaaaaa", 8) == 0);
    mproc_result_free(r);
    CHECK_EQ(stats(p).workers_died, 0);
    close_join_free(p);
}

MTEST(test_pool_task_returning_a_bare_code_reports_its_name)
{
    mproc_pool *p = new_pool(1);
    CHECK_EQ(apply_rc(p, t_bare_code, 0, 30.0, NULL), MPROC_EREMOTE);
    if (!strstr(mproc_errmsg(), "MPROC_ERANGE")) {
        fprintf(stderr, "errmsg: '%s'\n", mproc_errmsg());
        CHECK(!"the code's name is in the message");
    }
    mproc_result *r = async_int(p, t_bare_code, 0, NULL);
    const mproc_value *v;
    CHECK_EQ(mproc_result_get(r, &v, 30.0), MPROC_EREMOTE);
    CHECK(strstr(mproc_result_error(r), "MPROC_ERANGE") != NULL);
    mproc_result_free(r);
    close_join_free(p);
}

MTEST(test_pool_get_with_a_short_timeout_on_a_slow_task_returns_etimedout_quickly)
{
    shared_new();
    mproc_pool *p = new_pool(2);
    mproc_result *r = async_int(p, t_gate, 0, NULL);
    const mproc_value *v;
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_result_get(r, &v, 0.05), MPROC_ETIMEDOUT);
    double dt = mproc_monotonic() - t0;
    CHECK(dt >= 0.045 && dt < 2.0);
    t0 = mproc_monotonic();
    CHECK_EQ(mproc_result_wait(r, 0.05), MPROC_ETIMEDOUT);
    dt = mproc_monotonic() - t0;
    CHECK(dt >= 0.045 && dt < 2.0);
    /* apply with a timeout: ETIMEDOUT, the task runs on, the pool stays usable */
    t0 = mproc_monotonic();
    CHECK_EQ(apply_rc(p, t_gate, 1, 0.05, NULL), MPROC_ETIMEDOUT);
    dt = mproc_monotonic() - t0;
    CHECK(dt >= 0.045 && dt < 2.0);
    WAIT_UNTIL(atomic_load(&S->started[1]), 10.0);
    atomic_store(&S->gate[0], 1);
    atomic_store(&S->gate[1], 1);
    CHECK_EQ(result_int(r), 0);
    CHECK_EQ(apply_int(p, t_square, 6), 36);
    /* a map that cannot finish in time */
    S->gate[2] = 0;
    mproc_value *items = mproc_value_list(), *out = NULL;
    CHECK_OK(mproc_value_append(items, mproc_value_int(2)));
    t0 = mproc_monotonic();
    CHECK_EQ(mproc_pool_map(p, mproc_task_value(t_gate), items, NULL, &out, 0.05), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 < 2.0);
    CHECK(out == NULL);
    atomic_store(&S->gate[2], 1);
    mproc_value_free(items);
    mproc_result_free(r);
    close_join_free(p);
    shared_free();
}

/* ------------------------------------------- close, join, terminate, free */

MTEST(test_pool_close_then_join_finishes_queued_work)
{
    mproc_pool *p = new_pool(2);
    mproc_result *r[20];
    for (int i = 0; i < 20; i++)
        r[i] = async_int(p, t_sleep_ms, 5 + i % 3, NULL);
    mproc_value *items = ints(0, 100);
    mproc_result *m;
    CHECK_OK(mproc_pool_map_async(p, mproc_task_value(t_square), items, NULL, &m));
    mproc_imap *it;
    CHECK_OK(mproc_pool_imap(p, mproc_task_value(t_square), items, NULL, &it));
    CHECK_OK(mproc_pool_close(p));
    CHECK_OK(mproc_pool_close(p)); /* idempotent */
    CHECK_OK(mproc_pool_join(p, 30.0));
    CHECK_EQ(live_workers(p), 0);
    for (int i = 0; i < 20; i++) {
        CHECK(mproc_result_ready(r[i]));
        CHECK_EQ(mproc_result_successful(r[i]), 1);
        CHECK_EQ(result_int(r[i]), 5 + i % 3);
        mproc_result_free(r[i]);
    }
    const mproc_value *v;
    CHECK_OK(mproc_result_get(m, &v, 0));
    check_squares(v, 0, 100);
    mproc_result_free(m);
    for (size_t i = 0; i < 100; i++) {
        mproc_value *x;
        size_t idx;
        CHECK_OK(mproc_imap_next(it, &x, &idx, 0));
        CHECK_EQ(idx, i);
        CHECK_EQ(mproc_value_as_int(x), (int64_t)(i * i));
        mproc_value_free(x);
    }
    mproc_imap_free(it);
    CHECK_EQ(stats(p).items_done, 220);
    CHECK_OK(mproc_pool_join(p, 1.0)); /* again: still joined */
    mproc_value_free(items);
    mproc_pool_free(p);
}

MTEST(test_pool_join_after_close_returns_promptly_once_the_running_task_ends)
{
    shared_new();
    mproc_pool *p = new_pool(2);
    mproc_result *r = async_int(p, t_gate, 0, NULL);
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    CHECK_OK(mproc_pool_close(p));
    CHECK_EQ(mproc_pool_join(p, 0.05), MPROC_ETIMEDOUT); /* the task still runs */
    double t0 = mproc_monotonic();
    atomic_store(&S->gate[0], 1);
    CHECK_OK(mproc_pool_join(p, 30.0));
    double dt = mproc_monotonic() - t0;
    fprintf(stderr, "join returned %.3f s after the last task could end\n", dt);
    CHECK(dt < 0.5);
    CHECK_EQ(result_int(r), 0);
    mproc_result_free(r);
    mproc_pool_free(p);
    shared_free();
}

MTEST(test_pool_join_before_close_is_estate)
{
    mproc_pool *p = new_pool(1);
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_pool_join(p, 5.0), MPROC_ESTATE);
    CHECK(mproc_monotonic() - t0 < 1.0);
    CHECK_EQ(apply_int(p, t_square, 3), 9);
    close_join_free(p);
}

MTEST(test_pool_calls_after_close_are_estate)
{
    mproc_pool *p = new_pool(2);
    CHECK_OK(mproc_pool_close(p));
    mproc_value *i = mproc_value_int(3), *l = ints(0, 3), *out = NULL;
    mproc_value *sl = mproc_value_list();
    CHECK_OK(mproc_value_append(sl, ints(1, 2)));
    mproc_result *r = NULL;
    mproc_imap *it = NULL;
    void *bo = NULL;
    size_t bn;
    int64_t arr[3] = {1, 2, 3};
    CHECK_EQ(mproc_pool_apply(p, mproc_task_value(t_square), i, &out, 5.0), MPROC_ESTATE);
    CHECK_EQ(mproc_pool_apply_bytes(p, t_reverse, "ab", 2, &bo, &bn, 5.0), MPROC_ESTATE);
    CHECK_EQ(mproc_pool_apply_async(p, mproc_task_value(t_square), i, NULL, &r), MPROC_ESTATE);
    CHECK_EQ(mproc_pool_map(p, mproc_task_value(t_square), l, NULL, &out, 5.0), MPROC_ESTATE);
    CHECK_EQ(mproc_pool_map_async(p, mproc_task_value(t_square), l, NULL, &r), MPROC_ESTATE);
    CHECK_EQ(mproc_pool_starmap(p, t_mul, sl, NULL, &out, 5.0), MPROC_ESTATE);
    CHECK_EQ(mproc_pool_starmap_async(p, t_mul, sl, NULL, &r), MPROC_ESTATE);
    CHECK_EQ(mproc_pool_imap(p, mproc_task_value(t_square), l, NULL, &it), MPROC_ESTATE);
    CHECK_EQ(mproc_pool_imap_unordered(p, mproc_task_value(t_square), l, NULL, &it), MPROC_ESTATE);
    CHECK_EQ(mproc_pool_map_array(p, e_square_i64, arr, 8, arr, 8, 3, NULL, 5.0), MPROC_ESTATE);
    CHECK_EQ(mproc_pool_map_array_async(p, e_square_i64, arr, 8, arr, 8, 3, NULL, &r),
             MPROC_ESTATE);
    CHECK(out == NULL && r == NULL && it == NULL && bo == NULL);
    CHECK_EQ(arr[2], 3);
    CHECK_OK(mproc_pool_join(p, 30.0));
    CHECK_OK(mproc_pool_terminate(p)); /* after close and join: nothing to do, not an error */
    mproc_value_free(i);
    mproc_value_free(l);
    mproc_value_free(sl);
    mproc_pool_free(p);
}

MTEST(test_pool_terminate_with_tasks_in_flight_cancels_them_and_join_returns_promptly)
{
    shared_new();
    mproc_pool *p = new_pool(2);
    mproc_result *r[8];
    r[0] = async_int(p, t_gate, 0, NULL); /* gates never opened */
    r[1] = async_int(p, t_gate, 1, NULL);
    for (int i = 2; i < 8; i++)
        r[i] = async_int(p, t_square, i, NULL);
    mproc_value *items = ints(0, 10);
    mproc_imap *it;
    CHECK_OK(mproc_pool_imap(p, mproc_task_value(t_square), items, NULL, &it));
    WAIT_UNTIL(atomic_load(&S->started[0]) && atomic_load(&S->started[1]), 10.0);
    double t0 = mproc_monotonic();
    CHECK_OK(mproc_pool_terminate(p));
    CHECK_OK(mproc_pool_join(p, 10.0));
    CHECK(mproc_monotonic() - t0 < 5.0);
    CHECK_OK(mproc_pool_terminate(p)); /* idempotent */
    CHECK_EQ(live_workers(p), 0);
    for (int i = 0; i < 8; i++) {
        const mproc_value *v;
        int rc = mproc_result_get(r[i], &v, 5.0);
        if (rc != MPROC_ECANCELED)
            fprintf(stderr, "result %d after terminate: %s %s\n", i, mproc_errname(rc),
                    mproc_errmsg());
        CHECK_EQ(rc, MPROC_ECANCELED);
        CHECK(mproc_result_ready(r[i]));
        CHECK_EQ(mproc_result_successful(r[i]), 0);
        mproc_result_free(r[i]);
    }
    for (size_t i = 0; i < 10; i++) {
        mproc_value *v = NULL;
        size_t idx = 99;
        CHECK_EQ(mproc_imap_next(it, &v, &idx, 5.0), MPROC_ECANCELED);
        CHECK_EQ(idx, i);
    }
    mproc_value *v;
    CHECK_EQ(mproc_imap_next(it, &v, NULL, 5.0), MPROC_ECLOSED);
    mproc_imap_free(it);
    CHECK_EQ(apply_rc(p, t_square, 1, 5.0, NULL), MPROC_ESTATE);
    mproc_value_free(items);
    mproc_pool_free(p);
    shared_free();
}

MTEST(test_pool_free_with_unfinished_results_cancels_them_and_they_stay_valid)
{
    shared_new();
    mproc_pool *p = new_pool(1);
    mproc_result *g = async_int(p, t_gate, 0, NULL); /* never opened */
    mproc_result *q = async_int(p, t_square, 3, NULL);
    mproc_value *items = ints(0, 5);
    mproc_result *m;
    CHECK_OK(mproc_pool_map_async(p, mproc_task_value(t_square), items, NULL, &m));
    mproc_imap *it;
    CHECK_OK(mproc_pool_imap_unordered(p, mproc_task_value(t_square), items, NULL, &it));
    int64_t arr[4] = {1, 2, 3, 4};
    mproc_result *a;
    CHECK_OK(mproc_pool_map_array_async(p, e_square_i64, arr, 8, arr, 8, 4, NULL, &a));
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    double t0 = mproc_monotonic();
    mproc_pool_free(p);
    CHECK(mproc_monotonic() - t0 < 5.0);
    mproc_result *all[] = {g, q, m, a};
    static const char *names[] = {"running apply_async", "queued apply_async", "map_async",
                                  "map_array_async"};
    for (int i = 0; i < 4; i++) {
        const mproc_value *v;
        if (!mproc_result_ready(all[i]))
            fprintf(stderr, "%s not ready after mproc_pool_free\n", names[i]);
        CHECK(mproc_result_ready(all[i]));
        CHECK_EQ(mproc_result_get(all[i], &v, 0), MPROC_ECANCELED);
        CHECK_EQ(mproc_result_successful(all[i]), 0);
        mproc_result_free(all[i]);
    }
    CHECK_EQ(arr[3], 4); /* out was not written */
    int cancelled = 0;
    for (int i = 0; i < 5; i++) {
        mproc_value *v = NULL;
        size_t idx;
        CHECK_EQ(mproc_imap_next(it, &v, &idx, 0), MPROC_ECANCELED);
        CHECK(idx < 5);
        cancelled++;
    }
    mproc_value *v;
    CHECK_EQ(mproc_imap_next(it, &v, NULL, 0), MPROC_ECLOSED);
    CHECK_EQ(cancelled, 5);
    mproc_imap_free(it);
    mproc_value_free(items);
    shared_free();
}

/* --------------------------------------------------------- worker recycling */

MTEST(test_pool_maxtasksperchild_recycles_workers)
{
    mproc_pool_opts o = {.processes = 2, .maxtasksperchild = 2};
    mproc_pool *p;
    CHECK_OK(mproc_pool_new(&p, &o));
    int64_t pids[10];
    for (int i = 0; i < 10; i++)
        pids[i] = apply_int(p, t_pid, i);
    CHECK(count_distinct(pids, 10) >= 5); /* at most 2 tasks per worker */
    WAIT_UNTIL(stats(p).workers_recycled >= 4, 20.0);
    WAIT_UNTIL(live_workers(p) == 2, 20.0);
    CHECK_EQ(mproc_pool_processes(p), 2);
    mproc_pool_stats st = stats(p);
    CHECK_EQ(st.workers_died, 0);
    CHECK(st.workers_started >= 6);
    /* map with chunksize 1: each chunk is a task */
    mproc_value *items = ints(0, 20), *out = NULL;
    mproc_call_opts c1 = {.chunksize = 1};
    CHECK_OK(mproc_pool_map(p, mproc_task_value(t_pid), items, &c1, &out, 30.0));
    int64_t mp[20];
    for (size_t i = 0; i < 20; i++)
        mp[i] = list_int(out, i);
    CHECK(count_distinct(mp, 20) >= 10);
    mproc_value_free(out);
    mproc_value_free(items);
    CHECK_EQ(stats(p).items_failed, 0);
    close_join_free(p);
}

/* ----------------------------------------------------------------- crashes */

MTEST(test_pool_item_whose_worker_dies_fails_with_eworker_and_the_others_complete)
{
    mproc_pool *p = new_pool(3);
    WAIT_UNTIL(live_workers(p) == 3, 10.0);
    mproc_value *items = ints(0, 20);
    mproc_call_opts o = {.chunksize = 4}; /* 5 dies holding 4, 6, 7 too */
    mproc_imap *it;
    CHECK_OK(mproc_pool_imap(p, mproc_task_value(t_kill_on_5), items, &o, &it));
    for (size_t i = 0; i < 20; i++) {
        mproc_value *v = NULL;
        size_t idx = 99;
        int rc = mproc_imap_next(it, &v, &idx, 30.0);
        CHECK_EQ(idx, i);
        if (i == 5) {
            CHECK_EQ(rc, MPROC_EWORKER);
        } else {
            CHECK_OK(rc);
            CHECK_EQ(mproc_value_as_int(v), (int64_t)(i * i));
            mproc_value_free(v);
        }
    }
    mproc_imap_free(it);
    WAIT_UNTIL(stats(p).workers_died == 1, 10.0);
    WAIT_UNTIL(live_workers(p) == 3, 20.0); /* replaced */
    CHECK_EQ(mproc_pool_processes(p), 3);
    CHECK_EQ(stats(p).workers_started, 4);
    /* map: the call fails with EWORKER */
    mproc_value *out = NULL;
    CHECK_EQ(mproc_pool_map(p, mproc_task_value(t_kill_on_5), items, &o, &out, 30.0),
             MPROC_EWORKER);
    /* apply */
    CHECK_EQ(apply_rc(p, t_kill_on_5, 5, 30.0, NULL), MPROC_EWORKER);
    CHECK_EQ(apply_int(p, t_kill_on_5, 4), 16);
    WAIT_UNTIL(stats(p).workers_died == 3, 10.0);
    WAIT_UNTIL(live_workers(p) == 3, 20.0);
    WAIT_UNTIL(stats(p).items_failed == 3, 10.0);
    mproc_pool_stats st = stats(p);
    CHECK_EQ(st.items_retried, 0);
    mproc_value_free(items);
    close_join_free(p);
}

MTEST(test_pool_retry_crashed_reruns_an_item_whose_worker_died)
{
    shared_new();
    mproc_pool_opts o = {.processes = 2, .retry_crashed = true};
    mproc_pool *p;
    CHECK_OK(mproc_pool_new(&p, &o));
    CHECK_EQ(apply_int(p, t_crash_once, 41), 42);
    CHECK_EQ(S->runs, 2);
    WAIT_UNTIL(stats(p).workers_died == 1, 10.0);
    mproc_pool_stats st = stats(p);
    CHECK_EQ(st.items_retried, 1);
    CHECK_EQ(st.items_failed, 0);
    /* a map whose first run crashes a worker holding a chunk */
    S->runs = 0;
    mproc_value *items = ints(0, 30), *out = NULL;
    mproc_call_opts c = {.chunksize = 5};
    CHECK_OK(mproc_pool_map(p, mproc_task_value(t_crash_once), items, &c, &out, 30.0));
    for (size_t i = 0; i < 30; i++)
        CHECK_EQ(list_int(out, i), (int64_t)i + 1);
    mproc_value_free(out);
    mproc_value_free(items);
    WAIT_UNTIL(stats(p).workers_died == 2, 10.0);
    CHECK_EQ(stats(p).items_retried, 2);
    WAIT_UNTIL(live_workers(p) == 2, 20.0);
    close_join_free(p);

    /* without retry_crashed the same item fails */
    S->runs = 0;
    p = new_pool(2);
    CHECK_EQ(apply_rc(p, t_crash_once, 41, 30.0, NULL), MPROC_EWORKER);
    CHECK_EQ(apply_int(p, t_crash_once, 41), 42);
    CHECK_EQ(stats(p).items_retried, 0);
    close_join_free(p);
    shared_free();
}

MTEST(test_pool_retry_crashed_fails_an_item_that_kills_every_worker_it_runs_on)
{
    mproc_pool_opts o = {.processes = 2, .retry_crashed = true};
    mproc_pool *p;
    CHECK_OK(mproc_pool_new(&p, &o));
    CHECK_EQ(apply_rc(p, t_crash_always, 0, 30.0, NULL), MPROC_EWORKER);
    WAIT_UNTIL(stats(p).workers_died == 2, 10.0);
    mproc_pool_stats st = stats(p);
    CHECK_EQ(st.items_retried, 1);
    CHECK_EQ(st.items_failed, 1);
    CHECK_EQ(apply_int(p, t_square, 7), 49);
    close_join_free(p);
}

MTEST(test_pool_failing_initializer_in_a_replacement_breaks_the_pool_with_eworker)
{
    shared_new();
    mproc_pool_opts o = {.processes = 1, .initializer = init_only_first};
    mproc_pool *p;
    CHECK_OK(mproc_pool_new(&p, &o));
    CHECK_EQ(apply_int(p, t_square, 2), 4);
    mproc_result *crash = async_int(p, t_crash_always, 0, NULL);
    mproc_result *waiting = async_int(p, t_square, 3, NULL);
    const mproc_value *v;
    CHECK_EQ(mproc_result_get(crash, &v, 30.0), MPROC_EWORKER);
    CHECK_EQ(mproc_result_get(waiting, &v, 30.0), MPROC_EWORKER);
    mproc_result_free(crash);
    mproc_result_free(waiting);
    CHECK(S->inits >= 2);
    /* no call hangs on the broken pool */
    int rc = apply_rc(p, t_square, 4, 10.0, NULL);
    CHECK(rc == MPROC_EWORKER || rc == MPROC_ESTATE);
    double t0 = mproc_monotonic();
    mproc_pool_free(p);
    CHECK(mproc_monotonic() - t0 < 10.0);
    shared_free();
}

MTEST(test_pool_replacement_whose_initializer_crashes_breaks_the_pool_when_idle)
{
    shared_new();
    mproc_pool_opts o = {.processes = 1, .initializer = init_crash_after_1};
    mproc_pool *p;
    CHECK_OK(mproc_pool_new(&p, &o));
    pid_t pid = 0;
    CHECK_EQ(mproc_pool_worker_pids(p, &pid, 1), 1);
    CHECK_EQ(kill(pid, SIGKILL), 0);
    /* no work is waiting: the replacements die in their initializer, and the
     * pool stops replacing them instead of restarting them forever (while it
     * restarts them, one more has always started than died) */
    WAIT_UNTIL(every_worker_died(p), 10.0);
    CHECK_EQ(live_workers(p), 0);
    mproc_pool_stats st = stats(p);
    fprintf(stderr, "workers started %llu, died %llu\n", (unsigned long long)st.workers_started,
            (unsigned long long)st.workers_died);
    CHECK(st.workers_started >= 2 && st.workers_started <= 10);
    CHECK_EQ(st.workers_died, st.workers_started);
    /* broken: calls fail at once instead of waiting for a worker */
    double t0 = mproc_monotonic();
    int rc = apply_rc(p, t_square, 4, 5.0, NULL);
    CHECK(rc == MPROC_EWORKER || rc == MPROC_ESTATE);
    CHECK(mproc_monotonic() - t0 < 1.0);
    CHECK_EQ(stats(p).workers_started, st.workers_started);
    mproc_pool_free(p);
    shared_free();
}

MTEST(test_pool_broken_pool_with_imap_work_closes_and_joins)
{
    shared_new();
    mproc_pool_opts o = {.processes = 2, .initializer = init_fail_after_2};
    mproc_pool *p;
    CHECK_OK(mproc_pool_new(&p, &o));
    mproc_value *items = ints(0, 40);
    mproc_call_opts c1 = {.chunksize = 1};
    mproc_imap *it;
    CHECK_OK(mproc_pool_imap(p, mproc_task_value(t_count_then_gate0), items, &c1, &it));
    /* both workers run an item (gate 0 closed) with more queued behind it */
    WAIT_UNTIL(atomic_load(&S->runs) == 2, 10.0);
    pid_t pids[2];
    CHECK_EQ(mproc_pool_worker_pids(p, pids, 2), 2);
    /* the victim's queued units go to its replacement, whose initializer fails:
     * the pool breaks with those units on a worker that is going away */
    CHECK_EQ(kill(pids[0], SIGKILL), 0);
    size_t ok = 0, failed = 0;
    for (size_t i = 0; i < 40; i++) {
        mproc_value *v = NULL;
        size_t idx = 99;
        int rc = mproc_imap_next(it, &v, &idx, 10.0);
        CHECK_EQ(idx, i);
        if (rc == 0) {
            CHECK_EQ(mproc_value_as_int(v), (int64_t)(i * i));
            mproc_value_free(v);
            ok++;
        } else {
            CHECK_EQ(rc, MPROC_EWORKER);
            failed++;
        }
    }
    mproc_value *v;
    CHECK_EQ(mproc_imap_next(it, &v, NULL, 5.0), MPROC_ECLOSED);
    fprintf(stderr, "imap on the broken pool: %zu ok, %zu EWORKER\n", ok, failed);
    CHECK(failed >= 1);
    CHECK(S->inits >= 3);
    atomic_store(&S->gate[0], 1); /* the surviving worker finishes its units */
    CHECK_OK(mproc_pool_close(p));
    double t0 = mproc_monotonic();
    int rc = mproc_pool_join(p, 5.0);
    if (rc)
        fprintf(stderr, "join: %s %s\n", mproc_errname(rc), mproc_errmsg());
    CHECK_OK(rc);
    CHECK(mproc_monotonic() - t0 < 2.0);
    CHECK_EQ(live_workers(p), 0);
    mproc_imap_free(it);
    mproc_value_free(items);
    mproc_pool_free(p);
    shared_free();
}

MTEST(test_pool_failed_map_does_not_rerun_items)
{
    void *m = mmap(NULL, ITEM_RUNS_MAX * sizeof *g_item_runs, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED);
    g_item_runs = m;
    mproc_pool *p = new_pool(1);
    /* one chunk of 10: item 3 kills the worker; the map fails with it */
    mproc_value *items = ints(0, 10), *out = NULL;
    mproc_call_opts o = {.chunksize = 10};
    CHECK_EQ(mproc_pool_map(p, mproc_task_value(t_count_kill_on_3), items, &o, &out, 30.0),
             MPROC_EWORKER);
    CHECK(out == NULL);
    /* anything of the chunk given back would run on the one worker before this */
    CHECK_EQ(apply_int(p, t_square, 6), 36);
    for (int i = 0; i < 10; i++) {
        int64_t want = i <= 3 ? 1 : 0;
        if (g_item_runs[i] != want)
            fprintf(stderr, "item %d ran %lld times\n", i, (long long)g_item_runs[i]);
        CHECK_EQ(g_item_runs[i], want);
    }
    CHECK_EQ(stats(p).workers_died, 1);
    mproc_value_free(items);
    close_join_free(p);
    munmap(m, ITEM_RUNS_MAX * sizeof *g_item_runs);
    g_item_runs = NULL;
}

/* The chaos run: a long map while the test SIGKILLs a random live worker 100
 * times, waiting for its replacement between kills. Map and kills go in step:
 * item i waits for kill i*KILLS/N, and kill k waits until the items before
 * its share are nearly done, so the kills land all along the map. Every item
 * is right or failed with MPROC_EWORKER, at most one per kill, and nothing
 * hangs. */
#define CHAOS_N 20000
#define CHAOS_KILLS 100
#define CHAOS_PROCS 3

static int t_chaos(const mproc_value *arg, mproc_value **out)
{
    int64_t i = mproc_value_as_int(arg);
    int64_t need = i * CHAOS_KILLS / CHAOS_N;
    mproc_deadline d = mproc_deadline_after(40.0);
    while (atomic_load(&S->kills) < need) {
        if (mproc_deadline_expired(d))
            return mproc_task_error("item %lld waited for kill %lld in vain", (long long)i,
                                    (long long)need);
        nap();
    }
    busy(50e-6);
    return set_int(out, i * 3 + 1);
}

MTEST(test_pool_survives_100_random_worker_sigkills_during_a_long_map)
{
    shared_new();
    unsigned seed = (unsigned)getpid();
    fprintf(stderr, "chaos seed %u\n", seed);
    srand(seed);
    mproc_pool *p = new_pool(CHAOS_PROCS);
    mproc_value *items = ints(0, CHAOS_N);
    mproc_call_opts o = {.chunksize = 4};
    mproc_imap *it;
    CHECK_OK(mproc_pool_imap(p, mproc_task_value(t_chaos), items, &o, &it));
    mproc_value_free(items);
    double t0 = mproc_monotonic();
    const uint64_t per_kill = CHAOS_N / CHAOS_KILLS;
    for (int k = 0; k < CHAOS_KILLS; k++) {
        pid_t pids[16];
        size_t n = 0;
        /* and the map keeps up with the kills: items before kill k's share are
         * (nearly) done, so the kills land all along the map */
        uint64_t behind = k ? (uint64_t)k * per_kill - per_kill / 2 : 0;
        WAIT_UNTIL(stats(p).items_done >= behind, 20.0);
        WAIT_UNTIL((n = mproc_pool_worker_pids(p, pids, 16)) == CHAOS_PROCS, 20.0);
        pid_t victim = pids[rand() % (int)n];
        CHECK(victim > 0);
        CHECK_EQ(kill(victim, SIGKILL), 0);
        /* the victim is gone and a replacement is in its place */
        WAIT_UNTIL((n = mproc_pool_worker_pids(p, pids, 16)) == CHAOS_PROCS &&
                       !pid_in(pids, n, victim),
                   20.0);
        atomic_fetch_add(&S->kills, 1);
    }
    double t_kills = mproc_monotonic() - t0;
    size_t ok = 0, eworker = 0;
    for (size_t i = 0; i < CHAOS_N; i++) {
        mproc_value *v = NULL;
        size_t idx = (size_t)-1;
        int rc = mproc_imap_next(it, &v, &idx, 30.0);
        if (idx != i || (rc != 0 && rc != MPROC_EWORKER)) {
            fprintf(stderr, "item %zu: index %zu, %s %s\n", i, idx, mproc_errname(rc),
                    mproc_errmsg());
            CHECK(!"every item is right or failed with MPROC_EWORKER");
        }
        if (rc == 0) {
            CHECK_EQ(mproc_value_as_int(v), (int64_t)i * 3 + 1);
            mproc_value_free(v);
            ok++;
        } else {
            eworker++;
        }
    }
    mproc_value *v;
    CHECK_EQ(mproc_imap_next(it, &v, NULL, 5.0), MPROC_ECLOSED);
    mproc_imap_free(it);
    fprintf(stderr, "chaos: %zu ok, %zu EWORKER, kills took %.2f s, total %.2f s\n", ok, eworker,
            t_kills, mproc_monotonic() - t0);
    CHECK_EQ(ok + eworker, CHAOS_N);
    CHECK(eworker <= CHAOS_KILLS);
    WAIT_UNTIL(stats(p).workers_died == CHAOS_KILLS, 10.0);
    mproc_pool_stats st = stats(p);
    CHECK_EQ(st.workers_started, CHAOS_PROCS + CHAOS_KILLS);
    CHECK_EQ(st.items_failed, eworker);
    CHECK_EQ(st.items_done, CHAOS_N);
    CHECK_EQ(mproc_pool_processes(p), CHAOS_PROCS);
    CHECK_EQ(apply_int(p, t_square, 11), 121); /* still a working pool */
    close_join_free(p);
    shared_free();
}

/* ---------------------------------------------------------------- threads */

typedef struct thr {
    mproc_pool *pool;
    int id;
    int bad;
} thr;

static void *thr_main(void *arg)
{
    thr *t = arg;
    for (int i = 0; i < 50; i++) {
        int64_t x = t->id * 1000 + i, r = 0;
        if (apply_rc(t->pool, t_square, x, 30.0, &r) || r != x * x)
            t->bad++;
    }
    return NULL;
}

MTEST(test_pool_is_shared_by_threads_of_its_owner)
{
    mproc_pool *p = new_pool(2);
    thr t[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        t[i] = (thr){p, i, 0};
        CHECK(pthread_create(&th[i], NULL, thr_main, &t[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        CHECK(pthread_join(th[i], NULL) == 0);
        CHECK_EQ(t[i].bad, 0);
    }
    WAIT_UNTIL(stats(p).items_done == 200, 10.0);
    close_join_free(p);
}

static mproc_pool *g_pool;

static int t_child_uses_pool(mproc_args *a)
{
    (void)a;
    mproc_value *v = mproc_value_int(3), *out = NULL;
    int rc1 = mproc_pool_apply(g_pool, mproc_task_value(t_square), v, &out, 5.0);
    mproc_result *r = NULL;
    int rc2 = mproc_pool_apply_async(g_pool, mproc_task_value(t_square), v, NULL, &r);
    int rc3 = mproc_pool_close(g_pool);
    int rc4 = mproc_pool_terminate(g_pool);
    mproc_value_free(v);
    if (rc1 != MPROC_ESTATE || rc2 != MPROC_ESTATE || rc3 != MPROC_ESTATE || rc4 != MPROC_ESTATE) {
        fprintf(stderr, "fork child: %s %s %s %s\n", mproc_errname(rc1), mproc_errname(rc2),
                mproc_errname(rc3), mproc_errname(rc4));
        return 1;
    }
    return 0;
}

MTEST(test_pool_calls_from_a_fork_child_are_estate)
{
    g_pool = new_pool(2);
    mproc_process *c = mtest_start(MPROC_START_FORK, t_child_uses_pool, NULL);
    mtest_join(c, 0);
    CHECK_EQ(apply_int(g_pool, t_square, 5), 25); /* the owner's pool is untouched */
    close_join_free(g_pool);
    g_pool = NULL;
}

/* ------------------------------------------------------ every start method */

static void pool_under(mproc_start_method m)
{
    g_parent_mark = 42;
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_int(a, 1000));
    CHECK_OK(mproc_args_add_str(a, mproc_start_method_name(m)));
    mproc_pool_opts o = {.processes = 2, .initializer = init_base, .initargs = a,
                         .ctx = mproc_get_context(m)};
    mproc_pool *p;
    CHECK_OK(mproc_pool_new(&p, &o));
    mproc_args_free(a);
    CHECK_EQ(apply_int(p, t_parent_mark, 0), m == MPROC_START_FORK ? 42 : 0);
    mproc_value *items = ints(0, 50), *out = NULL;
    mproc_call_opts c = {.chunksize = 3};
    CHECK_OK(mproc_pool_map(p, mproc_task_value(t_base_plus), items, &c, &out, 30.0));
    for (size_t i = 0; i < 50; i++)
        CHECK_EQ(list_int(out, i), 1000 + (int64_t)i);
    mproc_value_free(out);
    CHECK_OK(mproc_pool_apply(p, mproc_task_value(t_tag), NULL, &out, 30.0));
    size_t sl0;
    CHECK(strcmp(mproc_value_as_str(out, &sl0), mproc_start_method_name(m)) == 0);
    mproc_value_free(out);
    void *bo;
    size_t bn;
    CHECK_OK(mproc_pool_apply_bytes(p, t_reverse, "xyz", 3, &bo, &bn, 30.0));
    CHECK(bn == 3 && memcmp(bo, "zyx", 3) == 0);
    free(bo);
    mproc_value *sl = mproc_value_list();
    CHECK_OK(mproc_value_append(sl, ints(3, 2)));
    CHECK_OK(mproc_pool_starmap(p, t_mul, sl, NULL, &out, 30.0));
    CHECK_EQ(list_int(out, 0), 12);
    mproc_value_free(out);
    mproc_value_free(sl);
    int64_t arr[1000];
    for (int i = 0; i < 1000; i++)
        arr[i] = i;
    CHECK_OK(mproc_pool_map_array(p, e_square_i64, arr, 8, arr, 8, 1000, NULL, 30.0));
    for (int i = 0; i < 1000; i++)
        CHECK_EQ(arr[i], (int64_t)i * i);
    int64_t kc[2] = {2, 1};
    mproc_call_opts ca = {.arg = kc, .arg_len = sizeof kc};
    CHECK_OK(mproc_pool_map_array(p, e_affine, arr, 8, arr, 8, 1000, &ca, 30.0));
    for (int i = 0; i < 1000; i++)
        CHECK_EQ(arr[i], (int64_t)i * i * 2 + 1);
    int64_t *sh = mproc_pool_shared_alloc(p, 1000 * 8);
    CHECK(sh != NULL);
    for (int i = 0; i < 1000; i++)
        sh[i] = i;
    CHECK_OK(mproc_pool_map_array(p, e_affine, sh, 8, sh, 8, 1000, &ca, 30.0));
    for (int i = 0; i < 1000; i++)
        CHECK_EQ(sh[i], (int64_t)i * 2 + 1);
    mproc_pool_shared_free(p, sh);
    CHECK_EQ(apply_rc(p, t_fail_on_7, 7, 30.0, NULL), MPROC_EREMOTE);
    CHECK(strstr(mproc_errmsg(), "item 7 is bad") != NULL);
    /* a crash, and the replacement runs the initializer too */
    mproc_imap *it;
    CHECK_OK(mproc_pool_imap(p, mproc_task_value(t_kill_on_5), items, NULL, &it));
    for (size_t i = 0; i < 10; i++) {
        mproc_value *v = NULL;
        size_t idx;
        int rc = mproc_imap_next(it, &v, &idx, 30.0);
        CHECK_EQ(idx, i);
        if (i == 5) {
            CHECK_EQ(rc, MPROC_EWORKER);
        } else {
            CHECK_OK(rc);
            CHECK_EQ(mproc_value_as_int(v), (int64_t)(i * i));
            mproc_value_free(v);
        }
    }
    mproc_imap_free(it);
    WAIT_UNTIL(stats(p).workers_died == 1, 20.0);
    WAIT_UNTIL(live_workers(p) == 2, 30.0);
    for (int i = 0; i < 6; i++)
        CHECK_EQ(apply_int(p, t_base_plus, i), 1000 + i);
    mproc_value_free(items);
    close_join_free(p);
}
FOR_METHODS(pool_under)

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    static const mtest_case cases[] = {
        MTEST_ENTRY(test_pool_new_checks_opts_and_defaults_to_cpu_count),
        MTEST_ENTRY(test_pool_initializer_sets_a_global_the_tasks_read),
        MTEST_ENTRY(test_pool_initializer_failure_fails_new_with_eremote_and_its_message),
        MTEST_ENTRY(test_pool_initializer_plain_nonzero_return_fails_new_with_eremote),
        MTEST_ENTRY(test_pool_new_fails_in_bounded_time_when_an_initializer_crashes),
        MTEST_ENTRY(test_pool_apply_runs_value_star_and_bytes_tasks),
        MTEST_ENTRY(test_pool_apply_checks_the_argument_shape),
        MTEST_ENTRY(test_pool_apply_bytes_round_trips_raw_buffers),
        MTEST_ENTRY(test_pool_result_get_take_wait_ready_successful_error),
        MTEST_ENTRY(test_pool_map_keeps_input_order_for_every_chunksize),
        MTEST_ENTRY(test_pool_map_of_an_empty_list_is_an_empty_list),
        MTEST_ENTRY(test_pool_map_fails_with_the_first_error_and_its_message),
        MTEST_ENTRY(test_pool_map_async_result_is_the_list),
        MTEST_ENTRY(test_pool_starmap_and_starmap_async_unpack_each_item),
        MTEST_ENTRY(test_pool_imap_yields_in_input_order_when_the_first_item_is_slow),
        MTEST_ENTRY(test_pool_imap_unordered_yields_every_index_once_in_completion_order),
        MTEST_ENTRY(test_pool_imap_chunksizes_keep_order_and_cover_every_item),
        MTEST_ENTRY(test_pool_imap_reports_a_failed_item_at_its_index_and_goes_on),
        MTEST_ENTRY(test_pool_imap_freed_before_the_end_lets_its_tasks_run_on),
        MTEST_ENTRY(test_pool_map_array_squares_a_million_int64),
        MTEST_ENTRY(test_pool_map_array_every_chunksize_covers_every_element),
        MTEST_ENTRY(test_pool_map_array_converts_int32_elements_to_int64),
        MTEST_ENTRY(test_pool_map_array_passes_the_call_arg_bytes_to_every_element),
        MTEST_ENTRY(test_pool_shared_alloc_arrays_are_used_in_place_by_map_array),
        MTEST_ENTRY(test_pool_map_array_larger_than_the_arena_fails_with_enomem),
        MTEST_ENTRY(test_pool_shared_alloc_of_absurd_size_fails),
        MTEST_ENTRY(test_pool_decode_limits_refuse_an_oversized_result_and_the_pool_goes_on),
        MTEST_ENTRY(test_pool_map_array_element_error_fails_the_call_and_leaves_out_untouched),
        MTEST_ENTRY(test_pool_map_array_async_copies_in_and_fills_out_when_ready),
        MTEST_ENTRY(test_pool_callbacks_run_on_the_results_thread_before_the_result_is_ready),
        MTEST_ENTRY(test_pool_on_progress_is_monotonic_and_reaches_the_total),
        MTEST_ENTRY(test_pool_progress_comes_before_ready),
        MTEST_ENTRY(test_pool_callbacks_never_run_after_a_sync_call_returned),
        MTEST_ENTRY(test_pool_blocking_calls_from_a_callback_fail_with_edeadlk),
        MTEST_ENTRY(test_pool_callback_may_submit_more_work_with_apply_async),
        MTEST_ENTRY(test_pool_result_freed_before_ready_still_fires_its_callbacks),
        MTEST_ENTRY(test_pool_task_error_message_reaches_the_caller),
        MTEST_ENTRY(test_pool_task_returning_a_bare_code_reports_its_name),
        MTEST_ENTRY(test_pool_get_with_a_short_timeout_on_a_slow_task_returns_etimedout_quickly),
        MTEST_ENTRY(test_pool_close_then_join_finishes_queued_work),
        MTEST_ENTRY(test_pool_join_after_close_returns_promptly_once_the_running_task_ends),
        MTEST_ENTRY(test_pool_join_before_close_is_estate),
        MTEST_ENTRY(test_pool_calls_after_close_are_estate),
        MTEST_ENTRY(test_pool_terminate_with_tasks_in_flight_cancels_them_and_join_returns_promptly),
        MTEST_ENTRY(test_pool_free_with_unfinished_results_cancels_them_and_they_stay_valid),
        MTEST_ENTRY(test_pool_maxtasksperchild_recycles_workers),
        MTEST_ENTRY(test_pool_item_whose_worker_dies_fails_with_eworker_and_the_others_complete),
        MTEST_ENTRY(test_pool_retry_crashed_reruns_an_item_whose_worker_died),
        MTEST_ENTRY(test_pool_retry_crashed_fails_an_item_that_kills_every_worker_it_runs_on),
        MTEST_ENTRY(test_pool_failing_initializer_in_a_replacement_breaks_the_pool_with_eworker),
        MTEST_ENTRY(test_pool_replacement_whose_initializer_crashes_breaks_the_pool_when_idle),
        MTEST_ENTRY(test_pool_broken_pool_with_imap_work_closes_and_joins),
        MTEST_ENTRY(test_pool_failed_map_does_not_rerun_items),
        MTEST_ENTRY(test_pool_survives_100_random_worker_sigkills_during_a_long_map),
        MTEST_ENTRY(test_pool_is_shared_by_threads_of_its_owner),
        MTEST_ENTRY(test_pool_calls_from_a_fork_child_are_estate),
        METHOD_ENTRIES(pool_under),
    };
    mtest_warmup = mtest_warmup_tracker_and_forkserver;
    return mtest_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
