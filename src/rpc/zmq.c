/* zmq.c — the MPROC_RPC_ZMQ transport: a ROUTER server whose receiving
 * thread hands each request to an idle worker thread, and DEALER proxies.
 *
 * Server threads. Each server has a ZeroMQ context of its own, so inproc
 * names never clash and stop can shut everything down at once.
 *   broker:  owns the frontend ROUTER (clients), the backend ROUTER (inproc,
 *            to the workers) and a PAIR receiving the frontend's monitor
 *            events. It reads a client request only when a worker is idle
 *            (the "load-balancing broker" of the ZeroMQ guide), so a slow
 *            call holds up one worker and further requests wait in
 *            ZeroMQ's queues rather than behind it.
 *   workers: a DEALER each, connected to the backend; run rpc__answer().
 * Backend messages, worker -> broker: ["R"] (idle, nothing to send back) or
 * ["A", envelope..., answer]; broker -> worker: [envelope..., request],
 * where the envelope is every frame of the client's message but the last
 * (the ROUTER's peer id, then the empty delimiter of REQ/DEALER clients).
 * A request rpc__answer cannot answer (msgpack-rpc garbage without a
 * msgid) gets nothing back: ZeroMQ cannot drop one client, so it times out.
 *
 * fork: as rpc.c; the context's threads exist only in the process that
 * made the server or proxy, so a child must make its own. */
#include "rpc_int.h"

#ifdef MPROC_HAVE_ZMQ

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

#define ZMQ_PREFIX "zmq:"
#define ZMQ_PREFIX_LEN 4
#define ZMQ_DEFAULT_WORKERS 8
#define ZMQ_MAX_WORKERS 64
#define ZMQ_MAX_FRAMES 32        /* envelope frames + the request; more is dropped */
#define ZMQ_STOP_LINGER_MS 1000  /* at most this long to flush answers at stop */
#define BACKEND_EP "inproc://mproc-rpc-workers"
#define MONITOR_EP "inproc://mproc-rpc-monitor"

bool mproc_rpc_have_zmq(void)
{
    return true;
}

/* The last ZeroMQ failure as an mproc code, with a message. */
static int zfail(const char *what, const char *endpoint)
{
    int e = zmq_errno();
    int rc;
    if (e == ETERM)
        rc = MPROC_ECLOSED;
    else if (e == EINVAL || e == EPROTONOSUPPORT || e == ENOCOMPATPROTO)
        rc = MPROC_EINVAL;
    else if (e > 0 && e < ZMQ_HAUSNUMERO)
        rc = -e;
    else
        rc = MPROC_EIO;
    return mproc__fail(rc, "rpc: zmq %s%s%s: %s", what, endpoint ? " " : "",
                       endpoint ? endpoint : "", zmq_strerror(e));
}

/* The ZeroMQ endpoint of a "zmq:..." address, or NULL. */
static const char *endpoint_of(const char *address)
{
    if (strncmp(address, ZMQ_PREFIX, ZMQ_PREFIX_LEN) != 0 || !address[ZMQ_PREFIX_LEN])
        return NULL;
    return address + ZMQ_PREFIX_LEN;
}

static int bad_address(const char *address)
{
    return mproc__fail(MPROC_EINVAL, "rpc: '%.200s' is no ZeroMQ address (want zmq:tcp://host:port "
                                     "or zmq:ipc:///path)", address);
}

static int set_int(void *sock, int opt, int v)
{
    return zmq_setsockopt(sock, opt, &v, sizeof v);
}

static void term_ctx(void *ctx)
{
    while (zmq_ctx_term(ctx) < 0 && zmq_errno() == EINTR)
        ;
}

/* Move the remaining frames of the message being read from `from` to `to`
 * (NULL: drop them). `more`: whether frames remain. -1 on a failure. */
static int pass_rest(void *from, void *to, bool more)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    int rc = 0;
    while (more) {
        if (zmq_msg_recv(&m, from, 0) < 0) {
            if (zmq_errno() == EINTR)
                continue;
            rc = -1;
            break;
        }
        more = zmq_msg_more(&m);
        if (to && rc == 0 && zmq_msg_send(&m, to, more ? ZMQ_SNDMORE : 0) < 0)
            rc = -1; /* keep reading: the rest of the message must go */
    }
    zmq_msg_close(&m);
    return rc;
}

/* ------------------------------------------------------------ server */

enum { W_STARTING, W_IDLE, W_BUSY };

typedef struct zworker {
    struct rpc_zmq_server *z;
    unsigned index;
    pthread_t thr;
} zworker;

struct rpc_zmq_server {
    /* Set by new/start, read-only while serving. */
    mproc_rpc_handler *h;
    mproc_rpc_wire wire;
    size_t max_message;
    size_t nworkers;
    char *address; /* "zmq:" + the bound endpoint */
    void *ctx;
    /* Sockets: the broker thread's while it runs, the caller's otherwise. */
    void *front, *back, *mon;
    /* The caller's (start/stop/free). */
    zworker *w;
    size_t nrunning; /* worker threads created */
    pthread_t broker;
    bool broker_running, started;
    int wakefd; /* eventfd: stop wakes the broker's zmq_poll; -1 when closed */
    /* The broker's. */
    unsigned char *state; /* W_* per worker */
    unsigned *idle;       /* stack of idle worker indexes */
    size_t nidle, nbusy;
    /* Shared. */
    atomic_bool stopping;
    _Atomic int64_t stop_ns; /* stop's deadline; set right after `stopping` */
    atomic_bool cut;         /* the broker left with calls running */
    _Atomic long nconns;     /* accepted - disconnected, from the monitor */
};

int rpc__zmq_server_new(rpc_zmq_server **out, mproc_rpc_handler *h, const char *address,
                        const mproc_rpc_server_opts *o)
{
    const char *ep = endpoint_of(address);
    if (!ep)
        return bad_address(address);
    rpc_zmq_server *z = calloc(1, sizeof *z);
    if (!z)
        return MPROC_ENOMEM;
    z->h = h;
    z->wire = o->wire;
    z->max_message = o->max_message;
    z->nworkers = !o->max_connections                    ? ZMQ_DEFAULT_WORKERS
                  : o->max_connections > ZMQ_MAX_WORKERS ? ZMQ_MAX_WORKERS
                                                         : o->max_connections;
    atomic_init(&z->stop_ns, INT64_MAX);
    z->wakefd = -1;
    int rc = MPROC_ENOMEM;
    z->state = calloc(z->nworkers, 1);
    z->idle = calloc(z->nworkers, sizeof *z->idle);
    z->w = calloc(z->nworkers, sizeof *z->w);
    if (!z->state || !z->idle || !z->w)
        goto fail;
    z->ctx = zmq_ctx_new();
    if (!z->ctx) {
        rc = zfail("context", NULL);
        goto fail;
    }
    /* ZeroMQ drops a peer whose frame is over the limit, as the other
     * transports close such a connection. */
    int64_t max = o->max_message > INT64_MAX ? -1 : (int64_t)o->max_message;
    z->front = zmq_socket(z->ctx, ZMQ_ROUTER);
    if (!z->front || set_int(z->front, ZMQ_LINGER, 0) ||
        zmq_setsockopt(z->front, ZMQ_MAXMSGSIZE, &max, sizeof max)) {
        rc = zfail("socket", NULL);
        goto fail;
    }
    /* The connection count: accepted/disconnected events, from before the
     * bind so none is missed. ZeroMQ's I/O thread blocks on an event it
     * cannot queue, so the reader is connected before any can happen and
     * its queue is unbounded (RCVHWM 0 makes the inproc pipe so) until the
     * broker reads it. */
    if (zmq_socket_monitor(z->front, MONITOR_EP, ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) < 0 ||
        !(z->mon = zmq_socket(z->ctx, ZMQ_PAIR)) || set_int(z->mon, ZMQ_LINGER, 0) ||
        set_int(z->mon, ZMQ_RCVHWM, 0) || zmq_connect(z->mon, MONITOR_EP) < 0) {
        rc = zfail("monitor", MONITOR_EP);
        goto fail;
    }
    if (zmq_bind(z->front, ep) < 0) {
        rc = zfail("bind", ep);
        goto fail;
    }
    char bound[512];
    size_t blen = sizeof bound;
    if (zmq_getsockopt(z->front, ZMQ_LAST_ENDPOINT, bound, &blen) < 0) {
        rc = zfail("last endpoint", ep);
        goto fail;
    }
    bound[sizeof bound - 1] = 0;
    z->address = malloc(ZMQ_PREFIX_LEN + strlen(bound) + 1);
    if (!z->address) {
        rc = MPROC_ENOMEM;
        goto fail;
    }
    sprintf(z->address, "%s%s", ZMQ_PREFIX, bound);
    *out = z;
    return 0;
fail:
    if (z->mon)
        zmq_close(z->mon);
    if (z->front)
        zmq_close(z->front);
    if (z->ctx)
        term_ctx(z->ctx);
    free(z->state);
    free(z->idle);
    free(z->w);
    free(z);
    return rc;
}

const char *rpc__zmq_server_address(const rpc_zmq_server *z)
{
    return z->address;
}

size_t rpc__zmq_server_connections(const rpc_zmq_server *z)
{
    long n = atomic_load(&((rpc_zmq_server *)z)->nconns);
    return n > 0 ? (size_t)n : 0;
}

/* A worker: the frames of the next request into f[0..*n) (*over when it
 * had more than ZMQ_MAX_FRAMES: the extra ones are dropped). -1 on ETERM. */
static int recv_request(void *sock, zmq_msg_t *f, size_t *n, bool *over)
{
    zmq_msg_t extra;
    *n = 0;
    *over = false;
    for (bool more = true; more;) {
        zmq_msg_t *m = *n < ZMQ_MAX_FRAMES ? &f[*n] : &extra;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, 0) < 0) {
            zmq_msg_close(m);
            if (zmq_errno() == EINTR)
                continue;
            for (size_t j = 0; j < *n; j++)
                zmq_msg_close(&f[j]);
            return -1;
        }
        more = zmq_msg_more(m);
        if (m == &extra) {
            zmq_msg_close(m);
            *over = true;
        } else {
            (*n)++;
        }
    }
    return 0;
}

/* A worker: wait for a request, answer it, say so; until ETERM. */
static void *worker_main(void *arg)
{
    zworker *w = arg;
    rpc_zmq_server *z = w->z;
    void *sock = zmq_socket(z->ctx, ZMQ_DEALER);
    if (!sock)
        return NULL; /* ETERM: stopped before it began */
    char id[16];
    int idlen = snprintf(id, sizeof id, "w%u", w->index);
    mproc_buf out = {0};
    zmq_msg_t f[ZMQ_MAX_FRAMES];
    size_t n;
    bool over;
    if (set_int(sock, ZMQ_LINGER, 0) || zmq_setsockopt(sock, ZMQ_ROUTING_ID, id, (size_t)idlen) ||
        zmq_connect(sock, BACKEND_EP) || zmq_send(sock, "R", 1, 0) < 0)
        goto done;
    while (recv_request(sock, f, &n, &over) == 0) {
        bool answer = false;
        mproc_value *later[2] = {NULL, NULL};
        if (!over) /* its error, if any, is in the answer; nothing to drop */
            rpc__answer(z->h, z->wire, z->max_message, zmq_msg_data(&f[n - 1]),
                        zmq_msg_size(&f[n - 1]), &out, &answer, later);
        int rc;
        if (answer) {
            rc = zmq_send(sock, "A", 1, ZMQ_SNDMORE);
            for (size_t j = 0; j + 1 < n && rc >= 0; j++)
                rc = zmq_msg_send(&f[j], sock, ZMQ_SNDMORE);
            if (rc >= 0)
                rc = zmq_send(sock, out.data, out.len, 0);
        } else {
            rc = zmq_send(sock, "R", 1, 0);
        }
        mproc_value_free(later[0]);
        mproc_value_free(later[1]);
        for (size_t j = 0; j < n; j++)
            zmq_msg_close(&f[j]);
        if (rc < 0)
            break; /* ETERM */
    }
done:
    mproc__buf_free(&out);
    zmq_close(sock);
    return NULL;
}

/* Broker: a message from a worker (an answer, or ready); false when none. */
static bool from_worker(rpc_zmq_server *z)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, z->back, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return false;
    }
    char id[16] = {0};
    memcpy(id, zmq_msg_data(&m), zmq_msg_size(&m) < sizeof id - 1 ? zmq_msg_size(&m) : sizeof id - 1);
    bool more = zmq_msg_more(&m);
    char kind = 0;
    if (more && zmq_msg_recv(&m, z->back, 0) >= 0) {
        kind = zmq_msg_size(&m) ? *(char *)zmq_msg_data(&m) : 0;
        more = zmq_msg_more(&m);
    }
    zmq_msg_close(&m);
    pass_rest(z->back, kind == 'A' ? z->front : NULL, more);
    unsigned long i = strtoul(id + 1, NULL, 10);
    assert(id[0] == 'w' && i < z->nworkers);
    if (i < z->nworkers && z->state[i] != W_IDLE) {
        if (z->state[i] == W_BUSY)
            z->nbusy--;
        z->state[i] = W_IDLE;
        z->idle[z->nidle++] = (unsigned)i;
    }
    return true;
}

/* Broker: hand a client's request to an idle worker; false when none waits. */
static bool to_worker(rpc_zmq_server *z)
{
    assert(z->nidle > 0);
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, z->front, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return false;
    }
    unsigned i = z->idle[--z->nidle];
    char id[16];
    int idlen = snprintf(id, sizeof id, "w%u", i);
    bool more = zmq_msg_more(&m);
    bool ok = zmq_send(z->back, id, (size_t)idlen, ZMQ_SNDMORE) >= 0 &&
              zmq_msg_send(&m, z->back, more ? ZMQ_SNDMORE : 0) >= 0;
    zmq_msg_close(&m);
    if (pass_rest(z->front, ok ? z->back : NULL, more) < 0)
        ok = false;
    if (!ok) { /* inproc to our own worker fails only at ETERM: the request
                * is lost (its client times out), the worker stays idle */
        z->idle[z->nidle++] = i;
        return true;
    }
    z->state[i] = W_BUSY;
    z->nbusy++;
    return true;
}

/* Broker: one monitor event (2 frames: u16 event + u32 value, endpoint);
 * false when none waits. */
static bool monitor_event(rpc_zmq_server *z)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, z->mon, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return false;
    }
    uint16_t ev = 0;
    if (zmq_msg_size(&m) >= sizeof ev)
        memcpy(&ev, zmq_msg_data(&m), sizeof ev);
    bool more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    pass_rest(z->mon, NULL, more);
    if (ev == ZMQ_EVENT_ACCEPTED)
        atomic_fetch_add(&z->nconns, 1);
    else if (ev == ZMQ_EVENT_DISCONNECTED)
        atomic_fetch_sub(&z->nconns, 1);
    return true;
}

static void *broker_main(void *arg)
{
    rpc_zmq_server *z = arg;
    for (;;) {
        bool stopping = atomic_load(&z->stopping);
        long ms = -1;
        if (stopping) { /* no new requests; wait for the running ones */
            mproc_deadline d = {atomic_load(&z->stop_ns)};
            if (!z->nbusy)
                break;
            if (mproc_deadline_expired(d)) {
                atomic_store(&z->cut, true);
                break;
            }
            ms = mproc_deadline_poll_ms(d);
        }
        zmq_pollitem_t it[4] = {
            {z->back, 0, ZMQ_POLLIN, 0},
            {z->mon, 0, ZMQ_POLLIN, 0},
            {NULL, z->wakefd, ZMQ_POLLIN, 0},
            {z->front, 0, ZMQ_POLLIN, 0},
        };
        int n = !stopping && z->nidle ? 4 : 3;
        if (zmq_poll(it, n, ms) < 0) {
            if (zmq_errno() == EINTR)
                continue;
            break; /* cannot happen short of ETERM, which stop sends after joining us */
        }
        if (it[0].revents & ZMQ_POLLIN)
            while (from_worker(z))
                ;
        if (it[1].revents & ZMQ_POLLIN)
            while (monitor_event(z))
                ;
        if (it[2].revents & ZMQ_POLLIN) { /* stop: reset the eventfd, the flag says the rest */
            uint64_t v;
            ssize_t got = read(z->wakefd, &v, sizeof v);
            (void)got; /* EINTR: still readable, read next time round */
        }
        if (n == 4 && (it[3].revents & ZMQ_POLLIN))
            while (z->nidle && !atomic_load(&z->stopping) && to_worker(z))
                ;
    }
    return NULL;
}

/* Cut ZeroMQ off, wait for every thread and free the context. The broker
 * has left. Answers still queued get `linger_ms` to go out. */
static void teardown(rpc_zmq_server *z, int linger_ms)
{
    if (!z->ctx)
        return;
    if (z->front) {
        /* First the monitor: ZeroMQ's I/O thread blocks sending an event
         * nobody reads. */
        zmq_socket_monitor(z->front, NULL, 0);
        set_int(z->front, ZMQ_LINGER, linger_ms);
        zmq_close(z->front);
    }
    if (z->back)
        zmq_close(z->back);
    if (z->mon)
        zmq_close(z->mon);
    z->front = z->back = z->mon = NULL;
    /* Workers blocked in a receive get ETERM; one running a function
     * finishes it first (as connection threads do in rpc.c). */
    zmq_ctx_shutdown(z->ctx);
    for (size_t i = 0; i < z->nrunning; i++)
        pthread_join(z->w[i].thr, NULL);
    z->nrunning = 0;
    term_ctx(z->ctx);
    z->ctx = NULL;
    atomic_store(&z->nconns, 0);
    if (z->wakefd >= 0)
        close(z->wakefd);
    z->wakefd = -1;
}

int rpc__zmq_server_start(rpc_zmq_server *z)
{
    if (z->started || atomic_load(&z->stopping))
        return mproc__fail(MPROC_ESTATE, "rpc: the server was started already");
    int rc;
    z->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (z->wakefd < 0) {
        rc = mproc__errno();
        goto fail;
    }
    z->back = zmq_socket(z->ctx, ZMQ_ROUTER);
    if (!z->back || set_int(z->back, ZMQ_LINGER, 0) || zmq_bind(z->back, BACKEND_EP) < 0) {
        rc = zfail("backend", BACKEND_EP);
        goto fail;
    }
    for (size_t i = 0; i < z->nworkers; i++) {
        z->w[i] = (zworker){.z = z, .index = (unsigned)i};
        if ((rc = pthread_create(&z->w[i].thr, NULL, worker_main, &z->w[i])) != 0) {
            rc = -rc;
            goto fail;
        }
        z->nrunning++;
    }
    if ((rc = pthread_create(&z->broker, NULL, broker_main, z)) != 0) {
        rc = -rc;
        goto fail;
    }
    z->broker_running = true;
    z->started = true;
    return 0;
fail:
    /* The context is shut down: this server cannot serve any more. */
    atomic_store(&z->stopping, true);
    teardown(z, 0);
    return rc;
}

int rpc__zmq_server_stop(rpc_zmq_server *z, double timeout)
{
    mproc_deadline d = mproc_deadline_after(timeout);
    if (atomic_exchange(&z->stopping, true)) {
        teardown(z, 0); /* after a failed start: done already */
        return 0;
    }
    atomic_store(&z->stop_ns, d.ns);
    if (z->broker_running) {
        uint64_t one = 1;
        ssize_t put = write(z->wakefd, &one, sizeof one);
        assert(put == sizeof one); /* an eventfd counter far from full */
        (void)put;
        pthread_join(z->broker, NULL);
    }
    z->broker_running = false;
    int left = mproc_deadline_poll_ms(d);
    teardown(z, left < 0 || left > ZMQ_STOP_LINGER_MS ? ZMQ_STOP_LINGER_MS : left);
    if (atomic_load(&z->cut))
        return mproc__fail(MPROC_ETIMEDOUT, "rpc: calls still running after the timeout were cut");
    return 0;
}

void rpc__zmq_server_free(rpc_zmq_server *z)
{
    if (!z)
        return;
    rpc__zmq_server_stop(z, 5.0);
    free(z->state);
    free(z->idle);
    free(z->w);
    free(z->address);
    free(z);
}

/* ------------------------------------------------------------ proxies */

struct rpc_zmq_proxy {
    void *ctx;
    void *sock; /* DEALER */
    size_t max_message;
};

int rpc__zmq_connect(rpc_zmq_proxy **out, const char *address, size_t max_message)
{
    const char *ep = endpoint_of(address);
    if (!ep)
        return bad_address(address);
    rpc_zmq_proxy *z = calloc(1, sizeof *z);
    if (!z)
        return MPROC_ENOMEM;
    z->max_message = max_message;
    int rc;
    z->ctx = zmq_ctx_new();
    if (!z->ctx) {
        rc = zfail("context", NULL);
        goto fail;
    }
    /* Not ZMQ_IMMEDIATE, though it would keep requests from queueing for an
     * absent server: with it, libzmq 4.3 drops an answer that arrived but
     * was not read yet when the server closes (seen at server stop). */
    z->sock = zmq_socket(z->ctx, ZMQ_DEALER);
    int64_t maxm = (int64_t)max_message;
    if (!z->sock || set_int(z->sock, ZMQ_LINGER, 0) ||
        zmq_setsockopt(z->sock, ZMQ_MAXMSGSIZE, &maxm, sizeof maxm)) { /* a hostile server */
        rc = zfail("socket", NULL);
        goto fail;
    }
    if (zmq_connect(z->sock, ep) < 0) {
        rc = zfail("connect", ep);
        goto fail;
    }
    *out = z;
    return 0;
fail:
    if (z->sock)
        zmq_close(z->sock);
    if (z->ctx)
        term_ctx(z->ctx);
    free(z);
    return rc;
}

/* Wait until `d` for `events` on the proxy's socket: 0, MPROC_ETIMEDOUT. */
static int proxy_wait(rpc_zmq_proxy *z, short events, mproc_deadline d)
{
    int ms = mproc_deadline_poll_ms(d);
    if (ms == 0)
        return MPROC_ETIMEDOUT;
    zmq_pollitem_t it = {z->sock, 0, events, 0};
    if (zmq_poll(&it, 1, ms) < 0 && zmq_errno() != EINTR)
        return zfail("poll", NULL);
    return 0;
}

int rpc__zmq_send(rpc_zmq_proxy *z, const void *data, size_t len, mproc_deadline d)
{
    /* [empty, request], as a REQ socket sends. It waits only when ZeroMQ's
     * queue is full (1,000 requests for a server that is not there). Once
     * the first frame is in, the rest of the message cannot be refused. */
    for (;;) {
        if (zmq_send(z->sock, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0)
            break;
        if (zmq_errno() != EAGAIN && zmq_errno() != EINTR)
            return zfail("send", NULL);
        int rc = proxy_wait(z, ZMQ_POLLOUT, d);
        if (rc)
            return rc;
    }
    while (zmq_send(z->sock, data, len, 0) < 0)
        if (zmq_errno() != EINTR)
            return zfail("send", NULL);
    return 0;
}

int rpc__zmq_recv(rpc_zmq_proxy *z, mproc_deadline d, void **buf, size_t *len)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    int rc = 0;
    while (zmq_msg_recv(&m, z->sock, ZMQ_DONTWAIT) < 0) {
        if (zmq_errno() != EAGAIN && zmq_errno() != EINTR)
            rc = zfail("receive", NULL);
        else
            rc = proxy_wait(z, ZMQ_POLLIN, d);
        if (rc) {
            zmq_msg_close(&m);
            return rc;
        }
    }
    /* [empty, answer]: the answer is the last frame. */
    while (zmq_msg_more(&m))
        if (zmq_msg_recv(&m, z->sock, 0) < 0 && zmq_errno() != EINTR) {
            zmq_msg_close(&m);
            return zfail("receive", NULL);
        }
    size_t n = zmq_msg_size(&m);
    if (n > z->max_message) {
        zmq_msg_close(&m);
        return mproc__fail(MPROC_EMSGSIZE, "rpc: an answer of %zu bytes exceeds max_message (%zu)",
                           n, z->max_message);
    }
    *buf = malloc(n ? n : 1);
    if (*buf) {
        memcpy(*buf, zmq_msg_data(&m), n);
        *len = n;
    }
    zmq_msg_close(&m);
    return *buf ? 0 : MPROC_ENOMEM;
}

void rpc__zmq_close(rpc_zmq_proxy *z)
{
    if (!z)
        return;
    zmq_close(z->sock);
    term_ctx(z->ctx);
    free(z);
}

#else /* built without libzmq */

static int no_zmq(void)
{
    return mproc__fail(MPROC_ENOSYS, "rpc: mproc was built without ZeroMQ (libzmq)");
}

bool mproc_rpc_have_zmq(void)
{
    return false;
}

int rpc__zmq_server_new(rpc_zmq_server **out, mproc_rpc_handler *h, const char *address,
                        const mproc_rpc_server_opts *o)
{
    MPROC_UNUSED(out), MPROC_UNUSED(h), MPROC_UNUSED(address), MPROC_UNUSED(o);
    return no_zmq();
}

const char *rpc__zmq_server_address(const rpc_zmq_server *z)
{
    MPROC_UNUSED(z);
    return "";
}

int rpc__zmq_server_start(rpc_zmq_server *z)
{
    MPROC_UNUSED(z);
    return no_zmq();
}

int rpc__zmq_server_stop(rpc_zmq_server *z, double timeout)
{
    MPROC_UNUSED(z), MPROC_UNUSED(timeout);
    return 0;
}

size_t rpc__zmq_server_connections(const rpc_zmq_server *z)
{
    MPROC_UNUSED(z);
    return 0;
}

void rpc__zmq_server_free(rpc_zmq_server *z)
{
    MPROC_UNUSED(z);
}

int rpc__zmq_connect(rpc_zmq_proxy **out, const char *address, size_t max_message)
{
    MPROC_UNUSED(out), MPROC_UNUSED(address), MPROC_UNUSED(max_message);
    return no_zmq();
}

int rpc__zmq_send(rpc_zmq_proxy *z, const void *data, size_t len, mproc_deadline d)
{
    MPROC_UNUSED(z), MPROC_UNUSED(data), MPROC_UNUSED(len), MPROC_UNUSED(d);
    return no_zmq();
}

int rpc__zmq_recv(rpc_zmq_proxy *z, mproc_deadline d, void **buf, size_t *len)
{
    MPROC_UNUSED(z), MPROC_UNUSED(d), MPROC_UNUSED(buf), MPROC_UNUSED(len);
    return no_zmq();
}

void rpc__zmq_close(rpc_zmq_proxy *z)
{
    MPROC_UNUSED(z);
}

#endif
