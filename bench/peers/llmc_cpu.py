#!/usr/bin/env python3
"""Peer benchmark: llm.c's CPU trainer (train_gpt2, from train_gpt2.c: f32, OpenMP) on GPT-2 124M, B=4, T=64.

llm.c is not part of this repository and is not built by it. Build the binary yourself from llm.c's own repository
with its Makefile (`make train_gpt2`, which adds OpenMP where the compiler has it; see llm.c's README), then pass
its path with --bin or the LLMC_CPU_BIN environment variable. Without it this prints "skipped: llm.c CPU binary not
found at ..." (a JSON object with "skipped" under --json) and exits 0.

train_gpt2.c takes no arguments: it trains the model in ./gpt2_124M.bin on
./dev/data/tinyshakespeare/tiny_shakespeare_{train,val}.bin at B=4, T=64 with AdamW (lr 1e-4, betas 0.9/0.999,
eps 1e-8, weight decay 0, no gradient clipping), evaluating 5 validation batches before steps 0, 10, 20 and 30,
and printing "step N: train loss L (took M ms)" for each step, timed around the data batch, the forward, the
backward and the update. This runs it in a scratch directory that holds a GPT-2 124M model file written here in
llm.c's v3 format (header magic 20240326, vocabulary padded to 50304; weights N(0, 0.02), residual projections
N(0, 0.02 / sqrt(2 L)), layer-norm weights 1, biases 0, fixed seed) and random token shards in llm.c's format, and
stops it once the steps needed have been printed (before its first sampling, at step 20). The tokenizer file is
left out: llm.c then warns that it cannot decode samples, which it never reaches here.

Timing: step 0 (the first backward and update allocate the gradients and AdamW's moments) and the --warmup steps
after it are dropped; ms_per_step is the median of the rest, best_ms the fastest, tokens_per_s at the median, as
in the other peers. peak_rss_mb is the process's peak resident memory. OMP_NUM_THREADS is set to --threads.

Prints one JSON object with --json, else a readable line. Used by scripts/bench.sh; never part of the build or the
tests.
  LLMC_CPU_BIN=/path/to/train_gpt2 llmc_cpu.py --threads 2 --steps 4 --json
"""
import argparse
import array
import json
import math
import os
import pty
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading

STEP_RE = re.compile(r"^step (\d+): train loss ([-+0-9.naif]+) \(took ([0-9.]+) ms\)")
MODEL_MAGIC, MODEL_VERSION = 20240326, 3
SHARD_MAGIC, SHARD_VERSION = 20240520, 1
V, VP, MAX_T, L, NH, C = 50257, 50304, 1024, 12, 12, 768
B, T = 4, 64  # fixed in train_gpt2.c


def write_model(path, seed):
    """GPT-2 124M in llm.c's v3 layout: wte (Vp, C), wpe (maxT, C), then each kind of layer tensor for all layers."""
    try:
        import numpy as np
    except ImportError:
        return "numpy not installed (it writes the model file)"
    rng = np.random.default_rng(seed)
    header = array.array("i", [0] * 256)
    header[0:8] = array.array("i", [MODEL_MAGIC, MODEL_VERSION, MAX_T, V, L, NH, C, VP])
    normal = lambda n, std: rng.standard_normal(n, dtype=np.float32) * np.float32(std)
    proj_std = 0.02 / math.sqrt(2 * L)
    parts = [
        normal(VP * C, 0.02), normal(MAX_T * C, 0.02),
        np.ones(L * C, np.float32), np.zeros(L * C, np.float32),  # ln_1 weight, bias
        normal(L * 3 * C * C, 0.02), np.zeros(L * 3 * C, np.float32),  # qkv weight, bias
        normal(L * C * C, proj_std), np.zeros(L * C, np.float32),  # attention projection
        np.ones(L * C, np.float32), np.zeros(L * C, np.float32),  # ln_2
        normal(L * 4 * C * C, 0.02), np.zeros(L * 4 * C, np.float32),  # fc
        normal(L * C * 4 * C, proj_std), np.zeros(L * C, np.float32),  # fc projection
        np.ones(C, np.float32), np.zeros(C, np.float32),  # ln_f
    ]
    with open(path, "wb") as f:
        header.tofile(f)
        for p in parts:
            p.astype("<f4").tofile(f)
    return None


def write_shard(path, ntok, seed):
    rng = random.Random(seed)
    header = array.array("i", [0] * 256)
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, ntok
    with open(path, "wb") as f:
        header.tofile(f)
        array.array("H", (rng.randrange(V) for _ in range(ntok))).tofile(f)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--write-model":  # the child process that writes the model file
        problem = write_model(sys.argv[2], seed=1)
        if problem:
            print(problem)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.environ.get("LLMC_CPU_BIN", ""), help="llm.c's train_gpt2 (or LLMC_CPU_BIN)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--steps", type=int, default=4, help="timed steps (at most 18: the run stops before step 20)")
    ap.add_argument("--warmup", type=int, default=1, help="steps dropped after step 0")
    ap.add_argument("--timeout", type=float, default=900, help="seconds before the run is given up")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    def emit(obj):
        if args.json:
            print(json.dumps(obj), flush=True)
        elif "skipped" in obj or "error" in obj:
            print(f"llmc_cpu: {obj.get('skipped') or obj.get('error')}", flush=True)
        else:
            print("llm.c CPU gpt2 B=%d T=%d adamw, %d threads: %.1f ms/step (median), best %.1f ms, %.0f tok/s, "
                  "peak RSS %.0f MiB" % (B, T, obj["threads"], obj["ms_per_step"], obj["best_ms"],
                                         obj["tokens_per_s"], obj["peak_rss_mb"]), flush=True)

    if not args.bin or not os.access(args.bin, os.X_OK):
        emit({"peer": "llm.c-cpu", "skipped": f"llm.c CPU binary not found at '{args.bin}' (set LLMC_CPU_BIN to the "
              "train_gpt2 that `make train_gpt2` builds in llm.c's repository)"})
        return 0
    if not 1 <= args.steps or args.warmup < 0 or 1 + args.warmup + args.steps > 20:
        emit({"peer": "llm.c-cpu", "error": "--steps and --warmup must fit in steps 1..19 (step 20 samples)"})
        return 2
    last_step = args.warmup + args.steps  # steps 0..last_step printed
    with tempfile.TemporaryDirectory(prefix="llmc-cpu-") as work:
        # In a process of its own: a child's peak RSS starts from its parent's at the fork, so this process stays
        # small for the peak that wait4 reports to be llm.c's own.
        model = os.path.join(work, "gpt2_124M.bin")
        written = subprocess.run([sys.executable, os.path.abspath(__file__), "--write-model", model],
                                 capture_output=True, text=True)
        if written.returncode != 0 or written.stdout.strip():
            emit({"peer": "llm.c-cpu", "skipped": written.stdout.strip() or written.stderr.strip()[-300:]})
            return 0
        data = os.path.join(work, "dev", "data", "tinyshakespeare")
        os.makedirs(data)
        write_shard(os.path.join(data, "tiny_shakespeare_train.bin"), (last_step + 2) * B * T + 1, seed=2)
        write_shard(os.path.join(data, "tiny_shakespeare_val.bin"), 6 * B * T + 1, seed=3)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        # A terminal for its stdout: llm.c prints without flushing, so through a pipe its lines would arrive in
        # blocks of 4 KiB, long after the steps they time.
        leader, follower = pty.openpty()
        proc = subprocess.Popen([os.path.abspath(args.bin)], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                stdout=follower, stderr=follower, start_new_session=True)
        os.close(follower)
        killer = threading.Timer(args.timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        killer.start()
        times, losses, log, pending = {}, {}, [], b""
        try:
            while last_step not in times:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # EIO: the process ended and closed its terminal
                    chunk = b""
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").rstrip()
                    log.append(line)
                    m = STEP_RE.match(line)
                    if m:
                        times[int(m.group(1))] = float(m.group(3))
                        losses[int(m.group(1))] = float(m.group(2))
        finally:
            killer.cancel()
            try:  # still running (or a zombie, which the signal does not harm): ended here
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            _, _, usage = os.wait4(proc.pid, 0)  # reaped here, not by poll(), for its peak memory
            proc.returncode = 0  # reaped here
            os.close(leader)
        if last_step not in times:
            emit({"peer": "llm.c-cpu", "error": "the run ended before step %d: %s" % (last_step, " | ".join(log[-5:]))})
            return 1
    timed = sorted(times[s] for s in range(1 + args.warmup, last_step + 1))
    ms = timed[len(timed) // 2]
    emit({"peer": "llm.c-cpu", "binary": args.bin, "model": "gpt2", "optimizer": "adamw", "threads": args.threads,
          "params": 124439808, "params_padded": 124475904, "batch": B, "seq": T, "steps": args.steps,
          "warmup": args.warmup, "ms_per_step": ms, "best_ms": timed[0], "tokens_per_s": B * T / (ms / 1000),
          "loss": losses[last_step], "peak_rss_mb": usage.ru_maxrss / 1024})
    return 0


if __name__ == "__main__":
    sys.exit(main())
