/* mpi.c — the Executor on MPI ranks (libmproc_mpi) against mpi4py.futures,
 * with mproc's local backend beside them, all measured in the same run.
 *
 * Workloads: Executor map of a task that squares an int over 20,000 ints,
 * drained in order (mproc_imap_next / iterating Python's map), with
 * chunksize 1 (per-task overhead) and 1,000:
 *   mproc MPI        mpirun -n 3: rank 0 maps on mproc_executor_mpi, 2
 *                    worker ranks run the tasks;
 *   mproc local      the same map on the local backend, 2 worker processes
 *                    (fork), in this process;
 *   mpi4py.futures   MPIPoolExecutor().map(square, range(20000), chunksize=c)
 *                    under mpirun -n 3 /usr/bin/python3 -m mpi4py.futures
 *                    (bench/python/mpi.py): rank 0 runs the script, 2 workers.
 * The executors are started and warmed up before the clock starts; input
 * lists are built before it. Every output is checked after the clock stops.
 * mproc figures: the median of --rounds; mpi4py's: the median of --py-rounds.
 * mpirun runs with --oversubscribe (the machine may have fewer cores than
 * ranks) and --enable-recovery; --yield adds --mca mpi_yield_when_idle 1 to
 * both MPI runs.
 *
 * Target: mproc MPI >= 20x mpi4py.futures at chunksize 1.
 *
 * Usage: bench_mpi [--quick] [--n N] [--rounds R] [--py-rounds R] [--yield]
 *                  [--no-python] [--python PATH]
 *   --quick   smoke run: N / 10, 1 round each
 * (bench_mpi --mpi-rank0 ... is the MPI part, started by mpirun.) */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mproc.h>
#include <mproc/mpi.h>

#include "bench.h"

#ifndef MPROC_BENCH_PYDIR
#define MPROC_BENCH_PYDIR "bench/python"
#endif
#ifndef MPROC_BENCH_MPIEXEC
#define MPROC_BENCH_MPIEXEC "mpirun"
#endif

#define TARGET 20.0
#define RANKS 3
#define LOCAL_WORKERS 2
#define CALL_TIMEOUT_S 120.0

enum { CS1, CS1000, NW };
static const size_t chunks[NW] = {1, 1000};
static const char *const mpikeys[NW] = {"mpi_cs1", "mpi_cs1000"};
static const char *const pykeys[NW] = {"py_cs1", "py_cs1000"};

/* One timed map of sq over items with chunksize cs: items per second. */
static double run_map(mproc_executor *ex, const mproc_value *items, size_t cs)
{
    size_t n = mproc_value_len(items);
    int64_t *out = malloc(n * sizeof *out);
    if (!out)
        die("malloc", MPROC_ENOMEM);
    mproc_imap *it = NULL;
    double t0 = now_s();
    OK(mproc_executor_map(ex, mproc_task_value(bench_sq_value), items, cs, &it));
    for (size_t i = 0; i < n; i++) {
        mproc_value *v = NULL;
        OK(mproc_imap_next(it, &v, NULL, CALL_TIMEOUT_S));
        out[i] = mproc_value_as_int(v);
        mproc_value_free(v);
    }
    double dt = now_s() - t0;
    mproc_imap_free(it);
    for (size_t i = 0; i < n; i++)
        if (out[i] != (int64_t)(i * i)) {
            fprintf(stderr, "%s: map: wrong result at %zu\n", bench_prog, i);
            exit(1);
        }
    free(out);
    return (double)n / dt;
}

/* Medians of `rounds` maps per chunksize, interleaved round by round. */
static void measure(mproc_executor *ex, long n, int rounds, double med[NW])
{
    mproc_value *items = bench_int_list(n), *warm = bench_int_list(200);
    run_map(ex, warm, 1);
    run_map(ex, warm, 50);
    double v[NW][99];
    for (int r = 0; r < rounds; r++)
        for (int w = 0; w < NW; w++)
            v[w][r] = run_map(ex, items, chunks[w]);
    for (int w = 0; w < NW; w++)
        med[w] = median(v[w], rounds);
    mproc_value_free(warm);
    mproc_value_free(items);
}

/* Under mpirun: rank 0 measures the MPI backend and prints "key rate" lines. */
static int mpi_part(int argc, char **argv, long n, int rounds)
{
    OK(mproc_mpi_init(&argc, &argv, NULL)); /* the worker ranks stay in here */
    mproc_executor *ex = NULL;
    mproc_executor_opts o = {.backend = &mproc_executor_mpi};
    OK(mproc_executor_new(&ex, &o));
    double med[NW];
    measure(ex, n, rounds, med);
    mproc_executor_free(ex);
    for (int w = 0; w < NW; w++)
        printf("%s %.1f\n", mpikeys[w], med[w]);
    fflush(stdout);
    return mproc_mpi_finalize() ? 1 : 0;
}

static void usage(FILE *f, const char *argv0)
{
    fprintf(f,
            "usage: %s [--quick] [--n N] [--rounds R] [--py-rounds R] [--yield] [--no-python] "
            "[--python PATH]\n"
            "  --n N          tasks per map (default 20000)\n"
            "  --rounds R     mproc rounds, median taken (default 5)\n"
            "  --py-rounds R  mpi4py.futures rounds (default 2)\n"
            "  --yield        mpirun --mca mpi_yield_when_idle 1 for both MPI runs\n",
            argv0);
}

int main(int argc, char **argv)
{
    bench_prog = "bench_mpi";
    OK(mproc_init(&argc, &argv));
    signal(SIGPIPE, SIG_IGN);
    long n = 20000;
    int rounds = 5, py_rounds = 2;
    bool python = true, quick = false, yield = false, rank0 = false;
    const char *py = "/usr/bin/python3";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = true;
        else if (!strcmp(argv[i], "--mpi-rank0"))
            rank0 = true;
        else if (!strcmp(argv[i], "--n") && i + 1 < argc)
            n = atol(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--py-rounds") && i + 1 < argc)
            py_rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--yield"))
            yield = true;
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
        n /= 10;
        rounds = py_rounds = 1;
    }
    if (n < 1000 || rounds < 1 || rounds > 99 || py_rounds < 1 || py_rounds > 99) {
        fprintf(stderr, "bench_mpi: n >= 1000, 1 <= rounds <= 99, 1 <= py-rounds <= 99\n");
        return 2;
    }
    if (rank0)
        return mpi_part(argc, argv, n, rounds);

    /* The local backend, in this process. */
    double local[NW];
    mproc_executor *ex = NULL;
    mproc_executor_opts lo = {.max_workers = LOCAL_WORKERS,
                              .ctx = mproc_get_context(MPROC_START_FORK)};
    OK(mproc_executor_new(&ex, &lo));
    measure(ex, n, rounds, local);
    mproc_executor_free(ex);

    /* The MPI backend and mpi4py.futures, each under its own mpirun. */
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1); /* CI runs as root */
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    char self[1024], cmd[2048];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    self[sl > 0 ? sl : 0] = 0;
    const char *mca = yield ? "--mca mpi_yield_when_idle 1" : "";
    double mpi[NW] = {0}, pyr[NW] = {0};
    snprintf(cmd, sizeof cmd,
             "%s --oversubscribe --enable-recovery %s -n %d '%s' --mpi-rank0 --n %ld --rounds %d",
             MPROC_BENCH_MPIEXEC, mca, RANKS, self, n, rounds);
    bool mpi_ok = bench_python_keys(cmd, mpikeys, mpi, NW);
    if (!mpi_ok)
        fprintf(stderr, "bench_mpi: the MPI run failed; its columns are n/a\n");
    bool py_ok = false;
    if (python) {
        snprintf(cmd, sizeof cmd,
                 "%s --oversubscribe --enable-recovery %s -n %d %s -m mpi4py.futures %s/mpi.py "
                 "--n %ld --rounds %d", MPROC_BENCH_MPIEXEC, mca, RANKS, py, MPROC_BENCH_PYDIR, n,
                 py_rounds);
        py_ok = bench_python_keys(cmd, pykeys, pyr, NW);
        if (!py_ok)
            fprintf(stderr, "bench_mpi: the mpi4py.futures anchor failed (python3-mpi4py "
                    "installed?); its columns are n/a\n");
    }

    printf("\nExecutor map on MPI, %d ranks (rank 0 + %d workers)%s, task = square of an int, "
           "%ld tasks (mproc: median of %d rounds; mpi4py.futures: median of %d)\n",
           RANKS, RANKS - 1, yield ? ", mpi_yield_when_idle 1" : "", n, rounds, py_rounds);
    printf("| workload            | mproc MPI | mproc local (%d procs) | mpi4py.futures | MPI vs "
           "mpi4py | mproc MPI µs/task | mpi4py µs/task |\n", LOCAL_WORKERS);
    printf("|---------------------|----------:|----------------------:|---------------:|"
           "--------------:|------------------:|---------------:|\n");
    for (int w = 0; w < NW; w++) {
        char m[32] = "n/a", l[32], p[32] = "n/a", ratio[32] = "n/a", mus[32] = "n/a",
             pus[32] = "n/a", name[32];
        snprintf(name, sizeof name, "map chunksize %zu", chunks[w]);
        bench_fmt_rate(l, sizeof l, local[w]);
        if (mpi_ok) {
            bench_fmt_rate(m, sizeof m, mpi[w]);
            bench_fmt_us(mus, sizeof mus, mpi[w], 3);
        }
        if (py_ok) {
            bench_fmt_rate(p, sizeof p, pyr[w]);
            bench_fmt_us(pus, sizeof pus, pyr[w], 3);
        }
        if (mpi_ok && py_ok)
            snprintf(ratio, sizeof ratio, "%.1fx", mpi[w] / pyr[w]);
        printf("| %-19s | %9s | %21s | %14s | %13s | %17s | %14s |\n", name, m, l, p, ratio, mus,
               pus);
    }
    printf("(tasks per second; \"MPI vs mpi4py\" = mproc MPI's rate / mpi4py.futures')\n");
    char t[64];
    if (mpi_ok && py_ok)
        snprintf(t, sizeof t, "%s (%.1fx)", mpi[CS1] / pyr[CS1] >= TARGET ? "met" : "MISSED",
                 mpi[CS1] / pyr[CS1]);
    else
        snprintf(t, sizeof t, "not measured");
    printf("\ntarget: mproc MPI >= %.0fx mpi4py.futures at chunksize 1: %s\n", TARGET, t);
    return mpi_ok ? 0 : 1;
}
