/* mpi_int.h — private to libmproc_mpi: the messages between rank 0 and the
 * worker ranks, and the state the MPI layer keeps on rank 0. Uses only mproc's
 * public API (it is a separate library). */
#ifndef MPROC_MPI_INT_H
#define MPROC_MPI_INT_H

#include <mpi.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "mproc/core.h"
#include "mproc/futures.h"
#include "mproc/mpi.h"

#define MPI_UNUSED(x) ((void)(x))
#define fail mproc_error_set

/* Message tags on the layer's own communicator (a dup of MPI_COMM_WORLD). A
 * worker receives with MPI_ANY_TAG from rank 0, so MPI's non-overtaking rule
 * keeps them in the order sent. */
enum {
    TAG_DEF = 1,    /* rank 0 -> worker: function definitions, see mdef */
    TAG_BATCH = 2,  /* rank 0 -> worker: mbatch then the task records */
    TAG_RESULT = 3, /* worker -> rank 0: mresult then the item outcomes */
    TAG_STOP = 4,   /* rank 0 -> worker: exit (empty) */
};

#define MPI_MAGIC 0x314d504du /* "MPM1": a version change fails loudly */

/* TAG_DEF: records {u32 fn_id, u32 len, len bytes of mproc_task_ref}, in
 * fn_id order, continuing the ids the worker knows. */

/* TAG_BATCH: this header, then ntasks records {u32 fn_id, u32 nitems, then
 * nitems x {u32 len, input in wire form}}. */
typedef struct mbatch {
    uint32_t magic;
    uint32_t ntasks;
    uint64_t seq; /* per worker, from 0 */
} mbatch;

/* TAG_RESULT: this header, then for every item of every task of the batch,
 * in order: {i32 code, u32 len, output in wire form (code 0) or message}. */
typedef struct mresult {
    uint32_t magic;
    uint32_t ntasks;
    uint64_t seq; /* the batch's */
    uint64_t ns;  /* time spent running its tasks */
} mresult;

/* The liveness channel: two TCP connections per worker rank to rank 0. On the
 * "mark" one the worker writes MARK_RESULT just before it sends a batch's
 * results: rank 0 sleeps in poll() instead of spinning in MPI, and after the
 * worker's death (EOF) knows exactly which batches it finished. Rank 0 never
 * writes to it, so the worker's kernel closes it with a FIN (no RST that
 * could drop the last marks). On the "wake" one rank 0 writes a byte with
 * every batch it sends (a worker waiting for work sleeps in poll() on it),
 * and its EOF tells a worker that rank 0 died. */
#define MARK_RESULT 'R'
enum { CH_MARK = 0, CH_WAKE = 1 };

/* The hello a worker sends on each connection; rank 0 answers one byte. */
typedef struct mhello {
    uint8_t token[16]; /* random, from rank 0 over MPI: only our ranks connect */
    uint32_t rank;
    uint32_t channel;
} mhello;

/* A worker rank as rank 0 sees it. */
typedef struct mpi_peer {
    int fd[2];          /* CH_MARK, CH_WAKE; -1 once closed */
    bool alive;
    uint32_t ntaught;   /* functions defined on it */
} mpi_peer;

/* A function tasks were submitted with (rank 0). */
typedef struct mpi_fn {
    mproc_task task;
    mproc_buf def; /* the TAG_DEF record */
} mpi_fn;

/* The MPI layer on rank 0 (workers use only comm, rank, size). */
typedef struct mpi_global {
    pthread_mutex_t mu; /* fns, exec, state; peers' alive flags and ntaught */
    enum { MG_NONE, MG_UP, MG_DOWN } state;
    bool we_init;       /* mproc_mpi_init called MPI_Init_thread */
    pid_t pid;
    MPI_Comm comm;
    int rank, size;
    mpi_peer *peers;    /* [size]; [0] unused */
    atomic_int nalive;
    mpi_fn *fns;
    size_t nfns;
    void *exec;         /* the live executor's backend state, or NULL */
    void **grave;       /* buffers of sends to dead ranks, freed after MPI_Finalize */
    size_t ngrave;
} mpi_global;

extern mpi_global mpi__g;

/* A function's id (rank 0; under mpi__g.mu), registering it on first use. */
int mpi__fn_id(mproc_task task, uint32_t *id);

/* Rank 0: rank w is dead: close its channels (under mpi__g.mu). */
void mpi__peer_dead(int w);

/* Keep a buffer an abandoned MPI request may still point to until finalize. */
void mpi__bury(void *buf);

/* Shut the live executor down (wait) before finalize (executor.c): 0, or
 * MPROC_EDEADLK from its own thread (a done-callback). */
int mpi__exec_stop(void *exec);

/* The worker rank's loop (worker.c): 0 after rank 0's STOP, 1 when rank 0
 * is gone (or the worker cannot go on). */
int mpi__serve(void);

/* An MPI error code as text, into buf. */
const char *mpi__errstr(int code, char *buf, size_t len);

/* Fields of records inside messages, unaligned, in native byte order: every
 * rank runs the same build (function references check the build-id), so the
 * same architecture. */
static inline uint32_t mpi__ld32(const uint8_t *p)
{
    uint32_t v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

static inline void mpi__st32(uint8_t *p, uint32_t v)
{
    __builtin_memcpy(p, &v, sizeof v);
}

#endif
