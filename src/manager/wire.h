/* wire.h — the manager protocol, shared by client.c and server.c.
 *
 * A client connects to the server's Listener, runs the authkey handshake,
 * then sends a hello (MessagePack):
 *   ["mproc-manager", MGR_PROTO, session, want_shm, pid]
 * and the server answers [0, server_pid, key] (or [code, message]). When the
 * client asked for shared memory (unix sockets only) the server then sends,
 * as one SCM_RIGHTS message on the raw socket, the server's one shared
 * request queue and this connection's reply queue:
 *   u32 len1, u32 nfds1, export1, u32 len2, u32 nfds2, export2
 * (lengths in native byte order). After that the socket only tells each side
 * whether the other still lives.
 *
 * Requests: [object id, method, [args...], thread id] on a socket;
 *           [object id, method, [args...], thread id, key] on the shared queue
 * Replies:  [0, result] or [code, message]
 * Object id 0 is the server itself: create [typeid, [args]] -> [id, typeid],
 * incref [id] -> typeid, decref [id], bind [name, id], lookup [name] ->
 * [id, typeid], unbind [name], shutdown. */
#ifndef MPROC_MGR_WIRE_H
#define MPROC_MGR_WIRE_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "../codec/codec_int.h"
#include "internal.h"

#define MGR_MAGIC "mproc-manager"
#define MGR_PROTO 1
#define MGR_DEFAULT_MAX_MESSAGE ((size_t)64 << 20)
#define MGR_DEFAULT_MAX_CLIENTS 1024
#define MGR_TYPEID_MAX 63
/* MessagePack ext type of a reference to a managed object. Payload: the
 * object id as 8 bytes big-endian, then the typeid bytes (no NUL). */
#define MGR_EXT_REF 77
/* A blocked wait (server method, client reply) checks that its peer is
 * alive this often. */
#define MGR_SLICE_S 0.1
/* A client waiting for its reply polls MGR_SPIN_POLLS times, MGR_SPIN_GAP
 * pauses apart (the dispatcher on another core answers within about a
 * microsecond: a wide gap would add its width to every call), then
 * MGR_YIELD_POLLS times giving the CPU away (with more clients than cores
 * the dispatcher may need this very core), then sleeps. The dispatcher
 * polls the shared queue MGR_DISPATCH_POLLS times, MGR_DISPATCH_GAP pauses
 * apart (about 0.2 ms), before it sleeps. Measured on 2 cores: gaps of 32
 * pauses cost 0.8 us per call. */
#define MGR_SPIN_POLLS 400
#define MGR_SPIN_GAP 1
#define MGR_YIELD_POLLS 50
#define MGR_DISPATCH_POLLS 2000
#define MGR_DISPATCH_GAP 2

/* Ref payload: 8-byte big-endian id + typeid. */
static inline size_t mgr_ref_payload(uint8_t *out, uint64_t id, const char *typeid)
{
    size_t tl = strlen(typeid);
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(id >> (56 - 8 * i));
    memcpy(out + 8, typeid, tl);
    return 8 + tl;
}

#endif
