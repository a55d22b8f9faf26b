/* value.c — the dynamic value tree: builders, accessors, deep copy/equality/
 * free, and a Python-style repr. Maps keep insertion order with a hash index. */
#include <assert.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "codec_int.h"

/* ------------------------------------------------------------ nodes */

mproc_value *mproc__value_alloc(mproc_vtype t)
{
    mproc_value *v = calloc(1, sizeof *v);
    if (v) {
        v->type = t;
        v->height = (t == MPROC_V_LIST || t == MPROC_V_MAP) ? 1 : 0;
    }
    return v;
}

mproc_value *mproc__value_take_str(mproc_vtype t, char *p, size_t n)
{
    mproc_value *v = mproc__value_alloc(t);
    if (!v) {
        free(p);
        return NULL;
    }
    p[n] = 0;
    v->u.s.p = p;
    v->u.s.n = n;
    return v;
}

bool mproc__utf8_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp, min;
        if (c >= 0xc2 && c <= 0xdf)
            k = 1, cp = c & 0x1f, min = 0x80;
        else if (c >= 0xe0 && c <= 0xef)
            k = 2, cp = c & 0x0f, min = 0x800;
        else if (c >= 0xf0 && c <= 0xf4)
            k = 3, cp = c & 0x07, min = 0x10000;
        else
            return false;
        if (n - i <= k)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

static mproc_value *new_blob(mproc_vtype t, const void *p, size_t len)
{
    if (len == SIZE_MAX)
        return NULL;
    char *c = malloc(len + 1);
    if (!c)
        return NULL;
    if (len)
        memcpy(c, p, len);
    return mproc__value_take_str(t, c, len);
}

mproc_value *mproc_value_nil(void) { return mproc__value_alloc(MPROC_V_NIL); }

mproc_value *mproc_value_bool(bool b)
{
    mproc_value *v = mproc__value_alloc(MPROC_V_BOOL);
    if (v)
        v->u.b = b;
    return v;
}

mproc_value *mproc_value_int(int64_t i)
{
    mproc_value *v = mproc__value_alloc(MPROC_V_INT);
    if (v)
        v->u.i = i;
    return v;
}

mproc_value *mproc_value_float(double d)
{
    mproc_value *v = mproc__value_alloc(MPROC_V_FLOAT);
    if (v)
        v->u.d = d;
    return v;
}

mproc_value *mproc_value_str(const char *s) { return s ? mproc_value_strn(s, strlen(s)) : NULL; }

mproc_value *mproc_value_strn(const char *s, size_t len)
{
    if ((!s && len) || !mproc__utf8_valid((const uint8_t *)s, len))
        return NULL;
    return new_blob(MPROC_V_STR, s, len);
}

mproc_value *mproc_value_bytes(const void *p, size_t len)
{
    if (!p && len)
        return NULL;
    return new_blob(MPROC_V_BYTES, p, len);
}

mproc_value *mproc_value_ext(int8_t type, const void *p, size_t len)
{
    if (!p && len)
        return NULL;
    mproc_value *v = new_blob(MPROC_V_EXT, p, len);
    if (v)
        v->u.s.ext = type;
    return v;
}

mproc_value *mproc_value_list(void) { return mproc__value_alloc(MPROC_V_LIST); }
mproc_value *mproc_value_map(void) { return mproc__value_alloc(MPROC_V_MAP); }

mproc_value *mproc_value_error(const char *type, const char *message)
{
    if (!type || !*type)
        return NULL;
    if (!message)
        message = "";
    if (!mproc__utf8_valid((const uint8_t *)type, strlen(type)) ||
        !mproc__utf8_valid((const uint8_t *)message, strlen(message)))
        return NULL;
    mproc_value *v = mproc__value_alloc(MPROC_V_ERROR);
    if (!v)
        return NULL;
    v->u.e.type = strdup(type);
    v->u.e.msg = strdup(message);
    if (!v->u.e.type || !v->u.e.msg) {
        mproc_value_free(v);
        return NULL;
    }
    return v;
}

static void grow_height(mproc_value *parent, const mproc_value *child)
{
    if (child->height >= parent->height)
        parent->height = child->height + 1;
}

/* Height after `gone` left `parent`: only a child as high as the parent
 * allows can lower it, so removing a scalar never costs a scan. */
static void shrink_height(mproc_value *parent, const mproc_value *gone)
{
    if (gone->height + 1 < parent->height)
        return;
    uint32_t h = 1;
    if (parent->type == MPROC_V_LIST) {
        for (size_t i = 0; i < parent->u.l.n; i++)
            if (parent->u.l.v[i]->height + 1 > h)
                h = parent->u.l.v[i]->height + 1;
    } else {
        for (size_t i = 0; i < parent->u.m.n; i++) {
            if (parent->u.m.e[i].key->height + 1 > h)
                h = parent->u.m.e[i].key->height + 1;
            if (parent->u.m.e[i].val->height + 1 > h)
                h = parent->u.m.e[i].val->height + 1;
        }
    }
    parent->height = h;
}

/* Checks shared by append and insert; frees `item` on failure. */
static int list_room(mproc_value *list, mproc_value *item, const char *what)
{
    if (!item || item == list) /* a list inside itself would be a cycle: never freed twice */
        return mproc__fail(MPROC_EINVAL, "%s: NULL item or the list itself", what);
    if (!list || list->type != MPROC_V_LIST) {
        mproc_value_free(item);
        return mproc__fail(MPROC_EINVAL, "%s: not a list", what);
    }
    if (list->u.l.n == list->u.l.cap) {
        size_t cap = list->u.l.cap ? list->u.l.cap * 2 : 4;
        mproc_value **v = cap > SIZE_MAX / sizeof *v ? NULL : realloc(list->u.l.v, cap * sizeof *v);
        if (!v) {
            mproc_value_free(item);
            return MPROC_ENOMEM;
        }
        list->u.l.v = v;
        list->u.l.cap = cap;
    }
    return 0;
}

int mproc_value_append(mproc_value *list, mproc_value *item)
{
    int rc = list_room(list, item, "append");
    if (rc)
        return rc;
    list->u.l.v[list->u.l.n++] = item;
    grow_height(list, item);
    return 0;
}

int mproc_value_insert(mproc_value *list, size_t i, mproc_value *item)
{
    int rc = list_room(list, item, "insert");
    if (rc)
        return rc;
    size_t n = list->u.l.n;
    if (i > n)
        i = n;
    memmove(list->u.l.v + i + 1, list->u.l.v + i, (n - i) * sizeof *list->u.l.v);
    list->u.l.v[i] = item;
    list->u.l.n = n + 1;
    grow_height(list, item);
    return 0;
}

mproc_value *mproc_value_take_at(mproc_value *list, size_t i)
{
    if (!list || list->type != MPROC_V_LIST || i >= list->u.l.n)
        return NULL;
    mproc_value *item = list->u.l.v[i];
    size_t n = --list->u.l.n;
    memmove(list->u.l.v + i, list->u.l.v + i + 1, (n - i) * sizeof *list->u.l.v);
    shrink_height(list, item);
    return item;
}

mproc_value *mproc_value_replace_at(mproc_value *list, size_t i, mproc_value *item)
{
    if (!item || item == list || !list || list->type != MPROC_V_LIST || i >= list->u.l.n) {
        if (item != list)
            mproc_value_free(item);
        return NULL;
    }
    mproc_value *old = list->u.l.v[i];
    list->u.l.v[i] = item;
    shrink_height(list, old);
    grow_height(list, item);
    return old;
}

int mproc_value_reverse(mproc_value *list)
{
    if (!list || list->type != MPROC_V_LIST)
        return mproc__fail(MPROC_EINVAL, "reverse: not a list");
    mproc_value **v = list->u.l.v;
    for (size_t i = 0, j = list->u.l.n; i + 1 < j; i++, j--) {
        mproc_value *t = v[i];
        v[i] = v[j - 1];
        v[j - 1] = t;
    }
    return 0;
}

/* ------------------------------------------------------------ maps */

static bool hashable(const mproc_value *k)
{
    return k->type != MPROC_V_LIST && k->type != MPROC_V_MAP && k->type != MPROC_V_ERROR &&
           k->type != MPROC__V_GLOBAL;
}

/* Map keys come from peers, so their hash is keyed (SipHash-2-4 with a random
 * per-process key): an unkeyed hash lets a sender build thousands of keys
 * that share one probe chain and make decoding quadratic. */
static uint64_t sip_k[2];
static pthread_once_t sip_once = PTHREAD_ONCE_INIT;

static void sip_init(void)
{
    if (getrandom(sip_k, sizeof sip_k, GRND_NONBLOCK) != (ssize_t)sizeof sip_k) {
        sip_k[0] = (uint64_t)(mproc_monotonic() * 1e9) * 0x9e3779b97f4a7c15ull;
        sip_k[1] = (uint64_t)getpid() * 0xc2b2ae3d27d4eb4full ^ (uint64_t)(uintptr_t)&sip_k;
    }
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                        \
    do {                                                                                \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                       \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                           \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                           \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                       \
    } while (0)

static uint64_t siphash(uint64_t salt, const void *p, size_t n)
{
    pthread_once(&sip_once, sip_init);
    uint64_t k0 = sip_k[0] ^ salt, k1 = sip_k[1];
    uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1;
    uint64_t v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
    const uint8_t *b = p;
    size_t full = n & ~(size_t)7;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t m;
        memcpy(&m, b + i, 8);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t last = (uint64_t)n << 56;
    for (size_t i = 0; i < (n & 7); i++)
        last |= (uint64_t)b[full + i] << (8 * i);
    v3 ^= last;
    SIPROUND;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t key_hash(const mproc_value *k)
{
    uint64_t salt = (uint64_t)k->type; /* equal keys have equal types */
    switch (k->type) {
    case MPROC_V_BOOL: {
        uint8_t b = k->u.b;
        return siphash(salt, &b, 1);
    }
    case MPROC_V_INT:
        return siphash(salt, &k->u.i, sizeof k->u.i);
    case MPROC_V_FLOAT: {
        double d = k->u.d;
        if (d == 0)
            d = 0; /* -0.0 == 0.0 */
        if (isnan(d))
            return siphash(salt, "nan", 3);
        return siphash(salt, &d, sizeof d);
    }
    case MPROC_V_STR:
    case MPROC_V_BYTES:
        return siphash(salt, k->u.s.p, k->u.s.n);
    case MPROC_V_EXT:
        return siphash(salt ^ ((uint64_t)(uint8_t)k->u.s.ext << 8), k->u.s.p, k->u.s.n);
    default:
        return salt;
    }
}

static int index_rebuild(mproc_value *m, size_t icap)
{
    uint32_t *ix = calloc(icap, sizeof *ix);
    if (!ix)
        return MPROC_ENOMEM;
    for (size_t i = 0; i < m->u.m.n; i++) {
        size_t s = (size_t)key_hash(m->u.m.e[i].key) & (icap - 1);
        while (ix[s])
            s = (s + 1) & (icap - 1);
        ix[s] = (uint32_t)(i + 1);
    }
    free(m->u.m.index);
    m->u.m.index = ix;
    m->u.m.icap = icap;
    return 0;
}

/* Index of an entry whose key equals k, or SIZE_MAX. With an index, *slot
 * (if not NULL) receives the empty index slot where the probe for a missing
 * key ended: where that key goes, so an insert hashes it only once. */
static size_t map_probe(const mproc_value *m, const mproc_value *k, size_t *slot)
{
    if (!m->u.m.icap) {
        for (size_t i = 0; i < m->u.m.n; i++)
            if (mproc_value_equal(m->u.m.e[i].key, k))
                return i;
        return SIZE_MAX;
    }
    size_t mask = m->u.m.icap - 1, s = (size_t)key_hash(k) & mask;
    for (; m->u.m.index[s]; s = (s + 1) & mask) {
        size_t i = m->u.m.index[s] - 1;
        if (mproc_value_equal(m->u.m.e[i].key, k))
            return i;
    }
    if (slot)
        *slot = s;
    return SIZE_MAX;
}

static size_t map_find(const mproc_value *m, const mproc_value *k) { return map_probe(m, k, NULL); }

int mproc__map_set(mproc_value *map, mproc_value *key, mproc_value *val, mproc_value **old_key,
                   mproc_value **old)
{
    int rc = 0;
    *old = *old_key = NULL;
    if (!key || !val) {
        rc = mproc__fail(MPROC_EINVAL, "map_set: NULL key or value");
        goto fail;
    }
    if (!map || map->type != MPROC_V_MAP) {
        rc = mproc__fail(MPROC_EINVAL, "map_set: not a map");
        goto fail;
    }
    if (!hashable(key)) {
        rc = mproc__fail(MPROC_EINVAL, "map_set: a list, map or error cannot be a key");
        goto fail;
    }
    size_t slot = 0, i = map_probe(map, key, &slot);
    if (i != SIZE_MAX) {
        *old_key = key; /* Python keeps the first key object too */
        *old = map->u.m.e[i].val;
        map->u.m.e[i].val = val;
        grow_height(map, val);
        return 0;
    }
    if (map->u.m.n >= UINT32_MAX - 1) {
        rc = mproc__fail(MPROC_ENOMEM, "map_set: too many entries");
        goto fail;
    }
    if (map->u.m.n == map->u.m.cap) {
        size_t cap = map->u.m.cap ? map->u.m.cap * 2 : 4;
        mproc__entry *e = cap > SIZE_MAX / sizeof *e ? NULL : realloc(map->u.m.e, cap * sizeof *e);
        if (!e) {
            rc = MPROC_ENOMEM;
            goto fail;
        }
        map->u.m.e = e;
        map->u.m.cap = cap;
    }
    size_t n = map->u.m.n;
    map->u.m.e[n].key = key;
    map->u.m.e[n].val = val;
    map->u.m.n = n + 1;
    if (map->u.m.icap || n + 1 > 8) {
        /* keep the load factor at or below 1/2 */
        if ((n + 1) * 2 > map->u.m.icap) {
            size_t icap = 16;
            while (icap < (n + 1) * 2)
                icap *= 2;
            if (index_rebuild(map, icap) != 0) {
                map->u.m.n = n;
                rc = MPROC_ENOMEM;
                goto fail;
            }
        } else {
            assert(!map->u.m.index[slot]); /* the probe's end, still empty */
            map->u.m.index[slot] = (uint32_t)(n + 1);
        }
    }
    grow_height(map, key);
    grow_height(map, val);
    return 0;
fail:
    mproc_value_free(key);
    mproc_value_free(val);
    return rc;
}

int mproc_value_map_set(mproc_value *map, mproc_value *key, mproc_value *val)
{
    mproc_value *old, *old_key;
    int rc = mproc__map_set(map, key, val, &old_key, &old);
    mproc_value_free(old_key);
    mproc_value_free(old);
    return rc;
}

int mproc_value_map_put(mproc_value *map, mproc_value *key, mproc_value *val, mproc_value **old)
{
    mproc_value *o, *old_key;
    int rc = mproc__map_set(map, key, val, &old_key, &o);
    mproc_value_free(old_key);
    if (old)
        *old = o;
    else
        mproc_value_free(o);
    return rc;
}

mproc_value *mproc_value_map_find(const mproc_value *map, const mproc_value *key)
{
    if (!map || map->type != MPROC_V_MAP || !key)
        return NULL;
    size_t i = map_find(map, key);
    return i == SIZE_MAX ? NULL : map->u.m.e[i].val;
}

/* Empty index slot s by Knuth's deletion for linear probing: later members
 * of the probe run move back into the hole unless their home slot lies
 * cyclically in (hole, here]. Keeps every key reachable without tombstones. */
static void index_delete(mproc_value *m, size_t s)
{
    uint32_t *ix = m->u.m.index;
    size_t mask = m->u.m.icap - 1, hole = s;
    for (size_t j = (s + 1) & mask; ix[j]; j = (j + 1) & mask) {
        size_t home = (size_t)key_hash(m->u.m.e[ix[j] - 1].key) & mask;
        bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (stays)
            continue;
        ix[hole] = ix[j];
        hole = j;
    }
    ix[hole] = 0;
}

/* Remove entry i: its key and value are the caller's to free. */
static void map_remove_at(mproc_value *m, size_t i)
{
    size_t n = m->u.m.n;
    if (m->u.m.icap) {
        size_t mask = m->u.m.icap - 1, s = (size_t)key_hash(m->u.m.e[i].key) & mask;
        while (m->u.m.index[s] != i + 1) {
            assert(m->u.m.index[s]);
            s = (s + 1) & mask;
        }
        index_delete(m, s);
        if (i + 1 < n) /* the entries after i move down one place */
            for (size_t k = 0; k < m->u.m.icap; k++)
                if (m->u.m.index[k] > i + 1)
                    m->u.m.index[k]--;
    }
    memmove(m->u.m.e + i, m->u.m.e + i + 1, (n - i - 1) * sizeof *m->u.m.e);
    m->u.m.n = n - 1;
}

mproc_value *mproc_value_map_take(mproc_value *map, const mproc_value *key)
{
    if (!map || map->type != MPROC_V_MAP || !key)
        return NULL;
    size_t i = map_find(map, key);
    if (i == SIZE_MAX)
        return NULL;
    mproc__entry e = map->u.m.e[i];
    map_remove_at(map, i);
    mproc_value_free(e.key);
    shrink_height(map, e.val);
    return e.val;
}

int mproc_value_map_del(mproc_value *map, const mproc_value *key)
{
    if (!map || map->type != MPROC_V_MAP || !key)
        return mproc__fail(MPROC_EINVAL, "map_del: not a map, or a NULL key");
    mproc_value *v = mproc_value_map_take(map, key);
    if (!v)
        return MPROC_ENOENT;
    mproc_value_free(v);
    return 0;
}

/* The capacity to grow to for `want` elements: doubling, at least want. */
static size_t grown_cap(size_t cap, size_t want, size_t elem)
{
    size_t c = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
    if (c < want)
        c = want;
    return c > SIZE_MAX / elem ? 0 : c;
}

int mproc__reserve(mproc_value *v, size_t extra)
{
    if (v && v->type == MPROC_V_LIST) {
        if (extra > SIZE_MAX - v->u.l.n)
            return MPROC_ENOMEM;
        size_t want = v->u.l.n + extra;
        if (want <= v->u.l.cap)
            return 0;
        size_t cap = grown_cap(v->u.l.cap, want, sizeof *v->u.l.v);
        mproc_value **a = cap ? realloc(v->u.l.v, cap * sizeof *a) : NULL;
        if (!a)
            return MPROC_ENOMEM;
        v->u.l.v = a;
        v->u.l.cap = cap;
        return 0;
    }
    if (!v || v->type != MPROC_V_MAP)
        return mproc__fail(MPROC_EINVAL, "reserve: not a list or map");
    if (extra >= UINT32_MAX - 1 - v->u.m.n)
        return MPROC_ENOMEM;
    size_t want = v->u.m.n + extra;
    if (want > v->u.m.cap) {
        size_t cap = grown_cap(v->u.m.cap, want, sizeof *v->u.m.e);
        mproc__entry *e = cap ? realloc(v->u.m.e, cap * sizeof *e) : NULL;
        if (!e)
            return MPROC_ENOMEM;
        v->u.m.e = e;
        v->u.m.cap = cap;
    }
    /* the index map_set would build on its way to `want` entries */
    if ((v->u.m.icap || want > 8) && want * 2 > v->u.m.icap) {
        size_t icap = 16;
        while (icap < want * 2)
            icap *= 2;
        return index_rebuild(v, icap);
    }
    return 0;
}

mproc_value **mproc__list_detach(mproc_value *list, size_t *n)
{
    assert(list->type == MPROC_V_LIST);
    mproc_value **items = list->u.l.v;
    *n = list->u.l.n;
    list->u.l.v = NULL;
    list->u.l.n = list->u.l.cap = 0;
    list->height = 1;
    return items;
}

mproc__entry *mproc__map_detach(mproc_value *map, size_t *n)
{
    assert(map->type == MPROC_V_MAP);
    mproc__entry *e = map->u.m.e;
    *n = map->u.m.n;
    free(map->u.m.index);
    map->u.m.e = NULL;
    map->u.m.index = NULL;
    map->u.m.n = map->u.m.cap = map->u.m.icap = 0;
    map->height = 1;
    return e;
}

/* ------------------------------------------------------------ accessors */

mproc_vtype mproc_value_type(const mproc_value *v) { return v ? v->type : MPROC_V_NIL; }
bool mproc_value_as_bool(const mproc_value *v) { return v && v->type == MPROC_V_BOOL && v->u.b; }
int64_t mproc_value_as_int(const mproc_value *v) { return v && v->type == MPROC_V_INT ? v->u.i : 0; }

double mproc_value_as_float(const mproc_value *v)
{
    if (v && v->type == MPROC_V_FLOAT)
        return v->u.d;
    if (v && v->type == MPROC_V_INT)
        return (double)v->u.i;
    return 0.0;
}

const char *mproc_value_as_str(const mproc_value *v, size_t *len)
{
    if (!v || v->type != MPROC_V_STR)
        return NULL;
    if (len)
        *len = v->u.s.n;
    return v->u.s.p;
}

const void *mproc_value_as_bytes(const mproc_value *v, size_t *len)
{
    if (!v || (v->type != MPROC_V_BYTES && v->type != MPROC_V_EXT))
        return NULL;
    if (len)
        *len = v->u.s.n;
    return v->u.s.p;
}

int mproc_value_ext_type(const mproc_value *v)
{
    return v && v->type == MPROC_V_EXT ? v->u.s.ext : INT_MIN;
}

size_t mproc_value_len(const mproc_value *v)
{
    if (!v)
        return 0;
    switch (v->type) {
    case MPROC_V_LIST:
        return v->u.l.n;
    case MPROC_V_MAP:
        return v->u.m.n;
    case MPROC_V_STR:
    case MPROC_V_BYTES:
    case MPROC_V_EXT:
        return v->u.s.n;
    default:
        return 0;
    }
}

mproc_value *mproc_value_at(const mproc_value *v, size_t i)
{
    if (v && v->type == MPROC_V_LIST)
        return i < v->u.l.n ? v->u.l.v[i] : NULL;
    if (v && v->type == MPROC_V_MAP)
        return i < v->u.m.n ? v->u.m.e[i].val : NULL;
    return NULL;
}

mproc_value *mproc_value_key_at(const mproc_value *v, size_t i)
{
    return v && v->type == MPROC_V_MAP && i < v->u.m.n ? v->u.m.e[i].key : NULL;
}

mproc_value *mproc_value_get(const mproc_value *v, const char *key)
{
    if (!v || v->type != MPROC_V_MAP || !key)
        return NULL;
    mproc_value k = {.type = MPROC_V_STR};
    k.u.s.p = (char *)key;
    k.u.s.n = strlen(key);
    size_t i = map_find(v, &k);
    return i == SIZE_MAX ? NULL : v->u.m.e[i].val;
}

const char *mproc_value_error_type(const mproc_value *v)
{
    return v && v->type == MPROC_V_ERROR ? v->u.e.type : NULL;
}

const char *mproc_value_error_message(const mproc_value *v)
{
    return v && v->type == MPROC_V_ERROR ? v->u.e.msg : NULL;
}

/* ------------------------------------------------------------ free / copy / equal */

/* Frees one node's own storage and hands its children to `push`. */
static void free_node(mproc_value *v, void (*push)(void *ctx, mproc_value *c), void *ctx)
{
    switch ((int)v->type) {
    case MPROC_V_STR:
    case MPROC_V_BYTES:
    case MPROC_V_EXT:
        free(v->u.s.p);
        break;
    case MPROC_V_LIST:
        for (size_t i = 0; i < v->u.l.n; i++)
            push(ctx, v->u.l.v[i]);
        free(v->u.l.v);
        break;
    case MPROC_V_MAP:
        for (size_t i = 0; i < v->u.m.n; i++) {
            push(ctx, v->u.m.e[i].key);
            push(ctx, v->u.m.e[i].val);
        }
        free(v->u.m.e);
        free(v->u.m.index);
        break;
    case MPROC_V_ERROR:
        free(v->u.e.type);
        free(v->u.e.msg);
        break;
    case MPROC__V_GLOBAL:
        free(v->u.g.name);
        break;
    default:
        break;
    }
    free(v);
}

typedef struct {
    mproc_value **v;
    size_t n, cap;
} free_stack;

static void free_push(void *ctx, mproc_value *c)
{
    free_stack *s = ctx;
    if (!c)
        return;
    if (c->type != MPROC_V_LIST && c->type != MPROC_V_MAP) {
        free_node(c, free_push, ctx); /* leaves have no children: no recursion */
        return;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        mproc_value **v = realloc(s->v, cap * sizeof *v);
        if (!v) {
            /* Out of memory while freeing: fall back to recursion for this subtree. */
            free_stack sub = {0};
            free_node(c, free_push, &sub);
            while (sub.n)
                free_node(sub.v[--sub.n], free_push, &sub);
            free(sub.v);
            return;
        }
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = c;
}

void mproc_value_free(mproc_value *v)
{
    if (!v)
        return;
    free_stack s = {0};
    free_node(v, free_push, &s);
    while (s.n)
        free_node(s.v[--s.n], free_push, &s);
    free(s.v);
}

typedef struct {
    size_t left;     /* nodes still allowed */
    bool exhausted;  /* the budget or the nesting cap stopped the copy */
} copy_budget;

static mproc_value *copy_rec(const mproc_value *v, copy_budget *budget, unsigned depth)
{
    if (budget->left == 0 || depth > MPROC__MAX_NEST) {
        budget->exhausted = true;
        return NULL;
    }
    budget->left--;
    mproc_value *c = NULL;
    switch ((int)v->type) {
    case MPROC_V_STR:
    case MPROC_V_BYTES:
        return new_blob(v->type, v->u.s.p, v->u.s.n);
    case MPROC_V_EXT:
        return mproc_value_ext(v->u.s.ext, v->u.s.p, v->u.s.n);
    case MPROC_V_ERROR:
        return mproc_value_error(v->u.e.type, v->u.e.msg);
    case MPROC__V_GLOBAL:
        c = mproc__value_alloc(v->type);
        if (c) {
            c->u.g.kind = v->u.g.kind;
            c->u.g.name = strdup(v->u.g.name);
            if (!c->u.g.name) {
                free(c);
                c = NULL;
            }
        }
        return c;
    case MPROC_V_LIST:
        c = mproc_value_list();
        if (!c)
            return NULL;
        if (v->u.l.n) {
            c->u.l.v = malloc(v->u.l.n * sizeof *c->u.l.v);
            if (!c->u.l.v)
                goto fail;
            c->u.l.cap = v->u.l.n;
        }
        for (size_t i = 0; i < v->u.l.n; i++) {
            mproc_value *x = copy_rec(v->u.l.v[i], budget, depth + 1);
            if (!x)
                goto fail;
            c->u.l.v[c->u.l.n++] = x;
            grow_height(c, x);
        }
        return c;
    case MPROC_V_MAP:
        c = mproc_value_map();
        if (!c)
            return NULL;
        for (size_t i = 0; i < v->u.m.n; i++) {
            mproc_value *k = copy_rec(v->u.m.e[i].key, budget, depth + 1);
            mproc_value *x = k ? copy_rec(v->u.m.e[i].val, budget, depth + 1) : NULL;
            if (!x) {
                mproc_value_free(k);
                goto fail;
            }
            if (mproc_value_map_set(c, k, x) != 0)
                goto fail;
        }
        return c;
    default:
        c = mproc__value_alloc(v->type);
        if (c)
            c->u = v->u;
        return c;
    }
fail:
    mproc_value_free(c);
    return NULL;
}

mproc_value *mproc__value_copy_counted(const mproc_value *v, size_t *budget)
{
    copy_budget b = {*budget, false};
    mproc_value *c = copy_rec(v, &b, 0);
    *budget = b.exhausted ? SIZE_MAX : b.left;
    return c;
}

mproc_value *mproc_value_copy(const mproc_value *v)
{
    if (!v)
        return NULL;
    copy_budget b = {SIZE_MAX, false};
    return copy_rec(v, &b, 0);
}

static bool equal_rec(const mproc_value *a, const mproc_value *b, unsigned depth)
{
    if (a == b)
        return true;
    if (!a || !b || a->type != b->type || depth > MPROC__MAX_NEST)
        return false;
    switch (a->type) {
    case MPROC_V_NIL:
        return true;
    case MPROC_V_BOOL:
        return a->u.b == b->u.b;
    case MPROC_V_INT:
        return a->u.i == b->u.i;
    case MPROC_V_FLOAT:
        return a->u.d == b->u.d || (isnan(a->u.d) && isnan(b->u.d));
    case MPROC_V_EXT:
        if (a->u.s.ext != b->u.s.ext)
            return false;
        /* fall through */
    case MPROC_V_STR:
    case MPROC_V_BYTES:
        return a->u.s.n == b->u.s.n && memcmp(a->u.s.p, b->u.s.p, a->u.s.n) == 0;
    case MPROC_V_ERROR:
        return strcmp(a->u.e.type, b->u.e.type) == 0 && strcmp(a->u.e.msg, b->u.e.msg) == 0;
    case MPROC_V_LIST:
        if (a->u.l.n != b->u.l.n)
            return false;
        for (size_t i = 0; i < a->u.l.n; i++)
            if (!equal_rec(a->u.l.v[i], b->u.l.v[i], depth + 1))
                return false;
        return true;
    case MPROC_V_MAP:
        if (a->u.m.n != b->u.m.n)
            return false;
        for (size_t i = 0; i < a->u.m.n; i++)
            if (!equal_rec(a->u.m.e[i].key, b->u.m.e[i].key, depth + 1) ||
                !equal_rec(a->u.m.e[i].val, b->u.m.e[i].val, depth + 1))
                return false;
        return true;
    default:
        return false;
    }
}

bool mproc_value_equal(const mproc_value *a, const mproc_value *b) { return equal_rec(a, b, 0); }

/* ------------------------------------------------------------ ordering */

/* Outcome of one comparison: a < b, equal, a > b, or neither (NaN). */
enum { ORD_LT = -1, ORD_EQ = 0, ORD_GT = 1, ORD_NONE = 2 };

static bool numeric(const mproc_value *v)
{
    return v->type == MPROC_V_INT || v->type == MPROC_V_FLOAT || v->type == MPROC_V_BOOL;
}

/* Pairs Python can order with `<`. */
static bool orderable(const mproc_value *a, const mproc_value *b)
{
    if (numeric(a) && numeric(b))
        return true;
    return a->type == b->type &&
           (a->type == MPROC_V_STR || a->type == MPROC_V_BYTES || a->type == MPROC_V_LIST);
}

const char *mproc__py_type_name(const mproc_value *v)
{
    switch ((int)v->type) {
    case MPROC_V_NIL: return "NoneType";
    case MPROC_V_BOOL: return "bool";
    case MPROC_V_INT: return "int";
    case MPROC_V_FLOAT: return "float";
    case MPROC_V_STR: return "str";
    case MPROC_V_BYTES: return "bytes";
    case MPROC_V_LIST: return "list";
    case MPROC_V_MAP: return "dict";
    case MPROC_V_ERROR: return v->u.e.type;
    case MPROC_V_EXT: return "ExtType";
    default: return "object";
    }
}

static int ord_of(int c) { return c < 0 ? ORD_LT : c > 0 ? ORD_GT : ORD_EQ; }

/* int64 i against double d without rounding i. */
static int ord_int_float(int64_t i, double d)
{
    if (isnan(d))
        return ORD_NONE;
    if (d >= 0x1p63)
        return ORD_LT;
    if (d < -0x1p63)
        return ORD_GT;
    double t = trunc(d); /* in [-2^63, 2^63): exact as an int64 */
    int64_t ti = (int64_t)t;
    if (i != ti)
        return i < ti ? ORD_LT : ORD_GT;
    return d > t ? ORD_LT : d < t ? ORD_GT : ORD_EQ;
}

static int ord_num(const mproc_value *a, const mproc_value *b)
{
    if (a->type != MPROC_V_FLOAT && b->type != MPROC_V_FLOAT) {
        int64_t x = a->type == MPROC_V_BOOL ? a->u.b : a->u.i;
        int64_t y = b->type == MPROC_V_BOOL ? b->u.b : b->u.i;
        return ord_of((x > y) - (x < y));
    }
    if (a->type == MPROC_V_FLOAT && b->type == MPROC_V_FLOAT) {
        double x = a->u.d, y = b->u.d;
        return x < y ? ORD_LT : x > y ? ORD_GT : x == y ? ORD_EQ : ORD_NONE;
    }
    if (a->type == MPROC_V_FLOAT) {
        int r = ord_int_float(b->type == MPROC_V_BOOL ? b->u.b : b->u.i, a->u.d);
        return r == ORD_NONE ? r : -r;
    }
    return ord_int_float(a->type == MPROC_V_BOOL ? a->u.b : a->u.i, b->u.d);
}

static int ord_blob(const mproc_value *a, const mproc_value *b)
{
    size_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
    int c = n ? memcmp(a->u.s.p, b->u.s.p, n) : 0;
    if (c)
        return ord_of(c);
    return ord_of((a->u.s.n > b->u.s.n) - (a->u.s.n < b->u.s.n));
}

static int not_supported(const mproc_value *a, const mproc_value *b)
{
    return mproc__fail(MPROC_EINVAL, "'<' not supported between instances of "
                       "'%.64s' and '%.64s'", mproc__py_type_name(a), mproc__py_type_name(b));
}

/* *ord for an orderable pair, or MPROC_EINVAL (message set). */
static int ord_rec(const mproc_value *a, const mproc_value *b, unsigned depth, int *ord)
{
    if (depth > MPROC__MAX_NEST)
        return mproc__fail(MPROC_EINVAL, "compare: values nested deeper than %d",
                           MPROC__MAX_NEST);
    if (numeric(a) && numeric(b)) {
        *ord = ord_num(a, b);
        return 0;
    }
    if (a->type != MPROC_V_LIST) {
        *ord = ord_blob(a, b);
        return 0;
    }
    /* Lists: the first pair of items that are not equal decides (Python
     * tests == first, so unorderable but equal items such as None pass). */
    size_t n = a->u.l.n < b->u.l.n ? a->u.l.n : b->u.l.n;
    for (size_t i = 0; i < n; i++) {
        const mproc_value *x = a->u.l.v[i], *y = b->u.l.v[i];
        if (!orderable(x, y)) {
            if (equal_rec(x, y, depth + 1))
                continue;
            return not_supported(x, y);
        }
        int rc = ord_rec(x, y, depth + 1, ord);
        if (rc)
            return rc;
        if (*ord != ORD_EQ)
            return 0;
    }
    *ord = ord_of((a->u.l.n > b->u.l.n) - (a->u.l.n < b->u.l.n));
    return 0;
}

static int ord_values(const mproc_value *a, const mproc_value *b, int *ord)
{
    if (!orderable(a, b))
        return not_supported(a, b);
    return ord_rec(a, b, 0, ord);
}

int mproc_value_compare(const mproc_value *a, const mproc_value *b, int *cmp)
{
    if (!a || !b || !cmp)
        return mproc__fail(MPROC_EINVAL, "compare: NULL argument");
    int ord;
    int rc = ord_values(a, b, &ord);
    if (rc)
        return rc;
    *cmp = ord == ORD_NONE ? 0 : ord;
    return 0;
}

/* Bottom-up merge sort of src[0..n) using dst as scratch; the sorted items
 * end in *out (src or dst). "Before" is Python's `<` (reversed: `>`), so
 * an item moves ahead of an earlier one only when strictly before it. */
static int merge_sort(mproc_value **src, mproc_value **dst, size_t n, bool reverse,
                      mproc_value ***out)
{
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int ord;
                int rc = reverse ? ord_values(src[i], src[j], &ord)
                                 : ord_values(src[j], src[i], &ord);
                if (rc)
                    return rc;
                dst[k++] = ord == ORD_LT ? src[j++] : src[i++];
            }
            while (i < mid)
                dst[k++] = src[i++];
            while (j < hi)
                dst[k++] = src[j++];
        }
        mproc_value **t = src;
        src = dst;
        dst = t;
    }
    *out = src;
    return 0;
}

int mproc_value_sort(mproc_value *list, bool reverse)
{
    if (!list || list->type != MPROC_V_LIST)
        return mproc__fail(MPROC_EINVAL, "sort: not a list");
    size_t n = list->u.l.n;
    if (n < 2) /* Python compares nothing either: [None].sort() is fine */
        return 0;
    mproc_value **a = malloc(2 * n * sizeof *a); /* n <= cap, which fitted in memory */
    if (!a)
        return MPROC_ENOMEM;
    memcpy(a, list->u.l.v, n * sizeof *a);
    mproc_value **sorted;
    int rc = merge_sort(a, a + n, n, reverse, &sorted);
    if (!rc)
        memcpy(list->u.l.v, sorted, n * sizeof *a);
    free(a);
    return rc;
}

/* ------------------------------------------------------------ repr */

void mproc__float_repr(double d, char *buf, size_t len)
{
    if (isnan(d)) {
        snprintf(buf, len, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(buf, len, d < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[40];
    int prec = 1;
    for (; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    /* tmp: [-]d[.ddd]e[+-]xx, in whatever locale; pick digits and exponent. */
    char digits[24];
    size_t nd = 0;
    const char *p = tmp;
    bool neg = *p == '-';
    if (neg)
        p++;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9' && nd < sizeof digits - 1)
            digits[nd++] = *p;
    digits[nd] = 0;
    int exp = *p == 'e' ? atoi(p + 1) : 0;
    while (nd > 1 && digits[nd - 1] == '0')
        digits[--nd] = 0;
    char out[64];
    size_t k = 0;
    if (neg)
        out[k++] = '-';
    if (exp < -4 || exp >= 16) {
        out[k++] = digits[0];
        if (nd > 1) {
            out[k++] = '.';
            for (size_t i = 1; i < nd; i++)
                out[k++] = digits[i];
        }
        snprintf(out + k, sizeof out - k, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (exp < 0) {
        out[k++] = '0';
        out[k++] = '.';
        for (int i = -1; i > exp; i--)
            out[k++] = '0';
        for (size_t i = 0; i < nd; i++)
            out[k++] = digits[i];
        out[k] = 0;
    } else {
        size_t ip = (size_t)exp + 1; /* digits before the point */
        for (size_t i = 0; i < ip; i++)
            out[k++] = i < nd ? digits[i] : '0';
        out[k++] = '.';
        if (nd > ip)
            for (size_t i = ip; i < nd; i++)
                out[k++] = digits[i];
        else
            out[k++] = '0';
        out[k] = 0;
    }
    snprintf(buf, len, "%s", out);
}

typedef struct {
    mproc_buf b;
    int err;
} sbuf;

static void put(sbuf *s, const char *p, size_t n)
{
    if (!s->err)
        s->err = mproc_buf_append(&s->b, p, n);
}
static void puts_(sbuf *s, const char *p) { put(s, p, strlen(p)); }

static void put_hex(sbuf *s, const char *pfx, uint32_t c, int width)
{
    char t[16];
    snprintf(t, sizeof t, "%s%0*x", pfx, width, c);
    puts_(s, t);
}

/* Python's str.isprintable for non-ASCII, approximated: controls, format
 * characters, separators other than space and private use are escaped. */
static bool cp_printable(uint32_t c)
{
    return !(c <= 0xa0 || c == 0xad || (c >= 0x2000 && c <= 0x200f) ||
             (c >= 0x2028 && c <= 0x202f) || (c >= 0x205f && c <= 0x206f) || c == 0x3000 ||
             c == 0xfeff || (c >= 0xe000 && c <= 0xf8ff) || (c >= 0xfff0 && c <= 0xfffb) ||
             c == 0xfffe || c == 0xffff || c >= 0xf0000);
}

static char pick_quote(const char *p, size_t n)
{
    bool sq = memchr(p, '\'', n) != NULL, dq = memchr(p, '"', n) != NULL;
    return sq && !dq ? '"' : '\'';
}

static void repr_text(sbuf *s, const char *p, size_t n, bool bytes)
{
    char q = pick_quote(p, n);
    if (bytes)
        put(s, "b", 1);
    put(s, &q, 1);
    for (size_t i = 0; i < n;) {
        uint8_t c = (uint8_t)p[i];
        if (c == (uint8_t)q || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(s, e, 2);
        } else if (c == '\t') {
            puts_(s, "\\t");
        } else if (c == '\n') {
            puts_(s, "\\n");
        } else if (c == '\r') {
            puts_(s, "\\r");
        } else if (c < 0x20 || c == 0x7f || (bytes && c >= 0x80)) {
            put_hex(s, "\\x", c, 2);
        } else if (c < 0x80) {
            put(s, (const char *)&p[i], 1);
        } else {
            /* valid UTF-8 guaranteed for STR */
            size_t k = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
            uint32_t cp = c & (0xff >> (k + 1));
            for (size_t j = 1; j < k && i + j < n; j++)
                cp = (cp << 6) | ((uint8_t)p[i + j] & 0x3f);
            if (cp_printable(cp))
                put(s, p + i, k);
            else if (cp <= 0xff)
                put_hex(s, "\\x", cp, 2);
            else if (cp <= 0xffff)
                put_hex(s, "\\u", cp, 4);
            else
                put_hex(s, "\\U", cp, 8);
            i += k;
            continue;
        }
        i++;
    }
    put(s, &q, 1);
}

static void repr_rec(sbuf *s, const mproc_value *v, unsigned depth)
{
    char t[64];
    if (depth > MPROC__MAX_NEST) {
        s->err = MPROC_EINVAL;
        return;
    }
    switch (v->type) {
    case MPROC_V_NIL:
        puts_(s, "None");
        break;
    case MPROC_V_BOOL:
        puts_(s, v->u.b ? "True" : "False");
        break;
    case MPROC_V_INT:
        snprintf(t, sizeof t, "%lld", (long long)v->u.i);
        puts_(s, t);
        break;
    case MPROC_V_FLOAT:
        mproc__float_repr(v->u.d, t, sizeof t);
        puts_(s, t);
        break;
    case MPROC_V_STR:
    case MPROC_V_BYTES:
        repr_text(s, v->u.s.p, v->u.s.n, v->type == MPROC_V_BYTES);
        break;
    case MPROC_V_EXT: /* Python msgpack's ExtType(code, data), shortened */
        snprintf(t, sizeof t, "ext(%d, ", v->u.s.ext);
        puts_(s, t);
        repr_text(s, v->u.s.p, v->u.s.n, true);
        put(s, ")", 1);
        break;
    case MPROC_V_ERROR:
        puts_(s, v->u.e.type);
        put(s, "(", 1);
        repr_text(s, v->u.e.msg, strlen(v->u.e.msg), false);
        put(s, ")", 1);
        break;
    case MPROC_V_LIST:
        put(s, "[", 1);
        for (size_t i = 0; i < v->u.l.n; i++) {
            if (i)
                put(s, ", ", 2);
            repr_rec(s, v->u.l.v[i], depth + 1);
        }
        put(s, "]", 1);
        break;
    case MPROC_V_MAP:
        put(s, "{", 1);
        for (size_t i = 0; i < v->u.m.n; i++) {
            if (i)
                put(s, ", ", 2);
            repr_rec(s, v->u.m.e[i].key, depth + 1);
            put(s, ": ", 2);
            repr_rec(s, v->u.m.e[i].val, depth + 1);
        }
        put(s, "}", 1);
        break;
    default:
        puts_(s, "<?>");
        break;
    }
}

char *mproc_value_repr(const mproc_value *v)
{
    sbuf s = {{0}, 0};
    if (!v)
        puts_(&s, "NULL");
    else
        repr_rec(&s, v, 0);
    put(&s, "", 1);
    if (s.err) {
        mproc__buf_free(&s.b);
        return NULL;
    }
    return (char *)s.b.data;
}

void mproc_value_print(const mproc_value *v, FILE *f)
{
    char *r = mproc_value_repr(v);
    fprintf(f, "%s\n", r ? r : "<repr failed>");
    free(r);
}

mproc_decode_limits mproc__limits(const mproc_decode_limits *lim)
{
    mproc_decode_limits l = lim ? *lim : (mproc_decode_limits){0};
    if (!l.max_depth)
        l.max_depth = MPROC__DEFAULT_MAX_DEPTH;
    if (l.max_depth > MPROC__MAX_NEST)
        l.max_depth = MPROC__MAX_NEST;
    if (!l.max_items)
        l.max_items = MPROC__DEFAULT_MAX_ITEMS;
    if (!l.max_bytes)
        l.max_bytes = MPROC__DEFAULT_MAX_BYTES;
    return l;
}
