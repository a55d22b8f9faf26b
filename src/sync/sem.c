/* sem.c — Semaphore, BoundedSemaphore and Event on futexes in shared memory.
 *
 * A semaphore is one 32-bit value plus a count of sleepers: acquire is a CAS
 * that never goes below zero, release a CAS that never exceeds the bound,
 * and a release only enters the kernel when someone sleeps. Both sides use
 * sequentially consistent operations on (value, waiters), so a releaser
 * either sees the sleeper or the sleeper's FUTEX_WAIT sees the new value: no
 * lost wakeup. A process killed while sleeping leaves `waiters` one too high,
 * which only costs later releases a futex_wake call. */
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include "sync_int.h"

typedef struct sem_st {
    uint32_t magic;
    uint32_t bound; /* largest value release() may reach */
    _Atomic uint32_t value;
    _Atomic uint32_t waiters;
} sem_st;

struct mproc_semaphore {
    mproc_shm *shm;
    sem_st *st;
};

/* The flag is bit 0 of `word`; the rest counts set() calls, so a waiter that
 * slept through a set() quickly undone by clear() still sees that it happened
 * and returns (as Python's Event.wait does), instead of sleeping on. */
typedef struct event_st {
    uint32_t magic;
    _Atomic uint32_t word;
    _Atomic uint32_t waiters;
} event_st;

struct mproc_event {
    mproc_shm *shm;
    event_st *st;
};

/* A fresh memfd segment for one state of `size` bytes. */
static int state_new(size_t size, mproc_shm **shm, void **st)
{
    int rc = mproc_shm_new(shm, size);
    if (!rc)
        *st = mproc_shm_buf(*shm);
    return rc;
}

static int sem_new(mproc_semaphore **out, unsigned value, bool bounded)
{
    if (!out || value > MPROC_SEM_VALUE_MAX)
        return mproc__fail(MPROC_EINVAL, "semaphore_new: value must be <= %u", MPROC_SEM_VALUE_MAX);
    mproc_semaphore *s = malloc(sizeof *s);
    if (!s)
        return MPROC_ENOMEM;
    void *st;
    int rc = state_new(sizeof(sem_st), &s->shm, &st);
    if (rc) {
        free(s);
        return rc;
    }
    s->st = st;
    s->st->bound = bounded ? value : MPROC_SEM_VALUE_MAX;
    s->st->value = value;
    s->st->magic = MPROC__SYNC_SEM;
    *out = s;
    return 0;
}

int mproc_semaphore_new(mproc_semaphore **out, unsigned value)
{
    return sem_new(out, value, false);
}

int mproc_bounded_semaphore_new(mproc_semaphore **out, unsigned value)
{
    return sem_new(out, value, true);
}

static bool sem_try(sem_st *st)
{
    uint32_t v = atomic_load(&st->value);
    while (v > 0)
        if (atomic_compare_exchange_weak(&st->value, &v, v - 1))
            return true;
    return false;
}

int mproc_semaphore_acquire(mproc_semaphore *s, double timeout)
{
    if (!s)
        return mproc__fail(MPROC_EINVAL, "semaphore_acquire: NULL semaphore");
    sem_st *st = s->st;
    if (sem_try(st))
        return 0;
    if (timeout == 0)
        return MPROC_ETIMEDOUT;
    mproc_deadline d = mproc_deadline_after(timeout);
    for (;;) {
        atomic_fetch_add(&st->waiters, 1);
        int rc = mproc__futex_wait(&st->value, 0, d);
        atomic_fetch_sub(&st->waiters, 1);
        if (sem_try(st))
            return 0;
        if (rc)
            return rc;
    }
}

int mproc_semaphore_release(mproc_semaphore *s)
{
    if (!s)
        return mproc__fail(MPROC_EINVAL, "semaphore_release: NULL semaphore");
    sem_st *st = s->st;
    uint32_t max = st->bound;
    uint32_t v = atomic_load(&st->value);
    do {
        if (v >= max)
            return mproc__fail(MPROC_EOVERFLOW, "semaphore or lock released too many times");
    } while (!atomic_compare_exchange_weak(&st->value, &v, v + 1));
    if (atomic_load(&st->waiters))
        mproc__futex_wake(&st->value, 1);
    return 0;
}

unsigned mproc_semaphore_value(const mproc_semaphore *s)
{
    return s ? atomic_load(&s->st->value) : 0;
}

void mproc_semaphore_free(mproc_semaphore *s)
{
    if (!s)
        return;
    mproc_shm_close(s->shm);
    free(s);
}

static int sem_export(const void *obj, mproc_buf *out, int *fds, size_t *nfds, size_t max_fds)
{
    const mproc_semaphore *s = obj;
    return mproc__sobj_export(s->shm, s->st, out, fds, nfds, max_fds);
}

/* Import a single-segment object; on success the originals are closed (the
 * handle maps a duplicate). */
static int simple_import(const void *data, size_t len, const int *fds, size_t nfds, uint32_t magic,
                         size_t size, mproc_shm **shm, void **st)
{
    int rc = mproc__sobj_import(data, len, fds, nfds, magic, size, shm, st, NULL);
    if (rc)
        return rc;
    for (size_t i = 0; i < nfds; i++)
        close(fds[i]);
    return 0;
}

static int sem_import(const void *data, size_t len, const int *fds, size_t nfds, void **obj)
{
    mproc_semaphore *s = malloc(sizeof *s);
    void *st;
    int rc = s ? simple_import(data, len, fds, nfds, MPROC__SYNC_SEM, sizeof(sem_st), &s->shm, &st)
               : MPROC_ENOMEM;
    if (rc) {
        free(s);
        return rc;
    }
    s->st = st;
    *obj = s;
    return 0;
}

static void sem_release_obj(void *obj)
{
    mproc_semaphore_free(obj);
}

const mproc_shareable_type mproc_semaphore_type = {"mproc.semaphore", sem_export, sem_import,
                                                   sem_release_obj};

/* ----------------------------------------------------------------- Event */

int mproc_event_new(mproc_event **out)
{
    if (!out)
        return mproc__fail(MPROC_EINVAL, "event_new: out is NULL");
    mproc_event *e = malloc(sizeof *e);
    if (!e)
        return MPROC_ENOMEM;
    void *st;
    int rc = state_new(sizeof(event_st), &e->shm, &st);
    if (rc) {
        free(e);
        return rc;
    }
    e->st = st;
    e->st->magic = MPROC__SYNC_EVENT;
    *out = e;
    return 0;
}

void mproc_event_set(mproc_event *e)
{
    if (!e)
        return;
    /* One more set() (the count lives above bit 0), flag on. */
    uint32_t w = atomic_load(&e->st->word);
    while (!atomic_compare_exchange_weak(&e->st->word, &w, (w + 2) | 1u))
        ;
    if (atomic_load(&e->st->waiters))
        mproc__futex_wake(&e->st->word, INT_MAX);
}

void mproc_event_clear(mproc_event *e)
{
    if (e)
        atomic_fetch_and(&e->st->word, ~1u);
}

bool mproc_event_is_set(const mproc_event *e)
{
    return e && (atomic_load(&e->st->word) & 1u) != 0;
}

int mproc_event_wait(mproc_event *e, double timeout)
{
    if (!e)
        return mproc__fail(MPROC_EINVAL, "event_wait: NULL event");
    event_st *st = e->st;
    uint32_t w0 = atomic_load(&st->word);
    if (w0 & 1u)
        return 0;
    if (timeout == 0)
        return MPROC_ETIMEDOUT;
    mproc_deadline d = mproc_deadline_after(timeout);
    for (;;) {
        atomic_fetch_add(&st->waiters, 1);
        int rc = mproc__futex_wait(&st->word, w0, d);
        atomic_fetch_sub(&st->waiters, 1);
        uint32_t w = atomic_load(&st->word);
        if ((w & 1u) || (w >> 1) != (w0 >> 1)) /* set now, or set (and cleared) meanwhile */
            return 0;
        if (rc)
            return rc;
    }
}

void mproc_event_free(mproc_event *e)
{
    if (!e)
        return;
    mproc_shm_close(e->shm);
    free(e);
}

static int event_export(const void *obj, mproc_buf *out, int *fds, size_t *nfds, size_t max_fds)
{
    const mproc_event *e = obj;
    return mproc__sobj_export(e->shm, e->st, out, fds, nfds, max_fds);
}

static int event_import(const void *data, size_t len, const int *fds, size_t nfds, void **obj)
{
    mproc_event *e = malloc(sizeof *e);
    void *st;
    int rc = e ? simple_import(data, len, fds, nfds, MPROC__SYNC_EVENT, sizeof(event_st), &e->shm, &st)
               : MPROC_ENOMEM;
    if (rc) {
        free(e);
        return rc;
    }
    e->st = st;
    *obj = e;
    return 0;
}

static void event_release_obj(void *obj)
{
    mproc_event_free(obj);
}

const mproc_shareable_type mproc_event_type = {"mproc.event", event_export, event_import,
                                               event_release_obj};
