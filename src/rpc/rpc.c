/* rpc.c — RPC handler, threaded server and proxies over Connections, with
 * the msgpack-rpc and Python (seed 001) wires. The ZeroMQ transport lives
 * in zmq.c; the server and proxy functions hand over to it when `z` is set.
 *
 * fork: a server's threads and a proxy's connection belong to the process
 * that made them; nothing here is touched by fork handlers, and a fork
 * child must not use its parent's servers or proxies (it can make its own).
 * A handler's rwlock may be held by a parent thread at fork: a child that
 * calls it then may deadlock, so children get handlers of their own. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../codec/codec_int.h"
#include "../connection/conn_int.h"
#include "internal.h"
#include "mproc/connection.h"
#include "mproc/rpc.h"
#include "rpc_int.h"

#define RPC_NAME_MAX 255
#define RPC_SLICE_S 0.1
/* A side waiting for the next message polls this long before it sleeps:
 * measured on loopback, a call costs ~55 us with a sleeping wait on each
 * side and ~9 us with this spin. Idle connections sleep after it. */
#define RPC_SPIN_NS 50000
#define RPC_DEFAULT_MAX_CONNECTIONS 256

/* ------------------------------------------------------------ errors */

static __thread bool tl_err_set;
static __thread char tl_err_type[64];
static __thread char tl_err_msg[256];

int mproc_rpc_error(const char *type, const char *fmt, ...)
{
    snprintf(tl_err_type, sizeof tl_err_type, "%s", type && *type ? type : "Exception");
    tl_err_msg[0] = 0;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(tl_err_msg, sizeof tl_err_msg, fmt, ap);
        va_end(ap);
    }
    tl_err_set = true;
    return MPROC_EREMOTE;
}

/* ------------------------------------------------------------ handler */

typedef struct fn_ent {
    char *name;
    mproc_rpc_fn fn;
    void *ud;
} fn_ent;

struct mproc_rpc_handler {
    pthread_rwlock_t lk;
    fn_ent *v; /* sorted by name */
    size_t n, cap;
};

int mproc_rpc_handler_new(mproc_rpc_handler **out)
{
    if (!out)
        return MPROC_EINVAL;
    mproc_rpc_handler *h = calloc(1, sizeof *h);
    if (!h)
        return MPROC_ENOMEM;
    pthread_rwlock_init(&h->lk, NULL);
    *out = h;
    return 0;
}

/* Index of `name`, or where it would go (*found false). Lock held. */
static size_t find_fn(const mproc_rpc_handler *h, const char *name, bool *found)
{
    size_t lo = 0, hi = h->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(h->v[mid].name, name);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

int mproc_rpc_handler_register(mproc_rpc_handler *h, const char *name, mproc_rpc_fn fn, void *ud)
{
    if (!h || !name || !fn || !*name || strlen(name) > RPC_NAME_MAX)
        return mproc__fail(MPROC_EINVAL, "rpc: a function needs a name of 1 to %d bytes",
                           RPC_NAME_MAX);
    if (strncmp(name, "mproc.", 6) == 0)
        return mproc__fail(MPROC_EINVAL, "rpc: names starting \"mproc.\" are reserved ('%s')",
                           name);
    char *copy = strdup(name);
    if (!copy)
        return MPROC_ENOMEM;
    pthread_rwlock_wrlock(&h->lk);
    bool found;
    size_t i = find_fn(h, name, &found);
    int rc = 0;
    if (found) {
        rc = mproc__fail(MPROC_EEXIST, "rpc: '%s' is registered already", name);
    } else if (h->n == h->cap) {
        size_t ncap = h->cap ? h->cap * 2 : 16;
        fn_ent *nv = realloc(h->v, ncap * sizeof *nv);
        if (!nv)
            rc = MPROC_ENOMEM;
        else
            h->v = nv, h->cap = ncap;
    }
    if (!rc) {
        memmove(h->v + i + 1, h->v + i, (h->n - i) * sizeof *h->v);
        h->v[i] = (fn_ent){copy, fn, ud};
        h->n++;
        copy = NULL;
    }
    pthread_rwlock_unlock(&h->lk);
    free(copy);
    return rc;
}

int mproc_rpc_handler_unregister(mproc_rpc_handler *h, const char *name)
{
    if (!h || !name)
        return MPROC_EINVAL;
    pthread_rwlock_wrlock(&h->lk);
    bool found;
    size_t i = find_fn(h, name, &found);
    if (found) {
        free(h->v[i].name);
        memmove(h->v + i, h->v + i + 1, (h->n - i - 1) * sizeof *h->v);
        h->n--;
    }
    pthread_rwlock_unlock(&h->lk);
    return found ? 0 : mproc__fail(MPROC_ENOENT, "rpc: no function '%s'", name);
}

int mproc_rpc_handler_names(const mproc_rpc_handler *h, mproc_value **out)
{
    if (!h || !out)
        return MPROC_EINVAL;
    mproc_value *l = mproc_value_list();
    if (!l)
        return MPROC_ENOMEM;
    int rc = 0;
    pthread_rwlock_rdlock((pthread_rwlock_t *)&h->lk);
    for (size_t i = 0; i < h->n && !rc; i++) {
        mproc_value *s = mproc_value_str(h->v[i].name);
        rc = s ? mproc_value_append(l, s) : MPROC_ENOMEM;
    }
    pthread_rwlock_unlock((pthread_rwlock_t *)&h->lk);
    if (rc) {
        mproc_value_free(l);
        return rc;
    }
    *out = l;
    return 0;
}

int mproc_rpc_handler_call(mproc_rpc_handler *h, const char *name, mproc_value *const *args,
                           size_t nargs, const mproc_value *kwargs, mproc_value **result,
                           const char **exc_type)
{
    static __thread char type_out[64];
    if (result)
        *result = NULL;
    if (exc_type)
        *exc_type = "";
    if (!h || !name || (nargs && !args) || !result)
        return MPROC_EINVAL;
    pthread_rwlock_rdlock(&h->lk);
    bool found;
    size_t i = find_fn(h, name, &found);
    mproc_rpc_fn fn = found ? h->v[i].fn : NULL;
    void *ud = found ? h->v[i].ud : NULL;
    pthread_rwlock_unlock(&h->lk);
    if (!fn) {
        if (exc_type)
            *exc_type = "AttributeError";
        return mproc__fail(MPROC_ENOENT, "no function '%.200s'", name);
    }
    tl_err_set = false;
    mproc_value *r = NULL;
    int rc = fn(args, nargs, kwargs, &r, ud);
    if (rc) {
        mproc_value_free(r);
        if (rc > 0)
            rc = MPROC_EREMOTE;
        snprintf(type_out, sizeof type_out, "%s", tl_err_set ? tl_err_type : "Exception");
        if (exc_type)
            *exc_type = type_out;
        if (tl_err_set)
            mproc__fail(rc, "%s", tl_err_msg);
        else
            mproc__fail(rc, "%s failed: %s", name, mproc_strerror(rc));
        tl_err_set = false;
        return rc;
    }
    *result = r ? r : mproc_value_nil();
    return *result ? 0 : MPROC_ENOMEM;
}

void mproc_rpc_handler_free(mproc_rpc_handler *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n; i++)
        free(h->v[i].name);
    free(h->v);
    pthread_rwlock_destroy(&h->lk);
    free(h);
}

/* ------------------------------------------------------------ wires */

/* A decoded request. */
typedef struct rpc_req {
    int kind;          /* 0 request, 2 notification */
    uint64_t msgid;
    char *method;
    mproc_value *args; /* list */
    mproc_value *kwargs; /* map or NULL */
    mproc_value *root;
    char *name_heap;     /* method, when read in place and longer than name_buf */
    char name_buf[64];
} rpc_req;

static void req_free(rpc_req *r)
{
    mproc_value_free(r->root);
    free(r->name_heap);
    memset(r, 0, sizeof *r);
}

/* msgpack: an unsigned int at p[0..n) (positive fixint, uint 8/16/32/64);
 * its size in bytes, 0 when it is not one. */
static size_t mp_uint(const uint8_t *p, size_t n, uint64_t *v)
{
    if (n < 1)
        return 0;
    if (p[0] < 0x80) {
        *v = p[0];
        return 1;
    }
    size_t w = p[0] == 0xcc ? 1 : p[0] == 0xcd ? 2 : p[0] == 0xce ? 4 : p[0] == 0xcf ? 8 : 0;
    if (!w || n < 1 + w)
        return 0;
    *v = 0;
    for (size_t i = 0; i < w; i++)
        *v = *v << 8 | p[1 + i];
    return 1 + w;
}

/* A msgpack-rpc request [0, msgid, method, params] with its header read in
 * place and only the params decoded (a tree of the whole costs four more
 * nodes per call). 1: done (0 or an error in *rc); 0: another shape (a
 * notification, a wide msgid): the caller decodes the whole. */
static int mp_request_fast(const uint8_t *p, size_t n, rpc_req *r, int *rc)
{
    uint64_t id;
    size_t k = n >= 2 && p[0] == 0x94 && p[1] == 0x00 ? mp_uint(p + 2, n - 2, &id) : 0;
    if (!k || id > UINT32_MAX)
        return 0;
    size_t i = 2 + k, ml, w;
    if (i >= n)
        return 0;
    if (p[i] >= 0xa0 && p[i] <= 0xbf) {
        ml = p[i] & 0x1f;
        w = 0;
    } else if (p[i] >= 0xd9 && p[i] <= 0xdb) {
        w = (size_t)1 << (p[i] - 0xd9);
        if (n - i - 1 < w)
            return 0;
        ml = 0;
        for (size_t j = 0; j < w; j++)
            ml = ml << 8 | p[i + 1 + j];
    } else {
        return 0;
    }
    i += 1 + w;
    if (ml > n - i)
        return 0;
    const char *m = (const char *)p + i;
    if (!mproc__utf8_valid((const uint8_t *)m, ml))
        return 0; /* the whole decode says what is wrong */
    i += ml;
    /* the whole message's limits, less what its header took */
    mproc_decode_limits lim = {MPROC__DEFAULT_MAX_DEPTH - 1, MPROC__DEFAULT_MAX_ITEMS - 4,
                               MPROC__DEFAULT_MAX_BYTES - ml};
    if (mproc_msgpack_decode(p + i, n - i, &lim, &r->root) != 0)
        return 0; /* the whole decode fails too, and says why */
    /* from here the checks of the whole decode, in its order */
    r->kind = 0;
    r->msgid = id;
    if (mproc_value_type(r->root) != MPROC_V_LIST) {
        *rc = mproc__fail(MPROC_EPROTO, "malformed request: method must be a str, params an array");
        return 1;
    }
    if (memchr(m, 0, ml)) {
        *rc = mproc__fail(MPROC_EPROTO, "malformed request: a NUL in the method name");
        return 1;
    }
    char *name = r->name_buf;
    if (ml >= sizeof r->name_buf && !(name = r->name_heap = malloc(ml + 1))) {
        req_free(r); /* no memory: the whole decode says so (it needs more) */
        r->kind = -1;
        return 0;
    }
    memcpy(name, m, ml);
    name[ml] = 0;
    r->method = name;
    r->args = r->root;
    *rc = 0;
    return 1;
}

/* Python wire: a frame is pickle(bytes(pickle(x))) — what the seed's
 * conn.send(pickle.dumps(x)) writes. Both layers are written in one pass:
 * the outer BINBYTES8 length is patched once the inner pickle is out. */
#define PY_FRAME_HEAD 13 /* PROTO 4, BINBYTES8 + 8-byte length, inner PROTO 4 */

static int py_frame_begin(mproc_buf *b, size_t *at)
{
    static const uint8_t head[PY_FRAME_HEAD] = {0x80, 4, 0x8e, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 4};
    *at = b->len;
    return mproc_buf_append(b, head, sizeof head);
}

static int py_frame_end(mproc_buf *b, size_t at)
{
    static const uint8_t stop = '.';
    if (mproc_buf_append(b, &stop, 1))
        return MPROC_ENOMEM;
    uint64_t n = b->len - at - 11; /* the inner pickle, from its PROTO to its STOP */
    for (int i = 0; i < 8; i++)
        b->data[at + 3 + (size_t)i] = (uint8_t)(n >> (8 * i));
    return mproc_buf_append(b, &stop, 1);
}

/* The inner pickle of a frame shaped as Python writes it (PROTO, FRAME,
 * a bytes op, MEMOIZE, STOP; FRAME and MEMOIZE optional), found without
 * decoding the outer layer. NULL when the frame has another shape: the
 * caller decodes it in full. */
static const uint8_t *py_inner(const uint8_t *p, size_t len, size_t *n)
{
    size_t i = 0;
    if (len >= 2 && p[0] == 0x80) {
        if (p[1] > 5)
            return NULL; /* a protocol the decoder refuses */
        i = 2;
    }
    if (len - i >= 9 && p[i] == 0x95) {
        uint64_t f = 0;
        for (size_t j = 0; j < 8; j++)
            f |= (uint64_t)p[i + 1 + j] << (8 * j);
        i += 9;
        if (f > len - i)
            return NULL; /* a frame longer than the data: the decoder says so */
    }
    if (i >= len)
        return NULL;
    size_t w = p[i] == 'C' ? 1 : p[i] == 'B' ? 4 : p[i] == 0x8e ? 8 : 0;
    if (!w || len - i - 1 < w)
        return NULL;
    uint64_t k = 0;
    for (size_t j = 0; j < w; j++)
        k |= (uint64_t)p[i + 1 + j] << (8 * j);
    i += 1 + w;
    if (k > len - i)
        return NULL;
    size_t end = i + (size_t)k;
    size_t rest = len - end;
    if (!(rest == 1 && p[end] == '.') && !(rest == 2 && p[end] == 0x94 && p[end + 1] == '.'))
        return NULL;
    *n = (size_t)k;
    return p + i;
}

static int py_unwrap(const void *data, size_t len, mproc_value **out)
{
    size_t n;
    const uint8_t *inner = py_inner(data, len, &n);
    if (inner)
        return mproc_pickle_decode(inner, n, NULL, out);
    mproc_value *outer = NULL;
    int rc = mproc_pickle_decode(data, len, NULL, &outer);
    if (rc)
        return rc;
    const void *b = mproc_value_as_bytes(outer, &n);
    if (mproc_value_type(outer) != MPROC_V_BYTES) {
        /* a client that sends the tuple itself (conn.send((name, args, kwargs))) */
        *out = outer;
        return 0;
    }
    rc = mproc_pickle_decode(b, n, NULL, out);
    mproc_value_free(outer);
    return rc;
}

/* A Python-wire frame holding `v` (None when NULL). */
static int py_wrap(const mproc_value *v, mproc_buf *out)
{
    size_t at, mark = out->len;
    int rc = py_frame_begin(out, &at);
    if (!rc)
        rc = v ? mproc__pickle_body(out, v) : mproc_buf_append(out, "N", 1);
    if (!rc)
        rc = py_frame_end(out, at);
    if (rc)
        out->len = mark;
    return rc;
}

/* Decode one request frame. MPROC_EPROTO (message in errmsg) when it is not
 * a request; r->kind/msgid are set when they could be read, so an error
 * answer can still go back. */
static int decode_req(mproc_rpc_wire wire, const void *data, size_t len, rpc_req *r)
{
    memset(r, 0, sizeof *r);
    r->kind = -1;
    int rc;
    if (wire == MPROC_RPC_MSGPACK && mp_request_fast(data, len, r, &rc))
        return rc;
    rc = wire == MPROC_RPC_PYTHON ? py_unwrap(data, len, &r->root)
                                      : mproc_msgpack_decode(data, len, NULL, &r->root);
    if (rc)
        return mproc__fail(MPROC_EPROTO, "malformed request: %s", mproc_errmsg());
    mproc_value *v = r->root;
    if (wire == MPROC_RPC_PYTHON) {
        r->kind = 0;
        mproc_value *m = mproc_value_at(v, 0), *a = mproc_value_at(v, 1),
                    *k = mproc_value_at(v, 2);
        if (mproc_value_type(v) != MPROC_V_LIST || mproc_value_len(v) != 3 ||
            mproc_value_type(m) != MPROC_V_STR || mproc_value_type(a) != MPROC_V_LIST ||
            (mproc_value_type(k) != MPROC_V_MAP && mproc_value_type(k) != MPROC_V_NIL))
            return mproc__fail(MPROC_EPROTO, "malformed request: want (name, args, kwargs)");
        size_t ml;
        r->method = (char *)mproc_value_as_str(m, &ml);
        if (strlen(r->method) != ml)
            return mproc__fail(MPROC_EPROTO, "malformed request: a NUL in the function name");
        r->args = a;
        r->kwargs = mproc_value_type(k) == MPROC_V_MAP && mproc_value_len(k) ? k : NULL;
        return 0;
    }
    mproc_value *t = mproc_value_at(v, 0);
    if (mproc_value_type(v) != MPROC_V_LIST || mproc_value_type(t) != MPROC_V_INT)
        return mproc__fail(MPROC_EPROTO, "malformed request: not a msgpack-rpc message");
    int64_t kind = mproc_value_as_int(t);
    size_t base;
    if (kind == 0 && mproc_value_len(v) == 4) {
        mproc_value *id = mproc_value_at(v, 1);
        if (mproc_value_type(id) != MPROC_V_INT || mproc_value_as_int(id) < 0 ||
            mproc_value_as_int(id) > UINT32_MAX)
            return mproc__fail(MPROC_EPROTO, "malformed request: bad msgid");
        r->kind = 0;
        r->msgid = (uint64_t)mproc_value_as_int(id);
        base = 2;
    } else if (kind == 2 && mproc_value_len(v) == 3) {
        r->kind = 2;
        base = 1;
    } else {
        return mproc__fail(MPROC_EPROTO, "malformed request: want [0, msgid, method, params] "
                                         "or [2, method, params]");
    }
    mproc_value *m = mproc_value_at(v, base), *a = mproc_value_at(v, base + 1);
    if (mproc_value_type(m) != MPROC_V_STR || mproc_value_type(a) != MPROC_V_LIST)
        return mproc__fail(MPROC_EPROTO, "malformed request: method must be a str, params an array");
    size_t ml;
    r->method = (char *)mproc_value_as_str(m, &ml);
    if (strlen(r->method) != ml)
        return mproc__fail(MPROC_EPROTO, "malformed request: a NUL in the method name");
    r->args = a;
    return 0;
}

/* Encode an answer: result (rc == 0) or the exception (type, msg). */
/* Python 3.11's builtin exception and warning names. */
static bool py_builtin_exception(const char *t)
{
    static const char *const names[] = {
        "ArithmeticError", "AssertionError", "AttributeError", "BaseException",
        "BaseExceptionGroup", "BlockingIOError", "BrokenPipeError", "BufferError",
        "BytesWarning", "ChildProcessError", "ConnectionAbortedError", "ConnectionError",
        "ConnectionRefusedError", "ConnectionResetError", "DeprecationWarning", "EOFError",
        "EncodingWarning", "EnvironmentError", "Exception", "ExceptionGroup", "FileExistsError",
        "FileNotFoundError", "FloatingPointError", "FutureWarning", "GeneratorExit", "IOError",
        "ImportError", "ImportWarning", "IndentationError", "IndexError", "InterruptedError",
        "IsADirectoryError", "KeyError", "KeyboardInterrupt", "LookupError", "MemoryError",
        "ModuleNotFoundError", "NameError", "NotADirectoryError", "NotImplementedError",
        "OSError", "OverflowError", "PendingDeprecationWarning", "PermissionError",
        "ProcessLookupError", "RecursionError", "ReferenceError", "ResourceWarning",
        "RuntimeError", "RuntimeWarning", "StopAsyncIteration", "StopIteration", "SyntaxError",
        "SyntaxWarning", "SystemError", "SystemExit", "TabError", "TimeoutError", "TypeError",
        "UnboundLocalError", "UnicodeDecodeError", "UnicodeEncodeError", "UnicodeError",
        "UnicodeTranslateError", "UnicodeWarning", "UserWarning", "ValueError", "Warning",
        "ZeroDivisionError"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strcmp(t, names[i]) == 0)
            return true;
    return false;
}

/* A UTF-8 copy of `s` into out[0..cap) (NUL-terminated). Messages are cut
 * to fixed buffers, which may leave a partial character at the end: cut
 * it. A string that is not UTF-8 anyway gets '?' for its non-ASCII bytes.
 * Both wires need valid text (msgpack str, Python str). */
static const char *utf8_text(const char *s, char *out, size_t cap)
{
    size_t n = strnlen(s, cap - 1);
    memcpy(out, s, n);
    out[n] = 0;
    if (mproc__utf8_valid((const uint8_t *)out, n))
        return out;
    size_t k = n;
    for (int i = 0; i < 3 && k > 0 && ((uint8_t)out[k - 1] & 0xc0) == 0x80; i++)
        k--;
    if (k > 0 && (uint8_t)out[k - 1] >= 0xc0)
        k--; /* the lead byte of the cut character */
    if (mproc__utf8_valid((const uint8_t *)out, k)) {
        out[k] = 0;
        return out;
    }
    for (size_t i = 0; i < n; i++)
        if ((uint8_t)out[i] >= 0x80)
            out[i] = '?';
    return out;
}

static int encode_answer(mproc_rpc_wire wire, uint64_t msgid, int rc, const mproc_value *result,
                         const char *type, const char *msg, mproc_buf *out)
{
    out->len = 0;
    char tbuf[64], mbuf[400];
    if (rc) {
        type = utf8_text(type, tbuf, sizeof tbuf);
        msg = utf8_text(msg, mbuf, sizeof mbuf);
    }
    if (wire == MPROC_RPC_PYTHON) {
        /* Only Python's own exception types can be unpickled as builtins.X */
        mproc_value *e = NULL;
        if (rc && !py_builtin_exception(type)) {
            char m[400];
            snprintf(m, sizeof m, "%s: %s", type, msg);
            e = mproc_value_error("Exception", m);
        } else if (rc) {
            e = mproc_value_error(type, msg);
        }
        if (rc && !e)
            return MPROC_ENOMEM;
        int r = py_wrap(rc ? e : result, out);
        mproc_value_free(e);
        if (r && rc) {
            /* not a builtin exception Python can unpickle: Exception("Type: msg") */
            char m[400];
            snprintf(m, sizeof m, "%s: %s", type, msg);
            out->len = 0;
            e = mproc_value_error("Exception", m);
            r = e ? py_wrap(e, out) : MPROC_ENOMEM;
            mproc_value_free(e);
        }
        return r;
    }
    /* [1, msgid, error, result], framed by hand around the result */
    int r = mproc__mp_array(out, 4);
    if (!r)
        r = mproc__mp_int(out, 1);
    if (!r)
        r = mproc__mp_int(out, (int64_t)msgid);
    if (!r && rc) {
        r = mproc__mp_array(out, 2);
        if (!r)
            r = mproc__mp_str(out, type, strlen(type));
        if (!r)
            r = mproc__mp_str(out, msg, strlen(msg));
        if (!r)
            r = mproc__mp_nil(out);
    } else if (!r) {
        r = mproc__mp_nil(out);
        if (!r)
            r = result ? mproc_msgpack_encode(result, out) : mproc__mp_nil(out);
    }
    return r;
}

/* ------------------------------------------------------------ waiting */

/* Wait up to `spin_ns` for `c` to become readable by polling it (no sleep),
 * before a blocking receive: an answer on loopback comes back within a few
 * microseconds, and waking a sleeping thread costs tens of them. */
static void spin_readable(mproc_connection *c, int64_t spin_ns)
{
    int64_t stop = mproc__now_ns() + spin_ns;
    while (mproc_connection_poll(c, 0) == 0 && mproc__now_ns() < stop)
        ;
}

static void spin_fd(int fd, int64_t spin_ns)
{
    int64_t stop = mproc__now_ns() + spin_ns;
    struct pollfd p = {fd, POLLIN, 0};
    while (poll(&p, 1, 0) == 0 && mproc__now_ns() < stop)
        ;
}

/* ------------------------------------------------------------ streams */

static int check_transport(mproc_rpc_wire wire, mproc_rpc_transport t, const void *key,
                           size_t klen)
{
    if (klen && !key)
        return mproc__fail(MPROC_EINVAL, "rpc: authkey_len without authkey");
    if (t == MPROC_RPC_ZMQ) { /* both wires; see zmq.c */
        if (!mproc_rpc_have_zmq())
            return mproc__fail(MPROC_ENOSYS, "rpc: mproc was built without ZeroMQ (libzmq)");
        if (key)
            return mproc__fail(MPROC_EINVAL, "rpc: the ZeroMQ transport has no authkey "
                                             "(CURVE is not wired)");
        return 0;
    }
    if (t != MPROC_RPC_CONNECTION && t != MPROC_RPC_STREAM)
        return mproc__fail(MPROC_EINVAL, "rpc: unknown transport %d", (int)t);
    if (t == MPROC_RPC_STREAM && wire != MPROC_RPC_MSGPACK)
        return mproc__fail(MPROC_EINVAL, "rpc: the stream transport carries msgpack-rpc only");
    if (t == MPROC_RPC_STREAM && key)
        return mproc__fail(MPROC_EINVAL, "rpc: the stream transport has no authkey handshake");
    return 0;
}

/* A msgpack-rpc byte stream: bytes read so far, where the next object
 * starts, and how far the scan for its end has come (resumable, so a slow
 * sender costs linear time: every byte is looked at once). */
typedef struct rpc_stream {
    uint8_t *buf;
    size_t len, cap, off;
    size_t scan;   /* bytes of the object at off scanned so far */
    uint64_t owed; /* objects still to come in it */
    uint64_t skip; /* payload bytes still to pass over */
    bool started;
} rpc_stream;

static uint64_t be_n(const uint8_t *p, size_t n)
{
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++)
        x = x << 8 | p[i];
    return x;
}

/* Scan on for the end of the object at st->off, allocating nothing.
 * 1: complete, st->scan bytes; 0: more bytes needed; MPROC_EPROTO (a byte
 * that starts no MessagePack object), MPROC_EMSGSIZE (it would exceed max). */
static int scan_object(rpc_stream *st, size_t max)
{
    const uint8_t *b = st->buf + st->off;
    size_t have = st->len - st->off;
    if (!st->started) {
        st->started = true;
        st->owed = 1;
    }
    for (;;) {
        if (st->skip) {
            uint64_t k = have - st->scan < st->skip ? have - st->scan : st->skip;
            st->scan += (size_t)k;
            st->skip -= k;
            if (st->skip)
                return 0;
        }
        if (!st->owed)
            return 1;
        if (st->scan >= have)
            return 0;
        const uint8_t *h = b + st->scan;
        uint8_t c = h[0];
        size_t hl = 1, lb = 0; /* header length; bytes of its length field */
        uint64_t len = 0, kids = 0, mul = 1;
        if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
        } else if (c <= 0x8f) {
            kids = 2u * (c & 0x0f);
        } else if (c <= 0x9f) {
            kids = c & 0x0f;
        } else if (c <= 0xbf) {
            len = c & 0x1f;
        } else if (c == 0xc4 || c == 0xd9) {
            hl = 2, lb = 1;
        } else if (c == 0xc5 || c == 0xda) {
            hl = 3, lb = 2;
        } else if (c == 0xc6 || c == 0xdb) {
            hl = 5, lb = 4;
        } else if (c >= 0xc7 && c <= 0xc9) { /* ext 8/16/32: length, then the type byte */
            lb = (size_t)1 << (c - 0xc7);
            hl = 1 + lb + 1;
        } else if (c == 0xca || c == 0xce || c == 0xd2) {
            hl = 5;
        } else if (c == 0xcb || c == 0xcf || c == 0xd3) {
            hl = 9;
        } else if (c == 0xcc || c == 0xd0) {
            hl = 2;
        } else if (c == 0xcd || c == 0xd1) {
            hl = 3;
        } else if (c >= 0xd4 && c <= 0xd8) { /* fixext 1..16: type byte + payload */
            hl = 2;
            len = (uint64_t)1 << (c - 0xd4);
        } else if (c == 0xdc || c == 0xde) {
            hl = 3, lb = 2, mul = c == 0xde ? 2 : 1;
        } else if (c == 0xdd || c == 0xdf) {
            hl = 5, lb = 4, mul = c == 0xdf ? 2 : 1;
        } else {
            return mproc__fail(MPROC_EPROTO, "rpc: 0x%02x starts no MessagePack object", c);
        }
        if (have - st->scan < hl)
            return 0;
        if (lb) {
            uint64_t x = be_n(h + 1, lb);
            if (c == 0xdc || c == 0xdd || c == 0xde || c == 0xdf)
                kids = x * mul;
            else
                len = x;
        }
        st->scan += hl;
        st->owed = st->owed - 1 + kids;
        st->skip = len;
        /* every owed object takes at least a byte */
        if (st->owed > max || st->skip > max || st->scan + st->skip + st->owed > max)
            return mproc__fail(MPROC_EMSGSIZE, "rpc: a message over %zu bytes", max);
    }
}

/* The next object of the stream as bytes (*p, *n point into the buffer,
 * valid until the next call), reading more as needed until `d`.
 * 0, MPROC_ETIMEDOUT, MPROC_ECLOSED (EOF), MPROC_EMSGSIZE (an object over
 * `max` bytes), MPROC_EPROTO (not MessagePack), -errno. */
static int stream_next(rpc_stream *st, int fd, size_t max, mproc_deadline d, const uint8_t **p,
                       size_t *n)
{
    for (;;) {
        if (st->len > st->off) {
            int rc = scan_object(st, max);
            if (rc < 0)
                return rc;
            if (rc == 1) {
                *p = st->buf + st->off;
                *n = st->scan;
                st->off += st->scan;
                st->scan = 0;
                st->owed = st->skip = 0;
                st->started = false;
                return 0;
            }
        }
        if (st->off) { /* keep only the unread part */
            memmove(st->buf, st->buf + st->off, st->len - st->off);
            st->len -= st->off;
            st->off = 0;
        }
        if (st->cap - st->len < 65536) {
            size_t ncap = st->cap ? st->cap * 2 : 131072;
            uint8_t *nb = realloc(st->buf, ncap);
            if (!nb)
                return MPROC_ENOMEM;
            st->buf = nb;
            st->cap = ncap;
        }
        spin_fd(fd, RPC_SPIN_NS);
        int rc = mproc_wait_fd(fd, POLLIN, mproc_deadline_remaining(d));
        if (rc)
            return rc;
        ssize_t got = read(fd, st->buf + st->len, st->cap - st->len);
        if (got == 0)
            return MPROC_ECLOSED;
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return errno == ECONNRESET ? MPROC_ECLOSED : mproc__errno();
        }
        st->len += (size_t)got;
    }
}

/* ------------------------------------------------------------ server */

typedef struct srv_conn {
    struct mproc_rpc_server *s;
    mproc_connection *c;
    rpc_shm *shm; /* the client moved to shared memory */
    int fd;
    atomic_bool busy; /* inside a call */
    int64_t active_ns; /* when the last request was answered (idle_timeout) */
    uint32_t out_run;  /* rpc__trim_due's count for the answer buffer */
    rpc_stream st;
    struct srv_conn *prev, *next;
} srv_conn;

struct mproc_rpc_server {
    mproc_rpc_handler *h;
    mproc_listener *l;
    mproc_rpc_server_opts o;
    void *key;
    pthread_t accept_thr;
    bool started;
    atomic_bool stopping;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a connection thread left */
    srv_conn *conns;
    size_t nconns;
    char *address;     /* kept after stop closes the listener */
    pthread_mutex_t stop_mu; /* one stop at a time (stop and free may race) */
    rpc_zmq_server *z; /* MPROC_RPC_ZMQ: everything is there, the rest unused */
    atomic_long nshm;  /* connections moved to shared memory */
    long ncpu;         /* CPUs it may run on, when it was made */
};

int mproc_rpc_server_new(mproc_rpc_server **out, mproc_rpc_handler *h, const char *address,
                         const mproc_rpc_server_opts *opts)
{
    if (!out || !h || !address)
        return MPROC_EINVAL;
    *out = NULL;
    if (opts && opts->wire != MPROC_RPC_MSGPACK && opts->wire != MPROC_RPC_PYTHON)
        return mproc__fail(MPROC_EINVAL, "rpc: unknown wire %d", (int)opts->wire);
    int orc = check_transport(opts ? opts->wire : MPROC_RPC_MSGPACK,
                              opts ? opts->transport : MPROC_RPC_CONNECTION,
                              opts ? opts->authkey : NULL, opts ? opts->authkey_len : 0);
    if (orc)
        return orc;
    if (opts && !(opts->idle_timeout >= 0)) /* NaN too */
        return mproc__fail(MPROC_EINVAL, "rpc: idle_timeout must be >= 0");
    mproc_rpc_server *s = calloc(1, sizeof *s);
    if (!s)
        return MPROC_ENOMEM;
    s->h = h;
    cpu_set_t cpus;
    s->ncpu = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
    if (s->ncpu < 1)
        s->ncpu = 1;
    if (opts)
        s->o = *opts;
    if (!s->o.max_message)
        s->o.max_message = MPROC_RPC_MAX_MESSAGE;
    if (!s->o.max_connections && s->o.transport != MPROC_RPC_ZMQ) /* zmq.c picks its own */
        s->o.max_connections = RPC_DEFAULT_MAX_CONNECTIONS;
    if (s->o.authkey) {
        s->key = malloc(s->o.authkey_len + 1);
        if (!s->key) {
            free(s);
            return MPROC_ENOMEM;
        }
        memcpy(s->key, s->o.authkey, s->o.authkey_len);
        s->o.authkey = s->key;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->stop_mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    /* The handshake runs on the connection's thread, so a stalled client
     * never holds up accept. */
    mproc_listener_opts lo = {.backlog = 64, .conn = {.max_message = s->o.max_message}};
    int rc = s->o.transport == MPROC_RPC_ZMQ ? rpc__zmq_server_new(&s->z, h, address, &s->o)
                                             : mproc_listener_new(&s->l, address, &lo);
    if (!rc && s->l && !(s->address = strdup(mproc_listener_address(s->l)))) {
        mproc_listener_close(s->l);
        rc = MPROC_ENOMEM;
    }
    if (rc) {
        pthread_mutex_destroy(&s->mu);
        pthread_mutex_destroy(&s->stop_mu);
        pthread_cond_destroy(&s->cv);
        free(s->key);
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

const char *mproc_rpc_server_address(const mproc_rpc_server *s)
{
    if (s && s->z)
        return rpc__zmq_server_address(s->z);
    return s && s->address ? s->address : "";
}

size_t mproc_rpc_server_connections(const mproc_rpc_server *s)
{
    if (!s)
        return 0;
    if (s->z)
        return rpc__zmq_server_connections(s->z);
    pthread_mutex_lock((pthread_mutex_t *)&s->mu);
    size_t n = s->nconns;
    pthread_mutex_unlock((pthread_mutex_t *)&s->mu);
    return n;
}

static int send_answer(mproc_rpc_server *s, srv_conn *sc, const mproc_buf *out)
{
    if (s->o.transport == MPROC_RPC_STREAM)
        return mproc_write_all(sc->fd, out->data, out->len);
    return mproc_connection_send_bytes(sc->c, out->data, out->len);
}

int rpc__answer(mproc_rpc_handler *h, mproc_rpc_wire wire, size_t max, const void *data,
                size_t len, mproc_buf *out, bool *answer, mproc_value *later[2])
{
    *answer = false;
    later[0] = later[1] = NULL;
    out->len = 0;
    rpc_req r;
    int rc = decode_req(wire, data, len, &r);
    if (rc) {
        /* Answer what can be answered (the Python wire always; msgpack-rpc
         * when the msgid was read); a msgpack-rpc client speaking garbage
         * is then dropped. */
        if (wire == MPROC_RPC_PYTHON || r.kind == 0)
            *answer = !encode_answer(wire, r.msgid, rc, NULL, "TypeError", mproc_errmsg(), out);
        req_free(&r);
        return wire == MPROC_RPC_PYTHON ? 0 : rc;
    }
    mproc_value *res = NULL;
    const char *type = "";
    /* the decoded list's own item array is the argv the function gets */
    rc = mproc_rpc_handler_call(h, r.method, r.args->u.l.v, r.args->u.l.n, r.kwargs, &res, &type);
    int e = 0;
    if (r.kind == 0) {
        char msg[256]; /* a copy: encoding may record a message of its own */
        snprintf(msg, sizeof msg, "%s", rc ? mproc_errmsg() : "");
        e = encode_answer(wire, r.msgid, rc, res, type, msg, out);
        if (e == 0 && out->len > max) {
            char m[128];
            snprintf(m, sizeof m, "the result (%zu bytes) exceeds max_message (%zu)", out->len, max);
            e = encode_answer(wire, r.msgid, MPROC_EMSGSIZE, NULL, "ValueError", m, out);
        } else if (e) {
            char m[128];
            snprintf(m, sizeof m, "the result cannot be encoded: %s", mproc_strerror(e));
            e = encode_answer(wire, r.msgid, e, NULL, "TypeError", m, out);
        }
        *answer = e == 0;
    }
    later[0] = res; /* freed once the answer is on its way */
    later[1] = r.root;
    free(r.name_heap);
    return e;
}

static void free_later(mproc_value *later[2])
{
    mproc_value_free(later[0]);
    mproc_value_free(later[1]);
}

/* Serve one request frame; 0 to go on, else close the connection. */
static int serve_frame(mproc_rpc_server *s, srv_conn *sc, const void *data, size_t len,
                       mproc_buf *out)
{
    bool answer;
    mproc_value *later[2];
    int rc = rpc__answer(s->h, s->o.wire, s->o.max_message, data, len, out, &answer, later);
    if (answer) {
        int e = send_answer(s, sc, out);
        if (!rc)
            rc = e;
    }
    free_later(later);
    if (rpc__trim_due(out->cap, out->len, &sc->out_run))
        mproc__buf_free(out);
    return rc;
}

/* The first frame of a connection may be a proxy's "mproc.shm" call: offer
 * it the connection's queues and wait for its choice, a one-byte frame
 * (1: moved, 0: stays on the socket). 0 to go on (on the socket, or with
 * sc->shm set), else a code that closes the connection. *handled false when
 * the frame is an ordinary request. */
static int shm_handshake(mproc_rpc_server *s, srv_conn *sc, const void *data, size_t len,
                         mproc_buf *out, bool *handled)
{
    *handled = false;
    if (s->o.no_shm || s->o.transport != MPROC_RPC_CONNECTION)
        return 0; /* rpc__answer says "no such function" */
    rpc_req r;
    if (decode_req(s->o.wire, data, len, &r) || r.kind != 0 ||
        strcmp(r.method, RPC_SHM_METHOD) != 0) {
        req_free(&r);
        return 0;
    }
    *handled = true;
    rpc_shm *ch = NULL;
    mproc_value *offer = NULL;
    mproc__fail(0, "%s", ""); /* no stale text if the offer fails with a bare code */
    int rc = rpc__shm_offer(sc->fd, s->o.max_message, &ch, &offer);
    char msg[200];
    snprintf(msg, sizeof msg, "no shared memory: %s (%s)", rc ? mproc_errmsg() : "",
             mproc_errname(rc));
    rc = encode_answer(s->o.wire, r.msgid, rc, offer, "OSError", msg, out);
    req_free(&r);
    mproc_value_free(offer);
    if (!rc)
        rc = send_answer(s, sc, out);
    void *choice = NULL;
    size_t n = 0;
    mproc_deadline cd = mproc_deadline_after(10.0);
    while (!rc && ch) { /* in slices: a stop does not wait 10 s for it */
        rc = mproc_connection_recv_bytes(sc->c, &choice, &n, RPC_SLICE_S);
        if (rc != MPROC_ETIMEDOUT)
            break;
        rc = atomic_load(&s->stopping) || mproc_deadline_expired(cd) ? rc : 0;
    }
    if (!rc && ch && (n != 1 || ((uint8_t *)choice)[0] > 1))
        rc = mproc__fail(MPROC_EPROTO, "rpc: bad answer to the shared-memory offer");
    if (!rc && ch && ((uint8_t *)choice)[0] == 1) {
        sc->shm = ch;
        ch = NULL;
    }
    free(choice);
    rpc__shm_free(ch);
    return rc;
}

/* The client sent nothing for idle_timeout: the slice that saw it closes
 * the connection. */
static bool idle_over(const mproc_rpc_server *s, const srv_conn *sc)
{
    return s->o.idle_timeout > 0 &&
           (double)(mproc__now_ns() - sc->active_ns) / 1e9 > s->o.idle_timeout;
}

static int serve_shm_one(mproc_rpc_server *s, srv_conn *sc, mproc_buf *out);

/* Serve a client that moved to shared memory until it leaves or the
 * server stops. */
static int serve_shm(mproc_rpc_server *s, srv_conn *sc, mproc_buf *out)
{
    atomic_fetch_add(&s->nshm, 1);
    int rc = 0;
    int spin = -1;
    while (!rc && !atomic_load(&s->stopping)) { /* calls in progress finish; then we go */
        /* spin while every client (and its server thread) can have a core */
        int want = atomic_load(&s->nshm) * 2 <= s->ncpu + 1;
        if (want != spin)
            rpc__shm_set_spin(sc->shm, (spin = want));
        rc = serve_shm_one(s, sc, out);
    }
    atomic_fetch_sub(&s->nshm, 1);
    return rc == MPROC_ESTATE ? 0 : rc;
}

/* One call, or a slice without one: 0 to go on, MPROC_ESTATE when the
 * server stops, else a code that ends the connection. */
static int serve_shm_one(mproc_rpc_server *s, srv_conn *sc, mproc_buf *out)
{
    const void *data;
    size_t len;
    int rc = rpc__shm_recv(sc->shm, mproc_deadline_after(RPC_SLICE_S), s->o.max_message, &data,
                           &len);
    if (rc == MPROC_ETIMEDOUT)
        return atomic_load(&s->stopping) ? MPROC_ESTATE : idle_over(s, sc) ? MPROC_ETIMEDOUT : 0;
    if (rc)
        return rc;
    bool answer;
    mproc_value *later[2];
    atomic_store(&sc->busy, true);
    rc = rpc__answer(s->h, s->o.wire, s->o.max_message, data, len, out, &answer, later);
    if (answer) {
        int e = rpc__shm_send(sc->shm, out->data, out->len, mproc_deadline_after(MPROC_FOREVER));
        if (!rc)
            rc = e;
    }
    free_later(later);
    if (rpc__trim_due(out->cap, out->len, &sc->out_run))
        mproc__buf_free(out);
    atomic_store(&sc->busy, false);
    sc->active_ns = mproc__now_ns();
    return rc;
}

/* Take `sc` off the server's list of connections (s->mu held). */
static void conn_unlink_locked(mproc_rpc_server *s, srv_conn *sc)
{
    if (sc->prev)
        sc->prev->next = sc->next;
    else
        s->conns = sc->next;
    if (sc->next)
        sc->next->prev = sc->prev;
    s->nconns--;
}

static void *conn_main(void *arg)
{
    srv_conn *sc = arg;
    mproc_rpc_server *s = sc->s;
    mproc_buf out = {0};
    int rc = 0;
    if (s->o.authkey) {
        mproc_deadline hd = mproc_deadline_after(10.0);
        rc = mproc__auth_deliver(sc->c, s->o.authkey, s->o.authkey_len, "sha256", hd);
        if (!rc)
            rc = mproc__auth_answer(sc->c, s->o.authkey, s->o.authkey_len, hd);
    }
    bool first = true;
    sc->active_ns = mproc__now_ns();
    while (!rc && !atomic_load(&s->stopping)) {
        if (sc->shm) {
            rc = serve_shm(s, sc, &out);
            break;
        }
        if (s->o.transport == MPROC_RPC_STREAM) {
            const uint8_t *p;
            size_t len;
            rc = stream_next(&sc->st, sc->fd, s->o.max_message, mproc_deadline_after(RPC_SLICE_S),
                             &p, &len);
            if (rc == MPROC_ETIMEDOUT) {
                rc = idle_over(s, sc) ? rc : 0;
                continue;
            }
            if (!rc) {
                atomic_store(&sc->busy, true);
                rc = serve_frame(s, sc, p, len, &out);
                atomic_store(&sc->busy, false);
                sc->active_ns = mproc__now_ns();
            }
            continue;
        }
        void *buf;
        size_t len;
        spin_readable(sc->c, RPC_SPIN_NS);
        rc = mproc_connection_recv_bytes(sc->c, &buf, &len, RPC_SLICE_S);
        if (rc == MPROC_ETIMEDOUT) {
            rc = idle_over(s, sc) ? rc : 0;
            continue;
        }
        if (rc)
            break;
        bool handled = false;
        if (first) {
            first = false;
            rc = shm_handshake(s, sc, buf, len, &out, &handled);
        }
        if (!handled) {
            atomic_store(&sc->busy, true);
            rc = serve_frame(s, sc, buf, len, &out);
            atomic_store(&sc->busy, false);
        }
        sc->active_ns = mproc__now_ns();
        free(buf);
    }
    rpc__shm_free(sc->shm);
    mproc__buf_free(&out);
    if (s->o.authkey)
        mproc__auth_thread_done(); /* before stop can see this thread gone */
    free(sc->st.buf);
    pthread_mutex_lock(&s->mu);
    conn_unlink_locked(s, sc);
    mproc_connection_close(sc->c);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    free(sc);
    return NULL;
}

static void *accept_main(void *arg)
{
    mproc_rpc_server *s = arg;
    while (!atomic_load(&s->stopping)) {
        struct pollfd p = {mproc_listener_fileno(s->l), POLLIN, 0};
        int n = poll(&p, 1, (int)(RPC_SLICE_S * 1000));
        if (n <= 0 || atomic_load(&s->stopping))
            continue;
        mproc_connection *c;
        int rc = mproc_listener_accept(s->l, &c, 0);
        if (rc) {
            if (rc == MPROC_EMFILE || rc == -ENFILE || rc == MPROC_ENOMEM) {
                struct timespec pause = {0, 10 * 1000 * 1000}; /* out of fds: do not spin */
                nanosleep(&pause, NULL);
            }
            continue;
        }
        pthread_mutex_lock(&s->mu);
        srv_conn *sc = s->nconns < s->o.max_connections ? calloc(1, sizeof *sc) : NULL;
        if (sc) {
            sc->s = s;
            sc->c = c;
            sc->fd = mproc_connection_fileno(c);
            sc->next = s->conns;
            if (s->conns)
                s->conns->prev = sc;
            s->conns = sc;
            s->nconns++;
        }
        pthread_mutex_unlock(&s->mu);
        if (!sc) { /* over max_connections (or out of memory) */
            mproc_connection_close(c);
            continue;
        }
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&th, &at, conn_main, sc) != 0) {
            pthread_mutex_lock(&s->mu);
            conn_unlink_locked(s, sc);
            pthread_mutex_unlock(&s->mu);
            mproc_connection_close(c);
            free(sc);
        }
        pthread_attr_destroy(&at);
    }
    return NULL;
}

int mproc_rpc_server_start(mproc_rpc_server *s)
{
    if (!s)
        return MPROC_EINVAL;
    if (s->z)
        return rpc__zmq_server_start(s->z);
    if (s->started || atomic_load(&s->stopping))
        return mproc__fail(MPROC_ESTATE, "rpc: the server was started already");
    int rc = pthread_create(&s->accept_thr, NULL, accept_main, s);
    if (rc)
        return -rc;
    s->started = true;
    return 0;
}

static int stop_locked(mproc_rpc_server *s, double timeout);

int mproc_rpc_server_stop(mproc_rpc_server *s, double timeout)
{
    if (!s)
        return MPROC_EINVAL;
    pthread_mutex_lock(&s->stop_mu); /* a second stop waits for the first */
    int rc = s->z ? rpc__zmq_server_stop(s->z, timeout) : stop_locked(s, timeout);
    pthread_mutex_unlock(&s->stop_mu);
    return rc;
}

static int stop_locked(mproc_rpc_server *s, double timeout)
{
    bool was = atomic_exchange(&s->stopping, true);
    if (s->started && !was)
        pthread_join(s->accept_thr, NULL);
    /* No more connections: close the listening socket (a unix path goes
     * with it), so a new client is refused at once instead of waiting in
     * the backlog for an accept that never comes. */
    mproc_listener_close(s->l);
    s->l = NULL;
    /* Connection threads finish the call they are in, then see the flag
     * within a slice. Past the timeout, cut their sockets. */
    mproc_deadline d = mproc_deadline_after(timeout);
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    while (s->nconns) {
        if (mproc_deadline_expired(d)) {
            for (srv_conn *sc = s->conns; sc; sc = sc->next) {
                if (atomic_load(&sc->busy))
                    rc = MPROC_ETIMEDOUT; /* a call was cut, not just an idle client */
                shutdown(sc->fd, SHUT_RDWR);
            }
            d = mproc_deadline_after(MPROC_FOREVER);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000)
            ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
    return rc ? mproc__fail(rc, "rpc: calls still running after the timeout were cut") : 0;
}

void mproc_rpc_server_free(mproc_rpc_server *s)
{
    if (!s)
        return;
    mproc_rpc_server_stop(s, 5.0);
    rpc__zmq_server_free(s->z);
    mproc_listener_close(s->l);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->stop_mu);
    pthread_cond_destroy(&s->cv);
    free(s->address);
    free(s->key);
    free(s);
}

/* ------------------------------------------------------------ proxies */

struct mproc_rpc_proxy {
    mproc_connection *c;
    int fd;
    mproc_rpc_wire wire;
    mproc_rpc_transport transport;
    rpc_stream st;
    uint32_t next_id;
    bool broken;
    size_t max_message;
    mproc_buf out;
    uint32_t out_run; /* rpc__trim_due's count for out */
    char exc_type[64];
    rpc_zmq_proxy *z; /* MPROC_RPC_ZMQ: the socket, instead of c/fd */
    rpc_shm *shm;     /* calls go through shared memory (c stays open) */
};

/* The next answer, valid until the next receive: *data points into the
 * transport's buffer, or into *owned (malloc'd: free it; NULL if not). */
static int proxy_recv(mproc_rpc_proxy *p, mproc_deadline d, const void **data, size_t *len,
                      void **owned);
static int encode_call(mproc_rpc_proxy *p, int kind, uint32_t msgid, const char *method,
                       const mproc_value *args, const mproc_value *kwargs);

/* Ask the server for shared memory ("mproc.shm") and take its queues when
 * they can be opened here; stay on the socket otherwise. Errors only when
 * the connection cannot go on. */
static int proxy_ask_shm(mproc_rpc_proxy *p, mproc_deadline d)
{
    mproc_value *args = mproc_value_list();
    uint32_t id = p->next_id++;
    int rc = args ? encode_call(p, 0, id, RPC_SHM_METHOD, args, NULL) : MPROC_ENOMEM;
    mproc_value_free(args);
    if (!rc)
        rc = mproc__conn_send_until(p->c, p->out.data, p->out.len, d);
    void *buf = NULL;
    const void *data = NULL;
    size_t len;
    if (!rc)
        rc = proxy_recv(p, d, &data, &len, &buf);
    if (rc == MPROC_ETIMEDOUT)
        return mproc__fail(rc, "rpc: the server did not answer the shared-memory question "
                               "within connect_timeout (no_shm skips it)");
    if (rc == MPROC_ECONNRESET || rc == MPROC_EPIPE || rc == MPROC_ECLOSED)
        return mproc__fail(MPROC_ECLOSED, "rpc: the server closed the connection (over its "
                                          "max_connections?)");
    if (rc)
        return rc;
    mproc_value *v = NULL, *offer = NULL;
    rc = p->wire == MPROC_RPC_PYTHON ? py_unwrap(data, len, &v)
                                     : mproc_msgpack_decode(data, len, NULL, &v);
    free(buf);
    if (rc)
        return mproc__fail(MPROC_EPROTO, "rpc: malformed answer: %s", mproc_errmsg());
    if (p->wire == MPROC_RPC_PYTHON)
        offer = mproc_value_type(v) == MPROC_V_ERROR ? NULL : v;
    else if (mproc_value_type(v) == MPROC_V_LIST && mproc_value_len(v) == 4 &&
             mproc_value_as_int(mproc_value_at(v, 1)) == id &&
             mproc_value_type(mproc_value_at(v, 2)) == MPROC_V_NIL)
        offer = mproc_value_at(v, 3);
    if (!offer) { /* not an mproc server, or one that keeps us on the socket */
        mproc_value_free(v);
        return 0;
    }
    rpc_shm *ch = NULL;
    bool is_offer;
    int took = rpc__shm_take(p->fd, offer, &ch, &is_offer);
    mproc_value_free(v);
    if (!is_offer) /* a server of another kind that answers every name: it */
        return 0;  /* waits for no choice, and a byte would be a request */
    uint8_t choice = took == 0;
    rc = mproc__conn_send_until(p->c, &choice, 1, d);
    if (!rc && ch) {
        p->shm = ch;
        ch = NULL;
    }
    rpc__shm_free(ch);
    return rc;
}

int mproc_rpc_connect(mproc_rpc_proxy **out, const char *address, const mproc_rpc_proxy_opts *opts)
{
    if (!out || !address)
        return MPROC_EINVAL;
    *out = NULL;
    if (opts && opts->wire != MPROC_RPC_MSGPACK && opts->wire != MPROC_RPC_PYTHON)
        return mproc__fail(MPROC_EINVAL, "rpc: unknown wire %d", (int)opts->wire);
    int orc = check_transport(opts ? opts->wire : MPROC_RPC_MSGPACK,
                              opts ? opts->transport : MPROC_RPC_CONNECTION,
                              opts ? opts->authkey : NULL, opts ? opts->authkey_len : 0);
    if (orc)
        return orc;
    mproc_rpc_proxy *p = calloc(1, sizeof *p);
    if (!p)
        return MPROC_ENOMEM;
    p->wire = opts ? opts->wire : MPROC_RPC_MSGPACK;
    p->transport = opts ? opts->transport : MPROC_RPC_CONNECTION;
    p->max_message = opts && opts->max_message ? opts->max_message : MPROC_RPC_MAX_MESSAGE;
    mproc_client_opts co = {
        .auth = {.authkey = opts ? opts->authkey : NULL, .authkey_len = opts ? opts->authkey_len : 0},
        .connect_timeout = opts ? opts->connect_timeout : 0,
        /* room for the shared-memory offer even under a tiny max_message;
         * answers are held to max_message by the call */
        .conn = {.max_message = p->max_message > 4096 ? p->max_message : 4096},
    };
    int rc = p->transport == MPROC_RPC_ZMQ ? rpc__zmq_connect(&p->z, address, p->max_message)
                                           : mproc_client_connect(&p->c, address, &co);
    if (rc) {
        free(p);
        return rc;
    }
    p->fd = p->z ? -1 : mproc_connection_fileno(p->c);
    if (p->transport == MPROC_RPC_CONNECTION && !(opts && opts->no_shm)) {
        double ct = opts && opts->connect_timeout > 0 ? opts->connect_timeout : 30.0;
        if ((rc = proxy_ask_shm(p, mproc_deadline_after(ct))) != 0) {
            mproc_rpc_close(p);
            return rc;
        }
    }
    *out = p;
    return 0;
}

bool mproc_rpc_proxy_shm(const mproc_rpc_proxy *p)
{
    return p && p->shm;
}

/* `d` bounds only the ZeroMQ wait for room in its queue; the other
 * transports write until done. */
static int proxy_send(mproc_rpc_proxy *p, mproc_deadline d)
{
    if (p->z)
        return rpc__zmq_send(p->z, p->out.data, p->out.len, d);
    if (p->shm)
        return rpc__shm_send(p->shm, p->out.data, p->out.len, d);
    /* Bounded by the call's deadline too: a server that stopped reading
     * must not hold a call forever (a partial send breaks the proxy). */
    if (p->transport == MPROC_RPC_STREAM)
        return mproc__write_all_until(p->fd, p->out.data, p->out.len, d);
    return mproc__conn_send_until(p->c, p->out.data, p->out.len, d);
}

static int proxy_recv(mproc_rpc_proxy *p, mproc_deadline d, const void **data, size_t *len,
                      void **owned)
{
    *owned = NULL;
    int rc;
    if (p->shm)
        return rpc__shm_recv(p->shm, d, p->max_message, data, len);
    if (p->transport == MPROC_RPC_STREAM) {
        const uint8_t *q;
        if ((rc = stream_next(&p->st, p->fd, p->max_message, d, &q, len)) == 0)
            *data = q;
        return rc;
    }
    if (p->z) {
        rc = rpc__zmq_recv(p->z, d, owned, len);
    } else {
        spin_readable(p->c, RPC_SPIN_NS);
        rc = mproc_connection_recv_bytes(p->c, owned, len, mproc_deadline_remaining(d));
    }
    *data = *owned;
    return rc;
}

const char *mproc_rpc_proxy_error_type(const mproc_rpc_proxy *p)
{
    return p ? p->exc_type : "";
}

static int encode_call(mproc_rpc_proxy *p, int kind, uint32_t msgid, const char *method,
                       const mproc_value *args, const mproc_value *kwargs)
{
    if (p->wire != MPROC_RPC_PYTHON) {
        /* [0, msgid, method, params] / [2, method, params], framed by hand */
        mproc_buf *b = &p->out;
        int rc = mproc__mp_array(b, kind == 0 ? 4 : 3);
        if (!rc)
            rc = mproc__mp_int(b, kind);
        if (!rc && kind == 0)
            rc = mproc__mp_int(b, msgid);
        if (!rc)
            rc = mproc__mp_str(b, method, strlen(method));
        if (!rc)
            rc = args ? mproc_msgpack_encode(args, b) : mproc__mp_array(b, 0);
        return rc;
    }
    /* (name, args, kwargs): a TUPLE3 around the name, the args (a list,
     * which unpacks as the seed's tuple does) and the kwargs dict */
    mproc_buf *b = &p->out;
    size_t at;
    int rc = py_frame_begin(b, &at);
    if (!rc)
        rc = mproc__pickle_text(b, method, strlen(method));
    if (!rc)
        rc = args ? mproc__pickle_body(b, args) : mproc_buf_append(b, "]", 1);
    if (!rc)
        rc = kwargs ? mproc__pickle_body(b, kwargs) : mproc_buf_append(b, "}", 1);
    if (!rc)
        rc = mproc_buf_append(b, "\x87", 1);
    if (!rc)
        rc = py_frame_end(b, at);
    return rc;
}

static int check_call(mproc_rpc_proxy *p, const char *method, const mproc_value *args)
{
    if (!p || !method)
        return MPROC_EINVAL;
    if (!mproc__utf8_valid((const uint8_t *)method, strlen(method)))
        return mproc__fail(MPROC_EINVAL, "rpc: a method name must be UTF-8");
    if (args && mproc_value_type(args) != MPROC_V_LIST)
        return mproc__fail(MPROC_EINVAL, "rpc: args must be a list");
    if (p->broken)
        return mproc__fail(MPROC_ECLOSED, "rpc: the connection was closed after a timeout or an error");
    return 0;
}

/* An error answer into (code, type, message). */
static int remote_error(mproc_rpc_proxy *p, const mproc_value *err)
{
    const char *type = "Exception", *msg = NULL;
    if (mproc_value_type(err) == MPROC_V_ERROR) {
        type = mproc_value_error_type(err);
        msg = mproc_value_error_message(err);
    } else if (mproc_value_type(err) == MPROC_V_LIST && mproc_value_len(err) == 2) {
        type = mproc_value_as_str(mproc_value_at(err, 0), NULL);
        msg = mproc_value_as_str(mproc_value_at(err, 1), NULL);
    } else if (mproc_value_type(err) == MPROC_V_STR) {
        msg = mproc_value_as_str(err, NULL);
    }
    snprintf(p->exc_type, sizeof p->exc_type, "%s", type ? type : "Exception");
    char *r = msg ? NULL : mproc_value_repr(err);
    int rc = mproc__fail(MPROC_EREMOTE, "%s: %s", p->exc_type, msg ? msg : r ? r : "?");
    free(r);
    return rc;
}

int mproc_rpc_call_kw(mproc_rpc_proxy *p, const char *method, const mproc_value *args,
                      const mproc_value *kwargs, mproc_value **result, double timeout)
{
    if (result)
        *result = NULL;
    int rc = check_call(p, method, args);
    if (rc)
        return rc;
    p->exc_type[0] = 0;
    if (kwargs && p->wire != MPROC_RPC_PYTHON)
        return mproc__fail(MPROC_EINVAL, "rpc: msgpack-rpc has no keyword arguments");
    if (kwargs && mproc_value_type(kwargs) != MPROC_V_MAP)
        return mproc__fail(MPROC_EINVAL, "rpc: kwargs must be a map");
    uint32_t id = p->next_id++;
    if (rpc__trim_due(p->out.cap, p->out.len, &p->out_run)) /* len: the last request's */
        mproc__buf_free(&p->out);
    p->out.len = 0;
    if ((rc = encode_call(p, 0, id, method, args, kwargs)) != 0)
        return rc;
    if (p->out.len > p->max_message)
        return mproc__fail(MPROC_EMSGSIZE, "rpc: the request (%zu bytes) exceeds max_message (%zu)",
                           p->out.len, p->max_message);
    mproc_deadline d = mproc_deadline_after(timeout);
    if ((rc = proxy_send(p, d)) != 0) {
        /* ZeroMQ: its queue for an absent server is full; nothing was sent. */
        if (p->z && rc == MPROC_ETIMEDOUT)
            return mproc__fail(rc, "rpc: no ZeroMQ server took '%.200s' within the timeout",
                               method);
        if (p->shm && rc == MPROC_EMSGSIZE) /* nothing was sent */
            return mproc__fail(rc, "rpc: the request (%zu bytes) exceeds the server's "
                                   "max_message", p->out.len);
        p->broken = true;
        if (rc == MPROC_ETIMEDOUT)
            return mproc__fail(rc, "rpc: '%.200s' could not be sent within the timeout (the "
                                   "server does not read); the proxy is closed", method);
        return rc == MPROC_EPIPE || rc == MPROC_ECONNRESET ? mproc__fail(MPROC_ECLOSED, "rpc: the server is gone") : rc;
    }
    for (;;) {
        void *buf;
        const void *data;
        size_t len;
        rc = proxy_recv(p, d, &data, &len, &buf);
        if (rc) {
            /* msgpack-rpc skips a late answer by its msgid; the Python wire
             * cannot tell answers apart, so the connection is done. */
            if (rc != MPROC_ETIMEDOUT || p->wire == MPROC_RPC_PYTHON)
                p->broken = true;
            if (rc == MPROC_ETIMEDOUT)
                return mproc__fail(rc, "rpc: no answer to '%.200s' within the timeout", method);
            return rc == MPROC_ECONNRESET ? mproc__fail(MPROC_ECLOSED, "rpc: the server is gone") : rc;
        }
        if (len > p->max_message) {
            free(buf);
            p->broken = true;
            return mproc__fail(MPROC_EMSGSIZE, "rpc: an answer of %zu bytes exceeds max_message "
                                               "(%zu); the proxy is closed", len, p->max_message);
        }
        mproc_value *v = NULL;
        uint64_t aid;
        size_t k = p->wire == MPROC_RPC_MSGPACK && len >= 3 && ((const uint8_t *)data)[0] == 0x94 &&
                           ((const uint8_t *)data)[1] == 0x01
                       ? mp_uint((const uint8_t *)data + 2, len - 2, &aid)
                       : 0;
        if (k && 2 + k < len && ((const uint8_t *)data)[2 + k] == 0xc0 && aid == id) {
            /* [1, msgid, nil, result]: only the result is decoded, within
             * the whole answer's limits less its header */
            mproc_decode_limits lim = {MPROC__DEFAULT_MAX_DEPTH - 1, MPROC__DEFAULT_MAX_ITEMS - 4,
                                       MPROC__DEFAULT_MAX_BYTES};
            rc = mproc_msgpack_decode((const uint8_t *)data + 3 + k, len - 3 - k, &lim, &v);
            free(buf);
            if (rc) {
                p->broken = true;
                return mproc__fail(MPROC_EPROTO, "rpc: malformed answer: %s", mproc_errmsg());
            }
            if (result)
                *result = v;
            else
                mproc_value_free(v);
            return 0;
        }
        rc = p->wire == MPROC_RPC_PYTHON ? py_unwrap(data, len, &v)
                                         : mproc_msgpack_decode(data, len, NULL, &v);
        free(buf);
        if (rc) {
            p->broken = true;
            return mproc__fail(MPROC_EPROTO, "rpc: malformed answer: %s", mproc_errmsg());
        }
        if (p->wire == MPROC_RPC_PYTHON) {
            if (mproc_value_type(v) == MPROC_V_ERROR) {
                rc = remote_error(p, v);
                mproc_value_free(v);
                return rc;
            }
            if (result)
                *result = v;
            else
                mproc_value_free(v);
            return 0;
        }
        mproc_value *t = mproc_value_at(v, 0), *vid = mproc_value_at(v, 1);
        if (mproc_value_type(v) != MPROC_V_LIST || mproc_value_len(v) != 4 ||
            mproc_value_type(t) != MPROC_V_INT || mproc_value_as_int(t) != 1 ||
            mproc_value_type(vid) != MPROC_V_INT) {
            mproc_value_free(v);
            p->broken = true;
            return mproc__fail(MPROC_EPROTO, "rpc: malformed answer: want [1, msgid, error, result]");
        }
        if ((uint64_t)mproc_value_as_int(vid) != id) { /* a late answer to a timed-out call */
            mproc_value_free(v);
            continue;
        }
        mproc_value *err = mproc_value_at(v, 2);
        if (mproc_value_type(err) != MPROC_V_NIL) {
            rc = remote_error(p, err);
            mproc_value_free(v);
            return rc;
        }
        if (result)
            *result = mproc_value_take_at(v, 3);
        mproc_value_free(v);
        return 0;
    }
}

int mproc_rpc_call(mproc_rpc_proxy *p, const char *method, const mproc_value *args,
                   mproc_value **result, double timeout)
{
    return mproc_rpc_call_kw(p, method, args, NULL, result, timeout);
}

int mproc_rpc_notify(mproc_rpc_proxy *p, const char *method, const mproc_value *args)
{
    int rc = check_call(p, method, args);
    if (rc)
        return rc;
    if (p->wire != MPROC_RPC_MSGPACK)
        return mproc__fail(MPROC_EINVAL, "rpc: notifications are msgpack-rpc only");
    p->out.len = 0;
    if ((rc = encode_call(p, 2, 0, method, args, NULL)) != 0)
        return rc;
    /* ZeroMQ waits this long for room in its queue (30 s, as connecting). */
    rc = proxy_send(p, mproc_deadline_after(30.0));
    if (rc && !(p->z && rc == MPROC_ETIMEDOUT))
        p->broken = true;
    return rc;
}

void mproc_rpc_close(mproc_rpc_proxy *p)
{
    if (!p)
        return;
    rpc__zmq_close(p->z);
    rpc__shm_free(p->shm);
    mproc_connection_close(p->c);
    mproc__buf_free(&p->out);
    free(p->st.buf);
    free(p);
}
