/* shm.c — shared memory segments: memfd-backed anonymous ones and POSIX named
 * ones (registered with the resource tracker by their creator only). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "mproc/shm.h"

struct mproc_shm {
    void *buf;
    size_t size;
    int fd;          /* kept open: exporting to spawn/forkserver children passes it */
    char *name;      /* "/name", NULL when anonymous */
    bool registered; /* we created it and told the tracker */
};

static int map_fd(int fd, size_t size, char *name, bool registered, mproc_shm **out)
{
    mproc_shm *s = calloc(1, sizeof *s);
    if (!s)
        return MPROC_ENOMEM;
    s->buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (s->buf == MAP_FAILED) {
        int rc = mproc__fail(mproc__errno(), "shm: mmap of %zu bytes failed", size);
        free(s);
        return rc;
    }
    s->size = size;
    s->fd = fd;
    s->name = name;
    s->registered = registered;
    *out = s;
    return 0;
}

int mproc_shm_new(mproc_shm **out, size_t size)
{
    if (!out || size == 0)
        return mproc__fail(MPROC_EINVAL, "shm_new: size must be > 0");
    int fd = memfd_create("mproc-shm", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return mproc__fail(mproc__errno(), "shm_new: memfd_create failed");
    /* Sealed at its size: no process it is shared with can shrink it under the
     * others' mappings (which would turn their next access into SIGBUS). */
    int rc = ftruncate(fd, (off_t)size) < 0
                 ? mproc__fail(mproc__errno(), "shm_new: cannot size segment to %zu bytes", size)
             : fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0
                 ? mproc__fail(mproc__errno(), "shm_new: cannot seal the segment")
                 : map_fd(fd, size, NULL, false, out);
    if (rc)
        close(fd);
    return rc;
}

/* "/name" from "name" or "/name"; NULL name -> a fresh random one. */
static int make_name(const char *name, char **out)
{
    char buf[MPROC_SHM_NAME_MAX + 2];
    if (!name) {
        uint64_t r = 0;
        if (getrandom(&r, sizeof r, 0) != sizeof r)
            r = (uint64_t)mproc_monotonic() * 1000003u ^ (uint64_t)getpid();
        snprintf(buf, sizeof buf, "/mproc_%016llx", (unsigned long long)r);
    } else {
        const char *n = name[0] == '/' ? name + 1 : name;
        size_t len = strlen(n);
        if (len == 0 || len > MPROC_SHM_NAME_MAX || strchr(n, '/'))
            return mproc__fail(MPROC_EINVAL, "shm: bad name '%s' (1-%d characters, no '/')", name,
                               MPROC_SHM_NAME_MAX);
        snprintf(buf, sizeof buf, "/%s", n);
    }
    *out = strdup(buf);
    return *out ? 0 : MPROC_ENOMEM;
}

int mproc_shm_open(mproc_shm **out, const char *name, bool create, size_t size)
{
    if (!out || (!name && !create) || (create && size == 0))
        return mproc__fail(MPROC_EINVAL, "shm_open: %s", !out ? "out is NULL"
                                         : create ? "size must be > 0 to create"
                                                  : "a name is needed to attach");
    char *path = NULL;
    int rc = make_name(name, &path);
    if (rc)
        return rc;
    int fd = shm_open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0), 0600);
    if (fd < 0) {
        rc = mproc__fail(mproc__errno(), "shm_open: cannot %s '%s'", create ? "create" : "attach",
                         path);
        free(path);
        return rc;
    }
    if (create) {
        if (ftruncate(fd, (off_t)size) < 0) {
            rc = mproc__fail(mproc__errno(), "shm_open: cannot size '%s' to %zu bytes", path, size);
            goto fail_unlink;
        }
        /* Registered before anyone can see it mapped: a crash from here on is cleaned up. */
        rc = mproc_tracker_register("shm", path);
        if (rc)
            goto fail_unlink;
        rc = map_fd(fd, size, path, true, out);
        if (rc) {
            mproc_tracker_unregister("shm", path);
            goto fail_unlink;
        }
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size <= 0 || (size && size > (size_t)st.st_size)) {
        rc = mproc__fail(MPROC_EINVAL, "shm_open: '%s' is %lld bytes, cannot map %zu", path,
                         (long long)st.st_size, size);
        goto fail;
    }
    rc = map_fd(fd, size ? size : (size_t)st.st_size, path, false, out);
    if (rc)
        goto fail;
    return 0;
fail_unlink:
    shm_unlink(path);
fail:
    close(fd);
    free(path);
    return rc;
}

void *mproc_shm_buf(const mproc_shm *s)
{
    return s ? s->buf : NULL;
}

size_t mproc_shm_size(const mproc_shm *s)
{
    return s ? s->size : 0;
}

const char *mproc_shm_name(const mproc_shm *s)
{
    return s && s->name ? s->name + 1 : NULL;
}

int mproc_shm_unlink(mproc_shm *s)
{
    if (!s || !s->name)
        return mproc__fail(MPROC_EINVAL, "shm_unlink: anonymous segments have no name");
    int rc = shm_unlink(s->name) < 0 ? mproc__fail(mproc__errno(), "shm_unlink: '%s'", s->name) : 0;
    if (s->registered) {
        /* Gone (by us or someone else): the tracker has nothing left to do for it. */
        mproc_tracker_unregister("shm", s->name);
        s->registered = false;
    }
    return rc;
}

void mproc_shm_close(mproc_shm *s)
{
    if (!s)
        return;
    munmap(s->buf, s->size);
    close(s->fd);
    free(s->name);
    free(s);
}

/* Free the handle but leave the memory mapped, for sync objects a thread of
 * this process still holds: the kernel can only report the holder's death if
 * the lock is still mapped when the thread exits (see src/sync/lock.c). */
void mproc__shm_close_keep_mapping(mproc_shm *s)
{
    if (!s)
        return;
    close(s->fd);
    free(s->name);
    free(s);
}

/* ------------------------------------------------------------ shareable */

/* Wire form: u64 size, then the name ("" if anonymous); one fd. The child maps the
 * descriptor, so it works even after the name was unlinked, and never registers. */
static int shm_export(const void *obj, mproc_buf *out, int *fds, size_t *nfds, size_t max_fds)
{
    const mproc_shm *s = obj;
    if (*nfds >= max_fds)
        return mproc__fail(MPROC_EINVAL, "shm: no room for the segment's descriptor");
    fds[(*nfds)++] = s->fd;
    int rc = mproc__put_u64(out, (uint64_t)s->size);
    return rc ? rc : mproc__put_str(out, s->name);
}

static int shm_import(const void *data, size_t len, const int *fds, size_t nfds, void **obj)
{
    mproc_reader r = {data, (const uint8_t *)data + len};
    uint64_t size = 0;
    char *name = NULL;
    int rc = mproc__get_u64(&r, &size);
    if (!rc)
        rc = mproc__get_str(&r, &name);
    struct stat st;
    if (!rc && (nfds != 1 || size == 0 || size > SIZE_MAX || fstat(fds[0], &st) < 0 ||
                (uint64_t)st.st_size < size)) /* mapping past the end would SIGBUS on access */
        rc = mproc__fail(MPROC_EPROTO, "shm: bad exported segment");
    if (!rc && !name[0]) {
        free(name);
        name = NULL;
    }
    mproc_shm *s = NULL;
    if (!rc)
        rc = map_fd(fds[0], (size_t)size, name, false, &s);
    if (rc) {
        free(name);
        return rc;
    }
    *obj = s;
    return 0;
}

static void shm_release(void *obj)
{
    mproc_shm_close(obj);
}

const mproc_shareable_type mproc_shm_type = {"mproc.shm", shm_export, shm_import, shm_release};
