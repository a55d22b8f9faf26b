/* mtest_helper.h — running tests/helper_prog.c scenarios from a test: a fresh
 * program (no inherited mproc state), optionally in its own process group. */
#ifndef MTEST_HELPER_H
#define MTEST_HELPER_H

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include "mtest.h"

#ifndef HELPER_PATH
#error "HELPER_PATH must point at mproc_test_helper"
#endif

extern char **environ;

static bool shm_exists(const char *name)
{
    char path[300];
    snprintf(path, sizeof path, "/dev/shm/%s", name[0] == '/' ? name + 1 : name);
    return access(path, F_OK) == 0;
}

/* Run the helper in scenario `mode` with `pass_fd` inherited (MPROC_TEST_FD).
 * With stderr_fd, its stderr is a pipe returned there. With out_pid, returns at
 * once (the caller waits); otherwise waits and returns its exit status. */
static int run_helper(const char *mode, int pass_fd, int *stderr_fd, pid_t *out_pid, bool new_group)
{
    char modevar[64], fdvar[32];
    snprintf(modevar, sizeof modevar, "MPROC_TEST_MODE=%s", mode);
    snprintf(fdvar, sizeof fdvar, "MPROC_TEST_FD=%d", pass_fd);
    size_t ne = 0;
    while (environ[ne])
        ne++;
    char **env = calloc(ne + 3, sizeof *env);
    for (size_t i = 0; i < ne; i++)
        env[i] = environ[i];
    env[ne] = modevar;
    env[ne + 1] = fdvar;
    char *argv[] = {(char *)HELPER_PATH, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    int errp[2] = {-1, -1};
    if (stderr_fd) {
        CHECK(pipe2(errp, O_CLOEXEC) == 0);
        posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
    }
    if (pass_fd >= 0)
        CHECK_OK(mproc_fd_set_cloexec(pass_fd, false));
    if (new_group) {
        posix_spawnattr_setpgroup(&attr, 0);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    }
    pid_t pid;
    CHECK_EQ(posix_spawn(&pid, HELPER_PATH, &fa, &attr, argv, env), 0);
    if (pass_fd >= 0)
        CHECK_OK(mproc_fd_set_cloexec(pass_fd, true));
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    free(env);
    if (stderr_fd) {
        close(errp[1]);
        *stderr_fd = errp[0];
    }
    if (out_pid) {
        *out_pid = pid;
        return 0;
    }
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The helper creates a registered segment in a spawned child and reports
 * "<tracker pid> <name>"; SIGKILL its whole process group (not the tracker,
 * which has its own session) and check the tracker unlinks the segment, warns,
 * and exits, all within a bounded time. */
static void mtest_sigkill_tree_expect_unlinked(const char *mode)
{
    int rep[2];
    CHECK(pipe2(rep, O_CLOEXEC) == 0);
    pid_t prog;
    int errfd;
    run_helper(mode, rep[1], &errfd, &prog, true);
    close(rep[1]);
    char buf[256] = {0};
    CHECK_OK(mproc_wait_fd(rep[0], POLLIN, 30.0));
    CHECK(mproc_read_some(rep[0], buf, sizeof buf - 1) > 0);
    int tpid = 0;
    char name[200] = {0};
    CHECK_EQ(sscanf(buf, "%d %199s", &tpid, name), 2);
    CHECK(tpid > 0 && shm_exists(name));
    int tfd = (int)syscall(434, tpid, 0);
    CHECK(tfd >= 0);
    CHECK_EQ(kill(-prog, SIGKILL), 0); /* the program and its child, not the tracker */
    int status;
    CHECK_EQ(waitpid(prog, &status, 0), prog);
    CHECK(WIFSIGNALED(status));
    CHECK_OK(mproc_wait_fd(tfd, POLLIN, 20.0)); /* the tracker finishes its job and exits */
    CHECK(!shm_exists(name));
    char err[2048] = {0};
    size_t got;
    mproc_read_all(errfd, err, sizeof err - 1, &got);
    CHECK(strstr(err, "leaked shm objects") != NULL);
    close(errfd);
    close(tfd);
    close(rep[0]);
}

#endif
