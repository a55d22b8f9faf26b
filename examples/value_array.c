/* value_array.c — seed 001's shared-memory example in C.
 *
 *   def f(n, a):
 *       n.value = 3.1415927
 *       for i in range(len(a)):
 *           a[i] = -a[i]
 *
 *   if __name__ == '__main__':
 *       num = Value('d', 0.0)
 *       arr = Array('i', range(10))
 *       p = Process(target=f, args=(num, arr)); p.start(); p.join()
 *       print(num.value)
 *       print(arr[:])
 *
 * It runs the child with the spawn start method (a fresh exec of this program),
 * to show that a Value and an Array cross into any child: the child maps the
 * same memory and uses the same lock. Pass "fork" or "forkserver" to try those. */
#include <stdio.h>
#include <stdlib.h>

#include <mproc.h>

static int f(mproc_args *args)
{
    mproc_shared_value *n = mproc_args_object(args, 0, &mproc_shared_value_type);
    mproc_shared_array *a = mproc_args_object(args, 1, &mproc_shared_array_type);
    mproc_shared_value_set_f64(n, 3.1415927); /* n.value = 3.1415927 */
    for (size_t i = 0; i < mproc_shared_array_len(a); i++) /* a[i] = -a[i] */
        mproc_shared_array_set_i64(a, i, -mproc_shared_array_get_i64(a, i));
    return 0;
}

/* Print a double as Python's repr does: the shortest text that reads back exactly. */
static void print_float(double x)
{
    char buf[32];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, x);
        if (strtod(buf, NULL) == x)
            break;
    }
    printf("%s\n", buf);
}

int main(int argc, char **argv)
{
    /* First thing in main(): in a spawned child this runs f and never returns. */
    mproc_init(&argc, &argv);
    mproc_start_method method = MPROC_START_SPAWN;
    if (argc > 1 && mproc_start_method_parse(argv[1], &method) != 0) {
        fprintf(stderr, "usage: %s [fork|spawn|forkserver]\n", argv[0]);
        return 2;
    }
    mproc_set_start_method(method, true);

    mproc_shared_value *num; /* num = Value('d', 0.0) */
    mproc_shared_array *arr; /* arr = Array('i', range(10)) */
    int range10[10];
    for (int i = 0; i < 10; i++)
        range10[i] = i;
    if (mproc_shared_value_new(&num, 'd', &(double){0.0}, NULL) != 0 ||
        mproc_shared_array_new(&arr, 'i', 10, range10, NULL) != 0) {
        fprintf(stderr, "cannot create shared objects: %s\n", mproc_errmsg());
        return 1;
    }

    mproc_args *args = mproc_args_new();
    mproc_args_add_object(args, &mproc_shared_value_type, num);
    mproc_args_add_object(args, &mproc_shared_array_type, arr);
    mproc_process *p;
    int rc = mproc_process_new(&p, f, args, NULL);
    mproc_args_free(args);
    if (rc == 0)
        rc = mproc_process_start(p);
    if (rc != 0) {
        fprintf(stderr, "start failed: %s: %s\n", mproc_strerror(rc), mproc_errmsg());
        return 1;
    }
    mproc_process_join(p, MPROC_FOREVER);
    mproc_process_close(p);

    print_float(mproc_shared_value_get_f64(num)); /* print(num.value) */
    int out[10];                                  /* print(arr[:]) */
    mproc_shared_array_read(arr, 0, 10, out);
    printf("[");
    for (int i = 0; i < 10; i++)
        printf(i ? ", %d" : "%d", out[i]);
    printf("]\n");

    mproc_shared_array_free(arr);
    mproc_shared_value_free(num);
    return 0;
}
