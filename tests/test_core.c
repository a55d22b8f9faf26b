/* test_core.c — error codes, deadlines, logging, EINTR-safe I/O, SCM_RIGHTS. */
#include <fcntl.h>
#include <pthread.h>
#include <sys/socket.h>

#include "mtest.h"

MTEST(test_strerror_names_library_and_errno_codes)
{
    CHECK(strcmp(mproc_errname(MPROC_ETIMEDOUT), "MPROC_ETIMEDOUT") == 0);
    CHECK_EQ(MPROC_ETIMEDOUT, -ETIMEDOUT);
    CHECK(strcmp(mproc_errname(MPROC_ENOINIT), "MPROC_ENOINIT") == 0);
    CHECK(strstr(mproc_strerror(MPROC_ENOINIT), "mproc_init") != NULL);
    CHECK(strcmp(mproc_strerror(MPROC_ETIMEDOUT), "Connection timed out") == 0);
    CHECK(strcmp(mproc_strerror(0), "success") == 0);
    CHECK(strcmp(mproc_strerror(-99999), "unknown error") == 0);
    CHECK(strcmp(mproc_errname(-99999), "MPROC_E?") == 0);
    /* every library code has its own name */
    int codes[] = {MPROC_ECLOSED, MPROC_EAUTH,    MPROC_EBROKEN, MPROC_EREMOTE, MPROC_ESTATE,
                   MPROC_ENOINIT, MPROC_EBUILDID, MPROC_EFULL,   MPROC_EEMPTY,  MPROC_EWORKER};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(mproc_errname(codes[i]), mproc_errname(codes[j])) != 0);
}

MTEST(test_errmsg_describes_the_last_failure)
{
    mproc_start_method m;
    CHECK_EQ(mproc_start_method_parse("spoon", &m), MPROC_EINVAL);
    CHECK(strstr(mproc_errmsg(), "spoon") != NULL);
    CHECK_OK(mproc_start_method_parse("forkserver", &m));
    CHECK_EQ(m, MPROC_START_FORKSERVER);
}

MTEST(test_deadlines_never_now_and_later)
{
    mproc_deadline never = mproc_deadline_after(MPROC_FOREVER);
    CHECK(!mproc_deadline_expired(never));
    CHECK(mproc_deadline_remaining(never) < 0);
    CHECK_EQ(mproc_deadline_poll_ms(never), -1);
    mproc_deadline now = mproc_deadline_after(0);
    CHECK(mproc_deadline_expired(now));
    CHECK_EQ(mproc_deadline_poll_ms(now), 0);
    CHECK(mproc_deadline_remaining(now) == 0.0);
    mproc_deadline later = mproc_deadline_after(30.0);
    CHECK(!mproc_deadline_expired(later));
    double left = mproc_deadline_remaining(later);
    CHECK(left > 29.0 && left <= 30.0);
    CHECK(mproc_deadline_poll_ms(later) > 29000);
    mproc_deadline nan = mproc_deadline_after(0.0 / 0.0);
    CHECK(mproc_deadline_expired(nan));
}

MTEST(test_wait_fd_times_out_then_sees_data)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_wait_fd(p[0], POLLIN, 0.05), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 >= 0.049);
    CHECK_EQ(mproc_wait_fd(p[0], POLLIN, 0), MPROC_ETIMEDOUT);
    CHECK_OK(mproc_write_all(p[1], "x", 1));
    CHECK_OK(mproc_wait_fd(p[0], POLLIN, 0));
    close(p[0]);
    close(p[1]);
}

static void *writer_thread(void *arg)
{
    int fd = *(int *)arg;
    size_t n = 4 << 20;
    char *buf = malloc(n);
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)(i * 7);
    int rc = mproc_write_all(fd, buf, n);
    free(buf);
    close(fd);
    return (void *)(intptr_t)rc;
}

MTEST(test_write_all_and_read_all_move_large_buffers_through_a_pipe)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    pthread_t t;
    pthread_create(&t, NULL, writer_thread, &p[1]);
    size_t n = 4 << 20, got = 0;
    char *buf = malloc(n + 10);
    CHECK_OK(mproc_read_all(p[0], buf, n, &got));
    CHECK_EQ(got, n);
    for (size_t i = 0; i < n; i++)
        if (buf[i] != (char)(i * 7))
            CHECK(!"corrupted");
    CHECK_EQ(mproc_read_all(p[0], buf, 10, &got), MPROC_ECLOSED);
    CHECK_EQ(got, 0);
    void *res;
    pthread_join(t, &res);
    CHECK_EQ((intptr_t)res, 0);
    free(buf);
    close(p[0]);
}

MTEST(test_read_all_reports_short_read_at_eof)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    CHECK_OK(mproc_write_all(p[1], "abc", 3));
    close(p[1]);
    char buf[8];
    size_t got = 99;
    CHECK_EQ(mproc_read_all(p[0], buf, 8, &got), MPROC_ECLOSED);
    CHECK_EQ(got, 3);
    CHECK(memcmp(buf, "abc", 3) == 0);
    CHECK_EQ(mproc_read_some(p[0], buf, 8), 0);
    close(p[0]);
}

MTEST(test_write_to_closed_socket_or_pipe_gives_epipe_not_sigpipe)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    close(sv[1]);
    CHECK_EQ(mproc_write_all(sv[0], "x", 1), MPROC_EPIPE);
    close(sv[0]);
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    close(p[0]);
    CHECK_EQ(mproc_write_all(p[1], "x", 1), MPROC_EPIPE);
    /* no SIGPIPE is left pending either */
    sigset_t pending;
    sigpending(&pending);
    CHECK(!sigismember(&pending, SIGPIPE));
    close(p[1]);
}

MTEST(test_fd_flags_toggle)
{
    int p[2];
    CHECK(pipe(p) == 0);
    CHECK_OK(mproc_fd_set_cloexec(p[0], true));
    CHECK(fcntl(p[0], F_GETFD) & FD_CLOEXEC);
    CHECK_OK(mproc_fd_set_cloexec(p[0], false));
    CHECK(!(fcntl(p[0], F_GETFD) & FD_CLOEXEC));
    CHECK_OK(mproc_fd_set_nonblock(p[1], true));
    CHECK(fcntl(p[1], F_GETFL) & O_NONBLOCK);
    CHECK_EQ(mproc_fd_set_cloexec(9999, true), MPROC_EBADF);
    close(p[0]);
    close(p[1]);
}

MTEST(test_send_fds_passes_working_descriptors)
{
    int sv[2], p[2], q[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    CHECK(pipe2(q, O_CLOEXEC) == 0);
    int send[3] = {p[1], q[1], p[0]};
    CHECK_OK(mproc_send_fds(sv[0], "hello", 5, send, 3));
    char buf[5];
    int got[4];
    size_t n = 0;
    CHECK_OK(mproc_recv_fds(sv[1], buf, 5, got, 4, &n, 5.0));
    CHECK_EQ(n, 3);
    CHECK(memcmp(buf, "hello", 5) == 0);
    for (size_t i = 0; i < n; i++)
        CHECK(fcntl(got[i], F_GETFD) & FD_CLOEXEC);
    CHECK_OK(mproc_write_all(got[0], "A", 1));
    CHECK_OK(mproc_write_all(got[1], "B", 1));
    char c;
    CHECK_OK(mproc_read_all(got[2], &c, 1, NULL)); /* got[2] is p[0] */
    CHECK_EQ(c, 'A');
    CHECK_OK(mproc_read_all(q[0], &c, 1, NULL));
    CHECK_EQ(c, 'B');
    for (size_t i = 0; i < n; i++)
        close(got[i]);
    close(sv[0]); close(sv[1]); close(p[0]); close(p[1]); close(q[0]); close(q[1]);
}

MTEST(test_recv_fds_rejects_more_fds_than_asked_and_closes_them)
{
    int sv[2], p[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    int send[2] = {p[0], p[1]};
    CHECK_OK(mproc_send_fds(sv[0], "x", 1, send, 2));
    int before = mtest_count_fds(NULL, 0);
    char c;
    int got[1];
    size_t n = 7;
    CHECK_EQ(mproc_recv_fds(sv[1], &c, 1, got, 1, &n, 5.0), MPROC_EPROTO);
    CHECK_EQ(n, 0);
    CHECK_EQ(mtest_count_fds(NULL, 0), before);
    close(sv[0]); close(sv[1]); close(p[0]); close(p[1]);
}

MTEST(test_recv_fds_times_out_and_sees_eof)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    char buf[4];
    int got[1];
    size_t n;
    CHECK_EQ(mproc_recv_fds(sv[1], buf, 4, got, 1, &n, 0.05), MPROC_ETIMEDOUT);
    CHECK_OK(mproc_write_all(sv[0], "ab", 2));
    close(sv[0]);
    CHECK_EQ(mproc_recv_fds(sv[1], buf, 4, got, 1, &n, 5.0), MPROC_ECLOSED);
    close(sv[1]);
    CHECK_EQ(mproc_send_fds(sv[1], "", 0, NULL, 0), MPROC_EINVAL);
}

static char captured[4096];
static int captured_level;
static void capture(int level, const char *msg, void *ud)
{
    CHECK(ud == captured);
    captured_level = level;
    snprintf(captured, sizeof captured, "%s", msg);
}

MTEST(test_log_handler_and_level_filter)
{
    CHECK_EQ(mproc_log_level(), MPROC_LOG_WARNING);
    mproc_log_set_handler(capture, captured);
    mproc_log(MPROC_LOG_INFO, "hidden %d", 1);
    CHECK_EQ(captured[0], 0);
    mproc_log(MPROC_LOG_ERROR, "shown %d", 2);
    CHECK(strcmp(captured, "shown 2") == 0);
    CHECK_EQ(captured_level, MPROC_LOG_ERROR);
    mproc_log_to_stderr(MPROC_LOG_DEBUG); /* also removes the handler */
    CHECK_EQ(mproc_log_level(), MPROC_LOG_DEBUG);
}

MTEST(test_log_to_stderr_writes_python_format_lines)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    int saved = dup(STDERR_FILENO);
    dup2(p[1], STDERR_FILENO);
    mproc_log_to_stderr(MPROC_LOG_INFO);
    mproc_log(MPROC_LOG_INFO, "hello %s", "world");
    mproc_log(MPROC_LOG_DEBUG, "not shown");
    mproc_log(MPROC_LOG_WARNING, "careful");
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(p[1]);
    char buf[256] = {0};
    size_t got;
    mproc_read_all(p[0], buf, sizeof buf - 1, &got);
    close(p[0]);
    CHECK(strcmp(buf, "[INFO/MainProcess] hello world\n[WARNING/MainProcess] careful\n") == 0);
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    static const mtest_case cases[] = {
        MTEST_ENTRY(test_strerror_names_library_and_errno_codes),
        MTEST_ENTRY(test_errmsg_describes_the_last_failure),
        MTEST_ENTRY(test_deadlines_never_now_and_later),
        MTEST_ENTRY(test_wait_fd_times_out_then_sees_data),
        MTEST_ENTRY(test_write_all_and_read_all_move_large_buffers_through_a_pipe),
        MTEST_ENTRY(test_read_all_reports_short_read_at_eof),
        MTEST_ENTRY(test_write_to_closed_socket_or_pipe_gives_epipe_not_sigpipe),
        MTEST_ENTRY(test_fd_flags_toggle),
        MTEST_ENTRY(test_send_fds_passes_working_descriptors),
        MTEST_ENTRY(test_recv_fds_rejects_more_fds_than_asked_and_closes_them),
        MTEST_ENTRY(test_recv_fds_times_out_and_sees_eof),
        MTEST_ENTRY(test_log_handler_and_level_filter),
        MTEST_ENTRY(test_log_to_stderr_writes_python_format_lines),
    };
    return mtest_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
