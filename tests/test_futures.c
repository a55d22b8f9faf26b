/* test_futures.c — Executor and futures: submit / result / exception / done /
 * running / cancel, done-callbacks, map with chunksize, as_completed, wait
 * (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED), shutdown with and
 * without cancel_futures, max_tasks_per_child, a crashed worker failing only
 * its own future, a custom backend, and every start method.
 *
 * Tasks that must wait for the test poll a MAP_SHARED page mapped before the
 * executor starts, so those tests use the fork start method. */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <time.h>

#include "mtest.h"

/* ------------------------------------------------------------ shared state */

#include "pool_test.h"

/* ------------------------------------------------------------------- tasks */

/* Wait (at most 20 s) for the test to open gate g; returns g. */
static int t_gate(const mproc_value *arg, mproc_value **out)
{
    int64_t g = mproc_value_as_int(arg);
    if (g < 0 || g >= NGATES || !S)
        return mproc_task_error("bad gate %lld", (long long)g);
    atomic_store(&S->started[g], 1);
    mproc_deadline d = mproc_deadline_after(20.0);
    while (!atomic_load(&S->gate[g])) {
        if (mproc_deadline_expired(d))
            return mproc_task_error("gate %lld never opened", (long long)g);
        nap();
    }
    return set_int(out, g);
}

static int t_mul(mproc_value *const *args, size_t nargs, mproc_value **out)
{
    int64_t p = 1;
    for (size_t i = 0; i < nargs; i++)
        p *= mproc_value_as_int(args[i]);
    return set_int(out, p);
}

static int64_t g_base = -1;

static int init_base(mproc_args *a)
{
    int64_t b;
    if (mproc_args_get_int(a, 0, &b))
        return 2;
    g_base = b;
    return 0;
}

static int t_base_plus(const mproc_value *arg, mproc_value **out)
{
    return set_int(out, g_base + mproc_value_as_int(arg));
}

/* Set by the test before the executor starts: fork workers see it, spawn and
 * forkserver workers (fresh programs) do not. */
static int64_t g_parent_mark;

static int t_parent_mark(const mproc_value *arg, mproc_value **out)
{
    (void)arg;
    return set_int(out, g_parent_mark);
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

static mproc_executor *new_executor(int workers)
{
    mproc_executor_opts o = {.max_workers = workers};
    mproc_executor *ex = NULL;
    CHECK_OK(mproc_executor_new(&ex, &o));
    CHECK(ex != NULL);
    return ex;
}

static mproc_future *submit_int(mproc_executor *ex, mproc_value_fn f, int64_t x)
{
    mproc_value *a = mproc_value_int(x);
    CHECK(a);
    mproc_future *fu = NULL;
    CHECK_OK(mproc_executor_submit(ex, mproc_task_value(f), a, &fu));
    CHECK(fu != NULL);
    mproc_value_free(a);
    return fu;
}

#define future_int(f) future_int_at(f, __LINE__)

static int64_t future_int_at(mproc_future *f, int line)
{
    const mproc_value *v = NULL;
    int rc = mproc_future_result(f, &v, 30.0);
    if (rc || !v || mproc_value_type(v) != MPROC_V_INT) {
        char *r = v ? mproc_value_repr(v) : NULL;
        fprintf(stderr, "line %d: future result %s %s, value %s\n", line, mproc_errname(rc),
                rc ? mproc_errmsg() : "", r ? r : "NULL");
        free(r);
        CHECK(!"the future has an int result");
    }
    return mproc_value_as_int(v);
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

/* ---------------------------------------------------------------- futures */

MTEST(test_executor_submit_gives_a_future_with_the_result)
{
    mproc_executor *ex = NULL;
    mproc_executor_opts bad = {.max_workers = -1};
    CHECK_EQ(mproc_executor_new(&ex, &bad), MPROC_EINVAL);
    CHECK_OK(mproc_executor_new(&ex, NULL));
    CHECK(strcmp(mproc_executor_backend_name(ex), "local") == 0);
    mproc_future *f = submit_int(ex, t_square, 7);
    CHECK_EQ(future_int(f), 49);
    CHECK(mproc_future_done(f));
    CHECK(!mproc_future_running(f));
    CHECK(!mproc_future_cancelled(f));
    CHECK(mproc_future_error(f) == NULL);
    int err = 123;
    const char *msg = "x";
    CHECK_OK(mproc_future_exception(f, 0, &err, &msg));
    CHECK_EQ(err, 0);
    CHECK(msg == NULL);
    mproc_future_free(f);
    /* other task shapes */
    mproc_value *b = mproc_value_bytes("abc", 3);
    CHECK_OK(mproc_executor_submit(ex, mproc_task_bytes(t_reverse), b, &f));
    const mproc_value *v;
    CHECK_OK(mproc_future_result(f, &v, 30.0));
    size_t n;
    const void *d = mproc_value_as_bytes(v, &n);
    CHECK(d && n == 3 && memcmp(d, "cba", 3) == 0);
    mproc_future_free(f);
    mproc_value_free(b);
    mproc_value *args = ints(2, 3);
    CHECK_OK(mproc_executor_submit(ex, mproc_task_star(t_mul), args, &f));
    CHECK_EQ(future_int(f), 24);
    mproc_future_free(f);
    mproc_value_free(args);
    mproc_future_free(NULL);
    mproc_executor_free(ex);
    mproc_executor_free(NULL);
}

MTEST(test_future_of_a_failed_task_gives_eremote_and_its_message)
{
    mproc_executor *ex = new_executor(2);
    mproc_future *f = submit_int(ex, t_fail_on_7, 7);
    const mproc_value *v;
    CHECK_EQ(mproc_future_result(f, &v, 30.0), MPROC_EREMOTE);
    CHECK(mproc_future_error(f) && strstr(mproc_future_error(f), "item 7 is bad"));
    int err = 0;
    const char *msg = NULL;
    CHECK_OK(mproc_future_exception(f, 0, &err, &msg));
    CHECK_EQ(err, MPROC_EREMOTE);
    CHECK(msg && strstr(msg, "item 7 is bad"));
    CHECK(mproc_future_done(f) && !mproc_future_cancelled(f));
    mproc_future_free(f);
    mproc_executor_free(ex);
}

MTEST(test_future_is_running_while_a_worker_runs_it_and_times_out_quickly)
{
    shared_new();
    mproc_executor *ex = new_executor(2);
    mproc_future *f = submit_int(ex, t_gate, 0);
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    WAIT_UNTIL(mproc_future_running(f), 5.0);
    CHECK(!mproc_future_done(f));
    CHECK(!mproc_future_cancelled(f));
    const mproc_value *v;
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_future_result(f, &v, 0.05), MPROC_ETIMEDOUT);
    double dt = mproc_monotonic() - t0;
    CHECK(dt >= 0.045 && dt < 2.0);
    int err;
    const char *msg;
    t0 = mproc_monotonic();
    CHECK_EQ(mproc_future_exception(f, 0.05, &err, &msg), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 < 2.0);
    CHECK(mproc_future_error(f) == NULL);
    atomic_store(&S->gate[0], 1);
    CHECK_EQ(future_int(f), 0);
    CHECK(!mproc_future_running(f));
    CHECK(mproc_future_done(f));
    mproc_future_free(f);
    mproc_executor_free(ex);
    shared_free();
}

typedef struct cbrec {
    pthread_t main;
    _Atomic int n;
    int order[8];
    mproc_future *seen[8];
    _Atomic int off_main[8];
} cbrec;

typedef struct cbarg {
    cbrec *rec;
    int id;
} cbarg;

static void cb_record(mproc_future *f, void *ud)
{
    cbarg *a = ud;
    cbrec *r = a->rec;
    int k = atomic_fetch_add(&r->n, 1);
    if (k < 8) {
        r->order[k] = a->id;
        r->seen[k] = f;
        r->off_main[k] = !pthread_equal(pthread_self(), r->main);
    }
}

MTEST(test_future_cancel_of_a_pending_future_behind_a_slow_one)
{
    shared_new();
    mproc_executor *ex = new_executor(1);
    mproc_future *f[5];
    f[0] = submit_int(ex, t_gate, 0);
    for (int i = 1; i < 5; i++)
        f[i] = submit_int(ex, t_square, i);
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    cbrec rec = {.main = pthread_self()};
    cbarg a = {&rec, 1};
    CHECK_OK(mproc_future_add_done_callback(f[4], cb_record, &a));
    CHECK_EQ(rec.n, 0);
    CHECK(mproc_future_cancel(f[4]));
    CHECK(mproc_future_cancelled(f[4]));
    CHECK(mproc_future_done(f[4]));
    CHECK(!mproc_future_running(f[4]));
    CHECK(mproc_future_cancel(f[4])); /* still cancelled */
    WAIT_UNTIL(atomic_load(&rec.n) == 1, 5.0); /* cancelling completes it */
    CHECK(rec.seen[0] == f[4]);
    const mproc_value *v;
    CHECK_EQ(mproc_future_result(f[4], &v, 0), MPROC_ECANCELED);
    int err;
    const char *msg;
    CHECK_EQ(mproc_future_exception(f[4], 0, &err, &msg), MPROC_ECANCELED);
    atomic_store(&S->gate[0], 1);
    CHECK_EQ(future_int(f[0]), 0);
    for (int i = 1; i < 4; i++)
        CHECK_EQ(future_int(f[i]), i * i);
    CHECK_EQ(rec.n, 1);
    for (int i = 0; i < 5; i++)
        mproc_future_free(f[i]);
    mproc_executor_free(ex);
    shared_free();
}

MTEST(test_future_cancel_fails_on_running_and_done_futures)
{
    shared_new();
    mproc_executor *ex = new_executor(1);
    mproc_future *f = submit_int(ex, t_gate, 0);
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    WAIT_UNTIL(mproc_future_running(f), 5.0);
    CHECK(!mproc_future_cancel(f));
    CHECK(!mproc_future_cancelled(f));
    atomic_store(&S->gate[0], 1);
    CHECK_EQ(future_int(f), 0);
    CHECK(!mproc_future_cancel(f));
    CHECK(!mproc_future_cancelled(f));
    CHECK_EQ(future_int(f), 0);
    mproc_future_free(f);
    mproc_executor_free(ex);
    shared_free();
}

MTEST(test_future_done_callbacks_run_once_in_order_before_and_after_done)
{
    shared_new();
    mproc_executor *ex = new_executor(2);
    mproc_future *f = submit_int(ex, t_gate, 0);
    cbrec rec = {.main = pthread_self()};
    cbarg a1 = {&rec, 1}, a2 = {&rec, 2}, a3 = {&rec, 3};
    CHECK_OK(mproc_future_add_done_callback(f, cb_record, &a1));
    CHECK_OK(mproc_future_add_done_callback(f, cb_record, &a2));
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    CHECK_EQ(rec.n, 0);
    atomic_store(&S->gate[0], 1);
    CHECK_EQ(future_int(f), 0);
    WAIT_UNTIL(atomic_load(&rec.n) == 2, 10.0);
    CHECK_EQ(rec.order[0], 1);
    CHECK_EQ(rec.order[1], 2);
    CHECK(rec.seen[0] == f && rec.seen[1] == f);
    CHECK(rec.off_main[0] && rec.off_main[1]); /* on the backend's thread */
    /* added after done: runs at once, in this thread */
    CHECK_OK(mproc_future_add_done_callback(f, cb_record, &a3));
    CHECK_EQ(rec.n, 3);
    CHECK_EQ(rec.order[2], 3);
    CHECK(!rec.off_main[2]);
    mproc_future_free(f);
    /* a failed future calls its callbacks too */
    cbrec r2 = {.main = pthread_self()};
    cbarg b1 = {&r2, 1};
    f = submit_int(ex, t_fail_on_7, 7);
    CHECK_OK(mproc_future_add_done_callback(f, cb_record, &b1));
    const mproc_value *v;
    CHECK_EQ(mproc_future_result(f, &v, 30.0), MPROC_EREMOTE);
    WAIT_UNTIL(atomic_load(&r2.n) == 1, 10.0);
    mproc_future_free(f);
    mproc_executor_free(ex);
    CHECK_EQ(rec.n, 3);
    CHECK_EQ(r2.n, 1);
    shared_free();
}

/* A done-callback (on the pool's results thread) that waits on a future that
 * is not done would wait for itself: every blocking wait returns EDEADLK. */
typedef struct wait_in_cb {
    mproc_future *other;
    _Atomic int result_rc, wait_rc, ac_rc, ran;
} wait_in_cb;

static void cb_wait_other(mproc_future *f, void *ud)
{
    (void)f;
    wait_in_cb *w = ud;
    const mproc_value *v;
    atomic_store(&w->result_rc, mproc_future_result(w->other, &v, 5.0));
    atomic_store(&w->wait_rc, mproc_futures_wait(&w->other, 1, 5.0, MPROC_ALL_COMPLETED, NULL));
    mproc_as_completed *ac;
    mproc_future *got;
    if (mproc_as_completed_new(&w->other, 1, &ac) == 0) {
        atomic_store(&w->ac_rc, mproc_as_completed_next(ac, &got, 5.0));
        mproc_as_completed_free(ac);
    }
    atomic_store(&w->ran, 1);
}

MTEST(test_future_waits_from_a_done_callback_give_edeadlk)
{
    shared_new();
    mproc_executor *ex = new_executor(2);
    wait_in_cb w = {.other = submit_int(ex, t_gate, 1)};
    WAIT_UNTIL(atomic_load(&S->started[1]), 10.0);
    mproc_future *f = submit_int(ex, t_gate, 2); /* not done before the callback is added */
    CHECK_OK(mproc_future_add_done_callback(f, cb_wait_other, &w));
    atomic_store(&S->gate[2], 1);
    WAIT_UNTIL(atomic_load(&w.ran), 10.0);
    CHECK_EQ(w.result_rc, MPROC_EDEADLK);
    CHECK_EQ(w.wait_rc, MPROC_EDEADLK);
    CHECK_EQ(w.ac_rc, MPROC_EDEADLK);
    atomic_store(&S->gate[1], 1); /* the other one still completes */
    CHECK_EQ(future_int(w.other), 1);
    mproc_future_free(w.other);
    mproc_future_free(f);
    mproc_executor_free(ex);
    shared_free();
}

MTEST(test_future_freed_before_done_lets_the_task_run_on)
{
    shared_new();
    mproc_executor *ex = new_executor(1);
    mproc_future *f = submit_int(ex, t_gate, 2);
    cbrec rec = {.main = pthread_self()};
    cbarg a = {&rec, 1};
    CHECK_OK(mproc_future_add_done_callback(f, cb_record, &a));
    mproc_future_free(f);
    WAIT_UNTIL(atomic_load(&S->started[2]), 10.0);
    atomic_store(&S->gate[2], 1);
    WAIT_UNTIL(atomic_load(&rec.n) == 1, 20.0);
    mproc_future *g = submit_int(ex, t_square, 3);
    CHECK_EQ(future_int(g), 9);
    mproc_future_free(g);
    mproc_executor_free(ex);
    shared_free();
}

/* -------------------------------------------------------------------- map */

MTEST(test_executor_map_keeps_input_order_for_every_chunksize)
{
    mproc_executor *ex = new_executor(3);
    mproc_value *items = ints(-20, 50);
    static const size_t chunks[] = {0, 1, 3, 7, 50, 100};
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        mproc_imap *it;
        CHECK_OK(mproc_executor_map(ex, mproc_task_value(t_square), items, chunks[c], &it));
        CHECK_EQ(mproc_imap_length(it), 50);
        for (size_t i = 0; i < 50; i++) {
            mproc_value *v = NULL;
            size_t idx = 99;
            CHECK_OK(mproc_imap_next(it, &v, &idx, 30.0));
            CHECK_EQ(idx, i);
            int64_t x = -20 + (int64_t)i;
            CHECK_EQ(mproc_value_as_int(v), x * x);
            mproc_value_free(v);
        }
        mproc_value *v;
        CHECK_EQ(mproc_imap_next(it, &v, NULL, 1.0), MPROC_ECLOSED);
        mproc_imap_free(it);
    }
    mproc_value *empty = mproc_value_list();
    mproc_imap *it;
    CHECK_OK(mproc_executor_map(ex, mproc_task_value(t_square), empty, 4, &it));
    mproc_value *v;
    CHECK_EQ(mproc_imap_next(it, &v, NULL, 1.0), MPROC_ECLOSED);
    mproc_imap_free(it);
    mproc_value_free(empty);
    mproc_value_free(items);
    mproc_executor_free(ex);
}

MTEST(test_executor_map_reports_a_task_error_at_its_position_only)
{
    mproc_executor *ex = new_executor(2);
    mproc_value *items = ints(0, 12);
    static const size_t chunks[] = {1, 3};
    for (size_t c = 0; c < 2; c++) {
        mproc_imap *it;
        CHECK_OK(mproc_executor_map(ex, mproc_task_value(t_fail_on_7), items, chunks[c], &it));
        for (size_t i = 0; i < 12; i++) {
            mproc_value *v = NULL;
            size_t idx = 99;
            int rc = mproc_imap_next(it, &v, &idx, 30.0);
            CHECK_EQ(idx, i);
            if (i == 7) {
                CHECK_EQ(rc, MPROC_EREMOTE);
                CHECK(mproc_imap_error(it) && strstr(mproc_imap_error(it), "item 7 is bad"));
            } else {
                if (rc) {
                    fprintf(stderr, "chunksize %zu item %zu: %s %s\n", chunks[c], i,
                            mproc_errname(rc), mproc_errmsg());
                    CHECK(!"only the failed item fails");
                }
                CHECK_EQ(mproc_value_as_int(v), (int64_t)i * 10);
                mproc_value_free(v);
            }
        }
        mproc_value *v;
        CHECK_EQ(mproc_imap_next(it, &v, NULL, 1.0), MPROC_ECLOSED);
        mproc_imap_free(it);
    }
    mproc_value_free(items);
    mproc_executor_free(ex);
}

MTEST(test_executor_map_reports_a_crash_at_its_position_only)
{
    mproc_executor *ex = new_executor(2);
    mproc_value *items = ints(0, 12);
    /* a crashed worker: EWORKER at that item's position only (docs/pool.md:
     * "through imap, imap_unordered, executor map ... only that item fails") */
    for (size_t c = 0; c < 2; c++) {
        size_t cs = c ? 4 : 1;
        mproc_imap *it;
        CHECK_OK(mproc_executor_map(ex, mproc_task_value(t_kill_on_5), items, cs, &it));
        for (size_t i = 0; i < 12; i++) {
            mproc_value *v = NULL;
            size_t idx = 99;
            int rc = mproc_imap_next(it, &v, &idx, 30.0);
            CHECK_EQ(idx, i);
            if (i == 5) {
                CHECK_EQ(rc, MPROC_EWORKER);
            } else {
                if (rc) {
                    fprintf(stderr, "crash, chunksize %zu item %zu: %s %s\n", cs, i,
                            mproc_errname(rc), mproc_errmsg());
                    CHECK(!"only the crashed item fails");
                }
                CHECK_EQ(mproc_value_as_int(v), (int64_t)(i * i));
                mproc_value_free(v);
            }
        }
        mproc_imap_free(it);
    }
    mproc_value_free(items);
    mproc_executor_free(ex);
}

/* ---------------------------------------------------- as_completed, wait */

MTEST(test_as_completed_yields_in_completion_order_each_once_then_eclosed)
{
    shared_new();
    mproc_executor *ex = new_executor(3);
    mproc_future *done = submit_int(ex, t_square, 4);
    CHECK_EQ(future_int(done), 16);
    mproc_future *f[3];
    for (int i = 0; i < 3; i++)
        f[i] = submit_int(ex, t_gate, i);
    mproc_future *fs[6] = {f[0], f[1], done, f[2], f[1], done}; /* duplicates come once */
    mproc_as_completed *ac;
    CHECK_OK(mproc_as_completed_new(fs, 6, &ac));
    mproc_future *got = NULL;
    CHECK_OK(mproc_as_completed_next(ac, &got, 0)); /* the finished one first */
    CHECK(got == done);
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_as_completed_next(ac, &got, 0.05), MPROC_ETIMEDOUT);
    double dt = mproc_monotonic() - t0;
    CHECK(dt >= 0.045 && dt < 2.0);
    WAIT_UNTIL(S->started[0] && S->started[1] && S->started[2], 10.0);
    static const int order[3] = {2, 0, 1};
    for (int k = 0; k < 3; k++) {
        atomic_store(&S->gate[order[k]], 1);
        CHECK_OK(mproc_as_completed_next(ac, &got, 30.0));
        CHECK(got == f[order[k]]);
        CHECK(mproc_future_done(got));
        CHECK_EQ(future_int(got), order[k]);
    }
    CHECK_EQ(mproc_as_completed_next(ac, &got, 1.0), MPROC_ECLOSED);
    CHECK_EQ(mproc_as_completed_next(ac, &got, 0), MPROC_ECLOSED);
    mproc_as_completed_free(ac);
    mproc_as_completed_free(NULL);
    for (int i = 0; i < 3; i++)
        mproc_future_free(f[i]);
    mproc_future_free(done);
    mproc_executor_free(ex);
    shared_free();
}

MTEST(test_as_completed_includes_cancelled_and_failed_futures)
{
    shared_new();
    mproc_executor *ex = new_executor(1);
    mproc_future *g = submit_int(ex, t_gate, 0);
    mproc_future *bad = submit_int(ex, t_fail_on_7, 7);
    mproc_future *p[3];
    for (int i = 0; i < 3; i++)
        p[i] = submit_int(ex, t_square, i);
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    CHECK(mproc_future_cancel(p[2]));
    mproc_future *fs[5] = {g, bad, p[0], p[1], p[2]};
    mproc_as_completed *ac;
    CHECK_OK(mproc_as_completed_new(fs, 5, &ac));
    mproc_future *got;
    CHECK_OK(mproc_as_completed_next(ac, &got, 0));
    CHECK(got == p[2]);
    atomic_store(&S->gate[0], 1);
    bool seen[5] = {false};
    for (int k = 0; k < 4; k++) {
        CHECK_OK(mproc_as_completed_next(ac, &got, 30.0));
        int j = -1;
        for (int i = 0; i < 4; i++)
            if (fs[i] == got)
                j = i;
        CHECK(j >= 0 && !seen[j]);
        seen[j] = true;
    }
    CHECK_EQ(mproc_as_completed_next(ac, &got, 1.0), MPROC_ECLOSED);
    mproc_as_completed_free(ac);
    const mproc_value *v;
    CHECK_EQ(mproc_future_result(bad, &v, 0), MPROC_EREMOTE);
    for (int i = 0; i < 5; i++)
        mproc_future_free(fs[i]);
    mproc_executor_free(ex);
    shared_free();
}

MTEST(test_futures_wait_first_completed_returns_when_one_is_done)
{
    shared_new();
    mproc_executor *ex = new_executor(2);
    mproc_future *fs[2] = {submit_int(ex, t_gate, 0), NULL};
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    size_t nd = 99;
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_futures_wait(fs, 1, 0.05, MPROC_FIRST_COMPLETED, &nd), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 >= 0.045);
    CHECK_EQ(nd, 0);
    fs[1] = submit_int(ex, t_square, 5);
    CHECK_OK(mproc_futures_wait(fs, 2, 30.0, MPROC_FIRST_COMPLETED, &nd));
    CHECK_EQ(nd, 1);
    CHECK(mproc_future_done(fs[1]) && !mproc_future_done(fs[0]));
    atomic_store(&S->gate[0], 1);
    CHECK_OK(mproc_futures_wait(fs, 2, 30.0, MPROC_ALL_COMPLETED, NULL));
    for (int i = 0; i < 2; i++)
        mproc_future_free(fs[i]);
    mproc_executor_free(ex);
    shared_free();
}

MTEST(test_futures_wait_first_exception_returns_on_a_failure_or_when_all_are_done)
{
    shared_new();
    mproc_executor *ex = new_executor(3);
    mproc_future *fs[3] = {submit_int(ex, t_gate, 0), submit_int(ex, t_square, 3), NULL};
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    CHECK_EQ(future_int(fs[1]), 9);
    /* one success, one running, no failure: not yet */
    size_t nd = 99;
    CHECK_EQ(mproc_futures_wait(fs, 2, 0.05, MPROC_FIRST_EXCEPTION, &nd), MPROC_ETIMEDOUT);
    CHECK_EQ(nd, 1);
    fs[2] = submit_int(ex, t_fail_on_7, 7);
    CHECK_OK(mproc_futures_wait(fs, 3, 30.0, MPROC_FIRST_EXCEPTION, &nd));
    CHECK_EQ(nd, 2);
    CHECK(!mproc_future_done(fs[0]));
    atomic_store(&S->gate[0], 1);
    /* no failure among them: returns when all are done */
    CHECK_OK(mproc_futures_wait(fs, 2, 30.0, MPROC_FIRST_EXCEPTION, &nd));
    CHECK_EQ(nd, 2);
    for (int i = 0; i < 3; i++)
        mproc_future_free(fs[i]);
    mproc_executor_free(ex);
    shared_free();
}

MTEST(test_futures_wait_all_completed_times_out_then_completes)
{
    shared_new();
    mproc_executor *ex = new_executor(2);
    mproc_future *fs[3] = {submit_int(ex, t_gate, 0), submit_int(ex, t_square, 2), NULL};
    fs[2] = fs[1]; /* a duplicate */
    CHECK_EQ(future_int(fs[1]), 4);
    size_t nd = 99;
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_futures_wait(fs, 3, 0.05, MPROC_ALL_COMPLETED, &nd), MPROC_ETIMEDOUT);
    double dt = mproc_monotonic() - t0;
    CHECK(dt >= 0.045 && dt < 2.0);
    CHECK(nd == 1 || nd == 2); /* the duplicate may count twice */
    CHECK_EQ(mproc_futures_wait(fs, 3, 0, MPROC_ALL_COMPLETED, NULL), MPROC_ETIMEDOUT);
    atomic_store(&S->gate[0], 1);
    CHECK_OK(mproc_futures_wait(fs, 3, 30.0, MPROC_ALL_COMPLETED, &nd));
    CHECK(mproc_future_done(fs[0]));
    CHECK_OK(mproc_futures_wait(fs, 0, 0, MPROC_ALL_COMPLETED, &nd)); /* nothing to wait for */
    CHECK_EQ(nd, 0);
    mproc_future_free(fs[0]);
    mproc_future_free(fs[1]);
    mproc_executor_free(ex);
    shared_free();
}

/* --------------------------------------------------------------- shutdown */

typedef struct shut {
    mproc_executor *ex;
    bool wait, cancel;
    _Atomic int rc, done;
} shut;

static void *shut_main(void *p)
{
    shut *s = p;
    s->rc = mproc_executor_shutdown(s->ex, s->wait, s->cancel);
    atomic_store(&s->done, 1);
    return NULL;
}

MTEST(test_executor_shutdown_wait_cancel_futures_cancels_pending_ones)
{
    shared_new();
    mproc_executor *ex = new_executor(1);
    mproc_future *f[6];
    f[0] = submit_int(ex, t_gate, 0);
    for (int i = 1; i < 6; i++)
        f[i] = submit_int(ex, t_square, i);
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    shut s = {.ex = ex, .wait = true, .cancel = true};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, shut_main, &s) == 0);
    WAIT_UNTIL(mproc_future_cancelled(f[5]), 10.0);
    CHECK(!s.done); /* it waits for the running one */
    /* new work is refused as soon as shutdown began */
    mproc_value *a = mproc_value_int(1);
    mproc_future *late = NULL;
    CHECK_EQ(mproc_executor_submit(ex, mproc_task_value(t_square), a, &late), MPROC_ESTATE);
    CHECK(late == NULL);
    mproc_value_free(a);
    double t0 = mproc_monotonic();
    atomic_store(&S->gate[0], 1);
    WAIT_UNTIL(atomic_load(&s.done), 30.0);
    fprintf(stderr, "shutdown returned %.3f s after the running future could end\n",
            mproc_monotonic() - t0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_OK(s.rc);
    CHECK_EQ(future_int(f[0]), 0);
    int cancelled = 0;
    for (int i = 1; i < 6; i++) {
        CHECK(mproc_future_done(f[i]));
        if (mproc_future_cancelled(f[i])) {
            const mproc_value *v;
            CHECK_EQ(mproc_future_result(f[i], &v, 0), MPROC_ECANCELED);
            cancelled++;
        } else {
            CHECK_EQ(future_int(f[i]), i * i);
        }
    }
    fprintf(stderr, "%d of 5 pending futures cancelled\n", cancelled);
    CHECK(cancelled >= 1);
    CHECK_OK(mproc_executor_shutdown(ex, true, true)); /* idempotent */
    for (int i = 0; i < 6; i++)
        mproc_future_free(f[i]);
    mproc_executor_free(ex);
    shared_free();
}

MTEST(test_executor_shutdown_wait_returns_promptly_after_cancelling_pending_futures)
{
    shared_new();
    mproc_executor *ex = new_executor(1);
    mproc_future *f[8];
    f[0] = submit_int(ex, t_gate, 0);
    for (int i = 1; i < 8; i++)
        f[i] = submit_int(ex, t_square, i);
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    CHECK_OK(mproc_executor_shutdown(ex, false, true));
    CHECK(mproc_future_cancelled(f[7]));
    double t0 = mproc_monotonic();
    atomic_store(&S->gate[0], 1);
    CHECK_OK(mproc_executor_shutdown(ex, true, false));
    double dt = mproc_monotonic() - t0;
    fprintf(stderr, "shutdown(wait) took %.3f s after the running future could end\n", dt);
    CHECK(dt < 0.5);
    for (int i = 0; i < 8; i++) {
        CHECK(mproc_future_done(f[i]));
        mproc_future_free(f[i]);
    }
    mproc_executor_free(ex);
    shared_free();
}

/* A done-callback that calls back into the executor it is being shut down by. */
typedef struct reentry {
    mproc_executor *ex;
    _Atomic int called, submit_rc, map_rc, shutdown_rc;
    mproc_future *late;
    mproc_imap *late_it;
} reentry;

static void cb_reenter(mproc_future *f, void *ud)
{
    (void)f;
    reentry *r = ud;
    mproc_value *a = mproc_value_int(1), *l = ints(0, 2);
    r->submit_rc = mproc_executor_submit(r->ex, mproc_task_value(t_square), a, &r->late);
    r->map_rc = mproc_executor_map(r->ex, mproc_task_value(t_square), l, 1, &r->late_it);
    r->shutdown_rc = mproc_executor_shutdown(r->ex, false, true);
    mproc_value_free(a);
    mproc_value_free(l);
    atomic_store(&r->called, 1);
}

MTEST(test_executor_done_callback_may_call_the_executor_during_shutdown_cancel)
{
    shared_new();
    mproc_executor *ex = new_executor(1);
    mproc_future *f[8];
    f[0] = submit_int(ex, t_gate, 0);
    for (int i = 1; i < 8; i++)
        f[i] = submit_int(ex, t_square, i);
    WAIT_UNTIL(atomic_load(&S->started[0]), 10.0);
    reentry r = {.ex = ex, .submit_rc = 1, .map_rc = 1, .shutdown_rc = 1};
    CHECK_OK(mproc_future_add_done_callback(f[7], cb_reenter, &r));
    /* shutdown(cancel_futures) runs f[7]'s callback as it cancels it: in a
     * thread, so a deadlock fails the test instead of hanging it */
    shut s = {.ex = ex, .wait = false, .cancel = true};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, shut_main, &s) == 0);
    WAIT_UNTIL(atomic_load(&s.done), 5.0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_OK(s.rc);
    CHECK(mproc_future_cancelled(f[7]));
    CHECK(r.called);
    CHECK_EQ(r.submit_rc, MPROC_ESTATE);
    CHECK(r.late == NULL);
    CHECK_EQ(r.map_rc, MPROC_ESTATE);
    CHECK(r.late_it == NULL);
    CHECK_OK(r.shutdown_rc);
    atomic_store(&S->gate[0], 1);
    CHECK_OK(mproc_executor_shutdown(ex, true, false));
    CHECK_EQ(future_int(f[0]), 0);
    for (int i = 0; i < 8; i++) {
        CHECK(mproc_future_done(f[i]));
        mproc_future_free(f[i]);
    }
    mproc_executor_free(ex);
    shared_free();
}

MTEST(test_executor_shutdown_without_cancel_runs_every_pending_future)
{
    mproc_executor *ex = new_executor(2);
    mproc_future *f[12];
    for (int i = 0; i < 12; i++)
        f[i] = submit_int(ex, t_sleep_ms, 5 + i % 4);
    CHECK_OK(mproc_executor_shutdown(ex, true, false));
    for (int i = 0; i < 12; i++) {
        CHECK(mproc_future_done(f[i]));
        CHECK(!mproc_future_cancelled(f[i]));
        const mproc_value *v;
        CHECK_OK(mproc_future_result(f[i], &v, 0));
        CHECK_EQ(mproc_value_as_int(v), 5 + i % 4);
        mproc_future_free(f[i]);
    }
    mproc_executor_free(ex);
}

MTEST(test_executor_submit_and_map_after_shutdown_are_estate)
{
    mproc_executor *ex = new_executor(1);
    CHECK_OK(mproc_executor_shutdown(ex, false, false));
    mproc_value *a = mproc_value_int(1), *l = ints(0, 3);
    mproc_future *f = NULL;
    CHECK_EQ(mproc_executor_submit(ex, mproc_task_value(t_square), a, &f), MPROC_ESTATE);
    CHECK(f == NULL);
    mproc_imap *it = NULL;
    CHECK_EQ(mproc_executor_map(ex, mproc_task_value(t_square), l, 1, &it), MPROC_ESTATE);
    CHECK(it == NULL);
    CHECK_OK(mproc_executor_shutdown(ex, true, false));
    mproc_value_free(a);
    mproc_value_free(l);
    mproc_executor_free(ex);
}

MTEST(test_executor_free_waits_for_pending_futures_which_stay_valid)
{
    mproc_executor *ex = new_executor(2);
    mproc_future *f[8];
    for (int i = 0; i < 8; i++)
        f[i] = submit_int(ex, t_sleep_ms, 10 + i);
    mproc_executor_free(ex);
    for (int i = 0; i < 8; i++) {
        CHECK(mproc_future_done(f[i]));
        CHECK_EQ(future_int(f[i]), 10 + i);
        mproc_future_free(f[i]);
    }
}

typedef struct deadctx {
    mproc_executor *ex;
    _Atomic int rc, called;
} deadctx;

static void cb_shutdown_wait(mproc_future *f, void *ud)
{
    (void)f;
    deadctx *d = ud;
    d->rc = mproc_executor_shutdown(d->ex, true, false);
    atomic_store(&d->called, 1);
}

MTEST(test_executor_shutdown_wait_from_a_done_callback_is_edeadlk)
{
    shared_new();
    mproc_executor *ex = new_executor(1);
    deadctx d = {.ex = ex, .rc = 1};
    mproc_future *f = submit_int(ex, t_gate, 0);
    CHECK_OK(mproc_future_add_done_callback(f, cb_shutdown_wait, &d));
    atomic_store(&S->gate[0], 1);
    WAIT_UNTIL(atomic_load(&d.called), 20.0);
    CHECK_EQ(d.rc, MPROC_EDEADLK);
    CHECK_EQ(future_int(f), 0);
    mproc_future_free(f);
    mproc_executor_free(ex);
    shared_free();
}

/* --------------------------------------------------------- workers, crashes */

MTEST(test_executor_max_tasks_per_child_recycles_workers)
{
    mproc_executor_opts o = {.max_workers = 1, .max_tasks_per_child = 2};
    mproc_executor *ex;
    CHECK_OK(mproc_executor_new(&ex, &o));
    int64_t pids[6];
    for (int i = 0; i < 6; i++) {
        mproc_future *f = submit_int(ex, t_pid, i);
        pids[i] = future_int(f);
        mproc_future_free(f);
    }
    CHECK(count_distinct(pids, 6) >= 3);
    mproc_executor_free(ex);
}

MTEST(test_executor_worker_crash_fails_only_its_future_and_the_executor_still_works)
{
    mproc_executor *ex = new_executor(2);
    mproc_future *f[11];
    for (int i = 0; i < 11; i++)
        f[i] = submit_int(ex, t_kill_on_5, i);
    for (int i = 0; i < 11; i++) {
        const mproc_value *v;
        int rc = mproc_future_result(f[i], &v, 30.0);
        if (i == 5) {
            CHECK_EQ(rc, MPROC_EWORKER);
            int err = 0;
            const char *msg;
            CHECK_OK(mproc_future_exception(f[i], 0, &err, &msg));
            CHECK_EQ(err, MPROC_EWORKER);
        } else {
            CHECK_OK(rc);
            CHECK_EQ(mproc_value_as_int(v), i * i);
        }
        mproc_future_free(f[i]);
    }
    /* not broken (Python's ProcessPoolExecutor would be): more work runs */
    for (int i = 0; i < 10; i++) {
        mproc_future *g = submit_int(ex, t_square, 100 + i);
        CHECK_EQ(future_int(g), (100 + i) * (100 + i));
        mproc_future_free(g);
    }
    mproc_future *k = submit_int(ex, t_kill_on_5, 5);
    const mproc_value *v;
    CHECK_EQ(mproc_future_result(k, &v, 30.0), MPROC_EWORKER);
    mproc_future_free(k);
    k = submit_int(ex, t_square, 3);
    CHECK_EQ(future_int(k), 9);
    mproc_future_free(k);
    mproc_executor_free(ex);
}

MTEST(test_executor_retry_crashed_reruns_a_crashed_task)
{
    shared_new();
    mproc_executor_opts o = {.max_workers = 2, .retry_crashed = true};
    mproc_executor *ex;
    CHECK_OK(mproc_executor_new(&ex, &o));
    mproc_future *f = submit_int(ex, t_crash_once, 41);
    CHECK_EQ(future_int(f), 42);
    CHECK_EQ(S->runs, 2);
    mproc_future_free(f);
    mproc_executor_free(ex);
    shared_free();
}

/* ---------------------------------------------------------- custom backend */

/* A backend that queues work and runs it in the caller's thread when pumped
 * (or at shutdown with wait). */
typedef struct job {
    mproc_task task;
    mproc_value *items;
    bool single;
    mproc_future *f;
} job;

typedef struct inline_state {
    job jobs[64];
    size_t njobs;
    int starts, submits, singles, shutdowns, frees, skipped;
    int single_not_a_list; /* futures.h: a chunk (not single) is a list */
    int max_workers_seen;
} inline_state;

static inline_state g_ib;

static int ib_start(void **state, const mproc_executor_opts *o)
{
    g_ib.starts++;
    g_ib.max_workers_seen = o ? o->max_workers : -1;
    *state = &g_ib;
    return 0;
}

static int ib_submit(void *state, mproc_task task, const mproc_value *items, bool single,
                     mproc_future *f)
{
    inline_state *s = state;
    if (s->njobs == 64)
        return MPROC_ENOMEM;
    s->submits++;
    s->singles += single;
    job *j = &s->jobs[s->njobs++];
    j->task = task;
    if (single) {
        /* futures.h: when single, `items` is the one argument */
        j->items = mproc_value_list();
        if (j->items)
            mproc_value_append(j->items, items ? mproc_value_copy(items) : mproc_value_nil());
    } else if (mproc_value_type(items) != MPROC_V_LIST) {
        s->single_not_a_list++; /* a chunk must be a list */
        j->items = NULL;
    } else {
        j->items = mproc_value_copy(items);
    }
    j->single = single;
    j->f = mproc_future_ref(f);
    return j->items ? 0 : MPROC_ENOMEM;
}

static void ib_pump(inline_state *s)
{
    for (size_t k = 0; k < s->njobs; k++) {
        job *j = &s->jobs[k];
        if (!mproc_future_set_running(j->f)) {
            s->skipped++;
        } else {
            mproc_value *res = j->single ? NULL : mproc_value_list();
            int rc = 0;
            for (size_t i = 0; i < mproc_value_len(j->items) && !rc; i++) {
                mproc_value *out = NULL;
                rc = j->task.fn.value(mproc_value_at(j->items, i), &out);
                if (!rc && j->single)
                    res = out;
                else if (!rc)
                    mproc_value_append(res, out ? out : mproc_value_nil());
                if (j->single)
                    break;
            }
            if (rc) {
                mproc_value_free(res);
                mproc_future_set_error(j->f, rc, "inline task failed");
            } else {
                mproc_future_set_result(j->f, res);
            }
        }
        mproc_value_free(j->items);
        mproc_future_free(j->f);
    }
    s->njobs = 0;
}

static int ib_shutdown(void *state, bool wait)
{
    inline_state *s = state;
    s->shutdowns++;
    if (wait)
        ib_pump(s);
    return 0;
}

static void ib_free(void *state)
{
    inline_state *s = state;
    s->frees++;
}

static const mproc_executor_backend inline_backend = {
    .name = "inline",
    .start = ib_start,
    .submit = ib_submit,
    .shutdown = ib_shutdown,
    .free = ib_free,
};

MTEST(test_executor_custom_backend_completes_futures_through_the_backend_api)
{
    memset(&g_ib, 0, sizeof g_ib);
    mproc_executor_opts o = {.max_workers = 3, .backend = &inline_backend};
    mproc_executor *ex;
    CHECK_OK(mproc_executor_new(&ex, &o));
    CHECK_EQ(g_ib.starts, 1);
    CHECK_EQ(g_ib.max_workers_seen, 3);
    CHECK(strcmp(mproc_executor_backend_name(ex), "inline") == 0);
    mproc_future *a = submit_int(ex, t_square, 6);
    mproc_future *b = submit_int(ex, t_fail_on_7, 7);
    mproc_future *c = submit_int(ex, t_square, 8);
    CHECK_EQ(g_ib.submits, 3);
    CHECK_EQ(g_ib.singles, 3);
    CHECK(!mproc_future_done(a) && !mproc_future_running(a));
    CHECK(mproc_future_cancel(c)); /* still pending: the backend has not set it running */
    cbrec rec = {.main = pthread_self()};
    cbarg ca = {&rec, 1};
    CHECK_OK(mproc_future_add_done_callback(a, cb_record, &ca));
    mproc_future *fs[2] = {a, b};
    CHECK_EQ(mproc_futures_wait(fs, 2, 0.02, MPROC_FIRST_COMPLETED, NULL), MPROC_ETIMEDOUT);
    ib_pump(&g_ib);
    CHECK_EQ(g_ib.skipped, 1); /* set_running said no for the cancelled one */
    CHECK_EQ(rec.n, 1);
    CHECK(!rec.off_main[0]); /* completed in this thread, callbacks ran here */
    CHECK_EQ(future_int(a), 36);
    const mproc_value *v;
    CHECK_EQ(mproc_future_result(b, &v, 0), MPROC_EREMOTE);
    CHECK(strstr(mproc_future_error(b), "inline task failed") != NULL);
    CHECK_EQ(mproc_future_result(c, &v, 0), MPROC_ECANCELED);
    /* completing a done future does nothing (and frees the value) */
    mproc_future_set_result(a, mproc_value_int(-1));
    mproc_future_set_error(a, MPROC_EIO, "late");
    CHECK_EQ(future_int(a), 36);
    CHECK(mproc_future_error(a) == NULL);
    /* a reference keeps a future alive past the caller's free */
    mproc_future *ref = mproc_future_ref(a);
    CHECK(ref == a);
    mproc_future_free(a);
    CHECK_EQ(future_int(ref), 36);
    mproc_future_free(ref);
    /* map: chunks of 3 arrive as lists */
    mproc_value *items = ints(0, 10);
    mproc_imap *it;
    CHECK_OK(mproc_executor_map(ex, mproc_task_value(t_square), items, 3, &it));
    CHECK_EQ(g_ib.submits, 3 + 4);
    ib_pump(&g_ib);
    for (size_t i = 0; i < 10; i++) {
        mproc_value *x;
        size_t idx;
        CHECK_OK(mproc_imap_next(it, &x, &idx, 5.0));
        CHECK_EQ(idx, i);
        CHECK_EQ(mproc_value_as_int(x), (int64_t)(i * i));
        mproc_value_free(x);
    }
    mproc_imap_free(it);
    mproc_value_free(items);
    /* shutdown(wait) hands over to the backend, which runs what is left */
    mproc_future *d = submit_int(ex, t_square, 9);
    CHECK_OK(mproc_executor_shutdown(ex, true, false));
    CHECK_EQ(g_ib.shutdowns, 1);
    CHECK_EQ(future_int(d), 81);
    mproc_executor_free(ex);
    CHECK_EQ(g_ib.frees, 1);
    if (g_ib.single_not_a_list)
        fprintf(stderr, "backend submit got %d chunks that were not a list\n",
                g_ib.single_not_a_list);
    CHECK_EQ(g_ib.single_not_a_list, 0);
    mproc_future_free(b);
    mproc_future_free(c);
    mproc_future_free(d);
}

/* ------------------------------------------------------ every start method */

static void executor_under(mproc_start_method m)
{
    g_parent_mark = 42;
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_int(a, 500));
    mproc_executor_opts o = {.max_workers = 2, .initializer = init_base, .initargs = a,
                             .ctx = mproc_get_context(m)};
    mproc_executor *ex;
    CHECK_OK(mproc_executor_new(&ex, &o));
    mproc_args_free(a);
    mproc_future *pm = submit_int(ex, t_parent_mark, 0);
    CHECK_EQ(future_int(pm), m == MPROC_START_FORK ? 42 : 0);
    mproc_future_free(pm);
    mproc_future *f[10];
    for (int i = 0; i < 10; i++)
        f[i] = submit_int(ex, t_base_plus, i);
    for (int i = 0; i < 10; i++) {
        CHECK_EQ(future_int(f[i]), 500 + i);
        mproc_future_free(f[i]);
    }
    mproc_value *items = ints(0, 20);
    mproc_imap *it;
    CHECK_OK(mproc_executor_map(ex, mproc_task_value(t_base_plus), items, 4, &it));
    for (size_t i = 0; i < 20; i++) {
        mproc_value *v;
        size_t idx;
        CHECK_OK(mproc_imap_next(it, &v, &idx, 30.0));
        CHECK_EQ(idx, i);
        CHECK_EQ(mproc_value_as_int(v), 500 + (int64_t)i);
        mproc_value_free(v);
    }
    mproc_imap_free(it);
    mproc_value_free(items);
    mproc_future *k = submit_int(ex, t_kill_on_5, 5);
    const mproc_value *v;
    CHECK_EQ(mproc_future_result(k, &v, 30.0), MPROC_EWORKER);
    mproc_future_free(k);
    for (int i = 0; i < 4; i++) { /* the replacement ran the initializer too */
        mproc_future *g = submit_int(ex, t_base_plus, i);
        CHECK_EQ(future_int(g), 500 + i);
        mproc_future_free(g);
    }
    CHECK_OK(mproc_executor_shutdown(ex, true, false));
    mproc_executor_free(ex);
}
FOR_METHODS(executor_under)

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    static const mtest_case cases[] = {
        MTEST_ENTRY(test_executor_submit_gives_a_future_with_the_result),
        MTEST_ENTRY(test_future_of_a_failed_task_gives_eremote_and_its_message),
        MTEST_ENTRY(test_future_is_running_while_a_worker_runs_it_and_times_out_quickly),
        MTEST_ENTRY(test_future_cancel_of_a_pending_future_behind_a_slow_one),
        MTEST_ENTRY(test_future_cancel_fails_on_running_and_done_futures),
        MTEST_ENTRY(test_future_done_callbacks_run_once_in_order_before_and_after_done),
        MTEST_ENTRY(test_future_freed_before_done_lets_the_task_run_on),
        MTEST_ENTRY(test_executor_map_keeps_input_order_for_every_chunksize),
        MTEST_ENTRY(test_executor_map_reports_a_task_error_at_its_position_only),
        MTEST_ENTRY(test_executor_map_reports_a_crash_at_its_position_only),
        MTEST_ENTRY(test_as_completed_yields_in_completion_order_each_once_then_eclosed),
        MTEST_ENTRY(test_as_completed_includes_cancelled_and_failed_futures),
        MTEST_ENTRY(test_futures_wait_first_completed_returns_when_one_is_done),
        MTEST_ENTRY(test_futures_wait_first_exception_returns_on_a_failure_or_when_all_are_done),
        MTEST_ENTRY(test_futures_wait_all_completed_times_out_then_completes),
        MTEST_ENTRY(test_executor_shutdown_wait_cancel_futures_cancels_pending_ones),
        MTEST_ENTRY(test_executor_shutdown_wait_returns_promptly_after_cancelling_pending_futures),
        MTEST_ENTRY(test_executor_done_callback_may_call_the_executor_during_shutdown_cancel),
        MTEST_ENTRY(test_future_waits_from_a_done_callback_give_edeadlk),
        MTEST_ENTRY(test_executor_shutdown_without_cancel_runs_every_pending_future),
        MTEST_ENTRY(test_executor_submit_and_map_after_shutdown_are_estate),
        MTEST_ENTRY(test_executor_free_waits_for_pending_futures_which_stay_valid),
        MTEST_ENTRY(test_executor_shutdown_wait_from_a_done_callback_is_edeadlk),
        MTEST_ENTRY(test_executor_max_tasks_per_child_recycles_workers),
        MTEST_ENTRY(test_executor_worker_crash_fails_only_its_future_and_the_executor_still_works),
        MTEST_ENTRY(test_executor_retry_crashed_reruns_a_crashed_task),
        MTEST_ENTRY(test_executor_custom_backend_completes_futures_through_the_backend_api),
        METHOD_ENTRIES(executor_under),
    };
    mtest_warmup = mtest_warmup_tracker_and_forkserver;
    return mtest_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
