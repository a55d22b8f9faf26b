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
echo "install: find_package (shared, static) and pkg-config consumers OK"
