/* task.c — one task call, wherever it runs: the wire form of a task's input
 * and output, naming its function across processes, and running it with its
 * error message captured. Pool workers and other backends (MPI ranks) share it. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool_int.h"

static __thread bool tl_in_task;
static __thread bool tl_msg_set;
static __thread char tl_msg[POOL_MSG_MAX];

int mproc_task_error(const char *fmt, ...)
{
    if (tl_in_task && fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(tl_msg, sizeof tl_msg, fmt, ap);
        va_end(ap);
        tl_msg_set = true;
    }
    return MPROC_EREMOTE;
}

void pool__task_begin(void)
{
    tl_in_task = true;
    tl_msg_set = false;
}

void pool__task_end(void)
{
    tl_in_task = false;
}

bool pool__task_message_set(void)
{
    return tl_msg_set;
}

const char *pool__task_message(int rc, char *buf, size_t len)
{
    tl_in_task = false;
    if (tl_msg_set)
        return tl_msg;
    if (rc > 0)
        snprintf(buf, len, "task failed (returned %d)", rc);
    else
        snprintf(buf, len, "task failed: %s (%s)", mproc_errname(rc), mproc_strerror(rc));
    return buf;
}

static void *task_fn(mproc_task t)
{
    switch (t.kind) {
    case MPROC_TASK_BYTES:
        return (void *)t.fn.bytes;
    case MPROC_TASK_VALUE:
        return (void *)t.fn.value;
    case MPROC_TASK_STAR:
        return (void *)t.fn.star;
    }
    return NULL;
}

int mproc_task_ref(mproc_task task, mproc_buf *out)
{
    void *fn = task_fn(task);
    if (!fn || !out)
        return mproc__fail(MPROC_EINVAL, "task_ref: no task function, an unknown task kind or NULL out");
    size_t at = out->len;
    int rc = mproc__put_u8(out, (uint8_t)task.kind);
    if (!rc)
        rc = mproc__modref_put(out, fn);
    if (rc)
        out->len = at;
    return rc;
}

int mproc_task_resolve(const void *ref, size_t len, mproc_task *task)
{
    if (!ref || !task)
        return mproc__fail(MPROC_EINVAL, "task_resolve: NULL argument");
    mproc_reader r = {ref, (const uint8_t *)ref + len};
    uint8_t kind;
    void *fn;
    int rc = mproc__get_u8(&r, &kind) ? mproc__fail(MPROC_EPROTO, "task_resolve: empty reference") : 0;
    if (!rc && kind != MPROC_TASK_BYTES && kind != MPROC_TASK_VALUE && kind != MPROC_TASK_STAR)
        rc = mproc__fail(MPROC_EPROTO, "task_resolve: unknown task kind %u", kind);
    if (!rc)
        rc = mproc__modref_get(&r, &fn);
    if (!rc && r.p != r.end)
        rc = mproc__fail(MPROC_EPROTO, "task_resolve: %zu stray bytes after the reference",
                         (size_t)(r.end - r.p));
    if (rc)
        return rc;
    task->kind = (mproc_task_kind)kind;
    if (kind == MPROC_TASK_BYTES)
        task->fn.bytes = (mproc_bytes_fn)fn;
    else if (kind == MPROC_TASK_VALUE)
        task->fn.value = (mproc_value_fn)fn;
    else
        task->fn.star = (mproc_star_fn)fn;
    return 0;
}

int mproc_task_encode_input(mproc_task_kind kind, const mproc_value *arg, mproc_buf *out)
{
    if (!out)
        return mproc__fail(MPROC_EINVAL, "task_encode_input: NULL out");
    if (kind == MPROC_TASK_BYTES) {
        const void *d = NULL;
        size_t n = 0;
        if (mproc_value_type(arg) == MPROC_V_BYTES)
            d = mproc_value_as_bytes(arg, &n);
        else if (mproc_value_type(arg) == MPROC_V_STR)
            d = mproc_value_as_str(arg, &n);
        else
            return mproc__fail(MPROC_EINVAL, "a bytes task needs a bytes or str input");
        return mproc_buf_append(out, d, n);
    }
    if (kind == MPROC_TASK_STAR && mproc_value_type(arg) != MPROC_V_LIST)
        return mproc__fail(MPROC_EINVAL, "a star task needs a list input");
    if (kind != MPROC_TASK_VALUE && kind != MPROC_TASK_STAR)
        return mproc__fail(MPROC_EINVAL, "unknown task kind %d", (int)kind);
    if (arg)
        return mproc_msgpack_encode(arg, out);
    static const uint8_t nil = 0xc0; /* MessagePack nil */
    return mproc_buf_append(out, &nil, 1);
}

/* The message of a task that returned rc, into msg. */
static void task_failed(int rc, char *msg, size_t msglen)
{
    const char *m = pool__task_message(rc, msg, msglen);
    if (m != msg)
        snprintf(msg, msglen, "%s", m);
}

/* A value or star task on one MessagePack input; the output appended to out. */
static int run_value(mproc_task t, const void *in, size_t len, mproc_buf *out, char *msg,
                     size_t msglen)
{
    mproc_value *arg = NULL, *res = NULL;
    int rc = mproc_msgpack_decode(in, len, NULL, &arg);
    if (rc) {
        snprintf(msg, msglen, "task input did not decode: %s", mproc_errmsg());
        return rc;
    }
    if (t.kind == MPROC_TASK_STAR && mproc_value_type(arg) != MPROC_V_LIST) {
        mproc_value_free(arg);
        snprintf(msg, msglen, "a star task needs a list input");
        return MPROC_EINVAL;
    }
    pool__task_begin();
    if (t.kind == MPROC_TASK_VALUE) {
        rc = t.fn.value(arg, &res);
    } else {
        size_t argc = mproc_value_len(arg);
        mproc_value **argv = calloc(argc ? argc : 1, sizeof *argv);
        if (!argv) {
            rc = MPROC_ENOMEM;
        } else {
            for (size_t i = 0; i < argc; i++)
                argv[i] = mproc_value_at(arg, i);
            rc = t.fn.star(argv, argc, &res);
            free(argv);
        }
    }
    mproc_value_free(arg);
    if (rc) {
        mproc_value_free(res);
        task_failed(rc, msg, msglen);
        return rc;
    }
    pool__task_end();
    rc = mproc_task_encode_input(MPROC_TASK_VALUE, res, out);
    mproc_value_free(res);
    if (rc)
        snprintf(msg, msglen, "task output did not encode: %s", mproc_errmsg());
    return rc;
}

int mproc_task_run(mproc_task task, const void *in, size_t len, mproc_buf *out, char *msg,
                   size_t msglen)
{
    char dummy[1];
    if (!msg || !msglen) {
        msg = dummy;
        msglen = sizeof dummy;
    }
    msg[0] = 0;
    if (!task_fn(task) || !out || (!in && len)) {
        snprintf(msg, msglen, "task_run: no task function or NULL buffer");
        return mproc__fail(MPROC_EINVAL, "%s", msg);
    }
    size_t at = out->len;
    int rc;
    if (task.kind == MPROC_TASK_BYTES) {
        pool__task_begin();
        rc = task.fn.bytes(in ? in : "", len, out);
        if (rc)
            task_failed(rc, msg, msglen);
        pool__task_end();
    } else {
        rc = run_value(task, in, len, out, msg, msglen);
    }
    if (rc) {
        out->len = at; /* no half output */
        if (!msg[0])
            snprintf(msg, msglen, "task failed: %s", mproc_errname(rc));
    }
    return rc;
}

int mproc_task_decode_output(mproc_task_kind kind, const void *p, size_t n,
                             const mproc_decode_limits *limits, mproc_value **out)
{
    if (!out || (!p && n))
        return mproc__fail(MPROC_EINVAL, "task_decode_output: NULL argument");
    *out = NULL;
    if (kind == MPROC_TASK_BYTES) {
        *out = mproc_value_bytes(p ? p : "", n);
        return *out ? 0 : MPROC_ENOMEM;
    }
    int rc = mproc_msgpack_decode(p, n, limits, out);
    if (rc)
        return mproc__fail(rc, "task result did not decode: %s", mproc_errmsg());
    return 0;
}
