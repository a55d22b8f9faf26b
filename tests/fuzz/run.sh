#!/usr/bin/env bash
# Build every libFuzzer target tests/fuzz/fuzz_*.c with clang (the library's
# sources compiled in, with ASan+UBSan) and run each for a bounded time.
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET] [BUILD_DIR]
#
# Seeds come from tests/fuzz/corpus/<target>/ when present; what the fuzzer
# finds goes to a scratch copy, never into the source tree. A crash, leak or
# sanitizer report fails the run and leaves the reproducer in BUILD_DIR.
set -euo pipefail
secs=${1:-10}
out=${2:-build-fuzz}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
shopt -s nullglob
targets=("$here"/fuzz_*.c)
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz: no targets"
  exit 0
fi
if ! command -v clang >/dev/null; then
  echo "fuzz: clang is missing (make deps installs it)" >&2
  exit 1
fi
srcs=()
for f in "$root"/src/*/*.c; do # src/mpi/ is libmproc_mpi (needs MPI), not the library
  case $f in "$root"/src/mpi/*) ;; *) srcs+=("$f") ;; esac
done
cflags=(-g -O1 -std=gnu11 -D_GNU_SOURCE -DMPROC_FUZZING -I"$root/include" -I"$root/src"
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
libs=(-lmsgpackc -lcrypto -lpthread -ldl)
for t in "${targets[@]}"; do
  name=$(basename "$t" .c)
  echo "fuzz: building $name"
  clang "${cflags[@]}" "${srcs[@]}" "$t" "${libs[@]}" -o "$out/$name"
done
for t in "${targets[@]}"; do
  name=$(basename "$t" .c)
  corpus="$out/corpus-$name"
  rm -rf "$corpus"
  mkdir -p "$corpus"
  if [ -d "$here/corpus/$name" ]; then
    cp "$here/corpus/$name"/* "$corpus"/ 2>/dev/null || true
  fi
  echo "fuzz: running $name for ${secs}s"
  (cd "$out" && ASAN_OPTIONS=detect_leaks=1 "./$name" -max_total_time="$secs" -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=0 "$corpus" 2>"$out/$name.log") || {
    echo "fuzz: $name FAILED; see $out/$name.log and the crash-* file in $out" >&2
    tail -30 "$out/$name.log" >&2
    exit 1
  }
  grep -E "^#[0-9]+.*DONE|Done [0-9]+ runs" "$out/$name.log" | tail -1 || true
done
echo "fuzz: all targets clean"
