/* mpi.c — libmproc_mpi through an installed mproc: a singleton MPI run (no
 * mpirun) initialises, has no worker ranks, and says how to launch. */
#include <stdio.h>
#include <string.h>
#include <mproc.h>
#include <mproc/mpi.h>

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    mproc_executor *ex = NULL;
    mproc_executor_opts o = {.backend = &mproc_executor_mpi};
    int rc = mproc_have_mpi() ? mproc_mpi_init(&argc, &argv, NULL) : MPROC_ENOSYS;
    if (rc == 0 && (mproc_mpi_size() != 1 || mproc_executor_new(&ex, &o) != MPROC_ESTATE ||
                    !strstr(mproc_errmsg(), "mpirun")))
        rc = MPROC_EPROTO;
    if (rc == 0)
        rc = mproc_mpi_finalize();
    if (rc != 0) {
        fprintf(stderr, "consumer_mpi: %s %s\n", mproc_strerror(rc), mproc_errmsg());
        return 1;
    }
    puts("consumer_mpi: libmproc_mpi works through the installed library");
    return 0;
}
