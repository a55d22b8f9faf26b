/* modref.c — name a function or static object across exec: (build-id, offset, path).
 * spawn and forkserver children resolve it in their own address space; a module
 * whose build-id differs is reported, never guessed at. */
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define MAX_ID 64

typedef struct {
    /* query */
    uintptr_t addr;          /* find the module containing addr, or */
    const uint8_t *want_id;  /* find the module with this build-id */
    size_t want_len;
    /* answer */
    bool found;
    uintptr_t base;
    char path[512];
    uint8_t id[MAX_ID];
    size_t idlen;
    uintptr_t lo, hi;        /* the module's mapped range (PT_LOAD extent) */
} modquery;

static size_t build_id(const struct dl_phdr_info *info, uint8_t *out)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_NOTE)
            continue;
        const uint8_t *p = (const uint8_t *)(info->dlpi_addr + ph->p_vaddr);
        const uint8_t *end = p + ph->p_memsz;
        while (p + sizeof(ElfW(Nhdr)) <= end) {
            const ElfW(Nhdr) *n = (const ElfW(Nhdr) *)p;
            const uint8_t *name = p + sizeof *n;
            const uint8_t *desc = name + ((n->n_namesz + 3) & ~3u);
            if (n->n_type == NT_GNU_BUILD_ID && n->n_namesz == 4 && memcmp(name, "GNU", 4) == 0 &&
                n->n_descsz <= MAX_ID && desc + n->n_descsz <= end) {
                memcpy(out, desc, n->n_descsz);
                return n->n_descsz;
            }
            p = desc + ((n->n_descsz + 3) & ~3u);
        }
    }
    return 0;
}

static int visit(struct dl_phdr_info *info, size_t size, void *arg)
{
    MPROC_UNUSED(size);
    modquery *q = arg;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t s = info->dlpi_addr + ph->p_vaddr;
        if (s < lo)
            lo = s;
        if (s + ph->p_memsz > hi)
            hi = s + ph->p_memsz;
    }
    if (lo >= hi)
        return 0;
    uint8_t id[MAX_ID];
    size_t idlen;
    if (q->want_id) {
        idlen = build_id(info, id);
        if (idlen != q->want_len || memcmp(id, q->want_id, idlen) != 0)
            return 0;
    } else {
        if (q->addr < lo || q->addr >= hi)
            return 0;
        idlen = build_id(info, id);
    }
    q->found = true;
    q->base = info->dlpi_addr;
    q->lo = lo;
    q->hi = hi;
    memcpy(q->id, id, idlen);
    q->idlen = idlen;
    const char *name = info->dlpi_name && info->dlpi_name[0] ? info->dlpi_name : NULL;
    if (name)
        snprintf(q->path, sizeof q->path, "%s", name);
    else {
        ssize_t n = readlink("/proc/self/exe", q->path, sizeof q->path - 1);
        q->path[n > 0 ? n : 0] = 0;
    }
    return 1;
}

static void hex(const uint8_t *id, size_t n, char *out, size_t outlen)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 3 <= outlen; i++)
        k += (size_t)snprintf(out + k, outlen - k, "%02x", id[i]);
    if (k < outlen)
        out[k] = 0;
    if (n == 0)
        snprintf(out, outlen, "(none)");
}

int mproc__modref_put(mproc_buf *b, const void *addr)
{
    modquery q = {.addr = (uintptr_t)addr};
    dl_iterate_phdr(visit, &q);
    if (!q.found)
        return mproc__fail(MPROC_EINVAL, "address %p is not inside any loaded module", addr);
    if (q.idlen == 0)
        return mproc__fail(MPROC_EBUILDID,
                           "%s has no build-id; link it with -Wl,--build-id to use spawn or forkserver",
                           q.path);
    int rc = mproc__put_blob(b, q.id, q.idlen);
    if (!rc)
        rc = mproc__put_u64(b, (uint64_t)(q.addr - q.base));
    if (!rc)
        rc = mproc__put_str(b, q.path);
    return rc;
}

int mproc__modref_get(mproc_reader *r, void **addr)
{
    const uint8_t *id;
    size_t idlen;
    uint64_t off;
    char *path = NULL;
    int rc = mproc__get_blob(r, &id, &idlen);
    if (!rc)
        rc = mproc__get_u64(r, &off);
    if (!rc)
        rc = mproc__get_str(r, &path);
    if (rc)
        return rc;
    modquery q = {.want_id = id, .want_len = idlen};
    if (idlen == 0 || idlen > MAX_ID) {
        free(path);
        return mproc__fail(MPROC_EPROTO, "bad build-id length %zu", idlen);
    }
    dl_iterate_phdr(visit, &q);
    if (!q.found && path[0]) {
        /* The parent had dlopen()ed a plugin this fresh process has not loaded yet. */
        void *h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
        if (h)
            dl_iterate_phdr(visit, &q);
    }
    if (!q.found) {
        char want[2 * MAX_ID + 1], exe[512];
        hex(id, idlen, want, sizeof want);
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        exe[n > 0 ? n : 0] = 0;
        rc = mproc__fail(MPROC_EBUILDID,
                         "the parent's code is in %s with build-id %s, but no module with that "
                         "build-id is loaded in the child (%s): the child runs a different build",
                         path, want, exe);
        free(path);
        return rc;
    }
    free(path);
    uintptr_t a = q.base + (uintptr_t)off;
    if (off > UINTPTR_MAX - q.base || a < q.lo || a >= q.hi)
        return mproc__fail(MPROC_EPROTO, "offset %#llx lies outside module %s",
                           (unsigned long long)off, q.path);
    *addr = (void *)a;
    return 0;
}
