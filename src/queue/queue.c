/* queue.c — Queue, SimpleQueue and JoinableQueue: a byte ring in one memfd
 * segment, shared by any number of producers and consumers.
 *
 * Two robust mutexes split the work: producers take put_mu, consumers take
 * get_mu, so between the two lock holders the ring is a single-producer
 * single-consumer ring and puts never contend with gets. A message is one
 * record (16-byte header + bytes, 8-aligned) or, when larger than a quarter of
 * the ring, a run of chunk records FIRST, middle..., LAST that the producer
 * streams while holding put_mu and one consumer drains while holding get_mu.
 *
 * Death safety rests on three rules:
 *   1. Each side changes shared state by one commit: it writes a journal
 *      (new position, new message count), then stores the position (the
 *      commit point), then the count. A holder that finds the mutex
 *      EOWNERDEAD redoes the count if the position matches the journal.
 *      So the ring is always made of whole records, and a message is either
 *      published or not, taken or not.
 *   2. A consumer only starts a message at a FIRST record and drops chunks it
 *      has no FIRST for (the rest of a message whose consumer died), and drops
 *      its partial message at an ABORT record or at a new FIRST (a producer
 *      that timed out or died mid-message). A producer keeps room for one
 *      ABORT header while it streams, so an abort can always be written.
 *   3. Nobody waits on a dead process: lock waits are robust-mutex waits; a
 *      consumer in the middle of a message whose producer stopped sending
 *      probes put_mu every PROBE_NS and, if it can take it, aborts the
 *      producer's message itself.
 * Sleeping: only a lock holder sleeps on its side's futex word, after a short
 * spin, with a `sleeping` flag the other side checks after each commit
 * (sequentially consistent, so no wakeup is lost); the idle path makes no
 * system call. */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../sync/sync_int.h"
#include "mproc/queue.h"

#define Q_MAGIC 0x4d505155u /* "MPQU" */
#define Q_VERSION 1u
#define Q_RING_OFF 4096u
#define Q_CL 64
#define HDR 16u
#define R_TAG 0x51520000u /* "QR" in the high half of `kind` */
#define R_FIRST 1u
#define R_LAST 2u
#define R_ABORT 4u
#define Q_MAX_MESSAGE_LIMIT ((uint64_t)1 << 40)
#define SPIN 200                     /* polls before sleeping */
#define SPIN_GAP 32                  /* pauses between polls */
#define NAP_NS 100000000             /* longest sleep between re-checks: 100 ms */
#define PROBE_NS 20000000            /* mid-message check on the producer: 20 ms */
#define NOWAIT_LOCK_NS 1000000       /* how long a *_nowait call waits for the side lock */

/* The header of each record. kind = R_TAG | flags. aux: the message length in
 * a FIRST chunk that is not also LAST; the message's sequence number (its
 * n_put) in a LAST record; 0 otherwise. */
typedef struct rec {
    uint32_t len; /* payload bytes of this record */
    uint32_t kind;
    uint64_t aux;
} rec;

/* A side's sleeping flag and futex word, on a line of their own. */
typedef struct wake {
    _Atomic uint32_t sleeping; /* the side's lock holder is (about to be) asleep */
    _Atomic uint32_t word;     /* bumped by the other side before FUTEX_WAKE */
} wake;

typedef struct q_st {
    /* Written at creation, read-only afterwards. */
    uint32_t magic, version;
    uint32_t joinable, ring_off;
    uint64_t capacity, maxsize, max_message;
    uint64_t lim_depth, lim_items, lim_bytes;
    /* Anyone. */
    _Atomic uint32_t closed;
    _Atomic uint32_t async_wake; /* every user is registered for membarrier (see kick) */
    _Atomic uint32_t join_sleepers;
    _Atomic uint32_t done_word;
    _Atomic uint64_t n_done; /* task_done calls */

    /* Producers: everything below is written under put_mu (n_put also raised
     * by consumers that find a published message not yet counted). */
    alignas(Q_CL) pthread_mutex_t put_mu;
    alignas(Q_CL) _Atomic uint64_t tail; /* bytes ever published */
    _Atomic uint64_t n_put;              /* messages ever published whole */
    uint64_t j_tail, j_nput;             /* journal of the last commit */
    uint64_t head_cache;                 /* a head seen earlier (<= head) */
    uint32_t tx_inmsg;                   /* a chunked message is in progress */
    alignas(Q_CL) wake tx;

    /* Consumers: written under get_mu. */
    alignas(Q_CL) pthread_mutex_t get_mu;
    alignas(Q_CL) _Atomic uint64_t head; /* bytes ever consumed */
    _Atomic uint64_t n_got;              /* LAST records ever consumed */
    uint64_t j_head, j_ngot;
    uint64_t tail_cache; /* a tail seen earlier (<= tail) */
    uint64_t nput_seen;  /* an n_put seen earlier (<= n_put) */
    alignas(Q_CL) wake rx;
} q_st;

_Static_assert(sizeof(q_st) <= Q_RING_OFF, "queue header must fit before the ring");

struct mproc_queue {
    mproc_shm *shm;
    q_st *st;
    uint8_t *ring;
    uint64_t cap, mask;
    _Atomic int spin; /* polls before a waiter of this handle sleeps */
    _Atomic int yields; /* then polls with sched_yield() between them */
    _Atomic int gap;    /* pauses between two spin polls */
    /* Asked between probes while a get waits for the rest of a message
     * (mproc__queue_set_give_up); NULL: wait while the producer lives. */
    bool (*give_up)(void *arg);
    void *give_up_arg;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline uint64_t rec_size(uint64_t len)
{
    return (HDR + len + 7) & ~(uint64_t)7;
}

/* Store `v` in *a unless it already holds as much (counts only grow). */
static void raise_to(_Atomic uint64_t *a, uint64_t v)
{
    uint64_t cur = atomic_load(a);
    while (cur < v && !atomic_compare_exchange_weak(a, &cur, v))
        ;
}

/* ------------------------------------------------------------- the ring */

static void ring_write(const mproc_queue *q, uint64_t pos, const void *src, size_t n)
{
    /* Callers bound n by the free space; a peer that scribbles on the
     * shared positions must still never make us write past the ring. */
    if (n > q->cap)
        n = (size_t)q->cap;
    size_t off = (size_t)(pos & q->mask), first = (size_t)q->cap - off;
    if (n <= first) {
        memcpy(q->ring + off, src, n);
    } else {
        memcpy(q->ring + off, src, first);
        memcpy(q->ring, (const uint8_t *)src + first, n - first);
    }
}

static void ring_read(const mproc_queue *q, uint64_t pos, void *dst, size_t n)
{
    size_t off = (size_t)(pos & q->mask), first = (size_t)q->cap - off;
    if (n <= first) {
        memcpy(dst, q->ring + off, n);
    } else {
        memcpy(dst, q->ring + off, first);
        memcpy((uint8_t *)dst + first, q->ring, n - first);
    }
}

/* --------------------------------------------------------- sleep and wake */

/* The handshake between a committer and a sleeper is Dekker's: the committer
 * stores its position then reads `sleeping`; the sleeper stores `sleeping`
 * then reads the position. Each side needs a full barrier between its store
 * and its load, or both may miss the other. On the committer's side that
 * barrier (an XCHG) would drain a store buffer full of freshly written ring
 * lines on every message, which costs more than everything else in a put. So
 * the barrier is asymmetric: committers use none, and a sleeper, which is
 * about to make a system call anyway, issues membarrier(GLOBAL_EXPEDITED),
 * which runs a full barrier on every CPU executing a registered process.
 * Every process that maps a queue registers (registration survives fork and
 * is redone after exec by the import); if registration or the barrier ever
 * fails, the queue falls back to a sequentially consistent store per commit
 * for everyone (`async_wake` = 0), and a wakeup missed during the switch costs
 * at most one NAP_NS. */
static int membarrier_state; /* 0 unknown, 1 registered, -1 unavailable (per process) */

static bool membarrier_register(void)
{
    if (membarrier_state == 0)
        membarrier_state =
            syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0 ? 1 : -1;
    return membarrier_state == 1;
}

/* Store a side's new position (the commit point). */
static inline void commit_store(const mproc_queue *q, _Atomic uint64_t *pos, uint64_t v)
{
    if (atomic_load_explicit(&q->st->async_wake, memory_order_relaxed))
        atomic_store_explicit(pos, v, memory_order_release);
    else
        atomic_store(pos, v);
}

/* Wake the other side's lock holder if it sleeps (right after commit_store). */
static inline void kick(const mproc_queue *q, wake *w)
{
    bool sleeping;
    if (atomic_load_explicit(&q->st->async_wake, memory_order_relaxed)) {
        atomic_signal_fence(memory_order_seq_cst); /* the sleeper's membarrier orders us */
        sleeping = atomic_load_explicit(&w->sleeping, memory_order_relaxed);
    } else {
        sleeping = atomic_load(&w->sleeping);
    }
    if (sleeping) {
        atomic_fetch_add(&w->word, 1);
        mproc__futex_wake(&w->word, 1);
    }
}

/* The sleeper's barrier between setting `sleeping` and re-checking. */
static void sleeper_barrier(const mproc_queue *q)
{
    q_st *st = q->st;
    if (atomic_load(&st->async_wake)) {
        if (syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0)
            return;
        atomic_store(&st->async_wake, 0);
    }
    atomic_thread_fence(memory_order_seq_cst);
}

/* Sleep on `word` until woken or `d`, but never longer than NAP_NS: a peer
 * killed between its commit and its FUTEX_WAKE cannot leave us asleep for
 * good. 0 (woken, or the nap ended: re-check) or MPROC_ETIMEDOUT at `d`. */
static int nap(_Atomic uint32_t *word, uint32_t v, mproc_deadline d)
{
    mproc_deadline cap = mproc_deadline_after(NAP_NS / 1e9);
    if (cap.ns < d.ns) {
        int rc = mproc__futex_wait(word, v, cap);
        return rc == MPROC_ETIMEDOUT ? 0 : rc;
    }
    return mproc__futex_wait(word, v, d);
}

typedef bool (*ready_fn)(const mproc_queue *q, uint64_t arg);

/* One wait step of a lock holder: spin a little, then sleep on `w` until
 * woken or deadline `d`, unless ready(q, arg) or (if `on_close`) the queue is
 * shut down. 0 (re-check), MPROC_ETIMEDOUT, or a hard futex error. */
static int park_until(const mproc_queue *q, wake *w, ready_fn ready, uint64_t arg, mproc_deadline d,
                      bool on_close)
{
    /* Poll with gaps: each poll pulls the other side's hot line away from it,
     * so a waiter polling flat out slows the side it waits for, and a consumer
     * that keeps catching up makes every message a cache-line round trip. A
     * gap of ~SPIN_GAP pauses lets a backlog form, which is then drained
     * without touching the producer's line. */
    int spin = atomic_load_explicit(&((mproc_queue *)q)->spin, memory_order_relaxed);
    int yields = atomic_load_explicit(&((mproc_queue *)q)->yields, memory_order_relaxed);
    int gap = atomic_load_explicit(&((mproc_queue *)q)->gap, memory_order_relaxed);
    for (int i = 0; i < spin; i++) {
        if (ready(q, arg))
            return 0;
        for (int k = 0; k < gap; k++)
            cpu_relax();
    }
    for (int i = 0; i < yields; i++) {
        if (ready(q, arg))
            return 0;
        sched_yield();
    }
    atomic_store(&w->sleeping, 1);
    sleeper_barrier(q); /* the flag before the re-check */
    uint32_t v = atomic_load(&w->word);
    int rc = 0;
    if (!ready(q, arg) && !(on_close && atomic_load(&q->st->closed)))
        rc = nap(&w->word, v, d);
    atomic_store(&w->sleeping, 0);
    return rc;
}

static int park(const mproc_queue *q, wake *w, ready_fn ready, uint64_t arg, mproc_deadline d)
{
    return park_until(q, w, ready, arg, d, true);
}

static void wake_all(wake *w)
{
    atomic_fetch_add(&w->word, 1);
    mproc__futex_wake(&w->word, INT_MAX);
}

static int corrupt(void)
{
    return mproc__fail(MPROC_EPROTO, "queue: the ring holds a malformed record "
                                     "(shared memory written by something else?)");
}

/* ------------------------------------------------------------ side locks */

static void tx_repair(mproc_queue *q);
static void rx_repair(mproc_queue *q);

/* Take a side's mutex by deadline `d` (nowait: a short grace, so that a
 * holder in the middle of a copy does not make the queue look empty/full).
 * On EOWNERDEAD the state is repaired and the lock is ours: 0. */
static int side_lock(mproc_queue *q, pthread_mutex_t *mu, mproc_deadline d, bool nowait)
{
    int r = pthread_mutex_trylock(mu);
    if (r == EBUSY) {
        if (nowait)
            d.ns = mproc__now_ns() + NOWAIT_LOCK_NS;
        if (d.ns == INT64_MAX) {
            r = pthread_mutex_lock(mu);
        } else {
            struct timespec ts = mproc__deadline_ts(d);
            r = pthread_mutex_clocklock(mu, CLOCK_MONOTONIC, &ts);
        }
    }
    if (r == EOWNERDEAD) {
        pthread_mutex_consistent(mu);
        if (mu == &q->st->put_mu)
            tx_repair(q);
        else
            rx_repair(q);
        return 0;
    }
    if (r == ETIMEDOUT)
        return MPROC_ETIMEDOUT;
    if (r)
        return mproc__fail(r == ENOTRECOVERABLE ? MPROC_ENOTRECOVERABLE : -r,
                           "queue: cannot take the queue's lock");
    return 0;
}

/* ------------------------------------------------------------- producers */

static inline uint64_t tx_free(mproc_queue *q)
{
    q_st *st = q->st;
    uint64_t tail = atomic_load_explicit(&st->tail, memory_order_relaxed);
    uint64_t used = tail - st->head_cache; /* shared memory: may be scribbled on */
    return used <= q->cap ? q->cap - used : 0;
}

/* Free bytes now (refreshing the cached head); 0 if the positions are
 * impossible (memory scribbled on), so nothing is ever written past the ring. */
static inline uint64_t tx_free_now(mproc_queue *q)
{
    q_st *st = q->st;
    uint64_t head = atomic_load_explicit(&st->head, memory_order_acquire);
    uint64_t tail = atomic_load_explicit(&st->tail, memory_order_relaxed);
    if (tail - head > q->cap)
        return 0;
    st->head_cache = head;
    return tx_free(q);
}

/* Publish the ring up to new_tail and n_put = nput: one commit (rule 1). */
static void tx_commit(mproc_queue *q, uint64_t new_tail, uint64_t nput)
{
    q_st *st = q->st;
    st->j_tail = new_tail;
    st->j_nput = nput;
    commit_store(q, &st->tail, new_tail);
    if (nput != atomic_load_explicit(&st->n_put, memory_order_relaxed))
        atomic_store_explicit(&st->n_put, nput, memory_order_release);
    kick(q, &st->rx);
}

static void tx_write(mproc_queue *q, uint32_t len, uint32_t flags, uint64_t aux, const void *data)
{
    uint64_t tail = atomic_load_explicit(&q->st->tail, memory_order_relaxed);
    rec h = {len, R_TAG | flags, aux};
    ring_write(q, tail, &h, HDR);
    if (len)
        ring_write(q, tail + HDR, data, len);
}

/* Abort the chunked message in progress, if any (space for the header was
 * kept free while streaming). */
static void tx_abort(mproc_queue *q)
{
    q_st *st = q->st;
    if (!st->tx_inmsg)
        return;
    if (tx_free_now(q) >= HDR) {
        tx_write(q, 0, R_ABORT, 0, NULL);
        tx_commit(q, atomic_load_explicit(&st->tail, memory_order_relaxed) + HDR,
                  atomic_load(&st->n_put));
    }
    st->tx_inmsg = 0;
}

/* After a producer died holding put_mu: finish its commit, end its message. */
static void tx_repair(mproc_queue *q)
{
    q_st *st = q->st;
    if (atomic_load(&st->tail) == st->j_tail)
        raise_to(&st->n_put, st->j_nput);
    atomic_store(&st->tx.sleeping, 0);
    st->head_cache = atomic_load(&st->head);
    tx_abort(q);
    wake_all(&st->rx); /* in case the dead one committed but never woke them */
}

static bool ready_space(const mproc_queue *q, uint64_t need)
{
    const q_st *st = q->st;
    uint64_t used = atomic_load_explicit(&st->tail, memory_order_relaxed) -
                    atomic_load_explicit(&st->head, memory_order_acquire);
    return used <= q->cap && q->cap - used >= need;
}

static bool ready_slot(const mproc_queue *q, uint64_t unused)
{
    MPROC_UNUSED(unused);
    const q_st *st = q->st;
    int64_t n = (int64_t)(atomic_load(&st->n_put) - atomic_load(&st->n_got));
    return n < (int64_t)st->maxsize;
}

/* Wait (holding put_mu) until ready(q, arg): 0, MPROC_ETIMEDOUT, MPROC_ECLOSED. */
static int tx_wait(mproc_queue *q, ready_fn ready, uint64_t arg, mproc_deadline d)
{
    for (;;) {
        if (atomic_load(&q->st->closed))
            return mproc__fail(MPROC_ECLOSED, "queue: shut down");
        if (ready(q, arg))
            return 0;
        if (mproc_deadline_expired(d))
            return MPROC_ETIMEDOUT;
        int rc = park(q, &q->st->tx, ready, arg, d);
        if (rc && rc != MPROC_ETIMEDOUT)
            return rc;
    }
}

/* Wait for `need` free bytes, cheaply when the cached head already says so. */
static int tx_wait_space(mproc_queue *q, uint64_t need, mproc_deadline d)
{
    if (tx_free(q) >= need || tx_free_now(q) >= need) {
        if (atomic_load_explicit(&q->st->closed, memory_order_relaxed))
            return mproc__fail(MPROC_ECLOSED, "queue: shut down");
        return 0;
    }
    int rc = tx_wait(q, ready_space, need, d);
    if (!rc && tx_free_now(q) < need)
        rc = corrupt(); /* ready_space said yes: only impossible positions get here */
    return rc;
}

/* A message larger than a quarter of the ring, as chunks (rule 2). */
static int put_chunked(mproc_queue *q, const uint8_t *data, uint64_t len, mproc_deadline d)
{
    q_st *st = q->st;
    uint64_t quarter = q->cap / 4, off = 0, seq = atomic_load(&st->n_put) + 1;
    bool first = true;
    while (off < len || first) {
        uint64_t rem = len - off, whole = rec_size(rem);
        /* The last piece needs just its record; any other chunk a useful size
         * plus the room an ABORT may need. */
        int rc = tx_wait_space(q, whole <= quarter ? whole : quarter + HDR, d);
        if (rc) {
            tx_abort(q);
            return rc;
        }
        uint64_t free = tx_free(q), tail = atomic_load_explicit(&st->tail, memory_order_relaxed);
        if (whole <= free) { /* the rest fits: the LAST record */
            uint32_t flags = R_LAST | (first ? R_FIRST : 0);
            tx_write(q, (uint32_t)rem, flags, seq, data + off);
            tx_commit(q, tail + whole, seq);
            st->tx_inmsg = 0;
            return 0;
        }
        if (free < quarter + HDR) { /* tx_wait_space said more: positions scribbled on */
            tx_abort(q);
            return corrupt();
        }
        uint64_t n = (free - 2 * HDR) & ~(uint64_t)7;
        if (first)
            st->tx_inmsg = 1; /* before the commit: a repair then aborts */
        tx_write(q, (uint32_t)n, first ? R_FIRST : 0, first ? len : 0, data + off);
        tx_commit(q, tail + rec_size(n), seq - 1);
        off += n;
        first = false;
    }
    return 0; /* not reached: the loop ends with the LAST record */
}

static int put_locked(mproc_queue *q, const void *data, size_t len, mproc_deadline d)
{
    q_st *st = q->st;
    int rc;
    if (st->maxsize && (rc = tx_wait(q, ready_slot, 0, d)))
        return rc;
    uint64_t size = rec_size(len);
    if (size > q->cap / 4) {
        /* With no time to wait, send it only if it fits whole: chunks that
         * would be aborted at once are wasted work for consumers. */
        if (mproc_deadline_expired(d) && tx_free_now(q) < size)
            return MPROC_ETIMEDOUT;
        return put_chunked(q, data, len, d);
    }
    if ((rc = tx_wait_space(q, size, d)))
        return rc;
    uint64_t seq = atomic_load_explicit(&st->n_put, memory_order_relaxed) + 1;
    tx_write(q, (uint32_t)len, R_FIRST | R_LAST, seq, data);
    tx_commit(q, atomic_load_explicit(&st->tail, memory_order_relaxed) + size, seq);
    return 0;
}

static int q_put(mproc_queue *q, const void *data, size_t len, mproc_deadline d, bool nowait)
{
    if (!q || (!data && len))
        return mproc__fail(MPROC_EINVAL, "queue_put: NULL queue or data");
    q_st *st = q->st;
    if (len > st->max_message)
        return mproc__fail(MPROC_EMSGSIZE, "queue_put: %zu bytes exceed the queue's max_message (%llu)",
                           len, (unsigned long long)st->max_message);
    if (atomic_load_explicit(&st->closed, memory_order_relaxed))
        return mproc__fail(MPROC_ECLOSED, "queue_put: the queue is shut down");
    int rc = side_lock(q, &st->put_mu, d, nowait);
    if (!rc) {
        rc = put_locked(q, data, len, d);
        pthread_mutex_unlock(&st->put_mu);
    }
    if (rc == MPROC_ETIMEDOUT)
        rc = nowait ? mproc__fail(MPROC_EFULL, "queue_put_nowait: the queue is full")
                    : mproc__fail(MPROC_ETIMEDOUT, "queue_put: no room before the timeout");
    return rc;
}

/* ------------------------------------------------------------- consumers */

static void rx_commit(mproc_queue *q, uint64_t new_head, uint64_t ngot)
{
    q_st *st = q->st;
    st->j_head = new_head;
    st->j_ngot = ngot;
    commit_store(q, &st->head, new_head);
    if (ngot != atomic_load_explicit(&st->n_got, memory_order_relaxed))
        atomic_store_explicit(&st->n_got, ngot, memory_order_release);
    kick(q, &st->tx);
}

/* After a consumer died holding get_mu: finish its commit. Chunks of the
 * message it was reading are dropped by the next get (rule 2). */
static void rx_repair(mproc_queue *q)
{
    q_st *st = q->st;
    if (atomic_load(&st->head) == st->j_head)
        atomic_store(&st->n_got, st->j_ngot);
    atomic_store(&st->rx.sleeping, 0);
    st->tail_cache = atomic_load(&st->head);
    st->nput_seen = 0;
    wake_all(&st->tx);
}

/* A consumer taking message number `seq` makes sure n_put counts it, in case
 * its producer died between the commit and the count. The count is read only
 * when the last one seen is behind (not once per message: that line is hot). */
static inline void count_put(q_st *st, uint64_t seq)
{
    if (seq <= st->nput_seen)
        return;
    raise_to(&st->n_put, seq);
    st->nput_seen = atomic_load_explicit(&st->n_put, memory_order_relaxed);
}

static bool ready_data(const mproc_queue *q, uint64_t head)
{
    return atomic_load_explicit(&q->st->tail, memory_order_acquire) != head;
}

/* Where a message goes: the caller's buffer, or a malloc'd one. */
typedef struct sink {
    uint8_t *buf; /* caller's, or NULL to allocate */
    size_t cap;
    uint8_t *out; /* result */
    size_t len;
} sink;

/* Holding get_mu in the middle of a chunked message, with the ring empty:
 * wait for the next chunk, past the caller's deadline, while its producer
 * lives (rule 3) and the handle's give_up hook does not say stop. 0: data
 * came; 1: the producer is gone without a word (drop the partial message);
 * MPROC_ECANCELED: given up; <0: hard error. */
static int rx_wait_midmsg(mproc_queue *q, uint64_t head)
{
    q_st *st = q->st;
    for (;;) {
        if (ready_data(q, head))
            return 0;
        /* Shutdown does not end a message in progress: its producer ends it. */
        int rc = park_until(q, &st->rx, ready_data, head, mproc_deadline_after(PROBE_NS / 1e9), false);
        if (rc == 0)
            continue;
        if (rc != MPROC_ETIMEDOUT)
            return rc;
        if (q->give_up && q->give_up(q->give_up_arg))
            return mproc__fail(MPROC_ECANCELED, "queue_get: gave up waiting for the rest of a "
                                                "message (its producer stalls)");
        /* Quiet for a while: is a producer still holding put_mu? */
        int r = pthread_mutex_trylock(&st->put_mu);
        if (r == EBUSY)
            continue;
        if (r == EOWNERDEAD) {
            pthread_mutex_consistent(&st->put_mu);
            tx_repair(q); /* writes the ABORT we are waiting for */
        } else if (r) {
            return mproc__fail(-r, "queue: cannot check on the producer");
        } else {
            tx_abort(q);
        }
        pthread_mutex_unlock(&st->put_mu);
        if (!ready_data(q, head))
            return 1;
    }
}

/* Wait (holding get_mu) for a record at `head`: 0, MPROC_ETIMEDOUT, MPROC_ECLOSED. */
static int rx_wait(mproc_queue *q, uint64_t head, mproc_deadline d)
{
    for (;;) {
        if (ready_data(q, head))
            return 0;
        if (atomic_load(&q->st->closed))
            return mproc__fail(MPROC_ECLOSED, "queue_get: the queue is shut down and empty");
        if (mproc_deadline_expired(d))
            return MPROC_ETIMEDOUT;
        int rc = park(q, &q->st->rx, ready_data, head, d);
        if (rc && rc != MPROC_ETIMEDOUT)
            return rc;
    }
}

static int get_locked(mproc_queue *q, sink *s, mproc_deadline d)
{
    q_st *st = q->st;
    bool inmsg = false;
    uint64_t total = 0, got = 0;
    uint8_t *dst = NULL;
    int rc = 0;
    for (;;) {
        uint64_t head = atomic_load_explicit(&st->head, memory_order_relaxed);
        uint64_t avail = st->tail_cache - head;
        if (!avail || avail > q->cap) {
            st->tail_cache = atomic_load_explicit(&st->tail, memory_order_acquire);
            avail = st->tail_cache - head;
        }
        if (avail > q->cap) {
            rc = corrupt();
            break;
        }
        if (!avail) {
            rc = inmsg ? rx_wait_midmsg(q, head) : rx_wait(q, head, d);
            if (rc == 1) { /* producer gone mid-message */
                inmsg = false;
                rc = 0;
            }
            if (rc)
                break;
            continue;
        }
        rec h;
        ring_read(q, head, &h, HDR);
        uint32_t flags = h.kind & 0xffffu;
        if ((h.kind & 0xffff0000u) != R_TAG || flags > R_ABORT || rec_size(h.len) > avail) {
            rc = corrupt();
            break;
        }
        uint64_t next = head + rec_size(h.len), ngot = atomic_load(&st->n_got);
        if (flags & R_ABORT) { /* the producer gave up on its message */
            inmsg = false;
            rx_commit(q, next, ngot);
            continue;
        }
        if (flags & R_FIRST) {
            inmsg = false; /* a partial one before it was abandoned by its producer */
            total = (flags & R_LAST) ? h.len : h.aux;
            if (total > st->max_message || h.len > total || (!(flags & R_LAST) && h.len == total)) {
                rc = corrupt();
                break;
            }
            if (!s->buf) {
                free(dst);
                if (!(dst = malloc(total ? total : 1))) {
                    rc = mproc__fail(MPROC_ENOMEM, "queue_get: no memory for a %llu-byte message",
                                     (unsigned long long)total);
                    break;
                }
            } else if (total > s->cap) { /* left at the head, as BufferTooShort */
                s->len = total;
                return mproc__fail(MPROC_EMSGSIZE,
                                   "queue_get_into: the message (%llu bytes) exceeds the buffer (%zu)",
                                   (unsigned long long)total, s->cap);
            } else {
                dst = s->buf;
            }
            got = 0;
            inmsg = true;
        } else if (!inmsg) { /* the rest of a message whose reader died: drop it */
            if (flags & R_LAST) {
                if (h.aux != ngot + 1) {
                    rc = corrupt();
                    break;
                }
                count_put(st, h.aux);
                ngot++;
            }
            rx_commit(q, next, ngot);
            continue;
        } else if (h.len > total - got) {
            rc = corrupt();
            break;
        }
        ring_read(q, head + HDR, dst + got, h.len);
        got += h.len;
        if (flags & R_LAST) {
            if (got != total || h.aux != ngot + 1) {
                rc = corrupt();
                break;
            }
            count_put(st, h.aux);
            rx_commit(q, next, ngot + 1);
            s->out = dst;
            s->len = (size_t)total;
            return 0;
        }
        rx_commit(q, next, ngot);
    }
    if (!s->buf)
        free(dst);
    return rc;
}

static int q_get(mproc_queue *q, sink *s, mproc_deadline d, bool nowait)
{
    if (!q)
        return mproc__fail(MPROC_EINVAL, "queue_get: NULL queue");
    q_st *st = q->st;
    int rc = side_lock(q, &st->get_mu, d, nowait);
    if (!rc) {
        rc = get_locked(q, s, d);
        pthread_mutex_unlock(&st->get_mu);
    }
    if (rc == MPROC_ETIMEDOUT)
        rc = nowait ? mproc__fail(MPROC_EEMPTY, "queue_get_nowait: the queue is empty")
                    : mproc__fail(MPROC_ETIMEDOUT, "queue_get: no message before the timeout");
    return rc;
}

/* ------------------------------------------------------------ public API */

static int q_wrap(mproc_shm *shm, mproc_queue **out)
{
    mproc_queue *q = malloc(sizeof *q);
    if (!q)
        return MPROC_ENOMEM;
    q->shm = shm;
    q->st = mproc_shm_buf(shm);
    q->ring = (uint8_t *)q->st + q->st->ring_off;
    q->cap = q->st->capacity;
    q->mask = q->cap - 1;
    atomic_init(&q->spin, SPIN);
    atomic_init(&q->yields, 0);
    atomic_init(&q->gap, SPIN_GAP);
    q->give_up = NULL;
    q->give_up_arg = NULL;
    if (!membarrier_register())
        atomic_store(&q->st->async_wake, 0);
    *out = q;
    return 0;
}

static int q_new(mproc_queue **out, const mproc_queue_opts *o, bool joinable)
{
    static const mproc_queue_opts defaults;
    if (!out)
        return mproc__fail(MPROC_EINVAL, "queue_new: out is NULL");
    if (!o)
        o = &defaults;
    size_t want = o->capacity ? o->capacity : MPROC_QUEUE_DEFAULT_CAPACITY;
    if (want > MPROC_QUEUE_MAX_CAPACITY)
        return mproc__fail(MPROC_EINVAL, "queue_new: capacity %zu exceeds %zu", want,
                           MPROC_QUEUE_MAX_CAPACITY);
    uint64_t cap = MPROC_QUEUE_MIN_CAPACITY;
    while (cap < want)
        cap <<= 1;
    uint64_t maxmsg = o->max_message ? o->max_message : MPROC_QUEUE_MAX_MESSAGE;
    if (maxmsg > Q_MAX_MESSAGE_LIMIT)
        return mproc__fail(MPROC_EINVAL, "queue_new: max_message exceeds 2^40");
    mproc_shm *shm;
    int rc = mproc_shm_new(&shm, Q_RING_OFF + cap);
    if (rc)
        return rc;
    q_st *st = mproc_shm_buf(shm);
    if ((rc = mproc__robust_mutex_init(&st->put_mu, PTHREAD_MUTEX_NORMAL)) ||
        (rc = mproc__robust_mutex_init(&st->get_mu, PTHREAD_MUTEX_NORMAL))) {
        mproc_shm_close(shm);
        return rc;
    }
    st->version = Q_VERSION;
    st->joinable = joinable;
    st->ring_off = Q_RING_OFF;
    st->capacity = cap;
    st->maxsize = o->maxsize;
    st->max_message = maxmsg;
    st->lim_depth = o->limits.max_depth;
    st->lim_items = o->limits.max_items;
    st->lim_bytes = o->limits.max_bytes;
    st->async_wake = 1; /* until some user cannot register */
    st->magic = Q_MAGIC;
    rc = q_wrap(shm, out);
    if (rc)
        mproc_shm_close(shm);
    return rc;
}

int mproc_queue_new(mproc_queue **out, const mproc_queue_opts *opts)
{
    return q_new(out, opts, false);
}

int mproc_simple_queue_new(mproc_queue **out, const mproc_queue_opts *opts)
{
    if (opts && opts->maxsize)
        return mproc__fail(MPROC_EINVAL, "simple_queue_new: a SimpleQueue has no maxsize");
    return q_new(out, opts, false);
}

int mproc_joinable_queue_new(mproc_queue **out, const mproc_queue_opts *opts)
{
    return q_new(out, opts, true);
}

int mproc_queue_put(mproc_queue *q, const void *data, size_t len, double timeout)
{
    return q_put(q, data, len, mproc_deadline_after(timeout), false);
}

int mproc_queue_put_nowait(mproc_queue *q, const void *data, size_t len)
{
    return q_put(q, data, len, mproc_deadline_after(0), true);
}

int mproc_queue_get(mproc_queue *q, void **data, size_t *len, double timeout)
{
    if (!data || !len)
        return mproc__fail(MPROC_EINVAL, "queue_get: NULL data or len");
    sink s = {0};
    int rc = q_get(q, &s, mproc_deadline_after(timeout), false);
    *data = rc ? NULL : s.out;
    *len = rc ? 0 : s.len;
    return rc;
}

int mproc_queue_get_nowait(mproc_queue *q, void **data, size_t *len)
{
    if (!data || !len)
        return mproc__fail(MPROC_EINVAL, "queue_get_nowait: NULL data or len");
    sink s = {0};
    int rc = q_get(q, &s, mproc_deadline_after(0), true);
    *data = rc ? NULL : s.out;
    *len = rc ? 0 : s.len;
    return rc;
}

int mproc_queue_get_into(mproc_queue *q, void *buf, size_t cap, size_t *len, double timeout)
{
    if (!len || (!buf && cap))
        return mproc__fail(MPROC_EINVAL, "queue_get_into: NULL buf or len");
    static uint8_t none;
    sink s = {buf ? buf : &none, cap, NULL, 0};
    int rc = q_get(q, &s, mproc_deadline_after(timeout), false);
    *len = (rc == 0 || rc == MPROC_EMSGSIZE) ? s.len : 0;
    return rc;
}

int mproc_queue_put_value(mproc_queue *q, const mproc_value *v, double timeout)
{
    if (!q || !v)
        return mproc__fail(MPROC_EINVAL, "queue_put_value: NULL queue or value");
    mproc_buf b = {0};
    int rc = mproc_msgpack_encode(v, &b);
    if (!rc)
        rc = mproc_queue_put(q, b.data ? b.data : (const void *)"", b.len, timeout);
    mproc__buf_free(&b);
    return rc;
}

int mproc_queue_get_value(mproc_queue *q, mproc_value **out, double timeout)
{
    if (!q || !out)
        return mproc__fail(MPROC_EINVAL, "queue_get_value: NULL queue or out");
    *out = NULL;
    void *data;
    size_t len;
    int rc = mproc_queue_get(q, &data, &len, timeout);
    if (rc)
        return rc;
    const q_st *st = q->st;
    mproc_decode_limits lim = {(size_t)st->lim_depth, (size_t)st->lim_items, (size_t)st->lim_bytes};
    rc = mproc_msgpack_decode(data, len, &lim, out);
    free(data);
    return rc;
}

size_t mproc_queue_qsize(const mproc_queue *q)
{
    if (!q)
        return 0;
    uint64_t got = atomic_load(&q->st->n_got), put = atomic_load(&q->st->n_put);
    return put > got ? (size_t)(put - got) : 0;
}

bool mproc_queue_empty(const mproc_queue *q)
{
    return mproc_queue_qsize(q) == 0;
}

bool mproc_queue_full(const mproc_queue *q)
{
    return q && q->st->maxsize && mproc_queue_qsize(q) >= q->st->maxsize;
}

size_t mproc_queue_maxsize(const mproc_queue *q)
{
    return q ? (size_t)q->st->maxsize : 0;
}

size_t mproc_queue_capacity(const mproc_queue *q)
{
    return q ? (size_t)q->cap : 0;
}

size_t mproc_queue_max_message(const mproc_queue *q)
{
    return q ? (size_t)q->st->max_message : 0;
}

void mproc_queue_shutdown(mproc_queue *q)
{
    if (!q)
        return;
    q_st *st = q->st;
    atomic_store(&st->closed, 1);
    wake_all(&st->rx);
    wake_all(&st->tx);
    atomic_fetch_add(&st->done_word, 1);
    mproc__futex_wake(&st->done_word, INT_MAX);
}

bool mproc_queue_is_shutdown(const mproc_queue *q)
{
    return q && atomic_load(&q->st->closed);
}

bool mproc_queue_is_joinable(const mproc_queue *q)
{
    return q && q->st->joinable;
}

int mproc_queue_task_done(mproc_queue *q)
{
    if (!q || !q->st->joinable)
        return mproc__fail(MPROC_ESTATE, "queue_task_done: not a JoinableQueue");
    q_st *st = q->st;
    uint64_t d = atomic_load(&st->n_done);
    do {
        if (d >= atomic_load(&st->n_put))
            return mproc__fail(MPROC_EOVERFLOW, "queue_task_done: called too many times");
    } while (!atomic_compare_exchange_weak(&st->n_done, &d, d + 1));
    if (d + 1 >= atomic_load(&st->n_put) && atomic_load(&st->join_sleepers)) {
        atomic_fetch_add(&st->done_word, 1);
        mproc__futex_wake(&st->done_word, INT_MAX);
    }
    return 0;
}

size_t mproc_queue_unfinished(const mproc_queue *q)
{
    if (!q || !q->st->joinable)
        return 0;
    uint64_t done = atomic_load(&q->st->n_done), put = atomic_load(&q->st->n_put);
    return put > done ? (size_t)(put - done) : 0;
}

int mproc_queue_join(mproc_queue *q, double timeout)
{
    if (!q || !q->st->joinable)
        return mproc__fail(MPROC_ESTATE, "queue_join: not a JoinableQueue");
    q_st *st = q->st;
    mproc_deadline d = mproc_deadline_after(timeout);
    for (;;) {
        atomic_fetch_add(&st->join_sleepers, 1);
        uint32_t v = atomic_load(&st->done_word);
        int rc = 0;
        if (atomic_load(&st->n_done) < atomic_load(&st->n_put))
            rc = mproc_deadline_expired(d) ? MPROC_ETIMEDOUT : nap(&st->done_word, v, d);
        else
            rc = 1;
        atomic_fetch_sub(&st->join_sleepers, 1);
        if (rc == 1)
            return 0;
        if (rc == MPROC_ETIMEDOUT) {
            if (atomic_load(&st->n_done) >= atomic_load(&st->n_put))
                return 0;
            return mproc__fail(MPROC_ETIMEDOUT, "queue_join: %zu task(s) unfinished at the timeout",
                               mproc_queue_unfinished(q));
        }
        if (rc)
            return rc;
    }
}

void mproc_queue_close(mproc_queue *q)
{
    if (!q)
        return;
    mproc_shm_close(q->shm);
    free(q);
}

/* -------------------------------------------------------- shareable type */

static int q_export(const void *obj, mproc_buf *out, int *fds, size_t *nfds, size_t max_fds)
{
    const mproc_queue *q = obj;
    return mproc__sobj_export(q->shm, q->st, out, fds, nfds, max_fds);
}

static int q_import(const void *data, size_t len, const int *fds, size_t nfds, void **obj)
{
    mproc_shm *shm;
    void *p;
    int rc = mproc__sobj_import(data, len, fds, nfds, Q_MAGIC, sizeof(q_st), &shm, &p, NULL);
    if (rc)
        return rc;
    const q_st *st = p;
    uint64_t cap = st->capacity;
    if (p != mproc_shm_buf(shm) || st->version != Q_VERSION || st->ring_off != Q_RING_OFF ||
        cap < MPROC_QUEUE_MIN_CAPACITY || cap > MPROC_QUEUE_MAX_CAPACITY || (cap & (cap - 1)) ||
        mproc_shm_size(shm) < Q_RING_OFF + cap || st->joinable > 1 ||
        st->max_message > Q_MAX_MESSAGE_LIMIT) {
        mproc_shm_close(shm);
        return mproc__fail(MPROC_EPROTO, "queue: exported object is not a queue of this version");
    }
    mproc_queue *q;
    if ((rc = q_wrap(shm, &q))) {
        mproc_shm_close(shm);
        return rc;
    }
    for (size_t i = 0; i < nfds; i++)
        close(fds[i]);
    *obj = q;
    return 0;
}

static void q_release(void *obj)
{
    mproc_queue_close(obj);
}

const mproc_shareable_type mproc_queue_type = {"mproc.queue", q_export, q_import, q_release};

void mproc__queue_set_spin(mproc_queue *q, int polls)
{
    atomic_store_explicit(&q->spin, polls < 0 ? SPIN : polls, memory_order_relaxed);
}

void mproc__queue_set_wait(mproc_queue *q, int spin_polls, int gap, int yield_polls)
{
    atomic_store_explicit(&q->spin, spin_polls < 0 ? SPIN : spin_polls, memory_order_relaxed);
    atomic_store_explicit(&q->gap, gap < 0 ? SPIN_GAP : gap, memory_order_relaxed);
    atomic_store_explicit(&q->yields, yield_polls < 0 ? 0 : yield_polls, memory_order_relaxed);
}

void mproc__queue_set_give_up(mproc_queue *q, bool (*fn)(void *arg), void *arg)
{
    q->give_up = fn;
    q->give_up_arg = arg;
}
