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

scripts/configure-asan.sh "$build" test-sanitize
cmake --build "$build" -j "$jobs" --target tally tally_tests

# allocator_may_return_null=1: an allocation ASan cannot satisfy returns null as malloc would, so the code's own
# out-of-memory handling (std::bad_alloc, tally::Error) is what gets tested, not ASan's abort.
# detect_leaks=1: a leak is a finding. The tests/cli scripts check exit codes, so a report there fails them too.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# OpenMPI keeps memory for the life of a process that ran MPI (the data-parallel tests): not reported (tests/cli/
# distributed.sh also turns on the slow unwinder that matching these suppressions needs).
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/scripts/lsan-suppressions.txt}
# Nothing is skipped: every test case and cli script runs under the sanitizers (none needs what ASan forbids).
cd "$build"
ctest --output-on-failure "$@"
