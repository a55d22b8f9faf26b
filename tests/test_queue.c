/* test_queue.c — Queue, SimpleQueue and JoinableQueue: semantics and
 * timeouts, messages larger than the ring, values, sharing with children under
 * every start method, N producers x M consumers with checksums, and SIGKILL of
 * producers and consumers at any point. */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>

#include "mtest.h"

/* --------------------------------------------------------------- helpers */

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* Test messages: an 8-byte id, then bytes derived from it, so a torn or
 * mixed-up message never passes check_msg. `big` adds rare large ones. */
static size_t msg_len(uint64_t id, size_t big)
{
    uint64_t h = mix(id ^ 0x9e3779b97f4a7c15ULL);
    if (big && h % 23 == 0)
        return big + (size_t)(h >> 40) % 1000;
    if (big && h % 7 == 0)
        return 1000 + (size_t)(h >> 40) % 2000;
    return 8 + (size_t)(h >> 40) % 120;
}

static void fill_msg(uint8_t *buf, uint64_t id, size_t len)
{
    memcpy(buf, &id, 8);
    uint64_t h = mix(id);
    for (size_t i = 8; i < len; i++)
        buf[i] = (uint8_t)((h >> (i % 8 * 8)) ^ i);
}

static bool check_msg(const uint8_t *buf, size_t len, size_t big, uint64_t *id)
{
    if (len < 8)
        return false;
    memcpy(id, buf, 8);
    if (len != msg_len(*id, big))
        return false;
    uint64_t h = mix(*id);
    for (size_t i = 8; i < len; i++)
        if (buf[i] != (uint8_t)((h >> (i % 8 * 8)) ^ i))
            return false;
    return true;
}

static mproc_queue *new_queue(size_t capacity, size_t maxsize)
{
    mproc_queue_opts o = {.capacity = capacity, .maxsize = maxsize};
    mproc_queue *q;
    CHECK_OK(mproc_queue_new(&q, &o));
    return q;
}

static void put_str(mproc_queue *q, const char *s)
{
    CHECK_OK(mproc_queue_put(q, s, strlen(s), 5.0));
}

static void get_expect(mproc_queue *q, const char *want)
{
    void *p;
    size_t n;
    CHECK_OK(mproc_queue_get(q, &p, &n, 10.0));
    CHECK_EQ(n, strlen(want));
    CHECK(memcmp(p, want, n) == 0);
    free(p);
}


/* ------------------------------------------------------------- semantics */

MTEST(test_queue_put_get_keeps_order_and_bytes)
{
    mproc_queue *q = new_queue(0, 0);
    CHECK(mproc_queue_empty(q));
    CHECK_EQ(mproc_queue_capacity(q), MPROC_QUEUE_DEFAULT_CAPACITY);
    static const size_t sizes[] = {0, 1, 7, 8, 9, 100, 4000, 65536, 200000};
    uint8_t *buf = malloc(200000);
    CHECK(buf);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        memset(buf, (int)i + 1, sizes[i]);
        CHECK_OK(mproc_queue_put(q, buf, sizes[i], 0));
    }
    CHECK_EQ(mproc_queue_qsize(q), 9);
    CHECK(!mproc_queue_empty(q));
    CHECK(!mproc_queue_full(q)); /* no maxsize: never full */
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        void *p;
        size_t n;
        CHECK_OK(mproc_queue_get_nowait(q, &p, &n));
        CHECK(p != NULL);
        CHECK_EQ(n, sizes[i]);
        for (size_t k = 0; k < n; k++)
            CHECK_EQ(((uint8_t *)p)[k], i + 1);
        free(p);
    }
    CHECK_EQ(mproc_queue_qsize(q), 0);
    CHECK(mproc_queue_empty(q));
    free(buf);
    mproc_queue_close(q);
}

MTEST(test_queue_get_times_out_when_empty)
{
    mproc_queue *q = new_queue(0, 0);
    void *p = (void *)1;
    size_t n = 1;
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_queue_get(q, &p, &n, 0.05), MPROC_ETIMEDOUT);
    double dt = mproc_monotonic() - t0;
    CHECK(dt >= 0.045 && dt < 5.0);
    CHECK(p == NULL && n == 0);
    CHECK_EQ(mproc_queue_get(q, &p, &n, 0), MPROC_ETIMEDOUT);
    CHECK_EQ(mproc_queue_get_nowait(q, &p, &n), MPROC_EEMPTY);
    CHECK(strstr(mproc_errmsg(), "empty") != NULL);
    mproc_value *v = (mproc_value *)1;
    CHECK_EQ(mproc_queue_get_value(q, &v, 0.01), MPROC_ETIMEDOUT);
    CHECK(v == NULL);
    mproc_queue_close(q);
}

MTEST(test_queue_maxsize_blocks_puts)
{
    mproc_queue *q = new_queue(0, 2);
    CHECK_EQ(mproc_queue_maxsize(q), 2);
    put_str(q, "a");
    CHECK(!mproc_queue_full(q));
    put_str(q, "b");
    CHECK(mproc_queue_full(q));
    CHECK_EQ(mproc_queue_put_nowait(q, "c", 1), MPROC_EFULL);
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_queue_put(q, "c", 1, 0.05), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 >= 0.045);
    get_expect(q, "a");
    CHECK_OK(mproc_queue_put_nowait(q, "c", 1));
    get_expect(q, "b");
    get_expect(q, "c");
    mproc_queue_close(q);
}

MTEST(test_queue_ring_capacity_blocks_puts)
{
    mproc_queue *q = new_queue(1, 0); /* rounded up to the minimum */
    CHECK_EQ(mproc_queue_capacity(q), MPROC_QUEUE_MIN_CAPACITY);
    char msg[1000];
    memset(msg, 'x', sizeof msg);
    int n = 0;
    while (mproc_queue_put_nowait(q, msg, sizeof msg) == 0)
        n++;
    CHECK_EQ(n, 4096 / 1016); /* each record: 1000 + 16 bytes */
    CHECK_EQ(mproc_queue_put_nowait(q, msg, sizeof msg), MPROC_EFULL);
    CHECK_EQ(mproc_queue_put(q, msg, sizeof msg, 0.02), MPROC_ETIMEDOUT);
    CHECK(!mproc_queue_full(q)); /* full() is about maxsize only */
    void *p;
    size_t len;
    CHECK_OK(mproc_queue_get(q, &p, &len, 0));
    free(p);
    CHECK_OK(mproc_queue_put_nowait(q, msg, sizeof msg));
    /* A message larger than the ring cannot go without waiting. */
    char *big = calloc(1, 10000);
    CHECK(big);
    CHECK_EQ(mproc_queue_put_nowait(q, big, 10000), MPROC_EFULL);
    free(big);
    for (int i = 0; i < n; i++) {
        CHECK_OK(mproc_queue_get(q, &p, &len, 0));
        CHECK_EQ(len, sizeof msg);
        free(p);
    }
    CHECK(mproc_queue_empty(q));
    mproc_queue_close(q);
}

MTEST(test_queue_options_are_checked)
{
    mproc_queue *q;
    mproc_queue_opts o = {.capacity = MPROC_QUEUE_MAX_CAPACITY + 1};
    CHECK_EQ(mproc_queue_new(&q, &o), MPROC_EINVAL);
    o = (mproc_queue_opts){.max_message = ((size_t)1 << 40) + 1};
    CHECK_EQ(mproc_queue_new(&q, &o), MPROC_EINVAL);
    o = (mproc_queue_opts){.maxsize = 3};
    CHECK_EQ(mproc_simple_queue_new(&q, &o), MPROC_EINVAL);
    CHECK_EQ(mproc_queue_new(NULL, NULL), MPROC_EINVAL);
    o = (mproc_queue_opts){.capacity = 5000, .max_message = 10};
    CHECK_OK(mproc_simple_queue_new(&q, &o));
    CHECK_EQ(mproc_queue_capacity(q), 8192);
    CHECK_EQ(mproc_queue_max_message(q), 10);
    CHECK_EQ(mproc_queue_put(q, "01234567890", 11, 0), MPROC_EMSGSIZE);
    CHECK_EQ(mproc_queue_put(q, NULL, 1, 0), MPROC_EINVAL);
    CHECK_OK(mproc_queue_put(q, NULL, 0, 0));
    void *p;
    size_t n;
    CHECK_EQ(mproc_queue_get(q, NULL, &n, 0), MPROC_EINVAL);
    CHECK_OK(mproc_queue_get(q, &p, &n, 0));
    CHECK(p != NULL);
    CHECK_EQ(n, 0);
    free(p);
    CHECK_EQ(mproc_queue_task_done(q), MPROC_ESTATE);
    CHECK_EQ(mproc_queue_join(q, 0), MPROC_ESTATE);
    CHECK(!mproc_queue_is_joinable(q));
    mproc_queue_close(q);
    mproc_queue_close(NULL);
}

MTEST(test_queue_get_into_too_small_keeps_the_message)
{
    mproc_queue *q = new_queue(4096, 0);
    put_str(q, "hello world");
    char small[4], big[64];
    size_t n = 0;
    CHECK_EQ(mproc_queue_get_into(q, small, sizeof small, &n, 0), MPROC_EMSGSIZE);
    CHECK_EQ(n, 11);
    CHECK_EQ(mproc_queue_qsize(q), 1);
    CHECK_OK(mproc_queue_get_into(q, big, sizeof big, &n, 0));
    CHECK_EQ(n, 11);
    CHECK(memcmp(big, "hello world", 11) == 0);
    mproc_queue_close(q);
}

/* A thread that puts messages larger than the ring while the test reads. */
typedef struct bigput {
    mproc_queue *q;
    int n;
    size_t big;
    int rc;
} bigput;

static void *bigput_main(void *p)
{
    bigput *b = p;
    uint8_t *buf = malloc(b->big + 1000);
    for (int i = 0; i < b->n && !b->rc; i++) {
        size_t len = msg_len((uint64_t)i, b->big);
        fill_msg(buf, (uint64_t)i, len);
        b->rc = mproc_queue_put(b->q, buf, len, 30.0);
    }
    free(buf);
    return NULL;
}

MTEST(test_queue_messages_larger_than_the_ring_arrive_whole_and_in_order)
{
    mproc_queue *q = new_queue(4096, 0);
    bigput b = {q, 300, 50000, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, bigput_main, &b) == 0);
    /* The first large one is held at the head by get_into until the buffer is big enough. */
    uint8_t *buf = malloc(b.big + 1000);
    bool seen_too_small = false;
    for (int i = 0; i < b.n; i++) {
        size_t n = 0;
        uint64_t id;
        int rc = mproc_queue_get_into(q, buf, seen_too_small ? b.big + 1000 : 3000, &n, 30.0);
        if (rc == MPROC_EMSGSIZE) {
            CHECK_EQ(n, msg_len((uint64_t)i, b.big));
            seen_too_small = true;
            i--;
            continue;
        }
        CHECK_OK(rc);
        CHECK(check_msg(buf, n, b.big, &id));
        CHECK_EQ(id, i);
    }
    CHECK(seen_too_small);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_OK(b.rc);
    CHECK(mproc_queue_empty(q));
    free(buf);
    mproc_queue_close(q);
}

MTEST(test_queue_put_of_a_large_message_times_out_and_consumers_drop_it)
{
    mproc_queue *q = new_queue(4096, 0);
    size_t len = 20000;
    uint8_t *buf = malloc(len);
    fill_msg(buf, 1, len);
    /* Nobody reads: the first chunks go out, then the put times out. */
    CHECK_EQ(mproc_queue_put(q, buf, len, 0.05), MPROC_ETIMEDOUT);
    CHECK(mproc_queue_empty(q));
    void *p;
    size_t n;
    /* A get drains the chunks and the ABORT after them: nothing to deliver. */
    CHECK_EQ(mproc_queue_get(q, &p, &n, 0.05), MPROC_ETIMEDOUT);
    put_str(q, "next");
    get_expect(q, "next"); /* the partial message is dropped, not delivered */
    CHECK(mproc_queue_empty(q));
    CHECK_EQ(mproc_queue_get_nowait(q, &p, &n), MPROC_EEMPTY);
    free(buf);
    mproc_queue_close(q);
}

MTEST(test_queue_values_round_trip)
{
    mproc_queue *q = new_queue(0, 0);
    mproc_value *l = mproc_value_list();
    mproc_value_append(l, mproc_value_int(42));
    mproc_value_append(l, mproc_value_nil());
    mproc_value_append(l, mproc_value_str("hello"));
    CHECK_OK(mproc_queue_put_value(q, l, 1.0));
    mproc_value *m = mproc_value_map();
    mproc_value_map_set(m, mproc_value_str("x"), mproc_value_float(1.5));
    CHECK_OK(mproc_queue_put_value(q, m, 1.0));
    CHECK_OK(mproc_queue_put(q, "\xc1", 1, 1.0)); /* not MessagePack */
    put_str(q, "\x93\x01\x02"); /* truncated array */
    CHECK_OK(mproc_queue_put_value(q, l, 1.0));
    mproc_value *v;
    CHECK_OK(mproc_queue_get_value(q, &v, 1.0));
    char *r = mproc_value_repr(v);
    CHECK(strcmp(r, "[42, None, 'hello']") == 0);
    free(r);
    mproc_value_free(v);
    CHECK_OK(mproc_queue_get_value(q, &v, 1.0));
    CHECK(mproc_value_equal(v, m));
    mproc_value_free(v);
    CHECK_EQ(mproc_queue_get_value(q, &v, 1.0), MPROC_EPROTO);
    CHECK(v == NULL);
    CHECK_EQ(mproc_queue_get_value(q, &v, 1.0), MPROC_EPROTO);
    CHECK_OK(mproc_queue_get_value(q, &v, 1.0)); /* still usable */
    CHECK(mproc_value_equal(v, l));
    mproc_value_free(v);
    mproc_value_free(l);
    mproc_value_free(m);
    mproc_queue_close(q);
}

MTEST(test_queue_value_decode_limits_apply)
{
    mproc_queue_opts o = {.limits = {.max_depth = 2}};
    mproc_queue *q;
    CHECK_OK(mproc_queue_new(&q, &o));
    mproc_value *deep = mproc_value_list(), *cur = deep;
    for (int i = 0; i < 5; i++) {
        mproc_value *in = mproc_value_list();
        mproc_value_append(cur, in);
        cur = in;
    }
    CHECK_OK(mproc_queue_put_value(q, deep, 1.0));
    mproc_value *v;
    CHECK_EQ(mproc_queue_get_value(q, &v, 1.0), MPROC_EPROTO);
    mproc_value_free(deep);
    mproc_queue_close(q);
}

/* Shut down: puts fail, gets drain then fail, and a blocked get wakes. */
static void *blocked_get(void *p)
{
    void *d;
    size_t n;
    intptr_t rc = mproc_queue_get(p, &d, &n, 30.0);
    if (!rc)
        free(d);
    return (void *)rc;
}

MTEST(test_queue_shutdown_drains_then_closes)
{
    mproc_queue *q = new_queue(0, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, blocked_get, q) == 0);
    char path[300];
    /* wait until the getter sleeps in the queue, then shut down */
    mproc_deadline d = mproc_deadline_after(30.0);
    for (;;) {
        DIR *dir = opendir("/proc/self/task");
        struct dirent *e;
        bool found = false;
        while (dir && (e = readdir(dir)))
            if (e->d_name[0] != '.' && atoi(e->d_name) != (int)syscall(SYS_gettid)) {
                snprintf(path, sizeof path, "/proc/self/task/%s/syscall", e->d_name);
                found = mtest_parked(path);
            }
        if (dir)
            closedir(dir);
        if (found)
            break;
        CHECK(!mproc_deadline_expired(d));
        sched_yield();
    }
    put_str(q, "left");
    void *res;
    CHECK(pthread_join(t, &res) == 0);
    CHECK_EQ((intptr_t)res, 0); /* it got "left" */
    put_str(q, "one");
    put_str(q, "two");
    CHECK(!mproc_queue_is_shutdown(q));
    mproc_queue_shutdown(q);
    mproc_queue_shutdown(q);
    CHECK(mproc_queue_is_shutdown(q));
    CHECK_EQ(mproc_queue_put(q, "x", 1, 1.0), MPROC_ECLOSED);
    get_expect(q, "one");
    get_expect(q, "two");
    void *p;
    size_t n;
    CHECK_EQ(mproc_queue_get(q, &p, &n, 30.0), MPROC_ECLOSED);
    CHECK(pthread_create(&t, NULL, blocked_get, q) == 0);
    CHECK(pthread_join(t, &res) == 0);
    CHECK_EQ((intptr_t)res, MPROC_ECLOSED);
    mproc_queue_close(q);
}

MTEST(test_queue_shutdown_wakes_a_blocked_put)
{
    mproc_queue *q = new_queue(0, 1);
    put_str(q, "full");
    mproc_queue *q2 = q;
    pid_t self = getpid();
    pid_t kid = fork(); /* a plain fork child shuts the queue down once we sleep */
    CHECK(kid >= 0);
    if (kid == 0) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/syscall", (int)self);
        mproc_deadline d = mproc_deadline_after(30.0);
        while (!mtest_parked(path) && !mproc_deadline_expired(d))
            sched_yield();
        mproc_queue_shutdown(q2);
        _exit(0);
    }
    CHECK_EQ(mproc_queue_put(q, "more", 4, 30.0), MPROC_ECLOSED);
    int st;
    CHECK(waitpid(kid, &st, 0) == kid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    get_expect(q, "full");
    mproc_queue_close(q);
}

/* A get_nowait or put_nowait never waits long behind another process's wait. */
MTEST(test_queue_nowait_is_not_held_up_by_a_blocked_get)
{
    mproc_queue *q = new_queue(0, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, blocked_get, q) == 0);
    double t0 = mproc_monotonic();
    void *p;
    size_t n;
    CHECK_EQ(mproc_queue_get_nowait(q, &p, &n), MPROC_EEMPTY);
    CHECK(mproc_monotonic() - t0 < 5.0);
    put_str(q, "wake");
    void *res;
    CHECK(pthread_join(t, &res) == 0);
    CHECK_EQ((intptr_t)res, 0);
    mproc_queue_close(q);
}

/* ------------------------------------------------------- JoinableQueue */

MTEST(test_joinable_queue_counts_tasks)
{
    mproc_queue *q;
    CHECK_OK(mproc_joinable_queue_new(&q, NULL));
    CHECK(mproc_queue_is_joinable(q));
    CHECK_OK(mproc_queue_join(q, 0)); /* nothing put: joined */
    CHECK_EQ(mproc_queue_task_done(q), MPROC_EOVERFLOW);
    CHECK(strstr(mproc_errmsg(), "too many") != NULL);
    put_str(q, "a");
    put_str(q, "b");
    CHECK_EQ(mproc_queue_unfinished(q), 2);
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_queue_join(q, 0.05), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 >= 0.045);
    get_expect(q, "a");
    CHECK_OK(mproc_queue_task_done(q));
    CHECK_EQ(mproc_queue_join(q, 0), MPROC_ETIMEDOUT);
    get_expect(q, "b");
    CHECK_OK(mproc_queue_task_done(q));
    CHECK_EQ(mproc_queue_unfinished(q), 0);
    CHECK_OK(mproc_queue_join(q, 0));
    CHECK_EQ(mproc_queue_task_done(q), MPROC_EOVERFLOW);
    mproc_queue_close(q);
}

static int t_consume_and_mark_done(mproc_args *a)
{
    mproc_queue *q = mproc_args_object(a, 0, &mproc_queue_type);
    mproc_queue *out = mproc_args_object(a, 1, &mproc_queue_type);
    if (!q || !out)
        return 2;
    for (;;) {
        mproc_value *v;
        int rc = mproc_queue_get_value(q, &v, 30.0);
        if (rc == MPROC_ECLOSED)
            return 0;
        if (rc)
            return 3;
        int64_t x = mproc_value_as_int(v);
        mproc_value_free(v);
        mproc_value *sq = mproc_value_int(x * x);
        rc = mproc_queue_put_value(out, sq, 30.0);
        mproc_value_free(sq);
        if (rc || mproc_queue_task_done(q))
            return 4;
    }
}

static void joinable_across(mproc_start_method m)
{
    mproc_queue *q, *out;
    CHECK_OK(mproc_joinable_queue_new(&q, NULL));
    CHECK_OK(mproc_queue_new(&out, NULL));
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_queue_type, q));
    CHECK_OK(mproc_args_add_object(a, &mproc_queue_type, out));
    mproc_process *p[2] = {mtest_start(m, t_consume_and_mark_done, a),
                           mtest_start(m, t_consume_and_mark_done, a)};
    mproc_args_free(a);
    for (int i = 1; i <= 100; i++) {
        mproc_value *v = mproc_value_int(i);
        CHECK_OK(mproc_queue_put_value(q, v, 5.0));
        mproc_value_free(v);
    }
    CHECK_OK(mproc_queue_join(q, 30.0));
    CHECK_EQ(mproc_queue_unfinished(q), 0);
    CHECK_EQ(mproc_queue_qsize(out), 100);
    int64_t sum = 0;
    for (int i = 0; i < 100; i++) {
        mproc_value *v;
        CHECK_OK(mproc_queue_get_value(out, &v, 0));
        sum += mproc_value_as_int(v);
        mproc_value_free(v);
    }
    CHECK_EQ(sum, 338350);
    mproc_queue_shutdown(q);
    mtest_join(p[0], 0);
    mtest_join(p[1], 0);
    mproc_queue_close(q);
    mproc_queue_close(out);
}
FOR_METHODS(joinable_across)

/* ------------------------------------------------- children, every method */

static int t_echo(mproc_args *a)
{
    mproc_queue *in = mproc_args_object(a, 0, &mproc_queue_type);
    mproc_queue *out = mproc_args_object(a, 1, &mproc_queue_type);
    if (!in || !out)
        return 2;
    uint8_t *buf = malloc(300000);
    for (;;) {
        size_t n;
        int rc = mproc_queue_get_into(in, buf, 300000, &n, 30.0);
        if (rc == MPROC_ECLOSED)
            break;
        if (rc || mproc_queue_put(out, buf, n, 30.0)) {
            free(buf);
            return 3;
        }
    }
    free(buf);
    return 0;
}

static void queue_across(mproc_start_method m)
{
    mproc_queue *in = new_queue(8192, 0), *out = new_queue(8192, 0);
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_queue_type, in));
    CHECK_OK(mproc_args_add_object(a, &mproc_queue_type, out));
    mproc_process *p = mtest_start(m, t_echo, a);
    mproc_args_free(a);
    uint8_t *buf = malloc(300000), *back = malloc(300000);
    for (uint64_t i = 0; i < 200; i++) {
        size_t len = msg_len(i, 200000);
        fill_msg(buf, i, len);
        CHECK_OK(mproc_queue_put(in, buf, len, 30.0));
        size_t n;
        uint64_t id;
        CHECK_OK(mproc_queue_get_into(out, back, 300000, &n, 30.0));
        CHECK(check_msg(back, n, 200000, &id));
        CHECK_EQ(id, i);
    }
    mproc_queue_shutdown(in);
    mtest_join(p, 0);
    free(buf);
    free(back);
    mproc_queue_close(in);
    mproc_queue_close(out);
}
FOR_METHODS(queue_across)

static int t_put_and_exit(mproc_args *a)
{
    mproc_queue *q = mproc_args_object(a, 0, &mproc_queue_type);
    char *big = calloc(1, 100000);
    int rc = q && big ? mproc_queue_put(q, big, 100000, 10.0) : 2;
    free(big);
    return rc ? 3 : 0;
}

/* Python's pitfall: joining a process that put a large item before the item
 * is read deadlocks (its feeder thread cannot flush). Here put returns when
 * the message is in shared memory, so the child exits at once. */
static void producer_exit_does_not_wait_for_consumers(mproc_start_method m)
{
    mproc_queue *q = new_queue(0, 0);
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_queue_type, q));
    mproc_process *p = mtest_start(m, t_put_and_exit, a);
    mproc_args_free(a);
    mtest_join(p, 0);
    void *d;
    size_t n;
    CHECK_OK(mproc_queue_get(q, &d, &n, 0));
    CHECK_EQ(n, 100000);
    free(d);
    mproc_queue_close(q);
}
FOR_METHODS(producer_exit_does_not_wait_for_consumers)

MTEST(test_queue_import_rejects_other_objects)
{
    mproc_lock *l;
    CHECK_OK(mproc_lock_new(&l));
    mproc_buf b = {0};
    int fds[4];
    size_t nfds = 0;
    CHECK_OK(mproc_lock_type.export_obj(l, &b, fds, &nfds, 4));
    void *obj = NULL;
    CHECK_EQ(mproc_queue_type.import_obj(b.data, b.len, fds, nfds, &obj), MPROC_EPROTO);
    CHECK_EQ(mproc_queue_type.import_obj(b.data, 3, fds, nfds, &obj), MPROC_EPROTO);
    for (size_t i = 0; i < nfds; i++)
        close(fds[i]);
    free(b.data);
    mproc_lock_free(l);
}

/* ------------------------------------------------------ threads, one handle */

typedef struct tput {
    mproc_queue *q;
    uint64_t base;
    int n, rc;
} tput;

static void *thread_put(void *p)
{
    tput *t = p;
    uint8_t buf[200];
    for (int i = 0; i < t->n && !t->rc; i++) {
        uint64_t id = t->base + (uint64_t)i;
        size_t len = msg_len(id, 0);
        fill_msg(buf, id, len);
        t->rc = mproc_queue_put(t->q, buf, len, 30.0);
    }
    return NULL;
}

typedef struct tget {
    mproc_queue *q;
    _Atomic int *left;
    uint8_t *seen;
    int rc;
} tget;

static void *thread_get(void *p)
{
    tget *t = p;
    uint8_t buf[200];
    while (atomic_fetch_sub(t->left, 1) > 0) {
        size_t n;
        uint64_t id;
        t->rc = mproc_queue_get_into(t->q, buf, sizeof buf, &n, 30.0);
        if (t->rc || !check_msg(buf, n, 0, &id) || (id & 0xffffffff) >= 50000 ||
            __atomic_fetch_add(&t->seen[(id >> 32) * 50000 + (id & 0xffffffff)], 1, __ATOMIC_RELAXED)) {
            t->rc = t->rc ? t->rc : -1;
            return NULL;
        }
    }
    return NULL;
}

MTEST(test_queue_handle_is_shared_by_threads)
{
    mproc_queue *q = new_queue(16384, 0);
    enum { N = 50000 };
    static uint8_t seen[2 * N];
    _Atomic int left = 2 * N;
    tput pt[2] = {{q, 0, N, 0}, {q, (uint64_t)1 << 32, N, 0}};
    tget gt[2] = {{q, &left, seen, 0}, {q, &left, seen, 0}};
    pthread_t t[4];
    for (int i = 0; i < 2; i++) {
        CHECK(pthread_create(&t[i], NULL, thread_put, &pt[i]) == 0);
        CHECK(pthread_create(&t[2 + i], NULL, thread_get, &gt[i]) == 0);
    }
    for (int i = 0; i < 4; i++)
        CHECK(pthread_join(t[i], NULL) == 0);
    for (int i = 0; i < 2; i++) {
        CHECK_OK(pt[i].rc);
        CHECK_OK(gt[i].rc);
    }
    for (int i = 0; i < 2 * N; i++)
        CHECK_EQ(seen[i], 1);
    CHECK(mproc_queue_empty(q));
    mproc_queue_close(q);
}

/* ---------------------------------------- N producers x M consumers, 1,000,000 */

enum { NP = 2, NC = 2, TOTAL = 1000000, PER = TOTAL / NP };

typedef struct nm_state {
    _Atomic uint64_t got[NC], bad[NC], disorder[NC];
    _Atomic uint64_t idsum[NC];
    _Atomic uint8_t seen[TOTAL];
} nm_state;

/* The arguments every stress worker gets: (queue, shared state segment,
 * slot number). Returns the shared state, NULL if any argument is missing. */
static void *worker_args(mproc_args *a, mproc_queue **q, int64_t *slot)
{
    mproc_shm *s = mproc_args_object(a, 1, &mproc_shm_type);
    *q = mproc_args_object(a, 0, &mproc_queue_type);
    *slot = -1;
    mproc_args_get_int(a, 2, slot);
    return *q && s && *slot >= 0 ? mproc_shm_buf(s) : NULL;
}

static int t_nm_producer(mproc_args *a)
{
    mproc_queue *q;
    int64_t p;
    if (!worker_args(a, &q, &p))
        return 2;
    uint8_t buf[200];
    for (uint64_t i = 0; i < PER; i++) {
        uint64_t id = ((uint64_t)p << 32) | i;
        size_t len = msg_len(id, 0);
        fill_msg(buf, id, len);
        if (mproc_queue_put(q, buf, len, 60.0))
            return 3;
    }
    return 0;
}

static int t_nm_consumer(mproc_args *a)
{
    mproc_queue *q;
    int64_t c;
    nm_state *st = worker_args(a, &q, &c);
    if (!st)
        return 2;
    int64_t last[NP];
    for (int i = 0; i < NP; i++)
        last[i] = -1;
    uint8_t buf[200];
    for (;;) {
        size_t n;
        uint64_t id;
        int rc = mproc_queue_get_into(q, buf, sizeof buf, &n, 60.0);
        if (rc == MPROC_ECLOSED)
            return 0;
        if (rc)
            return 3;
        if (!check_msg(buf, n, 0, &id) || (id >> 32) >= NP || (id & 0xffffffff) >= PER) {
            st->bad[c]++;
            continue;
        }
        uint64_t p = id >> 32, i = id & 0xffffffff;
        if ((int64_t)i <= last[p]) /* one producer's messages arrive in its order */
            st->disorder[c]++;
        last[p] = (int64_t)i;
        st->seen[p * PER + i]++;
        st->idsum[c] += id;
        st->got[c]++;
    }
}

MTEST(test_queue_2_producers_x_2_consumers_exchange_a_million_messages)
{
    mproc_queue *q = new_queue(65536, 0);
    mproc_shm *s;
    CHECK_OK(mproc_shm_new(&s, sizeof(nm_state)));
    nm_state *st = mproc_shm_buf(s);
    mproc_process *prod[NP], *cons[NC];
    for (int i = 0; i < NC + NP; i++) {
        mproc_args *a = mproc_args_new();
        CHECK_OK(mproc_args_add_object(a, &mproc_queue_type, q));
        CHECK_OK(mproc_args_add_object(a, &mproc_shm_type, s));
        CHECK_OK(mproc_args_add_int(a, i < NC ? i : i - NC));
        if (i < NC)
            cons[i] = mtest_start(MPROC_START_FORK, t_nm_consumer, a);
        else
            prod[i - NC] = mtest_start(MPROC_START_FORK, t_nm_producer, a);
        mproc_args_free(a);
    }
    for (int i = 0; i < NP; i++)
        mtest_join(prod[i], 0);
    mproc_queue_shutdown(q); /* consumers drain the rest, then see ECLOSED */
    for (int i = 0; i < NC; i++)
        mtest_join(cons[i], 0);
    uint64_t got = 0, sum = 0, want_sum = 0;
    for (int c = 0; c < NC; c++) {
        CHECK_EQ(st->bad[c], 0);
        CHECK_EQ(st->disorder[c], 0);
        got += st->got[c];
        sum += st->idsum[c];
    }
    for (uint64_t p = 0; p < NP; p++)
        for (uint64_t i = 0; i < PER; i++)
            want_sum += (p << 32) | i;
    CHECK_EQ(got, TOTAL);
    CHECK(sum == want_sum);
    for (int i = 0; i < TOTAL; i++)
        CHECK_EQ(st->seen[i], 1); /* nothing lost, nothing duplicated */
    CHECK(mproc_queue_empty(q));
    mproc_shm_close(s);
    mproc_queue_close(q);
}

/* ------------------------------------------------------------ SIGKILL */

/* A producer killed in the middle of a message larger than the ring, with
 * nobody reading: the next put aborts the partial message, and a get drops it. */
static int t_put_big(mproc_args *a)
{
    mproc_queue *q = mproc_args_object(a, 0, &mproc_queue_type);
    size_t len = 64 << 10;
    uint8_t *buf = calloc(1, len);
    if (!q || !buf)
        return 2;
    mproc_queue_put(q, buf, len, 60.0);
    free(buf);
    return 3; /* never returns: it is killed while the ring is full */
}

static mproc_process *start_big_producer(mproc_start_method m, mproc_queue *q)
{
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_queue_type, q));
    mproc_process *p = mtest_start(m, t_put_big, a);
    mproc_args_free(a);
    return p;
}

static void producer_killed_mid_message(mproc_start_method m)
{
    mproc_queue *q = new_queue(4096, 0);
    mproc_process *p = start_big_producer(m, q);
    mtest_wait_pid_parked(mproc_process_pid(p)); /* ring full, message half sent */
    CHECK_OK(mproc_process_kill(p));
    mtest_join(p, -SIGKILL);
    CHECK(mproc_queue_empty(q));
    /* Takes the dead producer's lock and aborts its message; the ring is still
     * full of its chunks, so this put waits for room and times out. */
    CHECK_EQ(mproc_queue_put(q, "x", 1, 0.05), MPROC_ETIMEDOUT);
    void *d;
    size_t n;
    CHECK_EQ(mproc_queue_get(q, &d, &n, 0.05), MPROC_ETIMEDOUT); /* drains, drops */
    put_str(q, "after");
    CHECK_EQ(mproc_queue_qsize(q), 1);
    get_expect(q, "after");
    CHECK(mproc_queue_empty(q));
    mproc_queue_close(q);
}
FOR_METHODS(producer_killed_mid_message)

/* The consumer is already inside a get of the big message when its producer
 * dies: it notices on its own (no other producer comes), drops the partial
 * message and goes on waiting for the next one. */
typedef struct killer {
    mproc_process *victim;
    mproc_queue *q;
    pid_t tid;
} killer;

static void *killer_main(void *p)
{
    killer *k = p;
    char path[80];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)k->tid);
    mtest_wait_parked(path); /* the getter drained what there was and waits mid-message */
    CHECK(kill(mproc_process_pid(k->victim), SIGKILL) == 0);
    mtest_join(k->victim, -SIGKILL);
    return NULL;
}

static void consumer_waiting_when_producer_dies(mproc_start_method m)
{
    mproc_queue *q = new_queue(4096, 0);
    mproc_process *p = start_big_producer(m, q);
    mtest_wait_pid_parked(mproc_process_pid(p));
    CHECK(kill(mproc_process_pid(p), SIGSTOP) == 0); /* it stays mid-message */
    killer k = {p, q, (pid_t)syscall(SYS_gettid)};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, killer_main, &k) == 0);
    void *d;
    size_t n;
    double t0 = mproc_monotonic();
    /* Reads the first chunks, waits mid-message, finds the producer dead,
     * drops the partial message, then waits for a new one until the timeout. */
    CHECK_EQ(mproc_queue_get(q, &d, &n, 0.3), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 < 30.0);
    CHECK(pthread_join(t, NULL) == 0);
    put_str(q, "after");
    get_expect(q, "after");
    CHECK(mproc_queue_empty(q));
    mproc_queue_close(q);
}
FOR_METHODS(consumer_waiting_when_producer_dies)

/* A consumer killed while it waits in get (holding the consumers' lock). */
static int t_get_forever(mproc_args *a)
{
    mproc_queue *q = mproc_args_object(a, 0, &mproc_queue_type);
    void *d;
    size_t n;
    mproc_queue_get(q, &d, &n, MPROC_FOREVER);
    return 3;
}

static void consumer_killed_while_waiting(mproc_start_method m)
{
    mproc_queue *q = new_queue(0, 0);
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_queue_type, q));
    mproc_process *p = mtest_start(m, t_get_forever, a);
    mproc_args_free(a);
    mtest_wait_pid_parked(mproc_process_pid(p));
    CHECK_OK(mproc_process_kill(p));
    mtest_join(p, -SIGKILL);
    put_str(q, "x"); /* nothing was lost: the dead consumer had taken nothing */
    get_expect(q, "x");
    void *d;
    size_t n;
    CHECK_EQ(mproc_queue_get(q, &d, &n, 0.01), MPROC_ETIMEDOUT);
    mproc_queue_close(q);
}
FOR_METHODS(consumer_killed_while_waiting)

/* 50 rounds: SIGKILL a random producer or consumer mid-stream (ring of 4 KiB,
 * a mix of small, medium and larger-than-ring messages), start a replacement,
 * and at the end check: no torn message, no duplicate, every message whose put
 * returned delivered except at most one per killed consumer, and the queue
 * still works. */
enum { KSLOTS = 64, KSEQ = 1 << 16, KBIG = 9000 };

typedef struct kill_state {
    _Atomic uint64_t put_ok[KSLOTS]; /* messages of slot whose put returned */
    _Atomic uint64_t got[KSLOTS];    /* messages a consumer took (per consumer slot) */
    _Atomic uint64_t torn, dup;
    _Atomic uint32_t stop; /* consumers: ECLOSED is expected now */
    _Atomic uint8_t seen[KSLOTS][KSEQ];
} kill_state;

static int t_kill_producer(mproc_args *a)
{
    mproc_queue *q;
    int64_t slot;
    kill_state *st = worker_args(a, &q, &slot);
    if (!st)
        return 2;
    uint8_t *buf = malloc(KBIG + 1000);
    for (uint64_t i = 0; i < KSEQ; i++) {
        uint64_t id = ((uint64_t)slot << 32) | i;
        size_t len = msg_len(id, KBIG);
        fill_msg(buf, id, len);
        int rc = mproc_queue_put(q, buf, len, 60.0);
        if (rc) {
            fprintf(stderr, "producer: %s %s\n", mproc_errname(rc), mproc_errmsg());
            free(buf);
            return 3;
        }
        st->put_ok[slot] = i + 1;
    }
    free(buf);
    for (;;) /* out of sequence numbers: wait to be killed like the others */
        pause();
}

static int t_kill_consumer(mproc_args *a)
{
    mproc_queue *q;
    int64_t slot;
    kill_state *st = worker_args(a, &q, &slot);
    if (!st)
        return 2;
    uint8_t *buf = malloc(KBIG + 1000);
    for (;;) {
        size_t n;
        uint64_t id;
        double t0 = mproc_monotonic();
        int rc = mproc_queue_get_into(q, buf, KBIG + 1000, &n, 60.0);
        if (rc == MPROC_ECLOSED && st->stop)
            break;
        if (rc) {
            fprintf(stderr, "consumer %d slot %d after %.3f s: %s %s\n", (int)getpid(), (int)slot,
                    mproc_monotonic() - t0, mproc_errname(rc), mproc_errmsg());
            free(buf);
            return 3;
        }
        if (!check_msg(buf, n, KBIG, &id) || (id >> 32) >= KSLOTS || (id & 0xffffffff) >= KSEQ) {
            st->torn++;
            continue;
        }
        if (atomic_fetch_add(&st->seen[id >> 32][id & 0xffffffff], 1))
            st->dup++;
        st->got[slot]++;
    }
    free(buf);
    return 0;
}

typedef struct kworker {
    mproc_process *p;
    int slot;
    bool producer;
} kworker;

static void kstart(kworker *w, bool producer, int slot, mproc_queue *q, mproc_shm *s)
{
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_queue_type, q));
    CHECK_OK(mproc_args_add_object(a, &mproc_shm_type, s));
    CHECK_OK(mproc_args_add_int(a, slot));
    w->p = mtest_start(MPROC_START_FORK, producer ? t_kill_producer : t_kill_consumer, a);
    w->slot = slot;
    w->producer = producer;
    mproc_args_free(a);
}

MTEST(test_queue_survives_50_random_sigkills)
{
    mproc_queue *q = new_queue(4096, 0);
    mproc_shm *s;
    CHECK_OK(mproc_shm_new(&s, sizeof(kill_state)));
    kill_state *st = mproc_shm_buf(s);
    unsigned seed = (unsigned)getpid();
    fprintf(stderr, "kill test seed %u\n", seed);
    srand(seed);
    kworker w[4];
    int next_pslot = 0, next_cslot = 0, consumer_kills = 0;
    for (int i = 0; i < 4; i++)
        kstart(&w[i], i < 2, i < 2 ? next_pslot++ : next_cslot++, q, s);
    for (int round = 0; round < 50; round++) {
        int v = rand() % 4;
        /* mid-stream: wait until the victim has made some progress */
        uint64_t target = 1 + (uint64_t)(rand() % 200);
        _Atomic uint64_t *progress = w[v].producer ? &st->put_ok[w[v].slot] : &st->got[w[v].slot];
        mproc_deadline d = mproc_deadline_after(60.0);
        while (*progress < target) {
            CHECK(!mproc_deadline_expired(d));
            sched_yield();
        }
        CHECK_OK(mproc_process_kill(w[v].p));
        mtest_join(w[v].p, -SIGKILL);
        if (w[v].producer) {
            CHECK(next_pslot < KSLOTS);
            kstart(&w[v], true, next_pslot++, q, s);
        } else {
            consumer_kills++;
            CHECK(next_cslot < KSLOTS);
            kstart(&w[v], false, next_cslot++, q, s);
        }
    }
    /* The producers end killed too: their last message may be half sent. */
    for (int i = 0; i < 4; i++)
        if (w[i].producer) {
            CHECK_OK(mproc_process_kill(w[i].p));
            mtest_join(w[i].p, -SIGKILL);
        }
    st->stop = 1;
    mproc_queue_shutdown(q);
    for (int i = 0; i < 4; i++)
        if (!w[i].producer)
            mtest_join(w[i].p, 0);
    CHECK_EQ(st->torn, 0);
    CHECK_EQ(st->dup, 0);
    uint64_t lost = 0, delivered = 0;
    for (int p = 0; p < next_pslot; p++) {
        uint64_t ok = st->put_ok[p];
        for (uint64_t i = 0; i < ok; i++)
            lost += st->seen[p][i] == 0;
        for (uint64_t i = 0; i < KSEQ; i++)
            delivered += st->seen[p][i];
        for (uint64_t i = ok + 1; i < KSEQ; i++)
            CHECK_EQ(st->seen[p][i], 0); /* nothing that was never put */
    }
    fprintf(stderr, "kill test: %llu delivered, %d consumer kills, %llu lost\n",
            (unsigned long long)delivered, consumer_kills, (unsigned long long)lost);
    CHECK(lost <= (uint64_t)consumer_kills);
    CHECK(delivered > 0);
    CHECK(mproc_queue_empty(q));
    mproc_queue_close(q);
    /* a fresh queue works too; the old one was shut down deliberately */
    q = new_queue(4096, 0);
    put_str(q, "still fine");
    get_expect(q, "still fine");
    mproc_queue_close(q);
    mproc_shm_close(s);
}

/* The same queue keeps working after kills (no shutdown involved). */
MTEST(test_queue_works_after_a_killed_consumer_and_producer)
{
    mproc_queue *q = new_queue(4096, 0);
    mproc_shm *s;
    CHECK_OK(mproc_shm_new(&s, sizeof(kill_state)));
    kill_state *st = mproc_shm_buf(s);
    kworker pw, cw;
    kstart(&pw, true, 0, q, s);
    kstart(&cw, false, 0, q, s);
    mproc_deadline d = mproc_deadline_after(60.0);
    while (st->got[0] < 100) {
        CHECK(!mproc_deadline_expired(d));
        sched_yield();
    }
    CHECK_OK(mproc_process_kill(cw.p));
    CHECK_OK(mproc_process_kill(pw.p));
    mtest_join(cw.p, -SIGKILL);
    mtest_join(pw.p, -SIGKILL);
    /* drain whatever whole messages are left, then use the queue again */
    uint8_t *buf = malloc(KBIG + 1000);
    size_t n;
    while (mproc_queue_get_into(q, buf, KBIG + 1000, &n, 0.01) == 0) {
        uint64_t id;
        CHECK(check_msg(buf, n, KBIG, &id));
        CHECK_EQ(st->seen[0][id & 0xffffffff], 0);
    }
    for (uint64_t i = 0; i < 50; i++) {
        size_t len = msg_len(i, KBIG);
        fill_msg(buf, i, len);
        CHECK_OK(mproc_queue_put(q, buf, len < 4000 ? len : 4000, 5.0));
        uint64_t id;
        CHECK_OK(mproc_queue_get_into(q, buf, KBIG + 1000, &n, 5.0));
        CHECK_EQ(n, len < 4000 ? len : 4000);
        memcpy(&id, buf, 8);
        CHECK_EQ(id, i);
    }
    CHECK(mproc_queue_empty(q));
    free(buf);
    mproc_shm_close(s);
    mproc_queue_close(q);
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    static const mtest_case cases[] = {
        MTEST_ENTRY(test_queue_put_get_keeps_order_and_bytes),
        MTEST_ENTRY(test_queue_get_times_out_when_empty),
        MTEST_ENTRY(test_queue_maxsize_blocks_puts),
        MTEST_ENTRY(test_queue_ring_capacity_blocks_puts),
        MTEST_ENTRY(test_queue_options_are_checked),
        MTEST_ENTRY(test_queue_get_into_too_small_keeps_the_message),
        MTEST_ENTRY(test_queue_messages_larger_than_the_ring_arrive_whole_and_in_order),
        MTEST_ENTRY(test_queue_put_of_a_large_message_times_out_and_consumers_drop_it),
        MTEST_ENTRY(test_queue_values_round_trip),
        MTEST_ENTRY(test_queue_value_decode_limits_apply),
        MTEST_ENTRY(test_queue_shutdown_drains_then_closes),
        MTEST_ENTRY(test_queue_shutdown_wakes_a_blocked_put),
        MTEST_ENTRY(test_queue_nowait_is_not_held_up_by_a_blocked_get),
        MTEST_ENTRY(test_joinable_queue_counts_tasks),
        METHOD_ENTRIES(joinable_across),
        METHOD_ENTRIES(queue_across),
        METHOD_ENTRIES(producer_exit_does_not_wait_for_consumers),
        MTEST_ENTRY(test_queue_import_rejects_other_objects),
        MTEST_ENTRY(test_queue_handle_is_shared_by_threads),
        MTEST_ENTRY(test_queue_2_producers_x_2_consumers_exchange_a_million_messages),
        METHOD_ENTRIES(producer_killed_mid_message),
        METHOD_ENTRIES(consumer_waiting_when_producer_dies),
        METHOD_ENTRIES(consumer_killed_while_waiting),
        MTEST_ENTRY(test_queue_survives_50_random_sigkills),
        MTEST_ENTRY(test_queue_works_after_a_killed_consumer_and_producer),
    };
    mtest_warmup = mtest_warmup_tracker_and_forkserver;
    return mtest_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
