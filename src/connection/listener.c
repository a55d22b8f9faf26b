/* listener.c — Listener/Client over AF_UNIX (paths, abstract names) and TCP,
 * with CPython's authkey handshake on every new connection. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "conn_int.h"

#define DEFAULT_HANDSHAKE_TIMEOUT 10.0
#define DEFAULT_CONNECT_TIMEOUT 30.0

struct mproc_listener {
    int fd;
    char *address;     /* canonical, with the real port */
    char *unlink_path; /* unix path socket to remove on close */
    pid_t owner;       /* only the creating process removes it (not a fork child) */
    mproc_listener_opts opts;
    uint8_t *key;      /* copy of opts.auth.authkey */
    char digest[16];
};

/* ------------------------------------------------------------ addresses */

typedef struct parsed_addr {
    bool is_unix;
    struct sockaddr_un un;
    socklen_t un_len;
    char host[256], port[16];
} parsed_addr;

static int parse_address(const char *addr, parsed_addr *pa)
{
    memset(pa, 0, sizeof *pa);
    if (!addr)
        return mproc__fail(MPROC_EINVAL, "address: NULL");
    if (strncmp(addr, "unix:", 5) == 0) {
        const char *p = addr + 5;
        size_t n = strlen(p);
        pa->is_unix = true;
        pa->un.sun_family = AF_UNIX;
        if (n == 0 || (p[0] == '@' && n == 1))
            return mproc__fail(MPROC_EINVAL, "address '%s': empty unix name", addr);
        if (n >= sizeof pa->un.sun_path)
            return mproc__fail(MPROC_EINVAL, "address '%s': longer than %zu bytes", addr,
                               sizeof pa->un.sun_path - 1);
        memcpy(pa->un.sun_path, p, n);
        if (p[0] == '@') { /* abstract: leading NUL, length counted, no terminator */
            pa->un.sun_path[0] = 0;
            pa->un_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
        } else {
            pa->un_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
        }
        return 0;
    }
    if (strncmp(addr, "tcp:", 4) == 0) {
        const char *p = addr + 4, *colon;
        size_t hl;
        if (p[0] == '[') {
            const char *rb = strchr(p, ']');
            if (!rb || rb[1] != ':')
                return mproc__fail(MPROC_EINVAL, "address '%s': want tcp:[v6addr]:port", addr);
            p++;
            hl = (size_t)(rb - p);
            colon = rb + 1;
        } else {
            colon = strrchr(p, ':');
            if (!colon)
                return mproc__fail(MPROC_EINVAL, "address '%s': want tcp:host:port", addr);
            hl = (size_t)(colon - p);
        }
        const char *port = colon + 1;
        long pv = 0;
        size_t digits = strspn(port, "0123456789"); /* no sign, no spaces */
        if (digits > 0 && digits <= 5 && !port[digits])
            pv = strtol(port, NULL, 10);
        if (!digits || digits > 5 || port[digits] || pv > 65535 || hl >= sizeof pa->host)
            return mproc__fail(MPROC_EINVAL, "address '%s': bad host or port", addr);
        memcpy(pa->host, p, hl);
        pa->host[hl] = 0;
        snprintf(pa->port, sizeof pa->port, "%u", (unsigned)pv);
        return 0;
    }
    return mproc__fail(MPROC_EINVAL, "address '%s': want unix:/path, unix:@name or tcp:host:port",
                       addr);
}

static int resolve(const parsed_addr *pa, bool passive, struct addrinfo **res)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = passive ? AI_PASSIVE : 0};
    hints.ai_flags |= AI_NUMERICSERV;
    int e = getaddrinfo(pa->host[0] ? pa->host : NULL, pa->port, &hints, res);
    if (e)
        return mproc__fail(e == EAI_SYSTEM ? mproc__errno() : MPROC_ENOENT,
                           "address: cannot resolve '%s': %s", pa->host, gai_strerror(e));
    return 0;
}

static char *describe(int fd, const parsed_addr *pa)
{
    char buf[320];
    if (pa->is_unix) {
        if (pa->un.sun_path[0])
            snprintf(buf, sizeof buf, "unix:%s", pa->un.sun_path);
        else
            snprintf(buf, sizeof buf, "unix:@%.*s",
                     (int)(pa->un_len - offsetof(struct sockaddr_un, sun_path) - 1),
                     pa->un.sun_path + 1);
        return strdup(buf);
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
            port = ntohs(s6->sin6_port);
            snprintf(buf, sizeof buf, "tcp:[%s]:%d", host, port);
            return strdup(buf);
        }
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
        port = ntohs(s4->sin_port);
    }
    snprintf(buf, sizeof buf, "tcp:%s:%d", host, port);
    return strdup(buf);
}

/* --------------------------------------------------------------- listener */

int mproc_listener_new(mproc_listener **out, const char *address, const mproc_listener_opts *opts)
{
    static const mproc_listener_opts defaults;
    const mproc_listener_opts *o = opts ? opts : &defaults;
    *out = NULL;
    parsed_addr pa;
    int rc = parse_address(address, &pa);
    if (rc)
        return rc;
    if (o->auth.authkey && (rc = mproc__auth_check_digest(o->auth.digest)) != 0)
        return rc; /* a bad digest name fails here, not at the first handshake */
    mproc_listener *l = calloc(1, sizeof *l);
    if (!l)
        return MPROC_ENOMEM;
    l->fd = -1;
    l->owner = getpid();
    l->opts = *o;
    if (o->auth.digest)
        snprintf(l->digest, sizeof l->digest, "%s", o->auth.digest);
    l->opts.auth.digest = l->digest;
    if (o->auth.authkey) {
        l->key = malloc(o->auth.authkey_len ? o->auth.authkey_len : 1);
        if (!l->key) {
            rc = MPROC_ENOMEM;
            goto fail;
        }
        memcpy(l->key, o->auth.authkey, o->auth.authkey_len);
        l->opts.auth.authkey = l->key;
    }
    int backlog = o->backlog > 0 ? o->backlog : 1;
    if (pa.is_unix) {
        l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (l->fd < 0 || bind(l->fd, (struct sockaddr *)&pa.un, pa.un_len) < 0) {
            rc = mproc__fail(mproc__errno(), "listener: cannot bind %s: %s", address, strerror(errno));
            goto fail;
        }
        if (pa.un.sun_path[0] && !(l->unlink_path = strdup(pa.un.sun_path))) {
            unlink(pa.un.sun_path);
            rc = MPROC_ENOMEM;
            goto fail;
        }
    } else {
        struct addrinfo *res, *ai;
        if ((rc = resolve(&pa, true, &res)) != 0)
            goto fail;
        rc = MPROC_ENOENT;
        for (ai = res; ai; ai = ai->ai_next) {
            l->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
            if (l->fd < 0)
                continue;
            int one = 1;
            setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (bind(l->fd, ai->ai_addr, ai->ai_addrlen) == 0) {
                rc = 0;
                break;
            }
            rc = mproc__fail(mproc__errno(), "listener: cannot bind %s: %s", address,
                             strerror(errno));
            close(l->fd);
            l->fd = -1;
        }
        freeaddrinfo(res);
        if (rc)
            goto fail;
    }
    if (listen(l->fd, backlog) < 0) {
        rc = mproc__fail(mproc__errno(), "listener: listen on %s failed", address);
        goto fail;
    }
    if (!(l->address = describe(l->fd, &pa))) {
        rc = MPROC_ENOMEM;
        goto fail;
    }
    *out = l;
    return 0;
fail:
    mproc_listener_close(l);
    return rc;
}

static void tune_socket(int fd)
{
    int one = 1;
    /* Python's Connection concatenates small frames for Nagle's sake; we write
     * them in one syscall and also switch Nagle off (harmless on AF_UNIX: fails). */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int mproc_listener_accept(mproc_listener *l, mproc_connection **out, double timeout)
{
    *out = NULL;
    if (!l || l->fd < 0)
        return mproc__fail(MPROC_ESTATE, "accept: listener is closed");
    mproc_deadline d = mproc_deadline_after(timeout);
    int fd;
    for (;;) {
        fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0)
            break;
        /* accept(2): errors already pending on the new socket are reported
         * here; treat them like EAGAIN and go on listening. */
        if (errno == EINTR || errno == ECONNABORTED || errno == ENETDOWN || errno == EPROTO ||
            errno == ENOPROTOOPT || errno == EHOSTDOWN || errno == ENONET ||
            errno == EHOSTUNREACH || errno == EOPNOTSUPP || errno == ENETUNREACH)
            continue;
        if (errno != EAGAIN)
            return mproc__fail(mproc__errno(), "accept: %s", strerror(errno));
        int rc = mproc_wait_fd(l->fd, POLLIN, mproc_deadline_remaining(d));
        if (rc)
            return rc == MPROC_ETIMEDOUT ? mproc__fail(rc, "accept: no peer within the timeout") : rc;
    }
    tune_socket(fd);
    mproc_connection *c;
    int rc = mproc_connection_new(&c, fd, &l->opts.conn);
    if (rc) {
        close(fd);
        return rc;
    }
    if (l->opts.auth.authkey) {
        double ht = l->opts.auth.handshake_timeout;
        mproc_deadline hd = mproc_deadline_after(ht == 0 ? DEFAULT_HANDSHAKE_TIMEOUT : ht);
        rc = mproc__auth_deliver(c, l->key, l->opts.auth.authkey_len, l->digest, hd);
        if (!rc)
            rc = mproc__auth_answer(c, l->key, l->opts.auth.authkey_len, hd);
        if (rc) {
            mproc_connection_close(c);
            return rc;
        }
    }
    *out = c;
    return 0;
}

const char *mproc_listener_address(const mproc_listener *l)
{
    return l && l->address ? l->address : "";
}

int mproc_listener_fileno(const mproc_listener *l)
{
    return l ? l->fd : -1;
}

void mproc_listener_close(mproc_listener *l)
{
    if (!l)
        return;
    if (l->fd >= 0)
        close(l->fd);
    if (l->unlink_path && getpid() == l->owner)
        unlink(l->unlink_path);
    free(l->unlink_path);
    free(l->address);
    if (l->key)
        OPENSSL_cleanse(l->key, l->opts.auth.authkey_len);
    free(l->key);
    free(l);
}

/* ----------------------------------------------------------------- client */

/* Connect `fd` to `sa` within the deadline (non-blocking connect + poll). */
static int connect_until(int fd, const struct sockaddr *sa, socklen_t sl, mproc_deadline d)
{
    int rc = mproc_fd_set_nonblock(fd, true);
    if (rc)
        return rc;
    for (;;) {
        if (connect(fd, sa, sl) == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) { /* AF_UNIX backlog full: retry until the deadline */
            if (mproc_deadline_expired(d))
                return MPROC_ETIMEDOUT;
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
            continue;
        }
        if (errno != EINPROGRESS)
            return mproc__errno();
        if ((rc = mproc_wait_fd(fd, POLLOUT, mproc_deadline_remaining(d))) != 0)
            return rc;
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
            return mproc__errno();
        if (err)
            return -err;
        break;
    }
    return mproc_fd_set_nonblock(fd, false);
}

int mproc_client_connect(mproc_connection **out, const char *address, const mproc_client_opts *opts)
{
    static const mproc_client_opts defaults;
    const mproc_client_opts *o = opts ? opts : &defaults;
    *out = NULL;
    parsed_addr pa;
    int rc = parse_address(address, &pa);
    if (rc)
        return rc;
    if (o->auth.authkey && (rc = mproc__auth_check_digest(o->auth.digest)) != 0)
        return rc; /* a bad digest name fails here, not at the first handshake */
    mproc_deadline d = mproc_deadline_after(o->connect_timeout == 0 ? DEFAULT_CONNECT_TIMEOUT
                                                                      : o->connect_timeout);
    int fd = -1;
    if (pa.is_unix) {
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return mproc__errno();
        rc = connect_until(fd, (struct sockaddr *)&pa.un, pa.un_len, d);
    } else {
        struct addrinfo *res;
        if ((rc = resolve(&pa, false, &res)) != 0)
            return rc;
        rc = MPROC_ENOENT;
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                rc = mproc__errno();
                continue;
            }
            rc = connect_until(fd, ai->ai_addr, ai->ai_addrlen, d);
            if (rc == 0)
                break;
            close(fd);
            fd = -1;
        }
        freeaddrinfo(res);
        if (fd >= 0)
            tune_socket(fd);
    }
    if (rc) {
        if (fd >= 0)
            close(fd);
        return mproc__fail(rc, "client: cannot connect to %s: %s", address, mproc_strerror(rc));
    }
    mproc_connection *c;
    if ((rc = mproc_connection_new(&c, fd, &o->conn)) != 0) {
        close(fd);
        return rc;
    }
    if (o->auth.authkey) {
        double ht = o->auth.handshake_timeout;
        mproc_deadline hd = mproc_deadline_after(ht == 0 ? DEFAULT_HANDSHAKE_TIMEOUT : ht);
        rc = mproc__auth_answer(c, o->auth.authkey, o->auth.authkey_len, hd);
        if (!rc)
            rc = mproc__auth_deliver(c, o->auth.authkey, o->auth.authkey_len, o->auth.digest, hd);
        if (rc) {
            mproc_connection_close(c);
            return rc;
        }
    }
    *out = c;
    return 0;
}
