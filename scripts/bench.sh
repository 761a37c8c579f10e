#!/usr/bin/env bash
# make bench: builds tally's CPU benchmarks in release mode (its own build folder, no CUDA) and writes
# bench/results/<date>-<host>.md, a table of ratios measured in this one run, on this machine, with the same
# threads on both sides:
#   (a) GPT-2 training step (forward, backward, optimizer): tally vs PyTorch eager, gpt2 124M B=4 T=64 and the
#       default d4 preset B=8 T=128, AdamW and CAME; ms/step, tokens/s, peak RSS, ratios. Each side runs as its
#       own process (peak RSS is per process), alternating tally / peer BENCH_ROUNDS times, best of all. Then the
#       fastest peers a CPU user would pick, each round too: PyTorch with torch.compile (Inductor's C++/OpenMP
#       kernels, SDPA attention; bench/peers/torch_compile_gpt2.py, both optimizers in one process, one compile),
#       and, for gpt2 124M B=4 T=64 with AdamW (the one configuration its trainer runs), llm.c's CPU trainer when
#       LLMC_CPU_BIN names a train_gpt2 built from llm.c's own repository (bench/peers/llmc_cpu.py; this
#       repository neither contains nor builds it, and says so when it is absent);
#   (b) optimizer step alone (CAME, AdamW, Adafactor) vs came-pytorch / torch.optim / transformers, and against
#       the minimum bytes each step must move;
#   (c) tokenizer throughput vs tiktoken on Tiny Shakespeare;
#   (d) core GEMM / elementwise throughput vs their ceilings (OpenBLAS called directly, memcpy);
#   (e) data parallelism on the CPU: the default d4 model, 2 ranks x 1 thread (mpirun, ZeRO 0 and 1, and ZeRO 0
#       with the gradients summed in bf16) against
#       1 process x 2 threads with 2-step gradient accumulation (the same tokens per step), tokens/s, and the
#       communication bytes per step predicted from the buckets against those the communicator measured. Skipped,
#       saying so, without mpirun or with a tally built without MPI.
# Peers that need python3 + torch / came-pytorch / transformers / tiktoken are skipped with a message when absent.
# Not part of CI. Usage: scripts/bench.sh [BUILD_DIR]   (default build-bench). Duration: the 2026-11-27 run took 20 min
# on 2 cores at load average ~200 (8 of them the fresh release build); BENCH_QUICK=1 or BENCH_ROUNDS=1 shorten it.
# Environment: BENCH_THREADS (default: nproc), BENCH_ROUNDS (2), BENCH_STEPS (timed steps per process, 4),
#   BENCH_SECTIONS (which of the sections above run, default "a b c d e"), LLMC_CPU_BIN (llm.c's train_gpt2),
#   BENCH_QUICK=1 (d4 only, one round: a smoke test of the script), OMP_WAIT_POLICY (default passive for both
#   sides, see bench/NOTES.md: on a shared machine spinning at barriers costs both frameworks 2-4x).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build-bench}"
[[ "$build" = /* ]] || build="$root/$build"
threads="${BENCH_THREADS:-$(nproc)}"
rounds="${BENCH_ROUNDS:-2}"
steps="${BENCH_STEPS:-4}"
quick="${BENCH_QUICK:-0}"
sections=" ${BENCH_SECTIONS:-a b c d e} "
for s in $sections; do
  [[ "$s" =~ ^[a-e]$ ]] || { echo "BENCH_SECTIONS: '$s' is not a section (a b c d e, separated by spaces)" >&2; exit 2; }
done
section() { [[ "$sections" == *" $1 "* ]]; }
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
export OMP_NUM_THREADS="$threads"

say() { printf '\n== %s\n' "$*" >&2; }

say "configure + build ($build, Release, CPU only)"
mkdir -p "$build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DTALLY_CUDA=OFF -DTALLY_WERROR=ON > "$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" --target bench_gpt2_step bench_optim bench_tokenizer bench_core tally >&2

host="$(hostname -s 2>/dev/null || echo host)"
date_tag="$(date -u +%Y-%m-%d)"
mkdir -p "$root/bench/results"
suffix=""
[[ "$sections" == " a b c d e " ]] || suffix="-sections-$(echo $sections | tr -d ' ')"
out="$root/bench/results/${date_tag}-${host}${suffix}.md"
raw="$(mktemp -d)"
trap 'rm -rf "$raw"' EXIT

have_py() { python3 -c "import $1" > /dev/null 2>&1; }
peer_step=1
if ! have_py "torch, transformers"; then
  echo "peer skipped: python3 with torch and transformers not found (pip install torch transformers came-pytorch)" >&2
  peer_step=0
fi
have_came=1
have_py came_pytorch || { have_came=0; echo "peer skipped for CAME: came-pytorch not found" >&2; }

load_before="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"

# ---- (a) training step ----
configs=("gpt2 12 12 768 4 64" "d4 4 4 256 8 128")
[[ "$quick" == 1 ]] && { configs=("d4 4 4 256 8 128"); rounds=1; }
section a || configs=()
llmc_cpu="${LLMC_CPU_BIN:-}"
for cfg in "${configs[@]}"; do
  read -r model L NH C B T <<< "$cfg"
  for opt in adamw came; do
    for ((r = 0; r < rounds; ++r)); do
      say "step: tally $model B=$B T=$T $opt (round $((r + 1))/$rounds)"
      "$build/bench_gpt2_step" --models "$model" --batch "$B" --seq "$T" --optimizer "$opt" --threads "$threads" \
        --steps "$steps" --warmup 1 --json >> "$raw/step_tally_${model}_${opt}.jsonl"
      if [[ $peer_step == 1 && ( $opt != came || $have_came == 1 ) ]]; then
        say "step: pytorch $model B=$B T=$T $opt (round $((r + 1))/$rounds)"
        python3 "$root/bench/peers/torch_gpt2_step.py" --layers "$L" --heads "$NH" --width "$C" --batch "$B" \
          --seq "$T" --optimizer "$opt" --threads "$threads" --steps "$steps" --warmup 1 \
          >> "$raw/step_torch_${model}_${opt}.jsonl" || echo "peer failed" >&2
      fi
    done
  done
  for ((r = 0; r < rounds; ++r)); do
    if [[ $peer_step == 1 ]]; then
      compile_opts=adamw
      [[ $have_came == 1 ]] && compile_opts=adamw,came
      say "step: pytorch + torch.compile $model B=$B T=$T $compile_opts (round $((r + 1))/$rounds)"
      python3 "$root/bench/peers/torch_compile_gpt2.py" --device cpu --dtype fp32 --threads "$threads" --grad-clip 0 \
        --layers "$L" --heads "$NH" --width "$C" --batch "$B" --seq "$T" --optimizer "$compile_opts" \
        --steps "$steps" --warmup 2 --json >> "$raw/step_compile_${model}.jsonl" 2> "$raw/compile_${model}.err" ||
        echo "peer failed: $(tail -3 "$raw/compile_${model}.err")" >&2
    fi
    if [[ $model == gpt2 && $B == 4 && $T == 64 ]]; then
      say "step: llm.c CPU trainer $model B=$B T=$T adamw (round $((r + 1))/$rounds)"
      python3 "$root/bench/peers/llmc_cpu.py" --bin "$llmc_cpu" --threads "$threads" --steps "$steps" --warmup 1 \
        --json | tee -a "$raw/step_llmc_${model}.jsonl" | grep -oE '"(skipped|error)": "[^"]*"' >&2 || true
    fi
  done
done

# ---- (b) optimizer step ----
if section b; then
  sets="4096x4096,768x3072,gpt2-124M"
  [[ "$quick" == 1 ]] && sets="768x3072"
  say "optimizer step ($sets)"
  optim_flags=(--steps 5 --sets "$sets" --json)
  have_py "torch, came_pytorch, transformers" || optim_flags+=(--no-peers)
  "$build/bench_optim" "${optim_flags[@]}" | tee "$raw/optim.txt" >&2
fi

# ---- (c) tokenizer ----
if section c; then
  say "tokenizer"
  "$build/bench_tokenizer" --reps 5 | tee "$raw/tokenizer.txt" >&2
fi

# ---- (d) core ----
if section d; then
  say "core"
  "$build/bench_core" | tee "$raw/core.txt" >&2
fi

# ---- (e) data parallelism ----
# Per step: 2 x 8 x 128 tokens, either as two ranks' micro-batches or as one process's two accumulated ones.
dp_common=(--model d4 --batch 8 --seq 128 --steps 8 --eval-every 0 --val-batches 1 --sample-tokens 1 --no-shuffle)
if ! section e; then
  :
elif ! command -v mpirun > /dev/null; then
  echo "data parallel skipped: no mpirun (scripts/install-deps.sh installs openmpi-bin)" >&2
elif ! OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -np 2 "$build/tally" memory \
    --model tiny > "$raw/dp_probe.txt" 2>&1; then
  echo "data parallel skipped: mpirun cannot run tally ($(tail -1 "$raw/dp_probe.txt"))" >&2
else
  for ((r = 0; r < rounds; ++r)); do
    say "data parallel: 1 process x $threads threads, accumulation 2 (round $((r + 1))/$rounds)"
    "$build/tally" train "${dp_common[@]}" --total-batch 2048 --threads "$threads" --out "$raw/dp-one-$r" \
      > "$raw/dp-one-$r.txt" 2>&1 || { echo "data parallel run failed: $(tail -3 "$raw/dp-one-$r.txt")" >&2; }
    for run in 0:f32 1:f32 0:bf16; do
      zero=${run%:*} sum=${run#*:} name=dp-two${run%:*}${run#*:}
      say "data parallel: 2 ranks x 1 thread, ZeRO $zero, $sum sums (round $((r + 1))/$rounds)"
      OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 mpirun --oversubscribe \
        --bind-to none -np 2 "$build/tally" train "${dp_common[@]}" --threads 1 --zero "$zero" --reduce-dtype "$sum" \
        --out "$raw/$name-$r" > "$raw/$name-$r.txt" 2>&1 ||
        { echo "data parallel run failed: $(tail -3 "$raw/$name-$r.txt")" >&2; }
    done
  done
fi

load_after="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"

say "writing $out"
python3 - "$raw" "$out" "$threads" "$load_before" "$load_after" "$OMP_WAIT_POLICY" <<'PY'
import json, os, platform, subprocess, sys, datetime
raw, out, threads, load_before, load_after, policy = sys.argv[1:7]

def jsonl(name):
    path = os.path.join(raw, name)
    if not os.path.exists(path):
        return []
    rows = []
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            d = json.loads(line)
            if "skipped" not in d:
                rows.append(d)
    return rows

def last_json(name):
    path = os.path.join(raw, name)
    found = None
    if not os.path.exists(path):
        return None
    for line in open(path):
        if line.strip().startswith("{"):
            found = json.loads(line)
    return found

cpu = "unknown CPU"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                     cwd=os.path.dirname(out)).stdout.strip() or "?"
L = []
L.append(f"# tally benchmark, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC")
L.append("")
L.append(f"Machine: {platform.node()}, {cpu}, {os.cpu_count()} logical CPUs, {mem_gb:.0f} GiB; commit {rev}. "
         f"{threads} threads on both sides, OMP_WAIT_POLICY={policy} on both sides. Load average (1/5/15 min) "
         f"before: {load_before}, after: {load_after}. Times are the best of all timed steps of all rounds (other "
         f"work on the machine only ever slows a step down); CPU ms is process CPU time per step (all threads).")
L.append("")

# (a)
summary = {}
if any(jsonl(f"step_tally_{m}_{o}.jsonl") for m in ("gpt2", "d4") for o in ("adamw", "came")):
    L.append("## Training step (forward, backward, optimizer), CPU")
    L.append("")
    L.append("| model | B x T | optimizer | tally ms/step | PyTorch ms/step | time ratio (tally/PyTorch) | tally tok/s | "
             "PyTorch tok/s | tally CPU ms | PyTorch CPU ms | tally peak RSS MiB | PyTorch peak RSS MiB | RSS ratio |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in ("gpt2", "d4"):
        for opt in ("adamw", "came"):
            t = jsonl(f"step_tally_{model}_{opt}.jsonl")
            p = jsonl(f"step_torch_{model}_{opt}.jsonl")
            if not t:
                continue
            tb = min(x["best_ms"] for x in t)
            tc = min(x["cpu_ms"] for x in t)
            trss = max(x["peak_rss_mb"] for x in t)
            tokens = t[0]["batch"] * t[0]["seq"]
            row = [model, f"{t[0]['batch']} x {t[0]['seq']}", opt, f"{tb:.0f}"]
            if p:
                pb = min(x["best_ms"] for x in p)
                pc = min(x["cpu_ms"] for x in p)
                prss = max(x["peak_rss_mb"] for x in p)
                row += [f"{pb:.0f}", f"**{tb / pb:.2f}**", f"{tokens / tb * 1000:.0f}", f"{tokens / pb * 1000:.0f}",
                        f"{tc:.0f}", f"{pc:.0f}", f"{trss:.0f}", f"{prss:.0f}", f"{trss / prss:.2f}"]
                summary[(model, opt)] = (tb, pb, trss, prss)
            else:
                row += ["skipped", "", f"{tokens / tb * 1000:.0f}", "", f"{tc:.0f}", "", f"{trss:.0f}", "", ""]
                summary[(model, opt)] = (tb, None, trss, None)
            L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("Targets: time ratio <= 0.8 on both configurations; gpt2 124M B=4 T=64 under 1500 ms per step on two cores "
             "(llm.c's CPU trainer, when LLMC_CPU_BIN names it: the next table); peak RSS ratio <= 1.")
    L.append("")

# (a) against the fastest peers
fast = []
for model in ("gpt2", "d4"):
    comp = jsonl(f"step_compile_{model}.jsonl")
    llmc = jsonl(f"step_llmc_{model}.jsonl")
    for opt in ("adamw", "came"):
        t = jsonl(f"step_tally_{model}_{opt}.jsonl")
        c = [x for x in comp if x.get("optimizer") == opt and "ms_per_step" in x]
        m = [x for x in llmc if x.get("optimizer") == opt and "ms_per_step" in x]
        if not t or not (c or m):
            continue
        tb = min(x["best_ms"] for x in t)
        trss = max(x["peak_rss_mb"] for x in t)
        row = [model, f"{t[0]['batch']} x {t[0]['seq']}", opt, f"{tb:.0f}"]
        if c:
            cb = min(x["best_ms"] for x in c)
            row += [f"{cb:.0f}", f"**{tb / cb:.2f}**", f"{min(x['cpu_ms'] for x in c):.0f}",
                    f"{max(x['compile_s'] for x in c):.0f}", f"{max(x['peak_rss_mb'] for x in c):.0f}"]
        else:
            row += ["skipped", "", "", "", ""]
        if m:
            mb = min(x["best_ms"] for x in m)
            row += [f"{mb:.0f}", f"**{tb / mb:.2f}**", f"{max(x['peak_rss_mb'] for x in m):.0f}"]
        else:
            row += ["n/a" if model != "gpt2" or opt != "adamw" else "skipped", "", ""]
        row += [f"{trss:.0f}"]
        fast.append("| " + " | ".join(row) + " |")
if fast:
    L.append("## Training step against the fastest peers, CPU")
    L.append("")
    L.append("| model | B x T | optimizer | tally ms/step | torch.compile ms/step | time ratio (tally/compile) | "
             "compile CPU ms | compile first step s | compile peak RSS MiB | llm.c ms/step | time ratio (tally/llm.c) | "
             "llm.c peak RSS MiB | tally peak RSS MiB |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    L += fast
    L.append("")
    L.append("torch.compile: bench/peers/torch_compile_gpt2.py on the CPU in f32 (a compact GPT-2: fused QKV, SDPA "
             "attention, vocabulary padded to 50304 as tally's; AdamW fused, or came-pytorch), no gradient clipping, as "
             "bench_gpt2_step; both optimizers in one process, so its peak RSS is the process's, the compiler's "
             "included. llm.c: its CPU trainer train_gpt2.c (f32, OpenMP, AdamW; B=4 T=64 is the one configuration "
             "it runs), through bench/peers/llmc_cpu.py; n/a where it has no such configuration or optimizer.")
    L.append("")

# (b)
o = last_json("optim.txt")
if o:
    L.append("## Optimizer step alone, CPU")
    L.append("")
    L.append("| optimizer | set | params | tally ms | GB/s at the minimum bytes | peer | peer ms | speed-up (peer/tally) |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    peer_name = {"came": "came-pytorch", "adamw": "torch.optim.AdamW", "adafactor": "transformers Adafactor",
                 "adafactor_beta1": "transformers Adafactor (beta1)"}
    pr = (o.get("peer") or {}).get("results", {})
    for kind, per in o["results"].items():
        for s, r in per.items():
            ms = r["s_per_step"] * 1e3
            gbs = r["min_bytes"] / r["s_per_step"] / 1e9
            pms = pr.get(kind, {}).get(s, {}).get("s_per_step")
            L.append(f"| {kind} | {s} | {r['params']} | {ms:.2f} | {gbs:.1f} | {peer_name.get(kind, kind)} | "
                     + (f"{pms * 1e3:.2f} | **{pms * 1e3 / ms:.2f}** |" if pms else "skipped | |"))
    L.append("")
    L.append("CAME step / AdamW step on the same parameters (target <= 1.3): " + ", ".join(
        f"{s} **{o['results']['came'][s]['s_per_step'] / o['results']['adamw'][s]['s_per_step']:.2f}**"
        for s in o["results"].get("came", {}) if s in o["results"].get("adamw", {})) +
        ". Target: CAME >= 3x faster than came-pytorch.")
    L.append("")

# (c)
tk = last_json("tokenizer.txt")
if tk:
    L.append("## Tokenizer (GPT-2 BPE) on Tiny Shakespeare")
    L.append("")
    L.append("| | MB/s | ratio vs tiktoken (1 thread) |")
    L.append("| --- | --- | --- |")
    peer = tk.get("tiktoken_mbps")
    L.append(f"| tally, 1 thread | {tk['tally_mbps_1t']:.1f} | " + (f"**{tk['tally_mbps_1t'] / peer:.2f}** |" if peer else "|"))
    L.append(f"| tally, {tk['threads']} threads | {tk['tally_mbps_all']:.1f} | " + (f"{tk['tally_mbps_all'] / peer:.2f} |" if peer else "|"))
    L.append(f"| tiktoken encode_ordinary, 1 thread | " + (f"{peer:.1f} | 1.00 |" if peer else "skipped (tiktoken not found) | |"))
    L.append("")

# (d)
c = last_json("core.txt")
if c:
    L.append("## Core engine vs ceilings")
    L.append("")
    L.append("| what | tally | ceiling | ratio |")
    L.append("| --- | --- | --- | --- |")
    for r in c["rows"]:
        L.append(f"| {r['what']} | {r['tally']:.1f} | {r['ceiling']:.1f} | {r['ratio']:.2f} |")
    L.append("")
    L.append("Ceilings: matmul = OpenBLAS sgemm called directly on the same buffers; add/sum = memcpy of the same bytes.")
    L.append("")

# (e)
def dp_runs(prefix):
    runs = []
    for name in sorted(os.listdir(raw)):
        log = os.path.join(raw, name, "log.jsonl")
        if name.startswith(prefix + "-") and os.path.exists(log):
            runs.append([json.loads(line) for line in open(log) if line.strip()])
    return runs

def best_tokens(runs):  # best step after the first (which also plans and warms up) over all rounds
    rates = [r["tokens_per_s"] for run in runs for r in run if "tokens_per_s" in r and r["step"] > 1]
    return max(rates) if rates else None

one = best_tokens(dp_runs("dp-one"))
if one:
    L.append("## Data parallelism on the CPU (d4, 2 x 8 x 128 tokens per step, CAME)")
    L.append("")
    L.append("| run | tok/s (best step) | ratio to 1 process | comm bytes/step predicted | measured "
             "| collectives/step predicted | measured |")
    L.append("| --- | --- | --- | --- | --- | --- | --- |")
    L.append(f"| 1 process x {threads} threads, accumulation 2 | {one:.0f} | 1.00 | - | - | - | - |")
    for zero, sums in ((0, "f32"), (1, "f32"), (0, "bf16")):
        runs = dp_runs(f"dp-two{zero}{sums}")
        two = best_tokens(runs)
        comm = [r for run in runs for r in run if "comm_bytes_predicted" in r]
        if two:
            c = comm[0] if comm else {}
            what = f"ZeRO {zero}" + (", gradients summed in bf16" if sums == "bf16" else "")
            L.append(f"| 2 ranks x 1 thread (mpirun), {what} | {two:.0f} | **{two / one:.2f}** | "
                     f"{c.get('comm_bytes_predicted', 'n/a')} | {c.get('comm_bytes_measured', 'n/a')} | "
                     f"{c.get('collectives_predicted', 'n/a')} | {c.get('collectives_measured', 'n/a')} |")
    L.append("")
    L.append("Both sides compute the same gradients (the same tokens per step; the ranks' sum is the accumulation's, "
             "to float rounding, or to bf16 rounding where summed in bf16); the ratio is what the processes' "
             "exchange (MPI over shared memory) costs or gains against threads in one process.")
    L.append("")

open(out, "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
echo "wrote $out" >&2
