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

/* The flag is bit 0 of `word`; the rest counts set() calls, so a waiter that
 * slept through a set() quickly undone by clear() still sees that it happened
 * and returns (as Python's Event.wait does), instead of sleeping on. */
typedef struct event_st {
    uint32_t magic;
    _Atomic uint32_t word;
    _Atomic uint32_t waiters;
} event_st;

/* Both handles are one segment and the state at its start. */
typedef struct simple {
    mproc_shm *shm;
    void *st;
} simple;

struct mproc_semaphore {
    simple h;
};
struct mproc_event {
    simple h;
};
#define EV(e) ((event_st *)(e)->h.st)

/* A handle on a fresh zero-filled segment of `size` bytes stamped with `magic`. */
static int simple_new(size_t size, uint32_t magic, simple **out)
{
    simple *h = malloc(sizeof *h);
    if (!h)
        return MPROC_ENOMEM;
    int rc = mproc_shm_new(&h->shm, size);
    if (rc) {
        free(h);
        return rc;
    }
    h->st = mproc_shm_buf(h->shm);
    *(uint32_t *)h->st = magic;
    *out = h;
    return 0;
}

static void simple_free(void *obj)
{
    simple *h = obj;
    if (!h)
        return;
    mproc_shm_close(h->shm);
    free(h);
}

static int simple_export(const void *obj, mproc_buf *out, int *fds, size_t *nfds, size_t max_fds)
{
    const simple *h = obj;
    return mproc__sobj_export(h->shm, h->st, out, fds, nfds, max_fds);
}

/* Import into a new handle; on success the originals are closed (the handle
 * maps a duplicate). */
static int simple_import(const void *data, size_t len, const int *fds, size_t nfds, uint32_t magic,
                         size_t size, void **obj)
{
    simple *h = malloc(sizeof *h);
    if (!h)
        return MPROC_ENOMEM;
    int rc = mproc__sobj_import(data, len, fds, nfds, magic, size, &h->shm, &h->st, NULL);
    if (rc) {
        free(h);
        return rc;
    }
    for (size_t i = 0; i < nfds; i++)
        close(fds[i]);
    *obj = h;
    return 0;
}

/* ------------------------------------------------------------- Semaphore */

static int sem_new(mproc_semaphore **out, unsigned value, bool bounded)
{
    if (!out || value > MPROC_SEM_VALUE_MAX)
        return mproc__fail(MPROC_EINVAL, "semaphore_new: value must be <= %u", MPROC_SEM_VALUE_MAX);
    simple *h;
    int rc = simple_new(sizeof(sem_st), MPROC__SYNC_SEM, &h);
    if (rc)
        return rc;
    sem_st *st = h->st;
    st->bound = bounded ? value : MPROC_SEM_VALUE_MAX;
    st->value = value;
    *out = (mproc_semaphore *)h;
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
    sem_st *st = (sem_st *)s->h.st;
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
    sem_st *st = (sem_st *)s->h.st;
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
    return s ? atomic_load(&((sem_st *)s->h.st)->value) : 0;
}

void mproc_semaphore_free(mproc_semaphore *s)
{
    simple_free(s);
}

static int sem_import(const void *data, size_t len, const int *fds, size_t nfds, void **obj)
{
    return simple_import(data, len, fds, nfds, MPROC__SYNC_SEM, sizeof(sem_st), obj);
}

const mproc_shareable_type mproc_semaphore_type = {"mproc.semaphore", simple_export, sem_import,
                                                   simple_free};

/* ----------------------------------------------------------------- Event */

int mproc_event_new(mproc_event **out)
{
    if (!out)
        return mproc__fail(MPROC_EINVAL, "event_new: out is NULL");
    simple *h;
    int rc = simple_new(sizeof(event_st), MPROC__SYNC_EVENT, &h);
    if (!rc)
        *out = (mproc_event *)h;
    return rc;
}

void mproc_event_set(mproc_event *e)
{
    if (!e)
        return;
    /* One more set() (the count lives above bit 0), flag on. */
    uint32_t w = atomic_load(&EV(e)->word);
    while (!atomic_compare_exchange_weak(&EV(e)->word, &w, (w + 2) | 1u))
        ;
    if (atomic_load(&EV(e)->waiters))
        mproc__futex_wake(&EV(e)->word, INT_MAX);
}

void mproc_event_clear(mproc_event *e)
{
    if (e)
        atomic_fetch_and(&EV(e)->word, ~1u);
}

bool mproc_event_is_set(const mproc_event *e)
{
    return e && (atomic_load(&EV(e)->word) & 1u) != 0;
}

int mproc_event_wait(mproc_event *e, double timeout)
{
    if (!e)
        return mproc__fail(MPROC_EINVAL, "event_wait: NULL event");
    event_st *st = EV(e);
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
    simple_free(e);
}

static int event_import(const void *data, size_t len, const int *fds, size_t nfds, void **obj)
{
    return simple_import(data, len, fds, nfds, MPROC__SYNC_EVENT, sizeof(event_st), obj);
}

const mproc_shareable_type mproc_event_type = {"mproc.event", simple_export, event_import,
                                               simple_free};
