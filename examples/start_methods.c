/* start_methods.c — seed 001's start-method example in C.
 *
 *   def foo(q): q.put('hello')
 *   if __name__ == '__main__':
 *       mp.set_start_method('spawn')          # or: ctx = mp.get_context('spawn')
 *       p = mp.Process(target=foo, args=(q,)); p.start(); print(q.get()); p.join()
 *
 * Until queues exist the child answers over a pipe handed to it in its args,
 * which works the same under fork, spawn and forkserver. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <mproc.h>

static int foo(mproc_args *args)
{
    int out = mproc_args_fd(args, 0);
    char msg[64];
    int n = snprintf(msg, sizeof msg, "hello from %s (pid %d)",
                     mproc_process_name(mproc_current_process()), (int)getpid());
    return mproc_write_all(out, msg, (size_t)n) == 0 ? 0 : 1;
}

/* Start foo with `ctx` (NULL = the global start method), print what it says. */
static int run(const mproc_context *ctx)
{
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0)
        return 1;
    mproc_args *args = mproc_args_new();
    mproc_args_add_fd(args, pipefd[1]);
    mproc_process_opts opts = {.ctx = ctx};
    mproc_process *p;
    int rc = mproc_process_new(&p, foo, args, &opts);
    mproc_args_free(args);
    if (rc == 0)
        rc = mproc_process_start(p);
    if (rc != 0) {
        fprintf(stderr, "start failed: %s: %s\n", mproc_strerror(rc), mproc_errmsg());
        return 1;
    }
    close(pipefd[1]);
    char buf[128] = {0};
    size_t got = 0;
    mproc_read_all(pipefd[0], buf, sizeof buf - 1, &got); /* until the child closes it */
    close(pipefd[0]);
    mproc_process_join(p, MPROC_FOREVER);
    printf("  %-10s -> \"%s\", exit code %d\n",
           mproc_start_method_name(mproc_process_start_method(p)), buf, mproc_process_exitcode(p));
    mproc_process_close(p);
    return 0;
}

int main(int argc, char **argv)
{
    /* First thing in main(): in a spawned child this runs foo and never returns. */
    mproc_init(&argc, &argv);

    puts("global start method, set once (mp.set_start_method('spawn')):");
    mproc_set_start_method(MPROC_START_SPAWN, false);
    if (run(NULL))
        return 1;

    puts("per-call contexts (mp.get_context(method)):");
    const mproc_start_method methods[] = {MPROC_START_FORK, MPROC_START_SPAWN,
                                          MPROC_START_FORKSERVER};
    for (size_t i = 0; i < 3; i++)
        if (run(mproc_get_context(methods[i])))
            return 1;
    return 0;
}
