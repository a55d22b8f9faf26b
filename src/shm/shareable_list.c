/* shareable_list.c — ShareableList: a fixed-length list of small values in one
 * named segment, byte for byte the layout of CPython's shared_memory.ShareableList. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "mproc/shm.h"

/* Layout (native byte order), offsets from the start of the segment:
 *   0                     int64 n
 *   8                     int64 offsets[n + 1]   (from the data area; [0] = 0)
 *   data = 8 * (n + 2)    item slots: slot i is [offsets[i], offsets[i + 1])
 *   fmts = data + off[n]  n 8-byte struct formats, NUL-padded
 *   codes = fmts + 8 * n  n bytes: back-transform code (0 plain, 1 str, 2 bytes, 3 None)
 * Python writes a slot as format, code, then data, with no lock; so do we. */

#define SLOT_MIN 8            /* a fixed-format value needs 8 bytes */
#define ROOM_MAX 9999999u     /* "%ds" must fit 8 bytes: at most 7 digits */
#define ITEM_MIN_BYTES 25u    /* offset + smallest slot + format + code */

enum { CODE_PLAIN = 0, CODE_STR = 1, CODE_BYTES = 2, CODE_NONE = 3 };

static const char FMT_INT[] = "q", FMT_FLOAT[] = "d", FMT_BOOL[] = "xxxxxxx?",
                  FMT_NONE[] = "xxxxxx?x";

struct mproc_shareable_list {
    mproc_shm *shm;
    unsigned char *base;
    size_t n;
    /* Validated copies taken at open, as Python caches _allocated_offsets: later
     * scribbles on the header cannot move a slot outside the segment. */
    size_t *offsets; /* n + 1 entries, from the data area */
    size_t data, fmts, codes;
};

/* ------------------------------------------------------------- helpers */

static int64_t load_i64(const unsigned char *p)
{
    int64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void store_i64(unsigned char *p, int64_t v)
{
    memcpy(p, &v, sizeof v);
}

static size_t round_up8(size_t v)
{
    return (v + 7) & ~(size_t)7;
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), the
 * set Python's bytes.decode('utf-8') accepts. */
static bool utf8_valid(const unsigned char *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        size_t extra;
        unsigned lo = 0x80, hi = 0xbf;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            extra = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            extra = 2;
            if (c == 0xe0)
                lo = 0xa0;
            else if (c == 0xed)
                hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            extra = 3;
            if (c == 0xf0)
                lo = 0x90;
            else if (c == 0xf4)
                hi = 0x8f;
        } else {
            return false;
        }
        if (len - i <= extra)
            return false;
        if (p[i + 1] < lo || p[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= extra; k++)
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
        i += extra + 1;
    }
    return true;
}

/* The kind a (format, code) pair stands for, 0 if the pair is not one Python
 * writes. `raw` is a private copy of the 8 format bytes; *k gets the "%ds" count. */
static mproc_sl_kind decode_slot(const unsigned char raw[8], int code, size_t *k)
{
    size_t len = 0;
    while (len < 8 && raw[len])
        len++;
    for (size_t j = len; j < 8; j++)
        if (raw[j]) /* Python rstrips NULs only: anything after one is garbage */
            return 0;
    *k = SLOT_MIN;
    if (len == 1 && raw[0] == 'q')
        return code == CODE_PLAIN ? MPROC_SL_INT : 0;
    if (len == 1 && raw[0] == 'd')
        return code == CODE_PLAIN ? MPROC_SL_FLOAT : 0;
    if (len == 8 && memcmp(raw, FMT_BOOL, 8) == 0)
        return code == CODE_PLAIN ? MPROC_SL_BOOL : 0;
    if (len == 8 && memcmp(raw, FMT_NONE, 8) == 0)
        return code == CODE_NONE ? MPROC_SL_NONE : 0;
    if (len < 2 || raw[len - 1] != 's')
        return 0;
    size_t count = 0;
    for (size_t j = 0; j + 1 < len; j++) {
        if (raw[j] < '0' || raw[j] > '9')
            return 0;
        count = count * 10 + (size_t)(raw[j] - '0');
    }
    *k = count;
    return code == CODE_STR ? MPROC_SL_STR : code == CODE_BYTES ? MPROC_SL_BYTES : 0;
}

/* Read and check slot i's format and code against its allocated room. */
static int slot_kind(const mproc_shareable_list *l, size_t i, mproc_sl_kind *kind, size_t *k)
{
    unsigned char raw[8];
    memcpy(raw, l->base + l->fmts + 8 * i, 8);
    int code = (signed char)l->base[l->codes + i];
    size_t room = l->offsets[i + 1] - l->offsets[i];
    *kind = decode_slot(raw, code, k);
    if (*kind && *k <= room)
        return 0;
    char shown[9]; /* the format as text, for the message: it may be any bytes */
    for (size_t j = 0; j < 8; j++)
        shown[j] = raw[j] >= 0x20 && raw[j] < 0x7f ? (char)raw[j] : raw[j] ? '?' : '.';
    shown[8] = 0;
    return mproc__fail(MPROC_EPROTO,
                       "shareable_list: item %zu has format '%s' and code %d, not a valid pair "
                       "for a %zu-byte slot",
                       i, shown, code, room);
}

static bool kind_valid(mproc_sl_kind k)
{
    return k >= MPROC_SL_INT && k <= MPROC_SL_BYTES;
}

static bool is_text(mproc_sl_kind k)
{
    return k == MPROC_SL_STR || k == MPROC_SL_BYTES;
}

/* Caller mistakes in an item to be stored. */
static int check_item(const mproc_sl_item *it, const char *what)
{
    if (!it)
        return mproc__fail(MPROC_EINVAL, "shareable_list: %s: item is NULL", what);
    if (!kind_valid(it->kind))
        return mproc__fail(MPROC_EINVAL, "shareable_list: %s: unknown item kind %d", what,
                           (int)it->kind);
    if (is_text(it->kind) && !it->s && it->len)
        return mproc__fail(MPROC_EINVAL, "shareable_list: %s: NULL text of length %zu", what,
                           it->len);
    if (it->kind == MPROC_SL_STR && !utf8_valid((const unsigned char *)it->s, it->len))
        return mproc__fail(MPROC_EINVAL, "shareable_list: %s: str is not valid UTF-8", what);
    return 0;
}

/* Write item `it` into slot i (room bytes), with its format and code, in
 * Python's order. The caller checked that it fits. */
static void write_slot(mproc_shareable_list *l, size_t i, const mproc_sl_item *it, size_t room)
{
    assert(room >= SLOT_MIN && room <= ROOM_MAX && (!is_text(it->kind) || it->len <= room));
    char fmt[9] = {0};
    int code = CODE_PLAIN;
    switch (it->kind) {
    case MPROC_SL_INT: memcpy(fmt, FMT_INT, sizeof FMT_INT); break;
    case MPROC_SL_FLOAT: memcpy(fmt, FMT_FLOAT, sizeof FMT_FLOAT); break;
    case MPROC_SL_BOOL: memcpy(fmt, FMT_BOOL, 8); break;
    case MPROC_SL_NONE: memcpy(fmt, FMT_NONE, 8); code = CODE_NONE; break;
    default:
        /* Python keeps the slot's current "%ds" (always its full room in lists
         * Python or mproc made) or writes "%ds" % room: the room either way. */
        snprintf(fmt, sizeof fmt, "%zus", room);
        code = it->kind == MPROC_SL_STR ? CODE_STR : CODE_BYTES;
        break;
    }
    memcpy(l->base + l->fmts + 8 * i, fmt, 8);
    l->base[l->codes + i] = (unsigned char)code;
    unsigned char *p = l->base + l->data + l->offsets[i];
    size_t width = is_text(it->kind) ? room : SLOT_MIN;
    memset(p, 0, width); /* struct.pack_into zero-fills pads and short strings */
    switch (it->kind) {
    case MPROC_SL_INT: store_i64(p, it->i); break;
    case MPROC_SL_FLOAT: memcpy(p, &it->f, sizeof it->f); break;
    case MPROC_SL_BOOL: p[7] = it->b ? 1 : 0; break;
    case MPROC_SL_NONE: break;
    default:
        if (it->len)
            memcpy(p, it->s, it->len);
        break;
    }
}

/* Python's `index` normalisation; false when out of range. */
static bool resolve_index(const mproc_shareable_list *l, long i, size_t *pos)
{
    if (i < 0) {
        unsigned long back = (unsigned long)(-(i + 1)) + 1; /* no overflow at LONG_MIN */
        if (back > l->n)
            return false;
        *pos = l->n - back;
        return true;
    }
    if ((unsigned long)i >= l->n)
        return false;
    *pos = (size_t)i;
    return true;
}

static void set_geometry(mproc_shareable_list *l)
{
    l->data = 8 * (l->n + 2);
    l->fmts = l->data + l->offsets[l->n];
    l->codes = l->fmts + 8 * l->n;
}

/* ------------------------------------------------------------- create */

/* Room Python gives an item (and at least `capacity` if asked), or 0 if too big. */
static size_t item_room(const mproc_sl_item *it)
{
    size_t room = SLOT_MIN;
    if (is_text(it->kind)) {
        if (it->len > ROOM_MAX)
            return 0;
        room = 8 * (it->len / 8 + 1);
    }
    if (it->capacity > room) {
        if (it->capacity > ROOM_MAX)
            return 0;
        room = round_up8(it->capacity);
    }
    return room <= ROOM_MAX ? room : 0;
}

int mproc_shareable_list_new(mproc_shareable_list **out, const char *name,
                             const mproc_sl_item *items, size_t n)
{
    if (!out || (n && !items))
        return mproc__fail(MPROC_EINVAL, "shareable_list_new: %s",
                           !out ? "out is NULL" : "items is NULL");
    if (n > (SIZE_MAX / 2 - 16) / (ROOM_MAX + ITEM_MIN_BYTES))
        return mproc__fail(MPROC_EINVAL, "shareable_list_new: %zu items is too many", n);
    mproc_shareable_list *l = calloc(1, sizeof *l);
    if (!l || !(l->offsets = malloc((n + 1) * sizeof *l->offsets))) {
        free(l);
        return mproc__fail(MPROC_ENOMEM, "shareable_list_new: out of memory");
    }
    int rc = 0;
    l->n = n;
    l->offsets[0] = 0;
    for (size_t i = 0; i < n; i++) {
        rc = check_item(&items[i], "new");
        if (rc)
            goto fail;
        size_t room = item_room(&items[i]);
        if (!room) {
            rc = mproc__fail(MPROC_EINVAL,
                             "shareable_list_new: item %zu needs more than %u bytes, the most "
                             "a format can describe",
                             i, ROOM_MAX);
            goto fail;
        }
        l->offsets[i + 1] = l->offsets[i] + room; /* bounded by the n check above */
    }
    set_geometry(l);
    rc = mproc_shm_open(&l->shm, name, true, l->codes + n);
    if (rc)
        goto fail;
    l->base = mproc_shm_buf(l->shm);
    store_i64(l->base, (int64_t)n);
    for (size_t i = 0; i <= n; i++)
        store_i64(l->base + 8 * (i + 1), (int64_t)l->offsets[i]);
    for (size_t i = 0; i < n; i++)
        write_slot(l, i, &items[i], l->offsets[i + 1] - l->offsets[i]);
    *out = l;
    return 0;
fail:
    free(l->offsets);
    free(l);
    return rc;
}

/* --------------------------------------------------------------- open */

/* Check everything a reader relies on against the segment size. */
static int validate(mproc_shareable_list *l, size_t size)
{
    const char *name = mproc_shm_name(l->shm);
    if (size < 16)
        return mproc__fail(MPROC_EPROTO, "shareable_list_open: '%s' is %zu bytes, too small for "
                           "a list", name, size);
    int64_t n = load_i64(l->base);
    if (n < 0 || (uint64_t)n > (size - 16) / ITEM_MIN_BYTES)
        return mproc__fail(MPROC_EPROTO, "shareable_list_open: '%s' claims %lld items, "
                           "impossible in %zu bytes", name, (long long)n, size);
    l->n = (size_t)n;
    l->offsets = malloc((l->n + 1) * sizeof *l->offsets);
    if (!l->offsets)
        return mproc__fail(MPROC_ENOMEM, "shareable_list_open: out of memory");
    /* What is left for the slots once the header, formats and codes are counted. */
    size_t data_max = size - 8 * (l->n + 2) - 9 * l->n;
    for (size_t i = 0; i <= l->n; i++) {
        int64_t off = load_i64(l->base + 8 * (i + 1));
        bool ok = i == 0 ? off == 0
                         : off >= 0 && (uint64_t)off >= l->offsets[i - 1] + SLOT_MIN &&
                               (uint64_t)off <= data_max;
        if (!ok)
            return mproc__fail(MPROC_EPROTO, "shareable_list_open: '%s': item offset %zu is "
                               "%lld, outside the segment or out of order", name, i,
                               (long long)off);
        l->offsets[i] = (size_t)off;
    }
    set_geometry(l);
    for (size_t i = 0; i < l->n; i++) {
        mproc_sl_kind kind;
        size_t k;
        int rc = slot_kind(l, i, &kind, &k);
        if (rc)
            return rc;
    }
    return 0;
}

int mproc_shareable_list_open(mproc_shareable_list **out, const char *name)
{
    if (!out || !name)
        return mproc__fail(MPROC_EINVAL, "shareable_list_open: %s is NULL", !out ? "out" : "name");
    mproc_shareable_list *l = calloc(1, sizeof *l);
    if (!l)
        return mproc__fail(MPROC_ENOMEM, "shareable_list_open: out of memory");
    int rc = mproc_shm_open(&l->shm, name, false, 0);
    if (!rc) {
        l->base = mproc_shm_buf(l->shm);
        rc = validate(l, mproc_shm_size(l->shm));
    }
    if (rc) {
        mproc_shareable_list_close(l);
        return rc;
    }
    *out = l;
    return 0;
}

/* ------------------------------------------------------------ access */

size_t mproc_shareable_list_len(const mproc_shareable_list *l)
{
    return l ? l->n : 0;
}

mproc_shm *mproc_shareable_list_shm(const mproc_shareable_list *l)
{
    return l ? l->shm : NULL;
}

int mproc_shareable_list_get(const mproc_shareable_list *l, long i, mproc_sl_item *out)
{
    size_t pos;
    if (!l || !out)
        return mproc__fail(MPROC_EINVAL, "shareable_list_get: NULL argument");
    if (!resolve_index(l, i, &pos))
        return mproc__fail(MPROC_ERANGE, "shareable_list_get: index %ld out of range for %zu "
                           "items", i, l->n);
    mproc_sl_kind kind;
    size_t k;
    int rc = slot_kind(l, pos, &kind, &k);
    if (rc)
        return rc;
    const unsigned char *p = l->base + l->data + l->offsets[pos];
    mproc_sl_item v;
    memset(&v, 0, sizeof v);
    v.kind = kind;
    v.capacity = l->offsets[pos + 1] - l->offsets[pos];
    switch (kind) {
    case MPROC_SL_INT: v.i = load_i64(p); break;
    case MPROC_SL_FLOAT: memcpy(&v.f, p, sizeof v.f); break;
    case MPROC_SL_BOOL: v.b = p[7] != 0; break;
    case MPROC_SL_NONE: break;
    default:
        while (k && p[k - 1] == 0)
            k--;
        if (kind == MPROC_SL_STR && !utf8_valid(p, k))
            return mproc__fail(MPROC_EPROTO, "shareable_list_get: item %zu is not valid UTF-8",
                               pos);
        v.s = (const char *)p;
        v.len = k;
        break;
    }
    *out = v;
    return 0;
}

int mproc_shareable_list_set(mproc_shareable_list *l, long i, const mproc_sl_item *item)
{
    size_t pos;
    if (!l)
        return mproc__fail(MPROC_EINVAL, "shareable_list_set: list is NULL");
    int rc = check_item(item, "set");
    if (rc)
        return rc;
    if (!resolve_index(l, i, &pos))
        return mproc__fail(MPROC_ERANGE, "shareable_list_set: index %ld out of range for %zu "
                           "items", i, l->n);
    size_t room = l->offsets[pos + 1] - l->offsets[pos];
    if (is_text(item->kind) && item->len > room)
        return mproc__fail(MPROC_EMSGSIZE, "shareable_list_set: %zu bytes do not fit item %zu's "
                           "%zu-byte slot", item->len, pos, room);
    write_slot(l, pos, item, room);
    return 0;
}

/* ------------------------------------------------------- index/count */

/* Python's int == float: exact, never through a rounded conversion. */
static bool int_eq_float(int64_t i, double f)
{
    if (!(f >= -9223372036854775808.0 && f < 9223372036854775808.0)) /* NaN too */
        return false;
    int64_t t = (int64_t)f;
    return (double)t == f && t == i;
}

/* As Python's ==: numbers compare by value across int, float and bool (True == 1). */
static bool items_equal(const mproc_sl_item *x, const mproc_sl_item *y)
{
    mproc_sl_item ca = *x, cb = *y;
    const mproc_sl_item *a = &ca, *b = &cb;
    if (ca.kind == MPROC_SL_BOOL) {
        ca.kind = MPROC_SL_INT;
        ca.i = x->b;
    }
    if (cb.kind == MPROC_SL_BOOL) {
        cb.kind = MPROC_SL_INT;
        cb.i = y->b;
    }
    if (a->kind == MPROC_SL_INT && b->kind == MPROC_SL_FLOAT)
        return int_eq_float(a->i, b->f);
    if (a->kind == MPROC_SL_FLOAT && b->kind == MPROC_SL_INT)
        return int_eq_float(b->i, a->f);
    if (a->kind != b->kind)
        return false;
    switch (a->kind) {
    case MPROC_SL_INT: return a->i == b->i;
    case MPROC_SL_FLOAT: return a->f == b->f;
    case MPROC_SL_BOOL: return a->b == b->b;
    case MPROC_SL_NONE: return true;
    default: return a->len == b->len && (a->len == 0 || memcmp(a->s, b->s, a->len) == 0);
    }
}

/* Items that cannot be read (a malformed slot) match nothing. */
static size_t find(const mproc_shareable_list *l, const mproc_sl_item *item, size_t from)
{
    for (size_t i = from; i < l->n; i++) {
        mproc_sl_item v;
        if (mproc_shareable_list_get(l, (long)i, &v) == 0 && items_equal(item, &v))
            return i;
    }
    return l->n;
}

int mproc_shareable_list_index(const mproc_shareable_list *l, const mproc_sl_item *item,
                               size_t *index)
{
    if (!l || !index || !item || !kind_valid(item->kind) ||
        (is_text(item->kind) && !item->s && item->len))
        return mproc__fail(MPROC_EINVAL, "shareable_list_index: bad argument");
    size_t at = find(l, item, 0);
    if (at == l->n)
        return mproc__fail(MPROC_ENOENT, "shareable_list_index: value not in the list");
    *index = at;
    return 0;
}

size_t mproc_shareable_list_count(const mproc_shareable_list *l, const mproc_sl_item *item)
{
    if (!l || !item || !kind_valid(item->kind) || (is_text(item->kind) && !item->s && item->len))
        return 0;
    size_t count = 0;
    for (size_t at = find(l, item, 0); at < l->n; at = find(l, item, at + 1))
        count++;
    return count;
}

void mproc_shareable_list_close(mproc_shareable_list *l)
{
    if (!l)
        return;
    mproc_shm_close(l->shm);
    free(l->offsets);
    free(l);
}
