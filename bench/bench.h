/* bench.h — the few helpers every benchmark program shares. */
#ifndef MPROC_BENCH_H
#define MPROC_BENCH_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mproc/core.h>
#include <mproc/pool.h>

/* Set by each program to its name, for error messages. */
static const char *bench_prog = "bench";

static inline void die(const char *what, int rc)
{
    const char *detail = mproc_errmsg();
    fprintf(stderr, "%s: %s failed: %s (%s)%s%s\n", bench_prog, what, mproc_strerror(rc),
            mproc_errname(rc), detail[0] ? ": " : "", detail);
    exit(1);
}

/* Abort the benchmark with the library's message if `expr` fails. */
#define OK(expr)                                                                        \
    do {                                                                                \
        int rc_ = (expr);                                                               \
        if (rc_ != 0)                                                                   \
            die(#expr, rc_);                                                            \
    } while (0)

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts v). */
static inline double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* A list of the ints 0..n-1. */
static inline mproc_value *bench_int_list(long n)
{
    mproc_value *l = mproc_value_list();
    if (!l)
        die("mproc_value_list", MPROC_ENOMEM);
    for (long i = 0; i < n; i++)
        OK(mproc_value_append(l, mproc_value_int(i)));
    return l;
}

/* The value task of the pool benchmarks: the square of an int. */
static inline int bench_sq_value(const mproc_value *arg, mproc_value **out)
{
    if (mproc_value_type(arg) != MPROC_V_INT)
        return mproc_task_error("square: not an int");
    int64_t x = mproc_value_as_int(arg);
    *out = mproc_value_int(x * x);
    return *out ? 0 : MPROC_ENOMEM;
}

/* A rate for a table cell: 1.23M, 45.6k, 789. */
static inline void bench_fmt_rate(char *out, size_t n, double r)
{
    if (r >= 1e6)
        snprintf(out, n, "%.2fM", r / 1e6);
    else if (r >= 1e3)
        snprintf(out, n, "%.1fk", r / 1e3);
    else
        snprintf(out, n, "%.0f", r);
}

/* The time per item of a rate, in µs; `small` decimals below 1 µs. */
static inline void bench_fmt_us(char *out, size_t n, double r, int small)
{
    double us = 1e6 / r;
    if (us >= 100)
        snprintf(out, n, "%.0f", us);
    else if (us >= 1)
        snprintf(out, n, "%.2f", us);
    else
        snprintf(out, n, "%.*f", small, us);
}

/* Run a Python anchor (`cmd`), which prints "key value" lines, and store the
 * value of keys[i] in vals[i]. true when it exited 0 and printed every key. */
static inline bool bench_python_keys(const char *cmd, const char *const *keys, double *vals,
                                     size_t n)
{
    fflush(NULL);
    FILE *f = popen(cmd, "r");
    if (!f)
        return false;
    char key[64];
    double v;
    size_t got = 0;
    while (fscanf(f, "%63s %lf", key, &v) == 2)
        for (size_t i = 0; i < n; i++)
            if (!strcmp(key, keys[i])) {
                vals[i] = v;
                got++;
            }
    return pclose(f) == 0 && got == n;
}

#endif
