#!/usr/bin/env bash
# Install mproc into a scratch prefix and build outside consumers against it:
# a CMake project (find_package, shared and static) and a pkg-config compile.
set -euo pipefail
build=$1
src=$2
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix/usr" >/dev/null
cmake -S "$src/tests/install/consumer" -B "$prefix/cbuild" -DCMAKE_PREFIX_PATH="$prefix/usr" >/dev/null
cmake --build "$prefix/cbuild" >/dev/null
LD_LIBRARY_PATH="$prefix/usr/lib:$prefix/usr/lib/x86_64-linux-gnu" "$prefix/cbuild/consumer_shared"
"$prefix/cbuild/consumer_static"
pcdir=$(dirname "$(find "$prefix/usr" -name mproc.pc | head -n1)")
export PKG_CONFIG_PATH=$pcdir
# shellcheck disable=SC2046
cc -o "$prefix/consumer_pc" "$src/tests/install/consumer/main.c" $(pkg-config --cflags --libs mproc)
LD_LIBRARY_PATH=$(pkg-config --variable=libdir mproc) "$prefix/consumer_pc"
# The core library never links MPI; libmproc_mpi, when built, has its own
# CMake target and pkg-config file (a singleton run: no mpirun needed).
libs=$(find "$prefix/usr" -name 'libmproc.so.*' | head -n1)
if readelf -d "$libs" | grep -q 'libmpi'; then
  echo "install: libmproc.so depends on libmpi" >&2
  exit 1
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ -f "$pcdir/mproc-mpi.pc" ]; then
  [ -x "$prefix/cbuild/consumer_mpi" ] || { echo "install: no mproc::mproc_mpi target" >&2; exit 1; }
  LD_LIBRARY_PATH=$(pkg-config --variable=libdir mproc) timeout 60 "$prefix/cbuild/consumer_mpi"
  # shellcheck disable=SC2046
  cc -o "$prefix/consumer_mpi_pc" "$src/tests/install/consumer/mpi.c" $(pkg-config --cflags --libs mproc-mpi)
  LD_LIBRARY_PATH=$(pkg-config --variable=libdir mproc) timeout 60 "$prefix/consumer_mpi_pc"
fi
echo "install: find_package (shared, static) and pkg-config consumers OK"
