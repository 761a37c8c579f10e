#!/usr/bin/env bash
# End-to-end test of `tally prepare` on Tiny Shakespeare: token counts of val.bin/train.bin (llm.c's split, with
# and without --split-docs '\n\n'), the exit codes of a missing file (1) and a missing flag (2), and outputs that
# would damage a run (its data/, a checkpoint) refused.
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
  exit 77
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
# --split-docs equals llm.c's text.replace(sep, sep + EOT) after a leading EOT: a text ending with the separator
# ends with an end-of-text token; one with more after its last separator ends with that text as its last document.
tokens_of() { od -An -tu2 -w2 -v -j 1024 "$1" | tr -d ' ' | tr '\n' ' '; }
printf 'a\n\nb\n\n' > "$out/ends.txt"
"$tally" prepare --text "$out/ends.txt" --out "$out/ends" --split-docs '\n\n' --val-tokens 1 > /dev/null ||
  fail "prepare --split-docs of a text ending with the separator"
[[ "$(tokens_of "$out/ends/val.bin")$(tokens_of "$out/ends/train.bin")" == "50256 64 628 50256 65 628 50256 " ]] ||
  fail "a text ending with the separator: $(tokens_of "$out/ends/val.bin")$(tokens_of "$out/ends/train.bin")"
printf 'a\n\nb\n\n\n' > "$out/ends.txt"
"$tally" prepare --text "$out/ends.txt" --out "$out/ends3" --split-docs '\n\n' --val-tokens 1 > /dev/null ||
  fail "prepare --split-docs of a text ending with a longer run"
[[ "$(tokens_of "$out/ends3/val.bin")$(tokens_of "$out/ends3/train.bin")" == "50256 64 628 50256 65 628 50256 198 " ]] ||
  fail "a text ending with the separator and a newline: $(tokens_of "$out/ends3/val.bin")$(tokens_of "$out/ends3/train.bin")"
# An empty --split-docs: refused (exit 2), not silently one document.
"$tally" prepare --text "$text" --out "$out/x" --split-docs '' 2> "$out/err"
[[ $? == 2 ]] && grep -q "names no separator" "$out/err" || fail "--split-docs '': $(cat "$out/err")"
# A run's data/ or a checkpoint directory as --out: refused (exit 2), their files untouched.
"$tally" train --model tiny --batch 2 --seq 16 --threads 1 --steps 1 --eval-every 0 --val-batches 1 \
  --train "$out/one/train.bin" --val "$out/one/val.bin" --out "$out/run" > "$out/log" 2>&1 || fail "train: $(tail -3 "$out/log")"
mkdir -p "$out/run/data" && cp "$out/docs/train.bin" "$out/docs/val.bin" "$out/run/data/"
before=$(cat "$out/run/data/"* "$out/run/step-00000001/"* | md5sum)
"$tally" prepare --text "$text" --out "$out/run/data" 2> "$out/err"
[[ $? == 2 ]] && grep -q "is the train.bin of run" "$out/err" || fail "prepare into a run's data/: $(cat "$out/err")"
"$tally" prepare --text "$text" --out "$out/run/step-00000001" 2> "$out/err"
[[ $? == 2 ]] && grep -q "is a checkpoint directory" "$out/err" || fail "prepare into a checkpoint: $(cat "$out/err")"
[[ "$(cat "$out/run/data/"* "$out/run/step-00000001/"* | md5sum)" == "$before" ]] || fail "a refused prepare changed the run"
# A run trained from --text, whose text then changes: its resume (and a new run into its directory) is refused before
# its shards are touched; the same text again (copied back: a new time) resumes, the shards compared, not replaced.
head -c 20000 "$text" > "$out/small.txt" && cp -p "$out/small.txt" "$out/small.orig"
"$tally" train --model tiny --batch 2 --seq 16 --threads 1 --steps 1 --eval-every 0 --val-batches 1 --val-tokens 1000 \
  --text "$out/small.txt" --out "$out/trun" > "$out/log" 2>&1 || fail "train --text: $(tail -3 "$out/log")"
shards=$(cat "$out/trun/data/train.bin" "$out/trun/data/val.bin" | md5sum)
head -c 3000 "$text" >> "$out/small.txt"
"$tally" train --resume "$out/trun" --steps 2 2> "$out/err" > /dev/null
[[ $? == 1 ]] && grep -q "small.txt no longer tokenizes to the shards in '$out/trun/data' that the run in '$out/trun' was trained on" \
  "$out/err" || fail "resume after the text changed: $(cat "$out/err")"
"$tally" train --model tiny --batch 2 --seq 16 --threads 1 --steps 1 --val-tokens 1000 --text "$out/small.txt" \
  --out "$out/trun" 2> "$out/err" > /dev/null
[[ $? == 1 ]] && grep -q "already holds a run" "$out/err" || fail "a new run over a run of another text: $(cat "$out/err")"
[[ "$(cat "$out/trun/data/train.bin" "$out/trun/data/val.bin" | md5sum)" == "$shards" ]] || fail "a refused run changed the shards"
[[ -z "$(ls -A "$out/trun/data" | grep tokenizing)" ]] || fail "left behind: $(ls -A "$out/trun/data")"
cp "$out/small.orig" "$out/small.txt" && touch "$out/small.txt"
"$tally" train --resume "$out/trun" --steps 2 > "$out/log" 2>&1 || fail "resume with the text restored: $(tail -3 "$out/log")"
echo "ok"
