/* helper_prog.c — a second program for test_process: scenarios that need a
 * fresh program (no mproc_init, another build-id, a tree to SIGKILL).
 * The scenario comes from MPROC_TEST_MODE; it exits 0 when it saw what it should. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mproc.h"

#define EXPECT(cond)                                                           \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "helper: %s:%d: %s (errmsg: %s)\n", __FILE__,     \
                    __LINE__, #cond, mproc_errmsg());                          \
            return 1;                                                          \
        }                                                                      \
    } while (0)

static int t_noop(mproc_args *a)
{
    (void)a;
    return 0;
}

static int t_three(mproc_args *a)
{
    (void)a;
    return 3;
}

static int start_rc(mproc_start_method m, mproc_target_fn fn, mproc_args *a, double timeout,
                    bool daemon, mproc_process **out)
{
    mproc_process_opts o = {.ctx = mproc_get_context(m), .start_timeout = timeout, .daemon = daemon};
    mproc_process *p;
    int rc = mproc_process_new(&p, fn, a, &o);
    if (rc)
        return rc;
    rc = mproc_process_start(p);
    if (rc || !out)
        mproc_process_close(p);
    else
        *out = p;
    return rc;
}

static int report_fd(void)
{
    const char *v = getenv("MPROC_TEST_FD");
    return v ? atoi(v) : -1;
}

/* ---- exit_handler: a daemon and a non-daemon child, then main() returns */

static volatile int term_fd = -1;
static void on_term(int sig)
{
    (void)sig;
    if (write(term_fd, "T", 1) < 0)
        _exit(3);
    _exit(0);
}

static int t_daemon(mproc_args *a)
{
    term_fd = mproc_args_fd(a, 0);
    signal(SIGTERM, on_term);
    if (mproc_write_all(mproc_args_fd(a, 1), "d", 1)) /* handler is in place */
        return 2;
    for (;;)
        pause(); /* until SIGTERM */
}

static int t_nondaemon(mproc_args *a)
{
    char c;
    if (mproc_read_all(mproc_args_fd(a, 1), &c, 1, NULL))
        return 2;
    /* 'N' proves the program was still waiting for us (joining) when released */
    if (!mproc_process_is_alive(mproc_parent_process()))
        return 4;
    return mproc_write_all(mproc_args_fd(a, 0), "N", 1) ? 3 : 0;
}

static int t_stubborn_daemon(mproc_args *a)
{
    signal(SIGTERM, SIG_IGN); /* the exit handler must escalate to SIGKILL */
    if (mproc_write_all(mproc_args_fd(a, 1), "s", 1))
        return 2;
    for (;;)
        pause();
}

static int exit_handler_mode(void)
{
    mproc_start_method m = MPROC_START_FORK;
    if (getenv("MPROC_TEST_METHOD"))
        mproc_start_method_parse(getenv("MPROC_TEST_METHOD"), &m);
    int rep = report_fd();
    int gate = atoi(getenv("MPROC_TEST_GATE"));
    int sync[2];
    EXPECT(pipe2(sync, O_CLOEXEC) == 0);
    mproc_args *a = mproc_args_new();
    mproc_args_add_fd(a, rep);
    mproc_args_add_fd(a, sync[1]);
    mproc_process *d, *n;
    EXPECT(start_rc(m, t_daemon, a, 0, true, &d) == 0);
    char c;
    EXPECT(mproc_read_all(sync[0], &c, 1, NULL) == 0);
    mproc_process *s;
    EXPECT(start_rc(m, t_stubborn_daemon, a, 0, true, &s) == 0);
    EXPECT(mproc_read_all(sync[0], &c, 1, NULL) == 0);
    mproc_args_free(a);
    a = mproc_args_new();
    mproc_args_add_fd(a, rep);
    mproc_args_add_fd(a, gate);
    EXPECT(start_rc(m, t_nondaemon, a, 0, false, &n) == 0);
    mproc_args_free(a);
    EXPECT(mproc_write_all(rep, "started", 8) == 0);
    return 0; /* the exit handler terminates d and joins n */
}

/* ---- tracker scenarios: a spawned child creates named segments */

static int make_segment(const char *name)
{
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0)
        return -1;
    int rc = ftruncate(fd, 4096);
    close(fd);
    return rc;
}

static int t_create_and_hang(mproc_args *a)
{
    char name[64], msg[128];
    snprintf(name, sizeof name, "/mproc-test-%d-kill", (int)getpid());
    if (make_segment(name) || mproc_tracker_register("shm", name))
        return 2;
    int n = snprintf(msg, sizeof msg, "%d %s", (int)mproc_tracker_pid(), name);
    if (mproc_write_all(mproc_args_fd(a, 0), msg, (size_t)n + 1))
        return 3;
    for (;;)
        pause(); /* until the test SIGKILLs the whole tree */
}

static int t_create_leak_and_keep(mproc_args *a)
{
    char leaked[64], kept[64], msg[200];
    snprintf(leaked, sizeof leaked, "/mproc-test-%d-leaked", (int)getpid());
    snprintf(kept, sizeof kept, "/mproc-test-%d-kept", (int)getpid());
    if (make_segment(leaked) || mproc_tracker_register("shm", leaked))
        return 2;
    if (make_segment(kept) || mproc_tracker_register("shm", kept) ||
        mproc_tracker_register("shm", kept) || mproc_tracker_unregister("shm", kept) ||
        mproc_tracker_unregister("shm", kept))
        return 3;
    int n = snprintf(msg, sizeof msg, "%d %s %s", (int)mproc_tracker_pid(), leaked, kept);
    return mproc_write_all(mproc_args_fd(a, 0), msg, (size_t)n + 1) ? 4 : 0;
}

static int t_shm_create_and_hang(mproc_args *a)
{
    mproc_shm *s;
    char msg[128];
    if (mproc_shm_open(&s, NULL, true, 8192))
        return 2;
    int n = snprintf(msg, sizeof msg, "%d %s", (int)mproc_tracker_pid(), mproc_shm_name(s));
    if (mproc_write_all(mproc_args_fd(a, 0), msg, (size_t)n + 1))
        return 3;
    for (;;)
        pause(); /* until the test SIGKILLs the whole tree */
}

static int tracker_mode(mproc_target_fn fn)
{
    mproc_args *a = mproc_args_new();
    mproc_args_add_fd(a, report_fd());
    mproc_process *p;
    EXPECT(start_rc(MPROC_START_SPAWN, fn, a, 0, false, &p) == 0);
    mproc_args_free(a);
    EXPECT(mproc_process_join(p, MPROC_FOREVER) == 0);
    EXPECT(mproc_process_exitcode(p) == 0);
    mproc_process_close(p);
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = getenv("MPROC_TEST_MODE");
    mode = mode ? mode : "";
    if (strcmp(mode, "skip") == 0)
        return 0; /* a spawned child whose main() "forgot" mproc_init */
    if (strcmp(mode, "hang") == 0) {
        for (;;)
            pause(); /* a spawned child that never reaches mproc_init */
    }
    if (strcmp(mode, "noinit") == 0) {
        /* fork needs no mproc_init; spawn and forkserver refuse clearly */
        EXPECT(start_rc(MPROC_START_SPAWN, t_noop, NULL, 0, false, NULL) == MPROC_ENOINIT);
        EXPECT(strstr(mproc_errmsg(), "mproc_init(&argc, &argv)") != NULL);
        EXPECT(start_rc(MPROC_START_FORKSERVER, t_noop, NULL, 0, false, NULL) == MPROC_ENOINIT);
        mproc_process *p;
        EXPECT(start_rc(MPROC_START_FORK, t_noop, NULL, 0, false, &p) == 0);
        EXPECT(mproc_process_join(p, 30) == 0 && mproc_process_exitcode(p) == 0);
        mproc_process_close(p);
        return 0;
    }
    mproc_init(&argc, &argv);
    if (strcmp(mode, "child_noinit") == 0) {
        setenv("MPROC_TEST_MODE", "skip", 1);
        EXPECT(start_rc(MPROC_START_SPAWN, t_noop, NULL, 0, false, NULL) == MPROC_ENOINIT);
        EXPECT(strstr(mproc_errmsg(), "returned without calling mproc_init") != NULL);
        return 0;
    }
    if (strcmp(mode, "start_timeout") == 0) {
        setenv("MPROC_TEST_MODE", "hang", 1);
        double t0 = mproc_monotonic();
        EXPECT(start_rc(MPROC_START_SPAWN, t_noop, NULL, 0.3, false, NULL) == MPROC_ETIMEDOUT);
        EXPECT(mproc_monotonic() - t0 < 20.0);
        EXPECT(strstr(mproc_errmsg(), "did not start within") != NULL);
        mproc_process **v;
        size_t n;
        EXPECT(mproc_active_children(&v, &n) == 0 && n == 0);
        free(v);
        return 0;
    }
    if (strcmp(mode, "start_timeout_big") == 0) {
        /* a BOOT far larger than the socket buffer must not block start() */
        setenv("MPROC_TEST_MODE", "hang", 1);
        size_t big = 8u << 20;
        char *buf = calloc(1, big);
        mproc_args *a = mproc_args_new();
        mproc_args_add_bytes(a, buf, big);
        free(buf);
        double t0 = mproc_monotonic();
        EXPECT(start_rc(MPROC_START_SPAWN, t_noop, a, 0.3, false, NULL) == MPROC_ETIMEDOUT);
        EXPECT(mproc_monotonic() - t0 < 20.0);
        mproc_args_free(a);
        return 0;
    }
    if (strcmp(mode, "fs_noinit") == 0) {
        /* the fork server's main() returns without mproc_init */
        setenv("MPROC_TEST_MODE", "skip", 1);
        EXPECT(start_rc(MPROC_START_FORKSERVER, t_noop, NULL, 0, false, NULL) == MPROC_ENOINIT);
        EXPECT(strstr(mproc_errmsg(), "fork server could not start") != NULL);
        return 0;
    }
    if (strcmp(mode, "fs_hang") == 0) {
        /* the fork server's main() never reaches mproc_init: bounded, and killed */
        setenv("MPROC_TEST_MODE", "hang", 1);
        EXPECT(start_rc(MPROC_START_FORKSERVER, t_noop, NULL, 0.3, false, NULL) == MPROC_ETIMEDOUT);
        EXPECT(strstr(mproc_errmsg(), "fork server did not start") != NULL);
        return 0;
    }
    if (strcmp(mode, "sigchld_ign") == 0) {
        signal(SIGCHLD, SIG_IGN);
        for (int k = MPROC_START_FORK; k <= MPROC_START_FORKSERVER; k++) {
            mproc_process *p;
            EXPECT(start_rc((mproc_start_method)k, t_three, NULL, 0, false, &p) == 0);
            EXPECT(mproc_process_join(p, 30.0) == 0);
            int code = mproc_process_exitcode(p);
            /* the fork server reaps for us: exact; direct children: reaped by the
             * kernel, so the code may be unknowable (255), but never wrong */
            EXPECT(k == MPROC_START_FORKSERVER ? code == 3 : (code == 3 || code == 255));
            mproc_process_close(p);
        }
        return 0;
    }
    if (strcmp(mode, "exit_handler") == 0)
        return exit_handler_mode();
    if (strcmp(mode, "tracker_kill") == 0)
        return tracker_mode(t_create_and_hang);
    if (strcmp(mode, "shm_kill") == 0)
        return tracker_mode(t_shm_create_and_hang);
    if (strcmp(mode, "tracker_exit") == 0)
        return tracker_mode(t_create_leak_and_keep);
    return 0;
}
