/* mgr_srv.h — what client.c needs from server.c: the server process's
 * configuration and entry point. Private to src/manager. */
#ifndef MPROC_MGR_SRV_H
#define MPROC_MGR_SRV_H

#include <stdbool.h>
#include <stdint.h>

#include "internal.h"
#include "mproc/manager.h"

#define MGR_MAX_TYPES 64

typedef struct mgr_config {
    char *address;
    uint8_t *key;
    size_t klen;
    size_t max_message, max_clients;
    uint64_t owner_token; /* proves a shutdown request comes from the owner */
    size_t ntypes;
    const mproc_manager_type *types[MGR_MAX_TYPES];
} mgr_config;

int mgr__config_encode(const mgr_config *c, mproc_buf *b);
int mgr__config_decode(const void *p, size_t n, mgr_config *c);
/* The server process's target: args = (config bytes, ready Connection). */
int mgr__server_main(mproc_args *a);
bool mgr__builtin_typeid(const char *typeid);
/* Keepalive and a user timeout on a TCP socket (nothing for unix ones). */
void mgr__keepalive(int fd);

#endif
