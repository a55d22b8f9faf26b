/* lock.c — Lock and RLock on a robust, process-shared pthread mutex, plus the
 * helpers every sync primitive shares (tid cache, futexes, export/import).
 *
 * Why a robust pthread mutex: the kernel only reports an owner's death for
 * locks on the dying thread's robust list, which glibc maintains for robust
 * mutexes. So a Lock is owned by a thread (release by another is MPROC_EPERM),
 * and an acquirer that finds the owner dead gets EOWNERDEAD, which we turn
 * into MPROC_EOWNERDEAD after marking the mutex consistent, so the lock keeps
 * working. A Lock uses the errorcheck kind (re-acquiring your own Lock is
 * MPROC_EDEADLK instead of a hang); an RLock the recursive kind, with the
 * depth mirrored in the shared state so Condition.wait can release it all. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sync_int.h"

__thread pid_t mproc__tid_cache __attribute__((tls_model("initial-exec")));

pid_t mproc__tid_slow(void)
{
    mproc__tid_cache = (pid_t)syscall(SYS_gettid);
    return mproc__tid_cache;
}

/* ------------------------------------------------------------- futexes */

int mproc__futex_wait(_Atomic uint32_t *w, uint32_t val, mproc_deadline d)
{
    struct timespec ts = mproc__deadline_ts(d);
    bool never = d.ns == INT64_MAX;
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time; no PRIVATE flag:
     * the word is in shared memory and the sleepers are in other processes. */
    long r = syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_BITSET, val, never ? NULL : &ts, NULL,
                     FUTEX_BITSET_MATCH_ANY);
    if (r == 0 || errno == EAGAIN || errno == EINTR)
        return 0; /* woken, value changed or a signal: the caller re-checks */
    if (errno == ETIMEDOUT)
        return MPROC_ETIMEDOUT;
    return mproc__fail(mproc__errno(), "futex wait failed"); /* never loop on a hard error */
}

void mproc__futex_wake(_Atomic uint32_t *w, int n)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* -------------------------------------------------------- export/import */

int mproc__sobj_export(mproc_shm *shm, const void *st, mproc_buf *out, int *fds, size_t *nfds,
                       size_t max_fds)
{
    uint64_t off = (uint64_t)((const char *)st - (const char *)mproc_shm_buf(shm));
    mproc_buf seg = {0};
    int rc = mproc__put_u64(out, off);
    if (!rc)
        rc = mproc_shm_type.export_obj(shm, &seg, fds, nfds, max_fds);
    if (!rc)
        rc = mproc__put_blob(out, seg.data, seg.len);
    mproc__buf_free(&seg);
    return rc;
}

int mproc__sobj_import(const void *data, size_t len, const int *fds, size_t nfds, uint32_t magic,
                       size_t size, mproc_shm **shm, void **st, mproc_reader *rest)
{
    mproc_reader r = {data, (const uint8_t *)data + len};
    uint64_t off = 0;
    const uint8_t *seg;
    size_t seglen;
    int rc = mproc__get_u64(&r, &off);
    if (!rc)
        rc = mproc__get_blob(&r, &seg, &seglen);
    if (rc || nfds < 1)
        return mproc__fail(MPROC_EPROTO, "sync: malformed exported object");
    /* Work on a duplicate: callers close the originals once the whole object
     * (which may hold several segments) imported, so failures never double-close. */
    int fd = fcntl(fds[0], F_DUPFD_CLOEXEC, 3);
    if (fd < 0)
        return mproc__fail(mproc__errno(), "sync: cannot duplicate a descriptor");
    void *obj = NULL;
    rc = mproc_shm_type.import_obj(seg, seglen, &fd, 1, &obj);
    if (rc) {
        close(fd);
        return rc;
    }
    mproc_shm *s = obj;
    if (off > mproc_shm_size(s) || size > mproc_shm_size(s) - off || off % 8 != 0 ||
        *(const uint32_t *)((char *)mproc_shm_buf(s) + off) != magic) {
        mproc_shm_close(s);
        return mproc__fail(MPROC_EPROTO, "sync: exported object is not of the expected type");
    }
    *shm = s;
    *st = (char *)mproc_shm_buf(s) + off;
    if (rest)
        *rest = r;
    return 0;
}

static void close_originals(const int *fds, size_t nfds)
{
    for (size_t i = 0; i < nfds; i++)
        close(fds[i]);
}

/* ----------------------------------------------------------------- locks */

int mproc__robust_mutex_init(pthread_mutex_t *mu, int type)
{
    pthread_mutexattr_t a;
    int r = pthread_mutexattr_init(&a);
    if (!r)
        r = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (!r)
        r = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (!r)
        r = pthread_mutexattr_settype(&a, type);
    if (!r)
        r = pthread_mutex_init(mu, &a);
    pthread_mutexattr_destroy(&a);
    return r ? mproc__fail(-r, "sync: cannot initialise a robust shared mutex") : 0;
}

int mproc__lock_init(mproc__lock_st *st, bool recursive)
{
    int rc = mproc__robust_mutex_init(&st->mu, recursive ? PTHREAD_MUTEX_RECURSIVE
                                                         : PTHREAD_MUTEX_ERRORCHECK);
    if (rc)
        return rc;
    st->recursive = recursive;
    st->owner = 0;
    st->depth = 0;
    st->magic = MPROC__SYNC_LOCK;
    return 0;
}

int mproc__lock_wrap(mproc_shm *shm, bool own_shm, mproc__lock_st *st, mproc_lock **out)
{
    mproc_lock *l = malloc(sizeof *l);
    if (!l)
        return MPROC_ENOMEM;
    l->shm = shm;
    l->own_shm = own_shm;
    l->st = st;
    *out = l;
    return 0;
}

static int lock_new(mproc_lock **out, bool recursive)
{
    if (!out)
        return mproc__fail(MPROC_EINVAL, "lock_new: out is NULL");
    mproc_shm *shm;
    int rc = mproc_shm_new(&shm, sizeof(mproc__lock_st));
    if (rc)
        return rc;
    mproc__lock_st *st = mproc_shm_buf(shm);
    rc = mproc__lock_init(st, recursive);
    if (!rc)
        rc = mproc__lock_wrap(shm, true, st, out);
    if (rc)
        mproc_shm_close(shm);
    return rc;
}

int mproc_lock_new(mproc_lock **out)
{
    return lock_new(out, false);
}

int mproc_rlock_new(mproc_lock **out)
{
    return lock_new(out, true);
}

/* Map a pthread result of a lock attempt that may have succeeded. */
static int took(mproc__lock_st *st, int r, pid_t me)
{
    int rc = 0;
    if (r == EOWNERDEAD) {
        /* The previous holder died: the mutex is ours; make it usable again and
         * forget the dead owner's levels. */
        pthread_mutex_consistent(&st->mu);
        st->depth = 0;
        rc = MPROC_EOWNERDEAD;
    } else if (r) {
        switch (r) {
        case EBUSY:
        case ETIMEDOUT:
            return MPROC_ETIMEDOUT;
        case EDEADLK:
            return mproc__fail(MPROC_EDEADLK, "lock: already held by this thread (not an RLock)");
        case ENOTRECOVERABLE:
            return mproc__fail(MPROC_ENOTRECOVERABLE, "lock: state not recoverable");
        case EAGAIN:
            return mproc__fail(MPROC_EOVERFLOW, "rlock: too many recursive acquisitions");
        default:
            return mproc__fail(-r, "lock: acquire failed");
        }
    }
    if (atomic_load_explicit(&st->owner, memory_order_relaxed) == me && rc == 0)
        st->depth++; /* a recursive level of an RLock we already hold */
    else {
        atomic_store_explicit(&st->owner, me, memory_order_relaxed);
        st->depth = 1;
    }
    if (rc)
        mproc__fail(rc, "lock: previous owner died holding it; acquired, repair the protected state");
    return rc;
}

static int acquire_st(mproc__lock_st *st, double timeout, pid_t me)
{
    int r;
    if (timeout < 0)
        r = pthread_mutex_lock(&st->mu);
    else if (timeout == 0)
        r = pthread_mutex_trylock(&st->mu);
    else {
        r = pthread_mutex_trylock(&st->mu);
        if (r == EBUSY) {
            struct timespec ts = mproc__deadline_ts(mproc_deadline_after(timeout));
            r = pthread_mutex_clocklock(&st->mu, CLOCK_MONOTONIC, &ts);
        }
    }
    return took(st, r, me);
}

int mproc_lock_acquire(mproc_lock *l, double timeout)
{
    if (!l)
        return mproc__fail(MPROC_EINVAL, "lock_acquire: NULL lock");
    return acquire_st(l->st, timeout, mproc__tid());
}

int mproc_lock_release(mproc_lock *l)
{
    if (!l)
        return mproc__fail(MPROC_EINVAL, "lock_release: NULL lock");
    mproc__lock_st *st = l->st;
    pid_t me = mproc__tid();
    if (atomic_load_explicit(&st->owner, memory_order_relaxed) != me)
        return mproc__fail(MPROC_EPERM, "lock_release: not held by the calling thread");
    uint32_t depth = st->depth;
    if (depth > 1)
        st->depth = depth - 1;
    else {
        st->depth = 0;
        atomic_store_explicit(&st->owner, 0, memory_order_relaxed);
    }
    int r = pthread_mutex_unlock(&st->mu);
    if (r) { /* the mutex says it is not ours (a stale tid): leave the record as it was */
        st->depth = depth;
        atomic_store_explicit(&st->owner, me, memory_order_relaxed);
        return mproc__fail(r == EPERM ? MPROC_EPERM : -r, "lock_release: the mutex refused the unlock");
    }
    return 0;
}

bool mproc_lock_is_recursive(const mproc_lock *l)
{
    return l && l->st->recursive;
}

bool mproc_lock_is_owned(const mproc_lock *l)
{
    return l && atomic_load_explicit(&l->st->owner, memory_order_relaxed) == mproc__tid();
}

int mproc__lock_release_all(mproc_lock *l, uint32_t *depth)
{
    mproc__lock_st *st = l->st;
    if (atomic_load_explicit(&st->owner, memory_order_relaxed) != mproc__tid())
        return MPROC_EPERM;
    uint32_t d = st->depth;
    st->depth = 0;
    atomic_store_explicit(&st->owner, 0, memory_order_relaxed);
    for (uint32_t i = 0; i < d; i++)
        if (pthread_mutex_unlock(&st->mu) != 0) { /* not really ours: undo, refuse */
            st->depth = d - i;
            atomic_store_explicit(&st->owner, mproc__tid(), memory_order_relaxed);
            return MPROC_EPERM;
        }
    *depth = d;
    return 0;
}

int mproc__lock_restore(mproc_lock *l, uint32_t depth)
{
    mproc__lock_st *st = l->st;
    pid_t me = mproc__tid();
    int rc = acquire_st(st, MPROC_FOREVER, me);
    if (rc && rc != MPROC_EOWNERDEAD)
        return rc;
    for (uint32_t i = 1; i < depth; i++) /* recursive levels: cannot block */
        if (pthread_mutex_lock(&st->mu) == 0)
            st->depth++;
    return rc;
}

/* Does a live thread of this process hold the lock? */
static bool held_here(const mproc__lock_st *st)
{
    pid_t owner = atomic_load_explicit(&st->owner, memory_order_relaxed);
    if (owner == 0)
        return false;
    return owner == mproc__tid() || syscall(SYS_tgkill, getpid(), owner, 0) == 0;
}

void mproc__sync_close_shm(mproc_shm *shm, const mproc__lock_st *st)
{
    /* glibc links a held robust mutex into its thread's robust list by address.
     * Unmapped, the kernel could not mark it owner-dead when the thread exits
     * (waiters would hang), and the next robust unlock in that thread would
     * write into the hole. So a held lock's page outlives its handle. */
    if (st && held_here(st))
        mproc__shm_close_keep_mapping(shm);
    else
        mproc_shm_close(shm);
}

void mproc_lock_free(mproc_lock *l)
{
    if (!l)
        return;
    if (l->own_shm)
        mproc__sync_close_shm(l->shm, l->st);
    free(l);
}

static int lock_export(const void *obj, mproc_buf *out, int *fds, size_t *nfds, size_t max_fds)
{
    const mproc_lock *l = obj;
    return mproc__sobj_export(l->shm, l->st, out, fds, nfds, max_fds);
}

static int lock_import(const void *data, size_t len, const int *fds, size_t nfds, void **obj)
{
    mproc_shm *shm;
    void *st;
    int rc = mproc__sobj_import(data, len, fds, nfds, MPROC__SYNC_LOCK, sizeof(mproc__lock_st), &shm,
                                &st, NULL);
    if (rc)
        return rc;
    rc = mproc__lock_wrap(shm, true, st, (mproc_lock **)obj);
    if (rc) {
        mproc_shm_close(shm);
        return rc;
    }
    close_originals(fds, nfds);
    return 0;
}

int mproc__lock_export_nested(const mproc_lock *l, mproc_buf *out, int *fds, size_t *nfds,
                              size_t max_fds)
{
    mproc_buf sub = {0};
    int rc = lock_export(l, &sub, fds, nfds, max_fds);
    if (!rc)
        rc = mproc__put_blob(out, sub.data, sub.len);
    mproc__buf_free(&sub);
    return rc;
}

int mproc__lock_import_nested(mproc_reader *r, const int *fds, size_t nfds, mproc_lock **out)
{
    const uint8_t *sub;
    size_t sublen;
    void *lk = NULL;
    if (mproc__get_blob(r, &sub, &sublen) || nfds < 1)
        return mproc__fail(MPROC_EPROTO, "sync: malformed exported lock");
    int rc = lock_import(sub, sublen, fds, nfds, &lk);
    if (!rc)
        *out = lk;
    return rc;
}

static void lock_release_obj(void *obj)
{
    mproc_lock_free(obj);
}

const mproc_shareable_type mproc_lock_type = {"mproc.lock", lock_export, lock_import,
                                              lock_release_obj};
