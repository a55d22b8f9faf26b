/* test_connection.c — Connections, Pipe, Listener/Client, wait(), and
 * interoperability with CPython's multiprocessing.connection (python3). */
#include <fcntl.h>
#include <spawn.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "mtest.h"

#ifndef CONN_PEER_PY
#define CONN_PEER_PY "tests/conn_peer.py"
#endif

extern char **environ;

#include "peer.h"

static const char KEY[] = "aaaaaaaa";
static const char KEY_HEX[] = "6161616161616161";
static const char BAD_HEX[] = "6262626262626262";

/* ---------------------------------------------------------------- helpers */

static void pipe_pair(mproc_connection **a, mproc_connection **b, bool duplex,
                      const mproc_connection_opts *o)
{
    CHECK_OK(mproc_pipe(a, b, duplex, o));
}

static void send_str(mproc_connection *c, const char *s)
{
    CHECK_OK(mproc_connection_send_bytes(c, s, strlen(s)));
}

static void expect_str(mproc_connection *c, const char *s)
{
    void *buf;
    size_t n;
    CHECK_OK(mproc_connection_recv_bytes(c, &buf, &n, 10.0));
    CHECK_EQ(n, strlen(s));
    CHECK(memcmp(buf, s, n) == 0);
    free(buf);
}

static void raw_write(int fd, const void *p, size_t n)
{
    CHECK_OK(mproc_write_all(fd, p, n));
}

static mproc_value *the_value(void)
{
    mproc_value *l = mproc_value_list();
    CHECK(l);
    CHECK_OK(mproc_value_append(l, mproc_value_int(42)));
    CHECK_OK(mproc_value_append(l, mproc_value_nil()));
    CHECK_OK(mproc_value_append(l, mproc_value_str("hello")));
    return l;
}

static void check_is_the_value(const mproc_value *v)
{
    char *r = mproc_value_repr(v);
    CHECK(r);
    if (strcmp(r, "[42, None, 'hello']") != 0) {
        fprintf(stderr, "got %s\n", r);
        CHECK(0);
    }
    free(r);
}

/* A python3 peer: conn_peer.py mode addr keyhex, with `pass_fd` as its fd 3. */
static void py_start(peer *p, const char *mode, const char *addr, const char *keyhex, int pass_fd)
{
    char *argv[] = {"python3", (char *)CONN_PEER_PY, (char *)mode, (char *)addr, (char *)keyhex,
                    NULL};
    peer_start_fd(p, argv, false, pass_fd);
}

static void tmp_unix_address(char *buf, size_t cap, const char *tag)
{
    snprintf(buf, cap, "unix:/tmp/mproc-test-%s-%d.sock", tag, (int)getpid());
    unlink(buf + 5);
}

static mproc_listener_opts keyed_listener(const char *key)
{
    mproc_listener_opts o = {.backlog = 4};
    o.auth.authkey = key;
    o.auth.authkey_len = strlen(key);
    return o;
}

static mproc_client_opts keyed_client(const char *key)
{
    mproc_client_opts o = {0};
    o.auth.authkey = key;
    o.auth.authkey_len = strlen(key);
    return o;
}

/* --------------------------------------------------------------- framing */

MTEST(test_pipe_duplex_round_trips_bytes)
{
    mproc_connection *a, *b;
    pipe_pair(&a, &b, true, NULL);
    CHECK(mproc_connection_readable(a) && mproc_connection_writable(a));
    send_str(a, "hello");
    send_str(a, "");
    send_str(a, "world");
    expect_str(b, "hello");
    expect_str(b, "");
    expect_str(b, "world");
    send_str(b, "back");
    expect_str(a, "back");
    /* a message larger than the read-ahead buffer, with small ones around it */
    size_t big = (1u << 20) + 3;
    uint8_t *p = malloc(big);
    for (size_t i = 0; i < big; i++)
        p[i] = (uint8_t)(i * 7);
    send_str(a, "before");
    /* a socketpair buffer is smaller than 1 MiB: send from a child */
    pid_t pid = fork();
    if (pid == 0) {
        _exit(mproc_connection_send_bytes(a, p, big) == 0 ? 0 : 1);
    }
    expect_str(b, "before");
    void *got;
    size_t n;
    CHECK_OK(mproc_connection_recv_bytes(b, &got, &n, 10.0));
    CHECK_EQ(n, big);
    CHECK(memcmp(got, p, big) == 0);
    free(got);
    int st;
    CHECK_EQ(waitpid(pid, &st, 0), pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    free(p);
    CHECK_OK(mproc_connection_close(a));
    CHECK_OK(mproc_connection_close(b));
}

MTEST(test_pipe_simplex_reads_on_first_writes_on_second)
{
    mproc_connection *r, *w;
    pipe_pair(&r, &w, false, NULL);
    CHECK(mproc_connection_readable(r) && !mproc_connection_writable(r));
    CHECK(!mproc_connection_readable(w) && mproc_connection_writable(w));
    CHECK_EQ(mproc_connection_send_bytes(r, "x", 1), MPROC_ESTATE);
    void *buf;
    size_t n;
    CHECK_EQ(mproc_connection_recv_bytes(w, &buf, &n, 0), MPROC_ESTATE);
    CHECK_EQ(mproc_connection_poll(w, 0), MPROC_ESTATE);
    send_str(w, "over a pipe");
    expect_str(r, "over a pipe");
    mproc_connection_close(r);
    mproc_connection_close(w);
}

MTEST(test_frame_wire_format_matches_cpython)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    mproc_connection *c;
    CHECK_OK(mproc_connection_new(&c, sv[0], NULL));
    send_str(c, "abc");
    uint8_t got[7];
    CHECK_OK(mproc_read_all(sv[1], got, 7, NULL));
    CHECK(memcmp(got, "\x00\x00\x00\x03" "abc", 7) == 0);
    /* the other way: a frame written by hand, and the long (-1 + 8-byte) form,
     * which CPython uses above 2 GiB but accepts for any size */
    raw_write(sv[1], "\x00\x00\x00\x02hi", 6);
    raw_write(sv[1], "\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x05" "long!", 17);
    expect_str(c, "hi");
    expect_str(c, "long!");
    mproc_connection_close(c);
    close(sv[1]);
}

/* Sending more than 2 GiB uses the long header. The payload comes from zero
 * pages (nothing is allocated); the reader checks the header and hangs up. */
static int long_sender(mproc_args *a)
{
    mproc_connection *c = mproc_args_object(a, 0, &mproc_connection_type);
    size_t n = (size_t)0x80000000u + 5;
    void *p = mmap(NULL, n, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return 2;
    int rc = mproc_connection_send_bytes(c, p, n);
    munmap(p, n);
    return rc == MPROC_EPIPE || rc == MPROC_ECONNRESET ? 0 : 1;
}

MTEST(test_frame_long_header_above_2gib)
{
    mproc_connection *a, *b;
    pipe_pair(&a, &b, true, NULL);
    mproc_args *args = mproc_args_new();
    CHECK_OK(mproc_args_add_object(args, &mproc_connection_type, b));
    /* spawn: a fork child would also hold `a`, and the hang-up would never reach it */
    mproc_process *p = mtest_start(MPROC_START_SPAWN, long_sender, args);
    mproc_args_free(args);
    mproc_connection_close(b);
    uint8_t hdr[12];
    CHECK_OK(mproc_read_all(mproc_connection_fileno(a), hdr, 12, NULL));
    CHECK(memcmp(hdr, "\xff\xff\xff\xff\x00\x00\x00\x00\x80\x00\x00\x05", 12) == 0);
    mproc_connection_close(a);
    mtest_join(p, 0);
}

MTEST(test_recv_refuses_frames_over_max_message)
{
    mproc_connection_opts o = {.max_message = 100};
    mproc_connection *a, *b;
    pipe_pair(&a, &b, true, &o);
    char buf[101];
    memset(buf, 'x', sizeof buf);
    CHECK_OK(mproc_connection_send_bytes(a, buf, 100));
    CHECK_OK(mproc_connection_send_bytes(a, buf, 101));
    void *got;
    size_t n;
    CHECK_OK(mproc_connection_recv_bytes(b, &got, &n, 5.0));
    CHECK_EQ(n, 100);
    free(got);
    CHECK_EQ(mproc_connection_recv_bytes(b, &got, &n, 5.0), MPROC_EMSGSIZE);
    CHECK(strstr(mproc_errmsg(), "101"));
    /* the stream cannot be resynchronised: the connection is broken for good */
    CHECK_EQ(mproc_connection_recv_bytes(b, &got, &n, 5.0), MPROC_ESTATE);
    CHECK_EQ(mproc_connection_send_bytes(b, "x", 1), MPROC_ESTATE);
    mproc_connection_close(b);
    mproc_connection_close(a);
    /* a huge long-form length is refused before any allocation */
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK_OK(mproc_connection_new(&b, sv[0], NULL));
    raw_write(sv[1], "\xff\xff\xff\xff\x7f\xff\xff\xff\xff\xff\xff\xff", 12);
    CHECK_EQ(mproc_connection_recv_bytes(b, &got, &n, 5.0), MPROC_EMSGSIZE);
    mproc_connection_close(b);
    close(sv[1]);
}

MTEST(test_recv_rejects_negative_length)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    mproc_connection *c;
    CHECK_OK(mproc_connection_new(&c, sv[0], NULL));
    raw_write(sv[1], "\xff\xff\xff\xfe" "junk", 8);
    void *got;
    size_t n;
    CHECK_EQ(mproc_connection_recv_bytes(c, &got, &n, 5.0), MPROC_EPROTO);
    CHECK(strstr(mproc_errmsg(), "negative"));
    CHECK_EQ(mproc_connection_recv_bytes(c, &got, &n, 5.0), MPROC_ESTATE);
    mproc_connection_close(c);
    close(sv[1]);
}

static void timeout_resume(size_t size, bool into)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    mproc_connection *c;
    CHECK_OK(mproc_connection_new(&c, sv[0], NULL));
    void *got;
    size_t n;
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_connection_recv_bytes(c, &got, &n, 0.05), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 >= 0.05);
    CHECK_EQ(mproc_connection_recv_bytes(c, &got, &n, 0), MPROC_ETIMEDOUT);
    uint8_t *msg = malloc(size + 4);
    msg[0] = (uint8_t)(size >> 24);
    msg[1] = (uint8_t)(size >> 16);
    msg[2] = (uint8_t)(size >> 8);
    msg[3] = (uint8_t)size;
    for (size_t i = 0; i < size; i++)
        msg[4 + i] = (uint8_t)i;
    /* two bytes of header, then half the payload: each recv times out, keeping what came */
    uint8_t *dest = malloc(size);
    raw_write(sv[1], msg, 2);
    CHECK_EQ(mproc_connection_recv_bytes(c, &got, &n, 0.02), MPROC_ETIMEDOUT);
    raw_write(sv[1], msg + 2, 2 + size / 2);
    if (into)
        CHECK_EQ(mproc_connection_recv_bytes_into(c, dest, size, &n, 0.02), MPROC_ETIMEDOUT);
    else
        CHECK_EQ(mproc_connection_recv_bytes(c, &got, &n, 0.02), MPROC_ETIMEDOUT);
    CHECK_EQ(mproc_connection_poll(c, 0), 0);
    pid_t pid = fork(); /* the rest may not fit the socket buffer */
    if (pid == 0)
        _exit(mproc_write_all(sv[1], msg + 4 + size / 2, size - size / 2) ? 1 : 0);
    if (into) {
        CHECK_OK(mproc_connection_recv_bytes_into(c, dest, size, &n, 10.0));
        got = dest;
        dest = NULL;
    } else {
        CHECK_OK(mproc_connection_recv_bytes(c, &got, &n, 10.0));
    }
    free(dest);
    CHECK_EQ(n, size);
    CHECK(memcmp(got, msg + 4, size) == 0);
    free(got);
    free(msg);
    int st;
    CHECK_EQ(waitpid(pid, &st, 0), pid);
    mproc_connection_close(c);
    close(sv[1]);
}

MTEST(test_recv_times_out_and_resumes_small)
{
    timeout_resume(100, false);
    timeout_resume(100, true);
}

MTEST(test_recv_times_out_and_resumes_big)
{
    timeout_resume(300000, false);
    timeout_resume(300000, true);
}

MTEST(test_send_recv_values_with_both_codecs)
{
    for (int codec = 0; codec < 2; codec++) {
        mproc_connection_opts o = {.codec = codec ? MPROC_CODEC_MSGPACK : MPROC_CODEC_PICKLE};
        mproc_connection *a, *b;
        pipe_pair(&a, &b, true, &o);
        mproc_value *v = the_value(), *got;
        CHECK_OK(mproc_connection_send(a, v));
        CHECK_OK(mproc_connection_recv(b, &got, 5.0));
        CHECK(mproc_value_equal(v, got));
        mproc_value_free(got);
        /* an exception travels as a value, not as a failure */
        mproc_value *e = mproc_value_error("ValueError", "bad");
        CHECK_OK(mproc_connection_send(a, e));
        CHECK_OK(mproc_connection_recv(b, &got, 5.0));
        CHECK_EQ(mproc_value_type(got), MPROC_V_ERROR);
        CHECK(strcmp(mproc_value_error_type(got), "ValueError") == 0);
        mproc_value_free(got);
        mproc_value_free(e);
        /* a payload that does not decode is consumed; the stream stays usable */
        send_str(a, "\xc1 not a value");
        CHECK_EQ(mproc_connection_recv(b, &got, 5.0), MPROC_EPROTO);
        CHECK(got == NULL);
        CHECK_OK(mproc_connection_send(a, v));
        CHECK_OK(mproc_connection_recv(b, &got, 5.0));
        CHECK(mproc_value_equal(v, got));
        mproc_value_free(got);
        mproc_value_free(v);
        mproc_connection_close(a);
        mproc_connection_close(b);
    }
}

MTEST(test_recv_eof_between_messages_is_eclosed)
{
    mproc_connection *a, *b;
    pipe_pair(&a, &b, false, NULL);
    send_str(b, "last");
    mproc_connection_close(b);
    expect_str(a, "last");
    CHECK_EQ(mproc_connection_poll(a, 0), 1); /* EOF counts as readable, as in Python */
    void *got;
    size_t n;
    CHECK_EQ(mproc_connection_recv_bytes(a, &got, &n, 5.0), MPROC_ECLOSED);
    mproc_connection_close(a);
}

MTEST(test_peer_closing_mid_frame_is_eproto)
{
    static const struct {
        const char *bytes;
        size_t n;
    } cuts[] = {{"\x00\x00", 2}, {"\x00\x00\x00\x09" "abc", 7}, {"\xff\xff\xff\xff\x00\x00", 6}};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        int sv[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
        mproc_connection *c;
        CHECK_OK(mproc_connection_new(&c, sv[0], NULL));
        raw_write(sv[1], cuts[i].bytes, cuts[i].n);
        close(sv[1]);
        void *got;
        size_t n;
        CHECK_EQ(mproc_connection_recv_bytes(c, &got, &n, 5.0), MPROC_EPROTO);
        CHECK(strstr(mproc_errmsg(), "end of file during message"));
        mproc_connection_close(c);
    }
}

MTEST(test_recv_bytes_into_too_small_keeps_the_message)
{
    mproc_connection *a, *b;
    pipe_pair(&a, &b, true, NULL);
    send_str(a, "0123456789");
    send_str(a, "next");
    char small[4], big[32];
    size_t n = 0;
    CHECK_EQ(mproc_connection_recv_bytes_into(b, small, sizeof small, &n, 5.0), MPROC_EMSGSIZE);
    CHECK_EQ(n, 10);
    CHECK_OK(mproc_connection_recv_bytes_into(b, big, sizeof big, &n, 5.0));
    CHECK_EQ(n, 10);
    CHECK(memcmp(big, "0123456789", 10) == 0);
    CHECK_OK(mproc_connection_recv_bytes_into(b, big, sizeof big, &n, 5.0));
    CHECK_EQ(n, 4);
    /* a big message that does not fit is kept too */
    size_t sz = 200000;
    char *p = calloc(1, sz);
    pid_t pid = fork();
    if (pid == 0)
        _exit(mproc_connection_send_bytes(a, p, sz) ? 1 : 0);
    CHECK_EQ(mproc_connection_recv_bytes_into(b, big, sizeof big, &n, 10.0), MPROC_EMSGSIZE);
    CHECK_EQ(n, sz);
    void *got;
    CHECK_OK(mproc_connection_recv_bytes(b, &got, &n, 10.0));
    CHECK_EQ(n, sz);
    free(got);
    free(p);
    int st;
    waitpid(pid, &st, 0);
    mproc_connection_close(a);
    mproc_connection_close(b);
}

MTEST(test_poll_sees_buffered_and_pending_messages)
{
    mproc_connection *a, *b;
    pipe_pair(&a, &b, true, NULL);
    CHECK_EQ(mproc_connection_poll(b, 0), 0);
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_connection_poll(b, 0.05), 0);
    CHECK(mproc_monotonic() - t0 >= 0.05);
    send_str(a, "one");
    send_str(a, "two");
    CHECK_EQ(mproc_connection_poll(b, 5.0), 1);
    expect_str(b, "one"); /* "two" was read ahead: poll must still see it */
    CHECK_EQ(mproc_connection_poll(b, 0), 1);
    mproc_wait_item it = {.conn = b};
    CHECK_EQ(mproc_connection_wait(&it, 1, 0), 1);
    expect_str(b, "two");
    CHECK_EQ(mproc_connection_poll(b, 0), 0);
    mproc_connection_close(a);
    mproc_connection_close(b);
}

MTEST(test_send_to_closed_peer_is_epipe_without_signal)
{
    for (int duplex = 0; duplex < 2; duplex++) {
        mproc_connection *a, *b;
        pipe_pair(&a, &b, duplex, NULL);
        mproc_connection_close(a);
        int rc = mproc_connection_send_bytes(b, "x", 1);
        CHECK(rc == MPROC_EPIPE || rc == MPROC_ECONNRESET);
        mproc_connection_close(b);
    }
}

static int exit_on_message(mproc_args *a)
{
    mproc_connection *c = mproc_args_object(a, 0, &mproc_connection_type);
    void *buf;
    size_t n;
    int rc = mproc_connection_recv_bytes(c, &buf, &n, 30.0);
    if (rc == 0)
        free(buf);
    return rc == 0 ? 7 : 1;
}

MTEST(test_wait_over_connections_and_a_sentinel)
{
    mproc_connection *a[3], *b[3];
    for (int i = 0; i < 3; i++)
        pipe_pair(&a[i], &b[i], true, NULL);
    mproc_args *args = mproc_args_new();
    CHECK_OK(mproc_args_add_object(args, &mproc_connection_type, b[2]));
    mproc_process *p = mtest_start(MPROC_START_FORK, exit_on_message, args);
    mproc_args_free(args);
    mproc_wait_item it[4] = {{.conn = b[0]}, {.conn = b[1]}, {.conn = a[2]},
                             {.fd = mproc_process_sentinel(p)}};
    CHECK_EQ(mproc_connection_wait(it, 4, 0.05), 0);
    send_str(a[1], "x");
    CHECK_EQ(mproc_connection_wait(it, 4, 10.0), 1);
    CHECK(!it[0].ready && it[1].ready && !it[2].ready && !it[3].ready);
    expect_str(b[1], "x");
    send_str(a[2], "stop"); /* the child exits 7: its sentinel fires */
    for (;;) {
        CHECK(mproc_connection_wait(it, 4, 30.0) >= 1);
        if (it[3].ready)
            break;
    }
    CHECK(!it[0].ready && !it[1].ready);
    mtest_join(p, 7);
    CHECK_EQ(mproc_connection_wait(NULL, 0, MPROC_FOREVER), MPROC_EINVAL);
    for (int i = 0; i < 3; i++) {
        mproc_connection_close(a[i]);
        mproc_connection_close(b[i]);
    }
}

MTEST(test_export_refuses_read_ahead_bytes)
{
    mproc_connection *a, *b;
    pipe_pair(&a, &b, true, NULL);
    send_str(a, "one");
    send_str(a, "two");
    expect_str(b, "one");
    mproc_buf out = {0};
    int fds[4];
    size_t nfds = 0;
    CHECK_EQ(mproc_connection_type.export_obj(b, &out, fds, &nfds, 4), MPROC_ESTATE);
    expect_str(b, "two");
    CHECK_OK(mproc_connection_type.export_obj(b, &out, fds, &nfds, 4));
    CHECK_EQ(nfds, 1);
    free(out.data);
    /* no_readahead never holds bytes beyond the frame it returns */
    mproc_connection_close(a);
    mproc_connection_close(b);
    mproc_connection_opts o = {.no_readahead = true};
    pipe_pair(&a, &b, true, &o);
    send_str(a, "one");
    send_str(a, "two");
    expect_str(b, "one");
    out = (mproc_buf){0};
    nfds = 0;
    CHECK_OK(mproc_connection_type.export_obj(b, &out, fds, &nfds, 4));
    free(out.data);
    expect_str(b, "two");
    mproc_connection_close(a);
    mproc_connection_close(b);
}

/* -------------------------------------------------- a Pipe to a child */

static int child_echo_value(mproc_args *a)
{
    mproc_connection *c = mproc_args_object(a, 0, &mproc_connection_type);
    if (!c)
        return 2;
    void *buf;
    size_t n;
    if (mproc_connection_recv_bytes(c, &buf, &n, 30.0))
        return 3;
    int rc = mproc_connection_send_bytes(c, buf, n);
    free(buf);
    if (rc)
        return 4;
    mproc_value *v = the_value();
    rc = mproc_connection_send(c, v);
    mproc_value_free(v);
    return rc == 0 ? 0 : 5;
}

static void pipe_to_child(mproc_start_method m)
{
    mproc_connection *parent, *child;
    pipe_pair(&parent, &child, true, NULL);
    mproc_args *args = mproc_args_new();
    CHECK_OK(mproc_args_add_object(args, &mproc_connection_type, child));
    mproc_process *p = mtest_start(m, child_echo_value, args);
    mproc_args_free(args);
    mproc_connection_close(child);
    send_str(parent, "ping");
    expect_str(parent, "ping");
    mproc_value *v;
    CHECK_OK(mproc_connection_recv(parent, &v, 30.0));
    check_is_the_value(v);
    mproc_value_free(v);
    mtest_join(p, 0);
    void *buf;
    size_t n;
    CHECK_EQ(mproc_connection_recv_bytes(parent, &buf, &n, 10.0), MPROC_ECLOSED);
    mproc_connection_close(parent);
}
FOR_METHODS(pipe_to_child)

static int child_writes_simplex(mproc_args *a)
{
    mproc_connection *w = mproc_args_object(a, 0, &mproc_connection_type);
    return w && mproc_connection_writable(w) && !mproc_connection_readable(w) &&
                   mproc_connection_send_bytes(w, "from child", 10) == 0
               ? 0
               : 1;
}

static void simplex_pipe_to_child(mproc_start_method m)
{
    mproc_connection *r, *w;
    pipe_pair(&r, &w, false, NULL);
    mproc_args *args = mproc_args_new();
    CHECK_OK(mproc_args_add_object(args, &mproc_connection_type, w));
    mproc_process *p = mtest_start(m, child_writes_simplex, args);
    mproc_args_free(args);
    mproc_connection_close(w);
    expect_str(r, "from child");
    mtest_join(p, 0);
    mproc_connection_close(r);
}
FOR_METHODS(simplex_pipe_to_child)

/* ------------------------------------------------------ Listener / Client */

typedef struct client_job {
    const char *address;
    const char *key;
    const char *digest;
} client_job;

static int client_target(mproc_args *a)
{
    const char *addr = mproc_args_str(a, 0);
    const char *key = mproc_args_str(a, 1);
    const char *digest = mproc_args_str(a, 2);
    mproc_client_opts o = keyed_client(key);
    o.auth.digest = digest[0] ? digest : NULL;
    mproc_connection *c;
    int rc = mproc_client_connect(&c, addr, &o);
    if (rc == MPROC_EAUTH)
        return 10;
    if (rc) {
        fprintf(stderr, "client: %s %s\n", mproc_errname(rc), mproc_errmsg());
        return 1;
    }
    rc = mproc_connection_send_bytes(c, "hi", 2);
    void *buf = NULL;
    size_t n;
    if (!rc)
        rc = mproc_connection_recv_bytes(c, &buf, &n, 30.0);
    int ok = rc == 0 && n == 2 && memcmp(buf, "hi", 2) == 0;
    free(buf);
    mproc_connection_close(c);
    return ok ? 0 : 2;
}

static mproc_process *start_client(const char *addr, const char *key, const char *digest)
{
    mproc_args *args = mproc_args_new();
    CHECK_OK(mproc_args_add_str(args, addr));
    CHECK_OK(mproc_args_add_str(args, key));
    CHECK_OK(mproc_args_add_str(args, digest ? digest : ""));
    mproc_process *p = mtest_start(MPROC_START_FORK, client_target, args);
    mproc_args_free(args);
    return p;
}

static void serve_one_echo(mproc_listener *l)
{
    mproc_connection *c;
    CHECK_OK(mproc_listener_accept(l, &c, 30.0));
    void *buf;
    size_t n;
    CHECK_OK(mproc_connection_recv_bytes(c, &buf, &n, 30.0));
    CHECK_OK(mproc_connection_send_bytes(c, buf, n));
    free(buf);
    CHECK_EQ(mproc_connection_recv_bytes(c, &buf, &n, 30.0), MPROC_ECLOSED);
    mproc_connection_close(c);
}

static void listener_round_trip(const char *address, const char *ldigest, const char *cdigest)
{
    mproc_listener_opts o = keyed_listener(KEY);
    o.auth.digest = ldigest;
    mproc_listener *l;
    CHECK_OK(mproc_listener_new(&l, address, &o));
    mproc_process *p = start_client(mproc_listener_address(l), KEY, cdigest);
    serve_one_echo(l);
    mtest_join(p, 0);
    mproc_listener_close(l);
}

MTEST(test_listener_client_unix_path)
{
    char addr[128];
    tmp_unix_address(addr, sizeof addr, "path");
    listener_round_trip(addr, NULL, NULL);
    struct stat st;
    CHECK(stat(addr + 5, &st) < 0 && errno == ENOENT); /* close unlinked the socket */
}

MTEST(test_listener_client_abstract)
{
    char addr[128];
    snprintf(addr, sizeof addr, "unix:@mproc-test-%d", (int)getpid());
    listener_round_trip(addr, NULL, NULL);
}

MTEST(test_listener_client_tcp_port0)
{
    mproc_listener *l;
    CHECK_OK(mproc_listener_new(&l, "tcp:127.0.0.1:0", NULL));
    const char *a = mproc_listener_address(l);
    CHECK(strncmp(a, "tcp:127.0.0.1:", 14) == 0 && atoi(a + 14) > 0);
    mproc_listener_close(l);
    listener_round_trip("tcp:127.0.0.1:0", NULL, NULL);
}

MTEST(test_listener_client_every_digest_form)
{
    const char *forms[] = {"legacy", "md5", "sha256", "sha384", "sha3_256", "sha3_384"};
    for (size_t i = 0; i < 6; i++) {
        listener_round_trip("tcp:127.0.0.1:0", forms[i], forms[5 - i]);
    }
    mproc_listener *l;
    mproc_listener_opts o = keyed_listener(KEY);
    o.auth.digest = "sha1";
    CHECK_EQ(mproc_listener_new(&l, "tcp:127.0.0.1:0", &o), MPROC_EINVAL);
}

MTEST(test_listener_client_wrong_key_fails_both_sides)
{
    mproc_listener_opts o = keyed_listener(KEY);
    mproc_listener *l;
    CHECK_OK(mproc_listener_new(&l, "tcp:127.0.0.1:0", &o));
    mproc_process *p = start_client(mproc_listener_address(l), "wrong", NULL);
    mproc_connection *c;
    CHECK_EQ(mproc_listener_accept(l, &c, 30.0), MPROC_EAUTH);
    CHECK(strstr(mproc_errmsg(), "wrong"));
    mtest_join(p, 10);
    /* the listener is still usable */
    p = start_client(mproc_listener_address(l), KEY, NULL);
    serve_one_echo(l);
    mtest_join(p, 0);
    mproc_listener_close(l);
}

MTEST(test_listener_accept_times_out)
{
    mproc_listener *l;
    CHECK_OK(mproc_listener_new(&l, "tcp:127.0.0.1:0", NULL));
    mproc_connection *c;
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_listener_accept(l, &c, 0.05), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 >= 0.05);
    CHECK(c == NULL);
    mproc_listener_close(l);
}


/* A fork child that closes its copy of a unix listener must not remove the
 * socket path the parent still listens on (Python's Finalize does the same). */
static mproc_listener *inherited_listener;

static int t_close_inherited(mproc_args *a)
{
    (void)a;
    mproc_listener_close(inherited_listener);
    return 0;
}

MTEST(test_fork_child_closing_a_listener_keeps_the_path)
{
    char addr[128];
    tmp_unix_address(addr, sizeof addr, "inherit");
    CHECK_OK(mproc_listener_new(&inherited_listener, addr, NULL));
    mproc_process *p = mtest_start(MPROC_START_FORK, t_close_inherited, NULL);
    mtest_join(p, 0);
    CHECK(access(addr + 5, F_OK) == 0);
    mproc_connection *c, *s;
    CHECK_OK(mproc_client_connect(&c, addr, NULL));
    CHECK_OK(mproc_listener_accept(inherited_listener, &s, 10.0));
    mproc_connection_close(c);
    mproc_connection_close(s);
    mproc_listener_close(inherited_listener);
    CHECK(access(addr + 5, F_OK) != 0); /* the creator does remove it */
}

MTEST(test_bad_addresses_are_einval)
{
    const char *bad[] = {"", "/tmp/x", "unix:", "unix:@", "tcp:", "tcp:host", "tcp:h:99999",
                         "tcp:h:x", "tcp:[::1", "udp:1:2", "tcp:h: 0", "tcp:h:+0", "tcp:h:-1",
                         "tcp:h:0x10", "tcp:h:123456"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mproc_listener *l;
        mproc_connection *c;
        CHECK_EQ(mproc_listener_new(&l, bad[i], NULL), MPROC_EINVAL);
        CHECK_EQ(mproc_client_connect(&c, bad[i], NULL), MPROC_EINVAL);
    }
    mproc_connection *c;
    CHECK_EQ(mproc_client_connect(&c, "unix:/nonexistent/mproc.sock", NULL), MPROC_ENOENT);
}

/* A raw peer that connects and then misbehaves during the handshake. */
static int raw_peer(const char *address, const void *bytes, size_t n)
{
    const char *path = address + 5;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof un.sun_path, "%.100s", path);
    CHECK(connect(fd, (struct sockaddr *)&un, sizeof un) == 0);
    if (n)
        raw_write(fd, bytes, n);
    return fd;
}

MTEST(test_listener_survives_garbage_and_stalled_peers)
{
    char addr[128];
    tmp_unix_address(addr, sizeof addr, "garbage");
    mproc_listener_opts o = keyed_listener(KEY);
    o.auth.handshake_timeout = 0.2;
    mproc_listener *l;
    CHECK_OK(mproc_listener_new(&l, addr, &o));
    mproc_connection *c;
    /* a huge frame header instead of a digest */
    int fd = raw_peer(addr, "\x7f\xff\xff\xff", 4);
    CHECK_EQ(mproc_listener_accept(l, &c, 10.0), MPROC_EAUTH);
    close(fd);
    /* a well-framed but wrong-length reply */
    fd = raw_peer(addr, "\x00\x00\x00\x05hello", 9);
    CHECK_EQ(mproc_listener_accept(l, &c, 10.0), MPROC_EAUTH);
    close(fd);
    /* a negative length */
    fd = raw_peer(addr, "\x80\x00\x00\x00", 4);
    CHECK_EQ(mproc_listener_accept(l, &c, 10.0), MPROC_EAUTH);
    close(fd);
    /* silence: the handshake timeout ends it */
    fd = raw_peer(addr, NULL, 0);
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_listener_accept(l, &c, 10.0), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 < 5.0);
    close(fd);
    /* a peer that hangs up at once */
    fd = raw_peer(addr, NULL, 0);
    close(fd);
    CHECK_EQ(mproc_listener_accept(l, &c, 10.0), MPROC_ECLOSED);
    /* still serving */
    mproc_process *p = start_client(addr, KEY, NULL);
    serve_one_echo(l);
    mtest_join(p, 0);
    mproc_listener_close(l);
}

static int garbage_server(mproc_args *a)
{
    int lfd = mproc_args_fd(a, 0);
    const char *what = mproc_args_str(a, 1);
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return 1;
    if (!strcmp(what, "nochallenge"))
        mproc_write_all(fd, "\x00\x00\x00\x05hello", 9);
    else if (!strcmp(what, "short"))
        mproc_write_all(fd, "\x00\x00\x00\x0e#CHALLENGE#abc", 18);
    char buf[512];
    /* hold the connection until the client gives up */
    while (mproc_read_some(fd, buf, sizeof buf) > 0)
        ;
    close(fd);
    return 0;
}

MTEST(test_client_survives_garbage_and_stalled_servers)
{
    const char *modes[] = {"nochallenge", "short", "silent"};
    int want[] = {MPROC_EAUTH, MPROC_EAUTH, MPROC_ETIMEDOUT};
    for (int i = 0; i < 3; i++) {
        int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        char addr[128];
        tmp_unix_address(addr, sizeof addr, "gs");
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        snprintf(un.sun_path, sizeof un.sun_path, "%.100s", addr + 5);
        CHECK(bind(lfd, (struct sockaddr *)&un, sizeof un) == 0 && listen(lfd, 1) == 0);
        mproc_args *args = mproc_args_new();
        CHECK_OK(mproc_args_add_fd(args, lfd));
        CHECK_OK(mproc_args_add_str(args, modes[i]));
        mproc_process *p = mtest_start(MPROC_START_FORK, garbage_server, args);
        mproc_args_free(args);
        mproc_client_opts o = keyed_client(KEY);
        o.auth.handshake_timeout = 0.2;
        mproc_connection *c;
        CHECK_EQ(mproc_client_connect(&c, addr, &o), want[i]);
        mtest_join(p, 0);
        close(lfd);
        unlink(addr + 5);
    }
}

/* ------------------------------------------------ interop with python3 */

MTEST(test_python_listener_c_client)
{
    char addr[128], line[256];
    tmp_unix_address(addr, sizeof addr, "pyl");
    peer py;
    py_start(&py, "listen", addr, KEY_HEX, -1);
    peer_expect_prefix(&py, "address unix:");
    mproc_client_opts o = keyed_client(KEY);
    mproc_connection *c;
    CHECK_OK(mproc_client_connect(&c, addr, &o));
    peer_expect_prefix(&py, "accepted");
    send_str(c, "hello");
    expect_str(c, "hello");
    send_str(c, "");
    expect_str(c, "");
    mproc_value *v = the_value(), *back;
    CHECK_OK(mproc_connection_send(c, v));
    CHECK_OK(mproc_connection_recv(c, &back, 10.0));
    CHECK(mproc_value_equal(v, back));
    mproc_value_free(v);
    mproc_value_free(back);
    mproc_connection_close(c);
    peer_line(&py, line, sizeof line);
    CHECK(strcmp(line, "ok") == 0);
    peer_finish(&py);
}

MTEST(test_python_listener_tcp_port0_c_client)
{
    char line[256];
    peer py;
    py_start(&py, "listen", "tcp:127.0.0.1:0", KEY_HEX, -1);
    peer_line(&py, line, sizeof line);
    CHECK(strncmp(line, "address tcp:127.0.0.1:", 22) == 0);
    mproc_client_opts o = keyed_client(KEY);
    mproc_connection *c;
    CHECK_OK(mproc_client_connect(&c, line + 8, &o));
    peer_expect_prefix(&py, "accepted");
    send_str(c, "over tcp");
    expect_str(c, "over tcp");
    mproc_connection_close(c);
    peer_expect_prefix(&py, "ok");
    peer_finish(&py);
}

MTEST(test_python_listener_c_client_wrong_key)
{
    char addr[128];
    tmp_unix_address(addr, sizeof addr, "pylw");
    peer py;
    py_start(&py, "listen", addr, BAD_HEX, -1);
    peer_expect_prefix(&py, "address");
    mproc_client_opts o = keyed_client(KEY);
    mproc_connection *c;
    CHECK_EQ(mproc_client_connect(&c, addr, &o), MPROC_EAUTH);
    peer_expect_prefix(&py, "auth-error");
    peer_finish(&py);
    unlink(addr + 5);
}

/* C listener serving one Python client: echo bytes; decode the value when we can. */
static void serve_python(mproc_listener *l, int want_accept)
{
    mproc_connection *c;
    int rc = mproc_listener_accept(l, &c, 30.0);
    CHECK_EQ(rc, want_accept);
    if (rc)
        return;
    for (int i = 0; i < 3; i++) { /* b"hello", b"", 100000 random bytes */
        void *buf;
        size_t n;
        CHECK_OK(mproc_connection_recv_bytes(c, &buf, &n, 30.0));
        CHECK_OK(mproc_connection_send_bytes(c, buf, n));
        free(buf);
    }
    mproc_value *v; /* pickled by Python, decoded here, pickled back by us */
    CHECK_OK(mproc_connection_recv(c, &v, 30.0));
    check_is_the_value(v);
    CHECK_OK(mproc_connection_send(c, v));
    mproc_value_free(v);
    void *buf;
    size_t n;
    CHECK_EQ(mproc_connection_recv_bytes(c, &buf, &n, 30.0), MPROC_ECLOSED);
    mproc_connection_close(c);
}

static void c_listener_python_client(const char *address, const char *mode, const char *keyhex,
                                     const char *digest, int want, const char *py_says)
{
    mproc_listener_opts o = keyed_listener(KEY);
    o.auth.digest = digest;
    mproc_listener *l;
    CHECK_OK(mproc_listener_new(&l, address, &o));
    peer py;
    py_start(&py, mode, mproc_listener_address(l), keyhex, -1);
    serve_python(l, want);
    peer_expect_prefix(&py, py_says);
    peer_finish(&py);
    mproc_listener_close(l);
}

MTEST(test_c_listener_python_client_tcp)
{
    c_listener_python_client("tcp:127.0.0.1:0", "client", KEY_HEX, NULL, 0, "ok");
}

MTEST(test_c_listener_python_client_unix_legacy_challenge)
{
    char addr[128];
    tmp_unix_address(addr, sizeof addr, "cl");
    c_listener_python_client(addr, "client", KEY_HEX, "legacy", 0, "ok");
}

MTEST(test_c_listener_python_client_wrong_key)
{
    c_listener_python_client("tcp:127.0.0.1:0", "client", BAD_HEX, NULL, MPROC_EAUTH,
                             "auth-error");
}

/* A 3.12+ peer (emulated by hand: it insists on "{sha256}" replies and challenges). */
MTEST(test_modern_python_client_c_listener)
{
    c_listener_python_client("tcp:127.0.0.1:0", "modern-client", KEY_HEX, NULL, 0, "ok");
}

MTEST(test_modern_python_client_c_listener_wrong_key)
{
    c_listener_python_client("tcp:127.0.0.1:0", "modern-client", BAD_HEX, NULL, MPROC_EAUTH,
                             "auth-error");
}

MTEST(test_modern_python_listener_c_client)
{
    char addr[128];
    snprintf(addr, sizeof addr, "unix:@mproc-test-modern-%d", (int)getpid());
    peer py;
    py_start(&py, "modern-listen", addr, KEY_HEX, -1);
    peer_expect_prefix(&py, "address unix:@");
    mproc_client_opts o = keyed_client(KEY);
    mproc_connection *c;
    CHECK_OK(mproc_client_connect(&c, addr, &o));
    peer_expect_prefix(&py, "accepted");
    send_str(c, "modern");
    expect_str(c, "modern");
    mproc_connection_close(c);
    peer_expect_prefix(&py, "ok");
    peer_finish(&py);
    /* and with the wrong key */
    py_start(&py, "modern-listen", addr, BAD_HEX, -1);
    peer_expect_prefix(&py, "address");
    CHECK_EQ(mproc_client_connect(&c, addr, &o), MPROC_EAUTH);
    peer_expect_prefix(&py, "auth-error");
    peer_finish(&py);
}

MTEST(test_python_pipe_exchanges_pickled_value)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    mproc_connection *c;
    CHECK_OK(mproc_connection_new(&c, sv[0], NULL));
    char fdarg[16];
    snprintf(fdarg, sizeof fdarg, "3");
    peer py;
    py_start(&py, "pipe", fdarg, "-", sv[1]);
    close(sv[1]);
    mproc_value *v;
    CHECK_OK(mproc_connection_recv(c, &v, 30.0));
    check_is_the_value(v);
    CHECK_OK(mproc_connection_send(c, v));
    mproc_value_free(v);
    char line[256];
    peer_line(&py, line, sizeof line); /* Python prints repr() of what it received */
    CHECK(strcmp(line, "[42, None, 'hello']") == 0);
    mproc_connection_close(c);
    peer_finish(&py);
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    mtest_warmup = mtest_warmup_tracker_and_forkserver;
    static const mtest_case cases[] = {
        MTEST_ENTRY(test_fork_child_closing_a_listener_keeps_the_path),
        MTEST_ENTRY(test_pipe_duplex_round_trips_bytes),
        MTEST_ENTRY(test_pipe_simplex_reads_on_first_writes_on_second),
        MTEST_ENTRY(test_frame_wire_format_matches_cpython),
        MTEST_ENTRY(test_frame_long_header_above_2gib),
        MTEST_ENTRY(test_recv_refuses_frames_over_max_message),
        MTEST_ENTRY(test_recv_rejects_negative_length),
        MTEST_ENTRY(test_recv_times_out_and_resumes_small),
        MTEST_ENTRY(test_recv_times_out_and_resumes_big),
        MTEST_ENTRY(test_send_recv_values_with_both_codecs),
        MTEST_ENTRY(test_recv_eof_between_messages_is_eclosed),
        MTEST_ENTRY(test_peer_closing_mid_frame_is_eproto),
        MTEST_ENTRY(test_recv_bytes_into_too_small_keeps_the_message),
        MTEST_ENTRY(test_poll_sees_buffered_and_pending_messages),
        MTEST_ENTRY(test_send_to_closed_peer_is_epipe_without_signal),
        MTEST_ENTRY(test_wait_over_connections_and_a_sentinel),
        MTEST_ENTRY(test_export_refuses_read_ahead_bytes),
        METHOD_ENTRIES(pipe_to_child),
        METHOD_ENTRIES(simplex_pipe_to_child),
        MTEST_ENTRY(test_listener_client_unix_path),
        MTEST_ENTRY(test_listener_client_abstract),
        MTEST_ENTRY(test_listener_client_tcp_port0),
        MTEST_ENTRY(test_listener_client_every_digest_form),
        MTEST_ENTRY(test_listener_client_wrong_key_fails_both_sides),
        MTEST_ENTRY(test_listener_accept_times_out),
        MTEST_ENTRY(test_bad_addresses_are_einval),
        MTEST_ENTRY(test_listener_survives_garbage_and_stalled_peers),
        MTEST_ENTRY(test_client_survives_garbage_and_stalled_servers),
        MTEST_ENTRY(test_python_listener_c_client),
        MTEST_ENTRY(test_python_listener_tcp_port0_c_client),
        MTEST_ENTRY(test_python_listener_c_client_wrong_key),
        MTEST_ENTRY(test_c_listener_python_client_tcp),
        MTEST_ENTRY(test_c_listener_python_client_unix_legacy_challenge),
        MTEST_ENTRY(test_c_listener_python_client_wrong_key),
        MTEST_ENTRY(test_modern_python_client_c_listener),
        MTEST_ENTRY(test_modern_python_client_c_listener_wrong_key),
        MTEST_ENTRY(test_modern_python_listener_c_client),
        MTEST_ENTRY(test_python_pipe_exchanges_pickled_value),
    };
    return mtest_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
