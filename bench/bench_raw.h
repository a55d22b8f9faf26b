/* bench_raw.h — the raw anchor of the message benchmarks: CPython's framing
 * (a 4-byte big-endian length, then the bytes) written by hand with writev(2)
 * and read through a 64 KiB buffer, the floor a framed transport can reach. */
#ifndef MPROC_BENCH_RAW_H
#define MPROC_BENCH_RAW_H

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "bench.h"

typedef struct raw_reader {
    int fd;
    unsigned char buf[64 << 10];
    size_t pos, len;
} raw_reader;

/* A benchmark bug or a dead peer: say so and fail the run (no exit handlers:
 * this may run in a forked child). */
static inline void raw_fail(const char *what)
{
    fprintf(stderr, "%s: raw anchor (pid %d): %s\n", bench_prog, (int)getpid(), what);
    _exit(3);
}

static inline void raw_send(int fd, const void *p, size_t n)
{
    unsigned char hdr[4] = {(unsigned char)(n >> 24), (unsigned char)(n >> 16),
                            (unsigned char)(n >> 8), (unsigned char)n};
    struct iovec iov[2] = {{hdr, 4}, {(void *)p, n}};
    int k = 2;
    struct iovec *v = iov;
    while (k > 0) {
        ssize_t w = writev(fd, v, k);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            raw_fail(strerror(errno));
        }
        while (k > 0 && (size_t)w >= v->iov_len) {
            w -= (ssize_t)v->iov_len;
            v++;
            k--;
        }
        if (k > 0) {
            v->iov_base = (char *)v->iov_base + w;
            v->iov_len -= (size_t)w;
        }
    }
}

/* Make `need` bytes available in the buffer; false at EOF. */
static inline bool raw_fill(raw_reader *r, size_t need)
{
    if (r->pos == r->len)
        r->pos = r->len = 0;
    while (r->len - r->pos < need) {
        if (sizeof r->buf - r->pos < need) {
            memmove(r->buf, r->buf + r->pos, r->len - r->pos);
            r->len -= r->pos;
            r->pos = 0;
        }
        ssize_t n = read(r->fd, r->buf + r->len, sizeof r->buf - r->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        r->len += (size_t)n;
    }
    return true;
}

/* One frame into dest (cap bytes): true and its length in *len, false at EOF. */
static inline bool raw_recv(raw_reader *r, void *dest, size_t cap, size_t *len)
{
    if (!raw_fill(r, 4))
        return false;
    unsigned char *h = r->buf + r->pos;
    size_t n = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
    r->pos += 4;
    if (n > cap)
        raw_fail("frame larger than the buffer");
    *len = n;
    if (n <= sizeof r->buf) {
        if (!raw_fill(r, n))
            return false;
        memcpy(dest, r->buf + r->pos, n);
        r->pos += n;
        return true;
    }
    size_t got = r->len - r->pos < n ? r->len - r->pos : n;
    memcpy(dest, r->buf + r->pos, got);
    r->pos += got;
    while (got < n) {
        ssize_t k = read(r->fd, (char *)dest + got, n - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        got += (size_t)k;
    }
    return true;
}

#endif
