#!/usr/bin/env bash
# End to end over processes (mpirun --oversubscribe, root allowed): the distributed unit cases at 2 and 3 ranks; a
# 2-rank run equals one process accumulating 2 micro-batches (the same windows of data in the same order) within
# float rounding (with dropout too), ZeRO 1 equals ZeRO 0, memory and communication bytes equal their plans, a rerun
# is bit-identical; a checkpoint of 2 ranks resumes bit-exactly at 2 and continues at 1; shuffled, 2 ranks equal one
# process too and a 2-rank checkpoint continues at 1 on the same batches; ranks started with different flags (or
# the same flags naming different data) are
# refused naming the flag; a rank that fails or dies ends the job with a clear error in bounded time and the last
# checkpoint stays loadable; eval shares its batches over the ranks, sample runs on rank 0; a compare of 2 ranks
# continues in one process. Skipped, saying so, where MPI is not installed or tally was built without it.
set -uo pipefail
tally="$1"
tests_bin="$(dirname "$tally")/tally_tests"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
if ! command -v mpirun >/dev/null; then echo "cli distributed: SKIPPED (no mpirun: scripts/install-deps.sh installs openmpi-bin)"; exit 77; fi
# The help is read whole before matching (grep -q stops at the first match; under pipefail the writer's SIGPIPE
# would fail the test at random).
help=$("$tally" memory --help 2>&1)
grep -q -- "--world" <<<"$help" || fail "tally has no data-parallel flags"
# Under AddressSanitizer (scripts/test-sanitize.sh): OpenMPI's libraries keep some memory for the life of the
# process, and LeakSanitizer's fast unwinder stops at their frames (no frame pointers), so only the slow one sees
# that OpenMPI allocated it (scripts/lsan-suppressions.txt); tally's own allocations are checked as everywhere.
if [ -n "${ASAN_OPTIONS:-}" ]; then export ASAN_OPTIONS="$ASAN_OPTIONS:fast_unwind_on_malloc=0"; fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
mpi=(timeout 600 mpirun --oversubscribe)
if ! "${mpi[@]}" -np 2 "$tally" train --help >"$work/probe" 2>&1; then
  if grep -q "built without MPI" "$work/probe"; then echo "cli distributed: SKIPPED (tally built without MPI)"; exit 77; fi
  fail "mpirun cannot start tally: $(tail -5 "$work/probe")"
fi

# The distributed unit cases with 2 and 3 ranks (3: uneven cuts).
for n in 2 3; do
  "${mpi[@]}" -np $n "$tests_bin" -ts=distributed >"$work/unit$n.log" 2>&1 ||
    fail "distributed unit cases at $n ranks: $(grep -a -E 'ERROR|logged|max|runtime error|Sanitizer|SUMMARY' "$work/unit$n.log" | head -20)"
done

base=(--model tiny --batch 2 --seq 32 --threads 1 --val-batches 2 --eval-every 0 --warmup 2)
common=("${base[@]}" --no-shuffle)
# "step loss" per training step, from a run's log: its step records, which begin with "grad_norm" (nlohmann writes
# keys in order: grad_norm, loss, ..., step); other records may hold a "loss" key too (the memory record's owners).
losses() { sed -n 's/^{"grad_norm":[^,]*,"loss":\([^,}]*\),.*"step":\([0-9]*\).*/\2 \1/p' "$1/log.jsonl"; }
# Largest relative difference of the losses of two runs.
# Both logs must hold the same steps ("mismatch" otherwise, which rounding() refuses).
worst() {
  paste <(losses "$1") <(losses "$2") | awk 'NF != 4 || $1 != $3 { bad = 1; next }
    { d = $2 - $4; if (d < 0) d = -d; r = d / ($4 < 0 ? -$4 : $4); if (r > m) m = r }
    END { if (bad || NR == 0) print "mismatch"; else printf "%.3g\n", m }'
}
# Whether such a difference is float rounding: the sums run in another order (each rank's, then over the ranks),
# amplified a little by a few adaptive steps.
rounding() { awk -v w="$1" 'BEGIN { exit !(w ~ /^[0-9.e+-]+$/ && w + 0 <= 1e-5) }'; }
# Cuts a run's log back to its records up to step $2, as it was when the checkpoint of that step was written.
log_up_to() {
  head -n "$(grep -n "\"step\":$2," "$1/log.jsonl" | tail -1 | cut -d: -f1)" "$1/log.jsonl" >"$work/log.cut" &&
    mv "$work/log.cut" "$1/log.jsonl"
}

# What rank 0's first step handed to the collectives, from its log: "collectives measured, predicted, bytes measured,
# predicted" (the optimizers' own sums over the ranks, and the loss, norm and stop request's three doubles, included).
comm() {
  sed -n 's/.*"collectives_measured":\([0-9]*\),"collectives_predicted":\([0-9]*\),"comm_bytes_measured":\([0-9]*\),"comm_bytes_predicted":\([0-9]*\).*/\1 \2 \3 \4/p' \
    "$1/log.jsonl"
}
# Every optimizer the binary offers (its --optimizer choices), so that a new one is covered without editing this list.
optimizers=$("$tally" train --help | sed -n 's/^ *--optimizer VALUE *\(.*\) (default.*/\1/p' | tr -d '|')
[ "$(echo $optimizers | wc -w)" -ge 6 ] || fail "could not read the optimizers from tally train --help: '$optimizers'"
for opt in $optimizers; do
  "$tally" train "${common[@]}" --optimizer $opt --steps 6 --total-batch 128 --out "$work/one-$opt" >"$work/o" 2>&1 ||
    fail "$opt, one process: $(tail -3 "$work/o")"
  for zero in 0 1; do
    "${mpi[@]}" -np 2 "$tally" train "${common[@]}" --optimizer $opt --steps 6 --zero $zero --out "$work/two-$opt-$zero" \
      >"$work/o" 2>&1 || fail "$opt, 2 ranks, zero $zero: $(tail -5 "$work/o")"
    [ "$(losses "$work/two-$opt-$zero" | wc -l)" -eq 6 ] || fail "$opt zero $zero: 6 steps expected in the log"
    w=$(worst "$work/two-$opt-$zero" "$work/one-$opt")
    rounding "$w" || fail "$opt zero $zero: losses differ from one process by $w (relative)"
    grep -q '"memory_difference":0' "$work/two-$opt-$zero/log.jsonl" || fail "$opt zero $zero: rank 0's memory differs from its plan"
    comm "$work/two-$opt-$zero" | awk '{ ok = $1 == $2 && $3 == $4 && $1 > 0 && $3 > 0 } END { exit !ok }' ||
      fail "$opt zero $zero: communication (collectives, bytes) differs from the prediction: $(comm "$work/two-$opt-$zero")"
  done
done
# An inspected ZeRO-1 CAME step (--log-optim 1) gathers every rank's confidence factors on rank 0: planned too, owner
# by owner.
"${mpi[@]}" -np 2 "$tally" train "${common[@]}" --optimizer came --steps 2 --zero 1 --log-optim 1 \
  --out "$work/two-came-inspected" >"$work/o" 2>&1 || fail "came zero 1 --log-optim 1: $(tail -5 "$work/o")"
python3 - "$work/two-came-inspected/log.jsonl" <<'PY' || fail "came zero 1 --log-optim 1: measured is not the plan"
import json, sys
m = next(r for r in map(json.loads, open(sys.argv[1])) if "memory" in r)["memory"]
assert any(k.endswith(":gathered") for k in m["predicted"]["owners"]["other"]), m["predicted"]["owners"]["other"]
assert m["predicted"] == m["measured"], [k for k in m["predicted"] if m["predicted"][k] != m["measured"].get(k)]
PY
# ZeRO 1 CAME completes its sums over the ranks (two rounds per matrix; its vectors stay whole on one rank): more
# collectives than AdamW's, whose ZeRO-1 step needs none of its own.
read -r came_calls _ < <(comm "$work/two-came-1")
read -r adamw_calls _ < <(comm "$work/two-adamw-1")
[ "$came_calls" -gt "$adamw_calls" ] || fail "ZeRO 1: CAME's $came_calls collectives a step, AdamW's $adamw_calls"
# Dropout: each rank's micro-batch draws the masks one process accumulating them draws for it.
"$tally" train "${common[@]}" --dropout 0.1 --optimizer adamw --steps 4 --total-batch 128 --out "$work/one-drop" \
  >"$work/o" 2>&1 || fail "dropout, one process: $(tail -3 "$work/o")"
"${mpi[@]}" -np 2 "$tally" train "${common[@]}" --dropout 0.1 --optimizer adamw --steps 4 --out "$work/two-drop" \
  >"$work/o" 2>&1 || fail "dropout, 2 ranks: $(tail -3 "$work/o")"
w=$(worst "$work/two-drop" "$work/one-drop")
rounding "$w" || fail "dropout: 2 ranks' losses differ from one process's by $w (relative)"
cmp -s <(losses "$work/one-drop") <(losses "$work/one-adamw" | head -4) && fail "dropout 0.1 changed nothing"

# Gradients summed in bf16 (--reduce-dtype bf16): half the bytes of the f32 sums (ZeRO 1: 2 bytes an element for the
# gradients, 4 for the f32 parameters gathered); the losses stay within what rounding the gradients to bf16 (2^-9
# relative) moves over 6 AdamW steps (1e-5 here; 1e-4 allowed); ZeRO 0 and 1 agree exactly (a sum of two bf16 values
# rounds the same in either order).
for zero in 0 1; do
  "${mpi[@]}" -np 2 "$tally" train "${common[@]}" --optimizer adamw --steps 6 --zero $zero --reduce-dtype bf16 \
    --out "$work/bf16-sum-$zero" >"$work/o" 2>&1 || fail "--reduce-dtype bf16, zero $zero: $(tail -5 "$work/o")"
  w=$(worst "$work/bf16-sum-$zero" "$work/one-adamw")
  awk -v w="$w" 'BEGIN { exit !(w <= 1e-4) }' || fail "--reduce-dtype bf16, zero $zero: losses differ from one process by $w"
done
cmp -s <(losses "$work/bf16-sum-0") <(losses "$work/bf16-sum-1") || fail "--reduce-dtype bf16: ZeRO 0 and 1 differ"
read -r _ _ m0 p0 < <(comm "$work/bf16-sum-0")
read -r _ _ m1 p1 < <(comm "$work/bf16-sum-1")
read -r _ _ f0 _ < <(comm "$work/two-adamw-0")
[ "$m0" = "$p0" ] && [ "$m1" = "$p1" ] || fail "--reduce-dtype bf16: communication bytes differ from the plan"
# Less the loss, norm and stop request's 24 bytes, the gradients' and parameters' bytes.
m0=$((m0 - 24)) m1=$((m1 - 24)) f0=$((f0 - 24))
[ $((2 * m0)) -eq "$f0" ] && [ $((2 * m1)) -eq $((3 * f0)) ] ||
  fail "--reduce-dtype bf16: $m0 and $m1 bytes a step, expected $((f0 / 2)) and $((3 * f0 / 2)) (f32 sums: $f0)"

# A rerun at the same world is bit-identical.
"${mpi[@]}" -np 2 "$tally" train "${common[@]}" --optimizer came --steps 6 --zero 1 --out "$work/again" >"$work/o" 2>&1 ||
  fail "rerun: $(tail -3 "$work/o")"
cmp -s <(losses "$work/again") <(losses "$work/two-came-1") || fail "a rerun at 2 ranks is not bit-identical"

# Checkpoints: saved at 2 ranks, resumed at 2 (bit-exact) and at 1 (continues).
"${mpi[@]}" -np 2 "$tally" train "${common[@]}" --optimizer came --steps 6 --zero 1 --save-every 3 --out "$work/ck" \
  >"$work/o" 2>&1 || fail "checkpointed run: $(tail -3 "$work/o")"
grep -q '"world": 2' "$work/ck/step-00000003/state.json" || fail "the checkpoint does not record its world"
mkdir -p "$work/alone" && cp -r "$work/ck/step-00000003" "$work/alone/"
cp -r "$work/ck" "$work/ck1"
rm -rf "$work/ck/step-00000006"
log_up_to "$work/ck" 3
"${mpi[@]}" -np 2 "$tally" train --resume "$work/ck/step-00000003" >"$work/o" 2>&1 || fail "resume at 2 ranks: $(tail -3 "$work/o")"
cmp -s <(losses "$work/ck") <(losses "$work/two-came-1") || fail "resuming at 2 ranks is not bit-exact"
rm -rf "$work/ck1/step-00000006"
log_up_to "$work/ck1" 3
"$tally" train --resume "$work/ck1/step-00000003" --out "$work/ck1" >"$work/o" 2>&1 || fail "resume at 1 rank: $(tail -3 "$work/o")"
grep -q "saved by 2 rank(s), continued by 1: the data resumes exactly where it stopped" "$work/o" ||
  fail "resume at 1 rank does not say the world changed"
# In llm.c's order too, one process continues on the batches the 2 ranks would have read: their losses within
# rounding.
w=$(worst "$work/ck1" "$work/two-came-1")
rounding "$w" || fail "--no-shuffle: resumed at 1 rank, losses differ from the 2 ranks' by $w (relative)"
# A checkpoint taken out of its run directory (no config.json beside it) continues with the flags it was saved with:
# the losses of the run it came from, bit for bit.
"${mpi[@]}" -np 2 "$tally" train --resume "$work/alone/step-00000003" --out "$work/alone-run" >"$work/o" 2>&1 ||
  fail "a checkpoint resumed alone: $(tail -3 "$work/o")"
cmp -s <(losses "$work/alone-run") <(losses "$work/two-came-1" | tail -3) ||
  fail "a checkpoint resumed alone did not continue its run: $(losses "$work/alone-run" | tr '\n' ' ')"
"$tally" train --resume "$work/alone/step-00000003" --steps 3 --out "$work/alone-run2" >"$work/o" 2>&1 &&
  fail "a resume with --steps at the checkpoint's step ran"
grep -q "the checkpoint is at step 3 and this run has --steps 3: nothing to train" "$work/o" ||
  fail "--steps at the checkpoint's step: $(tail -3 "$work/o")"

# eval and sample under mpirun: the ranks share the batches out and rank 0 prints the loss once, equal to one
# process's within double rounding (each rank sums its batches, then the ranks' sums are added: another order); at 3
# ranks the 5 batches do not divide evenly. sample, a one-process command, runs on rank 0 alone: one text, the one a
# single process writes.
val="$work/two-came-1/data/val.bin"
[ -f "$val" ] || val=$(ls "$work"/*/data/val.bin | head -1)
ev=(eval --checkpoint "$work/two-came-1" --data "$val" --batch 2 --seq 32 --batches 5 --threads 1 --json)
one=$("$tally" "${ev[@]}") || fail "eval at 1 rank: $one"
for n in 2 3; do
  # stdout alone: under the sanitizers, stderr also holds their reports (the suppressions used).
  "${mpi[@]}" -np $n "$tally" "${ev[@]}" >"$work/ev$n" 2>"$work/ev$n.err" ||
    fail "eval at $n ranks: $(tail -3 "$work/ev$n" "$work/ev$n.err")"
  [ "$(wc -l <"$work/ev$n")" -eq 1 ] || fail "eval at $n ranks printed $(wc -l <"$work/ev$n") lines: $(head -3 "$work/ev$n")"
  python3 - "$one" "$(cat "$work/ev$n")" <<'PY' || fail "eval at $n ranks: $(cat "$work/ev$n"), one process: $one"
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert a["tokens"] == b["tokens"] == 5 * 2 * 32
assert abs(a["loss"] - b["loss"]) <= 1e-12 * abs(a["loss"]), (a, b)
PY
done
sa=(sample --checkpoint "$work/two-came-1" --prompt "ROMEO:" --tokens 8 --seed 3 --threads 1)
"$tally" "${sa[@]}" >"$work/s1" 2>"$work/s1.err" || fail "sample at 1 rank: $(tail -3 "$work/s1.err")"
"${mpi[@]}" -np 2 "$tally" "${sa[@]}" >"$work/s2" 2>"$work/s2.err" || fail "sample at 2 ranks: $(tail -3 "$work/s2.err")"
cmp -s "$work/s1" "$work/s2" || fail "sample at 2 ranks: $(head -c 300 "$work/s2") -- one process: $(head -c 300 "$work/s1")"
# The other one-process commands too: an export under mpirun is written once (two ranks renamed over each other's
# staging directory), and a bad flag is reported once.
"${mpi[@]}" -np 2 "$tally" export --checkpoint "$work/two-came-1" --format hf --out "$work/hf2" >"$work/o" 2>&1 ||
  fail "export at 2 ranks: $(tail -3 "$work/o")"
[ "$(grep -c '^wrote ' "$work/o")" -eq 1 ] || fail "export at 2 ranks: $(cat "$work/o")"
"${mpi[@]}" -np 2 "$tally" inspect --bogus >"$work/o" 2>&1 && fail "inspect --bogus ran"
[ "$(grep -c 'bogus' "$work/o")" -eq 1 ] || fail "a bad flag at 2 ranks: $(cat "$work/o")"

# compare under mpirun: data-parallel runs, printed and written up once, by rank 0.
"${mpi[@]}" -np 2 "$tally" compare "${common[@]}" --steps 2 --optimizers came,adamw --out "$work/cmp" >"$work/o" 2>&1 ||
  fail "compare at 2 ranks: $(tail -3 "$work/o")"
[ "$(grep -c '^| came ' "$work/o")" -eq 1 ] && [ "$(grep -c '^report: ' "$work/o")" -eq 1 ] ||
  fail "compare at 2 ranks printed its table $(grep -c '^| came ' "$work/o") time(s)"
[ -s "$work/cmp/report.html" ] && [ -s "$work/cmp/summary.json" ] || fail "compare at 2 ranks wrote no report"
# ... continued by one process with more --steps: each run from its 2-rank checkpoint (world 2 to 1), reported once.
"$tally" compare --resume "$work/cmp" --steps 3 >"$work/o" 2>&1 || fail "compare resumed at 1 rank: $(tail -3 "$work/o")"
[ "$(grep -c 'resumed from .*cmp/runs/.*/step-00000002 at step 2' "$work/o")" -eq 2 ] &&
  python3 -c "import json,sys; assert [r['steps'] for r in json.load(open(sys.argv[1]))] == [3, 3]" \
    "$work/cmp/summary.json" || fail "compare resumed at 1 rank: $(grep -E 'resumed|^\|' "$work/o")"

# Shuffled (the default order): the ranks deal out the stream of slices one process reads, so 2 ranks accumulating 2
# micro-batches train on the batches of one process accumulating 4 (--total-batch counts all ranks' tokens), and a
# checkpoint of 2 ranks continues at 1 (4 micro-batches: the tokens per step are kept) on the batches the 2 would
# have read next: losses within float rounding in both.
"$tally" train "${base[@]}" --optimizer came --steps 6 --total-batch 256 --out "$work/one-shuf" >"$work/o" 2>&1 ||
  fail "shuffled, one process: $(tail -3 "$work/o")"
"${mpi[@]}" -np 2 "$tally" train "${base[@]}" --optimizer came --steps 6 --total-batch 256 --zero 1 --save-every 3 \
  --out "$work/two-shuf" >"$work/o" 2>&1 || fail "shuffled, 2 ranks: $(tail -3 "$work/o")"
grep -q "2 micro-batch(es) per step" "$work/o" || fail "--total-batch 256 at 2 ranks: $(grep micro-batch "$work/o")"
"${mpi[@]}" -np 2 "$tally" train "${base[@]}" --steps 1 --total-batch 192 --out "$work/bad-total" >"$work/o" 2>&1 &&
  fail "--total-batch 192 at 2 ranks of 64 tokens ran"
grep -q "must be a positive multiple of B\*T = 64 x 2 ranks = 128" "$work/o" || fail "total-batch message: $(tail -3 "$work/o")"
w=$(worst "$work/two-shuf" "$work/one-shuf")
rounding "$w" || fail "shuffled: 2 ranks' losses differ from one process's by $w (relative)"
rm -rf "$work/two-shuf/step-00000006"
log_up_to "$work/two-shuf" 3
"$tally" train --resume "$work/two-shuf/step-00000003" --out "$work/two-shuf" >"$work/o" 2>&1 ||
  fail "shuffled, resume at 1 rank: $(tail -3 "$work/o")"
grep -q "the data resumes exactly where it stopped" "$work/o" || fail "resume message: $(grep resumed "$work/o")"
grep -q "4 micro-batch(es) per step" "$work/o" || fail "resumed at 1 rank: $(grep micro-batch "$work/o")"
[ "$(losses "$work/two-shuf" | wc -l)" -eq 6 ] || fail "shuffled resume: 6 steps expected in the log"
w=$(worst "$work/two-shuf" "$work/one-shuf")
rounding "$w" || fail "shuffled: resumed at 1 rank, losses differ by $w (relative)"

# Ranks that may run on the same CPUs share them out: unbound (--bind-to none), without --threads or OMP_NUM_THREADS,
# each of 2 ranks takes half of the CPUs (rank 0, which prints, the larger half), not one thread per CPU each; a
# --threads or an OMP_NUM_THREADS given is kept.
unbound=(--model tiny --batch 2 --seq 32 --val-batches 1 --eval-every 0 --steps 1)
cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc itself honours those two
half=$(((cpus + 1) / 2))
env -u OMP_NUM_THREADS "${mpi[@]}" --bind-to none -np 2 "$tally" train "${unbound[@]}" --out "$work/unbound" >"$work/o" 2>&1 ||
  fail "an unbound 2-rank run: $(tail -3 "$work/o")"
grep -q ", $half threads (" "$work/o" || fail "2 unbound ranks on $cpus CPUs should take $half threads: $(grep threads "$work/o")"
OMP_NUM_THREADS=3 "${mpi[@]}" --bind-to none -np 2 "$tally" train "${unbound[@]}" --out "$work/unbound-env" >"$work/o" 2>&1 &&
  grep -q ", 3 threads (" "$work/o" || fail "OMP_NUM_THREADS=3 not kept: $(grep threads "$work/o")"
env -u OMP_NUM_THREADS "${mpi[@]}" --bind-to none -np 2 "$tally" train "${unbound[@]}" --threads 3 --out "$work/unbound-flag" \
  >"$work/o" 2>&1 && grep -q ", 3 threads (" "$work/o" || fail "--threads 3 not kept: $(grep threads "$work/o")"

# Ranks started differently are refused, naming the flag.
"${mpi[@]}" -np 1 "$tally" train "${common[@]}" --steps 2 --lr 1e-3 --out "$work/mix" : \
  -np 1 "$tally" train "${common[@]}" --steps 2 --lr 2e-3 --out "$work/mix" >"$work/o" 2>&1 && fail "mismatched ranks ran"
grep -q 'different configurations (1 of 2 differ from rank 0); rank 1 has --lr "2e-3" (rank 0: "1e-3")' "$work/o" ||
  fail "mismatch message: $(tail -5 "$work/o")"
# Ranks given different --text are refused before either tokenizes (both would write one OUT/data at once).
echo "the first rank's text" >"$work/ta.txt" && echo "the second rank's text" >"$work/tb.txt"
"${mpi[@]}" -np 1 "$tally" train "${base[@]}" --text "$work/ta.txt" --steps 1 --out "$work/mixtext" : \
  -np 1 "$tally" train "${base[@]}" --text "$work/tb.txt" --steps 1 --out "$work/mixtext" >"$work/o" 2>&1 &&
  fail "ranks of different --text ran"
grep -q "different configurations (1 of 2 differ from rank 0); rank 1 has --text \"$work/tb.txt\"" "$work/o" ||
  fail "different --text: $(tail -5 "$work/o")"
[ ! -e "$work/mixtext/data" ] || fail "ranks of different --text tokenized: $(ls -A "$work/mixtext/data")"
# The same flags naming different data (a relative path, each rank in a directory of its own): refused, naming it.
mkdir -p "$work/da" "$work/db"
python3 - "$work" <<'PY'
import struct, sys
for d, n in (("da", 4000), ("db", 4100)):
    for split, count in (("train", n), ("val", 2000)):
        header = [20240520, 1, count] + [0] * 253
        with open(f"{sys.argv[1]}/{d}/{split}.bin", "wb") as f:
            f.write(struct.pack("<256i", *header))
            f.write(struct.pack(f"<{count}H", *[(i * 7) % 50000 for i in range(count)]))
PY
"${mpi[@]}" -np 1 -wdir "$work/da" "$(realpath "$tally")" train "${base[@]}" --train train.bin --val val.bin --steps 1 \
  --out "$work/mixdata" : -np 1 -wdir "$work/db" "$(realpath "$tally")" train "${base[@]}" --train train.bin --val val.bin --steps 1 --out "$work/mixdata" \
  >"$work/o" 2>&1 && fail "ranks reading different data ran"
grep -q 'read different data (1 of 2 differ from rank 0); rank 1 has training data "4100 tokens in 1 shard(s)' "$work/o" ||
  fail "different data: $(tail -c 1500 "$work/o")"
# Ranks failing alike report once: rank 0's report ends the job before the others' (a flag, a run in the way). The
# other rank waits 5 s before it reports; both fail right after MPI_Init lines them up, so rank 0's abort ends it
# long before.
"${mpi[@]}" -np 2 "$tally" train "${common[@]}" --steps -1 --out "$work/neg" >"$work/o" 2>&1 && fail "--steps -1 ran"
[ "$(grep -c "must be positive" "$work/o")" = 1 ] && grep -q "(rank 0 of 2): --batch, --seq and --steps" "$work/o" ||
  fail "a flag error under mpirun, not reported once by rank 0: $(grep "must be" "$work/o")"

# A rank that fails (out of memory at step 3 on rank 1 only) ends the job: its error, nothing hangs.
"${mpi[@]}" -np 1 "$tally" train "${common[@]}" --steps 6 --save-every 2 --out "$work/fault" : \
  -np 1 -x TALLY_FAULT_OOM_AT_STEP=3 "$tally" train "${common[@]}" --steps 6 --save-every 2 --out "$work/fault" \
  >"$work/o" 2>&1 && fail "a failing rank did not fail the job"
grep -q "(rank 1 of 2): error: out of memory" "$work/o" || fail "the failing rank's error is missing: $(tail -5 "$work/o")"
"$tally" inspect "$work/fault" >/dev/null 2>&1 || fail "the last checkpoint before the failure does not load"

# A rank that dies (SIGKILL) ends the job within the timeout.
cat >"$work/rank.sh" <<EOF
#!/usr/bin/env bash
[ "\${OMPI_COMM_WORLD_RANK:-0}" = 1 ] && echo \$\$ > "$work/rank1.pid"
exec "$tally" "\$@"
EOF
chmod +x "$work/rank.sh"
"${mpi[@]}" -np 2 "$work/rank.sh" train "${common[@]}" --steps 100000 --out "$work/dies" >"$work/dies.log" 2>&1 &
job=$!
for _ in $(seq 1 150); do grep -q "^step 1/\|step 1/" "$work/dies.log" 2>/dev/null && [ -s "$work/rank1.pid" ] && break; sleep 0.2; done
kill -KILL "$(cat "$work/rank1.pid")"
for _ in $(seq 1 60); do kill -0 $job 2>/dev/null || break; sleep 1; done
kill -0 $job 2>/dev/null && { kill -KILL $job; fail "the job did not end within 60 s of a rank dying"; }
wait $job && fail "the job succeeded although a rank died"

# A stop request (SIGTERM) that reaches one rank alone: it travels with the step's loss, every rank stops after the
# same step, rank 0 saves and the job exits 0 (a rank stopping alone would leave the others waiting in a collective).
rm -f "$work/rank1.pid"
"${mpi[@]}" -np 2 "$work/rank.sh" train "${common[@]}" --steps 100000 --zero 1 --out "$work/term" >"$work/term.log" 2>&1 &
job=$!
for _ in $(seq 1 150); do grep -q "step 1/" "$work/term.log" 2>/dev/null && [ -s "$work/rank1.pid" ] && break; sleep 0.2; done
kill -TERM "$(cat "$work/rank1.pid")"
for _ in $(seq 1 60); do kill -0 $job 2>/dev/null || break; sleep 1; done
kill -0 $job 2>/dev/null && { kill -KILL $job; fail "SIGTERM to one rank: the job did not end within 60 s"; }
wait $job || fail "SIGTERM to one rank: the job failed: $(tail -5 "$work/term.log")"
grep -q "stopped at step [0-9]* on request" "$work/term.log" || fail "SIGTERM to one rank: $(tail -5 "$work/term.log")"
"$tally" inspect "$work/term" >/dev/null 2>&1 || fail "the checkpoint of a stop request to one rank does not load"

# Rank 0 cannot write a checkpoint (its disk full, simulated on rank 0 alone): the other rank waits for the write and
# stops too, nothing hangs, the checkpoint before stays loadable.
"${mpi[@]}" -np 2 "$tally" train "${common[@]}" --steps 2 --zero 1 --out "$work/full" >"$work/o" 2>&1 ||
  fail "the run before the full disk: $(tail -3 "$work/o")"
timeout 120 mpirun --oversubscribe -np 1 -x TALLY_FAULT_WRITE_AFTER_BYTES=100000 "$tally" train --resume "$work/full" \
  --steps 4 : -np 1 "$tally" train --resume "$work/full" --steps 4 >"$work/o" 2>&1
rc=$?
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "rank 0's full disk: exit $rc -- $(tail -5 "$work/o")"
grep -q "disk is full" "$work/o" || fail "rank 0's full disk: $(tail -5 "$work/o")"
"$tally" inspect "$work/full" >"$work/o" 2>&1 && grep -q "step 2" "$work/o" ||
  fail "rank 0's full disk: the checkpoint of step 2 does not load: $(head -3 "$work/o")"
echo "cli distributed: ok"
