/* connection.c — framed messages over a stream fd, with CPython's framing:
 * Pipe(), send/recv of bytes and values, poll, wait(), and the shareable type. */
#include <assert.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "conn_int.h"


/* ------------------------------------------------------------ frame header */

size_t mproc__frame_header(uint8_t out[12], uint64_t len)
{
    if (len <= MPROC__FRAME_SHORT_MAX) {
        out[0] = (uint8_t)(len >> 24);
        out[1] = (uint8_t)(len >> 16);
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    memset(out, 0xff, 4); /* struct.pack("!i", -1) */
    for (int i = 0; i < 8; i++)
        out[4 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 12;
}

int mproc__frame_parse(const uint8_t *p, size_t n, uint64_t *len, size_t *hlen)
{
    if (n < 4)
        return MPROC_EAGAIN;
    uint32_t u = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    if (u == 0xffffffffu) {
        if (n < 12)
            return MPROC_EAGAIN;
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
            v = v << 8 | p[4 + i];
        *len = v;
        *hlen = 12;
        return 0;
    }
    if (u & 0x80000000u)
        return mproc__fail(MPROC_EPROTO, "connection: negative message length %d",
                           (int)(int32_t)u);
    *len = u;
    *hlen = 4;
    return 0;
}

/* ------------------------------------------------------------- lifecycle */

static int check_opts(const mproc_connection_opts *o)
{
    if (o->codec != MPROC_CODEC_PICKLE && o->codec != MPROC_CODEC_MSGPACK)
        return mproc__fail(MPROC_EINVAL, "connection: unknown codec %d", (int)o->codec);
    if (o->pickle_protocol != 0 && o->pickle_protocol != 4 && o->pickle_protocol != 5)
        return mproc__fail(MPROC_EINVAL, "connection: pickle protocol must be 4 or 5");
    return 0;
}

int mproc_connection_new2(mproc_connection **out, int fd, bool readable, bool writable,
                          const mproc_connection_opts *opts)
{
    static const mproc_connection_opts defaults;
    const mproc_connection_opts *o = opts ? opts : &defaults;
    *out = NULL;
    if (!readable && !writable)
        return mproc__fail(MPROC_EINVAL, "connection: neither readable nor writable");
    int rc = check_opts(o);
    if (rc)
        return rc;
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return mproc__fail(MPROC_EBADF, "connection: fd %d is not open", fd);
    if ((rc = mproc_fd_set_cloexec(fd, true)) != 0)
        return rc;
    mproc_connection *c = calloc(1, sizeof *c);
    if (!c)
        return MPROC_ENOMEM;
    c->fd = fd;
    c->readable = readable;
    c->writable = writable;
    c->is_socket = S_ISSOCK(st.st_mode);
    c->codec = o->codec;
    c->pickle_protocol = o->pickle_protocol ? o->pickle_protocol : 4;
    c->max_message = o->max_message ? o->max_message : MPROC_CONNECTION_MAX_MESSAGE;
    c->limits = o->limits;
    c->no_readahead = o->no_readahead;
    *out = c;
    return 0;
}

int mproc_connection_new(mproc_connection **out, int fd, const mproc_connection_opts *opts)
{
    return mproc_connection_new2(out, fd, true, true, opts);
}

int mproc_pipe(mproc_connection **a, mproc_connection **b, bool duplex,
               const mproc_connection_opts *opts)
{
    int fds[2];
    *a = *b = NULL;
    if (duplex ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds)
               : pipe2(fds, O_CLOEXEC))
        return mproc__fail(mproc__errno(), "pipe: cannot create the %s",
                           duplex ? "socketpair" : "pipe");
    int rc = mproc_connection_new2(a, fds[0], true, duplex, opts);
    if (rc == 0)
        rc = mproc_connection_new2(b, fds[1], duplex, true, opts);
    if (rc) {
        if (*a)
            mproc_connection_close(*a);
        else
            close(fds[0]);
        close(fds[1]);
        *a = NULL;
    }
    return rc;
}

int mproc_connection_close(mproc_connection *c)
{
    if (!c)
        return 0;
    int rc = 0;
    if (c->fd >= 0 && close(c->fd) < 0 && errno != EINTR)
        rc = mproc__errno();
    free(c->rbuf);
    free(c->big);
    mproc__buf_free(&c->wbuf);
    free(c);
    return rc;
}

int mproc_connection_fileno(const mproc_connection *c)
{
    return c ? c->fd : -1;
}

bool mproc_connection_readable(const mproc_connection *c)
{
    return c && c->readable;
}

bool mproc_connection_writable(const mproc_connection *c)
{
    return c && c->writable;
}

/* ----------------------------------------------------------------- writing */

static bool forever(mproc_deadline d)
{
    return d.ns == INT64_MAX;
}

/* Write every byte of iov[0..n) (consumed in place). Sockets: one sendmsg per
 * attempt with MSG_NOSIGNAL. Other fds: through the SIGPIPE-safe core writer. */
static int write_iov(mproc_connection *c, struct iovec *iov, int n, mproc_deadline d)
{
    if (!c->is_socket) {
        for (int i = 0; i < n; i++) {
            int rc = mproc__write_all_until(c->fd, iov[i].iov_base, iov[i].iov_len, d);
            if (rc)
                return rc;
        }
        return 0;
    }
    int flags = MSG_NOSIGNAL | (forever(d) ? 0 : MSG_DONTWAIT);
    while (n > 0) {
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(c->fd, &m, flags);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                int rc = mproc_wait_fd(c->fd, POLLOUT, mproc_deadline_remaining(d));
                if (rc)
                    return rc;
                continue;
            }
            return mproc__errno();
        }
        size_t left = (size_t)w;
        while (n > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

static int check_writable(const mproc_connection *c)
{
    if (c->fd < 0 || c->broken)
        return mproc__fail(MPROC_ESTATE, "connection: closed or broken");
    if (!c->writable)
        return mproc__fail(MPROC_ESTATE, "connection: not writable");
    return 0;
}

int mproc__conn_send_until(mproc_connection *c, const void *buf, size_t len, mproc_deadline d)
{
    int rc = check_writable(c);
    if (rc)
        return rc;
    uint8_t hdr[12];
    size_t hl = mproc__frame_header(hdr, len);
    if (!c->is_socket && len + hl <= PIPE_BUF) {
        /* one write(2) of at most PIPE_BUF bytes is atomic on a pipe */
        uint8_t tmp[PIPE_BUF];
        memcpy(tmp, hdr, hl);
        if (len)
            memcpy(tmp + hl, buf, len);
        struct iovec one = {tmp, hl + len};
        return write_iov(c, &one, 1, d);
    }
    struct iovec iov[2] = {{hdr, hl}, {(void *)buf, len}};
    return write_iov(c, iov, len ? 2 : 1, d);
}

int mproc_connection_send_bytes(mproc_connection *c, const void *buf, size_t len)
{
    if (!buf && len)
        return mproc__fail(MPROC_EINVAL, "send_bytes: NULL buffer");
    return mproc__conn_send_until(c, buf, len, mproc_deadline_after(MPROC_FOREVER));
}


int mproc_connection_send(mproc_connection *c, const mproc_value *v)
{
    int rc = check_writable(c);
    if (rc)
        return rc;
    if (!v)
        return mproc__fail(MPROC_EINVAL, "send: NULL value");
    /* Encode after 4 reserved bytes so header and payload leave in one write. */
    mproc_buf *b = &c->wbuf;
    b->len = 0;
    static const uint8_t zero[4];
    if ((rc = mproc_buf_append(b, zero, 4)) != 0)
        return rc;
    if (c->codec == MPROC_CODEC_PICKLE)
        rc = mproc_pickle_encode(v, c->pickle_protocol, b);
    else
        rc = mproc_msgpack_encode(v, b);
    size_t n = b->len - 4;
    if (rc == 0) {
        if (n <= MPROC__FRAME_SHORT_MAX) {
            mproc__frame_header(b->data, n);
            struct iovec one = {b->data, b->len};
            rc = write_iov(c, &one, 1, mproc_deadline_after(MPROC_FOREVER));
        } else {
            rc = mproc__conn_send_until(c, b->data + 4, n, mproc_deadline_after(MPROC_FOREVER));
        }
    }
    if (b->cap > ((size_t)1 << 20)) /* do not keep a huge scratch buffer around */
        mproc__buf_free(b);
    return rc;
}

/* ----------------------------------------------------------------- reading */

static int check_readable(const mproc_connection *c)
{
    if (c->fd < 0 || c->broken)
        return mproc__fail(MPROC_ESTATE, "connection: closed or broken");
    if (!c->readable)
        return mproc__fail(MPROC_ESTATE, "connection: not readable");
    return 0;
}

/* One read of at most n bytes within the deadline: bytes (0 = EOF) or a negative code. */
static ssize_t read_some(mproc_connection *c, void *p, size_t n, mproc_deadline d)
{
    for (;;) {
        ssize_t r;
        if (c->is_socket)
            r = recv(c->fd, p, n, forever(d) ? 0 : MSG_DONTWAIT);
        else if (forever(d))
            r = read(c->fd, p, n);
        else {
            int rc = mproc_wait_fd(c->fd, POLLIN, mproc_deadline_remaining(d));
            if (rc)
                return rc;
            r = read(c->fd, p, n);
        }
        if (r >= 0)
            return r;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return mproc__errno();
        int rc = mproc_wait_fd(c->fd, POLLIN, mproc_deadline_remaining(d));
        if (rc)
            return rc;
    }
}

static int broken(mproc_connection *c, int err)
{
    c->broken = true;
    return err;
}

/* Make at least `need` bytes available in rbuf[rpos..rlen). */
static int fill(mproc_connection *c, size_t need, mproc_deadline d)
{
    if (!c->rbuf && !(c->rbuf = malloc(MPROC__RBUF_SIZE)))
        return MPROC_ENOMEM;
    assert(need <= MPROC__RBUF_SIZE);
    if (c->rpos == c->rlen)
        c->rpos = c->rlen = 0;
    while (c->rlen - c->rpos < need) {
        if (c->rpos && MPROC__RBUF_SIZE - c->rpos < need) {
            memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
            c->rlen -= c->rpos;
            c->rpos = 0;
        }
        size_t want = c->no_readahead ? need - (c->rlen - c->rpos) : MPROC__RBUF_SIZE - c->rlen;
        ssize_t r = read_some(c, c->rbuf + c->rlen, want, d);
        if (r < 0) {
            if (r != MPROC_ETIMEDOUT && r != MPROC_EAGAIN && (c->have_header || c->rlen > c->rpos))
                c->broken = true;
            return (int)r;
        }
        if (r == 0) {
            if (!c->have_header && c->rlen == c->rpos)
                return mproc__fail(MPROC_ECLOSED, "connection: end of file");
            return broken(c, mproc__fail(MPROC_EPROTO, "connection: got end of file during message"));
        }
        c->rlen += (size_t)r;
    }
    return 0;
}

/* Has the buffer a whole frame (so recv will not block)? */
static bool frame_buffered(const mproc_connection *c)
{
    size_t avail = c->rlen - c->rpos;
    if (c->have_header)
        return c->big ? c->big_got == c->cur_len : avail >= c->cur_len;
    uint64_t len = 0;
    size_t hl = 0;
    if (!c->rbuf || mproc__frame_parse(c->rbuf + c->rpos, avail, &len, &hl) != 0)
        return false;
    return len <= avail - hl;
}

int mproc__conn_recv_frame(mproc_connection *c, uint64_t keep_over, uint8_t *dest,
                           mproc_deadline d, uint8_t **data, size_t *len, bool *owned)
{
    int rc = check_readable(c);
    if (rc)
        return rc;
    if (!c->have_header) {
        if ((rc = fill(c, 4, d)) != 0)
            return rc;
        uint64_t n = 0;
        size_t hl = 0;
        rc = mproc__frame_parse(c->rbuf + c->rpos, c->rlen - c->rpos, &n, &hl);
        if (rc == MPROC_EAGAIN) {
            if ((rc = fill(c, 12, d)) != 0)
                return rc;
            rc = mproc__frame_parse(c->rbuf + c->rpos, c->rlen - c->rpos, &n, &hl);
        }
        if (rc)
            return broken(c, rc);
        if (n > c->max_message)
            return broken(c, mproc__fail(MPROC_EMSGSIZE,
                                         "connection: message of %llu bytes exceeds the limit "
                                         "of %zu; the connection cannot be used any more",
                                         (unsigned long long)n, c->max_message));
        c->rpos += hl;
        c->have_header = true;
        c->cur_len = n;
    }
    size_t n = (size_t)c->cur_len;
    if (n <= MPROC__RBUF_SIZE && !c->big) {
        if ((rc = fill(c, n, d)) != 0)
            return rc;
        *len = n;
        if (n > keep_over)
            return MPROC_EMSGSIZE; /* kept: header stays consumed, bytes stay buffered */
        *data = c->rbuf + c->rpos;
        *owned = false;
        c->rpos += n;
        c->have_header = false;
        return 0;
    }
    if (!c->big && dest && n <= keep_over) {
        /* straight into the caller's buffer; a timeout parks the partial frame in c->big */
        size_t got = c->rlen - c->rpos < n ? c->rlen - c->rpos : n;
        memcpy(dest, c->rbuf + c->rpos, got);
        c->rpos += got;
        while (got < n) {
            ssize_t r = read_some(c, dest + got, n - got, d);
            if (r == 0)
                r = mproc__fail(MPROC_EPROTO, "connection: got end of file during message");
            if (r == MPROC_ETIMEDOUT) {
                if (!(c->big = malloc(n)))
                    return broken(c, MPROC_ENOMEM);
                memcpy(c->big, dest, got);
                c->big_got = got;
            }
            if (r < 0)
                return r == MPROC_ETIMEDOUT ? (int)r : broken(c, (int)r);
            got += (size_t)r;
        }
        *len = n;
        *data = dest;
        *owned = false;
        c->have_header = false;
        return 0;
    }
    if (!c->big) {
        if (!(c->big = malloc(n)))
            return mproc__fail(MPROC_ENOMEM, "connection: no memory for a %zu-byte message", n);
        size_t avail = c->rlen - c->rpos;
        c->big_got = avail < n ? avail : n;
        memcpy(c->big, c->rbuf + c->rpos, c->big_got);
        c->rpos += c->big_got;
    }
    while (c->big_got < n) { /* straight into the destination: no copy through rbuf */
        ssize_t r = read_some(c, c->big + c->big_got, n - c->big_got, d);
        if (r == 0)
            r = mproc__fail(MPROC_EPROTO, "connection: got end of file during message");
        if (r < 0)
            return r == MPROC_ETIMEDOUT ? (int)r : broken(c, (int)r);
        c->big_got += (size_t)r;
    }
    *len = n;
    if (n > keep_over)
        return MPROC_EMSGSIZE;
    *data = c->big;
    *owned = true;
    c->big = NULL;
    c->big_got = 0;
    c->have_header = false;
    return 0;
}

int mproc_connection_recv_bytes(mproc_connection *c, void **buf, size_t *len, double timeout)
{
    uint8_t *data;
    size_t n = 0;
    bool owned;
    int rc = mproc__conn_recv_frame(c, UINT64_MAX, NULL, mproc_deadline_after(timeout), &data, &n, &owned);
    if (rc)
        return rc;
    if (!owned) {
        uint8_t *copy = malloc(n ? n : 1);
        if (!copy)
            return MPROC_ENOMEM; /* the message is lost, but the stream is in sync */
        memcpy(copy, data, n);
        data = copy;
    }
    *buf = data;
    *len = n;
    return 0;
}

int mproc_connection_recv_bytes_into(mproc_connection *c, void *buf, size_t cap, size_t *len,
                                     double timeout)
{
    uint8_t *data;
    bool owned;
    int rc = mproc__conn_recv_frame(c, cap, buf, mproc_deadline_after(timeout), &data, len, &owned);
    if (rc == MPROC_EMSGSIZE && !c->broken)
        return mproc__fail(rc, "recv_bytes_into: the %zu-byte message does not fit in %zu bytes; "
                               "it is kept for the next recv", *len, cap);
    if (rc) {
        *len = 0; /* only a kept message reports its length with an error */
        return rc;
    }
    if (*len && data != buf)
        memcpy(buf, data, *len);
    if (owned)
        free(data);
    return 0;
}

int mproc_connection_recv(mproc_connection *c, mproc_value **out, double timeout)
{
    uint8_t *data;
    size_t n = 0;
    bool owned;
    *out = NULL;
    int rc = mproc__conn_recv_frame(c, UINT64_MAX, NULL, mproc_deadline_after(timeout), &data, &n, &owned);
    if (rc)
        return rc;
    const mproc_decode_limits *lim = &c->limits;
    if (c->codec == MPROC_CODEC_PICKLE)
        rc = mproc_pickle_decode(data, n, lim, out);
    else
        rc = mproc_msgpack_decode(data, n, lim, out);
    if (owned)
        free(data);
    return rc;
}

/* ------------------------------------------------------------ poll / wait */

int mproc_connection_poll(mproc_connection *c, double timeout)
{
    int rc = check_readable(c);
    if (rc)
        return rc;
    if (frame_buffered(c))
        return 1;
    rc = mproc_wait_fd(c->fd, POLLIN, timeout);
    return rc == 0 ? 1 : rc == MPROC_ETIMEDOUT ? 0 : rc;
}

int mproc_connection_wait(mproc_wait_item *items, size_t n, double timeout)
{
    if (n == 0 && timeout < 0)
        return mproc__fail(MPROC_EINVAL, "wait: nothing to wait for, forever");
    struct pollfd local[64];
    struct pollfd *pfd = n <= 64 ? local : calloc(n, sizeof *pfd);
    if (!pfd)
        return MPROC_ENOMEM;
    int ready = 0, rc = 0;
    for (size_t i = 0; i < n; i++) {
        mproc_connection *c = items[i].conn;
        items[i].ready = false;
        if (c && (c->fd < 0 || !c->readable)) {
            rc = mproc__fail(MPROC_EINVAL, "wait: item %zu is a closed or write-only connection", i);
            goto out;
        }
        pfd[i].fd = c ? c->fd : items[i].fd;
        pfd[i].events = POLLIN;
        pfd[i].revents = 0;
        if (c && (c->broken || frame_buffered(c))) {
            items[i].ready = true;
            ready++;
        }
    }
    mproc_deadline d = mproc_deadline_after(ready ? 0 : timeout);
    for (;;) {
        int k = poll(pfd, n, mproc_deadline_poll_ms(d));
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            rc = mproc__errno();
            goto out;
        }
        if (k > 0 || ready || mproc_deadline_expired(d))
            break;
    }
    for (size_t i = 0; i < n; i++) {
        if (pfd[i].revents & POLLNVAL) {
            rc = mproc__fail(MPROC_EBADF, "wait: item %zu (fd %d) is not open", i, pfd[i].fd);
            goto out;
        }
        if (pfd[i].revents && !items[i].ready) {
            items[i].ready = true;
            ready++;
        }
    }
    rc = ready;
out:
    if (pfd != local)
        free(pfd);
    return rc;
}

/* ------------------------------------------------------------ shareable */

/* Wire form: u8 readable, u8 writable, u8 codec, u8 no_readahead, u32 pickle
 * protocol, u64 max_message, u64 x3 decode limits; one fd. */
static int conn_export(const void *obj, mproc_buf *out, int *fds, size_t *nfds, size_t max_fds)
{
    const mproc_connection *c = obj;
    if (c->fd < 0)
        return mproc__fail(MPROC_ESTATE, "connection: cannot hand a closed connection to a child");
    if (c->rlen > c->rpos || c->have_header)
        return mproc__fail(MPROC_ESTATE, "connection: it holds received bytes not yet read; "
                                         "they cannot follow the fd into a child");
    if (*nfds >= max_fds)
        return mproc__fail(MPROC_EINVAL, "connection: no room for the descriptor");
    int rc = mproc__put_u8(out, c->readable);
    if (!rc) rc = mproc__put_u8(out, c->writable);
    if (!rc) rc = mproc__put_u8(out, (uint8_t)c->codec);
    if (!rc) rc = mproc__put_u8(out, c->no_readahead);
    if (!rc) rc = mproc__put_u32(out, (uint32_t)c->pickle_protocol);
    if (!rc) rc = mproc__put_u64(out, c->max_message);
    if (!rc) rc = mproc__put_u64(out, c->limits.max_depth);
    if (!rc) rc = mproc__put_u64(out, c->limits.max_items);
    if (!rc) rc = mproc__put_u64(out, c->limits.max_bytes);
    if (!rc)
        fds[(*nfds)++] = c->fd;
    return rc;
}

static int conn_import(const void *data, size_t len, const int *fds, size_t nfds, void **obj)
{
    mproc_reader r = {data, (const uint8_t *)data + len};
    uint8_t rd = 0, wr = 0, codec = 0, nra = 0;
    uint32_t proto = 0;
    uint64_t maxm = 0, depth = 0, items = 0, bytes = 0;
    int rc = mproc__get_u8(&r, &rd);
    if (!rc) rc = mproc__get_u8(&r, &wr);
    if (!rc) rc = mproc__get_u8(&r, &codec);
    if (!rc) rc = mproc__get_u8(&r, &nra);
    if (!rc) rc = mproc__get_u32(&r, &proto);
    if (!rc) rc = mproc__get_u64(&r, &maxm);
    if (!rc) rc = mproc__get_u64(&r, &depth);
    if (!rc) rc = mproc__get_u64(&r, &items);
    if (!rc) rc = mproc__get_u64(&r, &bytes);
    if (rc || nfds != 1 || r.p != r.end)
        return mproc__fail(MPROC_EPROTO, "connection: bad exported connection");
    mproc_connection_opts o = {
        .codec = (mproc_codec)codec,
        .pickle_protocol = (int)proto,
        .max_message = (size_t)maxm,
        .limits = {(size_t)depth, (size_t)items, (size_t)bytes},
        .no_readahead = nra != 0,
    };
    mproc_connection *c;
    if ((rc = mproc_connection_new2(&c, fds[0], rd != 0, wr != 0, &o)) != 0)
        return rc;
    *obj = c;
    return 0;
}

static void conn_release(void *obj)
{
    mproc_connection_close(obj);
}

const mproc_shareable_type mproc_connection_type = {"mproc.connection", conn_export, conn_import,
                                                    conn_release};
