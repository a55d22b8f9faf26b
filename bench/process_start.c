/* process_start.c — how long it takes to start and join an empty child.
 *
 * Workloads, all measured in the same run and interleaved round by round (so
 * machine noise hits every workload alike):
 *   mproc fork / spawn / forkserver: mproc_process_new + start + join + close of
 *       a target that returns 0 at once;
 *   raw fork:        fork(), _exit(0) in the child, waitpid();
 *   raw _Fork:       the same with glibc's _Fork(), which skips pthread_atfork
 *                    handlers (mproc installs some; fork() runs them) - for reference;
 *   raw posix_spawn: posix_spawn(/proc/self/exe --exit-now), waitpid();
 * and, as another anchor, Python's multiprocessing (bench/python/process_start.py).
 *
 * Prints the median (and mean) per-iteration time in microseconds, one table
 * with one row per start method, and whether the targets are met:
 *   fork and spawn within 1.3x of the raw syscalls; forkserver faster than spawn.
 *
 * Usage: bench_process_start [--iters N] [--warmup N] [--no-python] [--python PATH]
 *                            [--only LIST]   (for profiling one workload, e.g. --only fork) */
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mproc/core.h>
#include <mproc/process.h>

#ifndef MPROC_BENCH_PYDIR
#define MPROC_BENCH_PYDIR "bench/python"
#endif

#define EXIT_NOW_ARG "--exit-now"
#define MAX_ITERS 1000000L
#define TARGET_RATIO 1.3

extern char **environ;

/* ------------------------------------------------------------- helpers */

static void die(const char *what, int rc)
{
    const char *detail = mproc_errmsg();
    fprintf(stderr, "bench_process_start: %s failed: %s (%s)%s%s\n", what, mproc_strerror(rc),
            mproc_errname(rc), detail[0] ? ": " : "", detail);
    exit(1);
}

static void die_errno(const char *what, int err)
{
    fprintf(stderr, "bench_process_start: %s failed: %s\n", what, strerror(err));
    exit(1);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct stats {
    double median, mean, min, p90, max;
    size_t n;
} stats;

/* Sorts v in place. */
static stats summarize(double *v, size_t n)
{
    stats s = {0};
    if (n == 0)
        return s;
    qsort(v, n, sizeof *v, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    s.n = n;
    s.mean = sum / (double)n;
    s.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    s.min = v[0];
    s.max = v[n - 1];
    s.p90 = v[(size_t)((double)(n - 1) * 0.9)];
    return s;
}

/* Wait for `pid` (retrying EINTR a bounded number of times) and require exit code 0. */
static void reap_ok(pid_t pid, const char *what)
{
    int status = 0;
    pid_t r = -1;
    for (int tries = 0; tries < 1000; tries++) {
        r = waitpid(pid, &status, 0);
        if (r >= 0 || errno != EINTR)
            break;
    }
    if (r != pid)
        die_errno(what, errno);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "bench_process_start: %s: child ended with status 0x%x\n", what, status);
        exit(1);
    }
}

/* ----------------------------------------------------------- workloads */

static int empty_target(mproc_args *args)
{
    (void)args;
    return 0;
}

static const char *const method_label[] = {
    [MPROC_START_FORK] = "mproc fork",
    [MPROC_START_SPAWN] = "mproc spawn",
    [MPROC_START_FORKSERVER] = "mproc forkserver",
};

static double run_mproc(mproc_start_method m)
{
    const char *label = method_label[m];
    mproc_process_opts opts = {.ctx = mproc_get_context(m)};
    if (!opts.ctx) {
        fprintf(stderr, "bench_process_start: no context for %s\n", label);
        exit(1);
    }
    double t0 = now_us();
    mproc_process *p = NULL;
    int rc = mproc_process_new(&p, empty_target, NULL, &opts);
    if (rc)
        die("mproc_process_new", rc);
    rc = mproc_process_start(p);
    if (rc) {
        fprintf(stderr, "bench_process_start: [%s]\n", label);
        die("mproc_process_start", rc);
    }
    rc = mproc_process_join(p, MPROC_FOREVER);
    if (rc) {
        fprintf(stderr, "bench_process_start: [%s]\n", label);
        die("mproc_process_join", rc);
    }
    int code = mproc_process_exitcode(p);
    if (code != 0) {
        fprintf(stderr, "bench_process_start: [%s] child exit code %d, expected 0\n", label, code);
        exit(1);
    }
    rc = mproc_process_close(p);
    if (rc)
        die("mproc_process_close", rc);
    return now_us() - t0;
}

static double run_raw_fork(void)
{
    double t0 = now_us();
    pid_t pid = fork();
    if (pid < 0)
        die_errno("fork", errno);
    if (pid == 0)
        _exit(0);
    reap_ok(pid, "raw fork");
    return now_us() - t0;
}

/* fork without the atfork handlers that mproc registered, where glibc has _Fork. */
#if defined(__GLIBC__) && defined(__GLIBC_PREREQ)
#if __GLIBC_PREREQ(2, 34)
#define HAVE_UNDERSCORE_FORK 1
#endif
#endif

static double run_raw_fork_noatfork(void)
{
#ifdef HAVE_UNDERSCORE_FORK
    double t0 = now_us();
    pid_t pid = _Fork();
    if (pid < 0)
        die_errno("_Fork", errno);
    if (pid == 0)
        _exit(0);
    reap_ok(pid, "raw _Fork");
    return now_us() - t0;
#else
    return 0;
#endif
}

static double run_raw_spawn(void)
{
    static char exe[] = "/proc/self/exe";
    static char arg[] = EXIT_NOW_ARG;
    char *argv[] = {exe, arg, NULL};
    double t0 = now_us();
    pid_t pid;
    int err = posix_spawn(&pid, exe, NULL, NULL, argv, environ);
    if (err)
        die_errno("posix_spawn(/proc/self/exe)", err);
    reap_ok(pid, "raw posix_spawn");
    return now_us() - t0;
}

/* ---------------------------------------------------------- the python anchor */

typedef struct py_result {
    bool have;
    double median, mean;
    long n;
} py_result;

enum { W_FORK, W_SPAWN, W_FORKSERVER, W_RAW_FORK, W_RAW_SPAWN, W_RAW_FORK_NOATFORK, W_COUNT };

static const char *const wl_name[W_COUNT] = {
    "mproc fork",       "mproc spawn",
    "mproc forkserver", "raw fork+waitpid",
    "raw posix_spawn+waitpid", "raw _Fork+waitpid",
};
/* Names accepted by --only. */
static const char *const wl_key[W_COUNT] = {"fork",     "spawn",     "forkserver",
                                                "raw-fork", "raw-spawn", "raw-_Fork"};

/* Parse "fork,raw-fork" into enabled[]; false on an unknown name. */
static bool parse_only(const char *list, bool enabled[W_COUNT])
{
    for (int w = 0; w < W_COUNT; w++)
        enabled[w] = false;
    const char *s = list;
    while (*s) {
        size_t len = strcspn(s, ",");
        bool found = false;
        for (int w = 0; w < W_COUNT; w++)
            if (strlen(wl_key[w]) == len && strncmp(s, wl_key[w], len) == 0)
                enabled[w] = found = true;
        if (!found)
            return false;
        s += len;
        if (*s == ',')
            s++;
    }
    return true;
}

/* python3 on PATH, or NULL. */
static const char *find_python(char *buf, size_t len)
{
    const char *path = getenv("PATH");
    if (!path)
        return NULL;
    while (*path) {
        const char *colon = strchr(path, ':');
        size_t dl = colon ? (size_t)(colon - path) : strlen(path);
        int k = dl ? snprintf(buf, len, "%.*s/python3", (int)dl, path)
                   : snprintf(buf, len, "./python3");
        struct stat st;
        if (k > 0 && (size_t)k < len && stat(buf, &st) == 0 && S_ISREG(st.st_mode) &&
            access(buf, X_OK) == 0)
            return buf;
        if (!colon)
            break;
        path = colon + 1;
    }
    return NULL;
}

/* Run the Python script; fills res[W_FORK..W_FORKSERVER]. Failures only cost the column. */
static void run_python(const char *python, long iters, long warmup, py_result res[3])
{
    char script[4096], cmd[8400];
    int k = snprintf(script, sizeof script, "%s/process_start.py", MPROC_BENCH_PYDIR);
    if (k < 0 || (size_t)k >= sizeof script || access(script, R_OK) != 0) {
        fprintf(stderr, "bench_process_start: %s not found; python columns are n/a\n", script);
        return;
    }
    if (strchr(python, '\'') || strchr(script, '\'')) {
        fprintf(stderr, "bench_process_start: quote in python path; python columns are n/a\n");
        return;
    }
    k = snprintf(cmd, sizeof cmd, "'%s' '%s' --iters %ld --warmup %ld", python, script, iters,
                 warmup);
    if (k < 0 || (size_t)k >= sizeof cmd)
        return;
    fflush(NULL);
    FILE *f = popen(cmd, "r");
    if (!f) {
        fprintf(stderr, "bench_process_start: popen(python3) failed: %s\n", strerror(errno));
        return;
    }
    char line[256];
    int lines = 0;
    while (lines++ < 64 && fgets(line, sizeof line, f)) {
        char method[32];
        double med = 0, mean = 0;
        long n = 0;
        int got = sscanf(line, "%31s %lf %lf %ld", method, &med, &mean, &n);
        if (got < 2 || method[0] == '#')
            continue;
        mproc_start_method m;
        if (mproc_start_method_parse(method, &m) != 0 || m == MPROC_START_DEFAULT)
            continue;
        int w = m == MPROC_START_FORK ? W_FORK : m == MPROC_START_SPAWN ? W_SPAWN : W_FORKSERVER;
        res[w] = (py_result){.have = true, .median = med, .mean = got >= 3 ? mean : med,
                             .n = got >= 4 ? n : 0};
    }
    int st = pclose(f);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "bench_process_start: python anchor failed (status 0x%x)%s\n", st,
                res[0].have || res[1].have || res[2].have ? "; partial results kept" : "");
    }
}

/* ----------------------------------------------------------------- table */

#define COLS 6
#define MAX_ROWS 8

/* Display width of a UTF-8 string (count non-continuation bytes). */
static size_t dwidth(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    return w;
}

static void print_row(char cells[][COLS][48], size_t r, const size_t *width)
{
    for (size_t c = 0; c < COLS; c++) {
        const char *s = cells[r][c];
        size_t pad = width[c] - dwidth(s);
        /* first column left-aligned, numbers right-aligned */
        if (c == 0)
            printf("| %s%*s ", s, (int)pad, "");
        else
            printf("| %*s%s ", (int)pad, "", s);
    }
    printf("|\n");
}

static void print_table(char cells[][COLS][48], size_t rows)
{
    size_t width[COLS] = {0};
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < COLS; c++)
            if (dwidth(cells[r][c]) > width[c])
                width[c] = dwidth(cells[r][c]);
    print_row(cells, 0, width);
    for (size_t c = 0; c < COLS; c++) {
        /* numeric columns end in ':' (markdown right alignment) */
        printf("| ");
        for (size_t i = 0; i + 1 < width[c]; i++)
            putchar('-');
        printf("%c ", c == 0 ? '-' : ':');
    }
    printf("|\n");
    for (size_t r = 1; r < rows; r++)
        print_row(cells, r, width);
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_process_start [--iters N] [--warmup N] [--no-python] [--python PATH]\n"
               "  --iters N     timed iterations per workload (default 300)\n"
               "  --warmup N    untimed rounds first (default 5)\n"
               "  --no-python   skip the Python multiprocessing anchor\n"
               "  --python P    python interpreter to use (default: python3 on PATH)\n"
               "  --only LIST   run only these workloads (comma-separated: fork, spawn,\n"
               "                forkserver, raw-fork, raw-spawn, raw-_Fork); others show n/a\n");
}

static long parse_count(const char *opt, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "bench_process_start: %s needs an integer in [%ld, %ld]\n", opt, lo, hi);
        usage(stderr);
        exit(2);
    }
    return v;
}

static double run_workload(int w)
{
    switch (w) {
    case W_FORK: return run_mproc(MPROC_START_FORK);
    case W_SPAWN: return run_mproc(MPROC_START_SPAWN);
    case W_FORKSERVER: return run_mproc(MPROC_START_FORKSERVER);
    case W_RAW_FORK: return run_raw_fork();
    case W_RAW_FORK_NOATFORK: return run_raw_fork_noatfork();
    default: return run_raw_spawn();
    }
}

static const char *met(bool ok)
{
    return ok ? "MET" : "MISSED";
}

/* A table cell: the value, or "n/a" when not measured. */
static void fmt_us(char *cell, bool have, double us)
{
    if (have)
        snprintf(cell, 48, "%.1f", us);
    else
        snprintf(cell, 48, "n/a");
}

static void fmt_ratio(char *cell, bool have, double num, double den)
{
    if (have && den > 0)
        snprintf(cell, 48, "%.2fx", num / den);
    else
        snprintf(cell, 48, "n/a");
}

/* One target line: a's median over b's must be <= limit (limit < 0: strictly < 1). */
static void print_target(const char *what, const stats *a, const stats *b, double limit)
{
    if (!a->n || !b->n || b->median <= 0) {
        printf("  %-40s    n/a  NOT MEASURED\n", what);
        return;
    }
    double ratio = a->median / b->median;
    bool ok = limit < 0 ? ratio < 1.0 : ratio <= limit;
    printf("  %-40s %5.2fx  %s\n", what, ratio, met(ok));
}

int main(int argc, char **argv)
{
    /* First: under spawn/forkserver this runs the child's target and never returns. */
    int rc = mproc_init(&argc, &argv);
    if (rc)
        die("mproc_init", rc);
    /* The raw posix_spawn anchor: start the binary, do nothing, leave. */
    if (argc > 1 && strcmp(argv[1], EXIT_NOW_ARG) == 0)
        return 0;

    long iters = 300, warmup = 5;
    bool use_python = true;
    const char *python = NULL;
    bool enabled[W_COUNT] = {true, true, true, true, true, true};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--iters") == 0)
            iters = parse_count("--iters", i + 1 < argc ? argv[++i] : NULL, 1, MAX_ITERS);
        else if (strcmp(argv[i], "--warmup") == 0)
            warmup = parse_count("--warmup", i + 1 < argc ? argv[++i] : NULL, 0, 1000);
        else if (strcmp(argv[i], "--no-python") == 0)
            use_python = false;
        else if (strcmp(argv[i], "--python") == 0 && i + 1 < argc)
            python = argv[++i];
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            if (!parse_only(argv[++i], enabled)) {
                fprintf(stderr, "bench_process_start: bad --only list '%s'\n", argv[i]);
                usage(stderr);
                return 2;
            }
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "bench_process_start: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }

#ifndef HAVE_UNDERSCORE_FORK
    enabled[W_RAW_FORK_NOATFORK] = false;
#endif
    int nenabled = 0;
    for (int w = 0; w < W_COUNT; w++)
        nenabled += enabled[w];

    double *samples[W_COUNT];
    for (int w = 0; w < W_COUNT; w++) {
        samples[w] = calloc((size_t)iters, sizeof(double));
        if (!samples[w])
            die_errno("calloc", ENOMEM);
    }

    fprintf(stderr, "bench_process_start: %ld warm-up + %ld timed rounds of %d workloads...\n",
            warmup, iters, nenabled);
    fflush(NULL); /* nothing buffered while timing: mproc's fork path flushes stdio */
    /* Round-robin, rotating the order each round, so drift and noise from other
     * processes on the machine spread evenly over the workloads. */
    for (long r = 0; r < warmup + iters; r++) {
        for (int k = 0; k < W_COUNT; k++) {
            int w = (int)((r + k) % W_COUNT);
            if (!enabled[w])
                continue;
            double us = run_workload(w);
            if (r >= warmup)
                samples[w][r - warmup] = us;
        }
    }

    stats st[W_COUNT];
    for (int w = 0; w < W_COUNT; w++)
        st[w] = summarize(samples[w], enabled[w] ? (size_t)iters : 0);

    py_result py[3] = {{0}};
    char pybuf[4096];
    if (use_python && !python)
        python = find_python(pybuf, sizeof pybuf);
    if (use_python && python) {
        fprintf(stderr, "bench_process_start: running the Python anchor (%s)...\n", python);
        run_python(python, iters, warmup, py);
    } else if (use_python) {
        fprintf(stderr, "bench_process_start: python3 not found; python columns are n/a\n");
    }

    printf("\nprocess start + join of an empty child, %ld iterations (+%ld warm-up), times in µs\n\n",
           iters, warmup);
    printf("%-26s %10s %10s %10s %10s %10s\n", "measurement", "median", "mean", "min", "p90",
           "max");
    for (int w = 0; w < W_COUNT; w++)
        if (st[w].n)
            printf("%-26s %10.1f %10.1f %10.1f %10.1f %10.1f\n", wl_name[w], st[w].median,
                   st[w].mean, st[w].min, st[w].p90, st[w].max);
    static const char *const py_name[3] = {"python fork", "python spawn", "python forkserver"};
    for (int w = 0; w < 3; w++)
        if (py[w].have)
            printf("%-26s %10.1f %10.1f %10s %10s %10s   (%ld iterations)\n", py_name[w],
                   py[w].median, py[w].mean, "", "", "", py[w].n);
    printf("\nmedians:\n\n");

    char cells[MAX_ROWS][COLS][48];
    static const char *const header[COLS] = {
        "workload", "mproc (µs)", "raw syscall (µs)", "ratio mproc/raw", "python (µs)", "python/mproc",
    };
    for (int c = 0; c < COLS; c++)
        snprintf(cells[0][c], sizeof cells[0][c], "%s", header[c]);
    static const char *const row_name[3] = {"fork", "spawn", "forkserver"};
    for (int w = 0; w < 3; w++) {
        const stats *m = &st[w], *raw = &st[w == W_FORK ? W_RAW_FORK : W_RAW_SPAWN];
        char(*row)[48] = cells[w + 1];
        snprintf(row[0], 48, "%s", row_name[w]);
        fmt_us(row[1], m->n, m->median);
        fmt_us(row[2], raw->n, raw->median);
        fmt_ratio(row[3], m->n && raw->n, m->median, raw->median);
        fmt_us(row[4], py[w].have, py[w].median);
        fmt_ratio(row[5], py[w].have && m->n, py[w].median, m->median);
    }
    print_table(cells, 4);

    printf("\nraw syscall: fork = fork()+_exit(0)+waitpid; spawn and forkserver = "
           "posix_spawn(/proc/self/exe " EXIT_NOW_ARG ")+waitpid\n");
    if (st[W_FORKSERVER].n && st[W_SPAWN].n)
        printf("note: mproc forkserver takes %.2fx the time of mproc spawn (%.1f vs %.1f µs)\n",
               st[W_FORKSERVER].median / st[W_SPAWN].median, st[W_FORKSERVER].median,
               st[W_SPAWN].median);
    if (st[W_FORK].n && st[W_RAW_FORK_NOATFORK].n)
        printf("note: fork() also runs the pthread_atfork handlers mproc installed; without them "
               "(_Fork) raw fork takes %.1f µs and mproc fork is %.2fx that\n",
               st[W_RAW_FORK_NOATFORK].median, st[W_FORK].median / st[W_RAW_FORK_NOATFORK].median);
    printf("\ntargets:\n");
    print_target("fork within 1.3x of raw fork:", &st[W_FORK], &st[W_RAW_FORK], TARGET_RATIO);
    print_target("spawn within 1.3x of raw posix_spawn:", &st[W_SPAWN], &st[W_RAW_SPAWN],
                 TARGET_RATIO);
    /* "faster than" = ratio strictly below 1 */
    print_target("forkserver faster than spawn:", &st[W_FORKSERVER], &st[W_SPAWN], -1.0);

    for (int w = 0; w < W_COUNT; w++)
        free(samples[w]);
    return 0;
}
