/* buf.c — growable buffers, a bounds-checked reader, and the framed control
 * messages that parents, children, the fork server and the tracker exchange. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

int mproc_buf_append(mproc_buf *b, const void *data, size_t len)
{
    if (len > SIZE_MAX - b->len)
        return MPROC_ENOMEM;
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len)
            cap = cap > SIZE_MAX / 2 ? b->len + len : cap * 2;
        uint8_t *p = realloc(b->data, cap);
        if (!p)
            return MPROC_ENOMEM;
        b->data = p;
        b->cap = cap;
    }
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

void mproc__buf_free(mproc_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* Integers travel little-endian: every peer is the same machine and binary. */
int mproc__put_u8(mproc_buf *b, uint8_t v) { return mproc_buf_append(b, &v, 1); }
int mproc__put_u32(mproc_buf *b, uint32_t v) { return mproc_buf_append(b, &v, 4); }
int mproc__put_u64(mproc_buf *b, uint64_t v) { return mproc_buf_append(b, &v, 8); }

int mproc__put_blob(mproc_buf *b, const void *p, size_t n)
{
    if (n > UINT32_MAX)
        return MPROC_EMSGSIZE;
    int rc = mproc__put_u32(b, (uint32_t)n);
    return rc ? rc : mproc_buf_append(b, p, n);
}

int mproc__put_str(mproc_buf *b, const char *s)
{
    return mproc__put_blob(b, s ? s : "", s ? strlen(s) : 0);
}

static int take(mproc_reader *r, void *out, size_t n)
{
    if ((size_t)(r->end - r->p) < n)
        return mproc__fail(MPROC_EPROTO, "truncated control message");
    memcpy(out, r->p, n);
    r->p += n;
    return 0;
}

int mproc__get_u8(mproc_reader *r, uint8_t *v) { return take(r, v, 1); }
int mproc__get_u32(mproc_reader *r, uint32_t *v) { return take(r, v, 4); }
int mproc__get_u64(mproc_reader *r, uint64_t *v) { return take(r, v, 8); }

int mproc__get_blob(mproc_reader *r, const uint8_t **p, size_t *n)
{
    uint32_t len = 0;
    int rc = mproc__get_u32(r, &len);
    if (rc)
        return rc;
    if ((size_t)(r->end - r->p) < len)
        return mproc__fail(MPROC_EPROTO, "truncated control message");
    *p = r->p;
    *n = len;
    r->p += len;
    return 0;
}

int mproc__get_str(mproc_reader *r, char **out)
{
    const uint8_t *p = NULL;
    size_t n = 0;
    int rc = mproc__get_blob(r, &p, &n);
    if (rc)
        return rc;
    if (memchr(p, 0, n))
        return mproc__fail(MPROC_EPROTO, "string with embedded NUL in control message");
    char *s = malloc(n + 1);
    if (!s)
        return MPROC_ENOMEM;
    memcpy(s, p, n);
    s[n] = 0;
    *out = s;
    return 0;
}

typedef struct {
    uint32_t magic, version_type, nfds, len;
} msg_header;

int mproc__msg_send(int fd, uint32_t type, const void *body, size_t len, const int *fds, size_t nfds)
{
    return mproc__msg_send_until(fd, type, body, len, fds, nfds, mproc_deadline_after(MPROC_FOREVER));
}

int mproc__msg_send_until(int fd, uint32_t type, const void *body, size_t len, const int *fds,
                          size_t nfds, mproc_deadline d)
{
    if (len > MPROC__MSG_MAX)
        return mproc__fail(MPROC_EMSGSIZE, "control message of %zu bytes exceeds %u", len,
                           MPROC__MSG_MAX);
    msg_header h = {MPROC__MAGIC, MPROC__PROTO_VERSION << 16 | type, (uint32_t)nfds, (uint32_t)len};
    int rc = mproc__send_fds_until(fd, &h, sizeof h, fds, nfds, d);
    if (rc == 0 && len)
        rc = mproc__write_all_until(fd, body, len, d);
    return rc;
}

int mproc__msg_recv(int fd, uint32_t *type, uint8_t **body, size_t *len, int *fds, size_t max_fds,
                    size_t *nfds, double timeout)
{
    mproc_deadline d = mproc_deadline_after(timeout);
    msg_header h;
    int rc = mproc_recv_fds(fd, &h, sizeof h, fds, max_fds, nfds, timeout);
    if (rc)
        return rc;
    uint8_t *p = NULL;
    if (h.magic != MPROC__MAGIC || h.version_type >> 16 != MPROC__PROTO_VERSION ||
        h.nfds != *nfds || h.len > MPROC__MSG_MAX) {
        rc = mproc__fail(MPROC_EPROTO,
                         "bad control message (magic %08x, version %u, %u/%zu fds, %u bytes)",
                         h.magic, h.version_type >> 16, h.nfds, *nfds, h.len);
        goto fail;
    }
    p = malloc(h.len ? h.len : 1);
    if (!p) {
        rc = MPROC_ENOMEM;
        goto fail;
    }
    if (h.len) {
        size_t none;
        rc = mproc_recv_fds(fd, p, h.len, NULL, 0, &none, mproc_deadline_remaining(d));
        if (rc)
            goto fail;
    }
    *type = h.version_type & 0xffff;
    *body = p;
    *len = h.len;
    return 0;
fail:
    free(p);
    for (size_t i = 0; i < *nfds; i++)
        close(fds[i]);
    *nfds = 0;
    return rc;
}
