/* tracker.c — the resource tracker: a process that remembers named resources
 * (shm, sem) and unlinks those still registered once every process of the
 * program has ended, however they ended. Clients talk to it over an abstract
 * AF_UNIX SOCK_SEQPACKET socket, one record per message. */
#include <fcntl.h>
#include <poll.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

#define NAME_MAX_ 255
#define REC_MAX 600

/* --------------------------------------------------------------- client */

/* The connection is shared with fork children on purpose: the program counts
 * as alive while any holder of the connection is. */
static pthread_mutex_t tr_mu = PTHREAD_MUTEX_INITIALIZER;
static int tr_fd = -1;
static char tr_addr[96];
static pid_t tr_pid;

static bool tr_is_child; /* we launched it, so we reap it if it dies */

void mproc__tracker_atfork(int phase)
{
    if (mproc__mutex_atfork(&tr_mu, phase))
        tr_is_child = false; /* the tracker is our parent's child, not ours */
}

static socklen_t make_addr(struct sockaddr_un *sa, const char *name)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    size_t n = strlen(name);
    memcpy(sa->sun_path + 1, name, n); /* abstract: leading NUL, no file to leak */
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

static int connect_locked(void)
{
    struct sockaddr_un sa;
    socklen_t len = make_addr(&sa, tr_addr);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return mproc__errno();
    if (connect(fd, (struct sockaddr *)&sa, len) < 0) {
        int rc = mproc__errno();
        close(fd);
        return rc;
    }
    tr_fd = fd;
    return 0;
}

static int start_locked(void)
{
    uint64_t rnd = 0;
    if (getrandom(&rnd, sizeof rnd, 0) != sizeof rnd)
        rnd = (uint64_t)mproc_monotonic() ^ (uint64_t)getpid() << 32;
    char name[sizeof tr_addr];
    snprintf(name, sizeof name, "mproc-tracker-%d-%016llx", (int)getpid(), (unsigned long long)rnd);
    struct sockaddr_un sa;
    socklen_t len = make_addr(&sa, name);
    int lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        return mproc__fail(mproc__errno(), "tracker: socket failed");
    int rc = 0;
    if (bind(lfd, (struct sockaddr *)&sa, len) < 0 || listen(lfd, 128) < 0) {
        rc = mproc__fail(mproc__errno(), "tracker: cannot listen on @%s", name);
        close(lfd);
        return rc;
    }
    char role[32];
    snprintf(role, sizeof role, "tracker:%d", mproc_log_level());
    pid_t pid;
    rc = mproc__launch(role, lfd, true, &pid);
    close(lfd); /* pending connects stay queued on the tracker's copy */
    if (rc)
        return rc;
    snprintf(tr_addr, sizeof tr_addr, "%s", name);
    tr_pid = pid;
    tr_is_child = true;
    rc = connect_locked();
    if (rc)
        return mproc__fail(rc, "tracker: cannot connect to @%s", name);
    mproc_log(MPROC_LOG_DEBUG, "resource tracker started (pid %d)", (int)pid);
    return 0;
}

static int ensure_locked(void)
{
    if (tr_fd >= 0)
        return 0;
    if (tr_addr[0] && connect_locked() == 0)
        return 0;
    return start_locked();
}

int mproc_tracker_ensure(void)
{
    pthread_mutex_lock(&tr_mu);
    int rc = ensure_locked();
    pthread_mutex_unlock(&tr_mu);
    return rc;
}

pid_t mproc_tracker_pid(void)
{
    pthread_mutex_lock(&tr_mu);
    pid_t p = tr_addr[0] ? tr_pid : 0;
    pthread_mutex_unlock(&tr_mu);
    return p;
}

void mproc__tracker_address(char *buf, size_t len, pid_t *pid)
{
    pthread_mutex_lock(&tr_mu);
    snprintf(buf, len, "%s", tr_addr);
    *pid = tr_pid;
    pthread_mutex_unlock(&tr_mu);
}

void mproc__tracker_adopt(const char *address, pid_t pid)
{
    pthread_mutex_lock(&tr_mu);
    if (tr_fd >= 0)
        close(tr_fd);
    tr_fd = -1;
    tr_is_child = false;
    snprintf(tr_addr, sizeof tr_addr, "%s", address);
    tr_pid = pid;
    pthread_mutex_unlock(&tr_mu);
}

static int encode(char *rec, char op, const char *type, const char *name)
{
    return snprintf(rec, REC_MAX, "%c%s:%s", op, type, name);
}

static int valid(const char *type, const char *name)
{
    if (!type || !name || (strcmp(type, "shm") != 0 && strcmp(type, "sem") != 0))
        return mproc__fail(MPROC_EINVAL, "tracker: type must be \"shm\" or \"sem\"");
    size_t n = strlen(name);
    if (n < 2 || n > NAME_MAX_ || name[0] != '/' || strchr(name + 1, '/'))
        return mproc__fail(MPROC_EINVAL, "tracker: bad name '%s' (want \"/name\")", name);
    return 0;
}

/* Send one record; a dead tracker is replaced once (its registrations are lost,
 * which is logged). */
static int send_record(char op, const char *type, const char *name, int fd)
{
    char rec[REC_MAX];
    int len = encode(rec, op, type, name);
    pthread_mutex_lock(&tr_mu);
    int rc = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        rc = ensure_locked();
        if (rc)
            break;
        rc = mproc_send_fds(tr_fd, rec, (size_t)len, fd >= 0 ? &fd : NULL, fd >= 0 ? 1 : 0);
        if (rc == 0)
            break;
        mproc_log(MPROC_LOG_WARNING, "resource tracker (pid %d) is gone; starting a new one",
                  (int)tr_pid);
        close(tr_fd);
        tr_fd = -1;
        tr_addr[0] = 0;
        if (tr_is_child) /* it is gone: do not leave it a zombie */
            waitpid(tr_pid, NULL, WNOHANG);
        tr_is_child = false;
    }
    pthread_mutex_unlock(&tr_mu);
    return rc;
}

int mproc_tracker_register(const char *type, const char *name)
{
    int rc = valid(type, name);
    return rc ? rc : send_record('R', type, name, -1);
}

int mproc_tracker_unregister(const char *type, const char *name)
{
    int rc = valid(type, name);
    return rc ? rc : send_record('U', type, name, -1);
}

int mproc__tracker_watch(int pidfd)
{
    pthread_mutex_lock(&tr_mu);
    bool have = tr_fd >= 0;
    pthread_mutex_unlock(&tr_mu);
    return have ? send_record('W', "-", "-", pidfd) : 0;
}

/* --------------------------------------------------------------- server */

typedef struct {
    char type[4];
    char name[NAME_MAX_ + 1];
    unsigned count;
} resource;

typedef struct {
    int *clients, *pidfds;
    size_t nclients, npidfds;
    resource *res;
    size_t nres;
} tracker_state;

static bool push_fd(int **v, size_t *n, int fd)
{
    int *nv = realloc(*v, (*n + 1) * sizeof **v);
    if (!nv)
        return false;
    nv[(*n)++] = fd;
    *v = nv;
    return true;
}

static void apply(tracker_state *s, const char *rec, size_t len, int fd)
{
    char buf[REC_MAX + 1];
    memcpy(buf, rec, len);
    buf[len] = 0;
    if (buf[0] == 'W') {
        if (fd >= 0 && !push_fd(&s->pidfds, &s->npidfds, fd))
            close(fd);
        return;
    }
    if (fd >= 0)
        close(fd);
    char *colon = strchr(buf + 1, ':');
    if (!colon || (buf[0] != 'R' && buf[0] != 'U'))
        return;
    *colon = 0;
    const char *type = buf + 1, *name = colon + 1;
    if (valid(type, name) != 0)
        return;
    for (size_t i = 0; i < s->nres; i++) {
        resource *r = &s->res[i];
        if (strcmp(r->type, type) == 0 && strcmp(r->name, name) == 0) {
            if (buf[0] == 'R')
                r->count++;
            else if (--r->count == 0)
                s->res[i] = s->res[--s->nres];
            return;
        }
    }
    if (buf[0] == 'U')
        return;
    resource *nr = realloc(s->res, (s->nres + 1) * sizeof *nr);
    if (!nr)
        return;
    s->res = nr;
    resource *r = &s->res[s->nres++];
    /* valid() bounded both lengths */
    memcpy(r->type, type, strlen(type) + 1);
    memcpy(r->name, name, strlen(name) + 1);
    r->count = 1;
}

static void cleanup(tracker_state *s)
{
    static const char *const types[] = {"shm", "sem"};
    for (int t = 0; t < 2; t++) {
        size_t leaked = 0;
        for (size_t i = 0; i < s->nres; i++)
            leaked += strcmp(s->res[i].type, types[t]) == 0;
        if (!leaked)
            continue;
        mproc_log(MPROC_LOG_WARNING,
                  "resource_tracker: There appear to be %zu leaked %s objects to clean up at shutdown",
                  leaked, types[t]);
        for (size_t i = 0; i < s->nres; i++) {
            resource *r = &s->res[i];
            if (strcmp(r->type, types[t]) != 0)
                continue;
            int rc = t == 0 ? shm_unlink(r->name) : sem_unlink(r->name);
            if (rc < 0 && errno != ENOENT)
                mproc_log(MPROC_LOG_WARNING, "resource_tracker: '%s': %s", r->name, strerror(errno));
            else
                mproc_log(MPROC_LOG_INFO, "resource_tracker: unlinked %s '%s'", r->type, r->name);
        }
    }
}

static bool peer_is_us(int fd)
{
    struct ucred cr;
    socklen_t len = sizeof cr;
    return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0 && cr.uid == geteuid();
}

static void drop(int *v, size_t *n, size_t i)
{
    close(v[i]);
    v[i] = v[--*n];
}

void mproc__tracker_main(int lfd)
{
    snprintf(mproc__self.name, sizeof mproc__self.name, "ResourceTracker");
    /* Outlive Ctrl-C and group kills: clean-up must happen after the program ends. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull >= 0) { /* keep stderr for warnings; the program's stdout is not ours */
        dup2(devnull, STDOUT_FILENO);
        close(devnull);
    }
    tracker_state s = {0};
    bool seen_client = false;
    mproc_deadline first = mproc_deadline_after(60.0);
    struct pollfd *pfd = NULL;
    for (;;) {
        size_t n = 1 + s.nclients + s.npidfds;
        struct pollfd *np = realloc(pfd, n * sizeof *np);
        if (!np)
            break;
        pfd = np;
        pfd[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (size_t i = 0; i < s.nclients; i++)
            pfd[1 + i] = (struct pollfd){.fd = s.clients[i], .events = POLLIN};
        for (size_t i = 0; i < s.npidfds; i++)
            pfd[1 + s.nclients + i] = (struct pollfd){.fd = s.pidfds[i], .events = POLLIN};
        bool idle = s.nclients == 0 && s.npidfds == 0;
        int timeout = idle ? (seen_client ? 0 : mproc_deadline_poll_ms(first)) : -1;
        int r = poll(pfd, n, timeout);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 && idle)
            break; /* nobody left (or nobody ever came) and nobody waiting to connect */
        for (size_t i = s.npidfds; i-- > 0;)
            if (pfd[1 + s.nclients + i].revents)
                drop(s.pidfds, &s.npidfds, i);
        for (size_t i = s.nclients; i-- > 0;) {
            if (!pfd[1 + i].revents)
                continue;
            char rec[REC_MAX];
            int fds[1] = {-1};
            size_t nfds = 0;
            struct iovec iov = {rec, sizeof rec};
            union {
                char b[CMSG_SPACE(sizeof(int) * 8)]; /* room to receive (and close) extras */
                struct cmsghdr a;
            } ctl;
            struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
                               .msg_controllen = sizeof ctl.b};
            ssize_t len = recvmsg(s.clients[i], &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
            /* Keep at most one descriptor (a "watch" pidfd); close anything else sent. */
            for (struct cmsghdr *c = len >= 0 ? CMSG_FIRSTHDR(&m) : NULL; c; c = CMSG_NXTHDR(&m, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                    continue;
                size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t j = 0; j < k; j++) {
                    int fd;
                    memcpy(&fd, CMSG_DATA(c) + j * sizeof(int), sizeof(int));
                    if (nfds == 0)
                        fds[nfds++] = fd;
                    else
                        close(fd);
                }
            }
            if (len <= 0 && nfds) {
                close(fds[0]);
                nfds = 0;
            }
            if (len > 0)
                apply(&s, rec, (size_t)len, nfds ? fds[0] : -1);
            else if (len == 0 || (errno != EAGAIN && errno != EINTR))
                drop(s.clients, &s.nclients, i);
        }
        if (pfd[0].revents & POLLIN) {
            int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0) {
                if (peer_is_us(c) && push_fd(&s.clients, &s.nclients, c))
                    seen_client = true;
                else
                    close(c);
            }
        }
    }
    cleanup(&s);
    _exit(0);
}
