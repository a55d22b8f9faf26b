/* futures.c — Executor and Future (concurrent.futures): futures are
 * backend-neutral state machines; the local backend runs them on a Pool.
 * Waiting on many futures (wait, as_completed) goes through waiter objects
 * that completing futures signal, as CPython's do. */
#include <stdlib.h>
#include <string.h>

#include "pool_int.h"

enum { FS_PENDING, FS_RUNNING, FS_DONE, FS_CANCELLED };

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    mproc_future **fifo; /* completed futures, in completion order */
    size_t head, tail, cap;
    size_t nfailed; /* pushed futures that finished with an error */
} waiter;

typedef struct done_cb {
    void (*fn)(mproc_future *f, void *ud);
    void *ud;
} done_cb;

struct mproc_future {
    atomic_int refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state;
    int err;
    char *msg;
    mproc_value *value;
    done_cb *cbs;
    size_t ncbs;
    waiter **waiters;
    size_t nwaiters;
};

/* Set on a backend's completion thread (mproc_executor_backend_thread). */
static __thread bool tl_backend_thread;

void mproc_executor_backend_thread(bool on)
{
    tl_backend_thread = on;
}

/* Where done-callbacks run: a wait there for an unfinished future would deadlock. */
static bool in_callback_thread(void)
{
    return tl_backend_thread || mproc__pool_in_results_thread();
}

bool mproc_have_mpi(void)
{
#ifdef MPROC_HAVE_MPI
    return true;
#else
    return false;
#endif
}

struct mproc_executor {
    const mproc_executor_backend *be;
    void *state;
    pthread_mutex_t mu;
    bool shut;
    mproc_future **futs; /* references to futures that may still need cancelling */
    size_t nfuts, capfuts;
};



/* ----------------------------------------------------------------- futures */

static mproc_future *future_new(void)
{
    mproc_future *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    atomic_init(&f->refs, 1);
    pthread_mutex_init(&f->mu, NULL);
    pool__cond_init_mono(&f->cv);
    return f;
}

mproc_future *mproc_future_ref(mproc_future *f)
{
    if (f)
        atomic_fetch_add(&f->refs, 1);
    return f;
}

void mproc_future_free(mproc_future *f)
{
    if (!f || atomic_fetch_sub(&f->refs, 1) != 1)
        return;
    mproc_value_free(f->value);
    free(f->msg);
    free(f->cbs);
    free(f->waiters);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f);
}

/* Move to a final state and tell everyone; false if it was final already. */
static bool future_finish(mproc_future *f, int state, int err, const char *msg, mproc_value *v,
                          bool only_pending)
{
    pthread_mutex_lock(&f->mu);
    if (f->state >= FS_DONE || (only_pending && f->state != FS_PENDING)) {
        pthread_mutex_unlock(&f->mu);
        mproc_value_free(v);
        return false;
    }
    f->state = state;
    f->err = err;
    f->msg = err && msg ? strdup(msg) : NULL;
    f->value = v;
    pthread_cond_broadcast(&f->cv);
    for (size_t i = 0; i < f->nwaiters; i++) {
        waiter *w = f->waiters[i];
        pthread_mutex_lock(&w->mu);
        if (w->tail < w->cap)
            w->fifo[w->tail++] = f;
        w->nfailed += state == FS_DONE && err != 0;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
    }
    done_cb *cbs = f->cbs;
    size_t n = f->ncbs;
    f->cbs = NULL;
    f->ncbs = 0;
    pthread_mutex_unlock(&f->mu);
    for (size_t i = 0; i < n; i++)
        cbs[i].fn(f, cbs[i].ud);
    free(cbs);
    return true;
}

bool mproc_future_set_running(mproc_future *f)
{
    pthread_mutex_lock(&f->mu);
    bool ok = f->state == FS_PENDING;
    if (ok)
        f->state = FS_RUNNING;
    pthread_mutex_unlock(&f->mu);
    return ok;
}

void mproc_future_set_result(mproc_future *f, mproc_value *v)
{
    future_finish(f, FS_DONE, 0, NULL, v, false);
}

void mproc_future_set_error(mproc_future *f, int err, const char *message)
{
    future_finish(f, err == MPROC_ECANCELED ? FS_CANCELLED : FS_DONE, err ? err : MPROC_EREMOTE,
                  message, NULL, false);
}

bool mproc_future_cancel(mproc_future *f)
{
    if (!f)
        return false;
    /* Racing set_running: whichever takes the state first wins. */
    if (future_finish(f, FS_CANCELLED, MPROC_ECANCELED, "cancelled", NULL, true))
        return true;
    return mproc_future_cancelled(f);
}

static int future_wait(mproc_future *f, double timeout)
{
    if (f->state < FS_DONE && timeout != 0 && in_callback_thread())
        return mproc__fail(MPROC_EDEADLK, "future: waiting from a done-callback would deadlock");
    mproc_deadline d = mproc_deadline_after(timeout);
    while (f->state < FS_DONE) {
        if (mproc_deadline_expired(d) || !pool__cond_wait_until(&f->cv, &f->mu, d))
            return mproc__fail(MPROC_ETIMEDOUT, "future: not done in time");
    }
    return 0;
}

int mproc_future_result(mproc_future *f, const mproc_value **out, double timeout)
{
    if (out)
        *out = NULL;
    if (!f)
        return mproc__fail(MPROC_EINVAL, "future_result: NULL future");
    pthread_mutex_lock(&f->mu);
    int rc = future_wait(f, timeout);
    if (!rc && f->err)
        rc = mproc__fail(f->err, "%s", f->msg ? f->msg : mproc_strerror(f->err));
    if (!rc && out)
        *out = f->value;
    pthread_mutex_unlock(&f->mu);
    return rc;
}

int mproc_future_exception(mproc_future *f, double timeout, int *err, const char **message)
{
    if (err)
        *err = 0;
    if (message)
        *message = NULL;
    if (!f)
        return mproc__fail(MPROC_EINVAL, "future_exception: NULL future");
    pthread_mutex_lock(&f->mu);
    int rc = future_wait(f, timeout);
    if (!rc && f->state == FS_CANCELLED)
        rc = mproc__fail(MPROC_ECANCELED, "future_exception: the future was cancelled");
    if (!rc) {
        if (err)
            *err = f->err;
        if (message)
            *message = f->msg;
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

const char *mproc_future_error(mproc_future *f)
{
    if (!f)
        return NULL;
    pthread_mutex_lock(&f->mu);
    const char *m = f->state >= FS_DONE && f->err ? f->msg : NULL;
    pthread_mutex_unlock(&f->mu);
    return m;
}

static int future_state(mproc_future *f)
{
    pthread_mutex_lock(&f->mu);
    int s = f->state;
    pthread_mutex_unlock(&f->mu);
    return s;
}

bool mproc_future_done(mproc_future *f)
{
    return f && future_state(f) >= FS_DONE;
}

bool mproc_future_running(mproc_future *f)
{
    return f && future_state(f) == FS_RUNNING;
}

bool mproc_future_cancelled(mproc_future *f)
{
    return f && future_state(f) == FS_CANCELLED;
}

int mproc_future_add_done_callback(mproc_future *f, void (*fn)(mproc_future *, void *), void *ud)
{
    if (!f || !fn)
        return mproc__fail(MPROC_EINVAL, "future_add_done_callback: NULL argument");
    pthread_mutex_lock(&f->mu);
    if (f->state < FS_DONE) {
        done_cb *n = realloc(f->cbs, (f->ncbs + 1) * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&f->mu);
            return MPROC_ENOMEM;
        }
        f->cbs = n;
        f->cbs[f->ncbs++] = (done_cb){fn, ud};
        pthread_mutex_unlock(&f->mu);
        return 0;
    }
    pthread_mutex_unlock(&f->mu);
    fn(f, ud);
    return 0;
}

/* ----------------------------------------------------------------- waiters */

static void waiter_detach(waiter *w, mproc_future *const *fs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        mproc_future *f = fs[i];
        pthread_mutex_lock(&f->mu);
        for (size_t k = 0; k < f->nwaiters; k++)
            if (f->waiters[k] == w) {
                f->waiters[k] = f->waiters[--f->nwaiters];
                break;
            }
        pthread_mutex_unlock(&f->mu);
    }
}

/* Register w on fs[0..n) (distinct); done ones go to its fifo at once. */
static int waiter_attach(waiter *w, mproc_future *const *fs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        mproc_future *f = fs[i];
        pthread_mutex_lock(&f->mu);
        if (f->state >= FS_DONE) {
            pthread_mutex_lock(&w->mu);
            w->fifo[w->tail++] = f;
            w->nfailed += f->state == FS_DONE && f->err != 0;
            pthread_mutex_unlock(&w->mu);
        } else {
            waiter **nw = realloc(f->waiters, (f->nwaiters + 1) * sizeof *nw);
            if (!nw) {
                pthread_mutex_unlock(&f->mu);
                waiter_detach(w, fs, i);
                return MPROC_ENOMEM;
            }
            f->waiters = nw;
            f->waiters[f->nwaiters++] = w;
        }
        pthread_mutex_unlock(&f->mu);
    }
    return 0;
}

static int waiter_init(waiter *w, size_t n)
{
    memset(w, 0, sizeof *w);
    w->fifo = calloc(n ? n : 1, sizeof *w->fifo);
    if (!w->fifo)
        return MPROC_ENOMEM;
    w->cap = n;
    pthread_mutex_init(&w->mu, NULL);
    pool__cond_init_mono(&w->cv);
    return 0;
}

static void waiter_destroy(waiter *w)
{
    free(w->fifo);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
    return x < y ? -1 : x > y;
}

/* A sorted copy of fs without duplicates. */
static int unique(mproc_future *const *fs, size_t n, mproc_future ***out, size_t *nout)
{
    mproc_future **u = malloc((n ? n : 1) * sizeof *u);
    if (!u)
        return MPROC_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (fs[i])
            u[k++] = fs[i];
    qsort(u, k, sizeof *u, cmp_ptr);
    size_t m = 0;
    for (size_t i = 0; i < k; i++)
        if (m == 0 || u[m - 1] != u[i])
            u[m++] = u[i];
    *out = u;
    *nout = m;
    return 0;
}

int mproc_futures_wait(mproc_future *const *fs, size_t n, double timeout, mproc_return_when when,
                       size_t *ndone)
{
    if (ndone)
        *ndone = 0;
    if (!fs && n)
        return mproc__fail(MPROC_EINVAL, "futures_wait: NULL futures");
    mproc_future **u;
    size_t m;
    int rc = unique(fs, n, &u, &m);
    if (rc)
        return rc;
    waiter w;
    if ((rc = waiter_init(&w, m)) || (rc = waiter_attach(&w, u, m))) {
        if (w.fifo)
            waiter_destroy(&w);
        free(u);
        return rc;
    }
    mproc_deadline d = mproc_deadline_after(timeout);
    bool deadlock = timeout != 0 && in_callback_thread();
    pthread_mutex_lock(&w.mu);
    for (;;) {
        bool failed = w.nfailed > 0;
        bool met = w.tail == m || (when == MPROC_FIRST_COMPLETED && w.tail > 0) ||
                   (when == MPROC_FIRST_EXCEPTION && failed);
        if (met) {
            rc = 0;
            break;
        }
        if (deadlock) {
            rc = mproc__fail(MPROC_EDEADLK, "futures_wait: waiting from a done-callback would deadlock");
            break;
        }
        if (mproc_deadline_expired(d) || !pool__cond_wait_until(&w.cv, &w.mu, d)) {
            rc = mproc__fail(MPROC_ETIMEDOUT, "futures_wait: condition not met in time");
            break;
        }
    }
    pthread_mutex_unlock(&w.mu);
    waiter_detach(&w, u, m);
    size_t done = 0;
    for (size_t i = 0; i < m; i++)
        done += mproc_future_done(u[i]);
    if (ndone)
        *ndone = done;
    waiter_destroy(&w);
    free(u);
    return rc;
}

struct mproc_as_completed {
    waiter w;
    mproc_future **u;
    size_t n;
};

int mproc_as_completed_new(mproc_future *const *fs, size_t n, mproc_as_completed **out)
{
    if (!out || (!fs && n))
        return mproc__fail(MPROC_EINVAL, "as_completed_new: NULL argument");
    mproc_as_completed *ac = calloc(1, sizeof *ac);
    if (!ac)
        return MPROC_ENOMEM;
    int rc = unique(fs, n, &ac->u, &ac->n);
    if (!rc && (rc = waiter_init(&ac->w, ac->n)) == 0 && (rc = waiter_attach(&ac->w, ac->u, ac->n)))
        waiter_destroy(&ac->w);
    if (rc) {
        free(ac->u);
        free(ac);
        return rc;
    }
    *out = ac;
    return 0;
}

int mproc_as_completed_next(mproc_as_completed *ac, mproc_future **f, double timeout)
{
    if (!ac || !f)
        return mproc__fail(MPROC_EINVAL, "as_completed_next: NULL argument");
    *f = NULL;
    mproc_deadline d = mproc_deadline_after(timeout);
    int rc = 0;
    pthread_mutex_lock(&ac->w.mu);
    for (;;) {
        if (ac->w.head < ac->w.tail) {
            *f = ac->w.fifo[ac->w.head++];
            break;
        }
        if (ac->w.head >= ac->n) {
            rc = mproc__fail(MPROC_ECLOSED, "as_completed: every future was returned");
            break;
        }
        if (timeout != 0 && in_callback_thread()) {
            rc = mproc__fail(MPROC_EDEADLK, "as_completed: waiting from a done-callback would deadlock");
            break;
        }
        if (mproc_deadline_expired(d) || !pool__cond_wait_until(&ac->w.cv, &ac->w.mu, d)) {
            rc = mproc__fail(MPROC_ETIMEDOUT, "as_completed: none finished in time");
            break;
        }
    }
    pthread_mutex_unlock(&ac->w.mu);
    return rc;
}

void mproc_as_completed_free(mproc_as_completed *ac)
{
    if (!ac)
        return;
    waiter_detach(&ac->w, ac->u, ac->n);
    waiter_destroy(&ac->w);
    free(ac->u);
    free(ac);
}

/* ---------------------------------------------------------- local backend */

static bool hk_start(void *ud)
{
    return mproc_future_set_running(ud);
}

static void hk_done(void *ud, int err, const char *msg, mproc_value **v)
{
    if (err) {
        mproc_future_set_error(ud, err, msg);
    } else {
        mproc_future_set_result(ud, *v);
        *v = NULL;
    }
}

static void hk_release(void *ud)
{
    mproc_future_free(ud);
}

static int local_start(void **state, const mproc_executor_opts *o)
{
    mproc_pool_opts po = {.processes = o->max_workers,
                          .initializer = o->initializer,
                          .initargs = o->initargs,
                          .maxtasksperchild = o->max_tasks_per_child,
                          .ctx = o->ctx,
                          .retry_crashed = o->retry_crashed};
    return mproc_pool_new((mproc_pool **)state, &po);
}

static int local_submit(void *state, mproc_task task, const mproc_value *items, bool single,
                        mproc_future *f)
{
    pool_hooks h = {hk_start, hk_done, hk_release, mproc_future_ref(f)};
    size_t chunk = single ? 1 : mproc_value_len(items);
    int rc = mproc__pool_submit_hooked(state, task, items, single, chunk ? chunk : 1, &h);
    if (rc)
        mproc_future_free(f);
    return rc;
}

static int local_shutdown(void *state, bool wait)
{
    int rc = mproc_pool_close(state);
    if (!rc && wait)
        rc = mproc_pool_join(state, MPROC_FOREVER);
    return rc;
}

static void local_free(void *state)
{
    mproc_pool_free(state);
}

const mproc_executor_backend mproc_executor_local = {"local", local_start, local_submit,
                                                     local_shutdown, local_free};

/* ---------------------------------------------------------------- executor */

int mproc_executor_new(mproc_executor **out, const mproc_executor_opts *opts)
{
    if (!out)
        return mproc__fail(MPROC_EINVAL, "executor_new: NULL out");
    *out = NULL;
    mproc_executor_opts o = {0};
    if (opts)
        o = *opts;
    const mproc_executor_backend *be = o.backend ? o.backend : &mproc_executor_local;
    if (!be->start || !be->submit || !be->shutdown || !be->free)
        return mproc__fail(MPROC_EINVAL, "executor_new: incomplete backend");
    mproc_executor *ex = calloc(1, sizeof *ex);
    if (!ex)
        return MPROC_ENOMEM;
    ex->be = be;
    pthread_mutex_init(&ex->mu, NULL);
    int rc = be->start(&ex->state, &o);
    if (rc) {
        pthread_mutex_destroy(&ex->mu);
        free(ex);
        return rc;
    }
    *out = ex;
    return 0;
}

/* Remember f for shutdown(cancel_futures); drop the done ones now and then. */
static int track(mproc_executor *ex, mproc_future *f)
{
    if (ex->nfuts == ex->capfuts) {
        size_t k = 0;
        for (size_t i = 0; i < ex->nfuts; i++) {
            if (mproc_future_done(ex->futs[i]))
                mproc_future_free(ex->futs[i]);
            else
                ex->futs[k++] = ex->futs[i];
        }
        ex->nfuts = k;
        if (k * 2 >= ex->capfuts) {
            size_t nc = ex->capfuts ? ex->capfuts * 2 : 64;
            mproc_future **n = realloc(ex->futs, nc * sizeof *n);
            if (!n)
                return MPROC_ENOMEM;
            ex->futs = n;
            ex->capfuts = nc;
        }
    }
    ex->futs[ex->nfuts++] = mproc_future_ref(f);
    return 0;
}

static int submit_items(mproc_executor *ex, mproc_task task, const mproc_value *items, bool single,
                        mproc_future **out)
{
    mproc_future *f = future_new();
    if (!f)
        return MPROC_ENOMEM;
    pthread_mutex_lock(&ex->mu);
    int rc = ex->shut ? mproc__fail(MPROC_ESTATE, "executor_submit: the executor is shut down")
                      : track(ex, f);
    pthread_mutex_unlock(&ex->mu);
    if (!rc) {
        rc = ex->be->submit(ex->state, task, items, single, f);
        if (rc) /* leave it tracked but finished, so shutdown has nothing to do */
            mproc_future_set_error(f, rc, mproc_errmsg());
    }
    if (rc) {
        char m[512];
        snprintf(m, sizeof m, "%s", mproc_errmsg());
        mproc_future_free(f);
        return mproc__fail(rc, "%s", m);
    }
    *out = f;
    return 0;
}

int mproc_executor_submit(mproc_executor *ex, mproc_task task, const mproc_value *arg,
                          mproc_future **f)
{
    if (!ex || !f)
        return mproc__fail(MPROC_EINVAL, "executor_submit: NULL argument");
    *f = NULL;
    return submit_items(ex, task, arg, true, f);
}

int mproc_executor_map(mproc_executor *ex, mproc_task task, const mproc_value *items,
                       size_t chunksize, mproc_imap **it)
{
    if (!ex || !it || !items || mproc_value_type(items) != MPROC_V_LIST)
        return mproc__fail(MPROC_EINVAL, "executor_map: NULL argument or items not a list");
    *it = NULL;
    if (chunksize == 0)
        chunksize = 1;
    size_t n = mproc_value_len(items), nf = (n + chunksize - 1) / chunksize;
    mproc_imap *x = calloc(1, sizeof *x);
    if (!x || !(x->futs = calloc(nf ? nf : 1, sizeof *x->futs))) {
        free(x);
        return MPROC_ENOMEM;
    }
    x->n = n;
    x->item_in_fut = chunksize; /* chunk length, while iterating: see next */
    int rc = 0;
    for (size_t k = 0; k < nf && !rc; k++) {
        mproc_value *chunk = mproc_value_list();
        rc = chunk ? 0 : MPROC_ENOMEM;
        for (size_t i = k * chunksize; !rc && i < n && i < (k + 1) * chunksize; i++) {
            mproc_value *c = mproc_value_copy(mproc_value_at(items, i));
            rc = c ? mproc_value_append(chunk, c) : MPROC_ENOMEM;
        }
        if (!rc)
            rc = submit_items(ex, task, chunk, false, &x->futs[k]);
        mproc_value_free(chunk);
        if (!rc)
            x->nfuts++;
    }
    if (rc) {
        char m[512];
        snprintf(m, sizeof m, "%s", mproc_errmsg());
        for (size_t k = 0; k < x->nfuts; k++) {
            mproc_future_cancel(x->futs[k]);
            mproc_future_free(x->futs[k]);
        }
        free(x->futs);
        free(x);
        return mproc__fail(rc, "%s", m);
    }
    x->fut_i = 0;
    x->index = 0;
    *it = x;
    return 0;
}

int mproc__imap_next_futures(mproc_imap *it, mproc_value **out, size_t *index, double timeout);
void mproc__imap_free_futures(mproc_imap *it);

/* A chunk's failed item is an error value named after its code (see the
 * backend contract in futures.h): the code, or 0 for an ordinary value. */
static int item_error_code(const mproc_value *v)
{
    static const int codes[] = {MPROC_EREMOTE, MPROC_EWORKER, MPROC_ECANCELED, MPROC_EBUILDID,
                                MPROC_EPROTO,  MPROC_ENOMEM,  MPROC_EMSGSIZE,  MPROC_EINVAL};
    if (mproc_value_type(v) != MPROC_V_ERROR)
        return 0;
    const char *t = mproc_value_error_type(v);
    for (size_t i = 0; t && i < sizeof codes / sizeof codes[0]; i++)
        if (strcmp(t, mproc_errname(codes[i])) == 0)
            return codes[i];
    return 0;
}

int mproc__imap_next_futures(mproc_imap *it, mproc_value **out, size_t *index, double timeout)
{
    size_t chunk = it->item_in_fut;
    if (it->index >= it->n)
        return mproc__fail(MPROC_ECLOSED, "executor map: no more items");
    size_t k = it->index / chunk, pos = it->index % chunk;
    mproc_future *f = it->futs[k];
    const mproc_value *v = NULL;
    int rc = mproc_future_result(f, &v, timeout);
    if (rc == MPROC_ETIMEDOUT)
        return rc;
    if (index)
        *index = it->index;
    free(it->err);
    it->err = NULL;
    if (rc) {
        /* the whole chunk failed: its error stands at its first position */
        const char *m = mproc_future_error(f);
        it->err = strdup(m ? m : mproc_strerror(rc));
        size_t next = (k + 1) * chunk;
        it->index = next < it->n ? next : it->n;
        return mproc__fail(rc, "%s", it->err ? it->err : mproc_strerror(rc));
    }
    const mproc_value *iv = mproc_value_at(v, pos);
    int code = item_error_code(iv);
    if (code) {
        /* this item failed: its error at its position, the others go on */
        const char *m = mproc_value_error_message(iv);
        it->err = strdup(m ? m : mproc_strerror(code));
        it->index++;
        return mproc__fail(code, "%s", it->err ? it->err : mproc_strerror(code));
    }
    mproc_value *item = mproc_value_copy(iv);
    if (!item)
        return MPROC_ENOMEM;
    *out = item;
    it->index++;
    return 0;
}

void mproc__imap_free_futures(mproc_imap *it)
{
    for (size_t k = 0; k < it->nfuts; k++)
        mproc_future_free(it->futs[k]);
    free(it->futs);
}

int mproc_executor_shutdown(mproc_executor *ex, bool wait, bool cancel_futures)
{
    if (!ex)
        return mproc__fail(MPROC_EINVAL, "executor_shutdown: NULL executor");
    /* Cancel outside ex->mu: cancelling runs done-callbacks, which may call
     * back into the executor. */
    mproc_future **fs = NULL;
    size_t nf = 0;
    pthread_mutex_lock(&ex->mu);
    ex->shut = true;
    if (cancel_futures && ex->nfuts && (fs = malloc(ex->nfuts * sizeof *fs))) {
        for (size_t i = 0; i < ex->nfuts; i++)
            fs[nf++] = mproc_future_ref(ex->futs[i]);
    }
    pthread_mutex_unlock(&ex->mu);
    for (size_t i = 0; i < nf; i++) {
        mproc_future_cancel(fs[i]);
        mproc_future_free(fs[i]);
    }
    free(fs);
    /* Backends' shutdown is idempotent and thread-safe: every caller with
     * wait waits. */
    return ex->be->shutdown(ex->state, wait);
}

void mproc_executor_free(mproc_executor *ex)
{
    if (!ex)
        return;
    mproc_executor_shutdown(ex, true, false);
    ex->be->free(ex->state);
    for (size_t i = 0; i < ex->nfuts; i++)
        mproc_future_free(ex->futs[i]);
    free(ex->futs);
    pthread_mutex_destroy(&ex->mu);
    free(ex);
}

const char *mproc_executor_backend_name(const mproc_executor *ex)
{
    return ex && ex->be ? ex->be->name : NULL;
}
