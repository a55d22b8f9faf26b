/* msgpack.c — MessagePack for mproc values. Encoding goes through msgpack-c's
 * packer; decoding is our own iterative, bounded parser (see docs/value.md).
 * Ext types travel as EXT values, uninterpreted. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "codec_int.h"

/* ------------------------------------------------------------ encode */

static int buf_write(void *data, const char *p, size_t n)
{
    return mproc_buf_append(data, p, n) == 0 ? 0 : -1;
}

static int enc(msgpack_packer *pk, const mproc_value *v, unsigned depth)
{
    if (depth > MPROC__MAX_NEST)
        return mproc__fail(MPROC_EINVAL, "msgpack: value nested deeper than %d", MPROC__MAX_NEST);
    int r = 0;
    switch ((int)v->type) {
    case MPROC_V_NIL:
        r = msgpack_pack_nil(pk);
        break;
    case MPROC_V_BOOL:
        r = v->u.b ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        break;
    case MPROC_V_INT:
        r = msgpack_pack_int64(pk, v->u.i);
        break;
    case MPROC_V_FLOAT:
        r = msgpack_pack_double(pk, v->u.d);
        break;
    case MPROC_V_STR:
    case MPROC_V_BYTES:
        if (v->u.s.n > UINT32_MAX)
            return mproc__fail(MPROC_EMSGSIZE, "msgpack: str/bytes longer than 4 GiB");
        if (v->type == MPROC_V_STR)
            r = msgpack_pack_str(pk, v->u.s.n) || msgpack_pack_str_body(pk, v->u.s.p, v->u.s.n);
        else
            r = msgpack_pack_bin(pk, v->u.s.n) || msgpack_pack_bin_body(pk, v->u.s.p, v->u.s.n);
        break;
    case MPROC_V_EXT:
        if (v->u.s.n > UINT32_MAX)
            return mproc__fail(MPROC_EMSGSIZE, "msgpack: ext longer than 4 GiB");
        r = msgpack_pack_ext(pk, v->u.s.n, v->u.s.ext) ||
            msgpack_pack_ext_body(pk, v->u.s.p, v->u.s.n);
        break;
    case MPROC_V_ERROR: {
        size_t tl = strlen(v->u.e.type), ml = strlen(v->u.e.msg);
        if (tl > UINT32_MAX || ml > UINT32_MAX)
            return mproc__fail(MPROC_EMSGSIZE, "msgpack: error text longer than 4 GiB");
        r = msgpack_pack_map(pk, 2) || msgpack_pack_str_with_body(pk, "__error__", 9) ||
            msgpack_pack_str_with_body(pk, v->u.e.type, tl) ||
            msgpack_pack_str_with_body(pk, "message", 7) ||
            msgpack_pack_str_with_body(pk, v->u.e.msg, ml);
        break;
    }
    case MPROC_V_LIST:
        if (v->u.l.n > UINT32_MAX)
            return mproc__fail(MPROC_EMSGSIZE, "msgpack: list longer than 2^32-1");
        if (msgpack_pack_array(pk, v->u.l.n))
            return MPROC_ENOMEM;
        for (size_t i = 0; i < v->u.l.n; i++) {
            int rc = enc(pk, v->u.l.v[i], depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    case MPROC_V_MAP:
        if (v->u.m.n > UINT32_MAX)
            return mproc__fail(MPROC_EMSGSIZE, "msgpack: map larger than 2^32-1");
        if (msgpack_pack_map(pk, v->u.m.n))
            return MPROC_ENOMEM;
        for (size_t i = 0; i < v->u.m.n; i++) {
            int rc = enc(pk, v->u.m.e[i].key, depth + 1);
            if (!rc)
                rc = enc(pk, v->u.m.e[i].val, depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    default:
        return mproc__fail(MPROC_EINVAL, "msgpack: unknown value type %d", (int)v->type);
    }
    return r ? MPROC_ENOMEM : 0; /* the only write failure is our buffer's */
}

int mproc_msgpack_encode(const mproc_value *v, mproc_buf *out)
{
    if (!v || !out)
        return mproc__fail(MPROC_EINVAL, "msgpack_encode: NULL argument");
    size_t mark = out->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    int rc = enc(&pk, v, 0);
    if (rc)
        out->len = mark; /* leave the buffer as it was */
    return rc;
}

/* ------------------------------------------------------------ decode */

typedef struct {
    mproc_value *c;   /* the list or map being filled */
    mproc_value *key; /* map: a key waiting for its value */
    size_t left;      /* items (list) or entries (map) still to come */
} frame;

typedef struct {
    const uint8_t *p, *end;
    mproc_decode_limits lim;
    size_t items, bytes;
    frame *st;
    size_t n, cap;
} dec;

static uint64_t be(const uint8_t *p, size_t n)
{
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++)
        x = (x << 8) | p[i];
    return x;
}

static int need(dec *d, size_t n)
{
    if ((size_t)(d->end - d->p) < n) {
        return mproc__fail(MPROC_EPROTO, "msgpack: truncated input");
    }
    return 0;
}

/* Read an n-byte big-endian unsigned field. */
static int field(dec *d, size_t n, uint64_t *x)
{
    int rc = need(d, n);
    if (rc)
        return rc;
    *x = be(d->p, n);
    d->p += n;
    return 0;
}

static int scalar(mproc_value *v, mproc_value **out)
{
    if (!v)
        return MPROC_ENOMEM;
    *out = v;
    return 0;
}

static int blob(dec *d, uint64_t n, mproc_vtype t, mproc_value **out)
{
    const char *what = t == MPROC_V_STR ? "str" : "bin";
    int8_t code = 0;
    if (t == MPROC_V_EXT) { /* the type code precedes the payload */
        what = "ext";
        int rc = need(d, 1);
        if (rc)
            return rc;
        code = (int8_t)*d->p++;
    }
    if (n > d->lim.max_bytes - d->bytes) /* over the limit before truncated: the precise code */
        return mproc__fail(MPROC_EMSGSIZE, "msgpack: more than %zu bytes of str/bin/ext",
                           d->lim.max_bytes);
    if (n > (uint64_t)(d->end - d->p))
        return mproc__fail(MPROC_EPROTO, "msgpack: %s of %llu bytes is truncated", what,
                           (unsigned long long)n);
    d->bytes += n;
    if (t == MPROC_V_STR && !mproc__utf8_valid(d->p, n))
        return mproc__fail(MPROC_EPROTO, "msgpack: str is not valid UTF-8");
    mproc_value *v = t == MPROC_V_STR   ? mproc_value_strn((const char *)d->p, n)
                     : t == MPROC_V_EXT ? mproc_value_ext(code, d->p, n)
                                        : mproc_value_bytes(d->p, n);
    d->p += n;
    return scalar(v, out);
}

/* Open a container of n entries; an empty one is complete at once. */
static int container(dec *d, uint64_t n, bool map, mproc_value **out)
{
    uint64_t objs = map ? n * 2 : n; /* n < 2^32: no overflow */
    /* Every object takes at least one byte: refuse impossible counts before
     * anything is allocated for them. */
    if (objs > d->lim.max_items - d->items)
        return mproc__fail(MPROC_EMSGSIZE, "msgpack: more than %zu items", d->lim.max_items);
    if (objs > (uint64_t)(d->end - d->p))
        return mproc__fail(MPROC_EPROTO, "msgpack: %s of %llu entries is truncated",
                           map ? "map" : "array", (unsigned long long)n);
    if (d->n + 1 > d->lim.max_depth)
        return mproc__fail(MPROC_EPROTO, "msgpack: nesting deeper than %zu", d->lim.max_depth);
    mproc_value *c = map ? mproc_value_map() : mproc_value_list();
    if (!c)
        return MPROC_ENOMEM;
    if (!n) {
        *out = c;
        return 0;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 16;
        frame *st = realloc(d->st, cap * sizeof *st);
        if (!st) {
            mproc_value_free(c);
            return MPROC_ENOMEM;
        }
        d->st = st;
        d->cap = cap;
    }
    d->st[d->n++] = (frame){c, NULL, (size_t)n};
    return 0; /* *out stays NULL: the container is open */
}

static int intval(int64_t i, mproc_value **out) { return scalar(mproc_value_int(i), out); }

/* One object: a scalar in *out, or an opened container (*out NULL). */
static int item(dec *d, mproc_value **out)
{
    *out = NULL;
    if (d->items >= d->lim.max_items)
        return mproc__fail(MPROC_EMSGSIZE, "msgpack: more than %zu items", d->lim.max_items);
    d->items++;
    int rc = need(d, 1);
    if (rc)
        return rc;
    uint8_t c = *d->p++;
    uint64_t x = 0;
    if (c <= 0x7f)
        return intval(c, out);
    if (c >= 0xe0)
        return intval((int8_t)c, out);
    if (c >= 0xa0 && c <= 0xbf)
        return blob(d, c & 0x1f, MPROC_V_STR, out);
    if (c >= 0x90 && c <= 0x9f)
        return container(d, c & 0x0f, false, out);
    if (c >= 0x80 && c <= 0x8f)
        return container(d, c & 0x0f, true, out);
    switch (c) {
    case 0xc0:
        return scalar(mproc_value_nil(), out);
    case 0xc2:
    case 0xc3:
        return scalar(mproc_value_bool(c == 0xc3), out);
    case 0xc4: case 0xc5: case 0xc6: /* bin 8/16/32 */
        if ((rc = field(d, (size_t)1 << (c - 0xc4), &x)))
            return rc;
        return blob(d, x, MPROC_V_BYTES, out);
    case 0xd9: case 0xda: case 0xdb: /* str 8/16/32 */
        if ((rc = field(d, (size_t)1 << (c - 0xd9), &x)))
            return rc;
        return blob(d, x, MPROC_V_STR, out);
    case 0xdc: case 0xdd: /* array 16/32 */
        if ((rc = field(d, c == 0xdc ? 2 : 4, &x)))
            return rc;
        return container(d, x, false, out);
    case 0xde: case 0xdf: /* map 16/32 */
        if ((rc = field(d, c == 0xde ? 2 : 4, &x)))
            return rc;
        return container(d, x, true, out);
    case 0xca: { /* float 32 */
        if ((rc = field(d, 4, &x)))
            return rc;
        uint32_t u = (uint32_t)x;
        float f;
        memcpy(&f, &u, 4);
        return scalar(mproc_value_float(f), out);
    }
    case 0xcb: {
        if ((rc = field(d, 8, &x)))
            return rc;
        double f;
        memcpy(&f, &x, 8);
        return scalar(mproc_value_float(f), out);
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf: /* uint 8..64 */
        if ((rc = field(d, (size_t)1 << (c - 0xcc), &x)))
            return rc;
        if (x > INT64_MAX)
            return mproc__fail(MPROC_ERANGE, "msgpack: uint64 %llu does not fit int64",
                               (unsigned long long)x);
        return intval((int64_t)x, out);
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: { /* int 8..64 */
        size_t n = (size_t)1 << (c - 0xd0);
        if ((rc = field(d, n, &x)))
            return rc;
        if (n < 8 && (x >> (8 * n - 1)))
            x |= ~(uint64_t)0 << (8 * n); /* sign-extend */
        return intval((int64_t)x, out);
    }
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: /* fixext 1..16 */
        return blob(d, (uint64_t)1 << (c - 0xd4), MPROC_V_EXT, out);
    case 0xc7: case 0xc8: case 0xc9: /* ext 8/16/32 */
        if ((rc = field(d, (size_t)1 << (c - 0xc7), &x)))
            return rc;
        return blob(d, x, MPROC_V_EXT, out);
    default:
        return mproc__fail(MPROC_EPROTO, "msgpack: invalid type byte 0x%02x", c);
    }
}

/* {"__error__": type, "message": msg} is how an ERROR travels. */
static mproc_value *maybe_error(mproc_value *m)
{
    if (m->u.m.n != 2)
        return m;
    const mproc_value *k0 = m->u.m.e[0].key, *v0 = m->u.m.e[0].val;
    const mproc_value *k1 = m->u.m.e[1].key, *v1 = m->u.m.e[1].val;
    if (k0->type != MPROC_V_STR || k1->type != MPROC_V_STR || v0->type != MPROC_V_STR ||
        v1->type != MPROC_V_STR || strcmp(k0->u.s.p, "__error__") != 0 || k0->u.s.n != 9 ||
        strcmp(k1->u.s.p, "message") != 0 || k1->u.s.n != 7 || v0->u.s.n == 0 ||
        strlen(v0->u.s.p) != v0->u.s.n || strlen(v1->u.s.p) != v1->u.s.n)
        return m;
    mproc_value *e = mproc_value_error(v0->u.s.p, v1->u.s.p);
    if (!e)
        return m; /* out of memory: keep the map rather than fail */
    mproc_value_free(m);
    return e;
}

int mproc_msgpack_decode(const void *data, size_t len, const mproc_decode_limits *lim,
                         mproc_value **out)
{
    if (!out || (!data && len))
        return mproc__fail(MPROC_EINVAL, "msgpack_decode: NULL argument");
    *out = NULL;
    dec d = {.p = data, .end = (const uint8_t *)data + len, .lim = mproc__limits(lim)};
    mproc_value *root = NULL;
    int rc = 0;
    while (!root) {
        mproc_value *v;
        if ((rc = item(&d, &v)))
            goto fail;
        /* Hand finished values up the stack; a container finishes with its last entry. */
        while (v) {
            if (!d.n) {
                root = v;
                break;
            }
            frame *f = &d.st[d.n - 1];
            if (f->c->type == MPROC_V_MAP) {
                if (!f->key) {
                    if (v->type == MPROC_V_LIST || v->type == MPROC_V_MAP ||
                        v->type == MPROC_V_ERROR) {
                        mproc_value_free(v);
                        rc = mproc__fail(MPROC_EPROTO, "msgpack: map key is an array or map");
                        goto fail;
                    }
                    f->key = v;
                    break;
                }
                mproc_value *k = f->key;
                f->key = NULL;
                if ((rc = mproc_value_map_set(f->c, k, v)))
                    goto fail;
            } else if ((rc = mproc_value_append(f->c, v))) {
                goto fail;
            }
            if (--f->left)
                break;
            v = f->c;
            d.n--;
            if (v->type == MPROC_V_MAP)
                v = maybe_error(v);
        }
    }
    if (d.p != d.end) {
        rc = mproc__fail(MPROC_EPROTO, "msgpack: %zu trailing bytes after the object",
                         (size_t)(d.end - d.p));
        goto fail;
    }
    free(d.st);
    *out = root;
    return 0;
fail:
    /* Each open container is owned only by its frame (not yet attached). */
    for (size_t i = 0; i < d.n; i++) {
        mproc_value_free(d.st[i].key);
        mproc_value_free(d.st[i].c);
    }
    free(d.st);
    mproc_value_free(root);
    return rc;
}
