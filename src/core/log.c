/* log.c — multiprocessing.log_to_stderr for C: "[LEVEL/ProcessName] message".
 * One write(2) per line so that lines from many processes never interleave. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

atomic_int mproc__log_level_v = MPROC_LOG_WARNING;

/* Handler and its user data change together; a seqlock-free pair is fine because
 * a torn read can only pair the new handler with stale data for a line. */
static _Atomic(mproc_log_fn) log_handler;
static void *_Atomic log_ud;

void mproc_log_to_stderr(int level)
{
    atomic_store(&log_handler, NULL);
    atomic_store(&mproc__log_level_v, level);
}

int mproc_log_level(void)
{
    return atomic_load(&mproc__log_level_v);
}

void mproc_log_set_handler(mproc_log_fn fn, void *ud)
{
    atomic_store(&log_ud, ud);
    atomic_store(&log_handler, fn);
}

static const char *level_name(int level)
{
    if (level >= MPROC_LOG_CRITICAL) return "CRITICAL";
    if (level >= MPROC_LOG_ERROR) return "ERROR";
    if (level >= MPROC_LOG_WARNING) return "WARNING";
    if (level >= MPROC_LOG_SUBWARNING) return "SUBWARNING";
    if (level >= MPROC_LOG_INFO) return "INFO";
    if (level >= MPROC_LOG_DEBUG) return "DEBUG";
    return "SUBDEBUG";
}

void mproc_log(int level, const char *fmt, ...)
{
    if (level < atomic_load(&mproc__log_level_v))
        return;
    int saved = errno;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    mproc_log_fn fn = atomic_load(&log_handler);
    if (fn) {
        fn(level, msg, atomic_load(&log_ud));
    } else {
        char line[1200];
        int n = snprintf(line, sizeof line, "[%s/%s] %s\n", level_name(level), mproc__self.name, msg);
        if (n > (int)sizeof line - 1) {
            n = (int)sizeof line - 1;
            line[n - 1] = '\n';
        }
        (void)mproc_write_all(STDERR_FILENO, line, (size_t)n);
    }
    errno = saved;
}
