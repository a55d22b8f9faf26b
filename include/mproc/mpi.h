/* mproc/mpi.h — the Executor on MPI ranks (libmproc_mpi), the counterpart of
 * mpi4py.futures: the same mproc/futures.h API, with tasks run by the other
 * ranks of an MPI job, on this machine or many.
 *
 *     int main(int argc, char **argv)
 *     {
 *         mproc_init(&argc, &argv);
 *         if (mproc_mpi_init(&argc, &argv, NULL) != 0) {  // ranks > 0 never return:
 *             fprintf(stderr, "%s\n", mproc_errmsg());     // they serve tasks, then exit
 *             return 1;
 *         }
 *         mproc_executor *ex;
 *         mproc_executor_new(&ex, &(mproc_executor_opts){.backend = &mproc_executor_mpi});
 *         ... submit, map, as_completed, wait: as with the local backend ...
 *         mproc_executor_free(ex);
 *         return mproc_mpi_finalize();                   // lets the worker ranks exit
 *     }
 *
 * Launch: `mpirun --enable-recovery -n 4 ./prog` runs main() on rank 0 and
 * three worker ranks. Without --enable-recovery Open MPI ends the whole job
 * when a rank dies; with it, the dead rank's tasks fail with MPROC_EWORKER and
 * the rest go on (docs/scale-out.md). A task's function travels as (build-id,
 * offset) like under spawn, so every rank must run the same build; its input
 * and output travel as MessagePack (bytes tasks: raw bytes). Nothing else
 * crosses: shared memory, queues, locks and managers stay per machine.
 *
 * Link with libmproc_mpi (CMake: mproc::mproc_mpi; pkg-config: mproc-mpi).
 * This header is not part of <mproc.h>, because it needs that library; the
 * core library never links MPI. mproc_have_mpi() (mproc/futures.h) says
 * whether this mproc was built with it. */
#ifndef MPROC_MPI_H
#define MPROC_MPI_H

#include <stdbool.h>

#include "futures.h"

#ifdef __cplusplus
extern "C" {
#endif

#pragma GCC visibility push(default)

typedef struct mproc_mpi_opts {
    /* Ask MPI for MPI_THREAD_MULTIPLE instead of MPI_THREAD_SERIALIZED: set it
     * when the program makes MPI calls of its own on rank 0 while an executor
     * runs (the executor's thread talks MPI then too; its messages go over a
     * communicator of its own either way). Ignored if MPI was initialised
     * before mproc_mpi_init; then the level the program chose must be at
     * least MPI_THREAD_SERIALIZED. */
    bool thread_multiple;
    /* Bound on setting up the liveness channels (a TCP connection from each
     * worker rank to rank 0); 0 = 30 s. */
    double connect_timeout;
} mproc_mpi_opts;

/* Initialise MPI (unless the program already did) and mproc's MPI layer.
 * Collective: every rank calls it, first thing in main() after mproc_init.
 *
 * On rank 0 it returns 0, and the program goes on with its main logic; an
 * atexit handler calls mproc_mpi_finalize if the program does not.
 * On every other rank it NEVER returns: the rank serves tasks until rank 0
 * calls mproc_mpi_finalize (or dies), then finalises MPI and exits the
 * process (status 0; 1 if rank 0 died or setup failed there). So code after
 * this call runs on rank 0 only.
 *
 * Without mpirun (a singleton: world size 1) it returns 0 with no worker
 * ranks; mproc_executor_new on the MPI backend then fails with MPROC_ESTATE
 * and says how to launch. It also ignores SIGPIPE if it was at its default,
 * since Open MPI's TCP transport writes to sockets of ranks that may have
 * died, and sets OMPI_MCA_async_mpi_finalize=1 unless set (Open MPI's
 * finalize fence can hang after a rank died; docs/scale-out.md).
 *
 * Errors (rank 0): MPROC_ESTATE (called twice, or MPI already initialised
 * below MPI_THREAD_SERIALIZED), MPROC_EIO (an MPI call failed), the socket
 * errors of the liveness setup (MPROC_ETIMEDOUT, MPROC_ECONNREFUSED, ...);
 * mproc_errmsg() says which. argc/argv may be NULL. */
int mproc_mpi_init(int *argc, char ***argv, const mproc_mpi_opts *opts);

/* Rank 0: end the MPI layer. An executor still running is shut down first
 * (waiting for its tasks; free it afterwards as usual, but not concurrently
 * with this call); the worker ranks are told to exit; then MPI is finalised
 * if mproc_mpi_init initialised it. Idempotent: 0 when done (or never
 * initialised), MPROC_EIO if MPI_Finalize failed, MPROC_EDEADLK from a
 * done-callback (nothing is done then), MPROC_ESTATE in a fork child.
 * Afterwards executors on the MPI backend cannot start. */
int mproc_mpi_finalize(void);

/* This process's rank in MPI_COMM_WORLD and the world size (-1 and 0 before
 * mproc_mpi_init). */
int mproc_mpi_rank(void);
int mproc_mpi_size(void);

/* The worker ranks alive now as rank 0 sees them (world size - 1 minus the
 * dead ones); 0 before mproc_mpi_init or after finalize. */
int mproc_mpi_workers(void);

/* The executor backend: tasks run on the worker ranks.
 * mproc_executor_opts on this backend: max_workers = use at most that many
 * worker ranks (0 = all); initializer, initargs, max_tasks_per_child, ctx and
 * retry_crashed are not supported (MPROC_EINVAL); backend_opts: NULL.
 * mproc_executor_new fails with MPROC_ENOINIT before mproc_mpi_init, with
 * MPROC_ESTATE on a rank other than 0, after mproc_mpi_finalize, while another
 * MPI executor is alive (one at a time: the ranks are shared), or without
 * worker ranks.
 *
 * Tasks go to the ranks in batches, several batches per rank in flight, and
 * come back in batches. A worker rank that dies fails the batch it was running
 * (the task that killed it, and tasks sent with it that had not reported yet)
 * with MPROC_EWORKER; batches it had not started go to the other ranks. With
 * no worker rank left, the remaining tasks fail with MPROC_EWORKER. A future
 * is "running" once its batch was sent to a rank; cancel works until then.
 * Done-callbacks run on the executor's MPI thread. */
extern const mproc_executor_backend mproc_executor_mpi;

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif

#endif
