/* mcheck.h — the CHECK macros of mproc's tests: a failed check prints where
 * and why and ends the process with _exit(1). mtest.h runs each test in a
 * forked process; tests that cannot fork (MPI ranks) use these alone. */
#ifndef MCHECK_H
#define MCHECK_H

#include <stdio.h>
#include <unistd.h>

#include "mproc/core.h"

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);    \
            fflush(NULL);                                                               \
            _exit(1);                                                                   \
        }                                                                               \
    } while (0)

#define CHECK_EQ(a, b)                                                                  \
    do {                                                                                \
        long long a_ = (long long)(a), b_ = (long long)(b);                             \
        if (a_ != b_) {                                                                 \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %lld, %s == %lld\n", __FILE__, \
                    __LINE__, #a, a_, #b, b_);                                          \
            fflush(NULL);                                                               \
            _exit(1);                                                                   \
        }                                                                               \
    } while (0)

/* An mproc call that must succeed. */
#define CHECK_OK(expr)                                                                  \
    do {                                                                                \
        int rc_ = (expr);                                                               \
        if (rc_ != 0) {                                                                 \
            fprintf(stderr, "%s:%d: %s failed: %s (%s) %s\n", __FILE__, __LINE__, #expr, \
                    mproc_errname(rc_), mproc_strerror(rc_), mproc_errmsg());           \
            fflush(NULL);                                                               \
            _exit(1);                                                                   \
        }                                                                               \
    } while (0)

#endif
