/* worker.c — a worker rank: receive batches from rank 0, run each task with
 * mproc_task_run, send the outcomes back in one message per batch. While the
 * results of one batch travel it runs the next (two result buffers). Waiting
 * for work it polls MPI briefly, then sleeps on the wake channel. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mpi_int.h"

#define SPIN_NS 50000  /* poll MPI this long before sleeping */
#define MSG_LIMIT 1024 /* longest error message sent back */
#define GONE_GRACE_S 1.0
#define NAP_S 0.02 /* after activity, sleep in 1 ms naps this long */

typedef struct wfn {
    mproc_task task;
    bool bad;  /* it did not resolve here */
    char *err; /* why (NULL if there was no memory to say) */
} wfn;

typedef struct wk {
    int mark_fd, wake_fd;
    wfn *fns;
    size_t nfns;
    uint8_t *in;
    size_t incap;
    mproc_buf out[2]; /* results being built / being sent */
    int cur;
    MPI_Request sreq;
    bool sending;
    double gone_at;   /* when the wake channel hit EOF, or 0 */
    double nap_until; /* short naps until then */
} wk;

enum { GOT_MSG, RANK0_GONE };

/* The wake channel: drain it; false once rank 0 is gone. Its EOF may come
 * before rank 0's last MPI message (STOP, or the completion of our last
 * send) is seen, so rank 0 counts as gone only after a grace of MPI polling. */
static bool drain_wake(wk *w)
{
    char buf[64];
    for (;;) {
        ssize_t n = recv(w->wake_fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true;
        double now = mproc_monotonic();
        if (w->gone_at == 0)
            w->gone_at = now;
        return now - w->gone_at < GONE_GRACE_S;
    }
}

/* Let the last results' send progress; false if rank 0 is gone meanwhile. */
static bool finish_send(wk *w, bool block)
{
    while (w->sending) {
        int done = 0;
        MPI_Test(&w->sreq, &done, MPI_STATUS_IGNORE);
        if (done) {
            w->sending = false;
            break;
        }
        if (!block)
            return true;
        struct pollfd p = {.fd = w->wake_fd, .events = POLLIN};
        if (poll(&p, 1, 1) == 1 && !drain_wake(w))
            return false;
    }
    return true;
}

/* Wait for rank 0's next message and receive it into w->in. */
static int next_message(wk *w, MPI_Status *st, int *len)
{
    double spin_until = mproc_monotonic() + SPIN_NS / 1e9;
    for (;;) {
        if (!finish_send(w, false))
            return RANK0_GONE;
        int flag = 0;
        MPI_Message m;
        MPI_Improbe(0, MPI_ANY_TAG, mpi__g.comm, &flag, &m, st);
        if (flag) {
            MPI_Get_count(st, MPI_BYTE, len);
            if ((size_t)*len > w->incap) {
                uint8_t *n = realloc(w->in, (size_t)*len);
                if (!n) {
                    fprintf(stderr, "mproc MPI worker (rank %d): out of memory for a %d-byte "
                            "message\n", mpi__g.rank, *len);
                    exit(1); /* rank 0 sees the death and fails this rank's tasks */
                }
                w->in = n;
                w->incap = (size_t)*len;
            }
            MPI_Mrecv(w->in, *len, MPI_BYTE, &m, MPI_STATUS_IGNORE);
            w->nap_until = mproc_monotonic() + NAP_S;
            return GOT_MSG;
        }
        double now = mproc_monotonic();
        if (now < spin_until)
            continue;
        /* Rank 0 writes a wake byte with every batch it sends. A batch can
         * show in MPI later than its byte (a large one needs rank 0 to
         * progress), so for a while after any activity sleep in short naps;
         * only then long ones. A send in progress needs MPI's attention too. */
        int nap = w->sending || now < w->nap_until ? 1 : 1000;
        struct pollfd p = {.fd = w->wake_fd, .events = POLLIN};
        if (poll(&p, 1, nap) == 1) {
            if (!drain_wake(w))
                return RANK0_GONE;
            if (w->gone_at) {
                sched_yield(); /* EOF stays readable: this is a short busy grace */
            } else {
                spin_until = mproc_monotonic() + SPIN_NS / 1e9;
                w->nap_until = spin_until + NAP_S;
            }
        }
    }
}

static void learn(wk *w, const uint8_t *p, size_t len)
{
    while (len >= 8) {
        uint32_t id = mpi__ld32(p), n = mpi__ld32(p + 4);
        if (n > len - 8 || id != w->nfns)
            break; /* rank 0 never sends this: the rest is ignored */
        wfn *t = realloc(w->fns, (w->nfns + 1) * sizeof *t);
        if (!t)
            break;
        w->fns = t;
        wfn *f = &w->fns[w->nfns++];
        memset(f, 0, sizeof *f);
        if (mproc_task_resolve(p + 8, n, &f->task) != 0) {
            f->bad = true;
            f->err = strdup(mproc_errmsg());
        }
        p += 8 + n;
        len -= 8 + n;
    }
}

/* Append one item's outcome: {code, len, output or message}. */
static int put_outcome(mproc_buf *o, const wfn *f, const uint8_t *in, size_t n)
{
    size_t at = o->len;
    uint32_t head[2] = {0, 0};
    int rc = mproc_buf_append(o, head, sizeof head);
    if (rc)
        return rc;
    char msg[MSG_LIMIT];
    int code;
    if (!f) {
        code = MPROC_EPROTO;
        snprintf(msg, sizeof msg, "the task names a function rank 0 never defined");
    } else if (f->bad) {
        code = MPROC_EBUILDID;
        snprintf(msg, sizeof msg, "the task function is not available on rank %d: %s",
                 mpi__g.rank, f->err ? f->err : "it did not resolve");
    } else {
        /* a failed task is MPROC_EREMOTE to the caller, as on the local pool */
        code = mproc_task_run(f->task, in, n, o, msg, sizeof msg) ? MPROC_EREMOTE : 0;
        if (!code && o->len - at - sizeof head > UINT32_MAX) {
            o->len = at + sizeof head;
            code = MPROC_EMSGSIZE;
            snprintf(msg, sizeof msg, "the task's output is larger than 4 GiB");
        }
    }
    if (code) {
        o->len = at + sizeof head;
        rc = mproc_buf_append(o, msg, strnlen(msg, sizeof msg - 1));
        if (rc)
            return rc;
    }
    mpi__st32(o->data + at, (uint32_t)code);
    mpi__st32(o->data + at + 4, (uint32_t)(o->len - at - sizeof head));
    return 0;
}

/* Replace a batch's outcomes by one error each (they do not fit a message). */
static int all_failed(mproc_buf *o, size_t items, const char *why)
{
    o->len = sizeof(mresult);
    int rc = 0;
    for (size_t i = 0; i < items && !rc; i++) {
        uint32_t head[2] = {(uint32_t)MPROC_EMSGSIZE, (uint32_t)strlen(why)};
        rc = mproc_buf_append(o, head, sizeof head);
        if (!rc)
            rc = mproc_buf_append(o, why, strlen(why));
    }
    return rc;
}

/* Run a batch into w->out[w->cur]: 0, or an error that ends the worker. */
static int run_batch(wk *w, const uint8_t *p, size_t len)
{
    mbatch h;
    if (len < sizeof h)
        return MPROC_EPROTO;
    memcpy(&h, p, sizeof h);
    if (h.magic != MPI_MAGIC)
        return MPROC_EPROTO;
    mproc_buf *o = &w->out[w->cur];
    mresult r = {.magic = MPI_MAGIC, .ntasks = h.ntasks, .seq = h.seq};
    o->len = 0;
    int rc = mproc_buf_append(o, &r, sizeof r);
    const uint8_t *q = p + sizeof h, *end = p + len;
    size_t items = 0;
    double t0 = mproc_monotonic();
    for (uint32_t t = 0; !rc && t < h.ntasks; t++) {
        if (end - q < 8)
            return MPROC_EPROTO;
        uint32_t id = mpi__ld32(q), n = mpi__ld32(q + 4);
        q += 8;
        const wfn *f = id < w->nfns ? &w->fns[id] : NULL;
        for (uint32_t i = 0; !rc && i < n; i++) {
            if (end - q < 4 || mpi__ld32(q) > (size_t)(end - q) - 4)
                return MPROC_EPROTO;
            uint32_t il = mpi__ld32(q);
            rc = put_outcome(o, f, q + 4, il);
            q += 4 + il;
            items++;
        }
    }
    if (!rc && o->len > (size_t)INT_MAX) {
        char why[200];
        snprintf(why, sizeof why, "the outputs of this batch total %zu bytes, over MPI's 2 GiB "
                 "message limit: return less per task", o->len);
        rc = all_failed(o, items, why);
    }
    r.ns = (uint64_t)((mproc_monotonic() - t0) * 1e9);
    if (!rc)
        memcpy(o->data, &r, sizeof r);
    return rc;
}

/* Send the batch just run: the mark first (it wakes rank 0, and tells it the
 * batch ended should this rank die before the results arrive). */
static int send_results(wk *w)
{
    if (!finish_send(w, true))
        return RANK0_GONE;
    char m = MARK_RESULT;
    if (mproc_write_all(w->mark_fd, &m, 1) != 0)
        return RANK0_GONE;
    mproc_buf *o = &w->out[w->cur];
    if (MPI_Isend(o->data, (int)o->len, MPI_BYTE, 0, TAG_RESULT, mpi__g.comm, &w->sreq) !=
        MPI_SUCCESS)
        return MPROC_EIO;
    w->sending = true;
    w->cur ^= 1;
    if (w->out[w->cur].cap > (64u << 20)) { /* do not keep a huge buffer after a huge batch */
        free(w->out[w->cur].data);
        memset(&w->out[w->cur], 0, sizeof w->out[w->cur]);
    }
    return 0;
}

static void wk_free(wk *w)
{
    for (size_t i = 0; i < w->nfns; i++)
        free(w->fns[i].err);
    free(w->fns);
    free(w->in);
    free(w->out[0].data);
    free(w->out[1].data);
    close(w->mark_fd);
    close(w->wake_fd);
}

int mpi__serve(void)
{
    wk w;
    memset(&w, 0, sizeof w);
    w.mark_fd = mpi__g.peers[0].fd[CH_MARK];
    w.wake_fd = mpi__g.peers[0].fd[CH_WAKE];
    free(mpi__g.peers);
    mpi__g.peers = NULL;
    int status = 0;
    for (;;) {
        MPI_Status st;
        int len = 0;
        if (next_message(&w, &st, &len) == RANK0_GONE) {
            fprintf(stderr, "mproc MPI worker (rank %d): rank 0 is gone; exiting\n", mpi__g.rank);
            status = 1;
            break;
        }
        int rc = 0;
        if (st.MPI_TAG == TAG_STOP)
            break;
        if (st.MPI_TAG == TAG_DEF)
            learn(&w, w.in, (size_t)len);
        else if (st.MPI_TAG == TAG_BATCH && (rc = run_batch(&w, w.in, (size_t)len)) == 0)
            rc = send_results(&w);
        if (rc) {
            fprintf(stderr, "mproc MPI worker (rank %d): %s; exiting\n", mpi__g.rank,
                    rc == RANK0_GONE ? "rank 0 is gone" : mproc_strerror(rc));
            status = 1;
            break;
        }
    }
    if (status == 0)
        finish_send(&w, true);
    wk_free(&w);
    return status;
}
