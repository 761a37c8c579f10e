#!/usr/bin/env bash
# End to end: `tally demo` trains its MLP (the loss must fall; when it does not, it says so), and bad usage exits 2 with a clear message.
# Output is matched with here-strings, not `echo | grep -q`: grep -q stops reading at the first match, and under
# pipefail the echo's SIGPIPE would fail the test at random.
set -euo pipefail
tally="$1"
out=$("$tally" demo --steps 100)
grep -q "memory ledger (CPU)" <<<"$out"
set +e
msg=$("$tally" demo --no-such-flag 2>&1); rc=$?
set -e
[ "$rc" -eq 2 ] || { echo "expected exit 2 for an unknown flag, got $rc"; exit 1; }
grep -q "unknown flag --no-such-flag" <<<"$msg" || { echo "unexpected message: $msg"; exit 1; }
set +e
msg=$("$tally" demo --steps abc 2>&1); rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q "expects a decimal integer, got 'abc'" <<<"$msg" || { echo "bad integer not refused: $rc $msg"; exit 1; }
"$tally" demo --steps 1 >/dev/null  # one step: no fall to show, and no failure
set +e
msg=$("$tally" demo --lr 0 2>&1); rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q "lr must be a finite number > 0" <<<"$msg" || { echo "--lr 0 not refused: $rc $msg"; exit 1; }
set +e
msg=$("$tally" demo --lr 1e6 --steps 20 2>&1); rc=$?
set -e
[ "$rc" -eq 1 ] && grep -q "the loss did not fall" <<<"$msg" || { echo "a diverging demo: $rc $msg"; exit 1; }
set +e
"$tally" no-such-command >/dev/null 2>&1; rc=$?
set -e
[ "$rc" -eq 2 ] || { echo "unknown command should exit 2, got $rc"; exit 1; }
echo "cli demo: ok"
