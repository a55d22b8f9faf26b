/* pool_int.h — the wire between a pool and its workers, and the hooks the
 * executor (futures.c) uses on pool calls. Private to the pool layer. */
#ifndef MPROC_POOL_INT_H
#define MPROC_POOL_INT_H

#include <stdatomic.h>
#include <stdint.h>

#include "internal.h"
#include "mproc/futures.h"
#include "mproc/pool.h"
#include "mproc/queue.h"

/* Messages on a worker's task queue (parent -> worker). */
#define PM_DEF 'D'  /* u32 fn_id, then a modref: teach the worker a function */
#define PM_UNIT 'U' /* pm_unit, then the items unless UF_ARENA */

/* Messages on the result queue (workers and the parent's threads -> results thread). */
#define PR_RESULT 'R' /* pr_head, then n item records (or the elem outcome) */
#define PR_INIT 'I'   /* pr_head: initializer outcome (code, message) */
#define PR_DEATH 'X'  /* pr_head: the sentinel of worker/gen fired (from the watcher) */
#define PR_WAKE 'W'   /* pr_head: look at the pool state */

enum { UK_BYTES = MPROC_TASK_BYTES, UK_VALUE = MPROC_TASK_VALUE, UK_STAR = MPROC_TASK_STAR, UK_ELEM = 4 };
#define UF_ARENA 1u /* the items are in the arena at [a, a + b) */

/* A unit of work: n items of one call. Items are records {u32 len, bytes}.
 * UK_ELEM: input elements at arena offset a (size c each), outputs at b (size
 * d), the call's arg bytes at e (f bytes; f = 0: none). */
typedef struct pm_unit {
    uint8_t type, kind;
    uint16_t flags;
    uint32_t fn_id;
    uint64_t id;
    uint32_t n, pad;
    uint64_t a, b, c, d, e, f;
} pm_unit;

typedef struct pr_head {
    uint8_t type, pad[3];
    uint32_t worker;
    uint32_t gen;
    int32_t code; /* PR_INIT, and UK_ELEM results: 0 or the error */
    uint64_t id;  /* PR_RESULT: the unit */
    uint32_t n;   /* PR_RESULT: item records that follow; UK_ELEM: the failed item */
    uint32_t len; /* PR_INIT / UK_ELEM: bytes of message that follow */
    uint64_t ns;  /* PR_RESULT: how long the worker ran the unit */
} pr_head;

/* Each item's outcome in a PR_RESULT: code 0 and the output, or the error and
 * its message. */
typedef struct pr_item {
    int32_t code;
    uint32_t len;
} pr_item;

/* Per-worker word pair in the arena's first page(s): what the worker runs
 * now, so that its death can be pinned on one item. */
typedef struct pool_slot {
    _Atomic uint64_t unit; /* 0 = between units */
    _Atomic uint64_t item; /* index inside the unit */
    uint8_t pad[48];
} pool_slot;

#define POOL_MSG_MAX 1024 /* longest error message carried */

/* Around a task call (task.c): mproc_task_error records its message only
 * between begin and end. message: after a failure with rc, the task's own
 * message or one made from rc into buf (ends the call); message_set: whether
 * the task recorded one. */
void pool__task_begin(void);
void pool__task_end(void);
bool pool__task_message_set(void);
const char *pool__task_message(int rc, char *buf, size_t len);

/* The worker's entry point (worker.c); a process target. */
int mproc__pool_worker_main(mproc_args *a);

/* ------------------------------------------------- condition variables */

/* Condition variables on CLOCK_MONOTONIC, like every mproc deadline. */
static inline void pool__cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}

/* Wait on cv until woken or the deadline: false once it has passed (the
 * caller re-checks its predicate after true). */
static inline bool pool__cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, mproc_deadline d)
{
    if (d.ns == INT64_MAX) {
        pthread_cond_wait(cv, mu);
        return true;
    }
    if (mproc_deadline_expired(d))
        return false;
    struct timespec ts = {.tv_sec = (time_t)(d.ns / 1000000000), .tv_nsec = (long)(d.ns % 1000000000)};
    pthread_cond_timedwait(cv, mu, &ts);
    return true;
}

/* ------------------------------------------------------- executor hooks */

/* true on a pool's results thread (where futures' done-callbacks of the local
 * backend run) or a thread a backend marked with mproc_executor_backend_thread:
 * blocking there on a future would deadlock. */
bool mproc__pool_in_results_thread(void);

typedef struct pool_hooks {
    /* Under the pool lock, when the call is first given to a worker: false
     * drops the call unrun (the future was cancelled). */
    bool (*start)(void *ud);
    /* On the results thread once the call is resolved (before it turns
     * ready): the outcome. `value` may be taken (set *value = NULL). */
    void (*done)(void *ud, int err, const char *msg, mproc_value **value);
    /* Release ud (called once, when the call is freed). */
    void (*release)(void *ud);
    void *ud;
} pool_hooks;

/* Submit task over the list `items` (single: items is the one argument, the
 * result is its output) with hooks; the call is not returned (it frees itself). */
int mproc__pool_submit_hooked(mproc_pool *p, mproc_task task, const mproc_value *items, bool single,
                              size_t chunksize, const pool_hooks *h);

/* The iterator: a pool imap call, or an executor map over futures. */
struct mproc_imap {
    struct mproc_result *c; /* pool imap */
    /* executor map: futures of chunks, in order */
    mproc_future **futs;
    size_t nfuts, fut_i, item_in_fut, n, index;
    char *err;
};

#endif
