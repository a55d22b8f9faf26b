/* manager.c — the cost of a call through an mproc manager, side by side with
 * Python's multiprocessing managers measured in the same run
 * (bench/python/manager.py). Fork start method on both sides, for the
 * servers and the client processes.
 *
 * Workloads (operations per second, each set and each get one operation;
 * mproc figures the median of --rounds, workloads interleaved round by round
 * so machine noise hits them alike; Python's the median of --py-rounds):
 *   dict set+get, 1 client   N times mproc_dict_set(d, i, v) then
 *                 mproc_dict_get(d, i) on a managed dict (a unix: address,
 *                 so shared-memory queues), vs d[i] = v; d[i] on a
 *                 Manager().dict() (a unix socket);
 *   dict set+get, 8 clients  8 child processes do the same at once on one
 *                 dict (keys disjoint); the aggregate rate, from the moment
 *                 the parent releases them (each has made one call, so its
 *                 connection is open) until the last one is done; vs 8
 *                 Python processes sharing one Manager().dict();
 *   Queue round trip  the parent puts a value on a managed Queue, a child
 *                 gets it and puts it on a second, the parent gets it back:
 *                 four calls per round trip, two of them blocking gets
 *                 woken by the other side's put; vs two Manager().Queue();
 *   dict set+get, TCP  as the first row with the manager at
 *                 tcp:127.0.0.1:0 (a framed socket per call), vs a
 *                 SyncManager at ('127.0.0.1', 0).
 * Keys are ints, the value a 16-character str, on both sides. Every get is
 * checked, so a broken manager fails the benchmark instead of reporting a
 * figure. An mproc measurement stops after its count or after --max-time
 * seconds (default 1), whichever comes first, and its rate counts what was
 * done: the whole run stays under a minute however slow a row turns out.
 *
 * Target: the two dict rows >= 20x Python.
 *
 * Usage: bench_manager [--quick] [--scale X] [--rounds R] [--py-rounds R]
 *                      [--clients N] [--max-time S] [--no-tcp] [--no-python]
 *                      [--python PATH]
 *   --quick   smoke run: counts / 20, 1 round, Python 1 round */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <mproc.h>
#include <mproc/manager.h>

#include "bench.h"

#ifndef MPROC_BENCH_PYDIR
#define MPROC_BENCH_PYDIR "bench/python"
#endif

#define PYTHON_TARGET 20.0
#define MAX_CLIENTS 64
#define VALUE "value-0123456789"
/* Longest a child may take to get ready or to finish before the benchmark
 * calls the manager hung. */
#define WAIT_S 120.0
/* Iterations between two looks at the clock. */
#define CLOCK_EVERY 64

enum { W_DICT1, W_DICTN, W_QRT, W_TCP, NW };
static const char *wname[NW] = {"dict set+get, 1 client", "dict set+get, N clients",
                                "Queue round trip", "dict set+get, TCP"};
static const char *wunit[NW] = {"ops/s", "ops/s", "rt/s", "ops/s"};
/* Iterations per measurement at scale 1 (per client for W_DICTN). A dict
 * iteration is two operations, a round trip one. */
static const long wcount[NW] = {200000, 25000, 20000, 10000};
static const long py_count[NW] = {10000, 1250, 2000, 5000};
static const char *const pykeys[NW] = {"dict1_ops", "dictN_ops", "qrt_rtps", "tcp_ops"};

/* ---------------------------------------------------------------- helpers */

static void fail(const char *what)
{
    fprintf(stderr, "bench_manager: %s: wrong result\n", what);
    exit(1);
}

static mproc_value *xv(mproc_value *v)
{
    if (!v)
        die("building a value", MPROC_ENOMEM);
    return v;
}

/* Operations (or round trips) done by `iters` iterations. */
static long op_count(int w, long iters)
{
    return w == W_QRT ? iters : 2 * iters;
}

/* Up to n iterations of set(k, v) then get(k) for k = base, base+1, ...,
 * stopping early once the clock passes `until`; *done = iterations done.
 * 0 or the failing call's code (a child reports it through its exit code). */
static int set_get(mproc_proxy *d, const mproc_value *val, long base, long n, double until,
                   long *done)
{
    long i = 0;
    int rc = 0;
    for (; i < n && !rc; i++) {
        if (i % CLOCK_EVERY == CLOCK_EVERY - 1 && now_s() > until)
            break;
        mproc_value *key = mproc_value_int(base + i), *got = NULL;
        if (!key)
            return MPROC_ENOMEM;
        rc = mproc_dict_set(d, key, val);
        if (!rc)
            rc = mproc_dict_get(d, key, &got);
        mproc_value_free(key);
        if (!rc && !mproc_value_equal(got, val))
            rc = MPROC_EPROTO;
        mproc_value_free(got);
    }
    *done = rc ? i - 1 : i;
    return rc;
}

/* One measurement's outcome. */
typedef struct meas {
    double rate;
    long ops;
} meas;

static meas run_single(mproc_proxy *d, const mproc_value *val, long n, double max_s)
{
    long done;
    double t0 = now_s();
    OK(set_get(d, val, 0, n, t0 + max_s, &done));
    return (meas){2.0 * (double)done / (now_s() - t0), 2 * done};
}

/* ------------------------------------------------------- many clients */

/* What each client leaves behind (MAP_SHARED, inherited by fork). */
typedef struct client_out {
    double t_end;
    long done;
} client_out;
static client_out *cout;

/* Client c: args (dict, ready, go, c, n, max_s). */
static int client_main(mproc_args *a)
{
    mproc_proxy *d = mproc_args_object(a, 0, &mproc_proxy_type);
    mproc_semaphore *ready = mproc_args_object(a, 1, &mproc_semaphore_type);
    mproc_event *go = mproc_args_object(a, 2, &mproc_event_type);
    int64_t c = 0, n = 0;
    double max_s = 1;
    mproc_args_get_int(a, 3, &c);
    mproc_args_get_int(a, 4, &n);
    mproc_args_get_double(a, 5, &max_s);
    mproc_value *val = mproc_value_str(VALUE), *wk = mproc_value_int(-1 - c * n);
    /* Warm-up: the first call opens this process's connection. */
    int rc = val && wk ? mproc_dict_set(d, wk, val) : MPROC_ENOMEM;
    mproc_value_free(wk);
    if (rc) {
        fprintf(stderr, "bench_manager: client %d: warm-up: %s: %s\n", (int)c, mproc_strerror(rc),
                mproc_errmsg());
        return 3;
    }
    mproc_semaphore_release(ready);
    mproc_event_wait(go, MPROC_FOREVER);
    long done = 0;
    rc = set_get(d, val, c * n, n, now_s() + max_s, &done);
    cout[c] = (client_out){now_s(), done};
    mproc_value_free(val);
    if (rc) {
        fprintf(stderr, "bench_manager: client %d: %s: %s\n", (int)c, mproc_strerror(rc),
                mproc_errmsg());
        return 3;
    }
    return 0;
}

static meas run_multi(mproc_proxy *d, int clients, long n, double max_s)
{
    mproc_semaphore *ready;
    mproc_event *go;
    OK(mproc_semaphore_new(&ready, 0));
    OK(mproc_event_new(&go));
    mproc_process *ps[MAX_CLIENTS];
    mproc_process_opts po = {.ctx = mproc_get_context(MPROC_START_FORK)};
    for (int c = 0; c < clients; c++) {
        mproc_args *a = mproc_args_new();
        if (!a)
            die("mproc_args_new", MPROC_ENOMEM);
        OK(mproc_args_add_object(a, &mproc_proxy_type, d));
        OK(mproc_args_add_object(a, &mproc_semaphore_type, ready));
        OK(mproc_args_add_object(a, &mproc_event_type, go));
        OK(mproc_args_add_int(a, c));
        OK(mproc_args_add_int(a, n));
        OK(mproc_args_add_double(a, max_s));
        cout[c] = (client_out){0, 0};
        OK(mproc_process_new(&ps[c], client_main, a, &po));
        OK(mproc_process_start(ps[c]));
        mproc_args_free(a);
    }
    for (int c = 0; c < clients; c++)
        OK(mproc_semaphore_acquire(ready, WAIT_S));
    double t0 = now_s();
    mproc_event_set(go);
    double last = t0;
    long done = 0;
    for (int c = 0; c < clients; c++) {
        OK(mproc_process_join(ps[c], WAIT_S));
        if (mproc_process_exitcode(ps[c]) != 0)
            fail("a dict client");
        if (cout[c].t_end > last)
            last = cout[c].t_end;
        done += cout[c].done;
        mproc_process_close(ps[c]);
    }
    mproc_semaphore_free(ready);
    mproc_event_free(go);
    return (meas){2.0 * (double)done / (last - t0), 2 * done};
}

/* ---------------------------------------------------------- round trip */

/* The echo child: args (a, b); a nil on a ends it. */
static int echo_main(mproc_args *args)
{
    mproc_proxy *a = mproc_args_object(args, 0, &mproc_proxy_type);
    mproc_proxy *b = mproc_args_object(args, 1, &mproc_proxy_type);
    for (;;) {
        mproc_value *m = NULL;
        int rc = mproc_mqueue_get(a, &m, MPROC_FOREVER);
        if (!rc && mproc_value_type(m) == MPROC_V_NIL) {
            mproc_value_free(m);
            return 0;
        }
        if (!rc)
            rc = mproc_mqueue_put(b, m, MPROC_FOREVER);
        mproc_value_free(m);
        if (rc) {
            fprintf(stderr, "bench_manager: echo: %s: %s\n", mproc_strerror(rc), mproc_errmsg());
            return 3;
        }
    }
}

typedef struct echo {
    mproc_proxy *a, *b;
    mproc_process *p;
} echo;

static void echo_start(mproc_manager *m, echo *e)
{
    OK(mproc_manager_queue(m, 0, &e->a));
    OK(mproc_manager_queue(m, 0, &e->b));
    mproc_args *args = mproc_args_new();
    if (!args)
        die("mproc_args_new", MPROC_ENOMEM);
    OK(mproc_args_add_object(args, &mproc_proxy_type, e->a));
    OK(mproc_args_add_object(args, &mproc_proxy_type, e->b));
    mproc_process_opts po = {.ctx = mproc_get_context(MPROC_START_FORK)};
    OK(mproc_process_new(&e->p, echo_main, args, &po));
    OK(mproc_process_start(e->p));
    mproc_args_free(args);
}

static void echo_stop(echo *e)
{
    mproc_value *nil = xv(mproc_value_nil());
    OK(mproc_mqueue_put(e->a, nil, MPROC_FOREVER));
    mproc_value_free(nil);
    OK(mproc_process_join(e->p, WAIT_S));
    if (mproc_process_exitcode(e->p) != 0)
        fail("the echo child");
    mproc_process_close(e->p);
    mproc_proxy_free(e->a);
    mproc_proxy_free(e->b);
}

/* Up to n round trips, stopping early once the clock passes `until`. */
static long round_trips(echo *e, const mproc_value *val, long n, double until)
{
    long i = 0;
    for (; i < n; i++) {
        if (i % CLOCK_EVERY == CLOCK_EVERY - 1 && now_s() > until)
            break;
        mproc_value *got = NULL;
        OK(mproc_mqueue_put(e->a, val, MPROC_FOREVER));
        OK(mproc_mqueue_get(e->b, &got, WAIT_S));
        if (!mproc_value_equal(got, val))
            fail("Queue round trip");
        mproc_value_free(got);
    }
    return i;
}

static meas run_round_trip(echo *e, const mproc_value *val, long n, double max_s)
{
    double t0 = now_s();
    long done = round_trips(e, val, n, t0 + max_s);
    return (meas){(double)done / (now_s() - t0), done};
}

/* ---------------------------------------------------------------- python */

typedef struct py_results {
    bool ok;
    double rate[NW];
    long n[NW]; /* iterations, as wcount */
} py_results;

static py_results run_python(const char *python, double scale, int clients, int rounds, bool tcp)
{
    py_results r = {0};
    for (int w = 0; w < NW; w++) {
        r.n[w] = (long)((double)py_count[w] * scale);
        if (r.n[w] < 1)
            r.n[w] = 1;
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s %s/manager.py --single %ld --multi %ld --procs %d --rt %ld --tcp %ld --rounds %d",
             python, MPROC_BENCH_PYDIR, r.n[W_DICT1], r.n[W_DICTN], clients, r.n[W_QRT],
             tcp ? r.n[W_TCP] : 0L, rounds);
    r.ok = bench_python_keys(cmd, pykeys, r.rate, tcp ? NW : NW - 1);
    return r;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f, const char *argv0)
{
    fprintf(f,
            "usage: %s [--quick] [--scale X] [--rounds R] [--py-rounds R] [--clients N] "
            "[--max-time S] [--no-tcp] [--no-python] [--python PATH]\n"
            "  --quick         smoke run: counts / 20, 1 round, Python 1 round\n"
            "  --scale X       multiply every count by X (default 1)\n"
            "  --rounds R      mproc rounds, median taken (default 5)\n"
            "  --py-rounds R   Python rounds, median taken (default 4: its 8-client figure is noisy)\n"
            "  --clients N     client processes of the shared-dict row (default 8)\n"
            "  --max-time S    an mproc measurement stops after S seconds (default 1)\n"
            "  --no-tcp        leave out the TCP row\n",
            argv0);
}

static mproc_manager *start_manager(const char *address)
{
    mproc_manager *m;
    mproc_manager_opts o = {.address = address, .ctx = mproc_get_context(MPROC_START_FORK)};
    OK(mproc_manager_new(&m, &o));
    OK(mproc_manager_start(m));
    return m;
}

int main(int argc, char **argv)
{
    bench_prog = "bench_manager";
    OK(mproc_init(&argc, &argv));
    double scale = 1.0, max_s = 1.0;
    int rounds = 5, py_rounds = 4, clients = 8;
    bool python = true, tcp = true, quick = false, rounds_set = false, py_rounds_set = false;
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
        else if (!strcmp(argv[i], "--clients") && i + 1 < argc)
            clients = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--max-time") && i + 1 < argc)
            max_s = atof(argv[++i]);
        else if (!strcmp(argv[i], "--no-tcp"))
            tcp = false;
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
        scale /= 20;
        if (!rounds_set)
            rounds = 1;
        if (!py_rounds_set)
            py_rounds = 1;
    }
    if (!(scale > 0) || !(max_s > 0) || rounds < 1 || rounds > 99 || py_rounds < 1 ||
        py_rounds > 99 || clients < 1 || clients > MAX_CLIENTS) {
        fprintf(stderr, "bench_manager: scale > 0, max-time > 0, 1 <= rounds <= 99, "
                        "1 <= py-rounds <= 99, 1 <= clients <= %d\n", MAX_CLIENTS);
        return 2;
    }
    long n[NW];
    for (int w = 0; w < NW; w++) {
        n[w] = (long)((double)wcount[w] * scale);
        if (n[w] < 1)
            n[w] = 1;
    }
    cout = mmap(NULL, MAX_CLIENTS * sizeof *cout, PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (cout == MAP_FAILED) {
        perror("bench_manager: mmap");
        return 1;
    }

    mproc_value *val = xv(mproc_value_str(VALUE));
    mproc_manager *m = start_manager(NULL), *mt = tcp ? start_manager("tcp:127.0.0.1:0") : NULL;
    mproc_proxy *d1, *dn, *dt = NULL;
    OK(mproc_manager_dict(m, &d1));
    OK(mproc_manager_dict(m, &dn));
    if (mt)
        OK(mproc_manager_dict(mt, &dt));
    echo e;
    echo_start(m, &e);
    /* Warm-up: every path has run once. */
    long done;
    OK(set_get(d1, val, 0, 1000, now_s() + max_s, &done));
    round_trips(&e, val, 100, now_s() + max_s);
    if (dt)
        OK(set_get(dt, val, 0, 100, now_s() + max_s, &done));

    double v[NW][99];
    long ops[NW] = {0};
    for (int r = 0; r < rounds; r++) {
        meas x[NW] = {{0, 0}};
        x[W_DICT1] = run_single(d1, val, n[W_DICT1], max_s);
        x[W_DICTN] = run_multi(dn, clients, n[W_DICTN], max_s);
        x[W_QRT] = run_round_trip(&e, val, n[W_QRT], max_s);
        if (dt)
            x[W_TCP] = run_single(dt, val, n[W_TCP], max_s);
        for (int w = 0; w < NW; w++) {
            v[w][r] = x[w].rate;
            ops[w] += x[w].ops;
        }
    }
    double med[NW];
    for (int w = 0; w < NW; w++)
        med[w] = median(v[w], rounds);

    echo_stop(&e);
    mproc_proxy_free(d1);
    mproc_proxy_free(dn);
    mproc_proxy_free(dt);
    OK(mproc_manager_shutdown(m));
    mproc_manager_free(m);
    if (mt) {
        OK(mproc_manager_shutdown(mt));
        mproc_manager_free(mt);
    }
    mproc_value_free(val);

    py_results pr = {0};
    if (python) {
        pr = run_python(py, scale, clients, py_rounds, tcp);
        if (!pr.ok)
            fprintf(stderr, "bench_manager: the Python anchor failed; Python columns are n/a\n");
    }

    printf("\nManager calls, fork, int keys and a 16-char str value (mproc: median of %d rounds; "
           "Python: median of %d)\n", rounds, py_rounds);
    printf("| workload                 | unit  | mproc ops | mproc    | mproc µs "
           "| Python ops | Python   | Python µs | vs Python |\n");
    printf("|--------------------------|-------|----------:|---------:|---------:"
           "|-----------:|---------:|----------:|----------:|\n");
    bool capped = false;
    for (int w = 0; w < NW; w++) {
        if (w == W_TCP && !dt)
            continue;
        long planned = op_count(w, n[w]) * (w == W_DICTN ? clients : 1);
        long mean_ops = ops[w] / rounds;
        capped |= mean_ops < planned;
        char name[64], mr[32], mus[32], pc[32] = "n/a", p[32] = "n/a", pus[32] = "n/a",
                                                 ratio[32] = "n/a";
        if (w == W_DICTN)
            snprintf(name, sizeof name, "dict set+get, %d clients", clients);
        else
            snprintf(name, sizeof name, "%s", wname[w]);
        bench_fmt_rate(mr, sizeof mr, med[w]);
        bench_fmt_us(mus, sizeof mus, med[w], 3);
        if (pr.ok && pr.rate[w] > 0) {
            snprintf(pc, sizeof pc, "%ld", op_count(w, pr.n[w]) * (w == W_DICTN ? clients : 1));
            bench_fmt_rate(p, sizeof p, pr.rate[w]);
            bench_fmt_us(pus, sizeof pus, pr.rate[w], 3);
            snprintf(ratio, sizeof ratio, "%.1fx", med[w] / pr.rate[w]);
        }
        printf("| %-24s | %-5s | %9ld%s | %8s | %8s | %10s | %8s | %9s | %9s |\n", name,
               wunit[w], mean_ops, mean_ops < planned ? "*" : " ", mr, mus, pc, p, pus, ratio);
    }
    printf("(ops: operations per measurement, a set or a get each, all clients together; round "
           "trips for the Queue. µs: per operation or round trip; for the %d-client row the "
           "inverse of the aggregate rate. vs Python: mproc's rate / Python's)\n", clients);
    if (capped)
        printf("(*: stopped by --max-time %.1f s before its count; the mean count done is shown)\n",
               max_s);

    char s1[64], s2[64];
    if (pr.ok && pr.rate[W_DICT1] > 0 && pr.rate[W_DICTN] > 0) {
        double r1 = med[W_DICT1] / pr.rate[W_DICT1], rn = med[W_DICTN] / pr.rate[W_DICTN];
        snprintf(s1, sizeof s1, "%s (%.1fx)", r1 >= PYTHON_TARGET ? "met" : "MISSED", r1);
        snprintf(s2, sizeof s2, "%s (%.1fx)", rn >= PYTHON_TARGET ? "met" : "MISSED", rn);
    } else {
        snprintf(s1, sizeof s1, "%s", python ? "no Python" : "not measured");
        snprintf(s2, sizeof s2, "%s", python ? "no Python" : "not measured");
    }
    printf("\ntargets: dict set+get >= %.0fx Python, 1 client: %s; %d clients: %s\n",
           PYTHON_TARGET, s1, clients, s2);
    munmap(cout, MAX_CLIENTS * sizeof *cout);
    return 0;
}
