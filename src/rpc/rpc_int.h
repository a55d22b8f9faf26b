/* rpc_int.h — what every RPC transport shares. Private to src/rpc. */
#ifndef MPROC_RPC_INT_H
#define MPROC_RPC_INT_H

#include <stdbool.h>

#include "internal.h"
#include "mproc/rpc.h"
#include "mproc/value.h"

/* Serve one request message of `wire` with `h`: decode, call, and encode
 * the answer into `out` (*answer true when there is one to send: not for
 * notifications). 0 to go on with this client, else a code after which
 * the transport drops the client (after sending the answer, if any).
 * `max`: largest answer; a bigger result is answered with an error.
 * later[0..1]: the result's and the request's values, for the caller to
 * free (mproc_value_free) after sending, when the other side is busy
 * with the answer rather than waiting for it; always set, maybe NULL. */
int rpc__answer(mproc_rpc_handler *h, mproc_rpc_wire wire, size_t max, const void *data,
                size_t len, mproc_buf *out, bool *answer, mproc_value *later[2]);

/* A buffer grown for a big message is given back after RPC_TRIM_AFTER
 * messages in a row that used at most an eighth of it (buffers above
 * RPC_TRIM_ABOVE only): one 64 MiB answer does not pin 64 MiB for the
 * connection's life, and a run of big messages does not reallocate.
 * `run` counts the small ones; true: free or shrink the buffer now. */
#define RPC_TRIM_ABOVE ((size_t)1 << 20)
#define RPC_TRIM_AFTER 16u
static inline bool rpc__trim_due(size_t cap, size_t used, uint32_t *run)
{
    if (cap <= RPC_TRIM_ABOVE || used > cap / 8) {
        *run = 0;
        return false;
    }
    if (++*run < RPC_TRIM_AFTER)
        return false;
    *run = 0;
    return true;
}

/* ------------------------------------------- shared memory (src/rpc/shm.c)
 * The Connection transport's channel for a proxy on the server's machine. */
#define RPC_SHM_METHOD "mproc.shm"
typedef struct rpc_shm rpc_shm;

/* Server: make a connection's two queues (messages up to `max_message`)
 * and the offer that names them ([1, boot id, pid, [fd, dev, ino, export]
 * x2]); `fd` is the connection's socket, watched for the client's end. */
int rpc__shm_offer(int fd, size_t max_message, rpc_shm **out, mproc_value **offer);
/* Proxy: open the queues of an offer. *is_offer false when it does not
 * have an offer's shape (a server of another kind: send no choice);
 * otherwise MPROC_ENOSYS when the server runs on another machine, other
 * codes when the queues cannot be opened here (stay on the socket then). */
int rpc__shm_take(int fd, const mproc_value *offer, rpc_shm **out, bool *is_offer);
/* Server: whether the connection's thread polls for the next call before
 * it sleeps (yes while the machine has a core for each client). */
void rpc__shm_set_spin(rpc_shm *ch, bool spin);
/* Put one frame, waiting until `d` for room: 0, MPROC_ETIMEDOUT (not
 * sent), MPROC_ECLOSED (the peer is gone), MPROC_EMSGSIZE. */
int rpc__shm_send(rpc_shm *ch, const void *data, size_t len, mproc_deadline d);
/* The next frame (valid until the next recv): 0, MPROC_ETIMEDOUT,
 * MPROC_ECLOSED, MPROC_EMSGSIZE (over `max`: dropped), MPROC_ENOMEM. A
 * frame larger than the ring whose sender stalls halfway (SIGSTOP) is
 * given up when the socket ends and, on the proxy, at `d` (ETIMEDOUT; its
 * rest is dropped by later receives); the server's `d` is only a slice. */
int rpc__shm_recv(rpc_shm *ch, mproc_deadline d, size_t max, const void **data, size_t *len);
void rpc__shm_free(rpc_shm *ch); /* NULL ok */

/* ------------------------------------------------ ZeroMQ (src/rpc/zmq.c)
 * The MPROC_RPC_ZMQ transport behind rpc.c's server and proxy. Built with
 * libzmq when MPROC_HAVE_ZMQ is defined; otherwise every function fails
 * with MPROC_ENOSYS and mproc_rpc_have_zmq() is false. Addresses are given
 * with their "zmq:" prefix. */
typedef struct rpc_zmq_server rpc_zmq_server;
typedef struct rpc_zmq_proxy rpc_zmq_proxy;

/* Bind a ROUTER at `address`; `o` is already defaulted (max_message set). */
int rpc__zmq_server_new(rpc_zmq_server **out, mproc_rpc_handler *h, const char *address,
                        const mproc_rpc_server_opts *o);
const char *rpc__zmq_server_address(const rpc_zmq_server *z); /* with "zmq:" */
int rpc__zmq_server_start(rpc_zmq_server *z);
int rpc__zmq_server_stop(rpc_zmq_server *z, double timeout);
size_t rpc__zmq_server_connections(const rpc_zmq_server *z);
void rpc__zmq_server_free(rpc_zmq_server *z); /* stops first */

int rpc__zmq_connect(rpc_zmq_proxy **out, const char *address, size_t max_message);
/* Send one request, waiting until `d` for room in ZeroMQ's queue:
 * 0 or MPROC_ETIMEDOUT (nothing was sent). */
int rpc__zmq_send(rpc_zmq_proxy *z, const void *data, size_t len, mproc_deadline d);
/* The next answer (*buf malloc'd): 0, MPROC_ETIMEDOUT, MPROC_EMSGSIZE. */
int rpc__zmq_recv(rpc_zmq_proxy *z, mproc_deadline d, void **buf, size_t *len);
void rpc__zmq_close(rpc_zmq_proxy *z);

#endif
