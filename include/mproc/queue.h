/* mproc/queue.h — Queue, SimpleQueue and JoinableQueue: multi-producer,
 * multi-consumer message queues in shared memory, the counterparts of
 * multiprocessing's.
 *
 * A queue is one memfd segment: a header and a byte ring. put copies the
 * message into the ring and returns; get copies it out. There is no feeder
 * thread, so a put never delays process exit and nothing is lost when the
 * putting process exits right after put returns: unread messages stay in the
 * queue for any process that still holds a handle, and are discarded with the
 * segment when the last handle anywhere is closed.
 *
 * Messages are bytes of any length up to the queue's max_message; one larger
 * than the ring streams through it in chunks, in order, without interleaving
 * with other messages. Values (mproc/value.h) travel MessagePack-encoded.
 *
 * Death of any process at any point leaves the queue usable; no consumer ever
 * receives a torn or duplicated message; and at most the one message the dead
 * process was putting or getting is lost:
 *   - a producer killed inside put: its message is either delivered whole
 *     (the kill came after the commit) or never seen by anyone;
 *   - a consumer killed inside get: its message is either still in the queue
 *     for the next get (the kill came before the commit) or lost with it.
 * A handle may be used by several threads at once.
 *
 * Handles are per process: pass a queue to a child with
 * mproc_args_add_object(args, &mproc_queue_type, q) under any start method;
 * the child reads it with mproc_args_object(a, i, &mproc_queue_type) and must
 * not close it (the library releases the child's arguments when the target
 * returns). */
#ifndef MPROC_QUEUE_H
#define MPROC_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "process.h" /* mproc_shareable_type */
#include "value.h"

#ifdef __cplusplus
extern "C" {
#endif

#pragma GCC visibility push(default)

typedef struct mproc_queue mproc_queue;

/* Default ring size: 1 MiB (virtual: pages are touched as the ring fills). */
#define MPROC_QUEUE_DEFAULT_CAPACITY ((size_t)1 << 20)
/* Smallest and largest ring: 4 KiB and 1 GiB. */
#define MPROC_QUEUE_MIN_CAPACITY ((size_t)4 << 10)
#define MPROC_QUEUE_MAX_CAPACITY ((size_t)1 << 30)
/* Default largest message: 1 GiB. */
#define MPROC_QUEUE_MAX_MESSAGE ((size_t)1 << 30)

typedef struct mproc_queue_opts {
    /* Most messages held at once (Python's maxsize); 0 = no limit but the ring. */
    size_t maxsize;
    /* Ring bytes; 0 = MPROC_QUEUE_DEFAULT_CAPACITY. Rounded up to a power of
     * two within [MPROC_QUEUE_MIN_CAPACITY, MPROC_QUEUE_MAX_CAPACITY]. Each
     * message takes its length plus 16 bytes, rounded up to 8. */
    size_t capacity;
    /* Largest message put accepts; 0 = MPROC_QUEUE_MAX_MESSAGE (at most 2^40). */
    size_t max_message;
    /* Decoder limits for get_value; zero = the codec's defaults. */
    mproc_decode_limits limits;
} mproc_queue_opts;

/* A new empty Queue. opts may be NULL. Errors: MPROC_EINVAL (capacity or
 * max_message out of range), MPROC_ENOMEM, MPROC_EMFILE, -errno. */
int mproc_queue_new(mproc_queue **out, const mproc_queue_opts *opts);

/* SimpleQueue: a Queue without maxsize (opts->maxsize must be 0). Every queue
 * function works on it; Python's SimpleQueue offers put, get, empty, close. */
int mproc_simple_queue_new(mproc_queue **out, const mproc_queue_opts *opts);

/* JoinableQueue: a Queue that also counts unfinished tasks (task_done, join). */
int mproc_joinable_queue_new(mproc_queue **out, const mproc_queue_opts *opts);

/* Put a copy of data[0..len), waiting up to `timeout` seconds (MPROC_FOREVER
 * blocks, 0 tries once) for room: for maxsize, and for ring space. Returns 0
 * when the message is in the queue (delivered to exactly one get);
 * MPROC_ETIMEDOUT (nothing was delivered, even of a message larger than the
 * ring whose first chunks went out: consumers drop it); MPROC_EMSGSIZE (len >
 * max_message); MPROC_ECLOSED (the queue was shut down, or this handle closed);
 * MPROC_EINVAL (data NULL with len > 0). */
int mproc_queue_put(mproc_queue *q, const void *data, size_t len, double timeout);

/* put without waiting: MPROC_EFULL instead of MPROC_ETIMEDOUT. The whole
 * message must fit in the free space now, so a message larger than the ring
 * always gets MPROC_EFULL: put it with a timeout, which covers all of it. */
int mproc_queue_put_nowait(mproc_queue *q, const void *data, size_t len);

/* Take the oldest message, waiting up to `timeout` seconds for one. On 0,
 * *data is a malloc'd copy (free() it; never NULL, even for len 0) and *len
 * its length. MPROC_ETIMEDOUT when none came in time; MPROC_ECLOSED when the
 * queue is shut down and empty; MPROC_ENOMEM (the
 * message stays queued); MPROC_EPROTO if the ring holds garbage (memory
 * written by something other than mproc). Once a get has started receiving a
 * message larger than the ring it reads it to the end, past its timeout,
 * unless the producer aborts or dies (then it waits on for the next one). */
int mproc_queue_get(mproc_queue *q, void **data, size_t *len, double timeout);

/* get without waiting: MPROC_EEMPTY instead of MPROC_ETIMEDOUT. */
int mproc_queue_get_nowait(mproc_queue *q, void **data, size_t *len);

/* Take the oldest message into the caller's buffer buf[0..cap). If it does not
 * fit, returns MPROC_EMSGSIZE with *len set to its length and the message left
 * at the head of the queue (retry with a bigger buffer, or take it with get).
 * Otherwise as mproc_queue_get. */
int mproc_queue_get_into(mproc_queue *q, void *buf, size_t cap, size_t *len, double timeout);

/* Put the MessagePack encoding of `v` (the caller keeps v). Errors as put,
 * plus the encoder's. */
int mproc_queue_put_value(mproc_queue *q, const mproc_value *v, double timeout);

/* Take one message and decode it; *out is a new value (mproc_value_free it).
 * Errors as get, plus the decoder's (MPROC_EPROTO, MPROC_EMSGSIZE): a message
 * that does not decode is consumed, the queue stays usable. */
int mproc_queue_get_value(mproc_queue *q, mproc_value **out, double timeout);

/* Messages in the queue (put and not yet taken); a snapshot. Python's qsize,
 * which is reliable here on every platform. */
size_t mproc_queue_qsize(const mproc_queue *q);
/* qsize() == 0 / qsize() >= maxsize (never true without maxsize). Snapshots. */
bool mproc_queue_empty(const mproc_queue *q);
bool mproc_queue_full(const mproc_queue *q);

/* maxsize (0 = none), ring capacity and max_message, as the queue was made. */
size_t mproc_queue_maxsize(const mproc_queue *q);
size_t mproc_queue_capacity(const mproc_queue *q);
size_t mproc_queue_max_message(const mproc_queue *q);

/* Shut the queue down for every process: puts fail with MPROC_ECLOSED from
 * now on; gets take the messages still queued, then fail with MPROC_ECLOSED
 * instead of waiting. Wakes every waiter. A way to end consumer loops without
 * sentinel messages (like queue.Queue.shutdown() of Python 3.13; Python's
 * multiprocessing queues have none). Idempotent. */
void mproc_queue_shutdown(mproc_queue *q);
/* true once shut down. */
bool mproc_queue_is_shutdown(const mproc_queue *q);

/* JoinableQueue: mark one task (a message taken with get) done. Returns
 * MPROC_EOVERFLOW when called more times than messages were put (Python's
 * "task_done() called too many times"), MPROC_ESTATE on a queue that is not
 * joinable. */
int mproc_queue_task_done(mproc_queue *q);

/* JoinableQueue: wait until every message put so far has been marked done,
 * up to `timeout` seconds. 0, MPROC_ETIMEDOUT, MPROC_ESTATE (not joinable).
 * A message lost with a killed consumer is never marked done: use a timeout. */
int mproc_queue_join(mproc_queue *q, double timeout);

/* Messages put and not yet marked done (JoinableQueue; 0 otherwise). */
size_t mproc_queue_unfinished(const mproc_queue *q);

/* true for a JoinableQueue. */
bool mproc_queue_is_joinable(const mproc_queue *q);

/* Close this process's handle and free it (Python's close() + join_thread(),
 * which never blocks here: there is no feeder thread to flush). Messages stay
 * queued for other handles. NULL is ok. Do not call it while another thread
 * is inside a call on the same handle. */
void mproc_queue_close(mproc_queue *q);

/* Shareable type for mproc_args_add_object (every kind of queue). */
extern const mproc_shareable_type mproc_queue_type;

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif

#endif
