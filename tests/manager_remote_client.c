/* manager_remote_client.c — the "other program" of test_manager's remote test:
 * connects to a manager over TCP with mproc_manager_connect, takes jobs from
 * the bound queue "jobs" and puts [job, job * job] on "results" until a nil
 * job arrives. Usage: manager_remote_client ADDRESS AUTHKEY. Exit 0 on
 * success, else a code saying which step failed (stderr says why). */
#include <stdio.h>
#include <string.h>

#include "mproc.h"

static int fail(int code, const char *what, int rc)
{
    fprintf(stderr, "manager_remote_client: %s: %s (%s) %s\n", what, mproc_errname(rc),
            mproc_strerror(rc), mproc_errmsg());
    return code;
}

static int serve(mproc_manager *m)
{
    mproc_proxy *jobs = NULL, *results = NULL, *none = NULL;
    int rc = mproc_manager_lookup(m, "no-such-name", &none);
    if (rc != MPROC_ENOENT) {
        mproc_proxy_free(none);
        return fail(4, "lookup of an unbound name did not give MPROC_ENOENT", rc);
    }
    if ((rc = mproc_manager_lookup(m, "jobs", &jobs)) != 0)
        return fail(5, "lookup jobs", rc);
    if ((rc = mproc_manager_lookup(m, "results", &results)) != 0) {
        mproc_proxy_free(jobs);
        return fail(6, "lookup results", rc);
    }
    int code = 0;
    if (strcmp(mproc_proxy_typeid(jobs), "Queue") != 0) {
        fprintf(stderr, "manager_remote_client: jobs is a '%s'\n", mproc_proxy_typeid(jobs));
        code = 7;
    }
    while (!code) {
        mproc_value *job = NULL;
        if ((rc = mproc_mqueue_get(jobs, &job, 30.0)) != 0) {
            code = fail(8, "get a job", rc);
            break;
        }
        if (mproc_value_type(job) == MPROC_V_NIL) {
            mproc_value_free(job);
            break;
        }
        int64_t x = mproc_value_as_int(job);
        mproc_value_free(job);
        mproc_value *r = mproc_value_list();
        if (!r || mproc_value_append(r, mproc_value_int(x)) ||
            mproc_value_append(r, mproc_value_int(x * x))) {
            mproc_value_free(r);
            code = 9;
            break;
        }
        rc = mproc_mqueue_put(results, r, 30.0);
        mproc_value_free(r);
        if (rc)
            code = fail(10, "put a result", rc);
    }
    mproc_proxy_free(jobs);
    mproc_proxy_free(results);
    return code;
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    if (argc != 3) {
        fprintf(stderr, "usage: %s ADDRESS AUTHKEY\n", argv[0]);
        return 2;
    }
    mproc_manager_opts o = {.authkey = argv[2], .authkey_len = strlen(argv[2])};
    mproc_manager *m;
    int rc = mproc_manager_connect(&m, argv[1], &o);
    if (rc)
        return fail(3, "connect", rc);
    int code = serve(m);
    /* A connected handle cannot stop the server: this only closes connections
     * (the test checks the server still serves afterwards). */
    if (!code && (rc = mproc_manager_shutdown(m)) != 0)
        code = fail(11, "shutdown of a connected handle", rc);
    mproc_manager_free(m);
    return code;
}
