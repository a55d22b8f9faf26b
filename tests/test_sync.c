/* test_sync.c — Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event
 * and Barrier: semantics, timeouts, sharing with children under every start
 * method, and what happens when a process is SIGKILLed inside them. */
#include <pthread.h>
#include <sched.h>
#include <signal.h>

#include "mtest.h"

/* --------------------------------------------------------------- helpers */


static void kill_and_join(mproc_process *p)
{
    CHECK_OK(mproc_process_kill(p));
    mtest_join(p, -SIGKILL);
}

/* A few shared counters for tests, in one anonymous segment. */
typedef struct shared {
    long counter;
    int ready, woken, flag, actions, rc[8];
} shared;

static shared *shared_of(mproc_args *a, size_t i)
{
    mproc_shm *s = mproc_args_object(a, i, &mproc_shm_type);
    return s ? mproc_shm_buf(s) : NULL;
}

/* Run fn(arg) in a thread and return its int result (for "another thread" checks). */
typedef struct {
    int (*fn)(void *);
    void *arg;
    int rc;
} thread_call;

static void *thread_main(void *p)
{
    thread_call *c = p;
    c->rc = c->fn(c->arg);
    return NULL;
}

static int in_thread(int (*fn)(void *), void *arg)
{
    thread_call c = {fn, arg, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, thread_main, &c) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    return c.rc;
}

static int try_lock(void *l) { return mproc_lock_acquire(l, 0); }
static int try_lock_briefly(void *l) { return mproc_lock_acquire(l, 0.05); }
static int release_lock(void *l) { return mproc_lock_release(l); }

/* ------------------------------------------------------------------ Lock */

MTEST(test_lock_basics)
{
    mproc_lock *l;
    CHECK_OK(mproc_lock_new(&l));
    CHECK(!mproc_lock_is_recursive(l));
    CHECK(!mproc_lock_is_owned(l));
    CHECK_OK(mproc_lock_acquire(l, MPROC_FOREVER));
    CHECK(mproc_lock_is_owned(l));
    CHECK_EQ(mproc_lock_acquire(l, 0), MPROC_EDEADLK);   /* not a hang */
    CHECK_EQ(mproc_lock_acquire(l, 1.0), MPROC_EDEADLK);
    CHECK_EQ(in_thread(try_lock, l), MPROC_ETIMEDOUT);
    double t0 = mproc_monotonic();
    CHECK_EQ(in_thread(try_lock_briefly, l), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 >= 0.045);
    CHECK_EQ(in_thread(release_lock, l), MPROC_EPERM); /* owned by a thread */
    CHECK_OK(mproc_lock_release(l));
    CHECK_EQ(mproc_lock_release(l), MPROC_EPERM);
    CHECK(!mproc_lock_is_owned(l));
    CHECK_OK(in_thread(try_lock, l));                    /* ... which exits holding it */
    CHECK_EQ(mproc_lock_acquire(l, 0), MPROC_EOWNERDEAD); /* a dead thread counts too */
    CHECK(mproc_lock_is_owned(l));
    CHECK_OK(mproc_lock_release(l));
    CHECK_OK(mproc_lock_acquire(l, 0));
    CHECK_OK(mproc_lock_release(l));
    mproc_lock_free(l);
    mproc_lock_free(NULL);
    CHECK_EQ(mproc_lock_acquire(NULL, 0), MPROC_EINVAL);
    CHECK_EQ(mproc_lock_new(NULL), MPROC_EINVAL);
}

MTEST(test_rlock_counts_levels)
{
    mproc_lock *l;
    CHECK_OK(mproc_rlock_new(&l));
    CHECK(mproc_lock_is_recursive(l));
    for (int i = 0; i < 3; i++)
        CHECK_OK(mproc_lock_acquire(l, 0));
    for (int i = 0; i < 2; i++) {
        CHECK_OK(mproc_lock_release(l));
        CHECK_EQ(in_thread(try_lock, l), MPROC_ETIMEDOUT); /* still held */
    }
    CHECK_OK(mproc_lock_release(l));
    CHECK_EQ(mproc_lock_release(l), MPROC_EPERM);
    CHECK_OK(in_thread(try_lock, l));
    /* The thread died holding one level: we get it, with exactly one level. */
    CHECK_EQ(mproc_lock_acquire(l, 0), MPROC_EOWNERDEAD);
    CHECK_OK(mproc_lock_release(l));
    CHECK_EQ(mproc_lock_release(l), MPROC_EPERM);
    mproc_lock_free(l);
}

/* Children add to a plain counter in shared memory under the lock. */
#define ADDS 20000
static int t_add_locked(mproc_args *a)
{
    mproc_lock *l = mproc_args_object(a, 0, &mproc_lock_type);
    shared *sh = shared_of(a, 1);
    for (int i = 0; i < ADDS; i++) {
        if (mproc_lock_acquire(l, 10.0) != 0)
            return 2;
        volatile long *c = &sh->counter;
        long v = *c;
        if ((i & 63) == 0)
            sched_yield(); /* invite the other process in, if the lock let it */
        *c = v + 1;
        if (mproc_lock_release(l) != 0)
            return 3;
    }
    return 0;
}

static void lock_excludes(mproc_start_method m, bool recursive)
{
    mproc_lock *l;
    mproc_shm *s;
    CHECK_OK(recursive ? mproc_rlock_new(&l) : mproc_lock_new(&l));
    CHECK_OK(mproc_shm_new(&s, sizeof(shared)));
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_lock_type, l));
    CHECK_OK(mproc_args_add_object(a, &mproc_shm_type, s));
    mproc_process *p1 = mtest_start(m, t_add_locked, a), *p2 = mtest_start(m, t_add_locked, a);
    mproc_args_free(a);
    mtest_join(p1, 0);
    mtest_join(p2, 0);
    CHECK_EQ(((shared *)mproc_shm_buf(s))->counter, 2 * ADDS);
    mproc_shm_close(s);
    mproc_lock_free(l);
}

static void lock_mutual_exclusion(mproc_start_method m) { lock_excludes(m, false); }
static void rlock_mutual_exclusion(mproc_start_method m) { lock_excludes(m, true); }
FOR_METHODS(lock_mutual_exclusion)
FOR_METHODS(rlock_mutual_exclusion)

/* Take the lock (levels times), tell the parent, and wait to be killed. */
static int t_hold_and_hang(mproc_args *a)
{
    mproc_lock *l = mproc_args_object(a, 0, &mproc_lock_type);
    mproc_event *e = mproc_args_object(a, 1, &mproc_event_type);
    int64_t levels = 1;
    mproc_args_get_int(a, 2, &levels);
    for (int64_t i = 0; i < levels; i++)
        if (mproc_lock_acquire(l, 10.0) != 0)
            return 2;
    mproc_event_set(e);
    for (;;)
        pause();
}

static void owner_death(mproc_start_method m, bool recursive, bool join_first)
{
    mproc_lock *l;
    mproc_event *e;
    CHECK_OK(recursive ? mproc_rlock_new(&l) : mproc_lock_new(&l));
    CHECK_OK(mproc_event_new(&e));
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_lock_type, l));
    CHECK_OK(mproc_args_add_object(a, &mproc_event_type, e));
    CHECK_OK(mproc_args_add_int(a, recursive ? 3 : 1));
    mproc_process *p = mtest_start(m, t_hold_and_hang, a);
    mproc_args_free(a);
    CHECK_OK(mproc_event_wait(e, 30.0));
    CHECK_EQ(mproc_lock_acquire(l, 0), MPROC_ETIMEDOUT);
    if (join_first) {
        kill_and_join(p);
        CHECK_EQ(mproc_lock_acquire(l, 0), MPROC_EOWNERDEAD);
    } else {
        /* Blocked in acquire while the owner dies: woken by the kernel. */
        CHECK_OK(mproc_process_kill(p));
        CHECK_EQ(mproc_lock_acquire(l, 30.0), MPROC_EOWNERDEAD);
        CHECK_OK(mproc_process_join(p, 30.0));
        CHECK_OK(mproc_process_close(p));
    }
    CHECK(strstr(mproc_errmsg(), "died") != NULL);
    CHECK(mproc_lock_is_owned(l));
    CHECK_OK(mproc_lock_release(l)); /* one level, whatever the dead owner held */
    CHECK_EQ(mproc_lock_release(l), MPROC_EPERM);
    CHECK_OK(mproc_lock_acquire(l, 0)); /* usable again, no owner-dead any more */
    CHECK_OK(mproc_lock_release(l));
    mproc_event_free(e);
    mproc_lock_free(l);
}

static void lock_owner_death(mproc_start_method m) { owner_death(m, false, true); }
static void rlock_owner_death(mproc_start_method m) { owner_death(m, true, true); }
static void lock_owner_death_wakes_waiter(mproc_start_method m) { owner_death(m, false, false); }
FOR_METHODS(lock_owner_death)
FOR_METHODS(rlock_owner_death)
FOR_METHODS(lock_owner_death_wakes_waiter)


/* A target that returns while holding the lock: the library frees the child's
 * args on the way out, yet the lock must still be reported owner-dead. */
static int t_return_holding(mproc_args *a)
{
    mproc_lock *l = mproc_args_object(a, 0, &mproc_lock_type);
    return mproc_lock_acquire(l, 10.0) == 0 ? 0 : 2;
}

static void lock_held_at_child_exit(mproc_start_method m)
{
    mproc_lock *l;
    CHECK_OK(mproc_lock_new(&l));
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_lock_type, l));
    mproc_process *p = mtest_start(m, t_return_holding, a);
    mproc_args_free(a);
    mtest_join(p, 0);
    CHECK_EQ(mproc_lock_acquire(l, 10.0), MPROC_EOWNERDEAD);
    CHECK_OK(mproc_lock_release(l));
    mproc_lock_free(l);
}
FOR_METHODS(lock_held_at_child_exit)

MTEST(test_freeing_a_held_lock_is_survivable)
{
    mproc_lock *a, *b, *c;
    CHECK_OK(mproc_lock_new(&a));
    CHECK_OK(mproc_lock_new(&b));
    CHECK_OK(mproc_lock_acquire(a, 0));
    CHECK_OK(mproc_lock_acquire(b, 0));
    mproc_lock_free(a); /* held: its page stays mapped (glibc's robust list points into it) */
    CHECK_OK(mproc_lock_release(b)); /* would write through a dangling list link otherwise */
    CHECK_OK(mproc_lock_new(&c));
    CHECK_OK(mproc_lock_acquire(c, 0));
    CHECK_OK(mproc_lock_release(c));
    mproc_lock_free(c);
    mproc_lock_free(b);
}

/* ------------------------------------------------------------ Semaphore */

MTEST(test_semaphore_basics)
{
    mproc_semaphore *s;
    CHECK_OK(mproc_semaphore_new(&s, 2));
    CHECK_EQ(mproc_semaphore_value(s), 2);
    CHECK_OK(mproc_semaphore_acquire(s, 0));
    CHECK_OK(mproc_semaphore_acquire(s, 0));
    CHECK_EQ(mproc_semaphore_acquire(s, 0), MPROC_ETIMEDOUT);
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_semaphore_acquire(s, 0.05), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 >= 0.045);
    for (int i = 0; i < 5; i++) /* unbounded: may go above the start value */
        CHECK_OK(mproc_semaphore_release(s));
    CHECK_EQ(mproc_semaphore_value(s), 5);
    mproc_semaphore_free(s);

    CHECK_OK(mproc_semaphore_new(&s, MPROC_SEM_VALUE_MAX));
    CHECK_EQ(mproc_semaphore_release(s), MPROC_EOVERFLOW);
    mproc_semaphore_free(s);
    CHECK_EQ(mproc_semaphore_new(&s, MPROC_SEM_VALUE_MAX + 1u), MPROC_EINVAL);

    CHECK_OK(mproc_bounded_semaphore_new(&s, 0)); /* bounded at zero: never releasable */
    CHECK_EQ(mproc_semaphore_release(s), MPROC_EOVERFLOW);
    CHECK_EQ(mproc_semaphore_value(s), 0);
    mproc_semaphore_free(s);

    CHECK_OK(mproc_bounded_semaphore_new(&s, 1));
    CHECK_EQ(mproc_semaphore_release(s), MPROC_EOVERFLOW);
    CHECK(strstr(mproc_errmsg(), "released too many times") != NULL);
    CHECK_OK(mproc_semaphore_acquire(s, 0));
    CHECK_OK(mproc_semaphore_release(s));
    CHECK_EQ(mproc_semaphore_value(s), 1);
    mproc_semaphore_free(s);
}

/* The child releases `n` times; the parent's acquires are all satisfied. */
static int t_release_n(mproc_args *a)
{
    mproc_semaphore *s = mproc_args_object(a, 0, &mproc_semaphore_type);
    int64_t n = 0;
    mproc_args_get_int(a, 1, &n);
    for (int64_t i = 0; i < n; i++)
        if (mproc_semaphore_release(s) != 0)
            return 2;
    return 0;
}

static void semaphore_across(mproc_start_method m)
{
    mproc_semaphore *s;
    CHECK_OK(mproc_semaphore_new(&s, 0));
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_semaphore_type, s));
    CHECK_OK(mproc_args_add_int(a, 1000));
    mproc_process *p = mtest_start(m, t_release_n, a);
    mproc_args_free(a);
    for (int i = 0; i < 1000; i++)
        CHECK_OK(mproc_semaphore_acquire(s, 30.0));
    mtest_join(p, 0);
    CHECK_EQ(mproc_semaphore_value(s), 0);
    mproc_semaphore_free(s);
}
FOR_METHODS(semaphore_across)

/* ------------------------------------------------------------- Condition */

static int wait_in_thread(void *c) { return mproc_condition_wait(c, 0); }

MTEST(test_condition_requires_the_lock)
{
    mproc_condition *c;
    CHECK_OK(mproc_condition_new(&c, NULL));
    CHECK(mproc_lock_is_recursive(mproc_condition_lock(c))); /* Python's default */
    CHECK_EQ(mproc_condition_wait(c, 0), MPROC_EPERM);
    CHECK_EQ(mproc_condition_notify(c, 1), MPROC_EPERM);
    CHECK_EQ(mproc_condition_notify_all(c), MPROC_EPERM);
    CHECK_OK(mproc_condition_acquire(c, 0));
    CHECK_EQ(in_thread(wait_in_thread, c), MPROC_EPERM); /* held by another thread */
    CHECK_OK(mproc_condition_notify(c, 1)); /* nobody waits: fine */
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_condition_wait(c, 0.05), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 >= 0.045);
    CHECK(mproc_lock_is_owned(mproc_condition_lock(c))); /* held again after the timeout */
    CHECK_OK(mproc_condition_release(c));
    mproc_condition_free(c);
}

typedef struct {
    mproc_condition *c;
    int *flag;
} cond_ctx;

static bool flag_set(void *p) { return *(volatile int *)p != 0; }

/* Takes the RLock the waiter released completely, sets the flag, notifies. */
static int set_flag_and_notify(void *p)
{
    cond_ctx *x = p;
    if (mproc_condition_acquire(x->c, 10.0) != 0)
        return 1;
    *x->flag = 1;
    int rc = mproc_condition_notify(x->c, 1);
    mproc_condition_release(x->c);
    return rc;
}

static void *notifier_thread(void *p)
{
    return (void *)(intptr_t)set_flag_and_notify(p);
}

MTEST(test_condition_wait_releases_every_rlock_level)
{
    mproc_lock *rl;
    mproc_condition *c;
    CHECK_OK(mproc_rlock_new(&rl));
    CHECK_OK(mproc_condition_new(&c, rl));
    CHECK(mproc_condition_lock(c) == rl);
    int flag = 0;
    cond_ctx x = {c, &flag};
    CHECK_OK(mproc_lock_acquire(rl, 0));
    CHECK_OK(mproc_lock_acquire(rl, 0));
    pthread_t t;
    CHECK(pthread_create(&t, NULL, notifier_thread, &x) == 0);
    CHECK_OK(mproc_condition_wait_for(c, flag_set, &flag, 30.0));
    void *trc;
    CHECK(pthread_join(t, &trc) == 0);
    CHECK_EQ((intptr_t)trc, 0);
    /* Both levels are back. */
    CHECK_OK(mproc_lock_release(rl));
    CHECK(mproc_lock_is_owned(rl));
    CHECK_OK(mproc_lock_release(rl));
    CHECK_EQ(mproc_lock_release(rl), MPROC_EPERM);
    /* wait_for: a predicate that stays false times out with the lock held. */
    CHECK_OK(mproc_lock_acquire(rl, 0));
    int never = 0;
    CHECK_EQ(mproc_condition_wait_for(c, flag_set, &never, 0.05), MPROC_ETIMEDOUT);
    CHECK(mproc_lock_is_owned(rl));
    CHECK_OK(mproc_condition_wait_for(c, flag_set, &flag, 0)); /* already true */
    CHECK_OK(mproc_lock_release(rl));
    mproc_condition_free(c);
    mproc_lock_free(rl);
}

/* Children: ready++ and notify the parent (cond 1), wait once on cond 0, then
 * record the result and woken++ and notify the parent again. */
static int t_wait_once(mproc_args *a)
{
    mproc_condition *go = mproc_args_object(a, 0, &mproc_condition_type);
    mproc_condition *back = mproc_args_object(a, 1, &mproc_condition_type);
    shared *sh = shared_of(a, 2);
    int64_t me = 0;
    mproc_args_get_int(a, 3, &me);
    if (!go || !back || !sh || mproc_condition_acquire(go, 10.0) != 0)
        return 2;
    sh->ready++;
    mproc_condition_notify_all(back);
    int rc = mproc_condition_wait(go, 30.0);
    sh->rc[me] = rc;
    sh->woken++;
    mproc_condition_notify_all(back);
    mproc_condition_release(go);
    return rc == 0 ? 0 : 3;
}

static bool three_ready(void *p) { return ((volatile shared *)p)->ready == 3; }
static bool one_woken(void *p) { return ((volatile shared *)p)->woken >= 1; }
static bool two_woken(void *p) { return ((volatile shared *)p)->woken >= 2; }
static bool three_woken(void *p) { return ((volatile shared *)p)->woken == 3; }

static void condition_notify_counts(mproc_start_method m)
{
    mproc_condition *go, *back;
    mproc_shm *s;
    CHECK_OK(mproc_condition_new(&go, NULL));
    CHECK_OK(mproc_condition_new(&back, mproc_condition_lock(go))); /* one lock, two conditions */
    CHECK_OK(mproc_shm_new(&s, sizeof(shared)));
    shared *sh = mproc_shm_buf(s);
    mproc_process *p[3];
    for (int i = 0; i < 3; i++) {
        mproc_args *a = mproc_args_new();
        CHECK_OK(mproc_args_add_object(a, &mproc_condition_type, go));
        CHECK_OK(mproc_args_add_object(a, &mproc_condition_type, back));
        CHECK_OK(mproc_args_add_object(a, &mproc_shm_type, s));
        CHECK_OK(mproc_args_add_int(a, i));
        p[i] = mtest_start(m, t_wait_once, a);
        mproc_args_free(a);
    }
    CHECK_OK(mproc_condition_acquire(go, 10.0));
    CHECK_OK(mproc_condition_wait_for(back, three_ready, sh, 30.0));
    CHECK_OK(mproc_condition_notify(go, 1));
    CHECK_OK(mproc_condition_wait_for(back, one_woken, sh, 30.0));
    /* notify(1) released exactly one: nobody else gets out on their own. */
    CHECK_EQ(mproc_condition_wait_for(back, two_woken, sh, 0.2), MPROC_ETIMEDOUT);
    CHECK_EQ(sh->woken, 1);
    CHECK_OK(mproc_condition_notify_all(go));
    CHECK_OK(mproc_condition_wait_for(back, three_woken, sh, 30.0));
    CHECK_OK(mproc_condition_release(go));
    for (int i = 0; i < 3; i++) {
        mtest_join(p[i], 0);
        CHECK_EQ(sh->rc[i], 0);
    }
    mproc_shm_close(s);
    mproc_condition_free(back);
    mproc_condition_free(go);
}
FOR_METHODS(condition_notify_counts)

/* The child takes the condition's lock, notifies the waiting parent and dies
 * holding the lock: the parent's wait returns with the lock and EOWNERDEAD. */
static int t_notify_and_die(mproc_args *a)
{
    mproc_condition *c = mproc_args_object(a, 0, &mproc_condition_type);
    shared *sh = shared_of(a, 1);
    if (mproc_condition_acquire(c, 10.0) != 0)
        return 2;
    sh->flag = 1;
    sh->counter = -1; /* half-done update the survivor must repair */
    mproc_condition_notify(c, 1);
    raise(SIGKILL);
    return 3;
}

static void condition_owner_death(mproc_start_method m)
{
    mproc_condition *c;
    mproc_shm *s;
    CHECK_OK(mproc_condition_new(&c, NULL));
    CHECK_OK(mproc_shm_new(&s, sizeof(shared)));
    shared *sh = mproc_shm_buf(s);
    CHECK_OK(mproc_condition_acquire(c, 0));
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_condition_type, c));
    CHECK_OK(mproc_args_add_object(a, &mproc_shm_type, s));
    mproc_process *p = mtest_start(m, t_notify_and_die, a);
    mproc_args_free(a);
    CHECK_EQ(mproc_condition_wait_for(c, flag_set, &sh->flag, 30.0), MPROC_EOWNERDEAD);
    CHECK(mproc_lock_is_owned(mproc_condition_lock(c)));
    CHECK_EQ(sh->counter, -1);
    sh->counter = 0; /* repaired */
    CHECK_OK(mproc_condition_wait_for(c, flag_set, &sh->flag, 0));
    CHECK_OK(mproc_condition_release(c));
    CHECK_OK(mproc_process_join(p, 30.0));
    CHECK_EQ(mproc_process_exitcode(p), -SIGKILL);
    CHECK_OK(mproc_process_close(p));
    CHECK_OK(mproc_condition_acquire(c, 0)); /* usable */
    CHECK_OK(mproc_condition_release(c));
    mproc_shm_close(s);
    mproc_condition_free(c);
}
FOR_METHODS(condition_owner_death)


typedef struct {
    mproc_condition *c;
    volatile int ready;
    int rc;
} steal_ctx;

static void *early_waiter(void *p)
{
    steal_ctx *x = p;
    mproc_condition_acquire(x->c, 10.0);
    x->ready = 1;
    x->rc = mproc_condition_wait(x->c, 30.0);
    mproc_condition_release(x->c);
    return NULL;
}

/* notify(1) belongs to the waiter that was there; one arriving later cannot take it. */
MTEST(test_condition_late_waiter_cannot_steal_a_notify)
{
    steal_ctx x = {0};
    CHECK_OK(mproc_condition_new(&x.c, NULL));
    pthread_t t;
    CHECK(pthread_create(&t, NULL, early_waiter, &x) == 0);
    mproc_deadline d = mproc_deadline_after(30.0);
    for (;;) { /* ready is set under the lock, which the waiter gives up only inside wait() */
        CHECK_OK(mproc_condition_acquire(x.c, 10.0));
        if (x.ready)
            break;
        CHECK_OK(mproc_condition_release(x.c));
        CHECK(!mproc_deadline_expired(d));
        sched_yield();
    }
    CHECK_OK(mproc_condition_notify(x.c, 1));
    CHECK_EQ(mproc_condition_wait(x.c, 0), MPROC_ETIMEDOUT); /* arrived after the notify */
    CHECK_OK(mproc_condition_release(x.c));
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_EQ(x.rc, 0);
    mproc_condition_free(x.c);
}

/* ----------------------------------------------------------------- Event */

MTEST(test_event_basics)
{
    mproc_event *e;
    CHECK_OK(mproc_event_new(&e));
    CHECK(!mproc_event_is_set(e));
    CHECK_EQ(mproc_event_wait(e, 0), MPROC_ETIMEDOUT);
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_event_wait(e, 0.05), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 >= 0.045);
    mproc_event_set(e);
    CHECK(mproc_event_is_set(e));
    CHECK_OK(mproc_event_wait(e, 0));
    CHECK_OK(mproc_event_wait(e, MPROC_FOREVER));
    mproc_event_clear(e);
    CHECK(!mproc_event_is_set(e));
    mproc_event_free(e);
}


typedef struct {
    mproc_event *e;
    volatile pid_t tid;
} event_ctx;

static void *event_waiter(void *p)
{
    event_ctx *x = p;
    x->tid = (pid_t)syscall(SYS_gettid);
    return (void *)(intptr_t)mproc_event_wait(x->e, 30.0);
}

/* Until thread `tid` of this process is blocked in futex(2) (read from
 * /proc/self/task/TID/syscall, whose first field is the syscall number). */
static void wait_until_in_futex(volatile pid_t *tid)
{
    mproc_deadline d = mproc_deadline_after(30.0);
    for (;;) {
        CHECK(!mproc_deadline_expired(d));
        if (*tid) {
            char path[64];
            long nr = -1;
            snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)*tid);
            FILE *f = fopen(path, "r");
            CHECK(f != NULL);
            int got = fscanf(f, "%ld", &nr);
            fclose(f);
            if (got == 1 && nr == SYS_futex)
                return;
        }
        sched_yield();
    }
}

/* A set() undone at once by clear() still releases those already waiting. */
MTEST(test_event_set_then_clear_wakes_waiters)
{
    event_ctx x = {0};
    CHECK_OK(mproc_event_new(&x.e));
    pthread_t t;
    CHECK(pthread_create(&t, NULL, event_waiter, &x) == 0);
    wait_until_in_futex(&x.tid);
    mproc_event_set(x.e);
    mproc_event_clear(x.e);
    void *rc;
    CHECK(pthread_join(t, &rc) == 0);
    CHECK_EQ((intptr_t)rc, 0);
    CHECK(!mproc_event_is_set(x.e));
    mproc_event_free(x.e);
}

/* Wait for `go`, then set `done` number me. */
static int t_event_relay(mproc_args *a)
{
    mproc_event *go = mproc_args_object(a, 0, &mproc_event_type);
    mproc_event *done = mproc_args_object(a, 1, &mproc_event_type);
    if (mproc_event_wait(go, 30.0) != 0)
        return 2;
    mproc_event_set(done);
    return 0;
}

static void event_wakes_all(mproc_start_method m)
{
    mproc_event *go, *done[3];
    mproc_process *p[3];
    CHECK_OK(mproc_event_new(&go));
    for (int i = 0; i < 3; i++) {
        CHECK_OK(mproc_event_new(&done[i]));
        mproc_args *a = mproc_args_new();
        CHECK_OK(mproc_args_add_object(a, &mproc_event_type, go));
        CHECK_OK(mproc_args_add_object(a, &mproc_event_type, done[i]));
        p[i] = mtest_start(m, t_event_relay, a);
        mproc_args_free(a);
    }
    mproc_event_set(go);
    for (int i = 0; i < 3; i++) {
        CHECK_OK(mproc_event_wait(done[i], 30.0));
        mtest_join(p[i], 0);
        mproc_event_free(done[i]);
    }
    mproc_event_free(go);
}
FOR_METHODS(event_wakes_all)

/* --------------------------------------------------------------- Barrier */

static shared *action_state; /* set in each process that may run the action */

static int count_action(void)
{
    __atomic_fetch_add(&action_state->actions, 1, __ATOMIC_SEQ_CST);
    return 0;
}

#define ROUNDS 50
static int t_barrier_rounds(mproc_args *a)
{
    mproc_barrier *b = mproc_args_object(a, 0, &mproc_barrier_type);
    action_state = shared_of(a, 1);
    for (int r = 0; r < ROUNDS; r++) {
        unsigned idx = 99;
        if (mproc_barrier_wait(b, 30.0, &idx) != 0 || idx > 2)
            return 2;
        __atomic_fetch_or(&action_state->rc[r % 8], 1 << idx, __ATOMIC_SEQ_CST);
        if (mproc_barrier_wait(b, 30.0, NULL) != 0) /* everyone recorded round r */
            return 3;
        if (action_state->actions != 3 * r + 2)
            return 4;
        if (mproc_barrier_wait(b, 30.0, NULL) != 0)
            return 5;
    }
    return 0;
}

static void barrier_rounds(mproc_start_method m)
{
    mproc_barrier *b;
    mproc_shm *s;
    mproc_barrier_opts o = {.action = count_action};
    CHECK_OK(mproc_barrier_new(&b, 3, &o));
    CHECK_EQ(mproc_barrier_parties(b), 3);
    CHECK_OK(mproc_shm_new(&s, sizeof(shared)));
    action_state = mproc_shm_buf(s);
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_barrier_type, b));
    CHECK_OK(mproc_args_add_object(a, &mproc_shm_type, s));
    mproc_process *p1 = mtest_start(m, t_barrier_rounds, a), *p2 = mtest_start(m, t_barrier_rounds, a);
    mproc_args_free(a);
    for (int r = 0; r < ROUNDS; r++) {
        unsigned idx = 99;
        CHECK_OK(mproc_barrier_wait(b, 30.0, &idx));
        CHECK(idx <= 2);
        __atomic_fetch_or(&action_state->rc[r % 8], 1 << idx, __ATOMIC_SEQ_CST);
        CHECK_OK(mproc_barrier_wait(b, 30.0, NULL));
        CHECK_EQ(action_state->rc[r % 8], 7); /* indices 0, 1 and 2, each once */
        action_state->rc[r % 8] = 0;
        CHECK_EQ(action_state->actions, 3 * r + 2); /* the action ran once per trip */
        CHECK_OK(mproc_barrier_wait(b, 30.0, NULL));
    }
    mtest_join(p1, 0);
    mtest_join(p2, 0);
    CHECK_EQ(action_state->actions, 3 * ROUNDS);
    CHECK(!mproc_barrier_broken(b));
    mproc_shm_close(s);
    mproc_barrier_free(b);
}
FOR_METHODS(barrier_rounds)

MTEST(test_barrier_timeout_abort_reset)
{
    mproc_barrier *b;
    unsigned idx = 99;
    CHECK_OK(mproc_barrier_new(&b, 1, NULL));
    CHECK_OK(mproc_barrier_wait(b, 0, &idx)); /* one party: never waits */
    CHECK_EQ(idx, 0);
    mproc_barrier_free(b);

    CHECK_OK(mproc_barrier_new(&b, 2, NULL));
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_barrier_wait(b, 0.05, NULL), MPROC_ETIMEDOUT);
    CHECK(mproc_monotonic() - t0 >= 0.045);
    CHECK(mproc_barrier_broken(b));
    CHECK_EQ(mproc_barrier_wait(b, 1.0, NULL), MPROC_EBROKEN);
    mproc_barrier_reset(b);
    CHECK(!mproc_barrier_broken(b));
    mproc_barrier_abort(b);
    CHECK(mproc_barrier_broken(b));
    CHECK_EQ(mproc_barrier_wait(b, 1.0, NULL), MPROC_EBROKEN);
    mproc_barrier_reset(b);
    CHECK_EQ(mproc_barrier_n_waiting(b), 0);
    mproc_barrier_free(b);

    mproc_barrier_opts o = {.timeout = 0.05}; /* the default for wait(FOREVER) */
    CHECK_OK(mproc_barrier_new(&b, 2, &o));
    CHECK_EQ(mproc_barrier_wait(b, MPROC_FOREVER, NULL), MPROC_ETIMEDOUT);
    mproc_barrier_free(b);
    CHECK_EQ(mproc_barrier_new(&b, 0, NULL), MPROC_EINVAL);
}

/* Wait on the barrier once and report the result through the exit code. */
static int t_barrier_once(mproc_args *a)
{
    mproc_barrier *b = mproc_args_object(a, 0, &mproc_barrier_type);
    int rc = mproc_barrier_wait(b, 30.0, NULL);
    return rc == 0 ? 0 : rc == MPROC_EBROKEN ? 7 : 8;
}

static void wait_for_waiters(mproc_barrier *b, unsigned n)
{
    mproc_deadline d = mproc_deadline_after(30.0);
    while (mproc_barrier_n_waiting(b) < n) {
        CHECK(!mproc_deadline_expired(d));
        sched_yield();
    }
}

static mproc_process *barrier_child(mproc_start_method m, mproc_barrier *b, mproc_target_fn fn)
{
    mproc_args *a = mproc_args_new();
    CHECK_OK(mproc_args_add_object(a, &mproc_barrier_type, b));
    mproc_process *p = mtest_start(m, fn, a);
    mproc_args_free(a);
    return p;
}

static void barrier_abort_wakes_waiters(mproc_start_method m)
{
    mproc_barrier *b;
    CHECK_OK(mproc_barrier_new(&b, 3, NULL));
    mproc_process *p1 = barrier_child(m, b, t_barrier_once), *p2 = barrier_child(m, b, t_barrier_once);
    wait_for_waiters(b, 2);
    mproc_barrier_abort(b);
    for (int i = 0; i < 2; i++) {
        mproc_process *p = i ? p2 : p1;
        CHECK_OK(mproc_process_join(p, 30.0));
        CHECK_EQ(mproc_process_exitcode(p), 7);
        CHECK_OK(mproc_process_close(p));
    }
    mproc_barrier_reset(b);
    p1 = barrier_child(m, b, t_barrier_once);
    p2 = barrier_child(m, b, t_barrier_once);
    CHECK_OK(mproc_barrier_wait(b, 30.0, NULL)); /* works again after reset */
    mtest_join(p1, 0);
    mtest_join(p2, 0);
    mproc_barrier_free(b);
}
FOR_METHODS(barrier_abort_wakes_waiters)

/* A waiter is SIGKILLed: the barrier breaks instead of counting it as arrived
 * (last == true: we arrive last and trip; else we wait and an audit notices). */
static void barrier_waiter_death(mproc_start_method m, bool last)
{
    mproc_barrier *b;
    CHECK_OK(mproc_barrier_new(&b, last ? 2 : 3, NULL));
    mproc_process *p = barrier_child(m, b, t_barrier_once);
    wait_for_waiters(b, 1);
    kill_and_join(p);
    double t0 = mproc_monotonic();
    CHECK_EQ(mproc_barrier_wait(b, 30.0, NULL), MPROC_EBROKEN);
    CHECK(mproc_monotonic() - t0 < 5.0);
    CHECK(mproc_barrier_broken(b));
    mproc_barrier_reset(b);
    p = barrier_child(m, b, t_barrier_once);
    if (!last) {
        mproc_process *q = barrier_child(m, b, t_barrier_once);
        CHECK_OK(mproc_barrier_wait(b, 30.0, NULL));
        mtest_join(q, 0);
    } else {
        CHECK_OK(mproc_barrier_wait(b, 30.0, NULL));
    }
    mtest_join(p, 0);
    mproc_barrier_free(b);
}

static void barrier_dead_waiter_detected_at_trip(mproc_start_method m) { barrier_waiter_death(m, true); }
static void barrier_dead_waiter_detected_while_waiting(mproc_start_method m)
{
    barrier_waiter_death(m, false);
}
FOR_METHODS(barrier_dead_waiter_detected_at_trip)
FOR_METHODS(barrier_dead_waiter_detected_while_waiting)


/* FUTEX_WAIT_BITSET: the barrier's generation wait (its internal robust mutex
 * sleeps with plain FUTEX_WAIT), read from /proc/PID/syscall: "nr addr op ...". */
static bool in_generation_wait(pid_t pid)
{
    char path[64];
    long nr = -1, addr = 0, op = -1;
    snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    int got = fscanf(f, "%ld %lx %lx", &nr, &addr, &op);
    fclose(f);
    return got == 3 && nr == SYS_futex && (op & 127) == 9;
}

/* SIGSTOP `pid` while it sleeps on the generation word, never while it holds
 * the barrier's internal lock (a reset would then wait for it forever). */
static void stop_in_generation_wait(pid_t pid)
{
    mproc_deadline d = mproc_deadline_after(30.0);
    for (;;) {
        CHECK(!mproc_deadline_expired(d));
        if (in_generation_wait(pid)) {
            CHECK(kill(pid, SIGSTOP) == 0);
            siginfo_t si;
            CHECK(waitid(P_PID, (id_t)pid, &si, WSTOPPED | WNOWAIT) == 0);
            if (in_generation_wait(pid))
                return;
            CHECK(kill(pid, SIGCONT) == 0);
        }
        sched_yield();
    }
}

/* More waiters than slots: 2 parties have 2*2+16 = 20 slots. Stopped waiters
 * keep theirs across resets; waiters 21 and 22 find none and must still learn
 * that their generations were reset (broken), not passed. */
static void barrier_waiters_without_slots(mproc_start_method m)
{
    enum { N = 22 };
    mproc_barrier *b;
    CHECK_OK(mproc_barrier_new(&b, 2, NULL));
    mproc_process *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = barrier_child(m, b, t_barrier_once);
        wait_for_waiters(b, 1);
        stop_in_generation_wait(mproc_process_pid(p[i]));
        mproc_barrier_reset(b); /* its generation ends broken while it is stopped */
    }
    for (int i = 0; i < N; i++)
        CHECK(kill(mproc_process_pid(p[i]), SIGCONT) == 0);
    for (int i = 0; i < N; i++) {
        CHECK_OK(mproc_process_join(p[i], 30.0));
        CHECK_EQ(mproc_process_exitcode(p[i]), 7); /* MPROC_EBROKEN, every one */
        CHECK_OK(mproc_process_close(p[i]));
    }
    mproc_barrier_free(b);
}
MTEST(test_barrier_waiters_without_slots) { barrier_waiters_without_slots(MPROC_START_FORK); }

static int die_in_action(void)
{
    raise(SIGKILL);
    return 0;
}

/* Arrive only once someone else waits, so this process is the one to trip. */
static int t_barrier_arrive_last(mproc_args *a)
{
    mproc_barrier *b = mproc_args_object(a, 0, &mproc_barrier_type);
    mproc_deadline d = mproc_deadline_after(30.0);
    while (mproc_barrier_n_waiting(b) < mproc_barrier_parties(b) - 1)
        if (mproc_deadline_expired(d))
            return 9;
        else
            sched_yield();
    return t_barrier_once(a);
}

static void barrier_death_inside_the_action(mproc_start_method m)
{
    mproc_barrier *b;
    mproc_barrier_opts o = {.action = die_in_action};
    CHECK_OK(mproc_barrier_new(&b, 2, &o));
    mproc_process *p = barrier_child(m, b, t_barrier_arrive_last);
    /* The child trips, runs the action and dies in it, holding the barrier's
     * internal lock: we notice and get MPROC_EBROKEN. */
    CHECK_EQ(mproc_barrier_wait(b, 30.0, NULL), MPROC_EBROKEN);
    CHECK_OK(mproc_process_join(p, 30.0));
    CHECK_EQ(mproc_process_exitcode(p), -SIGKILL);
    CHECK_OK(mproc_process_close(p));
    CHECK(mproc_barrier_broken(b));
    mproc_barrier_reset(b);
    CHECK(!mproc_barrier_broken(b));
    mproc_barrier_free(b);
}
FOR_METHODS(barrier_death_inside_the_action)

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    static const mtest_case cases[] = {
        MTEST_ENTRY(test_lock_basics),
        MTEST_ENTRY(test_rlock_counts_levels),
        METHOD_ENTRIES(lock_mutual_exclusion),
        METHOD_ENTRIES(rlock_mutual_exclusion),
        METHOD_ENTRIES(lock_owner_death),
        METHOD_ENTRIES(rlock_owner_death),
        METHOD_ENTRIES(lock_owner_death_wakes_waiter),
        METHOD_ENTRIES(lock_held_at_child_exit),
        MTEST_ENTRY(test_freeing_a_held_lock_is_survivable),
        MTEST_ENTRY(test_semaphore_basics),
        METHOD_ENTRIES(semaphore_across),
        MTEST_ENTRY(test_condition_requires_the_lock),
        MTEST_ENTRY(test_condition_wait_releases_every_rlock_level),
        MTEST_ENTRY(test_condition_late_waiter_cannot_steal_a_notify),
        METHOD_ENTRIES(condition_notify_counts),
        METHOD_ENTRIES(condition_owner_death),
        MTEST_ENTRY(test_event_basics),
        MTEST_ENTRY(test_event_set_then_clear_wakes_waiters),
        METHOD_ENTRIES(event_wakes_all),
        METHOD_ENTRIES(barrier_rounds),
        MTEST_ENTRY(test_barrier_timeout_abort_reset),
        METHOD_ENTRIES(barrier_abort_wakes_waiters),
        METHOD_ENTRIES(barrier_dead_waiter_detected_at_trip),
        METHOD_ENTRIES(barrier_dead_waiter_detected_while_waiting),
        METHOD_ENTRIES(barrier_death_inside_the_action),
        MTEST_ENTRY(test_barrier_waiters_without_slots),
    };
    mtest_warmup = mtest_warmup_tracker_and_forkserver;
    return mtest_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
