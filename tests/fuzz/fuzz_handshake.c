/* fuzz_handshake.c — libFuzzer target for the authkey handshake: digest-prefix
 * parsing, response creation and verification on hostile messages, and both
 * handshake halves against a peer that sends the input and hangs up. */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "connection/conn_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void against_peer(const uint8_t *data, size_t size, bool deliver)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return;
    mproc_connection *c;
    if (mproc_connection_new(&c, sv[0], NULL)) {
        close(sv[0]);
        close(sv[1]);
        return;
    }
    if (mproc_write_all(sv[1], data, size) != 0)
        abort();
    shutdown(sv[1], SHUT_WR); /* EOF after the input, but keep reading our side's replies */
    mproc_deadline d = mproc_deadline_after(1.0);
    int rc = deliver ? mproc__auth_deliver(c, "key", 3, NULL, d) : mproc__auth_answer(c, "key", 3, d);
    if (rc == MPROC_ETIMEDOUT)
        abort(); /* the peer hung up: the handshake must end without waiting */
    mproc_connection_close(c);
    close(sv[1]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[16];
    const uint8_t *pl;
    size_t pn;
    if (mproc__auth_split(data, size, name, &pl, &pn) == 0 &&
        (pl < data || pl + pn != data + size || strlen(name) > 8))
        abort();
    uint8_t out[80];
    size_t on;
    if (mproc__auth_response("key", 3, data, size, out, &on) == 0 && on > sizeof out)
        abort();
    static const uint8_t challenge[] = "{sha256}0123456789012345678901234567890123456789";
    (void)mproc__auth_verify("key", 3, challenge, sizeof challenge - 1, data, size);
    if (size <= 60000) {
        against_peer(data, size, false);
        against_peer(data, size, true);
    }
    return 0;
}
