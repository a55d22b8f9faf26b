/* echo_server.c — seed 001's echo server over Listener/Client with an authkey.
 *
 *   from multiprocessing.connection import Listener, Client
 *
 *   def echo_client(conn):
 *       try:
 *           while True:
 *               msg = conn.recv()
 *               conn.send(msg)
 *       except EOFError:
 *           print('connection closed')
 *
 *   def echo_server(addr, auth):
 *       serv = Listener(addr, authkey=auth)
 *       while True:
 *           client = serv.accept()
 *           echo_client(client)
 *
 *   key = b'aaaaaaaa'
 *   echo_server(('', 25000), auth=key)
 *   # c = Client(('localhost', 25000), authkey=key); c.send('hello'); print(c.recv())
 *
 * One program: the server runs in a child process, the client in the parent, first
 * over TCP (port 0: the system picks a free one, the listener reports it) and then
 * over an AF_UNIX socket file (the seed's Listener('/tmp/myconn', authkey=b'peekaboo')).
 * A client with the wrong key is turned away on both sides. The wire format and the
 * handshake are CPython's, so a Python Client(('127.0.0.1', port), authkey=key) could
 * talk to this server too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mproc.h>

static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "%s: %s (%s)\n", what, mproc_strerror(rc), mproc_errmsg());
        exit(1);
    }
}

static void echo_client(mproc_connection *conn)
{
    for (;;) {
        mproc_value *msg;
        int rc = mproc_connection_recv(conn, &msg, MPROC_FOREVER);
        if (rc == MPROC_ECLOSED) { /* Python's EOFError */
            printf("[server] connection closed\n");
            fflush(stdout);
            return;
        }
        check(rc, "recv");
        check(mproc_connection_send(conn, msg), "send");
        mproc_value_free(msg);
    }
}

/* The server child: Listener(addr, authkey=key), tell the parent the real
 * address, then serve `clients` connections one after the other. */
static int echo_server(mproc_args *args)
{
    const char *addr = mproc_args_str(args, 0);
    size_t keylen;
    const void *key = mproc_args_bytes(args, 1, &keylen);
    mproc_connection *report = mproc_args_object(args, 2, &mproc_connection_type);
    int64_t clients = 0;
    mproc_args_get_int(args, 3, &clients);

    mproc_listener_opts o = {.auth = {.authkey = key, .authkey_len = keylen}};
    mproc_listener *serv;
    check(mproc_listener_new(&serv, addr, &o), "Listener");
    const char *real = mproc_listener_address(serv);
    check(mproc_connection_send_bytes(report, real, strlen(real)), "report address");
    for (int64_t i = 0; i < clients; i++) {
        mproc_connection *client;
        int rc = mproc_listener_accept(serv, &client, 30.0);
        if (rc) { /* traceback.print_exc() in the seed; the server keeps going */
            printf("[server] accept failed: %s (%s)\n", mproc_strerror(rc), mproc_errmsg());
            fflush(stdout);
            continue;
        }
        echo_client(client);
        mproc_connection_close(client);
    }
    mproc_listener_close(serv); /* removes a unix socket file */
    return 0;
}

/* Start the server child on `addr` and return its real address (malloc'd). */
static char *start_server(const char *addr, const char *key, int clients, mproc_process **p)
{
    mproc_connection *r, *w;
    check(mproc_pipe(&r, &w, false, NULL), "Pipe");
    mproc_args *args = mproc_args_new();
    check(mproc_args_add_str(args, addr), "args");
    check(mproc_args_add_bytes(args, key, strlen(key)), "args");
    check(mproc_args_add_object(args, &mproc_connection_type, w), "args");
    check(mproc_args_add_int(args, clients), "args");
    check(mproc_process_new(p, echo_server, args, NULL), "Process");
    check(mproc_process_start(*p), "start");
    mproc_args_free(args);
    mproc_connection_close(w);
    void *real;
    size_t n;
    check(mproc_connection_recv_bytes(r, &real, &n, 30.0), "server address");
    mproc_connection_close(r);
    char *s = strndup(real, n);
    free(real);
    return s;
}

static void client_session(const char *addr, const char *key)
{
    mproc_client_opts o = {.auth = {.authkey = key, .authkey_len = strlen(key)}};
    mproc_connection *c;
    check(mproc_client_connect(&c, addr, &o), "Client");
    mproc_value *hello = mproc_value_str("hello"), *back;
    check(mproc_connection_send(c, hello), "send"); /* c.send('hello') */
    check(mproc_connection_recv(c, &back, 30.0), "recv");
    printf("[client] ");
    mproc_value_print(back, stdout); /* print(c.recv()) -> 'hello' */
    fflush(stdout);
    mproc_value_free(hello);
    mproc_value_free(back);
    mproc_connection_close(c);
}

static void demo(const char *addr, const char *key)
{
    mproc_process *p;
    char *real = start_server(addr, key, 2, &p);
    printf("server listening on %s\n", real);
    fflush(stdout);
    client_session(real, key);
    /* the wrong key: Client gets MPROC_EAUTH, and so does the server's accept */
    mproc_client_opts bad = {.auth = {.authkey = "wrong", .authkey_len = 5}};
    mproc_connection *c;
    int rc = mproc_client_connect(&c, real, &bad);
    printf("[client] with the wrong key: %s (%s)\n", mproc_errname(rc), mproc_errmsg());
    fflush(stdout);
    check(mproc_process_join(p, 30.0), "join");
    mproc_process_close(p);
    free(real);
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    demo("tcp:127.0.0.1:0", "aaaaaaaa"); /* Listener(('', 25000), authkey=b'aaaaaaaa') */
    char path[64];
    snprintf(path, sizeof path, "unix:/tmp/myconn-%d", (int)getpid());
    demo(path, "peekaboo"); /* Listener('/tmp/myconn', authkey=b'peekaboo') */
    return 0;
}
