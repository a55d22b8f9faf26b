/* process.c — the Process object: start (fork here; spawn and forkserver in their
 * files), join, exit codes, signals, the registry of children and the exit handler. */
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "process/process_int.h"

mproc_self mproc__self = {.name = "MainProcess"};
atomic_bool mproc__init_called;
atomic_bool mproc__bootstrapping;

/* Registry of started, unclosed children of *this* process. A fork child clears
 * it (atfork) because those are its parent's children, not its own. */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static mproc_process *reg_head;

static mproc_process self_proc = {.kind = PK_SELF, .pidfd = -1, .status_fd = -1};
static mproc_process parent_proc = {.kind = PK_PARENT, .pidfd = -1, .status_fd = -1};

static void reg_add(mproc_process *p)
{
    pthread_mutex_lock(&reg_mu);
    p->next = reg_head;
    p->prev = NULL;
    if (reg_head)
        reg_head->prev = p;
    reg_head = p;
    p->registered = true;
    pthread_mutex_unlock(&reg_mu);
}

static void reg_remove(mproc_process *p)
{
    pthread_mutex_lock(&reg_mu);
    if (p->registered && p->owner == getpid()) {
        if (p->prev)
            p->prev->next = p->next;
        else
            reg_head = p->next;
        if (p->next)
            p->next->prev = p->prev;
        p->registered = false;
    }
    pthread_mutex_unlock(&reg_mu);
}

static bool poll_child(mproc_process *p);

/* A snapshot of the registry (callers may block on the entries without the lock);
 * with running_only, children that ended are reaped (under the lock, so close()
 * cannot free one meanwhile) and left out. *out is NULL when nothing is listed;
 * MPROC_ENOMEM leaves it NULL too. */
static int reg_snapshot(mproc_process ***out, size_t *n, bool running_only)
{
    *out = NULL;
    *n = 0;
    int rc = 0;
    pthread_mutex_lock(&reg_mu);
    size_t k = 0;
    for (mproc_process *p = reg_head; p; p = p->next)
        k++;
    mproc_process **v = k ? malloc(k * sizeof *v) : NULL;
    if (k && !v)
        rc = MPROC_ENOMEM;
    for (mproc_process *p = reg_head; v && p; p = p->next)
        if (!running_only || !poll_child(p))
            v[(*n)++] = p;
    pthread_mutex_unlock(&reg_mu);
    if (*n)
        *out = v;
    else
        free(v);
    return rc;
}

/* Lock order (outermost first): reg_mu, fs_mu, tr_mu, exe_mu. Holding them all
 * across fork() means the child never inherits a lock taken mid-update. */
static void atfork_prepare(void)
{
    mproc__mutex_atfork(&reg_mu, 0);
    mproc__forkserver_atfork(0);
    mproc__tracker_atfork(0);
    mproc__context_atfork(0);
}

static void atfork_parent(void)
{
    mproc__context_atfork(1);
    mproc__tracker_atfork(1);
    mproc__forkserver_atfork(1);
    mproc__mutex_atfork(&reg_mu, 1);
}

/* Runs in every fork child of the program, so it must be cheap: plain stores,
 * no libc calls that the child would have to bind lazily. */
static void atfork_child(void)
{
    mproc__mutex_atfork(&reg_mu, 2);
    reg_head = NULL;
    if (parent_proc.pidfd >= 0)
        close(parent_proc.pidfd);
    parent_proc.pidfd = -1;
    mproc__forkserver_atfork(2);
    mproc__tracker_atfork(2);
    mproc__context_atfork(2);
    mproc__tid_cache = 0; /* the child's thread has a tid of its own */
}

/* Installed when the library loads, so even fork()s the library did not make
 * (popen, a user's fork) never leave a library lock held in the child. */
__attribute__((constructor)) static void atfork_install(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* ---------------------------------------------------------------- objects */

int mproc_process_new(mproc_process **out, mproc_target_fn target, const mproc_args *args,
                      const mproc_process_opts *opts)
{
    static const mproc_process_opts defaults;
    if (!out || !target)
        return mproc__fail(MPROC_EINVAL, "process_new: target and out are required");
    if (!opts)
        opts = &defaults;
    mproc_process *p = calloc(1, sizeof *p);
    if (!p)
        return MPROC_ENOMEM;
    p->kind = PK_CHILD;
    p->target = target;
    p->daemon = opts->daemon;
    p->ctx = opts->ctx;
    p->start_timeout = opts->start_timeout == 0 ? 60.0 : opts->start_timeout; /* <0: forever */
    p->pidfd = p->status_fd = -1;
    p->exitcode = MPROC_EXITCODE_NONE;
    p->method = MPROC_START_DEFAULT; /* resolved by start(), as Python does */
    pthread_mutex_init(&p->mu, NULL);
    unsigned n = atomic_fetch_add(&mproc__self.child_counter, 1) + 1;
    int k = mproc__self.identity[0]
                ? snprintf(p->identity, sizeof p->identity, "%s:%u", mproc__self.identity, n)
                : -1;
    if (k < 0 || k >= (int)sizeof p->identity) /* top level, or nested absurdly deep */
        snprintf(p->identity, sizeof p->identity, "%u", n);
    if (opts->name) {
        p->name = strdup(opts->name);
    } else if (asprintf(&p->name, "Process-%s", p->identity) < 0) {
        p->name = NULL;
    }
    int rc = p->name ? mproc__args_copy(args, &p->args) : MPROC_ENOMEM;
    if (rc) {
        free(p->name);
        free(p);
        return rc;
    }
    *out = p;
    return 0;
}

static int require_child(const mproc_process *p, const char *what)
{
    if (!p)
        return mproc__fail(MPROC_EINVAL, "%s: NULL process", what);
    if (p->kind == PK_SELF)
        return mproc__fail(MPROC_ESTATE, "%s: not valid on the current process", what);
    if (p->kind == PK_CHILD && p->state == PS_NEW)
        return mproc__fail(MPROC_ESTATE, "%s: process has not been started", what);
    if (p->kind == PK_CHILD && p->owner != getpid())
        return mproc__fail(MPROC_ESTATE, "%s: can only act on a child of this process", what);
    return 0;
}

/* Python's exit code from a wait status: exit code, or -signal. */
static int code_of(const siginfo_t *si)
{
    return si->si_code == CLD_EXITED ? si->si_status : -si->si_status;
}

/* The object's fds stay open until close(): another thread may be polling them,
 * and closing early would let that number be reused under its feet. */
static void finish(mproc_process *p, int code)
{
    p->exitcode = code;
    p->state = PS_DONE;
}

/* Fork-server children: the server reaps them and sends the status on the boot
 * socket. Once the pidfd says "ended" the status follows at once, so wait for it
 * briefly: a readable sentinel always means the exit code is known. */
static bool poll_forkserver_child(mproc_process *p)
{
    if (mproc_wait_fd(p->status_fd, POLLIN, 0) != 0) {
        if (mproc_wait_fd(p->pidfd, POLLIN, 0) != 0)
            return false; /* still running */
        if (mproc_wait_fd(p->status_fd, POLLIN, 2.0) != 0) {
            mproc_log(MPROC_LOG_WARNING, "fork server is not reporting; exit status of %s (pid %d) "
                      "is unknown", p->name, (int)p->pid);
            finish(p, 255);
            return true;
        }
    }
    int code = 0;
    int rc = mproc__forkserver_status(p->status_fd, &code);
    if (rc == MPROC_ECLOSED) {
        /* The fork server died: we still know when the child ends, not how. */
        if (mproc_wait_fd(p->pidfd, POLLIN, 0) != 0)
            return false;
        mproc_log(MPROC_LOG_WARNING, "fork server died; exit status of %s (pid %d) is unknown",
                  p->name, (int)p->pid);
        code = 255;
    } else if (rc < 0) {
        return false;
    }
    finish(p, code);
    return true;
}

/* Non-blocking check; true if the child has ended (and is reaped). Callers hold p->mu. */
static bool poll_child_locked(mproc_process *p)
{
    if (p->state != PS_RUNNING)
        return p->state == PS_DONE;
    if (p->method == MPROC_START_FORKSERVER)
        return poll_forkserver_child(p);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r;
    do
        r = waitid(P_PIDFD, (id_t)p->pidfd, &si, WEXITED | WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        /* ECHILD: someone else reaped it (SIGCHLD set to SIG_IGN, or a stray wait(-1)). */
        if (errno == ECHILD && mproc_wait_fd(p->pidfd, POLLIN, 0) == 0) {
            mproc_log(MPROC_LOG_WARNING, "%s (pid %d) was reaped by someone else; exit code unknown",
                      p->name, (int)p->pid);
            finish(p, 255);
            return true;
        }
        return false;
    }
    if (si.si_pid == 0)
        return false;
    finish(p, code_of(&si));
    return true;
}

/* Objects may be polled by other threads (active_children, the sweep in start),
 * so reaping happens under the object's own lock: one waitid, one close. */
static bool poll_child(mproc_process *p)
{
    pthread_mutex_lock(&p->mu);
    bool done = poll_child_locked(p);
    pthread_mutex_unlock(&p->mu);
    return done;
}

int mproc_process_join(mproc_process *p, double timeout)
{
    int rc = require_child(p, "join");
    if (rc)
        return rc;
    if (p->kind == PK_PARENT) {
        int fd = mproc__parent_pidfd();
        if (fd < 0)
            return 0; /* already gone */
        return mproc_wait_fd(fd, POLLIN, timeout);
    }
    if (timeout < 0 && p->method != MPROC_START_FORKSERVER && p->state == PS_RUNNING) {
        /* Unbounded join of a direct child: block in waitid without reaping
         * (WNOWAIT), then reap under the lock like every other path. */
        siginfo_t si;
        memset(&si, 0, sizeof si);
        while (waitid(P_PIDFD, (id_t)p->pidfd, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR)
            ;
    }
    mproc_deadline d = mproc_deadline_after(timeout);
    /* The pidfd says "ended" under every start method; poll_child then collects
     * the status (from the fork server, for its children). */
    while (!poll_child(p)) {
        rc = mproc_wait_fd(p->pidfd, POLLIN, mproc_deadline_remaining(d));
        if (rc == MPROC_ETIMEDOUT)
            return rc;
        if (rc < 0)
            return mproc__fail(rc, "join: waiting for %s failed", p->name);
    }
    return 0;
}

bool mproc_process_is_alive(mproc_process *p)
{
    if (!p)
        return false;
    if (p->kind == PK_SELF)
        return true;
    if (p->kind == PK_PARENT)
        return mproc__parent_alive();
    if (p->state != PS_RUNNING || p->owner != getpid())
        return false;
    return !poll_child(p);
}

int mproc_process_exitcode(mproc_process *p)
{
    if (!p || p->kind != PK_CHILD || p->state == PS_NEW)
        return MPROC_EXITCODE_NONE;
    if (p->owner == getpid())
        poll_child(p);
    return p->exitcode;
}

pid_t mproc_process_pid(const mproc_process *p)
{
    if (!p)
        return 0;
    if (p->kind == PK_SELF)
        return getpid();
    if (p->kind == PK_PARENT)
        return mproc__self.parent_pid;
    return p->pid;
}

int mproc_process_sentinel(const mproc_process *p)
{
    if (p && p->kind == PK_PARENT)
        return mproc__parent_pidfd();
    return p && p->kind == PK_CHILD ? p->pidfd : -1;
}

static int send_signal(mproc_process *p, int sig, const char *what)
{
    int rc = require_child(p, what);
    if (rc)
        return rc;
    if (p->kind == PK_PARENT)
        return mproc__fail(MPROC_ESTATE, "%s: not valid on the parent process", what);
    if (p->state == PS_DONE)
        return 0;
    rc = mproc__pidfd_signal(p->pidfd, sig);
    return rc ? mproc__fail(rc, "%s: signalling pid %d failed", what, (int)p->pid) : 0;
}

int mproc_process_terminate(mproc_process *p)
{
    return send_signal(p, SIGTERM, "terminate");
}

int mproc_process_kill(mproc_process *p)
{
    return send_signal(p, SIGKILL, "kill");
}

const char *mproc_process_name(const mproc_process *p)
{
    if (!p)
        return "";
    if (p->kind == PK_SELF)
        return mproc__self.name;
    if (p->kind == PK_PARENT)
        return "ParentProcess";
    return p->name;
}

bool mproc_process_daemon(const mproc_process *p)
{
    if (p && p->kind == PK_SELF)
        return mproc__self.daemon;
    return p && p->daemon;
}

mproc_start_method mproc_process_start_method(const mproc_process *p)
{
    if (!p || p->kind != PK_CHILD)
        return MPROC_START_DEFAULT;
    if (p->state == PS_NEW) /* what start() would use now */
        return p->ctx && mproc_context_start_method(p->ctx) != MPROC_START_DEFAULT
                   ? mproc_context_start_method(p->ctx)
                   : mproc_get_start_method();
    return p->method;
}

int mproc_process_close(mproc_process *p)
{
    if (!p)
        return 0;
    if (p->kind != PK_CHILD)
        return mproc__fail(MPROC_EINVAL, "close: the current/parent process objects are static");
    if (p->state == PS_RUNNING && p->owner == getpid() && !poll_child(p))
        return mproc__fail(MPROC_ESTATE,
                           "close: %s (pid %d) is still running; join or kill it first", p->name,
                           (int)p->pid);
    reg_remove(p);
    if (p->pidfd >= 0)
        close(p->pidfd);
    if (p->status_fd >= 0)
        close(p->status_fd);
    mproc_args_free(p->args);
    pthread_mutex_destroy(&p->mu);
    free(p->name);
    free(p);
    return 0;
}

mproc_process *mproc_current_process(void)
{
    return &self_proc;
}

mproc_process *mproc_parent_process(void)
{
    return mproc__self.parent_pid ? &parent_proc : NULL;
}

/* The parent's pidfd, opened on first use. A direct child checks getppid() so a
 * recycled pid is never mistaken for the parent. -1 if the parent is gone. */
int mproc__parent_pidfd(void)
{
    if (parent_proc.pidfd >= 0)
        return parent_proc.pidfd;
    if (!mproc__self.parent_pid || !mproc__parent_alive())
        return -1;
    int fd = mproc__pidfd_open(mproc__self.parent_pid);
    if (fd < 0)
        return -1;
    if (!mproc__parent_alive()) { /* it died between the check and the open */
        close(fd);
        return -1;
    }
    parent_proc.pidfd = fd;
    return fd;
}

bool mproc__parent_alive(void)
{
    pid_t pp = mproc__self.parent_pid;
    if (!pp)
        return false;
    if (parent_proc.pidfd >= 0)
        return mproc_wait_fd(parent_proc.pidfd, POLLIN, 0) == MPROC_ETIMEDOUT;
    if (getppid() == pp)
        return true;
    /* Fork-server children are not the parent's direct children. */
    return mproc__self.parent_is_logical && kill(pp, 0) == 0;
}

int mproc_active_children(mproc_process ***out, size_t *n)
{
    if (!out || !n)
        return MPROC_EINVAL;
    return reg_snapshot(out, n, true);
}

int mproc_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* ------------------------------------------------------------ starting */

/* Reap children that ended without being joined (Python's _cleanup()). Under
 * reg_mu, so a concurrent close() cannot free an object we are polling. */
static void sweep_finished(void)
{
    pthread_mutex_lock(&reg_mu);
    for (mproc_process *p = reg_head; p; p = p->next)
        poll_child(p);
    pthread_mutex_unlock(&reg_mu);
}

/* Become the child: identity, stdin, then run the target and exit. */
void mproc__become_child(const char *name, const char *identity, bool daemon, pid_t parent,
                         bool logical_parent)
{
    snprintf(mproc__self.name, sizeof mproc__self.name, "%s", name);
    snprintf(mproc__self.identity, sizeof mproc__self.identity, "%s", identity);
    mproc__self.daemon = daemon;
    mproc__self.parent_pid = parent;
    mproc__self.parent_is_logical = logical_parent;
    atomic_store(&mproc__self.child_counter, 0);
    /* Like Python, children do not compete for the terminal: stdin is /dev/null. */
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (fd != STDIN_FILENO) {
            dup2(fd, STDIN_FILENO);
            close(fd);
        } else {
            mproc_fd_set_cloexec(fd, false);
        }
    }
}

static mproc_args *running_args;

void mproc__run_target(mproc_target_fn fn, mproc_args *args)
{
    running_args = args;
    int code = fn(args);
    mproc__child_exit(code);
}

void mproc__child_exit(int code)
{
    mproc_args_free(running_args);
    running_args = NULL;
    mproc__exit_handler();
    fflush(NULL);
    _exit(code & 0xff);
}

static int start_fork(mproc_process *p)
{
    fflush(NULL); /* or buffered output would be written twice, by parent and child */
    pid_t pid = fork();
    if (pid < 0)
        return mproc__fail(mproc__errno(), "fork failed");
    if (pid == 0) {
        mproc__become_child(p->name, p->identity, p->daemon, getppid(), false);
        mproc_args *args = p->args;
        p->args = NULL; /* the child's copy of the object must not free them twice */
        mproc__run_target(p->target, args);
    }
    int fd = mproc__pidfd_open(pid);
    p->pid = pid;
    if (fd == MPROC_ESRCH) {
        /* Already ended and reaped by the kernel (SIGCHLD is SIG_IGN): the pid may
         * be reused, so never signal it; the exit status is gone. */
        mproc_log(MPROC_LOG_WARNING, "%s (pid %d) ended before it could be watched (SIGCHLD "
                  "ignored?); exit code unknown", p->name, (int)pid);
        p->state = PS_DONE;
        p->exitcode = 255;
        return 0;
    }
    if (fd < 0) {
        kill(pid, SIGKILL); /* still our unreaped child: the pid cannot be reused yet */
        waitpid(pid, NULL, 0);
        return mproc__fail(fd, "pidfd_open failed");
    }
    p->pidfd = fd;
    return 0;
}

int mproc_process_start(mproc_process *p)
{
    if (!p || p->kind != PK_CHILD)
        return mproc__fail(MPROC_EINVAL, "start: not a process object");
    if (p->state != PS_NEW)
        return mproc__fail(MPROC_ESTATE, "start: %s can only be started once", p->name);
    p->method = mproc_context_start_method(p->ctx);
    if (mproc__self.daemon)
        return mproc__fail(MPROC_ESTATE, "start: daemonic processes are not allowed to have children");
    if (atomic_load(&mproc__bootstrapping))
        return mproc__fail(MPROC_ENOINIT,
                           "start: this process was spawned by mproc and main() started a process "
                           "before calling mproc_init(&argc, &argv); call it first in main()");
    if (p->method != MPROC_START_FORK && !atomic_load(&mproc__init_called))
        return mproc__fail(MPROC_ENOINIT,
                           "start: the %s start method re-executes the program, which must call "
                           "mproc_init(&argc, &argv) at the top of main()",
                           mproc_start_method_name(p->method));
    mproc__atexit_install();
    sweep_finished();
    int rc;
    switch (p->method) {
    case MPROC_START_FORK: rc = start_fork(p); break;
    case MPROC_START_SPAWN: rc = mproc__start_spawn(p); break;
    case MPROC_START_FORKSERVER: rc = mproc__start_forkserver(p); break;
    default: rc = mproc__fail(MPROC_EINVAL, "start: invalid start method"); break;
    }
    if (rc)
        return rc;
    /* Like Python, drop the arguments once the child has them: the parent's copies
     * of handed fds must not keep pipes open (the child's reader would never see EOF). */
    mproc_args_free(p->args);
    p->args = NULL;
    p->owner = getpid();
    if (p->state == PS_NEW)
        p->state = PS_RUNNING;
    reg_add(p);
    mproc_log(MPROC_LOG_DEBUG, "started %s (pid %d) with %s", p->name, (int)p->pid,
              mproc_start_method_name(p->method));
    return 0;
}

/* ------------------------------------------------------------ exit handler */

/* Like multiprocessing.util._exit_function: terminate daemonic children, then
 * join every child. Daemons that ignore SIGTERM are killed after a grace period
 * so that exit can never hang on them. */
void mproc__exit_handler(void)
{
    mproc_process **v;
    size_t k;
    reg_snapshot(&v, &k, false); /* out of memory at exit: nothing to wait for */
    for (size_t i = 0; i < k; i++)
        if (v[i]->daemon && mproc_process_is_alive(v[i])) {
            mproc_log(MPROC_LOG_INFO, "calling terminate() for daemon %s", v[i]->name);
            mproc_process_terminate(v[i]);
        }
    mproc_deadline grace = mproc_deadline_after(2.0); /* one grace period for all daemons */
    for (size_t i = 0; i < k; i++) {
        if (!mproc_process_is_alive(v[i]))
            continue;
        mproc_log(MPROC_LOG_INFO, "calling join() for process %s", v[i]->name);
        if (v[i]->daemon &&
            mproc_process_join(v[i], mproc_deadline_remaining(grace)) == MPROC_ETIMEDOUT) {
            mproc_log(MPROC_LOG_WARNING, "daemon %s ignored SIGTERM; killing it", v[i]->name);
            mproc_process_kill(v[i]);
        }
        mproc_process_join(v[i], MPROC_FOREVER);
    }
    free(v);
}

static void exit_handler_atexit(void)
{
    mproc__exit_handler();
}

static pthread_once_t atexit_once = PTHREAD_ONCE_INIT;
static void atexit_register(void)
{
    atexit(exit_handler_atexit);
}

void mproc__atexit_install(void)
{
    pthread_once(&atexit_once, atexit_register);
}
