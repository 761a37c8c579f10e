#!/usr/bin/env bash
# The HTML report in a real browser: headless Chromium opens the page of a short run (a tiny model, a few steps,
# --log-optim) and of a `tally compare` of three optimizers. The page's script must log nothing to the console (no
# error, no warning), every panel must be there, and the numbers the page shows must equal those in each run's
# log.jsonl and `tally memory --json` (tests/cli/report_check.py reads them from the DOM Chromium leaves after the
# script ran). A screenshot is left in the build directory (report-screenshot.png) for people to look at.
# Without a Chromium that runs (scripts/install-deps.sh chromium installs one), the test is skipped (exit 77).
# TALLY_CHROMIUM=PATH names the browser (Chromium or Chrome) when it is not chromium on PATH.
set -uo pipefail
tally="$1"
src="$2"
build=$(cd "$(dirname "$tally")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
skip() { echo "cli report_browser: SKIPPED: $*"; exit 77; }

browser=${TALLY_CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[ -n "$browser" ] || skip "no chromium on PATH (scripts/install-deps.sh chromium installs it)"
[ -x "$browser" ] || skip "TALLY_CHROMIUM=$browser is not an executable"
command -v python3 >/dev/null || skip "no python3 to read the page's DOM"
flags=(--headless --disable-gpu --no-first-run --hide-scrollbars --user-data-dir="$work/profile")
[ "$(id -u)" -eq 0 ] && flags+=(--no-sandbox)  # Chromium refuses to run as root with its sandbox
# open PAGE DOM_OUT: the DOM after the page's script ran; the console's messages in DOM_OUT.log.
open_page() {
  timeout 120 "$browser" "${flags[@]}" --enable-logging=stderr --v=0 --dump-dom "file://$1" >"$2" 2>"$2.log"
}
echo '<html><body><p id="x">probe</p></body></html>' >"$work/probe.html"
open_page "$work/probe.html" "$work/probe.dom" || skip "chromium does not run here: $(grep -v dbus "$work/probe.dom.log" | tail -2)"
grep -q 'id="x"' "$work/probe.dom" || skip "chromium printed no DOM: $(tail -2 "$work/probe.dom.log")"

common=(--model tiny --batch 2 --seq 16 --threads 1 --val-batches 1 --warmup 1)
optimizers=$("$tally" train --help | sed -n 's/^ *--optimizer VALUE *\([a-z0-9_| -]*\) (default.*/\1/p' | tr -d ' ' | tr '|' ',')
[ -n "$optimizers" ] || fail "could not read the registered optimizers from tally train --help"
"$tally" memory --model tiny --batch 2 --seq 16 --optimizer "$optimizers" --json >"$work/memory.json" ||
  fail "tally memory --json"

# read_page PAGE NAME=RUN_DIR...: opens the page, checks the console and the numbers.
read_page() {
  local page="$1"; shift
  open_page "$page" "$work/dom.html" || fail "chromium failed on $page: $(tail -3 "$work/dom.html.log")"
  if grep -q "CONSOLE" "$work/dom.html.log"; then
    fail "the page wrote to the console: $(grep CONSOLE "$work/dom.html.log" | head -5)"
  fi
  python3 "$src/tests/cli/report_check.py" "$work/dom.html" "$work/memory.json" "$optimizers" "$@" ||
    fail "the page of $page differs from its runs (above)"
}

# One run, internals every other step.
"$tally" train "${common[@]}" --steps 8 --eval-every 4 --log-optim 2 --out "$work/run" >"$work/o" 2>&1 ||
  fail "train: $(tail -3 "$work/o")"
read_page "$work/run/report.html" "run=$work/run"
rm -f "$build/report-screenshot.png"
timeout 120 "$browser" "${flags[@]}" --window-size=1280,2600 --screenshot="$build/report-screenshot.png" \
  "file://$work/run/report.html" >"$work/shot.log" 2>&1 || fail "screenshot: $(tail -3 "$work/shot.log")"
[ "$(head -c 8 "$build/report-screenshot.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] ||
  fail "the screenshot is not a PNG"
[ "$(wc -c <"$build/report-screenshot.png")" -gt 20000 ] || fail "the screenshot is nearly empty"

# Three optimizers overlaid: tally compare's page.
"$tally" compare "${common[@]}" --steps 3 --eval-every 3 --log-optim 1 --out "$work/cmp" >"$work/o" 2>&1 ||
  fail "compare: $(tail -3 "$work/o")"
read_page "$work/cmp/report.html" "came=$work/cmp/runs/came" "adamw=$work/cmp/runs/adamw" \
  "adafactor=$work/cmp/runs/adafactor"
# Two ranks (mpirun; where tally was built with MPI): the run's page adds its communication per step, bytes and
# collectives, as logged.
if command -v mpirun >/dev/null; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  # Under AddressSanitizer: OpenMPI keeps some memory for the life of the process, which only the slow unwinder
  # traces to OpenMPI's frames (scripts/lsan-suppressions.txt), as tests/cli/distributed.sh explains.
  if [ -n "${ASAN_OPTIONS:-}" ]; then export ASAN_OPTIONS="$ASAN_OPTIONS:fast_unwind_on_malloc=0"; fi
  if timeout 300 mpirun --oversubscribe -np 2 "$tally" train "${common[@]}" --steps 3 --eval-every 3 --log-optim 1 \
    --zero 1 --out "$work/dp" >"$work/o" 2>&1; then
    grep -q '"collectives_measured"' "$work/dp/log.jsonl" || fail "the 2-rank run logged no communication record"
    read_page "$work/dp/report.html" "dp=$work/dp"
  elif ! grep -q "built without MPI" "$work/o"; then
    fail "2 ranks: $(tail -3 "$work/o")"
  fi
fi
echo "cli report_browser: ok (screenshot: $build/report-screenshot.png)"
