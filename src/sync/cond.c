/* cond.c — Condition over a shared Lock/RLock, with a futex sequence word.
 *
 * Shared state (changed only with the lock held): `waiters` counts callers
 * inside wait(), `signals` the wakeups granted by notify() and not yet taken.
 * notify(n) grants at most waiters - signals tokens, bumps `seq` and wakes n
 * sleepers; a waiter returns "notified" only by taking a token, so without
 * process deaths there are no spurious wakeups, and notify(n) releases at most
 * n waiters, as Python promises. A waiter that records `seq` under the lock
 * and then sleeps on it cannot miss a notify made after it released the lock:
 * the kernel sees `seq` changed. A process killed inside wait() stays counted;
 * at worst a later notify_all grants a token nobody takes, and one later waiter
 * wakes spuriously (documented). */
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include "sync_int.h"

#define OWN_LOCK_OFFSET 64

typedef struct cond_st {
    uint32_t magic;
    _Atomic uint32_t seq;
    uint32_t waiters;
    uint32_t signals;
} cond_st;

struct mproc_condition {
    mproc_shm *shm;
    cond_st *st;
    mproc_lock *lock;
    bool free_lock; /* the handle belongs to us (own RLock, or imported) */
};

int mproc_condition_new(mproc_condition **out, mproc_lock *lock)
{
    if (!out)
        return mproc__fail(MPROC_EINVAL, "condition_new: out is NULL");
    mproc_condition *c = calloc(1, sizeof *c);
    if (!c)
        return MPROC_ENOMEM;
    int rc = mproc_shm_new(&c->shm, OWN_LOCK_OFFSET + (lock ? 0 : sizeof(mproc__lock_st)));
    if (rc) {
        free(c);
        return rc;
    }
    c->st = mproc_shm_buf(c->shm);
    c->st->magic = MPROC__SYNC_COND;
    if (lock) {
        c->lock = lock;
    } else {
        mproc__lock_st *ls = (mproc__lock_st *)((char *)c->st + OWN_LOCK_OFFSET);
        rc = mproc__lock_init(ls, true);
        if (!rc)
            rc = mproc__lock_wrap(c->shm, false, ls, &c->lock);
        if (rc) {
            mproc_shm_close(c->shm);
            free(c);
            return rc;
        }
        c->free_lock = true;
    }
    *out = c;
    return 0;
}

mproc_lock *mproc_condition_lock(const mproc_condition *c)
{
    return c ? c->lock : NULL;
}

int mproc_condition_acquire(mproc_condition *c, double timeout)
{
    return c ? mproc_lock_acquire(c->lock, timeout)
             : mproc__fail(MPROC_EINVAL, "condition_acquire: NULL condition");
}

int mproc_condition_release(mproc_condition *c)
{
    return c ? mproc_lock_release(c->lock)
             : mproc__fail(MPROC_EINVAL, "condition_release: NULL condition");
}

static int not_owned(const char *what)
{
    return mproc__fail(MPROC_EPERM, "condition_%s: the lock is not held by the calling thread", what);
}

static int cond_wait(mproc_condition *c, mproc_deadline d)
{
    cond_st *st = c->st;
    if (!mproc_lock_is_owned(c->lock))
        return not_owned("wait");
    /* Counted and the sequence read while we still hold the lock: a notify can
     * only come after, and then it changes `seq` under our futex wait. Only a
     * notify made after we entered (seq moved past `entry`) entitles us to a
     * token, so a later waiter cannot take a wakeup meant for an earlier one. */
    st->waiters++;
    uint32_t entry = atomic_load(&st->seq), seq = entry;
    uint32_t depth;
    if (mproc__lock_release_all(c->lock, &depth) != 0) {
        st->waiters--;
        return not_owned("wait");
    }
    for (;;) {
        int tr = mproc_deadline_expired(d) ? MPROC_ETIMEDOUT : mproc__futex_wait(&st->seq, seq, d);
        int rc = mproc__lock_restore(c->lock, depth);
        if (rc && rc != MPROC_EOWNERDEAD)
            return rc; /* ENOTRECOVERABLE: cannot happen, we always make it consistent */
        bool entitled = atomic_load(&st->seq) != entry && st->signals > 0;
        if (entitled || rc == MPROC_EOWNERDEAD || tr != 0 || mproc_deadline_expired(d)) {
            /* A dead previous owner is reported at once, with the lock held:
             * the state it protected needs repair before anyone else runs. */
            if (entitled)
                st->signals--;
            st->waiters--;
            if (rc)
                return rc;
            return entitled ? 0 : tr && tr != MPROC_ETIMEDOUT ? tr : MPROC_ETIMEDOUT;
        }
        seq = atomic_load(&st->seq);
        mproc__lock_release_all(c->lock, &depth);
    }
}

int mproc_condition_wait(mproc_condition *c, double timeout)
{
    if (!c)
        return mproc__fail(MPROC_EINVAL, "condition_wait: NULL condition");
    return cond_wait(c, mproc_deadline_after(timeout));
}

int mproc_condition_wait_for(mproc_condition *c, mproc_predicate pred, void *arg, double timeout)
{
    if (!c || !pred)
        return mproc__fail(MPROC_EINVAL, "condition_wait_for: NULL condition or predicate");
    if (!mproc_lock_is_owned(c->lock))
        return not_owned("wait_for");
    mproc_deadline d = mproc_deadline_after(timeout);
    while (!pred(arg)) {
        if (mproc_deadline_expired(d))
            return MPROC_ETIMEDOUT;
        int rc = cond_wait(c, d);
        if (rc == MPROC_ETIMEDOUT)
            return pred(arg) ? 0 : MPROC_ETIMEDOUT;
        if (rc)
            return rc;
    }
    return 0;
}

static int notify(mproc_condition *c, uint32_t n, const char *what)
{
    if (!c)
        return mproc__fail(MPROC_EINVAL, "condition_%s: NULL condition", what);
    if (!mproc_lock_is_owned(c->lock))
        return not_owned(what);
    cond_st *st = c->st;
    uint32_t avail = st->waiters > st->signals ? st->waiters - st->signals : 0;
    if (n > avail)
        n = avail;
    if (n == 0)
        return 0;
    st->signals += n;
    atomic_fetch_add(&st->seq, 1);
    mproc__futex_wake(&st->seq, n > INT_MAX ? INT_MAX : (int)n);
    return 0;
}

int mproc_condition_notify(mproc_condition *c, unsigned n)
{
    return notify(c, n, "notify");
}

int mproc_condition_notify_all(mproc_condition *c)
{
    return notify(c, UINT32_MAX, "notify_all");
}

void mproc_condition_free(mproc_condition *c)
{
    if (!c)
        return;
    bool own = c->lock->shm == c->shm;
    const mproc__lock_st *ls = own ? c->lock->st : NULL;
    if (c->free_lock)
        mproc_lock_free(c->lock);
    mproc__sync_close_shm(c->shm, ls);
    free(c);
}

/* Wire form: the condition's segment, then u8 own-lock flag; a borrowed lock
 * follows as its own export (blob; its fd after ours). */
static int cond_export(const void *obj, mproc_buf *out, int *fds, size_t *nfds, size_t max_fds)
{
    const mproc_condition *c = obj;
    bool own = c->lock->shm == c->shm;
    int rc = mproc__sobj_export(c->shm, c->st, out, fds, nfds, max_fds);
    if (!rc)
        rc = mproc__put_u8(out, own);
    if (rc || own)
        return rc;
    return mproc__lock_export_nested(c->lock, out, fds, nfds, max_fds);
}

static int cond_import(const void *data, size_t len, const int *fds, size_t nfds, void **obj)
{
    mproc_condition *c = calloc(1, sizeof *c);
    if (!c)
        return MPROC_ENOMEM;
    mproc_reader r;
    void *st;
    uint8_t own = 0;
    int rc = mproc__sobj_import(data, len, fds, nfds, MPROC__SYNC_COND, sizeof(cond_st), &c->shm, &st,
                                &r);
    if (rc) {
        free(c);
        return rc;
    }
    c->st = st;
    c->free_lock = true;
    rc = mproc__get_u8(&r, &own);
    if (!rc && own) {
        mproc__lock_st *ls = (mproc__lock_st *)((char *)st + OWN_LOCK_OFFSET);
        if ((char *)st - (char *)mproc_shm_buf(c->shm) + OWN_LOCK_OFFSET + sizeof *ls >
                mproc_shm_size(c->shm) ||
            ls->magic != MPROC__SYNC_LOCK)
            rc = mproc__fail(MPROC_EPROTO, "condition: malformed exported lock");
        else
            rc = mproc__lock_wrap(c->shm, false, ls, &c->lock);
    } else if (!rc) {
        rc = mproc__lock_import_nested(&r, fds + 1, nfds - 1, &c->lock);
    }
    if (rc) {
        mproc_shm_close(c->shm);
        free(c);
        return rc;
    }
    close(fds[0]); /* the lock's import closed its own */
    if (own)
        for (size_t i = 1; i < nfds; i++)
            close(fds[i]);
    *obj = c;
    return 0;
}

static void cond_release_obj(void *obj)
{
    mproc_condition_free(obj);
}

const mproc_shareable_type mproc_condition_type = {"mproc.condition", cond_export, cond_import,
                                                   cond_release_obj};
