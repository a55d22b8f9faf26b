/* fuzz_frame.c — libFuzzer target for the connection frame reader: the header
 * parser, then the real reader fed the input as a byte stream over a socketpair. */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "connection/conn_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t len;
    size_t hl;
    if (mproc__frame_parse(data, size, &len, &hl) == 0 && (hl != 4 && hl != 12))
        abort();
    if (size < 1 || size > 60000) /* one write must fit the socket buffer */
        return 0;
    uint8_t mode = data[0];
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return 0;
    mproc_connection_opts o = {.max_message = (mode & 1) ? 100 : (1u << 20),
                               .no_readahead = (mode & 2) != 0,
                               .codec = (mode & 4) ? MPROC_CODEC_MSGPACK : MPROC_CODEC_PICKLE};
    mproc_connection *c;
    if (mproc_connection_new(&c, sv[0], &o)) {
        close(sv[0]);
        close(sv[1]);
        return 0;
    }
    if (mproc_write_all(sv[1], data + 1, size - 1) != 0)
        abort();
    close(sv[1]);
    for (int i = 0; i < 10000; i++) {
        int rc;
        if (mode & 8) {
            mproc_value *v = NULL;
            rc = mproc_connection_recv(c, &v, 0);
            mproc_value_free(v);
            if (rc == MPROC_EPROTO || rc == MPROC_EMSGSIZE || rc == MPROC_ERANGE)
                rc = c->broken ? rc : 0; /* a bad payload leaves the stream in sync */
        } else if (mode & 16) {
            uint8_t buf[64];
            size_t n;
            rc = mproc_connection_recv_bytes_into(c, buf, sizeof buf, &n, 0);
            if (rc == MPROC_EMSGSIZE && !c->broken) {
                void *p;
                rc = mproc_connection_recv_bytes(c, &p, &n, 0);
                if (rc == 0)
                    free(p);
            }
        } else {
            void *p;
            size_t n;
            rc = mproc_connection_recv_bytes(c, &p, &n, 0);
            if (rc == 0)
                free(p);
        }
        if (rc)
            break;
        (void)mproc_connection_poll(c, 0);
    }
    mproc_connection_close(c);
    return 0;
}
