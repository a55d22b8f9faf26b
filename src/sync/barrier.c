/* barrier.c — Barrier with abort/reset/broken state that notices dead waiters.
 *
 * Shared state, guarded by a robust mutex `mu`: the arrival count, a futex
 * word `gen` that changes whenever a generation ends (trip, break, reset), and
 * one slot per waiter. A waiter holds its slot's robust mutex while it waits,
 * so if it dies the kernel marks that mutex owner-dead; an audit (trylock of
 * every occupied slot) finds it and breaks the barrier instead of letting the
 * others count a dead process as arrived or wait for it forever. Audits run
 * at every trip and, while anyone waits, at most every AUDIT_NS (waiters sleep
 * in slices of that length). Whoever ends a generation writes each waiting
 * slot's outcome (passed/broken), so every waiter learns exactly how its own
 * generation ended, however late it wakes. A death while holding `mu` (for
 * instance inside the action) is reported by the mutex itself: the next
 * locker breaks the barrier. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include "sync_int.h"

#define AUDIT_NS 100000000LL /* 0.1 s */
#define MAX_PARTIES 65535u

enum { SLOT_FREE = 0, SLOT_WAITING, SLOT_PASSED, SLOT_BROKEN };

typedef struct slot {
    pthread_mutex_t mu; /* held by the waiter using the slot */
    uint32_t state;
    uint32_t gen;
} slot;

typedef struct barrier_st {
    uint32_t magic;
    uint32_t parties;
    _Atomic uint32_t gen;
    uint32_t count;
    uint32_t broken;
    uint32_t nslots;
    uint32_t pad;
    uint64_t broken_bits; /* bit g % 64: generation g ended broken (for slot-less waiters) */
    int64_t last_audit_ns;
    double timeout;
    pthread_mutex_t mu;
    slot slots[];
} barrier_st;

struct mproc_barrier {
    mproc_shm *shm;
    barrier_st *st;
    uint32_t nslots; /* validated private copy: a peer cannot make us walk off the mapping */
    mproc_barrier_action action;
};

static size_t state_size(uint32_t nslots)
{
    return sizeof(barrier_st) + (size_t)nslots * sizeof(slot);
}

int mproc_barrier_new(mproc_barrier **out, unsigned parties, const mproc_barrier_opts *opts)
{
    if (!out || parties == 0 || parties > MAX_PARTIES)
        return mproc__fail(MPROC_EINVAL, "barrier_new: parties must be 1..%u", MAX_PARTIES);
    mproc_barrier *b = calloc(1, sizeof *b);
    if (!b)
        return MPROC_ENOMEM;
    /* Waiters of the generation that just ended may still hold their slots
     * while the next generation fills: room for two generations and spare. */
    uint32_t nslots = 2 * parties + 16;
    int rc = mproc_shm_new(&b->shm, state_size(nslots));
    if (rc) {
        free(b);
        return rc;
    }
    barrier_st *st = b->st = mproc_shm_buf(b->shm);
    st->parties = parties;
    st->nslots = nslots;
    st->timeout = opts && opts->timeout > 0 ? opts->timeout : 0;
    rc = mproc__robust_mutex_init(&st->mu, PTHREAD_MUTEX_ERRORCHECK);
    for (uint32_t i = 0; i < nslots && !rc; i++)
        rc = mproc__robust_mutex_init(&st->slots[i].mu, PTHREAD_MUTEX_ERRORCHECK);
    if (rc) {
        mproc_shm_close(b->shm);
        free(b);
        return rc;
    }
    b->action = opts ? opts->action : NULL;
    b->nslots = nslots;
    st->magic = MPROC__SYNC_BARRIER;
    *out = b;
    return 0;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* End the current generation as broken (with mu held). */
static void break_locked(mproc_barrier *b)
{
    barrier_st *st = b->st;
    if (st->broken)
        return;
    for (uint32_t i = 0; i < b->nslots; i++)
        if (st->slots[i].state == SLOT_WAITING)
            st->slots[i].state = SLOT_BROKEN;
    __atomic_store_n(&st->broken, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&st->count, 0, __ATOMIC_RELAXED);
    st->broken_bits |= 1ull << (atomic_load(&st->gen) % 64);
    atomic_fetch_add(&st->gen, 1);
    mproc__futex_wake(&st->gen, INT_MAX);
}

/* Take `mu`. If its holder died, the barrier's state may be half-updated:
 * break it (the waiters learn it) and go on. 0 or a negative code. */
static int lock_st(mproc_barrier *b)
{
    barrier_st *st = b->st;
    int r = pthread_mutex_lock(&st->mu);
    if (r == EOWNERDEAD) {
        pthread_mutex_consistent(&st->mu);
        break_locked(b);
        return 0;
    }
    return r ? mproc__fail(-r, "barrier: internal lock failed") : 0;
}

/* Check the occupied slots (mu held): reclaim slots of dead processes and
 * break the barrier if one of them was still waiting. */
static void audit_locked(mproc_barrier *b)
{
    barrier_st *st = b->st;
    bool dead_waiter = false;
    for (uint32_t i = 0; i < b->nslots; i++) {
        slot *s = &st->slots[i];
        if (s->state == SLOT_FREE)
            continue;
        int r = pthread_mutex_trylock(&s->mu);
        if (r == EOWNERDEAD) {
            pthread_mutex_consistent(&s->mu);
            pthread_mutex_unlock(&s->mu);
            dead_waiter |= s->state == SLOT_WAITING;
            s->state = SLOT_FREE;
        } else if (r == 0) {
            pthread_mutex_unlock(&s->mu); /* not expected: holders keep it locked */
        }
    }
    st->last_audit_ns = now_ns();
    if (dead_waiter)
        break_locked(b);
}

/* A free slot, locked by us and marked waiting in generation g; NULL if none. */
static slot *take_slot(mproc_barrier *b, uint32_t g)
{
    barrier_st *st = b->st;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < b->nslots; i++) {
            slot *s = &st->slots[i];
            if (s->state != SLOT_FREE)
                continue;
            int r = pthread_mutex_trylock(&s->mu);
            if (r == EOWNERDEAD) {
                pthread_mutex_consistent(&s->mu);
                r = 0;
            }
            if (r)
                continue;
            s->state = SLOT_WAITING;
            s->gen = g;
            return s;
        }
        audit_locked(b); /* reclaim slots of dead processes, then look again */
    }
    return NULL;
}

static void free_slot(slot *s)
{
    s->state = SLOT_FREE;
    pthread_mutex_unlock(&s->mu);
}

/* The last arrival (mu held): check nobody died waiting, run the action,
 * release everyone. */
static int trip_locked(mproc_barrier *b)
{
    barrier_st *st = b->st;
    audit_locked(b);
    if (st->broken)
        return mproc__fail(MPROC_EBROKEN, "barrier: a waiting process died");
    if (b->action && b->action() != 0) {
        break_locked(b);
        return mproc__fail(MPROC_EBROKEN, "barrier: the action failed");
    }
    uint32_t g = atomic_load(&st->gen);
    for (uint32_t i = 0; i < b->nslots; i++)
        if (st->slots[i].state == SLOT_WAITING && st->slots[i].gen == g)
            st->slots[i].state = SLOT_PASSED;
    st->broken_bits &= ~(1ull << (g % 64));
    __atomic_store_n(&st->count, 0, __ATOMIC_RELAXED);
    atomic_fetch_add(&st->gen, 1);
    mproc__futex_wake(&st->gen, INT_MAX);
    return 0;
}

/* How generation g ended, for a waiter that found no free slot (all taken by
 * waiters of earlier generations that have not woken yet). Exact for the last
 * 64 generations; older ones are reported broken, the safe answer. */
static uint32_t slotless_outcome(const barrier_st *st, uint32_t g)
{
    uint32_t now = atomic_load(&st->gen);
    if (now == g)
        return SLOT_WAITING;
    if (now - g > 63)
        return SLOT_BROKEN;
    return (st->broken_bits >> (g % 64)) & 1 ? SLOT_BROKEN : SLOT_PASSED;
}

int mproc_barrier_wait(mproc_barrier *b, double timeout, unsigned *index)
{
    if (!b)
        return mproc__fail(MPROC_EINVAL, "barrier_wait: NULL barrier");
    barrier_st *st = b->st;
    if (timeout < 0 && st->timeout > 0)
        timeout = st->timeout;
    mproc_deadline d = mproc_deadline_after(timeout);
    int rc = lock_st(b);
    if (rc)
        return rc;
    if (st->broken) {
        pthread_mutex_unlock(&st->mu);
        return mproc__fail(MPROC_EBROKEN, "barrier: broken (aborted, timed out or a waiter died)");
    }
    unsigned idx = st->count;
    __atomic_store_n(&st->count, idx + 1, __ATOMIC_RELAXED);
    if (st->count == st->parties) {
        rc = trip_locked(b);
        pthread_mutex_unlock(&st->mu);
        if (!rc && index)
            *index = idx;
        return rc;
    }
    uint32_t g = atomic_load(&st->gen);
    slot *me = take_slot(b, g);
    if (st->broken) { /* the audit in take_slot found a dead waiter */
        if (me)
            free_slot(me);
        pthread_mutex_unlock(&st->mu);
        return mproc__fail(MPROC_EBROKEN, "barrier: a waiting process died");
    }
    pthread_mutex_unlock(&st->mu);

    for (;;) {
        int64_t slice = now_ns() + AUDIT_NS;
        mproc_deadline w = {d.ns < slice ? d.ns : slice};
        if (atomic_load(&st->gen) != g)
            break;
        if (mproc_deadline_expired(d))
            break;
        if (mproc__futex_wait(&st->gen, g, w) == 0 || atomic_load(&st->gen) != g ||
            mproc_deadline_expired(d))
            continue;
        /* A quiet slice: see whether someone died (at most one audit per slice
         * among all waiters). */
        if (lock_st(b) == 0) {
            if (now_ns() - st->last_audit_ns >= AUDIT_NS)
                audit_locked(b);
            pthread_mutex_unlock(&st->mu);
        }
    }

    rc = lock_st(b);
    if (rc) /* cannot happen short of memory corruption; the slot stays ours */
        return rc;
    uint32_t state = me ? me->state : slotless_outcome(st, g);
    if (state == SLOT_WAITING) { /* our time ran out first */
        break_locked(b);
        rc = mproc__fail(MPROC_ETIMEDOUT, "barrier: timed out; the barrier is now broken");
    } else if (state == SLOT_BROKEN) {
        rc = mproc__fail(MPROC_EBROKEN, "barrier: broken while waiting (aborted, reset, timed out, "
                                        "the action failed or a waiter died)");
    }
    if (me)
        free_slot(me);
    pthread_mutex_unlock(&st->mu);
    if (!rc && index)
        *index = idx;
    return rc;
}

void mproc_barrier_abort(mproc_barrier *b)
{
    if (b && lock_st(b) == 0) {
        break_locked(b);
        pthread_mutex_unlock(&b->st->mu);
    }
}

void mproc_barrier_reset(mproc_barrier *b)
{
    if (!b || lock_st(b) != 0)
        return;
    barrier_st *st = b->st;
    if (st->count > 0)
        break_locked(b); /* current waiters get MPROC_EBROKEN */
    __atomic_store_n(&st->broken, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&st->count, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&st->mu);
}

unsigned mproc_barrier_parties(const mproc_barrier *b)
{
    return b ? b->st->parties : 0;
}

/* Snapshots, read without the lock (relaxed atomics). */
unsigned mproc_barrier_n_waiting(const mproc_barrier *b)
{
    if (!b || __atomic_load_n(&b->st->broken, __ATOMIC_RELAXED))
        return 0;
    return __atomic_load_n(&b->st->count, __ATOMIC_RELAXED);
}

bool mproc_barrier_broken(const mproc_barrier *b)
{
    return b && __atomic_load_n(&b->st->broken, __ATOMIC_RELAXED);
}

void mproc_barrier_free(mproc_barrier *b)
{
    if (!b)
        return;
    mproc_shm_close(b->shm);
    free(b);
}

/* Wire form: the segment, then u8 has-action and the action as a module reference. */
static int barrier_export(const void *obj, mproc_buf *out, int *fds, size_t *nfds, size_t max_fds)
{
    const mproc_barrier *b = obj;
    int rc = mproc__sobj_export(b->shm, b->st, out, fds, nfds, max_fds);
    if (!rc)
        rc = mproc__put_u8(out, b->action != NULL);
    if (!rc && b->action)
        rc = mproc__modref_put(out, (const void *)b->action);
    return rc;
}

static int barrier_import(const void *data, size_t len, const int *fds, size_t nfds, void **obj)
{
    mproc_barrier *b = calloc(1, sizeof *b);
    if (!b)
        return MPROC_ENOMEM;
    mproc_reader r;
    void *st;
    uint8_t has = 0;
    int rc = mproc__sobj_import(data, len, fds, nfds, MPROC__SYNC_BARRIER, sizeof(barrier_st), &b->shm,
                                &st, &r);
    if (rc) {
        free(b);
        return rc;
    }
    b->st = st;
    size_t room = mproc_shm_size(b->shm) - (size_t)((char *)st - (char *)mproc_shm_buf(b->shm));
    rc = mproc__get_u8(&r, &has);
    b->nslots = b->st->nslots;
    if (!rc && (b->nslots > 2 * MAX_PARTIES + 16 || state_size(b->nslots) > room))
        rc = mproc__fail(MPROC_EPROTO, "barrier: malformed shared state");
    if (!rc && has) {
        void *fn = NULL;
        rc = mproc__modref_get(&r, &fn);
        b->action = (mproc_barrier_action)fn;
    }
    if (rc) {
        mproc_shm_close(b->shm);
        free(b);
        return rc;
    }
    for (size_t i = 0; i < nfds; i++)
        close(fds[i]);
    *obj = b;
    return 0;
}

static void barrier_release_obj(void *obj)
{
    mproc_barrier_free(obj);
}

const mproc_shareable_type mproc_barrier_type = {"mproc.barrier", barrier_export, barrier_import,
                                                 barrier_release_obj};
