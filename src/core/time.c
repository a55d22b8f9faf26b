/* time.c — deadlines on CLOCK_MONOTONIC.
 * Every blocking call converts its double-seconds timeout into one deadline once. */
#include <math.h>
#include <time.h>

#include "internal.h"

#define NEVER INT64_MAX

int64_t mproc__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

double mproc_monotonic(void)
{
    return (double)mproc__now_ns() / 1e9;
}

mproc_deadline mproc_deadline_after(double timeout)
{
    mproc_deadline d;
    if (isnan(timeout))
        timeout = 0;
    if (timeout < 0 || timeout > 1e9) /* beyond ~30 years is "never" */
        d.ns = NEVER;
    else if (timeout == 0)
        d.ns = 0; /* "try once": already passed, and no clock read on the hot path */
    else
        d.ns = mproc__now_ns() + (int64_t)(timeout * 1e9);
    return d;
}

bool mproc_deadline_expired(mproc_deadline d)
{
    return d.ns != NEVER && (d.ns == 0 || mproc__now_ns() >= d.ns);
}

double mproc_deadline_remaining(mproc_deadline d)
{
    if (d.ns == NEVER)
        return MPROC_FOREVER;
    int64_t left = d.ns - mproc__now_ns();
    return left > 0 ? (double)left / 1e9 : 0.0;
}

int mproc_deadline_poll_ms(mproc_deadline d)
{
    if (d.ns == NEVER)
        return -1;
    int64_t left = d.ns - mproc__now_ns();
    if (left <= 0)
        return 0;
    int64_t ms = (left + 999999) / 1000000;
    return ms > INT32_MAX ? INT32_MAX : (int)ms;
}
