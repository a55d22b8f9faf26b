/* sharedctypes.c — Value, Array, RawValue and RawArray: typed storage in a memfd
 * segment of its own, with the object's Lock/RLock in the same segment.
 *
 * Segment layout (versioned, checked on import):
 *   0    sc_hdr: magic (VALUE/ARRAY), version, ctype, element size, lock mode,
 *        element count, data offset
 *   64   mproc__lock_st, only when the object has a lock of its own
 *   data at 64 (no own lock) or 128, so every element type is aligned.
 * An object using a lock it was given (opts.use_lock) has none in its segment:
 * its export carries that lock's export, as a Condition's does.
 *
 * Every scalar access to the data goes through relaxed __atomic loads/stores
 * of the element's width, so a raw object never shows a torn element to a
 * concurrent reader; raw adds are CPU atomics (fetch-add, or a CAS loop for
 * floating types). */
#include <assert.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wchar.h>

#include "sync_int.h"

#define SC_VERSION 1u
#define SC_LOCK_OFFSET 64u
#define SC_ALIGN 64u
#define SC_BORROWED 3u /* lock mode: the lock lives in another segment */

typedef struct sc_hdr {
    uint32_t magic; /* MPROC__SYNC_VALUE or MPROC__SYNC_ARRAY */
    uint32_t version;
    uint32_t ctype;    /* an mproc_ctype */
    uint32_t elsize;   /* mproc_ctype_size(ctype) in the creating process */
    uint32_t lockmode; /* mproc_shared_lock, or SC_BORROWED */
    uint32_t reserved;
    uint64_t len;      /* elements (1 for a value) */
    uint64_t data_off; /* where the elements start */
} sc_hdr;

_Static_assert(sizeof(sc_hdr) <= SC_LOCK_OFFSET, "header overlaps the lock");

/* One handle; a value is an array of one. Fields are private copies, never
 * re-read from the segment (another process could change them). */
typedef struct sc {
    mproc_shm *shm;
    void *data;
    mproc_lock *lock; /* NULL: raw */
    bool free_lock;   /* the handle is ours: own lock's wrapper, or an imported lock */
    bool borrowed;    /* the lock lives in another object's segment */
    mproc_ctype t;
    size_t size, len;
} sc;

struct mproc_shared_value {
    sc c;
};

struct mproc_shared_array {
    sc c;
};

/* ---------------------------------------------------------------- types */

size_t mproc_ctype_size(mproc_ctype t)
{
    switch (t) {
    case MPROC_C_CHAR:
    case MPROC_C_BYTE:
    case MPROC_C_UBYTE:
        return 1;
    case MPROC_C_WCHAR:
        return sizeof(wchar_t);
    case MPROC_C_SHORT:
    case MPROC_C_USHORT:
        return sizeof(short);
    case MPROC_C_INT:
    case MPROC_C_UINT:
        return sizeof(int);
    case MPROC_C_LONG:
    case MPROC_C_ULONG:
        return sizeof(long);
    case MPROC_C_LONGLONG:
    case MPROC_C_ULONGLONG:
        return sizeof(long long);
    case MPROC_C_FLOAT:
        return sizeof(float);
    case MPROC_C_DOUBLE:
        return sizeof(double);
    }
    return 0;
}

static bool is_floating(mproc_ctype t)
{
    return t == MPROC_C_FLOAT || t == MPROC_C_DOUBLE;
}

/* One element, whatever its type; members all start at byte 0. */
typedef union scalar {
    unsigned char c; /* 'c' is an 8-bit integer, 0..255 (Python's bytes) */
    wchar_t u;
    signed char b;
    unsigned char B;
    short h;
    unsigned short H;
    int i;
    unsigned int I;
    long l;
    unsigned long L;
    long long q;
    unsigned long long Q;
    float f;
    double d;
    uint64_t bits;
} scalar;

_Static_assert(sizeof(scalar) == 8, "an element is at most 8 bytes");

/* double -> integer without undefined behaviour: truncate toward zero, saturate
 * at [lo, hi], NaN gives 0. lo/hi are exactly representable bounds (powers of two). */
static int64_t sat_i64(double x)
{
    if (x != x)
        return 0;
    if (x >= 9223372036854775808.0)
        return INT64_MAX;
    if (x <= -9223372036854775808.0)
        return INT64_MIN;
    return (int64_t)x;
}

static uint64_t sat_u64(double x)
{
    if (x != x || x <= 0)
        return 0;
    if (x >= 18446744073709551616.0)
        return UINT64_MAX;
    return (uint64_t)x;
}

static int64_t clamp(int64_t x, int64_t lo, int64_t hi)
{
    return x < lo ? lo : x > hi ? hi : x;
}

static int64_t to_i64(const scalar *s, mproc_ctype t)
{
    switch (t) {
    case MPROC_C_CHAR: return s->c;
    case MPROC_C_WCHAR: return s->u;
    case MPROC_C_BYTE: return s->b;
    case MPROC_C_UBYTE: return s->B;
    case MPROC_C_SHORT: return s->h;
    case MPROC_C_USHORT: return s->H;
    case MPROC_C_INT: return s->i;
    case MPROC_C_UINT: return s->I;
    case MPROC_C_LONG: return s->l;
    case MPROC_C_ULONG: return (int64_t)s->L; /* above INT64_MAX: wraps */
    case MPROC_C_LONGLONG: return s->q;
    case MPROC_C_ULONGLONG: return (int64_t)s->Q;
    case MPROC_C_FLOAT: return sat_i64(s->f);
    case MPROC_C_DOUBLE: return sat_i64(s->d);
    }
    return 0;
}

static double to_f64(const scalar *s, mproc_ctype t)
{
    switch (t) {
    case MPROC_C_ULONG: return (double)s->L;
    case MPROC_C_ULONGLONG: return (double)s->Q;
    case MPROC_C_FLOAT: return s->f;
    case MPROC_C_DOUBLE: return s->d;
    default: return (double)to_i64(s, t);
    }
}

/* As C converts: narrower integer types wrap modulo 2^bits. */
static void from_i64(scalar *s, mproc_ctype t, int64_t x)
{
    switch (t) {
    case MPROC_C_CHAR: s->c = (unsigned char)x; break;
    case MPROC_C_WCHAR: s->u = (wchar_t)x; break;
    case MPROC_C_BYTE: s->b = (signed char)x; break;
    case MPROC_C_UBYTE: s->B = (unsigned char)x; break;
    case MPROC_C_SHORT: s->h = (short)x; break;
    case MPROC_C_USHORT: s->H = (unsigned short)x; break;
    case MPROC_C_INT: s->i = (int)x; break;
    case MPROC_C_UINT: s->I = (unsigned int)x; break;
    case MPROC_C_LONG: s->l = (long)x; break;
    case MPROC_C_ULONG: s->L = (unsigned long)x; break;
    case MPROC_C_LONGLONG: s->q = x; break;
    case MPROC_C_ULONGLONG: s->Q = (unsigned long long)x; break;
    case MPROC_C_FLOAT: s->f = (float)x; break;
    case MPROC_C_DOUBLE: s->d = (double)x; break;
    }
}

/* Floating to integer types truncates toward zero and saturates at the type's
 * range (C leaves out-of-range conversions undefined); NaN gives 0. */
static void from_f64(scalar *s, mproc_ctype t, double x)
{
    switch (t) {
    case MPROC_C_FLOAT: s->f = (float)x; break;
    case MPROC_C_DOUBLE: s->d = x; break;
    case MPROC_C_ULONG: s->L = (unsigned long)sat_u64(x); break;
    case MPROC_C_ULONGLONG: s->Q = sat_u64(x); break;
    case MPROC_C_UINT: s->I = (unsigned int)(x >= UINT_MAX ? UINT_MAX : sat_u64(x)); break;
    case MPROC_C_CHAR: from_i64(s, t, clamp(sat_i64(x), 0, UCHAR_MAX)); break;
    case MPROC_C_UBYTE: from_i64(s, t, clamp(sat_i64(x), 0, UCHAR_MAX)); break;
    case MPROC_C_USHORT: from_i64(s, t, clamp(sat_i64(x), 0, USHRT_MAX)); break;
    case MPROC_C_BYTE: from_i64(s, t, clamp(sat_i64(x), SCHAR_MIN, SCHAR_MAX)); break;
    case MPROC_C_SHORT: from_i64(s, t, clamp(sat_i64(x), SHRT_MIN, SHRT_MAX)); break;
    case MPROC_C_INT: from_i64(s, t, clamp(sat_i64(x), INT_MIN, INT_MAX)); break;
    case MPROC_C_WCHAR: from_i64(s, t, clamp(sat_i64(x), WCHAR_MIN, WCHAR_MAX)); break;
    case MPROC_C_LONG:
    case MPROC_C_LONGLONG: from_i64(s, t, sat_i64(x)); break;
    }
}

/* ------------------------------------------------- untorn element access */

/* Run BODY with T the unsigned integer type of `size` bytes. */
#define SC_BY_WIDTH(size, BODY)                                                                \
    switch (size) {                                                                            \
    case 1: { typedef uint8_t T; BODY; } break;                                                \
    case 2: { typedef uint16_t T; BODY; } break;                                               \
    case 4: { typedef uint32_t T; BODY; } break;                                               \
    case 8: { typedef uint64_t T; BODY; } break;                                               \
    default: assert(0);                                                                        \
    }

static void el_load(const void *p, size_t size, scalar *s)
{
    s->bits = 0;
    SC_BY_WIDTH(size, T x = __atomic_load_n((const T *)p, __ATOMIC_RELAXED);
                memcpy(s, &x, sizeof x))
}

static void el_store(void *p, size_t size, const scalar *s)
{
    SC_BY_WIDTH(size, T x; memcpy(&x, s, sizeof x); __atomic_store_n((T *)p, x, __ATOMIC_RELAXED))
}

/* Replace *p by `want` if it still holds `old` (bitwise). */
static bool el_cas(void *p, size_t size, const scalar *old, const scalar *want)
{
    bool ok = false;
    SC_BY_WIDTH(size, T o; T w; memcpy(&o, old, sizeof o); memcpy(&w, want, sizeof w);
                ok = __atomic_compare_exchange_n((T *)p, &o, w, false, __ATOMIC_SEQ_CST,
                                                 __ATOMIC_RELAXED))
    return ok;
}

/* *s += delta at the element's width (integers wrap; floating adds in double). */
static void add_to(scalar *s, mproc_ctype t, bool fp, int64_t di, double df)
{
    if (fp || is_floating(t))
        from_f64(s, t, to_f64(s, t) + (fp ? df : (double)di));
    else
        from_i64(s, t, (int64_t)((uint64_t)to_i64(s, t) + (uint64_t)di));
}

/* The raw (lock-free) add: fetch-add for integers, a CAS loop otherwise. */
static void raw_add(const sc *c, void *p, bool fp, int64_t di, double df, scalar *res)
{
    res->bits = 0;
    if (!fp && !is_floating(c->t)) {
        SC_BY_WIDTH(c->size, T x = __atomic_add_fetch((T *)p, (T)di, __ATOMIC_SEQ_CST);
                    memcpy(res, &x, sizeof x))
        return;
    }
    for (;;) {
        scalar old;
        el_load(p, c->size, &old);
        *res = old;
        add_to(res, c->t, fp, di, df);
        if (el_cas(p, c->size, &old, res))
            return;
    }
}

/* ------------------------------------------------------------ the lock */

/* Take the object's lock unless it is raw or the calling thread already holds
 * it (so `acquire(get_lock); get/set; release` works with a plain Lock too).
 * *held says whether to release. Returns 0, MPROC_EOWNERDEAD (held), or an
 * acquire error (not held: do nothing). */
static int sc_enter(const sc *c, bool *held)
{
    *held = false;
    if (!c->lock)
        return 0;
    /* Acquire first and look at ownership only if that fails: reading the
     * owner field up front would pull the lock's cache line from the other
     * process once more per call. An RLock simply counts one more level. */
    int rc = mproc_lock_acquire(c->lock, MPROC_FOREVER);
    if (rc == MPROC_EDEADLK) /* a plain Lock this thread already holds */
        return 0;
    *held = rc == 0 || rc == MPROC_EOWNERDEAD;
    return rc;
}

static void sc_leave(const sc *c, bool held)
{
    if (held)
        mproc_lock_release(c->lock);
}

/* ------------------------------------------------------------- creation */

static size_t data_offset(uint32_t mode)
{
    if (mode == MPROC_SHARED_RLOCK || mode == MPROC_SHARED_LOCK)
        return (SC_LOCK_OFFSET + sizeof(mproc__lock_st) + SC_ALIGN - 1) / SC_ALIGN * SC_ALIGN;
    return SC_LOCK_OFFSET;
}

static int sc_new(sc *c, uint32_t magic, mproc_ctype t, size_t len, const void *init,
                  const mproc_shared_opts *opts, const char *what)
{
    memset(c, 0, sizeof *c);
    size_t size = mproc_ctype_size(t);
    if (!size)
        return mproc__fail(MPROC_EINVAL, "%s: unknown ctype %d ('%c')", what, (int)t,
                           (t > 32 && t < 127) ? (char)t : '?');
    if (len == 0)
        return mproc__fail(MPROC_EINVAL, "%s: length must be > 0", what);
    uint32_t mode = MPROC_SHARED_RLOCK;
    if (opts && opts->use_lock) {
        if (opts->lock == MPROC_SHARED_RAW)
            return mproc__fail(MPROC_EINVAL, "%s: use_lock given with MPROC_SHARED_RAW", what);
        mode = SC_BORROWED;
    } else if (opts) {
        if ((unsigned)opts->lock > MPROC_SHARED_RAW)
            return mproc__fail(MPROC_EINVAL, "%s: unknown lock mode %d", what, (int)opts->lock);
        mode = (uint32_t)opts->lock;
    }
    size_t off = data_offset(mode);
    if (len > (SIZE_MAX - off) / size)
        return mproc__fail(MPROC_ENOMEM, "%s: %zu elements of %zu bytes is too large", what, len,
                           size);
    int rc = mproc_shm_new(&c->shm, off + len * size);
    if (rc)
        return rc;
    char *base = mproc_shm_buf(c->shm);
    sc_hdr *h = (sc_hdr *)base;
    if (mode == MPROC_SHARED_RLOCK || mode == MPROC_SHARED_LOCK) {
        mproc__lock_st *ls = (mproc__lock_st *)(base + SC_LOCK_OFFSET);
        rc = mproc__lock_init(ls, mode == MPROC_SHARED_RLOCK);
        if (!rc)
            rc = mproc__lock_wrap(c->shm, false, ls, &c->lock);
        if (rc) {
            mproc_shm_close(c->shm);
            return rc;
        }
        c->free_lock = true;
    } else if (mode == SC_BORROWED) {
        c->lock = opts->use_lock;
        c->borrowed = true;
    }
    c->data = base + off;
    c->t = t;
    c->size = size;
    c->len = len;
    if (init)
        memcpy(c->data, init, len * size);
    h->version = SC_VERSION;
    h->ctype = (uint32_t)t;
    h->elsize = (uint32_t)size;
    h->lockmode = mode;
    h->len = len;
    h->data_off = off;
    h->magic = magic;
    return 0;
}

static void sc_free(sc *c)
{
    const mproc__lock_st *own = c->lock && c->lock->shm == c->shm ? c->lock->st : NULL;
    if (c->free_lock)
        mproc_lock_free(c->lock);
    mproc__sync_close_shm(c->shm, own);
}

/* ------------------------------------------------------- export/import */

/* Wire form: the segment (mproc__sobj_export at offset 0), then u8 borrowed;
 * a borrowed lock follows as its own export (blob; its fd after ours). */
static int sc_export(const sc *c, mproc_buf *out, int *fds, size_t *nfds, size_t max_fds)
{
    size_t need = c->borrowed ? 2 : 1;
    if (*nfds > max_fds || max_fds - *nfds < need)
        return mproc__fail(MPROC_EINVAL, "shared value/array: no room for %zu descriptors", need);
    int rc = mproc__sobj_export(c->shm, mproc_shm_buf(c->shm), out, fds, nfds, max_fds);
    if (!rc)
        rc = mproc__put_u8(out, c->borrowed);
    if (rc || !c->borrowed)
        return rc;
    return mproc__lock_export_nested(c->lock, out, fds, nfds, max_fds);
}

static int bad(const char *why)
{
    return mproc__fail(MPROC_EPROTO, "shared value/array: malformed export (%s)", why);
}

/* Validate the header (copied once: the segment may change under us) and set
 * up the handle's private copies. */
static int sc_adopt(sc *c, uint32_t magic)
{
    char *base = mproc_shm_buf(c->shm);
    size_t segsize = mproc_shm_size(c->shm);
    sc_hdr h;
    memcpy(&h, base, sizeof h);
    if (h.magic != magic)
        return bad("wrong type");
    if (h.version != SC_VERSION)
        return bad("unknown layout version");
    size_t size = h.ctype < 128 ? mproc_ctype_size((mproc_ctype)h.ctype) : 0;
    if (!size || h.elsize != size)
        return bad("unknown element type or size");
    if (h.lockmode > SC_BORROWED)
        return bad("unknown lock mode");
    if (h.len == 0 || (magic == MPROC__SYNC_VALUE && h.len != 1))
        return bad("bad length");
    size_t off = data_offset(h.lockmode);
    if (h.data_off != off || off > segsize || h.len > (segsize - off) / size)
        return bad("data outside the segment");
    if (h.lockmode == MPROC_SHARED_RLOCK || h.lockmode == MPROC_SHARED_LOCK) {
        mproc__lock_st *ls = (mproc__lock_st *)(base + SC_LOCK_OFFSET);
        if (ls->magic != MPROC__SYNC_LOCK || ls->recursive != (h.lockmode == MPROC_SHARED_RLOCK))
            return bad("lock state");
        int rc = mproc__lock_wrap(c->shm, false, ls, &c->lock);
        if (rc)
            return rc;
        c->free_lock = true;
    }
    c->borrowed = h.lockmode == SC_BORROWED;
    c->data = base + off;
    c->t = (mproc_ctype)h.ctype;
    c->size = size;
    c->len = (size_t)h.len;
    return 0;
}

static int sc_import(const void *data, size_t len, const int *fds, size_t nfds, uint32_t magic,
                     sc *c)
{
    memset(c, 0, sizeof *c);
    if (!data || nfds < 1)
        return bad("no descriptor");
    void *st;
    mproc_reader r; /* (mproc_shm_type's import checks the size against the descriptor) */
    int rc = mproc__sobj_import(data, len, fds, nfds, magic, sizeof(sc_hdr), &c->shm, &st, &r);
    if (rc)
        return rc;
    uint8_t borrowed = 0;
    if (st != mproc_shm_buf(c->shm))
        rc = bad("header not at the start");
    if (!rc)
        rc = sc_adopt(c, magic);
    if (!rc && (mproc__get_u8(&r, &borrowed) || borrowed != c->borrowed))
        rc = bad("lock flag");
    if (!rc && nfds != (borrowed ? 2u : 1u))
        rc = bad("descriptor count");
    if (!rc && borrowed) {
        rc = mproc__lock_import_nested(&r, fds + 1, 1, &c->lock);
        c->free_lock = rc == 0;
    }
    if (rc) {
        sc_free(c);
        return rc;
    }
    close(fds[0]); /* a borrowed lock's import closed its own */
    return 0;
}

/* --------------------------------------------------------------- values */

#define VC(v) (&(v)->c)

static int value_new(mproc_shared_value **out, mproc_ctype t, const void *init,
                     const mproc_shared_opts *opts, const char *what)
{
    if (!out)
        return mproc__fail(MPROC_EINVAL, "%s: out is NULL", what);
    mproc_shared_value *v = malloc(sizeof *v);
    if (!v)
        return MPROC_ENOMEM;
    int rc = sc_new(VC(v), MPROC__SYNC_VALUE, t, 1, init, opts, what);
    if (rc) {
        free(v);
        return rc;
    }
    *out = v;
    return 0;
}

int mproc_shared_value_new(mproc_shared_value **out, mproc_ctype t, const void *init,
                           const mproc_shared_opts *opts)
{
    return value_new(out, t, init, opts, "shared_value_new");
}

int mproc_raw_value_new(mproc_shared_value **out, mproc_ctype t, const void *init)
{
    mproc_shared_opts o = {.lock = MPROC_SHARED_RAW};
    return value_new(out, t, init, &o, "raw_value_new");
}

void *mproc_shared_value_get_obj(const mproc_shared_value *v)
{
    return v ? v->c.data : NULL;
}

mproc_lock *mproc_shared_value_get_lock(const mproc_shared_value *v)
{
    return v ? v->c.lock : NULL;
}

mproc_ctype mproc_shared_value_ctype(const mproc_shared_value *v)
{
    return v ? v->c.t : (mproc_ctype)0;
}

/* Run one scalar operation on element `i` with the lock held. */
typedef enum { OP_LOAD, OP_STORE, OP_ADD_I, OP_ADD_F } sc_op;

static int scalar_op(const sc *c, size_t i, sc_op op, scalar *s, int64_t di, double df)
{
    void *p = (char *)c->data + i * c->size;
    if (!c->lock && (op == OP_ADD_I || op == OP_ADD_F)) {
        raw_add(c, p, op == OP_ADD_F, di, df, s);
        return 0;
    }
    bool held;
    int rc = sc_enter(c, &held);
    if (rc && !held)
        return rc;
    switch (op) {
    case OP_LOAD:
        el_load(p, c->size, s);
        break;
    case OP_STORE:
        el_store(p, c->size, s);
        break;
    case OP_ADD_I:
    case OP_ADD_F:
        el_load(p, c->size, s);
        add_to(s, c->t, op == OP_ADD_F, di, df);
        el_store(p, c->size, s);
        break;
    }
    sc_leave(c, held);
    return rc;
}

int mproc_shared_value_load(const mproc_shared_value *v, void *out)
{
    if (!v || !out)
        return mproc__fail(MPROC_EINVAL, "shared_value_load: NULL value or out");
    scalar s;
    int rc = scalar_op(VC(v), 0, OP_LOAD, &s, 0, 0);
    if (!rc || rc == MPROC_EOWNERDEAD)
        memcpy(out, &s, v->c.size);
    return rc;
}

int mproc_shared_value_store(mproc_shared_value *v, const void *in)
{
    if (!v || !in)
        return mproc__fail(MPROC_EINVAL, "shared_value_store: NULL value or in");
    scalar s = {0};
    memcpy(&s, in, v->c.size);
    return scalar_op(VC(v), 0, OP_STORE, &s, 0, 0);
}

int64_t mproc_shared_value_get_i64(const mproc_shared_value *v)
{
    scalar s;
    if (!v)
        return 0;
    int rc = scalar_op(VC(v), 0, OP_LOAD, &s, 0, 0);
    return rc && rc != MPROC_EOWNERDEAD ? 0 : to_i64(&s, v->c.t);
}

double mproc_shared_value_get_f64(const mproc_shared_value *v)
{
    scalar s;
    if (!v)
        return 0;
    int rc = scalar_op(VC(v), 0, OP_LOAD, &s, 0, 0);
    return rc && rc != MPROC_EOWNERDEAD ? 0 : to_f64(&s, v->c.t);
}

int mproc_shared_value_set_i64(mproc_shared_value *v, int64_t x)
{
    if (!v)
        return mproc__fail(MPROC_EINVAL, "shared_value_set_i64: NULL value");
    scalar s = {0};
    from_i64(&s, v->c.t, x);
    return scalar_op(VC(v), 0, OP_STORE, &s, 0, 0);
}

int mproc_shared_value_set_f64(mproc_shared_value *v, double x)
{
    if (!v)
        return mproc__fail(MPROC_EINVAL, "shared_value_set_f64: NULL value");
    scalar s = {0};
    from_f64(&s, v->c.t, x);
    return scalar_op(VC(v), 0, OP_STORE, &s, 0, 0);
}

int mproc_shared_value_add_i64(mproc_shared_value *v, int64_t delta, int64_t *result)
{
    if (!v)
        return mproc__fail(MPROC_EINVAL, "shared_value_add_i64: NULL value");
    scalar s;
    int rc = scalar_op(VC(v), 0, OP_ADD_I, &s, delta, 0);
    if (result && (!rc || rc == MPROC_EOWNERDEAD))
        *result = to_i64(&s, v->c.t);
    return rc;
}

int mproc_shared_value_add_f64(mproc_shared_value *v, double delta, double *result)
{
    if (!v)
        return mproc__fail(MPROC_EINVAL, "shared_value_add_f64: NULL value");
    scalar s;
    int rc = scalar_op(VC(v), 0, OP_ADD_F, &s, 0, delta);
    if (result && (!rc || rc == MPROC_EOWNERDEAD))
        *result = to_f64(&s, v->c.t);
    return rc;
}

void mproc_shared_value_free(mproc_shared_value *v)
{
    if (!v)
        return;
    sc_free(VC(v));
    free(v);
}

static int value_export(const void *obj, mproc_buf *out, int *fds, size_t *nfds, size_t max_fds)
{
    return sc_export(&((const mproc_shared_value *)obj)->c, out, fds, nfds, max_fds);
}

static int value_import(const void *data, size_t len, const int *fds, size_t nfds, void **obj)
{
    mproc_shared_value *v = malloc(sizeof *v);
    if (!v)
        return MPROC_ENOMEM;
    int rc = sc_import(data, len, fds, nfds, MPROC__SYNC_VALUE, VC(v));
    if (rc) {
        free(v);
        return rc;
    }
    *obj = v;
    return 0;
}

static void value_release(void *obj)
{
    mproc_shared_value_free(obj);
}

const mproc_shareable_type mproc_shared_value_type = {"mproc.shared_value", value_export,
                                                      value_import, value_release};

/* --------------------------------------------------------------- arrays */

static int array_new(mproc_shared_array **out, mproc_ctype t, size_t len, const void *init,
                     const mproc_shared_opts *opts, const char *what)
{
    if (!out)
        return mproc__fail(MPROC_EINVAL, "%s: out is NULL", what);
    mproc_shared_array *a = malloc(sizeof *a);
    if (!a)
        return MPROC_ENOMEM;
    int rc = sc_new(VC(a), MPROC__SYNC_ARRAY, t, len, init, opts, what);
    if (rc) {
        free(a);
        return rc;
    }
    *out = a;
    return 0;
}

int mproc_shared_array_new(mproc_shared_array **out, mproc_ctype t, size_t len, const void *init,
                           const mproc_shared_opts *opts)
{
    return array_new(out, t, len, init, opts, "shared_array_new");
}

int mproc_raw_array_new(mproc_shared_array **out, mproc_ctype t, size_t len, const void *init)
{
    mproc_shared_opts o = {.lock = MPROC_SHARED_RAW};
    return array_new(out, t, len, init, &o, "raw_array_new");
}

void *mproc_shared_array_get_obj(const mproc_shared_array *a)
{
    return a ? a->c.data : NULL;
}

mproc_lock *mproc_shared_array_get_lock(const mproc_shared_array *a)
{
    return a ? a->c.lock : NULL;
}

mproc_ctype mproc_shared_array_ctype(const mproc_shared_array *a)
{
    return a ? a->c.t : (mproc_ctype)0;
}

size_t mproc_shared_array_len(const mproc_shared_array *a)
{
    return a ? a->c.len : 0;
}

static int check_range(const sc *c, size_t start, size_t count, const void *buf, const char *what)
{
    if (!buf && count)
        return mproc__fail(MPROC_EINVAL, "%s: NULL buffer", what);
    if (start > c->len || count > c->len - start)
        return mproc__fail(MPROC_ERANGE, "%s: [%zu, %zu+%zu) is outside [0, %zu)", what, start,
                           start, count, c->len);
    return 0;
}

/* A slice copy: memcpy under the lock; element by element (untorn) when raw. */
static int copy_range(const sc *c, size_t count, void *dst, const void *src, bool to_shared)
{
    if (count == 0)
        return 0;
    bool held;
    int rc = sc_enter(c, &held);
    if (rc && !held)
        return rc;
    if (c->lock) {
        memcpy(dst, src, count * c->size);
    } else {
        for (size_t k = 0; k < count; k++) {
            scalar s;
            const char *from = (const char *)src + k * c->size;
            char *to = (char *)dst + k * c->size;
            if (to_shared) {
                memcpy(&s, from, c->size);
                el_store(to, c->size, &s);
            } else {
                el_load(from, c->size, &s);
                memcpy(to, &s, c->size);
            }
        }
    }
    sc_leave(c, held);
    return rc;
}

int mproc_shared_array_read(const mproc_shared_array *a, size_t start, size_t count, void *out)
{
    if (!a)
        return mproc__fail(MPROC_EINVAL, "shared_array_read: NULL array");
    int rc = check_range(&a->c, start, count, out, "shared_array_read");
    if (rc)
        return rc;
    return copy_range(&a->c, count, out, (const char *)a->c.data + start * a->c.size, false);
}

int mproc_shared_array_write(mproc_shared_array *a, size_t start, size_t count, const void *in)
{
    if (!a)
        return mproc__fail(MPROC_EINVAL, "shared_array_write: NULL array");
    int rc = check_range(&a->c, start, count, in, "shared_array_write");
    if (rc)
        return rc;
    return copy_range(&a->c, count, (char *)a->c.data + start * a->c.size, in, true);
}

int64_t mproc_shared_array_get_i64(const mproc_shared_array *a, size_t i)
{
    scalar s;
    if (!a || i >= a->c.len)
        return 0;
    int rc = scalar_op(VC(a), i, OP_LOAD, &s, 0, 0);
    return rc && rc != MPROC_EOWNERDEAD ? 0 : to_i64(&s, a->c.t);
}

double mproc_shared_array_get_f64(const mproc_shared_array *a, size_t i)
{
    scalar s;
    if (!a || i >= a->c.len)
        return 0;
    int rc = scalar_op(VC(a), i, OP_LOAD, &s, 0, 0);
    return rc && rc != MPROC_EOWNERDEAD ? 0 : to_f64(&s, a->c.t);
}

int mproc_shared_array_set_i64(mproc_shared_array *a, size_t i, int64_t x)
{
    if (!a || i >= a->c.len)
        return mproc__fail(a ? MPROC_ERANGE : MPROC_EINVAL, "shared_array_set_i64: %s",
                           a ? "index out of range" : "NULL array");
    scalar s = {0};
    from_i64(&s, a->c.t, x);
    return scalar_op(VC(a), i, OP_STORE, &s, 0, 0);
}

int mproc_shared_array_set_f64(mproc_shared_array *a, size_t i, double x)
{
    if (!a || i >= a->c.len)
        return mproc__fail(a ? MPROC_ERANGE : MPROC_EINVAL, "shared_array_set_f64: %s",
                           a ? "index out of range" : "NULL array");
    scalar s = {0};
    from_f64(&s, a->c.t, x);
    return scalar_op(VC(a), i, OP_STORE, &s, 0, 0);
}

void mproc_shared_array_free(mproc_shared_array *a)
{
    if (!a)
        return;
    sc_free(VC(a));
    free(a);
}

static int array_export(const void *obj, mproc_buf *out, int *fds, size_t *nfds, size_t max_fds)
{
    return sc_export(&((const mproc_shared_array *)obj)->c, out, fds, nfds, max_fds);
}

static int array_import(const void *data, size_t len, const int *fds, size_t nfds, void **obj)
{
    mproc_shared_array *a = malloc(sizeof *a);
    if (!a)
        return MPROC_ENOMEM;
    int rc = sc_import(data, len, fds, nfds, MPROC__SYNC_ARRAY, VC(a));
    if (rc) {
        free(a);
        return rc;
    }
    *obj = a;
    return 0;
}

static void array_release(void *obj)
{
    mproc_shared_array_free(obj);
}

const mproc_shareable_type mproc_shared_array_type = {"mproc.shared_array", array_export,
                                                      array_import, array_release};
