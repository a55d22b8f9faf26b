/* shm.c — the shared-memory channel of the Connection transport.
 *
 * A proxy on the server's machine moves its calls off the socket: the
 * server makes two queues for the connection (requests, answers), offers
 * them as an answer to the reserved call "mproc.shm", and the proxy opens
 * their memfds through /proc/<server pid>/fd/<n> — the same way for unix
 * sockets and TCP, since only a process on the same kernel can. An offer
 * names the server's boot id and each memfd's device and inode: a proxy on
 * another machine (another boot id), in another pid namespace, or without
 * the right to open the server's descriptors (another user, a non-dumpable
 * server) sees a mismatch or an error and stays on the socket. Afterwards
 * the socket carries nothing; each side watches it to learn that the other
 * is gone.
 *
 * The frames on the queues are the wire's own (msgpack-rpc or pickles), so
 * rpc.c serves them with rpc__answer as it serves socket frames. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "mproc/queue.h"
#include "rpc_int.h"

/* Waiting on a queue (see mproc__queue_set_wait). The proxy waits for an
 * answer that the server thread, spinning on another core, gives within a
 * microsecond or two; the server thread waits for the next call about
 * 0.2 ms before it sleeps, so a caller in a loop never wakes a sleeper.
 * Then both yield a while: with more busy threads than cores the other
 * side may need this very core. */
#define SHM_CALLER_POLLS 400
#define SHM_CALLER_GAP 1
#define SHM_SERVER_POLLS 2000
#define SHM_SERVER_GAP 2
#define SHM_YIELDS 50
/* With more clients than cores a spinning server thread only takes the
 * core a client needs: it yields a few times, then sleeps. */
#define SHM_CROWD_YIELDS 4
#define SHM_SLICE_S 0.1
/* Ring of each queue: calls larger than it stream through it. */
#define SHM_RING ((size_t)256 << 10)
/* Receive buffer to start with; grows to the largest message seen. */
#define SHM_BUF ((size_t)4096)

struct rpc_shm {
    mproc_queue *in, *out; /* server: in = requests; proxy: in = answers */
    int fd;                /* the socket: quiet, watched for the peer's end */
    uint8_t *buf;
    size_t cap;
    mproc_deadline until; /* proxy: the deadline of the receive in progress */
    size_t last;          /* the size of the last message received */
    uint32_t small_run;   /* rpc__trim_due's count for buf */
};

static int boot_id(char out[40])
{
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mproc__errno();
    ssize_t n = read(fd, out, 39);
    close(fd);
    if (n < 32)
        return MPROC_EPROTO;
    out[n] = 0;
    out[strcspn(out, "\n")] = 0;
    return 0;
}

static rpc_shm *new_channel(int fd)
{
    rpc_shm *ch = calloc(1, sizeof *ch);
    if (ch && !(ch->buf = malloc(SHM_BUF))) {
        free(ch);
        return NULL;
    }
    if (ch) {
        ch->cap = SHM_BUF;
        ch->fd = fd;
    }
    return ch;
}

static bool socket_says_gone(int fd);

/* A receive in the middle of a message whose sender stalls (SIGSTOP, not
 * dead) gives up when the socket ends (the peer's end, or the server's stop
 * cutting it) and, on the proxy, at the call's deadline too. The server
 * waits for a stalled request while the client lives: its slices are
 * liveness checks, not deadlines. */
static bool server_gives_up(void *arg)
{
    const rpc_shm *ch = arg;
    return socket_says_gone(ch->fd);
}

static bool proxy_gives_up(void *arg)
{
    const rpc_shm *ch = arg;
    return mproc_deadline_expired(ch->until) || socket_says_gone(ch->fd);
}

void rpc__shm_free(rpc_shm *ch)
{
    if (!ch)
        return;
    mproc_queue_close(ch->in);
    mproc_queue_close(ch->out);
    free(ch->buf);
    free(ch);
}

/* [fd, dev, ino, export] of one queue. */
static int offer_queue(mproc_value *list, mproc_queue *q)
{
    mproc_buf e = {0};
    int fds[4];
    size_t nf = 0;
    struct stat st;
    int rc = mproc_queue_type.export_obj(q, &e, fds, &nf, 4);
    if (!rc && (nf != 1 || fstat(fds[0], &st) < 0))
        rc = mproc__fail(MPROC_EPROTO, "rpc: a queue is not one descriptor");
    mproc_value *v = rc ? NULL : mproc_value_list();
    if (!rc && (!v || mproc_value_append(v, mproc_value_int(fds[0])) ||
                mproc_value_append(v, mproc_value_int((int64_t)st.st_dev)) ||
                mproc_value_append(v, mproc_value_int((int64_t)st.st_ino)) ||
                mproc_value_append(v, mproc_value_bytes(e.data, e.len)))) {
        mproc_value_free(v);
        rc = MPROC_ENOMEM;
    } else if (!rc) {
        rc = mproc_value_append(list, v); /* takes v, even on failure */
    }
    mproc__buf_free(&e);
    return rc;
}

int rpc__shm_offer(int fd, size_t max_message, rpc_shm **out, mproc_value **offer)
{
    *out = NULL;
    *offer = NULL;
    char bid[40];
    int rc = boot_id(bid);
    if (rc)
        return rc;
    rpc_shm *ch = new_channel(fd);
    if (!ch)
        return MPROC_ENOMEM;
    mproc_queue_opts qo = {.capacity = SHM_RING, .max_message = max_message};
    rc = mproc_simple_queue_new(&ch->in, &qo);
    if (!rc)
        rc = mproc_simple_queue_new(&ch->out, &qo);
    mproc_value *v = rc ? NULL : mproc_value_list();
    if (!rc && (!v || mproc_value_append(v, mproc_value_int(1)) ||
                mproc_value_append(v, mproc_value_str(bid)) ||
                mproc_value_append(v, mproc_value_int(getpid()))))
        rc = MPROC_ENOMEM;
    if (!rc)
        rc = offer_queue(v, ch->in);
    if (!rc)
        rc = offer_queue(v, ch->out);
    if (rc) {
        mproc_value_free(v);
        rpc__shm_free(ch);
        return rc;
    }
    mproc__queue_set_wait(ch->in, SHM_SERVER_POLLS, SHM_SERVER_GAP, SHM_YIELDS);
    mproc__queue_set_give_up(ch->in, server_gives_up, ch);
    *out = ch;
    *offer = v;
    return 0;
}

/* [fd, dev, ino, export] */
static bool queue_shape_ok(const mproc_value *q)
{
    return mproc_value_type(q) == MPROC_V_LIST && mproc_value_len(q) == 4 &&
           mproc_value_type(mproc_value_at(q, 0)) == MPROC_V_INT &&
           mproc_value_type(mproc_value_at(q, 1)) == MPROC_V_INT &&
           mproc_value_type(mproc_value_at(q, 2)) == MPROC_V_INT &&
           mproc_value_type(mproc_value_at(q, 3)) == MPROC_V_BYTES;
}

/* Open one queue of an offer: its memfd through /proc, checked to be the
 * very object the server named. */
static int take_queue(pid_t pid, const mproc_value *q, mproc_queue **out)
{
    mproc_value *vfd = mproc_value_at(q, 0), *vdev = mproc_value_at(q, 1),
                *vino = mproc_value_at(q, 2), *vexp = mproc_value_at(q, 3);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%lld", (int)pid, (long long)mproc_value_as_int(vfd));
    /* Look before opening (stat follows the link without opening it): only
     * the regular file the server named, never a device, FIFO or tty. */
    struct stat st;
    if (stat(path, &st) < 0 || !S_ISREG(st.st_mode) ||
        (int64_t)st.st_dev != mproc_value_as_int(vdev) ||
        (int64_t)st.st_ino != mproc_value_as_int(vino))
        return mproc__fail(MPROC_EPROTO, "rpc: %s is not the server's queue", path);
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return mproc__fail(mproc__errno(), "rpc: cannot open the server's queue (%s)", path);
    /* the same file, and a memfd that cannot shrink under our mapping */
    int seals = fcntl(fd, F_GET_SEALS);
    if (fstat(fd, &st) < 0 || (int64_t)st.st_dev != mproc_value_as_int(vdev) ||
        (int64_t)st.st_ino != mproc_value_as_int(vino) || seals < 0 || !(seals & F_SEAL_SHRINK)) {
        close(fd);
        return mproc__fail(MPROC_EPROTO, "rpc: %s is not the server's sealed queue", path);
    }
    size_t n;
    const void *e = mproc_value_as_bytes(vexp, &n);
    void *obj;
    int rc = mproc_queue_type.import_obj(e, n, &fd, 1, &obj);
    if (rc) {
        close(fd);
        return rc;
    }
    *out = obj; /* the import closed fd */
    return 0;
}

int rpc__shm_take(int fd, const mproc_value *offer, rpc_shm **out, bool *is_offer)
{
    *out = NULL;
    *is_offer = false;
    char bid[40];
    mproc_value *ver = mproc_value_at(offer, 0), *vbid = mproc_value_at(offer, 1),
                *vpid = mproc_value_at(offer, 2);
    if (mproc_value_type(offer) != MPROC_V_LIST || mproc_value_len(offer) != 5 ||
        mproc_value_type(ver) != MPROC_V_INT || mproc_value_as_int(ver) != 1 ||
        mproc_value_type(vbid) != MPROC_V_STR || mproc_value_type(vpid) != MPROC_V_INT ||
        mproc_value_as_int(vpid) <= 0 || mproc_value_as_int(vpid) > INT32_MAX ||
        !queue_shape_ok(mproc_value_at(offer, 3)) || !queue_shape_ok(mproc_value_at(offer, 4)))
        return mproc__fail(MPROC_EPROTO, "rpc: malformed shared-memory offer");
    *is_offer = true; /* from here on the server waits for our choice */
    int rc = boot_id(bid);
    if (rc)
        return rc;
    if (strcmp(bid, mproc_value_as_str(vbid, NULL)) != 0)
        return mproc__fail(MPROC_ENOSYS, "rpc: the server runs on another machine");
    pid_t pid = (pid_t)mproc_value_as_int(vpid);
    struct ucred cr;
    socklen_t crl = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crl) == 0 && cr.pid > 0 && cr.pid != pid)
        return mproc__fail(MPROC_EPROTO, "rpc: the offer names pid %d, the socket's peer is %d",
                           (int)pid, (int)cr.pid); /* unix sockets only; TCP has no peer pid */
    rpc_shm *ch = new_channel(fd);
    if (!ch)
        return MPROC_ENOMEM;
    /* the server's requests are our out, its answers our in */
    rc = take_queue(pid, mproc_value_at(offer, 3), &ch->out);
    if (!rc)
        rc = take_queue(pid, mproc_value_at(offer, 4), &ch->in);
    if (rc) {
        rpc__shm_free(ch);
        return rc;
    }
    mproc__queue_set_wait(ch->in, SHM_CALLER_POLLS, SHM_CALLER_GAP, SHM_YIELDS);
    mproc__queue_set_give_up(ch->in, proxy_gives_up, ch);
    *out = ch;
    return 0;
}

void rpc__shm_set_spin(rpc_shm *ch, bool spin)
{
    if (spin)
        mproc__queue_set_wait(ch->in, SHM_SERVER_POLLS, SHM_SERVER_GAP, SHM_YIELDS);
    else
        mproc__queue_set_wait(ch->in, 0, SHM_SERVER_GAP, SHM_CROWD_YIELDS);
}

/* The time to wait in one slice: the slice, or what is left of `d` when
 * less (mproc_deadline_remaining gives MPROC_FOREVER, negative, for none). */
static double slice_of(mproc_deadline d, double slice)
{
    double left = mproc_deadline_remaining(d);
    return left < 0 || left > slice ? slice : left;
}

/* After the move the socket carries nothing: its end, an error, or any byte
 * (a peer that does not follow the protocol) ends the connection. */
static bool socket_says_gone(int fd)
{
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

int rpc__shm_send(rpc_shm *ch, const void *data, size_t len, mproc_deadline d)
{
    /* Room now, as nearly always: no clock read on the way to the peer. */
    int rc = mproc_queue_put(ch->out, data, len, 0);
    if (rc != MPROC_ETIMEDOUT)
        return rc;
    double slice = mproc__put_slice(len);
    for (;;) {
        rc = mproc_queue_put(ch->out, data, len, slice_of(d, slice));
        if (rc != MPROC_ETIMEDOUT)
            return rc;
        if (socket_says_gone(ch->fd))
            return mproc__fail(MPROC_ECLOSED, "rpc: the other side closed the connection");
        if (mproc_deadline_expired(d))
            return rc;
        /* a slow reader: a big message is not aborted and restarted forever */
        if (slice < 16 * mproc__put_slice(len))
            slice *= 2;
    }
}

int rpc__shm_recv(rpc_shm *ch, mproc_deadline d, size_t max, const void **data, size_t *len)
{
    ch->until = d;
    if (rpc__trim_due(ch->cap, ch->last, &ch->small_run)) {
        uint8_t *nb = realloc(ch->buf, SHM_BUF);
        if (nb) {
            ch->buf = nb;
            ch->cap = SHM_BUF;
        }
    }
    for (;;) {
        int rc = mproc_queue_get_into(ch->in, ch->buf, ch->cap, len, slice_of(d, SHM_SLICE_S));
        if (rc == 0 && *len > max)
            return mproc__fail(MPROC_EMSGSIZE, "rpc: a message of %zu bytes exceeds max_message (%zu)",
                               *len, max);
        if (rc == 0) {
            *data = ch->buf;
            ch->last = *len;
            return 0;
        }
        if (rc == MPROC_EMSGSIZE && *len > max) {
            /* over our limit: take it off the queue and say so */
            void *junk;
            size_t n;
            if (mproc_queue_get(ch->in, &junk, &n, SHM_SLICE_S) == 0)
                free(junk);
            return mproc__fail(MPROC_EMSGSIZE, "rpc: a message of %zu bytes exceeds max_message (%zu)",
                               *len, max);
        }
        if (rc == MPROC_EMSGSIZE) { /* grow and take it */
            size_t ncap = ch->cap;
            while (ncap < *len)
                ncap *= 2;
            uint8_t *nb = realloc(ch->buf, ncap);
            if (!nb)
                return MPROC_ENOMEM;
            ch->buf = nb;
            ch->cap = ncap;
            continue;
        }
        if (rc == MPROC_ECANCELED) /* a stalled sender, mid-message: see proxy_gives_up */
            return socket_says_gone(ch->fd)
                       ? mproc__fail(MPROC_ECLOSED, "rpc: the other side closed the connection")
                       : mproc__fail(MPROC_ETIMEDOUT, "rpc: the rest of a message did not come "
                                                      "within the timeout");
        if (rc != MPROC_ETIMEDOUT)
            return rc;
        if (socket_says_gone(ch->fd))
            return mproc__fail(MPROC_ECLOSED, "rpc: the other side closed the connection");
        if (mproc_deadline_expired(d))
            return rc;
    }
}
