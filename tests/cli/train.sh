#!/usr/bin/env bash
# End to end with the executable: SIGINT finishes the step, saves and exits 0 (a second one stops at once), and
# --resume continues; SIGKILL at random moments (also in the middle of writing a checkpoint) always leaves a loadable
# checkpoint; bad usage exits 2; the memory, inspect, eval, export and sample subcommands work on the run's checkpoint.
set -uo pipefail
tally="$1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
common=(--model tiny --batch 2 --seq 32 --threads 1 --val-batches 1 --eval-every 0 --lr 3e-3 --warmup 2)

# Bad usage: exit 2 with a message.
"$tally" train --no-such-flag >"$work/o" 2>&1; [ $? -eq 2 ] || fail "unknown flag should exit 2"
grep -q "unknown flag --no-such-flag" "$work/o" || fail "unknown flag message: $(cat "$work/o")"
"$tally" train --batch zero >"$work/o" 2>&1; [ $? -eq 2 ] || fail "bad integer should exit 2"
"$tally" train --help >"$work/o" 2>&1; [ $? -eq 0 ] && grep -q -- "--optimizer" "$work/o" || fail "--help"
echo '{"batch": 2, "no_such": 1}' > "$work/bad.json"
"$tally" train --config "$work/bad.json" >"$work/o" 2>&1; [ $? -eq 2 ] && grep -q "unknown flag 'no_such'" "$work/o" || fail "bad config: $(cat "$work/o")"

# OpenMP's idle threads sleep unless the user chose: with OMP_WAIT_POLICY, GOMP_SPINCOUNT and KMP_BLOCKTIME unset (or
# empty), train runs itself again with OMP_WAIT_POLICY=passive (the header names what the run computed under); a
# setting given is kept; through the dynamic loader (/proc/self/exe is then the loader) it runs as started.
quiet=(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u KMP_BLOCKTIME)
"${quiet[@]}" "$tally" train "${common[@]}" --steps 1 --out "$work/wait" >"$work/o" 2>&1 ||
  fail "train with OMP_WAIT_POLICY unset: $(tail -3 "$work/o")"
grep -q "threads (OMP_WAIT_POLICY=passive)" "$work/o" || fail "wait policy not passive by default: $(grep threads "$work/o")"
# A session of one step reports that step's time, said to include its warm-up (not nan).
grep -qE "final: .*, [0-9]+ ms/step \(one step, its warm-up included\)" "$work/o" || fail "one step's ms/step: $(grep final: "$work/o")"
# More --val-batches than the validation data holds: the run says how many it evaluates.
"$tally" train "${common[@]}" --val-batches 100000 --steps 1 --out "$work/val-all" >"$work/o" 2>&1 ||
  fail "train --val-batches 100000: $(tail -3 "$work/o")"
grep -qE "^validation: [0-9]+ batches, not --val-batches 100000: the validation data holds [0-9]+ of 2 x 32" "$work/o" ||
  fail "no note of the validation batches: $(grep -i valid "$work/o")"
# A --log-optim past the last step: said at the start (the run logs no internals).
"$tally" train "${common[@]}" --steps 1 --log-optim 5 --out "$work/log-optim" >"$work/o" 2>&1 ||
  fail "train --log-optim 5: $(tail -3 "$work/o")"
grep -q "^optimizer internals: none will be logged: no step up to 1 is a multiple of --log-optim 5" "$work/o" ||
  fail "no note of --log-optim past the last step: $(grep -i optim "$work/o")"
! grep -q '"optim"' "$work/log-optim/log.jsonl" || fail "internals logged past --steps"
"${quiet[@]}" OMP_WAIT_POLICY= "$tally" train "${common[@]}" --steps 1 --out "$work/wait-empty" >"$work/o" 2>&1 &&
  grep -q "threads (OMP_WAIT_POLICY=passive)" "$work/o" || fail "an empty OMP_WAIT_POLICY: $(grep threads "$work/o")"
"${quiet[@]}" OMP_WAIT_POLICY=active "$tally" train "${common[@]}" --steps 1 --out "$work/wait-active" >"$work/o" 2>&1 &&
  grep -q "threads (OMP_WAIT_POLICY=active)" "$work/o" || fail "OMP_WAIT_POLICY=active not kept: $(grep threads "$work/o")"
"${quiet[@]}" GOMP_SPINCOUNT=1000 "$tally" train "${common[@]}" --steps 1 --out "$work/wait-spin" >"$work/o" 2>&1 &&
  grep -q "threads (GOMP_SPINCOUNT=1000)" "$work/o" || fail "GOMP_SPINCOUNT not kept: $(grep threads "$work/o")"
loader=$(ldd "$tally" 2>/dev/null | awk '/ld-linux/ { print $1 }' | head -1)
if [ -x "$loader" ]; then
  "${quiet[@]}" "$loader" "$tally" train "${common[@]}" --steps 1 --out "$work/wait-loader" >"$work/o" 2>&1 &&
    grep -q "threads (OMP_WAIT_POLICY unset)" "$work/o" || fail "through the dynamic loader: $(tail -3 "$work/o")"
fi

# SIGINT: finish the step, checkpoint, exit 0; then resume to the end.
"$tally" train "${common[@]}" --steps 100000 --out "$work/int" >"$work/int.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "^step 1/" "$work/int.log" 2>/dev/null && break; sleep 0.2; done
kill -INT $pid; wait $pid; rc=$?
[ $rc -eq 0 ] || fail "SIGINT exit code $rc: $(tail -5 "$work/int.log")"
grep -q "stopped at step" "$work/int.log" || fail "no stop message: $(tail -5 "$work/int.log")"
compgen -G "$work/int/step-*" >/dev/null || fail "no checkpoint after SIGINT"
last=$(ls "$work/int" | grep "^step-" | sort | tail -1); last=$((10#${last#step-}))
"$tally" train --resume "$work/int" --steps $((last + 2)) >"$work/res.log" 2>&1 || fail "resume failed: $(tail -5 "$work/res.log")"
grep -q "resumed from" "$work/res.log" || fail "no resume message"
last_int=$((last + 2))

# A hangup (the terminal closed) stops as SIGINT does, with a checkpoint; under nohup the run goes on. (Where this
# script itself runs with hangups ignored, under nohup, tally inherits that and the first case cannot be made.)
hup_ignored=$(( 0x$(awk '/^SigIgn:/ { print $2 }' /proc/$$/status) & 1 ))
if [ "$hup_ignored" -eq 0 ]; then
  "$tally" train "${common[@]}" --steps 100000 --out "$work/hup" >"$work/hup.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do grep -q "^step 1/" "$work/hup.log" 2>/dev/null && break; sleep 0.2; done
  kill -HUP $pid; wait $pid; rc=$?
  [ $rc -eq 0 ] && grep -q "stopped at step" "$work/hup.log" && compgen -G "$work/hup/step-*" >/dev/null ||
    fail "SIGHUP: exit $rc: $(tail -3 "$work/hup.log")"
else
  echo "cli train: SIGHUP case skipped (this shell ignores hangups)"
fi
# A reader of its output that goes away (tally train | head) stops it as a request does: after the step, with a
# checkpoint, instead of a death by SIGPIPE that saves nothing.
"$tally" train "${common[@]}" --steps 100000 --log-every 1 --out "$work/pipe" 2>"$work/pipe.err" | head -c 1 >/dev/null
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] && grep -q "stopping after this step" "$work/pipe.err" && compgen -G "$work/pipe/step-*" >/dev/null ||
  fail "a closed pipe: exit $rc: $(tail -3 "$work/pipe.err")"
nohup "$tally" train "${common[@]}" --steps 40 --out "$work/nohup" >"$work/nohup.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "^step 1/" "$work/nohup.log" 2>/dev/null && break; sleep 0.2; done
kill -HUP $pid; wait $pid; rc=$?
[ $rc -eq 0 ] && [ -d "$work/nohup/step-00000040" ] || fail "SIGHUP under nohup: exit $rc: $(tail -3 "$work/nohup.log")"

# Records lost from the log (edited, or a crash of the machine) are named at a resume, not filled in.
"$tally" train "${common[@]}" --steps 4 --out "$work/gap" >"$work/o" 2>&1 || fail "train --steps 4: $(tail -3 "$work/o")"
python3 - "$work/gap/log.jsonl" <<'PY'
import sys
lines = open(sys.argv[1]).read().splitlines(keepends=True)
open(sys.argv[1], "w").write("".join(l for l in lines if '"step":1,' in l))
PY
"$tally" train --resume "$work/gap" --steps 5 >"$work/o" 2>&1 || fail "resume of a cut log: $(tail -3 "$work/o")"
grep -q "log.jsonl: no record of steps 2-4: its training records end at step 1, and the checkpoint holds step 4" \
  "$work/o" || fail "no note of the steps missing from the log: $(grep log.jsonl "$work/o")"

# A later step directory without its manifest (a save cut short) is named at a resume from the one before.
"$tally" train "${common[@]}" --steps 4 --save-every 2 --keep-last 5 --out "$work/cut" >"$work/o" 2>&1 ||
  fail "train --save-every 2: $(tail -3 "$work/o")"
rm "$work/cut/step-00000004/manifest.json"
"$tally" train --resume "$work/cut" --steps 5 >"$work/o" 2>&1 || fail "resume past a cut save: $(tail -3 "$work/o")"
grep -q "resumed from $work/cut/step-00000002 at step 2 (step-00000004 there has no manifest.json: a save cut short" \
  "$work/o" || fail "the cut save was not named: $(grep resumed "$work/o")"

# What a killed process left half written (a tokenizing's temp shard and its aside directory, a config's temp) goes
# when the next run takes the directory; a live process's would stay.
gone=$(sh -c 'echo $$')
echo partial >"$work/int/data/train.bin.tmp.$gone" && echo partial >"$work/int/config.json.tmp.$gone"
mkdir -p "$work/int/data/.tokenizing-$gone" && echo partial >"$work/int/data/.tokenizing-$gone/train.bin"
echo live >"$work/int/data/val.bin.tmp.$$"
"$tally" train --resume "$work/int" --steps $((last_int + 3)) >"$work/o" 2>&1 || fail "resume: $(tail -3 "$work/o")"
[ -z "$(ls -A "$work/int" "$work/int/data" | grep -E "tmp\.$gone|tokenizing")" ] ||
  fail "a dead process's temporaries stayed: $(ls -A "$work/int" "$work/int/data")"
[ -f "$work/int/data/val.bin.tmp.$$" ] || fail "a live process's temp file was removed"
rm "$work/int/data/val.bin.tmp.$$"

# A file-size limit (ulimit -f) fails the write by name; the process is not killed by SIGXFSZ.
(ulimit -f 200; "$tally" train "${common[@]}" --steps 1 --out "$work/fsize" >"$work/o" 2>&1); rc=$?
[ $rc -eq 1 ] && grep -q "would exceed this process's file-size limit (ulimit -f)" "$work/o" ||
  fail "ulimit -f: exit $rc: $(tail -3 "$work/o")"

# A long step (many micro-batches): the request is acknowledged at once, and a second one stops the run at once,
# without a checkpoint (the last one stays): exit by the signal, no temporary left.
"$tally" train "${common[@]}" --steps 3 --total-batch 256000 --out "$work/twice" >"$work/twice.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "micro-batch" "$work/twice.log" 2>/dev/null && break; sleep 0.2; done
sleep 1
kill -TERM $pid
for _ in $(seq 1 50); do grep -q "stopping after this step" "$work/twice.log" && break; sleep 0.1; done
grep -q "stopping after this step, with a checkpoint (signal again" "$work/twice.log" ||
  fail "a stop request was not acknowledged: $(tail -3 "$work/twice.log")"
kill -TERM $pid; wait $pid; rc=$?
[ $rc -eq 143 ] || fail "a second SIGTERM: exit $rc (expected 143): $(tail -3 "$work/twice.log")"
grep -q "stopping at once, without saving (the run's last checkpoint stays)" "$work/twice.log" ||
  fail "a second SIGTERM said nothing: $(tail -3 "$work/twice.log")"
[ -z "$(ls -A "$work/twice" | grep -E '^(step-|\.tmp)')" ] || fail "a second SIGTERM left: $(ls -A "$work/twice")"

# SIGKILL at random moments while checkpointing every step: the latest checkpoint always loads, and the next round
# continues from it (a round killed before its first checkpoint leaves a log only: the next starts afresh).
for round in 1 2 3; do
  if compgen -G "$work/kill/step-*" >/dev/null; then
    run=(--resume "$work/kill" --steps 100000)
  else
    rm -rf "$work/kill"
    run=("${common[@]}" --steps 100000 --save-every 1 --keep-last 2 --out "$work/kill")
  fi
  "$tally" train "${run[@]}" >"$work/kill.log" 2>&1 &
  pid=$!
  sleep "0.$((RANDOM % 9 + 1))"; sleep $((round))
  kill -KILL $pid; wait $pid 2>/dev/null
  if compgen -G "$work/kill/step-*" >/dev/null; then
    "$tally" inspect "$work/kill" >"$work/insp.log" 2>&1 || fail "checkpoint unreadable after SIGKILL (round $round): $(cat "$work/insp.log")"
  fi
done
"$tally" train --resume "$work/kill" --steps 100000 --max-bad-steps 1 --eval-every 0 >"$work/rk.log" 2>&1 &
pid=$!
# SIGINT once it is training (a slow start, e.g. under the sanitizers, must not meet the default handler).
for _ in $(seq 1 150); do grep -q "^step [0-9]*/" "$work/rk.log" 2>/dev/null && break; sleep 0.2; done
kill -INT $pid; wait $pid || fail "resume after SIGKILL failed: $(tail -5 "$work/rk.log")"

# A run killed after logging steps it had not saved (here: its last checkpoint removed) and resumed with more --steps
# trains them again on the stretched schedule: their first records are set aside, so the log holds each step once.
"$tally" train "${common[@]}" --steps 5 --save-every 3 --keep-last 5 --out "$work/aside" >"$work/o" 2>&1 ||
  fail "train --save-every 3: $(tail -3 "$work/o")"
rm -rf "$work/aside/step-00000005"
"$tally" train --resume "$work/aside" --steps 7 >"$work/o" 2>&1 || fail "resume with records after the checkpoint: $(tail -3 "$work/o")"
grep -q "log.jsonl: the records after step 3 (trained again now), or a line cut short, were moved to $work/aside/log.superseded-after-step-3-" \
  "$work/o" || fail "no note of the records set aside: $(grep -i log "$work/o")"
steps=$(grep -o '^{"grad_norm"[^}]*"step":[0-9]*' "$work/aside/log.jsonl" | grep -o '[0-9]*$' | tr '\n' ' ')
[ "$steps" = "1 2 3 4 5 6 7 " ] || fail "the resumed log's steps: $steps"
aside=$(grep -o '^{"grad_norm"[^}]*"step":[0-9]*' "$work"/aside/log.superseded-after-step-3-*.jsonl | grep -o '[0-9]*$' | tr '\n' ' ')
[ "$aside" = "4 5 " ] || fail "the records set aside: $aside"

# memory --shapes of a checkpoint's model.safetensors: its embedding's padding rows are left out, as training keeps
# no state for them: the state of the model planned by its flags.
shapes=$("$tally" memory --shapes "$work/int/$(ls "$work/int" | grep '^step-' | tail -1)/model.safetensors" \
  --optimizer came --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["optimizers"][0]["f32"]["state_bytes"])')
flags=$("$tally" memory --model tiny --optimizer came --json |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["optimizers"]["came"]["state_bytes"])')
[ -n "$shapes" ] && [ "$shapes" = "$flags" ] || fail "memory --shapes of a checkpoint: $shapes B of state, the model's is $flags B"

# The other subcommands on that run.
"$tally" inspect "$work/int" >"$work/o" 2>&1 || fail "inspect: $(cat "$work/o")"
grep -q "exp_avg_sq_row" "$work/o" || fail "inspect lists no CAME state"
"$tally" inspect "$work/int" --dump transformer.h.0.attn.c_attn.weight:exp_avg --to "$work/m.npy" >/dev/null || fail "inspect --dump"
[ -s "$work/m.npy" ] || fail "no npy written"
"$tally" memory --model gpt2 --json >"$work/mem.json" || fail "memory --json"
grep -q '"state_bytes"' "$work/mem.json" || fail "memory json"
# Mixed precision plans on any build: 2-byte parameters, the f32 master weights in the optimizer state.
"$tally" memory --model tiny --dtype bf16 --batch 2 --seq 32 --json >"$work/mem16.json" || fail "memory --dtype bf16"
grep -q '"master"' "$work/mem16.json" || fail "memory --dtype bf16 plans no master weights"
grep -q '"dtype": "bf16"' "$work/mem16.json" || fail "memory --dtype bf16 json has no dtype"
# Gradient accumulation (--total-batch): memory plans the step train measures, to the byte.
"$tally" train "${common[@]}" --steps 1 --total-batch 128 --optimizer came --out "$work/acc" >"$work/acc.log" 2>&1 ||
  fail "train --total-batch 128: $(tail -3 "$work/acc.log")"
measured=$(grep "total (peak, all at once)" "$work/acc.log" | tail -1 | awk '{print $8}' | tr -d ,)  # predicted, measured, difference
planned=$("$tally" memory --model tiny --batch 2 --seq 32 --total-batch 128 --optimizer came --json |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["optimizers"]["came"]["total"])')
[ -n "$measured" ] && [ "$measured" = "$planned" ] ||
  fail "memory --total-batch 128 plans $planned B, train measured $measured B"
# ... and of five micro-batches (the plan runs two: every later one allocates as the second does), with the held
# bytes too: the run's own check, to the byte in every category.
"$tally" train "${common[@]}" --steps 1 --total-batch 320 --optimizer came --out "$work/acc5" >"$work/acc5.log" 2>&1 ||
  fail "train --total-batch 320: $(tail -3 "$work/acc5.log")"
grep -q '"memory_difference":0,' "$work/acc5/log.jsonl" || fail "5 micro-batches: measured is not the plan"
python3 - "$work/acc5/log.jsonl" <<'PY' || fail "5 micro-batches: a category differs from the plan"
import json, sys
m = next(r for r in map(json.loads, open(sys.argv[1])) if "memory" in r)["memory"]
assert m["predicted"] == m["measured"], [k for k in m["predicted"] if m["predicted"][k] != m["measured"].get(k)]
PY
# The CPU attention's scratch is per thread: memory --threads plans the run of that many threads, to the byte.
"$tally" train "${common[@]}" --steps 1 --threads 3 --out "$work/thr3" >"$work/thr3.log" 2>&1 ||
  fail "train --threads 3: $(tail -3 "$work/thr3.log")"
measured=$(grep "total (peak, all at once)" "$work/thr3.log" | tail -1 | awk '{print $8}' | tr -d ,)
planned=$("$tally" memory --model tiny --batch 2 --seq 32 --threads 3 --optimizer came --json |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["optimizers"]["came"]["total"])')
[ -n "$measured" ] && [ "$measured" = "$planned" ] || fail "memory --threads 3 plans $planned B, train measured $measured B"
"$tally" train --model tiny --dtype bf16 --steps 1 --out "$work/bf16" >"$work/o16" 2>&1 && fail "train --dtype bf16 ran on the CPU"
grep -q "needs --device cuda\|CUDA only" "$work/o16" || fail "train --dtype bf16 on the CPU: unclear error: $(cat "$work/o16")"
"$tally" export --checkpoint "$work/int" --format llmc --out "$work/m.bin" >/dev/null || fail "export llmc"
"$tally" export --checkpoint "$work/int" --format safetensors --out "$work/m.safetensors" >/dev/null || fail "export safetensors"
a=$("$tally" eval --checkpoint "$work/m.bin" --data "$work/int/data/val.bin" --batch 2 --seq 32 --batches 3 --json)
b=$("$tally" eval --checkpoint "$work/m.safetensors" --data "$work/int/data/val.bin" --batch 2 --seq 32 --batches 3 --json)
c=$("$tally" eval --checkpoint "$work/int" --data "$work/int/data/val.bin" --batch 2 --seq 32 --batches 3 --json)
[ "$a" = "$b" ] && [ "$a" = "$c" ] || fail "eval differs between formats: $a / $b / $c"
"$tally" sample --checkpoint "$work/int" --prompt "ROMEO:" --tokens 8 --seed 3 >"$work/s1" || fail "sample"
"$tally" sample --checkpoint "$work/int" --prompt "ROMEO:" --tokens 8 --seed 3 >"$work/s2"
cmp -s "$work/s1" "$work/s2" || fail "sampling is not deterministic for a seed"
printf 'garbage' > "$work/bad.bin"
"$tally" eval --checkpoint "$work/bad.bin" --data "$work/int/data/val.bin" >"$work/o" 2>&1; [ $? -eq 1 ] || fail "corrupt model file should exit 1"
echo "cli train: ok"
