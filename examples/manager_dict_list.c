/* manager_dict_list.c — seed 001's Manager example in C, then a few workers
 * filling one managed dict and list at once.
 *
 *   def f(d, l):
 *       d[1] = '1'
 *       d['2'] = 2
 *       d[0.25] = None
 *       l.reverse()
 *
 *   if __name__ == '__main__':
 *       with Manager() as manager:
 *           d = manager.dict()
 *           l = manager.list(range(10))
 *           p = Process(target=f, args=(d, l)); p.start(); p.join()
 *           print(d)     # {1: '1', '2': 2, 0.25: None}
 *           print(l)     # [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
 *
 * The dict and the list live in the manager's server process; d and l are
 * proxies, and every call on them (set, reverse, copy to print) is one request
 * to the server. Keys keep their types across processes: 1, '2' and 0.25 are
 * three different keys, as in Python.
 *
 * Part two: WORKERS children each store d[i] = i * i, append i to the list
 * and count themselves in d['done']. Two things go wrong in Python here:
 *   - `d['done'] += 1` is a get and then a set, two requests: two workers can
 *     read the same number and one increment is lost (seed 000's lost update,
 *     through a manager). mproc_dict_add() does the += on the server, in one
 *     step;
 *   - the order of the appends (and of the dict's keys) depends on which
 *     worker ran first. To print the same thing every time, the list is
 *     sorted on the server (l.sort()) and the dict's items are sorted here.
 *
 * The children are forked (the default); pass "spawn" or "forkserver" to try
 * those: proxies cross into any child. */
#include <stdio.h>
#include <stdlib.h>

#include <mproc.h>

#define WORKERS 4

static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "%s: %s (%s)\n", what, mproc_strerror(rc), mproc_errmsg());
        exit(1);
    }
}

/* d[key] = val; both taken. */
static int set_item(mproc_proxy *d, mproc_value *key, mproc_value *val)
{
    int rc = key && val ? mproc_dict_set(d, key, val) : MPROC_ENOMEM;
    mproc_value_free(key);
    mproc_value_free(val);
    return rc;
}

/* def f(d, l) */
static int f(mproc_args *args)
{
    mproc_proxy *d = mproc_args_object(args, 0, &mproc_proxy_type);
    mproc_proxy *l = mproc_args_object(args, 1, &mproc_proxy_type);
    int rc = set_item(d, mproc_value_int(1), mproc_value_str("1")); /* d[1] = '1' */
    if (rc == 0)
        rc = set_item(d, mproc_value_str("2"), mproc_value_int(2)); /* d['2'] = 2 */
    if (rc == 0)
        rc = set_item(d, mproc_value_float(0.25), mproc_value_nil()); /* d[0.25] = None */
    if (rc == 0)
        rc = mproc_list_reverse(l); /* l.reverse() */
    return rc == 0 ? 0 : 1;
}

/* A worker of part two: d[i] = i * i; l.append(i); d['done'] += 1. */
static int worker(mproc_args *args)
{
    mproc_proxy *d = mproc_args_object(args, 0, &mproc_proxy_type);
    mproc_proxy *l = mproc_args_object(args, 1, &mproc_proxy_type);
    int64_t i = 0;
    mproc_args_get_int(args, 2, &i);
    int rc = set_item(d, mproc_value_int(i), mproc_value_int(i * i));
    mproc_value *v = mproc_value_int(i), *done = mproc_value_str("done");
    if (rc == 0)
        rc = v ? mproc_list_append(l, v) : MPROC_ENOMEM;
    if (rc == 0)
        rc = done ? mproc_dict_add(d, done, 1, NULL) : MPROC_ENOMEM;
    mproc_value_free(v);
    mproc_value_free(done);
    return rc == 0 ? 0 : 1;
}

/* Start `n` children running `target` with (d, l, i), and wait for them. */
static void run_children(mproc_target_fn target, mproc_proxy *d, mproc_proxy *l, int n)
{
    mproc_process *ps[WORKERS];
    for (int i = 0; i < n; i++) {
        mproc_args *args = mproc_args_new();
        mproc_args_add_object(args, &mproc_proxy_type, d);
        mproc_args_add_object(args, &mproc_proxy_type, l);
        mproc_args_add_int(args, i);
        int rc = mproc_process_new(&ps[i], target, args, NULL);
        if (rc == 0)
            rc = mproc_process_start(ps[i]);
        mproc_args_free(args);
        check(rc, "start");
    }
    for (int i = 0; i < n; i++) {
        mproc_process_join(ps[i], MPROC_FOREVER);
        if (mproc_process_exitcode(ps[i]) != 0)
            fprintf(stderr, "child %d failed\n", i);
        mproc_process_close(ps[i]);
    }
}

/* print(d) */
static void print_dict(mproc_proxy *d)
{
    mproc_value *snap;
    check(mproc_dict_copy(d, &snap), "dict copy");
    mproc_value_print(snap, stdout);
    mproc_value_free(snap);
}

/* print(dict(sorted((k, v) for k, v in d.items() if k != 'done'))), then
 * d['done']: the same output whoever ran first. ('done' is left out of the
 * sort: a str and an int do not compare, in Python as here.) */
static void print_dict_sorted(mproc_proxy *d)
{
    mproc_value *items, *ints = mproc_value_list(), *out = mproc_value_map(), *done = NULL;
    check(mproc_dict_items(d, &items), "dict items");
    for (size_t i = 0; i < mproc_value_len(items); i++) {
        const mproc_value *kv = mproc_value_at(items, i);
        if (mproc_value_type(mproc_value_at(kv, 0)) == MPROC_V_INT)
            mproc_value_append(ints, mproc_value_copy(kv));
        else
            done = mproc_value_copy(mproc_value_at(kv, 1));
    }
    check(mproc_value_sort(ints, false), "sort");
    for (size_t i = 0; i < mproc_value_len(ints); i++) {
        const mproc_value *kv = mproc_value_at(ints, i);
        mproc_value_map_set(out, mproc_value_copy(mproc_value_at(kv, 0)),
                            mproc_value_copy(mproc_value_at(kv, 1)));
    }
    mproc_value_print(out, stdout);
    printf("d['done'] = %lld\n", (long long)mproc_value_as_int(done));
    mproc_value_free(done);
    mproc_value_free(out);
    mproc_value_free(ints);
    mproc_value_free(items);
}

/* print(l) */
static void print_list(mproc_proxy *l)
{
    mproc_value *snap;
    check(mproc_list_copy(l, &snap), "list copy");
    mproc_value_print(snap, stdout);
    mproc_value_free(snap);
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv); /* needed for spawn and forkserver children */
    if (argc > 1) {
        mproc_start_method sm;
        if (mproc_start_method_parse(argv[1], &sm) != 0) {
            fprintf(stderr, "usage: %s [fork|spawn|forkserver]\n", argv[0]);
            return 2;
        }
        mproc_set_start_method(sm, true);
    }
    mproc_manager *m; /* with Manager() as manager: */
    check(mproc_manager_new(&m, NULL), "manager");
    check(mproc_manager_start(m), "manager start");

    mproc_proxy *d, *l;
    check(mproc_manager_dict(m, &d), "dict"); /* d = manager.dict() */
    mproc_value *range10 = mproc_value_list();
    for (int i = 0; i < 10; i++)
        mproc_value_append(range10, mproc_value_int(i));
    check(mproc_manager_create(m, "list", &range10, 1, &l), "list"); /* manager.list(range(10)) */
    mproc_value_free(range10);

    printf("seed 001: f(d, l) in a child, then print(d) and print(l)\n");
    run_children(f, d, l, 1);
    print_dict(d);
    print_list(l);

    mproc_proxy_free(d);
    mproc_proxy_free(l);

    printf("%d workers: d[i] = i * i, l.append(i), d['done'] += 1 (mproc_dict_add)\n", WORKERS);
    check(mproc_manager_dict(m, &d), "dict");
    check(mproc_manager_list(m, &l), "list");
    run_children(worker, d, l, WORKERS);
    check(mproc_list_sort(l, false), "sort"); /* l.sort(): the order of the appends varies */
    print_dict_sorted(d);
    print_list(l);
    mproc_proxy_free(d);
    mproc_proxy_free(l);

    mproc_manager_free(m); /* end of `with`: the server shuts down */
    return 0;
}
