#!/usr/bin/env bash
# End-to-end test of `tally prepare` on Tiny Shakespeare: token counts of val.bin/train.bin (llm.c's split, with
# and without --split-docs '\n\n'), and the exit codes of a missing file (1) and a missing flag (2).
# Usage: prepare.sh TALLY_BINARY SOURCE_DIR
set -u
tally="$1"
src="$2"
# Where tally finds it: ../shared/data (or $TALLY_SHARED_DATA), else the download cache (data/ in the checkout, or
# $TALLY_CACHE_DIR), which the unit tests fill where no place has it.
text="${TALLY_SHARED_DATA:-$src/../shared/data}/tinyshakespeare.txt"
[[ -f "$text" ]] || text="${TALLY_CACHE_DIR:-$src/data}/tinyshakespeare.txt"
if [[ ! -f "$text" ]]; then
  echo "SKIPPED: $text not found"
  exit 0
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$tally" prepare --text "$text" --out "$out/one" || fail "prepare exited $?"
# 338,025 tokens + one leading <|endoftext|>: val = 32,768, train = 305,258.
[[ $(stat -c %s "$out/one/val.bin") == $((1024 + 2 * 32768)) ]] || fail "val.bin size $(stat -c %s "$out/one/val.bin")"
[[ $(stat -c %s "$out/one/train.bin") == $((1024 + 2 * 305258)) ]] || fail "train.bin size $(stat -c %s "$out/one/train.bin")"

# llm.c's tinyshakespeare.py: <|endoftext|> first and after every blank line -> 338,028 tokens.
"$tally" prepare --text "$text" --out "$out/docs" --split-docs '\n\n' --val-tokens 1000 || fail "prepare --split-docs exited $?"
[[ $(stat -c %s "$out/docs/val.bin") == $((1024 + 2 * 1000)) ]] || fail "split val.bin size"
[[ $(stat -c %s "$out/docs/train.bin") == $((1024 + 2 * 337028)) ]] || fail "split train.bin size $(stat -c %s "$out/docs/train.bin")"

"$tally" prepare --text "$out/no-such-file.txt" --out "$out/x" 2> "$out/err"
[[ $? == 1 ]] || fail "a missing --text file should exit 1"
grep -q "cannot open text file" "$out/err" || fail "missing-file message: $(cat "$out/err")"
"$tally" prepare --out "$out/x" 2> /dev/null
[[ $? == 2 ]] || fail "a missing --text flag should exit 2"
# Text that is not UTF-8: the file, the byte and its line; a directory given as --text: said so.
printf 'hello\nworld\xff more\n' > "$out/latin.txt"
"$tally" prepare --text "$out/latin.txt" --out "$out/x" 2> "$out/err"
[[ $? == 1 ]] || fail "non-UTF-8 text should exit 1"
grep -q "latin.txt is not UTF-8 text: byte 11 (line 2) is 0xff" "$out/err" || fail "non-UTF-8 message: $(cat "$out/err")"
"$tally" prepare --text "$out" --out "$out/x" 2> "$out/err"
[[ $? == 1 ]] && grep -q "is a directory: give a UTF-8 text file" "$out/err" || fail "directory as --text: $(cat "$out/err")"
echo "ok"
