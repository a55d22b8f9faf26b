/* mproc.h — the umbrella header: C counterpart of Python's multiprocessing.
 * Include this, or only the layer headers under mproc/ that you need. */
#ifndef MPROC_H
#define MPROC_H

#include "mproc/core.h"
#include "mproc/process.h"
#include "mproc/shm.h"
#include "mproc/sync.h"
#include "mproc/value.h"
#include "mproc/connection.h"
#include "mproc/queue.h"
#include "mproc/pool.h"
#include "mproc/futures.h"
#include "mproc/manager.h"
#include "mproc/rpc.h"

#endif
