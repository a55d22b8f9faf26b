#!/bin/sh
# Run every mproc benchmark, one after the other (never two at once: their
# timings would disturb each other), passing extra arguments through.
#
#   bench/run.sh BUILD_BENCH_DIR [benchmark args...]
#
# BUILD_BENCH_DIR is the directory holding the benchmark binaries (the bench/
# subdirectory of a CMake build tree, or the build tree itself). The list of
# programs comes from $MPROC_BENCH_PROGRAMS (set by the `bench` target), or
# every bench_* executable found there. Exits non-zero if any benchmark fails.
set -u

if [ $# -lt 1 ]; then
    echo "usage: $0 BUILD_BENCH_DIR [benchmark args...]" >&2
    exit 2
fi
dir=$1
shift
# Given the top of a build tree, use its bench/ subdirectory.
if [ -d "$dir/bench" ] && ! ls "$dir"/bench_* >/dev/null 2>&1; then
    dir=$dir/bench
fi
if [ ! -d "$dir" ]; then
    echo "run.sh: $dir is not a directory" >&2
    exit 2
fi

programs=${MPROC_BENCH_PROGRAMS:-}
if [ -z "$programs" ]; then
    for f in "$dir"/bench_*; do
        [ -f "$f" ] && [ -x "$f" ] && programs="$programs ${f##*/}"
    done
fi
if [ -z "$programs" ]; then
    echo "run.sh: no benchmark programs in $dir" >&2
    exit 2
fi

failed=""
for prog in $programs; do
    exe=$dir/$prog
    echo "=== $prog $*"
    if [ ! -x "$exe" ]; then
        echo "run.sh: $exe is missing or not executable" >&2
        failed="$failed $prog"
        continue
    fi
    "$exe" "$@"
    rc=$?
    if [ $rc -ne 0 ]; then
        echo "run.sh: $prog failed (exit status $rc)" >&2
        failed="$failed $prog"
    fi
done

if [ -n "$failed" ]; then
    echo "run.sh: failed:$failed" >&2
    exit 1
fi
exit 0
