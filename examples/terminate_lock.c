/* terminate_lock.c — seed 000's warning, handled: "terminate() ... is liable to
 * cause any shared resources (such as locks ...) currently being used by the
 * process to become broken or unavailable to other processes."
 *
 * A worker moves money between two accounts in shared memory under a Lock and
 * is terminated in the middle of a transfer, holding the lock. With Python's
 * multiprocessing the lock would stay taken forever; with mproc the next
 * acquirer gets the lock together with MPROC_EOWNERDEAD, repairs the
 * half-done transfer and carries on. A Barrier shows the same: a party that
 * dies while waiting breaks the barrier instead of hanging the others. */
#include <poll.h>
#include <stdio.h>
#include <unistd.h>

#include <mproc.h>

typedef struct bank {
    long a, b;       /* a + b must stay 1000 */
    long pending;    /* amount in flight (the journal used for repair) */
} bank;

static int transfer_forever(mproc_args *args)
{
    mproc_lock *lock = mproc_args_object(args, 0, &mproc_lock_type);
    bank *k = mproc_shm_buf(mproc_args_object(args, 1, &mproc_shm_type));
    mproc_event *inside = mproc_args_object(args, 2, &mproc_event_type);
    mproc_lock_acquire(lock, MPROC_FOREVER);
    k->pending = 100;
    k->a -= 100; /* ... and terminated before the matching k->b += 100 */
    mproc_event_set(inside);
    pause(); /* until terminated */
    return 0;
}

static int wait_at(mproc_args *args)
{
    mproc_barrier *b = mproc_args_object(args, 0, &mproc_barrier_type);
    mproc_barrier_wait(b, MPROC_FOREVER, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    mproc_init(&argc, &argv);
    mproc_lock *lock;
    mproc_shm *seg;
    mproc_event *inside;
    if (mproc_lock_new(&lock) || mproc_shm_new(&seg, sizeof(bank)) || mproc_event_new(&inside)) {
        fprintf(stderr, "setup failed: %s\n", mproc_errmsg());
        return 1;
    }
    bank *k = mproc_shm_buf(seg);
    k->a = 1000;

    mproc_args *args = mproc_args_new();
    mproc_args_add_object(args, &mproc_lock_type, lock);
    mproc_args_add_object(args, &mproc_shm_type, seg);
    mproc_args_add_object(args, &mproc_event_type, inside);
    mproc_process *p;
    mproc_process_new(&p, transfer_forever, args, NULL);
    mproc_args_free(args);
    mproc_process_start(p);
    mproc_event_wait(inside, 10.0);
    printf("worker is mid-transfer, holding the lock: a=%ld b=%ld (sum %ld)\n", k->a, k->b,
           k->a + k->b);
    mproc_process_terminate(p);
    mproc_process_join(p, 10.0);
    printf("worker terminated, exit code %d\n", mproc_process_exitcode(p));
    mproc_process_close(p);

    int rc = mproc_lock_acquire(lock, 5.0);
    if (rc == MPROC_EOWNERDEAD) {
        printf("acquire -> %s: the owner died holding it; repairing\n", mproc_errname(rc));
        k->a += k->pending; /* roll the half-done transfer back */
        k->pending = 0;
    } else if (rc) {
        printf("acquire -> %s\n", mproc_errname(rc));
        return 1;
    }
    printf("after repair: a=%ld b=%ld (sum %ld)\n", k->a, k->b, k->a + k->b);
    mproc_lock_release(lock);
    rc = mproc_lock_acquire(lock, 0);
    printf("the lock works again: acquire -> %s\n", mproc_errname(rc));
    mproc_lock_release(lock);

    /* A Barrier for 3: one party is killed while waiting; we are not left hanging. */
    mproc_barrier *bar;
    mproc_barrier_new(&bar, 3, NULL);
    args = mproc_args_new();
    mproc_args_add_object(args, &mproc_barrier_type, bar);
    mproc_process_new(&p, wait_at, args, NULL);
    mproc_args_free(args);
    mproc_process_start(p);
    while (mproc_barrier_n_waiting(bar) < 1)
        mproc_wait_fd(mproc_process_sentinel(p), POLLIN, 0.001); /* or until it exits */
    mproc_process_kill(p);
    mproc_process_join(p, 10.0);
    mproc_process_close(p);
    rc = mproc_barrier_wait(bar, 10.0, NULL);
    printf("barrier wait after a waiting party was killed -> %s (broken: %s)\n", mproc_errname(rc),
           mproc_barrier_broken(bar) ? "yes" : "no");

    mproc_barrier_free(bar);
    mproc_event_free(inside);
    mproc_shm_close(seg);
    mproc_lock_free(lock);
    return 0;
}
