/* test_process.c — processes under fork, spawn and forkserver: exit codes,
 * signals, timeouts, arguments and shareable objects, fd hygiene, daemons,
 * start-up errors (missing mproc_init, build-id mismatch), and the tracker. */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "mtest.h"
#include "mtest_helper.h"


/* ------------------------------------------------------------ utilities */

static mproc_process *start_m(mproc_start_method m, mproc_target_fn fn, mproc_args *a,
                              const char *name, bool daemon)
{
    mproc_process_opts o = {.name = name, .daemon = daemon, .ctx = mproc_get_context(m)};
    mproc_process *p;
    CHECK_OK(mproc_process_new(&p, fn, a, &o));
    CHECK_OK(mproc_process_start(p));
    return p;
}

static void join_close(mproc_process *p, int want_code)
{
    CHECK_OK(mproc_process_join(p, 30.0));
    CHECK_EQ(mproc_process_exitcode(p), want_code);
    CHECK(!mproc_process_is_alive(p));
    CHECK_OK(mproc_process_close(p));
}

/* A "gate": the child blocks reading one byte from fd arg 0 until the parent opens it. */
typedef struct {
    int rd, wr;
} gate;

static gate gate_new(void)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    return (gate){p[0], p[1]};
}

static void gate_open(gate *g)
{
    CHECK_OK(mproc_write_all(g->wr, "g", 1));
}

static void gate_free(gate *g)
{
    close(g->rd);
    close(g->wr);
}

static mproc_args *gate_args(gate *g)
{
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_fd(a, g->rd));
    return a;
}

static int wait_gate(mproc_args *a)
{
    char c;
    return mproc_read_all(mproc_args_fd(a, 0), &c, 1, NULL) == 0 ? 0 : 99;
}

/* -------------------------------------------------------------- targets */

static int t_return0(mproc_args *a)
{
    (void)a;
    return 0;
}

static int t_return3(mproc_args *a)
{
    (void)a;
    return 3;
}

static int t_segv(mproc_args *a)
{
    (void)a;
    /* A genuine fault on an inaccessible page; default action so that sanitizer
     * runtimes do not turn it into an exit code. */
    signal(SIGSEGV, SIG_DFL);
    volatile char *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    *page = 1;
    return 0;
}

/* Validates every kind of argument and answers on the fd / shareable channel. */
typedef struct {
    int fd;
    char label[32];
} chan;

static int chan_export(const void *obj, mproc_buf *out, int *fds, size_t *nfds, size_t max)
{
    const chan *c = obj;
    if (*nfds >= max)
        return MPROC_EINVAL;
    fds[(*nfds)++] = c->fd;
    return mproc_buf_append(out, c->label, strlen(c->label));
}

static int chan_import(const void *data, size_t len, const int *fds, size_t nfds, void **obj)
{
    if (nfds != 1 || len >= sizeof(((chan *)0)->label))
        return MPROC_EPROTO;
    chan *c = calloc(1, sizeof *c);
    if (!c)
        return MPROC_ENOMEM;
    c->fd = fds[0];
    memcpy(c->label, data, len);
    *obj = c;
    return 0;
}

static void chan_release(void *obj)
{
    chan *c = obj;
    close(c->fd);
    free(c);
}

static const mproc_shareable_type chan_type = {"test.chan", chan_export, chan_import, chan_release};

#define BIG (1u << 20)

static int t_check_args(mproc_args *a)
{
    int64_t i;
    double d;
    size_t n;
    if (mproc_args_count(a) != 8)
        return 10;
    if (mproc_args_get_int(a, 0, &i) || i != -5)
        return 11;
    if (mproc_args_get_int(a, 1, &i) || i != INT64_MAX)
        return 12;
    if (mproc_args_get_double(a, 2, &d) || d != 3.1415927)
        return 13;
    const char *s = mproc_args_str(a, 3);
    if (!s || strcmp(s, "h\xc3\xa9llo") != 0)
        return 14;
    const unsigned char *b = mproc_args_bytes(a, 4, &n);
    if (!b || n != 5 || memcmp(b, "a\0b\0c", 5) != 0)
        return 15;
    b = mproc_args_bytes(a, 5, &n);
    if (!b || n != BIG)
        return 16;
    for (size_t k = 0; k < n; k++)
        if (b[k] != (unsigned char)(k * 13))
            return 17;
    if (mproc_args_str(a, 0) || mproc_args_get_int(a, 3, &i) != MPROC_EINVAL ||
        mproc_args_kind(a, 8) != MPROC_ARG_NONE || mproc_args_object(a, 6, &chan_type))
        return 18; /* kind mismatches are refused */
    int fd = mproc_args_fd(a, 6);
    chan *c = mproc_args_object(a, 7, &chan_type);
    if (fd < 0 || !c || strcmp(c->label, "chan-label") != 0)
        return 19;
    /* Answer through both: the plain fd and the object's socket. */
    if (mproc_write_all(fd, "fd-ok", 5) || mproc_write_all(c->fd, "obj-ok", 6))
        return 20;
    return 0;
}

/* Lists /proc/self/fd and writes the numbers, space-separated, to fd arg 0. */
static int t_list_fds(mproc_args *a)
{
    char list[512];
    mtest_count_fds(list, sizeof list);
    int fd = mproc_args_fd(a, 0);
    return mproc_write_all(fd, list, strlen(list) + 1) ? 1 : 0;
}

/* Reports name, parent pid, parent liveness, daemon flag, log level. */
static int t_whoami(mproc_args *a)
{
    char buf[256];
    mproc_process *parent = mproc_parent_process();
    int n = snprintf(buf, sizeof buf, "%s|%d|%d|%d|%d|%s", mproc_process_name(mproc_current_process()),
                     parent ? (int)mproc_process_pid(parent) : -1,
                     parent ? mproc_process_is_alive(parent) : -1,
                     mproc_process_daemon(mproc_current_process()), mproc_log_level(),
                     parent ? mproc_process_name(parent) : "-");
    return mproc_write_all(mproc_args_fd(a, 0), buf, (size_t)n + 1) ? 1 : 0;
}

static int read_reply(int fd, char *buf, size_t len)
{
    size_t got = 0;
    CHECK_OK(mproc_wait_fd(fd, POLLIN, 30.0));
    ssize_t n = mproc_read_some(fd, buf, len - 1);
    CHECK(n > 0);
    got = (size_t)n;
    buf[got] = 0;
    return (int)got;
}

/* --------------------------------------------------- per-method scenarios */

static void normal_exit(mproc_start_method m)
{
    mproc_process_opts o = {.ctx = mproc_get_context(m)};
    mproc_process *p;
    CHECK_OK(mproc_process_new(&p, t_return0, NULL, &o));
    CHECK_EQ(mproc_process_exitcode(p), MPROC_EXITCODE_NONE);
    CHECK_EQ(mproc_process_pid(p), 0);
    CHECK_EQ(mproc_process_sentinel(p), -1);
    CHECK(!mproc_process_is_alive(p));
    CHECK_EQ(mproc_process_start_method(p), m);
    CHECK_OK(mproc_process_start(p));
    CHECK(mproc_process_pid(p) > 0);
    CHECK(mproc_process_sentinel(p) >= 0);
    CHECK_EQ(mproc_process_start(p), MPROC_ESTATE);
    CHECK_OK(mproc_process_join(p, 30.0));
    CHECK_OK(mproc_wait_fd(mproc_process_sentinel(p), POLLIN, 0)); /* sentinel readable */
    CHECK_EQ(mproc_process_exitcode(p), 0);
    CHECK_OK(mproc_process_join(p, 0)); /* joining again is fine */
    CHECK_OK(mproc_process_terminate(p)); /* signalling an ended child is a no-op */
    CHECK_OK(mproc_process_close(p));
}

static void exit_code_3(mproc_start_method m)
{
    join_close(start_m(m, t_return3, NULL, NULL, false), 3);
}

static void sigsegv(mproc_start_method m)
{
    join_close(start_m(m, t_segv, NULL, NULL, false), -SIGSEGV);
}

static void sigkill_by_parent(mproc_start_method m)
{
    gate g = gate_new();
    mproc_args *a = gate_args(&g);
    mproc_process *p = start_m(m, wait_gate, a, NULL, false);
    mproc_args_free(a);
    CHECK(mproc_process_is_alive(p));
    CHECK_OK(mproc_process_kill(p));
    join_close(p, -SIGKILL);
    gate_free(&g);
}

static void terminate(mproc_start_method m)
{
    gate g = gate_new();
    mproc_args *a = gate_args(&g);
    mproc_process *p = start_m(m, wait_gate, a, NULL, false);
    mproc_args_free(a);
    CHECK_OK(mproc_process_terminate(p));
    join_close(p, -SIGTERM);
    gate_free(&g);
}

static void join_timeout(mproc_start_method m)
{
    gate g = gate_new();
    mproc_args *a = gate_args(&g);
    mproc_process *p = start_m(m, wait_gate, a, NULL, false);
    mproc_args_free(a);
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_process_join(p, 0.1), MPROC_ETIMEDOUT);
    double dt = mproc_monotonic() - t0;
    CHECK(dt >= 0.099 && dt < 10.0);
    CHECK_EQ(mproc_process_join(p, 0), MPROC_ETIMEDOUT);
    CHECK(mproc_process_is_alive(p));
    CHECK_EQ(mproc_process_exitcode(p), MPROC_EXITCODE_NONE);
    CHECK_EQ(mproc_process_close(p), MPROC_ESTATE); /* cannot close a running child */
    CHECK_EQ(mproc_wait_fd(mproc_process_sentinel(p), POLLIN, 0), MPROC_ETIMEDOUT);
    gate_open(&g);
    join_close(p, 0);
    gate_free(&g);
}

static void args_round_trip(mproc_start_method m)
{
    int p[2], sv[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    unsigned char *big = malloc(BIG);
    for (size_t k = 0; k < BIG; k++)
        big[k] = (unsigned char)(k * 13);
    chan c = {.fd = sv[1], .label = "chan-label"};
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_int(a, -5));
    CHECK_OK(mproc_args_add_int(a, INT64_MAX));
    CHECK_OK(mproc_args_add_double(a, 3.1415927));
    CHECK_OK(mproc_args_add_str(a, "h\xc3\xa9llo"));
    CHECK_OK(mproc_args_add_bytes(a, "a\0b\0c", 5));
    CHECK_OK(mproc_args_add_bytes(a, big, BIG));
    CHECK_OK(mproc_args_add_fd(a, p[1]));
    CHECK_OK(mproc_args_add_object(a, &chan_type, &c));
    CHECK_EQ(mproc_args_count(a), 8);
    CHECK_EQ(mproc_args_kind(a, 7), MPROC_ARG_OBJECT);
    CHECK(mproc_args_object(a, 7, &chan_type) == &c);
    free(big);
    mproc_process *proc = start_m(m, t_check_args, a, NULL, false);
    mproc_args_free(a);
    join_close(proc, 0);
    char buf[16];
    CHECK_OK(mproc_read_all(p[0], buf, 5, NULL));
    CHECK(memcmp(buf, "fd-ok", 5) == 0);
    CHECK_OK(mproc_read_all(sv[0], buf, 6, NULL));
    CHECK(memcmp(buf, "obj-ok", 6) == 0);
    close(p[0]); close(p[1]); close(sv[0]); close(sv[1]);
}

static void names_and_parent(mproc_start_method m)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_fd(a, p[1]));
    mproc_log_to_stderr(MPROC_LOG_ERROR); /* children inherit the level */
    mproc_process *c = start_m(m, t_whoami, a, "worker-7", false);
    join_close(c, 0);
    char buf[256], want[256];
    read_reply(p[0], buf, sizeof buf);
    snprintf(want, sizeof want, "worker-7|%d|1|0|%d|ParentProcess", (int)getpid(), MPROC_LOG_ERROR);
    CHECK(strcmp(buf, want) == 0);
    /* default names count up as in Python: Process-N */
    c = start_m(m, t_whoami, a, NULL, false);
    join_close(c, 0);
    read_reply(p[0], buf, sizeof buf);
    CHECK(strncmp(buf, "Process-", 8) == 0);
    mproc_args_free(a);
    mproc_log_to_stderr(MPROC_LOG_WARNING);
    close(p[0]);
    close(p[1]);
}

static void sentinel_pollable(mproc_start_method m)
{
    gate g = gate_new();
    mproc_args *a = gate_args(&g);
    mproc_process *p = start_m(m, wait_gate, a, NULL, false);
    mproc_args_free(a);
    struct pollfd pfd = {.fd = mproc_process_sentinel(p), .events = POLLIN};
    CHECK_EQ(poll(&pfd, 1, 0), 0);
    gate_open(&g);
    CHECK_EQ(poll(&pfd, 1, 30000), 1);
    join_close(p, 0);
    gate_free(&g);
}

/* Children started by spawn/forkserver hold only 0, 1, 2 and what they were handed. */
static void fd_hygiene(mproc_start_method m)
{
    int p[2];
    CHECK(pipe(p) == 0); /* deliberately NOT close-on-exec */
    int stray = open("/dev/null", O_RDONLY); /* another inheritable fd */
    CHECK(stray >= 0);
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_fd(a, p[1]));
    mproc_process *c = start_m(m, t_list_fds, a, NULL, false);
    mproc_args_free(a);
    join_close(c, 0);
    char buf[512];
    read_reply(p[0], buf, sizeof buf);
    /* exactly four fds: 0 1 2 and the handed pipe end (whatever its number) */
    int fds[16], n = 0;
    for (char *tok = strtok(buf, " "); tok && n < 16; tok = strtok(NULL, " "))
        fds[n++] = atoi(tok);
    if (n != 4)
        fprintf(stderr, "child fds: %d entries\n", n);
    CHECK_EQ(n, 4);
    CHECK(fds[0] == 0 && fds[1] == 1 && fds[2] == 2); /* fds[3] carried the reply */
    close(stray);
    close(p[0]);
    close(p[1]);
}

/* A child (started with m) that itself starts a child with the same method. */
static int t_grandchild(mproc_args *a)
{
    int64_t m;
    if (mproc_args_get_int(a, 1, &m))
        return 40;
    mproc_process_opts o = {.ctx = mproc_get_context((mproc_start_method)m)};
    mproc_process *p;
    if (mproc_process_new(&p, t_whoami, a, &o) || mproc_process_start(p))
        return 41;
    if (mproc_process_join(p, 30.0) || mproc_process_exitcode(p) != 0)
        return 42;
    return mproc_process_close(p) ? 43 : 0;
}

static void nested_children(mproc_start_method m)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_fd(a, p[1]));
    CHECK_OK(mproc_args_add_int(a, m));
    mproc_process *c = start_m(m, t_grandchild, a, NULL, false);
    mproc_args_free(a);
    pid_t child_pid = mproc_process_pid(c);
    join_close(c, 0);
    char buf[256], want[64];
    read_reply(p[0], buf, sizeof buf);
    /* grandchild's name extends the child's identity; its parent is the child */
    CHECK(strncmp(buf, "Process-", 8) == 0 && strstr(buf, ":1|") != NULL);
    snprintf(want, sizeof want, "|%d|", (int)child_pid);
    CHECK(strstr(buf, want) != NULL);
    close(p[0]);
    close(p[1]);
}

static int t_say_x(mproc_args *a)
{
    return mproc_write_all(mproc_args_fd(a, 0), "x", 1) ? 1 : 0;
}

/* Once started, the process object holds no copy of the handed fds: when the
 * child is done and the parent closes its end, the reader sees EOF. */
static void handed_fd_released_after_start(mproc_start_method m)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_fd(a, p[1]));
    mproc_process *c = start_m(m, t_say_x, a, NULL, false);
    mproc_args_free(a);
    close(p[1]);
    CHECK_OK(mproc_process_join(c, 30.0)); /* the object stays open on purpose */
    char buf[4];
    size_t got = 0;
    CHECK_OK(mproc_wait_fd(p[0], POLLIN, 10.0));
    CHECK_EQ(mproc_read_all(p[0], buf, sizeof buf, &got), MPROC_ECLOSED);
    CHECK_EQ(got, 1);
    CHECK_OK(mproc_process_close(c));
    close(p[0]);
}

static size_t read_cmdline(char *buf, size_t len)
{
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    size_t got = 0;
    mproc_read_all(fd, buf, len, &got);
    close(fd);
    return got;
}

static int t_send_cmdline(mproc_args *a)
{
    char buf[1024];
    size_t n = read_cmdline(buf, sizeof buf);
    return mproc_write_all(mproc_args_fd(a, 0), buf, n) ? 1 : 0;
}

static int t_spawn_grandchild_cmdline(mproc_args *a)
{
    mproc_process_opts o = {.ctx = mproc_get_context(MPROC_START_SPAWN)};
    mproc_process *p;
    if (mproc_process_new(&p, t_send_cmdline, a, &o) || mproc_process_start(p) ||
        mproc_process_join(p, 30.0) || mproc_process_exitcode(p) != 0)
        return 1;
    return mproc_process_close(p);
}

/* Spawned children, and their own spawned children, run with the program's argv
 * (so code before mproc_init sees what the program saw). */
MTEST(test_spawned_children_get_the_program_argv)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_fd(a, p[1]));
    join_close(start_m(MPROC_START_SPAWN, t_spawn_grandchild_cmdline, a, NULL, false), 0);
    mproc_args_free(a);
    close(p[1]);
    char mine[1024], theirs[1024];
    size_t n = read_cmdline(mine, sizeof mine), got = 0;
    mproc_read_all(p[0], theirs, sizeof theirs, &got);
    close(p[0]);
    CHECK_EQ(got, n);
    CHECK(memcmp(mine, theirs, n) == 0);
}


FOR_METHODS(normal_exit)
FOR_METHODS(exit_code_3)
FOR_METHODS(sigsegv)
FOR_METHODS(sigkill_by_parent)
FOR_METHODS(terminate)
FOR_METHODS(join_timeout)
FOR_METHODS(args_round_trip)
FOR_METHODS(names_and_parent)
FOR_METHODS(sentinel_pollable)
FOR_METHODS(nested_children)
FOR_METHODS(handed_fd_released_after_start)

MTEST(test_fd_hygiene_spawn) { fd_hygiene(MPROC_START_SPAWN); }
MTEST(test_fd_hygiene_forkserver) { fd_hygiene(MPROC_START_FORKSERVER); }

/* ------------------------------------------------------ misuse and state */

MTEST(test_misuse_is_refused_with_clear_codes)
{
    mproc_process *p;
    CHECK_EQ(mproc_process_new(&p, NULL, NULL, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_process_new(NULL, t_return0, NULL, NULL), MPROC_EINVAL);
    CHECK_OK(mproc_process_new(&p, t_return0, NULL, NULL));
    CHECK_EQ(mproc_process_join(p, 0), MPROC_ESTATE);
    CHECK_EQ(mproc_process_kill(p), MPROC_ESTATE);
    CHECK(strstr(mproc_errmsg(), "not been started") != NULL);
    CHECK_OK(mproc_process_close(p));
    CHECK_OK(mproc_process_close(NULL));
    mproc_process *self = mproc_current_process();
    CHECK(strcmp(mproc_process_name(self), "MainProcess") == 0);
    CHECK_EQ(mproc_process_pid(self), getpid());
    CHECK(mproc_process_is_alive(self));
    CHECK_EQ(mproc_process_join(self, 0), MPROC_ESTATE);
    CHECK_EQ(mproc_process_close(self), MPROC_EINVAL);
    CHECK(mproc_parent_process() == NULL);
    mproc_args *a = mproc_args_new();
    CHECK_EQ(mproc_args_add_fd(a, 12345), MPROC_EBADF);
    static const mproc_shareable_type incomplete = {"x", NULL, NULL, NULL};
    CHECK_EQ(mproc_args_add_object(a, &incomplete, a), MPROC_EINVAL);
    CHECK_EQ(mproc_args_add_str(a, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_args_take_fd(a, 0), -1);
    mproc_args_free(a);
    mproc_args_free(NULL);
}

MTEST(test_take_fd_transfers_ownership)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_fd(a, p[0]));
    int fd = mproc_args_take_fd(a, 0);
    CHECK(fd >= 0 && fd != p[0]);
    mproc_args_free(a); /* must not close the taken fd */
    CHECK(fcntl(fd, F_GETFD) >= 0);
    close(fd);
    close(p[0]);
    close(p[1]);
}

MTEST(test_set_start_method_is_fixed_once_unless_forced)
{
    CHECK_EQ(mproc_get_start_method(), MPROC_START_FORK);
    CHECK_OK(mproc_set_start_method(MPROC_START_SPAWN, false));
    CHECK_EQ(mproc_get_start_method(), MPROC_START_SPAWN);
    CHECK_EQ(mproc_set_start_method(MPROC_START_FORK, false), MPROC_ESTATE);
    CHECK_EQ(mproc_set_start_method((mproc_start_method)9, true), MPROC_EINVAL);
    CHECK(mproc_get_context((mproc_start_method)9) == NULL);
    /* the default context follows the global choice */
    CHECK_EQ(mproc_context_start_method(NULL), MPROC_START_SPAWN);
    CHECK_EQ(mproc_context_start_method(mproc_get_context(MPROC_START_DEFAULT)), MPROC_START_SPAWN);
    mproc_process *p;
    CHECK_OK(mproc_process_new(&p, t_return0, NULL, NULL));
    CHECK_EQ(mproc_process_start_method(p), MPROC_START_SPAWN);
    CHECK_OK(mproc_process_close(p));
    CHECK_OK(mproc_set_start_method(MPROC_START_FORKSERVER, true));
    CHECK_EQ(mproc_get_start_method(), MPROC_START_FORKSERVER);
    CHECK(strcmp(mproc_start_method_name(MPROC_START_FORKSERVER), "forkserver") == 0);
}

static int t_start_from_daemon(mproc_args *a)
{
    mproc_process *p;
    if (mproc_process_new(&p, t_return0, NULL, NULL))
        return 50;
    int rc = mproc_process_start(p);
    mproc_process_close(p);
    (void)a;
    return rc == MPROC_ESTATE ? 0 : 51;
}

MTEST(test_daemon_may_not_start_children)
{
    mproc_process *p = start_m(MPROC_START_FORK, t_start_from_daemon, NULL, NULL, true);
    CHECK(mproc_process_daemon(p));
    join_close(p, 0);
}

MTEST(test_active_children_lists_running_and_reaps_ended)
{
    gate g = gate_new();
    mproc_args *a = gate_args(&g);
    mproc_process *p[3];
    for (int i = 0; i < 3; i++)
        p[i] = start_m(MPROC_START_FORK, i == 2 ? t_return0 : wait_gate, a, NULL, false);
    mproc_args_free(a);
    CHECK_OK(mproc_process_join(p[2], 30.0));
    pid_t done_pid = mproc_process_pid(p[2]);
    mproc_process **v;
    size_t n;
    CHECK_OK(mproc_active_children(&v, &n));
    CHECK_EQ(n, 2);
    CHECK((v[0] == p[0] && v[1] == p[1]) || (v[0] == p[1] && v[1] == p[0]));
    free(v);
    /* the ended one is reaped already: no zombie to wait for */
    CHECK(waitpid(done_pid, NULL, WNOHANG) < 0 && errno == ECHILD);
    gate_open(&g);
    gate_open(&g);
    for (int i = 0; i < 3; i++)
        join_close(p[i], 0);
    CHECK_OK(mproc_active_children(&v, &n));
    CHECK_EQ(n, 0);
    free(v);
    gate_free(&g);
}

MTEST(test_cpu_count_is_positive)
{
    CHECK(mproc_cpu_count() >= 1);
}

static int t_print_nothing(mproc_args *a)
{
    (void)a;
    return 0;
}

/* The parent's unflushed stdio buffer must not be written again by a fork child. */
MTEST(test_fork_child_does_not_repeat_buffered_output)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    dup2(p[1], STDOUT_FILENO);
    setvbuf(stdout, NULL, _IOFBF, 4096);
    printf("once");
    join_close(start_m(MPROC_START_FORK, t_print_nothing, NULL, NULL, false), 0);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    close(p[1]);
    char buf[64] = {0};
    size_t got;
    mproc_read_all(p[0], buf, sizeof buf - 1, &got);
    close(p[0]);
    CHECK(strcmp(buf, "once") == 0);
}

/* ------------------------------------------- start-up errors, via the helper */


MTEST(test_spawn_without_mproc_init_fails_clearly)
{
    CHECK_EQ(run_helper("noinit", -1, NULL, NULL, false), 0);
}

MTEST(test_spawned_child_whose_main_skips_mproc_init_fails_clearly)
{
    CHECK_EQ(run_helper("child_noinit", -1, NULL, NULL, false), 0);
}

MTEST(test_child_that_never_reaches_mproc_init_hits_start_timeout)
{
    CHECK_EQ(run_helper("start_timeout", -1, NULL, NULL, false), 0);
}

MTEST(test_build_id_mismatch_fails_clearly)
{
    /* The helper is another program: it cannot hold this test's target. */
    CHECK_OK(mproc_set_executable(HELPER_PATH));
    mproc_process_opts o = {.ctx = mproc_get_context(MPROC_START_SPAWN)};
    mproc_process *p;
    CHECK_OK(mproc_process_new(&p, t_return0, NULL, &o));
    CHECK_EQ(mproc_process_start(p), MPROC_EBUILDID);
    CHECK(strstr(mproc_errmsg(), "build-id") != NULL);
    CHECK(strstr(mproc_errmsg(), "different build") != NULL);
    CHECK_OK(mproc_process_close(p));
    CHECK_OK(mproc_set_executable(NULL));
    CHECK_EQ(mproc_set_executable("/nonexistent/program"), MPROC_ENOENT);
}

static void exit_handler(mproc_start_method m)
{
    setenv("MPROC_TEST_METHOD", mproc_start_method_name(m), 1);
    int rep[2];
    CHECK(pipe2(rep, O_CLOEXEC) == 0);
    gate g = gate_new();
    /* The helper starts a daemon (reports 'T' when SIGTERMed) and a non-daemon
     * that waits on our gate, then returns from main(). */
    CHECK_OK(mproc_fd_set_cloexec(g.rd, false));
    char gatevar[16];
    snprintf(gatevar, sizeof gatevar, "%d", g.rd);
    setenv("MPROC_TEST_GATE", gatevar, 1);
    pid_t prog;
    run_helper("exit_handler", rep[1], NULL, &prog, false);
    close(rep[1]);
    CHECK_OK(mproc_fd_set_cloexec(g.rd, true));
    char buf[64];
    CHECK_OK(mproc_read_all(rep[0], buf, 8, NULL)); /* exactly "started\0" */
    CHECK(strcmp(buf, "started") == 0);
    int pfd = (int)syscall(434, prog, 0);
    CHECK(pfd >= 0);
    /* main() has returned, but the program must wait for its non-daemon child */
    CHECK_EQ(mproc_wait_fd(pfd, POLLIN, 0.3), MPROC_ETIMEDOUT);
    gate_open(&g);
    CHECK_OK(mproc_wait_fd(pfd, POLLIN, 30.0));
    int status;
    CHECK_EQ(waitpid(prog, &status, 0), prog);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    size_t got;
    memset(buf, 0, sizeof buf);
    mproc_read_all(rep[0], buf, sizeof buf - 1, &got);
    /* the daemon saw SIGTERM and the non-daemon finished, in some order */
    CHECK(strchr(buf, 'T') != NULL);
    CHECK(strchr(buf, 'N') != NULL);
    close(pfd);
    close(rep[0]);
    gate_free(&g);
}
FOR_METHODS(exit_handler)

MTEST(test_big_boot_cannot_outlast_start_timeout)
{
    CHECK_EQ(run_helper("start_timeout_big", -1, NULL, NULL, false), 0);
}

MTEST(test_forkserver_main_without_mproc_init_fails_clearly)
{
    CHECK_EQ(run_helper("fs_noinit", -1, NULL, NULL, false), 0);
}

MTEST(test_forkserver_that_never_reaches_mproc_init_is_bounded)
{
    CHECK_EQ(run_helper("fs_hang", -1, NULL, NULL, false), 0);
}

MTEST(test_sigchld_ignored_never_gives_wrong_exit_codes)
{
    CHECK_EQ(run_helper("sigchld_ign", -1, NULL, NULL, false), 0);
}

/* Once the sentinel is readable, the exit code is known without joining. */
MTEST(test_forkserver_sentinel_means_exit_code_known)
{
    for (int i = 0; i < 50; i++) {
        mproc_process *p = start_m(MPROC_START_FORKSERVER, t_return3, NULL, NULL, false);
        CHECK_OK(mproc_wait_fd(mproc_process_sentinel(p), POLLIN, 30.0));
        CHECK(!mproc_process_is_alive(p));
        CHECK_EQ(mproc_process_exitcode(p), 3);
        CHECK_OK(mproc_process_close(p));
    }
}

static int t_code_arg(mproc_args *a)
{
    int64_t v = 0;
    mproc_args_get_int(a, 0, &v);
    return (int)v;
}

static void *start_join_loop(void *arg)
{
    intptr_t k = (intptr_t)arg;
    mproc_args *a = mproc_args_new();
    mproc_args_add_int(a, 10 + k);
    for (int i = 0; i < 40; i++) {
        mproc_process_opts o = {.ctx = mproc_get_context(k % 2 ? MPROC_START_FORKSERVER
                                                               : MPROC_START_FORK)};
        mproc_process *p;
        if (mproc_process_new(&p, t_code_arg, a, &o) || mproc_process_start(p) ||
            mproc_process_join(p, 30.0) || mproc_process_exitcode(p) != 10 + k ||
            mproc_process_close(p))
            return (void *)1;
    }
    mproc_args_free(a);
    return NULL;
}

/* Threads each start and join their own children while another lists them all:
 * every exit code is right (no thread reaps another's child). */
MTEST(test_threads_start_and_join_concurrently)
{
    pthread_t t[4];
    for (intptr_t k = 0; k < 4; k++)
        CHECK_EQ(pthread_create(&t[k], NULL, start_join_loop, (void *)k), 0);
    for (int i = 0; i < 200; i++) {
        mproc_process **v;
        size_t n;
        CHECK_OK(mproc_active_children(&v, &n));
        free(v);
    }
    for (int k = 0; k < 4; k++) {
        void *res;
        pthread_join(t[k], &res);
        CHECK(res == NULL);
    }
}

static atomic_bool hammer_stop;
static void *tracker_hammer(void *arg)
{
    (void)arg;
    while (!atomic_load(&hammer_stop)) {
        mproc_tracker_register("shm", "/mproc-test-hammer");
        mproc_tracker_unregister("shm", "/mproc-test-hammer");
    }
    return NULL;
}

/* A raw fork() while another thread is inside the tracker client must not
 * leave the child with a held lock. */
MTEST(test_fork_while_another_thread_holds_library_locks)
{
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, tracker_hammer, NULL), 0);
    for (int i = 0; i < 100; i++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            int rc = mproc_tracker_register("shm", "/mproc-test-child");
            rc |= mproc_tracker_unregister("shm", "/mproc-test-child");
            rc |= mproc_tracker_ensure();
            _exit(rc ? 1 : 0);
        }
        int pfd = (int)syscall(434, pid, 0);
        CHECK(pfd >= 0);
        CHECK_OK(mproc_wait_fd(pfd, POLLIN, 10.0)); /* a deadlocked child fails here */
        close(pfd);
        int status;
        CHECK_EQ(waitpid(pid, &status, 0), pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    atomic_store(&hammer_stop, true);
    pthread_join(t, NULL);
}

/* The fork server is our child in our session (the tracker has its own session). */
static pid_t find_forkserver(void)
{
    char path[64], buf[4096] = {0};
    snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    pid_t found = 0;
    for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n")) {
        pid_t pid = (pid_t)atoi(tok);
        if (getsid(pid) == getsid(0)) {
            CHECK(found == 0); /* exactly one */
            found = pid;
        }
    }
    return found;
}

MTEST(test_forkserver_death_is_survived)
{
    gate g = gate_new();
    mproc_args *a = gate_args(&g);
    mproc_process *inflight = start_m(MPROC_START_FORKSERVER, wait_gate, a, NULL, false);
    mproc_args_free(a);
    pid_t fs = find_forkserver();
    CHECK(fs > 0);
    int fsfd = (int)syscall(434, fs, 0);
    CHECK(fsfd >= 0);
    CHECK_EQ(kill(fs, SIGKILL), 0);
    CHECK_OK(mproc_wait_fd(fsfd, POLLIN, 30.0));
    close(fsfd);
    /* the child it forked keeps running and is still ours to join */
    CHECK(mproc_process_is_alive(inflight));
    CHECK_EQ(mproc_process_join(inflight, 0.05), MPROC_ETIMEDOUT);
    /* a new start brings up a new server (and reaps the dead one) */
    mproc_log_to_stderr(MPROC_LOG_ERROR); /* the restart warning is expected */
    join_close(start_m(MPROC_START_FORKSERVER, t_return3, NULL, NULL, false), 3);
    pid_t fs2 = find_forkserver();
    CHECK(fs2 > 0 && fs2 != fs);
    /* the orphan's exit status died with the old server: join ends, code 255 */
    gate_open(&g);
    CHECK_OK(mproc_process_join(inflight, 30.0));
    CHECK_EQ(mproc_process_exitcode(inflight), 255);
    CHECK_OK(mproc_process_close(inflight));
    gate_free(&g);
}

/* ------------------------------------------------------------- tracker */

MTEST(test_tracker_rejects_bad_names_and_types)
{
    CHECK_EQ(mproc_tracker_register("file", "/x"), MPROC_EINVAL);
    CHECK_EQ(mproc_tracker_register("shm", "noslash"), MPROC_EINVAL);
    CHECK_EQ(mproc_tracker_register("shm", "/a/b"), MPROC_EINVAL);
    CHECK_EQ(mproc_tracker_register("shm", "/"), MPROC_EINVAL);
    CHECK_EQ(mproc_tracker_register(NULL, "/x"), MPROC_EINVAL);
    CHECK(mproc_tracker_pid() > 0); /* the warm-up started it */
}


/* The helper program creates+registers a segment in a spawned child, reports,
 * and we SIGKILL the whole program tree: the tracker must unlink it. */
MTEST(test_tracker_unlinks_after_sigkill_of_the_whole_tree)
{
    mtest_sigkill_tree_expect_unlinked("tracker_kill");
}

/* Unregistered resources are left alone; registered ones are cleaned at exit. */
MTEST(test_tracker_cleans_at_normal_exit_and_respects_unregister)
{
    int rep[2];
    CHECK(pipe2(rep, O_CLOEXEC) == 0);
    pid_t prog;
    int errfd;
    run_helper("tracker_exit", rep[1], &errfd, &prog, false);
    close(rep[1]);
    char buf[512];
    read_reply(rep[0], buf, sizeof buf); /* "<tracker pid> <leaked> <kept>" */
    int tpid = 0;
    char leaked[200] = {0}, kept[200] = {0};
    CHECK_EQ(sscanf(buf, "%d %199s %199s", &tpid, leaked, kept), 3);
    int tfd = (int)syscall(434, tpid, 0);
    int status;
    CHECK_EQ(waitpid(prog, &status, 0), prog);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (tfd >= 0) {
        CHECK_OK(mproc_wait_fd(tfd, POLLIN, 20.0));
        close(tfd);
    }
    CHECK(!shm_exists(leaked));
    CHECK(shm_exists(kept));
    shm_unlink(kept);
    char err[2048] = {0};
    size_t got;
    mproc_read_all(errfd, err, sizeof err - 1, &got);
    CHECK(strstr(err, "There appear to be 1 leaked shm objects") != NULL);
    close(errfd);
    close(rep[0]);
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    static const mtest_case cases[] = {
        METHOD_ENTRIES(normal_exit),
        METHOD_ENTRIES(exit_code_3),
        METHOD_ENTRIES(sigsegv),
        METHOD_ENTRIES(sigkill_by_parent),
        METHOD_ENTRIES(terminate),
        METHOD_ENTRIES(join_timeout),
        METHOD_ENTRIES(args_round_trip),
        METHOD_ENTRIES(names_and_parent),
        METHOD_ENTRIES(sentinel_pollable),
        METHOD_ENTRIES(nested_children),
        METHOD_ENTRIES(handed_fd_released_after_start),
        MTEST_ENTRY(test_fd_hygiene_spawn),
        MTEST_ENTRY(test_spawned_children_get_the_program_argv),
        MTEST_ENTRY(test_fd_hygiene_forkserver),
        MTEST_ENTRY(test_misuse_is_refused_with_clear_codes),
        MTEST_ENTRY(test_take_fd_transfers_ownership),
        MTEST_ENTRY(test_set_start_method_is_fixed_once_unless_forced),
        MTEST_ENTRY(test_daemon_may_not_start_children),
        MTEST_ENTRY(test_active_children_lists_running_and_reaps_ended),
        MTEST_ENTRY(test_cpu_count_is_positive),
        MTEST_ENTRY(test_fork_child_does_not_repeat_buffered_output),
        MTEST_ENTRY(test_spawn_without_mproc_init_fails_clearly),
        MTEST_ENTRY(test_spawned_child_whose_main_skips_mproc_init_fails_clearly),
        MTEST_ENTRY(test_child_that_never_reaches_mproc_init_hits_start_timeout),
        MTEST_ENTRY(test_build_id_mismatch_fails_clearly),
        METHOD_ENTRIES(exit_handler),
        MTEST_ENTRY(test_big_boot_cannot_outlast_start_timeout),
        MTEST_ENTRY(test_forkserver_main_without_mproc_init_fails_clearly),
        MTEST_ENTRY(test_forkserver_that_never_reaches_mproc_init_is_bounded),
        MTEST_ENTRY(test_sigchld_ignored_never_gives_wrong_exit_codes),
        MTEST_ENTRY(test_forkserver_sentinel_means_exit_code_known),
        MTEST_ENTRY(test_threads_start_and_join_concurrently),
        MTEST_ENTRY(test_fork_while_another_thread_holds_library_locks),
        MTEST_ENTRY(test_forkserver_death_is_survived),
        MTEST_ENTRY(test_tracker_rejects_bad_names_and_types),
        MTEST_ENTRY(test_tracker_unlinks_after_sigkill_of_the_whole_tree),
        MTEST_ENTRY(test_tracker_cleans_at_normal_exit_and_respects_unregister),
    };
    mtest_warmup = mtest_warmup_tracker_and_forkserver;
    return mtest_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
