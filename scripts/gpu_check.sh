#!/usr/bin/env bash
# The one prepared check for the GPU machine (a fresh H100/H200 with nvcc, cmake, ninja and g++, nothing
# installable): builds the CUDA backend for sm_90 (Release, only the targets needed), runs the CUDA tests and
# the rest of the suite, compute-sanitizer memcheck on a subset, then the GPU benchmarks; writes the full log
# to $OUT (or ./gpu-check-out) and prints a short table last. Every stage has a time limit (~5 min in all before
# the peers stage).
# Before the device call, on the CPU machine: scripts/gpu_deps.sh (packs OpenBLAS, PCRE2, nlohmann-json,
# doctest and pkgconf into .gpu-carry/), then run this with carry [".gpu-carry"].
# Environment: GPU_CHECK_SKIP="build sanitizer bench full train peers" to leave stages out ("build": use a carried
# .gpu-prebuilt/ if any; with no GPU every GPU stage then skips or fails fast, which checks the script's logic).
# The peer comparison (gpt2 124M, T=1024, bf16, AdamW and CAME, by batch size): tally's bench_gpu_train beside
# bench/peers/torch_compile_gpt2.py, PyTorch eager (bench/peers/torch_gpt2_step.py) and, when LLMC_BIN names
# llm.c's train_gpt2cu (built beforehand from llm.c's own repository; this script builds no peer), llm.c
# (bench/peers/llmc_gpu.py), then tally with cuDNN's fused attention (TALLY_CUDNN_ATTENTION=1) at
# GPU_PEERS_CUDNN_BATCHES ("8 64"), with cuBLASLt's Linear epilogues (TALLY_CUBLASLT_EPILOGUES=1) at
# GPU_PEERS_EPILOGUE_BATCHES ("8 64") and with the head and loss unchunked (--loss-chunk-rows 0) at
# GPU_PEERS_WHOLE_HEAD_BATCHES ("8"). GPU_PEERS_BATCHES (default "8 64 16 32", run in that order), GPU_PEERS_EAGER_BATCHES
# ("8"), GPU_PEERS_COMPILE_BATCHES (as GPU_PEERS_BATCHES), GPU_PEERS_STEPS (10 timed steps after 3 warm-up steps),
# GPU_PEERS_BUDGET (400 s: runs not started by then are skipped and said so; none runs past it by more than 60 s),
# PYTHON (python3) for the peers, GPU_PEAK_TFLOPS (the dense bf16 peak of every MFU; default from the GPU's name).
# Skipping "sanitizer full train", the check should take about 8 minutes (an estimate: build ~1, peers stage up to
# GPU_PEERS_BUDGET + 1).
# came-pytorch travels as a wheel in .whl/ (carry it too); without it the PyTorch CAME rows say skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-$root/gpu-check-out}
mkdir -p "$out"
log=$out/gpu_check.log
: >"$log"
jobs=$(nproc)
skip=" ${GPU_CHECK_SKIP:-} "
t_start=$(date +%s)
summary=()
row() { summary+=("$(printf '%-26s %s' "$1" "$2")"); }
say() { echo "$*" | tee -a "$log"; }
elapsed() { echo "$(($(date +%s) - $1))s"; }
# Last doctest summary line of a log ("test cases: ...").
doctest_line() { grep -E "^\[doctest\] test cases:" "$1" | tail -1 | sed 's/^\[doctest\] //'; }

say "== gpu_check $(date -u +%FT%TZ) in $root"
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 || echo "nvidia-smi failed"
  nvcc --version 2>&1 | tail -2
  cmake --version 2>&1 | head -1
  g++ --version 2>&1 | head -1
  ninja --version 2>&1 | sed 's/^/ninja /'
  command -v compute-sanitizer || echo "no compute-sanitizer"
} 2>&1 | tee -a "$log"
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
row "device" "${gpu_name:-unknown}, $jobs CPU cores"
# The GPU's dense bf16 peak for every MFU below (TFLOP/s; GPU_PEAK_TFLOPS overrides): NVIDIA's figures without
# sparsity, SXM H100 and H200 989, H100 PCIe 756, H100 and H200 NVL 835, A100 312.
case "$gpu_name" in
  *H100*PCIe*) peak_tflops=756 ;;
  *H100*NVL* | *H200*NVL*) peak_tflops=835 ;;
  *A100*) peak_tflops=312 ;;
  *) peak_tflops=989 ;;
esac
peak_tflops=${GPU_PEAK_TFLOPS:-$peak_tflops}
row "MFU peak" "$peak_tflops TFLOP/s dense bf16"

# ---- dependencies: the carried prefix when present, else the system's ----
unpack() {  # archive: tar's xz, or Python's when the image has no xz
  tar -C "$root" -xJf "$1" 2>/dev/null ||
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$1" "$root"
}
for a in deps prebuilt data cudnn-frontend; do
  if [ -f "$root/.gpu-carry/$a.tar.xz" ]; then unpack "$root/.gpu-carry/$a.tar.xz" && say "unpacked .gpu-carry/$a.tar.xz"; fi
done
if ls "$root"/.whl/*.whl >/dev/null 2>&1; then  # came-pytorch travels as a wheel
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$root"/.whl/*.whl >>"$log" 2>&1 &&
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} && say "installed $(cd "$root/.whl" && ls *.whl | tr '\n' ' ')"
fi
export TALLY_OFFLINE=1  # nothing outside the GPU machine can be reached: the data files come carried or not at all
if [ -d "$root/.gpu-shared/data" ]; then  # carried ../shared/data: where the tests and the trainer look for it
  export TALLY_SHARED_DATA=$root/.gpu-shared/data TALLY_GPT2_DIR=$root/.gpu-shared/data/gpt2
  export TALLY_DATA=$root/.gpu-shared/data/tinyshakespeare.txt
  say "data: carried $TALLY_SHARED_DATA"
else
  say "data: none carried (tests that train from text will fail: run scripts/gpu_deps.sh first)"
fi
cmake_args=()
if [ -d "$root/.gpu-deps" ]; then
  deps=$root/.gpu-deps
  export LD_LIBRARY_PATH=$deps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  mkdir -p "$deps/pkgconfig"
  cat >"$deps/pkgconfig/libpcre2-8.pc" <<PC
prefix=$deps
libdir=\${prefix}/lib
includedir=\${prefix}/include
Name: libpcre2-8
Description: PCRE2 (carried)
Version: $(cat "$deps/pcre2-version" 2>/dev/null || echo 10.42)
Libs: -L\${libdir} -lpcre2-8
Cflags: -I\${includedir}
PC
  export PKG_CONFIG_PATH=$deps/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  if ! command -v pkg-config >/dev/null; then
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib exec %s/bin/pkgconf "$@"\n' "$deps" "$deps" >"$deps/bin/pkg-config"
    chmod +x "$deps/bin/pkg-config" "$deps/bin/pkgconf"
    cmake_args+=(-DPKG_CONFIG_EXECUTABLE="$deps/bin/pkg-config")
  fi
  cmake_args+=(-DOPENBLAS_LIBRARY="$deps/lib/libopenblas.so.0" -DCBLAS_INCLUDE_DIR="$deps/include"
               -Dnlohmann_json_DIR="$deps/share/cmake/nlohmann_json" -Ddoctest_DIR="$deps/lib/cmake/doctest")
  say "dependencies: carried prefix $deps"
else
  say "dependencies: system (no .gpu-deps carried)"
fi

# ---- build ----
build=$root/build-gpu
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
t0=$(date +%s)
bin_dir=""
if [[ "$skip" == *" build "* ]]; then
  if [ -x "$root/.gpu-prebuilt/bench_gpu_train" ] || [ -x "$root/.gpu-prebuilt/tally_tests" ]; then
    bin_dir=$root/.gpu-prebuilt
    row "build" "skipped; using carried .gpu-prebuilt"
  else
    row "build" "skipped; no binaries"
  fi
elif timeout 150 cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DTALLY_CUDA=ON \
     -DCMAKE_CUDA_ARCHITECTURES=90 -DTALLY_WERROR=OFF "${cmake_args[@]}" >>"$log" 2>&1 &&
   timeout "${GPU_CHECK_BUILD_TIMEOUT:-240}" cmake --build "$build" -j "$jobs" --target tally tally_tests bench_cuda bench_gpu_train >>"$log" 2>&1; then
  bin_dir=$build
  row "build (sm_90, Release)" "ok in $(elapsed "$t0")"
  row "configured" "$(grep -E '^-- tally: (MPI|cuDNN)' "$log" | sed 's/^-- tally: //' | tr '\n' ';' | sed 's/;$//; s/;/; /g')"
else
  say "!! build failed (see the log above)"
  grep -E "error|Error" "$log" | head -20
  if [ -x "$root/.gpu-prebuilt/tally_tests" ]; then
    bin_dir=$root/.gpu-prebuilt
    row "build (sm_90, Release)" "FAILED in $(elapsed "$t0"); using carried .gpu-prebuilt"
  else
    row "build (sm_90, Release)" "FAILED in $(elapsed "$t0")"
  fi
fi

if [ -n "$bin_dir" ]; then
  tests=$bin_dir/tally_tests
  # ---- CUDA tests ----
  t0=$(date +%s)
  say "== tally_tests -ts=cuda (TALLY_CUDA_SYNC=1: a fault is reported by the kernel that caused it)"
  TALLY_CUDA_SYNC=1 timeout 180 "$tests" -tc="cuda*" --duration=true >"$out/cuda_tests.log" 2>&1
  rc=$?
  cat "$out/cuda_tests.log" >>"$log"
  grep -E "ERROR|FAILED|CHECK|REQUIRE|relative max error|differ" "$out/cuda_tests.log" | head -40
  row "cuda tests" "rc=$rc in $(elapsed "$t0"): $(doctest_line "$out/cuda_tests.log")"

  # ---- the tally command on the GPU: a short bf16 run, its checkpoint evaluated on the GPU and the CPU ----
  if [ -x "$bin_dir/tally" ]; then
    t0=$(date +%s)
    say "== tally train/eval/sample --device cuda (tiny model)"
    cli=$out/cli_work && rm -rf "$cli" && mkdir -p "$cli"
    {
      timeout 60 "$bin_dir/tally" train --model tiny --batch 4 --seq 64 --steps 6 --eval-every 0 --device cuda \
        --dtype bf16 --out "$cli/run" &&
        ev=(eval --checkpoint "$cli/run" --data "$cli/run/data/val.bin" --batch 4 --seq 64 --batches 4 --json) &&
        timeout 60 "$bin_dir/tally" "${ev[@]}" >"$cli/cpu.json" &&
        timeout 60 "$bin_dir/tally" "${ev[@]}" --device cuda >"$cli/cuda.json" &&
        timeout 60 "$bin_dir/tally" "${ev[@]}" --device cuda --dtype bf16 >"$cli/bf16.json" &&
        timeout 60 "$bin_dir/tally" sample --checkpoint "$cli/run" --prompt "ROMEO:" --tokens 8 --device cuda
    } >"$out/cli.log" 2>&1
    rc=$?
    cat "$out/cli.log" >>"$log"
    # f32 on the GPU against the CPU: float rounding (TF32 matmuls allowed: 1e-3 relative); bf16 within 2%.
    verdict=$(python3 - "$cli" <<'PY' 2>&1
import json, sys
d = sys.argv[1]
c, g, b = (json.load(open(f"{d}/{n}.json"))["loss"] for n in ("cpu", "cuda", "bf16"))
ok = abs(g - c) <= 1e-3 * abs(c) and abs(b - c) <= 2e-2 * abs(c)
print(("ok" if ok else "MISMATCH") + f": eval cpu {c:.6f} cuda {g:.6f} cuda-bf16 {b:.6f}")
PY
)
    verdict=$(tail -1 <<<"$verdict")
    row "tally cli on cuda" "rc=$rc in $(elapsed "$t0"): $verdict"
    rm -rf "$cli"
  fi

  # ---- the rest of the suite ----
  if [[ "$skip" != *" full "* ]]; then
    t0=$(date +%s)
    say "== tally_tests -tse=cuda"
    timeout 150 "$tests" -tse=cuda >"$out/other_tests.log" 2>&1
    rc=$?
    cat "$out/other_tests.log" >>"$log"
    row "other tests" "rc=$rc in $(elapsed "$t0"): $(doctest_line "$out/other_tests.log")"
  fi

  # ---- compute-sanitizer memcheck on small cases, exact-size allocations ----
  if [[ "$skip" != *" sanitizer "* ]]; then
    if command -v compute-sanitizer >/dev/null; then
      t0=$(date +%s)
      say "== compute-sanitizer memcheck (TALLY_CUDA_ALLOCATOR=direct)"
      subset="cuda copy*,cuda fill*,cuda op table*,cuda linear*,cuda add_layer_norm*"
      subset+=",cuda: every optimizer*,cuda: CAME steps*,cuda: Adafactor steps*,cuda: CAME and Adafactor*"
      subset+=",cuda: gradient norm*"  # the optimizer kernels (suite optim)
      subset+=",cuda: a ZeRO-1*"  # the ZeRO-1 kernels (cross-rank sums; NCCL itself is not ours to memcheck)
      ops="add,sub,mul,div,softmax,log_softmax,layer_norm,add_layer_norm,embedding,cross_entropy,causal_self_attention,max,dropout,linear,linear_gelu"
      TALLY_CUDA_ALLOCATOR=direct timeout 150 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 99 \
        "$tests" -tc="$subset" -sc="$ops" >"$out/memcheck.log" 2>&1
      rc=$?
      cat "$out/memcheck.log" >>"$log"
      errors=$(grep -E "ERROR SUMMARY" "$out/memcheck.log" | tail -1)
      row "memcheck (subset)" "rc=$rc in $(elapsed "$t0"): ${errors:-no summary} / $(doctest_line "$out/memcheck.log")"
    else
      row "memcheck (subset)" "compute-sanitizer not found"
    fi
  fi

  # ---- benchmarks ----
  if [[ "$skip" != *" bench "* ]] && [ -x "$bin_dir/bench_cuda" ]; then
    t0=$(date +%s)
    say "== bench_cuda"
    timeout 120 "$bin_dir/bench_cuda" >"$out/bench.log" 2>&1
    rc=$?
    cat "$out/bench.log" >>"$log"
    row "bench_cuda" "rc=$rc in $(elapsed "$t0")"
    # CAME's and Adafactor's factored kernels on GPT-2's matrices, one tensor at a time and batched (bench/NOTES.md
    # sections 14 and 17).
    while IFS= read -r line; do
      row "$(echo "${line:2:46}" | sed 's/ *$//')" "$(echo "${line:48}" | tr -s ' ' | sed 's/^ //')"
    done < <(grep -E "^  (CAME|Adafactor) gpt2 matrices" "$out/bench.log")
    # Attention (causal row blocks, section 16), c_fc + GELU with and without cuBLASLt's epilogues (section 15), and
    # LayerNorm a warp per row (section 18) with its weight and bias sums in the backward's pass (section 21), and
    # after a residual add, fused and not (section 20).
    while IFS= read -r line; do
      row "$(echo "${line:2:46}" | sed 's/ *$//')" "$(echo "${line:48}" | tr -s ' ' | sed 's/^ //')"
    done < <(grep -E "^  (attention forward|c_fc\+gelu|layer_norm)" "$out/bench.log")
  fi

  # ---- GPT-2 124M training step beside PyTorch on the same GPU, model, batch and optimizer ----
  if [[ "$skip" != *" train "* ]] && [ -x "$bin_dir/bench_gpu_train" ]; then
    t0=$(date +%s)
    say "== bench_gpu_train (gpt2 124M, B=${GPU_TRAIN_BATCH:-8}, T=1024, TF32)"
    timeout "${GPU_TRAIN_TIMEOUT:-200}" "$bin_dir/bench_gpu_train" --peak-tflops "$peak_tflops" --model gpt2 \
      --batch "${GPU_TRAIN_BATCH:-8}" --seq 1024 --steps 8 --optimizers came,adamw --torch >"$out/train_bench.log" 2>&1
    rc=$?
    cat "$out/train_bench.log" >>"$log"
    row "bench_gpu_train" "rc=$rc in $(elapsed "$t0")"
    # Mixed precision: bf16 parameters/activations/gradients over f32 master weights, beside PyTorch eager under
    # torch.autocast(bfloat16) with f32 parameters and optimizer state (the closest PyTorch equivalent).
    t0=$(date +%s)
    say "== bench_gpu_train --dtype bf16 (gpt2 124M, B=${GPU_TRAIN_BATCH:-8}, T=1024)"
    timeout "${GPU_TRAIN_BF16_TIMEOUT:-150}" "$bin_dir/bench_gpu_train" --peak-tflops "$peak_tflops" --model gpt2 \
      --batch "${GPU_TRAIN_BATCH:-8}" --seq 1024 --steps 8 --optimizers "${GPU_TRAIN_BF16_OPTIMIZERS:-came,adamw}" \
      --dtype bf16 --torch >"$out/train_bench_bf16.log" 2>&1
    rc=$?
    cat "$out/train_bench_bf16.log" >>"$log"
    cat "$out/train_bench_bf16.log" >>"$out/train_bench.log"
    row "bench_gpu_train bf16" "rc=$rc in $(elapsed "$t0")"
    python3 - "$out/train_bench.log" <<'PY' >"$out/train_table.txt" 2>>"$log" || true
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
# Rows keyed by (optimizer, precision): tally's "precision" is fp32/tf32/bf16, the peer's "dtype" the same names.
tally = {(r["optimizer"], r["precision"]): r for r in rows if r.get("bench") == "tally_train_step"}
torch = {(r["optimizer"], r["dtype"]): r for r in rows if r.get("peer") == "pytorch-eager"}
opt = {(r["optimizer"], r.get("precision", "tf32")): r for r in rows if r.get("bench") == "tally_optimizer_step"}
copy = next((r["GB_per_s"] for r in rows if r.get("bench") == "d2d_copy"), None)
print("%-8s %-5s %14s %14s %10s %12s %12s" % ("optim", "prec", "tally tok/s", "torch tok/s", "ratio", "opt GB/s",
                                             "of d2d copy"))
for k, t in tally.items():
    p = torch.get(k, {})
    ratio = t["tokens_per_s"] / p["tokens_per_s"] if p.get("tokens_per_s") else float("nan")
    o = opt.get(k, {})
    print("%-8s %-5s %14.0f %14s %10.2f %12.1f %12.2f" % (k[0], k[1], t["tokens_per_s"],
          "%.0f" % p["tokens_per_s"] if p else "n/a", ratio, o.get("min_GB_per_s", float("nan")),
          o.get("fraction_of_copy", float("nan"))))
if copy: print("device-to-device copy: %.0f GB/s" % copy)
PY
  fi
fi

# ---- gpt2 124M, T=1024, bf16 by batch size: tally beside torch.compile, PyTorch eager and llm.c on this GPU ----
# Every run appends JSON lines to peers.log; bench/peers/peer_table.py turns them into the table printed last. The
# scratch files stay outside $OUT (few files come back from the GPU machine): the full log gets a copy of each.
if [[ "$skip" != *" peers "* ]]; then
  py=${PYTHON:-python3}
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-peers.XXXXXX")
  peers_log=$scratch/peers.log
  : >"$peers_log"
  p_batches=${GPU_PEERS_BATCHES:-8 64 16 32}
  p_steps=${GPU_PEERS_STEPS:-10}
  p_start=$(date +%s)
  p_budget=${GPU_PEERS_BUDGET:-400}
  p_skipped=()
  # run_peer NAME TIMEOUT CMD...: runs CMD (stdout to peers.log, stderr kept for the log) unless the budget is
  # spent; no run goes on more than 60 s past the budget.
  run_peer() {
    local name=$1 limit=$2 t0 rc used
    shift 2
    used=$(($(date +%s) - p_start))
    [ "$limit" -gt $((p_budget - used + 60)) ] && limit=$((p_budget - used + 60))
    if [ "$used" -ge "$p_budget" ]; then
      p_skipped+=("$name")
      say "== $name: skipped (GPU_PEERS_BUDGET=${p_budget}s spent)"
      return 0
    fi
    say "== $name: $*"
    t0=$(date +%s)
    timeout "$limit" "$@" >>"$peers_log" 2>>"$scratch/stderr.log"
    rc=$?
    say "   rc=$rc in $(elapsed "$t0")"
    row "$name" "rc=$rc in $(elapsed "$t0")"
  }
  if [ -n "$bin_dir" ] && [ -x "$bin_dir/bench_gpu_train" ]; then
    for b in $p_batches; do
      run_peer "tally bf16 B=$b" 150 "$bin_dir/bench_gpu_train" --peak-tflops "$peak_tflops" --model gpt2 --batch "$b" \
        --seq 1024 --dtype bf16 --steps "$p_steps" --warmup 3 --optimizers adamw,came
    done
  else
    row "tally bf16 peers" "no bench_gpu_train binary"
  fi
  if [ -n "${LLMC_BIN:-}" ]; then
    run_peer "llm.c" 420 "$py" "$root/bench/peers/llmc_gpu.py" --peak-tflops "$peak_tflops" --bin "$LLMC_BIN" \
      --batches "$(echo $p_batches | tr ' ' ',')" --seq 1024 --steps "$p_steps" --warmup 2 --timeout 100 \
      --workdir "$scratch/llmc" --json
  else
    "$py" "$root/bench/peers/llmc_gpu.py" --json >>"$peers_log" 2>&1
    row "llm.c" "skipped: set LLMC_BIN to llm.c's train_gpt2cu"
  fi
  for b in ${GPU_PEERS_EAGER_BATCHES-8}; do
    for o in adamw came; do
      run_peer "PyTorch eager B=$b $o" 120 "$py" "$root/bench/peers/torch_gpt2_step.py" --device cuda --dtype bf16 \
        --batch "$b" --seq 1024 --optimizer "$o" --steps "$p_steps" --warmup 3
    done
  done
  for b in ${GPU_PEERS_COMPILE_BATCHES-$p_batches}; do  # one compile per batch size serves both optimizers
    run_peer "torch.compile B=$b" "${GPU_PEERS_COMPILE_TIMEOUT:-240}" "$py" "$root/bench/peers/torch_compile_gpt2.py" \
      --peak-tflops "$peak_tflops" --device cuda --batch "$b" --seq 1024 --optimizer adamw,came --steps "$p_steps" \
      --warmup 3 --json
  done
  # Last, within what is left of the budget: tally with cuDNN's fused attention (off by default until checked here).
  if [ -n "$bin_dir" ] && [ -x "$bin_dir/bench_gpu_train" ]; then
    for b in ${GPU_PEERS_CUDNN_BATCHES-8 64}; do
      run_peer "tally bf16 cuDNN B=$b" 150 env TALLY_CUDNN_ATTENTION=1 "$bin_dir/bench_gpu_train" \
        --peak-tflops "$peak_tflops" --model gpt2 --batch "$b" --seq 1024 --dtype bf16 --steps "$p_steps" --warmup 3 \
        --optimizers adamw,came
    done
  fi
  # Then cuBLASLt's bias, GELU and bias-gradient epilogues (off by default until checked here).
  if [ -n "$bin_dir" ] && [ -x "$bin_dir/bench_gpu_train" ]; then
    for b in ${GPU_PEERS_EPILOGUE_BATCHES-8 64}; do
      run_peer "tally bf16 cuBLASLt epilogues B=$b" 150 env TALLY_CUBLASLT_EPILOGUES=1 "$bin_dir/bench_gpu_train" \
        --peak-tflops "$peak_tflops" --model gpt2 --batch "$b" --seq 1024 --dtype bf16 --steps "$p_steps" --warmup 3 \
        --optimizers adamw,came
    done
  fi
  # Then the head and loss unchunked (--loss-chunk-rows 0), against the default chunks of 1024 rows.
  if [ -n "$bin_dir" ] && [ -x "$bin_dir/bench_gpu_train" ]; then
    for b in ${GPU_PEERS_WHOLE_HEAD_BATCHES-8}; do
      run_peer "tally bf16 unchunked head B=$b" 150 "$bin_dir/bench_gpu_train" --peak-tflops "$peak_tflops" \
        --model gpt2 --batch "$b" --seq 1024 --dtype bf16 --steps "$p_steps" --warmup 3 --optimizers adamw,came \
        --loss-chunk-rows 0
    done
  fi
  [ ${#p_skipped[@]} -gt 0 ] && row "peers over budget" "skipped: $(IFS=,; echo "${p_skipped[*]}" | sed 's/,/, /g')"
  "$py" "$root/bench/peers/peer_table.py" "$peers_log" >"$scratch/table.txt" 2>>"$log" ||
    python3 "$root/bench/peers/peer_table.py" "$peers_log" >"$scratch/table.txt" 2>>"$log" || true
  {
    echo "== peers: JSON lines"
    cat "$peers_log"
    echo "== peers: stderr (last 200 lines)"
    tail -200 "$scratch/stderr.log" 2>/dev/null
    for f in "$scratch"/llmc/llmc_b*.log; do
      [ -f "$f" ] && echo "== peers: $f" && grep -v "^|\|^+--" "$f" | tail -40
    done
  } >>"$log"
  peers_table=$(cat "$scratch/table.txt")
  rm -rf "$scratch"
  row "peers" "in $(elapsed "$p_start")"
fi

row "total" "$(elapsed "$t_start")"
{
  echo
  echo "==================== gpu_check summary ===================="
  for r in "${summary[@]}"; do echo "$r"; done
  if [ -f "$out/bench.log" ]; then
    echo "-------------------- benchmarks --------------------"
    sed -n '/^benchmark /,$p' "$out/bench.log"
  fi
  if [ -s "$out/train_table.txt" ]; then
    echo "-------------- gpt2 124M training step (tally vs PyTorch eager, same GPU) --------------"
    cat "$out/train_table.txt"
  fi
  if [ -n "${peers_table:-}" ]; then
    echo "-------------- gpt2 124M bf16 by batch size: tally vs torch.compile, PyTorch eager, llm.c --------------"
    echo "$peers_table"
  fi
} | tee -a "$log"
