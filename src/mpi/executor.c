/* executor.c — the MPI executor backend on rank 0: submit encodes a task onto
 * a pending queue; one dispatcher thread makes every MPI call, sending tasks to
 * the worker ranks in batches (a few batches in flight per rank, sized from
 * the measured task time) and completing futures from the batched results.
 * It sleeps in poll() on the liveness channels (a worker writes a mark before
 * each batch's results) and an eventfd, so it never spins waiting in MPI. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mpi_int.h"

#define WINDOW 2                   /* batches in flight per worker rank */
#define BATCH_BYTES (1u << 20)     /* a batch stops growing past this */
#define BATCH_MAX_TASKS 4096
#define BATCH_TARGET_NS 2e6        /* aim for this much work per batch */
#define MSG_MAX ((size_t)INT_MAX)  /* MPI counts are ints */

/* A submitted task: its record {u32 fn_id, u32 nitems, items {u32 len,
 * bytes}} lives at [off, off + len) in its queue's bytes. */
typedef struct tmeta {
    mproc_future *f; /* a reference of ours */
    size_t off, len;
    uint32_t nitems;
    uint8_t kind;
    bool single;
    bool started; /* set_running done (a task taken back from a dead rank) */
} tmeta;

typedef struct taskq {
    mproc_buf bytes;
    tmeta *m;
    size_t n, cap, head;
} taskq;

/* A batch sent to a worker and not yet answered. */
typedef struct batch {
    mproc_buf buf; /* the TAG_BATCH message */
    tmeta *m;      /* its tasks (off: inside buf) */
    size_t n, cap;
    uint64_t seq;
    MPI_Request req;
    bool sending;
} batch;

typedef struct wstate {
    int rank;
    bool alive;
    batch slot[WINDOW];
    unsigned head, count; /* ring of in-flight batches */
    uint64_t seq;         /* the next batch's */
    uint64_t marks;       /* batches the worker said it finished */
    uint64_t received;    /* results received: the oldest in flight's seq */
    mproc_buf def;        /* the TAG_DEF message being sent */
    MPI_Request def_req;
    bool def_sending;
} wstate;

typedef struct mexec {
    /* shared with submitters, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    taskq pending;
    bool sleeping, room; /* the dispatcher sleeps and could send more */
    bool closing, finished, failed_all;
    int evfd;
    pid_t pid;
    pthread_t thr;
    /* the dispatcher's own */
    taskq ready, retry;
    wstate *ws;
    int nw, nalive, rr;
    int *by_rank; /* world rank -> index in ws, or -1 */
    uint8_t *rbuf;
    size_t rcap;
    double ns_per_item; /* measured; 0 = unknown yet */
    struct pollfd *pfds;
    char msg[512];
} mexec;

/* ------------------------------------------------------------ task queues */

/* Room for one more in a tmeta array of n used out of *cap. */
static int meta_room(tmeta **m, size_t n, size_t *cap)
{
    if (n < *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 64;
    tmeta *g = realloc(*m, nc * sizeof *g);
    if (!g)
        return MPROC_ENOMEM;
    *m = g;
    *cap = nc;
    return 0;
}

static int q_push(taskq *q, const tmeta *t)
{
    int rc = meta_room(&q->m, q->n, &q->cap);
    if (!rc)
        q->m[q->n++] = *t;
    return rc;
}

static size_t q_len(const taskq *q)
{
    return q->n - q->head;
}

static void q_reset(taskq *q)
{
    q->n = q->head = 0;
    q->bytes.len = 0;
}

static void q_free(taskq *q)
{
    free(q->bytes.data);
    free(q->m);
    memset(q, 0, sizeof *q);
}

/* Fail every task of q with err and empty it. */
static void q_fail(taskq *q, int err, const char *msg)
{
    for (size_t i = q->head; i < q->n; i++) {
        mproc_future_set_error(q->m[i].f, err, msg);
        mproc_future_free(q->m[i].f);
    }
    q_reset(q);
}

/* ----------------------------------------------------------------- submit */

/* Append task's record to q (under x->mu); q is left as it was on failure. */
static int encode_task(taskq *q, uint32_t id, mproc_task task, const mproc_value *items,
                       bool single, mproc_future *f)
{
    size_t n = single ? 1 : mproc_value_len(items);
    mproc_buf *b = &q->bytes;
    size_t off = b->len;
    uint32_t head[2] = {id, (uint32_t)n};
    int rc = n > UINT32_MAX ? fail(MPROC_EMSGSIZE, "too many items") : mproc_buf_append(b, head, sizeof head);
    for (size_t i = 0; !rc && i < n; i++) {
        size_t at = b->len;
        uint32_t len = 0;
        rc = mproc_buf_append(b, &len, sizeof len);
        if (!rc)
            rc = mproc_task_encode_input(task.kind, single ? items : mproc_value_at(items, i), b);
        if (!rc && b->len - at - sizeof len > UINT32_MAX)
            rc = fail(MPROC_EMSGSIZE, "MPI executor: an input is larger than 4 GiB");
        if (!rc)
            mpi__st32(b->data + at, (uint32_t)(b->len - at - sizeof len));
    }
    if (!rc && b->len - off > MSG_MAX - sizeof(mbatch))
        rc = fail(MPROC_EMSGSIZE, "MPI executor: a task's input takes %zu bytes, over MPI's "
                  "2 GiB message limit", b->len - off);
    tmeta t = {.f = f, .off = off, .len = b->len - off, .nitems = (uint32_t)n,
               .kind = (uint8_t)task.kind, .single = single};
    if (!rc)
        rc = q_push(q, &t);
    if (rc)
        b->len = off;
    return rc;
}

static int mpi_submit(void *state, mproc_task task, const mproc_value *items, bool single,
                      mproc_future *f)
{
    mexec *x = state;
    if (x->pid != getpid())
        return fail(MPROC_ESTATE, "MPI executor: not usable in a fork child");
    uint32_t id;
    pthread_mutex_lock(&mpi__g.mu);
    int rc = mpi__fn_id(task, &id);
    pthread_mutex_unlock(&mpi__g.mu);
    if (rc)
        return rc;
    bool wake = false;
    pthread_mutex_lock(&x->mu);
    if (x->closing)
        rc = fail(MPROC_ESTATE, "MPI executor: shut down");
    else if (x->failed_all)
        rc = fail(MPROC_EWORKER, "MPI executor: no worker rank is left alive");
    if (!rc)
        rc = encode_task(&x->pending, id, task, items, single, f);
    if (!rc) {
        mproc_future_ref(f);
        wake = x->sleeping && x->room;
        if (wake)
            x->sleeping = false;
    }
    pthread_mutex_unlock(&x->mu);
    if (wake) {
        uint64_t one = 1;
        ssize_t w = write(x->evfd, &one, sizeof one);
        MPI_UNUSED(w); /* a full counter wakes it as well */
    }
    return rc;
}

/* ---------------------------------------------------------------- results */

/* The outcome of one item at r: code, and the output or message. */
static int next_item(const uint8_t **r, const uint8_t *end, int32_t *code, const uint8_t **p,
                     uint32_t *len)
{
    if ((size_t)(end - *r) < 8)
        return MPROC_EPROTO;
    __builtin_memcpy(code, *r, 4);
    *len = mpi__ld32(*r + 4);
    if (*len > (size_t)(end - *r) - 8)
        return MPROC_EPROTO;
    *p = *r + 8;
    *r += 8 + *len;
    return 0;
}

/* Complete t from its items' outcomes at *r. */
static int complete_task(mexec *x, const tmeta *t, const uint8_t **r, const uint8_t *end)
{
    mproc_value *list = t->single ? NULL : mproc_value_list();
    int rc = !t->single && !list ? MPROC_ENOMEM : 0;
    for (uint32_t i = 0; !rc && i < t->nitems; i++) {
        int32_t code;
        const uint8_t *p;
        uint32_t len;
        if ((rc = next_item(r, end, &code, &p, &len)) != 0)
            break;
        mproc_value *v = NULL;
        if (code == 0 && mproc_task_decode_output(t->kind, p, len, NULL, &v) != 0) {
            code = MPROC_EPROTO;
            snprintf(x->msg, sizeof x->msg, "%s", mproc_errmsg());
            p = (const uint8_t *)x->msg;
            len = (uint32_t)strlen(x->msg);
        }
        if (code != 0) {
            char m[1024];
            snprintf(m, sizeof m, "%.*s", (int)(len < sizeof m ? len : sizeof m - 1), (const char *)p);
            if (t->single) {
                mproc_future_set_error(t->f, code, m);
                continue;
            }
            v = mproc_value_error(mproc_errname(code), m);
            if (!v)
                rc = MPROC_ENOMEM;
        }
        if (t->single)
            mproc_future_set_result(t->f, v);
        else if (!rc)
            rc = mproc_value_append(list, v);
    }
    if (!t->single && !rc) {
        mproc_future_set_result(t->f, list);
        list = NULL;
    }
    mproc_value_free(list);
    return rc;
}

static void fail_batch(batch *b, int err, const char *msg)
{
    for (size_t i = 0; i < b->n; i++) {
        mproc_future_set_error(b->m[i].f, err, msg);
        mproc_future_free(b->m[i].f);
    }
    b->n = 0;
}

static batch *oldest(wstate *w)
{
    return w->count ? &w->slot[w->head] : NULL;
}

/* Drop the oldest batch's bookkeeping once it is answered. */
static void batch_retire(wstate *w)
{
    batch *b = &w->slot[w->head];
    if (b->sending)
        MPI_Wait(&b->req, MPI_STATUS_IGNORE); /* answered: the worker has it all */
    b->sending = false;
    b->n = 0;
    b->buf.len = 0;
    w->head = (w->head + 1) % WINDOW;
    w->count--;
    w->received++;
}

static void on_result(mexec *x, wstate *w, const uint8_t *msg, size_t len)
{
    batch *b = oldest(w);
    mresult h;
    if (!b || len < sizeof h) {
        mproc_log(MPROC_LOG_WARNING, "MPI executor: unexpected message from rank %d", w->rank);
        return;
    }
    memcpy(&h, msg, sizeof h);
    const uint8_t *r = msg + sizeof h, *end = msg + len;
    int rc = h.magic != MPI_MAGIC || h.seq != b->seq || h.ntasks != b->n ? MPROC_EPROTO : 0;
    size_t i = 0, items = 0;
    for (; !rc && i < b->n; i++) {
        items += b->m[i].nitems;
        if ((rc = complete_task(x, &b->m[i], &r, end)) != 0)
            break;
        mproc_future_free(b->m[i].f);
    }
    if (rc) { /* never from our own workers; but never leave a future hanging */
        snprintf(x->msg, sizeof x->msg, "MPI executor: a malformed result from rank %d (%s)",
                 w->rank, mproc_errname(rc));
        batch rest = *b; /* from the one that failed (completing a done future does nothing) */
        rest.m += i;
        rest.n -= i;
        fail_batch(&rest, MPROC_EPROTO, x->msg);
    } else if (items) {
        double per = (double)h.ns / (double)items;
        x->ns_per_item = x->ns_per_item > 0 ? 0.7 * x->ns_per_item + 0.3 * per : per;
    }
    batch_retire(w);
}

/* Receive every result that has arrived; true if any did. */
static bool recv_results(mexec *x)
{
    bool any = false;
    for (;;) {
        int flag = 0, count = 0;
        MPI_Message m;
        MPI_Status st;
        if (MPI_Improbe(MPI_ANY_SOURCE, TAG_RESULT, mpi__g.comm, &flag, &m, &st) != MPI_SUCCESS ||
            !flag)
            return any;
        MPI_Get_count(&st, MPI_BYTE, &count);
        int k = st.MPI_SOURCE > 0 && st.MPI_SOURCE < mpi__g.size ? x->by_rank[st.MPI_SOURCE] : -1;
        uint8_t *nb = (size_t)count > x->rcap ? realloc(x->rbuf, (size_t)count) : x->rbuf;
        if (nb && nb != x->rbuf) {
            x->rbuf = nb;
            x->rcap = (size_t)count;
        }
        MPI_Mrecv(nb, nb ? count : 0, MPI_BYTE, &m, MPI_STATUS_IGNORE);
        any = true;
        if (k < 0 || !x->ws[k].alive) /* a late message of a dead rank */
            continue;
        if (nb) {
            on_result(x, &x->ws[k], x->rbuf, (size_t)count);
        } else if (oldest(&x->ws[k])) { /* its outcomes are lost, not left hanging */
            snprintf(x->msg, sizeof x->msg, "MPI executor: no memory for a %d-byte result", count);
            fail_batch(oldest(&x->ws[k]), MPROC_ENOMEM, x->msg);
            batch_retire(&x->ws[k]);
        }
    }
}

/* ---------------------------------------------------------------- sending */

static void test_sends(mexec *x)
{
    for (int k = 0; k < x->nw; k++) {
        wstate *w = &x->ws[k];
        int done;
        for (unsigned j = 0; j < w->count; j++) {
            batch *b = &w->slot[(w->head + j) % WINDOW];
            if (b->sending && MPI_Test(&b->req, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done)
                b->sending = false;
        }
        if (w->def_sending && MPI_Test(&w->def_req, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done)
            w->def_sending = false;
    }
}

/* Define on w the functions it does not know yet (before a batch that may use them). */
static int teach(mexec *x, wstate *w)
{
    MPI_UNUSED(x);
    pthread_mutex_lock(&mpi__g.mu);
    mpi_peer *p = &mpi__g.peers[w->rank];
    size_t have = p->ntaught, n = mpi__g.nfns;
    int rc = 0;
    if (have < n) {
        if (w->def_sending) {
            MPI_Wait(&w->def_req, MPI_STATUS_IGNORE);
            w->def_sending = false;
        }
        w->def.len = 0;
        for (size_t i = have; i < n && !rc; i++)
            rc = mproc_buf_append(&w->def, mpi__g.fns[i].def.data, mpi__g.fns[i].def.len);
        if (!rc && MPI_Isend(w->def.data, (int)w->def.len, MPI_BYTE, w->rank, TAG_DEF, mpi__g.comm,
                             &w->def_req) != MPI_SUCCESS)
            rc = MPROC_EIO;
        if (!rc) {
            w->def_sending = true;
            p->ntaught = (uint32_t)n;
        }
    }
    pthread_mutex_unlock(&mpi__g.mu);
    return rc;
}

static int batch_add(batch *b, const uint8_t *rec, const tmeta *t)
{
    tmeta c = *t;
    c.off = b->buf.len;
    int rc = meta_room(&b->m, b->n, &b->cap);
    if (!rc)
        rc = mproc_buf_append(&b->buf, rec, t->len);
    if (!rc)
        b->m[b->n++] = c;
    return rc;
}

/* How many tasks the next batch takes: enough to share what is queued
 * among the free slots, at most about BATCH_TARGET_NS of work. */
static size_t batch_size(mexec *x, size_t queued)
{
    size_t slots = 0;
    for (int k = 0; k < x->nw; k++)
        if (x->ws[k].alive)
            slots += WINDOW - x->ws[k].count;
    size_t per = (queued + (slots ? slots : 1) - 1) / (slots ? slots : 1);
    size_t cap = 1; /* until a result tells how long tasks take */
    if (x->ns_per_item > 0) {
        double c = BATCH_TARGET_NS / x->ns_per_item;
        cap = c >= BATCH_MAX_TASKS ? BATCH_MAX_TASKS : c < 1 ? 1 : (size_t)c;
    }
    return per < 1 ? 1 : per > cap ? cap : per;
}

/* Move up to `want` tasks (retried ones first) into b; cancelled ones are dropped. */
static int fill_batch(mexec *x, batch *b, size_t want)
{
    int rc = 0;
    while (!rc && b->n < want && (b->n == 0 || b->buf.len < BATCH_BYTES)) {
        taskq *q = q_len(&x->retry) ? &x->retry : q_len(&x->ready) ? &x->ready : NULL;
        if (!q)
            break;
        tmeta *t = &q->m[q->head];
        if (b->n && b->buf.len + t->len > MSG_MAX)
            break;
        q->head++;
        if (!t->started && !mproc_future_set_running(t->f)) {
            mproc_future_free(t->f); /* cancelled: never sent */
            continue;
        }
        t->started = true;
        rc = batch_add(b, q->bytes.data + t->off, t);
        if (rc) {
            mproc_future_set_error(t->f, rc, "MPI executor: out of memory building a batch");
            mproc_future_free(t->f);
        }
    }
    return rc;
}

/* Send one batch to w if it has room and work is queued: true if sent. */
static bool send_batch(mexec *x, wstate *w)
{
    size_t queued = q_len(&x->retry) + q_len(&x->ready);
    if (!w->alive || w->count >= WINDOW || !queued)
        return false;
    batch *b = &w->slot[(w->head + w->count) % WINDOW];
    b->n = 0;
    b->buf.len = 0;
    mbatch h = {.magic = MPI_MAGIC, .seq = w->seq};
    if (mproc_buf_append(&b->buf, &h, sizeof h) != 0)
        return false;
    fill_batch(x, b, batch_size(x, queued));
    if (b->n == 0)
        return false;
    h.ntasks = (uint32_t)b->n;
    memcpy(b->buf.data, &h, sizeof h);
    if (teach(x, w) != 0 ||
        MPI_Isend(b->buf.data, (int)b->buf.len, MPI_BYTE, w->rank, TAG_BATCH, mpi__g.comm,
                  &b->req) != MPI_SUCCESS) {
        fail_batch(b, MPROC_EIO, "MPI executor: sending a batch failed");
        return false;
    }
    b->sending = true;
    b->seq = w->seq++;
    w->count++;
    { /* it may be asleep: wake it (a byte per batch; a full buffer wakes as well) */
        pthread_mutex_lock(&mpi__g.mu);
        int fd = mpi__g.peers[w->rank].fd[CH_WAKE];
        pthread_mutex_unlock(&mpi__g.mu);
        char c = 'w';
        if (fd >= 0 && send(fd, &c, 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 && errno != EAGAIN)
            mproc_log(MPROC_LOG_DEBUG, "MPI executor: waking rank %d: %s", w->rank, strerror(errno));
    }
    return true;
}

/* Hand queued tasks to workers with room, round robin. */
static bool dispatch(mexec *x)
{
    bool any = false, sent = true;
    while (sent && q_len(&x->retry) + q_len(&x->ready)) {
        sent = false;
        int start = x->rr;
        for (int i = 0; i < x->nw; i++) {
            int k = (start + i) % x->nw;
            if (send_batch(x, &x->ws[k])) {
                sent = any = true;
                x->rr = (k + 1) % x->nw; /* the next batch starts after this rank */
            }
        }
    }
    return any;
}

/* ------------------------------------------------------------ rank death */

/* Move the tasks of b back for other ranks (they never started). */
static void requeue(mexec *x, batch *b)
{
    taskq *q = &x->retry;
    if (q->head == q->n)
        q_reset(q);
    for (size_t i = 0; i < b->n; i++) {
        tmeta t = b->m[i];
        t.off = q->bytes.len;
        if (mproc_buf_append(&q->bytes, b->buf.data + b->m[i].off, t.len) != 0 || q_push(q, &t) != 0) {
            mproc_future_set_error(t.f, MPROC_ENOMEM, "MPI executor: out of memory requeueing");
            mproc_future_free(t.f);
        }
    }
}

/* Give up a buffer an unfinished send to a dead rank may still reference. */
static void abandon(MPI_Request *req, bool *sending, mproc_buf *buf)
{
    if (!*sending)
        return;
    MPI_Request_free(req);
    *sending = false;
    pthread_mutex_lock(&mpi__g.mu);
    mpi__bury(buf->data);
    pthread_mutex_unlock(&mpi__g.mu);
    memset(buf, 0, sizeof *buf);
}

/* w's liveness channel closed: its process is gone. */
static void worker_died(mexec *x, wstate *w)
{
    /* Results it announced may already be here (an eager send completes
     * before the sender dies): take them first, within a short while. */
    mproc_deadline d = mproc_deadline_after(0.05);
    while (w->marks > w->received && !mproc_deadline_expired(d)) {
        if (!recv_results(x))
            sched_yield();
    }
    w->alive = false;
    x->nalive--;
    pthread_mutex_lock(&mpi__g.mu);
    mpi__peer_dead(w->rank);
    pthread_mutex_unlock(&mpi__g.mu);
    char m[256];
    mproc_log(MPROC_LOG_WARNING, "MPI executor: worker rank %d died", w->rank);
    while (w->count) {
        batch *b = &w->slot[w->head];
        if (b->seq < w->marks) {
            snprintf(m, sizeof m, "worker rank %d died after running this task, before its result "
                     "arrived", w->rank);
            fail_batch(b, MPROC_EWORKER, m);
        } else if (b->seq == w->marks) {
            snprintf(m, sizeof m, "worker rank %d died while running this task or one sent to it "
                     "in the same batch", w->rank);
            fail_batch(b, MPROC_EWORKER, m);
        } else {
            requeue(x, b);
        }
        abandon(&b->req, &b->sending, &b->buf);
        b->n = 0;
        b->buf.len = 0;
        w->head = (w->head + 1) % WINDOW;
        w->count--;
    }
    abandon(&w->def_req, &w->def_sending, &w->def);
}

/* No rank left: everything queued fails, and so will later submits. */
static void fail_all(mexec *x)
{
    const char *m = "MPI executor: no worker rank is left alive";
    q_fail(&x->retry, MPROC_EWORKER, m);
    q_fail(&x->ready, MPROC_EWORKER, m);
    pthread_mutex_lock(&x->mu);
    x->failed_all = true;
    taskq p = x->pending;
    memset(&x->pending, 0, sizeof x->pending);
    pthread_mutex_unlock(&x->mu);
    q_fail(&p, MPROC_EWORKER, m);
    q_free(&p);
}

/* ---------------------------------------------------------------- waiting */

/* Read w's marks; false once its channel says the process is gone. */
static bool read_marks(wstate *w, int fd)
{
    char buf[256];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            for (ssize_t i = 0; i < n; i++)
                w->marks += buf[i] == MARK_RESULT;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
}

/* Sleep until something may need the dispatcher: `spin` = results are due
 * (poll without sleeping), else wake on a mark, a submit, or shutdown. */
static void wait_events(mexec *x, bool busy)
{
    bool due = false, sending = false, room = false;
    for (int k = 0; k < x->nw; k++) {
        wstate *w = &x->ws[k];
        if (!w->alive)
            continue;
        due |= w->marks > w->received;
        room |= w->count < WINDOW;
        for (unsigned j = 0; j < w->count; j++)
            sending |= w->slot[(w->head + j) % WINDOW].sending;
        sending |= w->def_sending;
    }
    /* A result announced by a mark may be large: MPI moves it only while we
     * call into it, so poll without sleeping then (yielding the CPU). An
     * unfinished send needs progress too, but not at once. */
    int timeout = busy || due ? 0 : sending ? 1 : 1000;
    if (timeout) {
        pthread_mutex_lock(&x->mu);
        if (q_len(&x->pending) || x->closing)
            timeout = 0;
        else {
            x->sleeping = true;
            x->room = room;
        }
        pthread_mutex_unlock(&x->mu);
    } else if (due && !busy) {
        sched_yield();
    }
    int n = 0;
    x->pfds[n++] = (struct pollfd){.fd = x->evfd, .events = POLLIN};
    for (int k = 0; k < x->nw; k++) {
        int fd = x->ws[k].alive ? mpi__g.peers[x->ws[k].rank].fd[CH_MARK] : -1;
        x->pfds[n++] = (struct pollfd){.fd = fd, .events = POLLIN};
    }
    int r = poll(x->pfds, (nfds_t)n, timeout);
    if (timeout) {
        pthread_mutex_lock(&x->mu);
        x->sleeping = false;
        pthread_mutex_unlock(&x->mu);
    }
    if (r <= 0)
        return;
    if (x->pfds[0].revents) {
        uint64_t v;
        ssize_t rd = read(x->evfd, &v, sizeof v);
        MPI_UNUSED(rd);
    }
    for (int k = 0; k < x->nw; k++) {
        wstate *w = &x->ws[k];
        if (x->pfds[k + 1].revents && w->alive && !read_marks(w, x->pfds[k + 1].fd)) {
            worker_died(x, w);
            if (x->nalive == 0)
                fail_all(x);
        }
    }
}

/* Take what submitters queued once the dispatcher's own queue is empty. */
static bool intake(mexec *x)
{
    pthread_mutex_lock(&x->mu);
    if (q_len(&x->ready) == 0 && q_len(&x->pending)) {
        taskq t = x->ready;
        q_reset(&t);
        x->ready = x->pending;
        x->pending = t;
    }
    bool closing = x->closing;
    pthread_mutex_unlock(&x->mu);
    return closing;
}

static bool idle(const mexec *x)
{
    for (int k = 0; k < x->nw; k++)
        if (x->ws[k].count)
            return false;
    return q_len(&x->ready) == 0 && q_len(&x->retry) == 0;
}

static void *dispatcher(void *ud)
{
    mexec *x = ud;
    mproc_executor_backend_thread(true);
    for (;;) {
        bool busy = recv_results(x);
        test_sends(x);
        bool closing = intake(x);
        if (x->nalive == 0 && (q_len(&x->ready) || q_len(&x->retry)))
            fail_all(x);
        busy |= dispatch(x);
        if (closing && idle(x)) {
            pthread_mutex_lock(&x->mu);
            bool done = q_len(&x->pending) == 0;
            pthread_mutex_unlock(&x->mu);
            if (done)
                break;
        }
        wait_events(x, busy);
    }
    /* Sends still unfinished (DEF messages) complete on their own; wait so
     * their buffers can go. */
    for (int k = 0; k < x->nw; k++)
        if (x->ws[k].alive && x->ws[k].def_sending) {
            MPI_Wait(&x->ws[k].def_req, MPI_STATUS_IGNORE);
            x->ws[k].def_sending = false;
        }
    pthread_mutex_lock(&mpi__g.mu);
    if (mpi__g.exec == x)
        mpi__g.exec = NULL; /* the ranks are free for the next executor */
    pthread_mutex_unlock(&mpi__g.mu);
    pthread_mutex_lock(&x->mu);
    x->finished = true;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
    mproc_executor_backend_thread(false);
    return NULL;
}

/* ------------------------------------------------------------- lifecycle */

static int check_opts(const mproc_executor_opts *o)
{
    const char *bad = o->initializer || o->initargs ? "initializer/initargs"
                      : o->max_tasks_per_child     ? "max_tasks_per_child"
                      : o->ctx                     ? "ctx (start methods do not apply to MPI ranks)"
                      : o->retry_crashed           ? "retry_crashed"
                      : o->backend_opts            ? "backend_opts"
                      : o->max_workers < 0         ? "a negative max_workers"
                                                   : NULL;
    return bad ? fail(MPROC_EINVAL, "MPI executor: %s not supported", bad) : 0;
}

/* Claim the worker ranks for x (under mpi__g.mu). */
static int claim_ranks(mexec *x, int max_workers)
{
    if (mpi__g.state == MG_NONE)
        return fail(MPROC_ENOINIT, "MPI executor: call mproc_mpi_init(&argc, &argv, NULL) first, "
                    "on every rank");
    if (mpi__g.state == MG_DOWN)
        return fail(MPROC_ESTATE, "MPI executor: mproc_mpi_finalize was called");
    if (mpi__g.pid != getpid() || mpi__g.rank != 0)
        return fail(MPROC_ESTATE, "MPI executor: only rank 0's main process can start one");
    if (mpi__g.size < 2)
        return fail(MPROC_ESTATE, "MPI executor: no worker ranks (the MPI world has 1 process): "
                    "start the program with mpirun -n N, N >= 2 (rank 0 runs main, the others "
                    "run tasks)");
    if (mpi__g.exec)
        return fail(MPROC_ESTATE, "MPI executor: another MPI executor is running; free it first "
                    "(the worker ranks serve one at a time)");
    int n = atomic_load(&mpi__g.nalive);
    if (n == 0)
        return fail(MPROC_EWORKER, "MPI executor: every worker rank has died");
    if (max_workers > 0 && max_workers < n)
        n = max_workers;
    x->ws = calloc((size_t)n, sizeof *x->ws);
    x->by_rank = malloc((size_t)mpi__g.size * sizeof *x->by_rank);
    x->pfds = calloc((size_t)n + 1, sizeof *x->pfds);
    if (!x->ws || !x->by_rank || !x->pfds)
        return MPROC_ENOMEM;
    for (int r = 0; r < mpi__g.size; r++)
        x->by_rank[r] = -1;
    for (int r = 1; r < mpi__g.size && x->nw < n; r++)
        if (mpi__g.peers[r].alive) {
            x->by_rank[r] = x->nw;
            x->ws[x->nw++] = (wstate){.rank = r, .alive = true};
        }
    x->nalive = x->nw;
    mpi__g.exec = x;
    return 0;
}

static void exec_free_mem(mexec *x)
{
    for (int k = 0; x->ws && k < x->nw; k++) {
        for (int j = 0; j < WINDOW; j++) {
            free(x->ws[k].slot[j].buf.data);
            free(x->ws[k].slot[j].m);
        }
        free(x->ws[k].def.data);
    }
    free(x->ws);
    free(x->by_rank);
    free(x->pfds);
    q_free(&x->pending);
    q_free(&x->ready);
    q_free(&x->retry);
    free(x->rbuf);
    if (x->evfd >= 0)
        close(x->evfd);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    free(x);
}

static int mpi_start(void **state, const mproc_executor_opts *o)
{
    int rc = check_opts(o);
    if (rc)
        return rc;
    mexec *x = calloc(1, sizeof *x);
    if (!x)
        return MPROC_ENOMEM;
    pthread_mutex_init(&x->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&x->cv, &ca);
    pthread_condattr_destroy(&ca);
    x->pid = getpid();
    x->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (x->evfd < 0) {
        exec_free_mem(x);
        return fail(-errno, "MPI executor: eventfd: %s", strerror(errno));
    }
    pthread_mutex_lock(&mpi__g.mu);
    rc = claim_ranks(x, o->max_workers);
    pthread_mutex_unlock(&mpi__g.mu);
    if (!rc && (rc = -pthread_create(&x->thr, NULL, dispatcher, x)) != 0)
        rc = fail(rc, "MPI executor: cannot start its thread");
    if (rc) {
        char m[512];
        snprintf(m, sizeof m, "%s", mproc_errmsg());
        pthread_mutex_lock(&mpi__g.mu);
        if (mpi__g.exec == x)
            mpi__g.exec = NULL;
        pthread_mutex_unlock(&mpi__g.mu);
        exec_free_mem(x);
        return fail(rc, "%s", m);
    }
    *state = x;
    return 0;
}

static int mpi_shutdown(void *state, bool wait)
{
    mexec *x = state;
    int rc = 0;
    if (x->pid != getpid()) /* a fork child: no dispatcher here to wait for */
        return fail(MPROC_ESTATE, "MPI executor: not usable in a fork child");
    pthread_mutex_lock(&x->mu);
    if (!x->closing) {
        x->closing = true;
        uint64_t one = 1;
        ssize_t w = write(x->evfd, &one, sizeof one);
        MPI_UNUSED(w);
    }
    if (wait && !x->finished && pthread_equal(pthread_self(), x->thr))
        rc = fail(MPROC_EDEADLK, "MPI executor: shutdown(wait) from a done-callback would deadlock");
    while (wait && !rc && !x->finished)
        pthread_cond_wait(&x->cv, &x->mu);
    pthread_mutex_unlock(&x->mu);
    return rc;
}

int mpi__exec_stop(void *exec)
{
    return mpi_shutdown(exec, true);
}

static void mpi_free(void *state)
{
    mexec *x = state;
    if (!x)
        return;
    if (x->pid != getpid())
        return; /* a fork child: the thread and MPI are the parent's */
    if (pthread_equal(pthread_self(), x->thr)) {
        mproc_log(MPROC_LOG_ERROR, "MPI executor: freed from its own done-callback; leaked");
        return;
    }
    mpi_shutdown(x, true);
    pthread_join(x->thr, NULL);
    exec_free_mem(x);
}

const mproc_executor_backend mproc_executor_mpi = {"mpi", mpi_start, mpi_submit, mpi_shutdown,
                                                   mpi_free};
