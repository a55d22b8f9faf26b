/* init.c — mproc_mpi_init / finalize: MPI itself, the layer's communicator,
 * and the liveness channels (TCP connections from every worker rank to rank 0)
 * that tell rank 0 a rank died, which MPI without ULFM never does. */
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mpi_int.h"

mpi_global mpi__g = {.mu = PTHREAD_MUTEX_INITIALIZER, .rank = -1, .comm = MPI_COMM_NULL};

#define MAX_ADDRS 16
#define HELLO_ACK 'K'
#define HOST_MAX 256

/* What rank 0 tells every worker (MPI_Bcast) so it can connect back. */
typedef struct mcontact {
    int32_t status; /* 0, or rank 0's setup error: every rank gives up */
    uint16_t port;
    uint16_t naddr;
    uint8_t token[16];
    char host[HOST_MAX];
    uint32_t addr[MAX_ADDRS]; /* IPv4, network order; 127.0.0.1 first if any */
} mcontact;

const char *mpi__errstr(int code, char *buf, size_t len)
{
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(code, s, &n) != MPI_SUCCESS)
        snprintf(s, sizeof s, "MPI error %d", code);
    snprintf(buf, len, "%s", s);
    return buf;
}

/* MPROC_EIO with the MPI error's text. */
static int mpi_fail(int code, const char *what)
{
    char s[256];
    return fail(MPROC_EIO, "%s failed: %s", what, mpi__errstr(code, s, sizeof s));
}

/* -------------------------------------------------------------- sockets */

static void tune_socket(int fd)
{
    int one = 1, idle = 10, intvl = 5, cnt = 3;
    unsigned ut = 30000; /* unacknowledged writes: give up after 30 s */
    /* Marks are single bytes that must leave at once; a machine that vanishes
     * without a FIN is found by keepalive within about 25 s. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof ut);
}

/* Rank 0's listener on every interface, and the addresses to advertise
 * ($MPROC_MPI_ADDR alone if set: for hosts with many interfaces). */
static int listen_contact(int *lfd, mcontact *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail(-errno, "mproc_mpi_init: socket: %s", strerror(errno));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
    socklen_t sl = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, SOMAXCONN) ||
        getsockname(fd, (struct sockaddr *)&sa, &sl)) {
        int e = errno;
        close(fd);
        return fail(-e, "mproc_mpi_init: listening on TCP: %s", strerror(e));
    }
    c->port = ntohs(sa.sin_port);
    if (getrandom(c->token, sizeof c->token, 0) != (ssize_t)sizeof c->token) {
        close(fd);
        return fail(MPROC_EIO, "mproc_mpi_init: getrandom failed");
    }
    if (gethostname(c->host, sizeof c->host - 1))
        c->host[0] = 0;
    const char *want = getenv("MPROC_MPI_ADDR");
    struct in_addr ia;
    if (want && want[0]) {
        if (inet_pton(AF_INET, want, &ia) != 1) {
            close(fd);
            return fail(MPROC_EINVAL, "mproc_mpi_init: MPROC_MPI_ADDR=%s is not an IPv4 address", want);
        }
        c->addr[c->naddr++] = ia.s_addr;
    } else {
        c->addr[c->naddr++] = htonl(INADDR_LOOPBACK);
        struct ifaddrs *ifs = NULL, *i;
        if (getifaddrs(&ifs) == 0) {
            for (i = ifs; i && c->naddr < MAX_ADDRS; i = i->ifa_next)
                if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET && (i->ifa_flags & IFF_UP) &&
                    !(i->ifa_flags & IFF_LOOPBACK))
                    c->addr[c->naddr++] = ((struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr;
            freeifaddrs(ifs);
        }
    }
    *lfd = fd;
    return 0;
}

/* Connect to addr:port within `timeout`: the fd, or a negative code. */
static int connect_to(uint32_t addr, uint16_t port, double timeout)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = addr};
    int rc = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        rc = errno == EINPROGRESS ? mproc_wait_fd(fd, POLLOUT, timeout) : -errno;
        int err = 0;
        socklen_t el = sizeof err;
        if (!rc && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err)
            rc = -err;
    }
    if (!rc)
        rc = mproc_fd_set_nonblock(fd, false);
    if (rc) {
        close(fd);
        return rc;
    }
    tune_socket(fd);
    return fd;
}

/* Worker: send the hello and wait for rank 0's acknowledgement, so that a
 * connection that reached some other listener (the loopback address of a
 * host that only shares rank 0's name) is noticed and the next address tried. */
static int hello(int fd, const mhello *h, mproc_deadline d)
{
    double left = mproc_deadline_remaining(d);
    char ack = 0;
    int rc = mproc_write_all(fd, h, sizeof *h);
    if (!rc)
        rc = mproc_wait_fd(fd, POLLIN, left < 5 && left >= 0 ? left : 5);
    if (!rc)
        rc = mproc_read_all(fd, &ack, 1, NULL);
    return rc ? rc : ack == HELLO_ACK ? 0 : MPROC_EPROTO;
}

/* Worker: both channels to rank 0, trying each advertised address (the
 * loopback one only on rank 0's own host). */
static int worker_connect(const mcontact *c, double timeout, int fds[2])
{
    char host[HOST_MAX] = "";
    if (gethostname(host, sizeof host - 1))
        host[0] = 0;
    bool same = c->host[0] && strcmp(host, c->host) == 0;
    mproc_deadline d = mproc_deadline_after(timeout);
    int rc = MPROC_ECONNREFUSED;
    for (int ch = CH_MARK; ch <= CH_WAKE; ch++) {
        fds[ch] = -1;
        for (unsigned i = 0; i < c->naddr && fds[ch] < 0; i++) {
            if (c->addr[i] == htonl(INADDR_LOOPBACK) && !same)
                continue;
            double left = mproc_deadline_remaining(d);
            rc = connect_to(c->addr[i], c->port, left < 5 && left >= 0 ? left : 5);
            if (rc >= 0) {
                mhello h = {.rank = (uint32_t)mpi__g.rank, .channel = (uint32_t)ch};
                memcpy(h.token, c->token, sizeof h.token);
                fds[ch] = rc;
                rc = hello(fds[ch], &h, d);
                if (rc) {
                    close(fds[ch]);
                    fds[ch] = -1;
                }
            }
        }
        if (fds[ch] < 0) {
            char a[INET_ADDRSTRLEN] = "?";
            if (c->naddr)
                inet_ntop(AF_INET, &c->addr[c->naddr - 1], a, sizeof a);
            if (ch == CH_WAKE) {
                close(fds[CH_MARK]);
                fds[CH_MARK] = -1;
            }
            return fail(rc < 0 ? rc : MPROC_ECONNREFUSED,
                        "mproc_mpi_init: rank %d cannot reach rank 0 (host %s, port %u, last "
                        "address tried %s): %s; set MPROC_MPI_ADDR to an address of rank 0 the "
                        "other hosts reach", mpi__g.rank, c->host, c->port, a,
                        mproc_strerror(rc < 0 ? rc : MPROC_ECONNREFUSED));
        }
    }
    return 0;
}

/* Rank 0: take one connection's hello; a stranger or a slow one is dropped. */
static void accept_one(int lfd, const mcontact *c)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    mhello h;
    if (mproc_wait_fd(fd, POLLIN, 2.0) != 0 || mproc_read_all(fd, &h, sizeof h, NULL) != 0 ||
        memcmp(h.token, c->token, sizeof h.token) != 0 || h.rank == 0 ||
        h.rank >= (uint32_t)mpi__g.size || h.channel > CH_WAKE ||
        mpi__g.peers[h.rank].fd[h.channel] >= 0) {
        close(fd);
        return;
    }
    char ack = HELLO_ACK; /* read at once: no byte is left unread on either channel */
    if (mproc_write_all(fd, &ack, 1) != 0) {
        close(fd);
        return;
    }
    tune_socket(fd);
    mpi__g.peers[h.rank].fd[h.channel] = fd;
}

/* Rank 0: accept until every worker connected both channels, every worker
 * reported (codes[] from the gather), or the deadline. */
static int rank0_accept(int lfd, const mcontact *c, double timeout)
{
    int n = mpi__g.size, mine = 0, rc = 0;
    int *codes = calloc((size_t)n, sizeof *codes);
    if (!codes)
        return MPROC_ENOMEM;
    MPI_Request req;
    int e = MPI_Igather(&mine, 1, MPI_INT, codes, 1, MPI_INT, 0, mpi__g.comm, &req);
    if (e != MPI_SUCCESS) {
        free(codes);
        return mpi_fail(e, "MPI_Igather");
    }
    mproc_deadline d = mproc_deadline_after(timeout + 5);
    int reported = 0, connected = 0;
    while (!reported || connected < 2 * (n - 1)) {
        if (!reported && (e = MPI_Test(&req, &reported, MPI_STATUS_IGNORE)) != MPI_SUCCESS) {
            rc = mpi_fail(e, "MPI_Test");
            break;
        }
        if (reported) {
            for (int w = 1; w < n && !rc; w++)
                if (codes[w])
                    rc = fail(codes[w], "mproc_mpi_init: rank %d could not connect to rank 0 (%s); "
                              "its stderr has the details; set MPROC_MPI_ADDR to an address of "
                              "rank 0 the other hosts reach", w, mproc_errname(codes[w]));
            if (rc)
                break;
        }
        if (mproc_deadline_expired(d)) {
            rc = fail(MPROC_ETIMEDOUT, "mproc_mpi_init: only %d of %d liveness connections "
                      "arrived in time", connected, 2 * (n - 1));
            break;
        }
        struct pollfd p = {.fd = lfd, .events = POLLIN};
        if (poll(&p, 1, 10) == 1) {
            accept_one(lfd, c);
            connected = 0;
            for (int w = 1; w < n; w++)
                connected += (mpi__g.peers[w].fd[0] >= 0) + (mpi__g.peers[w].fd[1] >= 0);
        }
    }
    if (!reported) /* an MPI collective cannot be abandoned: it ends when every rank came */
        MPI_Wait(&req, MPI_STATUS_IGNORE);
    free(codes);
    return rc;
}

static void close_peers(void)
{
    for (int w = 1; mpi__g.peers && w < mpi__g.size; w++)
        for (int ch = 0; ch < 2; ch++)
            if (mpi__g.peers[w].fd[ch] >= 0) {
                close(mpi__g.peers[w].fd[ch]);
                mpi__g.peers[w].fd[ch] = -1;
            }
}

/* Collective: the liveness channels. Every rank returns the same verdict. */
static int liveness_setup(double timeout, int wfds[2])
{
    mcontact c;
    memset(&c, 0, sizeof c);
    int lfd = -1, rc = 0, e;
    if (mpi__g.rank == 0) {
        mpi__g.peers = calloc((size_t)mpi__g.size, sizeof *mpi__g.peers);
        if (!mpi__g.peers)
            c.status = MPROC_ENOMEM;
        for (int w = 0; mpi__g.peers && w < mpi__g.size; w++)
            mpi__g.peers[w] = (mpi_peer){.fd = {-1, -1}};
        if (!c.status)
            c.status = listen_contact(&lfd, &c);
    }
    if ((e = MPI_Bcast(&c, sizeof c, MPI_BYTE, 0, mpi__g.comm)) != MPI_SUCCESS)
        return mpi_fail(e, "MPI_Bcast");
    if (c.status) {
        if (mpi__g.rank)
            fail(c.status, "mproc_mpi_init: rank 0 could not set up (%s)", mproc_errname(c.status));
        return c.status;
    }
    if (mpi__g.rank == 0) {
        rc = rank0_accept(lfd, &c, timeout);
        close(lfd);
    } else {
        rc = worker_connect(&c, timeout, wfds);
        /* a nonblocking collective matches only its own kind: Igather, as rank 0 */
        MPI_Request req;
        if ((e = MPI_Igather(&rc, 1, MPI_INT, NULL, 0, MPI_INT, 0, mpi__g.comm, &req)) != MPI_SUCCESS ||
            (e = MPI_Wait(&req, MPI_STATUS_IGNORE)) != MPI_SUCCESS)
            return mpi_fail(e, "MPI_Igather");
    }
    int verdict = rc;
    if ((e = MPI_Bcast(&verdict, 1, MPI_INT, 0, mpi__g.comm)) != MPI_SUCCESS)
        return mpi_fail(e, "MPI_Bcast");
    if (verdict && mpi__g.rank == 0)
        close_peers();
    if (verdict && mpi__g.rank && !rc)
        rc = fail(verdict, "mproc_mpi_init: the setup failed on another rank (%s)",
                  mproc_errname(verdict));
    if (rc && mpi__g.rank) {
        for (int ch = 0; ch < 2; ch++)
            if (wfds[ch] >= 0)
                close(wfds[ch]);
    }
    return rc;
}

/* ------------------------------------------------------------ init / end */

/* Open MPI's mpirun ends the whole job when a rank dies unless it runs with
 * --enable-recovery, which it announces to the ranks in the environment. */
static void warn_no_recovery(void)
{
    const char *rec = getenv("OMPI_MCA_orte_enable_recovery");
    if (mpi__g.size > 1 && getenv("OMPI_COMM_WORLD_SIZE") && !(rec && (rec[0] == '1' || rec[0] == 't')))
        mproc_log(MPROC_LOG_WARNING, "mproc_mpi_init: mpirun runs without --enable-recovery: a "
                  "worker rank that dies will end the whole job instead of failing its tasks "
                  "with MPROC_EWORKER");
}

static void at_exit(void)
{
    if (mpi__g.state == MG_UP && mpi__g.pid == getpid())
        mproc_mpi_finalize();
}

static int start_mpi(int *argc, char ***argv, const mproc_mpi_opts *o)
{
    int inited = 0, prov = 0, e;
    MPI_Initialized(&inited);
    if (!inited) {
        /* Open MPI's MPI_Finalize starts with a runtime-wide fence that, once a
         * rank has died, sometimes never completes (1 run in 5 over TCP in our
         * tests). Every message of ours has completed by then (rank 0 has all
         * results, STOP is the last message), so skip it, on every rank alike.
         * A value the user set wins. */
        setenv("OMPI_MCA_async_mpi_finalize", "1", 0);
        int want = o->thread_multiple ? MPI_THREAD_MULTIPLE : MPI_THREAD_SERIALIZED;
        if ((e = MPI_Init_thread(argc, argv, want, &prov)) != MPI_SUCCESS)
            return mpi_fail(e, "MPI_Init_thread");
        mpi__g.we_init = true;
    } else {
        MPI_Query_thread(&prov);
    }
    if (prov < MPI_THREAD_SERIALIZED)
        return fail(MPROC_ESTATE, "mproc_mpi_init: MPI gives thread level %d; the executor needs "
                    "MPI_THREAD_SERIALIZED or more (MPI_Init_thread)", prov);
    if ((e = MPI_Comm_dup(MPI_COMM_WORLD, &mpi__g.comm)) != MPI_SUCCESS)
        return mpi_fail(e, "MPI_Comm_dup");
    MPI_Comm_set_errhandler(mpi__g.comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(mpi__g.comm, &mpi__g.rank);
    MPI_Comm_size(mpi__g.comm, &mpi__g.size);
    return 0;
}

static void end_mpi(void)
{
    if (mpi__g.comm != MPI_COMM_NULL)
        MPI_Comm_free(&mpi__g.comm);
    if (mpi__g.we_init) {
        MPI_Finalize();
        mpi__g.we_init = false;
    }
}

/* A worker rank after setup: serve, then leave the process. With rank 0 gone
 * MPI_Finalize could wait forever for it (its fence), so then only _exit. */
_Noreturn static void worker_exit(int status, bool rank0_alive)
{
    fflush(NULL);
    if (!rank0_alive)
        _exit(status);
    end_mpi();
    exit(status);
}

int mproc_mpi_init(int *argc, char ***argv, const mproc_mpi_opts *opts)
{
    mproc_mpi_opts o = {0};
    if (opts)
        o = *opts;
    if (!(o.connect_timeout > 0))
        o.connect_timeout = 30.0;
    pthread_mutex_lock(&mpi__g.mu);
    if (mpi__g.state != MG_NONE) {
        pthread_mutex_unlock(&mpi__g.mu);
        return fail(MPROC_ESTATE, "mproc_mpi_init: called %s", mpi__g.state == MG_UP ? "twice" :
                    "after mproc_mpi_finalize");
    }
    int rc = start_mpi(argc, argv, &o);
    struct sigaction sa;
    if (!rc && sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
    int wfds[2] = {-1, -1};
    if (!rc && mpi__g.size > 1)
        rc = liveness_setup(o.connect_timeout, wfds);
    if (mpi__g.rank > 0) {
        /* Never back to main(): user code after the call runs on rank 0 only. */
        pthread_mutex_unlock(&mpi__g.mu);
        if (rc) {
            fprintf(stderr, "mproc (rank %d): %s\n", mpi__g.rank, mproc_errmsg());
            worker_exit(1, true);
        }
        mpi__g.peers = calloc(1, sizeof *mpi__g.peers);
        if (!mpi__g.peers)
            worker_exit(1, true);
        mpi__g.peers[0] = (mpi_peer){.fd = {wfds[0], wfds[1]}, .alive = true};
        int st = mpi__serve();
        worker_exit(st, st == 0);
    }
    if (rc) {
        char m[512];
        snprintf(m, sizeof m, "%s", mproc_errmsg());
        close_peers();
        free(mpi__g.peers);
        mpi__g.peers = NULL;
        end_mpi();
        mpi__g.state = MG_DOWN;
        pthread_mutex_unlock(&mpi__g.mu);
        return fail(rc, "%s", m);
    }
    for (int w = 1; w < mpi__g.size; w++)
        mpi__g.peers[w].alive = true;
    atomic_store(&mpi__g.nalive, mpi__g.size - 1);
    mpi__g.pid = getpid();
    mpi__g.state = MG_UP;
    pthread_mutex_unlock(&mpi__g.mu);
    atexit(at_exit);
    warn_no_recovery();
    return 0;
}

void mpi__peer_dead(int w)
{
    mpi_peer *p = &mpi__g.peers[w];
    if (!p->alive)
        return;
    p->alive = false;
    atomic_fetch_sub(&mpi__g.nalive, 1);
    for (int ch = 0; ch < 2; ch++)
        if (p->fd[ch] >= 0) {
            close(p->fd[ch]);
            p->fd[ch] = -1;
        }
}

void mpi__bury(void *buf)
{
    void **g = realloc(mpi__g.grave, (mpi__g.ngrave + 1) * sizeof *g);
    if (!g)
        return; /* leak it rather than free memory MPI may still read */
    mpi__g.grave = g;
    mpi__g.grave[mpi__g.ngrave++] = buf;
}

int mproc_mpi_finalize(void)
{
    pthread_mutex_lock(&mpi__g.mu);
    if (mpi__g.state != MG_UP) {
        pthread_mutex_unlock(&mpi__g.mu);
        return 0;
    }
    if (mpi__g.pid != getpid()) {
        pthread_mutex_unlock(&mpi__g.mu);
        return fail(MPROC_ESTATE, "mproc_mpi_finalize: not the process that called mproc_mpi_init");
    }
    void *exec = mpi__g.exec;
    pthread_mutex_unlock(&mpi__g.mu);
    int rc = exec ? mpi__exec_stop(exec) : 0; /* its tasks end first; it stops using MPI */
    if (rc)
        return fail(rc, "mproc_mpi_finalize: called from a done-callback of the executor");
    pthread_mutex_lock(&mpi__g.mu);
    mpi__g.state = MG_DOWN;
    for (int w = 1; w < mpi__g.size; w++)
        if (mpi__g.peers[w].alive)
            MPI_Send(NULL, 0, MPI_BYTE, w, TAG_STOP, mpi__g.comm);
    bool we = mpi__g.we_init;
    int e = MPI_SUCCESS;
    if (mpi__g.comm != MPI_COMM_NULL)
        MPI_Comm_free(&mpi__g.comm);
    if (we) {
        e = MPI_Finalize();
        mpi__g.we_init = false;
    }
    close_peers(); /* after: a worker takes EOF before STOP for rank 0's death */
    for (size_t i = 0; i < mpi__g.ngrave; i++)
        free(mpi__g.grave[i]);
    free(mpi__g.grave);
    mpi__g.grave = NULL;
    mpi__g.ngrave = 0;
    for (size_t i = 0; i < mpi__g.nfns; i++)
        free(mpi__g.fns[i].def.data);
    free(mpi__g.fns);
    mpi__g.fns = NULL;
    mpi__g.nfns = 0;
    free(mpi__g.peers);
    mpi__g.peers = NULL;
    atomic_store(&mpi__g.nalive, 0);
    pthread_mutex_unlock(&mpi__g.mu);
    return e == MPI_SUCCESS ? 0 : mpi_fail(e, "MPI_Finalize");
}

int mproc_mpi_rank(void)
{
    return mpi__g.rank;
}

int mproc_mpi_size(void)
{
    return mpi__g.rank < 0 ? 0 : mpi__g.size;
}

int mproc_mpi_workers(void)
{
    return mpi__g.state == MG_UP ? atomic_load(&mpi__g.nalive) : 0;
}

int mpi__fn_id(mproc_task task, uint32_t *id)
{
    for (size_t i = mpi__g.nfns; i-- > 0;)
        if (mpi__g.fns[i].task.kind == task.kind && mpi__g.fns[i].task.fn.value == task.fn.value) {
            *id = (uint32_t)i;
            return 0;
        }
    mpi_fn *n = realloc(mpi__g.fns, (mpi__g.nfns + 1) * sizeof *n);
    if (!n)
        return MPROC_ENOMEM;
    mpi__g.fns = n;
    mpi_fn *f = &n[mpi__g.nfns];
    memset(f, 0, sizeof *f);
    f->task = task;
    uint32_t hdr[2] = {(uint32_t)mpi__g.nfns, 0};
    int rc = mproc_buf_append(&f->def, hdr, sizeof hdr);
    if (!rc)
        rc = mproc_task_ref(task, &f->def);
    if (rc) {
        free(f->def.data);
        return rc;
    }
    mpi__st32(f->def.data + 4, (uint32_t)(f->def.len - sizeof hdr));
    *id = (uint32_t)mpi__g.nfns++;
    return 0;
}
