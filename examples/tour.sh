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
printf '\nTour done. More: docs/ and README.md.\n'
