/* io.c — EINTR-safe fd I/O and SCM_RIGHTS descriptor passing.
 * Every blocking syscall of the library goes through one of these wrappers. */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

/* write(2) to a non-socket without SIGPIPE: block it in this thread for the
 * call and swallow the one our write raised (unless one was already pending). */
static int write_all_nosigpipe(int fd, const char *p, size_t len, mproc_deadline d)
{
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigpending(&pending);
    bool was_pending = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    int rc = 0;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n >= 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN &&
            (rc = mproc_wait_fd(fd, POLLOUT, mproc_deadline_remaining(d))) == 0)
            continue;
        rc = rc ? rc : mproc__errno();
        break;
    }
    if (rc == MPROC_EPIPE && !was_pending) {
        const struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

/* Sockets honour the deadline even when blocking (MSG_DONTWAIT + poll); other
 * fds honour it only when they are non-blocking. */
int mproc__write_all_until(int fd, const void *buf, size_t len, mproc_deadline d)
{
    const char *p = buf;
    int flags = MSG_NOSIGNAL | (d.ns == INT64_MAX ? 0 : MSG_DONTWAIT);
    while (len > 0) {
        /* send(MSG_NOSIGNAL) on sockets; anything else takes the masked path. */
        ssize_t n = send(fd, p, len, flags);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ENOTSOCK)
                return write_all_nosigpipe(fd, p, len, d);
            if (errno == EAGAIN) { /* full: wait until writable, within the deadline */
                int rc = mproc_wait_fd(fd, POLLOUT, mproc_deadline_remaining(d));
                if (rc < 0)
                    return rc;
                continue;
            }
            return mproc__errno();
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int mproc_write_all(int fd, const void *buf, size_t len)
{
    return mproc__write_all_until(fd, buf, len, mproc_deadline_after(MPROC_FOREVER));
}

ssize_t mproc_read_some(int fd, void *buf, size_t len)
{
    for (;;) {
        ssize_t n = read(fd, buf, len);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return mproc__errno();
    }
}

int mproc_read_all(int fd, void *buf, size_t len, size_t *got)
{
    char *p = buf;
    size_t done = 0;
    int rc = 0;
    while (done < len) {
        ssize_t n = mproc_read_some(fd, p + done, len - done);
        if (n == MPROC_EAGAIN) {
            rc = mproc_wait_fd(fd, POLLIN, MPROC_FOREVER);
            if (rc < 0)
                break;
            continue;
        }
        if (n < 0) {
            rc = (int)n;
            break;
        }
        if (n == 0) {
            rc = MPROC_ECLOSED;
            break;
        }
        done += (size_t)n;
    }
    if (got)
        *got = done;
    return rc;
}

int mproc_wait_fd(int fd, short events, double timeout)
{
    mproc_deadline d = mproc_deadline_after(timeout);
    struct pollfd pfd = {.fd = fd, .events = events};
    for (;;) {
        int n = poll(&pfd, 1, mproc_deadline_poll_ms(d));
        if (n > 0) {
            if (pfd.revents & POLLNVAL)
                return MPROC_EBADF;
            return 0;
        }
        if (n == 0) {
            if (mproc_deadline_expired(d))
                return MPROC_ETIMEDOUT;
            continue; /* poll's ms rounding woke us early */
        }
        if (errno != EINTR)
            return mproc__errno();
    }
}

static int set_flag(int fd, int get, int set, int flag, bool on)
{
    int fl = fcntl(fd, get);
    if (fl < 0)
        return mproc__errno();
    int nf = on ? (fl | flag) : (fl & ~flag);
    if (nf != fl && fcntl(fd, set, nf) < 0)
        return mproc__errno();
    return 0;
}

int mproc_fd_set_cloexec(int fd, bool on)
{
    return set_flag(fd, F_GETFD, F_SETFD, FD_CLOEXEC, on);
}

int mproc_fd_set_nonblock(int fd, bool on)
{
    return set_flag(fd, F_GETFL, F_SETFL, O_NONBLOCK, on);
}

int mproc_send_fds(int sock, const void *buf, size_t len, const int *fds, size_t nfds)
{
    return mproc__send_fds_until(sock, buf, len, fds, nfds, mproc_deadline_after(MPROC_FOREVER));
}

int mproc__send_fds_until(int sock, const void *buf, size_t len, const int *fds, size_t nfds,
                          mproc_deadline d)
{
    if (len == 0 || nfds > MPROC_MAX_FDS)
        return mproc__fail(MPROC_EINVAL, "send_fds: need >= 1 byte and <= %d fds", MPROC_MAX_FDS);
    union {
        char buf[CMSG_SPACE(sizeof(int) * MPROC_MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(&ctl, 0, sizeof ctl);
        msg.msg_control = ctl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    int flags = MSG_NOSIGNAL | (d.ns == INT64_MAX ? 0 : MSG_DONTWAIT);
    ssize_t n;
    for (;;) {
        n = sendmsg(sock, &msg, flags);
        if (n >= 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return mproc__errno();
        int rc = mproc_wait_fd(sock, POLLOUT, mproc_deadline_remaining(d));
        if (rc < 0)
            return rc;
    }
    /* The fds went with the first byte; the rest is plain data. */
    return mproc__write_all_until(sock, (const char *)buf + n, len - (size_t)n, d);
}

static void close_all(int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        close(fds[i]);
}

int mproc_recv_fds(int sock, void *buf, size_t len, int *fds, size_t max_fds, size_t *nfds,
                   double timeout)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * MPROC_MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    mproc_deadline d = mproc_deadline_after(timeout);
    size_t done = 0, got_fds = 0;
    bool overflow = false;
    int rc = 0;
    *nfds = 0;
    while (done < len) {
        rc = mproc_wait_fd(sock, POLLIN, mproc_deadline_remaining(d));
        if (rc < 0)
            break;
        struct iovec iov = {.iov_base = (char *)buf + done, .iov_len = len - done};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                             .msg_controllen = sizeof ctl.buf};
        ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            rc = mproc__errno();
            break;
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int tmp[MPROC_MAX_FDS];
            memcpy(tmp, CMSG_DATA(c), k * sizeof(int));
            for (size_t i = 0; i < k; i++) {
                if (got_fds < max_fds)
                    fds[got_fds++] = tmp[i];
                else {
                    close(tmp[i]);
                    overflow = true;
                }
            }
        }
        if (msg.msg_flags & MSG_CTRUNC)
            overflow = true;
        if (n == 0) {
            rc = MPROC_ECLOSED;
            break;
        }
        done += (size_t)n;
    }
    if (rc == 0 && overflow)
        rc = mproc__fail(MPROC_EPROTO, "recv_fds: peer sent more than %zu descriptors", max_fds);
    if (rc < 0) {
        close_all(fds, got_fds);
        return rc;
    }
    *nfds = got_fds;
    return 0;
}
