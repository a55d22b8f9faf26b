/* queue.c — the cost of mproc Queues (a shared-memory MPMC byte ring).
 *
 * Throughput workloads (messages/s and MB/s, MB = 10^6 bytes; median of
 * rounds, workloads and kinds interleaved round by round so machine noise hits
 * them alike). Every producer and consumer is a child process; the parent
 * starts them, waits until all are ready, releases them at once and takes the
 * time until the last consumer has its last message:
 *   64 B / 4 KiB / 1 MiB  1 producer -> 1 consumer
 *   64 B 2P -> 2C         2 producers -> 2 consumers, all on one queue
 * Columns:
 *   mproc   a default Queue (1 MiB ring), mproc_queue_put / get_into with
 *           MPROC_FOREVER into a reused buffer; producers end with one
 *           sentinel message each, a consumer stops at its first sentinel;
 *   pipe    a raw pipe (F_SETPIPE_SZ 1 MiB, as big as the ring) carrying a
 *           4-byte length prefix + payload, one writev per message, read
 *           through a 64 KiB buffer; 1 -> 1 only (pipe reads are not atomic);
 *   ZeroMQ  PUSH/PULL over ipc:// (zmq_send / zmq_recv), high-water marks
 *           capped at ~1 MiB of messages a side like the ring; for 2P -> 2C
 *           each consumer binds its own PULL socket and each producer's PUSH
 *           connects to both: PUSH load-balances round-robin (fan-out), PULL
 *           fair-queues (fan-in), the natural ZeroMQ pattern. As PUSH picks
 *           the peer, sentinels cannot reach each consumer, so there the
 *           consumers count into shared memory and stop, on a 100 ms receive
 *           timeout, once every message has arrived; the end time is their
 *           last message's;
 *   Python  multiprocessing.Queue put/get of bytes (bench/python/queue.py).
 * Every message carries its sequence number in its first and last 8 bytes;
 * consumers check length, tearing, per-producer order (and, 1 -> 1, gaps)
 * and the first message's whole payload (every message's with --verify),
 * and the parent checks the total count and the sum of sequence numbers, so a
 * broken queue fails the benchmark instead of reporting a figure.
 *
 * Round trip: a 64-byte message from the parent to a child and back, µs,
 * median of batches. mproc: two queues (ping, pong); futex: two processes
 * alternating on a futex word in MAP_SHARED memory with FUTEX_WAIT /
 * FUTEX_WAKE and no spinning, the payload copied through the same mapping (the
 * latency floor); pipe: two pipes with the framing above; ZeroMQ REQ/REP over
 * ipc://; Python: two multiprocessing.Queues.
 *
 * Targets: 64 B throughput >= 50x Python and >= 2x ZeroMQ; round trip within
 * 1.5x of the futex ping-pong.
 *
 * Usage: bench_queue [--quick] [--scale X] [--rounds R] [--batches B] [--verify]
 *                    [--no-python] [--no-zmq] [--python PATH]
 *   --quick   smoke run: counts / 20, 1 round, 3 batches, --verify
 *   --verify  check every message's whole payload, not only its sequence
 *             numbers and the first message's payload (slows the consumers) */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mproc.h>
#include <mproc/queue.h>

#ifdef MPROC_BENCH_HAVE_ZMQ
#include <zmq.h>
#endif

#include "bench.h"
#include "bench_raw.h"

#ifndef MPROC_BENCH_PYDIR
#define MPROC_BENCH_PYDIR "bench/python"
#endif

#define PYTHON_TARGET 50.0
#define ZMQ_TARGET 2.0
#define FUTEX_TARGET 1.5
#define MAXP 2
#define MAXC 2
#define RT_SIZE 64
#define SENTINEL_LEN 8
/* Longest a run may take before the benchmark calls the queue hung. */
#define RUN_DEADLINE_S 180.0

enum { K_MPROC, K_PIPE, K_ZMQ, K_FUTEX, NK };
static const char *kname[NK] = {"mproc", "pipe", "ZeroMQ", "futex"};

/* Throughput workloads. */
enum { W_64, W_4K, W_1M, W_MPMC, NW };
static const char *wname[NW] = {"64 B", "4 KiB", "1 MiB", "64 B 2P -> 2C"};
static const size_t wsize[NW] = {64, 4096, (size_t)1 << 20, 64};
static const int wprod[NW] = {1, 1, 1, 2};
/* Messages per producer at scale 1: roughly 0.3-1 s per measurement. */
static const long wcount[NW][3] = {
    /* mproc, pipe, ZeroMQ */
    {2000000, 1000000, 2000000},
    {1000000, 500000, 200000},
    {4000, 2000, 1000},
    {1000000, 0, 1000000},
};
static const long py_count[NW] = {100000, 50000, 200, 50000};
/* Round trips per batch at scale 1. */
static const long rt_count[NK] = {100000, 50000, 3000, 50000};
static const long py_rt_count = 3000;

/* --------------------------------------------------------- shared state */

/* One consumer's results, in MAP_SHARED memory. */
typedef struct cslot {
    _Alignas(64) _Atomic uint64_t count; /* published per message by counting consumers */
    uint64_t sum;                        /* sum of the sequence numbers received */
    double t_end;                        /* CLOCK_MONOTONIC at its last message */
} cslot;

typedef struct shared {
    cslot cons[MAXC];
    /* The futex ping-pong: odd values from the parent, even from the child. */
    _Alignas(64) _Atomic uint32_t word;
    unsigned char payload[RT_SIZE];
} shared;

static shared *sh;
static int go_pipe[2] = {-1, -1}, ready_pipe[2] = {-1, -1}, done_pipe[2] = {-1, -1};
static bool zmq_on;
/* Check every message's whole payload (--quick, --verify); otherwise the first
 * message's, and every message's sequence numbers. */
static bool verify_all;
static char zdir[64];

#define FUTEX_STOP UINT32_MAX

/* A child's fatal error: print it and end the child (the parent reports the failure). */
static void cfail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void cfail(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "bench_queue: child %d: %s\n", (int)getpid(), msg);
    _exit(3);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_queue: out of memory\n");
        exit(1);
    }
    return p;
}

static long futex(_Atomic uint32_t *addr, int op, uint32_t val)
{
    return syscall(SYS_futex, (uint32_t *)addr, op, val, NULL, NULL, 0);
}

/* ------------------------------------------------ start/ready/go barrier */

static void barrier_open(void)
{
    if (pipe2(go_pipe, O_CLOEXEC) < 0 || pipe2(ready_pipe, O_CLOEXEC) < 0 ||
        pipe2(done_pipe, O_CLOEXEC) < 0) {
        perror("bench_queue: pipe");
        exit(1);
    }
}

static void xclose(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void barrier_close(void)
{
    xclose(&go_pipe[0]);
    xclose(&go_pipe[1]);
    xclose(&ready_pipe[0]);
    xclose(&ready_pipe[1]);
    xclose(&done_pipe[0]);
    xclose(&done_pipe[1]);
}

/* In a child: say "ready", then (if `wait_go`) block until the parent says go. */
static void child_ready(bool wait_go)
{
    xclose(&go_pipe[1]);
    xclose(&done_pipe[1]);
    char c = 1;
    while (write(ready_pipe[1], &c, 1) < 0 && errno == EINTR)
        ;
    if (wait_go)
        while (read(go_pipe[0], &c, 1) < 0 && errno == EINTR)
            ;
}

#ifdef MPROC_BENCH_HAVE_ZMQ
/* In a child: block until the parent says every consumer is done. */
static void child_wait_done(void)
{
    char c;
    while (read(done_pipe[0], &c, 1) < 0 && errno == EINTR)
        ;
}
#endif

/* In the parent: wait for `n` children to be ready. */
static void wait_ready(int n)
{
    for (int i = 0; i < n;) {
        struct pollfd pf = {.fd = ready_pipe[0], .events = POLLIN};
        int r = poll(&pf, 1, 30000);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            fprintf(stderr, "bench_queue: a child did not get ready in 30 s\n");
            exit(1);
        }
        char buf[8];
        ssize_t k = read(ready_pipe[0], buf, (size_t)(n - i) < sizeof buf ? (size_t)(n - i) : sizeof buf);
        if (k > 0)
            i += (int)k;
    }
}

/* In the parent: release every child at once (EOF on the go pipe); the start time. */
static double go(void)
{
    double t = now_s();
    xclose(&go_pipe[1]);
    return t;
}

/* ------------------------------------------------------------- endpoints */

/* What one child works with: the kind's channel, one direction or both. */
typedef struct job {
    int kind;
    bool producer, rt; /* rt: the echoing side of a round trip */
    int index;         /* producer or consumer number */
    int nprod, ncons;
    size_t size;
    long count; /* messages per producer */
    mproc_queue *q, *q2;
    int rfd, wfd, rfd2, wfd2; /* pipe ends (unused ones -1) */
} job;

typedef struct endp {
    int kind;
    mproc_queue *in, *out;
    raw_reader *rr;
    int wfd;
    void *zctx, *zs;
} endp;

#ifdef MPROC_BENCH_HAVE_ZMQ
static void zfail(const char *what)
{
    cfail("zmq %s: %s", what, zmq_strerror(zmq_errno()));
}

static void zendpoint(char *out, size_t n, const char *name)
{
    snprintf(out, n, "ipc://%s/%s", zdir, name);
}

/* A ZeroMQ socket of `type` in a new context, high-water marks for `size`-byte messages. */
static void zopen(endp *e, int type, size_t size)
{
    e->zctx = zmq_ctx_new();
    if (!e->zctx)
        zfail("ctx_new");
    e->zs = zmq_socket(e->zctx, type);
    if (!e->zs)
        zfail("socket");
    /* ~1 MiB of messages each side, like the queue's ring; ZeroMQ's default (1000) at most. */
    int hwm = (int)((size_t)1 << 20) / (int)(size > 0 ? size : 1);
    hwm = hwm < 2 ? 2 : hwm > 1000 ? 1000 : hwm;
    if (zmq_setsockopt(e->zs, ZMQ_SNDHWM, &hwm, sizeof hwm) < 0 ||
        zmq_setsockopt(e->zs, ZMQ_RCVHWM, &hwm, sizeof hwm) < 0)
        zfail("setsockopt HWM");
}

static void zclose(endp *e)
{
    if (e->zs)
        zmq_close(e->zs);
    if (e->zctx)
        zmq_ctx_term(e->zctx); /* default linger: waits until queued messages are sent */
    e->zs = e->zctx = NULL;
}
#endif

static void ep_send(endp *e, const void *p, size_t n)
{
    switch (e->kind) {
    case K_MPROC: {
        int rc = mproc_queue_put(e->out, p, n, MPROC_FOREVER);
        if (rc != 0)
            cfail("mproc_queue_put: %s (%s) %s", mproc_strerror(rc), mproc_errname(rc),
                  mproc_errmsg());
        break;
    }
    case K_PIPE:
        raw_send(e->wfd, p, n);
        break;
#ifdef MPROC_BENCH_HAVE_ZMQ
    case K_ZMQ:
        while (zmq_send(e->zs, p, n, 0) < 0)
            if (zmq_errno() != EINTR)
                zfail("send");
        break;
#endif
    default:
        cfail("no sender for %s", kname[e->kind]);
    }
}

/* 1: a message of *len bytes in buf; 0: receive timeout (ZeroMQ with RCVTIMEO);
 * -1: EOF / queue closed. */
static int ep_recv(endp *e, void *buf, size_t cap, size_t *len)
{
    switch (e->kind) {
    case K_MPROC: {
        int rc = mproc_queue_get_into(e->in, buf, cap, len, MPROC_FOREVER);
        if (rc == MPROC_ECLOSED)
            return -1;
        if (rc != 0)
            cfail("mproc_queue_get_into: %s (%s) %s", mproc_strerror(rc), mproc_errname(rc),
                  mproc_errmsg());
        return 1;
    }
    case K_PIPE:
        return raw_recv(e->rr, buf, cap, len) ? 1 : -1;
#ifdef MPROC_BENCH_HAVE_ZMQ
    case K_ZMQ:
        for (;;) {
            int r = zmq_recv(e->zs, buf, cap, 0);
            if (r >= 0) {
                if ((size_t)r > cap)
                    cfail("zmq: message of %d bytes truncated to %zu", r, cap);
                *len = (size_t)r;
                return 1;
            }
            if (zmq_errno() == EAGAIN)
                return 0;
            if (zmq_errno() != EINTR)
                zfail("recv");
        }
#endif
    default:
        cfail("no receiver for %s", kname[e->kind]);
    }
}

static const unsigned char sentinel[SENTINEL_LEN] = {0xff, 0xff, 0xff, 0xff,
                                                     0xff, 0xff, 0xff, 0xff};

static bool is_sentinel(const void *buf, size_t len)
{
    return len == SENTINEL_LEN && memcmp(buf, sentinel, SENTINEL_LEN) == 0;
}

/* ------------------------------------------------------ throughput roles */

static int producer(job *j)
{
    endp e = {.kind = j->kind, .out = j->q, .wfd = j->wfd};
    xclose(&j->rfd);
#ifdef MPROC_BENCH_HAVE_ZMQ
    if (j->kind == K_ZMQ) {
        zopen(&e, ZMQ_PUSH, j->size);
        for (int c = 0; c < j->ncons; c++) {
            char ep[128], name[16];
            snprintf(name, sizeof name, "c%d", c);
            zendpoint(ep, sizeof ep, name);
            if (zmq_connect(e.zs, ep) < 0)
                zfail("connect");
        }
    }
#endif
    /* ZeroMQ fan-out cannot address sentinels (see the top comment). */
    bool counted_end = j->kind == K_ZMQ && j->ncons > 1;
    unsigned char *buf = xmalloc(j->size);
    memset(buf, 0xa5, j->size);
    child_ready(true);
    uint64_t base = (uint64_t)j->index * (uint64_t)j->count;
    for (long i = 0; i < j->count; i++) {
        uint64_t seq = base + (uint64_t)i + 1;
        memcpy(buf, &seq, 8);
        memcpy(buf + j->size - 8, &seq, 8);
        ep_send(&e, buf, j->size);
    }
    if (!counted_end)
        ep_send(&e, sentinel, SENTINEL_LEN);
#ifdef MPROC_BENCH_HAVE_ZMQ
    /* A ZeroMQ PUSH that goes away while its PULL peer is at its high-water
     * mark can lose the messages still in flight (seen in about 1 run in 3 of
     * 2P -> 2C with --quick, libzmq 4.3.4), even
     * with an infinite linger: keep the socket until every consumer is done. */
    if (j->kind == K_ZMQ)
        child_wait_done();
    zclose(&e);
#endif
    free(buf);
    return 0;
}

static int consumer(job *j)
{
    endp e = {.kind = j->kind, .in = j->q};
    cslot *s = &sh->cons[j->index];
    bool counted_end = j->kind == K_ZMQ && j->ncons > 1;
    uint64_t total = (uint64_t)j->nprod * (uint64_t)j->count;
    if (j->kind == K_PIPE) {
        xclose(&j->wfd);
        e.rr = xmalloc(sizeof *e.rr);
        e.rr->fd = j->rfd;
        e.rr->pos = e.rr->len = 0;
    }
#ifdef MPROC_BENCH_HAVE_ZMQ
    if (j->kind == K_ZMQ) {
        zopen(&e, ZMQ_PULL, j->size);
        if (counted_end) {
            int ms = 100;
            if (zmq_setsockopt(e.zs, ZMQ_RCVTIMEO, &ms, sizeof ms) < 0)
                zfail("setsockopt RCVTIMEO");
        }
        char ep[128], name[16];
        snprintf(name, sizeof name, "c%d", j->index);
        zendpoint(ep, sizeof ep, name);
        if (zmq_bind(e.zs, ep) < 0)
            zfail("bind");
    }
#endif
    size_t cap = j->size > SENTINEL_LEN ? j->size : SENTINEL_LEN;
    unsigned char *buf = xmalloc(cap), *ref = xmalloc(j->size);
    memset(ref, 0xa5, j->size); /* the producers' payload between the sequence numbers */
    uint64_t last[MAXP], n = 0, sum = 0;
    for (int p = 0; p < MAXP; p++)
        last[p] = (uint64_t)p * (uint64_t)j->count; /* the sequence before producer p's first */
    child_ready(true);
    double t_last = now_s();
    for (;;) {
        size_t len = 0;
        bool check_body = verify_all || n == 0;
        if (check_body)
            memset(buf, 0, cap);
        int r = ep_recv(&e, buf, cap, &len);
        if (r < 0)
            cfail("%s consumer: EOF / closed after %llu messages", kname[j->kind],
                  (unsigned long long)n);
        if (r == 0) { /* counting ZeroMQ consumer, 100 ms without a message */
            uint64_t all = 0;
            for (int c = 0; c < j->ncons; c++)
                all += atomic_load_explicit(&sh->cons[c].count, memory_order_relaxed);
            if (all >= total)
                break;
            if (now_s() - t_last > 30)
                cfail("ZeroMQ consumer: stalled at %llu of %llu messages", (unsigned long long)all,
                      (unsigned long long)total);
            continue;
        }
        if (is_sentinel(buf, len)) {
            if (counted_end)
                cfail("unexpected sentinel");
            break;
        }
        if (len != j->size)
            cfail("%s: message of %zu bytes, want %zu", kname[j->kind], len, j->size);
        uint64_t seq = 0, tail = 0;
        memcpy(&seq, buf, 8);
        memcpy(&tail, buf + j->size - 8, 8);
        if (seq != tail)
            cfail("%s: torn message (head seq %llu, tail seq %llu)", kname[j->kind],
                  (unsigned long long)seq, (unsigned long long)tail);
        if (check_body && memcmp(buf + 8, ref + 8, j->size - 16) != 0)
            cfail("%s: corrupted payload in message %llu", kname[j->kind], (unsigned long long)seq);
        uint64_t p = seq ? (seq - 1) / (uint64_t)j->count : UINT64_MAX;
        if (p >= (uint64_t)j->nprod)
            cfail("%s: bad sequence number %llu", kname[j->kind], (unsigned long long)seq);
        if (seq <= last[p] || (j->ncons == 1 && seq != last[p] + 1))
            cfail("%s: producer %llu's message %llu after %llu (lost, duplicated or reordered)",
                  kname[j->kind], (unsigned long long)p, (unsigned long long)seq,
                  (unsigned long long)last[p]);
        last[p] = seq;
        n++;
        sum += seq;
        if (counted_end) {
            t_last = now_s();
            atomic_store_explicit(&s->count, n, memory_order_relaxed);
        }
    }
    s->t_end = counted_end ? t_last : now_s();
    s->sum = sum;
    atomic_store_explicit(&s->count, n, memory_order_relaxed);
#ifdef MPROC_BENCH_HAVE_ZMQ
    zclose(&e);
#endif
    free(buf);
    free(ref);
    free(e.rr);
    return 0;
}

/* ----------------------------------------------------- round-trip roles */

/* The child of a round trip: echo until the sentinel (or EOF). */
static int rt_echo(job *j)
{
    endp e = {.kind = j->kind, .in = j->q, .out = j->q2, .wfd = j->wfd2};
    unsigned char buf[RT_SIZE];
    if (j->kind == K_FUTEX) {
        child_ready(false);
        uint32_t seen = 0;
        for (;;) {
            uint32_t v;
            while ((v = atomic_load_explicit(&sh->word, memory_order_acquire)) == seen)
                futex(&sh->word, FUTEX_WAIT, seen);
            if (v == FUTEX_STOP)
                break;
            memcpy(buf, sh->payload, RT_SIZE); /* the message in, and back out */
            memcpy(sh->payload, buf, RT_SIZE);
            seen = v + 1;
            atomic_store_explicit(&sh->word, seen, memory_order_release);
            futex(&sh->word, FUTEX_WAKE, 1);
        }
        return 0;
    }
    if (j->kind == K_PIPE) {
        xclose(&j->wfd);
        xclose(&j->rfd2);
        e.rr = xmalloc(sizeof *e.rr);
        e.rr->fd = j->rfd;
        e.rr->pos = e.rr->len = 0;
    }
#ifdef MPROC_BENCH_HAVE_ZMQ
    char ep[128];
    if (j->kind == K_ZMQ) {
        zopen(&e, ZMQ_REP, RT_SIZE);
        zendpoint(ep, sizeof ep, "rt");
        if (zmq_bind(e.zs, ep) < 0)
            zfail("bind");
    }
#endif
    child_ready(false);
    for (;;) {
        size_t len = 0;
        if (ep_recv(&e, buf, sizeof buf, &len) <= 0 || is_sentinel(buf, len))
            break;
        ep_send(&e, buf, len);
    }
#ifdef MPROC_BENCH_HAVE_ZMQ
    zclose(&e);
#endif
    free(e.rr);
    return 0;
}

/* ------------------------------------------------------------- children */

typedef struct child {
    pid_t pid;
    mproc_process *p;
} child;

static int mproc_target(mproc_args *a)
{
    size_t n = 0;
    const void *b = mproc_args_bytes(a, 0, &n);
    job j;
    if (!b || n != sizeof j)
        cfail("bad job argument");
    memcpy(&j, b, sizeof j);
    j.q = mproc_args_object(a, 1, &mproc_queue_type);
    j.q2 = j.rt ? mproc_args_object(a, 2, &mproc_queue_type) : NULL;
    if (!j.q || (j.rt && !j.q2))
        cfail("no queue in the arguments");
    return j.rt ? rt_echo(&j) : j.producer ? producer(&j) : consumer(&j);
}

/* Start a child for job j: an mproc Process (default start method: fork) for
 * the mproc kind, plain fork() for the anchors. */
static child start_child(job *j)
{
    child c = {0};
    fflush(NULL);
    if (j->kind == K_MPROC) {
        mproc_args *a = mproc_args_new();
        if (!a)
            die("mproc_args_new", MPROC_ENOMEM);
        OK(mproc_args_add_bytes(a, j, sizeof *j));
        OK(mproc_args_add_object(a, &mproc_queue_type, j->q));
        if (j->rt)
            OK(mproc_args_add_object(a, &mproc_queue_type, j->q2));
        OK(mproc_process_new(&c.p, mproc_target, a, NULL));
        mproc_args_free(a);
        OK(mproc_process_start(c.p));
        return c;
    }
    c.pid = fork();
    if (c.pid < 0) {
        perror("bench_queue: fork");
        exit(1);
    }
    if (c.pid == 0)
        _exit(j->rt ? rt_echo(j) : j->producer ? producer(j) : consumer(j));
    return c;
}

/* Wait for a child until `deadline` (then kill it). true if it exited with 0. */
static bool child_wait(child *c, double deadline, const char *what)
{
    double left = deadline - now_s();
    if (left < 0)
        left = 0;
    bool ok;
    if (c->p) {
        int rc = mproc_process_join(c->p, left);
        if (rc == MPROC_ETIMEDOUT) {
            fprintf(stderr, "bench_queue: %s: child %d still running at the deadline: killed\n",
                    what, (int)mproc_process_pid(c->p));
            mproc_process_kill(c->p);
            mproc_process_join(c->p, MPROC_FOREVER);
            ok = false;
        } else {
            OK(rc);
            int code = mproc_process_exitcode(c->p);
            ok = code == 0;
            if (!ok)
                fprintf(stderr, "bench_queue: %s: child %d exit code %d\n", what,
                        (int)mproc_process_pid(c->p), code);
        }
        mproc_process_close(c->p);
        c->p = NULL;
        return ok;
    }
    int pfd = (int)syscall(SYS_pidfd_open, c->pid, 0);
    bool killed = false;
    if (pfd >= 0) {
        struct pollfd pf = {.fd = pfd, .events = POLLIN};
        int r;
        while ((r = poll(&pf, 1, (int)(left * 1000))) < 0 && errno == EINTR)
            ;
        if (r == 0) {
            fprintf(stderr, "bench_queue: %s: child %d still running at the deadline: killed\n",
                    what, (int)c->pid);
            kill(c->pid, SIGKILL);
            killed = true;
        }
        close(pfd);
    }
    int st = 0;
    while (waitpid(c->pid, &st, 0) < 0 && errno == EINTR)
        ;
    ok = !killed && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (!ok && !killed)
        fprintf(stderr, "bench_queue: %s: child %d status 0x%x\n", what, (int)c->pid, st);
    c->pid = 0;
    return ok;
}

/* ---------------------------------------------------------------- runs */

/* Messages per second: nprod producers x count messages of size bytes into ncons consumers. */
static double tput_run(int kind, size_t size, long count, int nprod, int ncons)
{
    char what[96];
    snprintf(what, sizeof what, "%s %zu B %dP -> %dC", kname[kind], size, nprod, ncons);
    memset(sh->cons, 0, sizeof sh->cons);
    barrier_open();
    job base = {.kind = kind, .nprod = nprod, .ncons = ncons, .size = size, .count = count,
                .rfd = -1, .wfd = -1, .rfd2 = -1, .wfd2 = -1};
    mproc_queue *q = NULL;
    if (kind == K_MPROC) {
        OK(mproc_queue_new(&q, NULL));
        base.q = q;
    } else if (kind == K_PIPE) {
        int pfd[2];
        if (pipe2(pfd, O_CLOEXEC) < 0) {
            perror("bench_queue: pipe");
            exit(1);
        }
        (void)fcntl(pfd[1], F_SETPIPE_SZ, 1 << 20); /* best effort */
        base.rfd = pfd[0];
        base.wfd = pfd[1];
    }
    child ch[MAXP + MAXC];
    int n = 0;
    for (int c = 0; c < ncons; c++) { /* consumers first: ZeroMQ's bind before the connects */
        job j = base;
        j.index = c;
        ch[n++] = start_child(&j);
    }
    wait_ready(ncons);
    for (int p = 0; p < nprod; p++) {
        job j = base;
        j.producer = true;
        j.index = p;
        ch[n++] = start_child(&j);
    }
    wait_ready(nprod);
    xclose(&base.rfd);
    xclose(&base.wfd);
    double t0 = go();
    double deadline = t0 + RUN_DEADLINE_S;
    bool ok = true;
    for (int i = 0; i < n; i++) { /* the consumers, then (done) the producers */
        if (i == ncons)
            xclose(&done_pipe[1]);
        ok &= child_wait(&ch[i], deadline, what);
    }
    barrier_close();
    mproc_queue_close(q);
    if (!ok) {
        fprintf(stderr, "bench_queue: %s failed\n", what);
        exit(1);
    }
    uint64_t got = 0, sum = 0, want = (uint64_t)nprod * (uint64_t)count;
    double t1 = t0;
    for (int c = 0; c < ncons; c++) {
        got += atomic_load(&sh->cons[c].count);
        sum += sh->cons[c].sum;
        if (sh->cons[c].t_end > t1)
            t1 = sh->cons[c].t_end;
    }
    if (got != want || sum != want * (want + 1) / 2) {
        fprintf(stderr, "bench_queue: %s: received %llu messages (sequence sum %llu), want %llu (%llu)\n",
                what, (unsigned long long)got, (unsigned long long)sum, (unsigned long long)want,
                (unsigned long long)(want * (want + 1) / 2));
        exit(1);
    }
    return (double)want / (t1 - t0);
}

/* One round trip from the parent's side; checks the echo. */
static void rt_once(endp *e, unsigned char *buf, uint64_t seq)
{
    memcpy(buf, &seq, 8);
    ep_send(e, buf, RT_SIZE);
    size_t len = 0;
    uint64_t back = 0;
    if (ep_recv(e, buf, RT_SIZE, &len) <= 0)
        cfail("%s round trip: no echo", kname[e->kind]);
    memcpy(&back, buf, 8);
    if (len != RT_SIZE || back != seq)
        cfail("%s round trip: echo of %zu bytes, seq %llu, want %d, %llu", kname[e->kind], len,
              (unsigned long long)back, RT_SIZE, (unsigned long long)seq);
}

static void futex_once(unsigned char *buf, uint32_t *word)
{
    memcpy(sh->payload, buf, RT_SIZE);
    uint32_t odd = *word + 1;
    atomic_store_explicit(&sh->word, odd, memory_order_release);
    futex(&sh->word, FUTEX_WAKE, 1);
    while (atomic_load_explicit(&sh->word, memory_order_acquire) == odd)
        futex(&sh->word, FUTEX_WAIT, odd);
    *word = odd + 1;
    if (memcmp(sh->payload, buf, RT_SIZE) != 0) {
        fprintf(stderr, "bench_queue: futex round trip: wrong echo\n");
        exit(1);
    }
}

/* µs per 64-byte round trip: median of `batches` batches of `iters`. */
static double rt_run(int kind, long iters, int batches)
{
    char what[64];
    snprintf(what, sizeof what, "%s round trip", kname[kind]);
    barrier_open();
    job j = {.kind = kind, .rt = true, .rfd = -1, .wfd = -1, .rfd2 = -1, .wfd2 = -1};
    endp e = {.kind = kind, .wfd = -1};
    mproc_queue *q1 = NULL, *q2 = NULL;
    int p2c[2] = {-1, -1}, c2p[2] = {-1, -1};
    if (kind == K_MPROC) {
        OK(mproc_queue_new(&q1, NULL));
        OK(mproc_queue_new(&q2, NULL));
        j.q = q1;
        j.q2 = q2;
        e.out = q1;
        e.in = q2;
    } else if (kind == K_PIPE) {
        if (pipe2(p2c, O_CLOEXEC) < 0 || pipe2(c2p, O_CLOEXEC) < 0) {
            perror("bench_queue: pipe");
            exit(1);
        }
        j.rfd = p2c[0];
        j.wfd = p2c[1];
        j.rfd2 = c2p[0];
        j.wfd2 = c2p[1];
    } else if (kind == K_FUTEX) {
        atomic_store(&sh->word, 0);
    }
    child ch = start_child(&j);
    wait_ready(1);
    if (kind == K_PIPE) {
        xclose(&p2c[0]);
        xclose(&c2p[1]);
        e.wfd = p2c[1];
        e.rr = xmalloc(sizeof *e.rr);
        e.rr->fd = c2p[0];
        e.rr->pos = e.rr->len = 0;
    }
#ifdef MPROC_BENCH_HAVE_ZMQ
    if (kind == K_ZMQ) {
        zopen(&e, ZMQ_REQ, RT_SIZE);
        char ep[128];
        zendpoint(ep, sizeof ep, "rt");
        if (zmq_connect(e.zs, ep) < 0) {
            fprintf(stderr, "bench_queue: zmq_connect: %s\n", zmq_strerror(zmq_errno()));
            exit(1);
        }
    }
#endif
    unsigned char buf[RT_SIZE];
    memset(buf, 0x5a, sizeof buf);
    uint64_t seq = 0;
    uint32_t word = 0;
    long warm = iters / 10 > 100 ? iters / 10 : 100;
    double v[99];
    for (int b = -1; b < batches; b++) { /* batch -1: warm-up */
        long n = b < 0 ? warm : iters;
        double t0 = now_s();
        for (long i = 0; i < n; i++) {
            seq++;
            if (kind == K_FUTEX) {
                memcpy(buf, &seq, 8);
                futex_once(buf, &word);
            } else {
                rt_once(&e, buf, seq);
            }
        }
        if (b >= 0)
            v[b] = (now_s() - t0) / (double)n * 1e6;
    }
    /* Stop the echo. */
    if (kind == K_FUTEX) {
        atomic_store(&sh->word, FUTEX_STOP);
        futex(&sh->word, FUTEX_WAKE, 1);
    } else if (kind == K_PIPE) {
        xclose(&e.wfd); /* EOF */
    } else {
        ep_send(&e, sentinel, SENTINEL_LEN);
    }
    bool ok = child_wait(&ch, now_s() + 30, what);
#ifdef MPROC_BENCH_HAVE_ZMQ
    zclose(&e);
#endif
    xclose(&c2p[0]);
    free(e.rr);
    mproc_queue_close(q1);
    mproc_queue_close(q2);
    barrier_close();
    if (!ok) {
        fprintf(stderr, "bench_queue: %s failed\n", what);
        exit(1);
    }
    return median(v, batches);
}

/* ---------------------------------------------------------------- python */

typedef struct py_results {
    bool ok;
    double mps[NW]; /* messages/s per throughput workload */
    double rt_us;
} py_results;

static py_results run_python(const char *python, double scale, int rounds, int batches)
{
    py_results r = {0};
    long c[NW], rt = (long)((double)py_rt_count * scale);
    for (int w = 0; w < NW; w++) {
        c[w] = (long)((double)py_count[w] * scale);
        if (c[w] < 1)
            c[w] = 1;
    }
    if (rt < 100)
        rt = 100;
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s %s/queue.py --small %ld --medium %ld --big %ld --mpmc %ld --rt %ld "
             "--batches %d --rounds %d",
             python, MPROC_BENCH_PYDIR, c[W_64], c[W_4K], c[W_1M], c[W_MPMC], rt, batches, rounds);
    static const char *const keys[NW + 1] = {"t64_mps", "t4k_mps", "t1m_mps", "mpmc_mps", "rt_us"};
    double v[NW + 1] = {0};
    r.ok = bench_python_keys(cmd, keys, v, NW + 1);
    for (int w = 0; w < NW; w++)
        r.mps[w] = v[w];
    r.rt_us = v[NW];
    return r;
}

/* ----------------------------------------------------------------- main */

static void fmt_rate(char *out, size_t n, double mps, size_t size)
{
    double mb = mps * (double)size / 1e6;
    if (mps >= 1e6)
        snprintf(out, n, "%.2fM (%.0f)", mps / 1e6, mb);
    else if (mps >= 1e3)
        snprintf(out, n, "%.1fk (%.0f)", mps / 1e3, mb);
    else
        snprintf(out, n, "%.0f (%.0f)", mps, mb);
}

static void cleanup_zdir(void)
{
    if (!zdir[0])
        return;
    static const char *names[] = {"c0", "c1", "rt"};
    char p[128];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", zdir, names[i]);
        unlink(p);
    }
    rmdir(zdir);
}

static void usage(FILE *f, const char *argv0)
{
    fprintf(f,
            "usage: %s [--quick] [--scale X] [--rounds R] [--batches B] [--verify] "
            "[--no-python] [--no-zmq] [--python PATH]\n"
            "  --quick     smoke run: counts / 20, 1 round, 3 round-trip batches, --verify\n"
            "  --verify    check every message's whole payload (slower; timings then include it)\n"
            "  --scale X   multiply every message count by X (default 1)\n"
            "  --rounds R  throughput rounds, median taken (default 3)\n"
            "  --batches B round-trip batches, median taken (default 5)\n",
            argv0);
}

int main(int argc, char **argv)
{
    bench_prog = "bench_queue";
    OK(mproc_init(&argc, &argv));
    signal(SIGPIPE, SIG_IGN);
    double scale = 1.0;
    int rounds = 3, batches = 5;
    bool python = true, quick = false, rounds_set = false, batches_set = false;
    const char *py = "python3";
#ifdef MPROC_BENCH_HAVE_ZMQ
    zmq_on = true;
#endif
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = true;
        else if (!strcmp(argv[i], "--scale") && i + 1 < argc)
            scale = atof(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]), rounds_set = true;
        else if (!strcmp(argv[i], "--batches") && i + 1 < argc)
            batches = atoi(argv[++i]), batches_set = true;
        else if (!strcmp(argv[i], "--verify"))
            verify_all = true;
        else if (!strcmp(argv[i], "--no-python"))
            python = false;
        else if (!strcmp(argv[i], "--no-zmq"))
            zmq_on = false;
        else if (!strcmp(argv[i], "--python") && i + 1 < argc)
            py = argv[++i];
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout, argv[0]);
            return 0;
        } else {
            usage(stderr, argv[0]);
            return 2;
        }
    }
    if (quick) {
        verify_all = true;
        scale *= 0.05;
        if (!rounds_set)
            rounds = 1;
        if (!batches_set)
            batches = 3;
    }
    if (!(scale > 0) || rounds < 1 || rounds > 99 || batches < 1 || batches > 99) {
        fprintf(stderr, "bench_queue: scale > 0, 1 <= rounds <= 99, 1 <= batches <= 99\n");
        return 2;
    }

    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        perror("bench_queue: mmap");
        return 1;
    }
    if (zmq_on) {
        snprintf(zdir, sizeof zdir, "/tmp/mproc-bench-zmq-XXXXXX");
        if (!mkdtemp(zdir)) {
            perror("bench_queue: mkdtemp");
            return 1;
        }
        atexit(cleanup_zdir);
    }

    long count[NW][3];
    for (int w = 0; w < NW; w++)
        for (int k = 0; k < 3; k++) {
            count[w][k] = (long)((double)wcount[w][k] * scale);
            if (wcount[w][k] > 0 && count[w][k] < 1)
                count[w][k] = 1;
        }
    long rtn[NK];
    for (int k = 0; k < NK; k++) {
        rtn[k] = (long)((double)rt_count[k] * scale);
        if (rtn[k] < 100)
            rtn[k] = 100;
    }
    bool have[NW][3];
    for (int w = 0; w < NW; w++) {
        have[w][K_MPROC] = true;
        have[w][K_PIPE] = count[w][K_PIPE] > 0;
        have[w][K_ZMQ] = zmq_on;
    }

    /* Warm-up: each kind once, 64 B, a tenth of the count. */
    for (int k = 0; k < 3; k++)
        if (have[W_64][k])
            tput_run(k, wsize[W_64], count[W_64][k] / 10 > 0 ? count[W_64][k] / 10 : 1, 1, 1);

    double v[NW][3][99];
    for (int r = 0; r < rounds; r++)
        for (int w = 0; w < NW; w++)
            for (int k = 0; k < 3; k++)
                if (have[w][k])
                    v[w][k][r] = tput_run(k, wsize[w], count[w][k], wprod[w], wprod[w]);
    double med[NW][3] = {{0}};
    for (int w = 0; w < NW; w++)
        for (int k = 0; k < 3; k++)
            if (have[w][k])
                med[w][k] = median(v[w][k], rounds);

    double rt[NK] = {0};
    for (int k = 0; k < NK; k++)
        if (k != K_ZMQ || zmq_on)
            rt[k] = rt_run(k, rtn[k], batches);

    py_results pr = {0};
    if (python) {
        pr = run_python(py, scale, rounds, batches);
        if (!pr.ok)
            fprintf(stderr, "bench_queue: the Python anchor failed; Python columns are n/a\n");
    }

    printf("\nQueue throughput, messages/s (MB/s), 1 producer -> 1 consumer unless noted "
           "(median of %d rounds)\n", rounds);
    printf("| workload      | mproc          | raw pipe       | ZeroMQ         | Python         "
           "| vs pipe | vs ZeroMQ | vs Python |\n");
    printf("|---------------|---------------:|---------------:|---------------:|---------------:"
           "|--------:|----------:|----------:|\n");
    for (int w = 0; w < NW; w++) {
        char cell[4][32], ratio[3][16];
        double m = med[w][K_MPROC];
        double anchor[4] = {m, med[w][K_PIPE], med[w][K_ZMQ], pr.ok ? pr.mps[w] : 0};
        bool on[4] = {true, have[w][K_PIPE], have[w][K_ZMQ], pr.ok};
        for (int a = 0; a < 4; a++) {
            if (on[a] && anchor[a] > 0)
                fmt_rate(cell[a], sizeof cell[a], anchor[a], wsize[w]);
            else
                snprintf(cell[a], sizeof cell[a], "n/a");
            if (a > 0) {
                if (on[a] && anchor[a] > 0)
                    snprintf(ratio[a - 1], sizeof ratio[a - 1], "%.1fx", m / anchor[a]);
                else
                    snprintf(ratio[a - 1], sizeof ratio[a - 1], "n/a");
            }
        }
        printf("| %-13s | %14s | %14s | %14s | %14s | %7s | %9s | %9s |\n", wname[w], cell[0],
               cell[1], cell[2], cell[3], ratio[0], ratio[1], ratio[2]);
    }
    printf("(messages per producer: 64 B %ld / %ld / %ld, 4 KiB %ld / %ld / %ld, 1 MiB %ld / %ld / "
           "%ld, 2P -> 2C %ld / - / %ld for mproc / pipe / ZeroMQ;",
           count[W_64][0], count[W_64][1], count[W_64][2], count[W_4K][0], count[W_4K][1],
           count[W_4K][2], count[W_1M][0], count[W_1M][1], count[W_1M][2], count[W_MPMC][0],
           count[W_MPMC][2]);
    printf(" Python %ld / %ld / %ld / %ld; \"vs\" = mproc's rate / the anchor's)\n",
           (long)(py_count[W_64] * scale), (long)(py_count[W_4K] * scale),
           (long)(py_count[W_1M] * scale), (long)(py_count[W_MPMC] * scale));
    if (!zmq_on)
        printf("(ZeroMQ: %s)\n",
#ifdef MPROC_BENCH_HAVE_ZMQ
               "skipped (--no-zmq)"
#else
               "not built: libzmq was not found by pkg-config"
#endif
        );

    printf("\nRound trip of a 64-byte message, µs (median of %d batches)\n", batches);
    printf("| workload  | mproc µs | futex µs | mproc/futex | pipe µs | ZeroMQ REQ/REP µs "
           "| Python µs | pipe/mproc | ZeroMQ/mproc | Python/mproc |\n");
    printf("|-----------|---------:|---------:|------------:|--------:|------------------:"
           "|----------:|-----------:|-------------:|-------------:|\n");
    {
        char z[16] = "n/a", zr[16] = "n/a", p[16] = "n/a", prr[16] = "n/a";
        double m = rt[K_MPROC];
        if (zmq_on) {
            snprintf(z, sizeof z, "%.2f", rt[K_ZMQ]);
            snprintf(zr, sizeof zr, "%.1fx", rt[K_ZMQ] / m);
        }
        if (pr.ok) {
            snprintf(p, sizeof p, "%.2f", pr.rt_us);
            snprintf(prr, sizeof prr, "%.1fx", pr.rt_us / m);
        }
        printf("| rt 64 B   | %8.2f | %8.2f | %10.2fx | %7.2f | %17s | %9s | %9.1fx | %12s | %12s |\n",
               m, rt[K_FUTEX], m / rt[K_FUTEX], rt[K_PIPE], z, p, rt[K_PIPE] / m, zr, prr);
    }
    printf("(round trips per batch: mproc %ld, futex %ld, pipe %ld, ZeroMQ %ld, Python %ld; mproc: "
           "two queues, futex: FUTEX_WAIT/FUTEX_WAKE on a shared word, no spinning)\n",
           rtn[K_MPROC], rtn[K_FUTEX], rtn[K_PIPE], rtn[K_ZMQ],
           (long)(py_rt_count * scale) < 100 ? 100 : (long)(py_rt_count * scale));

    double vs_py = pr.ok ? med[W_64][K_MPROC] / pr.mps[W_64] : 0;
    double vs_zmq = zmq_on ? med[W_64][K_MPROC] / med[W_64][K_ZMQ] : 0;
    double vs_futex = rt[K_MPROC] / rt[K_FUTEX];
    char s1[48], s2[48], s3[48];
    if (pr.ok)
        snprintf(s1, sizeof s1, "%s (%.1fx)", vs_py >= PYTHON_TARGET ? "met" : "MISSED", vs_py);
    else
        snprintf(s1, sizeof s1, "%s", python ? "no Python" : "not measured");
    if (zmq_on)
        snprintf(s2, sizeof s2, "%s (%.1fx)", vs_zmq >= ZMQ_TARGET ? "met" : "MISSED", vs_zmq);
    else
        snprintf(s2, sizeof s2, "not measured");
    snprintf(s3, sizeof s3, "%s (%.2fx)", vs_futex <= FUTEX_TARGET ? "met" : "MISSED", vs_futex);
    printf("\ntargets: 64 B throughput >= %.0fx Python: %s; >= %.0fx ZeroMQ: %s; "
           "round trip <= %.1fx futex ping-pong: %s\n",
           PYTHON_TARGET, s1, ZMQ_TARGET, s2, FUTEX_TARGET, s3);
    munmap(sh, sizeof *sh);
    return 0;
}
