/* worker.c — the pool worker: take units from its task queue, run the task
 * on each item, put the outcomes on the result queue. Before each item it
 * records (unit, item) in its arena slot, so a death is pinned on that item. */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pool_int.h"
#include "../process/process_int.h"

typedef struct wk {
    uint32_t idx, gen;
    int64_t maxtasks;
    uint64_t last_ns; /* how long the last unit took */
    mproc_queue *tq, *rq;
    uint8_t *arena;
    size_t arena_size;
    pool_slot *slot;
    void **fns;
    char **fn_err; /* why fns[i] is NULL: its module did not resolve here */
    size_t nfns;
    uint8_t *msg;
    size_t msg_cap;
    mproc_buf res, out;
} wk;

static int put_item(mproc_buf *b, int32_t code, const void *p, size_t n)
{
    if (n > UINT32_MAX)
        return MPROC_EMSGSIZE;
    pr_item it = {code, (uint32_t)n};
    int rc = mproc_buf_append(b, &it, sizeof it);
    return rc ? rc : mproc_buf_append(b, p, n);
}

static int put_error(mproc_buf *b, int rc, const char *msg)
{
    size_t n = strnlen(msg, POOL_MSG_MAX - 1);
    return put_item(b, rc ? rc : MPROC_EREMOTE, msg, n);
}

/* Items units: each record {u32 len, bytes} runs the task once. */
static int run_items(wk *w, const pm_unit *u, void *fn, const uint8_t *items, size_t len)
{
    mproc_reader r = {items, items + len};
    mproc_task task = {.kind = (mproc_task_kind)u->kind};
    if (u->kind == UK_BYTES)
        task.fn.bytes = (mproc_bytes_fn)fn;
    else if (u->kind == UK_VALUE)
        task.fn.value = (mproc_value_fn)fn;
    else
        task.fn.star = (mproc_star_fn)fn;
    char ebuf[POOL_MSG_MAX];
    for (uint32_t k = 0; k < u->n; k++) {
        const uint8_t *p;
        size_t n;
        int rc = mproc__get_blob(&r, &p, &n);
        if (rc)
            return rc; /* the parent sent garbage: give up on this worker */
        atomic_store_explicit(&w->slot->item, k, memory_order_relaxed);
        w->out.len = 0;
        rc = mproc_task_run(task, p, n, &w->out, ebuf, sizeof ebuf);
        rc = rc ? put_error(&w->res, rc, ebuf) : put_item(&w->res, 0, w->out.data, w->out.len);
        if (rc == MPROC_EMSGSIZE)
            rc = put_error(&w->res, MPROC_EMSGSIZE, "task output is larger than 4 GiB");
        if (rc)
            return rc;
        if (w->out.cap > (64u << 20)) /* do not keep a huge buffer after a huge output */
            mproc__buf_free(&w->out);
    }
    return 0;
}

/* Element units: out[i] = fn(in[i]) in the arena. */
static int run_elems(wk *w, const pm_unit *u, void *fn, pr_head *h)
{
    mproc_elem_fn f = (mproc_elem_fn)fn;
    if (u->a > w->arena_size || u->b > w->arena_size || u->c * u->n > w->arena_size - u->a ||
        u->d * u->n > w->arena_size - u->b || u->e > w->arena_size || u->f > w->arena_size - u->e)
        return MPROC_EPROTO;
    const void *arg = u->f ? w->arena + u->e : NULL;
    const uint8_t *in = w->arena + u->a;
    uint8_t *out = w->arena + u->b;
    size_t is = u->c, os = u->d;
    char ebuf[POOL_MSG_MAX];
    pool__task_begin();
    for (uint32_t k = 0; k < u->n; k++) {
        atomic_store_explicit(&w->slot->item, k, memory_order_relaxed);
        int rc = f(in + (size_t)k * is, out + (size_t)k * os, arg);
        if (rc) {
            const char *m = pool__task_message(rc, ebuf, sizeof ebuf);
            size_t ml = strnlen(m, POOL_MSG_MAX - 1);
            h->code = rc;
            h->n = k;
            h->len = (uint32_t)ml;
            return mproc_buf_append(&w->res, m, ml);
        }
    }
    pool__task_end();
    return 0;
}

/* Queue waits are bounded so an orphaned worker notices its parent is gone. */
static int wk_put(wk *w, const void *p, size_t n)
{
    int rc = MPROC_ETIMEDOUT;
    if (n <= (64u << 10)) { /* the usual case, without a clock read (a large one
                               could stream part way and then be aborted) */
        rc = mproc_queue_put(w->rq, p, n, 0);
        if (rc != MPROC_ETIMEDOUT)
            return rc;
    }
    for (;;) {
        rc = mproc_queue_put(w->rq, p, n, 1.0);
        if (rc != MPROC_ETIMEDOUT)
            return rc;
        if (!mproc__parent_alive())
            return MPROC_ECLOSED;
    }
}

static int wk_get(wk *w, size_t *len)
{
    for (double t = 0;; t = 1.0) { /* try once first: no clock read when work is queued */
        int rc = mproc_queue_get_into(w->tq, w->msg, w->msg_cap, len, t);
        if (rc == MPROC_EMSGSIZE) {
            uint8_t *m = realloc(w->msg, *len);
            if (!m)
                return MPROC_ENOMEM;
            w->msg = m;
            w->msg_cap = *len;
            continue;
        }
        if (rc != MPROC_ETIMEDOUT)
            return rc;
        if (t > 0 && !mproc__parent_alive())
            return MPROC_ECLOSED;
    }
}

static int on_def(wk *w, const uint8_t *m, size_t len)
{
    mproc_reader r = {m + 1, m + len};
    uint32_t id;
    void *fn;
    int rc = mproc__get_u32(&r, &id);
    if (rc || id != w->nfns)
        return MPROC_EPROTO;
    /* A function that does not resolve fails its tasks (with the reason);
     * exiting instead would only have the pool restart us forever. */
    char *why = NULL;
    if (mproc__modref_get(&r, &fn) != 0) {
        fn = NULL;
        why = strdup(mproc_errmsg());
        if (!why)
            return MPROC_ENOMEM;
    }
    void **t = realloc(w->fns, (w->nfns + 1) * sizeof *t);
    char **e = t ? realloc(w->fn_err, (w->nfns + 1) * sizeof *e) : NULL;
    if (t)
        w->fns = t;
    if (!e) {
        free(why);
        return MPROC_ENOMEM;
    }
    w->fn_err = e;
    w->fns[w->nfns] = fn;
    w->fn_err[w->nfns++] = why;
    return 0;
}

static int on_unit(wk *w, const uint8_t *m, size_t len)
{
    pm_unit u;
    if (len < sizeof u)
        return MPROC_EPROTO;
    memcpy(&u, m, sizeof u);
    if (u.fn_id >= w->nfns)
        return MPROC_EPROTO;
    void *fn = w->fns[u.fn_id];
    double t0 = mproc_monotonic();
    pr_head h = {.type = PR_RESULT, .worker = w->idx, .gen = w->gen, .id = u.id, .n = u.n};
    w->res.len = 0;
    int rc = mproc_buf_append(&w->res, &h, sizeof h);
    if (rc)
        return rc;
    atomic_store_explicit(&w->slot->item, 0, memory_order_relaxed);
    atomic_store_explicit(&w->slot->unit, u.id, memory_order_release);
    if (!fn) {
        char why[POOL_MSG_MAX];
        snprintf(why, sizeof why, "the task function is not available in the worker: %s",
                 w->fn_err[u.fn_id]);
        if (u.kind == UK_ELEM) {
            size_t wl = strlen(why);
            h.code = MPROC_EBUILDID;
            h.len = (uint32_t)wl;
            memcpy(w->res.data, &h, sizeof h);
            rc = mproc_buf_append(&w->res, why, wl);
        }
        for (uint32_t k = 0; !rc && u.kind != UK_ELEM && k < u.n; k++)
            rc = put_error(&w->res, MPROC_EBUILDID, why);
    } else if (u.kind == UK_ELEM) {
        rc = run_elems(w, &u, fn, &h);
        memcpy(w->res.data, &h, sizeof h);
    } else if (u.flags & UF_ARENA) {
        rc = u.a > w->arena_size || u.b > w->arena_size - u.a
                 ? MPROC_EPROTO
                 : run_items(w, &u, fn, w->arena + u.a, u.b);
    } else {
        rc = run_items(w, &u, fn, m + sizeof u, len - sizeof u);
    }
    atomic_store_explicit(&w->slot->unit, 0, memory_order_release);
    if (rc)
        return rc;
    if (w->res.len > mproc_queue_max_message(w->rq)) {
        /* The outputs together exceed what the result queue carries: each
         * item fails instead (exiting would only get the unit re-run). */
        char why[160];
        snprintf(why, sizeof why, "the %u outputs of this chunk total %zu bytes, over the %zu-byte "
                 "limit of the result queue: use a smaller chunksize", u.n, w->res.len,
                 mproc_queue_max_message(w->rq));
        w->res.len = sizeof h;
        for (uint32_t k = 0; !rc && k < u.n; k++)
            rc = put_error(&w->res, MPROC_EMSGSIZE, why);
        if (rc)
            return rc;
    }
    w->last_ns = (uint64_t)((mproc_monotonic() - t0) * 1e9);
    memcpy(w->res.data + offsetof(pr_head, ns), &w->last_ns, sizeof w->last_ns);
    return wk_put(w, w->res.data, w->res.len);
}

static int send_init(wk *w, int code, const char *msg)
{
    size_t ml = msg ? strnlen(msg, POOL_MSG_MAX - 1) : 0;
    pr_head h = {.type = PR_INIT, .worker = w->idx, .gen = w->gen, .code = code, .len = (uint32_t)ml};
    uint8_t buf[sizeof h + POOL_MSG_MAX];
    memcpy(buf, &h, sizeof h);
    if (ml)
        memcpy(buf + sizeof h, msg, ml);
    return wk_put(w, buf, sizeof h + ml);
}

/* Run the initializer (a modref in argument 7; its arguments from 8 on). */
static int run_init(wk *w, mproc_args *a)
{
    size_t rlen = 0;
    const void *ref = mproc_args_bytes(a, 7, &rlen);
    if (!ref || rlen == 0)
        return send_init(w, 0, NULL);
    mproc_reader r = {ref, (const uint8_t *)ref + rlen};
    void *fn;
    int rc = mproc__modref_get(&r, &fn);
    if (rc) {
        send_init(w, rc, mproc_errmsg()); /* the worker stops either way */
        return rc;
    }
    mproc_args view = {a->v + 8, a->n - 8, a->n - 8};
    char ebuf[POOL_MSG_MAX];
    pool__task_begin();
    rc = ((mproc_target_fn)fn)(&view);
    const char *m = rc ? pool__task_message(rc, ebuf, sizeof ebuf) : NULL;
    pool__task_end();
    if (rc && !pool__task_message_set() && mproc_errmsg()[0]) {
        snprintf(ebuf, sizeof ebuf, "initializer failed (returned %d): %s", rc, mproc_errmsg());
        m = ebuf;
    }
    int src = send_init(w, rc ? (rc < 0 ? rc : MPROC_EREMOTE) : 0, m);
    return rc ? MPROC_EREMOTE : src;
}

int mproc__pool_worker_main(mproc_args *a)
{
    wk w;
    memset(&w, 0, sizeof w);
    int64_t idx, gen, asz;
    int fd = mproc_args_fd(a, 5);
    if (mproc_args_get_int(a, 0, &idx) || mproc_args_get_int(a, 1, &gen) ||
        mproc_args_get_int(a, 2, &w.maxtasks) || mproc_args_get_int(a, 6, &asz) || fd < 0)
        return 70;
    w.idx = (uint32_t)idx;
    w.gen = (uint32_t)gen;
    w.tq = mproc_args_object(a, 3, &mproc_queue_type);
    w.rq = mproc_args_object(a, 4, &mproc_queue_type);
    w.arena_size = (size_t)asz;
    void *base = mmap(NULL, w.arena_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (!w.tq || !w.rq || base == MAP_FAILED)
        return 71;
    w.arena = base;
    w.slot = (pool_slot *)w.arena + w.idx;
    int rc = run_init(&w, a);
    size_t done = 0;
    while (rc == 0) {
        size_t len;
        rc = wk_get(&w, &len);
        if (rc || len == 0)
            break;
        if (w.msg[0] == PM_DEF) {
            rc = on_def(&w, w.msg, len);
        } else if (w.msg[0] == PM_UNIT) {
            rc = on_unit(&w, w.msg, len);
            /* After a long unit the next one is not imminent: sleep at once
             * instead of polling, leaving the CPU to the other workers. */
            mproc__queue_set_spin(w.tq, w.last_ns > 50000 ? 0 : -1);
            if (rc == 0 && w.maxtasks > 0 && ++done >= (size_t)w.maxtasks)
                break;
        } else {
            rc = MPROC_EPROTO;
        }
    }
    munmap(w.arena, w.arena_size);
    free(w.msg);
    for (size_t i = 0; i < w.nfns; i++)
        free(w.fn_err[i]);
    free(w.fns);
    free(w.fn_err);
    mproc__buf_free(&w.res);
    mproc__buf_free(&w.out);
    /* ECLOSED is the normal end (close: the task queue was shut down). */
    return rc == 0 || rc == MPROC_ECLOSED ? 0 : 72;
}
