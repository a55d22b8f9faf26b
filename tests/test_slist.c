/* test_slist.c — ShareableList: every kind, Python's set/format rules, byte-exact
 * layout and attach both ways with Python, children attaching by name, and
 * hostile segments that must give MPROC_EPROTO rather than a crash. */
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "mtest.h"

extern char **environ;

static char *slname(const char *tag)
{
    static char buf[4][64];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, sizeof buf[0], "mproc-test-%d-sl-%s", (int)getpid(), tag);
    return b;
}

static bool seg_exists(const char *name)
{
    char path[300];
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    return access(path, F_OK) == 0;
}

#define I_INT(v) ((mproc_sl_item){.kind = MPROC_SL_INT, .i = (v)})
#define I_FLOAT(v) ((mproc_sl_item){.kind = MPROC_SL_FLOAT, .f = (v)})
#define I_BOOL(v) ((mproc_sl_item){.kind = MPROC_SL_BOOL, .b = (v)})
#define I_NONE ((mproc_sl_item){.kind = MPROC_SL_NONE})
#define I_STR(lit) ((mproc_sl_item){.kind = MPROC_SL_STR, .s = (lit), .len = sizeof(lit) - 1})
#define I_BYTES(lit) ((mproc_sl_item){.kind = MPROC_SL_BYTES, .s = (lit), .len = sizeof(lit) - 1})
#define I_STR_CAP(lit, c) \
    ((mproc_sl_item){.kind = MPROC_SL_STR, .s = (lit), .len = sizeof(lit) - 1, .capacity = (c)})

/* Item i must read back as `want` (same kind; floats bit for bit). */
static void expect_item(const mproc_shareable_list *l, long i, mproc_sl_item want, int line)
{
    mproc_sl_item v;
    int rc = mproc_shareable_list_get(l, i, &v);
    bool ok = rc == 0 && v.kind == want.kind;
    if (ok) {
        switch (want.kind) {
        case MPROC_SL_INT: ok = v.i == want.i; break;
        case MPROC_SL_FLOAT: ok = memcmp(&v.f, &want.f, sizeof v.f) == 0; break;
        case MPROC_SL_BOOL: ok = v.b == want.b; break;
        case MPROC_SL_NONE: break;
        default: ok = v.len == want.len && memcmp(v.s, want.s, v.len) == 0; break;
        }
    }
    if (!ok) {
        fprintf(stderr, "line %d: item %ld: rc %d (%s), kind %d want %d\n", line, i, rc,
                mproc_errmsg(), (int)v.kind, (int)want.kind);
        _exit(1);
    }
}
#define EXPECT(l, i, want) expect_item((l), (i), (want), __LINE__)

/* Raw views of the layout, read straight from the segment. */
static const unsigned char *raw(const mproc_shareable_list *l)
{
    return mproc_shm_buf(mproc_shareable_list_shm(l));
}

static int64_t raw_i64(const mproc_shareable_list *l, size_t off)
{
    int64_t v;
    memcpy(&v, raw(l) + off, 8);
    return v;
}

static size_t raw_fmts(const mproc_shareable_list *l)
{
    int64_t n = raw_i64(l, 0);
    return (size_t)(8 * (n + 2) + raw_i64(l, 8 * (size_t)(n + 1)));
}

static void expect_fmt(const mproc_shareable_list *l, size_t i, const char *fmt, int code, int line)
{
    char want[8] = {0};
    memcpy(want, fmt, strlen(fmt));
    size_t fmts = raw_fmts(l);
    size_t n = mproc_shareable_list_len(l);
    int got_code = (signed char)raw(l)[fmts + 8 * n + i];
    if (memcmp(raw(l) + fmts + 8 * i, want, 8) != 0 || got_code != code) {
        fprintf(stderr, "line %d: item %zu: format '%.8s' code %d, want '%s' code %d\n", line, i,
                (const char *)raw(l) + fmts + 8 * i, got_code, fmt, code);
        _exit(1);
    }
}
#define EXPECT_FMT(l, i, fmt, code) expect_fmt((l), (i), (fmt), (code), __LINE__)

static void drop(mproc_shareable_list *l)
{
    CHECK_OK(mproc_shm_unlink(mproc_shareable_list_shm(l)));
    mproc_shareable_list_close(l);
}

/* ------------------------------------------------------------ basics */

MTEST(test_every_kind_round_trips)
{
    const mproc_sl_item items[] = {
        I_INT(42),        I_INT(INT64_MIN), I_INT(INT64_MAX), I_FLOAT(-2.5),
        I_FLOAT(INFINITY), I_BOOL(true),    I_BOOL(false),    I_NONE,
        I_STR("hello"),   I_STR(""),        I_STR("h\xc3\xa9llo w\xc3\xb6rld"),
        I_BYTES("\0a\0b"), I_BYTES("12345678"),
    };
    size_t n = sizeof items / sizeof items[0];
    mproc_shareable_list *l, *m;
    CHECK_OK(mproc_shareable_list_new(&l, slname("kinds"), items, n));
    CHECK_EQ(mproc_shareable_list_len(l), n);
    CHECK(strcmp(mproc_shm_name(mproc_shareable_list_shm(l)), slname("kinds")) == 0);
    CHECK_OK(mproc_shareable_list_open(&m, slname("kinds")));
    CHECK_EQ(mproc_shareable_list_len(m), n);
    for (size_t i = 0; i < n; i++) {
        EXPECT(l, (long)i, items[i]);
        EXPECT(m, (long)i, items[i]); /* a second mapping reads the same */
    }
    mproc_sl_item v;
    CHECK_OK(mproc_shareable_list_get(m, 11, &v));
    CHECK_EQ(v.len, 4); /* a leading NUL is data */
    CHECK_EQ(v.capacity, 8);
    /* The layout, as CPython writes it. */
    CHECK_EQ(raw_i64(l, 0), (int64_t)n);
    CHECK_EQ(raw_i64(l, 8), 0);
    CHECK_EQ(raw_i64(l, 16), 8);
    CHECK_EQ(raw_i64(l, 8 * (n + 1)), 8 * 8 + 8 + 8 + 16 + 8 + 16);
    EXPECT_FMT(l, 0, "q", 0);
    EXPECT_FMT(l, 3, "d", 0);
    EXPECT_FMT(l, 5, "xxxxxxx?", 0);
    EXPECT_FMT(l, 7, "xxxxxx?x", 3);
    EXPECT_FMT(l, 8, "8s", 1);
    EXPECT_FMT(l, 10, "16s", 1);
    EXPECT_FMT(l, 12, "16s", 2);
    CHECK_EQ(raw(l)[8 * (n + 2) + 5 * 8 + 7], 1); /* bool in the slot's last byte */
    CHECK_EQ(mproc_shm_size(mproc_shareable_list_shm(l)), 8 + 8 * (n + 1) + 120 + 9 * n);
    mproc_shareable_list_close(m); /* closing an attachment never unlinks */
    CHECK(seg_exists(slname("kinds")));
    drop(l);
    CHECK(!seg_exists(slname("kinds")));
    mproc_shareable_list_close(NULL);
}

MTEST(test_null_name_picks_a_fresh_one)
{
    mproc_shareable_list *l;
    mproc_sl_item one = I_INT(1);
    CHECK_OK(mproc_shareable_list_new(&l, NULL, &one, 1));
    CHECK(strncmp(mproc_shm_name(mproc_shareable_list_shm(l)), "mproc_", 6) == 0);
    EXPECT(l, 0, I_INT(1));
    drop(l);
}

MTEST(test_negative_indices_and_out_of_range)
{
    const mproc_sl_item items[] = {I_INT(10), I_INT(20), I_INT(30)};
    mproc_shareable_list *l;
    mproc_sl_item v;
    CHECK_OK(mproc_shareable_list_new(&l, slname("idx"), items, 3));
    EXPECT(l, -1, I_INT(30));
    EXPECT(l, -3, I_INT(10));
    const long bad[] = {3, 4, -4, LONG_MAX, LONG_MIN, LONG_MIN + 1};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        CHECK_EQ(mproc_shareable_list_get(l, bad[k], &v), MPROC_ERANGE);
        CHECK_EQ(mproc_shareable_list_set(l, bad[k], &items[0]), MPROC_ERANGE);
    }
    CHECK(strstr(mproc_errmsg(), "out of range") != NULL);
    CHECK_OK(mproc_shareable_list_set(l, -2, &I_INT(-20)));
    EXPECT(l, 1, I_INT(-20));
    drop(l);
}

/* Python's __setitem__: fixed kinds write their format; str/bytes take the
 * slot's whole room as "%ds"; the slot's room never changes. */
MTEST(test_set_changes_kind_and_keeps_slot_room)
{
    const mproc_sl_item items[] = {I_INT(1), I_STR("0123456789"), I_NONE};
    mproc_shareable_list *l;
    CHECK_OK(mproc_shareable_list_new(&l, slname("kind"), items, 3));
    EXPECT_FMT(l, 1, "16s", 1);
    CHECK_OK(mproc_shareable_list_set(l, 0, &I_STR("abc")));
    EXPECT_FMT(l, 0, "8s", 1);
    EXPECT(l, 0, I_STR("abc"));
    CHECK_OK(mproc_shareable_list_set(l, 0, &I_BYTES("abcdefgh"))); /* exactly 8 */
    EXPECT_FMT(l, 0, "8s", 2);
    EXPECT(l, 0, I_BYTES("abcdefgh"));
    CHECK_OK(mproc_shareable_list_set(l, 1, &I_FLOAT(0.5)));
    EXPECT_FMT(l, 1, "d", 0);
    EXPECT(l, 1, I_FLOAT(0.5));
    mproc_sl_item v;
    CHECK_OK(mproc_shareable_list_get(l, 1, &v));
    CHECK_EQ(v.capacity, 16); /* a float in a 16-byte slot keeps its room */
    CHECK_OK(mproc_shareable_list_set(l, 1, &I_STR("fifteen bytes!!")));
    EXPECT_FMT(l, 1, "16s", 1);
    EXPECT(l, 1, I_STR("fifteen bytes!!"));
    CHECK_OK(mproc_shareable_list_set(l, 1, &I_BOOL(true)));
    EXPECT_FMT(l, 1, "xxxxxxx?", 0);
    EXPECT(l, 1, I_BOOL(true));
    CHECK_OK(mproc_shareable_list_set(l, 2, &I_INT(-5)));
    EXPECT_FMT(l, 2, "q", 0);
    CHECK_OK(mproc_shareable_list_set(l, 2, &I_NONE));
    EXPECT_FMT(l, 2, "xxxxxx?x", 3);
    EXPECT(l, 2, I_NONE);
    CHECK_OK(mproc_shareable_list_set(l, 0, &I_BOOL(false)));
    EXPECT(l, 0, I_BOOL(false));
    /* Fixed kinds zero their whole 8 bytes, as struct.pack_into does. */
    for (int k = 0; k < 8; k++)
        CHECK_EQ(raw(l)[8 * 5 + k], 0);
    drop(l);
}

MTEST(test_too_long_str_is_refused_and_item_unchanged)
{
    const mproc_sl_item items[] = {I_STR("short"), I_INT(7)};
    mproc_shareable_list *l;
    CHECK_OK(mproc_shareable_list_new(&l, slname("long"), items, 2));
    CHECK_EQ(mproc_shareable_list_set(l, 0, &I_STR("123456789")), MPROC_EMSGSIZE);
    CHECK(strstr(mproc_errmsg(), "do not fit") != NULL);
    EXPECT(l, 0, I_STR("short"));
    EXPECT_FMT(l, 0, "8s", 1);
    CHECK_EQ(mproc_shareable_list_set(l, 1, &I_BYTES("123456789")), MPROC_EMSGSIZE);
    EXPECT(l, 1, I_INT(7));
    EXPECT_FMT(l, 1, "q", 0);
    drop(l);
}

MTEST(test_capacity_option_and_default_room)
{
    const mproc_sl_item items[] = {
        I_STR(""),            /* 8 */
        I_STR("1234567"),     /* 8 */
        I_STR("12345678"),    /* 16: a multiple of 8 gets 8 more */
        I_BYTES("123456789"), /* 16 */
        I_STR_CAP("ab", 100), /* 104: at least 100, kept a multiple of 8 */
        I_STR_CAP("abcdef", 3), /* 8: never less than Python's choice */
        {.kind = MPROC_SL_NONE, .capacity = 40}, /* a placeholder for text to come */
    };
    const size_t room[] = {8, 8, 16, 16, 104, 8, 40};
    size_t n = sizeof items / sizeof items[0];
    mproc_shareable_list *l;
    CHECK_OK(mproc_shareable_list_new(&l, slname("cap"), items, n));
    for (size_t i = 0; i < n; i++) {
        mproc_sl_item v;
        CHECK_OK(mproc_shareable_list_get(l, (long)i, &v));
        CHECK_EQ(v.capacity, room[i]);
        EXPECT(l, (long)i, items[i]);
    }
    EXPECT_FMT(l, 4, "104s", 1);
    char text[104];
    memset(text, 'z', sizeof text);
    mproc_sl_item big = {.kind = MPROC_SL_STR, .s = text, .len = 104};
    CHECK_OK(mproc_shareable_list_set(l, 4, &big));
    EXPECT(l, 4, big);
    big.len = 40;
    CHECK_OK(mproc_shareable_list_set(l, 6, &big));
    EXPECT_FMT(l, 6, "40s", 1);
    EXPECT(l, 6, big);
    big.len = 41;
    CHECK_EQ(mproc_shareable_list_set(l, 6, &big), MPROC_EMSGSIZE);
    drop(l);
    /* "%ds" has 7 digits at most, as Python's assert on the format length. */
    mproc_shareable_list *x;
    mproc_sl_item huge = I_STR_CAP("a", 10000000);
    CHECK_EQ(mproc_shareable_list_new(&x, slname("huge"), &huge, 1), MPROC_EINVAL);
    CHECK(!seg_exists(slname("huge")));
}

MTEST(test_index_and_count)
{
    const mproc_sl_item items[] = {
        I_INT(1), I_FLOAT(2.0), I_STR("a"), I_BYTES("a"), I_BOOL(true), I_NONE,
        I_INT(1), I_FLOAT(NAN), I_INT((1LL << 53) + 1), I_STR(""),
    };
    size_t n = sizeof items / sizeof items[0], at = 99;
    mproc_shareable_list *l;
    CHECK_OK(mproc_shareable_list_new(&l, slname("find"), items, n));
#define AT(item, want)                                               \
    do {                                                             \
        CHECK_OK(mproc_shareable_list_index(l, &(item), &at));       \
        CHECK_EQ(at, want);                                          \
    } while (0)
    AT(I_INT(2), 1);   /* 2 == 2.0 */
    AT(I_FLOAT(1.0), 0);
    AT(I_STR("a"), 2); /* "a" != b"a" */
    AT(I_BYTES("a"), 3);
    AT(I_BOOL(true), 0); /* True == 1, as in Python */
    AT(I_NONE, 5);
    AT(I_STR(""), 9);
    AT(I_INT((1LL << 53) + 1), 8);
    CHECK_EQ(mproc_shareable_list_index(l, &I_FLOAT(NAN), &at), MPROC_ENOENT); /* nan != nan */
    CHECK_EQ(mproc_shareable_list_index(l, &I_FLOAT(9007199254740992.0), &at), MPROC_ENOENT);
    CHECK_EQ(mproc_shareable_list_index(l, &I_STR("zz"), &at), MPROC_ENOENT);
    CHECK_EQ(mproc_shareable_list_index(l, &I_STR("a\0"), &at), MPROC_ENOENT);
    CHECK_EQ(mproc_shareable_list_count(l, &I_INT(1)), 3); /* 1, True, 1 */
    CHECK_EQ(mproc_shareable_list_count(l, &I_FLOAT(1.0)), 3);
    CHECK_EQ(mproc_shareable_list_count(l, &I_BYTES("a")), 1);
    CHECK_EQ(mproc_shareable_list_count(l, &I_BOOL(false)), 0);
    CHECK_EQ(mproc_shareable_list_count(l, &(mproc_sl_item){.kind = 99}), 0);
    CHECK_EQ(mproc_shareable_list_index(l, &(mproc_sl_item){.kind = 0}, &at), MPROC_EINVAL);
#undef AT
    drop(l);
}

MTEST(test_empty_list)
{
    mproc_shareable_list *l, *m;
    mproc_sl_item v;
    size_t at;
    CHECK_OK(mproc_shareable_list_new(&l, slname("empty"), NULL, 0));
    CHECK_EQ(mproc_shareable_list_len(l), 0);
    CHECK_EQ(mproc_shm_size(mproc_shareable_list_shm(l)), 16); /* as ShareableList([]) */
    CHECK_OK(mproc_shareable_list_open(&m, slname("empty")));
    CHECK_EQ(mproc_shareable_list_len(m), 0);
    CHECK_EQ(mproc_shareable_list_get(m, 0, &v), MPROC_ERANGE);
    CHECK_EQ(mproc_shareable_list_get(m, -1, &v), MPROC_ERANGE);
    CHECK_EQ(mproc_shareable_list_set(m, 0, &I_NONE), MPROC_ERANGE);
    CHECK_EQ(mproc_shareable_list_index(m, &I_NONE, &at), MPROC_ENOENT);
    CHECK_EQ(mproc_shareable_list_count(m, &I_NONE), 0);
    mproc_shareable_list_close(m);
    drop(l);
}

MTEST(test_trailing_nuls_are_dropped)
{
    const mproc_sl_item items[] = {I_BYTES("ab\0\0"), I_STR("x\0"), I_BYTES("\0\0\0"),
                                   I_STR("\0lead")};
    mproc_shareable_list *l;
    CHECK_OK(mproc_shareable_list_new(&l, slname("nul"), items, 4));
    EXPECT(l, 0, I_BYTES("ab"));
    EXPECT(l, 1, I_STR("x"));
    EXPECT(l, 2, I_BYTES(""));
    EXPECT(l, 3, I_STR("\0lead"));
    CHECK_OK(mproc_shareable_list_set(l, 3, &I_BYTES("a\0b\0")));
    EXPECT(l, 3, I_BYTES("a\0b"));
    /* The slot is zero-padded, so a shorter value leaves no tail of the old one. */
    CHECK_OK(mproc_shareable_list_set(l, 0, &I_STR("longer!")));
    CHECK_OK(mproc_shareable_list_set(l, 0, &I_STR("s")));
    EXPECT(l, 0, I_STR("s"));
    drop(l);
}

MTEST(test_bad_arguments_are_refused)
{
    mproc_shareable_list *l;
    mproc_sl_item v;
    CHECK_EQ(mproc_shareable_list_new(NULL, slname("bad"), NULL, 0), MPROC_EINVAL);
    CHECK_EQ(mproc_shareable_list_new(&l, slname("bad"), NULL, 1), MPROC_EINVAL);
    mproc_sl_item bad_kind = {.kind = 0};
    CHECK_EQ(mproc_shareable_list_new(&l, slname("bad"), &bad_kind, 1), MPROC_EINVAL);
    mproc_sl_item null_text = {.kind = MPROC_SL_BYTES, .s = NULL, .len = 3};
    CHECK_EQ(mproc_shareable_list_new(&l, slname("bad"), &null_text, 1), MPROC_EINVAL);
    mproc_sl_item empty_null = {.kind = MPROC_SL_BYTES, .s = NULL, .len = 0};
    CHECK_EQ(mproc_shareable_list_new(&l, slname("bad"), &I_STR("\xc3("), 1), MPROC_EINVAL);
    CHECK(strstr(mproc_errmsg(), "UTF-8") != NULL);
    CHECK_EQ(mproc_shareable_list_new(&l, slname("bad"), &I_STR("\xed\xa0\x80"), 1),
             MPROC_EINVAL); /* a surrogate, which Python's decoder refuses */
    CHECK_EQ(mproc_shareable_list_new(&l, "a/b", &I_NONE, 1), MPROC_EINVAL);
    CHECK(!seg_exists(slname("bad")));
    CHECK_EQ(mproc_shareable_list_open(&l, slname("missing")), MPROC_ENOENT);
    CHECK_EQ(mproc_shareable_list_open(&l, NULL), MPROC_EINVAL);
    CHECK_OK(mproc_shareable_list_new(&l, slname("bad"), &empty_null, 1));
    EXPECT(l, 0, I_BYTES(""));
    mproc_shareable_list *dup;
    CHECK_EQ(mproc_shareable_list_new(&dup, slname("bad"), &I_NONE, 1), MPROC_EEXIST);
    CHECK_EQ(mproc_shareable_list_set(l, 0, &bad_kind), MPROC_EINVAL);
    CHECK_EQ(mproc_shareable_list_set(l, 0, &null_text), MPROC_EINVAL);
    CHECK_EQ(mproc_shareable_list_set(l, 0, &I_STR("\xff")), MPROC_EINVAL);
    CHECK_EQ(mproc_shareable_list_set(l, 0, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_shareable_list_get(l, 0, NULL), MPROC_EINVAL);
    CHECK_OK(mproc_shareable_list_set(l, 0, &I_STR("\xf0\x9f\x99\x82"))); /* 4-byte UTF-8 */
    CHECK_OK(mproc_shareable_list_get(l, 0, &v));
    CHECK_EQ(v.len, 4);
    drop(l);
}

/* ------------------------------------------------------- other programs */

/* A child that opens the list by name, checks it and writes back. */
static int t_attach(mproc_args *a)
{
    mproc_shareable_list *l;
    if (mproc_shareable_list_open(&l, mproc_args_str(a, 0)) != 0)
        return 10;
    mproc_sl_item v;
    int rc = 0;
    if (mproc_shareable_list_len(l) != 3 || mproc_shareable_list_get(l, 0, &v) ||
        v.kind != MPROC_SL_INT || v.i != 41 || mproc_shareable_list_get(l, 1, &v) ||
        v.kind != MPROC_SL_STR || v.len != 6 || memcmp(v.s, "parent", 6) != 0)
        rc = 11;
    else if (mproc_shareable_list_set(l, 0, &I_INT(42)) ||
             mproc_shareable_list_set(l, 1, &I_STR("child")) ||
             mproc_shareable_list_set(l, 2, &I_FLOAT(1.5)))
        rc = 12;
    mproc_shareable_list_close(l);
    return rc;
}

static void attach_by_name(mproc_start_method m)
{
    const mproc_sl_item items[] = {I_INT(41), I_STR("parent"), I_NONE};
    mproc_shareable_list *l;
    CHECK_OK(mproc_shareable_list_new(&l, slname("child"), items, 3));
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_str(a, slname("child")));
    mproc_process_opts o = {.ctx = mproc_get_context(m)};
    mproc_process *c;
    CHECK_OK(mproc_process_new(&c, t_attach, a, &o));
    mproc_args_free(a);
    CHECK_OK(mproc_process_start(c));
    CHECK_OK(mproc_process_join(c, 30.0));
    CHECK_EQ(mproc_process_exitcode(c), 0);
    CHECK_OK(mproc_process_close(c));
    EXPECT(l, 0, I_INT(42));
    EXPECT(l, 1, I_STR("child"));
    EXPECT(l, 2, I_FLOAT(1.5));
    CHECK(seg_exists(slname("child"))); /* the child's attach did not unlink it */
    drop(l);
}

FOR_METHODS(attach_by_name)

/* ---------------------------------------------------------------- Python */

static bool have_python(void)
{
    const char *path = getenv("PATH");
    char buf[4096];
    while (path && *path) {
        size_t len = strcspn(path, ":");
        snprintf(buf, sizeof buf, "%.*s/python3", (int)len, path);
        if (len && access(buf, X_OK) == 0)
            return true;
        path += len + (path[len] == ':');
    }
    return false;
}

/* Start python3 -c script args...; its stdin/stdout are pipes returned in *in / *out. */
static pid_t run_python(const char *script, const char *arg, int *in, int *out)
{
    int pin[2], pout[2];
    CHECK(pipe2(pin, O_CLOEXEC) == 0 && pipe2(pout, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pin[0], 0);
    posix_spawn_file_actions_adddup2(&fa, pout[1], 1);
    char *argv[] = {"python3", "-c", (char *)script, (char *)arg, NULL};
    pid_t pid;
    CHECK_EQ(posix_spawnp(&pid, "python3", &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(pin[0]);
    close(pout[1]);
    *in = pin[1];
    *out = pout[0];
    return pid;
}

/* One line (without '\n') from fd, within `timeout` seconds in all. */
static void read_line(int fd, char *buf, size_t size, double timeout)
{
    mproc_deadline d = mproc_deadline_after(timeout);
    size_t got = 0;
    buf[0] = 0;
    while (!memchr(buf, '\n', got)) {
        CHECK(got < size - 1);
        CHECK_OK(mproc_wait_fd(fd, POLLIN, mproc_deadline_remaining(d)));
        ssize_t n = mproc_read_some(fd, buf + got, size - 1 - got);
        CHECK(n > 0);
        got += (size_t)n;
        buf[got] = 0;
    }
    *strchr(buf, '\n') = 0;
}

/* Wait (bounded) for python3 to exit and require status 0. */
static void python_succeeded(pid_t pid)
{
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    CHECK(pfd >= 0);
    CHECK_OK(mproc_wait_fd(pfd, POLLIN, 60.0));
    close(pfd);
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* Python attaches a list mproc made, reads it, and stores new values. Python
 * 3.11 registers segments it merely attaches and would unlink ours at exit
 * (bpo-39959), so the script unregisters it, as test_shm's does. */
static const char *py_attach =
    "import sys\n"
    "from multiprocessing import shared_memory, resource_tracker\n"
    "sl = shared_memory.ShareableList(name=sys.argv[1])\n"
    "resource_tracker.unregister(sl.shm._name, 'shared_memory')  # 3.11 would unlink it\n"
    "want = [42, -2**63, 2.5, True, False, None, 'hello', '', b'\\x00ab', 'h\\xe9llo']\n"
    "got = list(sl)\n"
    "assert got == want and list(map(type, got)) == list(map(type, want)), got\n"
    "assert sl.format == 'qqdxxxxxxx?xxxxxxx?xxxxxx?x8s32s8s8s', sl.format\n"
    "assert len(sl) == 10 and sl.count(False) == 1 and sl.index('hello') == 6\n"
    "sl[0] = 'str!'\n"
    "sl[1] = 7.25\n"
    "sl[2] = None\n"
    "sl[3] = b'by\\x00tes'\n"
    "sl[4] = 123456789\n"
    "sl[5] = True\n"
    "sl[6] = 12\n"
    "sl[7] = 'x' * 32\n"
    "try:\n"
    "    sl[8] = b'123456789'\n"
    "except ValueError:\n"
    "    pass\n"
    "else:\n"
    "    raise SystemExit('no ValueError for a value too long')\n"
    "sl[9] = 'w\\xf6rld'\n"
    "sl.shm.close()\n"
    "print('done', flush=True)\n";

MTEST(test_python_attaches_a_list_made_by_mproc)
{
    if (!have_python()) {
        printf("skip: python3 not found\n");
        return;
    }
    const mproc_sl_item items[] = {
        I_INT(42), I_INT(INT64_MIN), I_FLOAT(2.5), I_BOOL(true), I_BOOL(false), I_NONE,
        I_STR("hello"), I_STR_CAP("", 32), I_BYTES("\0ab"), I_STR("h\xc3\xa9llo"),
    };
    mproc_shareable_list *l;
    CHECK_OK(mproc_shareable_list_new(&l, slname("topy"), items, 10));
    int in, out;
    pid_t pid = run_python(py_attach, slname("topy"), &in, &out);
    char line[64];
    read_line(out, line, sizeof line, 60.0);
    CHECK(strcmp(line, "done") == 0);
    python_succeeded(pid);
    close(in);
    close(out);
    CHECK(seg_exists(slname("topy"))); /* Python's tracker left it alone */
    EXPECT(l, 0, I_STR("str!"));
    EXPECT_FMT(l, 0, "8s", 1);
    EXPECT(l, 1, I_FLOAT(7.25));
    EXPECT(l, 2, I_NONE);
    EXPECT(l, 3, I_BYTES("by\0tes"));
    EXPECT(l, 4, I_INT(123456789));
    EXPECT(l, 5, I_BOOL(true));
    EXPECT(l, 6, I_INT(12));
    EXPECT_FMT(l, 6, "q", 0);
    char x32[33];
    memset(x32, 'x', 32);
    x32[32] = 0;
    EXPECT(l, 7, ((mproc_sl_item){.kind = MPROC_SL_STR, .s = x32, .len = 32}));
    EXPECT(l, 8, I_BYTES("\0ab"));
    EXPECT(l, 9, I_STR("w\xc3\xb6rld"));
    CHECK_OK(mproc_shareable_list_set(l, 6, &I_STR("abcdefgh"))); /* the int slot's 8 bytes */
    EXPECT(l, 6, I_STR("abcdefgh"));
    drop(l);
}

/* Python makes a list; mproc attaches it, checks it is byte for byte what mproc
 * makes from the same values, and writes; Python checks what it reads. */
static const char *py_create =
    "import sys\n"
    "from multiprocessing import shared_memory\n"
    "sl = shared_memory.ShareableList([42, -7, 3.5, True, False, None, 'hello', '',\n"
    "    b'\\x00ab', b'12345678', 'h\\xe9llo w\\xf6rld', 2**63 - 1], name=sys.argv[1])\n"
    "try:\n"
    "    print('ready', flush=True)\n"
    "    assert sys.stdin.readline() == 'go\\n'\n"
    "    want = ['from C', b'\\x01\\x02', False, None, -1, 1e300, 'HELLO!!!', 0,\n"
    "            b'\\x00ab', '12345678', 'h\\xe9llo w\\xf6rld', '']\n"
    "    got = list(sl)\n"
    "    assert got == want and list(map(type, got)) == list(map(type, want)), got\n"
    "    assert sl.format == '8s8sxxxxxxx?xxxxxx?xqd8sq8s16s16s8s', sl.format\n"
    "    sl[6] = 'py again'\n"
    "    print('verified', flush=True)\n"
    "    assert sys.stdin.readline() == 'bye\\n'\n"
    "finally:\n"
    "    sl.shm.close()\n"
    "    sl.shm.unlink()\n";

MTEST(test_mproc_attaches_a_list_made_by_python)
{
    if (!have_python()) {
        printf("skip: python3 not found\n");
        return;
    }
    const char *name = slname("frompy");
    int in, out;
    pid_t pid = run_python(py_create, name, &in, &out);
    char line[64];
    read_line(out, line, sizeof line, 60.0);
    CHECK(strcmp(line, "ready") == 0);
    mproc_shareable_list *l, *mine;
    CHECK_OK(mproc_shareable_list_open(&l, name));
    const mproc_sl_item same[] = {
        I_INT(42), I_INT(-7), I_FLOAT(3.5), I_BOOL(true), I_BOOL(false), I_NONE, I_STR("hello"),
        I_STR(""), I_BYTES("\0ab"), I_BYTES("12345678"), I_STR("h\xc3\xa9llo w\xc3\xb6rld"),
        I_INT(INT64_MAX),
    };
    size_t n = sizeof same / sizeof same[0];
    CHECK_EQ(mproc_shareable_list_len(l), n);
    for (size_t i = 0; i < n; i++)
        EXPECT(l, (long)i, same[i]);
    CHECK_OK(mproc_shareable_list_new(&mine, slname("mine"), same, n));
    size_t size = mproc_shm_size(mproc_shareable_list_shm(mine));
    CHECK_EQ(mproc_shm_size(mproc_shareable_list_shm(l)), size);
    CHECK(memcmp(raw(l), raw(mine), size) == 0); /* the same bytes, header to codes */
    drop(mine);
    CHECK_OK(mproc_shareable_list_set(l, 0, &I_STR("from C")));
    CHECK_OK(mproc_shareable_list_set(l, 1, &I_BYTES("\x01\x02\0")));
    CHECK_OK(mproc_shareable_list_set(l, 2, &I_BOOL(false)));
    CHECK_OK(mproc_shareable_list_set(l, 3, &I_NONE));
    CHECK_OK(mproc_shareable_list_set(l, 4, &I_INT(-1)));
    CHECK_OK(mproc_shareable_list_set(l, 5, &I_FLOAT(1e300)));
    CHECK_OK(mproc_shareable_list_set(l, 6, &I_STR("HELLO!!!")));
    CHECK_OK(mproc_shareable_list_set(l, 7, &I_INT(0)));
    CHECK_EQ(mproc_shareable_list_set(l, 8, &I_BYTES("123456789")), MPROC_EMSGSIZE);
    CHECK_OK(mproc_shareable_list_set(l, 9, &I_STR("12345678")));
    CHECK_EQ(mproc_shareable_list_set(l, 10, &I_STR("12345678901234567")), MPROC_EMSGSIZE);
    CHECK_OK(mproc_shareable_list_set(l, -1, &I_STR("")));
    CHECK_OK(mproc_write_all(in, "go\n", 3));
    read_line(out, line, sizeof line, 60.0);
    CHECK(strcmp(line, "verified") == 0);
    EXPECT(l, 6, I_STR("py again"));
    mproc_shareable_list_close(l);
    CHECK_OK(mproc_write_all(in, "bye\n", 4));
    python_succeeded(pid);
    close(in);
    close(out);
    CHECK(!seg_exists(name)); /* Python unlinked its own */
}

/* ------------------------------------------------------ hostile segments */

/* The bytes of a valid list of `items`, made by mproc_shareable_list_new. */
static size_t list_image(const mproc_sl_item *items, size_t n, unsigned char *img, size_t cap)
{
    mproc_shareable_list *l;
    CHECK_OK(mproc_shareable_list_new(&l, slname("image"), items, n));
    size_t size = mproc_shm_size(mproc_shareable_list_shm(l));
    CHECK(size <= cap);
    memcpy(img, raw(l), size);
    drop(l);
    return size;
}

/* [1, "abc", None]: 91 bytes, formats at 64, codes at 88. */
static size_t good_image(unsigned char *img, size_t cap)
{
    const mproc_sl_item items[] = {I_INT(1), I_STR("abc"), I_NONE};
    return list_image(items, 3, img, cap);
}

/* Open a plain segment holding `img` (size bytes) as a list and expect EPROTO. */
static void expect_refused(const unsigned char *img, size_t size, int line)
{
    const char *name = slname("bad");
    mproc_shm *s;
    CHECK_OK(mproc_shm_open(&s, name, true, size));
    memcpy(mproc_shm_buf(s), img, size);
    mproc_shareable_list *l = NULL;
    int rc = mproc_shareable_list_open(&l, name);
    if (rc != MPROC_EPROTO) {
        fprintf(stderr, "line %d: open gave %d (%s)\n", line, rc, mproc_errmsg());
        _exit(1);
    }
    CHECK(strstr(mproc_errmsg(), "shareable_list") != NULL);
    CHECK_OK(mproc_shm_unlink(s));
    mproc_shm_close(s);
}

static void put64(unsigned char *img, size_t off, int64_t v)
{
    memcpy(img + off, &v, 8);
}

MTEST(test_malformed_segments_are_refused)
{
    unsigned char good[256], img[256];
    size_t size = good_image(good, sizeof good);
    CHECK_EQ(size, 8 + 32 + 24 + 24 + 3);
    const size_t fmts = 64, codes = 88;
#define BAD(edit, sz)                          \
    do {                                       \
        memcpy(img, good, size);               \
        edit;                                  \
        expect_refused(img, (sz), __LINE__);   \
    } while (0)
#define FMT(i, f) (memset(img + fmts + 8 * (i), 0, 8), memcpy(img + fmts + 8 * (i), f, strlen(f)))
    BAD((void)0, 8);                   /* smaller than a header */
    BAD((void)0, size - 1);            /* codes cut off */
    BAD(put64(img, 0, -1), size);
    BAD(put64(img, 0, INT64_MAX), size);
    BAD(put64(img, 0, 1LL << 40), size);
    BAD(put64(img, 0, 4), size);        /* more items than fit */
    BAD(put64(img, 0, 2), size);        /* fewer: formats land on data */
    BAD(put64(img, 8, 8), size);        /* offsets[0] must be 0 */
    BAD(put64(img, 16, 0), size);       /* an empty slot */
    BAD(put64(img, 16, 4), size);       /* a slot too small for a fixed value */
    BAD(put64(img, 24, 4), size);       /* going backwards */
    BAD(put64(img, 32, 1000), size);    /* past the end */
    BAD(put64(img, 32, -8), size);
    BAD(put64(img, 32, INT64_MIN), size);
    BAD(FMT(0, "zz"), size);
    BAD(FMT(0, "Q"), size);
    BAD(FMT(0, ""), size);
    BAD(FMT(1, "99s"), size);           /* more than the slot holds */
    BAD(FMT(1, "9999999s"), size);
    BAD(FMT(1, "s"), size);
    BAD(FMT(1, "-8s"), size);
    BAD(FMT(1, "8x"), size);
    BAD(FMT(1, " 8s"), size);
    BAD(FMT(2, "xxxxxxx!"), size);
    BAD((FMT(0, "q"), img[fmts + 3] = 'x'), size); /* bytes after the NUL */
    BAD(img[codes] = 7, size);
    BAD(img[codes] = 0xff, size);
    BAD(img[codes] = 1, size);          /* "q" with the str code */
    BAD(img[codes + 1] = 0, size);      /* "8s" with the plain code */
    BAD(img[codes + 2] = 0, size);      /* None's format with the plain code */
    BAD(img[codes + 2] = 1, size);
#undef FMT
#undef BAD
    /* The unedited image opens, so each refusal above is down to its edit. */
    const char *name = slname("ok");
    mproc_shm *s;
    mproc_shareable_list *l;
    CHECK_OK(mproc_shm_open(&s, name, true, size));
    memcpy(mproc_shm_buf(s), good, size);
    CHECK_OK(mproc_shareable_list_open(&l, name));
    EXPECT(l, 1, I_STR("abc"));
    mproc_shareable_list_close(l);
    CHECK_OK(mproc_shm_unlink(s));
    mproc_shm_close(s);
}

/* A small deterministic generator (xorshift64*). */
static uint64_t rnd(uint64_t *st)
{
    *st ^= *st >> 12;
    *st ^= *st << 25;
    *st ^= *st >> 27;
    return *st * 2685821657736338717ull;
}

/* Every reachable call on a list that did open must stay inside the segment. */
static void exercise(mproc_shareable_list *l, const unsigned char *base, size_t size)
{
    size_t n = mproc_shareable_list_len(l), at;
    for (size_t i = 0; i < n; i++) {
        mproc_sl_item v;
        int rc = mproc_shareable_list_get(l, (long)i, &v);
        CHECK(rc == 0 || rc == MPROC_EPROTO);
        if (rc == 0 && (v.kind == MPROC_SL_STR || v.kind == MPROC_SL_BYTES))
            CHECK(v.len <= v.capacity && (const unsigned char *)v.s >= base &&
                  (const unsigned char *)v.s + v.len <= base + size);
    }
    (void)mproc_shareable_list_count(l, &I_STR("abc"));
    (void)mproc_shareable_list_index(l, &I_INT(1), &at);
    for (size_t i = 0; i < n; i++) {
        CHECK_OK(mproc_shareable_list_set(l, (long)i, &I_INT(5)));
        CHECK_OK(mproc_shareable_list_set(l, (long)i, &I_BYTES("12345678")));
        EXPECT(l, (long)i, I_BYTES("12345678"));
    }
}

/* The list fills exactly one page, so a read or write past its end runs off the
 * mapping; the edits go mostly to the header, formats and codes. */
MTEST(test_random_corruption_never_crashes)
{
    const mproc_sl_item items[] = {I_INT(1), I_STR_CAP("abc", 3888), I_NONE, I_FLOAT(2.0),
                                   I_BOOL(true), I_BYTES("xy"), I_STR(""), I_INT(-1)};
    static unsigned char good[4096];
    size_t size = list_image(items, 8, good, sizeof good);
    CHECK_EQ(size, 4096);
    const size_t head = 8 * 10, tail = 4096 - 9 * 8; /* [0, head) and [tail, size) */
    const char *name = slname("fuzz");
    mproc_shm *s;
    CHECK_OK(mproc_shm_open(&s, name, true, size));
    unsigned char *p = mproc_shm_buf(s);
    uint64_t st = 0x9e3779b97f4a7c15ull;
    int opened = 0, refused = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(p, good, size);
        int edits = 1 + (int)(rnd(&st) % 3);
        for (int e = 0; e < edits; e++) {
            uint64_t r = rnd(&st);
            size_t where = (r >> 8) % 10;
            size_t at = where < 5 ? (size_t)(r >> 16) % head
                        : where < 9 ? tail + (size_t)(r >> 16) % (size - tail)
                                    : (size_t)(r >> 16) % size;
            /* Half flip one bit, half write an arbitrary byte. */
            p[at] = r & 1 ? (unsigned char)(r >> 40)
                          : (unsigned char)(p[at] ^ (1u << ((r >> 40) % 8)));
        }
        if (iter % 7 == 0) { /* a small count over random metadata */
            int64_t n = (int64_t)(rnd(&st) % 12);
            memcpy(p, &n, 8);
            for (size_t k = 8; k < head; k++)
                p[k] = (unsigned char)rnd(&st);
            for (size_t k = tail; k < size; k++)
                p[k] = (unsigned char)rnd(&st);
        }
        mproc_shareable_list *l;
        int rc = mproc_shareable_list_open(&l, name);
        CHECK(rc == 0 || rc == MPROC_EPROTO);
        if (rc == 0) {
            opened++;
            exercise(l, mproc_shm_buf(mproc_shareable_list_shm(l)), size);
            mproc_shareable_list_close(l);
        } else {
            refused++;
        }
    }
    CHECK(opened > 0 && refused > 0);
    CHECK_OK(mproc_shm_unlink(s));
    mproc_shm_close(s);
}

/* Another program scribbles on the header after we opened: our slots stay
 * where they were checked to be, and formats are checked on every access. */
MTEST(test_scribbles_after_open_are_contained)
{
    const mproc_sl_item items[] = {I_INT(1), I_STR("abc"), I_NONE};
    mproc_shareable_list *w, *l;
    CHECK_OK(mproc_shareable_list_new(&w, slname("scribble"), items, 3));
    CHECK_OK(mproc_shareable_list_open(&l, slname("scribble")));
    unsigned char *p = mproc_shm_buf(mproc_shareable_list_shm(w));
    put64(p, 0, 1LL << 40);
    put64(p, 16, 1LL << 40);
    put64(p, 32, -1);
    CHECK_EQ(mproc_shareable_list_len(l), 3);
    EXPECT(l, 0, I_INT(1));
    EXPECT(l, 1, I_STR("abc"));
    memcpy(p + 64 + 8, "9999999s", 8);
    mproc_sl_item v;
    CHECK_EQ(mproc_shareable_list_get(l, 1, &v), MPROC_EPROTO);
    CHECK_EQ(mproc_shareable_list_count(l, &I_STR("abc")), 0); /* unreadable matches nothing */
    CHECK_OK(mproc_shareable_list_set(l, 1, &I_STR("ok"))); /* set rewrites the format */
    EXPECT(l, 1, I_STR("ok"));
    p[88] = 9;
    CHECK_EQ(mproc_shareable_list_get(l, 0, &v), MPROC_EPROTO);
    size_t at;
    CHECK_OK(mproc_shareable_list_index(l, &I_STR("ok"), &at));
    CHECK_EQ(at, 1);
    memcpy(p + 64 + 8, "8s\0\0\0\0\0\0", 8);
    memcpy(p + 40 + 8, "\xff\xfe", 2); /* invalid UTF-8 under the str code */
    CHECK_EQ(mproc_shareable_list_get(l, 1, &v), MPROC_EPROTO);
    mproc_shareable_list_close(l);
    drop(w);
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    static const mtest_case cases[] = {
        MTEST_ENTRY(test_every_kind_round_trips),
        MTEST_ENTRY(test_null_name_picks_a_fresh_one),
        MTEST_ENTRY(test_negative_indices_and_out_of_range),
        MTEST_ENTRY(test_set_changes_kind_and_keeps_slot_room),
        MTEST_ENTRY(test_too_long_str_is_refused_and_item_unchanged),
        MTEST_ENTRY(test_capacity_option_and_default_room),
        MTEST_ENTRY(test_index_and_count),
        MTEST_ENTRY(test_empty_list),
        MTEST_ENTRY(test_trailing_nuls_are_dropped),
        MTEST_ENTRY(test_bad_arguments_are_refused),
        METHOD_ENTRIES(attach_by_name),
        MTEST_ENTRY(test_python_attaches_a_list_made_by_mproc),
        MTEST_ENTRY(test_mproc_attaches_a_list_made_by_python),
        MTEST_ENTRY(test_malformed_segments_are_refused),
        MTEST_ENTRY(test_random_corruption_never_crashes),
        MTEST_ENTRY(test_scribbles_after_open_are_contained),
    };
    mtest_warmup = mtest_warmup_tracker_and_forkserver;
    return mtest_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
