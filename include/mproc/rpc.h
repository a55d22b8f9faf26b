/* mproc/rpc.h — remote procedure calls: a handler of named C functions, a
 * server that runs it for many clients at once, and proxies that call it.
 * The counterpart of seed 001's RPCHandler / rpc_server / RPCProxy.
 *
 * Wires (how a call looks on the network):
 *   - MPROC_RPC_MSGPACK: msgpack-rpc (github.com/msgpack-rpc spec):
 *     request [0, msgid, method, params], response [1, msgid, error, result],
 *     notification [2, method, params]; clients in any language work.
 *   - MPROC_RPC_PYTHON: seed 001's wire: each frame is a pickled bytes object
 *     holding pickle((name, args, kwargs)), answered with pickle(bytes of
 *     pickle(result or exception)), exactly what the seed's RPCProxy and
 *     RPCHandler send, so they talk to C unmodified.
 * Transports:
 *   - MPROC_RPC_CONNECTION: Connections (mproc/connection.h: AF_UNIX or TCP
 *     addresses, framing and the authkey handshake of Python's
 *     Listener/Client). Both wires.
 *   - MPROC_RPC_STREAM: msgpack-rpc's own transport, a plain stream of
 *     MessagePack objects on the socket (no framing, no authkey), which is
 *     what msgpack-rpc libraries of other languages speak. msgpack wire only.
 *   - MPROC_RPC_ZMQ: ZeroMQ (optional: only when built with libzmq, see
 *     mproc_rpc_have_zmq(); otherwise MPROC_ENOSYS). Both wires, one request
 *     or answer per ZeroMQ message. Details at mproc_rpc_transport.
 *
 * Server model: one thread per connection, as in the seed (simple, and a
 * slow call only holds up its own client); max_connections bounds them.
 * ZeroMQ servers differ: one thread receives every request and hands it to
 * a fixed pool of worker threads (see MPROC_RPC_ZMQ). Calls on one
 * connection are answered in order; a client that pipelines requests
 * without reading answers can fill both socket buffers and stall (as with
 * any blocking server): keep a bounded number in flight.
 * Waiting: each side polls its socket for 50 us before it sleeps, which
 * makes a loopback call ~8 us instead of ~55 us on a 2-vCPU VM.
 *
 * Shared memory: a proxy of the Connection transport on the server's own
 * machine (unix socket, or TCP to any of the machine's addresses) moves its
 * calls into two shared-memory queues after the handshake, unless either
 * side sets no_shm. It asks with the reserved call "mproc.shm" (names
 * starting "mproc." cannot be registered): a server of another kind (the
 * seed's Python server, say) answers it with an error and the proxy stays
 * on the socket, as it does when the server runs on another machine or
 * its descriptors cannot be opened (/proc/<pid>/fd of another user). The
 * frames on the queues are the wire's own; only the transport changes:
 * ~1 us a call instead of ~5-10 us. The socket stays open and quiet: each
 * side learns from it, within 0.1 s, that the other is gone. */
#ifndef MPROC_RPC_H
#define MPROC_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "value.h"

#ifdef __cplusplus
extern "C" {
#endif

#pragma GCC visibility push(default)

typedef struct mproc_rpc_handler mproc_rpc_handler;
typedef struct mproc_rpc_server mproc_rpc_server;
typedef struct mproc_rpc_proxy mproc_rpc_proxy;

/* ------------------------------------------------------------ handler */

/* A registered function. args[0..nargs) are the positional arguments and
 * `kwargs` a map of keyword arguments or NULL (all borrowed). Store a new
 * value in *result (NULL = nil) and return 0, or fail: return
 * mproc_rpc_error("ValueError", "bad %d", x) to send an exception of that
 * Python type with that message, or any negative code (sent as an
 * "Exception" naming the code). `ud` is the pointer given at registration.
 * Functions run on the server's connection threads, several at once. */
typedef int (*mproc_rpc_fn)(mproc_value *const *args, size_t nargs, const mproc_value *kwargs,
                            mproc_value **result, void *ud);

/* Inside an mproc_rpc_fn: set the exception sent back (`type`: a Python
 * builtin exception name, NULL = "Exception"; message cut at 255 bytes)
 * and return MPROC_EREMOTE. */
int mproc_rpc_error(const char *type, const char *fmt, ...) MPROC_PRINTF(2, 3);

/* A new empty handler. 0 or MPROC_ENOMEM. */
int mproc_rpc_handler_new(mproc_rpc_handler **out);
/* Register `fn` under `name` (copied; 1 to 255 bytes). Safe while servers
 * run. 0, MPROC_EEXIST (name taken), MPROC_EINVAL, MPROC_ENOMEM. */
int mproc_rpc_handler_register(mproc_rpc_handler *h, const char *name, mproc_rpc_fn fn, void *ud);
/* Remove `name`; calls already running finish. 0 or MPROC_ENOENT. */
int mproc_rpc_handler_unregister(mproc_rpc_handler *h, const char *name);
/* The registered names, sorted: a new list of str you free. */
int mproc_rpc_handler_names(const mproc_rpc_handler *h, mproc_value **out);
/* Call `name` here, as a server would: 0 with *result (new, nil for NULL),
 * MPROC_ENOENT (no such function), or the function's error (message in
 * mproc_errmsg(), exception type in *exc_type if not NULL: static or
 * thread-local, valid until the next call). */
int mproc_rpc_handler_call(mproc_rpc_handler *h, const char *name, mproc_value *const *args,
                           size_t nargs, const mproc_value *kwargs, mproc_value **result,
                           const char **exc_type);
/* Free. No server may be using it. NULL ok. */
void mproc_rpc_handler_free(mproc_rpc_handler *h);

/* ------------------------------------------------------------ server */

typedef enum mproc_rpc_wire {
    MPROC_RPC_MSGPACK = 0,
    MPROC_RPC_PYTHON = 1,
} mproc_rpc_wire;

/* Default largest request or reply: 16 MiB. */
#define MPROC_RPC_MAX_MESSAGE ((size_t)16 << 20)

typedef enum mproc_rpc_transport {
    MPROC_RPC_CONNECTION = 0,
    MPROC_RPC_STREAM = 1,
    /* ZeroMQ. Addresses are ZeroMQ endpoints prefixed "zmq:":
     * "zmq:tcp://127.0.0.1:5555", "zmq:ipc:///tmp/x"; a server given
     * "zmq:tcp://127.0.0.1:*" picks a port, and mproc_rpc_server_address
     * returns the bound endpoint ("zmq:tcp://127.0.0.1:41234"). Both wires.
     * No authkey (MPROC_EINVAL if one is given: ZeroMQ's CURVE security is
     * not wired), so bind to loopback or ipc on untrusted networks.
     * Server: a ROUTER socket; one thread receives and hands each request to
     * an idle worker thread of a fixed pool (max_connections is the pool
     * size here: 0 = 8, at most 64), so a slow call holds up one worker, not
     * the others. The request is the last frame of a message and the frames
     * before it (the envelope) go back with the answer, so REQ and DEALER
     * sockets of any ZeroMQ binding can be clients (a plain REQ socket is
     * tested). max_message caps each incoming frame (ZeroMQ drops a peer
     * that sends more). mproc_rpc_server_connections counts the ZeroMQ
     * connections open now (from the socket monitor's accepted and
     * disconnected events, read while the server runs: 0 before start and
     * after stop). stop lets calls in progress finish within its timeout,
     * then cuts ZeroMQ off (zmq_ctx_shutdown); a function still running is
     * waited for, as for the other transports.
     * Proxy: a DEALER socket (own ZeroMQ context, so two threads of its
     * own) sending [empty, request] like a REQ socket. connect never waits
     * and connect_timeout is unused: ZeroMQ connects in the background and
     * reconnects silently, so a server that is absent or died gives
     * MPROC_ETIMEDOUT on the next call, never MPROC_ECLOSED (the proxy is
     * marked closed only as for other transports after a Python-wire
     * timeout or a malformed answer). Requests sent meanwhile wait in
     * ZeroMQ's queue and run when a server comes (their late answers are
     * skipped by msgid); a call waits for room in that queue (1,000
     * requests) within its timeout. */
    MPROC_RPC_ZMQ = 2,
} mproc_rpc_transport;

/* true when mproc was built with libzmq (MPROC_RPC_ZMQ works). */
bool mproc_rpc_have_zmq(void);

typedef struct mproc_rpc_server_opts {
    mproc_rpc_wire wire;
    mproc_rpc_transport transport;
    /* Listener/Client handshake key; NULL = none (like authkey=None). */
    const void *authkey;
    size_t authkey_len;
    size_t max_message;     /* 0 = MPROC_RPC_MAX_MESSAGE; larger requests close the connection */
    size_t max_connections; /* served at once; 0 = 256; more are closed at accept
                               (ZeroMQ: worker threads, 0 = 8, at most 64) */
    bool no_shm;            /* never move local clients to shared memory */
    /* Close a connection that sends no request for this many seconds
     * (checked every 0.1 s; a call in progress is never cut). 0 = never,
     * as in the seed: then max_connections silent clients hold the server
     * full. Not for ZeroMQ (its connections cost no thread). */
    double idle_timeout;
} mproc_rpc_server_opts;

/* A server for `h` listening at `address` ("unix:@name", "unix:/path",
 * "tcp:host:port", port 0 picks one). Not serving yet. `h` must outlive it.
 * 0, the errors of mproc_listener_new, MPROC_EINVAL (bad options: the
 * stream transport with the Python wire or an authkey, ZeroMQ with an
 * authkey or an address without "zmq:"), MPROC_ENOSYS (ZeroMQ asked for,
 * not built in), -errno of zmq_bind (MPROC_EINVAL for a malformed
 * endpoint), MPROC_ENOMEM. */
int mproc_rpc_server_new(mproc_rpc_server **out, mproc_rpc_handler *h, const char *address,
                         const mproc_rpc_server_opts *opts);
/* The bound address (the real port for tcp port 0). Owned by the server. */
const char *mproc_rpc_server_address(const mproc_rpc_server *s);
/* Serve in a background thread. 0, MPROC_ESTATE (serving), -errno. */
int mproc_rpc_server_start(mproc_rpc_server *s);
/* Stop: close the listener (new clients are refused), let calls in
 * progress finish (up to `timeout` seconds, then their connections are
 * cut), close every connection and wait for the threads. A function that
 * never returns keeps stop waiting: threads are not cancelled. Idempotent.
 * 0 or MPROC_ETIMEDOUT (calls were cut). */
int mproc_rpc_server_stop(mproc_rpc_server *s, double timeout);
/* Connections being served now. */
size_t mproc_rpc_server_connections(const mproc_rpc_server *s);
/* Stop (5 s) and free. NULL ok. */
void mproc_rpc_server_free(mproc_rpc_server *s);

/* ------------------------------------------------------------ proxies */

typedef struct mproc_rpc_proxy_opts {
    mproc_rpc_wire wire;
    mproc_rpc_transport transport;
    const void *authkey;
    size_t authkey_len;
    size_t max_message;     /* 0 = MPROC_RPC_MAX_MESSAGE */
    double connect_timeout; /* 0 = 30 s */
    bool no_shm;            /* stay on the socket (no "mproc.shm" call at connect) */
} mproc_rpc_proxy_opts;

/* Connect to an RPC server. One proxy is one connection, used by one thread
 * at a time. With the Connection transport, connect also asks the server
 * for shared memory (see "Shared memory" above; mproc_rpc_proxy_shm tells
 * whether it got it). 0, the errors of mproc_client_connect (MPROC_EAUTH,
 * MPROC_ECONNREFUSED, ...), MPROC_ETIMEDOUT (no answer to the shared-memory
 * question within connect_timeout); for ZeroMQ MPROC_EINVAL (bad endpoint or an
 * authkey) or MPROC_ENOSYS (not built in), never a refusal. */
int mproc_rpc_connect(mproc_rpc_proxy **out, const char *address, const mproc_rpc_proxy_opts *opts);

/* Call `method` with the positional arguments in the list `args` (NULL =
 * none; borrowed), waiting at most `timeout` seconds for the answer.
 * 0 with *result (new; nil when the function returns nothing; result may be
 * NULL to drop it). Errors: MPROC_EREMOTE (the function raised: its message
 * in mproc_errmsg(), its exception type in mproc_rpc_proxy_error_type()),
 * MPROC_ETIMEDOUT (the proxy stays usable: a late answer is skipped by its
 * msgid; on the Python wire, which has no ids, the connection is closed and
 * later calls give MPROC_ECLOSED; on ZeroMQ also when its queue for an
 * absent server is full: nothing was sent, the proxy stays usable),
 * MPROC_ECLOSED (server gone; not on ZeroMQ, see MPROC_RPC_ZMQ),
 * MPROC_EMSGSIZE, MPROC_EPROTO (a malformed answer), MPROC_EINVAL (args not
 * a list). Unknown functions come back as MPROC_EREMOTE with the server's
 * message. */
int mproc_rpc_call(mproc_rpc_proxy *p, const char *method, const mproc_value *args,
                   mproc_value **result, double timeout);
/* Same with keyword arguments (a map of str keys, or NULL): the Python wire
 * passes them as **kwargs; msgpack-rpc has none (MPROC_EINVAL if given). */
int mproc_rpc_call_kw(mproc_rpc_proxy *p, const char *method, const mproc_value *args,
                      const mproc_value *kwargs, mproc_value **result, double timeout);
/* msgpack-rpc notification: no answer. MPROC_EINVAL on the Python wire.
 * ZeroMQ waits up to 30 s for room in its queue (else MPROC_ETIMEDOUT). */
int mproc_rpc_notify(mproc_rpc_proxy *p, const char *method, const mproc_value *args);
/* true when the proxy's calls travel through shared memory. */
bool mproc_rpc_proxy_shm(const mproc_rpc_proxy *p);
/* The exception type of the last MPROC_EREMOTE ("ValueError"), or "". */
const char *mproc_rpc_proxy_error_type(const mproc_rpc_proxy *p);
/* Close and free. NULL ok. */
void mproc_rpc_close(mproc_rpc_proxy *p);

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif

#endif
