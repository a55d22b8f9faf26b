/* client.c — manager handles, connections to the server, proxies and the
 * typed calls.
 *
 * A handle keeps a pool of connections: a call takes a free one (or opens
 * one), so threads calling at once each get their own and a thread blocked
 * in a long call (Queue.get) never holds up the others.
 *
 * fork: a child that uses its parent's handle notices the pid change at its
 * first call, forgets the inherited connections (closing only its copies of
 * their fds) and opens its own under a new session. A proxy takes a
 * reference for the child's session at its first use there. The handle's
 * mutex and the import registry's are re-initialised in the child
 * (atfork), since another parent thread may have held them. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../process/process_int.h"
#include "mgr_srv.h"
#include "mproc/connection.h"
#include "mproc/manager.h"
#include "mproc/queue.h"
#include "wire.h"

typedef struct cconn {
    mproc_connection *c;
    int fd;
    int64_t key; /* names this connection in requests on the shared queue */
    size_t max_request; /* the smaller of our max_message and the server's */
    mproc_queue *req, *rep;
    mproc_buf buf;
    struct cconn *next;             /* in the free list */
    struct cconn *all_prev, *all_next; /* in the handle's list of every connection */
} cconn;

struct mproc_manager {
    mgr_config cfg;           /* address, key, limits, types, owner token */
    bool key_given;
    double start_timeout;
    const mproc_context *ctx;
    mproc_process *proc;      /* the server, when started here */
    pid_t owner;              /* the process that started it */
    bool started, stopped;
    bool connected;           /* made by mproc_manager_connect or an import */
    bool shm;                 /* talk through shared-memory queues */

    pthread_mutex_t mu;       /* conns, free */
    atomic_int pid;           /* the process the connections belong to */
    uint64_t session;
    cconn *free;              /* idle connections */
    cconn *all;               /* every connection, idle or in use */
    int imported_refs;        /* proxies imported into this process (registry handles) */
    struct mproc_manager *reg_next;
    struct mproc_manager *h_prev, *h_next; /* every handle of the process */
};

struct mproc_proxy {
    mproc_manager *m;
    uint64_t id;
    atomic_int pid;  /* the process whose session holds our reference; 0 = none */
    bool imported;   /* holds a reference on m (a registry handle) */
    char typeid[MGR_TYPEID_MAX + 1];
};

/* ------------------------------------------------------------ process identity */

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static mproc_manager *registry; /* handles made by importing proxies */
static atomic_int pid_cache;
static pthread_mutex_t handles_mu = PTHREAD_MUTEX_INITIALIZER;
/* Held (read) while a connection is being opened and not yet listed, taken
 * (write) across fork: a child never inherits a socket it does not know. */
static pthread_rwlock_t open_lock = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP; /* fork is never starved */
static mproc_manager *handles; /* every handle, for the fork child */

static void fork_reset(mproc_manager *m);

/* In a fork child: the parent's connections are not ours. Close our copies
 * of their fds at once (not at the first call), so a parent that dies is
 * noticed by the server even while this child lives and never calls it. */
static void atfork_child(void)
{
    atomic_store(&pid_cache, 0);
    pthread_mutex_init(&reg_mu, NULL);
    pthread_mutex_init(&handles_mu, NULL);
    pthread_rwlock_t fresh = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;
    open_lock = fresh;
    for (mproc_manager *m = handles; m; m = m->h_next)
        fork_reset(m);
}

/* Hold every list still across fork, so the child walks consistent ones. */
static void atfork_prepare(void)
{
    pthread_rwlock_wrlock(&open_lock);
    pthread_mutex_lock(&handles_mu);
    for (mproc_manager *m = handles; m; m = m->h_next)
        pthread_mutex_lock(&m->mu);
}

static void atfork_parent(void)
{
    for (mproc_manager *m = handles; m; m = m->h_next)
        pthread_mutex_unlock(&m->mu);
    pthread_mutex_unlock(&handles_mu);
    pthread_rwlock_unlock(&open_lock);
}

static void init_once(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static pid_t my_pid(void)
{
    pid_t p = atomic_load(&pid_cache);
    if (!p) {
        p = getpid();
        atomic_store(&pid_cache, p);
    }
    return p;
}

static uint64_t random_u64(void)
{
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
        r = (uint64_t)mproc__now_ns() ^ ((uint64_t)getpid() << 32);
    return r & INT64_MAX ? r & INT64_MAX : 1; /* MessagePack ints: keep it positive */
}

/* ------------------------------------------------------------ connections */

static void cconn_close(cconn *cc)
{
    if (!cc)
        return;
    /* unlinked from the handle's list by the caller */
    mproc_queue_close(cc->req);
    mproc_queue_close(cc->rep);
    mproc_connection_close(cc->c);
    mproc__buf_free(&cc->buf);
    free(cc);
}


static int recv_queues(cconn *cc)
{
    uint8_t buf[4096];
    int fds[16];
    size_t nfds = 0;
    /* The message's length is not known up front: read its fixed head
     * first, with the fds, then the rest. */
    int rc = mproc_recv_fds(cc->fd, buf, 8, fds, 16, &nfds, 10.0);
    if (rc)
        return rc;
    size_t used = 0, fdi = 0;
    mproc_queue *qs[2] = {NULL, NULL};
    size_t have = 8;
    for (int i = 0; i < 2 && !rc; i++) {
        if (have < used + 8) { /* read the next head */
            if ((rc = mproc_read_all(cc->fd, buf + have, used + 8 - have, NULL)) != 0)
                break;
            have = used + 8;
        }
        uint32_t len, nf; /* native order, as mproc__put_u32 writes them */
        memcpy(&len, buf + used, 4);
        memcpy(&nf, buf + used + 4, 4);
        used += 8;
        if (len > sizeof buf - used - 8 || nf > nfds - fdi) {
            rc = MPROC_EPROTO;
            break;
        }
        if (have < used + len) {
            if ((rc = mproc_read_all(cc->fd, buf + have, used + len - have, NULL)) != 0)
                break;
            have = used + len;
        }
        void *q;
        rc = mproc_queue_type.import_obj(buf + used, len, fds + fdi, nf, &q);
        if (!rc) {
            for (uint32_t k = 0; k < nf; k++)
                fds[fdi + k] = -1; /* owned by the queue now */
            qs[i] = q;
        }
        fdi += nf;
        used += len;
    }
    for (size_t k = 0; k < nfds; k++)
        if (fds[k] >= 0 && (rc || k >= fdi))
            close(fds[k]);
    if (rc) {
        mproc_queue_close(qs[0]);
        mproc_queue_close(qs[1]);
        return rc == MPROC_ECLOSED ? rc : mproc__fail(MPROC_EPROTO, "manager: bad queue hand-over");
    }
    cc->req = qs[0];
    cc->rep = qs[1];
    mproc__queue_set_wait(cc->rep, MGR_SPIN_POLLS, MGR_SPIN_GAP, MGR_YIELD_POLLS);
    return 0;
}

static int cconn_open(mproc_manager *m, uint64_t session, cconn **out)
{
    cconn *cc = calloc(1, sizeof *cc);
    if (!cc)
        return MPROC_ENOMEM;
    mproc_client_opts co = {
        .auth = {.authkey = m->cfg.key ? m->cfg.key : (const void *)"", .authkey_len = m->cfg.klen},
        .connect_timeout = 10.0,
        /* replies are bounded by the server's own limit; trust it up to
         * the largest frame a Connection takes */
        .conn = {.max_message = m->cfg.max_message > MPROC_CONNECTION_MAX_MESSAGE
                                    ? m->cfg.max_message
                                    : MPROC_CONNECTION_MAX_MESSAGE,
                 .no_readahead = m->shm},
    };
    int rc = mproc_client_connect(&cc->c, m->cfg.address, &co);
    if (rc) {
        free(cc);
        return rc;
    }
    cc->fd = mproc_connection_fileno(cc->c);
    mgr__keepalive(cc->fd);
    mproc_buf *b = &cc->buf;
    rc = mproc__mp_array(b, 5);
    if (!rc)
        rc = mproc__mp_str(b, MGR_MAGIC, strlen(MGR_MAGIC));
    if (!rc)
        rc = mproc__mp_int(b, MGR_PROTO);
    if (!rc)
        rc = mproc__mp_int(b, (int64_t)session);
    if (!rc)
        rc = mproc__mp_raw(b, m->shm ? "\xc3" : "\xc2", 1);
    if (!rc)
        rc = mproc__mp_int(b, my_pid());
    if (!rc)
        rc = mproc_connection_send_bytes(cc->c, b->data, b->len);
    void *rep = NULL;
    size_t rlen;
    if (!rc)
        rc = mproc_connection_recv_bytes(cc->c, &rep, &rlen, 10.0);
    if (!rc) {
        mproc_value *v = NULL;
        if (mproc_msgpack_decode(rep, rlen, NULL, &v) != 0 || mproc_value_type(v) != MPROC_V_LIST ||
            mproc_value_len(v) < 2)
            rc = mproc__fail(MPROC_EPROTO, "manager: %s does not answer like a manager server",
                             m->cfg.address);
        else if (mproc_value_as_int(mproc_value_at(v, 0)) != 0)
            rc = mproc__fail((int)mproc_value_as_int(mproc_value_at(v, 0)), "manager: %s",
                             mproc_value_as_str(mproc_value_at(v, 1), NULL)
                                 ? mproc_value_as_str(mproc_value_at(v, 1), NULL)
                                 : "refused");
        else {
            cc->key = mproc_value_as_int(mproc_value_at(v, 2));
            int64_t smax = mproc_value_as_int(mproc_value_at(v, 3));
            cc->max_request = smax > 0 && (uint64_t)smax < m->cfg.max_message ? (size_t)smax
                                                                                : m->cfg.max_message;
        }
        mproc_value_free(v);
        free(rep);
    } else if (rc == MPROC_ECLOSED || rc == MPROC_EPROTO) {
        rc = mproc__fail(rc, "manager: %s closed the connection (not a manager, or at its client "
                             "limit)", m->cfg.address);
    }
    if (!rc && m->shm)
        rc = recv_queues(cc);
    if (rc) {
        cconn_close(cc);
        return rc;
    }
    *out = cc;
    return 0;
}

/* Forget connections inherited through fork (every one: those in use by
 * parent threads too, which do not exist here): close our copies only. */
static void fork_reset(mproc_manager *m)
{
    pthread_mutex_init(&m->mu, NULL);
    cconn *cc = m->all;
    m->all = m->free = NULL;
    while (cc) {
        cconn *next = cc->all_next;
        cconn_close(cc);
        cc = next;
    }
    m->session = random_u64();
    atomic_store(&m->pid, my_pid());
}

static void conn_link(mproc_manager *m, cconn *cc)
{
    pthread_mutex_lock(&m->mu);
    cc->all_prev = NULL;
    cc->all_next = m->all;
    if (m->all)
        m->all->all_prev = cc;
    m->all = cc;
    pthread_mutex_unlock(&m->mu);
}

/* Close a connection that is not in the free list. */
static void conn_drop(mproc_manager *m, cconn *cc)
{
    pthread_mutex_lock(&m->mu);
    if (cc->all_prev)
        cc->all_prev->all_next = cc->all_next;
    else if (m->all == cc)
        m->all = cc->all_next;
    if (cc->all_next)
        cc->all_next->all_prev = cc->all_prev;
    cconn_close(cc); /* before unlocking: a fork (which holds m->mu) never sees it half gone */
    pthread_mutex_unlock(&m->mu);
}

static int conn_get(mproc_manager *m, cconn **out)
{
    pid_t me = my_pid();
    int old = atomic_load(&m->pid);
    if (old != me && atomic_compare_exchange_strong(&m->pid, &old, me))
        fork_reset(m); /* a child made without our atfork handler (raw clone) */
    pthread_mutex_lock(&m->mu);
    cconn *cc = m->free;
    if (cc)
        m->free = cc->next;
    uint64_t session = m->session;
    pthread_mutex_unlock(&m->mu);
    if (cc) {
        *out = cc;
        return 0;
    }
    pthread_once(&once, init_once);
    pthread_rwlock_rdlock(&open_lock);
    int rc = cconn_open(m, session, out);
    if (!rc)
        conn_link(m, *out);
    pthread_rwlock_unlock(&open_lock);
    return rc;
}

static void conn_put(mproc_manager *m, cconn *cc)
{
    pthread_mutex_lock(&m->mu);
    cc->next = m->free;
    m->free = cc;
    pthread_mutex_unlock(&m->mu);
}

static int send_req(mproc_manager *m, cconn *cc)
{
    (void)m;
    if (!cc->req)
        return mproc_connection_send_bytes(cc->c, cc->buf.data, cc->buf.len);
    double slice = mproc__put_slice(cc->buf.len);
    for (;;) {
        int rc = mproc_queue_put(cc->req, cc->buf.data, cc->buf.len, slice);
        if (rc != MPROC_ETIMEDOUT && rc != MPROC_EFULL)
            return rc;
        if (mproc__peer_gone(cc->fd))
            return MPROC_ECLOSED;
    }
}

static int recv_rep(cconn *cc, void **buf, size_t *len)
{
    if (!cc->rep)
        return mproc_connection_recv_bytes(cc->c, buf, len, MPROC_FOREVER);
    for (;;) {
        int rc = mproc_queue_get(cc->rep, buf, len, MGR_SLICE_S);
        if (rc != MPROC_ETIMEDOUT && rc != MPROC_EEMPTY)
            return rc;
        if (mproc__peer_gone(cc->fd))
            return MPROC_ECLOSED;
    }
}

/* One request, one reply. */
static int rpc(mproc_manager *m, uint64_t id, const char *method, const mproc_value *const *argv,
               size_t argc, mproc_value **result)
{
    if (result)
        *result = NULL;
    if (!m || !method || (argc && !argv))
        return MPROC_EINVAL;
    cconn *cc;
    int rc = conn_get(m, &cc);
    if (rc)
        return rc == MPROC_ECLOSED || rc == MPROC_ECONNREFUSED || rc == MPROC_ENOENT
                   ? mproc__fail(MPROC_ECLOSED, "manager: the server at %s is gone (%s)",
                                 m->cfg.address, mproc_strerror(rc))
                   : rc;
    mproc_buf *b = &cc->buf;
    b->len = 0;
    rc = mproc__mp_array(b, cc->req ? 5 : 4);
    if (!rc)
        rc = mproc__mp_int(b, (int64_t)id);
    if (!rc)
        rc = mproc__mp_str(b, method, strlen(method));
    if (!rc)
        rc = mproc__mp_array(b, (uint32_t)argc);
    for (size_t i = 0; i < argc && !rc; i++)
        rc = argv[i] ? mproc_msgpack_encode(argv[i], b) : mproc__mp_nil(b);
    if (!rc)
        rc = mproc__mp_int(b, mproc__tid());
    if (!rc && cc->req)
        rc = mproc__mp_int(b, cc->key);
    if (!rc && b->len > cc->max_request)
        rc = mproc__fail(MPROC_EMSGSIZE, "manager: the request (%zu bytes) exceeds max_message (%zu)",
                         b->len, cc->max_request);
    if (rc) {
        conn_put(m, cc);
        return rc;
    }
    void *rep = NULL;
    size_t rlen = 0;
    rc = send_req(m, cc);
    if (rc == MPROC_EMSGSIZE) { /* refused before anything was sent */
        conn_put(m, cc);
        return rc;
    }
    if (!rc)
        rc = recv_rep(cc, &rep, &rlen);
    if (rc) {
        conn_drop(m, cc); /* the connection is out of step or dead */
        if (rc == MPROC_ECLOSED || rc == MPROC_ECONNRESET || rc == MPROC_EPIPE)
            return mproc__fail(MPROC_ECLOSED, "manager: the server at %s is gone", m->cfg.address);
        return rc;
    }
    conn_put(m, cc);
    mproc_value *v = NULL;
    rc = mproc_msgpack_decode(rep, rlen, NULL, &v);
    free(rep);
    if (rc || mproc_value_type(v) != MPROC_V_LIST || mproc_value_len(v) != 2 ||
        mproc_value_type(mproc_value_at(v, 0)) != MPROC_V_INT) {
        mproc_value_free(v);
        return mproc__fail(MPROC_EPROTO, "manager: malformed reply");
    }
    int64_t code = mproc_value_as_int(mproc_value_at(v, 0));
    if (code != 0) {
        const char *msg = mproc_value_as_str(mproc_value_at(v, 1), NULL);
        if (code > 0 || code < INT32_MIN)
            code = MPROC_EREMOTE;
        rc = mproc__fail((int)code, "%s", msg ? msg : mproc_strerror((int)code));
        mproc_value_free(v);
        return rc;
    }
    if (result)
        *result = mproc_value_take_at(v, 1);
    mproc_value_free(v);
    return 0;
}

/* ------------------------------------------------------------ handles */

static mproc_manager *handle_new(const mproc_manager_opts *o)
{
    pthread_once(&once, init_once);
    mproc_manager *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    pthread_mutex_init(&m->mu, NULL);
    m->cfg.max_message = o && o->max_message ? o->max_message : MGR_DEFAULT_MAX_MESSAGE;
    m->cfg.max_clients = o && o->max_clients ? o->max_clients : MGR_DEFAULT_MAX_CLIENTS;
    m->start_timeout = o && o->start_timeout > 0 ? o->start_timeout : 10.0;
    m->ctx = o ? o->ctx : NULL;
    atomic_store(&m->pid, my_pid());
    m->session = random_u64();
    pthread_mutex_lock(&handles_mu);
    m->h_next = handles;
    if (handles)
        handles->h_prev = m;
    handles = m;
    pthread_mutex_unlock(&handles_mu);
    return m;
}

static int set_key(mproc_manager *m, const void *key, size_t len)
{
    m->cfg.key = malloc(len + 1);
    if (!m->cfg.key)
        return MPROC_ENOMEM;
    memcpy(m->cfg.key, key, len);
    m->cfg.klen = len;
    return 0;
}

static int set_address(mproc_manager *m, const char *addr)
{
    free(m->cfg.address);
    m->cfg.address = strdup(addr);
    if (!m->cfg.address)
        return MPROC_ENOMEM;
    m->shm = strncmp(addr, "unix:", 5) == 0;
    return 0;
}

int mproc_manager_new(mproc_manager **out, const mproc_manager_opts *opts)
{
    if (!out)
        return MPROC_EINVAL;
    *out = NULL;
    if (opts && opts->authkey_len && !opts->authkey)
        return mproc__fail(MPROC_EINVAL, "manager: authkey_len without authkey");
    mproc_manager *m = handle_new(opts);
    if (!m)
        return MPROC_ENOMEM;
    int rc = 0;
    if (opts && opts->authkey) {
        m->key_given = true;
        rc = set_key(m, opts->authkey, opts->authkey_len);
    } else {
        uint8_t k[32];
        for (size_t i = 0; i < sizeof k; i += 8) {
            uint64_t r = random_u64();
            memcpy(k + i, &r, 8);
        }
        rc = set_key(m, k, sizeof k);
    }
    if (!rc) {
        char addr[96];
        if (opts && opts->address)
            snprintf(addr, sizeof addr, "%s", opts->address);
        else
            snprintf(addr, sizeof addr, "unix:@mproc-mgr-%d-%016llx", (int)getpid(),
                     (unsigned long long)random_u64());
        if (opts && opts->address && strlen(opts->address) >= sizeof addr)
            rc = mproc__fail(MPROC_EINVAL, "manager: address too long");
        else
            rc = set_address(m, addr);
    }
    if (rc) {
        mproc_manager_free(m);
        return rc;
    }
    m->cfg.owner_token = random_u64();
    *out = m;
    return 0;
}

int mproc_manager_register(mproc_manager *m, const mproc_manager_type *type)
{
    if (!m || !type || !type->typeid || !type->create || !type->call)
        return mproc__fail(MPROC_EINVAL, "manager: a type needs a typeid, create and call");
    size_t tl = strlen(type->typeid);
    if (tl == 0 || tl > MGR_TYPEID_MAX)
        return mproc__fail(MPROC_EINVAL, "manager: typeid must be 1 to %d bytes", MGR_TYPEID_MAX);
    if (m->started || m->connected)
        return mproc__fail(MPROC_ESTATE, "manager: register types before start");
    if (mgr__builtin_typeid(type->typeid))
        return mproc__fail(MPROC_EEXIST, "manager: '%s' is a built-in type", type->typeid);
    for (size_t i = 0; i < m->cfg.ntypes; i++)
        if (strcmp(m->cfg.types[i]->typeid, type->typeid) == 0)
            return mproc__fail(MPROC_EEXIST, "manager: type '%s' is registered already",
                               type->typeid);
    if (m->cfg.ntypes == MGR_MAX_TYPES)
        return mproc__fail(MPROC_ENOSPC, "manager: at most %d user types", MGR_MAX_TYPES);
    m->cfg.types[m->cfg.ntypes++] = type;
    return 0;
}

int mproc_manager_start(mproc_manager *m)
{
    if (!m)
        return MPROC_EINVAL;
    if (m->started || m->owner)
        return mproc__fail(MPROC_ESTATE, "manager: started already");
    mproc_connection *r = NULL, *w = NULL;
    mproc_buf cfg = {0};
    mproc_args *a = NULL;
    int rc = mproc_pipe(&r, &w, false, NULL);
    if (!rc)
        rc = mgr__config_encode(&m->cfg, &cfg);
    if (!rc && !(a = mproc_args_new()))
        rc = MPROC_ENOMEM;
    if (!rc)
        rc = mproc_args_add_bytes(a, cfg.data, cfg.len);
    if (!rc)
        rc = mproc_args_add_object(a, &mproc_connection_type, w);
    mproc_process_opts po = {.name = "mproc-manager", .daemon = true, .ctx = m->ctx};
    if (!rc)
        rc = mproc_process_new(&m->proc, mgr__server_main, a, &po);
    if (!rc)
        rc = mproc_process_start(m->proc);
    mproc_args_free(a);
    mproc__buf_free(&cfg);
    mproc_connection_close(w);
    void *rep = NULL;
    size_t rlen;
    if (!rc) {
        rc = mproc_connection_recv_bytes(r, &rep, &rlen, m->start_timeout);
        if (rc == MPROC_ECLOSED)
            rc = mproc__fail(MPROC_ECHILD, "manager: the server exited during start");
        else if (rc == MPROC_ETIMEDOUT)
            rc = mproc__fail(rc, "manager: the server did not start within %.1f s",
                             m->start_timeout);
    }
    if (!rc) {
        mproc_value *v = NULL;
        if (mproc_msgpack_decode(rep, rlen, NULL, &v) || mproc_value_len(v) != 2) {
            rc = mproc__fail(MPROC_EPROTO, "manager: bad start report");
        } else {
            int64_t code = mproc_value_as_int(mproc_value_at(v, 0));
            const char *text = mproc_value_as_str(mproc_value_at(v, 1), NULL);
            if (code)
                rc = mproc__fail((int)code, "manager: %s", text ? text : "start failed");
            else
                rc = set_address(m, text ? text : "");
        }
        mproc_value_free(v);
        free(rep);
    }
    mproc_connection_close(r);
    if (rc) {
        if (m->proc) {
            if (mproc_process_is_alive(m->proc)) {
                mproc_process_kill(m->proc);
            }
            mproc_process_join(m->proc, 5.0);
            mproc_process_close(m->proc);
            m->proc = NULL;
        }
        return rc;
    }
    m->started = true;
    m->owner = my_pid();
    return 0;
}

int mproc_manager_connect(mproc_manager **out, const char *address,
                          const mproc_manager_opts *opts)
{
    if (!out || !address)
        return MPROC_EINVAL;
    *out = NULL;
    mproc_manager *m = handle_new(opts);
    if (!m)
        return MPROC_ENOMEM;
    int rc = set_address(m, address);
    if (!rc)
        rc = set_key(m, opts && opts->authkey ? opts->authkey : "",
                     opts && opts->authkey ? opts->authkey_len : 0);
    m->key_given = true;
    m->connected = true;
    cconn *cc = NULL;
    if (!rc)
        rc = conn_get(m, &cc); /* fail now on a bad address or key */
    if (!rc)
        conn_put(m, cc);
    if (rc) {
        mproc_manager_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

/* Close every idle connection (all of them when no call is running). */
static void drop_conns(mproc_manager *m)
{
    if (atomic_load(&m->pid) != my_pid())
        fork_reset(m);
    for (;;) {
        pthread_mutex_lock(&m->mu);
        cconn *cc = m->free;
        if (cc)
            m->free = cc->next;
        pthread_mutex_unlock(&m->mu);
        if (!cc)
            return;
        conn_drop(m, cc);
    }
}

int mproc_manager_shutdown(mproc_manager *m)
{
    if (!m)
        return MPROC_EINVAL;
    if (!m->proc || m->owner != my_pid() || m->stopped) {
        drop_conns(m);
        return 0;
    }
    m->stopped = true;
    mproc_value *tok = mproc_value_int((int64_t)m->cfg.owner_token);
    const mproc_value *argv[1] = {tok};
    int rc = tok ? rpc(m, 0, "shutdown", argv, 1, NULL) : MPROC_ENOMEM;
    mproc_value_free(tok);
    drop_conns(m);
    if (rc == 0 || rc == MPROC_ECLOSED)
        rc = mproc_process_join(m->proc, 5.0);
    if (rc) {
        mproc_process_kill(m->proc);
        mproc_process_join(m->proc, 5.0);
    }
    int code = mproc_process_exitcode(m->proc);
    return code == 0 ? 0 : mproc__fail(MPROC_ECHILD, "manager: the server exited with %d", code);
}

int mproc_manager_join(mproc_manager *m, double timeout)
{
    if (!m || !m->proc || m->owner != my_pid())
        return mproc__fail(MPROC_ESTATE, "manager: join needs the handle that started the server");
    return mproc_process_join(m->proc, timeout);
}

static void handle_destroy(mproc_manager *m)
{
    drop_conns(m);
    pthread_mutex_lock(&handles_mu);
    if (m->h_prev)
        m->h_prev->h_next = m->h_next;
    else if (handles == m)
        handles = m->h_next;
    if (m->h_next)
        m->h_next->h_prev = m->h_prev;
    pthread_mutex_unlock(&handles_mu);
    free(m->cfg.address);
    free(m->cfg.key);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void mproc_manager_free(mproc_manager *m)
{
    if (!m)
        return;
    if (m->proc) {
        if (m->owner == my_pid()) {
            mproc_manager_shutdown(m);
            mproc_process_close(m->proc);
        }
        /* a fork child's copy: the parent's server is not ours to stop */
    }
    handle_destroy(m);
}

const char *mproc_manager_address(const mproc_manager *m)
{
    return m && m->cfg.address && (m->started || m->connected) ? m->cfg.address : "";
}

const void *mproc_manager_authkey(const mproc_manager *m, size_t *len)
{
    if (len)
        *len = m ? m->cfg.klen : 0;
    return m ? m->cfg.key : NULL;
}

int mproc_manager_pid(const mproc_manager *m)
{
    return m && m->proc && m->started ? mproc_process_pid(m->proc) : 0;
}

/* ------------------------------------------------------------ proxies */

static int proxy_new(mproc_manager *m, uint64_t id, const char *typeid, mproc_proxy **out)
{
    mproc_proxy *p = calloc(1, sizeof *p);
    if (!p)
        return MPROC_ENOMEM;
    p->m = m;
    p->id = id;
    atomic_store(&p->pid, my_pid());
    snprintf(p->typeid, sizeof p->typeid, "%s", typeid ? typeid : "");
    *out = p;
    return 0;
}

/* A reply [id, typeid] into a proxy (the server took our reference). */
static int proxy_from_reply(mproc_manager *m, mproc_value *r, mproc_proxy **out)
{
    const mproc_value *vid = mproc_value_at(r, 0);
    const char *typeid = mproc_value_as_str(mproc_value_at(r, 1), NULL);
    if (mproc_value_type(vid) != MPROC_V_INT || !typeid) {
        mproc_value_free(r);
        return mproc__fail(MPROC_EPROTO, "manager: malformed object reply");
    }
    int rc = proxy_new(m, (uint64_t)mproc_value_as_int(vid), typeid, out);
    if (rc) { /* give the reference back */
        mproc_value *idv = mproc_value_int(mproc_value_as_int(vid));
        const mproc_value *argv[1] = {idv};
        if (idv)
            rpc(m, 0, "decref", argv, 1, NULL);
        mproc_value_free(idv);
    }
    mproc_value_free(r);
    return rc;
}

int mproc_manager_create(mproc_manager *m, const char *typeid, mproc_value *const *argv,
                         size_t argc, mproc_proxy **out)
{
    if (!m || !typeid || !out || (argc && !argv))
        return MPROC_EINVAL;
    *out = NULL;
    mproc_value *t = mproc_value_str(typeid), *list = mproc_value_list();
    int rc = t && list ? 0 : MPROC_ENOMEM;
    for (size_t i = 0; i < argc && !rc; i++) {
        mproc_value *c = argv[i] ? mproc_value_copy(argv[i]) : mproc_value_nil();
        rc = c ? mproc_value_append(list, c) : MPROC_ENOMEM;
    }
    mproc_value *r = NULL;
    if (!rc) {
        const mproc_value *a2[2] = {t, list};
        rc = rpc(m, 0, "create", a2, 2, &r);
    }
    mproc_value_free(t);
    mproc_value_free(list);
    return rc ? rc : proxy_from_reply(m, r, out);
}

static int create0(mproc_manager *m, const char *typeid, mproc_proxy **out)
{
    return mproc_manager_create(m, typeid, NULL, 0, out);
}

static int create_int(mproc_manager *m, const char *typeid, int64_t n, mproc_proxy **out)
{
    mproc_value *v = mproc_value_int(n);
    if (!v)
        return MPROC_ENOMEM;
    int rc = mproc_manager_create(m, typeid, &v, 1, out);
    mproc_value_free(v);
    return rc;
}

int mproc_manager_dict(mproc_manager *m, mproc_proxy **out) { return create0(m, "dict", out); }
int mproc_manager_list(mproc_manager *m, mproc_proxy **out) { return create0(m, "list", out); }
int mproc_manager_namespace(mproc_manager *m, mproc_proxy **out)
{
    return create0(m, "Namespace", out);
}
int mproc_manager_queue(mproc_manager *m, size_t maxsize, mproc_proxy **out)
{
    return create_int(m, "Queue", (int64_t)maxsize, out);
}
int mproc_manager_joinable_queue(mproc_manager *m, size_t maxsize, mproc_proxy **out)
{
    return create_int(m, "JoinableQueue", (int64_t)maxsize, out);
}
int mproc_manager_lock(mproc_manager *m, mproc_proxy **out) { return create0(m, "Lock", out); }
int mproc_manager_rlock(mproc_manager *m, mproc_proxy **out) { return create0(m, "RLock", out); }
int mproc_manager_semaphore(mproc_manager *m, unsigned value, mproc_proxy **out)
{
    return create_int(m, "Semaphore", value, out);
}
int mproc_manager_bounded_semaphore(mproc_manager *m, unsigned value, mproc_proxy **out)
{
    return create_int(m, "BoundedSemaphore", value, out);
}
int mproc_manager_event(mproc_manager *m, mproc_proxy **out) { return create0(m, "Event", out); }

int mproc_manager_condition(mproc_manager *m, mproc_proxy *lock, mproc_proxy **out)
{
    if (!lock)
        return create0(m, "Condition", out);
    mproc_value *ref = mproc_proxy_ref(lock);
    if (!ref)
        return MPROC_ENOMEM;
    int rc = mproc_manager_create(m, "Condition", &ref, 1, out);
    mproc_value_free(ref);
    return rc;
}

int mproc_manager_barrier(mproc_manager *m, unsigned parties, double timeout, mproc_proxy **out)
{
    mproc_value *a[2] = {mproc_value_int(parties),
                         timeout < 0 ? mproc_value_nil() : mproc_value_float(timeout)};
    int rc = a[0] && a[1] ? mproc_manager_create(m, "Barrier", a, 2, out) : MPROC_ENOMEM;
    mproc_value_free(a[0]);
    mproc_value_free(a[1]);
    return rc;
}

static mproc_value *typecode_value(char typecode)
{
    return mproc_value_strn(&typecode, 1);
}

int mproc_manager_value(mproc_manager *m, char typecode, const mproc_value *initial,
                        mproc_proxy **out)
{
    mproc_value *a[2] = {typecode_value(typecode),
                         initial ? mproc_value_copy(initial) : mproc_value_int(0)};
    int rc = a[0] && a[1] ? mproc_manager_create(m, "Value", a, 2, out) : MPROC_ENOMEM;
    mproc_value_free(a[0]);
    mproc_value_free(a[1]);
    return rc;
}

int mproc_manager_array(mproc_manager *m, char typecode, const mproc_value *initial,
                        size_t size, mproc_proxy **out)
{
    mproc_value *a[2] = {typecode_value(typecode),
                         initial ? mproc_value_copy(initial) : mproc_value_int((int64_t)size)};
    int rc = a[0] && a[1] ? mproc_manager_create(m, "Array", a, 2, out) : MPROC_ENOMEM;
    mproc_value_free(a[0]);
    mproc_value_free(a[1]);
    return rc;
}

/* Make sure this process's session holds the proxy's reference (a fork
 * child's first use of its parent's proxy). */
static int proxy_ready(mproc_proxy *p)
{
    pid_t me = my_pid();
    int old = atomic_load(&p->pid);
    if (old == me)
        return 0;
    if (!atomic_compare_exchange_strong(&p->pid, &old, me))
        return 0;
    mproc_value *idv = mproc_value_int((int64_t)p->id);
    const mproc_value *argv[1] = {idv};
    int rc = idv ? rpc(p->m, 0, "incref", argv, 1, NULL) : MPROC_ENOMEM;
    mproc_value_free(idv);
    if (rc)
        atomic_store(&p->pid, 0);
    return rc;
}

int mproc_proxy_call(mproc_proxy *p, const char *method, mproc_value *const *argv, size_t argc,
                     mproc_value **result)
{
    if (result)
        *result = NULL;
    if (!p)
        return MPROC_EINVAL;
    int rc = proxy_ready(p);
    return rc ? rc : rpc(p->m, p->id, method, (const mproc_value *const *)argv, argc, result);
}

/* The typed calls: borrowed const arguments, no copies. */
static int pcall(mproc_proxy *p, const char *method, const mproc_value *const *argv, size_t argc,
                 mproc_value **result)
{
    if (result)
        *result = NULL;
    if (!p)
        return MPROC_EINVAL;
    int rc = proxy_ready(p);
    return rc ? rc : rpc(p->m, p->id, method, argv, argc, result);
}

mproc_value *mproc_proxy_ref(const mproc_proxy *p)
{
    if (!p)
        return NULL;
    uint8_t buf[8 + MGR_TYPEID_MAX];
    size_t n = mgr_ref_payload(buf, p->id, p->typeid);
    return mproc_value_ext(MGR_EXT_REF, buf, n);
}

const char *mproc_proxy_ref_typeid(const mproc_value *v)
{
    /* The typeid is not NUL-terminated inside the payload: keep a copy per
     * thread for the caller. */
    static __thread char tid[MGR_TYPEID_MAX + 1];
    size_t n;
    if (mproc_value_type(v) != MPROC_V_EXT || mproc_value_ext_type(v) != MGR_EXT_REF)
        return NULL;
    const uint8_t *b = mproc_value_as_bytes(v, &n);
    if (!b || n < 9 || n > 8 + MGR_TYPEID_MAX)
        return NULL;
    memcpy(tid, b + 8, n - 8);
    tid[n - 8] = 0;
    return tid;
}

int mproc_manager_proxy(mproc_manager *m, const mproc_value *ref, mproc_proxy **out)
{
    if (!m || !out)
        return MPROC_EINVAL;
    *out = NULL;
    const char *typeid = mproc_proxy_ref_typeid(ref);
    if (!typeid)
        return mproc__fail(MPROC_EINVAL, "manager: not an object reference");
    size_t n;
    const uint8_t *b = mproc_value_as_bytes(ref, &n);
    uint64_t id = 0;
    for (int i = 0; i < 8; i++)
        id = id << 8 | b[i];
    mproc_value *idv = mproc_value_int((int64_t)id), *r = NULL;
    const mproc_value *argv[1] = {idv};
    int rc = idv ? rpc(m, 0, "incref", argv, 1, &r) : MPROC_ENOMEM;
    mproc_value_free(idv);
    if (rc)
        return rc;
    const char *t = mproc_value_as_str(r, NULL);
    rc = proxy_new(m, id, t ? t : "", out);
    mproc_value_free(r);
    return rc;
}

const char *mproc_proxy_typeid(const mproc_proxy *p) { return p ? p->typeid : NULL; }
uint64_t mproc_proxy_id(const mproc_proxy *p) { return p ? p->id : 0; }
mproc_manager *mproc_proxy_manager(const mproc_proxy *p) { return p ? p->m : NULL; }

static void registry_release(mproc_manager *m);

void mproc_proxy_free(mproc_proxy *p)
{
    if (!p)
        return;
    if (atomic_load(&p->pid) == my_pid()) {
        mproc_value *idv = mproc_value_int((int64_t)p->id);
        const mproc_value *argv[1] = {idv};
        if (idv)
            rpc(p->m, 0, "decref", argv, 1, NULL);
        mproc_value_free(idv);
    }
    if (p->imported)
        registry_release(p->m);
    free(p);
}

/* ------------------------------------------------------------ names */

int mproc_manager_bind(mproc_manager *m, const char *name, mproc_proxy *p)
{
    if (!m || !name || !p)
        return MPROC_EINVAL;
    mproc_value *a[2] = {mproc_value_str(name), mproc_value_int((int64_t)p->id)};
    int rc = a[0] && a[1] ? rpc(m, 0, "bind", (const mproc_value *const *)a, 2, NULL)
                          : MPROC_ENOMEM;
    mproc_value_free(a[0]);
    mproc_value_free(a[1]);
    return rc;
}

int mproc_manager_lookup(mproc_manager *m, const char *name, mproc_proxy **out)
{
    if (!m || !name || !out)
        return MPROC_EINVAL;
    *out = NULL;
    mproc_value *a = mproc_value_str(name), *r = NULL;
    const mproc_value *argv[1] = {a};
    int rc = a ? rpc(m, 0, "lookup", argv, 1, &r) : MPROC_ENOMEM;
    mproc_value_free(a);
    return rc ? rc : proxy_from_reply(m, r, out);
}

int mproc_manager_unbind(mproc_manager *m, const char *name)
{
    if (!m || !name)
        return MPROC_EINVAL;
    mproc_value *a = mproc_value_str(name);
    const mproc_value *argv[1] = {a};
    int rc = a ? rpc(m, 0, "unbind", argv, 1, NULL) : MPROC_ENOMEM;
    mproc_value_free(a);
    return rc;
}

/* ------------------------------------------------------------ sharing with children */

/* A handle for (address, key) in this process, shared by imported proxies. */
static int registry_get(const char *address, const uint8_t *key, size_t klen, size_t max_message,
                        mproc_manager **out)
{
    pthread_once(&once, init_once);
    pthread_mutex_lock(&reg_mu);
    for (mproc_manager *m = registry; m; m = m->reg_next)
        if (strcmp(m->cfg.address, address) == 0 && m->cfg.klen == klen &&
            memcmp(m->cfg.key, key, klen) == 0 && atomic_load(&m->pid) == my_pid()) {
            m->imported_refs++;
            pthread_mutex_unlock(&reg_mu);
            *out = m;
            return 0;
        }
    mproc_manager_opts o = {.max_message = max_message};
    mproc_manager *m = handle_new(&o);
    int rc = m ? set_address(m, address) : MPROC_ENOMEM;
    if (!rc)
        rc = set_key(m, key, klen);
    if (rc) {
        if (m)
            handle_destroy(m);
        pthread_mutex_unlock(&reg_mu);
        return rc;
    }
    m->key_given = true;
    m->connected = true;
    m->imported_refs = 1;
    m->reg_next = registry;
    registry = m;
    pthread_mutex_unlock(&reg_mu);
    *out = m;
    return 0;
}

static void registry_release(mproc_manager *m)
{
    pthread_mutex_lock(&reg_mu);
    if (--m->imported_refs > 0) {
        pthread_mutex_unlock(&reg_mu);
        return;
    }
    for (mproc_manager **pp = &registry; *pp; pp = &(*pp)->reg_next)
        if (*pp == m) {
            *pp = m->reg_next;
            break;
        }
    pthread_mutex_unlock(&reg_mu);
    handle_destroy(m);
}

static int proxy_export(const void *obj, mproc_buf *out, int *fds, size_t *nfds, size_t max_fds)
{
    (void)fds, (void)nfds, (void)max_fds;
    const mproc_proxy *p = obj;
    const mproc_manager *m = p->m;
    int rc = mproc__put_str(out, m->cfg.address);
    if (!rc)
        rc = mproc__put_blob(out, m->cfg.key, m->cfg.klen);
    if (!rc)
        rc = mproc__put_u64(out, m->cfg.max_message);
    if (!rc)
        rc = mproc__put_u64(out, p->id);
    if (!rc)
        rc = mproc__put_str(out, p->typeid);
    return rc;
}

static int proxy_import(const void *data, size_t len, const int *fds, size_t nfds, void **obj)
{
    (void)fds;
    if (nfds)
        return MPROC_EPROTO;
    mproc_reader r = {data, (const uint8_t *)data + len};
    char *address = NULL, *typeid = NULL;
    const uint8_t *key;
    size_t klen;
    uint64_t mm, id;
    int rc = MPROC_EPROTO;
    if (mproc__get_str(&r, &address) || mproc__get_blob(&r, &key, &klen) ||
        mproc__get_u64(&r, &mm) || mproc__get_u64(&r, &id) || mproc__get_str(&r, &typeid))
        goto out;
    mproc_manager *m;
    if ((rc = registry_get(address, key, klen, (size_t)mm, &m)) != 0)
        goto out;
    mproc_proxy *p;
    if ((rc = proxy_new(m, id, typeid, &p)) != 0) {
        registry_release(m);
        goto out;
    }
    p->imported = true;
    atomic_store(&p->pid, 0);
    if ((rc = proxy_ready(p)) != 0) { /* take this process's reference now */
        registry_release(m);
        free(p);
        goto out;
    }
    *obj = p;
out:
    free(address);
    free(typeid);
    return rc;
}

static void proxy_release(void *obj)
{
    mproc_proxy_free(obj);
}

const mproc_shareable_type mproc_proxy_type = {"mproc.manager.proxy", proxy_export, proxy_import,
                                               proxy_release};

/* ------------------------------------------------------------ typed calls */

#define A(...) ((const mproc_value *const[]){__VA_ARGS__})
#define NA(...) (sizeof A(__VA_ARGS__) / sizeof(const mproc_value *))

static int call0(mproc_proxy *p, const char *method)
{
    return pcall(p, method, NULL, 0, NULL);
}

static int want_int(int rc, mproc_value *r, int64_t *out)
{
    if (!rc && mproc_value_type(r) != MPROC_V_INT && mproc_value_type(r) != MPROC_V_BOOL)
        rc = mproc__fail(MPROC_EPROTO, "manager: expected an int in the reply");
    if (!rc && out)
        *out = mproc_value_type(r) == MPROC_V_INT ? mproc_value_as_int(r) : mproc_value_as_bool(r);
    mproc_value_free(r);
    return rc;
}

static int want_size(int rc, mproc_value *r, size_t *out)
{
    int64_t n = 0;
    rc = want_int(rc, r, &n);
    if (!rc && out)
        *out = n < 0 ? 0 : (size_t)n;
    return rc;
}

static int want_bool(int rc, mproc_value *r, bool *out)
{
    if (!rc && mproc_value_type(r) != MPROC_V_BOOL)
        rc = mproc__fail(MPROC_EPROTO, "manager: expected a bool in the reply");
    if (!rc && out)
        *out = mproc_value_as_bool(r);
    mproc_value_free(r);
    return rc;
}

/* A method answering a bool "done in time": false becomes `timeout_code`. */
static int want_ok(int rc, mproc_value *r, int timeout_code)
{
    bool ok = false;
    rc = want_bool(rc, r, &ok);
    return rc ? rc : ok ? 0 : timeout_code;
}

static mproc_value *tmo(double t)
{
    return t < 0 ? mproc_value_nil() : mproc_value_float(t);
}

static mproc_value *i64(int64_t i) { return mproc_value_int(i); }

/* Calls with one temporary scalar argument. */
static int call_tmp(mproc_proxy *p, const char *method, mproc_value *tmp, const mproc_value *extra,
                    mproc_value **r)
{
    if (r)
        *r = NULL;
    if (!tmp)
        return MPROC_ENOMEM;
    int rc = extra ? pcall(p, method, A(tmp, extra), 2, r) : pcall(p, method, A(tmp), 1, r);
    mproc_value_free(tmp);
    return rc;
}

int mproc_dict_get(mproc_proxy *d, const mproc_value *key, mproc_value **out)
{
    return pcall(d, "get", A(key), 1, out);
}
int mproc_dict_set(mproc_proxy *d, const mproc_value *key, const mproc_value *val)
{
    return pcall(d, "set", A(key, val), 2, NULL);
}
int mproc_dict_del(mproc_proxy *d, const mproc_value *key) { return pcall(d, "del", A(key), 1, NULL); }
int mproc_dict_contains(mproc_proxy *d, const mproc_value *key, bool *out)
{
    mproc_value *r;
    int rc = pcall(d, "contains", A(key), 1, &r);
    return want_bool(rc, r, out);
}
int mproc_dict_len(mproc_proxy *d, size_t *out)
{
    mproc_value *r;
    int rc = pcall(d, "len", NULL, 0, &r);
    return want_size(rc, r, out);
}
int mproc_dict_keys(mproc_proxy *d, mproc_value **out) { return pcall(d, "keys", NULL, 0, out); }
int mproc_dict_values(mproc_proxy *d, mproc_value **out) { return pcall(d, "values", NULL, 0, out); }
int mproc_dict_items(mproc_proxy *d, mproc_value **out) { return pcall(d, "items", NULL, 0, out); }
int mproc_dict_update(mproc_proxy *d, const mproc_value *map)
{
    return pcall(d, "update", A(map), 1, NULL);
}
int mproc_dict_pop(mproc_proxy *d, const mproc_value *key, mproc_value **out)
{
    return pcall(d, "pop", A(key), 1, out);
}
int mproc_dict_setdefault(mproc_proxy *d, const mproc_value *key, const mproc_value *dflt,
                          mproc_value **out)
{
    return pcall(d, "setdefault", A(key, dflt), 2, out);
}
int mproc_dict_clear(mproc_proxy *d) { return call0(d, "clear"); }
int mproc_dict_copy(mproc_proxy *d, mproc_value **out) { return pcall(d, "copy", NULL, 0, out); }
int mproc_dict_add(mproc_proxy *d, const mproc_value *key, int64_t delta, int64_t *out)
{
    mproc_value *r;
    mproc_value *dv = i64(delta);
    if (!dv)
        return MPROC_ENOMEM;
    int rc = pcall(d, "add", A(key, dv), 2, &r);
    mproc_value_free(dv);
    return want_int(rc, r, out);
}

int mproc_list_append(mproc_proxy *l, const mproc_value *v) { return pcall(l, "append", A(v), 1, NULL); }
int mproc_list_extend(mproc_proxy *l, const mproc_value *list)
{
    return pcall(l, "extend", A(list), 1, NULL);
}
int mproc_list_insert(mproc_proxy *l, int64_t i, const mproc_value *v)
{
    return call_tmp(l, "insert", i64(i), v, NULL);
}
int mproc_list_get(mproc_proxy *l, int64_t i, mproc_value **out)
{
    return call_tmp(l, "get", i64(i), NULL, out);
}
int mproc_list_set(mproc_proxy *l, int64_t i, const mproc_value *v)
{
    return call_tmp(l, "set", i64(i), v, NULL);
}
int mproc_list_del(mproc_proxy *l, int64_t i) { return call_tmp(l, "del", i64(i), NULL, NULL); }
int mproc_list_pop(mproc_proxy *l, int64_t i, mproc_value **out)
{
    return call_tmp(l, "pop", i64(i), NULL, out);
}
int mproc_list_remove(mproc_proxy *l, const mproc_value *v) { return pcall(l, "remove", A(v), 1, NULL); }
int mproc_list_len(mproc_proxy *l, size_t *out)
{
    mproc_value *r;
    int rc = pcall(l, "len", NULL, 0, &r);
    return want_size(rc, r, out);
}
int mproc_list_reverse(mproc_proxy *l) { return call0(l, "reverse"); }
int mproc_list_sort(mproc_proxy *l, bool reverse)
{
    return call_tmp(l, "sort", mproc_value_bool(reverse), NULL, NULL);
}
int mproc_list_index(mproc_proxy *l, const mproc_value *v, size_t *out)
{
    mproc_value *r;
    int rc = pcall(l, "index", A(v), 1, &r);
    return want_size(rc, r, out);
}
int mproc_list_count(mproc_proxy *l, const mproc_value *v, size_t *out)
{
    mproc_value *r;
    int rc = pcall(l, "count", A(v), 1, &r);
    return want_size(rc, r, out);
}
int mproc_list_copy(mproc_proxy *l, mproc_value **out) { return pcall(l, "copy", NULL, 0, out); }

int mproc_namespace_get(mproc_proxy *ns, const char *name, mproc_value **out)
{
    if (!name)
        return MPROC_EINVAL;
    return call_tmp(ns, "getattr", mproc_value_str(name), NULL, out);
}
int mproc_namespace_set(mproc_proxy *ns, const char *name, const mproc_value *v)
{
    if (!name)
        return MPROC_EINVAL;
    return call_tmp(ns, "setattr", mproc_value_str(name), v, NULL);
}
int mproc_namespace_del(mproc_proxy *ns, const char *name)
{
    if (!name)
        return MPROC_EINVAL;
    return call_tmp(ns, "delattr", mproc_value_str(name), NULL, NULL);
}
int mproc_namespace_copy(mproc_proxy *ns, mproc_value **out) { return pcall(ns, "copy", NULL, 0, out); }

int mproc_mqueue_put(mproc_proxy *q, const mproc_value *v, double timeout)
{
    mproc_value *t = tmo(timeout);
    if (!t)
        return MPROC_ENOMEM;
    int rc = pcall(q, "put", A(v, t), 2, NULL);
    mproc_value_free(t);
    return rc;
}
int mproc_mqueue_get(mproc_proxy *q, mproc_value **out, double timeout)
{
    return call_tmp(q, "get", tmo(timeout), NULL, out);
}
int mproc_mqueue_qsize(mproc_proxy *q, size_t *out)
{
    mproc_value *r;
    int rc = pcall(q, "qsize", NULL, 0, &r);
    return want_size(rc, r, out);
}
int mproc_mqueue_empty(mproc_proxy *q, bool *out)
{
    mproc_value *r;
    int rc = pcall(q, "empty", NULL, 0, &r);
    return want_bool(rc, r, out);
}
int mproc_mqueue_full(mproc_proxy *q, bool *out)
{
    mproc_value *r;
    int rc = pcall(q, "full", NULL, 0, &r);
    return want_bool(rc, r, out);
}
int mproc_mqueue_task_done(mproc_proxy *q) { return call0(q, "task_done"); }
int mproc_mqueue_join(mproc_proxy *q, double timeout)
{
    return call_tmp(q, "join", tmo(timeout), NULL, NULL);
}

int mproc_mlock_acquire(mproc_proxy *l, double timeout)
{
    mproc_value *r;
    int rc = call_tmp(l, "acquire", tmo(timeout), NULL, &r);
    return want_ok(rc, r, MPROC_ETIMEDOUT);
}
int mproc_mlock_release(mproc_proxy *l) { return call0(l, "release"); }
int mproc_msemaphore_acquire(mproc_proxy *s, double timeout) { return mproc_mlock_acquire(s, timeout); }
int mproc_msemaphore_release(mproc_proxy *s) { return call0(s, "release"); }
int mproc_msemaphore_value(mproc_proxy *s, int64_t *out)
{
    mproc_value *r;
    int rc = pcall(s, "get_value", NULL, 0, &r);
    return want_int(rc, r, out);
}

int mproc_mcondition_acquire(mproc_proxy *c, double timeout) { return mproc_mlock_acquire(c, timeout); }
int mproc_mcondition_release(mproc_proxy *c) { return call0(c, "release"); }
int mproc_mcondition_wait(mproc_proxy *c, double timeout)
{
    mproc_value *r;
    int rc = call_tmp(c, "wait", tmo(timeout), NULL, &r);
    return want_ok(rc, r, MPROC_ETIMEDOUT);
}
int mproc_mcondition_notify(mproc_proxy *c, unsigned n)
{
    return call_tmp(c, "notify", i64(n), NULL, NULL);
}
int mproc_mcondition_notify_all(mproc_proxy *c) { return call0(c, "notify_all"); }

int mproc_mevent_set(mproc_proxy *e) { return call0(e, "set"); }
int mproc_mevent_clear(mproc_proxy *e) { return call0(e, "clear"); }
int mproc_mevent_is_set(mproc_proxy *e, bool *out)
{
    mproc_value *r;
    int rc = pcall(e, "is_set", NULL, 0, &r);
    return want_bool(rc, r, out);
}
int mproc_mevent_wait(mproc_proxy *e, double timeout)
{
    mproc_value *r;
    int rc = call_tmp(e, "wait", tmo(timeout), NULL, &r);
    return want_ok(rc, r, MPROC_ETIMEDOUT);
}

int mproc_mbarrier_wait(mproc_proxy *b, double timeout, unsigned *index)
{
    mproc_value *r;
    int64_t i = 0;
    int rc = call_tmp(b, "wait", tmo(timeout), NULL, &r);
    rc = want_int(rc, r, &i);
    if (!rc && index)
        *index = (unsigned)i;
    return rc;
}
int mproc_mbarrier_abort(mproc_proxy *b) { return call0(b, "abort"); }
int mproc_mbarrier_reset(mproc_proxy *b) { return call0(b, "reset"); }
int mproc_mbarrier_n_waiting(mproc_proxy *b, unsigned *out)
{
    mproc_value *r;
    int64_t n = 0;
    int rc = pcall(b, "n_waiting", NULL, 0, &r);
    rc = want_int(rc, r, &n);
    if (!rc && out)
        *out = (unsigned)n;
    return rc;
}
int mproc_mbarrier_broken(mproc_proxy *b, bool *out)
{
    mproc_value *r;
    int rc = pcall(b, "broken", NULL, 0, &r);
    return want_bool(rc, r, out);
}

int mproc_mvalue_get(mproc_proxy *v, mproc_value **out) { return pcall(v, "get", NULL, 0, out); }
int mproc_mvalue_set(mproc_proxy *v, const mproc_value *val) { return pcall(v, "set", A(val), 1, NULL); }
int mproc_mvalue_add(mproc_proxy *v, double delta, mproc_value **out)
{
    bool whole = delta > -9e18 && delta < 9e18 && delta == (double)(int64_t)delta;
    mproc_value *d = whole ? i64((int64_t)delta) : mproc_value_float(delta);
    return call_tmp(v, "add", d, NULL, out);
}

int mproc_marray_len(mproc_proxy *a, size_t *out)
{
    mproc_value *r;
    int rc = pcall(a, "len", NULL, 0, &r);
    return want_size(rc, r, out);
}
int mproc_marray_get(mproc_proxy *a, int64_t i, mproc_value **out)
{
    return call_tmp(a, "get", i64(i), NULL, out);
}
int mproc_marray_set(mproc_proxy *a, int64_t i, const mproc_value *val)
{
    return call_tmp(a, "set", i64(i), val, NULL);
}
int mproc_marray_copy(mproc_proxy *a, mproc_value **out) { return pcall(a, "copy", NULL, 0, out); }
