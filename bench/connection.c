/* connection.c — the cost of mproc Connections (framed messages over a socketpair).
 *
 * Workloads, each timed as µs per message (median of rounds, workloads
 * interleaved round by round so machine noise hits them alike):
 *   rt 64 B      a 64-byte message to a child and back (round trip)
 *   stream 64 B  a child sends N 64-byte messages, the parent receives them
 *   stream 1 MiB the same with 1 MiB messages
 * Columns: mproc_pipe(duplex) with send_bytes / recv_bytes_into; a raw
 * socketpair with the same length-prefixed frames written by write/writev and
 * read through a 64 KiB buffer (the floor: the fewest syscalls the framing
 * allows); Python's multiprocessing Pipe() with send_bytes / recv_bytes.
 * Targets: mproc within 1.2x of raw; at least 20x faster than Python at 64 B.
 *
 * Usage: bench_connection [--iters N] [--rounds R] [--no-python] [--python PATH] */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mproc.h>

#include "bench.h"
#include "bench_raw.h"

#ifndef MPROC_BENCH_PYDIR
#define MPROC_BENCH_PYDIR "bench/python"
#endif

#define RAW_TARGET 1.2
#define PYTHON_TARGET 20.0
#define SMALL 64
#define BIG ((size_t)1 << 20)

/* ------------------------------------------------------------ workloads */

enum { K_MPROC, K_RAW, NK };
enum { W_RT, W_SMALL, W_BIG, NW };
static const char *wname[NW] = {"rt 64 B", "stream 64 B", "stream 1 MiB"};

/* Both kinds behind one small interface: an end is an mproc connection or a raw fd. */
typedef struct end {
    mproc_connection *c;
    raw_reader *r;
    int fd;
} end;

static void end_send(end *e, const void *p, size_t n)
{
    if (e->c)
        OK(mproc_connection_send_bytes(e->c, p, n));
    else
        raw_send(e->fd, p, n);
}

static size_t end_recv(end *e, void *p, size_t cap)
{
    if (e->c) {
        size_t n;
        int rc = mproc_connection_recv_bytes_into(e->c, p, cap, &n, MPROC_FOREVER);
        if (rc == MPROC_ECLOSED)
            return 0;
        OK(rc);
        return n;
    }
    size_t n;
    return raw_recv(e->r, p, cap, &n) ? n : 0;
}

static void make_pair(int kind, end *a, end *b)
{
    memset(a, 0, sizeof *a);
    memset(b, 0, sizeof *b);
    if (kind == K_MPROC) {
        OK(mproc_pipe(&a->c, &b->c, true, NULL));
        return;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        perror("socketpair");
        exit(1);
    }
    a->fd = sv[0];
    b->fd = sv[1];
    a->r = calloc(1, sizeof *a->r);
    b->r = calloc(1, sizeof *b->r);
    a->r->fd = sv[0];
    b->r->fd = sv[1];
}

static void end_close(end *e)
{
    if (e->c)
        mproc_connection_close(e->c);
    else {
        close(e->fd);
        free(e->r);
    }
}

/* The child: w == W_RT echoes until EOF; otherwise waits for "go" and streams. */
static void child_main(int w, end *e, long count)
{
    size_t size = w == W_BIG ? BIG : SMALL;
    char *buf = calloc(1, size);
    if (w == W_RT) {
        size_t n;
        while ((n = end_recv(e, buf, size)) > 0)
            end_send(e, buf, n);
    } else {
        end_recv(e, buf, size);
        for (long i = 0; i < count; i++)
            end_send(e, buf, size);
    }
    _exit(0);
}

/* µs per message for workload w over `kind`, `count` messages. */
static double run(int kind, int w, long count)
{
    end a, b;
    make_pair(kind, &a, &b);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(1);
    }
    if (pid == 0) {
        end_close(&a);
        child_main(w, &b, count);
    }
    end_close(&b);
    size_t size = w == W_BIG ? BIG : SMALL;
    char *buf = calloc(1, size);
    double t;
    if (w == W_RT) {
        end_send(&a, buf, size); /* warm the child up */
        end_recv(&a, buf, size);
        double t0 = now_s();
        for (long i = 0; i < count; i++) {
            end_send(&a, buf, size);
            if (end_recv(&a, buf, size) != size) {
                fprintf(stderr, "bench_connection: short echo\n");
                exit(1);
            }
        }
        t = now_s() - t0;
    } else {
        double t0 = now_s();
        end_send(&a, "go", 2);
        for (long i = 0; i < count; i++)
            if (end_recv(&a, buf, size) != size) {
                fprintf(stderr, "bench_connection: short stream\n");
                exit(1);
            }
        t = now_s() - t0;
    }
    end_close(&a);
    int st;
    waitpid(pid, &st, 0);
    free(buf);
    return t / (double)count * 1e6;
}

/* ---------------------------------------------------------------- python */

typedef struct py_results {
    bool ok;
    double us[NW];
} py_results;

static py_results run_python(const char *python, long rt, long small, long big)
{
    py_results r = {0};
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s %s/connection.py --rt %ld --small %ld --big %ld", python,
             MPROC_BENCH_PYDIR, rt, small, big);
    static const char *const keys[NW] = {"rt_us", "small_us", "big_us"};
    r.ok = bench_python_keys(cmd, keys, r.us, NW);
    return r;
}

int main(int argc, char **argv)
{
    bench_prog = "bench_connection";
    OK(mproc_init(&argc, &argv));
    signal(SIGPIPE, SIG_IGN); /* the raw anchor writes with plain write(2) */
    long iters = 20000;
    int rounds = 5;
    bool python = true;
    const char *py = "python3";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--iters") && i + 1 < argc)
            iters = atol(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-python"))
            python = false;
        else if (!strcmp(argv[i], "--python") && i + 1 < argc)
            py = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--iters N] [--rounds R] [--no-python] [--python PATH]\n",
                    argv[0]);
            return 2;
        }
    }
    if (iters < 10 || rounds < 1 || rounds > 99) {
        fprintf(stderr, "bench_connection: iters >= 10, 1 <= rounds <= 99\n");
        return 2;
    }
    /* messages per workload: round trips, 64 B stream (x10), 1 MiB stream (/20) */
    long count[NW] = {iters, iters * 10, iters / 20 > 0 ? iters / 20 : 1};

    double v[NK][NW][99];
    for (int k = 0; k < NK; k++) /* warm up */
        for (int w = 0; w < NW; w++)
            run(k, w, count[w] / 10 > 0 ? count[w] / 10 : 1);
    for (int r = 0; r < rounds; r++)
        for (int w = 0; w < NW; w++)
            for (int k = 0; k < NK; k++)
                v[k][w][r] = run(k, w, count[w]);
    double med[NK][NW];
    for (int k = 0; k < NK; k++)
        for (int w = 0; w < NW; w++)
            med[k][w] = median(v[k][w], rounds);

    py_results pr = {0};
    if (python) {
        pr = run_python(py, count[W_RT], count[W_SMALL], count[W_BIG] > 200 ? 200 : count[W_BIG]);
        if (!pr.ok)
            fprintf(stderr, "bench_connection: the Python anchor failed; Python columns left empty\n");
    }

    printf("\nConnections over a socketpair, µs per message (median of %d rounds)\n", rounds);
    printf("| workload      | mproc µs | raw µs | mproc/raw | MB/s mproc | Python µs | Python/mproc |\n");
    printf("|---------------|---------:|-------:|----------:|-----------:|----------:|-------------:|\n");
    bool raw_ok = true, py_ok = pr.ok;
    for (int w = 0; w < NW; w++) {
        double m = med[K_MPROC][w], rw = med[K_RAW][w];
        size_t bytes = (w == W_BIG ? BIG : SMALL) * (w == W_RT ? 2 : 1);
        char pys[32] = "", pyr[32] = "";
        if (pr.ok) {
            snprintf(pys, sizeof pys, "%.2f", pr.us[w]);
            snprintf(pyr, sizeof pyr, "%.1fx", pr.us[w] / m);
            if (w != W_BIG && pr.us[w] / m < PYTHON_TARGET)
                py_ok = false;
        }
        if (m / rw > RAW_TARGET)
            raw_ok = false;
        printf("| %-13s | %8.3f | %6.3f | %8.2fx | %10.1f | %9s | %12s |\n", wname[w], m, rw, m / rw,
               (double)bytes / m, pys, pyr);
    }
    printf("(%ld round trips, %ld and %ld streamed messages per round; raw: length-prefixed "
           "frames with write/writev and a 64 KiB read buffer)\n",
           count[W_RT], count[W_SMALL], count[W_BIG]);
    printf("\ntargets: within %.1fx of raw socketpair: %s; >= %.0fx Python at 64 B: %s\n", RAW_TARGET,
           raw_ok ? "met" : "MISSED", PYTHON_TARGET,
           !python ? "not measured" : pr.ok ? (py_ok ? "met" : "MISSED") : "no Python");
    return 0;
}
