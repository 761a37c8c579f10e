#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/*.cpp; clang, AddressSanitizer + UndefinedBehaviorSanitizer, CPU only)
# and runs each for a bounded time from its committed seed corpus tests/fuzz/corpus/<target>/. Fails on any
# crash, sanitizer report, leak, uncaught exception, input slower than 10 s, or single allocation over 1 GiB; the
# input that failed is kept in <build>/fuzz-artifacts/ and shown.
#   scripts/fuzz.sh [seconds per target, default 10] [target ...]   (no targets: all of them)
# Environment: TALLY_FUZZ_BUILD (default build-asan: the same build as `make test-sanitize`, so CI compiles it once),
# JOBS (parallel compile jobs). New inputs found go to a scratch copy of the corpus, never into the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
shift || true
build=${TALLY_FUZZ_BUILD:-build-asan}
jobs=${JOBS:-$(nproc)}

scripts/configure-asan.sh "$build" fuzz

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for src in tests/fuzz/*.cpp; do targets+=("$(basename "$src" .cpp)"); done
fi
cmake --build "$build" -j "$jobs" --target "${targets[@]}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts"
export OMP_NUM_THREADS=1
# Leaks are findings too; abort_on_error gives libFuzzer the crash it reports.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
for t in "${targets[@]}"; do
  seeds="tests/fuzz/corpus/$t"
  [ -d "$seeds" ] || { echo "fuzz: $t has no seed corpus ($seeds)" >&2; failed+=("$t"); continue; }
  mkdir -p "$scratch/$t"
  rm -f "$artifacts/$t-"*
  log="$scratch/$t.log"
  start=$(date +%s)
  if "$build/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=3072 -malloc_limit_mb=1024 \
       -artifact_prefix="$artifacts/$t-" -print_final_stats=1 "$scratch/$t" "$seeds" >"$log" 2>&1; then
    runs=$(grep -o "stat::number_of_executed_units: *[0-9]*" "$log" | grep -o "[0-9]*$" || echo "?")
    cov=$(grep -o "cov: [0-9]*" "$log" | tail -1 || true)
    printf "fuzz: %-28s ok   %8s runs in %3ss  %s\n" "$t" "$runs" "$(( $(date +%s) - start ))" "$cov"
  else
    echo "fuzz: $t FAILED; the end of its log:"
    tail -40 "$log"
    for a in "$artifacts/$t-"*; do
      [ -f "$a" ] || continue
      echo "--- failing input $a ($(stat -c %s "$a") bytes), first 256 bytes:"
      head -c 256 "$a" | od -A d -c | head -20
    done
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s each without a finding"
