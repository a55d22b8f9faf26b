#!/usr/bin/env bash
# The guided tour run by `make demo`: each example with a line on what it shows.
set -euo pipefail
build=${1:-build}
run() {
  local name=$1; shift
  printf '\n== %s: %s\n' "$name" "$*"
  "$build/examples/$name"
}
run start_methods "seed 001: a child says hello under fork, spawn and forkserver (set_start_method and get_context)"
run value_array "seed 001: a spawned child sets a shared Value('d') to 3.1415927 and negates an Array('i', range(10))"
run lost_update "seed 000: ten processes add to a shared Value; the lost update, and the lock (or one atomic add) that fixes it"
run terminate_lock "seed 000's terminate() warning, handled: a worker dies holding a Lock; the next acquirer gets MPROC_EOWNERDEAD and repairs; a Barrier breaks instead of hanging"
run pipe "seed 001: Pipe(); a child sends [42, None, 'hello'] (pickled, as Python would) and the parent prints it"
run echo_server "seed 001: an echo server (a child) behind Listener with an authkey, over TCP and AF_UNIX; a wrong key is refused on both sides"
run queue_hello "seed 001: Queue(); a spawned child puts 'hello', a forked one puts [42, None, 'hello'] (MessagePack); get with a timeout on the empty queue"
run joinable_queue "a JoinableQueue of 20 numbers, 3 consumers square them into a results Queue; join(), then shutdown() ends the consumers without sentinels"
run pool_seed "seed 001: Pool(8) runs mul/plus tasks through apply_async, imap, imap_unordered and map; then concurrent.futures submit + as_completed"
run pool_progress "a progress bar from on_progress while map_array tests 200,000 numbers for primality; a task SIGKILLs its own worker: only that item fails (MPROC_EWORKER)"
run manager_namespace "seed 000: a Manager Namespace; ns.x.append(1) in a child changes a copy and is lost; assigning back, or a managed list inside the Namespace, keeps it"
run manager_dict_list "seed 001: Manager dict and list filled by a child (d[1] = '1', d['2'] = 2, d[0.25] = None, l.reverse()); then 4 workers at once, d['done'] += 1 without a lost update"
run rpc_seed "seed 001: RPCHandler with add and sub on the Python wire (authkey b'peekaboo'), called from a C proxy and from the seed's own Python RPCProxy; then a timeout, a wrong authkey the server survives, and a graceful stop"
# On MPI ranks when Open MPI's mpirun is there (make deps installs it).
if command -v mpirun >/dev/null && [ -x "$build/examples/mpi_map" ]; then
  printf '\n== %s: %s\n' mpi_map "seed 001's mul/plus tasks on 3 MPI ranks: mpirun -n 3, rank 0 runs main, 2 ranks run the tasks (submit, map, as_completed)"
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    timeout 120 mpirun --oversubscribe --enable-recovery -n 3 "$build/examples/mpi_map"
fi
printf '\nTour done. More: docs/ and README.md.\n'
