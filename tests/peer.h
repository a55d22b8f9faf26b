/* peer.h — a child program (python3 as a rule) whose stdout the test reads
 * line by line, and whose stdin it may write: the interop tests' rig.
 * Header-only, for the test programs that include mtest.h. */
#ifndef MPROC_TESTS_PEER_H
#define MPROC_TESTS_PEER_H

#include <spawn.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

typedef struct peer {
    pid_t pid;
    int out, in; /* in: -1 without a stdin pipe */
    char buf[8192];
    size_t len;
} peer;

/* Spawn argv (argv[0] looked up on PATH) with stdout into a pipe, stdin
 * from one when `with_stdin`, and `pass_fd` as its fd 3 when >= 0. */
static inline void peer_start_fd(peer *p, char *const argv[], bool with_stdin, int pass_fd)
{
    int out[2], in[2] = {-1, -1};
    CHECK(pipe2(out, O_CLOEXEC) == 0);
    if (with_stdin)
        CHECK(pipe2(in, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    if (with_stdin)
        posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    if (pass_fd >= 0)
        posix_spawn_file_actions_adddup2(&fa, pass_fd, 3);
    memset(p, 0, sizeof *p);
    CHECK_EQ(posix_spawnp(&p->pid, argv[0], &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    p->out = out[0];
    p->in = -1;
    if (with_stdin) {
        close(in[0]);
        p->in = in[1];
    }
}

static inline void peer_start(peer *p, char *const argv[], bool with_stdin)
{
    peer_start_fd(p, argv, with_stdin, -1);
}

/* The next stdout line (without newline); fails the test after 30 s. */
static inline void peer_line(peer *p, char *line, size_t cap)
{
    for (;;) {
        char *nl = memchr(p->buf, '\n', p->len);
        if (nl) {
            size_t k = (size_t)(nl - p->buf);
            snprintf(line, cap, "%.*s", (int)k, p->buf);
            memmove(p->buf, nl + 1, p->len - k - 1);
            p->len -= k + 1;
            return;
        }
        CHECK(p->len < sizeof p->buf);
        CHECK_OK(mproc_wait_fd(p->out, POLLIN, 30.0));
        ssize_t n = mproc_read_some(p->out, p->buf + p->len, sizeof p->buf - p->len);
        if (n <= 0) {
            fprintf(stderr, "peer ended early; output so far: %.*s\n", (int)p->len, p->buf);
            CHECK(0);
        }
        p->len += (size_t)n;
    }
}

static inline void peer_expect(peer *p, const char *want)
{
    char line[2048];
    peer_line(p, line, sizeof line);
    if (strcmp(line, want) != 0) {
        fprintf(stderr, "peer said '%s', expected '%s'\n", line, want);
        CHECK(0);
    }
}

static inline void peer_expect_prefix(peer *p, const char *prefix)
{
    char line[2048];
    peer_line(p, line, sizeof line);
    if (strncmp(line, prefix, strlen(prefix)) != 0) {
        fprintf(stderr, "peer said '%s', expected '%s...'\n", line, prefix);
        CHECK(0);
    }
}

/* Close its stdin, wait for it; fails the test unless it exited 0. */
static inline void peer_finish(peer *p)
{
    if (p->in >= 0)
        close(p->in);
    int st;
    CHECK_EQ(waitpid(p->pid, &st, 0), p->pid);
    close(p->out);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "peer exited with status 0x%x\n", st);
        CHECK(0);
    }
}

#endif
