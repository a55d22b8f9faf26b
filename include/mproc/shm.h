/* mproc/shm.h — shared memory segments: anonymous (memfd: shareable with any
 * child, cannot leak) and named (POSIX shm_open, tracked by the resource
 * tracker), the counterpart of multiprocessing.shared_memory.SharedMemory. */
#ifndef MPROC_SHM_H
#define MPROC_SHM_H

#include <stdbool.h>
#include <stddef.h>

#include "process.h"

#ifdef __cplusplus
extern "C" {
#endif

#pragma GCC visibility push(default)

/* A mapped segment. Every handle has its own mapping of the same memory. */
typedef struct mproc_shm mproc_shm;

/* Longest name accepted, without the leading '/' (NAME_MAX less the "sem." room). */
#define MPROC_SHM_NAME_MAX 248

/* A new anonymous segment of `size` bytes (> 0), zero-filled, backed by a memfd.
 * It has no name, so it can never be leaked: the memory goes away with the last
 * mapping or descriptor. Pass it to children with mproc_args_add_object(args,
 * &mproc_shm_type, shm). Errors: MPROC_EINVAL (size 0), MPROC_ENOMEM, -errno. */
int mproc_shm_new(mproc_shm **out, size_t size);

/* Create or attach a named segment, like SharedMemory(name, create, size).
 * `name` may be given with or without its leading '/' ("seg" and "/seg" are the
 * same segment, as in Python); NULL with create=true picks a fresh random name.
 * create=true makes a new segment of `size` bytes (> 0, zero-filled) and fails
 * with MPROC_EEXIST if the name is taken; the creating program's resource
 * tracker unlinks it when the program ends unless mproc_shm_unlink() ran first.
 * create=false attaches an existing segment (size 0 = its whole size, else at
 * most its size) and never registers it, so attaching cannot unlink anything.
 * Errors: MPROC_EINVAL (bad name or size), MPROC_EEXIST, MPROC_ENOENT,
 * MPROC_EACCES, MPROC_ENOMEM, -errno. */
int mproc_shm_open(mproc_shm **out, const char *name, bool create, size_t size);

/* The mapped memory (page-aligned, valid until mproc_shm_close) and its size. */
void *mproc_shm_buf(const mproc_shm *s);
size_t mproc_shm_size(const mproc_shm *s);

/* The name without its leading '/' (as Python's SharedMemory.name), or NULL for
 * an anonymous segment. Owned by the handle. */
const char *mproc_shm_name(const mproc_shm *s);

/* Remove the name so no one else can attach (existing mappings stay valid).
 * Only meaningful for named segments: MPROC_EINVAL for anonymous ones;
 * MPROC_ENOENT if the name is already gone. Does not close the handle. */
int mproc_shm_unlink(mproc_shm *s);

/* Unmap and free the handle (not the segment: see mproc_shm_unlink). NULL is ok. */
void mproc_shm_close(mproc_shm *s);

/* The shareable type: under spawn and forkserver the child receives the
 * segment's descriptor and maps it itself (named or not); the child's handle is
 * released when its args are freed. */
extern const mproc_shareable_type mproc_shm_type;

/* ------------------------------------------------- Value, Array (sharedctypes) */

/* Typed shared values and arrays, the counterparts of multiprocessing's Value,
 * Array, RawValue and RawArray. The storage lives in a memfd segment (so it is
 * shareable with children under every start method and cannot leak); a locked
 * one carries a process-shared mproc_lock (see mproc/sync.h) in the same
 * segment, like Python's synchronized wrappers. */
typedef struct mproc_lock mproc_lock; /* mproc/sync.h */
typedef struct mproc_shared_value mproc_shared_value;
typedef struct mproc_shared_array mproc_shared_array;

/* Element types, named by Python's typecodes so both spellings work:
 * mproc_shared_value_new(&v, MPROC_C_DOUBLE, ...) or (&v, 'd', ...). */
typedef enum mproc_ctype {
    MPROC_C_CHAR = 'c',      /* char (Python c_char) */
    MPROC_C_WCHAR = 'u',     /* wchar_t */
    MPROC_C_BYTE = 'b',      /* signed char */
    MPROC_C_UBYTE = 'B',     /* unsigned char */
    MPROC_C_SHORT = 'h',
    MPROC_C_USHORT = 'H',
    MPROC_C_INT = 'i',
    MPROC_C_UINT = 'I',
    MPROC_C_LONG = 'l',
    MPROC_C_ULONG = 'L',
    MPROC_C_LONGLONG = 'q',
    MPROC_C_ULONGLONG = 'Q',
    MPROC_C_FLOAT = 'f',
    MPROC_C_DOUBLE = 'd',
} mproc_ctype;

/* Size in bytes of one element of `t`, 0 if `t` is not a known type. */
size_t mproc_ctype_size(mproc_ctype t);

typedef enum mproc_shared_lock {
    MPROC_SHARED_RLOCK = 0, /* a new RLock of its own (Python's lock=True) */
    MPROC_SHARED_LOCK,      /* a new plain Lock of its own */
    MPROC_SHARED_RAW,       /* no lock: RawValue / RawArray (Python's lock=False) */
} mproc_shared_lock;

typedef struct mproc_shared_opts {
    mproc_shared_lock lock;
    /* Use this existing Lock/RLock instead (Python's lock=some_lock); borrowed:
     * it must outlive the object. Children get it along with the object.
     * `lock` is then ignored, except that MPROC_SHARED_RAW is MPROC_EINVAL. */
    mproc_lock *use_lock;
} mproc_shared_opts;

/* A shared value of type `t`, initialised from *init (one element) or zero
 * when init is NULL. opts NULL = with an RLock of its own, like Value(t, x).
 * Errors: MPROC_EINVAL (unknown type), MPROC_ENOMEM, -errno. */
int mproc_shared_value_new(mproc_shared_value **out, mproc_ctype t, const void *init,
                           const mproc_shared_opts *opts);
/* RawValue(t, x): the same with no lock. */
int mproc_raw_value_new(mproc_shared_value **out, mproc_ctype t, const void *init);

/* The storage (get_obj()): read and write it directly, holding the lock where
 * others may write. Valid until the handle is freed. */
void *mproc_shared_value_get_obj(const mproc_shared_value *v);
/* The lock (get_lock()), borrowed; NULL for a raw value. */
mproc_lock *mproc_shared_value_get_lock(const mproc_shared_value *v);
mproc_ctype mproc_shared_value_ctype(const mproc_shared_value *v);

/* Copy the value out / in with the lock held (Python's .value). 0, or
 * MPROC_EOWNERDEAD when the lock's previous owner died (the copy was still made;
 * the data may be half-written by the dead process). */
int mproc_shared_value_load(const mproc_shared_value *v, void *out);
int mproc_shared_value_store(mproc_shared_value *v, const void *in);

/* Conveniences converting from/to the element type, with the lock held
 * (errors other than a NULL handle cannot happen but EOWNERDEAD, ignored here:
 * use load/store to see it). Conversions: integer types to/from int64 as C
 * converts (a narrower type wraps; 'c' is an unsigned 8-bit integer, 'u' the
 * wchar_t's value; 'L'/'Q' above INT64_MAX read back wrapped); a floating
 * value to an integer truncates toward zero and saturates at the range (NaN
 * gives 0). Every locked operation here and below runs inside the caller's
 * hold when the calling thread already holds the object's lock (so a plain
 * Lock cannot deadlock it); raw objects never show a torn element. */
int64_t mproc_shared_value_get_i64(const mproc_shared_value *v);
double mproc_shared_value_get_f64(const mproc_shared_value *v);
int mproc_shared_value_set_i64(mproc_shared_value *v, int64_t x);
int mproc_shared_value_set_f64(mproc_shared_value *v, double x);

/* Add `delta` as one atomic step and store the new value in *result (may be
 * NULL): the fix for seed 000's lost update (`v.value += 1` in Python reads and
 * writes under two separate lock holds). Locked values take their lock; raw
 * ones use a CPU atomic, so they are safe too. 0 or MPROC_EOWNERDEAD. */
int mproc_shared_value_add_i64(mproc_shared_value *v, int64_t delta, int64_t *result);
int mproc_shared_value_add_f64(mproc_shared_value *v, double delta, double *result);

/* Free this process's handle (other processes keep theirs). NULL is ok. */
void mproc_shared_value_free(mproc_shared_value *v);
extern const mproc_shareable_type mproc_shared_value_type;

/* A shared array of `len` (> 0) elements of type `t`, initialised from
 * init[0..len) or zero when init is NULL; opts as for values. */
int mproc_shared_array_new(mproc_shared_array **out, mproc_ctype t, size_t len, const void *init,
                           const mproc_shared_opts *opts);
/* RawArray(t, len). */
int mproc_raw_array_new(mproc_shared_array **out, mproc_ctype t, size_t len, const void *init);

void *mproc_shared_array_get_obj(const mproc_shared_array *a);
mproc_lock *mproc_shared_array_get_lock(const mproc_shared_array *a);
mproc_ctype mproc_shared_array_ctype(const mproc_shared_array *a);
size_t mproc_shared_array_len(const mproc_shared_array *a);

/* Copy elements [start, start+count) out / in with the lock held (slices).
 * MPROC_ERANGE if the range does not fit; otherwise 0 or MPROC_EOWNERDEAD. */
int mproc_shared_array_read(const mproc_shared_array *a, size_t start, size_t count, void *out);
int mproc_shared_array_write(mproc_shared_array *a, size_t start, size_t count, const void *in);

/* One element, converted, with the lock held. get_*: 0 when out of range. */
int64_t mproc_shared_array_get_i64(const mproc_shared_array *a, size_t i);
double mproc_shared_array_get_f64(const mproc_shared_array *a, size_t i);
int mproc_shared_array_set_i64(mproc_shared_array *a, size_t i, int64_t x);
int mproc_shared_array_set_f64(mproc_shared_array *a, size_t i, double x);

void mproc_shared_array_free(mproc_shared_array *a);
extern const mproc_shareable_type mproc_shared_array_type;

/* ---------------------------------------------------------- ShareableList */

/* A fixed-length list of small values in one named segment, the counterpart
 * of multiprocessing.shared_memory.ShareableList and laid out exactly like it
 * (CPython 3.8-3.13 format), so a Python program can attach a list a C program
 * made, and the other way round. Like Python's, it has no lock: guard
 * concurrent writers with a mproc_lock. */
typedef struct mproc_shareable_list mproc_shareable_list;

typedef enum mproc_sl_kind {
    MPROC_SL_INT = 1, /* int64 (Python int within 64 bits) */
    MPROC_SL_FLOAT,   /* double */
    MPROC_SL_BOOL,
    MPROC_SL_NONE,
    MPROC_SL_STR,     /* UTF-8 text; trailing NULs are dropped, as in Python */
    MPROC_SL_BYTES,   /* bytes; trailing NULs are dropped, as in Python */
} mproc_sl_kind;

/* One item. For STR and BYTES, `s`/`len` point at the text (not NUL-terminated
 * when read back) and `capacity`, when creating, asks for at least that many
 * bytes of room so longer values can be stored later (0 = Python's choice:
 * len rounded up to the next multiple of 8, plus 8 if it was a multiple). */
typedef struct mproc_sl_item {
    mproc_sl_kind kind;
    union {
        int64_t i;
        double f;
        bool b;
        struct {
            const char *s;
            size_t len;
        };
    };
    size_t capacity;
} mproc_sl_item;

/* Create a list of `n` items (n may be 0) in a new named segment, like
 * ShareableList(sequence, name=name). name NULL picks a fresh random one. The
 * segment is registered with the resource tracker exactly as mproc_shm_open
 * does. Errors: MPROC_EINVAL (bad item kind, NULL items with n > 0, bad name),
 * MPROC_EEXIST, MPROC_ENOMEM, -errno. */
int mproc_shareable_list_new(mproc_shareable_list **out, const char *name, const mproc_sl_item *items,
                             size_t n);

/* Attach an existing list by name (made by mproc or by Python), like
 * ShareableList(name=name). The layout is validated against the segment size:
 * a segment that is not a well-formed list gives MPROC_EPROTO, never a crash.
 * Errors: MPROC_ENOENT, MPROC_EPROTO, MPROC_EINVAL, -errno. */
int mproc_shareable_list_open(mproc_shareable_list **out, const char *name);

/* Number of items. */
size_t mproc_shareable_list_len(const mproc_shareable_list *l);

/* Read item `i` (negative counts from the end, as in Python) into *out. For STR
 * and BYTES, out->s points into the shared segment (valid until the item is
 * overwritten or the list closed; copy it if others may write) and out->len is
 * the length without trailing NULs; out->capacity is the room of the slot.
 * Errors: MPROC_ERANGE (index), MPROC_EPROTO (slot holds an unknown format). */
int mproc_shareable_list_get(const mproc_shareable_list *l, long i, mproc_sl_item *out);

/* Store into item `i`, changing its kind if needed (as Python's __setitem__):
 * INT, FLOAT, BOOL and NONE always fit; STR and BYTES must fit the slot's
 * capacity (MPROC_EMSGSIZE otherwise, the item is unchanged). `item->capacity`
 * is ignored. Errors: MPROC_ERANGE, MPROC_EMSGSIZE, MPROC_EINVAL. */
int mproc_shareable_list_set(mproc_shareable_list *l, long i, const mproc_sl_item *item);

/* Index of the first item equal to `item` (as Python's ==: INT, FLOAT and BOOL
 * compare by value, True == 1 == 1.0; other kinds must match), like ShareableList.index():
 * MPROC_ENOENT if none. count() counts them. */
int mproc_shareable_list_index(const mproc_shareable_list *l, const mproc_sl_item *item, size_t *index);
size_t mproc_shareable_list_count(const mproc_shareable_list *l, const mproc_sl_item *item);

/* The underlying segment (ShareableList.shm), borrowed: use it for its name,
 * mproc_shm_unlink() and sizes, never close it. */
mproc_shm *mproc_shareable_list_shm(const mproc_shareable_list *l);

/* Unmap and free the handle (not the segment: unlink through the shm). NULL ok. */
void mproc_shareable_list_close(mproc_shareable_list *l);

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif
#endif
