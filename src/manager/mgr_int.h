/* mgr_int.h — the manager's server-side object model, shared by the server
 * (server.c), the container types (containers.c) and the blocking types
 * (syncobjs.c). Private to src/manager. */
#ifndef MPROC_MGR_INT_H
#define MPROC_MGR_INT_H

#include <pthread.h>

#include "../codec/codec_int.h"
#include "internal.h"
#include "mproc/manager.h"
#include "wire.h"

typedef struct mgr_server mgr_server;
typedef struct mgr_obj mgr_obj;
typedef struct mgr_conn mgr_conn;

/* One request being served: who asks, and where an error message goes. */
typedef struct mgr_call {
    mgr_server *srv;
    mgr_conn *conn;
    uint64_t session; /* the calling handle's session: unique for the server's life */
    uint32_t tid;     /* the calling thread, within that process */
    bool msg_set;
    char msg[256];    /* message sent with an error reply */
    bool no_block;    /* a try by the dispatcher: mgr_sync_wait must not sleep */
    bool would_block; /* ... and it wanted to: the call is run again, blocking */
} mgr_call;

/* Record a message for the error reply and return `code`. */
int mgr_fail(mgr_call *c, int code, const char *fmt, ...) MPROC_PRINTF(3, 4);

/* true when the caller's connection is gone or the server is stopping: a
 * blocked method must then give up with MPROC_ECLOSED. */
bool mgr_cancelled(mgr_call *c);

/* A server-side type. create/call/destroy of a non-blocking type run with
 * the object's own mutex held (one call per object at a time); those of a
 * blocking type run with the server-wide sync mutex held (mgr_sync_*), so
 * blocking objects can wait for each other (Condition over a Lock). */
typedef struct mgr_type {
    const char *typeid;
    bool blocking;
    /* Build o->impl from `args` (a LIST the function may steal items from
     * with mgr_arg_take). 0 or a code (use mgr_fail for a message). */
    int (*create)(mgr_obj *o, mproc_value *args, mgr_call *c);
    /* Run a method. *result: a new value or NULL (nil). Unknown method:
     * return mgr_fail(c, MPROC_ENOSYS, ...). */
    int (*call)(mgr_obj *o, const char *method, mproc_value *args, mproc_value **result,
                mgr_call *c);
    /* Free o->impl, releasing (mgr_refs_release) every value it holds. */
    void (*destroy)(mgr_obj *o);
    /* Blocking types: the process `session` ended (all its connections
     * closed): release what it held (locks). Sync mutex held. May be NULL. */
    void (*session_end)(mgr_obj *o, uint64_t session);
    /* Blocking types whose every wait may time out without a trace (the
     * method returns as on a timeout and has changed nothing): the
     * dispatcher first tries their calls itself with c->no_block set, and
     * hands them to the connection's thread only when they would wait.
     * Not Condition (wait releases the lock) nor Barrier (a timeout breaks
     * it). */
    bool try_inline;
} mgr_type;

struct mgr_obj {
    const mgr_type *type;
    const mproc_manager_type *user; /* for user types */
    void *impl;
    uint64_t id;
    mgr_server *srv;
    pthread_mutex_t mu;
    int64_t refs;    /* proxies + container references + calls running; server table mutex */
    bool live;       /* created and not yet dead */
    mgr_obj *next_dead;
};

/* ----- references inside values ----- */

/* Take a reference on every managed object `v` refers to (MGR_EXT_REF ext
 * values anywhere in the tree), before storing `v` in a container. 0, or
 * MPROC_ENOENT / MPROC_EINVAL (an unknown object or a malformed reference,
 * with a message) and then nothing is held. Scalars cost nothing. */
int mgr_refs_hold(mgr_call *c, const mproc_value *v);
/* Drop the references `v` holds, after taking it out of a container and
 * before freeing it. Objects whose last reference goes are destroyed later,
 * outside every lock. */
void mgr_refs_release(mgr_server *s, const mproc_value *v);
/* `v` leaves a container for the caller (pop, Queue.get): instead of
 * dropping its references, give them to the caller's process for
 * MGR_HANDOVER_S seconds, so the objects live until it makes proxies of them
 * (mproc_manager_proxy adopts such a reference) or the time runs out. */
void mgr_refs_handover(mgr_call *c, const mproc_value *v);
#define MGR_HANDOVER_S 60

/* The live object a reference value names, with a reference held for the
 * caller (mgr_obj_release it), or NULL with a message in c. */
mgr_obj *mgr_obj_from_ref(mgr_call *c, const mproc_value *ref);
void mgr_obj_release(mgr_server *s, mgr_obj *o);

/* ----- the sync mutex (blocking types) ----- */

/* Held by the server around every create/call/destroy/session_end of a
 * blocking type; a method that must wait calls mgr_sync_wait in a loop:
 *   while (!ready) { rc = mgr_sync_wait(c, d); if (rc) return ...; }
 * It sleeps until a mgr_sync_broadcast, a slice of MGR_SLICE_S or `d`,
 * and returns 0 (check the state again), MPROC_ETIMEDOUT (d has passed, or
 * a no_block try would sleep) or MPROC_ECLOSED (the caller is gone or the
 * server stops). */
int mgr_sync_wait(mgr_call *c, mproc_deadline d);
/* Wake every waiter: call after any change a waiter may wait for. */
void mgr_sync_broadcast(mgr_server *s);

/* ----- arguments (args is always a LIST) ----- */

/* MPROC_EINVAL with "<method>() takes ..." unless min <= len(args) <= max. */
int mgr_args_count(mgr_call *c, const char *method, const mproc_value *args, size_t min,
                   size_t max);
/* Steal item i of the list, leaving a hole that reads as nil
 * (mproc_value_at gives NULL). NULL when out of range or taken already. */
mproc_value *mgr_arg_take(mproc_value *args, size_t i);
/* Item i as an int (INT or BOOL), MPROC_EINVAL otherwise. */
int mgr_arg_int(mgr_call *c, const mproc_value *args, size_t i, int64_t *out);
/* Item i as a timeout: INT/FLOAT seconds, negative or NIL or absent = forever. */
int mgr_arg_timeout(mgr_call *c, const mproc_value *args, size_t i, mproc_deadline *out);
/* Item i as a bool (BOOL, or INT != 0). Absent: dflt. */
int mgr_arg_bool(mgr_call *c, const mproc_value *args, size_t i, bool dflt, bool *out);

/* Python-style repr of a value for messages ("KeyError: 'x'"), cut at
 * `len`; writes "?" on OOM. */
void mgr_repr(const mproc_value *v, char *buf, size_t len);

/* ----- the built-in types ----- */

/* containers.c */
extern const mgr_type mgr_t_dict, mgr_t_list, mgr_t_namespace, mgr_t_value, mgr_t_array;
/* syncobjs.c */
extern const mgr_type mgr_t_queue, mgr_t_joinable_queue, mgr_t_lock, mgr_t_rlock,
    mgr_t_semaphore, mgr_t_bounded_semaphore, mgr_t_condition, mgr_t_event, mgr_t_barrier;

#endif
