#!/usr/bin/env bash
# End to end: `tally demo` trains its MLP (the loss must fall), and bad usage exits 2 with a clear message.
set -euo pipefail
tally="$1"
out=$("$tally" demo --steps 100)
echo "$out" | grep -q "memory ledger (CPU)"
set +e
msg=$("$tally" demo --no-such-flag 2>&1); rc=$?
set -e
[ "$rc" -eq 2 ] || { echo "expected exit 2 for an unknown flag, got $rc"; exit 1; }
echo "$msg" | grep -q "unknown flag --no-such-flag" || { echo "unexpected message: $msg"; exit 1; }
set +e
msg=$("$tally" demo --steps abc 2>&1); rc=$?
set -e
[ "$rc" -eq 2 ] && echo "$msg" | grep -q "expects an integer, got 'abc'" || { echo "bad integer not refused: $rc $msg"; exit 1; }
set +e
"$tally" no-such-command >/dev/null 2>&1; rc=$?
set -e
[ "$rc" -eq 2 ] || { echo "unknown command should exit 2, got $rc"; exit 1; }
echo "cli demo: ok"
