/* syncobjs.c — the manager's blocking types (Queue, JoinableQueue, Lock, RLock,
 * Semaphore, BoundedSemaphore, Condition, Event, Barrier), served with the
 * server-wide sync mutex held, so they wait on each other through mgr_sync_wait. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "mgr_int.h"

/* ------------------------------------------------------------ helpers */

static int no_method(mgr_call *c, const mgr_obj *o, const char *method)
{
    return mgr_fail(c, MPROC_ENOSYS, "AttributeError: '%s' object has no attribute '%s'",
                    o->type->typeid, method);
}

static void free_impl(mgr_obj *o)
{
    free(o->impl);
    o->impl = NULL;
}

static bool is_never(mproc_deadline d)
{
    return d.ns == INT64_MAX;
}

/* Results that report whether a wait succeeded are allocated before the
 * state changes, so running out of memory never leaves a lock taken (or an
 * item removed) behind the caller's back; the outcome is filled in after. */
static int new_bool(mproc_value **out)
{
    *out = mproc_value_bool(false);
    return *out ? 0 : MPROC_ENOMEM;
}

static int ret_bool(mproc_value **result, bool b)
{
    *result = mproc_value_bool(b);
    return *result ? 0 : MPROC_ENOMEM;
}

static int ret_int(mproc_value **result, int64_t i)
{
    *result = mproc_value_int(i);
    return *result ? 0 : MPROC_ENOMEM;
}

/* Item i is present and not nil (optional arguments that default otherwise). */
static bool arg_given(const mproc_value *args, size_t i)
{
    const mproc_value *v = mproc_value_at(args, i);
    return v && mproc_value_type(v) != MPROC_V_NIL;
}

/* ------------------------------------------------------------ Queue, JoinableQueue */

/* A ring of values; each holds the references it names (mgr_refs_hold). */
typedef struct queue {
    mproc_value **buf;
    size_t cap, head, len;
    size_t maxsize;      /* 0 = unbounded */
    uint64_t unfinished; /* JoinableQueue: puts not yet matched by task_done */
    bool joinable;
} queue;

static bool q_full(const queue *q)
{
    return q->maxsize > 0 && q->len >= q->maxsize;
}

static int q_reserve(queue *q)
{
    if (q->len < q->cap)
        return 0;
    size_t ncap = q->cap ? q->cap * 2 : 8;
    if (ncap < q->cap || ncap > SIZE_MAX / sizeof *q->buf)
        return MPROC_ENOMEM;
    mproc_value **nb = malloc(ncap * sizeof *nb);
    if (!nb)
        return MPROC_ENOMEM;
    for (size_t i = 0; i < q->len; i++)
        nb[i] = q->buf[(q->head + i) % q->cap];
    free(q->buf);
    q->buf = nb;
    q->cap = ncap;
    q->head = 0;
    return 0;
}

static void q_push(queue *q, mproc_value *v)
{
    assert(q->len < q->cap);
    q->buf[(q->head + q->len) % q->cap] = v;
    q->len++;
}

static mproc_value *q_pop(queue *q)
{
    assert(q->len > 0);
    mproc_value *v = q->buf[q->head];
    q->buf[q->head] = NULL;
    q->head = (q->head + 1) % q->cap;
    q->len--;
    return v;
}

static int q_create_common(mgr_obj *o, mproc_value *args, mgr_call *c, bool joinable)
{
    int rc = mgr_args_count(c, o->type->typeid, args, 0, 1);
    if (rc)
        return rc;
    int64_t maxsize = 0;
    if (arg_given(args, 0) && (rc = mgr_arg_int(c, args, 0, &maxsize)))
        return rc;
    queue *q = calloc(1, sizeof *q);
    if (!q)
        return MPROC_ENOMEM;
    q->maxsize = maxsize > 0 ? (size_t)maxsize : 0; /* <= 0 is unbounded, as queue.Queue */
    q->joinable = joinable;
    o->impl = q;
    return 0;
}

static int q_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    return q_create_common(o, args, c, false);
}

static int jq_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    return q_create_common(o, args, c, true);
}

static void q_destroy(mgr_obj *o)
{
    queue *q = o->impl;
    if (!q)
        return;
    while (q->len > 0) {
        mproc_value *v = q_pop(q);
        mgr_refs_release(o->srv, v);
        mproc_value_free(v);
    }
    free(q->buf);
    free(q);
    o->impl = NULL;
}

static int q_put(mgr_obj *o, queue *q, mproc_value *args, mgr_call *c)
{
    mproc_deadline d;
    int rc = mgr_args_count(c, "put", args, 1, 2);
    if (rc || (rc = mgr_arg_timeout(c, args, 1, &d)))
        return rc;
    /* Take the value and its references first: a bad reference fails at
     * once instead of after a wait. */
    mproc_value *v = mgr_arg_take(args, 0);
    if (!v)
        return MPROC_ENOMEM;
    if ((rc = mgr_refs_hold(c, v))) {
        mproc_value_free(v);
        return rc;
    }
    while (q_full(q)) {
        rc = mgr_sync_wait(c, d);
        if (rc == MPROC_ETIMEDOUT)
            rc = mgr_fail(c, MPROC_EFULL, "Full");
        if (rc)
            goto fail;
    }
    if ((rc = q_reserve(q)))
        goto fail;
    q_push(q, v);
    if (q->joinable)
        q->unfinished++;
    /* The broadcast wakes every waiter of the server: only when a get can
     * be asleep (one woken earlier re-checks the state anyway). */
    if (q->len == 1)
        mgr_sync_broadcast(o->srv);
    return 0;
fail:
    mgr_refs_release(o->srv, v);
    mproc_value_free(v);
    return rc;
}

static int q_get(mgr_obj *o, queue *q, mproc_value *args, mproc_value **result, mgr_call *c)
{
    mproc_deadline d;
    int rc = mgr_args_count(c, "get", args, 0, 1);
    if (rc || (rc = mgr_arg_timeout(c, args, 0, &d)))
        return rc;
    while (q->len == 0) {
        rc = mgr_sync_wait(c, d);
        if (rc == MPROC_ETIMEDOUT)
            return mgr_fail(c, MPROC_EEMPTY, "Empty");
        if (rc)
            return rc;
    }
    bool was_full = q_full(q);
    mproc_value *v = q_pop(q);
    mgr_refs_handover(c, v);
    if (was_full)
        mgr_sync_broadcast(o->srv); /* room for a blocked put */
    *result = v;
    return 0;
}

static int q_task_done(mgr_obj *o, queue *q, mproc_value *args, mgr_call *c)
{
    int rc = mgr_args_count(c, "task_done", args, 0, 0);
    if (rc)
        return rc;
    if (q->unfinished == 0)
        return mgr_fail(c, MPROC_EOVERFLOW, "ValueError: task_done() called too many times");
    if (--q->unfinished == 0)
        mgr_sync_broadcast(o->srv);
    return 0;
}

static int q_join(queue *q, mproc_value *args, mgr_call *c)
{
    mproc_deadline d;
    int rc = mgr_args_count(c, "join", args, 0, 1);
    if (rc || (rc = mgr_arg_timeout(c, args, 0, &d)))
        return rc;
    while (q->unfinished > 0) {
        rc = mgr_sync_wait(c, d);
        if (rc == MPROC_ETIMEDOUT)
            return mgr_fail(c, MPROC_ETIMEDOUT, "TimeoutError: join() timed out");
        if (rc)
            return rc;
    }
    return 0;
}

static int q_call(mgr_obj *o, const char *method, mproc_value *args, mproc_value **result,
                  mgr_call *c)
{
    queue *q = o->impl;
    int rc;
    if (!strcmp(method, "put"))
        return q_put(o, q, args, c);
    if (!strcmp(method, "get"))
        return q_get(o, q, args, result, c);
    if (q->joinable && !strcmp(method, "task_done"))
        return q_task_done(o, q, args, c);
    if (q->joinable && !strcmp(method, "join"))
        return q_join(q, args, c);
    if (!strcmp(method, "qsize")) {
        if ((rc = mgr_args_count(c, method, args, 0, 0)))
            return rc;
        return ret_int(result, (int64_t)q->len);
    }
    if (!strcmp(method, "empty")) {
        if ((rc = mgr_args_count(c, method, args, 0, 0)))
            return rc;
        return ret_bool(result, q->len == 0);
    }
    if (!strcmp(method, "full")) {
        if ((rc = mgr_args_count(c, method, args, 0, 0)))
            return rc;
        return ret_bool(result, q_full(q));
    }
    return no_method(c, o, method);
}

/* ------------------------------------------------------------ Lock, RLock */

/* The state of a Lock or RLock, shared by the Lock/RLock objects and the
 * Condition (its own RLock, or the impl of the Lock object it refers to). */
typedef struct lock_core {
    bool recursive;
    uint64_t count;   /* 0 = free; RLock: recursion depth */
    uint64_t session; /* owner, valid while count > 0 */
    uint32_t tid;
} lock_core;

static bool lk_mine(const lock_core *lk, const mgr_call *c)
{
    return lk->count > 0 && lk->session == c->session && lk->tid == c->tid;
}

static void lk_take(lock_core *lk, const mgr_call *c, uint64_t count)
{
    assert(lk->count == 0);
    lk->count = count;
    lk->session = c->session;
    lk->tid = c->tid;
}

/* *got: true when acquired, false on timeout. Errors: MPROC_EDEADLK (a Lock
 * this caller holds, no timeout), MPROC_ECLOSED. */
static int lk_acquire(lock_core *lk, mgr_call *c, mproc_deadline d, bool *got)
{
    *got = false;
    if (lk_mine(lk, c)) {
        if (lk->recursive) {
            lk->count++;
            *got = true;
            return 0;
        }
        /* Python would hang this thread forever; a remote hang is worse
         * (it pins a server thread), so say so instead. */
        if (is_never(d))
            return mgr_fail(c, MPROC_EDEADLK,
                            "RuntimeError: deadlock: acquire() without a timeout of a Lock this "
                            "thread already holds");
    }
    while (lk->count > 0) {
        int rc = mgr_sync_wait(c, d);
        if (rc == MPROC_ETIMEDOUT)
            return 0;
        if (rc)
            return rc;
    }
    lk_take(lk, c, 1);
    *got = true;
    return 0;
}

/* Lock: any caller may release a held Lock (as threading.Lock); RLock: only
 * its owner, one level. */
static int lk_release(lock_core *lk, mgr_call *c, mgr_server *srv)
{
    if (lk->recursive) {
        if (!lk_mine(lk, c))
            return mgr_fail(c, MPROC_EPERM, "RuntimeError: cannot release un-acquired lock");
        if (--lk->count > 0)
            return 0;
    } else {
        if (lk->count == 0)
            return mgr_fail(c, MPROC_EPERM, "RuntimeError: release unlocked lock");
        lk->count = 0;
    }
    lk->session = 0;
    lk->tid = 0;
    mgr_sync_broadcast(srv);
    return 0;
}

static void lk_session_end(lock_core *lk, uint64_t session, mgr_server *srv)
{
    if (lk->count > 0 && lk->session == session) {
        lk->count = 0;
        lk->session = 0;
        lk->tid = 0;
        mgr_sync_broadcast(srv);
    }
}

/* acquire [timeout] -> bool. */
static int lk_call_acquire(lock_core *lk, mproc_value *args, mproc_value **result, mgr_call *c)
{
    mproc_deadline d;
    mproc_value *r;
    bool got;
    int rc = mgr_args_count(c, "acquire", args, 0, 1);
    if (rc || (rc = mgr_arg_timeout(c, args, 0, &d)) || (rc = new_bool(&r)))
        return rc;
    if ((rc = lk_acquire(lk, c, d, &got))) {
        mproc_value_free(r);
        return rc;
    }
    r->u.b = got;
    *result = r;
    return 0;
}

static int lk_call_release(lock_core *lk, mproc_value *args, mgr_call *c, mgr_server *srv)
{
    int rc = mgr_args_count(c, "release", args, 0, 0);
    return rc ? rc : lk_release(lk, c, srv);
}

static int lk_create_common(mgr_obj *o, mproc_value *args, mgr_call *c, bool recursive)
{
    int rc = mgr_args_count(c, o->type->typeid, args, 0, 0);
    if (rc)
        return rc;
    lock_core *lk = calloc(1, sizeof *lk);
    if (!lk)
        return MPROC_ENOMEM;
    lk->recursive = recursive;
    o->impl = lk;
    return 0;
}

static int lock_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    return lk_create_common(o, args, c, false);
}

static int rlock_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    return lk_create_common(o, args, c, true);
}

static int lock_call(mgr_obj *o, const char *method, mproc_value *args, mproc_value **result,
                     mgr_call *c)
{
    lock_core *lk = o->impl;
    if (!strcmp(method, "acquire"))
        return lk_call_acquire(lk, args, result, c);
    if (!strcmp(method, "release"))
        return lk_call_release(lk, args, c, o->srv);
    return no_method(c, o, method);
}

static void lock_session_end(mgr_obj *o, uint64_t session)
{
    if (o->impl)
        lk_session_end(o->impl, session, o->srv);
}

/* ------------------------------------------------------------ Semaphore, BoundedSemaphore */

typedef struct semaphore {
    int64_t value, initial;
    bool bounded;
} semaphore;

static int sem_create_common(mgr_obj *o, mproc_value *args, mgr_call *c, bool bounded)
{
    int64_t value = 1;
    int rc = mgr_args_count(c, o->type->typeid, args, 0, 1);
    if (rc)
        return rc;
    if (arg_given(args, 0) && (rc = mgr_arg_int(c, args, 0, &value)))
        return rc;
    if (value < 0)
        return mgr_fail(c, MPROC_EINVAL, "ValueError: semaphore initial value must be >= 0");
    semaphore *s = calloc(1, sizeof *s);
    if (!s)
        return MPROC_ENOMEM;
    s->value = s->initial = value;
    s->bounded = bounded;
    o->impl = s;
    return 0;
}

static int sem_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    return sem_create_common(o, args, c, false);
}

static int bsem_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    return sem_create_common(o, args, c, true);
}

static int sem_acquire(semaphore *s, mproc_value *args, mproc_value **result, mgr_call *c)
{
    mproc_deadline d;
    mproc_value *r;
    int rc = mgr_args_count(c, "acquire", args, 0, 1);
    if (rc || (rc = mgr_arg_timeout(c, args, 0, &d)) || (rc = new_bool(&r)))
        return rc;
    while (s->value == 0) {
        rc = mgr_sync_wait(c, d);
        if (rc == MPROC_ETIMEDOUT) {
            *result = r; /* false */
            return 0;
        }
        if (rc) {
            mproc_value_free(r);
            return rc;
        }
    }
    s->value--;
    r->u.b = true;
    *result = r;
    return 0;
}

static int sem_release(mgr_obj *o, semaphore *s, mproc_value *args, mgr_call *c)
{
    int rc = mgr_args_count(c, "release", args, 0, 0);
    if (rc)
        return rc;
    if ((s->bounded && s->value >= s->initial) || s->value == INT64_MAX)
        return mgr_fail(c, MPROC_EOVERFLOW, "ValueError: Semaphore released too many times");
    if (s->value++ == 0)
        mgr_sync_broadcast(o->srv);
    return 0;
}

static int sem_call(mgr_obj *o, const char *method, mproc_value *args, mproc_value **result,
                    mgr_call *c)
{
    semaphore *s = o->impl;
    int rc;
    if (!strcmp(method, "acquire"))
        return sem_acquire(s, args, result, c);
    if (!strcmp(method, "release"))
        return sem_release(o, s, args, c);
    if (!strcmp(method, "get_value")) {
        if ((rc = mgr_args_count(c, method, args, 0, 0)))
            return rc;
        return ret_int(result, s->value);
    }
    return no_method(c, o, method);
}

/* ------------------------------------------------------------ Condition */

/* A waiter lives on the stack of the wait() call that blocks; every access
 * happens under the sync mutex, and the object outlives its running calls. */
typedef struct cond_waiter {
    struct cond_waiter *prev, *next;
    bool notified;
} cond_waiter;

typedef struct condition {
    lock_core *lk;     /* &own, or the impl of lock_obj */
    lock_core own;     /* the RLock made when no lock was given */
    mgr_obj *lock_obj; /* the referenced Lock/RLock (a reference held), or NULL */
    cond_waiter *head, *tail; /* FIFO: notify wakes the oldest */
} condition;

static void cv_link(condition *cv, cond_waiter *w)
{
    w->notified = false;
    w->next = NULL;
    w->prev = cv->tail;
    if (cv->tail)
        cv->tail->next = w;
    else
        cv->head = w;
    cv->tail = w;
}

static void cv_unlink(condition *cv, cond_waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        cv->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        cv->tail = w->prev;
    w->prev = w->next = NULL;
}

static int cv_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    int rc = mgr_args_count(c, "Condition", args, 0, 1);
    if (rc)
        return rc;
    condition *cv = calloc(1, sizeof *cv);
    if (!cv)
        return MPROC_ENOMEM;
    cv->own.recursive = true;
    cv->lk = &cv->own;
    if (arg_given(args, 0)) {
        const mproc_value *ref = mproc_value_at(args, 0);
        const char *tid = mproc_proxy_ref_typeid(ref);
        if (!tid || (strcmp(tid, "Lock") && strcmp(tid, "RLock"))) {
            rc = mgr_fail(c, MPROC_EINVAL,
                          "TypeError: Condition() takes a Lock or RLock reference");
            goto fail;
        }
        mgr_obj *lo = mgr_obj_from_ref(c, ref);
        if (!lo) {
            rc = MPROC_ENOENT; /* message set by mgr_obj_from_ref */
            goto fail;
        }
        if (lo->type != &mgr_t_lock && lo->type != &mgr_t_rlock) {
            mgr_obj_release(o->srv, lo);
            rc = mgr_fail(c, MPROC_EINVAL,
                          "TypeError: Condition() takes a Lock or RLock reference");
            goto fail;
        }
        cv->lock_obj = lo;
        cv->lk = lo->impl;
    }
    o->impl = cv;
    return 0;
fail:
    free(cv);
    return rc;
}

static void cv_destroy(mgr_obj *o)
{
    condition *cv = o->impl;
    if (!cv)
        return;
    assert(!cv->head); /* a waiting call holds a reference */
    if (cv->lock_obj)
        mgr_obj_release(o->srv, cv->lock_obj);
    free(cv);
    o->impl = NULL;
}

static void cv_session_end(mgr_obj *o, uint64_t session)
{
    condition *cv = o->impl;
    /* A referenced lock is an object of its own, released by its own hook. */
    if (cv && cv->lk == &cv->own)
        lk_session_end(&cv->own, session, o->srv);
}

/* wait [timeout] -> bool: release the lock fully, wait for a notify, take
 * the lock back at its former depth (after a timeout too). */
static int cv_wait(mgr_obj *o, condition *cv, mproc_value *args, mproc_value **result,
                   mgr_call *c)
{
    mproc_deadline d;
    mproc_value *r;
    cond_waiter w;
    int rc = mgr_args_count(c, "wait", args, 0, 1);
    if (rc || (rc = mgr_arg_timeout(c, args, 0, &d)))
        return rc;
    if (!lk_mine(cv->lk, c))
        return mgr_fail(c, MPROC_EPERM, "RuntimeError: cannot wait on un-acquired lock");
    if ((rc = new_bool(&r)))
        return rc;

    uint64_t depth = cv->lk->count;
    cv->lk->count = 0;
    cv->lk->session = 0;
    cv->lk->tid = 0;
    cv_link(cv, &w);
    mgr_sync_broadcast(o->srv); /* the lock is free */

    rc = 0;
    while (!w.notified && !rc)
        rc = mgr_sync_wait(c, d);
    if (!w.notified)
        cv_unlink(cv, &w);
    if (rc == MPROC_ECLOSED) {
        /* The caller is gone: leave the lock free rather than take it for
         * nobody (the waiter is already out of the list). A notify spent on
         * us goes to the next waiter instead of being lost. */
        if (w.notified && cv->head) {
            cond_waiter *next = cv->head;
            cv_unlink(cv, next);
            next->notified = true;
            mgr_sync_broadcast(o->srv);
        }
        mproc_value_free(r);
        return rc;
    }
    assert(rc == 0 || rc == MPROC_ETIMEDOUT);

    while (cv->lk->count > 0) {
        rc = mgr_sync_wait(c, mproc_deadline_after(MPROC_FOREVER));
        if (rc) {
            mproc_value_free(r);
            return rc;
        }
    }
    lk_take(cv->lk, c, depth);
    r->u.b = w.notified; /* a notify that raced the timeout was spent on us: true */
    *result = r;
    return 0;
}

static int cv_notify(mgr_obj *o, condition *cv, const char *method, mproc_value *args,
                     mgr_call *c)
{
    int64_t n = INT64_MAX;
    bool all = !strcmp(method, "notify_all");
    int rc = mgr_args_count(c, method, args, 0, all ? 0 : 1);
    if (rc)
        return rc;
    if (!all) {
        n = 1;
        if (arg_given(args, 0) && (rc = mgr_arg_int(c, args, 0, &n)))
            return rc;
        if (n < 0)
            return mgr_fail(c, MPROC_EINVAL, "ValueError: notify() n must be >= 0");
    }
    if (!lk_mine(cv->lk, c))
        return mgr_fail(c, MPROC_EPERM, "RuntimeError: cannot notify on un-acquired lock");
    bool woke = false;
    for (; n > 0 && cv->head; n--) {
        cond_waiter *w = cv->head;
        cv_unlink(cv, w);
        w->notified = true;
        woke = true;
    }
    if (woke)
        mgr_sync_broadcast(o->srv);
    return 0;
}

static int cv_call(mgr_obj *o, const char *method, mproc_value *args, mproc_value **result,
                   mgr_call *c)
{
    condition *cv = o->impl;
    if (!strcmp(method, "acquire"))
        return lk_call_acquire(cv->lk, args, result, c);
    if (!strcmp(method, "release"))
        return lk_call_release(cv->lk, args, c, o->srv);
    if (!strcmp(method, "wait"))
        return cv_wait(o, cv, args, result, c);
    if (!strcmp(method, "notify") || !strcmp(method, "notify_all"))
        return cv_notify(o, cv, method, args, c);
    return no_method(c, o, method);
}

/* ------------------------------------------------------------ Event */

typedef struct event {
    bool flag;
    uint64_t sets; /* set() calls that raised the flag: a set() then clear()
                      still wakes who waited across it, as threading.Event */
} event;

static int ev_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    int rc = mgr_args_count(c, "Event", args, 0, 0);
    if (rc)
        return rc;
    event *e = calloc(1, sizeof *e);
    if (!e)
        return MPROC_ENOMEM;
    o->impl = e;
    return 0;
}

static int ev_wait(event *e, mproc_value *args, mproc_value **result, mgr_call *c)
{
    mproc_deadline d;
    int rc = mgr_args_count(c, "wait", args, 0, 1);
    if (rc || (rc = mgr_arg_timeout(c, args, 0, &d)))
        return rc;
    uint64_t sets = e->sets;
    while (!e->flag && e->sets == sets) {
        rc = mgr_sync_wait(c, d);
        if (rc == MPROC_ETIMEDOUT)
            break;
        if (rc)
            return rc;
    }
    return ret_bool(result, e->flag || e->sets != sets);
}

static int ev_call(mgr_obj *o, const char *method, mproc_value *args, mproc_value **result,
                   mgr_call *c)
{
    event *e = o->impl;
    int rc;
    if (!strcmp(method, "wait"))
        return ev_wait(e, args, result, c);
    if (!strcmp(method, "set") || !strcmp(method, "clear") || !strcmp(method, "is_set")) {
        if ((rc = mgr_args_count(c, method, args, 0, 0)))
            return rc;
        if (method[0] == 'i')
            return ret_bool(result, e->flag);
        bool set = method[0] == 's';
        if (set && !e->flag) {
            e->sets++;
            mgr_sync_broadcast(o->srv);
        }
        e->flag = set;
        return 0;
    }
    return no_method(c, o, method);
}

/* ------------------------------------------------------------ Barrier */

/* Each waiter of the filling round is on the list; the round ends by
 * settling every waiter at once (passed, or broken), so a waiter that wakes
 * late never confuses its round with a later one. */
enum { BW_WAITING = 0, BW_PASSED, BW_BROKEN };

typedef struct bar_waiter {
    struct bar_waiter *next;
    int outcome;
} bar_waiter;

typedef struct barrier {
    int64_t parties;
    double timeout;     /* default for wait(); negative = none */
    int64_t count;      /* arrivals in the filling round */
    bool broken;
    bar_waiter *waiters;
} barrier;

/* The node lives on the waiting call's stack until bar_settle unlinks it. */
static void bar_link(barrier *b, bar_waiter *w)
{
    w->outcome = BW_WAITING;
    w->next = b->waiters;
    b->waiters = w;
}

static void bar_settle(mgr_server *srv, barrier *b, int outcome)
{
    for (bar_waiter *w = b->waiters; w; w = w->next)
        w->outcome = outcome;
    b->waiters = NULL;
    b->count = 0;
    mgr_sync_broadcast(srv);
}

static int bar_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    int64_t parties;
    double timeout = -1;
    int rc = mgr_args_count(c, "Barrier", args, 1, 2);
    if (rc || (rc = mgr_arg_int(c, args, 0, &parties)))
        return rc;
    if (parties <= 0)
        return mgr_fail(c, MPROC_EINVAL, "ValueError: parties must be > 0");
    if (arg_given(args, 1)) {
        const mproc_value *t = mproc_value_at(args, 1);
        mproc_vtype ty = mproc_value_type(t);
        if (ty != MPROC_V_INT && ty != MPROC_V_FLOAT)
            return mgr_fail(c, MPROC_EINVAL, "TypeError: Barrier() timeout must be a number");
        timeout = mproc_value_as_float(t);
    }
    barrier *b = calloc(1, sizeof *b);
    if (!b)
        return MPROC_ENOMEM;
    b->parties = parties;
    b->timeout = timeout;
    o->impl = b;
    return 0;
}

static void bar_destroy(mgr_obj *o)
{
    /* No waiter can be left: a waiting call holds a reference. */
    free_impl(o);
}

static int bar_broken(mgr_call *c)
{
    return mgr_fail(c, MPROC_EBROKEN, "BrokenBarrierError");
}

/* wait [timeout] -> int: the arrival index, 0 for the first arrival up to
 * parties-1 for the one that releases the round (CPython's numbering). */
static int bar_wait(mgr_obj *o, barrier *b, mproc_value *args, mproc_value **result,
                    mgr_call *c)
{
    mproc_deadline d;
    int rc = mgr_args_count(c, "wait", args, 0, 1);
    if (rc)
        return rc;
    if (arg_given(args, 0))
        rc = mgr_arg_timeout(c, args, 0, &d);
    else
        d = mproc_deadline_after(b->timeout);
    if (rc)
        return rc;
    if (b->broken)
        return bar_broken(c);
    mproc_value *r = mproc_value_int(0);
    if (!r)
        return MPROC_ENOMEM;
    r->u.i = b->count++;
    if (b->count == b->parties) {
        bar_settle(o->srv, b, BW_PASSED);
        *result = r;
        return 0;
    }
    bar_waiter w;
    bar_link(b, &w);
    rc = 0;
    while (w.outcome == BW_WAITING && !rc)
        rc = mgr_sync_wait(c, d);
    if (w.outcome == BW_WAITING) {
        /* Timed out or the caller is gone: break the round for everyone
         * (settling takes this waiter off the list too). */
        b->broken = true;
        bar_settle(o->srv, b, BW_BROKEN);
    }
    if (rc == MPROC_ECLOSED || w.outcome != BW_PASSED) {
        mproc_value_free(r);
        return rc == MPROC_ECLOSED ? rc : bar_broken(c);
    }
    *result = r;
    return 0;
}

static int bar_call(mgr_obj *o, const char *method, mproc_value *args, mproc_value **result,
                    mgr_call *c)
{
    barrier *b = o->impl;
    if (!strcmp(method, "wait"))
        return bar_wait(o, b, args, result, c);
    int rc = mgr_args_count(c, method, args, 0, 0);
    if (!strcmp(method, "abort")) {
        if (rc)
            return rc;
        b->broken = true;
        bar_settle(o->srv, b, BW_BROKEN);
        return 0;
    }
    if (!strcmp(method, "reset")) {
        if (rc)
            return rc;
        bar_settle(o->srv, b, BW_BROKEN); /* waiters of the round are broken out */
        b->broken = false;
        return 0;
    }
    if (!strcmp(method, "parties"))
        return rc ? rc : ret_int(result, b->parties);
    if (!strcmp(method, "n_waiting"))
        return rc ? rc : ret_int(result, b->count);
    if (!strcmp(method, "broken"))
        return rc ? rc : ret_bool(result, b->broken);
    return no_method(c, o, method);
}

/* ------------------------------------------------------------ the types */

const mgr_type mgr_t_queue = {"Queue", true, q_create, q_call, q_destroy, NULL, true};
const mgr_type mgr_t_joinable_queue = {"JoinableQueue", true, jq_create, q_call, q_destroy, NULL,
                                       true};
const mgr_type mgr_t_lock = {"Lock", true, lock_create, lock_call, free_impl, lock_session_end,
                             true};
const mgr_type mgr_t_rlock = {"RLock", true, rlock_create, lock_call, free_impl,
                              lock_session_end, true};
const mgr_type mgr_t_semaphore = {"Semaphore", true, sem_create, sem_call, free_impl, NULL, true};
const mgr_type mgr_t_bounded_semaphore = {"BoundedSemaphore", true, bsem_create, sem_call,
                                          free_impl, NULL, true};
const mgr_type mgr_t_condition = {"Condition", true, cv_create, cv_call, cv_destroy,
                                  cv_session_end, false};
const mgr_type mgr_t_event = {"Event", true, ev_create, ev_call, free_impl, NULL, true};
const mgr_type mgr_t_barrier = {"Barrier", true, bar_create, bar_call, bar_destroy, NULL, false};
