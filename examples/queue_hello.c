/* queue_hello.c — seed 001's Queue examples in C.
 *
 *   def foo(q):
 *       q.put('hello')
 *
 *   if __name__ == '__main__':
 *       ctx = mp.get_context('spawn')
 *       q = ctx.Queue()
 *       p = ctx.Process(target=foo, args=(q,))
 *       p.start(); print(q.get()); p.join()          # prints "hello"
 *
 * and
 *
 *   def f(q):
 *       q.put([42, None, 'hello'])
 *
 *   if __name__ == '__main__':
 *       q = Queue()
 *       p = Process(target=f, args=(q,))
 *       p.start()
 *       print(q.get())    # prints "[42, None, 'hello']"
 *       p.join()
 *
 * then a get with a timeout on the drained queue (Python: queue.Empty).
 * The first child always starts with spawn (a fresh exec of this program); the
 * second with the default start method: fork, or the one named in argv[1]
 * (mp.set_start_method). A queue crosses into a child under every method. */
#include <stdio.h>
#include <stdlib.h>

#include <mproc.h>

static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "%s: %s (%s)\n", what, mproc_strerror(rc), mproc_errmsg());
        exit(1);
    }
}

/* def foo(q): q.put('hello') — raw bytes this time. The child's handle is its
 * own; the library releases it when foo returns. */
static int foo(mproc_args *args)
{
    mproc_queue *q = mproc_args_object(args, 0, &mproc_queue_type);
    return mproc_queue_put(q, "hello", 5, MPROC_FOREVER) == 0 ? 0 : 1;
}

/* def f(q): q.put([42, None, 'hello']) — a value, sent MessagePack-encoded. */
static int f(mproc_args *args)
{
    mproc_queue *q = mproc_args_object(args, 0, &mproc_queue_type);
    mproc_value *v = mproc_value_list();
    mproc_value_append(v, mproc_value_int(42));
    mproc_value_append(v, mproc_value_nil());
    mproc_value_append(v, mproc_value_str("hello"));
    int rc = mproc_queue_put_value(q, v, MPROC_FOREVER);
    mproc_value_free(v);
    return rc == 0 ? 0 : 1;
}

/* p = Process(target=fn, args=(q,), ctx); p.start() */
static mproc_process *start(mproc_target_fn fn, mproc_queue *q, const mproc_context *ctx)
{
    mproc_args *args = mproc_args_new();
    check(mproc_args_add_object(args, &mproc_queue_type, q), "args");
    mproc_process_opts o = {.ctx = ctx};
    mproc_process *p;
    check(mproc_process_new(&p, fn, args, &o), "Process");
    check(mproc_process_start(p), "start");
    mproc_args_free(args);
    return p;
}

/* p.join(); the child must have succeeded. */
static void finish(mproc_process *p)
{
    check(mproc_process_join(p, MPROC_FOREVER), "join");
    int code = mproc_process_exitcode(p);
    const char *how = mproc_start_method_name(mproc_process_start_method(p));
    mproc_process_close(p);
    if (code != 0) {
        fprintf(stderr, "child (%s) exited with %d\n", how, code);
        exit(1);
    }
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv); /* first: a spawned child runs foo or f from here */
    mproc_start_method method = MPROC_START_FORK;
    if (argc > 1 && mproc_start_method_parse(argv[1], &method) != 0) {
        fprintf(stderr, "usage: %s [fork|spawn|forkserver]\n", argv[0]);
        return 2;
    }
    mproc_set_start_method(method, true); /* mp.set_start_method(method) */

    /* ctx = mp.get_context('spawn'); q = ctx.Queue() (a queue needs no context) */
    const mproc_context *ctx = mproc_get_context(MPROC_START_SPAWN);
    mproc_queue *q;
    check(mproc_queue_new(&q, NULL), "Queue");
    mproc_process *p = start(foo, q, ctx); /* ctx.Process(target=foo, args=(q,)).start() */
    void *data;
    size_t len;
    /* print(q.get()) — bounded, so a child that failed cannot hang us */
    check(mproc_queue_get(q, &data, &len, 10.0), "get");
    printf("spawn child put: %.*s\n", (int)len, (const char *)data);
    free(data);
    finish(p); /* p.join() */
    mproc_queue_close(q);

    /* q = Queue(); Process(target=f, args=(q,)).start() under the default method */
    check(mproc_queue_new(&q, NULL), "Queue");
    p = start(f, q, NULL);
    mproc_value *v;
    check(mproc_queue_get_value(q, &v, 10.0), "get"); /* print(q.get()) */
    printf("%s child put: ", mproc_start_method_name(mproc_get_start_method()));
    mproc_value_print(v, stdout); /* prints "[42, None, 'hello']" */
    mproc_value_free(v);
    finish(p);

    /* q.get(timeout=0.1) and q.get_nowait() on the now-empty queue: both raise
     * queue.Empty in Python; here the two cases have their own codes. */
    int rc = mproc_queue_get(q, &data, &len, 0.1);
    printf("get(timeout=0.1): %s\n", mproc_errname(rc)); /* MPROC_ETIMEDOUT */
    rc = mproc_queue_get_nowait(q, &data, &len);
    printf("get_nowait():     %s\n", mproc_errname(rc)); /* MPROC_EEMPTY */
    mproc_queue_close(q);
    return 0;
}
