/* mtest.h — the tiny test runner used by mproc's test executables.
 * Each test runs in its own forked process with a hard timeout, and after the
 * test the runner checks for leaked fds, live or zombie children and /dev/shm. */
#ifndef MTEST_H
#define MTEST_H

#include <dirent.h>
#include <poll.h>
#include <sched.h>
#include <sys/syscall.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mproc.h"
#include "mcheck.h"

typedef struct {
    const char *name;
    void (*fn)(void);
} mtest_case;

#define MTEST(name) static void name(void)
#define MTEST_ENTRY(name) {#name, name}

/* One test per start method for a scenario `void s(mproc_start_method)`. */
#define FOR_METHODS(s)                                             \
    MTEST(test_##s##_fork) { s(MPROC_START_FORK); }                \
    MTEST(test_##s##_spawn) { s(MPROC_START_SPAWN); }              \
    MTEST(test_##s##_forkserver) { s(MPROC_START_FORKSERVER); }
#define METHOD_ENTRIES(s) MTEST_ENTRY(test_##s##_fork), MTEST_ENTRY(test_##s##_spawn), \
                          MTEST_ENTRY(test_##s##_forkserver)

/* Hooks a test file may set before calling mtest_main: run in each test's
 * process before the baseline is taken (e.g. to start the fork server). */
/* Start fn(a) under start method m (every step checked). */
static inline mproc_process *mtest_start(mproc_start_method m, mproc_target_fn fn, mproc_args *a)
{
    mproc_process_opts o = {.ctx = mproc_get_context(m)};
    mproc_process *p;
    CHECK_OK(mproc_process_new(&p, fn, a, &o));
    CHECK_OK(mproc_process_start(p));
    return p;
}

/* Join (60 s at most), check the exit code (-N: killed by signal N) and close. */
static inline void mtest_join(mproc_process *p, int want)
{
    CHECK_OK(mproc_process_join(p, 60.0));
    CHECK_EQ(mproc_process_exitcode(p), want);
    CHECK_OK(mproc_process_close(p));
}

/* true if the thread/process at `path` (/proc/.../syscall) sleeps in
 * FUTEX_WAIT_BITSET: where a queue call (and so a manager call waiting for
 * its reply) parks; robust mutex waits use plain FUTEX_WAIT. */
static inline bool mtest_parked(const char *path)
{
    long nr = -1, addr = 0, op = -1;
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    int got = fscanf(f, "%ld %lx %lx", &nr, &addr, &op);
    fclose(f);
    return got == 3 && nr == SYS_futex && (op & 127) == 9;
}

/* Wait (at most 30 s) until `path` / process `pid` parks so. */
static inline void mtest_wait_parked(const char *path)
{
    mproc_deadline d = mproc_deadline_after(30.0);
    while (!mtest_parked(path)) {
        CHECK(!mproc_deadline_expired(d));
        sched_yield();
    }
}

static inline void mtest_wait_pid_parked(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
    mtest_wait_parked(path);
}

static void (*mtest_warmup)(void);

__attribute__((unused)) static int mtest_noop_target(mproc_args *a)
{
    (void)a;
    return 0;
}

/* A warm-up for tests that start processes: the tracker and the fork server are
 * long-lived and hold fds, so start them before the fd baseline is taken. */
__attribute__((unused)) static void mtest_warmup_tracker_and_forkserver(void)
{
    if (mproc_tracker_ensure() != 0)
        _exit(3);
    mproc_process_opts o = {.ctx = mproc_get_context(MPROC_START_FORKSERVER)};
    mproc_process *p;
    if (mproc_process_new(&p, mtest_noop_target, NULL, &o) || mproc_process_start(p) ||
        mproc_process_join(p, 30.0) || mproc_process_close(p))
        _exit(3);
}

static int mtest_count_fds(char *list, size_t len)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    size_t k = 0;
    if (list && len)
        list[0] = 0;
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d))
            continue;
        n++;
        if (list && k + 8 < len)
            k += (size_t)snprintf(list + k, len - k, "%s ", e->d_name);
    }
    closedir(d);
    return n;
}

static int mtest_count_shm(void)
{
    DIR *d = opendir("/dev/shm");
    int n = 0;
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strncmp(e->d_name, "mproc", 5) == 0;
    closedir(d);
    return n;
}

static void mtest_run_one(const mtest_case *t)
{
    if (mtest_warmup)
        mtest_warmup();
    char before[512], after[512];
    int fds0 = mtest_count_fds(before, sizeof before);
    int shm0 = mtest_count_shm();
    t->fn();
    mproc_process **kids;
    size_t nkids = 0;
    CHECK_OK(mproc_active_children(&kids, &nkids));
    free(kids);
    if (nkids) {
        fprintf(stderr, "%s left %zu running children\n", t->name, nkids);
        _exit(1);
    }
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid != 0) {
        fprintf(stderr, "%s left a zombie (pid %d)\n", t->name, (int)si.si_pid);
        _exit(1);
    }
    int fds1 = mtest_count_fds(after, sizeof after);
    if (fds1 != fds0) {
        fprintf(stderr, "%s leaked fds: before [%s] after [%s]\n", t->name, before, after);
        _exit(1);
    }
    if (mtest_count_shm() != shm0) {
        fprintf(stderr, "%s left /dev/shm/mproc* entries\n", t->name);
        _exit(1);
    }
    fflush(NULL);
    exit(0); /* exit(), not _exit(): mproc's exit handler and LeakSanitizer run */
}

/* Run every case whose name contains argv[1] (all if absent). Each test has
 * MTEST_TIMEOUT seconds (default 60). Returns the process exit status. */
static int mtest_main(int argc, char **argv, const mtest_case *cases, size_t n)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    double limit = getenv("MTEST_TIMEOUT") ? atof(getenv("MTEST_TIMEOUT")) : 60.0;
    int failed = 0, ran = 0;
    for (size_t i = 0; i < n; i++) {
        if (filter && !strstr(cases[i].name, filter))
            continue;
        ran++;
        double t0 = mproc_monotonic();
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0) {
            setpgid(0, 0); /* so a hung test is killed with everything it started */
            mtest_run_one(&cases[i]);
        }
        setpgid(pid, pid);
        int status = 0;
        bool timed_out = false;
        for (;;) {
            pid_t r = waitpid(pid, &status, WNOHANG);
            if (r == pid)
                break;
            if (mproc_monotonic() - t0 > limit) {
                kill(-pid, SIGKILL);
                waitpid(pid, &status, 0);
                timed_out = true;
                break;
            }
            /* Waiting for the test process: poll its pidfd rather than sleeping blind. */
            int pfd = (int)syscall(434 /* pidfd_open */, pid, 0);
            if (pfd >= 0) {
                mproc_wait_fd(pfd, POLLIN, 0.5);
                close(pfd);
            }
        }
        kill(-pid, SIGKILL); /* whatever a failed test left running goes with it */
        double ms = (mproc_monotonic() - t0) * 1e3;
        bool ok = !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok) {
            failed++;
            if (timed_out)
                printf("FAIL %s (timed out after %.0f s)\n", cases[i].name, limit);
            else if (WIFSIGNALED(status))
                printf("FAIL %s (signal %d)\n", cases[i].name, WTERMSIG(status));
            else
                printf("FAIL %s\n", cases[i].name);
        } else {
            printf("ok   %s (%.1f ms)\n", cases[i].name, ms);
        }
        fflush(stdout);
    }
    printf("%d/%d tests passed\n", ran - failed, ran);
    return failed ? 1 : (ran ? 0 : 1);
}

#endif
