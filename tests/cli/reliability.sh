#!/usr/bin/env bash
# End to end with the executable, the faults a long run meets: out of memory (refused before training with the
# plan and the largest batch that fits; an allocation failing mid-step reported, no partial checkpoint), a full
# disk while checkpointing (fault injection, and a real 40 MB tmpfs where mount namespaces are available), a
# read-only run directory, and damaged input files of every kind. Each gives a clear message naming the file and
# exit code 1 (2 for flags and configs) -- never a signal -- and the previous checkpoint stays loadable.
set -uo pipefail
tally="$1"
work=$(mktemp -d)
cleanup() {
  [ -d "$work/ro" ] && chattr -i "$work/ro" 2>/dev/null
  [ -d "$work/ro" ] && chmod 755 "$work/ro" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
common=(--model tiny --batch 2 --seq 16 --threads 1 --val-batches 1 --eval-every 0 --warmup 1)

# expect CODE PATTERN CMD...: runs CMD, requires exit status CODE and PATTERN (grep -E) in its output.
expect() {
  local code=$1 pattern=$2
  shift 2
  "$@" >"$work/out" 2>&1
  local rc=$?
  [ $rc -lt 128 ] || fail "killed by signal $((rc - 128)): $* -- $(tail -5 "$work/out")"
  [ $rc -eq "$code" ] || fail "exit $rc (expected $code): $* -- $(tail -5 "$work/out")"
  grep -qE -- "$pattern" "$work/out" || fail "no '$pattern' in the output of: $* -- $(tail -5 "$work/out")"
}
# The step directories and leftovers of a run directory, one line.
steps() { ls -a "$1" | grep -E "^(step-|\.tmp)" | tr '\n' ' '; }

# ---- out of memory ----
expect 1 "largest --batch that fits is [0-9]+" env TALLY_MEMORY_LIMIT=60M "$tally" train "${common[@]}" --batch 8 \
  --steps 2 --out "$work/oom"
grep -q "no checkpoint was written" "$work/out" || fail "refusal does not say nothing was written"
grep -q "total (peak, all at once)" "$work/out" || fail "refusal has no plan"
[ -z "$(steps "$work/oom")" ] || fail "refused run left $(steps "$work/oom")"
# Accumulating the same tokens per step in smaller micro-batches holds more than one batch of the largest size that
# fits: here (60M, T=16) none of 4, 2, 1 fits accumulated, and the advice says so rather than name one that does not.
grep -q "no smaller batch keeps the 128 tokens per optimizer step within the budget" "$work/out" ||
  fail "accumulation advice at 60M: $(grep -i largest "$work/out")"
# At T=64 under 85 MB one does (batch 1 accumulated 8 times), and the advice, followed, fits the same budget.
expect 1 "largest --batch that fits is 2" env TALLY_MEMORY_LIMIT=85000000 "$tally" train "${common[@]}" --seq 64 \
  --batch 8 --steps 1 --out "$work/oom64"
advice=$(sed -n 's/.*; \(--batch [0-9]* --total-batch [0-9]*\) keeps the tokens per optimizer step.*/\1/p' "$work/out")
[ "$advice" = "--batch 1 --total-batch 512" ] || fail "accumulation advice at 85 MB: $(grep -i largest "$work/out")"
# shellcheck disable=SC2086
env TALLY_MEMORY_LIMIT=85000000 "$tally" train "${common[@]}" --seq 64 $advice --steps 1 --out "$work/oom-advised" \
  >"$work/o2" 2>&1 || fail "the advised '$advice' does not fit: $(tail -3 "$work/o2")"
# A cap on the address space (ulimit -v) is part of the budget: a step that cannot fit under it is refused before
# training (an allocation failing under the cap would leave OpenBLAS retrying it for ever). One thread each for
# OpenMP and OpenBLAS keeps the process's own mappings small. (Not under AddressSanitizer: its shadow memory alone
# is terabytes of address space.)
if [ -z "${ASAN_OPTIONS:-}" ]; then
  (ulimit -v 2500000 && OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 expect 1 "the address-space limit \(ulimit -v\)" \
    "$tally" train "${common[@]}" --model d6 --batch 16 --seq 1024 --steps 1 --out "$work/as") || exit 1
fi

"$tally" train "${common[@]}" --steps 2 --out "$work/run" >"$work/out" 2>&1 || fail "training: $(tail -5 "$work/out")"
expect 1 "out of memory on the CPU: could not allocate" env TALLY_FAULT_OOM_AT_STEP=4 "$tally" train --resume "$work/run" \
  --steps 5 --save-every 1
grep -q "live requested" "$work/out" || fail "mid-step out of memory: no ledger table"
grep -q "Nothing of the failed step was saved" "$work/out" || fail "mid-step out of memory: no statement on checkpoints"
[ "$(steps "$work/run")" = "step-00000002 step-00000003 " ] || fail "after out of memory at step 4: $(steps "$work/run")"
"$tally" inspect "$work/run" >"$work/out" 2>&1 || fail "checkpoint unreadable after out of memory"
grep -q "step 3" "$work/out" || fail "latest checkpoint is not step 3: $(head -1 "$work/out")"

# ---- full disk (fault injection: the write that crosses 100000 bytes fails with ENOSPC) ----
expect 1 "disk is full|No space left" env TALLY_FAULT_WRITE_AFTER_BYTES=100000 "$tally" train --resume "$work/run" --steps 4
[ "$(steps "$work/run")" = "step-00000002 step-00000003 " ] || fail "after a full disk: $(steps "$work/run")"
"$tally" inspect "$work/run" >"$work/out" 2>&1 && grep -q "step 3" "$work/out" || fail "previous checkpoint unreadable after a full disk"
"$tally" train --resume "$work/run" --steps 4 >"$work/out" 2>&1 || fail "resume after a full disk: $(tail -5 "$work/out")"
grep -q "resumed from .*step-00000003 at step 3" "$work/out" || fail "did not resume from step 3"

# ---- a real full disk and a read-only filesystem, in a private mount namespace when one can be made ----
if unshare -rm true 2>/dev/null; then
  mkdir -p "$work/small"
  cat >"$work/ns.sh" <<NS
set -u
mount -t tmpfs -o size=40m tally-test "$work/small" || exit 90
# One checkpoint of the tiny model takes ~27 MB: the first fits, the second fills the disk.
"$tally" train ${common[*]} --steps 3 --save-every 1 --keep-last 5 --out "$work/small/run" >"$work/ns_train.log" 2>&1
echo "train_rc=\$?" >"$work/ns.result"
ls -a "$work/small/run" | grep -E "^(step-|\.tmp)" | tr '\n' ' ' >>"$work/ns.steps"
"$tally" inspect "$work/small/run" >"$work/ns_inspect.log" 2>&1
echo "inspect_rc=\$?" >>"$work/ns.result"
# Read-only: the same filesystem remounted read-only, and the run resumed.
mount -o remount,ro "$work/small" || exit 91
"$tally" train --resume "$work/small/run" --steps 3 >"$work/ns_ro.log" 2>&1
echo "ro_rc=\$?" >>"$work/ns.result"
"$tally" inspect "$work/small/run" >"$work/ns_inspect_ro.log" 2>&1
echo "inspect_ro_rc=\$?" >>"$work/ns.result"
NS
  unshare -rm bash "$work/ns.sh" || fail "mount namespace script failed ($?)"
  source "$work/ns.result"
  [ "$train_rc" -eq 1 ] || fail "tmpfs full: exit $train_rc -- $(tail -3 "$work/ns_train.log")"
  grep -q "disk is full (no space left on device)" "$work/ns_train.log" || fail "tmpfs full: $(tail -3 "$work/ns_train.log")"
  [ "$(cat "$work/ns.steps")" = "step-00000001 " ] || fail "tmpfs full left: $(cat "$work/ns.steps")"
  [ "$inspect_rc" -eq 0 ] && grep -q "step 1" "$work/ns_inspect.log" || fail "checkpoint unreadable on a full disk"
  [ "$ro_rc" -eq 1 ] || fail "read-only: exit $ro_rc -- $(tail -3 "$work/ns_ro.log")"
  grep -q "Read-only file system" "$work/ns_ro.log" || fail "read-only: $(tail -3 "$work/ns_ro.log")"
  [ "$inspect_ro_rc" -eq 0 ] && grep -q "step 1" "$work/ns_inspect_ro.log" || fail "checkpoint unreadable when read-only"
  echo "cli reliability: real full disk (tmpfs) and read-only filesystem: ok"
else
  echo "cli reliability: SKIPPED the real full disk and read-only filesystem (no mount namespaces here: unshare -rm)"
fi
# A run directory that cannot be written (root ignores permission bits: the immutable attribute stands in).
cp -r "$work/run" "$work/ro"
if [ "$(id -u)" -eq 0 ]; then chattr +i "$work/ro" 2>/dev/null || echo "cli reliability: chattr +i unavailable"; else chmod 555 "$work/ro"; fi
if ! touch "$work/ro/probe" 2>/dev/null; then
  expect 1 "config.json" "$tally" train --resume "$work/ro" --steps 5
  "$tally" inspect "$work/ro" >"$work/out" 2>&1 && grep -q "step 4" "$work/out" || fail "checkpoint unreadable in an unwritable directory"
else
  echo "cli reliability: SKIPPED the unwritable run directory (could not make one)"
fi

# ---- damaged input files: exit 1 (2 for configs and flags) naming the file ----
ck="$work/run"
cp "$ck/data/val.bin" "$work/val_trunc.bin" && truncate -s 2000 "$work/val_trunc.bin"
expect 1 "val_trunc.bin.*truncated" "$tally" eval --checkpoint "$ck" --data "$work/val_trunc.bin" --batch 2 --seq 16
cp "$ck/data/val.bin" "$work/val_flip.bin" && printf '\x21' | dd of="$work/val_flip.bin" bs=1 seek=0 conv=notrunc 2>/dev/null
expect 1 "val_flip.bin: bad magic" "$tally" eval --checkpoint "$ck" --data "$work/val_flip.bin" --batch 2 --seq 16
"$tally" export --checkpoint "$ck" --format llmc --out "$work/m.bin" >/dev/null || fail "export llmc"
"$tally" export --checkpoint "$ck" --format safetensors --out "$work/m.safetensors" >/dev/null || fail "export safetensors"
for f in m.bin m.safetensors; do
  cp "$work/$f" "$work/t_$f" && truncate -s 5000 "$work/t_$f"
  expect 1 "t_$f" "$tally" eval --checkpoint "$work/t_$f" --data "$ck/data/val.bin" --batch 2 --seq 16 --batches 1
  cp "$work/$f" "$work/f_$f" && printf '\x7f' | dd of="$work/f_$f" bs=1 seek=3 conv=notrunc 2>/dev/null
  expect 1 "f_$f" "$tally" eval --checkpoint "$work/f_$f" --data "$ck/data/val.bin" --batch 2 --seq 16 --batches 1
done
cp -r "$ck/step-00000004" "$work/flipped" && printf '\x00' | dd of="$work/flipped/model.safetensors" bs=1 seek=5000 conv=notrunc 2>/dev/null
expect 1 "model.safetensors' fails its checksum" "$tally" eval --checkpoint "$work/flipped" --data "$ck/data/val.bin"
cp -r "$ck/step-00000004" "$work/trunc" && truncate -s 10 "$work/trunc/state.json"
expect 1 "state.json' has 10 bytes" "$tally" eval --checkpoint "$work/trunc" --data "$ck/data/val.bin"
gpt2="${TALLY_GPT2_DIR:-$2/../shared/data/gpt2}"
[ -f "$gpt2/encoder.json" ] || gpt2="${TALLY_CACHE_DIR:-$2/data}/gpt2"  # the download cache
if [ -f "$gpt2/encoder.json" ]; then
  mkdir -p "$work/tok" && cp "$gpt2/encoder.json" "$work/tok/"
  # Cut mid-line (the last line is half a merge), then at a line boundary (too few merges for encoder.json).
  head -c 100000 "$gpt2/vocab.bpe" >"$work/tok/vocab.bpe"
  expect 1 "vocab.bpe line [0-9]+: expected a merge" env TALLY_GPT2_DIR="$work/tok" "$tally" sample --checkpoint "$ck" --prompt hi --tokens 2
  head -n 20000 "$gpt2/vocab.bpe" >"$work/tok/vocab.bpe"
  expect 1 "vocab.bpe has [0-9]+ merges" env TALLY_GPT2_DIR="$work/tok" "$tally" sample --checkpoint "$ck" --prompt hi --tokens 2
  # A flipped bit in a merge: the space between its two parts becomes '!' (0x20 ^ 0x01).
  cp "$gpt2/vocab.bpe" "$work/tok/vocab.bpe"
  off=$(head -n 3 "$gpt2/vocab.bpe" | wc -c)
  off=$((off + $(sed -n 4p "$gpt2/vocab.bpe" | cut -d' ' -f1 | wc -c) - 1))
  printf '!' | dd of="$work/tok/vocab.bpe" bs=1 seek="$off" conv=notrunc 2>/dev/null
  expect 1 "vocab.bpe line 4: expected a merge" env TALLY_GPT2_DIR="$work/tok" "$tally" sample --checkpoint "$ck" --prompt hi --tokens 2
  cp "$gpt2/vocab.bpe" "$work/tok/vocab.bpe"
  cp "$gpt2/encoder.json" "$work/tok/t_encoder.json" && head -c 300000 "$work/tok/t_encoder.json" >"$work/tok/encoder.json"
  expect 1 "encoder.json: not valid JSON" env TALLY_GPT2_DIR="$work/tok" "$tally" sample --checkpoint "$ck" --prompt hi --tokens 2
  cp "$gpt2/encoder.json" "$work/tok/encoder.json"
  printf '\x00' | dd of="$work/tok/encoder.json" bs=1 seek=500 conv=notrunc 2>/dev/null
  expect 1 "encoder.json: not valid JSON" env TALLY_GPT2_DIR="$work/tok" "$tally" sample --checkpoint "$ck" --prompt hi --tokens 2
else
  echo "cli reliability: SKIPPED damaged tokenizer files (no GPT-2 files in $gpt2)"
fi
printf '{"batch": 2, "seq": 1' >"$work/cfg_trunc.json"
expect 2 "cfg_trunc.json' is not valid JSON" "$tally" train --config "$work/cfg_trunc.json"
printf '{"batch": "2x", "seq": 16}' >"$work/cfg_bad.json"
expect 2 "--batch expects a decimal integer, got '2x' \(from config file '.*cfg_bad.json'\)" "$tally" train --config "$work/cfg_bad.json"
expect 2 "--batch 99999999999999999999 is out of range" "$tally" train --batch 99999999999999999999
# An integer in a config file past int64's range is refused, not wrapped to another value (-1 for 2^64 - 1).
printf '{"batch": 2, "seed": 18446744073709551615}' >"$work/cfg_big.json"
expect 2 "--seed 18446744073709551615 is out of range .*\(from config file '.*cfg_big.json'\)" "$tally" train \
  --config "$work/cfg_big.json"
expect 2 "--batch expects a decimal integer, got '0x10'" "$tally" train --batch 0x10
printf '{"lr": true}' >"$work/cfg_bool.json"
expect 2 "'lr' takes a value, not true" "$tally" train --config "$work/cfg_bool.json"
expect 2 "--lrs ',' has an empty entry" "$tally" compare --lrs , --out "$work/cmp-empty"
expect 2 "more than 1099511627776" "$tally" train --width 1048576 --heads 1
# A sequence so long that the attention's (B, H, T, T) scores outgrow the plan's 64-bit bytes: refused, naming it.
long=(--model tiny --batch 1 --block 2000000000 --seq 2000000000)
refusal="--batch 1 x 2 heads x --seq 2000000000 x 2000000000: the attention's scores would hold 8e\+18 elements"
expect 2 "$refusal" "$tally" memory "${long[@]}"
expect 2 "$refusal" "$tally" train "${long[@]}" --out "$work/long"
expect 2 "must be positive" "$tally" train --steps -1
# ---- runs and outputs that would lose something ----
# Settings that would put NaN in the weights of a finite run, and more threads than a process can start: refused.
expect 2 "eps must be > 0" "$tally" train "${common[@]}" --optimizer adamw --eps 0 --steps 1 --out "$work/eps0"
expect 2 "eps\[1\] \(eps2\) must be > 0" "$tally" train "${common[@]}" --optimizer came --eps2 0 --steps 1 --out "$work/eps0"
expect 2 "threads must be 0 \(all cores\) to 1024" "$tally" train "${common[@]}" --threads 100000 --out "$work/threads"
# A new run into a directory that holds one: refused, the old run untouched.
"$tally" train "${common[@]}" --steps 2 --out "$work/mine" >"$work/out" 2>&1 || fail "train: $(tail -3 "$work/out")"
before=$(cat "$work/mine/log.jsonl" "$work/mine/config.json" "$work/mine"/data/* | md5sum) kept=$(steps "$work/mine")
# (Another --val-tokens: the text would be tokenized again into the run's data/ if the refusal came later.)
expect 1 "already holds a run \(its checkpoint step-00000002\): continue it with --resume" "$tally" train \
  "${common[@]}" --steps 1 --keep-last 1 --val-tokens 1000 --out "$work/mine"
[ "$(cat "$work/mine/log.jsonl" "$work/mine/config.json" "$work/mine"/data/* | md5sum)" = "$before" ] &&
  [ "$(steps "$work/mine")" = "$kept" ] || fail "a refused new run changed the run it found: $(steps "$work/mine")"
# A checkpoint named with a trailing slash is that checkpoint: its run goes on in its directory.
expect 0 "resumed from" "$tally" train --resume "$work/mine/step-00000002/" --steps 3
[ -d "$work/mine/step-00000003" ] || fail "--resume DIR/step-00000002/ did not go on in DIR: $(steps "$work/mine")"
# Nothing left to train: refused, not an empty run.
expect 2 "the checkpoint is at step 3 and this run has --steps 3: nothing to train" "$tally" train --resume "$work/mine" --steps 3
# --resume of what is not a run: refused before anything is read or written (no directory made, no data tokenized).
expect 1 "--resume '.*typo': no such file or directory" "$tally" train --resume "$work/typo"
[ ! -e "$work/typo" ] || fail "a refused --resume of a missing directory made it: $(ls -a "$work/typo")"
"$tally" export --checkpoint "$work/mine" --format llmc --out "$work/model.llmc" >"$work/out" 2>&1 || fail "export: $(tail -3 "$work/out")"
expect 1 "--resume '.*model.llmc' is a file, not a run .*use --init" "$tally" train --resume "$work/model.llmc"
mkdir -p "$work/mydata/data" && cp "$work/mine/data/train.bin" "$work/mine/data/val.bin" "$work/mydata/data/"
expect 1 "--resume '.*mydata': no complete checkpoint there" "$tally" train --resume "$work/mydata"
# A new run tokenizing --text into a directory whose data/ holds shards it did not write: refused, the shards kept.
before_data=$(cat "$work/mydata/data/"* | md5sum)
expect 1 "holds train.bin or val.bin that tally did not tokenize there .*train on them with --train and --val" \
  "$tally" train "${common[@]}" --steps 1 --val-tokens 1000 --out "$work/mydata"
[ "$(cat "$work/mydata/data/"* | md5sum)" = "$before_data" ] && [ ! -e "$work/mydata/data/source.txt" ] ||
  fail "a refused run changed the shards it found in its --out"
# Flags that contradict each other or the checkpoint: refused, naming them.
expect 2 "--init starts a new run from a model file and --resume continues a run" "$tally" train --resume "$work/mine" \
  --init "$work/model.llmc" --steps 4
expect 2 "--text and --train/--val are two ways to give the data" "$tally" train "${common[@]}" --steps 1 \
  --train "$work/mine/data/train.bin" --val "$work/mine/data/val.bin" --text "$work/mine/config.json" --out "$work/both"
expect 1 "the checkpoint was trained with --optimizer came, this run has --optimizer adamw" "$tally" train \
  --resume "$work/mine" --steps 4 --optimizer adamw
expect 1 "the checkpoint's place in the data is in batches of --batch 2 x --seq 16 per rank, this run has --batch 1" \
  "$tally" train --resume "$work/mine" --steps 4 --batch 1
expect 1 "'$work/nothing' does not exist" "$tally" inspect "$work/nothing"
# A checkpoint copied without its manifest: said so (not "it holds a model").
last=$(ls -d "$work/mine"/step-* | tail -1)
mkdir -p "$work/part" && cp "$last"/*.safetensors "$last"/state.json "$work/part/"
expect 1 "has no manifest.json: it is incomplete or not a tally checkpoint" "$tally" inspect "$work/part"
# A setting only other optimizers read: refused, naming them (compare passes each optimizer its own).
expect 2 "--eps2 is a setting of came, not of adamw" "$tally" train "${common[@]}" --optimizer adamw --eps2 1e-16 \
  --steps 1 --out "$work/eps2"
expect 2 "--momentum is a setting of sgd, sm3, not of came" "$tally" train "${common[@]}" --momentum 0.9 --steps 1 \
  --out "$work/momentum"
# A run started from --text, resumed with --train/--val (its own tokens, the text moved away): the data given now
# replaces the saved --text, not contradicts it.
for i in $(seq 1 2000); do echo "the quick brown fox number $i jumps over the lazy dog"; done >"$work/fox.txt"
"$tally" train "${common[@]}" --steps 1 --text "$work/fox.txt" --val-tokens 1000 --out "$work/fox" >"$work/out" 2>&1 ||
  fail "train --text: $(tail -3 "$work/out")"
mv "$work/fox.txt" "$work/fox.moved"
expect 0 "resumed from" "$tally" train --resume "$work/fox" --steps 2 --train "$work/fox/data/train.bin" \
  --val "$work/fox/data/val.bin"
# ... and --val alone (another validation set) keeps the saved --train.
expect 0 "resumed from" "$tally" train --resume "$work/fox" --steps 3 --val "$work/fox/data/val.bin"
expect 1 "text file '.*' is a directory, not a text file" "$tally" train "${common[@]}" --text "$work/mine" --out "$work/td"
# Config files: a directory, a flag named twice, a config naming another config.
expect 2 "config file '.*' is a directory" "$tally" train --config "$work/mine"
printf '{"steps": 2, "steps": 3}' >"$work/cfg_twice.json"
expect 2 "cfg_twice.json' names 'steps' twice" "$tally" train --config "$work/cfg_twice.json"
printf '{"config": "other.json"}' >"$work/cfg_nested.json"
expect 2 "'config' names another config file, which is not read" "$tally" train --config "$work/cfg_nested.json"
# A training shard replaced by one of another size since the checkpoint: refused (the saved place in the data
# would name other slices), nothing changed.
mkdir -p "$work/shards" && cp "$work/mine/data/train.bin" "$work/mine/data/val.bin" "$work/shards/"
"$tally" train "${common[@]}" --steps 1 --train "$work/shards/train.bin" --val "$work/shards/val.bin" \
  --out "$work/sharded" >"$work/out" 2>&1 || fail "train on shards: $(tail -3 "$work/out")"
cp "$work/shards/val.bin" "$work/shards/train.bin"
kept=$(steps "$work/sharded")
expect 1 "the data changed since the position was saved: its 1 shard\(s\) held [0-9]+ tokens, now [0-9]+" \
  "$tally" train --resume "$work/sharded" --steps 2
[ "$(steps "$work/sharded")" = "$kept" ] || fail "a refused resume over other data changed the run: $(steps "$work/sharded")"
# The shard back, but with its last token changed (the same size): refused too, nothing changed.
cp "$work/mine/data/train.bin" "$work/shards/train.bin"
size=$(stat -c %s "$work/shards/train.bin")
last=$(od -An -tu2 -j $((size - 2)) -N2 "$work/shards/train.bin" | tr -d ' ')
other=$((last ^ 1))
printf "$(printf '\\x%02x\\x%02x' $((other & 255)) $((other >> 8)))" |
  dd of="$work/shards/train.bin" bs=1 seek=$((size - 2)) conv=notrunc status=none
[ "$(stat -c %s "$work/shards/train.bin")" = "$size" ] || fail "the changed shard's size changed"
cmp -s "$work/mine/data/train.bin" "$work/shards/train.bin" && fail "the shard's last token was not changed"
expect 1 "held [0-9]+ tokens, now [0-9]+ in shards of the same sizes but with other tokens" \
  "$tally" train --resume "$work/sharded" --steps 2
[ "$(steps "$work/sharded")" = "$kept" ] || fail "a refused resume over other tokens changed the run: $(steps "$work/sharded")"
# The run's own data again: it goes on.
cp "$work/mine/data/train.bin" "$work/shards/train.bin"
expect 0 "resumed from" "$tally" train --resume "$work/sharded" --steps 2
# A damaged config.json (the run's flags): refused, naming it.
cp "$work/mine/config.json" "$work/config.keep" && echo garbage >"$work/mine/config.json"
expect 1 "mine/config.json' holds no" "$tally" train --resume "$work/mine" --steps 4
cp "$work/config.keep" "$work/mine/config.json"
# A damaged log line does not fail a run that trained and saved: its report is a warning.
echo garbage >>"$work/mine/log.jsonl"
expect 0 "warning: the run finished, but its report was not written" "$tally" train --resume "$work/mine" --steps 4
[ -d "$work/mine/step-00000004" ] || fail "the run with a damaged log line did not save: $(steps "$work/mine")"
# The page never replaces its own input; a pipe is never replaced by a file; a link is written through.
expect 2 "is the log.jsonl of run" "$tally" report "$work/mine" --out "$work/mine/log.jsonl"
grep -q '"step":4' "$work/mine/log.jsonl" || fail "tally report replaced the run's log"
# No command's output replaces a checkpoint's files or a run's log and configuration.
ck4=$(ls -d "$work/mine"/step-* | tail -1)
before=$(cat "$ck4"/* "$work/mine/log.jsonl" "$work/mine/config.json" "$work/mine/data/train.bin" | md5sum)
expect 2 "is the model.safetensors of checkpoint .*: writing it would damage the checkpoint" "$tally" export \
  --checkpoint "$work/mine" --format safetensors --out "$ck4/model.safetensors"
expect 2 "is the state.json of checkpoint" "$tally" inspect "$work/mine" \
  --dump transformer.h.0.attn.c_attn.weight:exp_avg --to "$ck4/state.json"
expect 2 "is the log.jsonl of run .*: writing it would damage the run" "$tally" export --checkpoint "$work/mine" \
  --format llmc --out "$work/mine/log.jsonl"
expect 2 "is the train.bin of run .*: writing it would damage the run" "$tally" report "$work/mine" \
  --out "$work/mine/data/train.bin"
[ "$(cat "$ck4"/* "$work/mine/log.jsonl" "$work/mine/config.json" "$work/mine/data/train.bin" | md5sum)" = "$before" ] ||
  fail "an output replaced a checkpoint's or the run's file"
mkfifo "$work/pipe" || fail "mkfifo"
expect 1 "is not a regular file \(a device, a pipe or a socket\)" "$tally" export --checkpoint "$work/mine" \
  --format safetensors --out "$work/pipe"
[ -p "$work/pipe" ] || fail "export replaced a pipe with a file"
touch "$work/real.safetensors" && ln -s real.safetensors "$work/link.safetensors"
expect 0 "wrote" "$tally" export --checkpoint "$work/mine" --format safetensors --out "$work/link.safetensors"
[ -L "$work/link.safetensors" ] && [ -s "$work/real.safetensors" ] || fail "export did not write through a link"
# A diverged run (SGD at lr 1e30: finite weights whose forward overflows) ends saved, saying why it has no sample.
expect 0 "logits are not finite .*lower --lr" "$tally" train "${common[@]}" --optimizer sgd --lr 1e30 --grad-clip 0 \
  --steps 3 --out "$work/diverged"
[ -d "$work/diverged/step-00000003" ] || fail "the diverged run did not save: $(steps "$work/diverged")"
# Stopped by --max-bad-steps, saving every step and keeping 2: the newest checkpoint followed by a finite step is
# named and kept (it was pruned in favour of the diverged ones), and no checkpoint is saved amid the non-finite steps.
# (Where the first non-finite step comes depends on the machine's arithmetic: if it is step 2, no checkpoint is good.)
expect 1 "The model they started from .* saved in .*; (the newest checkpoint followed by a finite step is|no checkpoint)" \
  "$tally" train "${common[@]}" --optimizer sgd --lr 1e6 --grad-clip 0 --max-bad-steps 3 --save-every 1 --keep-last 2 \
  --steps 20 --log-optim 1 --out "$work/diverging"
# --log-optim logs the internals of the steps the optimizer ran, none of a skipped step (they were the last step's).
bad=$(grep '"skipped":true' "$work/diverging/log.jsonl" | grep -o '"step":[0-9]*' | cut -d: -f2)
[ "$(echo $bad | wc -w)" -eq 3 ] || fail "the diverging run's skipped steps: '$bad'"
for n in $bad; do
  ! grep -q "^{\"optim\".*\"step\":$n}\$" "$work/diverging/log.jsonl" || fail "internals logged for skipped step $n"
done
grep -q '^{"optim"' "$work/diverging/log.jsonl" || fail "the diverging run logged no internals"
good=$(sed -n 's/.*the newest checkpoint followed by a finite step is \([^ ]*\) (continue.*/\1/p' "$work/out")
[ -z "$good" ] || [ -d "$good" ] || fail "the good checkpoint named ('$good') was not kept: $(steps "$work/diverging")"
[ "$(steps "$work/diverging" | wc -w)" -le 3 ] || fail "diverging run's checkpoints: $(steps "$work/diverging")"
[ -z "$good" ] ||
  expect 0 "^loss " "$tally" eval --checkpoint "$good" --data "$work/diverging/data/val.bin" --batch 2 --seq 16 --batches 2
# eval of it: an error naming the checkpoint, not "loss -nan" with exit 0.
expect 1 "mean loss over 2 batches is -?nan: the model's forward overflows .*diverged/step-00000003' cannot be evaluated" \
  "$tally" eval --checkpoint "$work/diverged/step-00000003" --data "$work/diverged/data/val.bin" --batch 2 --seq 16 \
  --batches 2
# Model flags given with --init that ask for another model than the file's: refused, naming them.
expect 2 "holds a GPT-2 L2 NH2 C64 .*model flags given with it ask for --model d4's layers 4 \(the file's: 2\), --model d4's heads 4 \(the file's: 2\), --width 512 \(the file's: 64\): leave" \
  "$tally" train "${common[@]}" --init "$work/mine/step-00000003" --model d4 --width 512 --steps 1 --out "$work/init-flags"
# ... each given flag with the file's value, not the request filled in from the default preset; a flag that agrees
# with the file trains it.
expect 2 "model flags given with it ask for --layers 3 \(the file's: 2\): leave them out" "$tally" train "${common[@]}" \
  --init "$work/mine/step-00000003" --layers 3 --steps 1 --out "$work/init-flags"
# (No --model: the default preset's other dimensions are not the file's, and no flag asks for them.)
expect 0 "checkpoint" "$tally" train "${common[@]:2}" --init "$work/mine/step-00000003" --layers 2 --steps 1 \
  --out "$work/init-agrees"
# --seq past the block of the --init model: refused up front (exit 2), as it is for --model.
expect 0 "checkpoint" "$tally" train "${common[@]}" --block 16 --steps 1 --out "$work/block16"
expect 2 "--seq 32 exceeds the block size 16 of the model in --init" "$tally" train --batch 2 --threads 1 \
  --init "$work/block16" --seq 32 --steps 1 --out "$work/init-seq"
# --dropout with --init applies (the file's model trained without it: its dropout was kept).
for d in 0 0.5; do
  "$tally" train --batch 2 --seq 16 --threads 1 --init "$work/block16" --dropout $d --steps 2 --eval-every 0 \
    --out "$work/dropout$d" >"$work/out" 2>&1 || fail "--init with --dropout $d: $(tail -3 "$work/out")"
done
cmp -s <(grep -o '"loss":[^,]*' "$work/dropout0/log.jsonl") <(grep -o '"loss":[^,]*' "$work/dropout0.5/log.jsonl") &&
  fail "--dropout 0.5 with --init trained as --dropout 0"
# A resumed run continued into another run's directory: refused as a new run there is.
expect 1 "diverged' already holds a run" "$tally" train --resume "$work/mine/step-00000003" --steps 6 --out "$work/diverged"
# Resumed from an earlier checkpoint than the run's latest, into the run: refused (its continuation would mix with
# the one that made step 4: --keep-last pruned the new checkpoints), nothing changed.
before=$(cat "$work/mine/log.jsonl" "$work/mine/config.json" | md5sum) kept=$(steps "$work/mine")
expect 1 "the run went on past step 2 \(its checkpoints step-00000003 to step-00000004\); continuing from this one" \
  "$tally" train --resume "$work/mine/step-00000002" --steps 6 --keep-last 1
[ "$(cat "$work/mine/log.jsonl" "$work/mine/config.json" | md5sum)" = "$before" ] && [ "$(steps "$work/mine")" = "$kept" ] ||
  fail "a refused rewind changed the run: $(steps "$work/mine")"
# The latest checkpoint damaged: the refusal names the run's earlier one, which continues once the damaged one is
# moved away.
printf 'X' | dd of="$work/mine/step-00000004/optimizer.safetensors" bs=1 seek=1000 conv=notrunc 2>/dev/null
expect 1 "earlier checkpoint .*step-00000003 may be intact: move the damaged step-00000004 out of .*mine, then continue" \
  "$tally" train --resume "$work/mine" --steps 5
mv "$work/mine/step-00000004" "$work/damaged-step-4"
expect 0 "resumed from .*step-00000003" "$tally" train --resume "$work/mine" --steps 5
expect 2 "save-every must be >= 0" "$tally" train "${common[@]}" --save-every -1 --out "$work/neg"
expect 2 "grad-clip must be >= 0" "$tally" train "${common[@]}" --grad-clip -1 --out "$work/neg"
# tally compare refuses a bad list of optimizers before it trains anything.
expect 2 "unknown optimizer 'foo'" "$tally" compare "${common[@]}" --steps 1 --optimizers came,foo --out "$work/cmp"
[ ! -e "$work/cmp" ] || fail "compare wrote before refusing an unknown optimizer: $(find "$work/cmp" | head -5)"
expect 2 "lists 'came' twice" "$tally" compare "${common[@]}" --steps 1 --optimizers came,came --out "$work/cmp"
expect 2 "--optimizer lists 'came' twice" "$tally" memory --model tiny --optimizer came,adamw,came
# eval without --seq reads windows of the model's block (16: the block-16 run above), not 1024.
expect 0 "over 64 tokens \(2 batches of 2 x 16\)" "$tally" eval --checkpoint "$work/block16" \
  --data "$work/block16/data/val.bin" --batch 2 --batches 2
# sample: a prompt of the whole block still gets one new token (the last sampled is never fed back: more are cut to
# one, saying so); a longer prompt is refused; a prompt that is not UTF-8 is named.
prompt="word$(printf ' word%.0s' $(seq 1 15))"
expect 0 "^word( word){15}$" "$tally" sample --checkpoint "$work/block16" --prompt "$prompt" --tokens 0
expect 0 "\[sample\] 1 tokens, not 5: the model sees 16 at most and the prompt holds 16" "$tally" sample \
  --checkpoint "$work/block16" --prompt "$prompt" --tokens 5
expect 1 "--prompt has 17 tokens; the model sees at most 16" "$tally" sample --checkpoint "$work/block16" \
  --prompt "$prompt word" --tokens 0
expect 1 "--prompt: \[tokenizer\] encode: invalid UTF-8 at byte offset 2" "$tally" sample --checkpoint "$work/block16" \
  --prompt $'ab\xffcd'
# ... and a directory of an earlier compare, before training the runs it does not hold either.
"$tally" compare "${common[@]}" --steps 1 --optimizers adamw --out "$work/cmp2" >"$work/out" 2>&1 ||
  fail "compare: $(tail -3 "$work/out")"
expect 1 "'.*cmp2' holds an earlier comparison: continue it with tally compare --resume" "$tally" compare \
  "${common[@]}" --steps 1 --optimizers came,adamw --out "$work/cmp2"
[ ! -e "$work/cmp2/runs/came/log.jsonl" ] || fail "compare trained came before refusing the earlier compare's adamw"
# A run of a compare that stops on non-finite steps is one of its results: the next optimizer still trains, and
# the report (table, summary.json, page) says where and why it stopped.
expect 0 "sgd \| 1e\+30 \| stopped at step [0-9]+ \(non-finite\)" "$tally" compare "${common[@]}" --steps 3 \
  --optimizers sgd,adamw --lrs 1e30,1e-3 --max-bad-steps 1 --grad-clip 0 --out "$work/cmp3"
grep -q "^| adamw | 0.001 | [0-9.]* | [0-9.]* |" "$work/cmp3/report.md" || fail "compare: adamw not reported after sgd stopped"
grep -q "Runs that stopped before their last step" "$work/cmp3/report.md" || fail "compare: no note of the stopped run"
grep -q '"stopped": "training stopped: 1 non-finite steps in a row' "$work/cmp3/summary.json" ||
  fail "compare: summary.json does not say the run stopped"
[ -f "$work/cmp3/report.html" ] || fail "compare: no page after a run stopped"
# inspect of a comparison's directory names its runs.
expect 1 "holds no complete checkpoint \(it is a comparison: inspect one of its runs, .*cmp3/runs/adamw, .*cmp3/runs/sgd\)" \
  "$tally" inspect "$work/cmp3"
# Interrupted (SIGINT): the run in progress saves and is reported as interrupted, the optimizers not reached are
# named as not run; exit 0.
"$tally" compare "${common[@]}" --steps 100000 --optimizers came,adamw --out "$work/cmpint" >"$work/cmpint.log" 2>&1 &
pid=$!
for _ in $(seq 1 150); do grep -q "^step 1/" "$work/cmpint.log" 2>/dev/null && break; sleep 0.2; done
grep -q "^step 1/" "$work/cmpint.log" || { kill -KILL "$pid"; fail "compare did not start: $(tail -3 "$work/cmpint.log")"; }
kill -INT "$pid"
wait "$pid" || fail "an interrupted compare exited $?: $(tail -3 "$work/cmpint.log")"
grep -q "^- came: interrupted on request at step [0-9]* of 100000 (continue the comparison: tally compare --resume" \
  "$work/cmpint/report.md" || fail "interrupted compare: $(tail -4 "$work/cmpint/report.md")"
grep -q "^- adamw: not run" "$work/cmpint/report.md" || fail "interrupted compare: adamw not named as not run"
grep -q '"stopped": "not run: the comparison was interrupted before it"' "$work/cmpint/summary.json" ||
  fail "interrupted compare: summary.json does not name adamw"
# ... and --resume continues it: the interrupted run from its checkpoint, the one not reached from the start; the
# rows of both, every step of each in its log once. Resumed again, nothing trains and the rows are kept.
at=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['steps'])" "$work/cmpint/summary.json")
expect 2 "steps 1: the run of came stopped at step $at of its 100000; give --steps (of at least|above) $at" "$tally" \
  compare --resume "$work/cmpint" --steps 1
expect 2 "--optimizers with --resume" "$tally" compare --resume "$work/cmpint" --optimizers adamw
expect 1 "no compare.json there: it is a run of the comparison in '.*cmpint': continue that with tally compare --resume" \
  "$tally" compare --resume "$work/cmpint/runs/came"
# Flags that shape training stay as the comparison began (every run alike): refused, nothing changed.
before=$(md5sum <"$work/cmpint/compare.json")
expect 2 "--batch 4 with --resume: the comparison's runs train with --batch 2" "$tally" compare --resume "$work/cmpint" \
  --batch 4 --total-batch 64 --steps $((at + 2))
[ "$(md5sum <"$work/cmpint/compare.json")" = "$before" ] || fail "a refused resume changed compare.json"
# A run killed before its first checkpoint (here: a log and nothing else) starts anew, its log kept aside.
mkdir -p "$work/cmpint/runs/adamw" && echo '{"step":1,"loss":10}' >"$work/cmpint/runs/adamw/log.jsonl"
expect 0 "resumed from .*cmpint/runs/came/step-0*$at at step $at" "$tally" compare --resume "$work/cmpint" \
  --steps $((at + 2))
grep -q "^| came | 0.001 | [0-9.]* | [0-9.]* |" "$work/cmpint/report.md" &&
  grep -q "^| adamw | 0.0015 | [0-9.]* | [0-9.]* |" "$work/cmpint/report.md" &&
  ! grep -q "stopped before" "$work/cmpint/report.md" || fail "resumed compare: $(cat "$work/cmpint/report.md")"
for o in came adamw; do
  logged=$(grep -c '"grad_norm"' "$work/cmpint/runs/$o/log.jsonl")
  [ "$logged" = $((at + 2)) ] || fail "resumed compare: $o logged $logged steps, not $((at + 2))"
done
ls "$work/cmpint/runs/adamw/log.killed-before-checkpoint-"*.jsonl >/dev/null 2>&1 || fail "the killed run's log was not kept"
before=$(cat "$work/cmpint"/runs/{came,adamw}/log.jsonl "$work/cmpint/summary.json" | md5sum)
expect 0 "=== adamw \(lr 0.0015\): finished at step $((at + 2)) before; kept" "$tally" compare --resume "$work/cmpint"
[ "$(cat "$work/cmpint"/runs/{came,adamw}/log.jsonl "$work/cmpint/summary.json" | md5sum)" = "$before" ] ||
  fail "a compare resumed after its last step changed its runs or rows"
# Killed after a run's last checkpoint, before its row was written: the row comes from the run's log.
cp "$work/cmpint/report.md" "$work/report-before.md" && rm "$work/cmpint/summary.json"
expect 0 "=== came \(lr 0.001\): finished at step $((at + 2)) before; kept" "$tally" compare --resume "$work/cmpint"
for o in came adamw; do
  [ "$(grep "^| $o " "$work/cmpint/report.md" | cut -d'|' -f2-5)" = "$(grep "^| $o " "$work/report-before.md" | cut -d'|' -f2-5)" ] ||
    fail "$o's row rebuilt from its log: $(grep "^| $o " "$work/cmpint/report.md") against $(grep "^| $o " "$work/report-before.md")"
done
# A new comparison never writes over files it did not write; one that trained nothing is begun again.
mkdir -p "$work/cmpmine" && echo mine >"$work/cmpmine/report.md"
expect 1 "holds a report.md that no comparison started there wrote" "$tally" compare "${common[@]}" --steps 1 \
  --optimizers sgd --out "$work/cmpmine"
[ "$(cat "$work/cmpmine/report.md")" = mine ] || fail "compare replaced someone's report.md"
expect 1 "out of memory" env TALLY_MEMORY_LIMIT=30M "$tally" compare "${common[@]}" --steps 1 --optimizers sgd \
  --out "$work/cmpoom"
expect 0 "report: " "$tally" compare "${common[@]}" --steps 1 --optimizers sgd --out "$work/cmpoom"
echo "cli reliability: ok"
