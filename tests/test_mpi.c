/* test_mpi.c — the Executor on MPI ranks (libmproc_mpi), run under mpirun:
 *   mpirun --oversubscribe --enable-recovery -n 3|5 test_mpi     the suite
 *   test_mpi singleton                                           no mpirun
 *   mpirun -n 1 test_mpi buildid : -n 2 test_mpi_alt buildid     other build
 * Rank 0 runs the cases in order, in this process (MPI and fork do not mix,
 * so not through mtest.h's forked runner); the other ranks serve tasks. The
 * cases that kill worker ranks come last. A failed check ends rank 0 with
 * status 1, which makes mpirun fail; the workers see it go and exit. */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mproc.h"
#include "mproc/mpi.h"
#include "mcheck.h"

#ifdef MPI_TEST_ALT
/* The same tasks in a different build: its build-id differs. */
const char mpi_test_build[] = "alternative build";
#else
const char mpi_test_build[] = "main build";
#endif

#define T 30.0 /* bound on every wait */

/* ------------------------------------------------------------------ tasks */

static int sq(const mproc_value *a, mproc_value **out)
{
    if (mproc_value_type(a) != MPROC_V_INT)
        return mproc_task_error("sq: not an int");
    int64_t x = mproc_value_as_int(a);
    if (x == 13)
        return mproc_task_error("unlucky %lld", (long long)x);
    if (x == 14)
        return MPROC_ERANGE; /* an error code without a message */
    *out = mproc_value_int(x * x);
    return *out ? 0 : MPROC_ENOMEM;
}

static int add(mproc_value *const *args, size_t n, mproc_value **out)
{
    if (n != 2)
        return mproc_task_error("add takes 2 arguments, got %zu", n);
    *out = mproc_value_int(mproc_value_as_int(args[0]) + mproc_value_as_int(args[1]));
    return 0;
}

/* bytes task: the input reversed */
static int rev(const void *in, size_t len, mproc_buf *out)
{
    const uint8_t *p = in;
    for (size_t i = len; i-- > 0;) {
        int rc = mproc_buf_append(out, &p[i], 1);
        if (rc)
            return rc;
    }
    return 0;
}

/* n bytes of a pattern */
static int big_out(const mproc_value *a, mproc_value **out)
{
    size_t n = (size_t)mproc_value_as_int(a);
    uint8_t *b = malloc(n ? n : 1);
    if (!b)
        return MPROC_ENOMEM;
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(i * 7 + 1);
    *out = mproc_value_bytes(b, n);
    free(b);
    return *out ? 0 : MPROC_ENOMEM;
}

/* The rank the task runs on. */
static int rank_of(const mproc_value *a, mproc_value **out)
{
    (void)a;
    *out = mproc_value_int(mproc_mpi_rank());
    return 0;
}

/* Wait until the file named by `a` exists (rank 0 opens the gate), then
 * return the rank; ranks share the machine in these tests. */
static int gate(const mproc_value *a, mproc_value **out)
{
    const char *path = mproc_value_as_str(a, NULL);
    mproc_deadline d = mproc_deadline_after(T);
    struct timespec ms = {0, 1000000};
    while (access(path, F_OK) != 0) {
        if (mproc_deadline_expired(d))
            return mproc_task_error("gate %s never opened", path);
        nanosleep(&ms, NULL);
    }
    *out = mproc_value_int(mproc_mpi_rank());
    return 0;
}

static int kill_self(const mproc_value *a, mproc_value **out)
{
    (void)a;
    (void)out;
    raise(SIGKILL);
    return 0;
}

static int exit_self(const mproc_value *a, mproc_value **out)
{
    (void)a;
    (void)out;
    _exit(3);
}

/* ---------------------------------------------------------------- helpers */

static mproc_executor *ex_new(int max_workers)
{
    mproc_executor *ex = NULL;
    mproc_executor_opts o = {.backend = &mproc_executor_mpi, .max_workers = max_workers};
    CHECK_OK(mproc_executor_new(&ex, &o));
    CHECK(strcmp(mproc_executor_backend_name(ex), "mpi") == 0);
    return ex;
}

/* The next output of `it`, whatever it is: its code (the value is dropped). */
static int next_code(mproc_imap *it)
{
    mproc_value *v = NULL;
    int rc = mproc_imap_next(it, &v, NULL, T);
    mproc_value_free(v);
    return rc;
}

static mproc_value *ints(int64_t from, int64_t to)
{
    mproc_value *l = mproc_value_list();
    for (int64_t i = from; i < to; i++)
        CHECK_OK(mproc_value_append(l, mproc_value_int(i)));
    return l;
}

static mproc_future *submit_int(mproc_executor *ex, mproc_value_fn fn, int64_t x)
{
    mproc_value *a = mproc_value_int(x);
    mproc_future *f = NULL;
    CHECK_OK(mproc_executor_submit(ex, mproc_task_value(fn), a, &f));
    mproc_value_free(a);
    return f;
}

static int64_t result_int(mproc_future *f)
{
    const mproc_value *v = NULL;
    CHECK_OK(mproc_future_result(f, &v, T));
    CHECK(mproc_value_type(v) == MPROC_V_INT);
    return mproc_value_as_int(v);
}

/* A gate: a file path that does not exist yet. */
typedef struct gate_t {
    char path[128];
    mproc_value *arg;
} gate_t;

static void gate_init(gate_t *g)
{
    static int n;
    snprintf(g->path, sizeof g->path, "/tmp/mproc-test-mpi-gate-%d-%d", (int)getpid(), n++);
    unlink(g->path);
    g->arg = mproc_value_str(g->path);
}

static void gate_open(gate_t *g)
{
    int fd = open(g->path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    close(fd);
}

static void gate_done(gate_t *g)
{
    unlink(g->path);
    mproc_value_free(g->arg);
}

static mproc_future *submit_gate(mproc_executor *ex, gate_t *g)
{
    mproc_future *f = NULL;
    CHECK_OK(mproc_executor_submit(ex, mproc_task_value(gate), g->arg, &f));
    return f;
}

/* Drain a map iterator of sq over ints: outputs in order, item 13 fails with
 * its message at its position, item 14 with its code's text. */
static void check_sq_map(mproc_imap *it, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        mproc_value *v = NULL;
        size_t idx = 99999;
        int rc = mproc_imap_next(it, &v, &idx, T);
        CHECK_EQ(idx, i);
        if (i == 13) {
            CHECK_EQ(rc, MPROC_EREMOTE);
            CHECK(strcmp(mproc_imap_error(it), "unlucky 13") == 0);
        } else if (i == 14) {
            CHECK_EQ(rc, MPROC_EREMOTE);
            CHECK(strstr(mproc_imap_error(it), "MPROC_ERANGE") != NULL);
        } else {
            CHECK_OK(rc);
            CHECK_EQ(mproc_value_as_int(v), i * i);
            mproc_value_free(v);
        }
    }
    CHECK_EQ(next_code(it), MPROC_ECLOSED);
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

/* ------------------------------------------------------------------ cases */

static void test_options_and_misuse(void)
{
    mproc_executor *ex = NULL, *ex2 = NULL;
    mproc_executor_opts o = {.backend = &mproc_executor_mpi, .max_tasks_per_child = 3};
    CHECK_EQ(mproc_executor_new(&ex, &o), MPROC_EINVAL);
    CHECK(strstr(mproc_errmsg(), "max_tasks_per_child") != NULL);
    o = (mproc_executor_opts){.backend = &mproc_executor_mpi, .retry_crashed = true};
    CHECK_EQ(mproc_executor_new(&ex, &o), MPROC_EINVAL);
    o = (mproc_executor_opts){.backend = &mproc_executor_mpi,
                              .ctx = mproc_get_context(MPROC_START_SPAWN)};
    CHECK_EQ(mproc_executor_new(&ex, &o), MPROC_EINVAL);
    CHECK_EQ(mproc_mpi_init(NULL, NULL, NULL), MPROC_ESTATE); /* twice */
    ex = ex_new(0);
    o = (mproc_executor_opts){.backend = &mproc_executor_mpi};
    CHECK_EQ(mproc_executor_new(&ex2, &o), MPROC_ESTATE); /* one at a time */
    CHECK(strstr(mproc_errmsg(), "another MPI executor") != NULL);
    /* a bytes task needs bytes: the submit says so */
    mproc_value *i = mproc_value_int(1);
    mproc_future *f = NULL;
    CHECK_EQ(mproc_executor_submit(ex, mproc_task_bytes(rev), i, &f), MPROC_EINVAL);
    CHECK(f == NULL);
    mproc_value_free(i);
    /* a fork child of rank 0: errors, no hang, nothing freed under the parent */
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        mproc_value *a = mproc_value_int(2);
        mproc_future *cf = NULL;
        int ok = mproc_executor_submit(ex, mproc_task_value(sq), a, &cf) == MPROC_ESTATE &&
                 mproc_executor_shutdown(ex, true, false) == MPROC_ESTATE &&
                 mproc_mpi_finalize() == MPROC_ESTATE;
        mproc_executor_free(ex);
        _exit(ok ? 0 : 1);
    }
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    f = NULL;
    i = mproc_value_int(5);
    CHECK_OK(mproc_executor_submit(ex, mproc_task_value(sq), i, &f)); /* still fine here */
    CHECK_EQ(result_int(f), 25);
    mproc_future_free(f);
    mproc_value_free(i);
    mproc_executor_free(ex);
    ex = ex_new(0); /* the ranks are free again */
    mproc_executor_free(ex);
    mproc_executor_free(NULL);
}

static void test_submit_value_star_and_bytes_tasks(void)
{
    mproc_executor *ex = ex_new(0);
    mproc_future *f = submit_int(ex, sq, 12);
    CHECK_EQ(result_int(f), 144);
    CHECK(mproc_future_done(f) && !mproc_future_cancelled(f));
    mproc_future_free(f);

    mproc_value *args = ints(40, 42);
    CHECK_OK(mproc_executor_submit(ex, mproc_task_star(add), args, &f));
    CHECK_EQ(result_int(f), 81);
    mproc_future_free(f);
    mproc_value_free(args);

    mproc_value *b = mproc_value_bytes("abc", 3);
    CHECK_OK(mproc_executor_submit(ex, mproc_task_bytes(rev), b, &f));
    const mproc_value *v = NULL;
    CHECK_OK(mproc_future_result(f, &v, T));
    size_t n = 0;
    const char *p = mproc_value_as_bytes(v, &n);
    CHECK(n == 3 && memcmp(p, "cba", 3) == 0);
    mproc_future_free(f);
    mproc_value_free(b);

    /* NULL argument: nil */
    CHECK_OK(mproc_executor_submit(ex, mproc_task_value(rank_of), NULL, &f));
    int64_t r = result_int(f);
    CHECK(r >= 1 && r < mproc_mpi_size());
    mproc_future_free(f);
    mproc_executor_free(ex);
}

static void test_errors_carry_messages(void)
{
    mproc_executor *ex = ex_new(0);
    mproc_future *f = submit_int(ex, sq, 13);
    const mproc_value *v = (const mproc_value *)1;
    CHECK_EQ(mproc_future_result(f, &v, T), MPROC_EREMOTE);
    CHECK(v == NULL);
    CHECK(strcmp(mproc_errmsg(), "unlucky 13") == 0);
    CHECK(strcmp(mproc_future_error(f), "unlucky 13") == 0);
    int err = 0;
    const char *m = NULL;
    CHECK_OK(mproc_future_exception(f, T, &err, &m));
    CHECK_EQ(err, MPROC_EREMOTE);
    CHECK(strcmp(m, "unlucky 13") == 0);
    mproc_future_free(f);

    f = submit_int(ex, sq, 14); /* a bare error code */
    CHECK_EQ(mproc_future_result(f, &v, T), MPROC_EREMOTE);
    CHECK(strstr(mproc_future_error(f), "MPROC_ERANGE") != NULL);
    mproc_future_free(f);

    mproc_value *s = mproc_value_str("x"); /* the task's own check */
    CHECK_OK(mproc_executor_submit(ex, mproc_task_value(sq), s, &f));
    CHECK_EQ(mproc_future_result(f, &v, T), MPROC_EREMOTE);
    CHECK(strcmp(mproc_future_error(f), "sq: not an int") == 0);
    mproc_future_free(f);
    mproc_value_free(s);

    mproc_value *one = ints(0, 1); /* a star task with the wrong arity */
    CHECK_OK(mproc_executor_submit(ex, mproc_task_star(add), one, &f));
    CHECK_EQ(mproc_future_result(f, &v, T), MPROC_EREMOTE);
    CHECK(strstr(mproc_future_error(f), "add takes 2 arguments, got 1") != NULL);
    mproc_future_free(f);
    mproc_value_free(one);
    mproc_executor_free(ex);
}

static void map_case(size_t chunksize, int64_t n)
{
    mproc_executor *ex = ex_new(0);
    mproc_value *items = ints(0, n);
    mproc_imap *it = NULL;
    CHECK_OK(mproc_executor_map(ex, mproc_task_value(sq), items, chunksize, &it));
    CHECK_EQ(mproc_imap_length(it), n);
    check_sq_map(it, n);
    mproc_imap_free(it);
    mproc_value_free(items);
    mproc_executor_free(ex);
}

static void test_map_chunksize_1_in_order_failing_item_at_its_position(void)
{
    map_case(1, 500);
}

static void test_map_chunksize_7_in_order_failing_item_at_its_position(void)
{
    map_case(7, 500);
    map_case(1000, 3000); /* whole chunks bigger than a batch's usual share */
}

static void test_map_of_nothing(void)
{
    mproc_executor *ex = ex_new(0);
    mproc_value *items = mproc_value_list();
    mproc_imap *it = NULL;
    CHECK_OK(mproc_executor_map(ex, mproc_task_value(sq), items, 0, &it));
    CHECK_EQ(next_code(it), MPROC_ECLOSED);
    mproc_imap_free(it);
    mproc_value_free(items);
    mproc_executor_free(ex);
}

static void test_as_completed_in_completion_order(void)
{
    mproc_executor *ex = ex_new(0);
    gate_t g;
    gate_init(&g);
    mproc_future *fs[2];
    fs[0] = submit_gate(ex, &g);   /* held at the gate on one rank */
    fs[1] = submit_int(ex, sq, 9); /* round robin: the next rank */
    mproc_as_completed *ac = NULL;
    CHECK_OK(mproc_as_completed_new(fs, 2, &ac));
    mproc_future *f = NULL;
    CHECK_OK(mproc_as_completed_next(ac, &f, T));
    CHECK(f == fs[1]);
    CHECK_EQ(mproc_as_completed_next(ac, &f, 0.05), MPROC_ETIMEDOUT);
    gate_open(&g);
    CHECK_OK(mproc_as_completed_next(ac, &f, T));
    CHECK(f == fs[0]);
    CHECK_EQ(mproc_as_completed_next(ac, &f, T), MPROC_ECLOSED);
    mproc_as_completed_free(ac);
    CHECK_EQ(result_int(fs[1]), 81);
    mproc_future_free(fs[0]);
    mproc_future_free(fs[1]);
    gate_done(&g);
    mproc_executor_free(ex);
}

static void test_wait_first_completed_then_all(void)
{
    mproc_executor *ex = ex_new(0);
    gate_t g;
    gate_init(&g);
    mproc_future *fs[3];
    fs[0] = submit_gate(ex, &g);
    fs[1] = submit_int(ex, sq, 13); /* fails */
    size_t nd = 0;
    CHECK_OK(mproc_futures_wait(fs, 2, T, MPROC_FIRST_COMPLETED, &nd));
    CHECK_EQ(nd, 1);
    CHECK(mproc_future_done(fs[1]) && !mproc_future_done(fs[0]));
    CHECK_OK(mproc_futures_wait(fs, 2, T, MPROC_FIRST_EXCEPTION, &nd));
    CHECK_EQ(mproc_futures_wait(fs, 2, 0.05, MPROC_ALL_COMPLETED, &nd), MPROC_ETIMEDOUT);
    CHECK_EQ(nd, 1);
    fs[2] = submit_int(ex, sq, 3);
    gate_open(&g);
    CHECK_OK(mproc_futures_wait(fs, 3, T, MPROC_ALL_COMPLETED, &nd));
    CHECK_EQ(nd, 3);
    CHECK(result_int(fs[0]) >= 1);
    CHECK_EQ(result_int(fs[2]), 9);
    for (int i = 0; i < 3; i++)
        mproc_future_free(fs[i]);
    gate_done(&g);
    mproc_executor_free(ex);
}

typedef struct cb_state {
    mproc_future *other;
    mproc_executor *ex;
    int wait_rc, shutdown_rc, finalize_rc;
    atomic_int calls; /* set last: the codes are in place once it is */
    pthread_t thread, main;
} cb_state;

static void on_done(mproc_future *f, void *ud)
{
    cb_state *s = ud;
    (void)f;
    const mproc_value *v;
    s->wait_rc = mproc_future_result(s->other, &v, 5.0);
    if (!pthread_equal(pthread_self(), s->main)) /* never from rank 0's main thread here */
        s->finalize_rc = mproc_mpi_finalize();
    s->shutdown_rc = mproc_executor_shutdown(s->ex, true, false);
    s->thread = pthread_self();
    atomic_fetch_add(&s->calls, 1);
}

static void test_done_callback_runs_on_the_mpi_thread_and_cannot_block(void)
{
    mproc_executor *ex = ex_new(0);
    gate_t g;
    gate_init(&g);
    cb_state s = {.ex = ex, .main = pthread_self()};
    s.other = submit_gate(ex, &g);
    mproc_future *f = submit_int(ex, sq, 2);
    CHECK_OK(mproc_future_add_done_callback(f, on_done, &s));
    CHECK_EQ(result_int(f), 4);
    /* the callback runs on the executor's thread as the future completes */
    mproc_deadline d = mproc_deadline_after(T);
    while (atomic_load(&s.calls) == 0)
        CHECK(!mproc_deadline_expired(d));
    CHECK(!pthread_equal(s.thread, pthread_self()));
    CHECK_EQ(s.wait_rc, MPROC_EDEADLK);
    CHECK_EQ(s.shutdown_rc, MPROC_EDEADLK);
    CHECK_EQ(s.finalize_rc, MPROC_EDEADLK);
    CHECK(mproc_mpi_workers() > 0); /* MPI goes on */
    gate_open(&g);
    CHECK(result_int(s.other) >= 1);
    /* already done: the callback runs at once in this thread */
    atomic_store(&s.calls, 0);
    CHECK_OK(mproc_future_add_done_callback(f, on_done, &s));
    CHECK_EQ(atomic_load(&s.calls), 1);
    CHECK(pthread_equal(s.thread, pthread_self()));
    CHECK_OK(s.wait_rc);
    CHECK_OK(s.shutdown_rc);
    mproc_future_free(f);
    mproc_future_free(s.other);
    gate_done(&g);
    mproc_executor_free(ex);
}

static void test_shutdown_wait_finishes_everything(void)
{
    mproc_executor *ex = ex_new(0);
    enum { N = 300 };
    mproc_future *fs[N];
    for (int i = 0; i < N; i++)
        fs[i] = submit_int(ex, sq, i);
    CHECK_OK(mproc_executor_shutdown(ex, true, false));
    for (int i = 0; i < N; i++) {
        CHECK(mproc_future_done(fs[i]));
        if (i != 13 && i != 14)
            CHECK_EQ(result_int(fs[i]), i * i);
        mproc_future_free(fs[i]);
    }
    mproc_value *a = mproc_value_int(1);
    mproc_future *f = NULL;
    CHECK_EQ(mproc_executor_submit(ex, mproc_task_value(sq), a, &f), MPROC_ESTATE);
    CHECK_OK(mproc_executor_shutdown(ex, true, false)); /* idempotent */
    mproc_value_free(a);
    mproc_executor_free(ex);
}

static void test_shutdown_cancel_futures_cancels_what_was_not_sent(void)
{
    mproc_executor *ex = ex_new(1); /* one rank, held at the gate */
    gate_t g;
    gate_init(&g);
    enum { N = 50 };
    mproc_future *held = submit_gate(ex, &g), *fs[N];
    mproc_deadline d = mproc_deadline_after(T);
    while (!mproc_future_running(held)) /* sent to the rank: not cancellable any more */
        CHECK(!mproc_deadline_expired(d));
    for (int i = 0; i < N; i++)
        fs[i] = submit_int(ex, sq, i);
    /* at most one more batch (of one: no result has come yet) went behind it */
    CHECK_OK(mproc_executor_shutdown(ex, false, true));
    int cancelled = 0;
    for (int i = 0; i < N; i++)
        cancelled += mproc_future_cancelled(fs[i]);
    CHECK(cancelled >= N - 1);
    gate_open(&g);
    CHECK_OK(mproc_executor_shutdown(ex, true, false));
    CHECK(result_int(held) >= 1);
    for (int i = 0; i < N; i++) {
        CHECK(mproc_future_done(fs[i]));
        const mproc_value *v = NULL;
        int rc = mproc_future_result(fs[i], &v, 0);
        CHECK(rc == MPROC_ECANCELED ? mproc_future_cancelled(fs[i])
                                    : rc == 0 && mproc_value_as_int(v) == i * i);
        mproc_future_free(fs[i]);
    }
    mproc_future_free(held);
    gate_done(&g);
    mproc_executor_free(ex);
}

static void test_big_arguments_and_results(void)
{
    mproc_executor *ex = ex_new(0);
    size_t n = 8u << 20;
    uint8_t *buf = malloc(n);
    CHECK(buf);
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)(i * 31 + 7);
    mproc_value *b = mproc_value_bytes(buf, n);
    mproc_future *f = NULL;
    CHECK_OK(mproc_executor_submit(ex, mproc_task_bytes(rev), b, &f));
    const mproc_value *v = NULL;
    CHECK_OK(mproc_future_result(f, &v, T));
    size_t got = 0;
    const uint8_t *p = (const uint8_t *)mproc_value_as_bytes(v, &got);
    CHECK_EQ(got, n);
    for (size_t i = 0; i < n; i++)
        if (p[i] != buf[n - 1 - i])
            CHECK(!"reversed bytes differ");
    mproc_future_free(f);
    mproc_value_free(b);
    free(buf);

    /* a map whose items together outgrow a batch; large outputs back */
    mproc_value *sizes = mproc_value_list();
    for (int i = 0; i < 6; i++)
        CHECK_OK(mproc_value_append(sizes, mproc_value_int((3 << 20) + i)));
    mproc_imap *it = NULL;
    CHECK_OK(mproc_executor_map(ex, mproc_task_value(big_out), sizes, 1, &it));
    for (int i = 0; i < 6; i++) {
        mproc_value *o = NULL;
        CHECK_OK(mproc_imap_next(it, &o, NULL, T));
        const uint8_t *q = (const uint8_t *)mproc_value_as_bytes(o, &got);
        CHECK_EQ(got, (3 << 20) + i);
        CHECK(q[0] == 1 && q[got - 1] == (uint8_t)((got - 1) * 7 + 1));
        mproc_value_free(o);
    }
    mproc_imap_free(it);
    mproc_value_free(sizes);
    mproc_executor_free(ex);
}

static void test_tasks_spread_over_ranks_and_max_workers(void)
{
    int nw = mproc_mpi_workers();
    CHECK(nw >= 2);
    for (int lim = 1; lim <= nw; lim += nw - 1) {
        mproc_executor *ex = ex_new(lim == nw ? 0 : lim);
        gate_t g;
        gate_init(&g);
        mproc_future *fs[16];
        for (int i = 0; i < nw; i++)
            fs[i] = submit_gate(ex, &g); /* one per rank while none has finished */
        gate_open(&g);
        uint64_t seen = 0;
        for (int i = 0; i < nw; i++) {
            seen |= 1ull << result_int(fs[i]);
            mproc_future_free(fs[i]);
        }
        CHECK_EQ(__builtin_popcountll(seen), lim);
        gate_done(&g);
        mproc_executor_free(ex);
    }
}

/* On a fresh executor (so its batch holds it alone), submit a task that ends
 * its rank, then n squares (some queued behind it on that rank); the killer
 * fails with MPROC_EWORKER and the rank count drops by one. */
static mproc_executor *kill_one(mproc_value_fn killer, mproc_future **fs, int n, int *before)
{
    *before = mproc_mpi_workers();
    mproc_executor *ex = ex_new(0);
    mproc_future *k = submit_int(ex, killer, 0);
    for (int i = 0; i < n; i++)
        fs[i] = submit_int(ex, sq, i + 20);
    const mproc_value *v = NULL;
    CHECK_EQ(mproc_future_result(k, &v, T), MPROC_EWORKER);
    CHECK(strstr(mproc_future_error(k), "died while running this task") != NULL);
    CHECK_EQ(mproc_mpi_workers(), *before - 1);
    mproc_future_free(k);
    return ex;
}

static void test_rank_killed_by_a_task_fails_that_task_others_go_on(void)
{
    mproc_future *fs[6];
    int before;
    mproc_executor *ex = kill_one(kill_self, fs, 6, &before);
    for (int i = 0; i < 6; i++) { /* the ones behind it were not started: rerun elsewhere */
        CHECK_EQ(result_int(fs[i]), (i + 20) * (i + 20));
        mproc_future_free(fs[i]);
    }
    mproc_executor_free(ex);
}

static void test_rank_exiting_in_a_task_fails_that_task(void)
{
    mproc_future *fs[4];
    int before;
    mproc_executor *ex = kill_one(exit_self, fs, 4, &before);
    for (int i = 0; i < 4; i++) {
        const mproc_value *v = NULL;
        int rc = mproc_future_result(fs[i], &v, T);
        if (before > 1) { /* others are left: they ran there */
            CHECK_OK(rc);
            CHECK_EQ(mproc_value_as_int(v), (i + 20) * (i + 20));
        } else { /* that was the last rank: no hang, an error */
            CHECK_EQ(rc, MPROC_EWORKER);
            CHECK(strstr(mproc_future_error(fs[i]), "rank") != NULL);
        }
        mproc_future_free(fs[i]);
    }
    mproc_executor_free(ex);
}

/* With 3 ranks the two cases above used up the workers. */
static void test_no_rank_left_means_errors_not_hangs(void)
{
    if (mproc_mpi_workers() > 0) {
        printf("skip test_no_rank_left_means_errors_not_hangs: %d ranks left (run with 3)\n",
               mproc_mpi_workers());
        return;
    }
    mproc_executor *ex = NULL;
    mproc_executor_opts o = {.backend = &mproc_executor_mpi};
    CHECK_EQ(mproc_executor_new(&ex, &o), MPROC_EWORKER);
    CHECK(strstr(mproc_errmsg(), "every worker rank has died") != NULL);
}

/* With 5 ranks some are left for this one. */
static void test_finalize_waits_for_a_live_executor(void)
{
    if (mproc_mpi_workers() == 0) {
        printf("skip test_finalize_waits_for_a_live_executor: no rank left (run with 5)\n");
        CHECK_OK(mproc_mpi_finalize());
        return;
    }
    mproc_executor *ex = ex_new(0);
    mproc_future *fs[20];
    for (int i = 0; i < 20; i++)
        fs[i] = submit_int(ex, sq, i + 100);
    CHECK_OK(mproc_mpi_finalize());
    for (int i = 0; i < 20; i++) {
        CHECK(mproc_future_done(fs[i]));
        CHECK_EQ(result_int(fs[i]), (i + 100) * (i + 100));
        mproc_future_free(fs[i]);
    }
    mproc_future *f = NULL;
    mproc_value *a = mproc_value_int(1);
    CHECK_EQ(mproc_executor_submit(ex, mproc_task_value(sq), a, &f), MPROC_ESTATE);
    mproc_value_free(a);
    mproc_executor_free(ex); /* no MPI call after finalize */
    mproc_executor_opts o = {.backend = &mproc_executor_mpi};
    CHECK_EQ(mproc_executor_new(&ex, &o), MPROC_ESTATE);
    CHECK_OK(mproc_mpi_finalize()); /* idempotent */
    CHECK_EQ(mproc_mpi_workers(), 0);
}

/* ------------------------------------------------------------------ modes */

typedef struct tcase {
    const char *name;
    void (*fn)(void);
} tcase;
#define CASE(f) {#f, f}

static const tcase suite[] = {
    CASE(test_options_and_misuse),
    CASE(test_submit_value_star_and_bytes_tasks),
    CASE(test_errors_carry_messages),
    CASE(test_map_chunksize_1_in_order_failing_item_at_its_position),
    CASE(test_map_chunksize_7_in_order_failing_item_at_its_position),
    CASE(test_map_of_nothing),
    CASE(test_as_completed_in_completion_order),
    CASE(test_wait_first_completed_then_all),
    CASE(test_done_callback_runs_on_the_mpi_thread_and_cannot_block),
    CASE(test_shutdown_wait_finishes_everything),
    CASE(test_shutdown_cancel_futures_cancels_what_was_not_sent),
    CASE(test_big_arguments_and_results),
    CASE(test_tasks_spread_over_ranks_and_max_workers),
    /* these kill worker ranks: last */
    CASE(test_rank_killed_by_a_task_fails_that_task_others_go_on),
    CASE(test_rank_exiting_in_a_task_fails_that_task),
    CASE(test_no_rank_left_means_errors_not_hangs),
    CASE(test_finalize_waits_for_a_live_executor),
};

static int run_suite(void)
{
    CHECK(mproc_mpi_size() >= 3);
    CHECK_EQ(mproc_mpi_workers(), mproc_mpi_size() - 1);
    int n = (int)(sizeof suite / sizeof suite[0]);
    for (int i = 0; i < n; i++) {
        int fds = count_fds(), workers = mproc_mpi_workers();
        double t0 = mproc_monotonic();
        suite[i].fn();
        /* a dead rank's two liveness connections are closed (and MPI's TCP
         * transport may close its own socket to it) */
        int want = fds - 2 * (workers - mproc_mpi_workers());
        if (suite[i].fn != test_finalize_waits_for_a_live_executor &&
            (count_fds() > want || (workers == mproc_mpi_workers() && count_fds() != want))) {
            fprintf(stderr, "%s leaked fds (%d before, %d after, %d expected)\n", suite[i].name, fds,
                    count_fds(), want);
            return 1;
        }
        printf("ok   %s (%.1f ms)\n", suite[i].name, (mproc_monotonic() - t0) * 1e3);
        fflush(stdout);
    }
    printf("%d/%d tests passed on %d ranks\n", n, n, mproc_mpi_size());
    return 0;
}

/* Without mpirun: no worker ranks, and a clear error. */
static int run_singleton(void)
{
    CHECK_EQ(mproc_mpi_size(), 1);
    CHECK_EQ(mproc_mpi_workers(), 0);
    mproc_executor *ex = NULL;
    mproc_executor_opts o = {.backend = &mproc_executor_mpi};
    CHECK_EQ(mproc_executor_new(&ex, &o), MPROC_ESTATE);
    CHECK(strstr(mproc_errmsg(), "mpirun -n N") != NULL);
    CHECK_OK(mproc_mpi_finalize());
    printf("ok   singleton: %s\n", "no worker ranks, a clear error");
    return 0;
}

/* Worker ranks run another build: every task fails with MPROC_EBUILDID. */
static int run_buildid(void)
{
    mproc_executor *ex = ex_new(0);
    mproc_future *f = submit_int(ex, sq, 3);
    const mproc_value *v = NULL;
    CHECK_EQ(mproc_future_result(f, &v, T), MPROC_EBUILDID);
    CHECK(strstr(mproc_future_error(f), "build-id") != NULL);
    mproc_future_free(f);
    mproc_value *items = ints(0, 10);
    mproc_imap *it = NULL;
    CHECK_OK(mproc_executor_map(ex, mproc_task_value(sq), items, 4, &it));
    for (int i = 0; i < 10; i++)
        CHECK_EQ(next_code(it), MPROC_EBUILDID);
    mproc_imap_free(it);
    mproc_value_free(items);
    mproc_executor_free(ex);
    printf("ok   buildid: a worker rank of another build fails its tasks with MPROC_EBUILDID (%s)\n",
           mpi_test_build);
    return 0;
}

int main(int argc, char **argv)
{
    CHECK_OK(mproc_init(&argc, &argv));
    /* every rank: the backend before mproc_mpi_init */
    mproc_executor *ex = NULL;
    mproc_executor_opts o = {.backend = &mproc_executor_mpi};
    CHECK_EQ(mproc_executor_new(&ex, &o), MPROC_ENOINIT);
    CHECK_EQ(mproc_mpi_workers(), 0);
    CHECK_OK(mproc_mpi_init(&argc, &argv, NULL));
    if (mproc_mpi_rank() != 0) { /* never: worker ranks do not return */
        fprintf(stderr, "BUG: mproc_mpi_init returned on rank %d\n", mproc_mpi_rank());
        _exit(99);
    }
    const char *mode = argc > 1 ? argv[1] : "suite";
    int rc = !strcmp(mode, "singleton") ? run_singleton()
             : !strcmp(mode, "buildid") ? run_buildid()
                                        : run_suite();
    CHECK_OK(mproc_mpi_finalize());
    if (rc == 0) /* what ctest looks for: mpirun --enable-recovery exits 0 whatever rank 0 did */
        printf("test_mpi: %s passed\n", mode);
    return rc;
}
