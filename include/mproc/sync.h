/* mproc/sync.h — process-shared synchronisation: Lock, RLock, Semaphore,
 * BoundedSemaphore, Condition, Event and Barrier, the counterparts of
 * multiprocessing's. Every object lives in shared memory (a memfd segment of
 * its own), works between any processes it is handed to (fork, spawn and
 * forkserver, through mproc_args_add_object with the matching *_type), takes
 * a timeout on every blocking call, and survives the death of any process:
 * a lock whose owner died is handed to the next acquirer with
 * MPROC_EOWNERDEAD, and a Barrier a waiter died in reports MPROC_EBROKEN.
 *
 * Handles are per process: each one maps the shared state, and every handle
 * to the same object (in any process) sees the same state. Free a handle with
 * its *_free(); the shared state goes away with the last handle anywhere. */
#ifndef MPROC_SYNC_H
#define MPROC_SYNC_H

#include <stdbool.h>
#include <stddef.h>

#include "process.h"

#ifdef __cplusplus
extern "C" {
#endif

#pragma GCC visibility push(default)

/* ------------------------------------------------------------ Lock, RLock */

/* A Lock (non-recursive) or an RLock (recursive): both have this type, so a
 * Condition or a shared Value can use either. Ownership is per thread, as for
 * a pthread mutex: only the thread that acquired a lock may release it. (This
 * is what lets the kernel tell us when an owner dies; Python's Lock lets any
 * thread release it, mproc returns MPROC_EPERM instead.) */
typedef struct mproc_lock mproc_lock;

/* A new unlocked Lock / RLock. Errors: MPROC_ENOMEM, MPROC_EMFILE, -errno. */
int mproc_lock_new(mproc_lock **out);
int mproc_rlock_new(mproc_lock **out);

/* Acquire, waiting at most `timeout` seconds (MPROC_FOREVER blocks, 0 tries once).
 * Returns 0 when acquired; MPROC_EOWNERDEAD when acquired but the previous
 * owner died holding it (the lock is yours and stays usable: repair what it
 * protects, then release as usual); MPROC_ETIMEDOUT when not acquired in time;
 * MPROC_EDEADLK when a plain Lock is already held by the calling thread (it
 * would never be released; an RLock just counts one more level);
 * MPROC_EOVERFLOW when an RLock's level count would overflow. */
int mproc_lock_acquire(mproc_lock *l, double timeout);

/* Release one level. MPROC_EPERM if the calling thread does not hold it. */
int mproc_lock_release(mproc_lock *l);

/* true for an RLock. */
bool mproc_lock_is_recursive(const mproc_lock *l);

/* true if the calling thread holds the lock. */
bool mproc_lock_is_owned(const mproc_lock *l);

/* Free this process's handle (the lock stays valid in other processes). NULL
 * is ok. Release first: if a live thread of this process still holds the
 * lock, the handle is freed but its page stays mapped (glibc's robust list
 * points into it, and the kernel needs it to report that thread's death). */
void mproc_lock_free(mproc_lock *l);

/* Shareable type for mproc_args_add_object (both Lock and RLock). */
extern const mproc_shareable_type mproc_lock_type;

/* --------------------------------------------------- Semaphore, Bounded */

typedef struct mproc_semaphore mproc_semaphore;

/* Largest value a semaphore can hold. */
#define MPROC_SEM_VALUE_MAX 0x7fffffffu

/* A semaphore with initial `value` (<= MPROC_SEM_VALUE_MAX). A bounded one
 * refuses to be released above its initial value. MPROC_EINVAL, MPROC_ENOMEM. */
int mproc_semaphore_new(mproc_semaphore **out, unsigned value);
int mproc_bounded_semaphore_new(mproc_semaphore **out, unsigned value);

/* Decrement, waiting up to `timeout` seconds for the value to be positive.
 * 0 or MPROC_ETIMEDOUT. A semaphore has no owner: a process that dies after
 * acquiring simply never releases (use a Lock where that matters); one killed
 * just as a release woke it leaves that unit for the next acquirer or release
 * to find, as with sem_t. */
int mproc_semaphore_acquire(mproc_semaphore *s, double timeout);

/* Increment and wake one waiter. MPROC_EOVERFLOW (value unchanged) if a bounded
 * semaphore is already at its bound or any one at MPROC_SEM_VALUE_MAX, like
 * Python's "semaphore or lock released too many times". */
int mproc_semaphore_release(mproc_semaphore *s);

/* Current value (a snapshot). */
unsigned mproc_semaphore_value(const mproc_semaphore *s);

void mproc_semaphore_free(mproc_semaphore *s);
extern const mproc_shareable_type mproc_semaphore_type;

/* ------------------------------------------------------------- Condition */

typedef struct mproc_condition mproc_condition;

/* A condition variable over `lock` (a Lock or RLock, borrowed: it must outlive
 * the condition; the child of a spawn/forkserver start gets its own handle),
 * or over a new RLock of its own when `lock` is NULL, as in Python. */
int mproc_condition_new(mproc_condition **out, mproc_lock *lock);

/* The underlying lock (borrowed). acquire/release are shorthands for it. */
mproc_lock *mproc_condition_lock(const mproc_condition *c);
int mproc_condition_acquire(mproc_condition *c, double timeout);
int mproc_condition_release(mproc_condition *c);

/* Release the lock (all levels of an RLock), wait until notified or `timeout`
 * seconds pass, and re-acquire it (restoring the levels) before returning, even
 * on timeout. Returns 0 when notified, MPROC_ETIMEDOUT, MPROC_EOWNERDEAD (notified
 * or not, the lock is held again, and its previous owner died in the
 * meantime: repair the state), or MPROC_EPERM (the caller does not hold the
 * lock; nothing happened). Spurious wakeups do not occur in the absence of
 * process deaths; a process killed while waiting may cost one later waiter a
 * spurious wakeup, so prefer mproc_condition_wait_for. */
int mproc_condition_wait(mproc_condition *c, double timeout);

/* Wait until pred(arg) returns true (it is evaluated with the lock held, first
 * before waiting), at most `timeout` seconds overall. Returns 0 when the
 * predicate is true, MPROC_ETIMEDOUT when it is still false at the deadline,
 * MPROC_EOWNERDEAD as in wait (the predicate was not re-checked: repair, then
 * call again), MPROC_EPERM. The lock is held on return in every case but EPERM. */
typedef bool (*mproc_predicate)(void *arg);
int mproc_condition_wait_for(mproc_condition *c, mproc_predicate pred, void *arg, double timeout);

/* Wake up to `n` waiters / all waiters. The caller must hold the lock (MPROC_EPERM). */
int mproc_condition_notify(mproc_condition *c, unsigned n);
int mproc_condition_notify_all(mproc_condition *c);

void mproc_condition_free(mproc_condition *c);
extern const mproc_shareable_type mproc_condition_type;

/* ----------------------------------------------------------------- Event */

typedef struct mproc_event mproc_event;

/* A new event, initially clear. */
int mproc_event_new(mproc_event **out);
/* Set the flag and wake every waiter; clear it. Never fail. */
void mproc_event_set(mproc_event *e);
void mproc_event_clear(mproc_event *e);
bool mproc_event_is_set(const mproc_event *e);
/* Wait until the flag is set: 0 (also when a set() happened during the wait,
 * even if a clear() followed at once), or MPROC_ETIMEDOUT if still clear after
 * `timeout`. */
int mproc_event_wait(mproc_event *e, double timeout);
void mproc_event_free(mproc_event *e);
extern const mproc_shareable_type mproc_event_type;

/* --------------------------------------------------------------- Barrier */

typedef struct mproc_barrier mproc_barrier;

/* Run by exactly one of the waiters (the last to arrive) before the others are
 * released, in whichever process that is; a nonzero return breaks the
 * barrier. Under spawn/forkserver the function crosses like a process target.
 * It runs with the barrier's internal lock held: it must not call the
 * barrier's own functions (wait returns MPROC_EDEADLK; abort/reset do nothing). */
typedef int (*mproc_barrier_action)(void);

typedef struct mproc_barrier_opts {
    mproc_barrier_action action; /* NULL: none */
    double timeout;              /* used by wait(MPROC_FOREVER); 0 = wait forever */
} mproc_barrier_opts;

/* A barrier for `parties` (>= 1) processes or threads. MPROC_EINVAL, MPROC_ENOMEM. */
int mproc_barrier_new(mproc_barrier **out, unsigned parties, const mproc_barrier_opts *opts);

/* Wait until `parties` callers are waiting, then release them all. On success
 * *index (may be NULL) gets a distinct number in 0..parties-1 (the arrival
 * order). `timeout` MPROC_FOREVER uses the barrier's default timeout (opts.timeout,
 * or forever). Errors, after which the barrier is broken for every waiter:
 * MPROC_ETIMEDOUT (this caller's time ran out; the others get MPROC_EBROKEN);
 * MPROC_EBROKEN (aborted, reset while waiting, the action failed, or a process
 * died while waiting or inside the barrier — noticed within about 0.1 s).
 * A process that dies before it arrives cannot be told from a slow one: use a
 * timeout, or watch the process's sentinel and call mproc_barrier_abort(). */
int mproc_barrier_wait(mproc_barrier *b, double timeout, unsigned *index);

/* Put the barrier in the broken state: current and future waiters get
 * MPROC_EBROKEN until mproc_barrier_reset(). */
void mproc_barrier_abort(mproc_barrier *b);

/* Return to the initial state; current waiters get MPROC_EBROKEN. */
void mproc_barrier_reset(mproc_barrier *b);

unsigned mproc_barrier_parties(const mproc_barrier *b);
unsigned mproc_barrier_n_waiting(const mproc_barrier *b);
bool mproc_barrier_broken(const mproc_barrier *b);
void mproc_barrier_free(mproc_barrier *b);
extern const mproc_shareable_type mproc_barrier_type;

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif
#endif
