#!/usr/bin/env bash
# End to end with the executable, without a browser (tests/cli/report_browser.sh opens the page): `tally train`
# writes report.html in its run directory and `tally report` writes the same page from that directory; bad usage
# exits 2, and a missing run directory or log, or a corrupt line of log.jsonl, exits 1 naming the file (and line).
set -uo pipefail
tally="$1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
common=(--model tiny --batch 2 --seq 16 --threads 1 --val-batches 1 --eval-every 2 --warmup 1 --steps 4 --log-optim 1)

"$tally" train "${common[@]}" --out "$work/run" >"$work/o" 2>&1 || fail "train: $(tail -3 "$work/o")"
[ -s "$work/run/report.html" ] || fail "tally train wrote no report.html"
grep -q "^report: $work/run/report.html" "$work/o" || fail "tally train does not say where the report is"
"$tally" report "$work/run" --out "$work/again.html" >"$work/o" 2>&1 || fail "report: $(cat "$work/o")"
cmp -s "$work/run/report.html" "$work/again.html" || fail "tally report wrote another page than tally train"
# The default place: in the run directory for one run.
rm "$work/run/report.html"
"$tally" report "$work/run" >"$work/o" 2>&1 || fail "report: $(cat "$work/o")"
cmp -s "$work/run/report.html" "$work/again.html" || fail "tally report RUN does not write RUN/report.html"
# Self-contained: nothing is fetched from anywhere.
grep -qiE "(src|href)=\"?(https?:)?//" "$work/again.html" && fail "the page loads something from the network"

# Bad usage and bad input.
"$tally" report >"$work/o" 2>&1; [ $? -eq 2 ] || fail "no run directory: exit 2 expected"
grep -q "no run directory given" "$work/o" || fail "no run directory: $(cat "$work/o")"
"$tally" report "$work/nowhere" >"$work/o" 2>&1; [ $? -eq 1 ] || fail "a missing run directory: exit 1 expected"
grep -q "run directory '$work/nowhere' does not exist" "$work/o" || fail "missing directory: $(cat "$work/o")"
mkdir "$work/empty"
"$tally" report "$work/empty" >"$work/o" 2>&1; [ $? -eq 1 ] || fail "no log.jsonl: exit 1 expected"
grep -q "no log.jsonl in '$work/empty'" "$work/o" || fail "no log.jsonl: $(cat "$work/o")"
cp -r "$work/run" "$work/bad"
sed -i '3s/.*/{"step": 2, "loss": [}/' "$work/bad/log.jsonl"
"$tally" report "$work/bad" >"$work/o" 2>&1; [ $? -eq 1 ] || fail "a corrupt line: exit 1 expected: $(cat "$work/o")"
grep -q "$work/bad/log.jsonl:3: not a JSON object" "$work/o" || fail "a corrupt line: $(cat "$work/o")"
echo "cli report: ok"
