#!/usr/bin/env bash
# Configures the clang build that `make test-sanitize` and `make fuzz` share (so CI compiles it once): CPU only,
# TALLY_FUZZ=ON (which implies TALLY_SANITIZE=address,undefined). No -Werror: the GCC build of `make test` keeps
# warnings at bay; a clang-only warning must not stop the sanitizers running.
#   scripts/configure-asan.sh BUILD_DIR CALLER   (CALLER names the script in the error when clang++ is missing)
set -euo pipefail
cd "$(dirname "$0")/.."
build=$1
caller=$2
if ! command -v clang++ >/dev/null; then
  echo "$caller: clang++ not found (scripts/install-deps.sh clang installs it)" >&2
  exit 1
fi
CC=clang CXX=clang++ cmake -S . -B "$build" -DTALLY_CUDA=OFF -DTALLY_FUZZ=ON -DTALLY_WERROR=OFF \
  -DCMAKE_BUILD_TYPE=Release >"$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
grep -E "^-- tally:" "$build.configure.log" || true
