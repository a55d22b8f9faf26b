/* mproc/value.h — a dynamic value (nil, bool, int, float, str, bytes, list,
 * map, error) and two codecs for it: MessagePack (through msgpack-c) and a
 * safe subset of Python's pickle, so C and Python programs can exchange data
 * without either side running code the other sent. */
#ifndef MPROC_VALUE_H
#define MPROC_VALUE_H

#include <limits.h> /* INT_MIN: mproc_value_ext_type of a non-EXT value */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "process.h" /* mproc_buf */

#ifdef __cplusplus
extern "C" {
#endif

#pragma GCC visibility push(default)

typedef enum mproc_vtype {
    MPROC_V_NIL = 0, /* Python None */
    MPROC_V_BOOL,
    MPROC_V_INT,   /* int64 */
    MPROC_V_FLOAT, /* double */
    MPROC_V_STR,   /* UTF-8 text (may contain NUL; length-counted) */
    MPROC_V_BYTES,
    MPROC_V_LIST,  /* Python list, tuple, set, frozenset decode to this */
    MPROC_V_MAP,   /* ordered by insertion; keys of any type but list/map */
    MPROC_V_ERROR, /* an exception: type name ("ValueError") + message */
    MPROC_V_EXT,   /* MessagePack ext: an int8 type code + bytes (Python msgpack's ExtType) */
} mproc_vtype;

/* A value is a tree owned by its root: free the root with mproc_value_free().
 * Builders return NULL only when out of memory (or, for str, on invalid UTF-8). */
typedef struct mproc_value mproc_value;

mproc_value *mproc_value_nil(void);
mproc_value *mproc_value_bool(bool b);
mproc_value *mproc_value_int(int64_t i);
mproc_value *mproc_value_float(double d);
/* Copies. str: NUL-terminated / length-counted UTF-8 (NULL if not valid UTF-8). */
mproc_value *mproc_value_str(const char *s);
mproc_value *mproc_value_strn(const char *s, size_t len);
mproc_value *mproc_value_bytes(const void *p, size_t len);
/* An empty list / map. */
mproc_value *mproc_value_list(void);
mproc_value *mproc_value_map(void);
/* An EXT value: MessagePack's extension type `type` (an application code;
 * negative codes are reserved by the spec, -1 is the timestamp) carrying a
 * copy of p[0..len). NULL on OOM or when p is NULL with len > 0. */
mproc_value *mproc_value_ext(int8_t type, const void *p, size_t len);
/* An error value: `type` is a Python builtin exception name ("ValueError",
 * "KeyError", "Exception", ...), `message` its text. Copies both. */
mproc_value *mproc_value_error(const char *type, const char *message);

/* Append `item` to `list`; the list takes ownership of `item` in every case
 * (on failure the item is freed). MPROC_EINVAL (not a list), MPROC_ENOMEM. */
int mproc_value_append(mproc_value *list, mproc_value *item);
/* Set map[key] = val, replacing the value of an equal key in place (order
 * kept) or appending. Takes ownership of key and val in every case.
 * MPROC_EINVAL (not a map, or a list/map/error used as a key), MPROC_ENOMEM. */
int mproc_value_map_set(mproc_value *map, mproc_value *key, mproc_value *val);
/* map_set that hands the replaced value back instead of freeing it: *old
 * receives it (owned; NULL when the key was new or on failure), for callers
 * that must release what the old value holds first. old may be NULL (then
 * it is freed, as map_set does). Takes ownership of key and val in every
 * case. Errors as map_set. */
int mproc_value_map_put(mproc_value *map, mproc_value *key, mproc_value *val, mproc_value **old);
/* The value stored under a key equal to `key` (mproc_value_equal: typed, so
 * INT 1 and FLOAT 1.0 are different keys); borrowed. NULL if absent, or if
 * `map` is not a map or `key` is NULL. O(1) past 8 entries. */
mproc_value *mproc_value_map_find(const mproc_value *map, const mproc_value *key);
/* Remove the entry whose key equals `key`: the stored key is freed, its
 * value returned (owned). NULL if absent or `map` is not a map. The other
 * entries keep their order. O(n) (entries after it move down, the hash
 * index is fixed up in place); removing the last entry is O(1). */
mproc_value *mproc_value_map_take(mproc_value *map, const mproc_value *key);
/* map_take and free the value. 0, MPROC_ENOENT (absent; no message),
 * MPROC_EINVAL (not a map, NULL key). */
int mproc_value_map_del(mproc_value *map, const mproc_value *key);

/* Insert `item` before index i (i >= len appends), taking ownership in every
 * case (freed on failure). O(n - i). MPROC_EINVAL (not a list, NULL item or
 * the list itself), MPROC_ENOMEM. */
int mproc_value_insert(mproc_value *list, size_t i, mproc_value *item);
/* Remove item i and return it (owned); later items move down (O(n - i)).
 * NULL if i is out of range or `list` is not a list. */
mproc_value *mproc_value_take_at(mproc_value *list, size_t i);
/* Put `item` at index i and return the item it replaces (owned). Takes
 * ownership of `item` in every case: NULL if i is out of range or `list`
 * is not a list, and then `item` is freed. */
mproc_value *mproc_value_replace_at(mproc_value *list, size_t i, mproc_value *item);
/* Reverse the items in place. 0, MPROC_EINVAL (not a list). */
int mproc_value_reverse(mproc_value *list);

/* Python's `<` ordering: *cmp = -1 (a < b), 1 (a > b) or 0 (equal, or
 * neither is less: a NaN is involved). BOOL, INT and FLOAT compare
 * numerically with one another, exactly (an int64 is never rounded to a
 * double); STR by code point; BYTES bytewise; LIST lexicographically, where
 * items are first tested for equality as Python does (so [None, 1] <
 * [None, 2], while None < None is an error; nil, maps, errors and ext values
 * are equal only by mproc_value_equal). Anything else, mixed kinds
 * included: MPROC_EINVAL with Python's message ("'<' not supported between
 * instances of 'str' and 'int'"); also MPROC_EINVAL beyond 10 000 levels of
 * nesting. */
int mproc_value_compare(const mproc_value *a, const mproc_value *b, int *cmp);
/* Sort a list by mproc_value_compare, ascending (descending if `reverse`),
 * stable in both directions (equal items keep their order, as Python's
 * sort(reverse=True)). Merge sort: O(n log n) compares, 2n pointers of
 * scratch. All or nothing: on items that do not compare, MPROC_EINVAL with
 * Python's message and the list is unchanged. MPROC_EINVAL (not a list),
 * MPROC_ENOMEM. */
int mproc_value_sort(mproc_value *list, bool reverse);

mproc_vtype mproc_value_type(const mproc_value *v);
/* The scalar inside (false/0/0.0 when `v` has another type). as_float also
 * converts an INT; as_int does not convert a FLOAT. */
bool mproc_value_as_bool(const mproc_value *v);
int64_t mproc_value_as_int(const mproc_value *v);
double mproc_value_as_float(const mproc_value *v);
/* STR: the text (NUL-terminated for convenience) and its length; NULL otherwise.
 * as_bytes: the bytes of a BYTES or the payload of an EXT (also
 * NUL-terminated) and their length; NULL otherwise. Borrowed from `v`. */
const char *mproc_value_as_str(const mproc_value *v, size_t *len);
const void *mproc_value_as_bytes(const mproc_value *v, size_t *len);
/* The type code of an EXT; INT_MIN when `v` is not an EXT. */
int mproc_value_ext_type(const mproc_value *v);
/* Items of a LIST / entries of a MAP / bytes of STR, BYTES and an EXT's
 * payload; 0 otherwise. */
size_t mproc_value_len(const mproc_value *v);
/* LIST item i, MAP key i / value i (insertion order); borrowed; NULL if out of range. */
mproc_value *mproc_value_at(const mproc_value *v, size_t i);
mproc_value *mproc_value_key_at(const mproc_value *v, size_t i);
/* MAP lookup by a string key; borrowed; NULL if absent or not a map. */
mproc_value *mproc_value_get(const mproc_value *v, const char *key);
/* ERROR parts; borrowed; NULL if `v` is not an error. */
const char *mproc_value_error_type(const mproc_value *v);
const char *mproc_value_error_message(const mproc_value *v);

/* Deep free (NULL ok), deep copy (NULL on OOM), deep equality (INT 1 and
 * FLOAT 1.0 are not equal: types must match; maps compare in order). */
void mproc_value_free(mproc_value *v);
mproc_value *mproc_value_copy(const mproc_value *v);
bool mproc_value_equal(const mproc_value *a, const mproc_value *b);

/* Python-style repr ("[42, None, 'hello']", "{'a': b'x'}"), malloc'd; NULL on OOM. */
char *mproc_value_repr(const mproc_value *v);
/* Write the repr and a newline to `f`. */
void mproc_value_print(const mproc_value *v, FILE *f);

/* ------------------------------------------------------------- codecs */

/* Limits every decoder enforces (zero fields = defaults). Input is hostile:
 * exceeding a limit is MPROC_EMSGSIZE (size, items) or MPROC_EPROTO (depth),
 * with a message, never a crash or a huge allocation. */
typedef struct mproc_decode_limits {
    size_t max_depth; /* nesting of lists/maps (default 256) */
    size_t max_items; /* total values in one message (default 16 Mi) */
    size_t max_bytes; /* total str/bytes payload in one message (default 1 GiB) */
} mproc_decode_limits;

/* MessagePack. Encode appends to `out`. ERROR values encode as a map
 * {"__error__": type, "message": message}, which decodes back to an ERROR.
 * EXT values encode as MessagePack ext (fixext 1/2/4/8/16 or ext 8/16/32)
 * and every ext form decodes to an EXT (the timestamp, type -1, included:
 * it is not interpreted); the payload counts against max_bytes.
 * decode: exactly one object filling data[0..len) (MPROC_EPROTO otherwise:
 * truncated, trailing bytes, non-UTF-8 str). */
int mproc_msgpack_encode(const mproc_value *v, mproc_buf *out);
int mproc_msgpack_decode(const void *data, size_t len, const mproc_decode_limits *lim,
                         mproc_value **out);

/* Python pickle, plain data only. encode: `protocol` 4 or 5 (0 means 4, what
 * Python 3.8-3.13 multiprocessing sends); an ERROR encodes as the builtin
 * exception, so Python's loads()/recv() returns that exception instance.
 * decode: protocols 0-5 for None,
 * bool, int (beyond int64: MPROC_ERANGE), float, str, bytes, bytearray,
 * tuple/list/set/frozenset (as LIST), dict (as MAP). Opcodes that import or
 * call (GLOBAL, STACK_GLOBAL, REDUCE, BUILD, INST, OBJ, NEWOBJ, NEWOBJ_EX,
 * PERSID, EXT*, ...) are refused with MPROC_EPROTO, never executed, except
 * one whitelisted shape: builtins.<Name>Error / Exception / Warning called
 * with a tuple of arguments, which decodes to an ERROR value (and the fixed
 * spellings protocols 0-3 use for set, frozenset, bytes and bytearray; see
 * docs/value.md). Memo references decode as copies. An EXT has no pickle
 * form: encoding one is MPROC_EINVAL with a message. */
int mproc_pickle_encode(const mproc_value *v, int protocol, mproc_buf *out);
int mproc_pickle_decode(const void *data, size_t len, const mproc_decode_limits *lim,
                        mproc_value **out);

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif
#endif
