/* main.c — starts one child per start method through an installed mproc. */
#include <stdio.h>
#include <mproc.h>

static int child(mproc_args *a)
{
    int64_t v = 0;
    mproc_args_get_int(a, 0, &v);
    return (int)v;
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    for (int m = MPROC_START_FORK; m <= MPROC_START_FORKSERVER; m++) {
        mproc_args *a = mproc_args_new();
        mproc_args_add_int(a, 40 + m);
        mproc_process_opts o = {.ctx = mproc_get_context((mproc_start_method)m)};
        mproc_process *p;
        int rc = mproc_process_new(&p, child, a, &o);
        mproc_args_free(a);
        if (rc == 0)
            rc = mproc_process_start(p);
        if (rc == 0)
            rc = mproc_process_join(p, 30.0);
        if (rc != 0 || mproc_process_exitcode(p) != 40 + m) {
            fprintf(stderr, "consumer: %s failed: %s %s\n",
                    mproc_start_method_name((mproc_start_method)m), mproc_strerror(rc), mproc_errmsg());
            return 1;
        }
        mproc_process_close(p);
    }
    puts("consumer: fork, spawn and forkserver work through the installed library");
    return 0;
}
