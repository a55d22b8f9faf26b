/* pool.c — the parent side of Pool: calls are cut into units that go to
 * per-worker task queues; one results thread takes outcomes from a shared
 * result queue, completes calls and hands out more units; a watcher thread
 * turns worker deaths (pidfds) into messages on that same queue.
 *
 * Why a death can be handled exactly: a dead worker's last results were
 * committed to the result queue before it died, and the watcher's PR_DEATH
 * comes after them, so when the results thread sees PR_DEATH every unit the
 * worker still holds has no outcome. The worker's arena slot names the unit
 * and item it was running: that item fails (or is retried once); the rest of
 * its units go back to the front of the line, to other workers.
 *
 * Locks: pool->mu guards the pool (workers, calls, dispatch); each call has
 * its own mu for what its users read (so results outlive the pool). Order:
 * pool->mu, then a call's mu. Callbacks run on the results thread with no
 * lock held. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pool_int.h"

#define TQ_CAPACITY ((size_t)1 << 20)
#define RQ_CAPACITY ((size_t)4 << 20)
#define INLINE_MAX ((size_t)64 << 10) /* larger call inputs go through the arena */
#define ARENA_DEFAULT ((size_t)16 << 30)
#define ARENA_KEEP ((size_t)64 << 20) /* freed arena memory kept resident below this */
#define ARENA_ALIGN 64u
#define DEPTH_MIN 2u
#define DEPTH_MAX 64u
#define DEPTH_TARGET 100e-6 /* seconds of queued work per worker */
#define KILL_GRACE 1.0      /* terminate: SIGTERM, then SIGKILL after this */
#define SPIN_MAX_TASK 50e-6 /* units longer than this: waiters sleep at once */

enum { CK_APPLY, CK_MAP, CK_IMAP, CK_IMAP_UNORDERED, CK_ARRAY };
enum { ST_RUN, ST_CLOSED, ST_TERMINATING, ST_FINISHED };

typedef struct mproc_result call;
typedef struct unit unit;

struct unit {
    unit *next; /* units are held in singly linked FIFOs */
    call *c;
    uint64_t id;
    size_t lo, n;
    bool retried;
};

struct mproc_result {
    atomic_int refs;
    const mproc_pool *owner_pool; /* identity only (EDEADLK check): never dereferenced */
    /* set at creation */
    int kind;
    int tkind;   /* UK_* */
    void *fn;
    uint32_t fn_id;
    size_t n, chunksize;
    mproc_call_opts o;
    pool_hooks hooks;
    bool keep_going; /* a failed item becomes an error value in the list (executor
                        map chunks), so one failure does not end the call */
    /* inputs: records {u32 len, bytes}; offs[i] is item i's record */
    uint8_t *items;
    size_t items_len;
    size_t *offs;
    bool in_arena;
    uint64_t arena_off, arena_len;
    /* map_array */
    uint64_t out_off, arg_off, arg_len;
    uint64_t own_in, own_out; /* bytes of arena the call allocated for them (0: the
                                 caller's arrays are in the arena already) */
    size_t in_size, out_size;
    void *user_out;
    /* dispatch, under pool->mu */
    call *pnext, *pprev; /* pending list (items not all carved) */
    call *anext, *aprev; /* active list (not retired) */
    bool in_pending, started, retired, failed_all;
    size_t next_item, units_out, delivered;
    /* outcome, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int nwaiters;
    int cb_running; /* user callbacks of this call running now */
    bool resolved, ready;
    int err;
    char *errmsg;
    mproc_value *value;
    mproc_value **vals;
    int *codes;  /* imap: per item */
    char **msgs; /* imap: per item */
    uint8_t *done;
    size_t ndone;
    size_t *fifo; /* imap_unordered: finished indices */
    size_t fifo_head, fifo_tail;
    size_t cursor; /* imap: next to hand out */
};

typedef struct worker {
    int idx;
    uint32_t gen;
    mproc_process *p;
    pid_t pid;
    int pidfd;
    mproc_queue *tq;
    unit *head, *tail;
    size_t ninflight;
    unsigned assigned;
    size_t nfn_sent;
    bool alive, dead_reported, dead_pending, ready, full, closing;
} worker;

typedef struct fnent {
    void *fn;
    mproc_buf def; /* the PM_DEF message */
} fnent;

typedef struct extent {
    uint64_t off, len;
} extent;

typedef struct event {
    int type; /* 0 progress, 1 finish */
    call *c;
    size_t done;
} event;

struct mproc_pool {
    pthread_mutex_t mu;
    pthread_mutex_t join_mu; /* serialises joining the threads */
    pthread_cond_t cv; /* state, readiness */
    pid_t owner;
    mproc_pool_opts o;
    mproc_args *initargs;
    mproc_buf initref;
    int n;
    worker *w;
    mproc_queue *rq;
    /* arena */
    int afd;
    uint8_t *abase;
    size_t asize, aslots;
    extent *freel;
    size_t nfree, capfree;
    /* functions */
    fnent *fns;
    size_t nfns;
    /* work */
    call *phead, *ptail;
    call *ahead;
    unit *rhead, *rtail; /* units to send before carving more */
    uint64_t next_unit_id;
    double ewma;          /* seconds per unit, as workers report */
    double item_ewma[2];  /* seconds per item: [0] bytes/value/star, [1] elements */
    unsigned rr;
    int state;
    bool broken, starting, threads_joined;
    char *broken_msg;
    int ready_count, init_err;
    unsigned unblamed; /* deaths in a row with work held but no task running */
    unsigned notready; /* deaths before ready since a worker last got ready */
    char init_msg[POOL_MSG_MAX + 64];
    double kill_at;
    bool killed;
    uint8_t *scratch;
    size_t scratch_cap;
    event *ev;
    size_t nev, capev;
    mproc_pool_stats st;
    pthread_t thr, watch;
    int evfd;
    bool thr_started, watch_started;
};

static __thread const mproc_pool *tl_pool_thread;

bool mproc__pool_in_results_thread(void)
{
    return tl_pool_thread != NULL;
}

/* ------------------------------------------------------------- helpers */


/* Wait on cv until the deadline: false on expiry. */

/* getpid() without a system call per pool call: cached, and forgotten in
 * every fork child (the handler is installed with the first pool). */
static _Atomic pid_t pid_cache;
static void pid_forget(void)
{
    pid_cache = 0;
}
static void pid_install(void)
{
    pthread_atfork(NULL, NULL, pid_forget);
}
static pid_t self_pid(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, pid_install);
    pid_t p = pid_cache;
    if (!p)
        pid_cache = p = getpid();
    return p;
}

static int check_owner(const mproc_pool *p, const char *what)
{
    if (!p)
        return mproc__fail(MPROC_EINVAL, "%s: NULL pool", what);
    if (p->owner != self_pid())
        return mproc__fail(MPROC_ESTATE, "%s: the pool belongs to process %d", what, (int)p->owner);
    return 0;
}

static void wake_results(mproc_pool *p)
{
    pr_head h = {.type = PR_WAKE};
    (void)mproc_queue_put_nowait(p->rq, &h, sizeof h);
}

static void wake_watcher(mproc_pool *p)
{
    uint64_t one = 1;
    ssize_t r = write(p->evfd, &one, sizeof one);
    (void)r;
}

/* --------------------------------------------------------------- arena */

static int arena_alloc(mproc_pool *p, uint64_t len, uint64_t *off)
{
    if (len > p->asize)
        return mproc__fail(MPROC_ENOMEM, "pool: %llu bytes do not fit in the arena (%zu bytes)",
                           (unsigned long long)len, p->asize);
    len = (len + ARENA_ALIGN - 1) & ~(uint64_t)(ARENA_ALIGN - 1);
    if (len == 0)
        len = ARENA_ALIGN;
    for (size_t i = 0; i < p->nfree; i++) {
        extent *e = &p->freel[i];
        if (e->len < len)
            continue;
        *off = e->off;
        e->off += len;
        e->len -= len;
        if (e->len == 0) {
            memmove(e, e + 1, (p->nfree - i - 1) * sizeof *e);
            p->nfree--;
        }
        return 0;
    }
    return mproc__fail(MPROC_ENOMEM, "pool: the shared arena (%zu bytes) has no room for %llu bytes",
                       p->asize, (unsigned long long)len);
}

static void arena_free(mproc_pool *p, uint64_t off, uint64_t len)
{
    len = (len + ARENA_ALIGN - 1) & ~(uint64_t)(ARENA_ALIGN - 1);
    if (len == 0)
        len = ARENA_ALIGN;
    /* Give memory above the kept window back to the system. */
    uint64_t keep = p->aslots + ARENA_KEEP;
    if (off + len > keep) {
        uint64_t from = off > keep ? off : keep;
        from = (from + 4095) & ~(uint64_t)4095;
        uint64_t to = (off + len) & ~(uint64_t)4095;
        if (to > from)
            (void)fallocate(p->afd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)from,
                            (off_t)(to - from));
    }
    size_t i = 0;
    while (i < p->nfree && p->freel[i].off < off)
        i++;
    bool left = i > 0 && p->freel[i - 1].off + p->freel[i - 1].len == off;
    bool right = i < p->nfree && off + len == p->freel[i].off;
    if (left && right) {
        p->freel[i - 1].len += len + p->freel[i].len;
        memmove(&p->freel[i], &p->freel[i + 1], (p->nfree - i - 1) * sizeof *p->freel);
        p->nfree--;
    } else if (left) {
        p->freel[i - 1].len += len;
    } else if (right) {
        p->freel[i].off = off;
        p->freel[i].len += len;
    } else {
        if (p->nfree == p->capfree) {
            size_t nc = p->capfree ? p->capfree * 2 : 16;
            extent *ne = realloc(p->freel, nc * sizeof *ne);
            if (!ne)
                return; /* leak the extent rather than fail: it is only address space */
            p->freel = ne;
            p->capfree = nc;
        }
        memmove(&p->freel[i + 1], &p->freel[i], (p->nfree - i) * sizeof *p->freel);
        p->freel[i] = (extent){off, len};
        p->nfree++;
    }
}

static int arena_init(mproc_pool *p)
{
    p->aslots = ((size_t)p->n * sizeof(pool_slot) + 4095) & ~(size_t)4095;
    if (p->asize < p->aslots + (1u << 20))
        return mproc__fail(MPROC_EINVAL, "pool: arena_size %zu is too small", p->asize);
    p->afd = memfd_create("mproc-pool", MFD_CLOEXEC);
    if (p->afd < 0)
        return mproc__fail(mproc__errno(), "pool: memfd_create failed");
    if (ftruncate(p->afd, (off_t)p->asize) < 0)
        return mproc__fail(mproc__errno(), "pool: cannot size the arena to %zu bytes", p->asize);
    void *b = mmap(NULL, p->asize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, p->afd, 0);
    if (b == MAP_FAILED)
        return mproc__fail(mproc__errno(), "pool: cannot map the arena (%zu bytes)", p->asize);
    p->abase = b;
    p->freel = malloc(16 * sizeof *p->freel);
    if (!p->freel)
        return MPROC_ENOMEM;
    p->capfree = 16;
    p->freel[0] = (extent){p->aslots, p->asize - p->aslots};
    p->nfree = 1;
    return 0;
}

/* true if [ptr, ptr + len) lies in the arena's allocatable part. */
static bool arena_holds(const mproc_pool *p, const void *ptr, size_t len)
{
    uintptr_t a = (uintptr_t)ptr, lo = (uintptr_t)p->abase + p->aslots,
              hi = (uintptr_t)p->abase + p->asize;
    return a >= lo && a <= hi && len <= hi - a;
}

/* Shared blocks: a 64-byte header (magic, length) before the caller's bytes. */
#define SHARED_MAGIC 0x4d50534841524544ull /* "MPSHARED" */

void *mproc_pool_shared_alloc(mproc_pool *p, size_t size)
{
    if (check_owner(p, "pool_shared_alloc"))
        return NULL;
    if (size > SIZE_MAX - ARENA_ALIGN) {
        mproc__fail(MPROC_ENOMEM, "pool_shared_alloc: %zu bytes is too large", size);
        return NULL;
    }
    uint64_t off = 0;
    pthread_mutex_lock(&p->mu);
    int rc = arena_alloc(p, size + ARENA_ALIGN, &off);
    pthread_mutex_unlock(&p->mu);
    if (rc)
        return NULL;
    uint64_t *h = (uint64_t *)(p->abase + off);
    h[0] = SHARED_MAGIC;
    h[1] = size;
    return p->abase + off + ARENA_ALIGN;
}

void mproc_pool_shared_free(mproc_pool *p, void *ptr)
{
    if (!ptr || check_owner(p, "pool_shared_free"))
        return;
    uint8_t *b = (uint8_t *)ptr - ARENA_ALIGN;
    uint64_t *h = (uint64_t *)b;
    if (!arena_holds(p, b, ARENA_ALIGN) || h[0] != SHARED_MAGIC) {
        mproc_log(1, "pool_shared_free: %p is not a block of this pool; ignored", ptr);
        return;
    }
    h[0] = 0;
    pthread_mutex_lock(&p->mu);
    arena_free(p, (uint64_t)(b - p->abase), h[1] + ARENA_ALIGN);
    pthread_mutex_unlock(&p->mu);
}

/* ------------------------------------------------------------- calls */

static void call_unref(call *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    if (c->hooks.release)
        c->hooks.release(c->hooks.ud);
    if (c->vals) {
        for (size_t i = 0; i < c->n; i++)
            mproc_value_free(c->vals[i]);
    }
    if (c->msgs) {
        for (size_t i = 0; i < c->n; i++)
            free(c->msgs[i]);
    }
    free(c->vals);
    free(c->msgs);
    free(c->codes);
    free(c->done);
    free(c->fifo);
    free(c->items);
    free(c->offs);
    free(c->errmsg);
    mproc_value_free(c->value);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

static call *call_new(mproc_pool *p, int kind, int tkind, void *fn, size_t n,
                      const mproc_call_opts *o)
{
    call *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    atomic_init(&c->refs, 2); /* the caller's and the pool's */
    c->owner_pool = p;
    c->kind = kind;
    c->tkind = tkind;
    c->fn = fn;
    c->n = n;
    if (o)
        c->o = *o;
    pthread_mutex_init(&c->mu, NULL);
    pool__cond_init_mono(&c->cv);
    /* Python's map default: 4 chunks per worker. Element maps are uniform and
     * each chunk costs a round trip of wakeups, so they take 2. */
    size_t per = (size_t)p->n * (kind == CK_ARRAY ? 2 : 4);
    c->chunksize = c->o.chunksize ? c->o.chunksize
                   : (kind == CK_IMAP || kind == CK_IMAP_UNORDERED || kind == CK_APPLY) ? 1
                                                                                        : (n + per - 1) / per;
    if (c->chunksize == 0)
        c->chunksize = 1;
    if (c->chunksize > UINT32_MAX)
        c->chunksize = UINT32_MAX;
    bool per_item = kind != CK_ARRAY;
    if (per_item && n) {
        c->vals = calloc(n, sizeof *c->vals);
        if (!c->vals)
            goto fail;
    }
    if (kind == CK_IMAP || kind == CK_IMAP_UNORDERED) {
        c->codes = calloc(n ? n : 1, sizeof *c->codes);
        c->msgs = calloc(n ? n : 1, sizeof *c->msgs);
        c->done = calloc(n ? n : 1, 1);
        if (!c->codes || !c->msgs || !c->done)
            goto fail;
        if (kind == CK_IMAP_UNORDERED && !(c->fifo = calloc(n ? n : 1, sizeof *c->fifo)))
            goto fail;
    }
    return c;
fail:
    atomic_store(&c->refs, 1);
    call_unref(c);
    return NULL;
}

/* Encode the inputs: items records for bytes / value / star tasks. */
static int encode_items(call *c, const mproc_value *items, bool single)
{
    mproc_buf b = {0};
    c->offs = malloc((c->n + 1) * sizeof *c->offs);
    if (!c->offs)
        return MPROC_ENOMEM;
    int rc = 0;
    for (size_t i = 0; i < c->n && !rc; i++) {
        const mproc_value *v = single ? items : mproc_value_at(items, i);
        c->offs[i] = b.len;
        uint32_t len = 0;
        size_t at = b.len;
        rc = mproc_buf_append(&b, &len, sizeof len);
        if (rc)
            break;
        rc = mproc_task_encode_input((mproc_task_kind)c->tkind, v, &b);
        if (rc == MPROC_EINVAL) {
            char why[256]; /* a copy: the message buffer is rewritten below */
            snprintf(why, sizeof why, "%s", mproc_errmsg());
            rc = mproc__fail(rc, "pool: %s (item %zu)", why, i);
        }
        if (!rc && b.len - at - sizeof len > UINT32_MAX)
            rc = mproc__fail(MPROC_EMSGSIZE, "pool: item %zu is larger than 4 GiB", i);
        if (!rc) {
            len = (uint32_t)(b.len - at - sizeof len);
            memcpy(b.data + at, &len, sizeof len);
        }
    }
    c->offs[c->n] = b.len;
    if (rc) {
        mproc__buf_free(&b);
        return rc;
    }
    c->items = b.data;
    c->items_len = b.len;
    return 0;
}

static void pending_remove(mproc_pool *p, call *c)
{
    if (!c->in_pending)
        return;
    if (c->pprev)
        c->pprev->pnext = c->pnext;
    else
        p->phead = c->pnext;
    if (c->pnext)
        c->pnext->pprev = c->pprev;
    else
        p->ptail = c->pprev;
    c->pnext = c->pprev = NULL;
    c->in_pending = false;
}

static void push_event(mproc_pool *p, int type, call *c, size_t done)
{
    if (p->nev == p->capev) {
        size_t nc = p->capev ? p->capev * 2 : 64;
        event *ne = realloc(p->ev, nc * sizeof *ne);
        if (!ne) {
            /* Out of memory: a finish must still happen, so do it now, locked. */
            if (type == 1) {
                pthread_mutex_lock(&c->mu);
                c->ready = true;
                pthread_cond_broadcast(&c->cv);
                pthread_mutex_unlock(&c->mu);
            }
            return;
        }
        p->ev = ne;
        p->capev = nc;
    }
    atomic_fetch_add(&c->refs, 1);
    p->ev[p->nev++] = (event){type, c, done};
}

/* Resolve a call (under pool->mu; takes c->mu). Ready comes after callbacks. */
static void resolve(mproc_pool *p, call *c, int err, const char *msg)
{
    pthread_mutex_lock(&c->mu);
    if (c->resolved) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    c->resolved = true;
    c->err = err;
    if (err && msg)
        c->errmsg = strdup(msg);
    if (!err && c->kind == CK_APPLY) {
        c->value = c->vals[0];
        c->vals[0] = NULL;
    } else if (!err && c->kind == CK_MAP) {
        mproc_value *l = mproc_value_list();
        for (size_t i = 0; l && i < c->n; i++) {
            if (mproc_value_append(l, c->vals[i]) != 0) {
                mproc_value_free(l);
                l = NULL;
            }
            c->vals[i] = NULL;
        }
        if (!l) {
            c->err = MPROC_ENOMEM;
            c->errmsg = strdup("pool: out of memory building the result list");
        }
        c->value = l;
    }
    if (c->kind == CK_IMAP || c->kind == CK_IMAP_UNORDERED) {
        c->ready = true; /* no callbacks: the iterator is the consumer */
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    if (c->kind != CK_IMAP && c->kind != CK_IMAP_UNORDERED)
        push_event(p, 1, c, 0);
    if (c->kind != CK_IMAP && c->kind != CK_IMAP_UNORDERED)
        pending_remove(p, c); /* failed early: carve no more */
}

/* imap: one item's outcome (takes c->mu). */
static void imap_item(mproc_pool *p, call *c, size_t i, int code, const char *msg, mproc_value *v)
{
    pthread_mutex_lock(&c->mu);
    if (c->done[i] || c->resolved) {
        pthread_mutex_unlock(&c->mu);
        mproc_value_free(v);
        return;
    }
    c->done[i] = 1;
    c->codes[i] = code;
    c->vals[i] = v;
    if (code && msg)
        c->msgs[i] = strdup(msg);
    if (c->fifo)
        c->fifo[c->fifo_tail++] = i;
    bool all = ++c->ndone == c->n;
    if (c->nwaiters)
        pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (all)
        resolve(p, c, 0, NULL);
}

/* One item's outcome for any item call. */
static void deliver(mproc_pool *p, call *c, size_t i, int code, const char *msg, mproc_value *v)
{
    if (code == 0 && !v && c->tkind != UK_ELEM) {
        code = MPROC_ENOMEM;
        msg = "pool: out of memory storing a result";
    }
    if (c->kind == CK_IMAP || c->kind == CK_IMAP_UNORDERED) {
        imap_item(p, c, i, code, msg, v);
        return;
    }
    if (c->resolved) {
        mproc_value_free(v);
        return;
    }
    if (code && c->keep_going) {
        v = mproc_value_error(mproc_errname(code), msg ? msg : mproc_strerror(code));
        code = v ? 0 : MPROC_ENOMEM;
    }
    if (code) {
        mproc_value_free(v);
        resolve(p, c, code, msg);
        return;
    }
    c->vals[i] = v;
    if (++c->ndone == c->n)
        resolve(p, c, 0, NULL);
}

/* Fail every item of the call that has no outcome yet. */
static void fail_call(mproc_pool *p, call *c, int code, const char *msg)
{
    if (c->failed_all)
        return;
    c->failed_all = true;
    if (c->kind == CK_IMAP || c->kind == CK_IMAP_UNORDERED) {
        for (size_t i = 0; i < c->n; i++)
            if (!c->done[i])
                imap_item(p, c, i, code, msg, NULL);
        pending_remove(p, c);
    } else {
        resolve(p, c, code, msg);
    }
}

/* Give back the arena memory a call allocated. */
static void array_release(mproc_pool *p, call *c)
{
    if (c->in_arena)
        arena_free(p, c->arena_off, c->arena_len);
    if (c->own_in)
        arena_free(p, c->arena_off, c->own_in);
    if (c->arg_len)
        arena_free(p, c->arg_off, c->arg_len);
    if (c->own_out)
        arena_free(p, c->out_off, c->own_out);
    c->in_arena = false;
    c->own_in = c->own_out = c->arg_len = 0;
}

/* Drop the pool's hold on a call once nothing of it is out. */
static void maybe_retire(mproc_pool *p, call *c)
{
    if (c->retired || c->units_out || c->in_pending)
        return;
    if (!c->resolved) /* items with no outcome and nothing left to run them */
        fail_call(p, c, p->state >= ST_TERMINATING ? MPROC_ECANCELED : MPROC_EWORKER,
                  p->state >= ST_TERMINATING ? "the pool was terminated"
                                             : "pool: the item was lost with its worker");
    c->retired = true;
    array_release(p, c);
    if (c->aprev)
        c->aprev->anext = c->anext;
    else
        p->ahead = c->anext;
    if (c->anext)
        c->anext->aprev = c->aprev;
    call_unref(c);
}

/* ------------------------------------------------------------ dispatch */

static unsigned depth(const mproc_pool *p)
{
    if (p->ewma <= 0)
        return 4;
    double d = DEPTH_TARGET / p->ewma;
    return d < DEPTH_MIN ? DEPTH_MIN : d > DEPTH_MAX ? DEPTH_MAX : (unsigned)d;
}

static bool can_take(const mproc_pool *p, const worker *w, unsigned lim)
{
    return w->alive && !w->dead_reported && !w->dead_pending && !w->full && !w->closing &&
           w->ninflight < lim && (p->o.maxtasksperchild == 0 || w->assigned < p->o.maxtasksperchild);
}

/* Put a unit that could not be sent back at the front of the re-send list. */
static void retry_push_front(mproc_pool *p, unit *u)
{
    u->next = p->rhead;
    if (!p->rhead)
        p->rtail = u;
    p->rhead = u;
}

static unit *unit_new(mproc_pool *p, call *c, size_t lo, size_t n)
{
    unit *u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    u->c = c;
    u->id = ++p->next_unit_id;
    u->lo = lo;
    u->n = n;
    c->units_out++;
    return u;
}

static void unit_drop(mproc_pool *p, unit *u)
{
    call *c = u->c;
    c->units_out--;
    free(u);
    maybe_retire(p, c);
}

/* The next unit to send: a re-queued one, else carve from the oldest call. */
static unit *next_unit(mproc_pool *p)
{
    while (p->rhead) {
        unit *u = p->rhead;
        p->rhead = u->next;
        if (!p->rhead)
            p->rtail = NULL;
        u->next = NULL;
        if (u->c->resolved || u->c->failed_all) {
            unit_drop(p, u); /* its call ended: nobody wants these items */
            continue;
        }
        return u;
    }
    while (p->phead) {
        call *c = p->phead;
        if (!c->started) {
            c->started = true;
            if (c->hooks.start && !c->hooks.start(c->hooks.ud)) {
                pending_remove(p, c);
                resolve(p, c, MPROC_ECANCELED, "cancelled");
                maybe_retire(p, c);
                continue;
            }
        }
        size_t lo = c->next_item, n = c->n - lo;
        if (n > c->chunksize)
            n = c->chunksize;
        unit *u = unit_new(p, c, lo, n);
        if (!u)
            return NULL; /* try again on the next result */
        c->next_item += n;
        if (c->next_item >= c->n)
            pending_remove(p, c);
        return u;
    }
    return NULL;
}

static int scratch_fit(mproc_pool *p, size_t n)
{
    if (n <= p->scratch_cap)
        return 0;
    size_t nc = p->scratch_cap ? p->scratch_cap : 4096;
    while (nc < n)
        nc *= 2;
    uint8_t *s = realloc(p->scratch, nc);
    if (!s)
        return MPROC_ENOMEM;
    p->scratch = s;
    p->scratch_cap = nc;
    return 0;
}

static int send_unit(mproc_pool *p, worker *w, unit *u)
{
    call *c = u->c;
    while (w->nfn_sent <= c->fn_id) {
        const mproc_buf *d = &p->fns[w->nfn_sent].def;
        int rc = mproc_queue_put_nowait(w->tq, d->data, d->len);
        if (rc)
            return rc;
        w->nfn_sent++;
    }
    pm_unit m = {.type = PM_UNIT, .kind = (uint8_t)c->tkind, .fn_id = c->fn_id, .id = u->id,
                 .n = (uint32_t)u->n};
    size_t extra = 0;
    const uint8_t *src = NULL;
    if (c->tkind == UK_ELEM) {
        m.a = c->arena_off + u->lo * c->in_size;
        m.b = c->out_off + u->lo * c->out_size;
        m.c = c->in_size;
        m.d = c->out_size;
        m.e = c->arg_off;
        m.f = c->arg_len;
    } else if (c->in_arena) {
        m.flags = UF_ARENA;
        m.a = c->arena_off + c->offs[u->lo];
        m.b = c->offs[u->lo + u->n] - c->offs[u->lo];
    } else {
        src = c->items + c->offs[u->lo];
        extra = c->offs[u->lo + u->n] - c->offs[u->lo];
    }
    int rc = scratch_fit(p, sizeof m + extra);
    if (rc)
        return rc;
    memcpy(p->scratch, &m, sizeof m);
    if (extra)
        memcpy(p->scratch + sizeof m, src, extra);
    rc = mproc_queue_put_nowait(w->tq, p->scratch, sizeof m + extra);
    if (rc)
        return rc;
    u->next = NULL;
    if (w->tail)
        w->tail->next = u;
    else
        w->head = u;
    w->tail = u;
    w->ninflight++;
    w->assigned++;
    return 0;
}

/* Hand out units, each to the least loaded worker that can take one, so
 * idle workers fill before any queue deepens. */
static void dispatch(mproc_pool *p)
{
    if (p->state >= ST_TERMINATING || p->broken)
        return;
    unsigned lim = depth(p);
    for (;;) {
        worker *best = NULL;
        for (int k = 0; k < p->n; k++) {
            worker *w = &p->w[(p->rr + (unsigned)k) % (unsigned)p->n];
            if (can_take(p, w, lim) && (!best || w->ninflight < best->ninflight))
                best = w;
        }
        if (!best)
            return;
        unit *u = next_unit(p);
        if (!u)
            return;
        if (send_unit(p, best, u) != 0) {
            best->full = true;
            retry_push_front(p, u);
            continue;
        }
        p->rr++;
    }
}

/* ------------------------------------------------------------- workers */

static int worker_start(mproc_pool *p, worker *w)
{
    mproc_args *a = NULL;
    mproc_queue_opts qo = {.capacity = TQ_CAPACITY};
    w->gen++;
    int rc = mproc_simple_queue_new(&w->tq, &qo);
    if (rc)
        return rc;
    pool_slot *s = (pool_slot *)p->abase + w->idx;
    atomic_store(&s->unit, 0);
    atomic_store(&s->item, 0);
    a = mproc_args_new();
    if (!a) {
        mproc_queue_close(w->tq);
        w->tq = NULL;
        return MPROC_ENOMEM;
    }
    rc = mproc_args_add_int(a, w->idx);
    if (!rc) rc = mproc_args_add_int(a, w->gen);
    if (!rc) rc = mproc_args_add_int(a, p->o.maxtasksperchild);
    if (!rc) rc = mproc_args_add_object(a, &mproc_queue_type, w->tq);
    if (!rc) rc = mproc_args_add_object(a, &mproc_queue_type, p->rq);
    if (!rc) rc = mproc_args_add_fd(a, p->afd);
    if (!rc) rc = mproc_args_add_int(a, (int64_t)p->asize);
    if (!rc) rc = mproc_args_add_bytes(a, p->initref.data, p->initref.len);
    for (size_t i = 0; !rc && p->initargs && i < p->initargs->n; i++) {
        const mproc_arg *x = &p->initargs->v[i];
        switch (x->kind) {
        case MPROC_ARG_INT: rc = mproc_args_add_int(a, x->u.i); break;
        case MPROC_ARG_DOUBLE: rc = mproc_args_add_double(a, x->u.d); break;
        case MPROC_ARG_STR: rc = mproc_args_add_str(a, x->u.s.p); break;
        case MPROC_ARG_BYTES: rc = mproc_args_add_bytes(a, x->u.s.p, x->u.s.n); break;
        case MPROC_ARG_FD: rc = mproc_args_add_fd(a, x->u.fd); break;
        case MPROC_ARG_OBJECT: rc = mproc_args_add_object(a, x->u.o.type, x->u.o.obj); break;
        default: rc = MPROC_EINVAL; break;
        }
    }
    /* Python's names: ForkPoolWorker-N, SpawnPoolWorker-N, ForkServerPoolWorker-N. */
    static const char *const kind[] = {"Fork", "Fork", "Spawn", "ForkServer"};
    mproc_start_method sm = mproc_context_start_method(p->o.ctx);
    char name[64];
    snprintf(name, sizeof name, "%sPoolWorker-%llu", kind[sm <= 3 ? sm : 0],
             (unsigned long long)p->st.workers_started + 1);
    mproc_process_opts po = {.name = name, .daemon = true, .ctx = p->o.ctx,
                             .start_timeout = p->o.start_timeout};
    if (!rc)
        rc = mproc_process_new(&w->p, mproc__pool_worker_main, a, &po);
    mproc_args_free(a);
    if (!rc) {
        rc = mproc_process_start(w->p);
        if (rc) {
            mproc_process_close(w->p);
            w->p = NULL;
        }
    }
    if (rc) {
        mproc_queue_close(w->tq);
        w->tq = NULL;
        return rc;
    }
    w->pid = mproc_process_pid(w->p);
    w->pidfd = mproc_process_sentinel(w->p);
    w->alive = true;
    w->dead_reported = false;
    w->dead_pending = w->pidfd < 0; /* ended before it could be watched */
    w->ready = w->full = w->closing = false;
    w->ninflight = 0;
    w->assigned = 0;
    w->nfn_sent = 0;
    p->st.workers_started++;
    return 0;
}

/* Reap and release a worker that ended; its exit code (or a description). */
static int worker_reap(worker *w)
{
    int code = MPROC_EXITCODE_NONE;
    if (w->p) {
        if (mproc_process_join(w->p, 5.0) != 0) {
            mproc_process_kill(w->p);
            mproc_process_join(w->p, MPROC_FOREVER);
        }
        code = mproc_process_exitcode(w->p);
        mproc_process_close(w->p);
        w->p = NULL;
    }
    if (w->tq) {
        mproc_queue_close(w->tq);
        w->tq = NULL;
    }
    w->alive = false;
    w->pidfd = -1;
    return code;
}

static void describe_death(char *buf, size_t len, const worker *w, int code)
{
    if (code < 0 && code != MPROC_EXITCODE_NONE)
        snprintf(buf, len, "worker %d (pid %d) died from signal %d (%s) while running this task",
                 w->idx + 1, (int)w->pid, -code, strsignal(-code));
    else
        snprintf(buf, len, "worker %d (pid %d) exited with code %d while running this task",
                 w->idx + 1, (int)w->pid, code);
}

static void break_pool(mproc_pool *p, const char *msg);

/* A worker is gone: pin the item it ran, give the rest back, replace it. */
static void handle_death(mproc_pool *p, worker *w)
{
    pool_slot *s = (pool_slot *)p->abase + w->idx;
    uint64_t su = atomic_load(&s->unit), si = atomic_load(&s->item);
    bool had_work = w->head != NULL, was_ready = w->ready;
    int code = worker_reap(w);
    char msg[POOL_MSG_MAX];
    describe_death(msg, sizeof msg, w, code);
    if (p->starting) { /* a worker that dies before it is ready fails pool_new */
        p->st.workers_died++;
        if (!p->init_err) {
            p->init_err = MPROC_ECHILD;
            snprintf(p->init_msg, sizeof p->init_msg, "worker %d (pid %d) ended during start-up (exit code %d)",
                     w->idx + 1, (int)w->pid, code);
        }
        pthread_cond_broadcast(&p->cv);
        return;
    }
    bool recycled = code == 0 && !had_work && p->o.maxtasksperchild &&
                    w->assigned >= p->o.maxtasksperchild;
    if (recycled)
        p->st.workers_recycled++;
    else if (had_work || code != 0)
        p->st.workers_died++;
    bool blamed = false;
    /* Units go back in their order, ahead of everything else. */
    unit *back = NULL, *back_tail = NULL;
#define PUSH_BACK(x)                      \
    do {                                  \
        (x)->next = NULL;                 \
        if (back_tail)                    \
            back_tail->next = (x);        \
        else                              \
            back = (x);                   \
        back_tail = (x);                  \
    } while (0)
    while (w->head) {
        unit *u = w->head;
        w->head = u->next;
        call *c = u->c;
        bool dead_call = c->resolved || c->failed_all;
        if (p->state >= ST_TERMINATING || p->broken || dead_call) {
            if (!dead_call)
                fail_call(p, c, p->broken ? MPROC_EWORKER : MPROC_ECANCELED,
                          p->broken ? p->broken_msg : "the pool was terminated");
            unit_drop(p, u);
            continue;
        }
        if (su == 0 || u->id != su || si >= u->n) {
            PUSH_BACK(u);
            continue;
        }
        size_t k = u->lo + si;
        blamed = true;
        if (c->tkind == UK_ELEM && c->kind == CK_ARRAY && !(p->o.retry_crashed && !u->retried)) {
            /* An element map fails as a whole on the first failed element. */
            p->st.items_failed++;
            resolve(p, c, MPROC_EWORKER, msg);
            unit_drop(p, u);
            continue;
        }
        if (si > 0) {
            unit *a = unit_new(p, c, u->lo, si);
            if (a)
                PUSH_BACK(a);
        }
        if (p->o.retry_crashed && !u->retried) {
            unit *r = unit_new(p, c, k, 1);
            if (r) {
                r->retried = true;
                p->st.items_retried++;
                PUSH_BACK(r);
            }
        } else {
            p->st.items_failed++;
            p->st.items_done++;
            deliver(p, c, k, MPROC_EWORKER, msg, NULL);
        }
        if (si + 1 < u->n) {
            unit *b = unit_new(p, c, k + 1, u->n - si - 1);
            if (b) {
                b->retried = u->retried;
                PUSH_BACK(b);
            }
        }
        unit_drop(p, u);
    }
#undef PUSH_BACK
    w->tail = NULL;
    w->ninflight = 0;
    if (back) {
        back_tail->next = p->rhead;
        if (!p->rhead)
            p->rtail = back_tail;
        p->rhead = back;
    }
    /* Workers that keep dying with units queued but no task running die of
     * something no retry will fix: stop rather than restart them forever. */
    if (had_work)
        p->unblamed = blamed ? 0 : p->unblamed + 1;
    /* Replacements that keep dying before they get ready (an initializer
     * that crashes) would restart forever, even in an idle pool; a worker
     * getting ready anywhere resets the count, so outside kills do not add up. */
    if (!was_ready)
        p->notready++;
    if ((p->unblamed >= 5 || p->notready >= 5) && p->state < ST_TERMINATING) {
        char m[POOL_MSG_MAX + 64];
        snprintf(m, sizeof m, "pool: workers keep dying %s (last: %s)",
                 p->notready >= 5 ? "before they are ready" : "outside tasks", msg);
        break_pool(p, m);
    }
    if (p->state >= ST_TERMINATING || p->broken)
        return;
    if (p->state == ST_CLOSED && !p->phead && !p->rhead) {
        bool busy = false;
        for (int i = 0; i < p->n; i++)
            busy |= p->w[i].alive && p->w[i].ninflight;
        if (!busy)
            return; /* closing with nothing left: no replacement needed */
    }
    int rc = worker_start(p, w);
    if (rc) {
        char m[POOL_MSG_MAX];
        snprintf(m, sizeof m, "pool: cannot start a replacement worker: %s (%s)", mproc_strerror(rc),
                 mproc_errmsg());
        break_pool(p, m);
    } else {
        wake_watcher(p);
    }
}

static void fail_everything(mproc_pool *p, int code, const char *msg)
{
    for (unit *u = p->rhead; u;) {
        unit *nx = u->next;
        u->next = NULL;
        unit_drop(p, u);
        u = nx;
    }
    p->rhead = p->rtail = NULL;
    for (call *c = p->ahead; c;) {
        call *nx = c->anext;
        fail_call(p, c, code, msg);
        pending_remove(p, c);
        maybe_retire(p, c);
        c = nx;
    }
}

static void break_pool(mproc_pool *p, const char *msg)
{
    if (p->broken)
        return;
    p->broken = true;
    p->broken_msg = strdup(msg);
    mproc_log(1, "%s", msg);
    fail_everything(p, MPROC_EWORKER, msg);
}

/* ----------------------------------------------------- results thread */

static int item_value(const call *c, const mproc_pool *p, const uint8_t *d, size_t n, mproc_value **v,
                      char *ebuf, size_t elen)
{
    int rc = mproc_task_decode_output((mproc_task_kind)c->tkind, d, n, &p->o.limits, v);
    if (rc)
        snprintf(ebuf, elen, "%s", mproc_errmsg());
    return rc;
}

static void on_result(mproc_pool *p, const pr_head *h, const uint8_t *body, size_t blen)
{
    if (h->worker >= (uint32_t)p->n)
        return;
    worker *w = &p->w[h->worker];
    unit *u = w->head;
    if (h->gen != w->gen || !u || u->id != h->id) {
        mproc_log(1, "pool: unexpected result from worker %u (unit %llu)", h->worker + 1,
                  (unsigned long long)h->id);
        return;
    }
    w->head = u->next;
    if (!w->head)
        w->tail = NULL;
    w->ninflight--;
    p->unblamed = 0;
    w->full = false;
    /* The worker's own time for the unit: what dispatch depth and polling
     * decisions need, free of the parent's wake-up delays. */
    double took = (double)h->ns / 1e9;
    p->ewma = p->ewma <= 0 ? took : p->ewma * 0.875 + took * 0.125;
    double per = took / (double)(u->n ? u->n : 1);
    double *ie = &p->item_ewma[u->c->tkind == UK_ELEM];
    *ie = *ie <= 0 ? per : *ie * 0.875 + per * 0.125;
    call *c = u->c;
    char ebuf[POOL_MSG_MAX];
    /* Progress first: a finish event this unit causes must come after it. */
    c->delivered += u->n;
    if (c->o.on_progress && c->kind != CK_APPLY && !c->resolved)
        push_event(p, 0, c, c->delivered);
    if (c->tkind == UK_ELEM) {
        p->st.items_done += u->n;
        if (h->code) {
            size_t ml = h->len < blen ? h->len : blen;
            snprintf(ebuf, sizeof ebuf, "%.*s", (int)ml, (const char *)body);
            p->st.items_failed++;
            resolve(p, c, MPROC_EREMOTE, ebuf);
        } else if (!c->resolved) {
            c->ndone += u->n;
            if (c->ndone == c->n) {
                if (c->own_out)
                    memcpy(c->user_out, p->abase + c->out_off, c->n * c->out_size);
                resolve(p, c, 0, NULL);
            }
        }
    } else {
        mproc_reader r = {body, body + blen};
        for (size_t k = 0; k < u->n; k++) {
            pr_item it;
            if ((size_t)(r.end - r.p) < sizeof it) {
                deliver(p, c, u->lo + k, MPROC_EPROTO, "pool: truncated result from worker", NULL);
                continue;
            }
            memcpy(&it, r.p, sizeof it);
            r.p += sizeof it;
            size_t n = it.len <= (size_t)(r.end - r.p) ? it.len : (size_t)(r.end - r.p);
            const uint8_t *d = r.p;
            r.p += n;
            p->st.items_done++;
            if (it.code) {
                p->st.items_failed++;
                snprintf(ebuf, sizeof ebuf, "%.*s", (int)n, (const char *)d);
                deliver(p, c, u->lo + k, MPROC_EREMOTE, ebuf, NULL);
                continue;
            }
            mproc_value *v = NULL;
            int rc = item_value(c, p, d, n, &v, ebuf, sizeof ebuf);
            if (rc) {
                p->st.items_failed++;
                deliver(p, c, u->lo + k, rc == MPROC_ENOMEM ? rc : MPROC_EPROTO, ebuf, NULL);
            } else {
                deliver(p, c, u->lo + k, 0, NULL, v);
            }
        }
    }
    unit_drop(p, u);
}

static void on_init(mproc_pool *p, const pr_head *h, const uint8_t *body, size_t blen)
{
    if (h->worker >= (uint32_t)p->n || p->w[h->worker].gen != h->gen)
        return;
    worker *w = &p->w[h->worker];
    if (h->code == 0) {
        w->ready = true;
        p->ready_count++;
        p->notready = 0;
        pthread_cond_broadcast(&p->cv);
        return;
    }
    size_t ml = h->len < blen ? h->len : blen;
    char m[POOL_MSG_MAX + 64];
    snprintf(m, sizeof m, "initializer failed in worker %d: %.*s", w->idx + 1, (int)ml,
             (const char *)body);
    if (p->starting) {
        if (!p->init_err) {
            p->init_err = MPROC_EREMOTE;
            snprintf(p->init_msg, sizeof p->init_msg, "%s", m);
        }
        pthread_cond_broadcast(&p->cv);
    } else {
        break_pool(p, m);
    }
}

static bool all_dead(const mproc_pool *p)
{
    for (int i = 0; i < p->n; i++)
        if (p->w[i].alive)
            return false;
    return true;
}

static void handle_msg(mproc_pool *p, const uint8_t *m, size_t len)
{
    pr_head h;
    if (len < sizeof h)
        return;
    memcpy(&h, m, sizeof h);
    const uint8_t *body = m + sizeof h;
    size_t blen = len - sizeof h;
    switch (h.type) {
    case PR_RESULT:
        on_result(p, &h, body, blen);
        break;
    case PR_INIT:
        on_init(p, &h, body, blen);
        break;
    case PR_DEATH:
        if (h.worker < (uint32_t)p->n && p->w[h.worker].gen == h.gen && p->w[h.worker].alive)
            handle_death(p, &p->w[h.worker]);
        break;
    default:
        break;
    }
}

/* Closing: once nothing is left, tell every worker to finish. */
static void check_close(mproc_pool *p)
{
    if (p->state != ST_CLOSED || p->phead || p->rhead)
        return;
    for (int i = 0; i < p->n; i++)
        if (p->w[i].alive && p->w[i].ninflight)
            return;
    for (int i = 0; i < p->n; i++) {
        worker *w = &p->w[i];
        if (w->alive && !w->closing) {
            w->closing = true;
            mproc_queue_shutdown(w->tq);
        }
    }
}

static void run_events(mproc_pool *p)
{
    pthread_mutex_lock(&p->mu);
    event *ev = p->ev;
    size_t nev = p->nev;
    p->ev = NULL;
    p->nev = p->capev = 0;
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < nev; i++) {
        call *c = ev[i].c;
        /* The user's callbacks are read under c->mu and counted while they
         * run, so a sync call that gives up can detach them and wait. */
        pthread_mutex_lock(&c->mu);
        mproc_call_opts o = c->o;
        c->cb_running++;
        pthread_mutex_unlock(&c->mu);
        if (ev[i].type == 0) {
            if (o.on_progress)
                o.on_progress(ev[i].done, c->n, o.ud);
        } else {
            if (c->err == 0 && o.on_success)
                o.on_success(c->value, o.ud);
            else if (c->err && o.on_error)
                o.on_error(c->err, c->errmsg ? c->errmsg : mproc_strerror(c->err), o.ud);
            if (c->hooks.done) {
                mproc_value *v = c->value;
                c->hooks.done(c->hooks.ud, c->err, c->errmsg, &v);
                if (v != c->value)
                    c->value = v;
            }
        }
        pthread_mutex_lock(&c->mu);
        c->cb_running--;
        if (ev[i].type == 1)
            c->ready = true;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        call_unref(c);
    }
    free(ev);
}

/* Will some worker likely finish its current unit within SPIN_MAX_TASK? Only
 * then is polling for its result worth a CPU (under p->mu). */
static bool next_result_soon(mproc_pool *p)
{
    for (int i = 0; i < p->n; i++) {
        const unit *u = p->w[i].head;
        if (!u)
            continue;
        double per = p->item_ewma[u->c->tkind == UK_ELEM];
        if (per * (double)u->n < SPIN_MAX_TASK)
            return true;
    }
    return false;
}

static void *results_main(void *arg)
{
    mproc_pool *p = arg;
    tl_pool_thread = p;
    uint8_t *buf = malloc(65536);
    size_t cap = buf ? 65536 : 0;
    for (;;) {
        double timeout = 1.0;
        pthread_mutex_lock(&p->mu);
        mproc__queue_set_spin(p->rq, next_result_soon(p) ? -1 : 0);
        if (p->state == ST_TERMINATING && !p->killed) {
            double rem = p->kill_at - mproc_monotonic();
            timeout = rem < 0 ? 0 : rem < timeout ? rem : timeout;
        }
        pthread_mutex_unlock(&p->mu);
        size_t len = 0;
        int rc = mproc_queue_get_into(p->rq, buf, cap, &len, 0); /* no clock read if queued */
        if (rc == MPROC_ETIMEDOUT)
            rc = mproc_queue_get_into(p->rq, buf, cap, &len, timeout);
        if (rc == MPROC_EMSGSIZE) {
            uint8_t *nb = realloc(buf, len);
            if (nb) {
                buf = nb;
                cap = len;
            }
            continue;
        }
        pthread_mutex_lock(&p->mu);
        /* Take what else is queued (up to a batch) under one lock hold. */
        for (int k = 0; rc == 0; k++) {
            handle_msg(p, buf, len);
            if (k == 63)
                break;
            rc = mproc_queue_get_into(p->rq, buf, cap, &len, 0);
        }
        /* A worker that ended before it could be watched: handled once the
         * queue is empty, so its last results are in. */
        for (int i = 0; rc != 0 && rc != MPROC_EMSGSIZE && i < p->n; i++) {
            worker *w = &p->w[i];
            if (w->alive && w->dead_pending) {
                w->dead_pending = false;
                handle_death(p, w);
            }
        }
        if (p->state == ST_TERMINATING) {
            fail_everything(p, MPROC_ECANCELED, "the pool was terminated");
            if (!p->killed && mproc_monotonic() >= p->kill_at) {
                p->killed = true;
                for (int i = 0; i < p->n; i++)
                    if (p->w[i].alive && p->w[i].p)
                        mproc_process_kill(p->w[i].p);
            }
        }
        dispatch(p); /* first: it drops cancelled calls that would hold up close */
        check_close(p);
        bool finish = p->state == ST_FINISHED || (p->state != ST_RUN && all_dead(p));
        if (finish) {
            p->state = ST_FINISHED;
            fail_everything(p, MPROC_ECANCELED, "the pool was terminated");
            pthread_cond_broadcast(&p->cv);
        }
        pthread_mutex_unlock(&p->mu);
        run_events(p);
        if (finish)
            break;
        if (cap > (64u << 20)) { /* do not keep a huge result's buffer */
            uint8_t *nb = realloc(buf, 65536);
            if (nb) {
                buf = nb;
                cap = 65536;
            }
        }
    }
    free(buf);
    wake_watcher(p);
    return NULL;
}

static void *watch_main(void *arg)
{
    mproc_pool *p = arg;
    struct pollfd *fds = calloc((size_t)p->n + 1, sizeof *fds);
    int *who = calloc((size_t)p->n + 1, sizeof *who);
    uint32_t *gens = calloc((size_t)p->n + 1, sizeof *gens);
    if (!fds || !who || !gens) {
        mproc_log(1, "pool: out of memory in the worker watcher");
        free(fds);
        free(who);
        free(gens);
        return NULL;
    }
    for (;;) {
        nfds_t nf = 0;
        pthread_mutex_lock(&p->mu);
        bool done = p->state == ST_FINISHED;
        fds[nf++] = (struct pollfd){.fd = p->evfd, .events = POLLIN};
        for (int i = 0; i < p->n; i++) {
            worker *w = &p->w[i];
            if (w->alive && !w->dead_reported && w->pidfd >= 0) {
                who[nf] = i;
                gens[nf] = w->gen;
                fds[nf++] = (struct pollfd){.fd = w->pidfd, .events = POLLIN};
            }
        }
        pthread_mutex_unlock(&p->mu);
        if (done)
            break;
        if (poll(fds, nf, -1) < 0 && errno != EINTR)
            break;
        if (fds[0].revents) {
            uint64_t v;
            ssize_t r = read(p->evfd, &v, sizeof v);
            (void)r;
        }
        for (nfds_t k = 1; k < nf; k++) {
            if (!fds[k].revents)
                continue;
            pthread_mutex_lock(&p->mu);
            worker *w = &p->w[who[k]];
            bool mine = w->alive && w->gen == gens[k] && !w->dead_reported;
            if (mine)
                w->dead_reported = true;
            pthread_mutex_unlock(&p->mu);
            if (mine) {
                pr_head h = {.type = PR_DEATH, .worker = (uint32_t)who[k], .gen = gens[k]};
                while (mproc_queue_put(p->rq, &h, sizeof h, 0.2) == MPROC_ETIMEDOUT) {
                    pthread_mutex_lock(&p->mu);
                    bool fin = p->state == ST_FINISHED;
                    pthread_mutex_unlock(&p->mu);
                    if (fin)
                        break;
                }
            }
        }
    }
    free(fds);
    free(who);
    free(gens);
    return NULL;
}

/* ------------------------------------------------------------ lifecycle */

static void pool_release(mproc_pool *p)
{
    for (int i = 0; p->w && i < p->n; i++) {
        worker *w = &p->w[i];
        if (w->p) {
            mproc_process_kill(w->p);
            worker_reap(w);
        } else if (w->tq) {
            mproc_queue_close(w->tq);
        }
    }
    free(p->w);
    mproc_queue_close(p->rq);
    if (p->abase)
        munmap(p->abase, p->asize);
    if (p->afd >= 0)
        close(p->afd);
    if (p->evfd >= 0)
        close(p->evfd);
    for (size_t i = 0; i < p->nfns; i++)
        mproc__buf_free(&p->fns[i].def);
    free(p->fns);
    free(p->freel);
    free(p->scratch);
    free(p->ev);
    free(p->broken_msg);
    mproc_args_free(p->initargs);
    mproc__buf_free(&p->initref);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->join_mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}

int mproc_pool_new(mproc_pool **out, const mproc_pool_opts *opts)
{
    if (!out)
        return mproc__fail(MPROC_EINVAL, "pool_new: NULL out");
    *out = NULL;
    mproc_pool_opts o = {0};
    if (opts)
        o = *opts;
    if (o.processes < 0)
        return mproc__fail(MPROC_EINVAL, "pool_new: processes must be >= 0 (got %d)", o.processes);
    if (o.processes == 0)
        o.processes = mproc_cpu_count();
    if (o.processes > 4096)
        return mproc__fail(MPROC_EINVAL, "pool_new: at most 4096 processes (got %d)", o.processes);
    mproc_pool *p = calloc(1, sizeof *p);
    if (!p)
        return MPROC_ENOMEM;
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->join_mu, NULL);
    pool__cond_init_mono(&p->cv);
    p->afd = p->evfd = -1;
    p->owner = self_pid();
    p->o = o;
    p->o.initargs = NULL;
    p->n = o.processes;
    p->asize = o.arena_size ? o.arena_size : ARENA_DEFAULT;
    p->starting = true;
    int rc = 0;
    if (o.initargs && (rc = mproc__args_copy(o.initargs, &p->initargs)))
        goto fail;
    if (o.initializer && (rc = mproc__modref_put(&p->initref, (const void *)o.initializer)))
        goto fail;
    p->w = calloc((size_t)p->n, sizeof *p->w);
    if (!p->w) {
        rc = MPROC_ENOMEM;
        goto fail;
    }
    for (int i = 0; i < p->n; i++) {
        p->w[i].idx = i;
        p->w[i].pidfd = -1;
    }
    if ((rc = arena_init(p)))
        goto fail;
    mproc_queue_opts rqo = {.capacity = RQ_CAPACITY};
    if ((rc = mproc_queue_new(&p->rq, &rqo)))
        goto fail;
    p->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->evfd < 0) {
        rc = mproc__fail(mproc__errno(), "pool_new: eventfd failed");
        goto fail;
    }
    for (int i = 0; i < p->n; i++) {
        if ((rc = worker_start(p, &p->w[i])))
            goto fail;
    }
    if (pthread_create(&p->thr, NULL, results_main, p) != 0) {
        rc = mproc__fail(MPROC_EAGAIN, "pool_new: cannot start the results thread");
        goto fail;
    }
    p->thr_started = true;
    if (pthread_create(&p->watch, NULL, watch_main, p) != 0) {
        rc = mproc__fail(MPROC_EAGAIN, "pool_new: cannot start the watcher thread");
        goto fail_threads;
    }
    p->watch_started = true;
    /* Wait for the initializers: a failing one fails the pool now. */
    mproc_deadline d = mproc_deadline_after(o.start_timeout > 0 ? o.start_timeout : o.start_timeout < 0 ? -1 : 60.0);
    pthread_mutex_lock(&p->mu);
    while (p->ready_count < p->n && !p->init_err && !p->broken) {
        if (!pool__cond_wait_until(&p->cv, &p->mu, d)) {
            p->init_err = MPROC_ETIMEDOUT;
            snprintf(p->init_msg, sizeof p->init_msg, "pool_new: workers did not get ready in time");
            break;
        }
    }
    rc = p->init_err ? p->init_err : p->broken ? MPROC_EWORKER : 0;
    char msg[POOL_MSG_MAX + 64];
    snprintf(msg, sizeof msg, "%s", p->init_err ? p->init_msg : p->broken_msg ? p->broken_msg : "");
    p->starting = false;
    pthread_mutex_unlock(&p->mu);
    if (rc) {
        mproc_pool_terminate(p);
        mproc_pool_free(p);
        return mproc__fail(rc, "%s", msg);
    }
    *out = p;
    return 0;
fail_threads:
    pthread_mutex_lock(&p->mu);
    p->state = ST_FINISHED;
    pthread_mutex_unlock(&p->mu);
    wake_results(p);
    pthread_join(p->thr, NULL);
    p->thr_started = false;
fail:
    {
        char emsg[POOL_MSG_MAX];
        snprintf(emsg, sizeof emsg, "%s", mproc_errmsg());
        pool_release(p);
        return mproc__fail(rc, "%s", emsg);
    }
}

int mproc_pool_close(mproc_pool *p)
{
    int rc = check_owner(p, "pool_close");
    if (rc)
        return rc;
    pthread_mutex_lock(&p->mu);
    if (p->state == ST_RUN)
        p->state = ST_CLOSED;
    pthread_mutex_unlock(&p->mu);
    wake_results(p);
    return 0;
}

int mproc_pool_terminate(mproc_pool *p)
{
    int rc = check_owner(p, "pool_terminate");
    if (rc)
        return rc;
    pthread_mutex_lock(&p->mu);
    if (p->state < ST_TERMINATING) {
        p->state = ST_TERMINATING;
        p->kill_at = mproc_monotonic() + KILL_GRACE;
        for (int i = 0; i < p->n; i++)
            if (p->w[i].alive && p->w[i].p)
                mproc_process_terminate(p->w[i].p);
    }
    pthread_mutex_unlock(&p->mu);
    wake_results(p);
    return 0;
}

int mproc_pool_join(mproc_pool *p, double timeout)
{
    int rc = check_owner(p, "pool_join");
    if (rc)
        return rc;
    if (tl_pool_thread == p)
        return mproc__fail(MPROC_EDEADLK, "pool_join: called from a pool callback");
    mproc_deadline d = mproc_deadline_after(timeout);
    pthread_mutex_lock(&p->mu);
    if (p->state == ST_RUN) {
        pthread_mutex_unlock(&p->mu);
        return mproc__fail(MPROC_ESTATE, "pool_join: call close or terminate first");
    }
    while (p->state != ST_FINISHED) {
        if (!pool__cond_wait_until(&p->cv, &p->mu, d)) {
            pthread_mutex_unlock(&p->mu);
            return mproc__fail(MPROC_ETIMEDOUT, "pool_join: workers still running");
        }
    }
    pthread_mutex_unlock(&p->mu);
    /* Every joiner returns only once the threads are gone. */
    pthread_mutex_lock(&p->join_mu);
    if (!p->threads_joined) {
        if (p->thr_started)
            pthread_join(p->thr, NULL);
        if (p->watch_started)
            pthread_join(p->watch, NULL);
        p->threads_joined = true;
    }
    pthread_mutex_unlock(&p->join_mu);
    return 0;
}

void mproc_pool_free(mproc_pool *p)
{
    if (!p || p->owner != self_pid())
        return;
    if (tl_pool_thread == p) {
        mproc_log(1, "pool_free: called from a pool callback; the pool is left running");
        return;
    }
    pthread_mutex_lock(&p->mu);
    bool finished = p->state == ST_FINISHED;
    pthread_mutex_unlock(&p->mu);
    if (!finished)
        mproc_pool_terminate(p);
    if (p->thr_started)
        mproc_pool_join(p, MPROC_FOREVER);
    pthread_mutex_lock(&p->mu);
    fail_everything(p, MPROC_ECANCELED, "the pool was terminated");
    pthread_mutex_unlock(&p->mu);
    run_events(p);
    pool_release(p);
}

int mproc_pool_processes(const mproc_pool *p)
{
    return p ? p->n : 0;
}

void mproc_pool_stats_get(mproc_pool *p, mproc_pool_stats *st)
{
    if (st)
        memset(st, 0, sizeof *st);
    if (!p || !st || p->owner != self_pid())
        return;
    pthread_mutex_lock(&p->mu);
    *st = p->st;
    pthread_mutex_unlock(&p->mu);
}

size_t mproc_pool_worker_pids(mproc_pool *p, pid_t *pids, size_t n)
{
    if (!p || !pids || p->owner != self_pid())
        return 0;
    size_t k = 0;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->n && k < n; i++)
        if (p->w[i].alive && !p->w[i].dead_reported)
            pids[k++] = p->w[i].pid;
    pthread_mutex_unlock(&p->mu);
    return k;
}

/* --------------------------------------------------------------- submit */

static int fn_register(mproc_pool *p, void *fn, uint32_t *id)
{
    for (size_t i = 0; i < p->nfns; i++)
        if (p->fns[i].fn == fn) {
            *id = (uint32_t)i;
            return 0;
        }
    fnent *nf = realloc(p->fns, (p->nfns + 1) * sizeof *nf);
    if (!nf)
        return MPROC_ENOMEM;
    p->fns = nf;
    fnent *e = &p->fns[p->nfns];
    memset(e, 0, sizeof *e);
    e->fn = fn;
    int rc = mproc__put_u8(&e->def, PM_DEF);
    if (!rc)
        rc = mproc__put_u32(&e->def, (uint32_t)p->nfns);
    if (!rc)
        rc = mproc__modref_put(&e->def, fn);
    if (rc) {
        mproc__buf_free(&e->def);
        return rc;
    }
    *id = (uint32_t)p->nfns++;
    return 0;
}

/* Hand a built call to the pool (consumes the pool's reference on failure). */
static int submit(mproc_pool *p, call *c, const char *what)
{
    int rc = 0;
    pthread_mutex_lock(&p->mu);
    if (p->state != ST_RUN)
        rc = mproc__fail(MPROC_ESTATE, "%s: the pool is %s", what,
                         p->state == ST_CLOSED ? "closed" : "terminated");
    else if (p->broken)
        rc = mproc__fail(MPROC_EWORKER, "%s: the pool is broken: %s", what, p->broken_msg);
    if (!rc)
        rc = fn_register(p, c->fn, &c->fn_id);
    if (!rc && c->tkind != UK_ELEM && c->items_len > INLINE_MAX) {
        rc = arena_alloc(p, c->items_len, &c->arena_off);
        if (!rc) {
            c->in_arena = true;
            c->arena_len = c->items_len;
            memcpy(p->abase + c->arena_off, c->items, c->items_len);
            free(c->items);
            c->items = NULL;
        }
    }
    if (rc) {
        pthread_mutex_unlock(&p->mu);
        atomic_fetch_sub(&c->refs, 1);
        return rc;
    }
    c->anext = p->ahead;
    if (p->ahead)
        p->ahead->aprev = c;
    p->ahead = c;
    if (c->n == 0) {
        resolve(p, c, 0, NULL);
        maybe_retire(p, c);
    } else {
        c->pprev = p->ptail;
        if (p->ptail)
            p->ptail->pnext = c;
        else
            p->phead = c;
        p->ptail = c;
        c->in_pending = true;
        dispatch(p);
    }
    pthread_mutex_unlock(&p->mu);
    if (c->n == 0)
        wake_results(p); /* its finish event runs on the results thread */
    return 0;
}

static int start_call(mproc_pool *p, int kind, mproc_task task, const mproc_value *items, bool single,
                      const mproc_call_opts *o, const pool_hooks *h, call **out, const char *what)
{
    int rc = check_owner(p, what);
    if (rc)
        return rc;
    void *fn = task.kind == MPROC_TASK_BYTES   ? (void *)task.fn.bytes
               : task.kind == MPROC_TASK_VALUE ? (void *)task.fn.value
               : task.kind == MPROC_TASK_STAR  ? (void *)task.fn.star
                                               : NULL;
    if (!fn)
        return mproc__fail(MPROC_EINVAL, "%s: no task function (or an unknown task kind)", what);
    if (!items && !single)
        return mproc__fail(MPROC_EINVAL, "%s: NULL items", what);
    if (!single && mproc_value_type(items) != MPROC_V_LIST)
        return mproc__fail(MPROC_EINVAL, "%s: items must be a list", what);
    if (single && task.kind == MPROC_TASK_STAR && mproc_value_type(items) != MPROC_V_LIST)
        return mproc__fail(MPROC_EINVAL, "%s: a star task needs a list argument", what);
    mproc_value *nil = NULL;
    if (single && !items) {
        if (task.kind == MPROC_TASK_BYTES)
            return mproc__fail(MPROC_EINVAL, "%s: a bytes task needs a bytes argument", what);
        items = nil = mproc_value_nil();
        if (!nil)
            return MPROC_ENOMEM;
    }
    size_t n = single ? 1 : mproc_value_len(items);
    call *c = call_new(p, kind, task.kind, fn, n, o);
    if (!c) {
        mproc_value_free(nil);
        return MPROC_ENOMEM;
    }
    if (h)
        c->hooks = *h;
    c->keep_going = h && !single;
    rc = encode_items(c, items, single);
    mproc_value_free(nil);
    if (!rc)
        rc = submit(p, c, what);
    else
        atomic_fetch_sub(&c->refs, 1);
    if (rc) {
        if (h)
            c->hooks.release = NULL; /* the caller keeps ud on failure */
        call_unref(c);
        return rc;
    }
    *out = c;
    return 0;
}

int mproc__pool_submit_hooked(mproc_pool *p, mproc_task task, const mproc_value *items, bool single,
                              size_t chunksize, const pool_hooks *h)
{
    mproc_call_opts o = {.chunksize = chunksize};
    call *c = NULL;
    int rc = start_call(p, single ? CK_APPLY : CK_MAP, task, items, single, &o, h, &c, "submit");
    if (rc)
        return rc;
    call_unref(c); /* the pool holds its own reference */
    return 0;
}

int mproc_pool_apply_async(mproc_pool *p, mproc_task task, const mproc_value *arg,
                           const mproc_call_opts *o, mproc_result **r)
{
    if (!r)
        return mproc__fail(MPROC_EINVAL, "pool_apply_async: NULL result pointer");
    return start_call(p, CK_APPLY, task, arg, true, o, NULL, r, "pool_apply_async");
}

int mproc_pool_map_async(mproc_pool *p, mproc_task task, const mproc_value *items,
                         const mproc_call_opts *o, mproc_result **r)
{
    if (!r)
        return mproc__fail(MPROC_EINVAL, "pool_map_async: NULL result pointer");
    return start_call(p, CK_MAP, task, items, false, o, NULL, r, "pool_map_async");
}

int mproc_pool_starmap_async(mproc_pool *p, mproc_star_fn fn, const mproc_value *items,
                             const mproc_call_opts *o, mproc_result **r)
{
    return mproc_pool_map_async(p, mproc_task_star(fn), items, o, r);
}

/* Wait for a call and move its value out (sync calls). */
/* A sync call that gives up: its callbacks must not run after it returns
 * (their ud may be on the caller's stack), so detach them and wait for one
 * that is running now. */
static void detach_callbacks(call *c)
{
    pthread_mutex_lock(&c->mu);
    c->o.on_success = NULL;
    c->o.on_error = NULL;
    c->o.on_progress = NULL;
    while (c->cb_running)
        pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

static int finish_sync(call *c, mproc_value **out, double timeout)
{
    int rc = mproc_result_take(c, out, timeout);
    if (rc == MPROC_ETIMEDOUT)
        detach_callbacks(c);
    mproc_result_free(c);
    return rc;
}

int mproc_pool_apply(mproc_pool *p, mproc_task task, const mproc_value *arg, mproc_value **out,
                     double timeout)
{
    if (!out)
        return mproc__fail(MPROC_EINVAL, "pool_apply: NULL out");
    *out = NULL;
    if (tl_pool_thread == p && timeout != 0)
        return mproc__fail(MPROC_EDEADLK, "pool_apply: called from a pool callback");
    call *c = NULL;
    int rc = start_call(p, CK_APPLY, task, arg, true, NULL, NULL, &c, "pool_apply");
    return rc ? rc : finish_sync(c, out, timeout);
}

int mproc_pool_map(mproc_pool *p, mproc_task task, const mproc_value *items,
                   const mproc_call_opts *o, mproc_value **out, double timeout)
{
    if (!out)
        return mproc__fail(MPROC_EINVAL, "pool_map: NULL out");
    *out = NULL;
    if (tl_pool_thread == p && timeout != 0)
        return mproc__fail(MPROC_EDEADLK, "pool_map: called from a pool callback");
    call *c = NULL;
    int rc = start_call(p, CK_MAP, task, items, false, o, NULL, &c, "pool_map");
    return rc ? rc : finish_sync(c, out, timeout);
}

int mproc_pool_starmap(mproc_pool *p, mproc_star_fn fn, const mproc_value *items,
                       const mproc_call_opts *o, mproc_value **out, double timeout)
{
    return mproc_pool_map(p, mproc_task_star(fn), items, o, out, timeout);
}

int mproc_pool_apply_bytes(mproc_pool *p, mproc_bytes_fn fn, const void *in, size_t len, void **out,
                           size_t *out_len, double timeout)
{
    if (!out || !out_len || (!in && len))
        return mproc__fail(MPROC_EINVAL, "pool_apply_bytes: NULL argument");
    *out = NULL;
    *out_len = 0;
    mproc_value *arg = mproc_value_bytes(in ? in : "", len);
    if (!arg)
        return MPROC_ENOMEM;
    mproc_value *v = NULL;
    int rc = mproc_pool_apply(p, mproc_task_bytes(fn), arg, &v, timeout);
    mproc_value_free(arg);
    if (rc)
        return rc;
    size_t n = 0;
    const void *d = mproc_value_as_bytes(v, &n);
    *out = malloc(n ? n : 1);
    if (!*out) {
        mproc_value_free(v);
        return MPROC_ENOMEM;
    }
    if (n)
        memcpy(*out, d, n);
    *out_len = n;
    mproc_value_free(v);
    return 0;
}

static int imap_start(mproc_pool *p, int kind, mproc_task task, const mproc_value *items,
                      const mproc_call_opts *o, mproc_imap **it, const char *what)
{
    if (!it)
        return mproc__fail(MPROC_EINVAL, "%s: NULL iterator pointer", what);
    mproc_imap *x = calloc(1, sizeof *x);
    if (!x)
        return MPROC_ENOMEM;
    int rc = start_call(p, kind, task, items, false, o, NULL, &x->c, what);
    if (rc) {
        free(x);
        return rc;
    }
    x->n = x->c->n;
    *it = x;
    return 0;
}

int mproc_pool_imap(mproc_pool *p, mproc_task task, const mproc_value *items,
                    const mproc_call_opts *o, mproc_imap **it)
{
    return imap_start(p, CK_IMAP, task, items, o, it, "pool_imap");
}

int mproc_pool_imap_unordered(mproc_pool *p, mproc_task task, const mproc_value *items,
                              const mproc_call_opts *o, mproc_imap **it)
{
    return imap_start(p, CK_IMAP_UNORDERED, task, items, o, it, "pool_imap_unordered");
}

int mproc_pool_map_array_async(mproc_pool *p, mproc_elem_fn fn, const void *in, size_t in_size,
                               void *out, size_t out_size, size_t n, const mproc_call_opts *o,
                               mproc_result **r)
{
    int rc = check_owner(p, "pool_map_array");
    if (rc)
        return rc;
    if (!fn || !r || (n && (!in || !out || !in_size || !out_size)))
        return mproc__fail(MPROC_EINVAL, "pool_map_array: NULL argument or zero element size");
    if ((in_size && n > SIZE_MAX / in_size) ||
        (out_size && n > SIZE_MAX / out_size))
        return mproc__fail(MPROC_EINVAL, "pool_map_array: array too large");
    call *c = call_new(p, CK_ARRAY, UK_ELEM, (void *)fn, n, o);
    if (!c)
        return MPROC_ENOMEM;
    c->in_size = in_size;
    c->out_size = out_size;
    c->user_out = out;
    pthread_mutex_lock(&p->mu);
    if (p->state != ST_RUN)
        rc = mproc__fail(MPROC_ESTATE, "pool_map_array: the pool is %s",
                         p->state == ST_CLOSED ? "closed" : "terminated");
    else if (p->broken)
        rc = mproc__fail(MPROC_EWORKER, "pool_map_array: the pool is broken: %s", p->broken_msg);
    /* Arrays already in the arena (mproc_pool_shared_alloc) are used in place;
     * others get an extent each, as does the arg. */
    size_t alen = o && o->arg ? o->arg_len : 0;
    bool in_here = arena_holds(p, in, n * in_size), out_here = arena_holds(p, out, n * out_size);
    if (!rc && n && !in_here && !(rc = arena_alloc(p, n * in_size, &c->arena_off)))
        c->own_in = n * in_size;
    if (!rc && n && in_here)
        c->arena_off = (uint64_t)((const uint8_t *)in - p->abase);
    if (!rc && n && alen && !(rc = arena_alloc(p, alen, &c->arg_off)))
        c->arg_len = alen;
    if (!rc && n && !out_here && !(rc = arena_alloc(p, n * out_size, &c->out_off)))
        c->own_out = n * out_size;
    if (!rc && n && out_here)
        c->out_off = (uint64_t)((uint8_t *)out - p->abase);
    if (rc)
        array_release(p, c);
    pthread_mutex_unlock(&p->mu);
    if (rc) {
        atomic_store(&c->refs, 1);
        call_unref(c);
        return rc;
    }
    if (c->own_in)
        memcpy(p->abase + c->arena_off, in, c->own_in);
    if (c->arg_len)
        memcpy(p->abase + c->arg_off, o->arg, c->arg_len);
    rc = submit(p, c, "pool_map_array");
    if (rc) {
        pthread_mutex_lock(&p->mu);
        array_release(p, c);
        pthread_mutex_unlock(&p->mu);
        call_unref(c);
        return rc;
    }
    *r = c;
    return 0;
}

int mproc_pool_map_array(mproc_pool *p, mproc_elem_fn fn, const void *in, size_t in_size, void *out,
                         size_t out_size, size_t n, const mproc_call_opts *o, double timeout)
{
    if (tl_pool_thread == p && timeout != 0)
        return mproc__fail(MPROC_EDEADLK, "pool_map_array: called from a pool callback");
    call *c;
    int rc = mproc_pool_map_array_async(p, fn, in, in_size, out, out_size, n, o, &c);
    if (rc)
        return rc;
    rc = mproc_result_get(c, NULL, timeout);
    if (rc == MPROC_ETIMEDOUT) {
        /* `out` is the caller's stack or heap: it must not be written after
         * we return, so detach the call from it before giving up. */
        pthread_mutex_lock(&p->mu);
        if (!c->resolved)
            resolve(p, c, MPROC_ETIMEDOUT, "map_array: timed out");
        pthread_mutex_unlock(&p->mu);
        detach_callbacks(c);
    }
    mproc_result_free(c);
    return rc;
}

/* --------------------------------------------------------------- results */

static int wait_ready(call *c, double timeout)
{
    if (c->ready)
        return 0;
    if (tl_pool_thread == c->owner_pool && timeout != 0)
        return mproc__fail(MPROC_EDEADLK, "result: waiting from a pool callback would deadlock");
    mproc_deadline d = mproc_deadline_after(timeout);
    while (!c->ready) {
        c->nwaiters++;
        bool ok = pool__cond_wait_until(&c->cv, &c->mu, d);
        c->nwaiters--;
        if (!ok && !c->ready)
            return mproc__fail(MPROC_ETIMEDOUT, "result: not ready in time");
    }
    return 0;
}

static int result_outcome(call *c)
{
    if (c->err)
        return mproc__fail(c->err, "%s", c->errmsg ? c->errmsg : mproc_strerror(c->err));
    return 0;
}

int mproc_result_get(mproc_result *c, const mproc_value **out, double timeout)
{
    if (out)
        *out = NULL;
    if (!c)
        return mproc__fail(MPROC_EINVAL, "result_get: NULL result");
    pthread_mutex_lock(&c->mu);
    int rc = wait_ready(c, timeout);
    if (!rc)
        rc = result_outcome(c);
    if (!rc && out)
        *out = c->value;
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int mproc_result_take(mproc_result *c, mproc_value **out, double timeout)
{
    if (out)
        *out = NULL;
    if (!c)
        return mproc__fail(MPROC_EINVAL, "result_take: NULL result");
    pthread_mutex_lock(&c->mu);
    int rc = wait_ready(c, timeout);
    if (!rc)
        rc = result_outcome(c);
    if (!rc && out) {
        *out = c->value;
        c->value = NULL;
        if (!*out && c->kind != CK_ARRAY) {
            *out = mproc_value_nil();
            if (!*out)
                rc = MPROC_ENOMEM;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int mproc_result_wait(mproc_result *c, double timeout)
{
    if (!c)
        return mproc__fail(MPROC_EINVAL, "result_wait: NULL result");
    pthread_mutex_lock(&c->mu);
    int rc = wait_ready(c, timeout);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

bool mproc_result_ready(mproc_result *c)
{
    if (!c)
        return false;
    pthread_mutex_lock(&c->mu);
    bool r = c->ready;
    pthread_mutex_unlock(&c->mu);
    return r;
}

int mproc_result_successful(mproc_result *c)
{
    if (!c)
        return mproc__fail(MPROC_EINVAL, "result_successful: NULL result");
    pthread_mutex_lock(&c->mu);
    int r = !c->ready ? MPROC_ESTATE : c->err == 0;
    pthread_mutex_unlock(&c->mu);
    return r == MPROC_ESTATE ? mproc__fail(MPROC_ESTATE, "result_successful: not ready") : r;
}

const char *mproc_result_error(mproc_result *c)
{
    if (!c)
        return NULL;
    pthread_mutex_lock(&c->mu);
    const char *m = c->ready && c->err ? (c->errmsg ? c->errmsg : mproc_strerror(c->err)) : NULL;
    pthread_mutex_unlock(&c->mu);
    return m;
}

void mproc_result_free(mproc_result *c)
{
    call_unref(c);
}

/* ------------------------------------------------------------------ imap */

static int imap_next_pool(mproc_imap *it, mproc_value **out, size_t *index, double timeout)
{
    call *c = it->c;
    mproc_deadline d = {0};
    bool have_d = false; /* read the clock only if we have to wait */
    pthread_mutex_lock(&c->mu);
    size_t i;
    for (;;) {
        if (c->cursor >= c->n) {
            pthread_mutex_unlock(&c->mu);
            return mproc__fail(MPROC_ECLOSED, "imap: no more items");
        }
        if (c->fifo) {
            if (c->fifo_head < c->fifo_tail) {
                i = c->fifo[c->fifo_head++];
                break;
            }
        } else if (c->done[c->cursor]) {
            i = c->cursor;
            break;
        }
        if (tl_pool_thread == c->owner_pool && timeout != 0) {
            pthread_mutex_unlock(&c->mu);
            return mproc__fail(MPROC_EDEADLK, "imap_next: waiting from a pool callback would deadlock");
        }
        if (!have_d) {
            d = mproc_deadline_after(timeout);
            have_d = true;
        }
        c->nwaiters++;
        bool ok = pool__cond_wait_until(&c->cv, &c->mu, d);
        c->nwaiters--;
        if (!ok) {
            pthread_mutex_unlock(&c->mu);
            return mproc__fail(MPROC_ETIMEDOUT, "imap_next: no result in time");
        }
    }
    c->cursor++;
    if (index)
        *index = i;
    int code = c->codes[i];
    free(it->err);
    it->err = NULL;
    int rc = 0;
    if (code) {
        it->err = c->msgs[i];
        c->msgs[i] = NULL;
        rc = mproc__fail(code, "%s", it->err ? it->err : mproc_strerror(code));
    } else {
        *out = c->vals[i];
        c->vals[i] = NULL;
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int mproc__imap_next_futures(mproc_imap *it, mproc_value **out, size_t *index, double timeout);
void mproc__imap_free_futures(mproc_imap *it);

int mproc_imap_next(mproc_imap *it, mproc_value **out, size_t *index, double timeout)
{
    if (!it || !out)
        return mproc__fail(MPROC_EINVAL, "imap_next: NULL argument");
    *out = NULL;
    return it->c ? imap_next_pool(it, out, index, timeout)
                 : mproc__imap_next_futures(it, out, index, timeout);
}

const char *mproc_imap_error(const mproc_imap *it)
{
    return it ? it->err : NULL;
}

size_t mproc_imap_length(const mproc_imap *it)
{
    return it ? it->n : 0;
}

void mproc_imap_free(mproc_imap *it)
{
    if (!it)
        return;
    if (it->c)
        call_unref(it->c);
    else
        mproc__imap_free_futures(it);
    free(it->err);
    free(it);
}
