/* pool_test.h — what test_pool.c and test_futures.c share: a MAP_SHARED page
 * that gated tasks and the test both see (fork workers only), and a bounded
 * polling wait. Include after mtest.h. */
#ifndef MPROC_POOL_TEST_H
#define MPROC_POOL_TEST_H

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define NGATES 16

typedef struct shared {
    _Atomic int gate[NGATES];    /* set by the test: gated task g may finish */
    _Atomic int started[NGATES]; /* set by gated task g once it runs */
    _Atomic int64_t runs;        /* crash-once tasks: runs so far */
    _Atomic int64_t inits;       /* initializer runs */
    _Atomic int64_t kills;       /* chaos: kills done (paces the map) */
} shared;

static shared *S;

static void shared_new(void)
{
    void *p = mmap(NULL, sizeof(shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    memset(p, 0, sizeof(shared));
    S = p;
}

static void shared_free(void)
{
    munmap(S, sizeof(shared));
    S = NULL;
}

/* The pause of a polling loop (the loops have deadlines; this only spares the CPU). */
static void nap(void)
{
    struct timespec ts = {0, 100 * 1000};
    nanosleep(&ts, NULL);
}

/* Poll `cond` until it holds; fail the test after `secs` seconds. */
#define WAIT_UNTIL(cond, secs)                                                          \
    do {                                                                                \
        mproc_deadline wd_ = mproc_deadline_after(secs);                                \
        while (!(cond)) {                                                               \
            if (mproc_deadline_expired(wd_)) {                                          \
                fprintf(stderr, "%s:%d: timed out waiting for %s\n", __FILE__, __LINE__, \
                        #cond);                                                         \
                fflush(NULL);                                                           \
                _exit(1);                                                               \
            }                                                                           \
            nap();                                                                      \
        }                                                                               \
    } while (0)

/* Tasks both suites use (static inline: a suite may leave some unused). */
#include <signal.h>
#include <mproc.h>

static inline int set_int(mproc_value **out, int64_t x)
{
    *out = mproc_value_int(x);
    return *out ? 0 : MPROC_ENOMEM;
}

static inline int t_square(const mproc_value *arg, mproc_value **out)
{
    int64_t x = mproc_value_as_int(arg);
    return set_int(out, x * x);
}

static inline int t_fail_on_7(const mproc_value *arg, mproc_value **out)
{
    int64_t x = mproc_value_as_int(arg);
    if (x == 7)
        return mproc_task_error("item %lld is bad", (long long)x);
    return set_int(out, x * 10);
}

static inline int t_sleep_ms(const mproc_value *arg, mproc_value **out)
{
    int64_t ms = mproc_value_as_int(arg);
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL); /* workload, not synchronisation */
    return set_int(out, ms);
}

static inline int t_pid(const mproc_value *arg, mproc_value **out)
{
    (void)arg;
    return set_int(out, (int64_t)getpid());
}

static inline int t_kill_on_5(const mproc_value *arg, mproc_value **out)
{
    int64_t x = mproc_value_as_int(arg);
    if (x == 5)
        raise(SIGKILL);
    return set_int(out, x * x);
}

static inline int t_crash_once(const mproc_value *arg, mproc_value **out)
{
    if (atomic_fetch_add(&S->runs, 1) == 0)
        raise(SIGKILL);
    return set_int(out, mproc_value_as_int(arg) + 1);
}

static inline int t_reverse(const void *in, size_t len, mproc_buf *out)
{
    const uint8_t *p = in;
    for (size_t i = 0; i < len; i++) {
        int rc = mproc_buf_append(out, p + len - 1 - i, 1);
        if (rc)
            return rc;
    }
    return 0;
}

#endif
