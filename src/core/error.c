/* error.c — error names, descriptions and the thread-local detail message.
 * Codes are negated errno values where one fits, library codes below -10000. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local char errmsg_buf[512];

typedef struct {
    int code;
    const char *name;
    const char *text;
} errinfo;

static const errinfo lib_errors[] = {
    {MPROC_OK, "MPROC_OK", "success"},
    {MPROC_ECLOSED, "MPROC_ECLOSED", "closed"},
    {MPROC_EAUTH, "MPROC_EAUTH", "authentication failed"},
    {MPROC_EBROKEN, "MPROC_EBROKEN", "shared object is broken"},
    {MPROC_EREMOTE, "MPROC_EREMOTE", "remote side reported an error"},
    {MPROC_ESTATE, "MPROC_ESTATE", "invalid in the object's current state"},
    {MPROC_ENOINIT, "MPROC_ENOINIT", "mproc_init() was not called at the top of main()"},
    {MPROC_EBUILDID, "MPROC_EBUILDID", "child runs a different build of the program"},
    {MPROC_EFULL, "MPROC_EFULL", "full"},
    {MPROC_EEMPTY, "MPROC_EEMPTY", "empty"},
    {MPROC_EWORKER, "MPROC_EWORKER", "worker process died"},
};

#define E(x) {-x, "MPROC_" #x}
static const struct {
    int code;
    const char *name;
} errno_names[] = {
    E(EPERM),  E(ENOENT),  E(ESRCH),   E(EINTR),    E(EIO),          E(EBADF),
    E(ECHILD), E(EAGAIN),  E(ENOMEM),  E(EACCES),   E(EEXIST),       E(EINVAL),
    E(EMFILE), E(ENOSPC),  E(EPIPE),   E(ERANGE),   E(ENOSYS),       E(EPROTO),
    E(EMSGSIZE), E(ECONNRESET), E(ECONNREFUSED), E(ETIMEDOUT), E(ECANCELED),
    E(EOWNERDEAD), E(ENOTRECOVERABLE), E(EDEADLK), E(EOVERFLOW),
};
#undef E

static const errinfo *lib_error(int err)
{
    for (size_t i = 0; i < sizeof lib_errors / sizeof lib_errors[0]; i++)
        if (lib_errors[i].code == err)
            return &lib_errors[i];
    return NULL;
}

const char *mproc_strerror(int err)
{
    const errinfo *e = lib_error(err);
    if (e)
        return e->text;
    if (err < 0 && err > -4096) {
        /* strerrordesc_np is static and thread-safe, unlike strerror. */
        const char *s = strerrordesc_np(-err);
        if (s)
            return s;
    }
    return "unknown error";
}

const char *mproc_errname(int err)
{
    const errinfo *e = lib_error(err);
    if (e)
        return e->name;
    for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++)
        if (errno_names[i].code == err)
            return errno_names[i].name;
    return "MPROC_E?";
}

const char *mproc_errmsg(void)
{
    return errmsg_buf;
}

/* Format into a copy first: an argument may be mproc_errmsg() itself. */
static int set_message(int err, const char *fmt, va_list ap)
{
    char m[sizeof errmsg_buf];
    vsnprintf(m, sizeof m, fmt, ap);
    memcpy(errmsg_buf, m, strlen(m) + 1);
    return err;
}

int mproc__fail(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_message(err, fmt, ap);
    va_end(ap);
    return err;
}

int mproc_error_set(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_message(err, fmt, ap);
    va_end(ap);
    return err;
}

int mproc__errno(void)
{
    return errno > 0 ? -errno : -EIO;
}
