/* pool_seed.c — seed 001's Pool example in C, and the concurrent.futures
 * interface it points to.
 *
 *   def calculate(func, args):
 *       result = func(*args)
 *       return '%s says that %s%s = %s' % (
 *           multiprocessing.current_process().name, func.__name__, args, result)
 *
 *   def calculatestar(args):
 *       return calculate(*args)
 *
 *   def mul(a, b):
 *       time.sleep(0.5 * random.random())
 *       return a * b
 *
 *   def plus(a, b):
 *       time.sleep(0.5 * random.random())
 *       return a + b
 *
 *   PROCESSES = 8
 *   with multiprocessing.Pool(PROCESSES) as pool:
 *       TASKS = [(mul, (i, 7)) for i in range(10)] + \
 *               [(plus, (i, 8)) for i in range(10)]
 *       results = [pool.apply_async(calculate, t) for t in TASKS]
 *       imap_it = pool.imap(calculatestar, TASKS)
 *       imap_unordered_it = pool.imap_unordered(calculatestar, TASKS)
 *       ... print each: r.get(), imap_it, imap_unordered_it, pool.map(calculatestar, TASKS)
 *
 * A C function cannot travel inside a value, so a task tuple names its
 * function: ["mul", [i, 7]]. calculate is a star task (apply_async unpacks the
 * tuple into its arguments, as Python does); calculatestar a value task that
 * takes the tuple whole. Pass "spawn" or "forkserver" to start the workers
 * another way. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mproc.h>

#define PROCESSES 8
#define NTASKS 20

static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "%s: %s (%s)\n", what, mproc_strerror(rc), mproc_errmsg());
        exit(1);
    }
}

/* time.sleep(0.5 * random.random()) */
static void nap(void)
{
    long ns = random() % 500000000L;
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
    snprintf(text, sizeof text, "%s says that %s(%lld, %lld) = %lld",
             mproc_process_name(mproc_current_process()), name, (long long)a, (long long)b,
             (long long)result);
    *out = mproc_value_str(text);
    return *out ? 0 : MPROC_ENOMEM;
}

/* calculatestar(args): calculate(*args) */
static int calculatestar(const mproc_value *t, mproc_value **out)
{
    mproc_value *args[2] = {mproc_value_at(t, 0), mproc_value_at(t, 1)};
    return calculate(args, mproc_value_len(t) == 2 ? 2 : 0, out);
}

/* Each worker gets its own random sequence (Python reseeds after fork). */
static int seed_random(mproc_args *args)
{
    (void)args;
    srandom((unsigned)getpid());
    return 0;
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

/* print('\t', x) for each output of an iterator. */
static void print_imap(mproc_imap *it)
{
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
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv); /* first: a spawned worker runs from here */
    mproc_start_method method = MPROC_START_FORK;
    if (argc > 1 && mproc_start_method_parse(argv[1], &method) != 0) {
        fprintf(stderr, "usage: %s [fork|spawn|forkserver]\n", argv[0]);
        return 2;
    }

    /* with multiprocessing.Pool(PROCESSES) as pool: */
    mproc_pool_opts po = {
        .processes = PROCESSES,
        .initializer = seed_random,
        .ctx = mproc_get_context(method),
    };
    mproc_pool *pool;
    check(mproc_pool_new(&pool, &po), "Pool");

    mproc_value *tasks = mproc_value_list(); /* TASKS */
    for (int i = 0; i < 10; i++)
        mproc_value_append(tasks, task("mul", i, 7));
    for (int i = 0; i < 10; i++)
        mproc_value_append(tasks, task("plus", i, 8));

    /* results = [pool.apply_async(calculate, t) for t in TASKS] */
    mproc_result *results[NTASKS];
    for (size_t i = 0; i < NTASKS; i++)
        check(mproc_pool_apply_async(pool, mproc_task_star(calculate),
                                     mproc_value_at(tasks, i), NULL, &results[i]),
              "apply_async");
    /* imap_it = pool.imap(calculatestar, TASKS), and imap_unordered */
    mproc_imap *imap_it, *imap_unordered_it;
    check(mproc_pool_imap(pool, mproc_task_value(calculatestar), tasks, NULL, &imap_it), "imap");
    check(mproc_pool_imap_unordered(pool, mproc_task_value(calculatestar), tasks, NULL,
                                    &imap_unordered_it),
          "imap_unordered");

    printf("Ordered results using pool.apply_async():\n");
    for (size_t i = 0; i < NTASKS; i++) {
        const mproc_value *x;
        check(mproc_result_get(results[i], &x, 30.0), "get"); /* r.get() */
        printf("\t %s\n", mproc_value_as_str(x, NULL));
        mproc_result_free(results[i]);
    }
    printf("\n");

    printf("Ordered results using pool.imap():\n");
    print_imap(imap_it);

    printf("Unordered results using pool.imap_unordered():\n");
    print_imap(imap_unordered_it);

    printf("Ordered results using pool.map() --- will block till complete:\n");
    mproc_value *mapped;
    check(mproc_pool_map(pool, mproc_task_value(calculatestar), tasks, NULL, &mapped, 60.0),
          "map");
    for (size_t i = 0; i < mproc_value_len(mapped); i++)
        printf("\t %s\n", mproc_value_as_str(mproc_value_at(mapped, i), NULL));
    printf("\n");
    mproc_value_free(mapped);
    mproc_pool_free(pool); /* end of `with`: terminate() */

    /* The seed's pointer to concurrent.futures, the simpler interface:
     *   with ProcessPoolExecutor(PROCESSES) as ex:
     *       fs = [ex.submit(calculate, *t) for t in TASKS]
     *       for f in as_completed(fs):
     *           print('\t', f.result()) */
    printf("Results in completion order using concurrent.futures.as_completed():\n");
    mproc_executor_opts eo = {
        .max_workers = PROCESSES,
        .initializer = seed_random,
        .ctx = mproc_get_context(method),
    };
    mproc_executor *ex;
    check(mproc_executor_new(&ex, &eo), "ProcessPoolExecutor");
    mproc_future *fs[NTASKS];
    for (size_t i = 0; i < NTASKS; i++)
        check(mproc_executor_submit(ex, mproc_task_star(calculate), mproc_value_at(tasks, i),
                                    &fs[i]),
              "submit");
    mproc_as_completed *ac;
    check(mproc_as_completed_new(fs, NTASKS, &ac), "as_completed");
    mproc_future *f;
    int rc;
    while ((rc = mproc_as_completed_next(ac, &f, 30.0)) == 0) {
        const mproc_value *x;
        check(mproc_future_result(f, &x, 0), "result"); /* f.result() */
        printf("\t %s\n", mproc_value_as_str(x, NULL));
    }
    if (rc != MPROC_ECLOSED)
        check(rc, "as_completed");
    mproc_as_completed_free(ac);
    mproc_executor_free(ex); /* end of `with`: shutdown(wait=True) */
    for (size_t i = 0; i < NTASKS; i++)
        mproc_future_free(fs[i]);
    mproc_value_free(tasks);
    return 0;
}
