/* mproc/futures.h — Executor and futures, the counterpart of
 * concurrent.futures: submit a task, get a future; wait on many.
 *
 * An executor runs tasks (mproc/pool.h task functions) on a backend. The
 * local backend (the default) is a crash-safe process pool: a worker that
 * dies fails only the task it ran (MPROC_EWORKER) and is replaced, where
 * Python's ProcessPoolExecutor breaks the whole pool. Other backends (MPI)
 * plug in through mproc_executor_backend.
 *
 * Futures are reference-counted objects shared by the caller and the
 * executor: the caller releases its reference with mproc_future_free (the
 * task runs on). Done-callbacks run on the backend's thread when the future
 * completes, or at once in the caller if it is already done. A done-callback
 * on the local backend's thread that would block on a future that is not
 * done (result, exception, futures_wait, as_completed_next, executor map
 * next, shutdown with wait) gets MPROC_EDEADLK instead of hanging. */
#ifndef MPROC_FUTURES_H
#define MPROC_FUTURES_H

#include <stdbool.h>
#include <stddef.h>

#include "pool.h"

#ifdef __cplusplus
extern "C" {
#endif

#pragma GCC visibility push(default)

typedef struct mproc_executor mproc_executor;
typedef struct mproc_future mproc_future;
typedef struct mproc_executor_backend mproc_executor_backend;

typedef struct mproc_executor_opts {
    int max_workers;               /* 0 = mproc_cpu_count() */
    mproc_target_fn initializer;   /* as mproc_pool_opts */
    const mproc_args *initargs;
    unsigned max_tasks_per_child;  /* 0 = never recycle */
    const mproc_context *ctx;      /* start method; NULL = default */
    bool retry_crashed;            /* as mproc_pool_opts */
    /* NULL = mproc_executor_local (a process pool on this machine). */
    const mproc_executor_backend *backend;
    /* Backend-specific settings (NULL for the local backend). */
    const void *backend_opts;
} mproc_executor_opts;

/* Start an executor. Errors as mproc_pool_new (for the local backend) and
 * MPROC_EINVAL. Free it with mproc_executor_free. */
int mproc_executor_new(mproc_executor **out, const mproc_executor_opts *opts);

/* Submit task(arg) (arg borrowed, encoded before return). *f gets a new
 * future (free it with mproc_future_free). MPROC_ESTATE after shutdown. */
int mproc_executor_submit(mproc_executor *ex, mproc_task task, const mproc_value *arg,
                          mproc_future **f);

/* map: task over the items of a list, chunksize items per submitted task (0 =
 * 1, as Python). The iterator gives outputs in input order; a failed item
 * gives its error at its position and the others still come (see
 * mproc_imap_next); Python's stops at the first failure. (A task whose normal
 * output is an error value named like an mproc error reads as that error.) */
int mproc_executor_map(mproc_executor *ex, mproc_task task, const mproc_value *items,
                       size_t chunksize, mproc_imap **it);

/* Stop accepting tasks. cancel_futures: cancel every future not yet running.
 * wait: return once every running and pending future is done and the
 * backend has stopped (workers joined). Idempotent. 0 or MPROC_EDEADLK (wait
 * from a done-callback). */
int mproc_executor_shutdown(mproc_executor *ex, bool wait, bool cancel_futures);

/* shutdown(wait = true) and free. Futures stay valid. NULL is ok. */
void mproc_executor_free(mproc_executor *ex);

/* The backend name ("local", "mpi"). */
const char *mproc_executor_backend_name(const mproc_executor *ex);

/* ------------------------------------------------------------------ futures */

/* Wait up to `timeout` for the result: 0 with *out borrowed (valid until
 * mproc_future_free); the task's error (MPROC_EREMOTE, MPROC_EWORKER;
 * mproc_future_error() has the message); MPROC_ECANCELED if cancelled;
 * MPROC_ETIMEDOUT if not done. */
int mproc_future_result(mproc_future *f, const mproc_value **out, double timeout);

/* Wait up to `timeout`, then report the outcome without the value: 0 with
 * *err = 0 on success or the task's error code, *message (may be NULL;
 * borrowed) its message. MPROC_ECANCELED, MPROC_ETIMEDOUT. */
int mproc_future_exception(mproc_future *f, double timeout, int *err, const char **message);

/* The failure message, or NULL. Owned by f. */
const char *mproc_future_error(mproc_future *f);

/* State snapshots. */
bool mproc_future_done(mproc_future *f);      /* finished or cancelled */
bool mproc_future_running(mproc_future *f);   /* given to a worker, not done */
bool mproc_future_cancelled(mproc_future *f);

/* Cancel if it is still pending (not yet given to a worker): true if the
 * future is (now) cancelled; false if running or done. */
bool mproc_future_cancel(mproc_future *f);

/* Call fn(f, ud) when f is done (at once, in this thread, if it is). Callbacks
 * run in the order added. 0 or MPROC_ENOMEM. */
int mproc_future_add_done_callback(mproc_future *f, void (*fn)(mproc_future *f, void *ud),
                                   void *ud);

/* Release the caller's reference. NULL is ok. */
void mproc_future_free(mproc_future *f);

typedef enum mproc_return_when {
    MPROC_ALL_COMPLETED = 0,
    MPROC_FIRST_COMPLETED = 1,
    MPROC_FIRST_EXCEPTION = 2, /* a failed future, or all completed */
} mproc_return_when;

/* Wait up to `timeout` until the condition holds for fs[0..n): 0 when it does,
 * MPROC_ETIMEDOUT otherwise; either way *ndone (may be NULL) gets how many are
 * done (test each with mproc_future_done). The futures are borrowed. */
int mproc_futures_wait(mproc_future *const *fs, size_t n, double timeout, mproc_return_when when,
                       size_t *ndone);

/* as_completed: iterate over futures in the order they finish. */
typedef struct mproc_as_completed mproc_as_completed;

/* Borrowed futures fs[0..n) (they must outlive the iterator). */
int mproc_as_completed_new(mproc_future *const *fs, size_t n, mproc_as_completed **out);
/* The next finished future (borrowed), waiting up to `timeout`: 0,
 * MPROC_ETIMEDOUT, MPROC_ECLOSED when all were returned. Each future comes
 * once (duplicates in fs once). */
int mproc_as_completed_next(mproc_as_completed *ac, mproc_future **f, double timeout);
void mproc_as_completed_free(mproc_as_completed *ac);

/* ------------------------------------------------------------------ backends */

/* A backend runs submitted work and completes futures with the functions below.
 * When `single`, `items` is the one argument (any value, or NULL for nil) and
 * the future's result is task(items); otherwise `items` is a list (a chunk of
 * executor map) and the result is the list of outputs, where an item that
 * failed is an error value (mproc_value_error) whose type is the error's
 * name (mproc_errname(code), e.g. "MPROC_EWORKER") and whose message is its
 * message, so that one failure costs one item. shutdown must be idempotent
 * and thread-safe (every caller with `wait` waits). Every function but start
 * is called with the state start() made. */
struct mproc_executor_backend {
    const char *name;
    int (*start)(void **state, const mproc_executor_opts *opts);
    int (*submit)(void *state, mproc_task task, const mproc_value *items, bool single,
                  mproc_future *f);
    /* Stop: cancel_futures is handled by the executor before this call. With
     * wait, return after all submitted work ended and resources are gone. */
    int (*shutdown)(void *state, bool wait);
    void (*free)(void *state);
};

/* The local process-pool backend. */
extern const mproc_executor_backend mproc_executor_local;

/* true when this mproc was built with the MPI backend: the library
 * libmproc_mpi and its header <mproc/mpi.h> (mproc_executor_mpi). */
bool mproc_have_mpi(void);

/* For backends. set_running: false if the future was cancelled (then do not
 * run it), as Python's set_running_or_notify_cancel. set_result takes the
 * value (may be NULL); set_error copies the message. Completing a done future
 * does nothing (and frees the value). A backend that holds a future across
 * threads takes a reference with mproc_future_ref and drops it with
 * mproc_future_free. */
bool mproc_future_set_running(mproc_future *f);
void mproc_future_set_result(mproc_future *f, mproc_value *v);
void mproc_future_set_error(mproc_future *f, int err, const char *message);
mproc_future *mproc_future_ref(mproc_future *f);

/* For backends: mark the calling thread as the one that completes futures
 * (on = true) or no longer (false). Done-callbacks run there, so a wait from
 * it on a future that is not done fails with MPROC_EDEADLK instead of
 * hanging, as on the local backend's results thread. */
void mproc_executor_backend_thread(bool on);

/* ------------------------------------------- running tasks in other processes */

/* For backends whose tasks run in other processes of the same program (MPI
 * ranks, a remote host running the same binary). A task travels as a
 * reference to its function and its input in wire form; its output comes
 * back in wire form. Wire form: a bytes task's input and output are the
 * bytes themselves; a value or star task's are MessagePack. */

/* Append a reference to task's function to `out`: its kind, then (module
 * build-id, offset, module path), as spawn names functions. Errors:
 * MPROC_EINVAL (no function, unknown kind), MPROC_EBUILDID (the module has
 * no build-id), MPROC_ENOMEM; `out` is unchanged on failure. */
int mproc_task_ref(mproc_task task, mproc_buf *out);

/* Resolve ref[0..len) (made by mproc_task_ref, possibly in another process)
 * into *task. Errors: MPROC_EBUILDID (no loaded module has that build-id:
 * this process runs a different build; mproc_errmsg() names both),
 * MPROC_EPROTO (malformed), MPROC_EINVAL. */
int mproc_task_resolve(const void *ref, size_t len, mproc_task *task);

/* Append the wire form of one input `arg` (borrowed; NULL is nil) of a task
 * of `kind` to `out`. MPROC_EINVAL: a bytes task needs bytes or str, a star
 * task a list. Encoder errors (MPROC_ENOMEM, ...). */
int mproc_task_encode_input(mproc_task_kind kind, const mproc_value *arg, mproc_buf *out);

/* Run `task` on one input in wire form, appending the output's wire form to
 * `out`. 0, or the task's error (MPROC_EREMOTE after mproc_task_error, the
 * code it returned otherwise, or a decoding error of its input) with the
 * message in msg[0..msglen) (NUL-terminated; msg may be NULL); on failure
 * `out` is left as it was. The task's own calls may be anything: this only
 * captures what it reports. */
int mproc_task_run(mproc_task task, const void *in, size_t len, mproc_buf *out, char *msg,
                   size_t msglen);

/* The value of an output in wire form: a new bytes value for a bytes task,
 * else the decoded MessagePack under `limits` (NULL: defaults). *out is
 * yours. Decoder errors, MPROC_ENOMEM, MPROC_EINVAL. */
int mproc_task_decode_output(mproc_task_kind kind, const void *p, size_t n,
                             const mproc_decode_limits *limits, mproc_value **out);

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif

#endif
