/* mproc/manager.h — Manager: a server process that holds shared objects
 * (dict, list, Namespace, Queue, Lock, Event, Value, Array, your own types)
 * and proxies through which any number of processes use them, on this
 * machine or over TCP. The counterpart of multiprocessing.Manager() and
 * BaseManager.
 *
 * Start a server with mproc_manager_new + mproc_manager_start (any start
 * method), or connect to a running one with mproc_manager_connect (address +
 * authkey: the Listener/Client handshake of mproc/connection.h). Create
 * objects (mproc_manager_dict, ...) and use them through their proxy with the
 * typed calls below (mproc_dict_set, mproc_list_append, ...) or the generic
 * mproc_proxy_call. Every call is one request to the server and one reply;
 * values cross as MessagePack (mproc/value.h).
 *
 * Transport: a client on the same machine (a "unix:" address) authenticates
 * over the socket, then talks through a pair of shared-memory queues; a TCP
 * client keeps the framed Connection. The server runs one thread per client
 * connection.
 *
 * Nesting: a managed object may hold references to other managed objects of
 * the same manager. mproc_proxy_ref() makes the reference value, store it like
 * any value (mproc_dict_set(d, key, ref)), and turn a reference you read back
 * into a proxy with mproc_manager_proxy(). As in Python, a plain list read
 * from a dict is a copy (changing it changes nothing on the server), while a
 * referenced managed list is shared. Unlike Python, a container holds a
 * counted reference: a nested object lives as long as something refers to it.
 * Reference cycles live until the server shuts down.
 *
 * Lifetime: an object lives while a proxy (in any process) or a container
 * refers to it. A reference that leaves a container for a caller (list/dict
 * pop, Queue get) keeps its object alive for that caller's handle for 60 s
 * or until mproc_manager_proxy() makes a proxy of it. A reference merely
 * read (dict get) is not held: as in Python, make the proxy while the
 * container still holds it. A client process that dies drops its proxies' references and
 * releases the Lock/RLock/Condition locks it held; a waiter that dies in a
 * Barrier breaks it. A server that dies makes every call fail with
 * MPROC_ECLOSED within about 0.1 s; no call waits forever on a dead peer. The
 * server started by mproc_manager_start exits when the process that started
 * it dies.
 *
 * Errors from the server come back as codes with a message in
 * mproc_errmsg(): MPROC_ENOENT (KeyError, missing attribute, unknown object),
 * MPROC_ERANGE (IndexError), MPROC_EINVAL (TypeError/ValueError), MPROC_ENOSYS
 * (no such method), MPROC_EREMOTE (a user type's error), and the codes of
 * each call below.
 *
 * Threads and processes: a manager handle and its proxies may be used by many
 * threads at once (each thread that calls concurrently gets a connection of
 * its own). Proxies are shareable objects: pass them to children with
 * mproc_args_add_object(args, &mproc_proxy_type, p) under any start method.
 * A fork child may also use the parent's handle and proxies directly: it
 * drops the inherited connections at fork and opens its own at its first
 * call. Keep the parent's proxy alive
 * until children that received it have started using it. */
#ifndef MPROC_MANAGER_H
#define MPROC_MANAGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "process.h"
#include "value.h"

#ifdef __cplusplus
extern "C" {
#endif

#pragma GCC visibility push(default)

typedef struct mproc_manager mproc_manager;
typedef struct mproc_proxy mproc_proxy;

/* ------------------------------------------------------------ user types */

/* A type of your own, served like the built-in ones (BaseManager.register).
 * Must be a static object of the program (under spawn and forkserver it
 * crosses to the server as a (build-id, offset) reference, like task
 * functions). The server serialises the calls on one object: at most one
 * create/call/destroy of an object runs at a time. */
typedef struct mproc_manager_type {
    const char *typeid; /* unique name, e.g. "Counter"; at most 63 bytes */
    /* Build a new object from `args` (a list; borrowed) into *obj.
     * 0 or a negative code (see mproc_manager_error). */
    int (*create)(const mproc_value *args, void **obj);
    /* Run `method` with `args` (a list; borrowed). Store a new value in
     * *result (NULL = nil), which the server frees after sending it.
     * 0 or a negative code. */
    int (*call)(void *obj, const char *method, const mproc_value *args, mproc_value **result);
    /* Free the object when its last reference goes. May be NULL. */
    void (*destroy)(void *obj);
} mproc_manager_type;

/* Inside create/call: record `fmt` as the message the caller will see in
 * mproc_errmsg() and return `code` (as in `return mproc_manager_error(
 * MPROC_EINVAL, "bad %s", x);`). Cut at 255 bytes. */
int mproc_manager_error(int code, const char *fmt, ...) MPROC_PRINTF(2, 3);

/* ------------------------------------------------------------ managers */

typedef struct mproc_manager_opts {
    /* Where the server listens. NULL = a new abstract unix socket (this
     * machine only). "tcp:host:port" serves other machines (port 0 picks
     * one; read it back with mproc_manager_address), "unix:/path" a socket
     * file. */
    const char *address;
    /* The shared secret clients must prove; NULL = 32 random bytes (read
     * them with mproc_manager_authkey to hand to other programs). Copied. */
    const void *authkey;
    size_t authkey_len;
    const mproc_context *ctx;  /* start method of the server; NULL = default */
    double start_timeout;      /* seconds to wait for the server; 0 = 10 */
    size_t max_message;        /* largest request or reply; 0 = 64 MiB */
    size_t max_clients;        /* connections served at once; 0 = 1024 */
} mproc_manager_opts;

/* A manager not yet started. opts may be NULL. Register user types, then
 * mproc_manager_start(). 0, MPROC_EINVAL, MPROC_ENOMEM. */
int mproc_manager_new(mproc_manager **out, const mproc_manager_opts *opts);

/* Serve objects of `type` too (before start; the type is not copied and
 * must stay valid). MPROC_EEXIST (typeid taken, built-in names included),
 * MPROC_EINVAL (missing create/call, bad name), MPROC_ESTATE (started),
 * MPROC_ENOSPC (over 64 types). */
int mproc_manager_register(mproc_manager *m, const mproc_manager_type *type);

/* Start the server process and wait until it listens. 0, MPROC_ESTATE
 * (started already), MPROC_ETIMEDOUT, the listener's errors (address in
 * use...) with a message, the errors of mproc_process_start. */
int mproc_manager_start(mproc_manager *m);

/* Connect to a running server (one started by any program) with its
 * address and key (opts->authkey; opts->address is ignored). The handle
 * cannot shut the server down; free it when done.
 * 0, MPROC_EAUTH (wrong key), MPROC_ECONNREFUSED, MPROC_ENOENT,
 * MPROC_ETIMEDOUT, MPROC_EPROTO (not a manager), MPROC_EAGAIN (the server
 * is at max_clients), MPROC_EINVAL. */
int mproc_manager_connect(mproc_manager **out, const char *address,
                          const mproc_manager_opts *opts);

/* Stop the server this handle started: it exits, every proxy of it (in any
 * process) fails with MPROC_ECLOSED from then on. Waits up to 5 s, then
 * kills it. Idempotent; on a connected handle it only closes connections.
 * 0, or the server's exit status as a code when it did not exit cleanly. */
int mproc_manager_shutdown(mproc_manager *m);

/* Wait up to `timeout` seconds until the server exits (for a program whose
 * job is to serve: start, bind objects, then join). 0, MPROC_ETIMEDOUT,
 * MPROC_ESTATE (not started by this handle). */
int mproc_manager_join(mproc_manager *m, double timeout);

/* Shut down if started here and not yet shut down (only in the process that
 * started it), close connections and free. Proxies must be freed first
 * (except those imported by children, which hold their own handle). NULL ok. */
void mproc_manager_free(mproc_manager *m);

/* The server's address ("unix:@...", "tcp:127.0.0.1:40123"), or "" before
 * start. Owned by the handle. */
const char *mproc_manager_address(const mproc_manager *m);
/* The authkey (owned by the handle) and its length. */
const void *mproc_manager_authkey(const mproc_manager *m, size_t *len);
/* The server's pid when started by this handle, else 0. */
int mproc_manager_pid(const mproc_manager *m);

/* ------------------------------------------------------------ objects */

/* Create an object of `typeid` (a built-in name below or a registered one)
 * from the arguments argv[0..argc) (borrowed) and return a new proxy.
 * Built-in typeids and their arguments: "dict", "list", "Namespace" (none;
 * "dict" and "list" take an optional initial map / list), "Queue" and
 * "JoinableQueue" (maxsize, 0 = none), "Lock", "RLock", "Semaphore" and
 * "BoundedSemaphore" (value), "Condition" (a lock reference or none),
 * "Event", "Barrier" (parties[, timeout]), "Value" (typecode, value),
 * "Array" (typecode, list or size). Errors: MPROC_ENOENT (unknown typeid),
 * the type's create errors, MPROC_ECLOSED (server gone). */
int mproc_manager_create(mproc_manager *m, const char *typeid, mproc_value *const *argv,
                         size_t argc, mproc_proxy **out);

/* Typed constructors (Manager().dict(), .list(), ...). Same errors. */
int mproc_manager_dict(mproc_manager *m, mproc_proxy **out);
int mproc_manager_list(mproc_manager *m, mproc_proxy **out);
int mproc_manager_namespace(mproc_manager *m, mproc_proxy **out);
int mproc_manager_queue(mproc_manager *m, size_t maxsize, mproc_proxy **out);
int mproc_manager_joinable_queue(mproc_manager *m, size_t maxsize, mproc_proxy **out);
int mproc_manager_lock(mproc_manager *m, mproc_proxy **out);
int mproc_manager_rlock(mproc_manager *m, mproc_proxy **out);
int mproc_manager_semaphore(mproc_manager *m, unsigned value, mproc_proxy **out);
int mproc_manager_bounded_semaphore(mproc_manager *m, unsigned value, mproc_proxy **out);
/* lock: a Lock/RLock proxy of the same manager, or NULL for a new RLock. */
int mproc_manager_condition(mproc_manager *m, mproc_proxy *lock, mproc_proxy **out);
int mproc_manager_event(mproc_manager *m, mproc_proxy **out);
/* timeout: default for wait(); MPROC_FOREVER = none. */
int mproc_manager_barrier(mproc_manager *m, unsigned parties, double timeout, mproc_proxy **out);
/* typecode: one of "bBhHiIlLqQfd?" (Python's array codes; '?' bool);
 * initial: a number (NULL = 0). */
int mproc_manager_value(mproc_manager *m, char typecode, const mproc_value *initial,
                        mproc_proxy **out);
/* initial: a list of numbers, or NULL for `size` zeros. */
int mproc_manager_array(mproc_manager *m, char typecode, const mproc_value *initial,
                        size_t size, mproc_proxy **out);

/* Give the object of `p` a name on the server (holding a reference), so
 * other programs find it with mproc_manager_lookup: the remote-manager
 * pattern (a queue served to other machines). Rebinding a name replaces
 * it. 0, MPROC_EINVAL (name empty or over 255 bytes), MPROC_ECLOSED. */
int mproc_manager_bind(mproc_manager *m, const char *name, mproc_proxy *p);
/* A new proxy for the object bound to `name`. MPROC_ENOENT (no such name). */
int mproc_manager_lookup(mproc_manager *m, const char *name, mproc_proxy **out);
/* Drop the name. MPROC_ENOENT (no such name). */
int mproc_manager_unbind(mproc_manager *m, const char *name);

/* ------------------------------------------------------------ proxies */

/* Call `method` on the object with argv[0..argc) (borrowed values; argv may
 * be NULL when argc is 0). On success *result (if not NULL) receives a new
 * value (nil when the method returns nothing) that you free. Method names
 * and arguments of the built-in types are listed in docs/manager-methods.md.
 * Errors: the method's code with mproc_errmsg(), MPROC_ENOSYS (no such
 * method), MPROC_ENOENT (object gone), MPROC_EMSGSIZE (over max_message),
 * MPROC_ECLOSED (server gone), MPROC_EPROTO. */
int mproc_proxy_call(mproc_proxy *p, const char *method, mproc_value *const *argv, size_t argc,
                     mproc_value **result);

/* A value referring to the object of `p`, to store inside other managed
 * objects (nesting). New value; you free it. NULL when out of memory. */
mproc_value *mproc_proxy_ref(const mproc_proxy *p);

/* A new proxy for the reference value `ref` (read from a managed object).
 * MPROC_EINVAL (not a reference), MPROC_ENOENT (the object is gone). */
int mproc_manager_proxy(mproc_manager *m, const mproc_value *ref, mproc_proxy **out);

/* The typeid of a reference value, or NULL when `v` is not one. */
const char *mproc_proxy_ref_typeid(const mproc_value *v);

/* The object's typeid ("dict", ...) and server-wide id. */
const char *mproc_proxy_typeid(const mproc_proxy *p);
uint64_t mproc_proxy_id(const mproc_proxy *p);
/* The manager handle the proxy talks through. */
mproc_manager *mproc_proxy_manager(const mproc_proxy *p);

/* Drop this proxy's reference and free it. NULL ok. Never blocks on a dead
 * server. */
void mproc_proxy_free(mproc_proxy *p);

/* Shareable type for mproc_args_add_object (every proxy). The child's proxy
 * connects to the server with the address and authkey of the parent's. */
extern const mproc_shareable_type mproc_proxy_type;

/* ------------------------------------------------------------ dict */

/* Values passed in are borrowed; values returned are new and yours.
 * get/pop: MPROC_ENOENT when the key is missing (KeyError). */
int mproc_dict_get(mproc_proxy *d, const mproc_value *key, mproc_value **out);
int mproc_dict_set(mproc_proxy *d, const mproc_value *key, const mproc_value *val);
int mproc_dict_del(mproc_proxy *d, const mproc_value *key);
int mproc_dict_contains(mproc_proxy *d, const mproc_value *key, bool *out);
int mproc_dict_len(mproc_proxy *d, size_t *out);
int mproc_dict_keys(mproc_proxy *d, mproc_value **out);   /* a list */
int mproc_dict_values(mproc_proxy *d, mproc_value **out); /* a list */
int mproc_dict_items(mproc_proxy *d, mproc_value **out);  /* a list of [key, value] lists */
int mproc_dict_update(mproc_proxy *d, const mproc_value *map);
int mproc_dict_pop(mproc_proxy *d, const mproc_value *key, mproc_value **out);
/* d.setdefault(key, dflt): the value now under key (existing or dflt). */
int mproc_dict_setdefault(mproc_proxy *d, const mproc_value *key, const mproc_value *dflt,
                          mproc_value **out);
int mproc_dict_clear(mproc_proxy *d);
int mproc_dict_copy(mproc_proxy *d, mproc_value **out); /* a snapshot map */
/* d[key] += delta in one step on the server (a missing key counts as 0):
 * the fix for the lost update of `d[k] = d[k] + 1` from many processes.
 * *out (may be NULL) receives the new value. MPROC_EINVAL (not an int),
 * MPROC_ERANGE (overflow). */
int mproc_dict_add(mproc_proxy *d, const mproc_value *key, int64_t delta, int64_t *out);

/* ------------------------------------------------------------ list */

/* Indexes may be negative (from the end). MPROC_ERANGE: out of range. */
int mproc_list_append(mproc_proxy *l, const mproc_value *v);
int mproc_list_extend(mproc_proxy *l, const mproc_value *list);
int mproc_list_insert(mproc_proxy *l, int64_t i, const mproc_value *v); /* clamps, as Python */
int mproc_list_get(mproc_proxy *l, int64_t i, mproc_value **out);
int mproc_list_set(mproc_proxy *l, int64_t i, const mproc_value *v);
int mproc_list_del(mproc_proxy *l, int64_t i);
int mproc_list_pop(mproc_proxy *l, int64_t i, mproc_value **out); /* i = -1: the last */
int mproc_list_remove(mproc_proxy *l, const mproc_value *v); /* MPROC_ENOENT: absent */
int mproc_list_len(mproc_proxy *l, size_t *out);
int mproc_list_reverse(mproc_proxy *l);
/* Sort ascending (or descending) by Python's ordering: numbers with
 * numbers, str with str, bytes with bytes, lists lexicographically.
 * MPROC_EINVAL (values that do not compare; the list is left unchanged). */
int mproc_list_sort(mproc_proxy *l, bool reverse);
int mproc_list_index(mproc_proxy *l, const mproc_value *v, size_t *out); /* MPROC_ENOENT */
int mproc_list_count(mproc_proxy *l, const mproc_value *v, size_t *out);
int mproc_list_copy(mproc_proxy *l, mproc_value **out); /* a snapshot list */

/* ------------------------------------------------------------ Namespace */

/* get: MPROC_ENOENT when there is no such attribute (AttributeError). */
int mproc_namespace_get(mproc_proxy *ns, const char *name, mproc_value **out);
int mproc_namespace_set(mproc_proxy *ns, const char *name, const mproc_value *v);
int mproc_namespace_del(mproc_proxy *ns, const char *name);
int mproc_namespace_copy(mproc_proxy *ns, mproc_value **out); /* a map name -> value */

/* ------------------------------------------------------------ Queue */

/* timeout: 0 = do not wait (put_nowait/get_nowait), MPROC_FOREVER = block.
 * put: MPROC_EFULL on timeout; get: MPROC_EEMPTY on timeout. */
int mproc_mqueue_put(mproc_proxy *q, const mproc_value *v, double timeout);
int mproc_mqueue_get(mproc_proxy *q, mproc_value **out, double timeout);
int mproc_mqueue_qsize(mproc_proxy *q, size_t *out);
int mproc_mqueue_empty(mproc_proxy *q, bool *out);
int mproc_mqueue_full(mproc_proxy *q, bool *out);
/* JoinableQueue. task_done: MPROC_EOVERFLOW when called too many times;
 * join: MPROC_ETIMEDOUT. MPROC_ENOSYS on a plain Queue. */
int mproc_mqueue_task_done(mproc_proxy *q);
int mproc_mqueue_join(mproc_proxy *q, double timeout);

/* ------------------------------------------------------------ Lock, RLock, Semaphore */

/* 0, MPROC_ETIMEDOUT, MPROC_EDEADLK (a Lock this thread holds already, with
 * no timeout). The owner is the (manager handle, thread) that acquired it:
 * release through the same handle. Locks held through a handle whose
 * process dies (or that is freed) are released. */
int mproc_mlock_acquire(mproc_proxy *l, double timeout);
/* MPROC_EPERM: not locked, or an RLock this thread does not own. */
int mproc_mlock_release(mproc_proxy *l);
int mproc_msemaphore_acquire(mproc_proxy *s, double timeout);
/* MPROC_EOVERFLOW: a BoundedSemaphore released above its initial value. */
int mproc_msemaphore_release(mproc_proxy *s);
int mproc_msemaphore_value(mproc_proxy *s, int64_t *out);

/* ------------------------------------------------------------ Condition, Event, Barrier */

int mproc_mcondition_acquire(mproc_proxy *c, double timeout);
int mproc_mcondition_release(mproc_proxy *c);
/* Release the lock, wait for a notify, take the lock back (also on
 * timeout). 0, MPROC_ETIMEDOUT, MPROC_EPERM (lock not held). */
int mproc_mcondition_wait(mproc_proxy *c, double timeout);
int mproc_mcondition_notify(mproc_proxy *c, unsigned n);
int mproc_mcondition_notify_all(mproc_proxy *c);

int mproc_mevent_set(mproc_proxy *e);
int mproc_mevent_clear(mproc_proxy *e);
int mproc_mevent_is_set(mproc_proxy *e, bool *out);
int mproc_mevent_wait(mproc_proxy *e, double timeout); /* 0, MPROC_ETIMEDOUT */

/* *index (may be NULL): arrival order, 0 for the first to arrive up to
 * parties-1 for the last (as CPython's Barrier.wait). MPROC_EBROKEN
 * (broken, aborted, reset while waiting, timed out, or a waiter died). */
int mproc_mbarrier_wait(mproc_proxy *b, double timeout, unsigned *index);
int mproc_mbarrier_abort(mproc_proxy *b);
int mproc_mbarrier_reset(mproc_proxy *b);
int mproc_mbarrier_n_waiting(mproc_proxy *b, unsigned *out);
int mproc_mbarrier_broken(mproc_proxy *b, bool *out);

/* ------------------------------------------------------------ Value, Array */

/* get: a new int, float or bool value. set: a number (range-checked against
 * the typecode: MPROC_ERANGE / MPROC_EINVAL). add: += in one step, *out
 * (may be NULL) the new value. */
int mproc_mvalue_get(mproc_proxy *v, mproc_value **out);
int mproc_mvalue_set(mproc_proxy *v, const mproc_value *val);
int mproc_mvalue_add(mproc_proxy *v, double delta, mproc_value **out);

int mproc_marray_len(mproc_proxy *a, size_t *out);
int mproc_marray_get(mproc_proxy *a, int64_t i, mproc_value **out);
int mproc_marray_set(mproc_proxy *a, int64_t i, const mproc_value *val);
int mproc_marray_copy(mproc_proxy *a, mproc_value **out); /* a list */

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif

#endif
