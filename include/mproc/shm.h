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

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif
#endif
