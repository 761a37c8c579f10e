#!/usr/bin/env bash
# End to end with the executable: `tally memory --shapes` on a shape list, a safetensors file, a sharded checkpoint's
# index, with --json, --tensors, --world/--zero; and bad input (a missing file, a corrupt header, a bad shape, flags
# that do not go with --shapes) gives a clear error and exit code, never a crash; and a GPT-2 step planned for a GPU
# (--device cuda), with the bytes its collectives move at 2 ranks. (Byte-exact checks against the reference implementations: tests/train/memory_shapes.cpp.)
set -uo pipefail
tally="$1"
src="$2"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
ref="$src/tests/reference/state_bytes"

# A shape list: every registered optimizer, sorted by state bytes, with its reference and the factoring.
"$tally" memory --shapes "$src/tests/data/gpt2_124m.shapes.json" >"$work/o" 2>&1 || fail "shape list: $(cat "$work/o")"
grep -q "124,439,808 parameters in 148 tensors" "$work/o" || fail "parameter count: $(head -3 "$work/o")"
names=$("$tally" train --help 2>&1 | sed -n 's/^ *--optimizer VALUE *\([a-z0-9 |]*\) (default .*/\1/p' | tr -d '|')
[ -n "$names" ] || fail "no optimizer names in tally train --help"
for name in $names; do
  grep -q "^$name " "$work/o" || fail "optimizer $name is missing from the table"
done
grep -q "^came --came-bf16-m " "$work/o" || fail "no row for CAME's bf16 first moment"
grep -q "^adafactor --no-adafactor-beta1 " "$work/o" || fail "no row for Adafactor without a first moment"
grep -q "^sgd --momentum 0 " "$work/o" || fail "no row for SGD without momentum"
grep -q "factored: last two dims 768x3072" "$work/o" || fail "no factoring note"
grep -q "not factored: 1-D" "$work/o" || fail "no note for vectors"
grep -q "came-pytorch 0.1.3 (came_pytorch.CAME): 499,847,384 bytes" "$work/o" || fail "no reference comparison"
# AdamW's state is 8 bytes a parameter, and the table is sorted largest first.
grep -q "^adamw  *995,518,464 " "$work/o" || fail "AdamW's state: $(grep '^adamw' "$work/o")"
first=$(grep -n "^adamw " "$work/o" | cut -d: -f1); last=$(grep -n "^sgd --momentum 0 " "$work/o" | cut -d: -f1)
[ "$first" -lt "$last" ] || fail "the table is not sorted by bytes"

# A safetensors file (its header only) and a sharded index of the same model give the same figures.
"$tally" memory --shapes "$ref/llama_tiny.safetensors" --json >"$work/a.json" 2>&1 || fail "safetensors: $(cat "$work/a.json")"
"$tally" memory --shapes "$ref/llama_tiny_sharded/model.safetensors.index.json" --json >"$work/b.json" 2>&1 ||
  fail "index: $(cat "$work/b.json")"
grep -q '"format": "safetensors header"' "$work/a.json" || fail "safetensors format"
grep -q '"format": "safetensors index (2 shards)"' "$work/b.json" || fail "index format"
figures() { grep -E '"(state_bytes|total|count)":' "$1"; }
[ "$(figures "$work/a.json")" = "$(figures "$work/b.json")" ] || fail "the safetensors file and its shards differ"
"$tally" memory --shapes "$ref/llama_tiny.safetensors" --tensors --optimizer came >"$work/t" 2>&1 || fail "--tensors"
grep -q "^model.layers.1.mlp.down_proj.weight " "$work/t" || fail "--tensors does not list every tensor"
grep -q "^came --came-bf16-m " "$work/t" || fail "--optimizer came drops its variants"
grep -q "^adamw " "$work/t" && fail "--optimizer came lists adamw"

# ZeRO 1 over 4 ranks: one rank's part, every rank listed.
"$tally" memory --shapes "$ref/conv_experts.json" --world 4 --zero 1 --rank 1 >"$work/z" 2>&1 || fail "zero 1: $(cat "$work/z")"
grep -q "rank 1 of 4 data-parallel ranks, ZeRO 1" "$work/z" || fail "zero 1 header: $(head -3 "$work/z")"
grep -q "f32 training, every rank: its state bytes" "$work/z" || fail "zero 1 per-rank figures"
# SM3 is cut along dim 0, its other accumulators whole on every rank: rank 0 holds experts' index 0 of dim 0 (1 + 16
# + 24 floats), all of 'row' (1 + 16), the temperature, conv.weight's first 2 of 8 (2 + 4 + 3 + 3: pairs, 2 x 36
# elements being the first multiple of 8) and conv.bias (8 elements, one unit of 8); rank 1 the same less 'row''s index,
# the temperature and conv.bias.
grep -q "^  sm3  *316  276  276  276; buffer 7,552$" "$work/z" || fail "zero 1 SM3: $(grep '^  sm3 ' "$work/z")"
# AdamW in units of 8 elements: experts 384 each, 'row' 8, 8, 0, 0, the temperature and conv.bias on rank 0 (whole
# there: they travel in a bucket of their own), conv.weight 72 each; two f32 moments.
grep -q "^  adamw  *3,784  3,712  3,648  3,648; buffer 7,424$" "$work/z" || fail "zero 1 AdamW: $(grep '^  adamw ' "$work/z")"

# Bad input: exit 1 with an error naming the file (and the tensor), or exit 2 for flags; never a crash.
expect_error() {  # code, pattern, args...
  local code="$1" pattern="$2"; shift 2
  "$tally" memory "$@" >"$work/e" 2>&1; local rc=$?
  [ $rc -eq "$code" ] || fail "memory $*: exit $rc, expected $code: $(cat "$work/e")"
  grep -q -- "$pattern" "$work/e" || fail "memory $*: expected '$pattern' in: $(cat "$work/e")"
}
expect_error 1 "'$work/none.safetensors': no such file" --shapes "$work/none.safetensors"
printf '\x20\x00\x00\x00\x00\x00\x00\x00{"w": {"dtype": "F32", "shape"' >"$work/corrupt.safetensors"
expect_error 1 "header length 32 is larger than the" --shapes "$work/corrupt.safetensors"
printf '\x08\x00\x00\x00\x00\x00\x00\x00{broken}' >"$work/badjson.safetensors"
expect_error 1 "is not valid JSON" --shapes "$work/badjson.safetensors"
echo '[{"name": "w", "shape": [768, -3]}]' >"$work/bad.json"
expect_error 1 "tensor 'w' (entry 0): shape \[768,-3\] must hold non-negative integers" --shapes "$work/bad.json"
echo '{"weight_map": {"w": "model-00001-of-00002.safetensors"}}' >"$work/model.safetensors.index.json"
expect_error 1 "shard 'model-00001-of-00002.safetensors'" --shapes "$work/model.safetensors.index.json"
expect_error 2 "--batch, --seq, --total-batch and --device plan" --shapes "$src/tests/data/gpt2_124m.shapes.json" --batch 4
expect_error 2 "--batch, --seq, --total-batch and --device plan" --shapes "$src/tests/data/gpt2_124m.shapes.json" --device cuda
expect_error 2 "--batch, --seq, --total-batch and --device plan" --shapes "$src/tests/data/gpt2_124m.shapes.json" \
  --total-batch 512
expect_error 2 "--device must be cpu or cuda, got 'tpu'" --model tiny --batch 2 --seq 32 --device tpu
expect_error 2 "--model is for a GPT-2 model" --shapes "$src/tests/data/gpt2_124m.shapes.json" --model tiny
expect_error 2 "--tensors goes with --shapes" --model tiny --tensors
expect_error 2 "unknown optimizer 'no-such-optimizer'" --shapes "$src/tests/data/gpt2_124m.shapes.json" --optimizer no-such-optimizer
# A step planned for a GPU, without one: the same tensors as the CPU's step, plus the CUDA kernels' scratch and
# cuBLAS's workspace (32 MiB, kept); equal to the GPU's measured bytes (tests/cuda/test_cuda_gpt2.cpp).
plan_total() {  # device -> the adamw step's planned peak, requested bytes
  "$tally" memory --model tiny --batch 2 --seq 32 --optimizer adamw --device "$1" --json >"$work/plan-$1.json" 2>&1 ||
    fail "memory --device $1: $(cat "$work/plan-$1.json")"
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["optimizers"]["adamw"]["total"])' "$work/plan-$1.json"
}
cpu_total=$(plan_total cpu) cuda_total=$(plan_total cuda)
[ "$cuda_total" -ge $((cpu_total + 33554432)) ] || fail "the CUDA plan ($cuda_total B) lacks cuBLAS's workspace over the CPU's ($cpu_total B)"
grep -q '"device": "cuda"' "$work/plan-cuda.json" || fail "the CUDA plan does not say it is one"
# Bytes handed to the collectives per step at 2 ranks: ZeRO 0 all-reduces the gradients in the reduce dtype (f32 unless
# --reduce-dtype bf16); ZeRO 1 reduce-scatters them so and all-gathers the parameters in their own dtype (bf16
# parameters in 2 bytes, not 4). Every step also sums the loss, the gradient norm's squares and the ranks' stop request
# (three doubles, 24 bytes), left out of the comparisons.
comm_bytes() {  # dtype zero [reduce dtype] -> comm_bytes_per_step of rank 0's AdamW step, less the 24 bytes
  "$tally" memory --model tiny --batch 2 --seq 32 --optimizer adamw --device cuda --dtype "$1" --world 2 --zero "$2" \
    --reduce-dtype "${3:-f32}" --json >"$work/comm.json" 2>&1 || fail "memory --world 2 --zero $2: $(cat "$work/comm.json")"
  python3 -c 'import json,sys; d = json.load(open(sys.argv[1])); assert d["reduce_dtype"] == sys.argv[2]
print(d["optimizers"]["adamw"]["comm_bytes_per_step"] - 24)' "$work/comm.json" "${3:-f32}" || fail "memory --json: $*"
}
reduce=$(comm_bytes f32 0)
[ "$(comm_bytes bf16 0)" -eq "$reduce" ] || fail "bf16 gradients should be summed as f32: $(comm_bytes bf16 0) vs $reduce"
[ "$(comm_bytes f32 1)" -eq $((2 * reduce)) ] || fail "ZeRO 1 f32: $(comm_bytes f32 1), expected $((2 * reduce))"
[ "$(comm_bytes bf16 1)" -eq $((3 * reduce / 2)) ] || fail "ZeRO 1 bf16: $(comm_bytes bf16 1), expected $((3 * reduce / 2))"
[ "$(comm_bytes bf16 0 bf16)" -eq $((reduce / 2)) ] || fail "bf16 sums: $(comm_bytes bf16 0 bf16), expected $((reduce / 2))"
[ "$(comm_bytes bf16 1 bf16)" -eq "$reduce" ] || fail "ZeRO 1, bf16 sums: $(comm_bytes bf16 1 bf16), expected $reduce"
# The table says so too, in its last column.
"$tally" memory --model tiny --batch 2 --seq 32 --optimizer adamw --device cuda --world 2 >"$work/comm.txt" 2>&1 ||
  fail "memory --world 2: $(cat "$work/comm.txt")"
grep -q "^adamw .* $(python3 -c "print(f'{$reduce + 24:,}')") B *[0-9]*$" "$work/comm.txt" ||
  fail "the table lacks the communication bytes: $(grep '^adamw' "$work/comm.txt")"
echo "cli memory_shapes: ok"
