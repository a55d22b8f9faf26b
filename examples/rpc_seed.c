/* rpc_seed.c — seed 001's RPC example in C: add and sub served to a C proxy
 * and to the seed's own Python RPCProxy.
 *
 *   handler = RPCHandler()
 *   handler.register_function(add)
 *   handler.register_function(sub)
 *   rpc_server(handler, ('localhost', 25000), authkey=b'1234')
 *   ...
 *   c = Client(('localhost', 25000), authkey=b'1234')
 *   proxy = RPCProxy(c)
 *   proxy.add(2,3)    # 5
 *
 * The server speaks the seed's wire (MPROC_RPC_PYTHON: pickled
 * (name, args, kwargs) in, pickled result or exception out) on 127.0.0.1
 * with a port the system picks and authkey b'peekaboo'; it serves from
 * background threads, one per connection, as rpc_server does. A C proxy
 * calls it first; then, when python3 is installed, the seed's RPCProxy
 * class, unmodified, runs in a python3 process against the same server.
 * Last, what the seed cannot do: a call with a timeout, a wrong authkey that
 * does not bring the server down, and a graceful stop. */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include <mproc.h>
#include <mproc/rpc.h>

extern char **environ;

#define AUTHKEY "peekaboo"

static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "%s: %s (%s)\n", what, mproc_strerror(rc), mproc_errmsg());
        exit(1);
    }
}

/* ------------------------------------------------------------ the server */

static const char *pytype(const mproc_value *v)
{
    static const char *const names[] = {"NoneType", "bool", "int",  "float", "str",
                                        "bytes",    "list", "dict", "Exception", "ExtType"};
    return names[mproc_value_type(v)];
}

/* x and y from positional or keyword arguments, as Python binds def f(x, y). */
static int bind_xy(const char *fn, mproc_value *const *args, size_t nargs,
                   const mproc_value *kwargs, const mproc_value **x, const mproc_value **y)
{
    if (nargs > 2)
        return mproc_rpc_error("TypeError", "%s() takes 2 positional arguments but %zu were given",
                               fn, nargs);
    *x = nargs > 0 ? args[0] : mproc_value_get(kwargs, "x");
    *y = nargs > 1 ? args[1] : mproc_value_get(kwargs, "y");
    if (!*x || !*y)
        return mproc_rpc_error("TypeError", "%s() missing 1 required positional argument: '%s'",
                               fn, *x ? "y" : "x");
    return 0;
}

static bool is_number(const mproc_value *v)
{
    return mproc_value_type(v) == MPROC_V_INT || mproc_value_type(v) == MPROC_V_FLOAT;
}

/* def add(x, y): return x + y  (numbers, and str + str as in Python) */
static int add(mproc_value *const *args, size_t nargs, const mproc_value *kwargs,
               mproc_value **result, void *ud)
{
    (void)ud;
    const mproc_value *x = NULL, *y = NULL;
    int rc = bind_xy("add", args, nargs, kwargs, &x, &y);
    if (rc)
        return rc;
    if (mproc_value_type(x) == MPROC_V_INT && mproc_value_type(y) == MPROC_V_INT)
        *result = mproc_value_int(mproc_value_as_int(x) + mproc_value_as_int(y));
    else if (is_number(x) && is_number(y))
        *result = mproc_value_float(mproc_value_as_float(x) + mproc_value_as_float(y));
    else if (mproc_value_type(x) == MPROC_V_STR && mproc_value_type(y) == MPROC_V_STR) {
        size_t a, b;
        const char *sa = mproc_value_as_str(x, &a), *sb = mproc_value_as_str(y, &b);
        char *s = malloc(a + b + 1);
        if (!s)
            return MPROC_ENOMEM;
        memcpy(s, sa, a);
        memcpy(s + a, sb, b);
        *result = mproc_value_strn(s, a + b);
        free(s);
    } else
        return mproc_rpc_error("TypeError", "unsupported operand type(s) for +: '%s' and '%s'",
                               pytype(x), pytype(y));
    return *result ? 0 : MPROC_ENOMEM;
}

/* def sub(x, y): return x - y */
static int sub(mproc_value *const *args, size_t nargs, const mproc_value *kwargs,
               mproc_value **result, void *ud)
{
    (void)ud;
    const mproc_value *x = NULL, *y = NULL;
    int rc = bind_xy("sub", args, nargs, kwargs, &x, &y);
    if (rc)
        return rc;
    if (mproc_value_type(x) == MPROC_V_INT && mproc_value_type(y) == MPROC_V_INT)
        *result = mproc_value_int(mproc_value_as_int(x) - mproc_value_as_int(y));
    else if (is_number(x) && is_number(y))
        *result = mproc_value_float(mproc_value_as_float(x) - mproc_value_as_float(y));
    else
        return mproc_rpc_error("TypeError", "unsupported operand type(s) for -: '%s' and '%s'",
                               pytype(x), pytype(y));
    return *result ? 0 : MPROC_ENOMEM;
}

/* A function slower than its caller's patience. */
static int slow(mproc_value *const *args, size_t nargs, const mproc_value *kwargs,
                mproc_value **result, void *ud)
{
    (void)args, (void)nargs, (void)kwargs, (void)ud;
    struct timespec t = {0, 300 * 1000 * 1000};
    nanosleep(&t, NULL);
    *result = mproc_value_str("done");
    return *result ? 0 : MPROC_ENOMEM;
}

/* ------------------------------------------------------------ the C proxy */

/* proxy.<method>(*args, **kwargs), printed as the Python session would show it. */
static void call(mproc_rpc_proxy *proxy, const char *shown, const char *method,
                 mproc_value *args, mproc_value *kwargs)
{
    mproc_value *r;
    int rc = mproc_rpc_call_kw(proxy, method, args, kwargs, &r, 5.0);
    printf("[c] proxy.%s -> ", shown);
    if (rc == MPROC_EREMOTE) /* the function raised ("TypeError: ..."; the type alone:
                                mproc_rpc_proxy_error_type); Python's proxy re-raises it */
        printf("raised %s\n", mproc_errmsg());
    else if (rc)
        printf("%s (%s)\n", mproc_errname(rc), mproc_errmsg());
    else {
        mproc_value_print(r, stdout);
        mproc_value_free(r);
    }
    mproc_value_free(args);
    mproc_value_free(kwargs);
}

static mproc_value *list2(mproc_value *a, mproc_value *b)
{
    mproc_value *l = mproc_value_list();
    if (!l || mproc_value_append(l, a) || mproc_value_append(l, b)) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return l;
}

static void c_client(const char *address)
{
    mproc_rpc_proxy_opts o = {.wire = MPROC_RPC_PYTHON, .authkey = AUTHKEY,
                              .authkey_len = strlen(AUTHKEY)};
    mproc_rpc_proxy *proxy; /* c = Client(addr, authkey=...); proxy = RPCProxy(c) */
    check(mproc_rpc_connect(&proxy, address, &o), "connect");
    call(proxy, "add(2, 3)", "add", list2(mproc_value_int(2), mproc_value_int(3)), NULL);
    call(proxy, "sub(10, 4)", "sub", list2(mproc_value_int(10), mproc_value_int(4)), NULL);
    mproc_value *kw = mproc_value_map();
    check(mproc_value_map_set(kw, mproc_value_str("y"), mproc_value_float(0.5)), "kwargs");
    mproc_value *one = mproc_value_list();
    check(mproc_value_append(one, mproc_value_int(2)), "args");
    call(proxy, "add(2, y=0.5)", "add", one, kw);
    call(proxy, "add('mp', 'roc')", "add", list2(mproc_value_str("mp"), mproc_value_str("roc")),
         NULL);
    call(proxy, "add(1, 'a')", "add", list2(mproc_value_int(1), mproc_value_str("a")), NULL);
    call(proxy, "mul(2, 3)", "mul", list2(mproc_value_int(2), mproc_value_int(3)), NULL);
    mproc_rpc_close(proxy); /* the server's thread for it sees EOF and ends */
}

/* ------------------------------------------------------- the Python proxy */

/* Seed 001's RPCProxy, unmodified but for its comment, and its calls. */
static const char python_client[] =
    "import pickle, sys\n"
    "from multiprocessing.connection import Client\n"
    "\n"
    "class RPCProxy:\n"
    "\n"
    "    def __init__(self, conn):\n"
    "        self._conn = conn\n"
    "\n"
    "    def __getattr__(self, item):\n"
    "        # overridden to call remotely, e.g. proxy.sum(1,2)\n"
    "        def do_rpc(*args, **kwargs):\n"
    "            self._conn.send(pickle.dumps((item, args, kwargs)))\n"
    "            result = pickle.loads(self._conn.recv())\n"
    "            if isinstance(result, Exception):\n"
    "                raise result\n"
    "            return result\n"
    "        return do_rpc\n"
    "\n"
    "c = Client((sys.argv[1], int(sys.argv[2])), authkey=b'peekaboo')\n"
    "proxy = RPCProxy(c)\n"
    "print('[python] proxy.add(2,3) ->', proxy.add(2,3))\n"
    "print('[python] proxy.sub(2,3) ->', proxy.sub(2,3))\n"
    "print('[python] proxy.add(x=1.25, y=2) ->', proxy.add(x=1.25, y=2))\n"
    "print('[python] proxy.add(\"py\", \"thon\") ->', repr(proxy.add('py', 'thon')))\n"
    "try:\n"
    "    proxy.mul(2, 3)\n"
    "except Exception as e:\n"
    "    print('[python] proxy.mul(2, 3) raised', type(e).__name__ + ':', e)\n"
    "c.close()\n";

/* Run the Python client against tcp:HOST:PORT; false when python3 is missing. */
static bool python_client_run(const char *address)
{
    char host[64] = "", port[16] = "";
    const char *colon = strrchr(address, ':');
    if (strncmp(address, "tcp:", 4) != 0 || !colon || colon - address - 4 >= (int)sizeof host) {
        fprintf(stderr, "unexpected server address %s\n", address);
        exit(1);
    }
    memcpy(host, address + 4, (size_t)(colon - address - 4));
    snprintf(port, sizeof port, "%s", colon + 1);
    char *argv[] = {"python3", "-c", (char *)python_client, host, port, NULL};
    fflush(stdout);
    pid_t pid;
    if (posix_spawnp(&pid, "python3", NULL, NULL, argv, environ) != 0)
        return false;
    int st;
    while (waitpid(pid, &st, 0) < 0)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "the Python client failed\n");
        exit(1);
    }
    return true;
}

/* ------------------------------------------------- beyond the seed */

static void beyond_the_seed(mproc_rpc_server *server, const char *address)
{
    /* A timeout: the seed's proxy would wait forever. The Python wire has no
     * message ids to match a late answer with, so the proxy closes. */
    mproc_rpc_proxy_opts o = {.wire = MPROC_RPC_PYTHON, .authkey = AUTHKEY,
                              .authkey_len = strlen(AUTHKEY)};
    mproc_rpc_proxy *proxy;
    check(mproc_rpc_connect(&proxy, address, &o), "connect");
    int rc = mproc_rpc_call(proxy, "slow", NULL, NULL, 0.05);
    printf("[c] proxy.slow() with a 50 ms timeout -> %s\n", mproc_errname(rc));
    rc = mproc_rpc_call(proxy, "add", NULL, NULL, 5.0);
    printf("[c] the same proxy afterwards -> %s\n", mproc_errname(rc));
    mproc_rpc_close(proxy);

    /* A wrong authkey: this client is refused; the seed's rpc_server would
     * die of the AuthenticationError raised in its accept loop. */
    mproc_rpc_proxy_opts bad = o;
    bad.authkey = "wrong";
    bad.authkey_len = 5;
    rc = mproc_rpc_connect(&proxy, address, &bad);
    printf("[c] connecting with a wrong authkey -> %s\n", mproc_errname(rc));
    check(mproc_rpc_connect(&proxy, address, &o), "connect");
    mproc_value *args = list2(mproc_value_int(40), mproc_value_int(2)), *r;
    check(mproc_rpc_call(proxy, "add", args, &r, 5.0), "add");
    printf("[c] the server still serves: proxy.add(40, 2) -> ");
    mproc_value_print(r, stdout);
    mproc_value_free(r);

    /* Graceful stop: no new connections, calls in progress finish (up to the
     * timeout), every connection is closed and its thread joined. */
    rc = mproc_rpc_server_stop(server, 5.0);
    printf("server stopped: %s, %zu connections left\n", rc ? mproc_errname(rc) : "cleanly",
           mproc_rpc_server_connections(server));
    rc = mproc_rpc_call(proxy, "add", args, NULL, 5.0);
    printf("[c] a call after the stop -> %s\n", mproc_errname(rc));
    mproc_value_free(args);
    mproc_rpc_close(proxy);
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    mproc_rpc_handler *handler; /* handler = RPCHandler() */
    check(mproc_rpc_handler_new(&handler), "handler");
    check(mproc_rpc_handler_register(handler, "add", add, NULL), "register add");
    check(mproc_rpc_handler_register(handler, "sub", sub, NULL), "register sub");
    check(mproc_rpc_handler_register(handler, "slow", slow, NULL), "register slow");

    /* rpc_server(handler, ('127.0.0.1', 0), authkey=b'peekaboo') */
    mproc_rpc_server_opts so = {.wire = MPROC_RPC_PYTHON, .authkey = AUTHKEY,
                                .authkey_len = strlen(AUTHKEY)};
    mproc_rpc_server *server;
    check(mproc_rpc_server_new(&server, handler, "tcp:127.0.0.1:0", &so), "server");
    check(mproc_rpc_server_start(server), "start");
    const char *address = mproc_rpc_server_address(server);
    printf("serving add, sub and slow on 127.0.0.1 (the system picked the port), Python wire\n");

    c_client(address);
    if (!python_client_run(address))
        printf("(python3 not found: the seed's Python RPCProxy is skipped)\n");
    fflush(stdout);
    beyond_the_seed(server, address);

    mproc_rpc_server_free(server);
    mproc_rpc_handler_free(handler);
    return 0;
}
