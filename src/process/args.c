/* args.c — the argument list handed to a child, and its wire form for spawn and
 * forkserver: scalars inline, descriptors by index into the SCM_RIGHTS array,
 * shareable objects as (type reference, exported bytes, their fds). */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

mproc_args *mproc_args_new(void)
{
    return calloc(1, sizeof(mproc_args));
}

static void arg_clear(mproc_arg *a)
{
    switch (a->kind) {
    case MPROC_ARG_STR:
    case MPROC_ARG_BYTES:
        free(a->u.s.p);
        break;
    case MPROC_ARG_FD:
        if (a->u.fd >= 0)
            close(a->u.fd);
        break;
    case MPROC_ARG_OBJECT:
        if (a->u.o.imported && a->u.o.type->release)
            a->u.o.type->release(a->u.o.obj);
        break;
    default:
        break;
    }
    a->kind = MPROC_ARG_NONE;
}

void mproc_args_free(mproc_args *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n; i++)
        arg_clear(&a->v[i]);
    free(a->v);
    free(a);
}

static mproc_arg *push(mproc_args *a)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 8;
        mproc_arg *v = realloc(a->v, cap * sizeof *v);
        if (!v)
            return NULL;
        a->v = v;
        a->cap = cap;
    }
    mproc_arg *x = &a->v[a->n++];
    memset(x, 0, sizeof *x);
    return x;
}

#define PUSH_OR_FAIL(x, a)                   \
    if (!(a))                                \
        return MPROC_EINVAL;                 \
    mproc_arg *x = push(a);                  \
    if (!x)                                  \
        return MPROC_ENOMEM

int mproc_args_add_int(mproc_args *a, int64_t v)
{
    PUSH_OR_FAIL(x, a);
    x->kind = MPROC_ARG_INT;
    x->u.i = v;
    return 0;
}

int mproc_args_add_double(mproc_args *a, double v)
{
    PUSH_OR_FAIL(x, a);
    x->kind = MPROC_ARG_DOUBLE;
    x->u.d = v;
    return 0;
}

static int add_blob(mproc_args *a, mproc_arg_kind kind, const void *p, size_t n)
{
    if (!a || (!p && n))
        return MPROC_EINVAL;
    char *copy = malloc(n + 1);
    if (!copy)
        return MPROC_ENOMEM;
    if (n)
        memcpy(copy, p, n);
    copy[n] = 0;
    mproc_arg *x = push(a);
    if (!x) {
        free(copy);
        return MPROC_ENOMEM;
    }
    x->kind = kind;
    x->u.s.p = copy;
    x->u.s.n = n;
    return 0;
}

int mproc_args_add_str(mproc_args *a, const char *s)
{
    if (!s)
        return MPROC_EINVAL;
    return add_blob(a, MPROC_ARG_STR, s, strlen(s));
}

int mproc_args_add_bytes(mproc_args *a, const void *p, size_t n)
{
    return add_blob(a, MPROC_ARG_BYTES, p, n);
}

int mproc_args_add_fd(mproc_args *a, int fd)
{
    if (!a)
        return MPROC_EINVAL;
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (d < 0)
        return mproc__fail(mproc__errno(), "args: cannot duplicate fd %d", fd);
    mproc_arg *x = push(a);
    if (!x) {
        close(d);
        return MPROC_ENOMEM;
    }
    x->kind = MPROC_ARG_FD;
    x->u.fd = d;
    return 0;
}

int mproc_args_add_object(mproc_args *a, const mproc_shareable_type *type, void *obj)
{
    if (!type || !type->export_obj || !type->import_obj || !type->name)
        return mproc__fail(MPROC_EINVAL, "args: shareable type needs name, export_obj and import_obj");
    PUSH_OR_FAIL(x, a);
    x->kind = MPROC_ARG_OBJECT;
    x->u.o.type = type;
    x->u.o.obj = obj;
    return 0;
}

size_t mproc_args_count(const mproc_args *a)
{
    return a ? a->n : 0;
}

static const mproc_arg *at(const mproc_args *a, size_t i, mproc_arg_kind kind)
{
    if (!a || i >= a->n || (kind != MPROC_ARG_NONE && a->v[i].kind != kind))
        return NULL;
    return &a->v[i];
}

mproc_arg_kind mproc_args_kind(const mproc_args *a, size_t i)
{
    const mproc_arg *x = at(a, i, MPROC_ARG_NONE);
    return x ? x->kind : MPROC_ARG_NONE;
}

int mproc_args_get_int(const mproc_args *a, size_t i, int64_t *out)
{
    const mproc_arg *x = at(a, i, MPROC_ARG_INT);
    if (!x)
        return mproc__fail(MPROC_EINVAL, "args: argument %zu is not an integer", i);
    *out = x->u.i;
    return 0;
}

int mproc_args_get_double(const mproc_args *a, size_t i, double *out)
{
    const mproc_arg *x = at(a, i, MPROC_ARG_DOUBLE);
    if (!x)
        return mproc__fail(MPROC_EINVAL, "args: argument %zu is not a double", i);
    *out = x->u.d;
    return 0;
}

const char *mproc_args_str(const mproc_args *a, size_t i)
{
    const mproc_arg *x = at(a, i, MPROC_ARG_STR);
    return x ? x->u.s.p : NULL;
}

const void *mproc_args_bytes(const mproc_args *a, size_t i, size_t *len)
{
    const mproc_arg *x = at(a, i, MPROC_ARG_BYTES);
    if (x && len)
        *len = x->u.s.n;
    return x ? x->u.s.p : NULL;
}

int mproc_args_fd(const mproc_args *a, size_t i)
{
    const mproc_arg *x = at(a, i, MPROC_ARG_FD);
    return x ? x->u.fd : -1;
}

int mproc_args_take_fd(mproc_args *a, size_t i)
{
    if (!at(a, i, MPROC_ARG_FD))
        return -1;
    int fd = a->v[i].u.fd;
    a->v[i].u.fd = -1;
    return fd;
}

void *mproc_args_object(const mproc_args *a, size_t i, const mproc_shareable_type *type)
{
    const mproc_arg *x = at(a, i, MPROC_ARG_OBJECT);
    return x && x->u.o.type == type ? x->u.o.obj : NULL;
}

int mproc__args_copy(const mproc_args *src, mproc_args **out)
{
    mproc_args *a = mproc_args_new();
    if (!a)
        return MPROC_ENOMEM;
    int rc = 0;
    for (size_t i = 0; src && i < src->n && rc == 0; i++) {
        const mproc_arg *x = &src->v[i];
        switch (x->kind) {
        case MPROC_ARG_INT: rc = mproc_args_add_int(a, x->u.i); break;
        case MPROC_ARG_DOUBLE: rc = mproc_args_add_double(a, x->u.d); break;
        case MPROC_ARG_STR:
        case MPROC_ARG_BYTES: rc = add_blob(a, x->kind, x->u.s.p, x->u.s.n); break;
        case MPROC_ARG_FD: rc = mproc_args_add_fd(a, x->u.fd); break;
        case MPROC_ARG_OBJECT: rc = mproc_args_add_object(a, x->u.o.type, x->u.o.obj); break;
        default: rc = MPROC_EINVAL; break;
        }
    }
    if (rc) {
        mproc_args_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

static int add_fd_index(int fd, int *fds, size_t *nfds)
{
    if (*nfds >= MPROC_MAX_FDS)
        return mproc__fail(MPROC_EINVAL, "args: more than %d descriptors for one child", MPROC_MAX_FDS);
    fds[(*nfds)++] = fd;
    return 0;
}

int mproc__args_export(const mproc_args *a, mproc_buf *b, int *fds, size_t *nfds)
{
    size_t n = a ? a->n : 0;
    int rc = mproc__put_u32(b, (uint32_t)n);
    for (size_t i = 0; i < n && rc == 0; i++) {
        const mproc_arg *x = &a->v[i];
        rc = mproc__put_u8(b, (uint8_t)x->kind);
        if (rc)
            break;
        switch (x->kind) {
        case MPROC_ARG_INT: rc = mproc__put_u64(b, (uint64_t)x->u.i); break;
        case MPROC_ARG_DOUBLE: {
            uint64_t bits;
            memcpy(&bits, &x->u.d, 8);
            rc = mproc__put_u64(b, bits);
            break;
        }
        case MPROC_ARG_STR:
        case MPROC_ARG_BYTES: rc = mproc__put_blob(b, x->u.s.p, x->u.s.n); break;
        case MPROC_ARG_FD:
            rc = mproc__put_u32(b, (uint32_t)*nfds);
            if (!rc)
                rc = add_fd_index(x->u.fd, fds, nfds);
            break;
        case MPROC_ARG_OBJECT: {
            const mproc_shareable_type *t = x->u.o.type;
            mproc_buf data = {0};
            size_t first = *nfds;
            rc = mproc__modref_put(b, t);
            if (!rc)
                rc = mproc__put_str(b, t->name);
            size_t room = MPROC_MAX_FDS - first, k = 0;
            if (!rc) { /* the exporter sees only the free slots */
                rc = t->export_obj(x->u.o.obj, &data, fds + first, &k, room);
                if (rc)
                    rc = mproc__fail(rc, "args: exporting a '%s' failed: %s", t->name,
                                     mproc_strerror(rc));
            }
            if (!rc && k > room)
                rc = mproc__fail(MPROC_EINVAL, "args: '%s' exported too many fds", t->name);
            if (!rc)
                *nfds = first + k;
            if (!rc)
                rc = mproc__put_blob(b, data.data, data.len);
            if (!rc)
                rc = mproc__put_u32(b, (uint32_t)first);
            if (!rc)
                rc = mproc__put_u32(b, (uint32_t)(*nfds - first));
            mproc__buf_free(&data);
            break;
        }
        default: rc = MPROC_EINVAL; break;
        }
    }
    return rc;
}

static int import_object(mproc_reader *r, int *fds, size_t nfds, mproc_arg *x)
{
    void *tp;
    char *name = NULL;
    const uint8_t *data;
    size_t len;
    uint32_t first, count;
    int rc = mproc__modref_get(r, &tp);
    if (!rc)
        rc = mproc__get_str(r, &name);
    if (!rc)
        rc = mproc__get_blob(r, &data, &len);
    if (!rc)
        rc = mproc__get_u32(r, &first);
    if (!rc)
        rc = mproc__get_u32(r, &count);
    if (rc)
        goto out;
    const mproc_shareable_type *t = tp;
    if (first > nfds || count > nfds - first) {
        rc = mproc__fail(MPROC_EPROTO, "args: object fds out of range");
        goto out;
    }
    if (!t->name || strcmp(t->name, name) != 0 || !t->import_obj) {
        rc = mproc__fail(MPROC_EBUILDID, "args: shareable type '%s' resolved to something else", name);
        goto out;
    }
    for (uint32_t k = 0; k < count; k++)
        if (fds[first + k] < 0) {
            rc = mproc__fail(MPROC_EPROTO, "args: descriptor used twice");
            goto out;
        }
    rc = t->import_obj(data, len, fds + first, count, &x->u.o.obj);
    if (rc) {
        rc = mproc__fail(rc, "args: importing a '%s' failed: %s", name, mproc_strerror(rc));
        goto out; /* the caller closes every fd still in the array */
    }
    for (uint32_t k = 0; k < count; k++)
        fds[first + k] = -1; /* now owned by the object */
    x->kind = MPROC_ARG_OBJECT;
    x->u.o.type = t;
    x->u.o.imported = true;
out:
    free(name);
    return rc;
}

int mproc__args_import(mproc_reader *r, int *fds, size_t nfds, mproc_args **out)
{
    mproc_args *a = mproc_args_new();
    uint32_t n = 0;
    int rc = a ? mproc__get_u32(r, &n) : MPROC_ENOMEM;
    if (!rc && n > (size_t)(r->end - r->p))
        rc = mproc__fail(MPROC_EPROTO, "args: count %u exceeds message", n);
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        uint8_t kind;
        rc = mproc__get_u8(r, &kind);
        if (rc)
            break;
        mproc_arg *x = push(a);
        if (!x) {
            rc = MPROC_ENOMEM;
            break;
        }
        switch (kind) {
        case MPROC_ARG_INT:
        case MPROC_ARG_DOUBLE: {
            uint64_t v;
            rc = mproc__get_u64(r, &v);
            if (!rc) {
                x->kind = kind;
                memcpy(kind == MPROC_ARG_INT ? (void *)&x->u.i : (void *)&x->u.d, &v, 8);
            }
            break;
        }
        case MPROC_ARG_STR:
        case MPROC_ARG_BYTES: {
            const uint8_t *p;
            size_t len;
            rc = mproc__get_blob(r, &p, &len);
            if (!rc) {
                a->n--; /* add_blob pushes its own slot */
                rc = add_blob(a, kind, p, len);
            }
            break;
        }
        case MPROC_ARG_FD: {
            uint32_t idx;
            rc = mproc__get_u32(r, &idx);
            if (!rc && (idx >= nfds || fds[idx] < 0))
                rc = mproc__fail(MPROC_EPROTO, "args: bad descriptor index %u", idx);
            if (!rc) {
                x->kind = MPROC_ARG_FD;
                x->u.fd = fds[idx];
                fds[idx] = -1;
            }
            break;
        }
        case MPROC_ARG_OBJECT:
            rc = import_object(r, fds, nfds, x);
            break;
        default:
            rc = mproc__fail(MPROC_EPROTO, "args: unknown argument kind %u", kind);
        }
        if (rc && x->kind == MPROC_ARG_NONE && a->n > 0 && &a->v[a->n - 1] == x)
            a->n--;
    }
    for (size_t i = 0; i < nfds; i++) /* unclaimed descriptors (or all, on failure) */
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
    if (rc) {
        mproc_args_free(a);
        return rc;
    }
    *out = a;
    return 0;
}
