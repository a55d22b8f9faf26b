/* containers.c — the manager's non-blocking built-in types: dict, list,
 * Namespace, Value and Array (docs/manager-methods.md). The server holds the
 * object's mutex around every create/call/destroy, so nothing here locks.
 *
 * References: whatever enters a container is first passed to mgr_refs_hold
 * (keys too: an ext key may be a reference), and whatever leaves it (removed,
 * replaced, cleared, destroyed, or handed to the caller by pop) goes through
 * mgr_refs_release. Storing therefore runs in the order "make room, hold,
 * store": once references are held the store cannot fail, so there is never
 * a held reference without its value in the container.
 *
 * Equality is mproc_value_equal's: typed, so 1, 1.0 and True are three
 * different dict keys and list.index(1) does not find 1.0 (unlike Python). */
#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mgr_int.h"

/* ------------------------------------------------------------ helpers */

typedef int (*method_fn)(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c);

typedef struct method {
    const char *name;
    method_fn fn;
} method;

static int run_method(const method *t, size_t n, mgr_obj *o, const char *name,
                      mproc_value *args, mproc_value **result, mgr_call *c)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(t[i].name, name) == 0)
            return t[i].fn(o, args, result, c);
    return mgr_fail(c, MPROC_ENOSYS, "AttributeError: '%s' object has no attribute '%s'",
                    o->type->typeid, name);
}

static int ret_value(mproc_value **result, mproc_value *v)
{
    *result = v;
    return v ? 0 : MPROC_ENOMEM;
}

static int ret_copy(mproc_value **result, const mproc_value *v)
{
    return ret_value(result, mproc_value_copy(v));
}

static int ret_int(mproc_value **result, int64_t i) { return ret_value(result, mproc_value_int(i)); }
static int ret_bool(mproc_value **result, bool b) { return ret_value(result, mproc_value_bool(b)); }

/* Python's name for the type of `v`, for messages. */
static const char *tname(const mproc_value *v)
{
    return mproc__py_type_name(v);
}

/* A value that left a container: drop the references it holds, then free it. */
static void drop(mgr_server *s, mproc_value *v)
{
    if (v) {
        mgr_refs_release(s, v);
        mproc_value_free(v);
    }
}

/* Steal args[0..n) into out[0..n). On ENOMEM nothing is stolen (the items
 * go back into args) and out[] is all NULL. */
static int take_args(mproc_value *args, size_t n, mproc_value **out)
{
    for (size_t i = 0; i < n; i++) {
        out[i] = mgr_arg_take(args, i);
        if (!out[i]) {
            while (i--) {
                mproc_value_free(mproc_value_replace_at(args, i, out[i]));
                out[i] = NULL;
            }
            return MPROC_ENOMEM;
        }
    }
    return 0;
}

/* Item i is present and not nil (optional arguments that default otherwise). */
static bool arg_given(const mproc_value *args, size_t i)
{
    const mproc_value *v = mproc_value_at(args, i);
    return v && mproc_value_type(v) != MPROC_V_NIL;
}

/* Python's index: negative counts from the end. false when out of range. */
static bool norm_index(int64_t i, size_t n, size_t *out)
{
    if (i < 0)
        i += (int64_t)n;
    if (i < 0 || (uint64_t)i >= n)
        return false;
    *out = (size_t)i;
    return true;
}

/* A slice bound as Python clamps it (list.index start/stop, list.insert). */
static size_t clamp_index(int64_t i, size_t n)
{
    if (i < 0) {
        i += (int64_t)n;
        if (i < 0)
            i = 0;
    }
    return (uint64_t)i > n ? n : (size_t)i;
}

static int check_key(mgr_call *c, const mproc_value *k)
{
    mproc_vtype t = mproc_value_type(k);
    if (t == MPROC_V_LIST || t == MPROC_V_MAP || t == MPROC_V_ERROR)
        return mgr_fail(c, MPROC_EINVAL, "TypeError: unhashable type: '%s'", tname(k));
    return 0;
}

static int key_error(mgr_call *c, const mproc_value *k)
{
    char r[200];
    mgr_repr(k, r, sizeof r);
    return mgr_fail(c, MPROC_ENOENT, "KeyError: %s", r);
}

/* map[key] = val. Takes ownership of key and val in every case. */
static int map_store(mgr_obj *o, mproc_value *map, mproc_value *key, mproc_value *val,
                     mgr_call *c)
{
    int rc = check_key(c, key);
    if (!rc)
        rc = mproc__reserve(map, 1);
    if (!rc)
        rc = mgr_refs_hold(c, val);
    if (!rc && (rc = mgr_refs_hold(c, key)) != 0)
        mgr_refs_release(o->srv, val);
    if (rc) {
        mproc_value_free(key);
        mproc_value_free(val);
        return rc;
    }
    /* An equal key already there stays (as in Python): the new one comes
     * back in old_key, holding references of its own. */
    mproc_value *old_key, *old;
    rc = mproc__map_set(map, key, val, &old_key, &old);
    assert(rc == 0); /* room reserved, key hashable */
    drop(o->srv, old_key);
    drop(o->srv, old);
    return rc;
}

/* Insert `item` at i (SIZE_MAX appends). Takes ownership of item. */
static int list_store(mgr_call *c, mproc_value *list, size_t i, mproc_value *item)
{
    int rc = mproc__reserve(list, 1);
    if (!rc)
        rc = mgr_refs_hold(c, item);
    if (rc) {
        mproc_value_free(item);
        return rc;
    }
    rc = i == SIZE_MAX ? mproc_value_append(list, item) : mproc_value_insert(list, i, item);
    assert(rc == 0); /* room reserved */
    return rc;
}

/* The keys, values or [key, value] items of a map as a new list. */
enum { COL_KEYS, COL_VALUES, COL_ITEMS };

static int map_column(const mproc_value *map, int col, mproc_value **result)
{
    size_t n = mproc_value_len(map);
    mproc_value *l = mproc_value_list();
    if (!l || mproc__reserve(l, n) != 0)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        mproc_value *x;
        if (col == COL_ITEMS) {
            x = mproc_value_list();
            if (!x || mproc_value_append(x, mproc_value_copy(mproc_value_key_at(map, i))) ||
                mproc_value_append(x, mproc_value_copy(mproc_value_at(map, i)))) {
                mproc_value_free(x);
                goto oom;
            }
        } else {
            x = mproc_value_copy(col == COL_KEYS ? mproc_value_key_at(map, i)
                                                 : mproc_value_at(map, i));
        }
        if (!x || mproc_value_append(l, x) != 0)
            goto oom;
    }
    *result = l;
    return 0;
oom:
    mproc_value_free(l);
    return MPROC_ENOMEM;
}

/* Free a whole map or list impl, dropping every reference it holds. */
static void destroy_tree(mgr_obj *o)
{
    drop(o->srv, o->impl);
    o->impl = NULL;
}

/* ------------------------------------------------------------ dict */

static int dict_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    int rc = mgr_args_count(c, "dict", args, 0, 1);
    if (rc)
        return rc;
    mproc_value *m;
    if (arg_given(args, 0)) {
        if (mproc_value_type(mproc_value_at(args, 0)) != MPROC_V_MAP)
            return mgr_fail(c, MPROC_EINVAL, "TypeError: dict() argument must be a dict, not '%s'",
                            tname(mproc_value_at(args, 0)));
        if ((rc = mgr_refs_hold(c, mproc_value_at(args, 0))) != 0)
            return rc;
        if (!(m = mgr_arg_take(args, 0))) {
            mgr_refs_release(o->srv, mproc_value_at(args, 0));
            return MPROC_ENOMEM;
        }
    } else if (!(m = mproc_value_map())) {
        return MPROC_ENOMEM;
    }
    o->impl = m;
    return 0;
}

static int dict_get(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    int rc = mgr_args_count(c, "get", args, 1, 2);
    if (rc)
        return rc;
    const mproc_value *key = mproc_value_at(args, 0);
    const mproc_value *v = mproc_value_map_find(o->impl, key);
    if (v)
        return ret_copy(result, v);
    if ((rc = check_key(c, key)) != 0)
        return rc;
    if (mproc_value_len(args) == 2)
        return ret_value(result, mgr_arg_take(args, 1));
    return key_error(c, key);
}

static int dict_set(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    mproc_value *kv[2];
    int rc = mgr_args_count(c, "set", args, 2, 2);
    if (rc || (rc = take_args(args, 2, kv)) != 0)
        return rc;
    return map_store(o, o->impl, kv[0], kv[1], c);
}

/* Remove an entry known to be there, dropping its key's and value's
 * references; the value is returned with its references already dropped. */
static mproc_value *dict_remove(mgr_obj *o, mproc_value *map, const mproc_value *key,
                                mgr_call *to_caller)
{
    /* the stored key equals `key`: releasing either drops the same references */
    mgr_refs_release(o->srv, key);
    mproc_value *v = mproc_value_map_take(map, key);
    if (to_caller) /* pop: the caller gets the value and, for a while, its objects */
        mgr_refs_handover(to_caller, v);
    else
        mgr_refs_release(o->srv, v);
    return v;
}

static int dict_del(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    int rc = mgr_args_count(c, "del", args, 1, 1);
    if (rc)
        return rc;
    const mproc_value *key = mproc_value_at(args, 0);
    if ((rc = check_key(c, key)) != 0)
        return rc;
    if (!mproc_value_map_find(o->impl, key))
        return key_error(c, key);
    mproc_value_free(dict_remove(o, o->impl, key, NULL));
    return 0;
}

static int dict_contains(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    int rc = mgr_args_count(c, "contains", args, 1, 1);
    if (rc || (rc = check_key(c, mproc_value_at(args, 0))) != 0)
        return rc;
    return ret_bool(result, mproc_value_map_find(o->impl, mproc_value_at(args, 0)) != NULL);
}

static int dict_len(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    int rc = mgr_args_count(c, "len", args, 0, 0);
    return rc ? rc : ret_int(result, (int64_t)mproc_value_len(o->impl));
}

static int dict_keys(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    int rc = mgr_args_count(c, "keys", args, 0, 0);
    return rc ? rc : map_column(o->impl, COL_KEYS, result);
}

static int dict_values(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    int rc = mgr_args_count(c, "values", args, 0, 0);
    return rc ? rc : map_column(o->impl, COL_VALUES, result);
}

static int dict_items(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    int rc = mgr_args_count(c, "items", args, 0, 0);
    return rc ? rc : map_column(o->impl, COL_ITEMS, result);
}

static int dict_update(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    int rc = mgr_args_count(c, "update", args, 1, 1);
    if (rc)
        return rc;
    mproc_value *src = mproc_value_at(args, 0);
    if (mproc_value_type(src) != MPROC_V_MAP)
        return mgr_fail(c, MPROC_EINVAL, "TypeError: update() argument must be a dict, not '%s'",
                        tname(src));
    mproc_value *map = o->impl;
    /* Room for every entry, then references for all of them in one walk:
     * after that nothing can fail and the update is all or nothing. */
    if ((rc = mproc__reserve(map, mproc_value_len(src))) != 0 ||
        (rc = mgr_refs_hold(c, src)) != 0)
        return rc;
    size_t n;
    mproc__entry *e = mproc__map_detach(src, &n);
    for (size_t i = 0; i < n; i++) {
        mproc_value *old_key, *old;
        rc = mproc__map_set(map, e[i].key, e[i].val, &old_key, &old);
        assert(rc == 0);
        drop(o->srv, old_key);
        drop(o->srv, old);
    }
    free(e);
    return 0;
}

static int dict_pop(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    int rc = mgr_args_count(c, "pop", args, 1, 2);
    if (rc)
        return rc;
    const mproc_value *key = mproc_value_at(args, 0);
    if ((rc = check_key(c, key)) != 0)
        return rc;
    if (mproc_value_map_find(o->impl, key)) {
        *result = dict_remove(o, o->impl, key, c);
        return 0;
    }
    if (mproc_value_len(args) == 2)
        return ret_value(result, mgr_arg_take(args, 1));
    return key_error(c, key);
}

static int dict_setdefault(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    int rc = mgr_args_count(c, "setdefault", args, 1, 2);
    if (rc)
        return rc;
    const mproc_value *key = mproc_value_at(args, 0);
    if ((rc = check_key(c, key)) != 0)
        return rc;
    const mproc_value *v = mproc_value_map_find(o->impl, key);
    if (v)
        return ret_copy(result, v);
    /* store the default (nil when absent), return a copy of it */
    mproc_value *kv[2] = {NULL, NULL}, *copy = NULL;
    if (mproc_value_len(args) == 2) {
        if ((rc = take_args(args, 2, kv)) != 0)
            return rc;
    } else if (!(kv[1] = mproc_value_nil()) || !(kv[0] = mgr_arg_take(args, 0))) {
        rc = MPROC_ENOMEM;
    }
    if (!rc && !(copy = mproc_value_copy(kv[1])))
        rc = MPROC_ENOMEM;
    if (rc) {
        mproc_value_free(kv[0]);
        mproc_value_free(kv[1]);
        return rc;
    }
    if ((rc = map_store(o, o->impl, kv[0], kv[1], c)) != 0) {
        mproc_value_free(copy);
        return rc;
    }
    *result = copy;
    return 0;
}

static int dict_clear(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    int rc = mgr_args_count(c, "clear", args, 0, 0);
    if (rc)
        return rc;
    mproc_value *fresh = mproc_value_map();
    if (!fresh)
        return MPROC_ENOMEM;
    drop(o->srv, o->impl);
    o->impl = fresh;
    return 0;
}

static int dict_copy(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    int rc = mgr_args_count(c, "copy", args, 0, 0);
    return rc ? rc : ret_copy(result, o->impl);
}

/* d[key] += delta in one step; a missing key counts as 0. */
static int dict_add(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    int64_t delta, sum;
    int rc = mgr_args_count(c, "add", args, 2, 2);
    if (rc || (rc = check_key(c, mproc_value_at(args, 0))) != 0 ||
        (rc = mgr_arg_int(c, args, 1, &delta)) != 0)
        return rc;
    mproc_value *v = mproc_value_map_find(o->impl, mproc_value_at(args, 0));
    if (v) {
        if (mproc_value_type(v) != MPROC_V_INT)
            return mgr_fail(c, MPROC_EINVAL,
                            "TypeError: unsupported operand type(s) for +=: '%s' and 'int'",
                            tname(v));
        if (__builtin_add_overflow(v->u.i, delta, &sum))
            return mgr_fail(c, MPROC_ERANGE, "OverflowError: %lld + %lld does not fit int64",
                            (long long)v->u.i, (long long)delta);
        if ((rc = ret_int(result, sum)) != 0)
            return rc;
        v->u.i = sum; /* in place: an INT holds no references */
        return 0;
    }
    mproc_value *kv[2];
    if ((rc = ret_int(result, delta)) != 0)
        return rc;
    if (!(kv[1] = mproc_value_int(delta)) || !(kv[0] = mgr_arg_take(args, 0))) {
        mproc_value_free(kv[1]);
        rc = MPROC_ENOMEM;
    } else {
        rc = map_store(o, o->impl, kv[0], kv[1], c);
    }
    if (rc) {
        mproc_value_free(*result);
        *result = NULL;
    }
    return rc;
}

/* get and set first: the hot path. */
static const method dict_methods[] = {
    {"get", dict_get},       {"set", dict_set},       {"contains", dict_contains},
    {"add", dict_add},       {"del", dict_del},       {"len", dict_len},
    {"keys", dict_keys},     {"values", dict_values}, {"items", dict_items},
    {"update", dict_update}, {"pop", dict_pop},       {"setdefault", dict_setdefault},
    {"clear", dict_clear},   {"copy", dict_copy},
};

static int dict_call(mgr_obj *o, const char *m, mproc_value *args, mproc_value **result,
                     mgr_call *c)
{
    return run_method(dict_methods, sizeof dict_methods / sizeof *dict_methods, o, m, args,
                      result, c);
}

const mgr_type mgr_t_dict = {
    .typeid = "dict",
    .create = dict_create,
    .call = dict_call,
    .destroy = destroy_tree,
};

/* ------------------------------------------------------------ list */

static int list_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    int rc = mgr_args_count(c, "list", args, 0, 1);
    if (rc)
        return rc;
    mproc_value *l;
    if (arg_given(args, 0)) {
        if (mproc_value_type(mproc_value_at(args, 0)) != MPROC_V_LIST)
            return mgr_fail(c, MPROC_EINVAL, "TypeError: list() argument must be a list, not '%s'",
                            tname(mproc_value_at(args, 0)));
        if ((rc = mgr_refs_hold(c, mproc_value_at(args, 0))) != 0)
            return rc;
        if (!(l = mgr_arg_take(args, 0))) {
            mgr_refs_release(o->srv, mproc_value_at(args, 0));
            return MPROC_ENOMEM;
        }
    } else if (!(l = mproc_value_list())) {
        return MPROC_ENOMEM;
    }
    o->impl = l;
    return 0;
}

/* Index argument `a` of `method` into the list: *i, or ERANGE with `what`. */
static int list_index_arg(mgr_call *c, const mproc_value *list, const mproc_value *args,
                          size_t a, const char *what, size_t *i)
{
    int64_t x;
    int rc = mgr_arg_int(c, args, a, &x);
    if (rc)
        return rc;
    if (!norm_index(x, mproc_value_len(list), i))
        return mgr_fail(c, MPROC_ERANGE, "IndexError: %s", what);
    return 0;
}

static int list_append(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    mproc_value *v;
    int rc = mgr_args_count(c, "append", args, 1, 1);
    if (rc || (rc = take_args(args, 1, &v)) != 0)
        return rc;
    return list_store(c, o->impl, SIZE_MAX, v);
}

static int list_extend(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    int rc = mgr_args_count(c, "extend", args, 1, 1);
    if (rc)
        return rc;
    mproc_value *src = mproc_value_at(args, 0);
    if (mproc_value_type(src) != MPROC_V_LIST)
        return mgr_fail(c, MPROC_EINVAL, "TypeError: '%s' object is not iterable", tname(src));
    mproc_value *list = o->impl;
    if ((rc = mproc__reserve(list, mproc_value_len(src))) != 0 ||
        (rc = mgr_refs_hold(c, src)) != 0)
        return rc;
    size_t n;
    mproc_value **items = mproc__list_detach(src, &n);
    for (size_t i = 0; i < n; i++) {
        rc = mproc_value_append(list, items[i]);
        assert(rc == 0);
    }
    free(items);
    return 0;
}

static int list_insert(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    int64_t i;
    mproc_value *v;
    int rc = mgr_args_count(c, "insert", args, 2, 2);
    if (rc || (rc = mgr_arg_int(c, args, 0, &i)) != 0)
        return rc;
    if (!(v = mgr_arg_take(args, 1)))
        return MPROC_ENOMEM;
    return list_store(c, o->impl, clamp_index(i, mproc_value_len(o->impl)), v);
}

static int list_get(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    size_t i = 0;
    int rc = mgr_args_count(c, "get", args, 1, 1);
    if (rc || (rc = list_index_arg(c, o->impl, args, 0, "list index out of range", &i)) != 0)
        return rc;
    return ret_copy(result, mproc_value_at(o->impl, i));
}

static int list_set(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    size_t i = 0;
    int rc = mgr_args_count(c, "set", args, 2, 2);
    if (rc ||
        (rc = list_index_arg(c, o->impl, args, 0, "list assignment index out of range", &i)) != 0)
        return rc;
    if ((rc = mgr_refs_hold(c, mproc_value_at(args, 1))) != 0)
        return rc;
    mproc_value *v = mgr_arg_take(args, 1);
    if (!v) {
        mgr_refs_release(o->srv, mproc_value_at(args, 1));
        return MPROC_ENOMEM;
    }
    drop(o->srv, mproc_value_replace_at(o->impl, i, v));
    return 0;
}

static int list_del(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    size_t i = 0;
    int rc = mgr_args_count(c, "del", args, 1, 1);
    if (rc ||
        (rc = list_index_arg(c, o->impl, args, 0, "list assignment index out of range", &i)) != 0)
        return rc;
    drop(o->srv, mproc_value_take_at(o->impl, i));
    return 0;
}

static int list_pop(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    size_t i = 0, n = mproc_value_len(o->impl);
    int rc = mgr_args_count(c, "pop", args, 0, 1);
    if (rc)
        return rc;
    if (!n)
        return mgr_fail(c, MPROC_ERANGE, "IndexError: pop from empty list");
    if (!arg_given(args, 0))
        i = n - 1;
    else if ((rc = list_index_arg(c, o->impl, args, 0, "pop index out of range", &i)) != 0)
        return rc;
    /* the caller gets the value itself: its references leave with it */
    mproc_value *v = mproc_value_take_at(o->impl, i);
    mgr_refs_handover(c, v);
    *result = v;
    return 0;
}

/* Index of the first item in [from, to) equal to v, or SIZE_MAX. */
static size_t list_find(const mproc_value *list, const mproc_value *v, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (mproc_value_equal(mproc_value_at(list, i), v))
            return i;
    return SIZE_MAX;
}

static int list_remove(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    int rc = mgr_args_count(c, "remove", args, 1, 1);
    if (rc)
        return rc;
    size_t i = list_find(o->impl, mproc_value_at(args, 0), 0, mproc_value_len(o->impl));
    if (i == SIZE_MAX)
        return mgr_fail(c, MPROC_ENOENT, "ValueError: list.remove(x): x not in list");
    drop(o->srv, mproc_value_take_at(o->impl, i));
    return 0;
}

static int list_len(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    int rc = mgr_args_count(c, "len", args, 0, 0);
    return rc ? rc : ret_int(result, (int64_t)mproc_value_len(o->impl));
}

static int list_reverse(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    int rc = mgr_args_count(c, "reverse", args, 0, 0);
    return rc ? rc : mproc_value_reverse(o->impl);
}

static int list_sort(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    bool reverse;
    int rc = mgr_args_count(c, "sort", args, 0, 1);
    if (rc || (rc = mgr_arg_bool(c, args, 0, false, &reverse)) != 0)
        return rc;
    rc = mproc_value_sort(o->impl, reverse);
    if (rc == MPROC_EINVAL) /* values that do not compare; the list is unchanged */
        return mgr_fail(c, rc, "%s: %s",
                        strncmp(mproc_errmsg(), "'<'", 3) == 0 ? "TypeError" : "ValueError",
                        mproc_errmsg());
    return rc;
}

static int list_index(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    size_t n = mproc_value_len(o->impl), from = 0, to = n;
    int64_t x;
    int rc = mgr_args_count(c, "index", args, 1, 3);
    if (rc)
        return rc;
    if (arg_given(args, 1)) {
        if ((rc = mgr_arg_int(c, args, 1, &x)) != 0)
            return rc;
        from = clamp_index(x, n);
    }
    if (arg_given(args, 2)) {
        if ((rc = mgr_arg_int(c, args, 2, &x)) != 0)
            return rc;
        to = clamp_index(x, n);
    }
    size_t i = list_find(o->impl, mproc_value_at(args, 0), from, to);
    if (i == SIZE_MAX) {
        char r[200];
        mgr_repr(mproc_value_at(args, 0), r, sizeof r);
        return mgr_fail(c, MPROC_ENOENT, "ValueError: %s is not in list", r);
    }
    return ret_int(result, (int64_t)i);
}

static int list_count(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    int rc = mgr_args_count(c, "count", args, 1, 1);
    if (rc)
        return rc;
    size_t k = 0, n = mproc_value_len(o->impl);
    for (size_t i = 0; i < n; i++)
        k += mproc_value_equal(mproc_value_at(o->impl, i), mproc_value_at(args, 0));
    return ret_int(result, (int64_t)k);
}

static int list_copy(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    int rc = mgr_args_count(c, "copy", args, 0, 0);
    return rc ? rc : ret_copy(result, o->impl);
}

static const method list_methods[] = {
    {"get", list_get},         {"set", list_set},         {"append", list_append},
    {"pop", list_pop},         {"len", list_len},         {"extend", list_extend},
    {"insert", list_insert},   {"del", list_del},         {"remove", list_remove},
    {"reverse", list_reverse}, {"sort", list_sort},       {"index", list_index},
    {"count", list_count},     {"copy", list_copy},
};

static int list_call(mgr_obj *o, const char *m, mproc_value *args, mproc_value **result,
                     mgr_call *c)
{
    return run_method(list_methods, sizeof list_methods / sizeof *list_methods, o, m, args,
                      result, c);
}

const mgr_type mgr_t_list = {
    .typeid = "list",
    .create = list_create,
    .call = list_call,
    .destroy = destroy_tree,
};

/* ------------------------------------------------------------ Namespace */

/* A map of attribute name (STR) -> value. */

static int ns_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    int rc = mgr_args_count(c, "Namespace", args, 0, 0);
    if (rc)
        return rc;
    o->impl = mproc_value_map();
    return o->impl ? 0 : MPROC_ENOMEM;
}

static int ns_name(mgr_call *c, const mproc_value *args, const char **name)
{
    *name = mproc_value_as_str(mproc_value_at(args, 0), NULL);
    if (!*name)
        return mgr_fail(c, MPROC_EINVAL, "TypeError: attribute name must be string, not '%s'",
                        tname(mproc_value_at(args, 0)));
    return 0;
}

static int no_attr(mgr_call *c, const char *name)
{
    return mgr_fail(c, MPROC_ENOENT, "AttributeError: 'Namespace' object has no attribute '%.150s'",
                    name);
}

static int ns_getattr(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    const char *name;
    int rc = mgr_args_count(c, "getattr", args, 1, 1);
    if (rc || (rc = ns_name(c, args, &name)) != 0)
        return rc;
    const mproc_value *v = mproc_value_map_find(o->impl, mproc_value_at(args, 0));
    return v ? ret_copy(result, v) : no_attr(c, name);
}

static int ns_setattr(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    const char *name;
    mproc_value *kv[2];
    int rc = mgr_args_count(c, "setattr", args, 2, 2);
    if (rc || (rc = ns_name(c, args, &name)) != 0 || (rc = take_args(args, 2, kv)) != 0)
        return rc;
    return map_store(o, o->impl, kv[0], kv[1], c);
}

static int ns_delattr(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    const char *name;
    int rc = mgr_args_count(c, "delattr", args, 1, 1);
    if (rc || (rc = ns_name(c, args, &name)) != 0)
        return rc;
    mproc_value *v = mproc_value_map_take(o->impl, mproc_value_at(args, 0));
    if (!v)
        return no_attr(c, name);
    drop(o->srv, v); /* a STR key holds no references */
    return 0;
}

static int ns_copy(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    int rc = mgr_args_count(c, "copy", args, 0, 0);
    return rc ? rc : ret_copy(result, o->impl);
}

static const method ns_methods[] = {
    {"getattr", ns_getattr},
    {"setattr", ns_setattr},
    {"delattr", ns_delattr},
    {"copy", ns_copy},
};

static int ns_call(mgr_obj *o, const char *m, mproc_value *args, mproc_value **result,
                   mgr_call *c)
{
    return run_method(ns_methods, sizeof ns_methods / sizeof *ns_methods, o, m, args, result, c);
}

const mgr_type mgr_t_namespace = {
    .typeid = "Namespace",
    .create = ns_create,
    .call = ns_call,
    .destroy = destroy_tree,
};

/* ------------------------------------------------------------ numbers (Value, Array) */

/* A typecode of Python's array module (plus ctypes' '?'), with the range of
 * its C type on Linux x86-64. mproc ints are int64, so the unsigned 64-bit
 * codes (L, Q) hold 0..INT64_MAX: a larger value cannot even be sent. */
typedef struct tcode {
    char code;
    int64_t min, max;
} tcode;

static const tcode tcodes[] = {
    {'b', INT8_MIN, INT8_MAX},   {'B', 0, UINT8_MAX},         {'h', INT16_MIN, INT16_MAX},
    {'H', 0, UINT16_MAX},        {'i', INT32_MIN, INT32_MAX}, {'I', 0, UINT32_MAX},
    {'l', INT64_MIN, INT64_MAX}, {'L', 0, INT64_MAX},         {'q', INT64_MIN, INT64_MAX},
    {'Q', 0, INT64_MAX},         {'f', 0, 0},                 {'d', 0, 0},
    {'?', 0, 1},
};

static bool tc_float(const tcode *t) { return t->code == 'f' || t->code == 'd'; }

/* A number as one typecode stores it: ints (and '?') in i, floats in d. */
typedef union num {
    int64_t i;
    double d;
} num;

/* The typecode argument: a one-character str (or its code as an int). */
static int tcode_arg(mgr_call *c, const mproc_value *args, size_t a, const tcode **out)
{
    const mproc_value *v = mproc_value_at(args, a);
    size_t len = 0;
    const char *s = mproc_value_as_str(v, &len);
    int ch = s && len == 1 ? s[0] : mproc_value_type(v) == MPROC_V_INT ? (int)mproc_value_as_int(v)
                                                                          : -1;
    for (size_t i = 0; ch > 0 && i < sizeof tcodes / sizeof *tcodes; i++)
        if (tcodes[i].code == ch) {
            *out = &tcodes[i];
            return 0;
        }
    return mgr_fail(c, MPROC_EINVAL,
                    "ValueError: bad typecode (must be one of b, B, h, H, i, I, l, L, q, Q, f, d "
                    "or ?)");
}

static int out_of_range(mgr_call *c, const tcode *t, int64_t x)
{
    return mgr_fail(c, MPROC_ERANGE,
                    "OverflowError: %lld is out of range for typecode '%c' (%lld to %lld)",
                    (long long)x, t->code, (long long)t->min, (long long)t->max);
}

static num store_float(const tcode *t, double d)
{
    /* 'f' keeps float precision, as Python's array('f') does (overflow: inf) */
    return (num){.d = t->code == 'f' ? (double)(float)d : d};
}

/* The representation of `v` for typecode t. Integer codes take ints and
 * bools (a float is EINVAL; for add, `integral` also lets an integral float
 * through, since mproc_mvalue_add sends its delta as a double); float codes
 * take any number; '?' takes bools and the ints 0 and 1. */
static int to_num(mgr_call *c, const tcode *t, const mproc_value *v, bool integral, num *out)
{
    mproc_vtype vt = mproc_value_type(v);
    if (vt != MPROC_V_INT && vt != MPROC_V_FLOAT && vt != MPROC_V_BOOL)
        return mgr_fail(c, MPROC_EINVAL, "TypeError: a number is required for typecode '%c', "
                        "not '%s'", t->code, tname(v));
    if (tc_float(t)) {
        *out = store_float(t, vt == MPROC_V_BOOL ? mproc_value_as_bool(v) : mproc_value_as_float(v));
        return 0;
    }
    int64_t x;
    if (vt == MPROC_V_FLOAT) {
        double d = mproc_value_as_float(v);
        if (!integral || d != trunc(d) || !(d >= -0x1p63 && d < 0x1p63))
            return mgr_fail(c, MPROC_EINVAL,
                            "TypeError: 'float' object cannot be interpreted as an integer "
                            "(typecode '%c')", t->code);
        x = (int64_t)d;
    } else {
        x = vt == MPROC_V_BOOL ? mproc_value_as_bool(v) : mproc_value_as_int(v);
    }
    if (x < t->min || x > t->max)
        return out_of_range(c, t, x);
    out->i = x;
    return 0;
}

static mproc_value *num_value(const tcode *t, num n)
{
    if (tc_float(t))
        return mproc_value_float(n.d);
    if (t->code == '?')
        return mproc_value_bool(n.i != 0);
    return mproc_value_int(n.i);
}

/* cur + delta for typecode t, range-checked; cur is left alone on error. */
static int num_add(mgr_call *c, const tcode *t, num cur, const mproc_value *delta, num *out)
{
    static const tcode as_double = {'d', 0, 0}, as_int64 = {'q', INT64_MIN, INT64_MAX};
    num d;
    int rc = to_num(c, tc_float(t) ? &as_double : &as_int64, delta, true, &d);
    if (rc)
        return rc;
    if (tc_float(t)) {
        *out = store_float(t, cur.d + d.d);
        return 0;
    }
    int64_t sum;
    if (__builtin_add_overflow(cur.i, d.i, &sum))
        return mgr_fail(c, MPROC_ERANGE, "OverflowError: %lld + %lld does not fit int64",
                        (long long)cur.i, (long long)d.i);
    if (sum < t->min || sum > t->max)
        return out_of_range(c, t, sum);
    out->i = sum;
    return 0;
}

/* ------------------------------------------------------------ Value */

typedef struct mvalue {
    const tcode *t;
    num v;
} mvalue;

static int value_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    const tcode *t;
    num v = {0};
    int rc = mgr_args_count(c, "Value", args, 1, 2);
    if (rc || (rc = tcode_arg(c, args, 0, &t)) != 0)
        return rc;
    if (arg_given(args, 1) && (rc = to_num(c, t, mproc_value_at(args, 1), false, &v)) != 0)
        return rc;
    mvalue *mv = malloc(sizeof *mv);
    if (!mv)
        return MPROC_ENOMEM;
    mv->t = t;
    mv->v = v;
    o->impl = mv;
    return 0;
}

static int value_get(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    mvalue *mv = o->impl;
    int rc = mgr_args_count(c, "get", args, 0, 0);
    return rc ? rc : ret_value(result, num_value(mv->t, mv->v));
}

static int value_set(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    mvalue *mv = o->impl;
    int rc = mgr_args_count(c, "set", args, 1, 1);
    if (!rc)
        rc = to_num(c, mv->t, mproc_value_at(args, 0), false, &mv->v);
    return rc;
}

static int value_add(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    mvalue *mv = o->impl;
    num sum = {0};
    int rc = mgr_args_count(c, "add", args, 1, 1);
    if (rc || (rc = num_add(c, mv->t, mv->v, mproc_value_at(args, 0), &sum)) != 0 ||
        (rc = ret_value(result, num_value(mv->t, sum))) != 0)
        return rc;
    mv->v = sum;
    return 0;
}

static const method value_methods[] = {
    {"get", value_get},
    {"set", value_set},
    {"add", value_add},
};

static int value_call(mgr_obj *o, const char *m, mproc_value *args, mproc_value **result,
                      mgr_call *c)
{
    return run_method(value_methods, sizeof value_methods / sizeof *value_methods, o, m, args,
                      result, c);
}

static void free_impl(mgr_obj *o)
{
    free(o->impl);
    o->impl = NULL;
}

const mgr_type mgr_t_value = {
    .typeid = "Value",
    .create = value_create,
    .call = value_call,
    .destroy = free_impl,
};

/* ------------------------------------------------------------ Array */

/* n numbers of one typecode, stored flat (not as values). */
typedef struct marray {
    const tcode *t;
    size_t n;
    num a[];
} marray;

static int array_create(mgr_obj *o, mproc_value *args, mgr_call *c)
{
    const tcode *t;
    int rc = mgr_args_count(c, "Array", args, 2, 2);
    if (rc || (rc = tcode_arg(c, args, 0, &t)) != 0)
        return rc;
    const mproc_value *init = mproc_value_at(args, 1);
    mproc_vtype it = mproc_value_type(init);
    size_t n;
    if (it == MPROC_V_LIST) {
        n = mproc_value_len(init);
    } else if (it == MPROC_V_INT) {
        if (mproc_value_as_int(init) < 0)
            return mgr_fail(c, MPROC_EINVAL, "ValueError: negative array size");
        if ((uint64_t)mproc_value_as_int(init) > (SIZE_MAX - sizeof(marray)) / sizeof(num))
            return MPROC_ENOMEM;
        n = (size_t)mproc_value_as_int(init);
    } else {
        return mgr_fail(c, MPROC_EINVAL,
                        "TypeError: Array() wants a list of numbers or a size, not '%s'",
                        tname(init));
    }
    marray *a = calloc(1, sizeof *a + n * sizeof(num)); /* zeros: 0 and 0.0 alike */
    if (!a)
        return MPROC_ENOMEM;
    a->t = t;
    a->n = n;
    for (size_t i = 0; it == MPROC_V_LIST && i < n; i++)
        if ((rc = to_num(c, t, mproc_value_at(init, i), false, &a->a[i])) != 0) {
            free(a);
            return rc;
        }
    o->impl = a;
    return 0;
}

static int array_len(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    marray *a = o->impl;
    int rc = mgr_args_count(c, "len", args, 0, 0);
    return rc ? rc : ret_int(result, (int64_t)a->n);
}

static int array_index_arg(mgr_call *c, const marray *a, const mproc_value *args,
                           const char *what, size_t *i)
{
    int64_t x;
    int rc = mgr_arg_int(c, args, 0, &x);
    if (rc)
        return rc;
    if (!norm_index(x, a->n, i))
        return mgr_fail(c, MPROC_ERANGE, "IndexError: %s", what);
    return 0;
}

static int array_get(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    marray *a = o->impl;
    size_t i = 0;
    int rc = mgr_args_count(c, "get", args, 1, 1);
    if (rc || (rc = array_index_arg(c, a, args, "array index out of range", &i)) != 0)
        return rc;
    return ret_value(result, num_value(a->t, a->a[i]));
}

static int array_set(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    (void)result;
    marray *a = o->impl;
    size_t i = 0;
    int rc = mgr_args_count(c, "set", args, 2, 2);
    if (rc || (rc = array_index_arg(c, a, args, "array assignment index out of range", &i)) != 0)
        return rc;
    return to_num(c, a->t, mproc_value_at(args, 1), false, &a->a[i]);
}

static int array_copy(mgr_obj *o, mproc_value *args, mproc_value **result, mgr_call *c)
{
    marray *a = o->impl;
    int rc = mgr_args_count(c, "copy", args, 0, 0);
    if (rc)
        return rc;
    mproc_value *l = mproc_value_list();
    if (!l || mproc__reserve(l, a->n) != 0)
        goto oom;
    for (size_t i = 0; i < a->n; i++)
        if (mproc_value_append(l, num_value(a->t, a->a[i])) != 0)
            goto oom;
    *result = l;
    return 0;
oom:
    mproc_value_free(l);
    return MPROC_ENOMEM;
}

static const method array_methods[] = {
    {"get", array_get},
    {"set", array_set},
    {"len", array_len},
    {"copy", array_copy},
};

static int array_call(mgr_obj *o, const char *m, mproc_value *args, mproc_value **result,
                      mgr_call *c)
{
    return run_method(array_methods, sizeof array_methods / sizeof *array_methods, o, m, args,
                      result, c);
}

const mgr_type mgr_t_array = {
    .typeid = "Array",
    .create = array_create,
    .call = array_call,
    .destroy = free_impl,
};
