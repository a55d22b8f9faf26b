/* internal.h — private declarations shared by mproc's layers.
 * Nothing here is installed; names use the mproc__ prefix. */
#ifndef MPROC_INTERNAL_H
#define MPROC_INTERNAL_H

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <pthread.h>
#include <sys/socket.h>

#include "mproc/core.h"
#include "mproc/process.h"

#define MPROC_UNUSED(x) ((void)(x))

/* CLOCK_MONOTONIC in nanoseconds (src/core/time.c). A deadline of 0 means
 * "already passed" (what mproc_deadline_after(0) gives). */
int64_t mproc__now_ns(void);
/* ---------------------------------------------------------------- errors */

/* Record a detail message for mproc_errmsg() and return `err` (for `return mproc__fail(...)`). */
int mproc__fail(int err, const char *fmt, ...) MPROC_PRINTF(2, 3);

/* -errno of the last failed syscall, never 0 (EIO if errno was somehow 0). */
int mproc__errno(void);

/* ------------------------------------------------------------ syscalls (src/sys) */

int mproc__pidfd_open(pid_t pid);                /* fd or -errno */
int mproc__pidfd_signal(int pidfd, int sig);     /* 0 or -errno; ESRCH => 0 */
/* Close every fd >= lowfd except those in keep[] (sorted or not). */
void mproc__close_fds_from(int lowfd, const int *keep, size_t nkeep);
/* Copy the executable to re-exec for spawn/forkserver/tracker ("/proc/self/exe" unless set). */
void mproc__executable(char *buf, size_t len);
/* posix_spawn the executable with MPROC_ROLE=role, `fd` as descriptor 3, stdin
 * from /dev/null and no other descriptor above 2. Optionally in a new session. */
int mproc__launch(const char *role, int fd, bool new_session, pid_t *pid);

/* -------------------------------------------------------------- reader */

/* Bounds-checked cursor over received bytes; every get fails (-EPROTO) once exhausted. */
typedef struct mproc_reader {
    const uint8_t *p, *end;
} mproc_reader;

int mproc__put_u8(mproc_buf *b, uint8_t v);
int mproc__put_u32(mproc_buf *b, uint32_t v);
int mproc__put_u64(mproc_buf *b, uint64_t v);
int mproc__put_blob(mproc_buf *b, const void *p, size_t n); /* u32 length + bytes */
int mproc__put_str(mproc_buf *b, const char *s);            /* blob incl. no NUL; NULL -> "" */
int mproc__get_u8(mproc_reader *r, uint8_t *v);
int mproc__get_u32(mproc_reader *r, uint32_t *v);
int mproc__get_u64(mproc_reader *r, uint64_t *v);
int mproc__get_blob(mproc_reader *r, const uint8_t **p, size_t *n);
/* A NUL-terminated malloc'd copy of a blob. */
int mproc__get_str(mproc_reader *r, char **out);
void mproc__buf_free(mproc_buf *b);

/* ------------------------------------------------------- framed messages */

/* Internal control messages between parent, child, fork server and tracker:
 * a 16-byte header (magic, version, type, nfds, length) then the body. The fds
 * ride on the header. Bodies are limited to MPROC__MSG_MAX. */
#define MPROC__MAGIC 0x4d50524fu /* "MPRO" */
#define MPROC__PROTO_VERSION 1u
#define MPROC__MSG_MAX (256u << 20)

enum {
    MPROC__MSG_BOOT = 1,   /* parent -> child: what to run */
    MPROC__MSG_READY = 2,  /* child -> parent: target resolved, running */
    MPROC__MSG_ERROR = 3,  /* child -> parent: cannot run (code + text) */
    MPROC__MSG_SPAWN = 4,  /* parent -> fork server: fork a child (fd attached) */
    MPROC__MSG_PID = 5,    /* fork server -> parent: pid (+ pidfd attached) */
    MPROC__MSG_EXIT = 6,   /* fork server -> parent: wait status of a child */
};

int mproc__msg_send(int fd, uint32_t type, const void *body, size_t len, const int *fds, size_t nfds);
int mproc__msg_send_until(int fd, uint32_t type, const void *body, size_t len, const int *fds,
                          size_t nfds, mproc_deadline d);
/* Deadline-bounded writes (sockets always; other fds when non-blocking). */
int mproc__write_all_until(int fd, const void *buf, size_t len, mproc_deadline d);
int mproc__send_fds_until(int sock, const void *buf, size_t len, const int *fds, size_t nfds,
                          mproc_deadline d);
/* Receive one message; *body is malloc'd (free it), fds are CLOEXEC and owned by the caller. */
int mproc__msg_recv(int fd, uint32_t *type, uint8_t **body, size_t *len, int *fds, size_t max_fds,
                    size_t *nfds, double timeout);

/* ------------------------------------------- references to code and static data */

/* Append a reference to `addr` (a function or static object inside a loaded
 * ELF module) as (module build-id, offset, module path). */
int mproc__modref_put(mproc_buf *b, const void *addr);
/* Resolve a reference read from `r` in this process. MPROC_EBUILDID when no
 * loaded (or loadable) module has that build-id. */
int mproc__modref_get(mproc_reader *r, void **addr);

/* -------------------------------------------------------------- args */

typedef struct mproc_arg {
    mproc_arg_kind kind;
    union {
        int64_t i;
        double d;
        struct {
            char *p;
            size_t n;
        } s; /* str and bytes */
        int fd;
        struct {
            const mproc_shareable_type *type;
            void *obj;
            bool imported; /* release() it on free */
        } o;
    } u;
} mproc_arg;

struct mproc_args {
    mproc_arg *v;
    size_t n, cap;
};

int mproc__args_copy(const mproc_args *src, mproc_args **out);
/* Serialise for a child: bytes into b, fds appended to fds (up to MPROC_MAX_FDS). */
int mproc__args_export(const mproc_args *a, mproc_buf *b, int *fds, size_t *nfds);
/* Rebuild in a child. Takes ownership of fds[0..nfds) (closes them on failure). */
int mproc__args_import(mproc_reader *r, int *fds, size_t nfds, mproc_args **out);

/* ------------------------------------------------------ process globals */

/* Who this process is, as the process layer sees it. */
typedef struct mproc_self {
    char name[128];       /* "MainProcess" or the child's name */
    char identity[64];    /* "" in the main process, "1", "1:2", ... */
    bool daemon;
    pid_t parent_pid;     /* 0 in the main process */
    bool parent_is_logical; /* started through the fork server: getppid() differs */
    atomic_uint child_counter;
} mproc_self;

extern mproc_self mproc__self;
extern atomic_bool mproc__init_called;
/* Set in a process exec'd by spawn whose main() has not reached mproc_init(). */
extern atomic_bool mproc__bootstrapping;
extern atomic_int mproc__log_level_v;

/* Child side of the start methods: run `boot` (read from `fd`), answer READY or
 * ERROR on `fd`, run the target and _exit. Never returns. */
_Noreturn void mproc__child_main(int fd);
/* Common tail of every child: free args, flush, run the exit handler, _exit(code). */
_Noreturn void mproc__child_exit(int code);
/* Apply a received BOOT message body to this process (identity, log level,
 * tracker address) and return the target + args. */
int mproc__boot_decode(const uint8_t *body, size_t len, int *fds, size_t nfds, mproc_target_fn *fn,
                       mproc_args **args);
int mproc__boot_encode(mproc_buf *b, const char *name, const char *identity, bool daemon,
                       mproc_target_fn fn, const mproc_args *args, int *fds, size_t *nfds);

/* Fork-server side (src/process/forkserver.c). */
_Noreturn void mproc__forkserver_main(int ctrl_fd);
/* pthread_atfork phases for each layer's lock: 0 prepare (lock), 1 parent
 * (unlock), 2 child (reset). See the table in docs/design.md. */
void mproc__forkserver_atfork(int phase);
/* The shared part of those: lock (0), unlock (1) or reset (2) `mu`; true in the child. */
static inline bool mproc__mutex_atfork(pthread_mutex_t *mu, int phase)
{
    static const pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    if (phase == 0)
        pthread_mutex_lock(mu);
    else if (phase == 1)
        pthread_mutex_unlock(mu);
    else
        *mu = fresh; /* a plain store: no libc call in every fork child */
    return phase == 2;
}
void mproc__tracker_atfork(int phase);
void mproc__context_atfork(int phase);

/* Tracker (src/process/tracker.c). */
_Noreturn void mproc__tracker_main(int listen_fd);
/* Tell the tracker to consider the program alive while `pidfd`'s process lives. */
int mproc__tracker_watch(int pidfd);
/* The tracker's address for children ("" if none), and adopting one received in BOOT. */
void mproc__tracker_address(char *buf, size_t len, pid_t *pid);
void mproc__tracker_adopt(const char *address, pid_t pid);

/* Roles announced to a re-executed binary through the environment. */
#define MPROC__ROLE_ENV "MPROC_ROLE"
#define MPROC__BOOT_FD 3

/* The kernel thread id of the calling thread, cached per thread (the fork
 * child's copy is reset by the atfork child handler in process.c). */
extern __thread pid_t mproc__tid_cache __attribute__((tls_model("initial-exec")));
pid_t mproc__tid_slow(void);
static inline pid_t mproc__tid(void)
{
    pid_t t = mproc__tid_cache;
    return t ? t : mproc__tid_slow();
}

/* Free a segment handle but keep its memory mapped (src/shm/shm.c; used for
 * sync objects a live thread still holds, see mproc__sync_close_shm). */
struct mproc_shm;
void mproc__shm_close_keep_mapping(struct mproc_shm *s);

/* How long waiters on this queue handle poll before they sleep (src/queue):
 * polls < 0 restores the default. Waiters that expect a long wait (a pool
 * whose tasks take long) set 0, so they leave the CPU to the processes they
 * wait for. */
struct mproc_queue;
void mproc__queue_set_spin(struct mproc_queue *q, int polls);
/* `spin_polls` polls with `gap` pauses between them (<0: the defaults),
 * then `yield_polls` polls giving the CPU away (sched_yield) between them,
 * then sleep: for request/reply channels, where the answer is awaited
 * (a short gap notices it sooner) and the peer may need this very CPU
 * (more runnable threads than cores). */
void mproc__queue_set_wait(struct mproc_queue *q, int spin_polls, int gap, int yield_polls);
/* A get in the middle of a message larger than a quarter of the ring waits
 * for the rest past its deadline while the producer lives (a queue gives no
 * half messages). With a hook, it asks fn(arg) every 20 ms of silence and
 * ends with MPROC_ECANCELED when it says true: the part read is dropped,
 * and later gets drop the rest. For channels whose peer can stall without
 * dying (SIGSTOP) and whose user has its own way to tell it is gone. Set
 * before the handle is used; NULL removes it. */
void mproc__queue_set_give_up(struct mproc_queue *q, bool (*fn)(void *arg), void *arg);

/* How long one queue put of `len` bytes may take before its caller looks
 * whether the peer still lives: a message larger than the ring streams
 * through it, and a put that times out midway is dropped whole (then
 * retried), so big messages get a slice that covers their copy. */
static inline double mproc__put_slice(size_t len)
{
    return 0.1 + (double)len / 20e6;
}

/* The peer closed its end of the socket `fd` (or the socket failed): the
 * liveness check of a side that talks to its peer through shared memory
 * while the socket stays quiet (manager and RPC). */
static inline bool mproc__peer_gone(int fd)
{
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0)
        return true;
    return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}
/* Registry of started children (for active_children and the exit handler). */
void mproc__atexit_install(void);

#endif
