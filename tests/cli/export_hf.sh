#!/usr/bin/env bash
# End to end with the executable: `tally export --format hf` of a trained run writes a Hugging Face model directory
# (weights, config.json with the run's dropout, generation_config.json, GPT-2's tokenizer files) that eval, sample and
# --init read back as the same model; --dtype bf16; an export never clobbers a directory holding other files; bad
# combinations of flags exit 2; a model's own layer-norm epsilon survives training, checkpoints, resume and export. (Field-by-field and logit checks against transformers: tests/models/hf_export.cpp.)
set -uo pipefail
tally="$1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
common=(--model tiny --batch 2 --seq 16 --threads 1 --val-batches 1 --eval-every 0 --warmup 1)

"$tally" train "${common[@]}" --steps 2 --dropout 0.1 --out "$work/run" >"$work/o" 2>&1 || fail "train: $(tail -3 "$work/o")"
"$tally" export --checkpoint "$work/run" --format hf --out "$work/hf" >"$work/o" 2>&1 || fail "export hf: $(cat "$work/o")"
grep -q "wrote $work/hf (hf f32, " "$work/o" || fail "export hf says: $(cat "$work/o")"
for f in model.safetensors config.json generation_config.json vocab.json merges.txt tokenizer_config.json; do
  [ -s "$work/hf/$f" ] || fail "the export has no $f"
done
[ "$(ls "$work/hf" | wc -l)" -eq 6 ] || fail "the export holds more than its six files: $(ls "$work/hf")"
grep -q '"resid_pdrop": 0.1,' "$work/hf/config.json" && grep -q '"embd_pdrop": 0.1,' "$work/hf/config.json" ||
  fail "config.json does not carry the run's dropout: $(cat "$work/hf/config.json")"
grep -q '"attn_pdrop": 0.0,' "$work/hf/config.json" || fail "config.json: attn_pdrop"
grep -q '"dtype": "float32",' "$work/hf/config.json" || fail "config.json: dtype"

# The directory (and its model.safetensors alone) is the same model as the run: the f32 round trip is exact.
eval_of() { "$tally" eval --checkpoint "$1" --data "$work/run/data/val.bin" --batch 2 --seq 16 --batches 3 --json; }
a=$(eval_of "$work/run"); b=$(eval_of "$work/hf"); c=$(eval_of "$work/hf/model.safetensors")
[ "$a" = "$b" ] && [ "$a" = "$c" ] || fail "eval differs: run $a / hf directory $b / its model.safetensors $c"
"$tally" sample --checkpoint "$work/run" --prompt "ROMEO:" --tokens 6 --seed 2 >"$work/s1" || fail "sample run"
"$tally" sample --checkpoint "$work/hf" --prompt "ROMEO:" --tokens 6 --seed 2 >"$work/s2" || fail "sample hf"
cmp -s "$work/s1" "$work/s2" || fail "sampling differs between the run and its export"
"$tally" train "${common[@]}" --steps 1 --init "$work/hf" --out "$work/again" >"$work/o" 2>&1 ||
  fail "--init of the export: $(tail -3 "$work/o")"

# bf16 weights: config.json says so, and the model still loads and evaluates close to the f32 one.
"$tally" export --checkpoint "$work/run" --format hf --dtype bf16 --out "$work/hf16" >"$work/o" 2>&1 || fail "bf16: $(cat "$work/o")"
grep -q '"dtype": "bfloat16",' "$work/hf16/config.json" || fail "bf16 config.json: $(grep dtype "$work/hf16/config.json")"
[ "$(stat -c %s "$work/hf16/model.safetensors")" -lt "$(stat -c %s "$work/hf/model.safetensors")" ] ||
  fail "the bf16 weights are not smaller than the f32 ones"
b16=$(eval_of "$work/hf16") || fail "eval of the bf16 export"
"$tally" export --checkpoint "$work/run" --format safetensors --dtype bf16 --out "$work/m16.safetensors" >/dev/null ||
  fail "safetensors --dtype bf16"
[ "$(eval_of "$work/m16.safetensors")" = "$b16" ] || fail "bf16 safetensors and bf16 hf directory evaluate differently"

# An existing directory: a previous export is replaced; one holding anything else is refused and left alone.
"$tally" export --checkpoint "$work/run" --format hf --out "$work/hf" >/dev/null 2>&1 || fail "export over a previous export"
mkdir "$work/mine" && echo "keep me" >"$work/mine/notes.txt"
"$tally" export --checkpoint "$work/run" --format hf --out "$work/mine" >"$work/o" 2>&1; rc=$?
[ $rc -eq 1 ] || fail "export into a directory with other files: exit $rc"
grep -q "holds 'notes.txt', which a Hugging Face export does not write" "$work/o" || fail "refusal: $(cat "$work/o")"
[ "$(ls -A "$work/mine")" = "notes.txt" ] && [ "$(cat "$work/mine/notes.txt")" = "keep me" ] ||
  fail "the refused directory was changed: $(ls -A "$work/mine")"
"$tally" export --checkpoint "$work/run" --format hf --out "$work/run" >"$work/o" 2>&1 && fail "export into the run directory ran"

# No GPT-2 tokenizer files to be found: the error says where it looked and how to export without them.
mkdir "$work/empty"
TALLY_GPT2_DIR="$work/empty" "$tally" export --checkpoint "$work/run" --format hf --out "$work/notok" >"$work/o" 2>&1
[ $? -eq 1 ] && grep -q "TALLY_GPT2_DIR=$work/empty does not hold encoder.json and vocab.bpe" "$work/o" &&
  grep -q -- "--no-tokenizer" "$work/o" || fail "missing tokenizer files: $(cat "$work/o")"
[ ! -e "$work/notok" ] || fail "a failed export created its directory"
TALLY_GPT2_DIR="$work/empty" "$tally" export --checkpoint "$work/run" --format hf --no-tokenizer --out "$work/notok" \
  >"$work/o" 2>&1 || fail "--no-tokenizer: $(cat "$work/o")"
[ "$(ls "$work/notok" | tr '\n' ' ')" = "config.json generation_config.json model.safetensors " ] ||
  fail "--no-tokenizer wrote: $(ls "$work/notok")"

# Usage errors exit 2.
"$tally" export --checkpoint "$work/run" --format llmc --dtype bf16 --out "$work/x.bin" >"$work/o" 2>&1; [ $? -eq 2 ] ||
  fail "--dtype with llmc should exit 2"
grep -q "llmc or llmc-bf16" "$work/o" || fail "--dtype with llmc: $(cat "$work/o")"
"$tally" export --checkpoint "$work/run" --format hf --dtype f16 --out "$work/x" >/dev/null 2>&1; [ $? -eq 2 ] ||
  fail "--dtype f16 should exit 2"
"$tally" export --checkpoint "$work/run" --format safetensors --no-tokenizer --out "$work/x" >/dev/null 2>&1; [ $? -eq 2 ] ||
  fail "--no-tokenizer without hf should exit 2"
# llm.c export is unchanged by all this.
"$tally" export --checkpoint "$work/hf" --format llmc --out "$work/m.bin" >/dev/null || fail "export llmc from the hf directory"
[ "$(eval_of "$work/m.bin")" = "$a" ] || fail "the llm.c export of the hf directory evaluates differently"
"$tally" export --checkpoint "$work/run" --format hf --out "" >"$work/o" 2>&1; [ $? -eq 2 ] && grep -q "out is empty" "$work/o" ||
  fail "--out '': $(cat "$work/o")"
# A checkpoint's own model.safetensors is read as its checkpoint (its layout is tally's, not Hugging Face's).
ck=$(ls -d "$work/run"/step-* | tail -1)
[ "$(eval_of "$ck/model.safetensors")" = "$a" ] || fail "a checkpoint's model.safetensors evaluates differently"

# A layer-norm epsilon of the model's own (config.json's layer_norm_epsilon): trained with, kept by the checkpoint
# (eval of the run equals its logged validation), resumed without the --init directory, exported to hf, and refused
# by llm.c's format, which has no place for it.
cp -r "$work/hf" "$work/eps"
python3 -c "import json,sys; p=sys.argv[1]; j=json.load(open(p)); j['layer_norm_epsilon']=0.1; json.dump(j,open(p,'w'))" \
  "$work/eps/config.json"
"$tally" train --batch 2 --seq 16 --threads 1 --val-batches 1 --eval-every 0 --warmup 1 --no-shuffle --steps 1 \
  --init "$work/eps" --train "$work/run/data/train.bin" --val "$work/run/data/val.bin" --out "$work/epsrun" >"$work/o" 2>&1 ||
  fail "--init with layer_norm_epsilon 0.1: $(tail -3 "$work/o")"
logged=$(python3 -c "import json,sys; print([json.loads(l)['val_loss'] for l in open(sys.argv[1]) if 'val_loss' in l][-1])" \
  "$work/epsrun/log.jsonl")
evaluated=$("$tally" eval --checkpoint "$work/epsrun" --data "$work/run/data/val.bin" --batch 2 --seq 16 --batches 1 --json |
  python3 -c "import json,sys; print(json.load(sys.stdin)['loss'])")
python3 -c "import sys; a,b=map(float,sys.argv[1:]); assert abs(a-b) <= 1e-6*abs(a), (a,b)" "$logged" "$evaluated" ||
  fail "the checkpoint lost the model's epsilon: logged $logged, evaluated $evaluated"
mv "$work/eps" "$work/eps-moved"
"$tally" train --resume "$work/epsrun" --steps 2 >"$work/o" 2>&1 || fail "resume without the --init directory: $(tail -3 "$work/o")"
"$tally" train --resume "$work/epsrun" --steps 3 --model d4 >"$work/o" 2>&1; [ $? -eq 2 ] &&
  grep -q "the checkpoint holds a GPT-2 L2 NH2 C64 .*model flags given with it ask for --model d4's layers 4" "$work/o" ||
  fail "another model at the resume of an --init run: $(tail -3 "$work/o")"
"$tally" export --checkpoint "$work/epsrun" --format hf --out "$work/eps-out" >/dev/null || fail "export hf of the eps run"
grep -q '"layer_norm_epsilon": 0.1,' "$work/eps-out/config.json" || fail "the export lost the epsilon"
"$tally" export --checkpoint "$work/epsrun" --format llmc --out "$work/eps.bin" >"$work/o" 2>&1 && fail "llmc export of eps 0.1 ran"
grep -q "llm.c's format has none" "$work/o" || fail "llmc refusal: $(cat "$work/o")"
# A run into the export's directory would overwrite its config.json: refused, the export unchanged.
before=$(md5sum <"$work/eps-out/config.json")
"$tally" train "${common[@]}" --steps 1 --init "$work/eps-out" --out "$work/eps-out" >"$work/o" 2>&1 && fail "a run into an export ran"
grep -q "holds a config.json that no tally run wrote (a model's)" "$work/o" || fail "run into an export: $(cat "$work/o")"
[ "$(md5sum <"$work/eps-out/config.json")" = "$before" ] && [ ! -e "$work/eps-out/log.jsonl" ] ||
  fail "a refused run changed the export"
"$tally" export --checkpoint "$work/epsrun" --format hf --out "$work/eps-out" >"$work/o" 2>&1 ||
  fail "the export again, after a refused run: $(cat "$work/o")"
echo "cli export_hf: ok"
