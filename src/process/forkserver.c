/* forkserver.c — the forkserver start method: one single-threaded server,
 * re-executed from the program on first use, forks children on request. Each
 * child reads its BOOT from the requester; the server reaps it and sends the
 * exit status back on the same socket. */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "process/process_int.h"

/* Client side: one control socket per process (a fork child starts its own). */
static pthread_mutex_t fs_mu = PTHREAD_MUTEX_INITIALIZER;
static int fs_ctrl = -1, fs_pidfd = -1; /* the server is our child: kill/reap by pidfd */
static pid_t fs_pid, fs_owner;

void mproc__forkserver_atfork(int phase)
{
    if (mproc__mutex_atfork(&fs_mu, phase)) { /* the child starts its own server if needed */
        if (fs_ctrl >= 0)
            close(fs_ctrl);
        if (fs_pidfd >= 0)
            close(fs_pidfd);
        fs_ctrl = fs_pidfd = -1;
        fs_pid = fs_owner = 0;
    }
}

static void fs_drop_locked(void)
{
    if (fs_ctrl >= 0)
        close(fs_ctrl);
    fs_ctrl = -1;
    if (fs_pidfd >= 0) {
        mproc__pidfd_signal(fs_pidfd, SIGKILL);
        siginfo_t si;
        while (waitid(P_PIDFD, (id_t)fs_pidfd, &si, WEXITED) < 0 && errno == EINTR)
            ;
        close(fs_pidfd);
    }
    fs_pidfd = -1;
    fs_pid = 0;
}

/* Launch a server and wait (bounded) for its hello, sent from mproc_init(): a
 * main() that never gets there, or returns without it, is reported here. */
static int fs_ensure_locked(double timeout)
{
    if (fs_ctrl >= 0 && fs_owner == getpid())
        return 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return mproc__fail(mproc__errno(), "forkserver: socketpair failed");
    pid_t pid;
    int rc = mproc__launch("forkserver", sv[1], false, &pid);
    close(sv[1]);
    if (rc) {
        close(sv[0]);
        return rc;
    }
    fs_ctrl = sv[0];
    fs_pid = pid;
    fs_owner = getpid();
    fs_pidfd = mproc__pidfd_open(pid);
    uint32_t type = 0;
    uint8_t *body = NULL;
    size_t len = 0, n;
    rc = mproc__msg_recv(fs_ctrl, &type, &body, &len, NULL, 0, &n, timeout);
    if (rc == 0 && type != MPROC__MSG_READY) {
        mproc_reader r = {body, body + len};
        uint32_t code = 0;
        char *text = NULL;
        if (type == MPROC__MSG_ERROR && mproc__get_u32(&r, &code) == 0 &&
            mproc__get_str(&r, &text) == 0)
            rc = mproc__fail((int)code, "fork server could not start: %s", text);
        else
            rc = mproc__fail(MPROC_EPROTO, "fork server sent message %u instead of hello", type);
        free(text);
    } else if (rc == MPROC_ETIMEDOUT) {
        rc = mproc__fail(rc, "fork server did not start within %g s (its main() must call "
                             "mproc_init() first); it was killed", timeout);
    } else if (rc) {
        rc = mproc__fail(MPROC_ECHILD, "fork server exited during start-up");
    }
    free(body);
    if (rc) {
        fs_drop_locked();
        return rc;
    }
    mproc_log(MPROC_LOG_DEBUG, "fork server started (pid %d)", (int)pid);
    return 0;
}

/* Hand `child_end` to the server; retried once with a fresh server if it died. */
static int fs_request(int child_end, double timeout)
{
    int rc = 0;
    pthread_mutex_lock(&fs_mu);
    for (int attempt = 0; attempt < 2; attempt++) {
        rc = fs_ensure_locked(timeout);
        if (rc)
            break;
        rc = mproc__msg_send(fs_ctrl, MPROC__MSG_SPAWN, NULL, 0, &child_end, 1);
        if (rc == 0)
            break;
        mproc_log(MPROC_LOG_WARNING, "fork server (pid %d) is gone; starting a new one", (int)fs_pid);
        fs_drop_locked();
    }
    pthread_mutex_unlock(&fs_mu);
    return rc;
}

int mproc__forkserver_status(int fd, int *code)
{
    uint32_t type, c;
    uint8_t *body;
    size_t len, n;
    int rc = mproc__msg_recv(fd, &type, &body, &len, NULL, 0, &n, 1.0);
    if (rc)
        return rc;
    mproc_reader r = {body, body + len};
    if (type != MPROC__MSG_EXIT || mproc__get_u32(&r, &c) != 0)
        rc = mproc__fail(MPROC_EPROTO, "fork server sent message %u instead of an exit status", type);
    else
        *code = (int)c;
    free(body);
    return rc;
}

int mproc__start_forkserver(mproc_process *p)
{
    if (mproc_tracker_ensure() != 0)
        mproc_log(MPROC_LOG_WARNING, "resource tracker unavailable: %s", mproc_errmsg());
    int sv[2], pidfd = -1;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return mproc__fail(mproc__errno(), "forkserver: socketpair failed");
    int rc = fs_request(sv[1], p->start_timeout);
    close(sv[1]);
    if (rc) {
        close(sv[0]);
        return rc;
    }
    uint32_t type, pid = 0;
    uint8_t *body = NULL;
    size_t len, nfds = 0;
    rc = mproc__msg_recv(sv[0], &type, &body, &len, &pidfd, 1, &nfds, p->start_timeout);
    if (rc == 0) {
        mproc_reader r = {body, body + len};
        if (type != MPROC__MSG_PID || nfds != 1 || mproc__get_u32(&r, &pid) != 0 || pid == 0)
            rc = mproc__fail(MPROC_EPROTO, "fork server sent a bad reply (type %u)", type);
    } else {
        rc = mproc__fail(rc, "fork server did not fork: %s", mproc_strerror(rc));
    }
    free(body);
    if (rc)
        goto fail;
    mproc__tracker_watch(pidfd);
    rc = mproc__boot_child(p, sv[0]);
    if (rc) {
        /* Kill it and let the server reap it; the status tells us it is gone. */
        mproc__pidfd_signal(pidfd, SIGKILL);
        int code;
        mproc__forkserver_status(sv[0], &code);
        goto fail;
    }
    p->pid = (pid_t)pid;
    p->pidfd = pidfd;
    p->status_fd = sv[0];
    return 0;
fail:
    close(sv[0]);
    if (pidfd >= 0)
        close(pidfd);
    return rc;
}

/* ------------------------------------------------------------- the server */

typedef struct {
    pid_t pid;
    int pidfd, boot;
} kid;

static void fs_fork(int boot, kid **kids, size_t *n, size_t *cap)
{
    pid_t pid = fork();
    if (pid < 0) {
        close(boot); /* the requester sees EOF instead of a pid */
        return;
    }
    if (pid == 0) {
        signal(SIGINT, SIG_DFL);
        mproc__close_fds_from(MPROC__BOOT_FD, &boot, 1);
        free(*kids);
        mproc__child_main(boot);
    }
    int pidfd = mproc__pidfd_open(pid);
    mproc_buf b = {0};
    mproc__put_u32(&b, (uint32_t)pid);
    if (pidfd >= 0)
        mproc__msg_send(boot, MPROC__MSG_PID, b.data, b.len, &pidfd, 1);
    mproc__buf_free(&b);
    if (pidfd < 0) { /* cannot watch it: kill it, reap it, and tell the requester by EOF */
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(boot);
        return;
    }
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        kid *k = realloc(*kids, c * sizeof *k);
        if (!k) {
            waitpid(pid, NULL, 0); /* cannot track it: wait for it here */
            close(pidfd);
            close(boot);
            return;
        }
        *kids = k;
        *cap = c;
    }
    (*kids)[(*n)++] = (kid){pid, pidfd, boot};
}

static void fs_reap(kid *k)
{
    siginfo_t si;
    memset(&si, 0, sizeof si); /* si_pid stays 0 if waitid fails */
    while (waitid(P_PIDFD, (id_t)k->pidfd, &si, WEXITED) < 0 && errno == EINTR)
        ;
    int code = si.si_pid == 0 ? 255 /* could not reap */
               : si.si_code == CLD_EXITED ? si.si_status : -si.si_status;
    mproc_buf b = {0};
    mproc__put_u32(&b, (uint32_t)code);
    mproc__msg_send(k->boot, MPROC__MSG_EXIT, b.data, b.len, NULL, 0);
    mproc__buf_free(&b);
    close(k->boot);
    close(k->pidfd);
}

void mproc__forkserver_main(int ctrl)
{
    snprintf(mproc__self.name, sizeof mproc__self.name, "ForkServer");
    signal(SIGINT, SIG_IGN); /* Ctrl-C is for the program; we leave when it closes ctrl */
    signal(SIGCHLD, SIG_DFL); /* an inherited SIG_IGN would make exit codes unknowable */
    if (mproc__msg_send(ctrl, MPROC__MSG_READY, NULL, 0, NULL, 0) != 0)
        _exit(0); /* hello: mproc_init() was reached */
    kid *kids = NULL;
    size_t n = 0, cap = 0;
    struct pollfd *pfd = NULL;
    size_t pcap = 0;
    for (;;) {
        if (pcap < n + 1) {
            pcap = (n + 1) * 2;
            struct pollfd *np = realloc(pfd, pcap * sizeof *np);
            if (!np)
                break;
            pfd = np;
        }
        pfd[0] = (struct pollfd){.fd = ctrl, .events = POLLIN};
        for (size_t i = 0; i < n; i++)
            pfd[i + 1] = (struct pollfd){.fd = kids[i].pidfd, .events = POLLIN};
        if (poll(pfd, n + 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (size_t i = n; i-- > 0;) /* reap first: frees slots, keeps order stable */
            if (pfd[i + 1].revents) {
                fs_reap(&kids[i]);
                kids[i] = kids[--n];
            }
        if (pfd[0].revents) {
            uint32_t type;
            uint8_t *body = NULL;
            size_t len, nfds = 0;
            int boot = -1;
            int rc = mproc__msg_recv(ctrl, &type, &body, &len, &boot, 1, &nfds, 5.0);
            free(body);
            if (rc)
                break; /* the program closed the control socket: it is exiting */
            if (type == MPROC__MSG_SPAWN && nfds == 1)
                fs_fork(boot, &kids, &n, &cap);
            else if (nfds)
                close(boot);
        }
    }
    /* Children still running are orphaned to init, which reaps them. */
    _exit(0);
}
