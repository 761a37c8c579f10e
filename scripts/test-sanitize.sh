#!/usr/bin/env bash
# The CPU test suite (doctest unit tests and the tests/cli scripts, through ctest) under AddressSanitizer and
# UndefinedBehaviorSanitizer, built with clang in its own build directory. Any finding fails the run: the build
# makes every UBSan check fatal (-fno-sanitize-recover=all) and ASan aborts on its first report, leaks included.
#   scripts/test-sanitize.sh [ctest arguments ...]
# Environment: TALLY_SANITIZE_BUILD (default build-asan; it is the same build as scripts/fuzz.sh's, configured
# with TALLY_FUZZ=ON, so CI compiles the instrumented library once for both), JOBS (parallel compile jobs).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${TALLY_SANITIZE_BUILD:-build-asan}
jobs=${JOBS:-$(nproc)}

if ! command -v clang++ >/dev/null; then
  echo "test-sanitize: clang++ not found (scripts/install-deps.sh clang installs it)" >&2
  exit 1
fi
# The same configuration as scripts/fuzz.sh (TALLY_FUZZ implies TALLY_SANITIZE=address,undefined). No -Werror:
# the GCC build of `make test` keeps warnings at bay; a clang-only warning must not stop the sanitizers running.
CC=clang CXX=clang++ cmake -S . -B "$build" -DTALLY_CUDA=OFF -DTALLY_FUZZ=ON -DTALLY_WERROR=OFF \
  -DCMAKE_BUILD_TYPE=Release >"$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
grep -E "^-- tally:" "$build.configure.log" || true
cmake --build "$build" -j "$jobs" --target tally tally_tests

# allocator_may_return_null=1: an allocation ASan cannot satisfy returns null as malloc would, so the code's own
# out-of-memory handling (std::bad_alloc, tally::Error) is what gets tested, not ASan's abort.
# detect_leaks=1: a leak is a finding. The tests/cli scripts check exit codes, so a report there fails them too.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# Nothing is skipped: every test case and cli script runs under the sanitizers (none needs what ASan forbids).
cd "$build"
ctest --output-on-failure "$@"
