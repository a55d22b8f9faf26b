/* rpc_int.h — what every RPC transport shares. Private to src/rpc. */
#ifndef MPROC_RPC_INT_H
#define MPROC_RPC_INT_H

#include <stdbool.h>

#include "internal.h"
#include "mproc/rpc.h"

/* Serve one request message of `wire` with `h`: decode, call, and encode
 * the answer into `out` (*answer true when there is one to send: not for
 * notifications). 0 to go on with this client, else a code after which
 * the transport drops the client (after sending the answer, if any).
 * `max`: largest answer; a bigger result is answered with an error. */
int rpc__answer(mproc_rpc_handler *h, mproc_rpc_wire wire, size_t max, const void *data,
                size_t len, mproc_buf *out, bool *answer);

#endif
