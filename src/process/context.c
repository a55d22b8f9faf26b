/* context.c — start methods, contexts and the executable that spawn re-runs.
 * The default method is fork until mproc_set_start_method() picks another. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

struct mproc_context {
    mproc_start_method method;
};

static mproc_context contexts[] = {
    {MPROC_START_DEFAULT}, {MPROC_START_FORK}, {MPROC_START_SPAWN}, {MPROC_START_FORKSERVER}};

static atomic_int default_method = MPROC_START_DEFAULT; /* DEFAULT = never chosen */
static atomic_bool method_fixed;

static pthread_mutex_t exe_mu = PTHREAD_MUTEX_INITIALIZER;
static char *exe_path; /* NULL = /proc/self/exe */

static const char *const names[] = {"default", "fork", "spawn", "forkserver"};

const char *mproc_start_method_name(mproc_start_method m)
{
    return (unsigned)m < 4 ? names[m] : "invalid";
}

int mproc_start_method_parse(const char *name, mproc_start_method *out)
{
    for (int i = 0; name && i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (mproc_start_method)i;
            return 0;
        }
    return mproc__fail(MPROC_EINVAL, "unknown start method '%s' (fork, spawn, forkserver)",
                       name ? name : "(null)");
}

int mproc_set_start_method(mproc_start_method m, bool force)
{
    if ((unsigned)m > MPROC_START_FORKSERVER)
        return mproc__fail(MPROC_EINVAL, "invalid start method %d", (int)m);
    if (atomic_load(&method_fixed) && !force)
        return mproc__fail(MPROC_ESTATE, "context has already been set (pass force to change it)");
    atomic_store(&default_method, m);
    /* As in Python, set_start_method(None, force=True) un-fixes the choice. */
    atomic_store(&method_fixed, m != MPROC_START_DEFAULT);
    return 0;
}

mproc_start_method mproc_get_start_method(void)
{
    int m = atomic_load(&default_method);
    return m == MPROC_START_DEFAULT ? MPROC_START_FORK : (mproc_start_method)m;
}

mproc_context *mproc_get_context(mproc_start_method m)
{
    return (unsigned)m <= MPROC_START_FORKSERVER ? &contexts[m] : NULL;
}

mproc_start_method mproc_context_start_method(const mproc_context *ctx)
{
    if (!ctx || ctx->method == MPROC_START_DEFAULT) {
        atomic_store(&method_fixed, true); /* using the default fixes it, as in Python */
        return mproc_get_start_method();
    }
    return ctx->method;
}

int mproc_set_executable(const char *path)
{
    char *copy = NULL;
    if (path) {
        if (access(path, X_OK) != 0)
            return mproc__fail(mproc__errno(), "set_executable: '%s' is not executable", path);
        copy = strdup(path);
        if (!copy)
            return MPROC_ENOMEM;
    }
    pthread_mutex_lock(&exe_mu);
    free(exe_path);
    exe_path = copy;
    pthread_mutex_unlock(&exe_mu);
    return 0;
}

void mproc__context_atfork(int phase)
{
    mproc__mutex_atfork(&exe_mu, phase);
}

void mproc__executable(char *buf, size_t len)
{
    pthread_mutex_lock(&exe_mu);
    snprintf(buf, len, "%s", exe_path ? exe_path : "/proc/self/exe");
    pthread_mutex_unlock(&exe_mu);
}
