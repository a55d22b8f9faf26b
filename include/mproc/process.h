/* mproc/process.h — processes, start methods (fork, spawn, forkserver), arguments
 * and shareable objects handed to children, and the resource tracker. */
#ifndef MPROC_PROCESS_H
#define MPROC_PROCESS_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

#pragma GCC visibility push(default)

/* --------------------------------------------------------------- mproc_init */

/* Call first in main(): the C counterpart of `if __name__ == "__main__":`.
 * In a process started by spawn or forkserver it never returns: it runs the
 * child's target (or the fork server) and exits with the target's code. In an
 * ordinary program it records argv (spawned children get the same argv) and
 * returns 0. Programs that only use fork may skip it; spawn and forkserver
 * refuse to start (MPROC_ENOINIT) until it has been called. argc/argv may be NULL. */
int mproc_init(int *argc, char ***argv); /* 0, or MPROC_ENOMEM copying argv */

/* --------------------------------------------------------- start methods */

typedef enum mproc_start_method {
    MPROC_START_DEFAULT = 0, /* whatever mproc_set_start_method() chose; fork if nothing */
    MPROC_START_FORK = 1,
    MPROC_START_SPAWN = 2,
    MPROC_START_FORKSERVER = 3,
} mproc_start_method;

/* "fork", "spawn", "forkserver" (or "default"). Static string. */
const char *mproc_start_method_name(mproc_start_method m);

/* Parse a name as above into *out. MPROC_EINVAL for unknown names. */
int mproc_start_method_parse(const char *name, mproc_start_method *out);

/* Choose the start method used when no context is given, like Python's
 * multiprocessing.set_start_method(). Fails with MPROC_ESTATE if a method was
 * already chosen or a process already started with the default, unless `force`. */
int mproc_set_start_method(mproc_start_method m, bool force);

/* The default method in effect (MPROC_START_FORK until one is chosen). */
mproc_start_method mproc_get_start_method(void);

/* A start-method context, like multiprocessing.get_context(): pass it in the
 * opts of processes (and later queues, pools...) to pick the method per call.
 * Contexts are static singletons: never free them. MPROC_START_DEFAULT gives the
 * context that follows mproc_set_start_method(). Returns NULL for bad values. */
typedef struct mproc_context mproc_context;
mproc_context *mproc_get_context(mproc_start_method m);

/* The method a context starts processes with (resolving DEFAULT). NULL = default context. */
mproc_start_method mproc_context_start_method(const mproc_context *ctx);

/* Program re-executed by spawn and the fork server, like
 * multiprocessing.set_executable(). NULL restores the default, /proc/self/exe
 * (the very binary that is running, even if the file was replaced on disk).
 * The path is copied. MPROC_ENOENT (no such file) or MPROC_EACCES (not
 * executable). A running fork server keeps the binary it was started from. */
int mproc_set_executable(const char *path);

/* ----------------------------------------------------- shareable objects */

/* A growable byte buffer that exporters append to. */
typedef struct mproc_buf {
    uint8_t *data;
    size_t len, cap;
} mproc_buf;

/* Append `len` bytes. 0 or MPROC_ENOMEM. */
int mproc_buf_append(mproc_buf *b, const void *data, size_t len);

/* The shareable-object protocol. Any object that can cross into a child (a
 * queue, lock, connection, shared segment...) is described by one static const
 * mproc_shareable_type. Under fork the child receives the very same pointer;
 * under spawn and forkserver the parent calls export_obj() and the child calls
 * import_obj(), with the fds carried over SCM_RIGHTS. The type itself crosses as
 * a (build-id, offset) reference, so it must be a static object in the program
 * or one of its shared libraries. */
typedef struct mproc_shareable_type {
    const char *name;  /* unique, e.g. "mproc.fd"; checked in the child */
    /* Describe `obj` as bytes (append to `out`) and descriptors: store them in
     * fds[0], fds[1], ... counting in *nfds (which starts at 0), never more than
     * `max_fds`. The fds stay owned by the object; the child gets duplicates.
     * 0 or a negative code (start() fails with it). */
    int (*export_obj)(const void *obj, mproc_buf *out, int *fds, size_t *nfds, size_t max_fds);
    /* Build the object in the child from `data` and `fds`. On success the new
     * object owns the fds; on failure the library closes them. 0 or a negative code. */
    int (*import_obj)(const void *data, size_t len, const int *fds, size_t nfds, void **obj);
    /* Release an imported object (called by mproc_args_free in the child). May be NULL. */
    void (*release)(void *obj);
} mproc_shareable_type;

/* ---------------------------------------------------------------- args */

/* An ordered list of arguments for a child: integers, doubles, strings, bytes,
 * descriptors and shareable objects. */
typedef struct mproc_args mproc_args;

typedef enum mproc_arg_kind {
    MPROC_ARG_NONE = 0, /* index out of range */
    MPROC_ARG_INT,
    MPROC_ARG_DOUBLE,
    MPROC_ARG_STR,
    MPROC_ARG_BYTES,
    MPROC_ARG_FD,
    MPROC_ARG_OBJECT,
} mproc_arg_kind;

/* A new empty list, or NULL when out of memory. Free with mproc_args_free(). */
mproc_args *mproc_args_new(void);

/* Free the list: copies of strings/bytes, duplicated fds, and imported objects
 * (in a child). Borrowed objects added by the parent are not touched. NULL is ok. */
void mproc_args_free(mproc_args *a);

/* Append a value. Strings and bytes are copied. 0, MPROC_EINVAL or MPROC_ENOMEM. */
int mproc_args_add_int(mproc_args *a, int64_t v);
int mproc_args_add_double(mproc_args *a, double v);
int mproc_args_add_str(mproc_args *a, const char *s);
int mproc_args_add_bytes(mproc_args *a, const void *p, size_t n);

/* Append a descriptor: `fd` is duplicated (the caller keeps its own). The child
 * gets its own copy, which mproc_args_free() closes unless taken with
 * mproc_args_take_fd(). MPROC_EBADF if fd is not open. */
int mproc_args_add_fd(mproc_args *a, int fd);

/* Append a shareable object. `obj` is borrowed: it must stay valid until every
 * process started with these args has been started. MPROC_EINVAL if type lacks
 * export_obj/import_obj. */
int mproc_args_add_object(mproc_args *a, const mproc_shareable_type *type, void *obj);

/* Number of arguments, and the kind of argument i (MPROC_ARG_NONE if out of range). */
size_t mproc_args_count(const mproc_args *a);
mproc_arg_kind mproc_args_kind(const mproc_args *a, size_t i);

/* Typed getters. They return MPROC_EINVAL (and leave *out alone) when argument
 * i does not exist or has another kind. */
int mproc_args_get_int(const mproc_args *a, size_t i, int64_t *out);
int mproc_args_get_double(const mproc_args *a, size_t i, double *out);

/* The string / bytes of argument i (owned by the list), or NULL on a kind
 * mismatch. For bytes, *len gets the length. */
const char *mproc_args_str(const mproc_args *a, size_t i);
const void *mproc_args_bytes(const mproc_args *a, size_t i, size_t *len);

/* The descriptor of argument i (owned by the list), or -1 on a kind mismatch. */
int mproc_args_fd(const mproc_args *a, size_t i);

/* Take ownership of descriptor i: the list forgets it, you close it. -1 on mismatch. */
int mproc_args_take_fd(mproc_args *a, size_t i);

/* The object of argument i if it has type `type`, else NULL. Owned by the list
 * (in a child, released by mproc_args_free; in the parent, the borrowed pointer). */
void *mproc_args_object(const mproc_args *a, size_t i, const mproc_shareable_type *type);

/* ------------------------------------------------------------- processes */

typedef struct mproc_process mproc_process;

/* A child's entry point. Its return value (0..255) is the child's exit code.
 * `args` is owned by the library and freed after the target returns. Returning
 * is better than calling exit(): the library flushes stdio and skips the
 * parent's atexit handlers that a fork child would otherwise inherit. */
typedef int (*mproc_target_fn)(mproc_args *args);

typedef struct mproc_process_opts {
    const char *name;          /* copied; default "Process-N" (N per parent, "1:2" nested) */
    bool daemon;               /* terminated when the parent exits; may not start children */
    const mproc_context *ctx;  /* start method; NULL = default context */
    double start_timeout;      /* spawn/forkserver: bound on each start-up stage (server
                                  hello, fork, BOOT handshake); 0 = 60 s, negative = no
                                  bound. On expiry the child (or server) is killed. */
} mproc_process_opts;

/* Exit code value meaning "has not exited yet". */
#define MPROC_EXITCODE_NONE INT_MIN

/* Create a process object (not started). `args` may be NULL; it is copied
 * (strings, bytes, dup'ed fds; objects stay borrowed), so it can be freed
 * right after. The copy is dropped once start() succeeds, as Python does, so
 * the parent's copies of handed fds never keep a pipe open behind your back.
 * *out gets the object; release it with mproc_process_close().
 * Errors: MPROC_EINVAL (NULL target/out), MPROC_ENOMEM, MPROC_EBADF. */
int mproc_process_new(mproc_process **out, mproc_target_fn target, const mproc_args *args,
                      const mproc_process_opts *opts);

/* Start the child. Under spawn and forkserver this returns once the child has
 * resolved its target and is about to run it, so launch problems come back
 * here: MPROC_ENOINIT (mproc_init() missing, in this program, the child or the
 * fork server), MPROC_EBUILDID (the child runs a different binary),
 * MPROC_ETIMEDOUT (start_timeout), MPROC_ECHILD (the child exited during
 * start-up), MPROC_ESTATE (already started, or called from a daemon process),
 * MPROC_EPROTO, a shareable type's export error, or -errno from fork/exec.
 * mproc_errmsg() has the detail. The start method is resolved here (as in
 * Python), from opts.ctx or the global default at this moment. */
int mproc_process_start(mproc_process *p);

/* Wait up to `timeout` seconds for the child to end and reap it. Returns 0 if
 * it has ended (see mproc_process_exitcode), MPROC_ETIMEDOUT if still running,
 * MPROC_ESTATE if never started, if p is the current process, or if the
 * calling process is not the one that started it. Thread-safe per object. */
int mproc_process_join(mproc_process *p, double timeout);

/* true while the child has started and not yet ended (reaps it if it has). */
bool mproc_process_is_alive(mproc_process *p);

/* Exit code: the target's return value or exit() status, or the negated signal
 * number if a signal killed it (-9 for SIGKILL, like Python). MPROC_EXITCODE_NONE
 * while running or before start. 255 when the status was lost (the fork server
 * died, or SIGCHLD is ignored so the kernel reaped it). Does not wait for the
 * child; for a fork-server child that has just ended it waits (at most ~2 s)
 * for the server's report, so that it never says "running" after the end. */
int mproc_process_exitcode(mproc_process *p);

/* Process id (0 before start). */
pid_t mproc_process_pid(const mproc_process *p);

/* A pidfd that becomes readable (POLLIN) when the child ends; once it is,
 * exitcode() is known without joining. -1 before start (and in the rare case a
 * fork child ended before it could be watched: then exitcode is already set).
 * Owned by the process object until close(): poll it, do not close it. */
int mproc_process_sentinel(const mproc_process *p);

/* Send SIGTERM / SIGKILL (through the pidfd, so never to a recycled pid).
 * 0 also when the child already ended; MPROC_ESTATE if never started. */
int mproc_process_terminate(mproc_process *p);
int mproc_process_kill(mproc_process *p);

/* The name (owned by the object) and daemon flag. */
const char *mproc_process_name(const mproc_process *p);
bool mproc_process_daemon(const mproc_process *p);

/* The start method the object uses (or used). */
mproc_start_method mproc_process_start_method(const mproc_process *p);

/* Release the object, like Process.close(): MPROC_ESTATE (and nothing happens)
 * if the child is still running; join or kill it first. NULL is ok (returns 0).
 * The objects of mproc_current_process/mproc_parent_process are static:
 * closing them gives MPROC_EINVAL. */
int mproc_process_close(mproc_process *p);

/* The current process (name "MainProcess" in the program, the child's name in a
 * child). Static object owned by the library: do not close. */
mproc_process *mproc_current_process(void);

/* The process that started this one, or NULL in the main process. Owned by the
 * library. join() waits for it to end (it cannot reap it); is_alive() works. */
mproc_process *mproc_parent_process(void);

/* The started, not yet closed children that are still running, reaping those
 * that ended (like multiprocessing.active_children()). *out gets a malloc'd
 * array of borrowed pointers (free() the array, not the processes; NULL when
 * *n is 0); *n its length. */
int mproc_active_children(mproc_process ***out, size_t *n);

/* Number of CPUs this process may run on (its affinity mask), at least 1. */
int mproc_cpu_count(void);

/* ------------------------------------------------------- resource tracker */

/* The resource tracker is a small process (started on first use, and whenever a
 * child is started by spawn or forkserver) that remembers named resources -
 * POSIX shared memory ("shm") and named semaphores ("sem") - created by any
 * process of the program. When every process of the program has ended (even by
 * SIGKILL), it unlinks what is still registered and logs a warning. It ignores
 * SIGINT/SIGTERM and runs in its own session so Ctrl-C or killing the process
 * group does not take it down before it has cleaned up. */

/* Make sure the tracker runs (the counterpart of resource_tracker.ensure_running).
 * Call it before forking children that create named resources the parent keeps
 * using, so they share the parent's tracker. 0 or a negative code. */
int mproc_tracker_ensure(void);

/* Register / unregister the named resource `name` (e.g. "/my-seg") of `type`
 * ("shm" or "sem"). Registrations are counted; the last unregister forgets it.
 * MPROC_EINVAL for unknown types or bad names; other codes if the tracker
 * cannot be reached. */
int mproc_tracker_register(const char *type, const char *name);
int mproc_tracker_unregister(const char *type, const char *name);

/* The tracker's pid, or 0 if none is running for this program. */
pid_t mproc_tracker_pid(void);

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif
#endif
