/* lost_update.c — seed 000's pitfall with a shared Value, and its fixes.
 *
 *   def func(val):
 *       for i in range(10):
 *           val.value += 1          # a locked read, then a locked write
 *   v = Value('i', 0)
 *   ten processes run func(v)      -> prints less than 100
 *
 * The Value has a lock, but `val.value += 1` takes it twice: once to read and
 * once to write, so two processes can read the same number and one increment
 * is lost. The fix holds the lock around the whole read-modify-write:
 *
 *       with val.get_lock():
 *           val.value += 1
 *
 * mproc also has mproc_shared_value_add_i64(), which is that in one call.
 * The children are forked (the default); pass "spawn" or "forkserver" to try
 * those: the Value crosses into any child. */
#include <stdio.h>

#include <mproc.h>

#define NPROC 10
#define TIMES 20000

enum { UNLOCKED, WITH_LOCK, ADD };

static int func(mproc_args *args)
{
    mproc_shared_value *val = mproc_args_object(args, 0, &mproc_shared_value_type);
    mproc_event *go = mproc_args_object(args, 1, &mproc_event_type);
    int64_t how = 0;
    mproc_args_get_int(args, 2, &how);
    mproc_event_wait(go, MPROC_FOREVER); /* start together, so they overlap */
    for (int i = 0; i < TIMES; i++) {
        if (how == UNLOCKED) { /* val.value += 1 */
            mproc_shared_value_set_i64(val, mproc_shared_value_get_i64(val) + 1);
        } else if (how == WITH_LOCK) { /* with val.get_lock(): val.value += 1 */
            mproc_lock *l = mproc_shared_value_get_lock(val);
            mproc_lock_acquire(l, MPROC_FOREVER);
            mproc_shared_value_set_i64(val, mproc_shared_value_get_i64(val) + 1);
            mproc_lock_release(l);
        } else {
            mproc_shared_value_add_i64(val, 1, NULL);
        }
    }
    return 0;
}

/* Ten processes run func(v, how); returns v's final value, or -1. */
static long run(int how)
{
    mproc_shared_value *v; /* v = Value('i', 0) */
    mproc_event *go;
    if (mproc_shared_value_new(&v, 'i', &(int){0}, NULL) != 0 || mproc_event_new(&go) != 0)
        return -1;
    mproc_args *args = mproc_args_new();
    mproc_args_add_object(args, &mproc_shared_value_type, v);
    mproc_args_add_object(args, &mproc_event_type, go);
    mproc_args_add_int(args, how);
    mproc_process *ps[NPROC];
    int started = 0;
    for (; started < NPROC; started++)
        if (mproc_process_new(&ps[started], func, args, NULL) != 0 ||
            mproc_process_start(ps[started]) != 0) {
            fprintf(stderr, "start failed: %s\n", mproc_errmsg());
            break;
        }
    mproc_args_free(args);
    mproc_event_set(go);
    for (int i = 0; i < started; i++) {
        mproc_process_join(ps[i], MPROC_FOREVER);
        mproc_process_close(ps[i]);
    }
    long total = started == NPROC ? (long)mproc_shared_value_get_i64(v) : -1;
    mproc_shared_value_free(v);
    mproc_event_free(go);
    return total;
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv); /* needed for spawn and forkserver children */
    mproc_start_method m;
    if (argc > 1) {
        if (mproc_start_method_parse(argv[1], &m) != 0) {
            fprintf(stderr, "usage: %s [fork|spawn|forkserver]\n", argv[0]);
            return 2;
        }
        mproc_set_start_method(m, true);
    }
    const long want = (long)NPROC * TIMES;
    printf("%d processes each add 1 to a shared Value('i', 0) %d times (expect %ld)\n", NPROC,
           TIMES, want);

    long got = run(UNLOCKED);
    if (got < 0)
        return 1;
    if (got < want)
        printf("  val.value += 1 (read, then write):   %7ld  lost %ld updates\n", got, want - got);
    else
        printf("  val.value += 1 (read, then write):   %7ld  lucky: nothing lost this time\n", got);

    got = run(WITH_LOCK);
    printf("  with val.get_lock(): val.value += 1: %7ld  %s\n", got,
           got == want ? "exact" : "WRONG");
    long got2 = run(ADD);
    printf("  mproc_shared_value_add_i64(val, 1):  %7ld  %s\n", got2,
           got2 == want ? "exact" : "WRONG");
    return got == want && got2 == want ? 0 : 1;
}
