/* mproc/core.h — error codes, deadlines, logging and EINTR-safe fd I/O.
 * The bottom layer of mproc: every other layer reports errors and waits through it. */
#ifndef MPROC_CORE_H
#define MPROC_CORE_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#pragma GCC visibility push(default)

#define MPROC_VERSION_MAJOR 0
#define MPROC_VERSION_MINOR 1
#define MPROC_VERSION_PATCH 0

#if defined(__GNUC__)
#define MPROC_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define MPROC_PRINTF(f, a)
#endif

/* ------------------------------------------------------------------ errors */

/* Every function that can fail returns 0 or one of these (always negative).
 * Where an errno value fits, the code IS the negated errno (MPROC_ETIMEDOUT ==
 * -ETIMEDOUT), so a failing syscall's errno can be returned as -errno unchanged. */
enum {
    MPROC_OK = 0,
    MPROC_EPERM = -EPERM,
    MPROC_ENOENT = -ENOENT,
    MPROC_ESRCH = -ESRCH,
    MPROC_EINTR = -EINTR,
    MPROC_EIO = -EIO,
    MPROC_EBADF = -EBADF,
    MPROC_ECHILD = -ECHILD,
    MPROC_EAGAIN = -EAGAIN,
    MPROC_ENOMEM = -ENOMEM,
    MPROC_EACCES = -EACCES,
    MPROC_EEXIST = -EEXIST,
    MPROC_EINVAL = -EINVAL,
    MPROC_EMFILE = -EMFILE,
    MPROC_ENOSPC = -ENOSPC,
    MPROC_EPIPE = -EPIPE,
    MPROC_ERANGE = -ERANGE,
    MPROC_ENOSYS = -ENOSYS,
    MPROC_EPROTO = -EPROTO,
    MPROC_EMSGSIZE = -EMSGSIZE,
    MPROC_ECONNRESET = -ECONNRESET,
    MPROC_ECONNREFUSED = -ECONNREFUSED,
    MPROC_ETIMEDOUT = -ETIMEDOUT,
    MPROC_ECANCELED = -ECANCELED,
    MPROC_EOWNERDEAD = -EOWNERDEAD,
    MPROC_ENOTRECOVERABLE = -ENOTRECOVERABLE,
    MPROC_EDEADLK = -EDEADLK,
    MPROC_EOVERFLOW = -EOVERFLOW,

    /* library codes, below every errno value */
    MPROC_ECLOSED = -10001,  /* the object or its peer is closed (EOF) */
    MPROC_EAUTH = -10002,    /* authentication failed */
    MPROC_EBROKEN = -10003,  /* a shared object is broken (e.g. Barrier) */
    MPROC_EREMOTE = -10004,  /* the remote side reported an error */
    MPROC_ESTATE = -10005,   /* call not valid in the object's current state */
    MPROC_ENOINIT = -10006,  /* spawn/forkserver used without mproc_init() */
    MPROC_EBUILDID = -10007, /* child's binary differs from the parent's */
    MPROC_EFULL = -10008,    /* queue full */
    MPROC_EEMPTY = -10009,   /* queue empty */
    MPROC_EWORKER = -10010,  /* a worker process died while running a task */
};

/* A short English description of `err` ("timed out", ...). Never NULL; unknown
 * codes get "unknown error". The string is static: do not free it. */
const char *mproc_strerror(int err);

/* The symbolic name of `err` ("MPROC_ETIMEDOUT"), or "MPROC_E?" if unknown. Static. */
const char *mproc_errname(int err);

/* Detail of the last failure in the calling thread ("" if none), for example
 * which module's build-id differed. Valid until the thread's next mproc call
 * that fails; thread-local, never NULL, do not free. */
const char *mproc_errmsg(void);

/* Record a detail message for mproc_errmsg() in the calling thread and return
 * `err`: `return mproc_error_set(MPROC_EINVAL, "bad size %zu", n);`. For
 * libraries built on mproc (an executor backend, ...) whose errors should read
 * like mproc's own. The message is cut at 511 bytes. */
int mproc_error_set(int err, const char *fmt, ...) MPROC_PRINTF(2, 3);

/* --------------------------------------------------------------- deadlines */

/* Timeouts are double seconds. MPROC_FOREVER (any negative value) blocks; 0 tries once. */
#define MPROC_FOREVER (-1.0)

/* An absolute point on CLOCK_MONOTONIC; INT64_MAX nanoseconds means "never". */
typedef struct mproc_deadline {
    int64_t ns;
} mproc_deadline;

/* Seconds on CLOCK_MONOTONIC (for measuring intervals). */
double mproc_monotonic(void);

/* The deadline `timeout` seconds from now (negative -> never; NaN -> now). */
mproc_deadline mproc_deadline_after(double timeout);

/* true if `d` has passed. A "never" deadline never expires. */
bool mproc_deadline_expired(mproc_deadline d);

/* Seconds left until `d` (0 if passed, MPROC_FOREVER if never). */
double mproc_deadline_remaining(mproc_deadline d);

/* Milliseconds left for poll(2): -1 for never, 0 when passed, rounded up otherwise. */
int mproc_deadline_poll_ms(mproc_deadline d);

/* ----------------------------------------------------------------- logging */

/* Levels are Python's logging levels, so numbers read the same in both worlds. */
enum {
    MPROC_LOG_SUBDEBUG = 5,
    MPROC_LOG_DEBUG = 10,
    MPROC_LOG_INFO = 20,
    MPROC_LOG_SUBWARNING = 25,
    MPROC_LOG_WARNING = 30,
    MPROC_LOG_ERROR = 40,
    MPROC_LOG_CRITICAL = 50,
    MPROC_LOG_OFF = 100,
};

/* Counterpart of multiprocessing.log_to_stderr(level): messages at `level` or
 * above go to stderr as "[LEVEL/ProcessName] message", one write(2) per line so
 * lines from many processes never interleave. The level is inherited by children
 * under every start method. Default: MPROC_LOG_WARNING to stderr. Restores the
 * stderr handler if mproc_log_set_handler() replaced it. */
void mproc_log_to_stderr(int level);

/* Current threshold. */
int mproc_log_level(void);

/* Route log lines to `fn` instead of stderr (NULL restores stderr). `fn` gets
 * the level, the formatted message without prefix or newline, and `ud`; it may
 * be called from any thread and from child processes after fork. */
typedef void (*mproc_log_fn)(int level, const char *msg, void *ud);
void mproc_log_set_handler(mproc_log_fn fn, void *ud);

/* Log one message at `level` (printf format). Messages longer than 1 KiB are truncated. */
void mproc_log(int level, const char *fmt, ...) MPROC_PRINTF(2, 3);

/* ---------------------------------------------------------------- fd I/O */

/* Write all `len` bytes, retrying on EINTR and partial writes. Sockets are
 * written with MSG_NOSIGNAL, so a closed peer gives MPROC_EPIPE, not SIGPIPE.
 * Returns 0 or a negative errno code. */
int mproc_write_all(int fd, const void *buf, size_t len);

/* Read exactly `len` bytes, retrying on EINTR and partial reads. Returns 0 when
 * all arrived, MPROC_ECLOSED if EOF came first (then *got, if not NULL, tells
 * how many bytes were read), or a negative errno code. */
int mproc_read_all(int fd, void *buf, size_t len, size_t *got);

/* One read(2) retried on EINTR: bytes read (0 = EOF) or a negative errno code. */
ssize_t mproc_read_some(int fd, void *buf, size_t len);

/* Wait until `fd` reports any of `events` (POLLIN, POLLOUT...) or an error/hangup.
 * Returns 0 when ready, MPROC_ETIMEDOUT after `timeout` seconds, or a negative
 * errno code. EINTR is retried against the original deadline. */
int mproc_wait_fd(int fd, short events, double timeout);

/* Set or clear FD_CLOEXEC / O_NONBLOCK. 0 or a negative errno code. */
int mproc_fd_set_cloexec(int fd, bool on);
int mproc_fd_set_nonblock(int fd, bool on);

/* ------------------------------------------------------- fd passing (SCM_RIGHTS) */

/* Largest number of fds one message may carry (the kernel's SCM_MAX_FD). */
#define MPROC_MAX_FDS 253

/* Send `len` bytes (len >= 1) and `nfds` descriptors over the unix socket `sock`
 * in one sendmsg; the fds ride with the first byte. The caller keeps its fds.
 * Returns 0, MPROC_EINVAL (len 0 or too many fds), MPROC_EPIPE, or -errno. */
int mproc_send_fds(int sock, const void *buf, size_t len, const int *fds, size_t nfds);

/* Receive exactly `len` bytes from the stream unix socket `sock`, collecting up to
 * `max_fds` descriptors into `fds` (*nfds gets the count). Received fds are
 * close-on-exec and owned by the caller. If more fds arrive than fit, all of them
 * are closed and MPROC_EPROTO is returned. EOF before `len` bytes gives MPROC_ECLOSED
 * (received fds are closed). Blocks at most `timeout` seconds (MPROC_ETIMEDOUT). */
int mproc_recv_fds(int sock, void *buf, size_t len, int *fds, size_t max_fds, size_t *nfds,
                   double timeout);

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif
#endif
