/* mproc/connection.h — framed message Connections over stream fds, Pipe(),
 * Listener/Client with the authkey handshake, and wait() on many objects.
 * Wire-compatible with CPython's multiprocessing.connection (framing and handshake). */
#ifndef MPROC_CONNECTION_H
#define MPROC_CONNECTION_H

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

/* ------------------------------------------------------------ connections */

/* A connection is used by one thread at a time (as in Python); different
 * connections are independent. */
typedef struct mproc_connection mproc_connection;

/* How send()/recv() turn values into message bytes. Pickle talks to Python's
 * Connection.send/recv; MessagePack to any language. send_bytes is raw. */
typedef enum mproc_codec {
    MPROC_CODEC_PICKLE = 0,
    MPROC_CODEC_MSGPACK = 1,
} mproc_codec;

/* Default largest message recv accepts: 256 MiB. */
#define MPROC_CONNECTION_MAX_MESSAGE ((size_t)256 << 20)

typedef struct mproc_connection_opts {
    mproc_codec codec;        /* for send()/recv(); default pickle */
    int pickle_protocol;      /* 0 = 4 (what Python 3.8-3.13 sends); 4 or 5 */
    size_t max_message;       /* 0 = MPROC_CONNECTION_MAX_MESSAGE; larger frames are refused */
    mproc_decode_limits limits; /* for recv(); zero = the codec defaults */
    /* Read exactly one frame per call instead of reading ahead into a 64 KiB
     * buffer. Set it when several processes read the same fd in turn (the
     * read-ahead of one would steal the others' messages). Costs one extra
     * read(2) per message. */
    bool no_readahead;
} mproc_connection_opts;

/* Wrap the stream fd `fd` (pipe end, socketpair end, connected socket) in a
 * Connection, readable and writable. Takes ownership of `fd` on success (close
 * closes it); on failure the caller keeps it. opts may be NULL. The fd is made
 * close-on-exec; its O_NONBLOCK flag is left as it is (it may be shared with
 * children) and both modes work: timeouts are implemented with poll(2).
 * 0, MPROC_EBADF, MPROC_EINVAL (bad opts), MPROC_ENOMEM. */
int mproc_connection_new(mproc_connection **out, int fd, const mproc_connection_opts *opts);

/* Same as mproc_connection_new, but only readable or only writable (Python's
 * Connection(handle, readable, writable)). At least one must be true. */
int mproc_connection_new2(mproc_connection **out, int fd, bool readable, bool writable,
                          const mproc_connection_opts *opts);

/* Python's Pipe(duplex): two connected Connections. duplex: a socketpair, both
 * ends read and write. !duplex: a pipe(2); *a is read-only and *b write-only,
 * as Pipe(False) returns (r, w). Both get `opts` (NULL = defaults). Free each
 * with mproc_connection_close(). 0, MPROC_EMFILE, MPROC_ENOMEM, -errno. */
int mproc_pipe(mproc_connection **a, mproc_connection **b, bool duplex,
               const mproc_connection_opts *opts);

/* Send one message of `len` bytes (len may be 0) as one frame: a 4-byte
 * big-endian length (or -1 then an 8-byte length beyond 0x7fffffff) and the
 * bytes, written in one syscall when possible. Blocks until all is written.
 * Never raises SIGPIPE. 0, MPROC_EPIPE / MPROC_ECONNRESET (peer gone),
 * MPROC_ESTATE (closed, broken or not writable), -errno. The caller keeps `buf`. */
int mproc_connection_send_bytes(mproc_connection *c, const void *buf, size_t len);

/* Receive one message into a malloc'd buffer (*buf; free() it; a 0-byte
 * message gives a non-NULL 1-byte allocation and *len 0). Waits at most
 * `timeout` seconds for the message to be complete (MPROC_FOREVER blocks):
 * MPROC_ETIMEDOUT leaves the partial frame buffered, so a later call resumes.
 * MPROC_ECLOSED: EOF between messages (Python's EOFError).
 * MPROC_EPROTO: EOF in the middle of a frame, or a negative length other than
 * -1 -- the connection is then broken. MPROC_EMSGSIZE: the frame is longer
 * than opts.max_message; nothing was read past its header and since the stream
 * cannot be resynchronised the connection is broken too: every later call
 * except close/fileno returns MPROC_ESTATE. MPROC_ENOMEM, -errno. */
int mproc_connection_recv_bytes(mproc_connection *c, void **buf, size_t *len, double timeout);

/* Receive one message into the caller's buffer `buf` of `cap` bytes; *len
 * gets its length. Timeout and errors as recv_bytes. If the message does not
 * fit (Python raises BufferTooShort carrying it), returns MPROC_EMSGSIZE with
 * *len set to the message's length and the message kept: the next recv call
 * (of any kind) returns that same message, so retry with a bigger buffer or
 * take it with recv_bytes. The connection stays usable. On every other error
 * *len is 0 (so an MPROC_EMSGSIZE with *len == 0 is the max_message refusal,
 * which breaks the connection). */
int mproc_connection_recv_bytes_into(mproc_connection *c, void *buf, size_t cap, size_t *len,
                                     double timeout);

/* Encode `v` with the connection's codec and send it as one message. The
 * caller keeps `v`. Errors as send_bytes, plus the encoder's (MPROC_EINVAL...). */
int mproc_connection_send(mproc_connection *c, const mproc_value *v);

/* Receive one message and decode it with the connection's codec. *out is a new
 * value the caller frees with mproc_value_free(). A Python exception sent to us
 * arrives as an ERROR value (returned with 0, not as a failure). A message that
 * does not decode gives the decoder's code (MPROC_EPROTO...) with the message
 * consumed: the connection stays usable. Otherwise errors as recv_bytes. */
int mproc_connection_recv(mproc_connection *c, mproc_value **out, double timeout);

/* Whether a message (or EOF) can be read without blocking, waiting up to
 * `timeout` seconds (0 = just check, as Python's poll() default). Returns 1
 * (readable, or EOF/error pending: the next recv will not block), 0 (timed
 * out), or MPROC_ESTATE (closed/broken/not readable) or -errno. */
int mproc_connection_poll(mproc_connection *c, double timeout);

/* The underlying descriptor (owned by the connection), or -1 once closed. */
int mproc_connection_fileno(const mproc_connection *c);

/* Whether the connection was opened for reading / writing. */
bool mproc_connection_readable(const mproc_connection *c);
bool mproc_connection_writable(const mproc_connection *c);

/* Close the fd and free the connection (NULL is fine). Unread buffered data is
 * dropped. Always succeeds; returns 0 (or -errno from close(2), after freeing). */
int mproc_connection_close(mproc_connection *c);

/* ------------------------------------------------------------------ wait */

/* One object for mproc_connection_wait: a connection, or else a raw fd
 * (a process sentinel from mproc_process_sentinel(), a listener's fileno...).
 * `ready` is an output. */
typedef struct mproc_wait_item {
    mproc_connection *conn; /* if not NULL, `fd` is ignored */
    int fd;
    bool ready;
} mproc_wait_item;

/* Python's multiprocessing.connection.wait(): wait up to `timeout` seconds
 * until at least one item is ready -- a connection has a message (already
 * buffered or on its fd) or EOF, an fd is readable or hung up (a sentinel:
 * the process ended). Sets every item's `ready` and returns how many are
 * ready: 0 when the timeout passed (as Python returns []), or MPROC_EINVAL
 * (n == 0 with MPROC_FOREVER, or a closed connection), MPROC_EBADF, -errno. */
int mproc_connection_wait(mproc_wait_item *items, size_t n, double timeout);

/* ------------------------------------------------------------ shareable */

/* Hands a Connection to a child under every start method (mproc_args_add_object).
 * The child gets its own Connection on a duplicate of the fd, with the same
 * direction and options; closing it does not close the parent's. Exporting a
 * connection that holds read-ahead data not yet received fails with
 * MPROC_ESTATE, because those bytes cannot follow the fd. */
extern const mproc_shareable_type mproc_connection_type;

/* -------------------------------------------------------- Listener/Client */

/* Addresses are strings:
 *   "unix:/path/to/socket"  AF_UNIX, a file (unlinked by the listener's close)
 *   "unix:@name"            AF_UNIX, Linux abstract namespace
 *   "tcp:host:port"         TCP; host a name or literal, "[::1]" for IPv6,
 *                           empty ("tcp::0") = all interfaces for a listener;
 *                           port 0 lets the listener pick a free port. */

typedef struct mproc_auth_opts {
    /* The shared secret; NULL = no authentication (like authkey=None). A
     * non-NULL key of length 0 is a valid (empty) key. Copied. */
    const void *authkey;
    size_t authkey_len;
    /* The digest of challenges we deliver: "sha256" (default, Python 3.12+
     * form "{sha256}" + 40 random bytes), "sha384", "sha3_256", "sha3_384", "md5"
     * (the "{md5}" form), or "legacy" (the 20-byte HMAC-MD5 challenge of Python
     * <= 3.11, which only a peer that answers raw HMAC-MD5 expects). Replies in
     * every form are accepted whichever is chosen; when answering we follow
     * the peer's form. */
    const char *digest;
    double handshake_timeout; /* whole handshake, seconds; 0 = 10 s; MPROC_FOREVER allowed */
} mproc_auth_opts;

typedef struct mproc_listener mproc_listener;

typedef struct mproc_listener_opts {
    int backlog;              /* 0 = 1 (Python's default) */
    mproc_auth_opts auth;
    mproc_connection_opts conn; /* for accepted connections */
} mproc_listener_opts;

/* Python's Listener(address, backlog, authkey): bind and listen. A unix path
 * that exists is an error (-EADDRINUSE, as in Python): remove stale sockets
 * yourself. TCP listeners set SO_REUSEADDR (as Python does).
 * 0, MPROC_EINVAL (bad address, with a message), -errno. Close with
 * mproc_listener_close(). */
int mproc_listener_new(mproc_listener **out, const char *address, const mproc_listener_opts *opts);

/* Accept one connection, waiting at most `timeout` seconds for a peer, then run
 * the handshake if there is an authkey (deliver_challenge then answer_challenge,
 * bounded by auth.handshake_timeout). *out is a new connection you close.
 * 0, MPROC_ETIMEDOUT (no peer), MPROC_EAUTH (wrong key, or the peer does not
 * speak the handshake: message says which), MPROC_ECLOSED (the peer left during
 * the handshake), MPROC_ETIMEDOUT (handshake stalled), -errno. A failed peer
 * is closed; the listener stays usable. */
int mproc_listener_accept(mproc_listener *l, mproc_connection **out, double timeout);

/* The bound address in the syntax above, with the real port for TCP port 0
 * ("tcp:127.0.0.1:40123"). Owned by the listener. */
const char *mproc_listener_address(const mproc_listener *l);

/* The listening socket (poll it for POLLIN to learn a peer is waiting). */
int mproc_listener_fileno(const mproc_listener *l);

/* Close the socket, unlink a unix path socket (not an abstract one) and free.
 * NULL is fine. */
void mproc_listener_close(mproc_listener *l);

typedef struct mproc_client_opts {
    mproc_auth_opts auth;
    double connect_timeout;   /* 0 = 30 s; MPROC_FOREVER allowed */
    mproc_connection_opts conn;
} mproc_client_opts;

/* Python's Client(address, authkey): connect, then if there is an authkey run
 * answer_challenge then deliver_challenge. *out is a new connection.
 * 0, MPROC_ECONNREFUSED, MPROC_ENOENT (no such unix socket), MPROC_ETIMEDOUT,
 * MPROC_EAUTH (key rejected either way, with a message), MPROC_ECLOSED,
 * MPROC_EINVAL (bad address), -errno. */
int mproc_client_connect(mproc_connection **out, const char *address, const mproc_client_opts *opts);

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif
#endif
