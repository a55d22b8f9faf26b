/* spawn.c — the spawn start method, the BOOT handshake shared with forkserver,
 * mproc_init() and the constructor that tells a re-executed binary its role. */
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "process/process_int.h"

extern char **environ;

enum { ROLE_NONE, ROLE_SPAWN, ROLE_FORKSERVER };
static int role;
static char **saved_argv; /* deep copy of main()'s argv, for re-execution */

/* --------------------------------------------------------------- launching */

static char **build_env(const char *role_value)
{
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = malloc((n + 2) * sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], MPROC__ROLE_ENV "=", sizeof MPROC__ROLE_ENV) != 0)
            env[k++] = environ[i];
    env[k++] = (char *)role_value;
    env[k] = NULL;
    return env;
}

int mproc__launch(const char *role_name, int fd, bool new_session, pid_t *pid)
{
    char exe[4096], role_value[96];
    mproc__executable(exe, sizeof exe);
    snprintf(role_value, sizeof role_value, MPROC__ROLE_ENV "=%s", role_name);
    char *default_argv[] = {exe, NULL};
    char **argv = saved_argv ? saved_argv : default_argv;
    char **env = build_env(role_value);
    if (!env)
        return MPROC_ENOMEM;
    /* dup2(fd, 3) would keep FD_CLOEXEC if fd were already 3: move it out of the way. */
    int src = fd, tmp = -1;
    if (fd == MPROC__BOOT_FD) {
        tmp = fcntl(fd, F_DUPFD_CLOEXEC, 10);
        if (tmp < 0) {
            free(env);
            return mproc__errno();
        }
        src = tmp;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_adddup2(&fa, src, MPROC__BOOT_FD);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    /* Nothing but 0-3 crosses exec: the child inherits only what it is handed. */
    posix_spawn_file_actions_addclosefrom_np(&fa, MPROC__BOOT_FD + 1);
    sigset_t empty;
    sigemptyset(&empty);
    posix_spawnattr_setsigmask(&attr, &empty);
    short flags = POSIX_SPAWN_SETSIGMASK;
    if (new_session)
        flags |= POSIX_SPAWN_SETSID;
    posix_spawnattr_setflags(&attr, flags);
    int err = posix_spawn(pid, exe, &fa, &attr, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    free(env);
    if (tmp >= 0)
        close(tmp);
    if (err)
        return mproc__fail(-err, "cannot execute %s: %s", exe, strerror(err));
    return 0;
}

/* --------------------------------------------------------------- BOOT message */

int mproc__boot_encode(mproc_buf *b, const char *name, const char *identity, bool daemon,
                       mproc_target_fn fn, const mproc_args *args, int *fds, size_t *nfds)
{
    char taddr[108];
    pid_t tpid;
    mproc__tracker_address(taddr, sizeof taddr, &tpid);
    int rc = mproc__put_str(b, name);
    if (!rc) rc = mproc__put_str(b, identity);
    if (!rc) rc = mproc__put_u8(b, daemon);
    if (!rc) rc = mproc__put_u32(b, (uint32_t)getpid());
    if (!rc) rc = mproc__put_u32(b, (uint32_t)mproc_log_level());
    if (!rc) rc = mproc__put_str(b, taddr);
    if (!rc) rc = mproc__put_u32(b, (uint32_t)tpid);
    if (!rc) rc = mproc__modref_put(b, (const void *)fn);
    if (!rc) rc = mproc__args_export(args, b, fds, nfds);
    return rc;
}

int mproc__boot_decode(const uint8_t *body, size_t len, int *fds, size_t nfds, mproc_target_fn *fn,
                       mproc_args **args)
{
    mproc_reader r = {body, body + len};
    char *name = NULL, *identity = NULL, *taddr = NULL;
    uint8_t daemon = 0;
    uint32_t ppid = 0, level = 0, tpid = 0;
    void *target = NULL;
    int rc = mproc__get_str(&r, &name);
    if (!rc) rc = mproc__get_str(&r, &identity);
    if (!rc) rc = mproc__get_u8(&r, &daemon);
    if (!rc) rc = mproc__get_u32(&r, &ppid);
    if (!rc) rc = mproc__get_u32(&r, &level);
    if (!rc) rc = mproc__get_str(&r, &taddr);
    if (!rc) rc = mproc__get_u32(&r, &tpid);
    if (!rc) {
        mproc__become_child(name, identity, daemon != 0, (pid_t)ppid, role == ROLE_FORKSERVER);
        atomic_store(&mproc__log_level_v, (int)level);
        mproc__tracker_adopt(taddr, (pid_t)tpid);
        rc = mproc__modref_get(&r, &target);
    }
    if (!rc) {
        rc = mproc__args_import(&r, fds, nfds, args);
        nfds = 0; /* the import owns them now, success or not */
    }
    for (size_t i = 0; i < nfds; i++)
        close(fds[i]);
    if (!rc)
        *fn = (mproc_target_fn)target;
    free(name);
    free(identity);
    free(taddr);
    return rc;
}

static int send_error(int fd, int code, const char *text)
{
    mproc_buf b = {0};
    int rc = mproc__put_u32(&b, (uint32_t)code);
    if (!rc)
        rc = mproc__put_str(&b, text);
    if (!rc)
        rc = mproc__msg_send(fd, MPROC__MSG_ERROR, b.data, b.len, NULL, 0);
    mproc__buf_free(&b);
    return rc;
}

int mproc__boot_child(mproc_process *p, int fd)
{
    mproc_buf b = {0};
    int fds[MPROC_MAX_FDS];
    size_t nfds = 0;
    int rc = mproc__boot_encode(&b, p->name, p->identity, p->daemon, p->target, p->args, fds, &nfds);
    if (rc) {
        mproc__buf_free(&b);
        return rc;
    }
    /* Bounded too: a child stuck before mproc_init never drains a large BOOT. */
    mproc_deadline d = mproc_deadline_after(p->start_timeout);
    rc = mproc__msg_send_until(fd, MPROC__MSG_BOOT, b.data, b.len, fds, nfds, d);
    mproc__buf_free(&b);
    if (rc == MPROC_ETIMEDOUT)
        return mproc__fail(rc, "%s did not start within %g s (its main() must call mproc_init() "
                               "first); it was killed", p->name, p->start_timeout);
    /* Another send error means the child is already gone; its reply (or EOF) says why. */
    uint32_t type;
    uint8_t *body = NULL;
    size_t len, n;
    int rc2 = mproc__msg_recv(fd, &type, &body, &len, NULL, 0, &n, mproc_deadline_remaining(d));
    if (rc2 == MPROC_ETIMEDOUT)
        return mproc__fail(rc2, "%s did not start within %g s (its main() must call mproc_init() "
                                "first); it was killed", p->name, p->start_timeout);
    if (rc2 == MPROC_ECLOSED)
        return mproc__fail(MPROC_ECHILD, "%s exited during start-up, before running its target",
                           p->name);
    if (rc2)
        return rc2;
    if (rc == 0 && type == MPROC__MSG_READY) {
        free(body);
        return 0;
    }
    mproc_reader r = {body, body + len};
    uint32_t code = 0;
    char *text = NULL;
    if (type == MPROC__MSG_ERROR && mproc__get_u32(&r, &code) == 0 &&
        mproc__get_str(&r, &text) == 0) {
        rc = mproc__fail((int)code, "%s could not start: %s", p->name, text);
    } else if (type == MPROC__MSG_EXIT && mproc__get_u32(&r, &code) == 0) {
        rc = mproc__fail(MPROC_ECHILD, "%s exited during start-up (exit code %d)", p->name,
                         (int)code);
    } else {
        rc = mproc__fail(rc ? rc : MPROC_EPROTO, "%s: unexpected start-up reply %u", p->name, type);
    }
    free(text);
    free(body);
    return rc;
}

void mproc__child_main(int fd)
{
    uint32_t type = 0;
    uint8_t *body = NULL;
    size_t len = 0, nfds = 0;
    int fds[MPROC_MAX_FDS];
    mproc_target_fn fn = NULL;
    mproc_args *args = NULL;
    int rc = mproc__msg_recv(fd, &type, &body, &len, fds, MPROC_MAX_FDS, &nfds, 60.0);
    if (rc == 0 && type != MPROC__MSG_BOOT) {
        for (size_t i = 0; i < nfds; i++)
            close(fds[i]);
        rc = mproc__fail(MPROC_EPROTO, "expected a BOOT message, got type %u", type);
    }
    if (rc == 0)
        rc = mproc__boot_decode(body, len, fds, nfds, &fn, &args);
    free(body);
    if (rc) {
        send_error(fd, rc, mproc_errmsg());
        /* The parent's start() returns this; log it too for parents that do not look. */
        mproc_log(MPROC_LOG_DEBUG, "start-up failed: %s", mproc_errmsg());
        _exit(255);
    }
    rc = mproc__msg_send(fd, MPROC__MSG_READY, NULL, 0, NULL, 0);
    close(fd);
    if (rc) /* the parent gave up on us (start timeout) */
        _exit(255);
    mproc__run_target(fn, args);
}

/* ---------------------------------------------------------------- spawn */

int mproc__start_spawn(mproc_process *p)
{
    int rc = mproc_tracker_ensure();
    if (rc)
        mproc_log(MPROC_LOG_WARNING, "resource tracker unavailable: %s", mproc_errmsg());
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return mproc__fail(mproc__errno(), "spawn: socketpair failed");
    pid_t pid;
    rc = mproc__launch("spawn", sv[1], false, &pid);
    close(sv[1]);
    if (rc) {
        close(sv[0]);
        return rc;
    }
    int pidfd = mproc__pidfd_open(pid);
    if (pidfd < 0) {
        rc = mproc__fail(pidfd, "spawn: pidfd_open failed");
        goto fail;
    }
    mproc__tracker_watch(pidfd);
    rc = mproc__boot_child(p, sv[0]);
    if (rc)
        goto fail;
    close(sv[0]);
    p->pid = pid;
    p->pidfd = pidfd;
    return 0;
fail:
    close(sv[0]);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    if (pidfd >= 0)
        close(pidfd);
    return rc;
}

/* ------------------------------------------------------- init and roles */

static void report_missing_init(void)
{
    if (!atomic_load(&mproc__bootstrapping))
        return;
    send_error(MPROC__BOOT_FD, MPROC_ENOINIT,
               "main() returned without calling mproc_init(&argc, &argv); call it first in main()");
}

/* Runs before main() (and before C++ static constructors of the program): a
 * re-executed binary learns its role here and hides the variable from main(). */
__attribute__((constructor(101))) static void mproc_role_ctor(void)
{
    const char *v = getenv(MPROC__ROLE_ENV);
    if (!v)
        return;
    char r[64];
    snprintf(r, sizeof r, "%s", v);
    unsetenv(MPROC__ROLE_ENV);
    struct stat st;
    if (fstat(MPROC__BOOT_FD, &st) != 0 || !S_ISSOCK(st.st_mode))
        return; /* a stray variable, not a process we started */
    if (strncmp(r, "tracker:", 8) == 0) {
        atomic_store(&mproc__log_level_v, atoi(r + 8));
        mproc__tracker_main(MPROC__BOOT_FD);
    }
    if (strcmp(r, "spawn") == 0)
        role = ROLE_SPAWN;
    else if (strcmp(r, "forkserver") == 0)
        role = ROLE_FORKSERVER;
    else
        return;
    atomic_store(&mproc__bootstrapping, true);
    atexit(report_missing_init);
}

static int save_argv(int argc, char **argv)
{
    char **v = calloc((size_t)argc + 1, sizeof *v);
    if (!v)
        return MPROC_ENOMEM;
    for (int i = 0; i < argc; i++)
        if (!(v[i] = strdup(argv[i])))
            return MPROC_ENOMEM; /* the few strdup'ed strings live as long as the program */
    saved_argv = v;
    return 0;
}

int mproc_init(int *argc, char ***argv)
{
    atomic_store(&mproc__init_called, true);
    /* Children re-executed from here (spawn grandchildren too) get the same argv. */
    int rc = 0;
    if (argc && argv && *argv && !saved_argv && *argc > 0)
        rc = save_argv(*argc, *argv);
    if (role != ROLE_NONE) {
        atomic_store(&mproc__bootstrapping, false);
        if (role == ROLE_SPAWN)
            mproc__child_main(MPROC__BOOT_FD);
        mproc__forkserver_main(MPROC__BOOT_FD);
    }
    mproc__atexit_install();
    return rc;
}
