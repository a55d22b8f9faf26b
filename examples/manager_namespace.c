/* manager_namespace.c — seed 000's Manager Namespace example in C: the update
 * that is lost, and the two ways to keep it.
 *
 *   def f(ns):
 *       ns.x.append(1)
 *       ns.y.append('a')
 *
 *   if __name__ == '__main__':
 *       manager = multiprocessing.Manager()
 *       ns = manager.Namespace()
 *       ns.x = []
 *       ns.y = []
 *       print 'before process operation:', ns
 *       p = multiprocessing.Process(target=f, args=(ns,)); p.start(); p.join()
 *       print 'after procss operation: ', ns     # still x = [], y = []
 *
 * The seed expects x = [1], y = ['a'] and gets x = [], y = []: `ns.x` asks
 * the manager for the attribute and returns a *copy* of the list, and the
 * append changes that copy in the child only. A manager sees changes made
 * through a proxy (ns.x = ..., a managed list's append), never changes to a
 * plain value after it was read. The seed's fix reads, modifies and assigns
 * back (`x.append(1); ns.x = x`). The same holds here, call for call:
 * mproc_namespace_get() returns a new value that is yours, and only
 * mproc_namespace_set() changes the server. A third way stores a managed
 * list in the Namespace (a reference made by mproc_proxy_ref): whoever reads
 * ns.x gets the reference, turns it into a proxy, and appends to the one
 * list on the server.
 *
 * Read-modify-assign is itself a race when several processes do it at once
 * (two read [], each writes back its own one-item list): use the managed list
 * then, or a managed Lock around the three steps.
 *
 * The children are forked (the default); pass "spawn" or "forkserver" to try
 * those: a proxy crosses into any child. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mproc.h>

enum { LOST, ASSIGN_BACK, MANAGED_LIST };

static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "%s: %s (%s)\n", what, mproc_strerror(rc), mproc_errmsg());
        exit(1);
    }
}

/* Append `item` (taken) to attribute `name`, the way `how` says. */
static int append_attr(mproc_proxy *ns, const char *name, mproc_value *item, int how)
{
    mproc_value *v = NULL;
    int rc = mproc_namespace_get(ns, name, &v); /* v = ns.x: a copy, or a reference */
    if (rc == 0 && how == MANAGED_LIST) {
        /* ns.x.append(1) on a managed list: the reference becomes a proxy
         * and the append happens on the server. */
        mproc_proxy *list;
        rc = mproc_manager_proxy(mproc_proxy_manager(ns), v, &list);
        if (rc == 0) {
            rc = mproc_list_append(list, item);
            mproc_proxy_free(list);
        }
    } else if (rc == 0) {
        rc = mproc_value_append(v, item); /* x.append(1): changes our copy */
        item = NULL;
        if (rc == 0 && how == ASSIGN_BACK)
            rc = mproc_namespace_set(ns, name, v); /* ns.x = x: now the server has it */
        /* LOST: nothing tells the server; the copy dies with v. */
    }
    mproc_value_free(item);
    mproc_value_free(v);
    return rc;
}

/* def f(ns): ns.x.append(1); ns.y.append('a') — in one of three ways. */
static int f(mproc_args *args)
{
    mproc_proxy *ns = mproc_args_object(args, 0, &mproc_proxy_type);
    int64_t how = LOST;
    mproc_args_get_int(args, 1, &how);
    if (append_attr(ns, "x", mproc_value_int(1), (int)how) != 0 ||
        append_attr(ns, "y", mproc_value_str("a"), (int)how) != 0) {
        fprintf(stderr, "child: %s\n", mproc_errmsg());
        return 1;
    }
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* print(ns): "Namespace(x=[1], y=['a'])", attributes sorted as Python's
 * Namespace repr does; a managed list shows as <ListProxy [...]> with the
 * list's contents. */
static void print_namespace(const char *label, mproc_proxy *ns)
{
    mproc_value *attrs;
    check(mproc_namespace_copy(ns, &attrs), "copy");
    size_t n = mproc_value_len(attrs);
    const char *names[16];
    if (n > 16)
        n = 16;
    for (size_t i = 0; i < n; i++)
        names[i] = mproc_value_as_str(mproc_value_key_at(attrs, i), NULL);
    qsort(names, n, sizeof *names, cmp_str);
    printf("%s Namespace(", label);
    for (size_t i = 0; i < n; i++) {
        const mproc_value *v = mproc_value_get(attrs, names[i]);
        mproc_value *shown = NULL;
        mproc_proxy *list = NULL;
        if (mproc_proxy_ref_typeid(v)) { /* a managed object: show what it holds */
            check(mproc_manager_proxy(mproc_proxy_manager(ns), v, &list), "proxy");
            check(mproc_list_copy(list, &shown), "list copy");
            mproc_proxy_free(list);
        }
        char *r = mproc_value_repr(shown ? shown : v);
        printf(shown ? "%s%s=<ListProxy %s>" : "%s%s=%s", i ? ", " : "", names[i], r ? r : "?");
        free(r);
        mproc_value_free(shown);
    }
    printf(")\n");
    mproc_value_free(attrs);
}

/* One run of the seed: a new Namespace with x and y, f(ns) in a child. */
static void run(mproc_manager *m, int how)
{
    mproc_proxy *ns;
    check(mproc_manager_namespace(m, &ns), "Namespace"); /* ns = manager.Namespace() */
    for (int i = 0; i < 2; i++) {
        const char *name = i ? "y" : "x";
        if (how == MANAGED_LIST) { /* ns.x = manager.list() */
            mproc_proxy *list;
            check(mproc_manager_list(m, &list), "list");
            mproc_value *ref = mproc_proxy_ref(list);
            check(mproc_namespace_set(ns, name, ref), "setattr");
            mproc_value_free(ref);
            /* The Namespace holds a counted reference: the list outlives
             * this proxy (in Python the list would die with it). */
            mproc_proxy_free(list);
        } else { /* ns.x = [] */
            mproc_value *empty = mproc_value_list();
            check(mproc_namespace_set(ns, name, empty), "setattr");
            mproc_value_free(empty);
        }
    }
    print_namespace("  before process operation:", ns);

    mproc_args *args = mproc_args_new();
    mproc_args_add_object(args, &mproc_proxy_type, ns);
    mproc_args_add_int(args, how);
    mproc_process *p;
    int rc = mproc_process_new(&p, f, args, NULL);
    if (rc == 0)
        rc = mproc_process_start(p);
    mproc_args_free(args);
    check(rc, "start");
    mproc_process_join(p, MPROC_FOREVER);
    if (mproc_process_exitcode(p) != 0)
        fprintf(stderr, "the child failed\n");
    mproc_process_close(p);

    print_namespace("  after process operation: ", ns);
    mproc_proxy_free(ns);
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
    mproc_manager *m; /* manager = multiprocessing.Manager() */
    check(mproc_manager_new(&m, NULL), "manager");
    check(mproc_manager_start(m), "manager start");

    printf("1. the seed's f: ns.x.append(1) appends to a copy; the change is lost\n");
    run(m, LOST);
    printf("2. the seed's fix: read, append, assign back (ns.x = x)\n");
    run(m, ASSIGN_BACK);
    printf("3. a managed list in the Namespace: ns.x is a reference, the append is shared\n");
    run(m, MANAGED_LIST);

    mproc_manager_free(m); /* shuts the server down */
    return 0;
}
