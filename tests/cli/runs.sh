#!/usr/bin/env bash
# End to end with the executable, what a user meets around runs: a run directory in use is locked (a second run is
# refused naming the holder; the lock dies with its process; files there that are not a run's are never
# overwritten), --no-vocab-pad holds for every way a model is made
# (--init of each format, --resume), samples are valid UTF-8 whatever the model emits, and `tally memory`'s table
# counts parameters as a count and keeps its columns aligned.
set -uo pipefail
tally="$1"
work=$(mktemp -d)
bg=""
cleanup() {
  [ -n "$bg" ] && kill -KILL "$bg" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
common=(--model tiny --batch 2 --seq 16 --threads 1 --val-batches 1 --eval-every 0 --warmup 1)
# padded_vocab_size recorded in a run's config.json
padded() { grep -o '"padded_vocab_size": [0-9]*' "$1/config.json" | grep -o '[0-9]*$'; }

# ---- one run per directory ----
# Files a run writes, already there and not a run's, are never overwritten: someone's config.json or report.html, a
# checkpoint directory. A run refused before its first step (out of memory) leaves its own config.json: the next
# run goes in.
mkdir -p "$work/mine" && echo '{"my": "settings"}' >"$work/mine/config.json"
"$tally" train "${common[@]}" --steps 1 --out "$work/mine" >"$work/o" 2>&1 && fail "a run over someone's config.json ran"
grep -q "holds a config.json that no tally run wrote: a run writes its own there" "$work/o" || fail "$(cat "$work/o")"
[ "$(cat "$work/mine/config.json")" = '{"my": "settings"}' ] && [ ! -e "$work/mine/log.jsonl" ] || fail "config.json replaced"
rm "$work/mine/config.json" && echo '<html>mine</html>' >"$work/mine/report.html"
"$tally" train "${common[@]}" --steps 1 --out "$work/mine" >"$work/o" 2>&1 && fail "a run over someone's report.html ran"
grep -q "holds a report.html that tally did not write" "$work/o" || fail "$(cat "$work/o")"
[ ! -e "$work/mine/tally.lock" ] || fail "a refused run left tally.lock"
"$tally" train "${common[@]}" --steps 1 --out "$work/first" >"$work/o" 2>&1 || fail "train: $(tail -3 "$work/o")"
"$tally" train "${common[@]}" --steps 1 --out "$work/first/step-00000001" >"$work/o" 2>&1 && fail "a run into a checkpoint ran"
grep -q "is a checkpoint directory (its manifest.json)" "$work/o" || fail "$(cat "$work/o")"
TALLY_MEMORY_LIMIT=30M "$tally" train "${common[@]}" --steps 1 --out "$work/refused" >"$work/o" 2>&1 && fail "30M fitted"
[ -f "$work/refused/config.json" ] || fail "the refused run left no config.json (the case below tests nothing)"
"$tally" train "${common[@]}" --steps 1 --out "$work/refused" >"$work/o" 2>&1 || fail "after a refused run: $(tail -3 "$work/o")"

"$tally" train "${common[@]}" --steps 100000 --out "$work/busy" >"$work/busy.log" 2>&1 &
bg=$!
for _ in $(seq 1 150); do grep -q "^step 1/" "$work/busy.log" 2>/dev/null && break; sleep 0.2; done
grep -q "^step 1/" "$work/busy.log" || fail "the first run did not start: $(tail -5 "$work/busy.log")"
"$tally" train "${common[@]}" --steps 2 --out "$work/busy" >"$work/o" 2>&1; rc=$?
[ $rc -eq 1 ] || fail "a second run into a busy directory: exit $rc: $(tail -3 "$work/o")"
grep -q "run directory '$work/busy' is in use by another process (pid $bg: " "$work/o" ||
  fail "the refusal does not name the directory and the holder: $(cat "$work/o")"
"$tally" train --resume "$work/busy" --steps 3 >"$work/o" 2>&1 && fail "a resume into a busy directory ran"
grep -q "is in use by another process (pid $bg" "$work/o" || fail "resume refusal: $(cat "$work/o")"
kill -KILL "$bg"; wait "$bg" 2>/dev/null; bg=""
# Killed, it holds nothing: the directory is free again. A new run is refused for the run it holds (its log, no
# checkpoint), not for a lock; with that log moved away, it runs.
"$tally" train "${common[@]}" --steps 2 --out "$work/busy" >"$work/o" 2>&1 && fail "a new run into a directory holding a run ran"
grep -q "already holds a run (its log.jsonl, and no checkpoint to continue from): move that log away" "$work/o" ||
  fail "after the holder died: $(tail -3 "$work/o")"
mv "$work/busy/log.jsonl" "$work/busy.old.jsonl"
"$tally" train "${common[@]}" --steps 2 --out "$work/busy" >"$work/o" 2>&1 || fail "after the holder died: $(tail -3 "$work/o")"
[ "$(tr -d '\000' < "$work/busy/log.jsonl" | wc -c)" -eq "$(wc -c < "$work/busy/log.jsonl")" ] || fail "NUL bytes in log.jsonl"

# ---- --no-vocab-pad, whatever the model is made from ----
"$tally" train "${common[@]}" --steps 1 --out "$work/pad" >"$work/o" 2>&1 || fail "train: $(tail -3 "$work/o")"
[ "$(padded "$work/pad")" = 50304 ] || fail "the default run is not padded: $(padded "$work/pad")"
"$tally" export --checkpoint "$work/pad" --format safetensors --out "$work/m.safetensors" >/dev/null || fail "export safetensors"
"$tally" export --checkpoint "$work/pad" --format llmc --out "$work/m.bin" >/dev/null || fail "export llmc"
for init in "$work/m.safetensors" "$work/m.bin" "$work/pad"; do
  name=$(basename "$init")
  "$tally" train "${common[@]}" --steps 1 --init "$init" --no-vocab-pad --out "$work/np-$name" >"$work/o" 2>&1 ||
    fail "--init $name --no-vocab-pad: $(tail -3 "$work/o")"
  [ "$(padded "$work/np-$name")" = 50257 ] || fail "--init $name --no-vocab-pad is padded to $(padded "$work/np-$name")"
  grep -q "V50257, " "$work/o" || fail "--init $name --no-vocab-pad: the model line shows padding: $(grep '^model:' "$work/o")"
done
# And back: an unpadded checkpoint as --init of a padded run.
"$tally" train "${common[@]}" --steps 1 --init "$work/np-m.bin" --out "$work/repad" >"$work/o" 2>&1 || fail "repad: $(tail -3 "$work/o")"
[ "$(padded "$work/repad")" = 50304 ] || fail "an unpadded --init did not pad to 50304"
# --resume: the run continues unpadded; the optimizer state never had padding rows, so it carries over.
"$tally" train --resume "$work/pad" --steps 2 --no-vocab-pad >"$work/o" 2>&1 || fail "--resume --no-vocab-pad: $(tail -3 "$work/o")"
grep -q "resumed from" "$work/o" || fail "no resume message"
[ "$(padded "$work/pad")" = 50257 ] || fail "--resume --no-vocab-pad left padding $(padded "$work/pad")"

# ---- samples are valid UTF-8 ----
# A model after one step predicts nearly uniformly over 50,257 tokens, many of them bytes that are no UTF-8 alone.
for seed in 1 2 3; do
  "$tally" sample --checkpoint "$work/pad" --tokens 200 --seed "$seed" >"$work/s" 2>&1 || fail "sample: $(tail -3 "$work/s")"
  iconv -f UTF-8 -t UTF-8 "$work/s" >/dev/null 2>&1 || fail "sample --seed $seed is not valid UTF-8"
done
"$tally" train "${common[@]}" --steps 1 --sample-tokens 200 --out "$work/samples" >"$work/o" 2>&1 || fail "train: $(tail -3 "$work/o")"
grep -q "^samples:" "$work/o" || fail "train printed no samples"
iconv -f UTF-8 -t UTF-8 "$work/o" >/dev/null 2>&1 || fail "train's output (samples) is not valid UTF-8"

# ---- tally memory: a count is a count, columns line up ----
"$tally" memory --model gpt2 >"$work/mem" || fail "memory"
grep -q "^L12 NH12 C768 T1024 V50257 (Vp 50304): 124,475,904 parameters, 497,903,616 B (f32)" "$work/mem" ||
  fail "memory's first line: $(head -1 "$work/mem")"
# Every row's byte figure ends in the same column.
cols=$(grep -E "^ *[a-z_]+ +[0-9,]+ B" "$work/mem" | awk '{ print index($0, " B") }' | sort -u | wc -l)
[ "$cols" -eq 1 ] || fail "memory's rows are misaligned: $(cat "$work/mem")"
echo "cli runs: ok"
