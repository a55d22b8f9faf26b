#!/usr/bin/env bash
# Install the Debian packages given as arguments if any is missing: with
# apt-get when root, otherwise print the exact command to run.
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "deps: missing Debian packages: ${missing[*]}"
  echo "deps: run: sudo apt-get install -y ${missing[*]}"
  exit 1
fi
