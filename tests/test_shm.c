/* test_shm.c — shared memory segments: anonymous and named, handed to children
 * under every start method, attach/unlink semantics, Python interoperability,
 * and the tracker cleaning up after a SIGKILLed program. */
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include "mtest.h"
#include "mtest_helper.h"


static char *test_name(const char *tag)
{
    static char buf[64];
    snprintf(buf, sizeof buf, "mproc-test-%d-%s", (int)getpid(), tag);
    return buf;
}

#define SEG 100000

/* The child adds 1 to every byte and stamps "done" at the end. */
static int t_bump(mproc_args *a)
{
    mproc_shm *s = mproc_args_object(a, 0, &mproc_shm_type);
    if (!s || mproc_shm_size(s) != SEG)
        return 10;
    const char *want = mproc_args_str(a, 1);
    const char *name = mproc_shm_name(s);
    if ((want[0] == 0) != (name == NULL) || (name && strcmp(name, want) != 0))
        return 11;
    unsigned char *p = mproc_shm_buf(s);
    for (size_t i = 0; i < SEG - 4; i++)
        p[i] = (unsigned char)(p[i] + 1);
    memcpy(p + SEG - 4, "done", 4);
    return 0;
}

static void shared_with_child(mproc_start_method m, bool named)
{
    mproc_shm *s;
    if (named)
        CHECK_OK(mproc_shm_open(&s, test_name("child"), true, SEG));
    else
        CHECK_OK(mproc_shm_new(&s, SEG));
    unsigned char *p = mproc_shm_buf(s);
    for (size_t i = 0; i < SEG; i++)
        CHECK(p[i] == 0); /* fresh segments are zero-filled */
    for (size_t i = 0; i < SEG - 4; i++)
        p[i] = (unsigned char)(i * 7);
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_shm_type, s));
    CHECK_OK(mproc_args_add_str(a, named ? test_name("child") : ""));
    mproc_process_opts o = {.ctx = mproc_get_context(m)};
    mproc_process *c;
    CHECK_OK(mproc_process_new(&c, t_bump, a, &o));
    mproc_args_free(a);
    CHECK_OK(mproc_process_start(c));
    CHECK_OK(mproc_process_join(c, 30.0));
    CHECK_EQ(mproc_process_exitcode(c), 0);
    CHECK_OK(mproc_process_close(c));
    for (size_t i = 0; i < SEG - 4; i++)
        CHECK(p[i] == (unsigned char)(i * 7 + 1));
    CHECK(memcmp(p + SEG - 4, "done", 4) == 0);
    if (named)
        CHECK_OK(mproc_shm_unlink(s));
    mproc_shm_close(s);
}

static void anonymous(mproc_start_method m) { shared_with_child(m, false); }
static void named(mproc_start_method m) { shared_with_child(m, true); }

FOR_METHODS(anonymous)
FOR_METHODS(named)

MTEST(test_named_create_attach_unlink)
{
    const char *name = test_name("life");
    mproc_shm *a, *b, *c;
    CHECK_OK(mproc_shm_open(&a, name, true, 10000));
    CHECK(strcmp(mproc_shm_name(a), name) == 0);
    CHECK(shm_exists(name));
    char slashed[80];
    snprintf(slashed, sizeof slashed, "/%s", name);
    CHECK_OK(mproc_shm_open(&b, slashed, false, 0)); /* "/x" and "x" are the same */
    CHECK_EQ(mproc_shm_size(b), 10000);
    CHECK(mproc_shm_buf(a) != mproc_shm_buf(b)); /* two mappings, one memory */
    memcpy(mproc_shm_buf(a), "shared", 6);
    CHECK(memcmp(mproc_shm_buf(b), "shared", 6) == 0);
    CHECK_EQ(mproc_shm_open(&c, name, true, 10), MPROC_EEXIST);
    CHECK_EQ(mproc_shm_open(&c, name, false, 20000), MPROC_EINVAL); /* bigger than it is */
    CHECK_OK(mproc_shm_open(&c, name, false, 100)); /* a prefix is fine */
    CHECK_EQ(mproc_shm_size(c), 100);
    mproc_shm_close(c);
    mproc_shm_close(b); /* closing an attachment never unlinks */
    CHECK(shm_exists(name));
    CHECK_OK(mproc_shm_unlink(a));
    CHECK(!shm_exists(name));
    CHECK(memcmp(mproc_shm_buf(a), "shared", 6) == 0); /* the mapping outlives the name */
    CHECK_EQ(mproc_shm_unlink(a), MPROC_ENOENT);
    CHECK_EQ(mproc_shm_open(&c, name, false, 0), MPROC_ENOENT);
    mproc_shm_close(a);
    mproc_shm_close(NULL);
}

/* An anonymous segment cannot be resized by anyone it is shared with. */
static int t_try_shrink(mproc_args *a)
{
    mproc_shm *s = mproc_args_object(a, 0, &mproc_shm_type);
    int fd = -1;
    for (int i = 3; i < 1024 && fd < 0; i++) { /* find the segment's descriptor */
        char link[64], target[256];
        snprintf(link, sizeof link, "/proc/self/fd/%d", i);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0 && (target[n] = 0, strstr(target, "memfd:mproc-shm")))
            fd = i;
    }
    if (!s || fd < 0)
        return 2;
    if (ftruncate(fd, 0) == 0 || ftruncate(fd, 1 << 20) == 0)
        return 3;
    ((char *)mproc_shm_buf(s))[SEG - 1] = 7; /* still all there */
    return 0;
}

static void sealed_segment(mproc_start_method m)
{
    mproc_shm *s;
    CHECK_OK(mproc_shm_new(&s, SEG));
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_shm_type, s));
    mproc_process *p = mtest_start(m, t_try_shrink, a);
    mproc_args_free(a);
    mtest_join(p, 0);
    CHECK_EQ(((char *)mproc_shm_buf(s))[SEG - 1], 7);
    mproc_shm_close(s);
}
FOR_METHODS(sealed_segment)

MTEST(test_bad_arguments_are_refused)
{
    mproc_shm *s;
    CHECK_EQ(mproc_shm_new(&s, 0), MPROC_EINVAL);
    CHECK_EQ(mproc_shm_open(&s, "x", true, 0), MPROC_EINVAL);
    CHECK_EQ(mproc_shm_open(&s, NULL, false, 0), MPROC_EINVAL);
    CHECK_EQ(mproc_shm_open(&s, "a/b", true, 10), MPROC_EINVAL);
    CHECK_EQ(mproc_shm_open(&s, "/", true, 10), MPROC_EINVAL);
    char longname[300];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    CHECK_EQ(mproc_shm_open(&s, longname, true, 10), MPROC_EINVAL);
    CHECK(strstr(mproc_errmsg(), "bad name") != NULL);
    CHECK_OK(mproc_shm_new(&s, 10));
    CHECK(mproc_shm_name(s) == NULL);
    CHECK_EQ(mproc_shm_unlink(s), MPROC_EINVAL);
    mproc_shm_close(s);
}

MTEST(test_null_name_picks_a_fresh_one)
{
    mproc_shm *a, *b;
    CHECK_OK(mproc_shm_open(&a, NULL, true, 64));
    CHECK_OK(mproc_shm_open(&b, NULL, true, 64));
    CHECK(strncmp(mproc_shm_name(a), "mproc_", 6) == 0);
    CHECK(strcmp(mproc_shm_name(a), mproc_shm_name(b)) != 0);
    CHECK_OK(mproc_shm_unlink(a));
    CHECK_OK(mproc_shm_unlink(b));
    mproc_shm_close(a);
    mproc_shm_close(b);
}

/* Python's multiprocessing.shared_memory attaches to ours, and we to Python's. */
static const char *py_script =
    "import sys\n"
    "from multiprocessing import shared_memory, resource_tracker\n"
    "ours = shared_memory.SharedMemory(name=sys.argv[1])\n"
    "resource_tracker.unregister(ours._name, 'shared_memory')  # 3.11 would unlink it\n"
    "assert bytes(ours.buf[:5]) == b'hello', bytes(ours.buf[:5])\n"
    "ours.buf[100:106] = b'PYTHON'\n"
    "ours.close()\n"
    "theirs = shared_memory.SharedMemory(create=True, size=4096)\n"
    "theirs.buf[:11] = b'from python'\n"
    "print(theirs.name, flush=True)\n"
    "sys.stdin.readline()\n"
    "theirs.close()\n"
    "theirs.unlink()\n";

MTEST(test_python_and_mproc_attach_each_others_segments)
{
    const char *name = test_name("py");
    mproc_shm *s;
    CHECK_OK(mproc_shm_open(&s, name, true, 4096));
    memcpy(mproc_shm_buf(s), "hello", 5);
    int in[2], out[2];
    CHECK(pipe2(in, O_CLOEXEC) == 0 && pipe2(out, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    char *argv[] = {"python3", "-c", (char *)py_script, (char *)name, NULL};
    pid_t pid;
    CHECK_EQ(posix_spawnp(&pid, "python3", &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    char pyname[128] = {0};
    CHECK_OK(mproc_wait_fd(out[0], POLLIN, 60.0));
    size_t got = 0;
    while (got < sizeof pyname - 1 && !strchr(pyname, '\n')) {
        CHECK_OK(mproc_wait_fd(out[0], POLLIN, 60.0));
        ssize_t n = mproc_read_some(out[0], pyname + got, sizeof pyname - 1 - got);
        CHECK(n > 0);
        got += (size_t)n;
    }
    *strchr(pyname, '\n') = 0;
    mproc_shm *p;
    CHECK_OK(mproc_shm_open(&p, pyname, false, 0));
    CHECK(mproc_shm_size(p) >= 4096);
    CHECK(memcmp(mproc_shm_buf(p), "from python", 11) == 0);
    mproc_shm_close(p);
    CHECK_OK(mproc_write_all(in[1], "\n", 1));
    int pfd = (int)syscall(434, pid, 0);
    CHECK_OK(mproc_wait_fd(pfd, POLLIN, 60.0));
    close(pfd);
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(memcmp((char *)mproc_shm_buf(s) + 100, "PYTHON", 6) == 0);
    CHECK(!shm_exists(pyname)); /* Python unlinked its own */
    CHECK(shm_exists(name));    /* and did not touch ours */
    CHECK_OK(mproc_shm_unlink(s));
    mproc_shm_close(s);
    close(in[1]);
    close(out[0]);
}

/* A program creates a named segment in a spawned child and is SIGKILLed whole. */
MTEST(test_named_segment_is_unlinked_after_sigkill_of_the_program)
{
    mtest_sigkill_tree_expect_unlinked("shm_kill");
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    static const mtest_case cases[] = {
        METHOD_ENTRIES(anonymous),
        METHOD_ENTRIES(named),
        MTEST_ENTRY(test_named_create_attach_unlink),
        METHOD_ENTRIES(sealed_segment),
        MTEST_ENTRY(test_bad_arguments_are_refused),
        MTEST_ENTRY(test_null_name_picks_a_fresh_one),
        MTEST_ENTRY(test_python_and_mproc_attach_each_others_segments),
        MTEST_ENTRY(test_named_segment_is_unlinked_after_sigkill_of_the_program),
    };
    mtest_warmup = mtest_warmup_tracker_and_forkserver;
    return mtest_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
