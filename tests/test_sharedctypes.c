/* test_sharedctypes.c — Value, Array, RawValue and RawArray: every element type,
 * conversions, locks (own, borrowed, none), seed 001's Value/Array example and
 * seed 000's lost update under every start method, owner death, and imports of
 * malformed exports. */
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <wchar.h>

#include "mtest.h"

/* --------------------------------------------------------------- helpers */


static const mproc_ctype all_types[] = {
    MPROC_C_CHAR, MPROC_C_WCHAR, MPROC_C_BYTE,     MPROC_C_UBYTE,     MPROC_C_SHORT,
    MPROC_C_USHORT, MPROC_C_INT, MPROC_C_UINT,     MPROC_C_LONG,      MPROC_C_ULONG,
    MPROC_C_LONGLONG, MPROC_C_ULONGLONG, MPROC_C_FLOAT, MPROC_C_DOUBLE,
};
#define NTYPES (sizeof all_types / sizeof all_types[0])

static bool is_float(mproc_ctype t)
{
    return t == MPROC_C_FLOAT || t == MPROC_C_DOUBLE;
}

/* --------------------------------------------------------- types, values */

MTEST(test_ctype_sizes_match_the_c_types)
{
    CHECK_EQ(mproc_ctype_size('c'), sizeof(char));
    CHECK_EQ(mproc_ctype_size('u'), sizeof(wchar_t));
    CHECK_EQ(mproc_ctype_size('b'), sizeof(signed char));
    CHECK_EQ(mproc_ctype_size('B'), sizeof(unsigned char));
    CHECK_EQ(mproc_ctype_size('h'), sizeof(short));
    CHECK_EQ(mproc_ctype_size('H'), sizeof(unsigned short));
    CHECK_EQ(mproc_ctype_size('i'), sizeof(int));
    CHECK_EQ(mproc_ctype_size('I'), sizeof(unsigned int));
    CHECK_EQ(mproc_ctype_size('l'), sizeof(long));
    CHECK_EQ(mproc_ctype_size('L'), sizeof(unsigned long));
    CHECK_EQ(mproc_ctype_size('q'), sizeof(long long));
    CHECK_EQ(mproc_ctype_size('Q'), sizeof(unsigned long long));
    CHECK_EQ(mproc_ctype_size('f'), sizeof(float));
    CHECK_EQ(mproc_ctype_size('d'), sizeof(double));
    CHECK_EQ(mproc_ctype_size('z'), 0);
    CHECK_EQ(mproc_ctype_size((mproc_ctype)0), 0);
    CHECK_EQ(mproc_ctype_size((mproc_ctype)-1), 0);
}

/* For every type, locked and raw: init, load, store, get/set via int64 and double. */
MTEST(test_every_ctype_round_trips_in_values_and_arrays)
{
    for (size_t k = 0; k < NTYPES; k++) {
        mproc_ctype t = all_types[k];
        size_t sz = mproc_ctype_size(t);
        for (int raw = 0; raw < 2; raw++) {
            unsigned char init[8] = {0}, out[8] = {0}, in[8] = {0};
            mproc_shared_value *v;
            /* 42 in the element type, built through a reference value */
            mproc_shared_value *ref;
            CHECK_OK(mproc_raw_value_new(&ref, t, NULL));
            CHECK_OK(mproc_shared_value_set_i64(ref, 42));
            CHECK_OK(mproc_shared_value_load(ref, init));
            if (raw)
                CHECK_OK(mproc_raw_value_new(&v, t, init));
            else
                CHECK_OK(mproc_shared_value_new(&v, t, init, NULL));
            CHECK_EQ(mproc_shared_value_ctype(v), t);
            CHECK(memcmp(mproc_shared_value_get_obj(v), init, sz) == 0);
            CHECK_OK(mproc_shared_value_load(v, out));
            CHECK(memcmp(out, init, sz) == 0);
            CHECK_EQ(mproc_shared_value_get_i64(v), 42);
            CHECK(mproc_shared_value_get_f64(v) == 42.0);
            CHECK_OK(mproc_shared_value_set_i64(ref, 7));
            CHECK_OK(mproc_shared_value_load(ref, in));
            CHECK_OK(mproc_shared_value_store(v, in));
            CHECK_EQ(mproc_shared_value_get_i64(v), 7);
            CHECK_OK(mproc_shared_value_set_f64(v, 100.0));
            CHECK_EQ(mproc_shared_value_get_i64(v), 100);
            CHECK_EQ(raw ? 1 : 0, mproc_shared_value_get_lock(v) == NULL);
            mproc_shared_value_free(v);
            mproc_shared_value_free(ref);

            /* an array of 5: elements i*3 */
            mproc_shared_array *a;
            if (raw)
                CHECK_OK(mproc_raw_array_new(&a, t, 5, NULL));
            else
                CHECK_OK(mproc_shared_array_new(&a, t, 5, NULL, NULL));
            CHECK_EQ(mproc_shared_array_len(a), 5);
            CHECK_EQ(mproc_shared_array_ctype(a), t);
            for (size_t i = 0; i < 5; i++)
                CHECK_OK(mproc_shared_array_set_i64(a, i, (int64_t)i * 3));
            unsigned char buf[5 * 8];
            CHECK_OK(mproc_shared_array_read(a, 0, 5, buf));
            CHECK(memcmp(buf, mproc_shared_array_get_obj(a), 5 * sz) == 0);
            mproc_shared_array *b;
            if (raw)
                CHECK_OK(mproc_raw_array_new(&b, t, 5, buf));
            else
                CHECK_OK(mproc_shared_array_new(&b, t, 5, buf, NULL));
            for (size_t i = 0; i < 5; i++) {
                CHECK_EQ(mproc_shared_array_get_i64(b, i), (int64_t)i * 3);
                CHECK(mproc_shared_array_get_f64(b, i) == (double)i * 3);
            }
            CHECK_OK(mproc_shared_array_set_f64(b, 4, 9.0));
            CHECK_EQ(mproc_shared_array_get_i64(b, 4), 9);
            CHECK_EQ(raw ? 1 : 0, mproc_shared_array_get_lock(b) == NULL);
            mproc_shared_array_free(a);
            mproc_shared_array_free(b);
        }
    }
}

MTEST(test_native_c_types_through_get_obj)
{
    mproc_shared_value *num;
    CHECK_OK(mproc_shared_value_new(&num, 'd', &(double){0.5}, NULL));
    double *p = mproc_shared_value_get_obj(num);
    CHECK(*p == 0.5);
    *p = 2.25;
    double d = 0;
    CHECK_OK(mproc_shared_value_load(num, &d));
    CHECK(d == 2.25);
    CHECK_OK(mproc_shared_value_store(num, &(double){-1.5}));
    CHECK(*p == -1.5);
    mproc_shared_value_free(num);

    mproc_shared_array *arr;
    CHECK_OK(mproc_shared_array_new(&arr, MPROC_C_INT, 3, (int[]){1, 2, 3}, NULL));
    int *ip = mproc_shared_array_get_obj(arr);
    CHECK(ip[0] == 1 && ip[1] == 2 && ip[2] == 3);
    CHECK(((uintptr_t)ip % 64) == 0); /* elements start cache-line aligned */
    mproc_shared_array_free(arr);

    mproc_shared_value *w;
    CHECK_OK(mproc_shared_value_new(&w, MPROC_C_WCHAR, &(wchar_t){L'é'}, NULL));
    CHECK_EQ(mproc_shared_value_get_i64(w), 0xe9);
    mproc_shared_value_free(w);
}

MTEST(test_null_init_means_zero)
{
    for (size_t k = 0; k < NTYPES; k++) {
        mproc_ctype t = all_types[k];
        mproc_shared_value *v;
        CHECK_OK(mproc_shared_value_new(&v, t, NULL, NULL));
        CHECK_EQ(mproc_shared_value_get_i64(v), 0);
        unsigned char zero[8] = {0};
        CHECK(memcmp(mproc_shared_value_get_obj(v), zero, mproc_ctype_size(t)) == 0);
        mproc_shared_value_free(v);
        mproc_shared_array *a;
        CHECK_OK(mproc_raw_array_new(&a, t, 1000, NULL));
        const unsigned char *p = mproc_shared_array_get_obj(a);
        for (size_t i = 0; i < 1000 * mproc_ctype_size(t); i++)
            CHECK(p[i] == 0);
        mproc_shared_array_free(a);
    }
}

MTEST(test_bad_arguments_are_refused)
{
    mproc_shared_value *v;
    mproc_shared_array *a;
    CHECK_EQ(mproc_shared_value_new(&v, (mproc_ctype)'z', NULL, NULL), MPROC_EINVAL);
    CHECK(strstr(mproc_errmsg(), "unknown ctype") != NULL);
    CHECK_EQ(mproc_raw_value_new(&v, (mproc_ctype)0, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_shared_value_new(NULL, 'i', NULL, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_shared_array_new(&a, 'i', 0, NULL, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_shared_array_new(&a, 'd', SIZE_MAX / 4, NULL, NULL), MPROC_ENOMEM);
    CHECK_EQ(mproc_shared_array_new(&a, 'q', SIZE_MAX, NULL, NULL), MPROC_ENOMEM);
    mproc_lock *l;
    CHECK_OK(mproc_lock_new(&l));
    mproc_shared_opts o = {.lock = MPROC_SHARED_RAW, .use_lock = l};
    CHECK_EQ(mproc_shared_value_new(&v, 'i', NULL, &o), MPROC_EINVAL);
    mproc_shared_opts bad = {.lock = (mproc_shared_lock)9};
    CHECK_EQ(mproc_shared_value_new(&v, 'i', NULL, &bad), MPROC_EINVAL);
    mproc_lock_free(l);
    CHECK_OK(mproc_shared_value_new(&v, 'i', NULL, NULL));
    CHECK_EQ(mproc_shared_value_load(v, NULL), MPROC_EINVAL);
    CHECK_EQ(mproc_shared_value_store(v, NULL), MPROC_EINVAL);
    mproc_shared_value_free(v);
    CHECK_EQ(mproc_shared_value_load(NULL, &(int){0}), MPROC_EINVAL);
    CHECK_EQ(mproc_shared_value_get_i64(NULL), 0);
    CHECK(mproc_shared_value_get_obj(NULL) == NULL);
    CHECK(mproc_shared_value_get_lock(NULL) == NULL);
    CHECK_EQ(mproc_shared_array_len(NULL), 0);
    mproc_shared_value_free(NULL);
    mproc_shared_array_free(NULL);
}

/* ------------------------------------------------------------ conversions */

MTEST(test_conversions_truncate_wrap_and_saturate)
{
    mproc_shared_value *v;
    /* float -> int64 truncates toward zero */
    CHECK_OK(mproc_raw_value_new(&v, 'd', &(double){-2.75}));
    CHECK_EQ(mproc_shared_value_get_i64(v), -2);
    CHECK_OK(mproc_shared_value_set_f64(v, 1e300));
    CHECK_EQ(mproc_shared_value_get_i64(v), INT64_MAX);
    CHECK_OK(mproc_shared_value_set_f64(v, NAN));
    CHECK_EQ(mproc_shared_value_get_i64(v), 0);
    CHECK_OK(mproc_shared_value_set_i64(v, -5));
    CHECK(mproc_shared_value_get_f64(v) == -5.0);
    mproc_shared_value_free(v);
    /* int64 -> narrower integers wraps as C does */
    CHECK_OK(mproc_shared_value_new(&v, 'b', NULL, NULL));
    CHECK_OK(mproc_shared_value_set_i64(v, 200));
    CHECK_EQ(mproc_shared_value_get_i64(v), -56);
    mproc_shared_value_free(v);
    CHECK_OK(mproc_shared_value_new(&v, 'H', NULL, NULL));
    CHECK_OK(mproc_shared_value_set_i64(v, -1));
    CHECK_EQ(mproc_shared_value_get_i64(v), 65535);
    /* double -> narrower integer saturates instead of being undefined */
    CHECK_OK(mproc_shared_value_set_f64(v, 1e9));
    CHECK_EQ(mproc_shared_value_get_i64(v), 65535);
    CHECK_OK(mproc_shared_value_set_f64(v, -3.5));
    CHECK_EQ(mproc_shared_value_get_i64(v), 0);
    mproc_shared_value_free(v);
    /* 'c' is an unsigned 8-bit integer, like Python's bytes */
    CHECK_OK(mproc_shared_value_new(&v, 'c', &(char){'A'}, NULL));
    CHECK_EQ(mproc_shared_value_get_i64(v), 'A');
    CHECK_OK(mproc_shared_value_set_i64(v, 0xff));
    CHECK_EQ(mproc_shared_value_get_i64(v), 255);
    CHECK_EQ(*(unsigned char *)mproc_shared_value_get_obj(v), 0xff);
    mproc_shared_value_free(v);
    /* unsigned 64-bit above INT64_MAX reads back wrapped, exact as a double */
    CHECK_OK(mproc_shared_value_new(&v, 'Q', &(unsigned long long){UINT64_MAX}, NULL));
    CHECK_EQ(mproc_shared_value_get_i64(v), -1);
    CHECK(mproc_shared_value_get_f64(v) == 18446744073709551615.0);
    mproc_shared_value_free(v);
    CHECK_OK(mproc_shared_value_new(&v, 'f', NULL, NULL));
    CHECK_OK(mproc_shared_value_set_f64(v, 0.1));
    CHECK(mproc_shared_value_get_f64(v) == (double)0.1f);
    mproc_shared_value_free(v);
}

MTEST(test_add_is_one_step_and_wraps_at_the_width)
{
    for (int raw = 0; raw < 2; raw++) {
        for (size_t k = 0; k < NTYPES; k++) {
            mproc_ctype t = all_types[k];
            mproc_shared_value *v;
            if (raw)
                CHECK_OK(mproc_raw_value_new(&v, t, NULL));
            else
                CHECK_OK(mproc_shared_value_new(&v, t, NULL, NULL));
            int64_t r = -1;
            CHECK_OK(mproc_shared_value_add_i64(v, 5, &r));
            CHECK_EQ(r, 5);
            CHECK_OK(mproc_shared_value_add_i64(v, 3, NULL));
            CHECK_EQ(mproc_shared_value_get_i64(v), 8);
            double f = 0;
            CHECK_OK(mproc_shared_value_add_f64(v, 2.0, &f));
            CHECK(f == 10.0);
            if (is_float(t)) {
                CHECK_OK(mproc_shared_value_add_f64(v, 0.5, &f));
                CHECK(f == 10.5);
                CHECK_OK(mproc_shared_value_add_i64(v, -20, &r));
                CHECK_EQ(r, -9); /* -9.5 truncated */
            }
            mproc_shared_value_free(v);
        }
        mproc_shared_value *b;
        if (raw)
            CHECK_OK(mproc_raw_value_new(&b, 'B', &(unsigned char){250}));
        else
            CHECK_OK(mproc_shared_value_new(&b, 'B', &(unsigned char){250}, NULL));
        int64_t r = 0;
        CHECK_OK(mproc_shared_value_add_i64(b, 10, &r));
        CHECK_EQ(r, 4);
        mproc_shared_value_free(b);
        mproc_shared_value *q;
        if (raw)
            CHECK_OK(mproc_raw_value_new(&q, 'q', &(long long){INT64_MAX}));
        else
            CHECK_OK(mproc_shared_value_new(&q, 'q', &(long long){INT64_MAX}, NULL));
        CHECK_OK(mproc_shared_value_add_i64(q, 1, &r)); /* wraps, no UB */
        CHECK_EQ(r, INT64_MIN);
        mproc_shared_value_free(q);
    }
}

/* ------------------------------------------------------------------ locks */

MTEST(test_lock_modes_and_get_lock)
{
    mproc_shared_value *v, *pl, *raw;
    CHECK_OK(mproc_shared_value_new(&v, 'i', NULL, NULL));
    mproc_lock *l = mproc_shared_value_get_lock(v);
    CHECK(l != NULL);
    CHECK(mproc_lock_is_recursive(l)); /* Python's default lock is an RLock */
    CHECK(!mproc_lock_is_owned(l));
    /* Python's fix for seed 000: hold get_lock() around the read-modify-write */
    CHECK_OK(mproc_lock_acquire(l, MPROC_FOREVER));
    CHECK_OK(mproc_shared_value_set_i64(v, mproc_shared_value_get_i64(v) + 1));
    CHECK(mproc_lock_is_owned(l));
    CHECK_OK(mproc_lock_release(l));
    CHECK(!mproc_lock_is_owned(l));
    CHECK_EQ(mproc_shared_value_get_i64(v), 1);

    mproc_shared_opts po = {.lock = MPROC_SHARED_LOCK};
    CHECK_OK(mproc_shared_value_new(&pl, 'i', NULL, &po));
    mproc_lock *pll = mproc_shared_value_get_lock(pl);
    CHECK(pll != NULL && !mproc_lock_is_recursive(pll));
    /* a plain Lock held by the caller does not deadlock the accessors */
    CHECK_OK(mproc_lock_acquire(pll, 1.0));
    CHECK_OK(mproc_shared_value_add_i64(pl, 2, NULL));
    CHECK_OK(mproc_shared_value_store(pl, &(int){5}));
    CHECK_EQ(mproc_lock_acquire(pll, 0), MPROC_EDEADLK); /* still held once */
    CHECK_OK(mproc_lock_release(pll));
    CHECK_EQ(mproc_lock_release(pll), MPROC_EPERM);
    CHECK_EQ(mproc_shared_value_get_i64(pl), 5);

    mproc_shared_opts ro = {.lock = MPROC_SHARED_RAW};
    CHECK_OK(mproc_shared_value_new(&raw, 'i', NULL, &ro));
    CHECK(mproc_shared_value_get_lock(raw) == NULL);
    mproc_shared_value_free(raw);
    CHECK_OK(mproc_raw_value_new(&raw, 'i', NULL));
    CHECK(mproc_shared_value_get_lock(raw) == NULL);
    mproc_shared_array *ra;
    CHECK_OK(mproc_raw_array_new(&ra, 'i', 4, NULL));
    CHECK(mproc_shared_array_get_lock(ra) == NULL);
    mproc_shared_array_free(ra);
    mproc_shared_value_free(raw);
    mproc_shared_value_free(pl);
    mproc_shared_value_free(v);
}

/* Two objects with use_lock share it; a child gets that very lock with each. */
static int t_check_shared_lock(mproc_args *a)
{
    mproc_shared_value *v = mproc_args_object(a, 0, &mproc_shared_value_type);
    mproc_shared_array *arr = mproc_args_object(a, 1, &mproc_shared_array_type);
    mproc_shared_value *own = mproc_args_object(a, 2, &mproc_shared_value_type);
    if (!v || !arr || !own)
        return 10;
    mproc_lock *lv = mproc_shared_value_get_lock(v), *la = mproc_shared_array_get_lock(arr);
    /* the parent holds the shared lock for as long as we run */
    if (!lv || !la || mproc_lock_acquire(lv, 0) != MPROC_ETIMEDOUT ||
        mproc_lock_acquire(la, 0) != MPROC_ETIMEDOUT)
        return 11;
    if (mproc_lock_is_recursive(lv) || mproc_lock_is_recursive(la))
        return 12;
    /* an object with its own lock is independent of it; one built on that
     * lock (Python: lock=own.get_lock()) has the very same lock here */
    mproc_shared_value *v2 = mproc_args_object(a, 3, &mproc_shared_value_type);
    mproc_lock *lo = mproc_shared_value_get_lock(own);
    mproc_lock *l2 = v2 ? mproc_shared_value_get_lock(v2) : NULL;
    if (!l2 || mproc_lock_acquire(lo, 0) != 0 || !mproc_lock_is_owned(l2) ||
        mproc_lock_release(l2) != 0 || mproc_lock_is_owned(lo))
        return 13;
    /* raw access still works; the values the parent stored are visible */
    const short *elems = mproc_shared_array_get_obj(arr);
    if (*(int *)mproc_shared_value_get_obj(v) != 7 || elems[2] != 3)
        return 14;
    return 0;
}

static void use_lock_shared(mproc_start_method m)
{
    mproc_lock *l;
    CHECK_OK(mproc_lock_new(&l));
    mproc_shared_opts o = {.use_lock = l};
    mproc_shared_value *v, *own;
    mproc_shared_array *arr;
    CHECK_OK(mproc_shared_value_new(&v, 'i', &(int){7}, &o));
    CHECK_OK(mproc_shared_array_new(&arr, 'h', 4, (short[]){0, 1, 3, 4}, &o));
    CHECK_OK(mproc_shared_value_new(&own, 'i', NULL, NULL));
    CHECK(mproc_shared_value_get_lock(v) == l);
    CHECK(mproc_shared_array_get_lock(arr) == l);
    mproc_shared_opts o2 = {.use_lock = mproc_shared_value_get_lock(own)};
    mproc_shared_value *v2;
    CHECK_OK(mproc_shared_value_new(&v2, 'i', NULL, &o2));
    CHECK_OK(mproc_lock_acquire(l, MPROC_FOREVER));
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_shared_value_type, v));
    CHECK_OK(mproc_args_add_object(a, &mproc_shared_array_type, arr));
    CHECK_OK(mproc_args_add_object(a, &mproc_shared_value_type, own));
    CHECK_OK(mproc_args_add_object(a, &mproc_shared_value_type, v2));
    mproc_process *p = mtest_start(m, t_check_shared_lock, a);
    mproc_args_free(a);
    mtest_join(p, 0);
    CHECK_OK(mproc_lock_release(l));
    CHECK_OK(mproc_lock_acquire(mproc_shared_value_get_lock(own), 1.0));
    CHECK(mproc_lock_is_owned(mproc_shared_value_get_lock(v2)));
    CHECK_OK(mproc_lock_release(mproc_shared_value_get_lock(v2)));
    mproc_shared_value_free(v2);
    mproc_shared_value_free(own);
    mproc_shared_array_free(arr);
    mproc_shared_value_free(v);
    mproc_lock_free(l);
}
FOR_METHODS(use_lock_shared)

/* --------------------------------------------------- seed 001's example */

/* def f(n, a): n.value = 3.1415927; for i in range(len(a)): a[i] = -a[i] */
static int t_seed_f(mproc_args *args)
{
    mproc_shared_value *n = mproc_args_object(args, 0, &mproc_shared_value_type);
    mproc_shared_array *a = mproc_args_object(args, 1, &mproc_shared_array_type);
    if (!n || !a)
        return 10;
    if (mproc_shared_value_set_f64(n, 3.1415927) != 0)
        return 11;
    for (size_t i = 0; i < mproc_shared_array_len(a); i++)
        if (mproc_shared_array_set_i64(a, i, -mproc_shared_array_get_i64(a, i)) != 0)
            return 12;
    return 0;
}

static void seed_value_array(mproc_start_method m)
{
    mproc_shared_value *num;
    mproc_shared_array *arr;
    CHECK_OK(mproc_shared_value_new(&num, 'd', &(double){0.0}, NULL));
    int init[10];
    for (int i = 0; i < 10; i++)
        init[i] = i;
    CHECK_OK(mproc_shared_array_new(&arr, 'i', 10, init, NULL));
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_shared_value_type, num));
    CHECK_OK(mproc_args_add_object(a, &mproc_shared_array_type, arr));
    mproc_process *p = mtest_start(m, t_seed_f, a);
    mproc_args_free(a);
    mtest_join(p, 0);
    double d = 0;
    CHECK_OK(mproc_shared_value_load(num, &d));
    CHECK(d == 3.1415927);
    int out[10];
    CHECK_OK(mproc_shared_array_read(arr, 0, 10, out));
    for (int i = 0; i < 10; i++)
        CHECK_EQ(out[i], -i);
    mproc_shared_array_free(arr);
    mproc_shared_value_free(num);
}
FOR_METHODS(seed_value_array)

/* ---------------------------------------------- seed 000's lost update */

#define NPROC 10

enum { INC_PLAIN, INC_LOCKED, INC_ADD, INC_RAW_ADD };

/* args: counter (Value or RawValue 'i'), go event, mode, n */
static int t_increment(mproc_args *a)
{
    mproc_shared_value *v = mproc_args_object(a, 0, &mproc_shared_value_type);
    mproc_event *go = mproc_args_object(a, 1, &mproc_event_type);
    int64_t mode = 0, n = 0;
    if (!v || !go || mproc_args_get_int(a, 2, &mode) || mproc_args_get_int(a, 3, &n))
        return 10;
    if (mproc_event_wait(go, 30.0) != 0)
        return 11;
    volatile int *p = mproc_shared_value_get_obj(v);
    mproc_lock *l = mproc_shared_value_get_lock(v);
    for (int64_t i = 0; i < n; i++) {
        switch (mode) {
        case INC_PLAIN: { /* val.value += 1: a read, then a write */
            int x = *p;
            sched_yield();
            *p = x + 1;
            break;
        }
        case INC_LOCKED: /* with val.get_lock(): val.value += 1 */
            if (mproc_lock_acquire(l, MPROC_FOREVER) != 0)
                return 12;
            mproc_shared_value_set_i64(v, mproc_shared_value_get_i64(v) + 1);
            if (i % 64 == 0)
                sched_yield(); /* give up the CPU while holding it, now and then */
            mproc_lock_release(l);
            break;
        case INC_ADD:
        case INC_RAW_ADD:
            if (mproc_shared_value_add_i64(v, 1, NULL) != 0)
                return 13;
            break;
        }
    }
    return 0;
}

/* Run NPROC children incrementing `v` n times each in `mode`; the final count. */
static int64_t run_increments(mproc_start_method m, mproc_shared_value *v, int mode, int64_t n)
{
    mproc_event *go;
    CHECK_OK(mproc_event_new(&go));
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_shared_value_type, v));
    CHECK_OK(mproc_args_add_object(a, &mproc_event_type, go));
    CHECK_OK(mproc_args_add_int(a, mode));
    CHECK_OK(mproc_args_add_int(a, n));
    mproc_process *ps[NPROC];
    for (int i = 0; i < NPROC; i++)
        ps[i] = mtest_start(m, t_increment, a);
    mproc_args_free(a);
    mproc_event_set(go); /* all at once, for contention */
    for (int i = 0; i < NPROC; i++)
        mtest_join(ps[i], 0);
    mproc_event_free(go);
    return mproc_shared_value_get_i64(v);
}

MTEST(test_lost_update_without_the_lock)
{
    /* Python's seed prints less than 100; here each of ten processes reads,
     * yields, then writes. A lost update needs a preemption between a read and
     * its write: bounded retries, more increments each round, no sleeps. */
    bool lost = false;
    int64_t n = 200;
    for (int round = 0; round < 20 && !lost; round++, n = n < 100000 ? n * 2 : n) {
        mproc_shared_value *v;
        CHECK_OK(mproc_shared_value_new(&v, 'i', NULL, NULL));
        int64_t got = run_increments(MPROC_START_FORK, v, INC_PLAIN, n);
        CHECK(got <= NPROC * n);
        lost = got < NPROC * n;
        mproc_shared_value_free(v);
    }
    CHECK(lost);
}

static void counters_are_exact(mproc_start_method m)
{
    const int64_t n = 3000;
    mproc_shared_value *v;
    CHECK_OK(mproc_shared_value_new(&v, 'i', NULL, NULL));
    CHECK_EQ(run_increments(m, v, INC_LOCKED, n), NPROC * n);
    mproc_shared_value_free(v);
    CHECK_OK(mproc_shared_value_new(&v, 'i', NULL, NULL));
    CHECK_EQ(run_increments(m, v, INC_ADD, n), NPROC * n);
    mproc_shared_value_free(v);
    CHECK_OK(mproc_raw_value_new(&v, 'i', NULL));
    CHECK_EQ(run_increments(m, v, INC_RAW_ADD, 20 * n), NPROC * 20 * n);
    mproc_shared_value_free(v);
}
FOR_METHODS(counters_are_exact)

/* ------------------------------------------------------------ owner death */

/* Take the value's lock, write half an update, tell the parent, never return. */
static int t_die_holding(mproc_args *a)
{
    mproc_shared_value *v = mproc_args_object(a, 0, &mproc_shared_value_type);
    mproc_event *held = mproc_args_object(a, 1, &mproc_event_type);
    if (!v || !held)
        return 10;
    if (mproc_lock_acquire(mproc_shared_value_get_lock(v), MPROC_FOREVER) != 0)
        return 11;
    mproc_shared_value_set_i64(v, 42);
    mproc_event_set(held);
    for (;;)
        pause(); /* until SIGKILL */
}

static void owner_death(mproc_start_method m)
{
    mproc_shared_value *v;
    mproc_event *held;
    CHECK_OK(mproc_shared_value_new(&v, 'q', NULL, NULL));
    CHECK_OK(mproc_event_new(&held));
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_shared_value_type, v));
    CHECK_OK(mproc_args_add_object(a, &mproc_event_type, held));
    mproc_process *p = mtest_start(m, t_die_holding, a);
    mproc_args_free(a);
    CHECK_OK(mproc_event_wait(held, 30.0));
    CHECK_EQ(mproc_lock_acquire(mproc_shared_value_get_lock(v), 0), MPROC_ETIMEDOUT);
    CHECK_OK(mproc_process_kill(p));
    CHECK_OK(mproc_process_join(p, 30.0));
    CHECK_EQ(mproc_process_exitcode(p), -SIGKILL);
    CHECK_OK(mproc_process_close(p));
    long long x = 0;
    CHECK_EQ(mproc_shared_value_load(v, &x), MPROC_EOWNERDEAD); /* copied anyway */
    CHECK_EQ(x, 42);
    CHECK_OK(mproc_shared_value_load(v, &x)); /* the lock is usable again */
    CHECK_OK(mproc_shared_value_add_i64(v, 1, NULL));
    CHECK_EQ(mproc_shared_value_get_i64(v), 43);
    CHECK_OK(mproc_lock_acquire(mproc_shared_value_get_lock(v), 0));
    CHECK_OK(mproc_lock_release(mproc_shared_value_get_lock(v)));
    mproc_event_free(held);
    mproc_shared_value_free(v);
}
FOR_METHODS(owner_death)

/* ------------------------------------------------------------------ slices */

MTEST(test_array_ranges)
{
    for (int raw = 0; raw < 2; raw++) {
        mproc_shared_array *a;
        long init[10];
        for (int i = 0; i < 10; i++)
            init[i] = i * 10;
        if (raw)
            CHECK_OK(mproc_raw_array_new(&a, 'l', 10, init));
        else
            CHECK_OK(mproc_shared_array_new(&a, 'l', 10, init, NULL));
        long out[10] = {0};
        CHECK_OK(mproc_shared_array_read(a, 3, 4, out));
        CHECK(out[0] == 30 && out[3] == 60);
        CHECK_OK(mproc_shared_array_read(a, 0, 10, out));
        CHECK(memcmp(out, init, sizeof init) == 0);
        CHECK_OK(mproc_shared_array_read(a, 10, 0, out)); /* empty slice at the end */
        CHECK_OK(mproc_shared_array_read(a, 0, 0, NULL));
        CHECK_EQ(mproc_shared_array_read(a, 5, 6, out), MPROC_ERANGE);
        CHECK_EQ(mproc_shared_array_read(a, 11, 0, out), MPROC_ERANGE);
        CHECK_EQ(mproc_shared_array_read(a, SIZE_MAX, 2, out), MPROC_ERANGE);
        CHECK_EQ(mproc_shared_array_read(a, 1, SIZE_MAX, out), MPROC_ERANGE);
        CHECK_EQ(mproc_shared_array_read(a, 0, 1, NULL), MPROC_EINVAL);
        CHECK_OK(mproc_shared_array_write(a, 8, 2, (long[]){-1, -2}));
        CHECK_EQ(mproc_shared_array_get_i64(a, 8), -1);
        CHECK_EQ(mproc_shared_array_get_i64(a, 9), -2);
        CHECK_EQ(mproc_shared_array_get_i64(a, 7), 70);
        CHECK_EQ(mproc_shared_array_write(a, 9, 2, (long[]){1, 2}), MPROC_ERANGE);
        CHECK_EQ(mproc_shared_array_get_i64(a, 9), -2); /* nothing written */
        CHECK_EQ(mproc_shared_array_write(a, SIZE_MAX - 1, 3, (long[]){1, 2, 3}), MPROC_ERANGE);
        CHECK_EQ(mproc_shared_array_get_i64(a, 10), 0);
        CHECK(mproc_shared_array_get_f64(a, SIZE_MAX) == 0);
        CHECK_EQ(mproc_shared_array_set_i64(a, 10, 1), MPROC_ERANGE);
        CHECK_EQ(mproc_shared_array_set_f64(a, 10, 1), MPROC_ERANGE);
        CHECK_EQ(mproc_shared_array_read(NULL, 0, 0, out), MPROC_EINVAL);
        mproc_shared_array_free(a);
    }
}

/* --------------------------------------------------------- hostile input */

static const mproc_shareable_type *const VT = &mproc_shared_value_type;
static const mproc_shareable_type *const AT = &mproc_shared_array_type;

typedef struct exported {
    mproc_buf buf;
    int fds[4];
    size_t nfds;
} exported;

static void export_of(const mproc_shareable_type *t, void *obj, exported *e)
{
    memset(e, 0, sizeof *e);
    CHECK_OK(t->export_obj(obj, &e->buf, e->fds, &e->nfds, 4));
}

/* Import with duplicates of e's fds as the library would: on failure the
 * caller (the library) closes them; on success the object owns them. */
static int import_dup(const mproc_shareable_type *t, const void *data, size_t len,
                      const exported *e, size_t nfds, void **obj)
{
    int fds[4];
    for (size_t i = 0; i < nfds; i++) {
        fds[i] = fcntl(e->fds[i], F_DUPFD_CLOEXEC, 3);
        CHECK(fds[i] >= 0);
    }
    int rc = t->import_obj(data, len, fds, nfds, obj);
    if (rc)
        for (size_t i = 0; i < nfds; i++)
            close(fds[i]);
    return rc;
}

MTEST(test_import_validates_and_owns_its_descriptors)
{
    mproc_shared_value *v;
    CHECK_OK(mproc_shared_value_new(&v, 'd', &(double){1.5}, NULL));
    exported e;
    export_of(VT, v, &e);
    CHECK_EQ(e.nfds, 1);
    void *obj = NULL;
    int before = mtest_count_fds(NULL, 0);
    /* a well-formed import: same memory, same lock; the fds are consumed */
    CHECK_OK(import_dup(VT, e.buf.data, e.buf.len, &e, 1, &obj));
    CHECK_EQ(mtest_count_fds(NULL, 0), before + 1); /* the dup, now owned by obj */
    mproc_shared_value *w = obj;
    CHECK(mproc_shared_value_get_f64(w) == 1.5);
    CHECK_OK(mproc_shared_value_set_f64(w, 2.5));
    CHECK(mproc_shared_value_get_f64(v) == 2.5);
    CHECK_OK(mproc_lock_acquire(mproc_shared_value_get_lock(w), 1.0));
    CHECK(mproc_lock_is_owned(mproc_shared_value_get_lock(v)));
    CHECK_OK(mproc_lock_release(mproc_shared_value_get_lock(v)));
    mproc_shared_value_free(w);
    CHECK_EQ(mtest_count_fds(NULL, 0), before);

    /* every truncation of the wire fails cleanly */
    for (size_t len = 0; len < e.buf.len; len++)
        CHECK(import_dup(VT, e.buf.data, len, &e, 1, &obj) != 0);
    /* garbage, no descriptor, an extra descriptor, the wrong type */
    CHECK_EQ(import_dup(VT, "\x01\x02garbage!garbage!garbage", 24, &e, 1, &obj),
             MPROC_EPROTO);
    CHECK_EQ(VT->import_obj(e.buf.data, e.buf.len, NULL, 0, &obj), MPROC_EPROTO);
    e.fds[1] = e.fds[0];
    CHECK_EQ(import_dup(VT, e.buf.data, e.buf.len, &e, 2, &obj), MPROC_EPROTO);
    CHECK_EQ(import_dup(AT, e.buf.data, e.buf.len, &e, 1, &obj), MPROC_EPROTO);
    CHECK_EQ(import_dup(&mproc_lock_type, e.buf.data, e.buf.len, &e, 1, &obj), MPROC_EPROTO);

    /* a segment size larger than the descriptor's file: no SIGBUS */
    uint8_t *wire = malloc(e.buf.len);
    memcpy(wire, e.buf.data, e.buf.len);
    uint64_t huge = 1u << 30; /* wire: u64 offset, u32 blob length, then u64 size */
    memcpy(wire + 12, &huge, 8);
    CHECK_EQ(import_dup(VT, wire, e.buf.len, &e, 1, &obj), MPROC_EPROTO);
    /* a lock flag that disagrees with the header */
    memcpy(wire, e.buf.data, e.buf.len);
    wire[e.buf.len - 1] = 1;
    CHECK_EQ(import_dup(VT, wire, e.buf.len, &e, 2, &obj), MPROC_EPROTO);
    free(wire);

    /* corrupt each header field in the segment itself */
    uint32_t *h = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, e.fds[0], 0);
    CHECK(h != MAP_FAILED);
    uint32_t saved[12];
    memcpy(saved, h, sizeof saved);
    const struct {
        size_t word;
        uint32_t value;
    } bad[] = {
        {0, 0x12345678},  /* magic */
        {1, 2},           /* version */
        {2, 'z'},         /* unknown ctype */
        {2, 0x10000 | 'd'},
        {2, 'i'},         /* a known ctype with another size */
        {3, 4},           /* element size */
        {4, 7},           /* lock mode */
        {4, MPROC_SHARED_RAW}, /* data offset no longer matches */
        {6, 2},           /* a value of two elements */
        {6, 0},           /* len 0 */
        {7, 0xffffffff},  /* len huge */
        {8, 4096},        /* data offset */
        {16, 0},          /* the lock's magic */
        {17, 0},          /* Lock vs RLock */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint32_t old = h[bad[i].word];
        h[bad[i].word] = bad[i].value;
        int rc = import_dup(VT, e.buf.data, e.buf.len, &e, 1, &obj);
        if (rc != MPROC_EPROTO) {
            fprintf(stderr, "corrupt word %zu = %u: rc %d\n", bad[i].word, bad[i].value, rc);
            CHECK(0);
        }
        h[bad[i].word] = old;
    }
    CHECK(memcmp(saved, h, sizeof saved) == 0);
    munmap(h, 4096);
    CHECK_OK(import_dup(VT, e.buf.data, e.buf.len, &e, 1, &obj));
    mproc_shared_value_free(obj);
    free(e.buf.data);
    mproc_shared_value_free(v);
}

MTEST(test_import_of_a_borrowed_lock)
{
    mproc_lock *l;
    CHECK_OK(mproc_rlock_new(&l));
    mproc_shared_opts o = {.use_lock = l};
    mproc_shared_array *a;
    CHECK_OK(mproc_shared_array_new(&a, 'f', 3, (float[]){1, 2, 3}, &o));
    exported e;
    export_of(AT, a, &e);
    CHECK_EQ(e.nfds, 2);
    void *obj = NULL;
    CHECK_EQ(import_dup(AT, e.buf.data, e.buf.len, &e, 1, &obj), MPROC_EPROTO);
    for (size_t len = 0; len < e.buf.len; len++)
        CHECK(import_dup(AT, e.buf.data, len, &e, 2, &obj) != 0);
    int before = mtest_count_fds(NULL, 0);
    CHECK_OK(import_dup(AT, e.buf.data, e.buf.len, &e, 2, &obj));
    CHECK_EQ(mtest_count_fds(NULL, 0), before + 2);
    mproc_shared_array *b = obj;
    CHECK(mproc_shared_array_get_f64(b, 2) == 3.0);
    mproc_lock *bl = mproc_shared_array_get_lock(b);
    CHECK(bl != NULL && bl != l && mproc_lock_is_recursive(bl));
    CHECK_OK(mproc_lock_acquire(l, 1.0));
    CHECK(mproc_lock_is_owned(bl));
    CHECK_OK(mproc_lock_release(bl));
    mproc_shared_array_free(b);
    CHECK_EQ(mtest_count_fds(NULL, 0), before);
    /* too little room for two descriptors */
    mproc_buf buf = {0};
    int fds[1];
    size_t nfds = 0;
    CHECK_EQ(AT->export_obj(a, &buf, fds, &nfds, 1), MPROC_EINVAL);
    CHECK_EQ(nfds, 0);
    free(buf.data);
    free(e.buf.data);
    mproc_shared_array_free(a);
    mproc_lock_free(l);
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    static const mtest_case cases[] = {
        MTEST_ENTRY(test_ctype_sizes_match_the_c_types),
        MTEST_ENTRY(test_every_ctype_round_trips_in_values_and_arrays),
        MTEST_ENTRY(test_native_c_types_through_get_obj),
        MTEST_ENTRY(test_null_init_means_zero),
        MTEST_ENTRY(test_bad_arguments_are_refused),
        MTEST_ENTRY(test_conversions_truncate_wrap_and_saturate),
        MTEST_ENTRY(test_add_is_one_step_and_wraps_at_the_width),
        MTEST_ENTRY(test_lock_modes_and_get_lock),
        METHOD_ENTRIES(use_lock_shared),
        METHOD_ENTRIES(seed_value_array),
        MTEST_ENTRY(test_lost_update_without_the_lock),
        METHOD_ENTRIES(counters_are_exact),
        METHOD_ENTRIES(owner_death),
        MTEST_ENTRY(test_array_ranges),
        MTEST_ENTRY(test_import_validates_and_owns_its_descriptors),
        MTEST_ENTRY(test_import_of_a_borrowed_lock),
    };
    mtest_warmup = mtest_warmup_tracker_and_forkserver;
    return mtest_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
