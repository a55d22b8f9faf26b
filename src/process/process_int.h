/* process_int.h — the Process object's layout and the hooks between process.c,
 * spawn.c and forkserver.c. Private to the process layer. */
#ifndef MPROC_PROCESS_INT_H
#define MPROC_PROCESS_INT_H

#include "internal.h"

enum { PK_CHILD, PK_SELF, PK_PARENT };
enum { PS_NEW, PS_RUNNING, PS_DONE };

struct mproc_process {
    /* set at creation, read-only afterwards */
    int kind;
    mproc_target_fn target;
    mproc_args *args;
    char *name;
    char identity[64];
    bool daemon;
    const mproc_context *ctx;
    mproc_start_method method;
    double start_timeout;
    /* lifecycle, touched by the owning process only, under mu (other threads
     * may poll the object through active_children or the sweep in start) */
    pthread_mutex_t mu;
    int state;
    pid_t owner;     /* the process that started it; others may not join it */
    pid_t pid;
    int pidfd;       /* sentinel */
    int status_fd;   /* forkserver: where the server sends the exit status */
    int exitcode;
    /* registry links, under the registry mutex */
    bool registered;
    struct mproc_process *prev, *next;
};

int mproc__start_spawn(mproc_process *p);
int mproc__start_forkserver(mproc_process *p);
/* Read an EXIT message from a fork-server status socket: 0 and *code, MPROC_ECLOSED. */
int mproc__forkserver_status(int fd, int *code);

/* Spawn/forkserver: send BOOT on `fd` and wait for READY. On failure the caller
 * kills and reaps the child. */
int mproc__boot_child(mproc_process *p, int fd);

void mproc__become_child(const char *name, const char *identity, bool daemon, pid_t parent,
                         bool logical_parent);
_Noreturn void mproc__run_target(mproc_target_fn fn, mproc_args *args);
void mproc__exit_handler(void);
int mproc__parent_pidfd(void);
bool mproc__parent_alive(void);

#endif
