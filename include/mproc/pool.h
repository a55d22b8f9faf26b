/* mproc/pool.h — Pool: a fixed set of worker processes that run C task
 * functions, the counterpart of multiprocessing.Pool, with crash-safe workers.
 *
 * A task is a C function that runs in a worker. It takes one input and gives
 * one output, in one of four shapes:
 *   - bytes:   int f(const void *in, size_t len, mproc_buf *out)
 *   - value:   int f(const mproc_value *arg, mproc_value **out)
 *   - star:    int f(mproc_value *const *args, size_t nargs, mproc_value **out)
 *              (starmap: the input is a list, unpacked into args)
 *   - element: int f(const void *in, void *out, const void *arg) over
 *              fixed-size elements of a C array (mproc_pool_map_array: no
 *              per-item serialisation; arg: the call's opts.arg bytes)
 * A task returns 0, or an error: return mproc_task_error("fmt", ...) and the
 * message reaches the caller, who gets MPROC_EREMOTE and the message from
 * mproc_result_error() / mproc_errmsg(). Under spawn and forkserver the
 * function travels as (module build-id, offset), like process targets.
 *
 * Crash safety: each worker's pidfd is watched. When a worker dies (signal,
 * _exit, OOM kill) in the middle of a task, that one item fails with
 * MPROC_EWORKER (or is retried once, with opts.retry_crashed); the other items
 * it held are given to other workers, a replacement worker starts, and every
 * other task completes. No call waits on a dead process.
 *
 * Threads: the pool runs two threads in the creating process (results and
 * sentinels). Callbacks run on the results thread, one at a time: they must
 * not block on the pool (blocking calls made from a callback fail with
 * MPROC_EDEADLK instead of hanging). A pool belongs to the process that made
 * it: in any other process (a fork child) its calls fail with MPROC_ESTATE.
 * Every call may be made from any thread of the owner. */
#ifndef MPROC_POOL_H
#define MPROC_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "process.h"
#include "value.h"

#ifdef __cplusplus
extern "C" {
#endif

#pragma GCC visibility push(default)

typedef struct mproc_pool mproc_pool;
typedef struct mproc_result mproc_result;
typedef struct mproc_imap mproc_imap;

/* ------------------------------------------------------------ task functions */

/* Bytes task: read in[0..len), append the output to `out` (mproc_buf_append;
 * the worker owns the buffer). 0, or an error code (see mproc_task_error). */
typedef int (*mproc_bytes_fn)(const void *in, size_t len, mproc_buf *out);
/* Value task: `arg` is borrowed; store a new value in *out (NULL means nil). */
typedef int (*mproc_value_fn)(const mproc_value *arg, mproc_value **out);
/* Star task (starmap): the input list's items, borrowed. */
typedef int (*mproc_star_fn)(mproc_value *const *args, size_t nargs, mproc_value **out);
/* Element task (map_array): read one input element, write one output element.
 * `arg` points to the worker's copy of the call's opts.arg bytes (NULL if none). */
typedef int (*mproc_elem_fn)(const void *in, void *out, const void *arg);

typedef enum mproc_task_kind {
    MPROC_TASK_BYTES = 1,
    MPROC_TASK_VALUE = 2,
    MPROC_TASK_STAR = 3,
} mproc_task_kind;

/* A task function with its shape. Build one with mproc_task_bytes(f),
 * mproc_task_value(f) or mproc_task_star(f). */
typedef struct mproc_task {
    mproc_task_kind kind;
    union {
        mproc_bytes_fn bytes;
        mproc_value_fn value;
        mproc_star_fn star;
    } fn;
} mproc_task;

static inline mproc_task mproc_task_bytes(mproc_bytes_fn f)
{
    mproc_task t;
    t.kind = MPROC_TASK_BYTES;
    t.fn.bytes = f;
    return t;
}
static inline mproc_task mproc_task_value(mproc_value_fn f)
{
    mproc_task t;
    t.kind = MPROC_TASK_VALUE;
    t.fn.value = f;
    return t;
}
static inline mproc_task mproc_task_star(mproc_star_fn f)
{
    mproc_task t;
    t.kind = MPROC_TASK_STAR;
    t.fn.star = f;
    return t;
}

/* Inside a task: record a message for the caller and return MPROC_EREMOTE,
 * as in `return mproc_task_error("bad input %d", x);`. The message is cut at
 * 1 KiB. A task that returns an error without calling it reports the code's
 * name and text. Outside a worker it only returns MPROC_EREMOTE. */
int mproc_task_error(const char *fmt, ...) MPROC_PRINTF(1, 2);

/* -------------------------------------------------------------------- pool */

typedef struct mproc_pool_opts {
    int processes;              /* workers; 0 = mproc_cpu_count() */
    /* Run in each worker before its first task (Python's initializer). A
     * non-zero return fails mproc_pool_new with MPROC_EREMOTE (Python would
     * restart the worker forever); in a replacement worker it makes the pool
     * broken: its waiting tasks fail with MPROC_EWORKER. NULL = none. */
    mproc_target_fn initializer;
    const mproc_args *initargs; /* copied by mproc_pool_new; objects stay borrowed */
    /* A worker exits after this many tasks (chunks) and is replaced; 0 = never. */
    unsigned maxtasksperchild;
    const mproc_context *ctx;   /* start method of the workers; NULL = default */
    /* Give an item whose worker died while running it one more run on another
     * worker (it fails with MPROC_EWORKER only if that one dies too). */
    bool retry_crashed;
    /* Bound on starting each worker (see mproc_process_opts.start_timeout) and
     * on mproc_pool_new waiting for the initializers; 0 = 60 s, negative = no
     * bound. */
    double start_timeout;
    /* Virtual size of the shared arena that carries map_array data and large
     * inputs; 0 = 16 GiB (memory is used only as it is touched). At least
     * 1 MiB plus 64 bytes per worker, else mproc_pool_new gives MPROC_EINVAL. */
    size_t arena_size;
    /* Decoder limits for values coming back from workers; zero = defaults. */
    mproc_decode_limits limits;
} mproc_pool_opts;

/* Start a pool and wait until every worker has run its initializer. opts may
 * be NULL. Errors: MPROC_EINVAL (bad opts), MPROC_EREMOTE (an initializer
 * failed; mproc_errmsg() says why), the start errors of mproc_process_start,
 * MPROC_ETIMEDOUT, MPROC_ENOMEM. *out gets the pool; release it with
 * mproc_pool_free(). */
int mproc_pool_new(mproc_pool **out, const mproc_pool_opts *opts);

/* Per-call options; NULL or zero fields mean defaults. */
typedef struct mproc_call_opts {
    /* Items per task sent to a worker. 0 = map, map_async, starmap:
     * ceil(n / (4 * processes)) as Python; map_array: ceil(n / (2 *
     * processes)); imap and imap_unordered: 1. */
    size_t chunksize;
    /* On success, with the result (borrowed: the list for map calls, NULL for
     * map_array). Runs on the pool's results thread before the result turns
     * ready. on_success and on_error are not used by imap calls (the iterator
     * gives each outcome); after a sync call returned, none runs. */
    void (*on_success)(const mproc_value *result, void *ud);
    /* On failure, with the code and message (borrowed), instead of on_success. */
    void (*on_error)(int err, const char *message, void *ud);
    /* Map-style calls: after each finished chunk, items done so far and total. */
    void (*on_progress)(size_t done, size_t total, void *ud);
    void *ud;
    /* map_array: bytes copied to the workers with the call and passed to each
     * element call as `arg` (parameters that work under every start method). */
    const void *arg;
    size_t arg_len;
} mproc_call_opts;

/* apply: run task(arg) in a worker and wait up to `timeout` for it. On 0,
 * *out is a new value (for bytes tasks, a bytes value); free it. arg is
 * borrowed and encoded before the call returns; a bytes task needs a bytes or
 * str arg, a star task a list. Errors: MPROC_EREMOTE (the task failed;
 * mproc_errmsg() has its message), MPROC_EWORKER (its worker died),
 * MPROC_ETIMEDOUT (the task runs on; its result is dropped), MPROC_ECANCELED
 * (the pool was terminated), MPROC_ESTATE (pool closed or not ours),
 * MPROC_EDEADLK (called from a callback), MPROC_EINVAL. */
int mproc_pool_apply(mproc_pool *pool, mproc_task task, const mproc_value *arg, mproc_value **out,
                     double timeout);

/* apply for a bytes task on a raw buffer: *out is a malloc'd copy of the
 * output (never NULL on success), *out_len its length. Errors as apply. */
int mproc_pool_apply_bytes(mproc_pool *pool, mproc_bytes_fn fn, const void *in, size_t len,
                           void **out, size_t *out_len, double timeout);

/* apply_async: submit and return at once. *r gets the result object (free it
 * with mproc_result_free; the task runs on regardless). Errors: MPROC_ESTATE,
 * MPROC_EINVAL, MPROC_ENOMEM, encoder errors. */
int mproc_pool_apply_async(mproc_pool *pool, mproc_task task, const mproc_value *arg,
                           const mproc_call_opts *o, mproc_result **r);

/* map: task over every item of the list `items`, in chunks, waiting up to
 * `timeout`. On 0, *out is a new list of the outputs in input order. The
 * first failure (by completion) ends the call with its code: chunks already
 * given to workers finish (their results dropped), the others are not run
 * (Python runs them all). Errors as apply. */
int mproc_pool_map(mproc_pool *pool, mproc_task task, const mproc_value *items,
                   const mproc_call_opts *o, mproc_value **out, double timeout);

/* map_async: as map, returning a result object whose value is the list. */
int mproc_pool_map_async(mproc_pool *pool, mproc_task task, const mproc_value *items,
                         const mproc_call_opts *o, mproc_result **r);

/* starmap / starmap_async: map of a star task; each item must be a list. */
int mproc_pool_starmap(mproc_pool *pool, mproc_star_fn fn, const mproc_value *items,
                       const mproc_call_opts *o, mproc_value **out, double timeout);
int mproc_pool_starmap_async(mproc_pool *pool, mproc_star_fn fn, const mproc_value *items,
                             const mproc_call_opts *o, mproc_result **r);

/* imap / imap_unordered: an iterator over the outputs, in input order or in
 * completion order. Items are encoded before the call returns. *it gets the
 * iterator; free it with mproc_imap_free (the remaining tasks run on). */
int mproc_pool_imap(mproc_pool *pool, mproc_task task, const mproc_value *items,
                    const mproc_call_opts *o, mproc_imap **it);
int mproc_pool_imap_unordered(mproc_pool *pool, mproc_task task, const mproc_value *items,
                              const mproc_call_opts *o, mproc_imap **it);

/* The next output, waiting up to `timeout`. On 0, *out is a new value and
 * *index (may be NULL) the input position it belongs to. A failed item gives
 * its code (MPROC_EREMOTE, MPROC_EWORKER, MPROC_ECANCELED) with *index set and
 * the message in mproc_imap_error() / mproc_errmsg(); the iteration goes on
 * after it. MPROC_ECLOSED once every item was returned; MPROC_ETIMEDOUT. */
int mproc_imap_next(mproc_imap *it, mproc_value **out, size_t *index, double timeout);

/* The message of the last failed item next() returned, or NULL. Owned by it. */
const char *mproc_imap_error(const mproc_imap *it);

/* Number of items. */
size_t mproc_imap_length(const mproc_imap *it);

/* Release an iterator. NULL is ok. */
void mproc_imap_free(mproc_imap *it);

/* map_array: out[i] = fn(in[i]) for n elements of in_size bytes into elements
 * of out_size bytes, waiting up to `timeout`. The data moves through the
 * pool's shared arena: one copy in, one copy out, no per-item encoding, and
 * no copy at all for arrays from mproc_pool_shared_alloc (used in place). out
 * is written only when every element succeeded, except an out in the arena,
 * which is written in place. in and out may be the same array when in_size ==
 * out_size. Errors as map, plus MPROC_ENOMEM when the
 * arena has no room (opts.arena_size). */
int mproc_pool_map_array(mproc_pool *pool, mproc_elem_fn fn, const void *in, size_t in_size,
                         void *out, size_t out_size, size_t n, const mproc_call_opts *o,
                         double timeout);

/* map_array_async: as map_array; `in` is copied before the call returns
 * (unless it is in the arena: then keep it intact until ready), `out` must
 * stay valid until the result is ready (or the pool freed). The result's
 * value is NULL. */
int mproc_pool_map_array_async(mproc_pool *pool, mproc_elem_fn fn, const void *in,
                               size_t in_size, void *out, size_t out_size, size_t n,
                               const mproc_call_opts *o, mproc_result **r);

/* Shared memory for map_array: `size` bytes in the pool's arena (64-byte
 * aligned), mapped in the workers too. Arrays placed here are used in place
 * by map_array, with no copy in or out (in and out alike). NULL when the
 * arena has no room (mproc_errmsg() says so) or the pool is not ours. The
 * block lives until mproc_pool_shared_free or the pool's end; do not free it
 * while a call uses it. */
void *mproc_pool_shared_alloc(mproc_pool *pool, size_t size);
/* Give a block back. NULL is ok; a pointer that is not a block is ignored. */
void mproc_pool_shared_free(mproc_pool *pool, void *ptr);

/* close: accept no more calls; the workers finish what was submitted, then
 * exit. terminate: stop now: SIGTERM to every worker (SIGKILL after 1 s);
 * every unfinished call fails with MPROC_ECANCELED (Python's would never turn
 * ready). Both are idempotent; 0 or MPROC_ESTATE (not the owner). */
int mproc_pool_close(mproc_pool *pool);
int mproc_pool_terminate(mproc_pool *pool);

/* Wait up to `timeout` for every worker to have exited after close or
 * terminate. 0, MPROC_ETIMEDOUT, MPROC_ESTATE (neither was called),
 * MPROC_EDEADLK (called from a callback). */
int mproc_pool_join(mproc_pool *pool, double timeout);

/* terminate (unless closed and joined), join, and free everything. Result and
 * iterator objects stay valid (unfinished ones failed with MPROC_ECANCELED).
 * NULL is ok. Not from a callback. */
void mproc_pool_free(mproc_pool *pool);

/* The number of workers. */
int mproc_pool_processes(const mproc_pool *pool);

typedef struct mproc_pool_stats {
    uint64_t workers_started;  /* including the first ones */
    uint64_t workers_died;     /* ended while tasks were theirs, or by a signal */
    uint64_t workers_recycled; /* ended after maxtasksperchild */
    uint64_t items_retried;    /* re-run after their worker died while running them */
    uint64_t items_failed;     /* ended with an error */
    uint64_t items_done;       /* ended (with a result or an error) */
} mproc_pool_stats;

/* A snapshot of counters. */
void mproc_pool_stats_get(mproc_pool *pool, mproc_pool_stats *st);

/* The pids of the live workers: fills pids[0..min(n, processes)), returns how
 * many were written. For monitoring (and tests that kill workers). */
size_t mproc_pool_worker_pids(mproc_pool *pool, pid_t *pids, size_t n);

/* ------------------------------------------------------------------ results */

/* Wait up to `timeout` for the result, then give it: on 0, *out (may be NULL)
 * is borrowed, valid until mproc_result_free (NULL for map_array). The call's
 * error otherwise (MPROC_EREMOTE, MPROC_EWORKER, MPROC_ECANCELED), or
 * MPROC_ETIMEDOUT while not ready, or MPROC_EDEADLK from a callback.
 * mproc_errmsg() and mproc_result_error() have the message. */
int mproc_result_get(mproc_result *r, const mproc_value **out, double timeout);

/* As get, but *out takes ownership of the value (later gets give NULL). */
int mproc_result_take(mproc_result *r, mproc_value **out, double timeout);

/* Wait up to `timeout` for the result to be ready: 0 or MPROC_ETIMEDOUT. */
int mproc_result_wait(mproc_result *r, double timeout);

/* true once ready (succeeded or failed). */
bool mproc_result_ready(mproc_result *r);

/* 1 if it succeeded, 0 if it failed, MPROC_ESTATE while not ready (Python
 * raises ValueError). */
int mproc_result_successful(mproc_result *r);

/* The failure's message (owned by r), or NULL (not ready or successful). */
const char *mproc_result_error(mproc_result *r);

/* Release the result object. It may be unfinished: the call runs on and its
 * callbacks still fire. NULL is ok. */
void mproc_result_free(mproc_result *r);

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif

#endif
