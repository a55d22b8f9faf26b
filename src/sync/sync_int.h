/* sync_int.h — private pieces shared by the sync primitives: the per-thread
 * kernel tid, futex calls on shared words, the shared-object header every
 * primitive's state starts with, and export/import of (segment, offset). */
#ifndef MPROC_SYNC_INT_H
#define MPROC_SYNC_INT_H

#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "internal.h"
#include "mproc/shm.h"
#include "mproc/sync.h"

/* Magic numbers at the start of each shared state: an import names a type, and
 * the state found at that offset must be of it. */
enum {
    MPROC__SYNC_LOCK = 0x4d504c4bu,    /* "MPLK" */
    MPROC__SYNC_SEM = 0x4d505345u,     /* "MPSE" */
    MPROC__SYNC_COND = 0x4d50434eu,    /* "MPCN" */
    MPROC__SYNC_EVENT = 0x4d504556u,   /* "MPEV" */
    MPROC__SYNC_BARRIER = 0x4d504252u, /* "MPBR" */
    MPROC__SYNC_VALUE = 0x4d505641u,   /* "MPVA" */
    MPROC__SYNC_ARRAY = 0x4d504152u,   /* "MPAR" */
};

/* ------------------------------------------------------------- futexes */

/* Sleep while *w == val, until woken or deadline `d` (absolute, monotonic).
 * 0 on wake/mismatch/EINTR (callers re-check), MPROC_ETIMEDOUT at the deadline. */
int mproc__futex_wait(_Atomic uint32_t *w, uint32_t val, mproc_deadline d);
/* Wake up to n sleepers on w (process-shared). */
void mproc__futex_wake(_Atomic uint32_t *w, int n);

/* --------------------------------------------------------------- locks */

/* The state of a Lock/RLock, also embedded in Conditions and shared Values. */
typedef struct mproc__lock_st {
    uint32_t magic;
    uint32_t recursive;
    _Atomic pid_t owner; /* tid of the holder, 0 when free (written by the holder) */
    uint32_t depth;      /* RLock levels held (holder only) */
    pthread_mutex_t mu;  /* robust, process-shared; errorcheck or recursive */
} mproc__lock_st;

struct mproc_lock {
    mproc_shm *shm; /* mapping the state lives in */
    bool own_shm;   /* false when borrowed from a Value/Condition handle */
    mproc__lock_st *st;
};

/* A robust, process-shared pthread mutex of `type` (0 or a negative code). */
int mproc__robust_mutex_init(pthread_mutex_t *mu, int type);
int mproc__lock_init(mproc__lock_st *st, bool recursive);
/* Close a segment holding lock state `st` (may be NULL): unmapped, unless a
 * live thread of this process holds that lock, in which case the page is
 * deliberately left mapped so its owner's death can still be reported. */
void mproc__sync_close_shm(mproc_shm *shm, const mproc__lock_st *st);
/* A handle on state inside `shm` (owned by the handle if own_shm). */
int mproc__lock_wrap(mproc_shm *shm, bool own_shm, mproc__lock_st *st, mproc_lock **out);
/* Release every level held by the caller, reporting how many; and take them back
 * (0 or MPROC_EOWNERDEAD). Used by Condition.wait. */
/* A borrowed lock inside another object's export: appended as a blob (its fd
 * after the caller's), and read back from `r` with fds[0..nfds) its own
 * descriptors (closed on success, as every import does). */
int mproc__lock_export_nested(const mproc_lock *l, mproc_buf *out, int *fds, size_t *nfds,
                              size_t max_fds);
int mproc__lock_import_nested(mproc_reader *r, const int *fds, size_t nfds, mproc_lock **out);
int mproc__lock_release_all(mproc_lock *l, uint32_t *depth);
int mproc__lock_restore(mproc_lock *l, uint32_t depth);

/* -------------------------------------------- export/import of shared state */

/* Wire form of a sync object: u64 offset of its state in the segment, then the
 * segment as mproc_shm_type exports it (one fd). */
int mproc__sobj_export(mproc_shm *shm, const void *st, mproc_buf *out, int *fds, size_t *nfds,
                       size_t max_fds);
/* Map the segment and find a state of `size` bytes starting with `magic`.
 * On success *shm is a new handle (owned by the caller) and *st points into it. */
int mproc__sobj_import(const void *data, size_t len, const int *fds, size_t nfds, uint32_t magic,
                       size_t size, mproc_shm **shm, void **st, mproc_reader *rest);

/* Convert a deadline to the absolute CLOCK_MONOTONIC timespec pthread wants. */
static inline struct timespec mproc__deadline_ts(mproc_deadline d)
{
    struct timespec ts = {(time_t)(d.ns / 1000000000), (long)(d.ns % 1000000000)};
    return ts;
}

#endif
