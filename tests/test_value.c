/* test_value.c — the dynamic value, MessagePack and safe-pickle codecs:
 * builders and repr, known byte vectors, interop with the machine's python3,
 * and hostile input (truncation, huge lengths, deep nesting, code execution). */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/stat.h>

#include "mproc/value.h"
#include "mtest.h"

#define V mproc_value

/* ------------------------------------------------------------ helpers */

static V *L(int n, ...)
{
    V *l = mproc_value_list();
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++)
        CHECK_OK(mproc_value_append(l, va_arg(ap, V *)));
    va_end(ap);
    return l;
}

static V *M(int n, ...) /* n pairs */
{
    V *m = mproc_value_map();
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++) {
        V *k = va_arg(ap, V *);
        CHECK_OK(mproc_value_map_set(m, k, va_arg(ap, V *)));
    }
    va_end(ap);
    return m;
}

static V *I(int64_t i) { return mproc_value_int(i); }
static V *S(const char *s) { return mproc_value_str(s); }
static V *B(const char *s, size_t n) { return mproc_value_bytes(s, n); }

static void check_repr(const V *v, const char *want)
{
    char *r = mproc_value_repr(v);
    CHECK(r);
    if (strcmp(r, want) != 0) {
        fprintf(stderr, "repr: got  %s\n      want %s\n", r, want);
        _exit(1);
    }
    free(r);
}

static void check_equal(const V *got, const V *want, const char *what)
{
    if (!mproc_value_equal(got, want)) {
        char *a = mproc_value_repr(got), *b = mproc_value_repr(want);
        fprintf(stderr, "%s: got  %.400s\n want %.400s\n", what, a ? a : "?", b ? b : "?");
        _exit(1);
    }
}

static size_t unhex(const char *h, uint8_t *out, size_t cap)
{
    size_t n = 0;
    for (; h[0] && h[1] && n < cap; h += 2) {
        unsigned x;
        CHECK(sscanf(h, "%2x", &x) == 1);
        out[n++] = (uint8_t)x;
    }
    return n;
}

/* Run python3 -c script [arg]; return its stdout (malloc'd) and check exit 0. */
static char *python(const char *script, const char *arg)
{
    char path[] = "/tmp/mproc_test_value_py_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK(write(fd, script, strlen(script)) == (ssize_t)strlen(script));
    close(fd);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "python3 %s %s", path, arg ? arg : "");
    FILE *f = popen(cmd, "r");
    CHECK(f);
    mproc_buf out = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        CHECK_OK(mproc_buf_append(&out, chunk, n));
    int st = pclose(f);
    unlink(path);
    CHECK_OK(mproc_buf_append(&out, "", 1));
    if (st != 0) {
        fprintf(stderr, "python3 failed (%d): %s\n", st, (char *)out.data);
        _exit(1);
    }
    return (char *)out.data;
}

/* ------------------------------------------------------------ values */

MTEST(test_value_builders_and_accessors)
{
    V *v = I(-42);
    CHECK_EQ(mproc_value_type(v), MPROC_V_INT);
    CHECK_EQ(mproc_value_as_int(v), -42);
    CHECK(mproc_value_as_float(v) == -42.0);
    CHECK(!mproc_value_as_bool(v));
    mproc_value_free(v);
    v = mproc_value_float(2.5);
    CHECK_EQ(mproc_value_as_int(v), 0); /* as_int does not convert */
    CHECK(mproc_value_as_float(v) == 2.5);
    mproc_value_free(v);
    v = mproc_value_bool(true);
    CHECK(mproc_value_as_bool(v));
    mproc_value_free(v);

    size_t n = 0;
    v = mproc_value_strn("a\0b", 3);
    CHECK(memcmp(mproc_value_as_str(v, &n), "a\0b", 4) == 0);
    CHECK_EQ(n, 3);
    CHECK_EQ(mproc_value_len(v), 3);
    CHECK(mproc_value_as_bytes(v, &n) == NULL);
    mproc_value_free(v);
    CHECK(mproc_value_str("\xff") == NULL);       /* not UTF-8 */
    CHECK(mproc_value_str("\xed\xa0\x80") == NULL); /* a surrogate */
    CHECK(mproc_value_str("\xc0\x80") == NULL);   /* overlong */
    v = B("\xff\x00", 2);
    CHECK(memcmp(mproc_value_as_bytes(v, &n), "\xff\x00", 2) == 0 && n == 2);
    mproc_value_free(v);

    V *l = L(3, I(1), S("two"), mproc_value_nil());
    CHECK_EQ(mproc_value_len(l), 3);
    CHECK_EQ(mproc_value_as_int(mproc_value_at(l, 0)), 1);
    CHECK(mproc_value_at(l, 3) == NULL);
    V *five = I(5);
    CHECK_EQ(mproc_value_append(five, I(6)), MPROC_EINVAL); /* the item is freed */
    mproc_value_free(five);
    mproc_value_free(l);

    V *m = M(2, S("a"), I(1), I(2), S("x"));
    CHECK_OK(mproc_value_map_set(m, S("a"), I(10))); /* replaced in place */
    CHECK_EQ(mproc_value_len(m), 2);
    CHECK_EQ(mproc_value_as_int(mproc_value_get(m, "a")), 10);
    CHECK_EQ(mproc_value_as_int(mproc_value_key_at(m, 1)), 2);
    CHECK(mproc_value_get(m, "zz") == NULL);
    CHECK_EQ(mproc_value_map_set(m, L(0), I(1)), MPROC_EINVAL);
    CHECK_EQ(mproc_value_map_set(m, M(0), I(1)), MPROC_EINVAL);
    CHECK_EQ(mproc_value_map_set(m, mproc_value_error("E", ""), I(1)), MPROC_EINVAL);
    CHECK_EQ(mproc_value_map_set(l = L(0), S("k"), I(1)), MPROC_EINVAL);
    mproc_value_free(l);
    mproc_value_free(m);

    V *e = mproc_value_error("KeyError", "k");
    CHECK_EQ(mproc_value_type(e), MPROC_V_ERROR);
    CHECK(strcmp(mproc_value_error_type(e), "KeyError") == 0);
    CHECK(strcmp(mproc_value_error_message(e), "k") == 0);
    V *nil = mproc_value_nil();
    CHECK(mproc_value_error_type(nil) == NULL && mproc_value_error_message(nil) == NULL);
    CHECK(mproc_value_error("", "x") == NULL && mproc_value_error(NULL, "x") == NULL);
    mproc_value_free(nil);
    mproc_value_free(e);
}

MTEST(test_value_big_map_keeps_order_and_finds_keys)
{
    V *m = mproc_value_map();
    char k[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(k, sizeof k, "k%d", i);
        CHECK_OK(mproc_value_map_set(m, S(k), I(i)));
        CHECK_OK(mproc_value_map_set(m, I(i), I(-i)));
    }
    for (int i = 0; i < 5000; i += 7) {
        snprintf(k, sizeof k, "k%d", i);
        CHECK_OK(mproc_value_map_set(m, S(k), I(i * 2)));
    }
    CHECK_EQ(mproc_value_len(m), 10000);
    for (int i = 0; i < 5000; i++) {
        snprintf(k, sizeof k, "k%d", i);
        CHECK_EQ(mproc_value_as_int(mproc_value_get(m, k)), i % 7 ? i : i * 2);
        CHECK_EQ(mproc_value_as_int(mproc_value_key_at(m, (size_t)2 * i + 1)), i);
    }
    /* keys of different types never collide: 1 vs 1.0 vs True vs "1" */
    V *t = M(4, I(1), I(0), mproc_value_float(1.0), I(1), mproc_value_bool(true), I(2), S("1"),
             I(3));
    CHECK_EQ(mproc_value_len(t), 4);
    mproc_value_free(t);
    mproc_value_free(m);
}

MTEST(test_value_copy_equal_and_deep_free)
{
    V *a = M(3, S("list"), L(3, I(1), mproc_value_float(NAN), L(1, B("x", 1))), I(7),
             mproc_value_error("ValueError", "boom"), mproc_value_nil(), mproc_value_bool(false));
    V *b = mproc_value_copy(a);
    CHECK(b && b != a);
    CHECK(mproc_value_equal(a, b)); /* NaN equals NaN for value equality */
    CHECK_OK(mproc_value_append(mproc_value_at(b, 0), I(4)));
    CHECK(!mproc_value_equal(a, b));
    V *i1 = I(1), *f1 = mproc_value_float(1.0);
    CHECK(!mproc_value_equal(i1, f1)); /* types must match */
    mproc_value_free(i1);
    mproc_value_free(f1);
    /* map order matters */
    V *m1 = M(2, I(1), I(1), I(2), I(2)), *m2 = M(2, I(2), I(2), I(1), I(1));
    CHECK(!mproc_value_equal(m1, m2));
    mproc_value_free(m1);
    mproc_value_free(m2);
    mproc_value_free(a);
    mproc_value_free(b);
    mproc_value_free(NULL);
    /* a very deep hand-built tree frees without recursion */
    V *root = mproc_value_list(), *cur = root;
    for (int i = 0; i < 200000; i++) {
        V *n = mproc_value_list();
        CHECK_OK(mproc_value_append(cur, n));
        cur = n;
    }
    CHECK(mproc_value_repr(root) == NULL); /* too deep to print: refused, not a crash */
    CHECK(mproc_value_copy(root) == NULL);
    mproc_buf out = {0};
    CHECK_EQ(mproc_msgpack_encode(root, &out), MPROC_EINVAL);
    CHECK_EQ(mproc_pickle_encode(root, 4, &out), MPROC_EINVAL);
    CHECK_EQ(out.len, 0);
    free(out.data);
    mproc_value_free(root);
}

MTEST(test_value_repr_is_python_style)
{
    struct {
        V *v;
        const char *want;
    } t[] = {
        {mproc_value_nil(), "None"},
        {mproc_value_bool(true), "True"},
        {I(42), "42"},
        {I(INT64_MIN), "-9223372036854775808"},
        {mproc_value_float(1.5), "1.5"},
        {mproc_value_float(1e16), "1e+16"},
        {mproc_value_float(1e15), "1000000000000000.0"},
        {mproc_value_float(1e-5), "1e-05"},
        {mproc_value_float(0.0001), "0.0001"},
        {mproc_value_float(-0.0), "-0.0"},
        {mproc_value_float(1.0 / 3), "0.3333333333333333"},
        {mproc_value_float(1e100), "1e+100"},
        {mproc_value_float(5e-324), "5e-324"},
        {mproc_value_float(INFINITY), "inf"},
        {mproc_value_float(NAN), "nan"},
        {S("text"), "'text'"},
        {S("it's"), "\"it's\""},
        {S("both ' \""), "'both \\' \"'"},
        {mproc_value_strn("a\0b\n\t\\", 6), "'a\\x00" "b\\n\\t\\\\'"},
        {S("h\xc3\xa9llo \xe2\x98\x83 \xf0\x9f\x98\x80"), "'h\xc3\xa9llo \xe2\x98\x83 \xf0\x9f\x98\x80'"},
        {S("\x7f\xc2\xa0\xc2\xad"), "'\\x7f\\xa0\\xad'"},
        {B("", 0), "b''"},
        {B("\xff'x", 3), "b\"\\xff'x\""},
        {L(2, I(1), L(1, I(2))), "[1, [2]]"},
        {M(2, S("a"), B("x", 1), I(2), mproc_value_nil()), "{'a': b'x', 2: None}"},
        {mproc_value_error("ValueError", "boom"), "ValueError('boom')"},
        {L(3, I(42), mproc_value_nil(), S("hello")), "[42, None, 'hello']"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        check_repr(t[i].v, t[i].want);
        mproc_value_free(t[i].v);
    }
    /* print adds a newline */
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    V *v = L(1, I(1));
    mproc_value_print(v, f);
    fclose(f);
    CHECK(strcmp(buf, "[1]\n") == 0);
    free(buf);
    mproc_value_free(v);
}

/* ------------------------------------------------------------ msgpack */

static void mp_vector(V *v, const char *hex)
{
    uint8_t want[256];
    size_t n = unhex(hex, want, sizeof want);
    mproc_buf out = {0};
    CHECK_OK(mproc_msgpack_encode(v, &out));
    if (out.len != n || memcmp(out.data, want, n) != 0) {
        fprintf(stderr, "msgpack encode of ");
        mproc_value_print(v, stderr);
        for (size_t i = 0; i < out.len; i++)
            fprintf(stderr, "%02x", out.data[i]);
        fprintf(stderr, " != %s\n", hex);
        _exit(1);
    }
    V *back = NULL;
    CHECK_OK(mproc_msgpack_decode(want, n, NULL, &back));
    check_equal(back, v, "msgpack decode");
    mproc_value_free(back);
    mproc_value_free(v);
    free(out.data);
}

static void mp_decodes(const char *hex, V *want)
{
    uint8_t in[256];
    size_t n = unhex(hex, in, sizeof in);
    V *got = NULL;
    CHECK_OK(mproc_msgpack_decode(in, n, NULL, &got));
    check_equal(got, want, hex);
    mproc_value_free(got);
    mproc_value_free(want);
}

static int mp_fails(const char *hex, const mproc_decode_limits *lim)
{
    uint8_t in[256];
    size_t n = unhex(hex, in, sizeof in);
    V *got = (V *)1;
    int rc = mproc_msgpack_decode(in, n, lim, &got);
    CHECK(rc != 0);
    CHECK(got == NULL);
    return rc;
}

MTEST(test_msgpack_known_vectors)
{
    mp_vector(mproc_value_nil(), "c0");
    mp_vector(mproc_value_bool(true), "c3");
    mp_vector(mproc_value_bool(false), "c2");
    mp_vector(I(0), "00");
    mp_vector(I(127), "7f");
    mp_vector(I(128), "cc80");
    mp_vector(I(256), "cd0100");
    mp_vector(I(65536), "ce00010000");
    mp_vector(I(4294967296), "cf0000000100000000");
    mp_vector(I(-1), "ff");
    mp_vector(I(-32), "e0");
    mp_vector(I(-33), "d0df");
    mp_vector(I(-129), "d1ff7f");
    mp_vector(I(-32769), "d2ffff7fff");
    mp_vector(I(INT64_MIN), "d38000000000000000");
    mp_vector(mproc_value_float(1.5), "cb3ff8000000000000");
    mp_vector(S(""), "a0");
    mp_vector(S("a"), "a161");
    mp_vector(S("0123456789abcdef0123456789abcdef"),
              "d9203031323334353637383961626364656630313233343536373839616263646566");
    mp_vector(B("\xff", 1), "c401ff");
    mp_vector(L(0), "90");
    mp_vector(L(2, I(1), I(2)), "920102");
    mp_vector(M(1, S("a"), I(1)), "81a16101");
    mp_vector(mproc_value_error("ValueError", "boom"),
              "82a95f5f6572726f725f5faa56616c75654572726f72a76d657373616765a4626f6f6d");
    /* forms we decode but do not produce */
    mp_decodes("ca3fc00000", mproc_value_float(1.5));
    mp_decodes("cc05", I(5));
    mp_decodes("d000", I(0));
    mp_decodes("d3ffffffffffffffff", I(-1));
    mp_decodes("cf7fffffffffffffff", I(INT64_MAX));
    mp_decodes("da000161", S("a"));
    mp_decodes("db0000000161", S("a"));
    mp_decodes("c5000161", B("a", 1));
    mp_decodes("c600000000", B("", 0));
    mp_decodes("dc000101", L(1, I(1)));
    mp_decodes("dd0000000101", L(1, I(1)));
    mp_decodes("de0001c0c0", M(1, mproc_value_nil(), mproc_value_nil()));
    mp_decodes("df00000001c3c2", M(1, mproc_value_bool(true), mproc_value_bool(false)));
    mp_decodes("82a16101a16102", M(1, S("a"), I(2))); /* duplicate key: last wins */
}

MTEST(test_msgpack_round_trips)
{
    V *big = mproc_value_list();
    for (int i = 0; i < 70000; i++)
        CHECK_OK(mproc_value_append(big, i % 3 ? I(i * 977) : S("s")));
    V *vals[] = {
        L(4, mproc_value_float(NAN), mproc_value_float(-0.0), mproc_value_float(INFINITY),
          I(INT64_MAX)),
        M(3, S("k"), L(2, B("\0", 1), S("h\xc3\xa9")), I(-5), mproc_value_nil(),
          mproc_value_float(2.5), M(0)),
        mproc_value_strn("nul\0inside", 10),
        big,
    };
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        mproc_buf out = {0};
        CHECK_OK(mproc_buf_append(&out, "xy", 2)); /* encode appends */
        CHECK_OK(mproc_msgpack_encode(vals[i], &out));
        V *back = NULL;
        CHECK_OK(mproc_msgpack_decode(out.data + 2, out.len - 2, NULL, &back));
        check_equal(back, vals[i], "msgpack round trip");
        mproc_value_free(back);
        mproc_value_free(vals[i]);
        free(out.data);
    }
}

MTEST(test_msgpack_rejects_hostile_input)
{
    /* truncated at every offset */
    V *v = M(3, S("list"), L(3, I(1), mproc_value_float(1.5), B("bytes", 5)), S("str"),
             S("h\xc3\xa9llo"), I(70000), L(1, M(1, I(-100000), mproc_value_nil())));
    mproc_buf out = {0};
    CHECK_OK(mproc_msgpack_encode(v, &out));
    for (size_t i = 0; i < out.len; i++) {
        V *got = (V *)1;
        CHECK_EQ(mproc_msgpack_decode(out.data, i, NULL, &got), MPROC_EPROTO);
        CHECK(got == NULL);
    }
    /* trailing bytes */
    CHECK_OK(mproc_buf_append(&out, "\xc0", 1));
    V *got;
    CHECK_EQ(mproc_msgpack_decode(out.data, out.len, NULL, &got), MPROC_EPROTO);
    CHECK(strstr(mproc_errmsg(), "trailing"));
    free(out.data);
    mproc_value_free(v);

    /* huge declared lengths fail before any allocation, as over the limits
     * (checked before truncation, so a stream reader never waits for them) */
    CHECK_EQ(mp_fails("ddffffffff", NULL), MPROC_EMSGSIZE);
    CHECK_EQ(mp_fails("dfffffffff", NULL), MPROC_EMSGSIZE);
    CHECK_EQ(mp_fails("dbffffffff61", NULL), MPROC_EMSGSIZE);
    CHECK_EQ(mp_fails("c6ffffffff", NULL), MPROC_EMSGSIZE);
    CHECK_EQ(mp_fails("dc0003c0c0", NULL), MPROC_EPROTO);
    /* invalid UTF-8, the never-used byte, array as a key (ext: see test_msgpack_ext_*) */
    CHECK_EQ(mp_fails("a2c328", NULL), MPROC_EPROTO);
    CHECK_EQ(mp_fails("a3eda080", NULL), MPROC_EPROTO);
    CHECK_EQ(mp_fails("c1", NULL), MPROC_EPROTO);
    CHECK_EQ(mp_fails("8190c0", NULL), MPROC_EPROTO);
    CHECK_EQ(mp_fails("8180c0", NULL), MPROC_EPROTO);
    CHECK_EQ(mp_fails("", NULL), MPROC_EPROTO);
    /* uint64 beyond int64 */
    CHECK_EQ(mp_fails("cf8000000000000000", NULL), MPROC_ERANGE);
    /* limits */
    mproc_decode_limits lim = {.max_items = 3};
    CHECK_EQ(mp_fails("93010203", &lim), MPROC_EMSGSIZE);
    lim = (mproc_decode_limits){.max_bytes = 4};
    CHECK_EQ(mp_fails("92a3616263a3616263", &lim), MPROC_EMSGSIZE);
    lim = (mproc_decode_limits){.max_depth = 2};
    CHECK_EQ(mp_fails("91919100", &lim), MPROC_EPROTO);
    CHECK(strstr(mproc_errmsg(), "deeper"));
    /* deep nesting beyond the default depth: 100000 nested arrays */
    size_t n = 100000;
    uint8_t *deep = malloc(n + 1);
    memset(deep, 0x91, n);
    deep[n] = 0xc0;
    CHECK_EQ(mproc_msgpack_decode(deep, n + 1, NULL, &got), MPROC_EPROTO);
    lim = (mproc_decode_limits){.max_depth = 1000000}; /* capped internally */
    CHECK_EQ(mproc_msgpack_decode(deep, n + 1, &lim, &got), MPROC_EPROTO);
    /* 300 levels is fine with a raised limit (msgpack-c alone stops at 32) */
    lim = (mproc_decode_limits){.max_depth = 300};
    CHECK_OK(mproc_msgpack_decode(deep + n - 299, 300, &lim, &got));
    mproc_value_free(got);
    free(deep);
}


/* ------------------------------------------------------------ ext values */

static V *X(int8_t code, const char *p, size_t n) { return mproc_value_ext(code, p, n); }

MTEST(test_value_ext_builds_copies_compares_prints_and_keys_a_map)
{
    V *x = X(77, "ab\0", 3);
    CHECK(x);
    CHECK_EQ(mproc_value_type(x), MPROC_V_EXT);
    CHECK_EQ(mproc_value_ext_type(x), 77);
    size_t n = 0;
    CHECK(memcmp(mproc_value_as_bytes(x, &n), "ab\0", 3) == 0 && n == 3);
    CHECK_EQ(mproc_value_len(x), 3);
    CHECK(mproc_value_as_str(x, NULL) == NULL);
    check_repr(x, "ext(77, b'ab\\x00')");
    V *c = mproc_value_copy(x);
    CHECK(c && c != x);
    check_equal(c, x, "ext copy");
    V *other_code = X(78, "ab\0", 3), *other_bytes = X(77, "ab", 2), *bytes = B("ab\0", 3);
    CHECK(!mproc_value_equal(x, other_code));
    CHECK(!mproc_value_equal(x, other_bytes));
    CHECK(!mproc_value_equal(x, bytes)); /* types must match */
    /* a key: found by type code and bytes, distinct from equal bytes */
    V *m = M(3, mproc_value_copy(x), I(1), mproc_value_copy(other_code), I(2),
             mproc_value_copy(bytes), I(3));
    CHECK_EQ(mproc_value_len(m), 3);
    CHECK_EQ(mproc_value_as_int(mproc_value_map_find(m, x)), 1);
    CHECK_EQ(mproc_value_as_int(mproc_value_map_find(m, other_code)), 2);
    CHECK(mproc_value_map_find(m, other_bytes) == NULL);
    for (int i = 0; i < 50; i++) /* past 8 entries: through the hash index */
        CHECK_OK(mproc_value_map_set(m, X((int8_t)i, "k", 1), I(100 + i)));
    CHECK_EQ(mproc_value_as_int(mproc_value_map_find(m, x)), 1);
    V *k = X(-7, "k", 1);
    CHECK(mproc_value_map_find(m, k) == NULL);
    mproc_value_free(k);
    k = X(42, "k", 1);
    CHECK_EQ(mproc_value_as_int(mproc_value_map_find(m, k)), 142);
    mproc_value_free(k);
    check_repr(mproc_value_key_at(m, 0), "ext(77, b'ab\\x00')");
    mproc_value_free(m);

    V *empty = X(-1, NULL, 0);
    CHECK(empty && mproc_value_len(empty) == 0 && mproc_value_ext_type(empty) == -1);
    check_repr(empty, "ext(-1, b'')");
    CHECK(mproc_value_ext(1, NULL, 1) == NULL);
    CHECK_EQ(mproc_value_ext_type(bytes), INT_MIN);
    CHECK_EQ(mproc_value_ext_type(NULL), INT_MIN);
    /* no pickle form */
    mproc_buf out = {0};
    V *l = L(1, mproc_value_copy(x));
    CHECK_EQ(mproc_pickle_encode(l, 4, &out), MPROC_EINVAL);
    CHECK(strstr(mproc_errmsg(), "ext"));
    CHECK_EQ(out.len, 0);
    free(out.data);
    mproc_value_free(l);
    mproc_value_free(empty);
    mproc_value_free(other_code);
    mproc_value_free(other_bytes);
    mproc_value_free(bytes);
    mproc_value_free(c);
    mproc_value_free(x);
}

MTEST(test_msgpack_ext_encodes_every_size_form_and_decodes_hand_written_bytes)
{
    /* msgpack-c picks fixext for 1/2/4/8/16 bytes, ext8/16/32 otherwise */
    mp_vector(X(1, "\x00", 1), "d40100");
    mp_vector(X(2, "ab", 2), "d5026162");
    mp_vector(X(-1, "\0\0\0\0", 4), "d6ff00000000"); /* a timestamp, not interpreted */
    mp_vector(X(77, "01234567", 8), "d74d3031323334353637");
    mp_vector(X(127, "0123456789abcdef", 16), "d87f30313233343536373839616263646566");
    mp_vector(X(-128, "", 0), "c70080");
    mp_vector(X(5, "abc", 3), "c70305616263");
    mp_vector(L(2, X(77, "\x00\x00\x00\x00\x00\x00\x00\x01" "dict", 12), I(1)),
              "92c70c4d000000000000000164696374" "01");
    mp_vector(M(1, X(3, "k", 1), S("v")), "81d403" "6b" "a176");
    /* longer forms decode too */
    mp_decodes("c8000105" "41", X(5, "A", 1));
    mp_decodes("c90000000105" "41", X(5, "A", 1));
    mp_decodes("c7020742" "43", X(7, "BC", 2));
    /* 300 and 70000 bytes: ext16 and ext32 round trips */
    size_t sizes[] = {300, 70000};
    for (size_t i = 0; i < 2; i++) {
        char *p = malloc(sizes[i]);
        for (size_t j = 0; j < sizes[i]; j++)
            p[j] = (char)(j * 7);
        V *v = X(9, p, sizes[i]);
        mproc_buf out = {0};
        CHECK_OK(mproc_msgpack_encode(v, &out));
        CHECK_EQ(out.data[0], i == 0 ? 0xc8 : 0xc9);
        V *back = NULL;
        CHECK_OK(mproc_msgpack_decode(out.data, out.len, NULL, &back));
        check_equal(back, v, "ext round trip");
        mproc_value_free(back);
        /* the payload counts against max_bytes */
        mproc_decode_limits lim = {.max_bytes = sizes[i] - 1};
        CHECK_EQ(mproc_msgpack_decode(out.data, out.len, &lim, &back), MPROC_EMSGSIZE);
        /* truncated at every offset */
        for (size_t k = 0; k < out.len; k += (k < 8 ? 1 : 97))
            CHECK_EQ(mproc_msgpack_decode(out.data, k, NULL, &back), MPROC_EPROTO);
        free(out.data);
        free(p);
        mproc_value_free(v);
    }
    CHECK_EQ(mp_fails("d401", NULL), MPROC_EPROTO);   /* type code, no data */
    CHECK_EQ(mp_fails("d4", NULL), MPROC_EPROTO);     /* no type code */
    CHECK_EQ(mp_fails("c70201", NULL), MPROC_EPROTO); /* ext8 of 2, none there */
    CHECK(strstr(mproc_errmsg(), "ext"));
    CHECK_EQ(mp_fails("c9ffffffff01", NULL), MPROC_EMSGSIZE); /* huge length: over max_bytes */
    CHECK_EQ(mp_fails("c7", NULL), MPROC_EPROTO);
    mproc_decode_limits lim = {.max_bytes = 3};
    CHECK_EQ(mp_fails("92d50161" "62d5016364", &lim), MPROC_EMSGSIZE); /* 2 + 2 > 3 */
}

/* ------------------------------------------------------------ map and list edits */

static void check_map_ints(const V *m, const int *keys, size_t n)
{
    CHECK_EQ(mproc_value_len(m), n);
    for (size_t i = 0; i < n; i++) {
        CHECK_EQ(mproc_value_as_int(mproc_value_key_at(m, i)), keys[i]);
        CHECK_EQ(mproc_value_as_int(mproc_value_at(m, i)), -keys[i]);
        V *k = I(keys[i]);
        CHECK_EQ(mproc_value_as_int(mproc_value_map_find(m, k)), -keys[i]);
        mproc_value_free(k);
    }
}

MTEST(test_value_map_find_take_del_put_keep_order_and_index)
{
    V *m = M(3, S("a"), I(1), S("b"), L(1, L(0)), S("c"), I(3));
    V *k = S("b");
    CHECK(mproc_value_map_find(m, k) == mproc_value_at(m, 1)); /* borrowed */
    V *got = mproc_value_map_take(m, k);
    check_repr(got, "[[]]");
    mproc_value_free(got);
    check_repr(m, "{'a': 1, 'c': 3}");
    CHECK(mproc_value_map_take(m, k) == NULL);
    CHECK_EQ(mproc_value_map_del(m, k), MPROC_ENOENT);
    mproc_value_free(k);
    k = mproc_value_float(1.0);
    CHECK(mproc_value_map_find(m, k) == NULL);
    mproc_value_free(k);
    k = S("a");
    CHECK_OK(mproc_value_map_del(m, k));
    check_repr(m, "{'c': 3}");
    CHECK_EQ(mproc_value_map_del(m, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_value_map_del(k, k), MPROC_EINVAL); /* not a map */
    CHECK(mproc_value_map_take(k, k) == NULL && mproc_value_map_find(k, k) == NULL);
    /* put: the replaced value comes back, order kept; a new key gives NULL */
    V *old = (V *)1;
    CHECK_OK(mproc_value_map_put(m, S("c"), S("three"), &old));
    check_repr(old, "3");
    mproc_value_free(old);
    old = (V *)1;
    CHECK_OK(mproc_value_map_put(m, mproc_value_copy(k), I(1), &old));
    CHECK(old == NULL);
    CHECK_OK(mproc_value_map_put(m, S("a"), I(2), NULL));
    check_repr(m, "{'c': 'three', 'a': 2}");
    old = (V *)1;
    CHECK_EQ(mproc_value_map_put(m, L(0), I(1), &old), MPROC_EINVAL);
    CHECK(old == NULL);
    CHECK_EQ(mproc_value_map_put(k, S("x"), I(1), &old), MPROC_EINVAL);
    mproc_value_free(k);
    mproc_value_free(m);

    /* a big map under random deletes and inserts against a model */
    m = mproc_value_map();
    enum { N = 3000 };
    static int keys[2 * N];
    size_t n = 0;
    int next = 0;
    uint64_t r = 12345;
    for (int round = 0; round < 8000; round++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        unsigned pick = (unsigned)(r >> 33);
        if (n < 20 || pick % 3) {
            CHECK_OK(mproc_value_map_set(m, I(next), I(-next)));
            keys[n++] = next++;
        } else {
            size_t at = pick % 7 == 0 ? n - 1 : (pick / 7) % n; /* the last one, often */
            V *key = I(keys[at]);
            got = mproc_value_map_take(m, key);
            CHECK(got && mproc_value_as_int(got) == -keys[at]);
            mproc_value_free(got);
            CHECK(mproc_value_map_find(m, key) == NULL);
            mproc_value_free(key);
            memmove(keys + at, keys + at + 1, (n - at - 1) * sizeof *keys);
            n--;
        }
        if (round % 500 == 0)
            check_map_ints(m, keys, n);
    }
    check_map_ints(m, keys, n);
    /* empty it from the front, then refill: the index survives */
    while (n) {
        V *key = I(keys[0]);
        CHECK_OK(mproc_value_map_del(m, key));
        mproc_value_free(key);
        memmove(keys, keys + 1, --n * sizeof *keys);
        if (n % 211 == 0)
            check_map_ints(m, keys, n);
    }
    for (int i = 0; i < 100; i++) {
        CHECK_OK(mproc_value_map_set(m, I(i), I(-i)));
        keys[n++] = i;
    }
    check_map_ints(m, keys, n);
    mproc_value_free(m);
}

MTEST(test_value_list_insert_take_replace_reverse)
{
    V *l = L(0);
    CHECK_OK(mproc_value_insert(l, 0, I(2)));
    CHECK_OK(mproc_value_insert(l, 0, I(0)));
    CHECK_OK(mproc_value_insert(l, 1, I(1)));
    CHECK_OK(mproc_value_insert(l, 99, I(3))); /* past the end: append */
    CHECK_OK(mproc_value_insert(l, 4, I(4)));
    check_repr(l, "[0, 1, 2, 3, 4]");
    CHECK_EQ(mproc_value_insert(l, 0, l), MPROC_EINVAL); /* itself: refused, not freed */
    CHECK_EQ(mproc_value_insert(l, 0, NULL), MPROC_EINVAL);
    V *five = I(5);
    CHECK_EQ(mproc_value_insert(five, 0, I(6)), MPROC_EINVAL); /* the item is freed */
    V *got = mproc_value_take_at(l, 1);
    CHECK_EQ(mproc_value_as_int(got), 1);
    mproc_value_free(got);
    got = mproc_value_take_at(l, 3);
    CHECK_EQ(mproc_value_as_int(got), 4);
    mproc_value_free(got);
    CHECK(mproc_value_take_at(l, 3) == NULL);
    CHECK(mproc_value_take_at(five, 0) == NULL);
    check_repr(l, "[0, 2, 3]");
    got = mproc_value_replace_at(l, 2, S("three"));
    CHECK_EQ(mproc_value_as_int(got), 3);
    mproc_value_free(got);
    CHECK(mproc_value_replace_at(l, 3, S("x")) == NULL); /* out of range: item freed */
    CHECK(mproc_value_replace_at(five, 0, S("x")) == NULL);
    CHECK(mproc_value_replace_at(l, 0, l) == NULL);
    check_repr(l, "[0, 2, 'three']");
    CHECK_OK(mproc_value_reverse(l));
    check_repr(l, "['three', 2, 0]");
    CHECK_EQ(mproc_value_reverse(five), MPROC_EINVAL);
    mproc_value_free(five);
    /* even and odd lengths, empty */
    V *e = L(0);
    CHECK_OK(mproc_value_reverse(e));
    CHECK_OK(mproc_value_append(e, I(1)));
    CHECK_OK(mproc_value_reverse(e));
    CHECK_OK(mproc_value_append(e, I(2)));
    CHECK_OK(mproc_value_reverse(e));
    check_repr(e, "[2, 1]");
    mproc_value_free(e);
    mproc_value_free(l);

    /* a taken subtree is the caller's, intact */
    V *outer = L(2, I(1), L(1, L(1, L(1, L(0)))));
    got = mproc_value_take_at(outer, 1);
    check_repr(got, "[[[[]]]]");
    mproc_value_free(got);
    CHECK_OK(mproc_value_insert(outer, 0, L(0)));
    check_repr(outer, "[[], 1]");
    mproc_value_free(outer);
}

static int cmp_of(V *a, V *b)
{
    int c = 99;
    CHECK_OK(mproc_value_compare(a, b, &c));
    int back = 99;
    CHECK_OK(mproc_value_compare(b, a, &back));
    CHECK(back == -c);
    mproc_value_free(a);
    mproc_value_free(b);
    return c;
}

static void cmp_fails(V *a, V *b, const char *msg)
{
    int c = 99;
    CHECK_EQ(mproc_value_compare(a, b, &c), MPROC_EINVAL);
    CHECK(c == 99);
    if (msg && strcmp(mproc_errmsg(), msg) != 0) {
        fprintf(stderr, "message: %s\n   want: %s\n", mproc_errmsg(), msg);
        _exit(1);
    }
    mproc_value_free(a);
    mproc_value_free(b);
}

#define F mproc_value_float
#define T mproc_value_bool

MTEST(test_value_compare_is_pythons_ordering)
{
    /* numbers across int, float and bool, exactly */
    CHECK_EQ(cmp_of(I(1), I(2)), -1);
    CHECK_EQ(cmp_of(I(INT64_MIN), I(INT64_MAX)), -1);
    CHECK_EQ(cmp_of(I(1), F(1.0)), 0);
    CHECK_EQ(cmp_of(T(true), I(1)), 0);
    CHECK_EQ(cmp_of(T(true), F(0.5)), 1);
    CHECK_EQ(cmp_of(T(false), T(true)), -1);
    CHECK_EQ(cmp_of(I(1), F(1.5)), -1);
    CHECK_EQ(cmp_of(I(-1), F(-1.5)), 1);
    CHECK_EQ(cmp_of(I(-2), F(-1.5)), -1);
    CHECK_EQ(cmp_of(I(0), F(-0.0)), 0);
    CHECK_EQ(cmp_of(I(INT64_MAX), F(0x1p63)), -1);   /* (double)INT64_MAX would be equal */
    CHECK_EQ(cmp_of(I(INT64_MIN), F(-0x1p63)), 0);
    CHECK_EQ(cmp_of(I(INT64_MIN + 1), F(-0x1p63)), 1);
    CHECK_EQ(cmp_of(I((1LL << 53) + 1), F(0x1p53)), 1); /* not rounded to 2^53 */
    CHECK_EQ(cmp_of(I(INT64_MAX), F(INFINITY)), -1);
    CHECK_EQ(cmp_of(I(INT64_MIN), F(-INFINITY)), 1);
    CHECK_EQ(cmp_of(F(1e300), F(INFINITY)), -1);
    /* NaN: neither less nor greater */
    CHECK_EQ(cmp_of(F(NAN), I(1)), 0);
    CHECK_EQ(cmp_of(F(NAN), F(NAN)), 0);
    /* str by code point, bytes bytewise */
    CHECK_EQ(cmp_of(S("abc"), S("abd")), -1);
    CHECK_EQ(cmp_of(S("ab"), S("abc")), -1);
    CHECK_EQ(cmp_of(S(""), S("")), 0);
    CHECK_EQ(cmp_of(S("\xc3\xa9"), S("z")), 1);                 /* U+00E9 > U+007A */
    CHECK_EQ(cmp_of(S("\xef\xbf\xbf"), S("\xf0\x9f\x98\x80")), -1); /* U+FFFF < U+1F600 */
    CHECK_EQ(cmp_of(mproc_value_strn("a\0", 2), S("a")), 1);
    CHECK_EQ(cmp_of(B("\x80", 1), B("\x7f\xff", 2)), 1);
    /* lists lexicographically, items tested for equality first */
    CHECK_EQ(cmp_of(L(2, I(1), I(2)), L(2, I(1), I(3))), -1);
    CHECK_EQ(cmp_of(L(1, I(1)), L(2, I(1), I(0))), -1);
    CHECK_EQ(cmp_of(L(0), L(0)), 0);
    CHECK_EQ(cmp_of(L(2, I(1), S("b")), L(2, F(1.0), S("a"))), 1);
    CHECK_EQ(cmp_of(L(2, mproc_value_nil(), I(1)), L(2, mproc_value_nil(), I(2))), -1);
    CHECK_EQ(cmp_of(L(2, M(1, I(1), I(1)), I(1)), L(2, M(1, I(1), I(1)), I(0))), 1);
    CHECK_EQ(cmp_of(L(1, L(1, L(1, I(1)))), L(1, L(1, L(1, I(2))))), -1);
    /* distinct NaNs are not equal, so they decide, as neither-less */
    CHECK_EQ(cmp_of(L(2, F(NAN), I(1)), L(2, F(NAN), I(2))), 0);
    /* what Python refuses */
    cmp_fails(S("a"), I(1), "'<' not supported between instances of 'str' and 'int'");
    cmp_fails(mproc_value_nil(), mproc_value_nil(),
              "'<' not supported between instances of 'NoneType' and 'NoneType'");
    cmp_fails(S("a"), B("a", 1), "'<' not supported between instances of 'str' and 'bytes'");
    cmp_fails(M(0), M(0), "'<' not supported between instances of 'dict' and 'dict'");
    cmp_fails(L(2, I(1), I(2)), L(2, I(1), S("x")),
              "'<' not supported between instances of 'int' and 'str'");
    cmp_fails(L(1, mproc_value_nil()), L(1, I(0)),
              "'<' not supported between instances of 'NoneType' and 'int'");
    cmp_fails(X(1, "a", 1), X(1, "b", 1),
              "'<' not supported between instances of 'ExtType' and 'ExtType'");
    cmp_fails(mproc_value_error("KeyError", "k"), I(1),
              "'<' not supported between instances of 'KeyError' and 'int'");
    cmp_fails(L(1, I(1)), I(1), "'<' not supported between instances of 'list' and 'int'");
    int c;
    CHECK_EQ(mproc_value_compare(NULL, NULL, &c), MPROC_EINVAL);
    /* deep lists: refused past the nesting cap, not a stack overflow */
    V *a = L(0), *b = L(0), *ca = a, *cb = b;
    for (int i = 0; i < 20000; i++) {
        V *x = L(0), *y = L(0);
        CHECK_OK(mproc_value_append(ca, x));
        CHECK_OK(mproc_value_append(cb, y));
        ca = x;
        cb = y;
    }
    CHECK_EQ(mproc_value_compare(a, b, &c), MPROC_EINVAL);
    mproc_value_free(a);
    mproc_value_free(b);
}

/* The stable reference: insertion sort by mproc_value_compare. */
static void insertion_sort(V *l, bool reverse)
{
    size_t n = mproc_value_len(l);
    for (size_t i = 1; i < n; i++) {
        size_t j = i;
        while (j > 0) {
            int c;
            CHECK_OK(mproc_value_compare(mproc_value_at(l, j), mproc_value_at(l, j - 1), &c));
            if (reverse ? c <= 0 : c >= 0)
                break;
            V *x = mproc_value_take_at(l, j);
            CHECK_OK(mproc_value_insert(l, j - 1, x));
            j--;
        }
    }
}

MTEST(test_value_sort_is_stable_and_all_or_nothing)
{
    /* 1, 1.0 and True are equal: they keep their order, also reversed */
    V *l = L(6, F(1.0), I(0), T(true), I(1), F(-0.5), I(2));
    CHECK_OK(mproc_value_sort(l, false));
    check_repr(l, "[-0.5, 0, 1.0, True, 1, 2]");
    CHECK_OK(mproc_value_sort(l, true));
    check_repr(l, "[2, 1.0, True, 1, 0, -0.5]");
    mproc_value_free(l);
    l = L(4, S("b"), S("a"), S("\xc3\xa9"), S("ab"));
    CHECK_OK(mproc_value_sort(l, false));
    check_repr(l, "['a', 'ab', 'b', '\xc3\xa9']");
    mproc_value_free(l);
    l = L(3, L(2, I(2), S("x")), L(1, I(1)), L(2, I(2), S("a")));
    CHECK_OK(mproc_value_sort(l, false));
    check_repr(l, "[[1], [2, 'a'], [2, 'x']]");
    mproc_value_free(l);
    /* nothing to compare: fine, as in Python */
    l = L(1, mproc_value_nil());
    CHECK_OK(mproc_value_sort(l, false));
    mproc_value_free(l);
    l = L(0);
    CHECK_OK(mproc_value_sort(l, true));
    mproc_value_free(l);
    CHECK_EQ(mproc_value_sort(NULL, false), MPROC_EINVAL);
    /* all or nothing */
    l = L(6, I(5), I(3), I(4), S("a"), I(1), I(2));
    V *before = mproc_value_copy(l);
    CHECK_EQ(mproc_value_sort(l, false), MPROC_EINVAL);
    CHECK(strstr(mproc_errmsg(), "not supported between instances of"));
    check_equal(l, before, "list after a failed sort");
    CHECK_EQ(mproc_value_sort(l, true), MPROC_EINVAL);
    check_equal(l, before, "list after a failed reverse sort");
    mproc_value_free(before);
    mproc_value_free(l);
    l = L(2, mproc_value_nil(), mproc_value_nil());
    CHECK_EQ(mproc_value_sort(l, false), MPROC_EINVAL);
    mproc_value_free(l);
    /* NaNs do not break it */
    l = L(5, F(3), F(NAN), F(1), F(NAN), F(2));
    CHECK_OK(mproc_value_sort(l, false));
    CHECK_EQ(mproc_value_len(l), 5);
    mproc_value_free(l);
    /* random lists of equal-valued ints, floats and bools against the stable reference */
    uint64_t r = 99;
    for (size_t n = 0; n < 300; n += 1 + n / 3) {
        for (int rev = 0; rev < 2; rev++) {
            l = L(0);
            for (size_t i = 0; i < n; i++) {
                r = r * 6364136223846793005ull + 1442695040888963407ull;
                unsigned x = (unsigned)(r >> 33);
                int k = (int)(x % 12);
                CHECK_OK(mproc_value_append(l, x % 3 == 0   ? F(k)
                                               : x % 3 == 1 ? I(k)
                                                            : T(k % 2)));
            }
            V *want = mproc_value_copy(l);
            insertion_sort(want, rev);
            CHECK_OK(mproc_value_sort(l, rev));
            check_equal(l, want, "merge sort vs stable insertion sort");
            mproc_value_free(want);
            mproc_value_free(l);
        }
    }
    /* a large one is ordered */
    l = L(0);
    for (int i = 0; i < 100000; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        CHECK_OK(mproc_value_append(l, I((int64_t)(r >> 20))));
    }
    CHECK_OK(mproc_value_sort(l, false));
    for (size_t i = 1; i < mproc_value_len(l); i++)
        CHECK(mproc_value_as_int(mproc_value_at(l, i - 1)) <=
              mproc_value_as_int(mproc_value_at(l, i)));
    mproc_value_free(l);
}

#undef F
#undef T

/* ------------------------------------------------------------ pickle: Python -> C */

/* The values Python pickles, in order; tuples/sets arrive as lists. */
static const char py_values[] =
    "import sys, pickle\n"
    "x = [1, 2]\n"
    "vals = [None, True, False, 0, -1, 2**31, 2**63-1, -2**63, 1.5, float('inf'),\n"
    "  float('nan'), '', 'h\\u00e9llo', 'a\\x00" "b', b'', b'\\xff', bytearray(b'ab'), (), (1,),\n"
    "  (1, 2, 3), [1, [2, [3]]], {'a': 1, 2: [b'x']}, {1, 2}, frozenset(),\n"
    "  [[i, str(i)] for i in range(2000)], [x, x, x], ValueError('boom'), KeyError('k'),\n"
    "  'snow \\u2603 and \\U0001f600', [-2**31, 2**31-1, 255, 256, 65535, 65536],\n"
    "  {'nested': {'d': [None, True, 1.25e-300]}},\n"
    "  'quote\\'s \"dq\" \\\\ \\n \\r \\x1a end', list(range(3000)),\n"
    "  {str(i): i for i in range(1500)}, [1.0, -0.0, 1e100], Exception(), bytearray(),\n"
    "  [b'\\x00\\x80\\xff' * 100], (x, (x, x)), StopIteration('s'), 'x' * 300,\n"
    "  OSError('os'), UserWarning('w')]\n";

static V *expected_value(size_t i)
{
    switch (i) {
    case 0: return mproc_value_nil();
    case 1: return mproc_value_bool(true);
    case 2: return mproc_value_bool(false);
    case 3: return I(0);
    case 4: return I(-1);
    case 5: return I(2147483648);
    case 6: return I(INT64_MAX);
    case 7: return I(INT64_MIN);
    case 8: return mproc_value_float(1.5);
    case 9: return mproc_value_float(INFINITY);
    case 10: return mproc_value_float(NAN);
    case 11: return S("");
    case 12: return S("h\xc3\xa9llo");
    case 13: return mproc_value_strn("a\0b", 3);
    case 14: return B("", 0);
    case 15: return B("\xff", 1);
    case 16: return B("ab", 2);
    case 17: return L(0);
    case 18: return L(1, I(1));
    case 19: return L(3, I(1), I(2), I(3));
    case 20: return L(2, I(1), L(2, I(2), L(1, I(3))));
    case 21: return M(2, S("a"), I(1), I(2), L(1, B("x", 1)));
    case 22: return L(2, I(1), I(2));
    case 23: return L(0);
    case 24: {
        V *l = mproc_value_list();
        char t[16];
        for (int k = 0; k < 2000; k++) {
            snprintf(t, sizeof t, "%d", k);
            CHECK_OK(mproc_value_append(l, L(2, I(k), S(t))));
        }
        return l;
    }
    case 25: return L(3, L(2, I(1), I(2)), L(2, I(1), I(2)), L(2, I(1), I(2)));
    case 26: return mproc_value_error("ValueError", "boom");
    case 27: return mproc_value_error("KeyError", "k");
    case 28: return S("snow \xe2\x98\x83 and \xf0\x9f\x98\x80");
    case 29: return L(6, I(INT32_MIN), I(INT32_MAX), I(255), I(256), I(65535), I(65536));
    case 30: return M(1, S("nested"), M(1, S("d"), L(3, mproc_value_nil(), mproc_value_bool(true),
                                                     mproc_value_float(1.25e-300))));
    case 31: return S("quote's \"dq\" \\ \n \r \x1a end");
    case 32: {
        V *l = mproc_value_list();
        for (int k = 0; k < 3000; k++)
            CHECK_OK(mproc_value_append(l, I(k)));
        return l;
    }
    case 33: {
        V *m = mproc_value_map();
        char t[16];
        for (int k = 0; k < 1500; k++) {
            snprintf(t, sizeof t, "%d", k);
            CHECK_OK(mproc_value_map_set(m, S(t), I(k)));
        }
        return m;
    }
    case 34: return L(3, mproc_value_float(1.0), mproc_value_float(-0.0), mproc_value_float(1e100));
    case 35: return mproc_value_error("Exception", "");
    case 36: return B("", 0);
    case 37: {
        char b[300];
        for (int k = 0; k < 300; k += 3)
            memcpy(b + k, "\x00\x80\xff", 3);
        return L(1, B(b, 300));
    }
    case 38: return L(2, L(2, I(1), I(2)), L(2, L(2, I(1), I(2)), L(2, I(1), I(2))));
    case 39: return mproc_value_error("StopIteration", "s");
    case 40: {
        char s[301];
        memset(s, 'x', 300);
        s[300] = 0;
        return S(s);
    }
    case 41: return mproc_value_error("OSError", "os");
    case 42: return mproc_value_error("UserWarning", "w");
    default: return NULL;
    }
}

MTEST(test_pickle_decodes_what_python_pickles_protocols_0_to_5)
{
    char script[8192];
    snprintf(script, sizeof script,
             "%s"
             "for p in range(6):\n"
             "    for i, v in enumerate(vals):\n"
             "        print(p, i, pickle.dumps(v, protocol=p).hex())\n",
             py_values);
    char *out = python(script, NULL);
    size_t count = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        int p;
        size_t i;
        int off = 0;
        CHECK(sscanf(line, "%d %zu %n", &p, &i, &off) == 2);
        const char *hex = line + off;
        size_t n = strlen(hex) / 2;
        uint8_t *bytes = malloc(n + 1);
        unhex(hex, bytes, n);
        V *got = NULL;
        int rc = mproc_pickle_decode(bytes, n, NULL, &got);
        if (rc != 0) {
            fprintf(stderr, "protocol %d value %zu: %s: %s\n", p, i, mproc_errname(rc),
                    mproc_errmsg());
            _exit(1);
        }
        V *want = expected_value(i);
        CHECK(want);
        char what[64];
        snprintf(what, sizeof what, "protocol %d value %zu", p, i);
        check_equal(got, want, what);
        mproc_value_free(got);
        mproc_value_free(want);
        free(bytes);
        count++;
    }
    CHECK_EQ(count, 6 * 43);
    free(out);
}

MTEST(test_pickle_ints_beyond_int64_are_erange)
{
    char *out = python("import pickle\n"
                       "for p in range(6):\n"
                       "    for v in (2**63, -2**63-1, 2**100, -2**200):\n"
                       "        print(pickle.dumps(v, protocol=p).hex())\n",
                       NULL);
    int count = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        uint8_t b[256];
        size_t n = unhex(line, b, sizeof b);
        V *got = NULL;
        CHECK_EQ(mproc_pickle_decode(b, n, NULL, &got), MPROC_ERANGE);
        CHECK(got == NULL);
        count++;
    }
    CHECK_EQ(count, 24);
    free(out);
}

/* ------------------------------------------------------------ pickle: C -> Python */

MTEST(test_pickle_encodes_what_python_loads_protocols_4_and_5)
{
    V *big = mproc_value_list(), *bigm = mproc_value_map();
    for (int i = 0; i < 2500; i++) {
        CHECK_OK(mproc_value_append(big, I(i)));
        CHECK_OK(mproc_value_map_set(bigm, I(i), S("v")));
    }
    V *vals = L(28, mproc_value_nil(), mproc_value_bool(true), mproc_value_bool(false), I(0),
                I(-1), I(255), I(256), I(65535), I(65536), I(INT32_MAX), I(INT32_MIN),
                I(2147483648), I(INT64_MAX), I(INT64_MIN), mproc_value_float(1.5),
                mproc_value_float(-INFINITY), S(""), S("h\xc3\xa9llo"),
                mproc_value_strn("a\0b", 3), S("\xf0\x9f\x98\x80"), B("", 0),
                B("\xff\x00", 2), L(0), L(2, I(1), L(2, I(2), L(1, I(3)))),
                M(6, S("a"), I(1), I(2), L(1, B("x", 1)), mproc_value_nil(),
                  mproc_value_float(1.5), B("k", 1), S("v"), mproc_value_float(2.5), I(2),
                  mproc_value_bool(true), I(3)),
                big, bigm, mproc_value_float(NAN));
    V *errs = L(3, mproc_value_error("ValueError", "boom"), mproc_value_error("KeyError", "k"),
                mproc_value_error("Exception", ""));
    char path[] = "/tmp/mproc_test_value_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    for (int proto = 4; proto <= 5; proto++) {
        mproc_buf a = {0}, b = {0};
        CHECK_OK(mproc_pickle_encode(vals, proto, &a));
        CHECK_OK(mproc_pickle_encode(errs, proto, &b));
        uint32_t la = (uint32_t)a.len, lb = (uint32_t)b.len;
        CHECK(write(fd, &la, 4) == 4 && write(fd, a.data, a.len) == (ssize_t)a.len);
        CHECK(write(fd, &lb, 4) == 4 && write(fd, b.data, b.len) == (ssize_t)b.len);
        /* and our own decoder agrees */
        V *back;
        CHECK_OK(mproc_pickle_decode(a.data, a.len, NULL, &back));
        check_equal(back, vals, "pickle self round trip");
        mproc_value_free(back);
        CHECK_OK(mproc_pickle_decode(b.data, b.len, NULL, &back));
        check_equal(back, errs, "pickle self round trip (errors)");
        mproc_value_free(back);
        free(a.data);
        free(b.data);
    }
    close(fd);
    char *out = python(
        "import sys, struct, pickle, math\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "want = [None, True, False, 0, -1, 255, 256, 65535, 65536, 2**31-1, -2**31, 2**31,\n"
        "  2**63-1, -2**63, 1.5, float('-inf'), '', 'h\\u00e9llo', 'a\\x00" "b', '\\U0001f600',\n"
        "  b'', b'\\xff\\x00', [], [1, [2, [3]]],\n"
        "  {'a': 1, 2: [b'x'], None: 1.5, b'k': 'v', 2.5: 2, True: 3},\n"
        "  list(range(2500)), {i: 'v' for i in range(2500)}]\n"
        "off = 0\n"
        "for proto in (4, 5):\n"
        "    n, = struct.unpack_from('<I', data, off); off += 4\n"
        "    blob = data[off:off+n]; off += n\n"
        "    assert blob[:2] == bytes([0x80, proto]), blob[:2]\n"
        "    got = pickle.loads(blob)\n"
        "    assert math.isnan(got[-1]) and got[:-1] == want, got\n"
        "    assert [type(x) for x in got[:-1]] == [type(x) for x in want]\n"
        "    n, = struct.unpack_from('<I', data, off); off += 4\n"
        "    e = pickle.loads(data[off:off+n]); off += n\n"
        "    assert type(e[0]) is ValueError and e[0].args == ('boom',), e\n"
        "    assert type(e[1]) is KeyError and e[1].args == ('k',), e\n"
        "    assert type(e[2]) is Exception and str(e[2]) == '', e\n"
        "    try:\n"
        "        raise e[0]\n"
        "    except ValueError as x:\n"
        "        assert str(x) == 'boom'\n"
        "print('OK')\n",
        path);
    unlink(path);
    CHECK(strcmp(out, "OK\n") == 0);
    free(out);
    mproc_value_free(vals);
    mproc_value_free(errs);
    /* a made-up exception name is refused rather than sent for Python to fail on */
    V *bad = mproc_value_error("os.system", "x");
    mproc_buf o = {0};
    CHECK_EQ(mproc_pickle_encode(bad, 4, &o), MPROC_EINVAL);
    V *one = I(1);
    CHECK_EQ(mproc_pickle_encode(one, 3, &o), MPROC_EINVAL);
    CHECK_OK(mproc_pickle_encode(one, 0, &o)); /* 0 = protocol 4 */
    mproc_value_free(one);
    CHECK(o.len == 5 && memcmp(o.data, "\x80\x04K\x01.", 5) == 0);
    free(o.data);
    mproc_value_free(bad);
}

/* ------------------------------------------------------------ pickle: hostile */

static int pk_decode(const void *p, size_t n, const mproc_decode_limits *lim)
{
    V *got = (V *)1;
    int rc = mproc_pickle_decode(p, n, lim, &got);
    if (rc == 0)
        mproc_value_free(got);
    else
        CHECK(got == NULL);
    return rc;
}

#define PK(lit) pk_decode(lit, sizeof(lit) - 1, NULL)

MTEST(test_pickle_never_imports_or_calls)
{
    const char *marker = "/tmp/mproc_test_value_pwned";
    unlink(marker);
    char *out = python(
        "import pickle, os, pickletools\n"
        "class E:\n"
        "    def __reduce__(self):\n"
        "        return (os.system, ('touch /tmp/mproc_test_value_pwned',))\n"
        "for p in range(6):\n"
        "    print(pickle.dumps(E(), protocol=p).hex())\n"
        "print(pickle.dumps(os.getcwd, protocol=4).hex())\n"
        "print(pickle.dumps(eval, protocol=4).hex())\n",
        NULL);
    int count = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        uint8_t b[512];
        size_t n = unhex(line, b, sizeof b);
        CHECK_EQ(pk_decode(b, n, NULL), MPROC_EPROTO);
        CHECK(strstr(mproc_errmsg(), "GLOBAL") && strstr(mproc_errmsg(), "refused"));
        count++;
    }
    CHECK_EQ(count, 8);
    free(out);
    CHECK_EQ(PK("cos\nsystem\n(S'touch /tmp/mproc_test_value_pwned'\ntR."), MPROC_EPROTO);
    CHECK(strstr(mproc_errmsg(), "GLOBAL os.system"));
    CHECK_EQ(PK("\x80\x04\x8c\x08" "builtins\x8c\x04" "eval\x93."), MPROC_EPROTO);
    CHECK(strstr(mproc_errmsg(), "STACK_GLOBAL builtins.eval"));
    CHECK_EQ(PK("\x80\x04\x8c\x08" "builtins\x8c\x0a__import__\x93."), MPROC_EPROTO);
    CHECK_EQ(PK("cbuiltins\ngetattr\n."), MPROC_EPROTO);
    CHECK_EQ(PK("cposix\nsystem\n."), MPROC_EPROTO);
    CHECK_EQ(PK("csubprocess\nValueError\n(tR."), MPROC_EPROTO); /* module matters */
    struct stat st;
    CHECK(stat(marker, &st) != 0);

    /* every refused opcode is named */
    static const struct {
        const char *pk;
        size_t n;
        const char *name;
    } ops[] = {
        {"N)R.", 4, "REDUCE"},          {"}Nb.", 4, "BUILD"},
        {"(ios\nsystem\n.", 13, "INST"}, {"(No.", 4, "OBJ"},
        {"N)\x81.", 4, "NEWOBJ"},       {"N)}\x92.", 5, "NEWOBJ_EX"},
        {"P0\n.", 4, "PERSID"},         {"NQ.", 3, "BINPERSID"},
        {"\x82\x01.", 3, "EXT1"},       {"\x83\x01\x00.", 4, "EXT2"},
        {"\x84\x01\x00\x00\x00.", 6, "EXT4"}, {"\x97.", 2, "NEXT_BUFFER"},
        {"N\x98.", 3, "READONLY_BUFFER"},
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        CHECK_EQ(pk_decode(ops[i].pk, ops[i].n, NULL), MPROC_EPROTO);
        if (!strstr(mproc_errmsg(), ops[i].name)) {
            fprintf(stderr, "%s: %s\n", ops[i].name, mproc_errmsg());
            _exit(1);
        }
    }
    /* the whitelisted exception shape cannot smuggle BUILD, and its global is inert alone */
    CHECK_EQ(PK("\x80\x04\x8c\x08" "builtins\x8c\x0aValueError\x93\x8c\x01x\x85R}b."), MPROC_EPROTO);
    CHECK_EQ(PK("\x80\x04\x8c\x08" "builtins\x8c\x0aValueError\x93."), MPROC_EPROTO);
    CHECK_EQ(PK("\x80\x04]\x8c\x08" "builtins\x8c\x0aValueError\x93" "a."), MPROC_EPROTO);
    CHECK_EQ(PK("\x80\x04\x8c\x08" "builtins\x8c\x0aValueError\x93]R."), 0); /* ValueError(*[]) */
    CHECK_EQ(PK("\x80\x04\x8c\x08" "builtins\x8c\x03set\x93\x8c\x01x\x85R."), MPROC_EPROTO);
    CHECK_EQ(PK("unknown"), MPROC_EPROTO);
    CHECK(stat(marker, &st) != 0);
}

MTEST(test_pickle_rejects_truncation_at_every_offset)
{
    char *out = python("import pickle\n"
                       "v = {'a': [1, 2**40, -2**63, 1.5, None, True], 'b': (b'xy', 'h\\u00e9'),\n"
                       "     3: {4, 5}, 'e': ValueError('boom'), 'r': [[7]] * 3, 'f': 0.1}\n"
                       "for p in range(6):\n"
                       "    print(pickle.dumps(v, protocol=p).hex())\n",
                       NULL);
    int count = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        uint8_t b[2048];
        size_t n = unhex(line, b, sizeof b);
        CHECK_EQ(pk_decode(b, n, NULL), 0);
        for (size_t i = 0; i < n; i++) {
            int rc = pk_decode(b, i, NULL);
            if (rc != MPROC_EPROTO) {
                fprintf(stderr, "protocol %d prefix %zu/%zu: rc %d\n", count, i, n, rc);
                _exit(1);
            }
        }
        /* and trailing bytes after STOP */
        b[n] = 'N';
        CHECK_EQ(pk_decode(b, n + 1, NULL), MPROC_EPROTO);
        count++;
    }
    CHECK_EQ(count, 6);
    free(out);
}

MTEST(test_pickle_limits_depth_items_bytes_and_lengths)
{
    /* 300 nested lists: ] x300, a x299 */
    mproc_buf b = {0};
    CHECK_OK(mproc_buf_append(&b, "\x80\x02", 2));
    for (int i = 0; i < 300; i++)
        CHECK_OK(mproc_buf_append(&b, "]", 1));
    for (int i = 0; i < 299; i++)
        CHECK_OK(mproc_buf_append(&b, "a", 1));
    CHECK_OK(mproc_buf_append(&b, ".", 1));
    CHECK_EQ(pk_decode(b.data, b.len, NULL), MPROC_EPROTO);
    CHECK(strstr(mproc_errmsg(), "deeper"));
    mproc_decode_limits lim = {.max_depth = 300};
    CHECK_EQ(pk_decode(b.data, b.len, &lim), 0);
    free(b.data);
    /* a MARK/TUPLE nest 100000 deep is refused, not recursed */
    b = (mproc_buf){0};
    for (int i = 0; i < 100000; i++)
        CHECK_OK(mproc_buf_append(&b, "(", 1));
    CHECK_OK(mproc_buf_append(&b, "N", 1));
    for (int i = 0; i < 100000; i++)
        CHECK_OK(mproc_buf_append(&b, "t", 1));
    CHECK_OK(mproc_buf_append(&b, ".", 1));
    CHECK_EQ(pk_decode(b.data, b.len, NULL), MPROC_EPROTO);
    free(b.data);

    /* memo-GET bomb: x = [x, x] sixty times over */
    b = (mproc_buf){0};
    CHECK_OK(mproc_buf_append(&b, "\x80\x04]\x94", 4));
    for (int i = 0; i < 60; i++) {
        char step[16];
        int n = snprintf(step, sizeof step, "h%ch%c\x86\x94", i, i);
        CHECK_OK(mproc_buf_append(&b, step, (size_t)n));
    }
    CHECK_OK(mproc_buf_append(&b, ".", 1));
    double t0 = mproc_monotonic();
    CHECK_EQ(pk_decode(b.data, b.len, NULL), MPROC_EMSGSIZE);
    lim = (mproc_decode_limits){.max_items = 1000};
    CHECK_EQ(pk_decode(b.data, b.len, &lim), MPROC_EMSGSIZE);
    CHECK(mproc_monotonic() - t0 < 10.0);
    free(b.data);
    /* ...while honest sharing expands fine: 1000 references to a 1000-item list */
    char *out = python("import pickle\n"
                       "x = list(range(1000))\n"
                       "print(pickle.dumps([x] * 1000, protocol=4).hex())\n",
                       NULL);
    size_t n = strlen(out) / 2;
    uint8_t *shared = malloc(n);
    unhex(out, shared, n);
    V *got = NULL;
    CHECK_OK(mproc_pickle_decode(shared, n, NULL, &got));
    CHECK_EQ(mproc_value_len(got), 1000);
    CHECK_EQ(mproc_value_as_int(mproc_value_at(mproc_value_at(got, 999), 999)), 999);
    mproc_value_free(got);
    free(shared);
    free(out);

    /* huge declared lengths: no allocation, just EPROTO */
    CHECK_EQ(PK("\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f" "abc."), MPROC_EPROTO);
    CHECK_EQ(PK("\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\xff" "abc."), MPROC_EPROTO);
    CHECK_EQ(PK("\x80\x04\x96\x00\x00\x00\x00\x01\x00\x00\x00" "abc."), MPROC_EPROTO);
    CHECK_EQ(PK("X\xff\xff\xff\xff" "abc."), MPROC_EPROTO);
    CHECK_EQ(PK("T\xff\xff\xff\xff" "abc."), MPROC_EPROTO); /* negative */
    CHECK_EQ(PK("\x8b\xff\xff\xff\x7f" "abc."), MPROC_EPROTO);
    CHECK_EQ(PK("\x8b\xff\xff\xff\xff" "abc."), MPROC_EPROTO);
    CHECK_EQ(PK("\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\xff" "N."), MPROC_EPROTO);
    CHECK_EQ(PK("\x80\x06N."), MPROC_EPROTO);
    /* byte and item limits */
    lim = (mproc_decode_limits){.max_bytes = 3};
    CHECK_EQ(pk_decode("\x80\x04\x8c\x04" "abcd.", 8, &lim), MPROC_EMSGSIZE);
    lim = (mproc_decode_limits){.max_items = 2};
    CHECK_EQ(pk_decode("\x80\x04](KKKe.", 10, &lim), MPROC_EMSGSIZE);
    /* memo misuse, stack misuse, odd dicts, unhashable keys */
    CHECK_EQ(PK("h\x05."), MPROC_EPROTO);
    CHECK_EQ(PK("a."), MPROC_EPROTO);
    CHECK_EQ(PK("NN."), MPROC_EPROTO);
    CHECK_EQ(PK("(N."), MPROC_EPROTO);
    CHECK_EQ(PK("t."), MPROC_EPROTO);
    CHECK_EQ(PK("(Nd."), MPROC_EPROTO);
    CHECK_EQ(PK("}])Ns."), MPROC_EPROTO);
    CHECK_EQ(PK("NN\x8d."), MPROC_EPROTO);
    CHECK_EQ(PK("Na."), MPROC_EPROTO);
    /* opcodes may not reach below the innermost MARK (found by fuzzing) */
    CHECK_EQ(PK("(\x8c\x01" "a\x94]]C\x01x(\x94" "au."), MPROC_EPROTO);
    CHECK_EQ(PK("](a."), MPROC_EPROTO);
    CHECK_EQ(PK("}NN(s."), MPROC_EPROTO);
    CHECK_EQ(PK("N(\x85."), MPROC_EPROTO);
    CHECK_EQ(PK("](e."), 0); /* extending by nothing is fine */
    CHECK_EQ(PK("N(q\x00."), MPROC_EPROTO);
    CHECK_EQ(PK("I12x\n."), MPROC_EPROTO);
    CHECK_EQ(PK("I99999999999999999999\n."), MPROC_ERANGE);
    CHECK_EQ(PK("L-9223372036854775809L\n."), MPROC_ERANGE);
    CHECK_EQ(PK("Vab\\u12\n."), MPROC_EPROTO);
    CHECK_EQ(PK("V\\ud800\n."), MPROC_EPROTO);
    CHECK_EQ(PK("S'abc\n."), MPROC_EPROTO);
    CHECK_EQ(PK("S'\\x4'\n."), MPROC_EPROTO);
    CHECK_EQ(PK("U\x01\x80."), MPROC_EPROTO); /* Python 2 str is decoded as ASCII */
    CHECK_EQ(PK("Fnotanumber\n."), MPROC_EPROTO);
    CHECK_EQ(PK("\x8c\x02\xc3\x28."), MPROC_EPROTO);
}


/* Review findings: memo entries and marks are bounded like items (a one-byte
 * MEMOIZE or MARK cannot make the decoder allocate without limit), Warning is
 * a builtin exception name, and exception groups are refused when encoding. */
MTEST(test_pickle_memo_and_marks_count_as_items)
{
    mproc_decode_limits lim = {.max_items = 100};
    size_t n = 10000;
    uint8_t *p = malloc(n + 4);
    CHECK(p != NULL);
    mproc_value *v = NULL;
    /* PROTO 4, NONE, then MEMOIZE x n: one value, n memo entries. */
    p[0] = 0x80, p[1] = 4, p[2] = 'N';
    memset(p + 3, 0x94, n - 4);
    p[n - 1] = '.';
    CHECK_EQ(mproc_pickle_decode(p, n, &lim, &v), MPROC_EMSGSIZE);
    /* PROTO 4, then MARK x n: no values at all, n marks. */
    memset(p + 2, '(', n - 3);
    CHECK_EQ(mproc_pickle_decode(p, n, &lim, &v), MPROC_EMSGSIZE);
    free(p);
    CHECK(v == NULL);
}

MTEST(test_pickle_warning_is_an_exception_and_groups_are_refused)
{
    static const uint8_t warn[] = "\x80\x02" "cexceptions\nWarning\nq\x00X\x01\x00\x00\x00xq\x01\x85q\x02Rq\x03.";
    mproc_value *v = NULL;
    CHECK_OK(mproc_pickle_decode(warn, sizeof warn - 1, NULL, &v));
    CHECK_EQ(mproc_value_type(v), MPROC_V_ERROR);
    CHECK(strcmp(mproc_value_error_type(v), "Warning") == 0);
    CHECK(strcmp(mproc_value_error_message(v), "x") == 0);
    mproc_buf b = {0};
    CHECK_OK(mproc_pickle_encode(v, 4, &b));
    mproc_value_free(v);
    free(b.data);
    b = (mproc_buf){0};
    v = mproc_value_error("ExceptionGroup", "g");
    CHECK_EQ(mproc_pickle_encode(v, 4, &b), MPROC_EINVAL);
    mproc_value_free(v);
    v = mproc_value_error("BaseExceptionGroup", "g");
    CHECK_EQ(mproc_pickle_encode(v, 4, &b), MPROC_EINVAL);
    mproc_value_free(v);
    free(b.data);
}

/* An exception made with several arguments reads as Python's str() of it:
 * "[Errno 2] nope" for FileNotFoundError(2, 'nope'), the args tuple for
 * ValueError(1, 'a', None). (Bytes from Python 3.11, protocol 4.) */
MTEST(test_pickle_exception_with_several_arguments)
{
    static const struct {
        const char *hex, *type, *msg;
    } cases[] = {
        {"8004952f000000000000008c086275696c74696e73948c1146696c654e6f74466f756e644572726f72"
         "9493944b028c046e6f706594869452942e",
         "FileNotFoundError", "[Errno 2] nope"},
        {"80049526000000000000008c086275696c74696e73948c0a56616c75654572726f729493944b018c01"
         "61944e879452942e",
         "ValueError", "(1, 'a', None)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint8_t b[256];
        size_t n = unhex(cases[i].hex, b, sizeof b);
        mproc_value *v = NULL;
        CHECK_OK(mproc_pickle_decode(b, n, NULL, &v));
        CHECK(mproc_value_type(v) == MPROC_V_ERROR);
        CHECK(strcmp(mproc_value_error_type(v), cases[i].type) == 0);
        CHECK(strcmp(mproc_value_error_message(v), cases[i].msg) == 0);
        mproc_value_free(v);
    }
}

MTEST(test_pickle_protocol0_text_opcodes)
{
    struct {
        const char *pk;
        V *want;
    } t[] = {
        {"I01\n.", mproc_value_bool(true)},
        {"I00\n.", mproc_value_bool(false)},
        {"I-7\n.", I(-7)},
        {"I 12 \n.", I(12)},
        {"L9223372036854775807L\n.", I(INT64_MAX)},
        {"L-9223372036854775808\n.", I(INT64_MIN)},
        {"F1.5\n.", mproc_value_float(1.5)},
        {"F-inf\n.", mproc_value_float(-INFINITY)},
        {"S'a\\'b\\n\\x41\\101\\q'\n.", S("a'b\nAA\\q")},
        {"S\"x\"\n.", S("x")},
        {"V\\u0041\\\\u0042\\U0001F600\xe9\\\n.", S("A\\\\u0042\xf0\x9f\x98\x80\xc3\xa9\\")},
        {"(lp0\nI1\naI2\nag0\na.", L(3, I(1), I(2), L(2, I(1), I(2)))},
        {"(dp0\nVk\np1\n(I1\nI2\ntp2\ns.", M(1, S("k"), L(2, I(1), I(2)))},
        {"I1\n0I2\n.", I(2)},      /* POP */
        {"(0I2\n.", I(2)},         /* POP of an empty mark pops the mark */
        {"(I1\nI2\n1N.", mproc_value_nil()}, /* POP_MARK */
        /* a memoized key dropped as a duplicate stays valid for GET (found by fuzzing) */
        {"]}VW\np1\nI1\nsVW\np1\nI2\nsag1\na.", L(2, M(1, S("W"), I(2)), S("W"))},
        {"]I1\n2a.", NULL},        /* DUP copies: below */
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        V *got = NULL;
        int rc = mproc_pickle_decode(t[i].pk, strlen(t[i].pk), NULL, &got);
        if (!t[i].want) {
            CHECK_EQ(rc, MPROC_EPROTO); /* two values left at STOP */
            continue;
        }
        if (rc) {
            fprintf(stderr, "%zu: %s\n", i, mproc_errmsg());
            _exit(1);
        }
        check_equal(got, t[i].want, t[i].pk);
        mproc_value_free(got);
        mproc_value_free(t[i].want);
    }
    V *got = NULL;
    CHECK_OK(mproc_pickle_decode("]2a.", 4, NULL, &got)); /* l.append(copy of l) */
    check_repr(got, "[[]]");
    mproc_value_free(got);
}

int main(int argc, char **argv)
{
    static const mtest_case cases[] = {
        MTEST_ENTRY(test_pickle_memo_and_marks_count_as_items),
        MTEST_ENTRY(test_pickle_warning_is_an_exception_and_groups_are_refused),
        MTEST_ENTRY(test_value_builders_and_accessors),
        MTEST_ENTRY(test_value_big_map_keeps_order_and_finds_keys),
        MTEST_ENTRY(test_value_copy_equal_and_deep_free),
        MTEST_ENTRY(test_value_repr_is_python_style),
        MTEST_ENTRY(test_msgpack_known_vectors),
        MTEST_ENTRY(test_msgpack_round_trips),
        MTEST_ENTRY(test_msgpack_rejects_hostile_input),
        MTEST_ENTRY(test_value_ext_builds_copies_compares_prints_and_keys_a_map),
        MTEST_ENTRY(test_msgpack_ext_encodes_every_size_form_and_decodes_hand_written_bytes),
        MTEST_ENTRY(test_value_map_find_take_del_put_keep_order_and_index),
        MTEST_ENTRY(test_value_list_insert_take_replace_reverse),
        MTEST_ENTRY(test_value_compare_is_pythons_ordering),
        MTEST_ENTRY(test_value_sort_is_stable_and_all_or_nothing),
        MTEST_ENTRY(test_pickle_decodes_what_python_pickles_protocols_0_to_5),
        MTEST_ENTRY(test_pickle_ints_beyond_int64_are_erange),
        MTEST_ENTRY(test_pickle_encodes_what_python_loads_protocols_4_and_5),
        MTEST_ENTRY(test_pickle_never_imports_or_calls),
        MTEST_ENTRY(test_pickle_rejects_truncation_at_every_offset),
        MTEST_ENTRY(test_pickle_limits_depth_items_bytes_and_lengths),
        MTEST_ENTRY(test_pickle_protocol0_text_opcodes),
        MTEST_ENTRY(test_pickle_exception_with_several_arguments),
    };
    return mtest_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
