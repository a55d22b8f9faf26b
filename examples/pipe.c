/* pipe.c — seed 001's Pipe example in C.
 *
 *   from multiprocessing import Process, Pipe
 *
 *   def f(conn):
 *       conn.send([42, None, 'hello'])
 *       conn.close()
 *
 *   if __name__ == '__main__':
 *       parent_conn, child_conn = Pipe()
 *       p = Process(target=f, args=(child_conn,))
 *       p.start()
 *       print(parent_conn.recv())   # prints "[42, None, 'hello']"
 *       p.join()
 *
 * The value travels pickled, exactly as Python's Connection.send would write it,
 * so either end could be a Python process. Pass "spawn" or "forkserver" to start
 * the child another way: the connection crosses into any child. */
#include <stdio.h>
#include <stdlib.h>

#include <mproc.h>

static int f(mproc_args *args)
{
    mproc_connection *conn = mproc_args_object(args, 0, &mproc_connection_type);
    mproc_value *v = mproc_value_list(); /* [42, None, 'hello'] */
    mproc_value_append(v, mproc_value_int(42));
    mproc_value_append(v, mproc_value_nil());
    mproc_value_append(v, mproc_value_str("hello"));
    int rc = mproc_connection_send(conn, v);
    mproc_value_free(v);
    return rc == 0 ? 0 : 1; /* the library closes the child's connection */
}

static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "%s: %s (%s)\n", what, mproc_strerror(rc), mproc_errmsg());
        exit(1);
    }
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv); /* first: a spawned child runs f from here */
    mproc_start_method method = MPROC_START_FORK;
    if (argc > 1 && mproc_start_method_parse(argv[1], &method) != 0) {
        fprintf(stderr, "usage: %s [fork|spawn|forkserver]\n", argv[0]);
        return 2;
    }
    mproc_connection *parent_conn, *child_conn;
    check(mproc_pipe(&parent_conn, &child_conn, true, NULL), "Pipe");

    mproc_args *args = mproc_args_new();
    check(mproc_args_add_object(args, &mproc_connection_type, child_conn), "args");
    mproc_process_opts o = {.ctx = mproc_get_context(method)};
    mproc_process *p;
    check(mproc_process_new(&p, f, args, &o), "Process");
    check(mproc_process_start(p), "start");
    mproc_args_free(args);
    mproc_connection_close(child_conn); /* the child has its own */

    mproc_value *v;
    check(mproc_connection_recv(parent_conn, &v, MPROC_FOREVER), "recv");
    mproc_value_print(v, stdout); /* prints "[42, None, 'hello']" */
    mproc_value_free(v);

    check(mproc_process_join(p, MPROC_FOREVER), "join");
    int code = mproc_process_exitcode(p);
    mproc_process_close(p);
    mproc_connection_close(parent_conn);
    return code;
}
