/* pool_progress.c — a progress bar drawn from on_progress, and a worker that
 * dies in the middle of a task.
 *
 *   with Pool() as pool:
 *       flags = pool.map(is_prime, range(10**10, 10**10 + 200_000), chunksize=4000)
 *
 * with a bar on stderr that moves after each finished chunk (Python has no
 * progress hook: people wrap imap in tqdm). The numbers travel as a C array
 * through the pool's shared memory (map_array), and the answers are checked
 * against a sieve. Then a task kills its own worker with SIGKILL: Python's
 * Pool would wait for that result forever; here that one item fails with
 * MPROC_EWORKER, a new worker takes the dead one's place, and the rest complete. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <mproc.h>

#define BASE 10000000000ULL /* 10**10 */
#define N 200000
#define UPDATES 50

static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "%s: %s (%s)\n", what, mproc_strerror(rc), mproc_errmsg());
        exit(1);
    }
}

/* The element task: out = is_prime(in), by trial division (the slow way, on purpose). */
static int is_prime(const void *in, void *out, const void *arg)
{
    (void)arg;
    uint64_t n = *(const uint64_t *)in;
    uint8_t prime = n >= 2 && (n % 2 != 0 || n == 2);
    for (uint64_t d = 3; prime && d * d <= n; d += 2)
        prime = n % d != 0;
    *(uint8_t *)out = prime;
    return 0;
}

/* on_progress: runs on the pool's results thread after each chunk. */
static void draw_bar(size_t done, size_t total, void *ud)
{
    (void)ud;
    const int width = 40;
    int filled = (int)(done * width / total);
    int pct = (int)(done * 100 / total);
    if (!isatty(STDERR_FILENO)) { /* a log, not a terminal: a line per quarter */
        static int last = -1;
        if (pct / 25 != last) {
            last = pct / 25;
            fprintf(stderr, "progress: %3d%% %zu/%zu\n", pct, done, total);
        }
        return;
    }
    fprintf(stderr, "\r[%.*s%*s] %3d%% %zu/%zu", filled, "########################################",
            width - filled, "", pct, done, total);
}

/* The check: which of BASE..BASE+N-1 a segmented sieve of Eratosthenes leaves. */
static size_t count_wrong(const uint8_t *flags)
{
    uint64_t lim = 1;
    while (lim * lim < BASE + N)
        lim++;
    uint8_t *small = calloc(lim + 1, 1), *composite = calloc(N, 1);
    if (!small || !composite)
        exit(1);
    for (uint64_t p = 2; p <= lim; p++) {
        if (small[p])
            continue;
        for (uint64_t q = p * p; q <= lim; q += p)
            small[q] = 1;
        for (uint64_t m = (BASE + p - 1) / p * p; m < BASE + N; m += p)
            composite[m - BASE] = 1; /* every p < BASE: m is a proper multiple */
    }
    size_t wrong = 0;
    for (size_t i = 0; i < N; i++)
        wrong += flags[i] != !composite[i];
    free(small);
    free(composite);
    return wrong;
}

/* A value task; item 3 kills the worker running it. */
static int square_or_die(const mproc_value *arg, mproc_value **out)
{
    int64_t x = mproc_value_as_int(arg);
    if (x == 3)
        raise(SIGKILL);
    *out = mproc_value_int(x * x);
    return 0;
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv); /* first: needed if the workers are spawned */
    mproc_pool *pool;
    check(mproc_pool_new(&pool, NULL), "Pool"); /* Pool(): one worker per CPU */

    uint64_t *numbers = malloc(N * sizeof *numbers);
    uint8_t *flags = malloc(N);
    if (!numbers || !flags)
        return 1;
    for (size_t i = 0; i < N; i++)
        numbers[i] = BASE + i;
    mproc_call_opts o = {.chunksize = N / UPDATES, .on_progress = draw_bar};
    check(mproc_pool_map_array(pool, is_prime, numbers, sizeof *numbers, flags, 1, N, &o,
                               MPROC_FOREVER),
          "map_array");
    fputc('\n', stderr);
    size_t primes = 0;
    for (size_t i = 0; i < N; i++)
        primes += flags[i];
    size_t wrong = count_wrong(flags);
    printf("%zu primes in [10**10, 10**10 + %d) on %d workers; sieve check: %s\n", primes, N,
           mproc_pool_processes(pool), wrong == 0 ? "ok" : "WRONG");
    free(numbers);
    free(flags);

    /* for i, x in enumerate(pool.imap(square_or_die, range(8))): print(...) */
    mproc_value *items = mproc_value_list();
    for (int i = 0; i < 8; i++)
        mproc_value_append(items, mproc_value_int(i));
    mproc_imap *it;
    check(mproc_pool_imap(pool, mproc_task_value(square_or_die), items, NULL, &it), "imap");
    mproc_value *x;
    size_t i;
    int rc, failed = 0;
    while ((rc = mproc_imap_next(it, &x, &i, 30.0)) != MPROC_ECLOSED) {
        if (rc == 0) {
            printf("  %zu -> %lld\n", i, (long long)mproc_value_as_int(x));
            mproc_value_free(x);
        } else if (rc == MPROC_EWORKER) { /* the item whose worker died */
            const char *msg = mproc_imap_error(it);
            printf("  %zu -> %s: %s\n", i, mproc_errname(rc), msg ? msg : "");
            failed++;
        } else {
            check(rc, "next"); /* anything else is a real failure */
        }
    }
    mproc_imap_free(it);
    mproc_value_free(items);

    mproc_pool_stats st;
    mproc_pool_stats_get(pool, &st);
    printf("workers started %llu, died %llu; items done %llu, failed %llu\n",
           (unsigned long long)st.workers_started, (unsigned long long)st.workers_died,
           (unsigned long long)st.items_done, (unsigned long long)st.items_failed);
    mproc_pool_close(pool); /* pool.close(); pool.join() */
    check(mproc_pool_join(pool, 10.0), "join");
    mproc_pool_free(pool);
    return wrong != 0 || failed != 1;
}
