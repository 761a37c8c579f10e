#!/usr/bin/env python3
"""Peer benchmark: llm.c's CUDA trainer (train_gpt2cu, bf16) on GPT-2 124M, on one GPU, at several batch sizes.

llm.c is not part of this repository and is not built by it. To get the binary, build it yourself from llm.c's
own repository with its Makefile (`make train_gpt2cu USE_CUDNN=1` for cuDNN's flash attention; see llm.c's
README), then pass its path with --bin or the LLMC_BIN environment variable. Without it this prints
"skipped: llm.c binary not found at ..." (a JSON object with "skipped" under --json) and exits 0. (Seen with
llm.c at f1e2ace (2025-05) and CUDA 13.0: its one cudaMemAdvise call needs the newer signature, which takes a
cudaMemLocation, and a recent cudnn-frontend also needs -lnvrtc at link time.) --check only tells whether the
binary loads.

Each batch size is one run of the binary in a scratch directory: random initialisation (`-e d12`: GPT-2 124M,
12 layers, width 768, vocabulary padded to 50304 as llm.c always does) or a weights file (--model), random token
shards written here in llm.c's format (header magic 20240520, version 1, uint16 tokens; fixed seed), AdamW with
llm.c's defaults (betas 0.9/0.95, f32 master weights, bf16 parameters and activations, gradient clipping at 1.0),
weight decay 0, no sampling, one validation batch at the first and last step (outside the timed region).

Timing: llm.c times each step with CUDA events and prints it ("| 41.23 ms |"); its printed tok/s is a smoothed
average, so it is not used. The first --warmup steps are dropped; ms_per_step is the median of the rest (best_ms
the fastest), tokens_per_s is at the median, as in the other peers. MFU: flops per token = 6 N + 6 L C T, with
N = 124,439,808 (every parameter once, tied embedding, unpadded vocabulary; llm.c's own printed MFU counts the
padded rows and uses its own peak table), against --peak-tflops (dense bf16; H100/H200 SXM: 989).
device_mb is what llm.c reports after allocating its buffers (cudaMemGetInfo: in use on the device, the CUDA
context and library workspaces included), not a peak of requested bytes.

Prints one JSON object per batch size with --json, else a readable line each. Used by scripts/gpu_check.sh.
  LLMC_BIN=/path/to/train_gpt2cu llmc_gpu.py --batches 8,16,32,64 --seq 1024 --steps 10 --json
"""
import argparse
import array
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time

STEP_RE = re.compile(r"^step\s+(\d+)/(\d+)\s*\|.*?\|\s*([0-9.]+) ms\s*\|")
MEM_RE = re.compile(r"device memory usage: (\d+) MiB / (\d+) MiB")
PARAMS_RE = re.compile(r"num_parameters: (\d+)")
MAGIC, VERSION = 20240520, 1


def write_shard(path, ntok, vocab, seed):
    rng = random.Random(seed)
    header = array.array("i", [0] * 256)
    header[0], header[1], header[2] = MAGIC, VERSION, ntok
    tokens = array.array("H", (rng.randrange(vocab) for _ in range(ntok)))
    with open(path, "wb") as f:
        header.tofile(f)
        tokens.tofile(f)


def ldd(binary, env=None):
    try:
        return subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30, env=env).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def library_path(binary):
    """Directories that hold the libraries `ldd` reports missing for the binary: the CUDA toolkit's, then the
    Python nvidia-* packages' (PyTorch's cuDNN, cuBLAS, NVRTC). Empty when nothing is missing or ldd is absent."""
    missing = {line.split()[0] for line in ldd(binary).splitlines() if "not found" in line}
    if not missing:
        return []
    import glob
    import site
    patterns = [os.path.join(d, "*.so*") for d in ("/usr/local/cuda/lib64", "/usr/local/cuda/lib",
                                                   "/usr/local/cuda/targets/x86_64-linux/lib")]
    for root in site.getsitepackages() + [site.getusersitepackages()]:
        patterns.append(os.path.join(root, "nvidia", "**", "lib*", "*.so*"))
    dirs = []
    for pattern in patterns:
        for lib in glob.glob(pattern, recursive=True):
            if os.path.basename(lib) in missing and os.path.dirname(lib) not in dirs:
                dirs.append(os.path.dirname(lib))
    return dirs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.environ.get("LLMC_BIN", ""), help="train_gpt2cu (default: $LLMC_BIN)")
    ap.add_argument("--batches", default="8,16,32,64")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="steps dropped before the timed ones")
    ap.add_argument("--model", default="d12", help="llm.c -e: a descriptor (d12) or a weights file")
    ap.add_argument("--extra", default="", help="more llm.c flags, e.g. '-r 0' (no GELU recompute)")
    ap.add_argument("--workdir", default="", help="scratch directory (default: a temporary one)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per run")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--check", action="store_true",
                    help="only check that the binary loads (its libraries resolve): exit 0 if so, else 1")
    args = ap.parse_args()

    def emit(obj):
        if args.json:
            print(json.dumps(obj), flush=True)
        elif "skipped" in obj:
            print(f"skipped: {obj['skipped']}", flush=True)
        elif "error" in obj:
            print(f"llm.c B={obj.get('batch')}: {obj['error']}", flush=True)
        else:
            print("llm.c   B=%d T=%d bf16: %.2f ms/step (median), %.0f tok/s, MFU %.1f%%, device %s MiB" % (
                obj["batch"], obj["seq"], obj["ms_per_step"], obj["tokens_per_s"], 100 * obj["mfu"],
                obj.get("device_mb", "?")), flush=True)

    binary = os.path.abspath(args.bin) if args.bin else ""
    if not binary or not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        emit({"peer": "llm.c", "skipped": f"llm.c binary not found at {binary or '(LLMC_BIN unset)'}"})
        return 1 if args.check else 0
    env = dict(os.environ)
    libs = library_path(binary)
    if libs:
        env["LD_LIBRARY_PATH"] = ":".join(libs + [p for p in [env.get("LD_LIBRARY_PATH", "")] if p])
    linked = ldd(binary, env)
    cudnn = "libcudnn" in linked
    if args.check:  # with a missing argument llm.c prints its usage and exits 1; a library that fails to load: 127
        try:
            rc = subprocess.run([binary, "-b"], capture_output=True, env=env, timeout=60).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        print(f"llm.c binary {binary}: " + ("loads" if rc not in (127, "timeout") else f"does not load ({rc})") +
              (", cuDNN attention" if cudnn else ", no cuDNN (llm.c's own attention kernels)") +
              (f", library path {':'.join(libs)}" if libs else ""))
        return 0 if rc not in (127, "timeout") else 1
    batches = [int(b) for b in args.batches.split(",") if b]
    T = args.seq
    V, C, L, block = 50257, 768, 12, 1024
    N = V * C + block * C + L * (12 * C * C + 13 * C) + 2 * C
    flops_per_token = 6 * N + 6 * L * C * T
    work = args.workdir or tempfile.mkdtemp(prefix="llmc-peer-")
    os.makedirs(work, exist_ok=True)
    model = args.model if args.model.startswith("d") or os.path.isabs(args.model) else os.path.abspath(args.model)
    # Enough tokens for a few of the largest batches; the loader wraps around at the end of a shard.
    ntok = 4 * max(batches) * T + 1
    train, val = os.path.join(work, "peer_train_000000.bin"), os.path.join(work, "peer_val_000000.bin")
    write_shard(train, ntok, V, seed=1)
    write_shard(val, max(batches) * T + 1, V, seed=2)
    total = args.warmup + args.steps
    for B in batches:
        cmd = [binary, "-i", train, "-j", val, "-e", model, "-b", str(B), "-t", str(T), "-x", str(total),
               "-l", "1e-4", "-c", "0.0", "-v", "1000000", "-m", "1", "-s", "0", "-h", "0"] + args.extra.split()
        log = os.path.join(work, f"llmc_b{B}.log")
        t0 = time.perf_counter()
        try:
            with open(log, "w") as f:
                rc = subprocess.run(cmd, cwd=work, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout,
                                    env=env).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        wall = time.perf_counter() - t0
        text = open(log, errors="replace").read()
        ms = [float(m.group(3)) for m in map(STEP_RE.match, text.splitlines()) if m]
        row = {"peer": "llm.c", "dtype": "bf16", "optimizer": "adamw", "cudnn": cudnn, "batch": B, "seq": T,
               "cmd": " ".join(cmd),
               "log": log, "wall_s": wall}
        if libs:
            row["library_path"] = ":".join(libs)
        mem, params = MEM_RE.search(text), PARAMS_RE.search(text)
        if mem:
            row["device_mb"], row["device_total_mb"] = int(mem.group(1)), int(mem.group(2))
        if params:
            row["params_llmc"] = int(params.group(1))
        timed = ms[args.warmup:]
        if rc != 0 or not timed:
            tail = " | ".join(text.strip().splitlines()[-4:])
            row["error"] = f"rc={rc}, {len(ms)} step lines: {tail}"[:400]
            emit(row)
            continue
        med = sorted(timed)[len(timed) // 2]
        row.update({"steps": len(timed), "warmup": args.warmup, "ms_per_step": med, "best_ms": min(timed),
                    "mean_ms": sum(timed) / len(timed), "tokens_per_s": B * T / (med / 1000), "params": N,
                    "flops_per_token": flops_per_token, "peak_tflops": args.peak_tflops})
        row["mfu"] = row["tokens_per_s"] * flops_per_token / (args.peak_tflops * 1e12)
        emit(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
