/* sys.c — thin wrappers over Linux syscalls that glibc may not expose
 * (pidfd_open, pidfd_send_signal, close_range), kept apart from the logic. */
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

int mproc__pidfd_open(pid_t pid)
{
    long fd = syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? mproc__errno() : (int)fd;
}

int mproc__pidfd_signal(int pidfd, int sig)
{
    if (syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) == 0 || errno == ESRCH)
        return 0; /* ESRCH: it already ended, which is what the caller wanted */
    return mproc__errno();
}

static void close_range_(unsigned lo, unsigned hi)
{
    if (lo > hi)
        return;
    if (syscall(SYS_close_range, lo, hi, 0) == 0)
        return;
    for (unsigned fd = lo; fd <= hi && fd < 65536; fd++) /* pre-5.9 kernels */
        close((int)fd);
}

static int cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

void mproc__close_fds_from(int lowfd, const int *keep, size_t nkeep)
{
    int sorted[MPROC_MAX_FDS + 4];
    if (nkeep > sizeof sorted / sizeof sorted[0])
        nkeep = sizeof sorted / sizeof sorted[0];
    for (size_t i = 0; i < nkeep; i++)
        sorted[i] = keep[i];
    qsort(sorted, nkeep, sizeof(int), cmp_int);
    unsigned lo = (unsigned)lowfd;
    for (size_t i = 0; i < nkeep; i++) {
        if (sorted[i] < lowfd)
            continue;
        if ((unsigned)sorted[i] > lo)
            close_range_(lo, (unsigned)sorted[i] - 1);
        lo = (unsigned)sorted[i] + 1;
    }
    close_range_(lo, ~0u);
}
