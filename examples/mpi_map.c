/* mpi_map.c — seed 001's Pool example on MPI ranks: the same mul/plus tasks
 * through the Executor of libmproc_mpi, the counterpart of mpi4py.futures.
 *
 *     mpirun --enable-recovery -n 3 ./mpi_map        (rank 0 + 2 worker ranks)
 *
 * Rank 0 runs main(); the other ranks never get past mproc_mpi_init: they run
 * the tasks and exit when rank 0 finalizes. On several machines the same
 * binary runs everywhere (mpirun --hostfile hosts -n 8 ./mpi_map): tasks go
 * as (build-id, offset) of calculate, their arguments and results as
 * MessagePack. Python's Pool calls map to the executor:
 *   pool.apply_async(calculate, t) ... r.get()  ->  submit + future_result
 *   pool.imap / pool.map(calculatestar, TASKS)  ->  executor_map (in order)
 *   pool.imap_unordered(calculatestar, TASKS)   ->  submit + as_completed
 * The naps are a tenth of the seed's (0.05 s at most), to keep the demo short.
 * A task tuple names its function, ["mul", [i, 7]], as in pool_seed.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mproc.h>
#include <mproc/mpi.h>

#define NTASKS 20

static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "%s: %s (%s)\n", what, mproc_strerror(rc), mproc_errmsg());
        exit(1);
    }
}

/* time.sleep(0.5 * random.random()), a tenth of it */
static void nap(void)
{
    long ns = random() % 50000000L;
    nanosleep(&(struct timespec){.tv_nsec = ns}, NULL);
}

static int64_t mul(int64_t a, int64_t b) { nap(); return a * b; }
static int64_t plus(int64_t a, int64_t b) { nap(); return a + b; }

/* calculate(func, args): args[0] names the function, args[1] is (a, b). */
static int calculate(mproc_value *const *args, size_t nargs, mproc_value **out)
{
    const char *name = nargs == 2 ? mproc_value_as_str(args[0], NULL) : NULL;
    if (!name || mproc_value_len(args[1]) != 2)
        return mproc_task_error("calculate wants (name, (a, b))");
    int64_t a = mproc_value_as_int(mproc_value_at(args[1], 0));
    int64_t b = mproc_value_as_int(mproc_value_at(args[1], 1));
    int64_t result;
    if (strcmp(name, "mul") == 0)
        result = mul(a, b);
    else if (strcmp(name, "plus") == 0)
        result = plus(a, b);
    else
        return mproc_task_error("no function named %s", name);
    char text[160];
    snprintf(text, sizeof text, "rank %d says that %s(%lld, %lld) = %lld", mproc_mpi_rank(), name,
             (long long)a, (long long)b, (long long)result);
    *out = mproc_value_str(text);
    return *out ? 0 : MPROC_ENOMEM;
}

/* calculatestar(args): calculate(*args) */
static int calculatestar(const mproc_value *t, mproc_value **out)
{
    mproc_value *args[2] = {mproc_value_at(t, 0), mproc_value_at(t, 1)};
    return calculate(args, mproc_value_len(t) == 2 ? 2 : 0, out);
}

/* (name, (a, b)) */
static mproc_value *task(const char *name, int64_t a, int64_t b)
{
    mproc_value *ab = mproc_value_list();
    mproc_value_append(ab, mproc_value_int(a));
    mproc_value_append(ab, mproc_value_int(b));
    mproc_value *t = mproc_value_list();
    mproc_value_append(t, mproc_value_str(name));
    mproc_value_append(t, ab);
    return t;
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    srandom((unsigned)getpid()); /* every rank its own naps */
    /* if __name__ == '__main__': only rank 0 gets past this line */
    check(mproc_mpi_init(&argc, &argv, NULL), "mproc_mpi_init");

    mproc_executor_opts eo = {.backend = &mproc_executor_mpi}; /* MPIPoolExecutor() */
    mproc_executor *ex;
    check(mproc_executor_new(&ex, &eo), "executor");
    printf("%d worker ranks\n\n", mproc_mpi_workers());

    mproc_value *tasks = mproc_value_list(); /* TASKS */
    for (int i = 0; i < 10; i++)
        mproc_value_append(tasks, task("mul", i, 7));
    for (int i = 0; i < 10; i++)
        mproc_value_append(tasks, task("plus", i, 8));

    /* results = [ex.submit(calculate, *t) for t in TASKS] */
    mproc_future *fs[NTASKS];
    for (size_t i = 0; i < NTASKS; i++)
        check(mproc_executor_submit(ex, mproc_task_star(calculate), mproc_value_at(tasks, i),
                                    &fs[i]),
              "submit");
    printf("Ordered results using submit() (pool.apply_async):\n");
    for (size_t i = 0; i < NTASKS; i++) {
        const mproc_value *x;
        check(mproc_future_result(fs[i], &x, 30.0), "result"); /* r.get() */
        printf("\t %s\n", mproc_value_as_str(x, NULL));
    }
    printf("\n");

    printf("Ordered results using map() (pool.imap, pool.map):\n");
    mproc_imap *it;
    check(mproc_executor_map(ex, mproc_task_value(calculatestar), tasks, 1, &it), "map");
    mproc_value *x;
    int rc;
    while ((rc = mproc_imap_next(it, &x, NULL, 30.0)) == 0) {
        printf("\t %s\n", mproc_value_as_str(x, NULL));
        mproc_value_free(x);
    }
    if (rc != MPROC_ECLOSED) /* ECLOSED: every item was returned */
        check(rc, "next");
    mproc_imap_free(it);
    printf("\n");

    printf("Unordered results using as_completed() (pool.imap_unordered):\n");
    mproc_future *gs[NTASKS];
    for (size_t i = 0; i < NTASKS; i++)
        check(mproc_executor_submit(ex, mproc_task_value(calculatestar), mproc_value_at(tasks, i),
                                    &gs[i]),
              "submit");
    mproc_as_completed *ac;
    check(mproc_as_completed_new(gs, NTASKS, &ac), "as_completed");
    mproc_future *f;
    while ((rc = mproc_as_completed_next(ac, &f, 30.0)) == 0) {
        const mproc_value *y;
        check(mproc_future_result(f, &y, 0), "result");
        printf("\t %s\n", mproc_value_as_str(y, NULL));
    }
    if (rc != MPROC_ECLOSED)
        check(rc, "as_completed");
    mproc_as_completed_free(ac);

    mproc_executor_free(ex); /* end of `with`: shutdown(wait=True) */
    for (size_t i = 0; i < NTASKS; i++) {
        mproc_future_free(fs[i]);
        mproc_future_free(gs[i]);
    }
    mproc_value_free(tasks);
    return mproc_mpi_finalize() ? 1 : 0; /* the worker ranks exit now */
}
