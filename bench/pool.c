/* pool.c — the cost of mproc's Pool and Executor, side by side with Python's
 * multiprocessing.Pool and concurrent.futures.ProcessPoolExecutor measured in
 * the same run (bench/python/pool.py). 2 workers everywhere, fork start
 * method on both sides; the task squares an int.
 *
 * Workloads (items or tasks per second; mproc figures the median of --rounds,
 * the pool's workloads interleaved round by round so machine noise hits them
 * alike; Python's the median of --py-rounds):
 *   map_array     mproc_pool_map_array of an element task over 1,000,000
 *                 int64s (default chunksize, no per-item encoding)
 *                 vs Pool(2).map(square, range(1_000_000)), default chunksize;
 *   map_array, shared  the same with both arrays from mproc_pool_shared_alloc
 *                 (used in place: no copy in or out), vs the same Python figure;
 *   map (values)  mproc_pool_map of a value task over a list of the same
 *                 1,000,000 ints (the general path), vs the same Python figure;
 *   imap_unordered chunksize 1 over 100,000 ints, drained with
 *                 mproc_imap_next (per-task overhead)
 *                 vs Pool.imap_unordered(square, range(100_000), chunksize=1);
 *   apply_async   100,000 mproc_pool_apply_async, then mproc_result_get and
 *                 mproc_result_free of each, vs apply_async(square, (i,)) then
 *                 .get() of each;
 *   Executor      100,000 mproc_executor_submit, then mproc_future_result and
 *                 mproc_future_free of each, vs ProcessPoolExecutor(2).submit
 *                 then .result() of each.
 * The pool (executor) is started and warmed up before the clock starts, on
 * both sides: only the work is timed. Input lists and arrays are built before
 * the clock starts (Python's range() is lazy, its list is built inside map:
 * a few ms of its time); per-item arguments of apply_async and submit are
 * built inside it, as in Python. Every output is checked after the clock
 * stops, so a broken pool fails the benchmark instead of reporting a figure.
 *
 * Targets: map >= 100x Python (the map_array row); per-task overhead
 * (imap_unordered, chunksize 1) >= 20x Python.
 *
 * Usage: bench_pool [--quick] [--scale X] [--rounds R] [--py-rounds R]
 *                   [--no-python] [--python PATH]
 *   --quick   smoke run: counts / 10, 1 round, Python 1 round */
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mproc.h>
#include <mproc/futures.h>
#include <mproc/pool.h>

#include "bench.h"

#ifndef MPROC_BENCH_PYDIR
#define MPROC_BENCH_PYDIR "bench/python"
#endif

#define MAP_TARGET 100.0
#define TASK_TARGET 20.0
#define WORKERS 2
/* Longest one call (a whole map, or one item of an iteration) may take before
 * the benchmark calls the pool hung. */
#define CALL_TIMEOUT_S 120.0

enum { W_MAP_ARRAY, W_MAP_SHARED, W_MAP, W_IMAPU, W_APPLY, W_EXEC, NW };
static const char *wname[NW] = {"map_array square", "map_array, shared", "map square (values)",
                                "imap_unordered cs=1", "apply_async", "Executor submit"};
static const char *wunit[NW] = {"items/s", "items/s", "items/s", "tasks/s", "tasks/s", "tasks/s"};
/* Items per measurement at scale 1 (the same counts for Python). */
static const long wcount[NW] = {1000000, 1000000, 1000000, 100000, 100000, 100000};
/* The Python figure each row compares with (the two map rows share one). */
enum { P_MAP, P_IMAPU, P_APPLY, P_EXEC, NP };
static const int wpy[NW] = {P_MAP, P_MAP, P_MAP, P_IMAPU, P_APPLY, P_EXEC};
static const char *const pykeys[NP] = {"map_ips", "imapu_tps", "apply_tps", "exec_tps"};
static const char *pyname[NP] = {"Pool.map", "Pool.imap_unordered", "Pool.apply_async",
                                 "ProcessPoolExecutor"};

/* ------------------------------------------------------------------ tasks */

static int sq_elem(const void *in, void *out, const void *arg)
{
    (void)arg;
    int64_t x;
    memcpy(&x, in, sizeof x);
    int64_t y = x * x;
    memcpy(out, &y, sizeof y);
    return 0;
}

/* ---------------------------------------------------------------- helpers */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_pool: out of memory\n");
        exit(1);
    }
    return p;
}

static void fail(const char *what)
{
    fprintf(stderr, "bench_pool: %s: wrong result\n", what);
    exit(1);
}

/* Sum of i*i for i in 0..n-1. */
static uint64_t sum_squares(long n)
{
    uint64_t s = 0;
    for (long i = 0; i < n; i++)
        s += (uint64_t)i * (uint64_t)i;
    return s;
}

/* ------------------------------------------------------------- workloads */

typedef struct inputs {
    long n[NW];
    int64_t *arr_in, *arr_out; /* map_array */
    int64_t *sh_in, *sh_out;   /* map_array, shared: in the pool's arena */
    mproc_value *map_items;    /* map */
    mproc_value *imap_items;   /* imap_unordered */
    unsigned char *seen;       /* imap_unordered: indices returned */
} inputs;

static double run_map_array(mproc_pool *pool, inputs *in)
{
    long n = in->n[W_MAP_ARRAY];
    memset(in->arr_out, 0, (size_t)n * sizeof *in->arr_out);
    double t0 = now_s();
    OK(mproc_pool_map_array(pool, sq_elem, in->arr_in, sizeof(int64_t), in->arr_out,
                            sizeof(int64_t), (size_t)n, NULL, CALL_TIMEOUT_S));
    double dt = now_s() - t0;
    for (long i = 0; i < n; i++)
        if (in->arr_out[i] != (int64_t)i * i)
            fail("map_array");
    return (double)n / dt;
}

/* The same, on arrays in the pool's arena (no copies). */
static double run_map_shared(mproc_pool *pool, inputs *in)
{
    long n = in->n[W_MAP_SHARED];
    memset(in->sh_out, 0, (size_t)n * sizeof *in->sh_out);
    double t0 = now_s();
    OK(mproc_pool_map_array(pool, sq_elem, in->sh_in, sizeof(int64_t), in->sh_out,
                            sizeof(int64_t), (size_t)n, NULL, CALL_TIMEOUT_S));
    double dt = now_s() - t0;
    for (long i = 0; i < n; i++)
        if (in->sh_out[i] != (int64_t)i * i)
            fail("map_array (shared)");
    return (double)n / dt;
}

static double run_map(mproc_pool *pool, inputs *in)
{
    long n = in->n[W_MAP];
    mproc_value *out = NULL;
    double t0 = now_s();
    OK(mproc_pool_map(pool, mproc_task_value(bench_sq_value), in->map_items, NULL, &out,
                      CALL_TIMEOUT_S));
    double dt = now_s() - t0;
    if (!out || mproc_value_type(out) != MPROC_V_LIST || mproc_value_len(out) != (size_t)n)
        fail("map (length)");
    for (long i = 0; i < n; i++) {
        const mproc_value *v = mproc_value_at(out, (size_t)i);
        if (!v || mproc_value_type(v) != MPROC_V_INT || mproc_value_as_int(v) != (int64_t)i * i)
            fail("map");
    }
    mproc_value_free(out);
    return (double)n / dt;
}

static double run_imap_unordered(mproc_pool *pool, inputs *in)
{
    long n = in->n[W_IMAPU];
    memset(in->seen, 0, (size_t)n);
    mproc_call_opts o = {.chunksize = 1};
    mproc_imap *it = NULL;
    uint64_t s = 0;
    long got = 0;
    double t0 = now_s();
    OK(mproc_pool_imap_unordered(pool, mproc_task_value(bench_sq_value), in->imap_items, &o, &it));
    for (;;) {
        mproc_value *v = NULL;
        size_t idx = 0;
        int rc = mproc_imap_next(it, &v, &idx, CALL_TIMEOUT_S);
        if (rc == MPROC_ECLOSED)
            break;
        if (rc != 0)
            die("mproc_imap_next", rc);
        if (idx >= (size_t)n || in->seen[idx]++)
            fail("imap_unordered (index)");
        s += (uint64_t)mproc_value_as_int(v);
        got++;
        mproc_value_free(v);
    }
    double dt = now_s() - t0;
    mproc_imap_free(it);
    if (got != n || s != sum_squares(n))
        fail("imap_unordered");
    return (double)n / dt;
}

static double run_apply_async(mproc_pool *pool, inputs *in)
{
    long n = in->n[W_APPLY];
    mproc_result **rs = xmalloc((size_t)n * sizeof *rs);
    uint64_t s = 0;
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        mproc_value *arg = mproc_value_int(i);
        OK(mproc_pool_apply_async(pool, mproc_task_value(bench_sq_value), arg, NULL, &rs[i]));
        mproc_value_free(arg);
    }
    for (long i = 0; i < n; i++) {
        const mproc_value *v = NULL;
        OK(mproc_result_get(rs[i], &v, CALL_TIMEOUT_S));
        if (!v || mproc_value_as_int(v) != (int64_t)i * i)
            fail("apply_async");
        s += (uint64_t)mproc_value_as_int(v);
        mproc_result_free(rs[i]);
    }
    double dt = now_s() - t0;
    free(rs);
    if (s != sum_squares(n))
        fail("apply_async (sum)");
    return (double)n / dt;
}

static double run_executor(mproc_executor *ex, long n)
{
    mproc_future **fs = xmalloc((size_t)n * sizeof *fs);
    uint64_t s = 0;
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        mproc_value *arg = mproc_value_int(i);
        OK(mproc_executor_submit(ex, mproc_task_value(bench_sq_value), arg, &fs[i]));
        mproc_value_free(arg);
    }
    for (long i = 0; i < n; i++) {
        const mproc_value *v = NULL;
        OK(mproc_future_result(fs[i], &v, CALL_TIMEOUT_S));
        if (!v || mproc_value_as_int(v) != (int64_t)i * i)
            fail("executor");
        s += (uint64_t)mproc_value_as_int(v);
        mproc_future_free(fs[i]);
    }
    double dt = now_s() - t0;
    free(fs);
    if (s != sum_squares(n))
        fail("executor (sum)");
    return (double)n / dt;
}

/* ---------------------------------------------------------------- python */

typedef struct py_results {
    bool ok;
    double rate[NP];
    long n[NP];
} py_results;

static py_results run_python(const char *python, const long *n, int rounds)
{
    py_results r = {0};
    r.n[P_MAP] = n[W_MAP_ARRAY];
    r.n[P_IMAPU] = n[W_IMAPU];
    r.n[P_APPLY] = n[W_APPLY];
    r.n[P_EXEC] = n[W_EXEC];
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s %s/pool.py --map %ld --imap %ld --apply %ld --executor %ld --rounds %d", python,
             MPROC_BENCH_PYDIR, r.n[P_MAP], r.n[P_IMAPU], r.n[P_APPLY], r.n[P_EXEC], rounds);
    r.ok = bench_python_keys(cmd, pykeys, r.rate, NP);
    return r;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f, const char *argv0)
{
    fprintf(f,
            "usage: %s [--quick] [--scale X] [--rounds R] [--py-rounds R] [--no-python] "
            "[--python PATH]\n"
            "  --quick         smoke run: counts / 10, 1 round, Python 1 round\n"
            "  --scale X       multiply every item count by X (default 1)\n"
            "  --rounds R      mproc rounds, median taken (default 5)\n"
            "  --py-rounds R   Python rounds, median taken (default 2)\n",
            argv0);
}

int main(int argc, char **argv)
{
    bench_prog = "bench_pool";
    OK(mproc_init(&argc, &argv));
    signal(SIGPIPE, SIG_IGN);
    double scale = 1.0;
    int rounds = 5, py_rounds = 2;
    bool python = true, quick = false, rounds_set = false, py_rounds_set = false;
    const char *py = "python3";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = true;
        else if (!strcmp(argv[i], "--scale") && i + 1 < argc)
            scale = atof(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]), rounds_set = true;
        else if (!strcmp(argv[i], "--py-rounds") && i + 1 < argc)
            py_rounds = atoi(argv[++i]), py_rounds_set = true;
        else if (!strcmp(argv[i], "--no-python"))
            python = false;
        else if (!strcmp(argv[i], "--python") && i + 1 < argc)
            py = argv[++i];
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout, argv[0]);
            return 0;
        } else {
            usage(stderr, argv[0]);
            return 2;
        }
    }
    if (quick) {
        scale *= 0.1;
        if (!rounds_set)
            rounds = 1;
        if (!py_rounds_set)
            py_rounds = 1;
    }
    if (!(scale > 0) || rounds < 1 || rounds > 99 || py_rounds < 1 || py_rounds > 99) {
        fprintf(stderr, "bench_pool: scale > 0, 1 <= rounds <= 99, 1 <= py-rounds <= 99\n");
        return 2;
    }

    inputs in;
    memset(&in, 0, sizeof in);
    for (int w = 0; w < NW; w++) {
        in.n[w] = (long)((double)wcount[w] * scale);
        if (in.n[w] < 1)
            in.n[w] = 1;
    }
    in.arr_in = xmalloc((size_t)in.n[W_MAP_ARRAY] * sizeof(int64_t));
    in.arr_out = xmalloc((size_t)in.n[W_MAP_ARRAY] * sizeof(int64_t));
    for (long i = 0; i < in.n[W_MAP_ARRAY]; i++)
        in.arr_in[i] = i;
    in.map_items = bench_int_list(in.n[W_MAP]);
    in.imap_items = bench_int_list(in.n[W_IMAPU]);
    in.seen = xmalloc((size_t)in.n[W_IMAPU]);

    double v[NW][99];
    double med[NW];

    /* The Pool's workloads, interleaved round by round. */
    {
        mproc_pool_opts po = {.processes = WORKERS, .ctx = mproc_get_context(MPROC_START_FORK)};
        mproc_pool *pool = NULL;
        OK(mproc_pool_new(&pool, &po));
        /* Warm-up: every worker runs a task on each path. */
        {
            mproc_value *items = bench_int_list(100), *out = NULL;
            mproc_call_opts o = {.chunksize = 1};
            OK(mproc_pool_map(pool, mproc_task_value(bench_sq_value), items, &o, &out, CALL_TIMEOUT_S));
            mproc_value_free(out);
            mproc_value_free(items);
            int64_t a[100], b[100];
            for (int i = 0; i < 100; i++)
                a[i] = i;
            OK(mproc_pool_map_array(pool, sq_elem, a, sizeof a[0], b, sizeof b[0], 100, &o,
                                    CALL_TIMEOUT_S));
        }
        in.sh_in = mproc_pool_shared_alloc(pool, (size_t)in.n[W_MAP_SHARED] * sizeof(int64_t));
        in.sh_out = mproc_pool_shared_alloc(pool, (size_t)in.n[W_MAP_SHARED] * sizeof(int64_t));
        if (!in.sh_in || !in.sh_out)
            fail("mproc_pool_shared_alloc");
        for (long i = 0; i < in.n[W_MAP_SHARED]; i++)
            in.sh_in[i] = i;
        for (int r = 0; r < rounds; r++) {
            v[W_MAP_ARRAY][r] = run_map_array(pool, &in);
            v[W_MAP_SHARED][r] = run_map_shared(pool, &in);
            v[W_MAP][r] = run_map(pool, &in);
            v[W_IMAPU][r] = run_imap_unordered(pool, &in);
            v[W_APPLY][r] = run_apply_async(pool, &in);
        }
        mproc_pool_shared_free(pool, in.sh_in);
        mproc_pool_shared_free(pool, in.sh_out);
        OK(mproc_pool_close(pool));
        OK(mproc_pool_join(pool, CALL_TIMEOUT_S));
        mproc_pool_free(pool);
    }

    /* The Executor, on a pool of its own. */
    {
        mproc_executor_opts eo = {.max_workers = WORKERS,
                                  .ctx = mproc_get_context(MPROC_START_FORK)};
        mproc_executor *ex = NULL;
        OK(mproc_executor_new(&ex, &eo));
        for (long i = 0; i < 100; i++) { /* warm-up */
            mproc_value *arg = mproc_value_int(i);
            mproc_future *f = NULL;
            const mproc_value *out = NULL;
            OK(mproc_executor_submit(ex, mproc_task_value(bench_sq_value), arg, &f));
            mproc_value_free(arg);
            OK(mproc_future_result(f, &out, CALL_TIMEOUT_S));
            mproc_future_free(f);
        }
        for (int r = 0; r < rounds; r++)
            v[W_EXEC][r] = run_executor(ex, in.n[W_EXEC]);
        OK(mproc_executor_shutdown(ex, true, false));
        mproc_executor_free(ex);
    }

    for (int w = 0; w < NW; w++)
        med[w] = median(v[w], rounds);
    mproc_value_free(in.map_items);
    mproc_value_free(in.imap_items);
    free(in.arr_in);
    free(in.arr_out);
    free(in.seen);

    py_results pr = {0};
    if (python) {
        pr = run_python(py, in.n, py_rounds);
        if (!pr.ok)
            fprintf(stderr, "bench_pool: the Python anchor failed; Python columns are n/a\n");
    }

    printf("\nPool and Executor, %d workers, fork, task = square of an int (mproc: median of %d "
           "rounds; Python: median of %d)\n", WORKERS, rounds, py_rounds);
    printf("| workload            | items     | unit    | mproc    | Python   | vs Python "
           "| mproc µs/item | Python µs/item |\n");
    printf("|---------------------|----------:|---------|---------:|---------:|----------:"
           "|--------------:|---------------:|\n");
    for (int w = 0; w < NW; w++) {
        char m[32], p[32] = "n/a", ratio[32] = "n/a", mus[32], pus[32] = "n/a";
        bench_fmt_rate(m, sizeof m, med[w]);
        bench_fmt_us(mus, sizeof mus, med[w], 4);
        double pyr = pr.ok ? pr.rate[wpy[w]] : 0;
        if (pyr > 0) {
            bench_fmt_rate(p, sizeof p, pyr);
            bench_fmt_us(pus, sizeof pus, pyr, 4);
            snprintf(ratio, sizeof ratio, "%.1fx", med[w] / pyr);
        }
        printf("| %-19s | %9ld | %-7s | %8s | %8s | %9s | %13s | %14s |\n", wname[w], in.n[w],
               wunit[w], m, p, ratio, mus, pus);
    }
    printf("(Python: ");
    for (int p = 0; p < NP; p++)
        printf("%s%s", p ? ", " : "", pyname[p]);
    printf(" with the same counts; both map rows compare with Pool.map; "
           "\"vs Python\" = mproc's rate / Python's)\n");

    char s1[64], s2[64];
    if (pr.ok && pr.rate[P_MAP] > 0 && pr.rate[P_IMAPU] > 0) {
        double best = med[W_MAP_SHARED] > med[W_MAP_ARRAY] ? med[W_MAP_SHARED] : med[W_MAP_ARRAY];
        double vm = best / pr.rate[P_MAP], vt = med[W_IMAPU] / pr.rate[P_IMAPU];
        snprintf(s1, sizeof s1, "%s (%.1fx)", vm >= MAP_TARGET ? "met" : "MISSED", vm);
        snprintf(s2, sizeof s2, "%s (%.1fx)", vt >= TASK_TARGET ? "met" : "MISSED", vt);
    } else {
        snprintf(s1, sizeof s1, "%s", python ? "no Python" : "not measured");
        snprintf(s2, sizeof s2, "%s", python ? "no Python" : "not measured");
    }
    printf("\ntargets: map (best map_array row) >= %.0fx Python: %s; per-task (imap_unordered "
           "chunksize 1) >= %.0fx Python: %s\n",
           MAP_TARGET, s1, TASK_TARGET, s2);
    return 0;
}
