/* codec_int.h — the layout of mproc_value and helpers shared by the value
 * module and its two codecs (MessagePack, pickle). Private to src/codec. */
#ifndef MPROC_CODEC_INT_H
#define MPROC_CODEC_INT_H

#include "internal.h"
#include "mproc/value.h"

/* Recursive operations (copy, equal, repr, encoders) refuse trees nested
 * deeper than this, so a hand-built or decoded value can never overflow the
 * C stack; decoders cap max_depth at it for the same reason. */
#define MPROC__MAX_NEST 10000

#define MPROC__DEFAULT_MAX_DEPTH 256
#define MPROC__DEFAULT_MAX_ITEMS ((size_t)16 << 20)
#define MPROC__DEFAULT_MAX_BYTES ((size_t)1 << 30)

/* Decoder-internal type tag: a whitelisted pickle global waiting for REDUCE.
 * It never leaves the pickle decoder. */
#define MPROC__V_GLOBAL ((mproc_vtype)100)

typedef struct mproc__entry {
    mproc_value *key, *val;
} mproc__entry;

struct mproc_value {
    mproc_vtype type;
    /* Nesting height: 0 for scalars, 1 + the highest child for containers.
     * Maintained by append/map_set; exact for decoded trees, which are never
     * mutated behind their parent's back. */
    uint32_t height;
    union {
        bool b;
        int64_t i;
        double d;
        struct {
            char *p; /* NUL-terminated (for STR; BYTES and EXT too, harmlessly) */
            size_t n;
            int8_t ext; /* EXT: the type code */
        } s;
        struct {
            mproc_value **v;
            size_t n, cap;
        } l;
        struct {
            mproc__entry *e;
            size_t n, cap;
            uint32_t *index; /* open addressing over e[], 0 = empty, else i+1 */
            size_t icap;     /* 0 until the map grows past a few entries */
        } m;
        struct {
            char *type, *msg;
        } e;
        struct {
            int kind;    /* decoder-defined */
            char *name;  /* qualified name, for messages */
        } g;
    } u;
};

mproc_value *mproc__value_alloc(mproc_vtype t);
/* A STR/BYTES/EXT node taking ownership of p (malloc'd, n bytes + room for
 * NUL at p[n]); an EXT's code is set by the caller. */
mproc_value *mproc__value_take_str(mproc_vtype t, char *p, size_t n);
/* Strict UTF-8 (no overlongs, surrogates or code points above U+10FFFF). */
bool mproc__utf8_valid(const uint8_t *p, size_t n);
/* map[key] = val without freeing what a replacement drops: *old_key (the new,
 * redundant key) and *old (the replaced value) receive them, or NULL, so a
 * decoder that still references them (pickle memo) can defer the free.
 * Takes ownership of key and val in every case. */
int mproc__map_set(mproc_value *map, mproc_value *key, mproc_value *val, mproc_value **old_key,
                   mproc_value **old);
/* Make room so that the next `extra` appends/inserts (list) or new keys
 * (map) cannot fail for lack of memory: for callers that must do something
 * hard to undo (take references) before storing. 0, MPROC_ENOMEM,
 * MPROC_EINVAL (not a list or map). */
int mproc__reserve(mproc_value *v, size_t extra);
/* Hand over the items of a list / the entries of a map: returns the array
 * (malloc'd, or NULL when empty; the caller owns every element and frees
 * the array) and its length in *n, and leaves `v` empty. */
mproc_value **mproc__list_detach(mproc_value *list, size_t *n);
mproc__entry *mproc__map_detach(mproc_value *map, size_t *n);
/* Resolve zero fields of `lim` to the defaults and cap the depth. */
mproc_decode_limits mproc__limits(const mproc_decode_limits *lim);
/* Deep copy counting every node against *budget (fails with NULL and
 * *budget == SIZE_MAX when exhausted). */
mproc_value *mproc__value_copy_counted(const mproc_value *v, size_t *budget);
/* Python's name of the type of `v` ("int", "dict", an error's type...), for messages. */
const char *mproc__py_type_name(const mproc_value *v);
/* Shortest round-trip repr of a double, Python style ("1.0", "1e+16", "inf"). */
void mproc__float_repr(double d, char *buf, size_t len);

/* Pickle ops written without PROTO and STOP, for protocol code that frames
 * pickles by hand (the RPC's Python wire): the ops that push `v`, or the str
 * `s` (n bytes, UTF-8 not checked). Append to `b`; on error `b` is as it was
 * (body) and errmsg says why (MPROC_EINVAL: a value pickle cannot hold). */
int mproc__pickle_body(mproc_buf *b, const mproc_value *v);
int mproc__pickle_text(mproc_buf *b, const char *s, size_t n);

/* MessagePack headers written by hand, for protocol code that frames
 * values without building a tree (manager and RPC wires). Append to `b`. */
static inline int mproc__mp_raw(mproc_buf *b, const void *p, size_t n)
{
    return mproc_buf_append(b, p, n);
}

static inline int mproc__mp_array(mproc_buf *b, uint32_t n)
{
    uint8_t h[5];
    if (n < 16) {
        h[0] = (uint8_t)(0x90 | n);
        return mproc__mp_raw(b, h, 1);
    }
    h[0] = 0xdd;
    h[1] = (uint8_t)(n >> 24), h[2] = (uint8_t)(n >> 16), h[3] = (uint8_t)(n >> 8), h[4] = (uint8_t)n;
    return mproc__mp_raw(b, h, 5);
}

static inline int mproc__mp_int(mproc_buf *b, int64_t v)
{
    uint8_t h[9];
    if (v >= 0 && v < 128) {
        h[0] = (uint8_t)v;
        return mproc__mp_raw(b, h, 1);
    }
    if (v < 0 && v >= -32) {
        h[0] = (uint8_t)(int8_t)v;
        return mproc__mp_raw(b, h, 1);
    }
    uint64_t u = (uint64_t)v;
    h[0] = v < 0 ? 0xd3 : 0xcf;
    for (int i = 0; i < 8; i++)
        h[1 + i] = (uint8_t)(u >> (56 - 8 * i));
    return mproc__mp_raw(b, h, 9);
}

static inline int mproc__mp_str(mproc_buf *b, const char *s, size_t n)
{
    uint8_t h[5];
    size_t hl;
    if (n < 32) {
        h[0] = (uint8_t)(0xa0 | n);
        hl = 1;
    } else if (n < 256) {
        h[0] = 0xd9, h[1] = (uint8_t)n;
        hl = 2;
    } else {
        h[0] = 0xdb;
        h[1] = (uint8_t)(n >> 24), h[2] = (uint8_t)(n >> 16), h[3] = (uint8_t)(n >> 8), h[4] = (uint8_t)n;
        hl = 5;
    }
    int rc = mproc__mp_raw(b, h, hl);
    return rc ? rc : mproc__mp_raw(b, s, n);
}

static inline int mproc__mp_nil(mproc_buf *b)
{
    uint8_t h = 0xc0;
    return mproc__mp_raw(b, &h, 1);
}

#endif
