/* server.c — the manager server: the object table, sessions, one thread per
 * client connection, and the server process's main loop.
 *
 * Locks, in the order they may nest: an object's own mutex or the sync mutex
 * (never both: a type uses one) -> the table mutex `mu`. Objects whose last
 * reference goes are queued on `dead` and destroyed by the request's thread
 * once it holds no lock (reap), so a destroy never runs inside a call.
 *
 * fork: the server process never forks; its threads and mutexes need no
 * atfork story. The process exits with _exit: nothing in it must outlive it. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <time.h>
#include <unistd.h>

#include "../connection/conn_int.h"
#include "../process/process_int.h"
#include "mgr_int.h"
#include "mgr_srv.h"
#include "mproc/connection.h"
#include "mproc/queue.h"
#include "wire.h"

/* ------------------------------------------------------------ u64 -> count map */

typedef struct {
    uint64_t key; /* 0 = empty */
    int64_t val;
} cnt_ent;

typedef struct {
    cnt_ent *e;
    size_t n, cap;
} cnt_map;

static int64_t *cnt_slot(cnt_map *m, uint64_t key, bool create)
{
    if (create && (m->n + 1) * 4 > m->cap * 3) {
        size_t ncap = m->cap ? m->cap * 2 : 16;
        cnt_ent *ne = calloc(ncap, sizeof *ne);
        if (!ne)
            return NULL;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->e[i].key)
                continue;
            size_t s = (size_t)(m->e[i].key * 0x9E3779B97F4A7C15ull) & (ncap - 1);
            while (ne[s].key)
                s = (s + 1) & (ncap - 1);
            ne[s] = m->e[i];
        }
        free(m->e);
        m->e = ne;
        m->cap = ncap;
    }
    if (!m->cap)
        return NULL;
    size_t mask = m->cap - 1, s = (size_t)(key * 0x9E3779B97F4A7C15ull) & mask;
    for (; m->e[s].key; s = (s + 1) & mask)
        if (m->e[s].key == key)
            return &m->e[s].val;
    if (!create)
        return NULL;
    m->e[s].key = key;
    m->e[s].val = 0;
    m->n++;
    return &m->e[s].val;
}

/* Remove `key` (linear probing: shift the cluster back). */
static void cnt_del(cnt_map *m, uint64_t key)
{
    if (!m->cap)
        return;
    size_t mask = m->cap - 1, s = (size_t)(key * 0x9E3779B97F4A7C15ull) & mask;
    for (; m->e[s].key != key; s = (s + 1) & mask)
        if (!m->e[s].key)
            return;
    m->e[s].key = 0;
    m->n--;
    for (size_t j = (s + 1) & mask; m->e[j].key; j = (j + 1) & mask) {
        size_t home = (size_t)(m->e[j].key * 0x9E3779B97F4A7C15ull) & mask;
        /* Move e[j] into the hole at s unless its home lies in (s, j]. */
        bool stays = s <= j ? (home > s && home <= j) : (home > s || home <= j);
        if (stays)
            continue;
        m->e[s] = m->e[j];
        m->e[j].key = 0;
        s = j;
    }
}

/* ------------------------------------------------------------ server state */

typedef struct pend_ref {
    uint64_t id;
    int64_t expiry_ns;
} pend_ref;

typedef struct mgr_session {
    uint64_t id;  /* chosen by the client handle */
    uint64_t gen; /* ours, never reused: lock owners are recorded by it */
    int nconns;
    cnt_map refs; /* object id -> references held by this handle's proxies */
    pend_ref *pend; /* references handed over with values (pop, Queue.get) */
    size_t npend, pendcap;
    struct mgr_session *next;
} mgr_session;

typedef struct slot {
    mgr_obj *o;
    uint32_t gen;
    uint32_t next_free; /* index + 1 in the free list, 0 = end */
} slot;

typedef struct name_ent {
    char *name;
    mgr_obj *o;
} name_ent;

struct mgr_server {
    pthread_mutex_t mu; /* table, sessions, names, dead, nconns */
    slot *slots;
    size_t nslots, slotcap;
    uint32_t free_head;
    mgr_session *sessions;
    name_ent *names;
    size_t nnames, namecap;
    mgr_obj *dead;
    int nconns;
    uint64_t next_gen;

    pthread_mutex_t sync_mu;
    pthread_cond_t sync_cv;
    atomic_bool stopping;

    mgr_config cfg;
    mproc_listener *listener;
    mproc_queue *shared_req;  /* every shared-memory client's requests */
    mgr_conn **ctab;          /* shared-memory connections by key; mu */
    size_t nctab, ctabcap;
};

struct mgr_conn {
    mgr_server *s;
    mproc_connection *c;
    int fd;
    mproc_queue *rep;     /* shared memory: replies (requests come on s->shared_req) */
    uint64_t key;         /* shared memory: names this connection in requests */
    int evfd;             /* shared memory: the dispatcher hands a request over */
    _Atomic(mproc_value *) handed; /* ... this one */
    int refs;             /* its thread, the key table, a dispatcher using it; s->mu */
    atomic_bool dead;     /* the thread has left */
    mgr_session *sess;
    mproc_buf out;
    bool refuse;          /* over max_clients: answer the hello with MPROC_EAGAIN */
};

/* ------------------------------------------------------------ calls */

int mgr_fail(mgr_call *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof c->msg, fmt, ap);
    va_end(ap);
    c->msg_set = true;
    return code;
}


bool mgr_cancelled(mgr_call *c)
{
    if (atomic_load(&c->srv->stopping))
        return true;
    return c->conn && mproc__peer_gone(c->conn->fd);
}

int mgr_sync_wait(mgr_call *c, mproc_deadline d)
{
    if (mgr_cancelled(c))
        return MPROC_ECLOSED;
    if (mproc_deadline_expired(d))
        return MPROC_ETIMEDOUT;
    if (c->no_block) {
        c->would_block = true;
        return MPROC_ETIMEDOUT;
    }
    int64_t now = mproc__now_ns(), until = now + (int64_t)(MGR_SLICE_S * 1e9);
    if (d.ns < until)
        until = d.ns;
    struct timespec ts = {(time_t)(until / 1000000000), (long)(until % 1000000000)};
    pthread_cond_timedwait(&c->srv->sync_cv, &c->srv->sync_mu, &ts);
    /* Look again after the sleep: a caller that died while we slept must not
     * take the item or unit that woke us (it would be lost with it). */
    return mgr_cancelled(c) ? MPROC_ECLOSED : 0;
}

void mgr_sync_broadcast(mgr_server *s)
{
    pthread_cond_broadcast(&s->sync_cv);
}

int mgr_args_count(mgr_call *c, const char *method, const mproc_value *args, size_t min,
                   size_t max)
{
    size_t n = mproc_value_len(args);
    if (n >= min && n <= max)
        return 0;
    if (min == max)
        return mgr_fail(c, MPROC_EINVAL, "TypeError: %s() takes %zu argument%s (%zu given)", method,
                        min, min == 1 ? "" : "s", n);
    return mgr_fail(c, MPROC_EINVAL, "TypeError: %s() takes %zu to %zu arguments (%zu given)",
                    method, min, max, n);
}

mproc_value *mgr_arg_take(mproc_value *args, size_t i)
{
    /* Leave a hole: every reader of args (mproc_value_at, the free) takes
     * NULL for nil, and args is never encoded. No allocation per call. */
    if (!args || args->type != MPROC_V_LIST || i >= args->u.l.n)
        return NULL;
    mproc_value *v = args->u.l.v[i];
    args->u.l.v[i] = NULL;
    return v;
}

int mgr_arg_int(mgr_call *c, const mproc_value *args, size_t i, int64_t *out)
{
    const mproc_value *v = mproc_value_at(args, i);
    if (v && mproc_value_type(v) == MPROC_V_INT) {
        *out = mproc_value_as_int(v);
        return 0;
    }
    if (v && mproc_value_type(v) == MPROC_V_BOOL) {
        *out = mproc_value_as_bool(v);
        return 0;
    }
    return mgr_fail(c, MPROC_EINVAL, "TypeError: argument %zu must be an int", i + 1);
}

int mgr_arg_timeout(mgr_call *c, const mproc_value *args, size_t i, mproc_deadline *out)
{
    const mproc_value *v = mproc_value_at(args, i);
    mproc_vtype t = mproc_value_type(v);
    if (!v || t == MPROC_V_NIL) {
        *out = mproc_deadline_after(MPROC_FOREVER);
        return 0;
    }
    if (t != MPROC_V_INT && t != MPROC_V_FLOAT)
        return mgr_fail(c, MPROC_EINVAL, "TypeError: timeout must be a number or None");
    double s = mproc_value_as_float(v);
    if (s != s)
        return mgr_fail(c, MPROC_EINVAL, "ValueError: timeout is NaN");
    *out = mproc_deadline_after(s);
    return 0;
}

int mgr_arg_bool(mgr_call *c, const mproc_value *args, size_t i, bool dflt, bool *out)
{
    const mproc_value *v = mproc_value_at(args, i);
    if (!v) {
        *out = dflt;
        return 0;
    }
    switch (mproc_value_type(v)) {
    case MPROC_V_BOOL:
        *out = mproc_value_as_bool(v);
        return 0;
    case MPROC_V_INT:
        *out = mproc_value_as_int(v) != 0;
        return 0;
    case MPROC_V_NIL:
        *out = false;
        return 0;
    default:
        return mgr_fail(c, MPROC_EINVAL, "TypeError: argument %zu must be a bool", i + 1);
    }
}

void mgr_repr(const mproc_value *v, char *buf, size_t len)
{
    char *r = mproc_value_repr(v);
    if (!r) {
        snprintf(buf, len, "?");
        return;
    }
    size_t n = strlen(r);
    if (n >= len && len > 4)
        snprintf(buf, len, "%.*s...", (int)(len - 4), r);
    else
        snprintf(buf, len, "%s", r);
    free(r);
}

/* ------------------------------------------------------------ user types */

static __thread bool tl_user_msg_set;
static __thread char tl_user_msg[256];

int mproc_manager_error(int code, const char *fmt, ...)
{
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(tl_user_msg, sizeof tl_user_msg, fmt, ap);
        va_end(ap);
        tl_user_msg_set = true;
    }
    return code < 0 ? code : MPROC_EREMOTE;
}

static int user_result(mgr_call *c, int rc, const char *what)
{
    if (rc > 0)
        rc = MPROC_EREMOTE;
    if (rc && !c->msg_set) {
        if (tl_user_msg_set)
            mgr_fail(c, rc, "%s", tl_user_msg);
        else
            mgr_fail(c, rc, "%s failed: %s", what, mproc_strerror(rc));
    }
    tl_user_msg_set = false;
    return rc;
}

static int user_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    tl_user_msg_set = false;
    return user_result(c, o->user->create(args, &o->impl), o->user->typeid);
}

static int user_call(mgr_obj *o, const char *method, mproc_value *args, mproc_value **result,
                     mgr_call *c)
{
    tl_user_msg_set = false;
    return user_result(c, o->user->call(o->impl, method, args, result), method);
}

static void user_destroy(mgr_obj *o)
{
    if (o->user->destroy)
        o->user->destroy(o->impl);
}

static const mgr_type user_type = {"(user)", false, user_create, user_call, user_destroy, NULL,
                                   false};

static const mgr_type *const builtin_types[] = {
    &mgr_t_dict,  &mgr_t_list,      &mgr_t_namespace,  &mgr_t_value,
    &mgr_t_array, &mgr_t_queue,     &mgr_t_joinable_queue, &mgr_t_lock,
    &mgr_t_rlock, &mgr_t_semaphore, &mgr_t_bounded_semaphore, &mgr_t_condition,
    &mgr_t_event, &mgr_t_barrier,
};

bool mgr__builtin_typeid(const char *typeid)
{
    for (size_t i = 0; i < sizeof builtin_types / sizeof *builtin_types; i++)
        if (strcmp(builtin_types[i]->typeid, typeid) == 0)
            return true;
    return false;
}

static const char *obj_typeid(const mgr_obj *o)
{
    return o->user ? o->user->typeid : o->type->typeid;
}

/* ------------------------------------------------------------ the table */

static mgr_obj *lookup_locked(mgr_server *s, uint64_t id)
{
    uint32_t idx = (uint32_t)id, gen = (uint32_t)(id >> 32);
    if (idx == 0 || idx > s->nslots)
        return NULL;
    slot *sl = &s->slots[idx - 1];
    if (!sl->o || sl->gen != gen || !sl->o->live)
        return NULL;
    return sl->o;
}

static int insert_locked(mgr_server *s, mgr_obj *o)
{
    uint32_t idx;
    if (s->free_head) {
        idx = s->free_head;
        s->free_head = s->slots[idx - 1].next_free;
    } else {
        if (s->nslots == UINT32_MAX - 1)
            return MPROC_ENOSPC;
        if (s->nslots == s->slotcap) {
            size_t ncap = s->slotcap ? s->slotcap * 2 : 64;
            slot *ns = realloc(s->slots, ncap * sizeof *ns);
            if (!ns)
                return MPROC_ENOMEM;
            s->slots = ns;
            s->slotcap = ncap;
        }
        s->slots[s->nslots] = (slot){NULL, 0, 0};
        idx = (uint32_t)++s->nslots;
    }
    slot *sl = &s->slots[idx - 1];
    sl->gen++;
    if (sl->gen == 0)
        sl->gen = 1;
    sl->o = o;
    o->id = ((uint64_t)sl->gen << 32) | idx;
    o->live = true;
    return 0;
}

static void decref_locked(mgr_server *s, mgr_obj *o)
{
    if (--o->refs > 0)
        return;
    uint32_t idx = (uint32_t)o->id;
    if (o->live) {
        o->live = false;
        slot *sl = &s->slots[idx - 1];
        sl->o = NULL;
        sl->next_free = s->free_head;
        s->free_head = idx;
    }
    o->next_dead = s->dead;
    __atomic_store_n(&s->dead, o, __ATOMIC_RELEASE);
}

void mgr_obj_release(mgr_server *s, mgr_obj *o)
{
    pthread_mutex_lock(&s->mu);
    decref_locked(s, o);
    pthread_mutex_unlock(&s->mu);
}

static void obj_lock(mgr_obj *o)
{
    pthread_mutex_lock(o->type->blocking ? &o->srv->sync_mu : &o->mu);
}

static void obj_unlock(mgr_obj *o)
{
    pthread_mutex_unlock(o->type->blocking ? &o->srv->sync_mu : &o->mu);
}

static void obj_free(mgr_obj *o)
{
    pthread_mutex_destroy(&o->mu);
    free(o);
}

/* Destroy what died, outside every lock. Destroying may release more. */
static void reap(mgr_server *s)
{
    if (!__atomic_load_n(&s->dead, __ATOMIC_ACQUIRE))
        return; /* nothing died: the common case costs no lock */
    for (;;) {
        pthread_mutex_lock(&s->mu);
        mgr_obj *o = s->dead;
        s->dead = NULL;
        pthread_mutex_unlock(&s->mu);
        if (!o)
            return;
        while (o) {
            mgr_obj *next = o->next_dead;
            obj_lock(o);
            o->type->destroy(o);
            if (o->type->blocking)
                mgr_sync_broadcast(s);
            obj_unlock(o);
            obj_free(o);
            o = next;
        }
    }
}

/* ------------------------------------------------------------ references in values */

/* Parse a reference value: 0, or MPROC_EINVAL when `v` is an ext of our type
 * with a bad payload; 1 when `v` is not a reference at all. */
static int parse_ref(const mproc_value *v, uint64_t *id, const char **typeid, size_t *tlen)
{
    if (mproc_value_type(v) != MPROC_V_EXT || mproc_value_ext_type(v) != MGR_EXT_REF)
        return 1;
    size_t n;
    const uint8_t *p = mproc_value_as_bytes(v, &n);
    if (!p || n < 9 || n > 8 + MGR_TYPEID_MAX)
        return MPROC_EINVAL;
    uint64_t x = 0;
    for (int i = 0; i < 8; i++)
        x = x << 8 | p[i];
    *id = x;
    *typeid = (const char *)p + 8;
    *tlen = n - 8;
    return 0;
}

static bool has_children(const mproc_value *v)
{
    mproc_vtype t = mproc_value_type(v);
    return t == MPROC_V_LIST || t == MPROC_V_MAP;
}

/* Walk `v`: check (inc == 0) that every reference names a live object of
 * its typeid, or add `inc` to each one's count. Table mutex held. */
static int walk_refs_locked(mgr_call *c, mgr_server *s, const mproc_value *v, int inc, int depth)
{
    uint64_t id;
    const char *tid;
    size_t tlen;
    int rc = parse_ref(v, &id, &tid, &tlen);
    if (rc == 0) {
        mgr_obj *o = lookup_locked(s, id);
        if (inc == 0) {
            const char *want = o ? obj_typeid(o) : NULL;
            if (!o)
                return c ? mgr_fail(c, MPROC_ENOENT, "KeyError: no managed object %#llx",
                                    (unsigned long long)id)
                         : MPROC_ENOENT;
            if (strlen(want) != tlen || memcmp(want, tid, tlen) != 0)
                return c ? mgr_fail(c, MPROC_EINVAL, "TypeError: reference %#llx names a '%s'",
                                    (unsigned long long)id, want)
                         : MPROC_EINVAL;
        } else if (o) {
            if (inc > 0)
                o->refs++;
            else
                decref_locked(s, o);
        }
        return 0;
    }
    if (rc < 0)
        return c ? mgr_fail(c, rc, "ValueError: malformed object reference") : rc;
    if (!has_children(v) || depth > MPROC__MAX_NEST)
        return 0;
    bool map = mproc_value_type(v) == MPROC_V_MAP;
    size_t n = mproc_value_len(v);
    for (size_t i = 0; i < n; i++) {
        if (map && (rc = walk_refs_locked(c, s, mproc_value_key_at(v, i), inc, depth + 1)) != 0)
            return rc;
        if ((rc = walk_refs_locked(c, s, mproc_value_at(v, i), inc, depth + 1)) != 0)
            return rc;
    }
    return 0;
}

static bool maybe_refs(const mproc_value *v)
{
    mproc_vtype t = mproc_value_type(v);
    return t == MPROC_V_EXT || t == MPROC_V_LIST || t == MPROC_V_MAP;
}

int mgr_refs_hold(mgr_call *c, const mproc_value *v)
{
    if (!maybe_refs(v))
        return 0;
    mgr_server *s = c->srv;
    pthread_mutex_lock(&s->mu);
    int rc = walk_refs_locked(c, s, v, 0, 0);
    if (!rc)
        walk_refs_locked(c, s, v, 1, 0);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void mgr_refs_release(mgr_server *s, const mproc_value *v)
{
    if (!maybe_refs(v))
        return;
    pthread_mutex_lock(&s->mu);
    walk_refs_locked(NULL, s, v, -1, 0);
    pthread_mutex_unlock(&s->mu);
}

mgr_obj *mgr_obj_from_ref(mgr_call *c, const mproc_value *ref)
{
    uint64_t id;
    const char *tid;
    size_t tlen;
    if (parse_ref(ref, &id, &tid, &tlen) != 0) {
        mgr_fail(c, MPROC_EINVAL, "TypeError: expected a managed object reference");
        return NULL;
    }
    mgr_server *s = c->srv;
    pthread_mutex_lock(&s->mu);
    mgr_obj *o = lookup_locked(s, id);
    if (o)
        o->refs++;
    pthread_mutex_unlock(&s->mu);
    if (!o)
        mgr_fail(c, MPROC_ENOENT, "KeyError: no managed object %#llx", (unsigned long long)id);
    return o;
}

/* Give the references in `v` to the caller's session as pending ones. */
static void handover_walk_locked(mgr_call *c, mgr_server *s, const mproc_value *v, int64_t expiry,
                                 int depth)
{
    uint64_t id;
    const char *tid;
    size_t tlen;
    if (parse_ref(v, &id, &tid, &tlen) == 0) {
        mgr_obj *o = lookup_locked(s, id);
        if (!o)
            return;
        struct mgr_session *x = c->conn ? c->conn->sess : NULL;
        if (x && x->npend == x->pendcap) {
            size_t ncap = x->pendcap ? x->pendcap * 2 : 8;
            pend_ref *np = realloc(x->pend, ncap * sizeof *np);
            if (np) {
                x->pend = np;
                x->pendcap = ncap;
            }
        }
        if (x && x->npend < x->pendcap)
            x->pend[x->npend++] = (pend_ref){id, expiry};
        else
            decref_locked(s, o); /* out of memory: as if released */
        return;
    }
    if (!has_children(v) || depth > MPROC__MAX_NEST)
        return;
    bool map = mproc_value_type(v) == MPROC_V_MAP;
    size_t n = mproc_value_len(v);
    for (size_t i = 0; i < n; i++) {
        if (map)
            handover_walk_locked(c, s, mproc_value_key_at(v, i), expiry, depth + 1);
        handover_walk_locked(c, s, mproc_value_at(v, i), expiry, depth + 1);
    }
}

void mgr_refs_handover(mgr_call *c, const mproc_value *v)
{
    if (!maybe_refs(v))
        return;
    mgr_server *s = c->srv;
    int64_t expiry = mproc__now_ns() + (int64_t)MGR_HANDOVER_S * 1000000000;
    pthread_mutex_lock(&s->mu);
    handover_walk_locked(c, s, v, expiry, 0);
    pthread_mutex_unlock(&s->mu);
}

/* Take a pending reference on `id` from session `x`, if it has one. */
static bool adopt_locked(struct mgr_session *x, uint64_t id)
{
    for (size_t i = 0; i < x->npend; i++)
        if (x->pend[i].id == id) {
            x->pend[i] = x->pend[--x->npend];
            return true;
        }
    return false;
}

/* Drop handed-over references nobody adopted in time. */
static void sweep_pending(mgr_server *s)
{
    int64_t now = mproc__now_ns();
    pthread_mutex_lock(&s->mu);
    for (struct mgr_session *x = s->sessions; x; x = x->next)
        for (size_t i = 0; i < x->npend;) {
            if (x->pend[i].expiry_ns > now) {
                i++;
                continue;
            }
            mgr_obj *o = lookup_locked(s, x->pend[i].id);
            if (o)
                decref_locked(s, o);
            x->pend[i] = x->pend[--x->npend];
        }
    pthread_mutex_unlock(&s->mu);
    reap(s);
}

/* ------------------------------------------------------------ sessions */

static mgr_session *session_join_locked(mgr_server *s, uint64_t id)
{
    for (mgr_session *x = s->sessions; x; x = x->next)
        if (x->id == id) {
            x->nconns++;
            return x;
        }
    mgr_session *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->id = id;
    x->gen = ++s->next_gen;
    x->nconns = 1;
    x->next = s->sessions;
    s->sessions = x;
    return x;
}

/* The last connection of a process closed (and `x` left the list with it):
 * drop its references and the locks it held. A connection of the same
 * process that arrives later starts a new session. */
static void session_end(mgr_server *s, mgr_session *x)
{
    pthread_mutex_lock(&s->mu);
    /* Blocking objects to tell, each held while we do. */
    size_t nb = 0;
    mgr_obj **bl = NULL;
    for (size_t i = 0; i < s->nslots; i++) {
        mgr_obj *o = s->slots[i].o;
        if (o && o->live && o->type->blocking && o->type->session_end) {
            mgr_obj **nbl = realloc(bl, (nb + 1) * sizeof *bl);
            if (!nbl)
                break;
            bl = nbl;
            o->refs++;
            bl[nb++] = o;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (nb) {
        pthread_mutex_lock(&s->sync_mu);
        for (size_t i = 0; i < nb; i++)
            bl[i]->type->session_end(bl[i], x->gen);
        mgr_sync_broadcast(s);
        pthread_mutex_unlock(&s->sync_mu);
    }
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < nb; i++)
        decref_locked(s, bl[i]);
    for (size_t i = 0; i < x->refs.cap; i++) {
        cnt_ent *e = &x->refs.e[i];
        if (!e->key)
            continue;
        mgr_obj *o = lookup_locked(s, e->key);
        for (int64_t k = 0; o && k < e->val; k++)
            decref_locked(s, o);
    }
    for (size_t i = 0; i < x->npend; i++) {
        mgr_obj *o = lookup_locked(s, x->pend[i].id);
        if (o)
            decref_locked(s, o);
    }
    pthread_mutex_unlock(&s->mu);
    free(bl);
    free(x->refs.e);
    free(x->pend);
    free(x);
    reap(s);
}

/* ------------------------------------------------------------ server methods */

static const mgr_type *find_type(mgr_server *s, const char *typeid, const mproc_manager_type **user)
{
    *user = NULL;
    for (size_t i = 0; i < sizeof builtin_types / sizeof *builtin_types; i++)
        if (strcmp(builtin_types[i]->typeid, typeid) == 0)
            return builtin_types[i];
    for (size_t i = 0; i < s->cfg.ntypes; i++)
        if (strcmp(s->cfg.types[i]->typeid, typeid) == 0) {
            *user = s->cfg.types[i];
            return &user_type;
        }
    return NULL;
}

/* A reference for the calling session on `o` (table mutex held). */
static int session_ref_locked(mgr_call *c, mgr_obj *o)
{
    int64_t *cnt = cnt_slot(&c->conn->sess->refs, o->id, true);
    if (!cnt)
        return MPROC_ENOMEM;
    ++*cnt;
    o->refs++;
    return 0;
}

static mproc_value *id_reply(const mgr_obj *o)
{
    mproc_value *r = mproc_value_list();
    if (!r)
        return NULL;
    if (mproc_value_append(r, mproc_value_int((int64_t)o->id)) ||
        mproc_value_append(r, mproc_value_str(obj_typeid(o)))) {
        mproc_value_free(r);
        return NULL;
    }
    return r;
}

static int srv_create(mgr_call *c, mproc_value *args, mproc_value **result)
{
    mgr_server *s = c->srv;
    int rc = mgr_args_count(c, "create", args, 2, 2);
    if (rc)
        return rc;
    const char *typeid = mproc_value_as_str(mproc_value_at(args, 0), NULL);
    mproc_value *cargs = mproc_value_at(args, 1);
    if (!typeid || mproc_value_type(cargs) != MPROC_V_LIST)
        return mgr_fail(c, MPROC_EINVAL, "TypeError: create(typeid, args)");
    const mproc_manager_type *user;
    const mgr_type *t = find_type(s, typeid, &user);
    if (!t)
        return mgr_fail(c, MPROC_ENOENT, "KeyError: no type '%s' on this manager", typeid);
    mgr_obj *o = calloc(1, sizeof *o);
    if (!o)
        return MPROC_ENOMEM;
    o->type = t;
    o->user = user;
    o->srv = s;
    pthread_mutex_init(&o->mu, NULL);
    obj_lock(o);
    rc = t->create(o, cargs, c);
    obj_unlock(o);
    if (rc) {
        obj_free(o);
        return rc;
    }
    pthread_mutex_lock(&s->mu);
    rc = insert_locked(s, o);
    if (!rc && (rc = session_ref_locked(c, o)) != 0) {
        o->refs = 1;
        decref_locked(s, o); /* reaped with the request */
    }
    pthread_mutex_unlock(&s->mu);
    if (rc) {
        if (!o->id) { /* never in the table */
            obj_lock(o);
            t->destroy(o);
            obj_unlock(o);
            obj_free(o);
        }
        return rc;
    }
    *result = id_reply(o);
    return *result ? 0 : MPROC_ENOMEM;
}

static int srv_incref(mgr_call *c, mproc_value *args, mproc_value **result)
{
    mgr_server *s = c->srv;
    int64_t id = 0;
    int rc = mgr_args_count(c, "incref", args, 1, 1);
    if (rc || (rc = mgr_arg_int(c, args, 0, &id)) != 0)
        return rc;
    pthread_mutex_lock(&s->mu);
    mgr_obj *o = lookup_locked(s, (uint64_t)id);
    if (!o) {
        rc = mgr_fail(c, MPROC_ENOENT, "KeyError: managed object %#llx no longer exists",
                      (unsigned long long)id);
    } else if ((rc = session_ref_locked(c, o)) == 0 && adopt_locked(c->conn->sess, o->id)) {
        o->refs--; /* the handed-over reference becomes the proxy's */
    }
    const char *typeid = o ? obj_typeid(o) : NULL;
    pthread_mutex_unlock(&s->mu);
    if (rc)
        return rc;
    *result = mproc_value_str(typeid);
    return *result ? 0 : MPROC_ENOMEM;
}

static int srv_decref(mgr_call *c, mproc_value *args)
{
    mgr_server *s = c->srv;
    int64_t id = 0;
    int rc = mgr_args_count(c, "decref", args, 1, 1);
    if (rc || (rc = mgr_arg_int(c, args, 0, &id)) != 0)
        return rc;
    pthread_mutex_lock(&s->mu);
    int64_t *cnt = cnt_slot(&c->conn->sess->refs, (uint64_t)id, false);
    mgr_obj *o = lookup_locked(s, (uint64_t)id);
    if (!cnt || *cnt <= 0 || !o) {
        rc = mgr_fail(c, MPROC_ENOENT, "KeyError: this process holds no reference to %#llx",
                      (unsigned long long)id);
    } else {
        if (--*cnt == 0)
            cnt_del(&c->conn->sess->refs, (uint64_t)id);
        decref_locked(s, o);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static name_ent *find_name_locked(mgr_server *s, const char *name)
{
    for (size_t i = 0; i < s->nnames; i++)
        if (strcmp(s->names[i].name, name) == 0)
            return &s->names[i];
    return NULL;
}

static bool grow_names_locked(mgr_server *s)
{
    size_t ncap = s->namecap * 2 + 8;
    name_ent *nn = realloc(s->names, ncap * sizeof *nn);
    if (!nn)
        return false;
    s->names = nn;
    s->namecap = ncap;
    return true;
}

static int srv_bind(mgr_call *c, mproc_value *args)
{
    mgr_server *s = c->srv;
    int64_t id = 0;
    int rc = mgr_args_count(c, "bind", args, 2, 2);
    if (rc || (rc = mgr_arg_int(c, args, 1, &id)) != 0)
        return rc;
    const char *name = mproc_value_as_str(mproc_value_at(args, 0), NULL);
    if (!name || !*name || strlen(name) > 255)
        return mgr_fail(c, MPROC_EINVAL, "ValueError: a name is 1 to 255 bytes");
    pthread_mutex_lock(&s->mu);
    mgr_obj *o = lookup_locked(s, (uint64_t)id);
    name_ent *e = find_name_locked(s, name);
    if (!o) {
        rc = mgr_fail(c, MPROC_ENOENT, "KeyError: managed object %#llx no longer exists",
                      (unsigned long long)id);
    } else if (e) {
        o->refs++;
        decref_locked(s, e->o);
        e->o = o;
    } else if (s->nnames == s->namecap && !grow_names_locked(s)) {
        rc = MPROC_ENOMEM;
    } else if (!(s->names[s->nnames].name = strdup(name))) {
        rc = MPROC_ENOMEM;
    } else {
        o->refs++;
        s->names[s->nnames++].o = o;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int srv_lookup(mgr_call *c, mproc_value *args, mproc_value **result, bool unbind)
{
    mgr_server *s = c->srv;
    int rc = mgr_args_count(c, unbind ? "unbind" : "lookup", args, 1, 1);
    if (rc)
        return rc;
    const char *name = mproc_value_as_str(mproc_value_at(args, 0), NULL);
    if (!name)
        return mgr_fail(c, MPROC_EINVAL, "TypeError: the name must be a str");
    pthread_mutex_lock(&s->mu);
    name_ent *e = find_name_locked(s, name);
    if (!e) {
        rc = mgr_fail(c, MPROC_ENOENT, "KeyError: no object is bound to '%s'", name);
    } else if (unbind) {
        decref_locked(s, e->o);
        free(e->name);
        *e = s->names[--s->nnames];
    } else if ((rc = session_ref_locked(c, e->o)) == 0 && !(*result = id_reply(e->o))) {
        rc = MPROC_ENOMEM;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int server_method(mgr_call *c, const char *method, mproc_value *args,
                         mproc_value **result)
{
    if (strcmp(method, "create") == 0)
        return srv_create(c, args, result);
    if (strcmp(method, "incref") == 0)
        return srv_incref(c, args, result);
    if (strcmp(method, "decref") == 0)
        return srv_decref(c, args);
    if (strcmp(method, "bind") == 0)
        return srv_bind(c, args);
    if (strcmp(method, "lookup") == 0)
        return srv_lookup(c, args, result, false);
    if (strcmp(method, "unbind") == 0)
        return srv_lookup(c, args, result, true);
    if (strcmp(method, "ping") == 0)
        return 0;
    if (strcmp(method, "shutdown") == 0) {
        int64_t token = 0;
        if (mgr_args_count(c, "shutdown", args, 1, 1) || mgr_arg_int(c, args, 0, &token) ||
            (uint64_t)token != c->srv->cfg.owner_token)
            return mgr_fail(c, MPROC_EPERM, "PermissionError: only the manager's owner may shut it down");
        atomic_store(&c->srv->stopping, true);
        return 0;
    }
    return mgr_fail(c, MPROC_ENOSYS, "AttributeError: the server has no method '%s'", method);
}

/* ------------------------------------------------------------ requests */

static int encode_reply(mproc_buf *out, int rc, const mproc_value *result, const char *msg,
                        size_t max)
{
    out->len = 0;
    int e = mproc__mp_array(out, 2);
    if (!e && rc == 0) {
        e = mproc__mp_int(out, 0);
        if (!e)
            e = result ? mproc_msgpack_encode(result, out) : mproc__mp_nil(out);
        if (!e && out->len > max) {
            char m[128];
            snprintf(m, sizeof m, "the reply (%zu bytes) exceeds max_message (%zu)", out->len, max);
            return encode_reply(out, MPROC_EMSGSIZE, NULL, m, max);
        }
        if (e) {
            char m[128];
            snprintf(m, sizeof m, "the reply cannot be encoded: %s", mproc_strerror(e));
            return encode_reply(out, e, NULL, m, max);
        }
        return 0;
    }
    if (!e)
        e = mproc__mp_int(out, rc);
    if (!e)
        e = mproc__mp_str(out, msg, strlen(msg));
    return e;
}

/* Check the shape [id, method, [args], tid (, conn key)]. */
static bool request_ok(const mproc_value *v, size_t nfields)
{
    return mproc_value_type(v) == MPROC_V_LIST && mproc_value_len(v) == nfields &&
           mproc_value_type(mproc_value_at(v, 0)) == MPROC_V_INT &&
           mproc_value_type(mproc_value_at(v, 1)) == MPROC_V_STR &&
           mproc_value_type(mproc_value_at(v, 2)) == MPROC_V_LIST &&
           mproc_value_type(mproc_value_at(v, 3)) == MPROC_V_INT &&
           (nfields == 4 || mproc_value_type(mproc_value_at(v, 4)) == MPROC_V_INT);
}

/* Run the request `v` (checked by request_ok; freed here) for `cn` and
 * encode the reply into `out`. */
static int run_request(mgr_conn *cn, mproc_value *v, mgr_obj *held, mproc_buf *out,
                       bool *would_block)
{
    mgr_server *s = cn->s;
    mgr_call c = {.srv = s, .conn = cn, .session = cn->sess->gen, .no_block = would_block != NULL};
    mproc_value *result = NULL;
    const char *method = mproc_value_as_str(mproc_value_at(v, 1), NULL);
    mproc_value *args = mproc_value_at(v, 2);
    c.tid = (uint32_t)mproc_value_as_int(mproc_value_at(v, 3));
    uint64_t id = (uint64_t)mproc_value_as_int(mproc_value_at(v, 0));
    int rc;
    if (id == 0) {
        rc = server_method(&c, method, args, &result);
    } else {
        mgr_obj *o = held;
        if (!o) {
            pthread_mutex_lock(&s->mu);
            if ((o = lookup_locked(s, id)) != NULL)
                o->refs++;
            pthread_mutex_unlock(&s->mu);
        }
        if (!o) {
            rc = mgr_fail(&c, MPROC_ENOENT, "KeyError: managed object %#llx no longer exists",
                          (unsigned long long)id);
        } else {
            obj_lock(o);
            rc = o->type->call(o, method, args, &result, &c);
            obj_unlock(o);
            mgr_obj_release(s, o);
        }
    }
    mproc_value_free(v);
    if (c.would_block) { /* no answer: the caller runs it again, blocking */
        mproc_value_free(result);
        *would_block = true;
        reap(s);
        return 0;
    }
    if (rc && !c.msg_set)
        mgr_fail(&c, rc, "%s", mproc_strerror(rc));
    int e = encode_reply(out, rc, result, c.msg, s->cfg.max_message);
    mproc_value_free(result);
    reap(s);
    return e;
}

/* Decode a request arriving on a connection's own channel. A malformed one
 * gets an error reply in `out` and *v = NULL. */
static int decode_request(mgr_conn *cn, const void *req, size_t len, mproc_value **v)
{
    *v = NULL;
    int rc = mproc_msgpack_decode(req, len, NULL, v);
    if (!rc && request_ok(*v, 4))
        return 0;
    mproc_value_free(*v);
    *v = NULL;
    char m[160];
    snprintf(m, sizeof m, "malformed request: %s",
             rc ? mproc_errmsg() : "want [id, method, [args], tid]");
    return encode_reply(&cn->out, MPROC_EPROTO, NULL, m, cn->s->cfg.max_message);
}

/* ------------------------------------------------------------ connections */

/* Leave at once (threads may be anywhere): remove a socket file first. */
static _Noreturn void server_exit(mgr_server *s)
{
    mproc_listener_close(s->listener); /* unlinks a unix path socket */
    _exit(0);
}

/* Put the reply in `out` on the connection's reply channel. */
static int send_reply(mgr_conn *cn, const mproc_buf *out)
{
    if (!cn->rep)
        return mproc_connection_send_bytes(cn->c, out->data, out->len);
    for (;;) {
        int rc = mproc_queue_put(cn->rep, out->data, out->len, mproc__put_slice(out->len));
        if (rc != MPROC_EFULL && rc != MPROC_ETIMEDOUT)
            return rc;
        if (atomic_load(&cn->dead) || mproc__peer_gone(cn->fd) || atomic_load(&cn->s->stopping))
            return MPROC_ECLOSED;
    }
}

static void conn_release(mgr_conn *cn)
{
    mgr_server *s = cn->s;
    pthread_mutex_lock(&s->mu);
    bool last = --cn->refs == 0;
    bool sess_last = false;
    if (last && cn->sess) {
        sess_last = --cn->sess->nconns == 0;
        if (sess_last)
            for (mgr_session **pp = &s->sessions; *pp; pp = &(*pp)->next)
                if (*pp == cn->sess) {
                    *pp = cn->sess->next;
                    break;
                }
    }
    if (last)
        s->nconns--;
    pthread_mutex_unlock(&s->mu);
    if (!last)
        return;
    if (sess_last)
        session_end(s, cn->sess);
    mproc_value_free(atomic_load(&cn->handed));
    mproc_queue_close(cn->rep);
    mproc_connection_close(cn->c);
    if (cn->evfd >= 0)
        close(cn->evfd);
    mproc__buf_free(&cn->out);
    free(cn);
}

/* Shared-memory connections are found by key from the shared request queue. */
static int conn_table_add_locked(mgr_server *s, mgr_conn *cn)
{
    size_t i = 0;
    while (i < s->nctab && s->ctab[i])
        i++;
    if (i == s->nctab) {
        if (s->nctab == s->ctabcap) {
            size_t ncap = s->ctabcap ? s->ctabcap * 2 : 16;
            mgr_conn **nt = realloc(s->ctab, ncap * sizeof *nt);
            if (!nt)
                return MPROC_ENOMEM;
            s->ctab = nt;
            s->ctabcap = ncap;
        }
        s->nctab++;
    }
    uint32_t r;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (uint32_t)mproc__now_ns();
    s->ctab[i] = cn;
    cn->key = ((uint64_t)(r & 0x7fffffff) << 32) | (uint64_t)(i + 1);
    return 0;
}

static void conn_table_del_locked(mgr_server *s, mgr_conn *cn)
{
    uint32_t i = (uint32_t)cn->key;
    if (i && i <= s->nctab && s->ctab[i - 1] == cn)
        s->ctab[i - 1] = NULL;
}

/* Send the shared request queue and this connection's reply queue over the
 * raw socket (SCM_RIGHTS). */
static int send_queues(mgr_conn *cn)
{
    mproc_buf b = {0};
    int fds[16];
    size_t nfds = 0;
    int rc = 0;
    mproc_queue *qs[2] = {cn->s->shared_req, cn->rep};
    for (int i = 0; i < 2 && !rc; i++) {
        mproc_buf e = {0};
        size_t nf = 0;
        rc = mproc_queue_type.export_obj(qs[i], &e, fds + nfds, &nf, 8);
        if (!rc && !(rc = mproc__put_u32(&b, (uint32_t)e.len)) &&
            !(rc = mproc__put_u32(&b, (uint32_t)nf)))
            rc = mproc_buf_append(&b, e.data, e.len);
        nfds += nf;
        mproc__buf_free(&e);
    }
    if (!rc)
        rc = mproc_send_fds(cn->fd, b.data, b.len, fds, nfds);
    mproc__buf_free(&b);
    return rc;
}

static int hello(mgr_conn *cn, bool *want_shm, uint64_t *session)
{
    void *buf = NULL;
    size_t len;
    int rc = mproc_connection_recv_bytes(cn->c, &buf, &len, 10.0);
    if (rc)
        return rc;
    mproc_value *v = NULL;
    rc = mproc_msgpack_decode(buf, len, NULL, &v);
    free(buf);
    if (rc)
        return rc;
    const char *magic = mproc_value_as_str(mproc_value_at(v, 0), NULL);
    if (mproc_value_type(v) != MPROC_V_LIST || mproc_value_len(v) < 4 || !magic ||
        strcmp(magic, MGR_MAGIC) != 0 || mproc_value_as_int(mproc_value_at(v, 1)) != MGR_PROTO ||
        mproc_value_type(mproc_value_at(v, 2)) != MPROC_V_INT) {
        mproc_value_free(v);
        return MPROC_EPROTO;
    }
    *session = (uint64_t)mproc_value_as_int(mproc_value_at(v, 2));
    *want_shm = mproc_value_as_bool(mproc_value_at(v, 3));
    mproc_value_free(v);
    return 0;
}

/* A socket (TCP) connection: requests and replies on the Connection. */
static void serve_socket(mgr_conn *cn)
{
    mgr_server *s = cn->s;
    for (;;) {
        void *req;
        size_t len;
        int rc = mproc_connection_recv_bytes(cn->c, &req, &len, MGR_SLICE_S);
        if (rc == MPROC_ETIMEDOUT) {
            if (atomic_load(&s->stopping))
                return;
            continue;
        }
        if (rc)
            return;
        mproc_value *v;
        rc = decode_request(cn, req, len, &v);
        free(req);
        if (!rc && v)
            rc = run_request(cn, v, NULL, &cn->out, NULL);
        if (!rc)
            rc = send_reply(cn, &cn->out);
        if (atomic_load(&s->stopping))
            server_exit(s); /* the owner asked, and has its answer */
        if (rc)
            return;
    }
}

/* A shared-memory connection: requests come through the shared queue to the
 * dispatcher, which hands the ones that may block (and user types' calls) to
 * this thread. The thread watches the socket for the client's death. */
static void serve_shm(mgr_conn *cn)
{
    mgr_server *s = cn->s;
    for (;;) {
        struct pollfd p[2] = {{cn->fd, POLLIN, 0}, {cn->evfd, POLLIN, 0}};
        int n = poll(p, 2, 1000);
        if (atomic_load(&s->stopping))
            return;
        if (n < 0 && errno != EINTR)
            return;
        if (p[0].revents) /* EOF, an error, or bytes a client never sends */
            return;
        if (!(p[1].revents & POLLIN))
            continue;
        uint64_t one;
        if (read(cn->evfd, &one, sizeof one) != (ssize_t)sizeof one)
            continue;
        mproc_value *v = atomic_exchange(&cn->handed, NULL);
        if (!v)
            continue;
        int rc = run_request(cn, v, NULL, &cn->out, NULL);
        if (!rc)
            rc = send_reply(cn, &cn->out);
        if (atomic_load(&s->stopping))
            server_exit(s);
        if (rc)
            return;
    }
}

static void *conn_main(void *arg)
{
    mgr_conn *cn = arg;
    mgr_server *s = cn->s;
    bool want_shm = false;
    uint64_t session = 0;
    mproc_deadline hd = mproc_deadline_after(10.0);
    int rc = mproc__auth_deliver(cn->c, s->cfg.key, s->cfg.klen, "sha256", hd);
    if (!rc)
        rc = mproc__auth_answer(cn->c, s->cfg.key, s->cfg.klen, hd);
    if (!rc)
        rc = hello(cn, &want_shm, &session);
    if (!rc && cn->refuse) {
        char m[96];
        snprintf(m, sizeof m, "the server is at its client limit (%zu)", s->cfg.max_clients);
        encode_reply(&cn->out, MPROC_EAGAIN, NULL, m, SIZE_MAX);
        mproc_connection_send_bytes(cn->c, cn->out.data, cn->out.len);
        rc = MPROC_EAGAIN;
    }
    if (!rc && want_shm) {
        mproc_queue_opts qo = {.max_message = s->cfg.max_message};
        rc = mproc_simple_queue_new(&cn->rep, &qo);
        if (!rc && (cn->evfd = eventfd(0, EFD_CLOEXEC)) < 0)
            rc = mproc__errno();
    }
    if (!rc) {
        pthread_mutex_lock(&s->mu);
        cn->sess = session_join_locked(s, session);
        if (!cn->sess)
            rc = MPROC_ENOMEM;
        else if (want_shm && (rc = conn_table_add_locked(s, cn)) == 0)
            cn->refs++; /* the table's */
        pthread_mutex_unlock(&s->mu);
    }
    if (!rc) {
        cn->out.len = 0;
        mproc__mp_array(&cn->out, 4);
        mproc__mp_int(&cn->out, 0);
        mproc__mp_int(&cn->out, getpid());
        mproc__mp_int(&cn->out, (int64_t)cn->key);
        mproc__mp_int(&cn->out, (int64_t)s->cfg.max_message);
        rc = mproc_connection_send_bytes(cn->c, cn->out.data, cn->out.len);
        if (!rc && want_shm)
            rc = send_queues(cn);
    }
    if (!rc)
        want_shm ? serve_shm(cn) : serve_socket(cn);
    atomic_store(&cn->dead, true);
    if (cn->key) {
        pthread_mutex_lock(&s->mu);
        conn_table_del_locked(s, cn);
        pthread_mutex_unlock(&s->mu);
        conn_release(cn); /* the table's */
    }
    conn_release(cn); /* ours */
    return NULL;
}

/* The dispatcher: one thread takes every shared-memory request from the
 * shared queue and runs those that cannot block (server methods, dict,
 * list, Namespace, Value, Array) itself, so a call costs no thread switch
 * on the server; the rest go to the connection's thread. */
static void *dispatcher_main(void *arg)
{
    mgr_server *s = arg;
    mproc_buf out = {0};
    for (;;) {
        void *req;
        size_t len;
        int rc = mproc_queue_get(s->shared_req, &req, &len, MGR_SLICE_S);
        if (atomic_load(&s->stopping))
            break;
        if (rc)
            continue;
        mproc_value *v = NULL;
        rc = mproc_msgpack_decode(req, len, NULL, &v);
        if (rc || !request_ok(v, 5)) { /* no connection to answer: drop it */
            mproc_value_free(v);
            free(req);
            continue;
        }
        uint64_t key = (uint64_t)mproc_value_as_int(mproc_value_at(v, 4));
        uint64_t id = (uint64_t)mproc_value_as_int(mproc_value_at(v, 0));
        pthread_mutex_lock(&s->mu);
        uint32_t i = (uint32_t)key;
        mgr_conn *cn = i && i <= s->nctab ? s->ctab[i - 1] : NULL;
        if (cn && (cn->key != key || atomic_load(&cn->dead)))
            cn = NULL;
        if (cn)
            cn->refs++;
        bool inline_ok = true, try_only = false;
        mgr_obj *o = NULL;
        if (cn && id && (o = lookup_locked(s, id)) != NULL) {
            try_only = o->type->blocking;
            inline_ok = !o->user && (!o->type->blocking || o->type->try_inline);
            if (inline_ok)
                o->refs++; /* for run_request */
            else
                o = NULL;
        }
        pthread_mutex_unlock(&s->mu);
        if (!cn) {
            mproc_value_free(v);
            free(req);
            continue;
        }
        bool would_block = false;
        if (inline_ok) {
            rc = run_request(cn, v, o, &out, try_only ? &would_block : NULL);
            v = NULL;
            if (would_block) { /* run it again where it may wait */
                inline_ok = false;
                if (mproc_msgpack_decode(req, len, NULL, &v) != 0) {
                    free(req);
                    conn_release(cn);
                    continue;
                }
            }
        }
        free(req);
        if (!inline_ok) {
            /* One request at a time per connection; a client that sends
             * another before its answer only loses the older one. */
            mproc_value_free(atomic_exchange(&cn->handed, v));
            uint64_t one = 1;
            if (write(cn->evfd, &one, sizeof one) < 0) {
                /* an eventfd write only fails at its 2^64-2 limit */
            }
            conn_release(cn);
            continue;
        }
        if (!rc)
            send_reply(cn, &out);
        bool stop = atomic_load(&s->stopping);
        conn_release(cn);
        if (stop)
            server_exit(s); /* the owner asked, and has its answer */
    }
    mproc__buf_free(&out);
    return NULL;
}

/* ------------------------------------------------------------ configuration */

/* TCP: notice a peer whose machine vanished (no FIN ever comes) within
 * about half a minute, instead of holding its call or its locks forever. */
void mgr__keepalive(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0 ||
        (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
        return;
    int on = 1, idle = 10, intvl = 5, cnt = 3;
    unsigned tmo = 30000;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &tmo, sizeof tmo);
}

int mgr__config_encode(const mgr_config *c, mproc_buf *b)
{
    int rc = mproc__put_str(b, c->address);
    if (!rc)
        rc = mproc__put_blob(b, c->key, c->klen);
    if (!rc)
        rc = mproc__put_u64(b, c->max_message);
    if (!rc)
        rc = mproc__put_u64(b, c->max_clients);
    if (!rc)
        rc = mproc__put_u64(b, c->owner_token);
    if (!rc)
        rc = mproc__put_u32(b, (uint32_t)c->ntypes);
    for (size_t i = 0; i < c->ntypes && !rc; i++)
        rc = mproc__modref_put(b, c->types[i]);
    return rc;
}

int mgr__config_decode(const void *p, size_t n, mgr_config *c)
{
    mproc_reader r = {p, (const uint8_t *)p + n};
    const uint8_t *key;
    uint64_t mm, mc;
    uint32_t nt;
    memset(c, 0, sizeof *c);
    if (mproc__get_str(&r, &c->address) || mproc__get_blob(&r, &key, &c->klen) ||
        mproc__get_u64(&r, &mm) || mproc__get_u64(&r, &mc) || mproc__get_u64(&r, &c->owner_token) ||
        mproc__get_u32(&r, &nt) || nt > MGR_MAX_TYPES)
        return MPROC_EPROTO;
    if (!(c->key = malloc(c->klen + 1)))
        return MPROC_ENOMEM;
    memcpy(c->key, key, c->klen);
    c->max_message = (size_t)mm;
    c->max_clients = (size_t)mc;
    c->ntypes = nt;
    for (uint32_t i = 0; i < nt; i++) {
        void *t;
        int rc = mproc__modref_get(&r, &t);
        if (rc)
            return rc;
        c->types[i] = t;
    }
    return 0;
}

/* ------------------------------------------------------------ the process */

static void report(mproc_connection *ready, int rc, const char *text)
{
    mproc_buf b = {0};
    mproc__mp_array(&b, 2);
    mproc__mp_int(&b, rc);
    mproc__mp_str(&b, text, strlen(text));
    mproc_connection_send_bytes(ready, b.data, b.len);
    mproc__buf_free(&b);
}

int mgr__server_main(mproc_args *a)
{
    signal(SIGPIPE, SIG_IGN);
    size_t cfglen;
    const void *cfgp = mproc_args_bytes(a, 0, &cfglen);
    mproc_connection *ready = mproc_args_object(a, 1, &mproc_connection_type);
    static mgr_server srv;
    mgr_server *s = &srv;
    if (!cfgp || !ready)
        return 2;
    int rc = mgr__config_decode(cfgp, cfglen, &s->cfg);
    if (rc) {
        report(ready, rc, "bad server configuration");
        return 2;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->sync_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->sync_cv, &ca);
    pthread_condattr_destroy(&ca);

    mproc_listener *l;
    mproc_listener_opts lo = {.backlog = 128, .conn = {.max_message = s->cfg.max_message}};
    rc = mproc_listener_new(&l, s->cfg.address, &lo);
    if (rc) {
        char m[300];
        snprintf(m, sizeof m, "listen on %s: %s", s->cfg.address, mproc_errmsg());
        report(ready, rc, m);
        return 2;
    }
    s->listener = l;
    mproc_queue_opts qo = {.capacity = (size_t)4 << 20, .max_message = s->cfg.max_message};
    pthread_t disp;
    if ((rc = mproc_simple_queue_new(&s->shared_req, &qo)) != 0 ||
        (rc = -pthread_create(&disp, NULL, dispatcher_main, s)) != 0) {
        report(ready, rc, "cannot start the dispatcher");
        server_exit(s);
    }
    mproc__queue_set_wait(s->shared_req, MGR_DISPATCH_POLLS, MGR_DISPATCH_GAP, 0);
    report(ready, 0, mproc_listener_address(l));
    int owner = mproc__parent_pidfd();
    int64_t last_sweep = mproc__now_ns();
    for (;;) {
        struct pollfd p[2] = {{mproc_listener_fileno(l), POLLIN, 0}, {owner, POLLIN, 0}};
        if (poll(p, owner >= 0 ? 2 : 1, 1000) < 0 && errno != EINTR)
            break;
        if (owner >= 0 ? p[1].revents != 0 : !mproc__parent_alive())
            break; /* the owner died: so does its server */
        if (mproc__now_ns() - last_sweep > 1000000000) {
            sweep_pending(s);
            last_sweep = mproc__now_ns();
        }
        if (!(p[0].revents & POLLIN))
            continue;
        mproc_connection *c;
        int arc = mproc_listener_accept(l, &c, 0);
        if (arc == MPROC_EMFILE || arc == -ENFILE || arc == MPROC_ENOMEM || arc == -ENOBUFS) {
            struct timespec pause = {0, 10 * 1000 * 1000}; /* out of fds: do not spin */
            nanosleep(&pause, NULL);
        }
        if (arc)
            continue;
        mgr__keepalive(mproc_connection_fileno(c));
        /* Up to 16 connections over the limit get a thread that tells them
         * why they are refused; beyond that they are just closed. */
        pthread_mutex_lock(&s->mu);
        bool refuse = (size_t)s->nconns >= s->cfg.max_clients;
        bool drop = (size_t)s->nconns >= s->cfg.max_clients + 16;
        if (!drop)
            s->nconns++;
        pthread_mutex_unlock(&s->mu);
        mgr_conn *cn = drop ? NULL : calloc(1, sizeof *cn);
        if (!cn) {
            mproc_connection_close(c);
            if (!drop) {
                pthread_mutex_lock(&s->mu);
                s->nconns--;
                pthread_mutex_unlock(&s->mu);
            }
            continue;
        }
        cn->refuse = refuse;
        cn->refs = 1;
        cn->evfd = -1;
        cn->s = s;
        cn->c = c;
        cn->fd = mproc_connection_fileno(c);
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&at, 1 << 20);
        if (pthread_create(&th, &at, conn_main, cn) != 0) {
            mproc_connection_close(c);
            free(cn);
            pthread_mutex_lock(&s->mu);
            s->nconns--;
            pthread_mutex_unlock(&s->mu);
        }
        pthread_attr_destroy(&at);
    }
    server_exit(s);
}
