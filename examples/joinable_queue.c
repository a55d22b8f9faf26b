/* joinable_queue.c — a JoinableQueue of work items, consumers, and a results Queue.
 *
 *   def consumer(tasks, results):
 *       while True:
 *           try:
 *               n = tasks.get()
 *           except queue.ShutDown:      # instead of a None sentinel per consumer
 *               break
 *           results.put(n * n)
 *           tasks.task_done()
 *
 *   if __name__ == '__main__':
 *       tasks, results = JoinableQueue(), Queue()
 *       for n in range(1, 21):
 *           tasks.put(n)
 *       ps = [Process(target=consumer, args=(tasks, results)) for _ in range(3)]
 *       for p in ps: p.start()
 *       tasks.join()                    # every item taken and marked done
 *       tasks.shutdown()                # the consumers' next get ends their loop
 *       print(sum(results.get() for _ in range(20)))
 *       for p in ps: p.join()
 *
 * (multiprocessing's queues have no shutdown(); queue.Queue has since Python
 * 3.13. Here it ends every consumer loop without one sentinel per consumer.)
 * Pass "spawn" or "forkserver" to start the consumers another way. */
#include <stdio.h>
#include <stdlib.h>

#include <mproc.h>

#define N_ITEMS 20
#define N_CONSUMERS 3

static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "%s: %s (%s)\n", what, mproc_strerror(rc), mproc_errmsg());
        exit(1);
    }
}

static int consumer(mproc_args *args)
{
    mproc_queue *tasks = mproc_args_object(args, 0, &mproc_queue_type);
    mproc_queue *results = mproc_args_object(args, 1, &mproc_queue_type);
    for (;;) {
        mproc_value *v;
        int rc = mproc_queue_get_value(tasks, &v, MPROC_FOREVER); /* n = tasks.get() */
        if (rc == MPROC_ECLOSED)
            return 0; /* shut down and drained: done */
        if (rc != 0)
            return 1;
        int64_t n = mproc_value_as_int(v);
        mproc_value_free(v);
        mproc_value *sq = mproc_value_int(n * n);
        rc = mproc_queue_put_value(results, sq, MPROC_FOREVER); /* results.put(n * n) */
        mproc_value_free(sq);
        if (rc != 0 || mproc_queue_task_done(tasks) != 0) /* tasks.task_done() */
            return 1;
    }
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv); /* first: a spawned consumer runs from here */
    mproc_start_method method = MPROC_START_FORK;
    if (argc > 1 && mproc_start_method_parse(argv[1], &method) != 0) {
        fprintf(stderr, "usage: %s [fork|spawn|forkserver]\n", argv[0]);
        return 2;
    }
    mproc_queue *tasks, *results;
    check(mproc_joinable_queue_new(&tasks, NULL), "JoinableQueue");
    check(mproc_queue_new(&results, NULL), "Queue");

    int64_t expected = 0;
    for (int64_t n = 1; n <= N_ITEMS; n++) { /* tasks.put(n) */
        mproc_value *v = mproc_value_int(n);
        check(mproc_queue_put_value(tasks, v, MPROC_FOREVER), "put");
        mproc_value_free(v);
        expected += n * n;
    }
    /* Nobody consumes yet: join with a timeout gives up (Python's join() has none). */
    int rc = mproc_queue_join(tasks, 0.05);
    printf("before the consumers: join(timeout=0.05) -> %s, %zu unfinished\n",
           mproc_errname(rc), mproc_queue_unfinished(tasks));

    mproc_args *args = mproc_args_new();
    check(mproc_args_add_object(args, &mproc_queue_type, tasks), "args");
    check(mproc_args_add_object(args, &mproc_queue_type, results), "args");
    mproc_process_opts o = {.ctx = mproc_get_context(method)};
    mproc_process *ps[N_CONSUMERS];
    for (int i = 0; i < N_CONSUMERS; i++) {
        check(mproc_process_new(&ps[i], consumer, args, &o), "Process");
        check(mproc_process_start(ps[i]), "start");
    }
    mproc_args_free(args);

    check(mproc_queue_join(tasks, 10.0), "join"); /* tasks.join(), bounded */
    printf("%d %s consumers: join() -> 0, %zu unfinished, %zu results queued\n", N_CONSUMERS,
           mproc_start_method_name(method), mproc_queue_unfinished(tasks),
           mproc_queue_qsize(results));
    mproc_queue_shutdown(tasks); /* tasks.shutdown(): each consumer's get -> MPROC_ECLOSED */

    int64_t sum = 0;
    for (int i = 0; i < N_ITEMS; i++) {
        mproc_value *v;
        check(mproc_queue_get_value(results, &v, 10.0), "get"); /* results.get() */
        sum += mproc_value_as_int(v);
        mproc_value_free(v);
    }
    printf("sum of squares 1..%d = %lld (expected %lld): %s\n", N_ITEMS, (long long)sum,
           (long long)expected, sum == expected ? "ok" : "WRONG");

    int bad = sum != expected;
    for (int i = 0; i < N_CONSUMERS; i++) { /* p.join() */
        check(mproc_process_join(ps[i], 10.0), "join");
        if (mproc_process_exitcode(ps[i]) != 0) {
            fprintf(stderr, "consumer %d exited with %d\n", i, mproc_process_exitcode(ps[i]));
            bad = 1;
        }
        mproc_process_close(ps[i]);
    }
    /* After shutdown, put fails: Python 3.13's queue.ShutDown. */
    mproc_value *late = mproc_value_int(0);
    printf("put after shutdown -> %s\n", mproc_errname(mproc_queue_put_value(tasks, late, 0)));
    mproc_value_free(late);

    mproc_queue_close(results);
    mproc_queue_close(tasks);
    return bad;
}
