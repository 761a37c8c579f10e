#!/usr/bin/env python3
"""The planning table of docs/distributed.md: per-GPU memory and a step-time estimate for GPT-2 sizes on 8 and 64
GPUs, AdamW vs CAME, ZeRO 0 vs 1, from `tally memory --json` (exact bytes, predicted on the meta device) and the
communication tally hands to NCCL per step (bytes, and the number of collectives they go in), with the gradients
summed in f32 (the default) and in bf16 (--reduce-dtype bf16). Times are estimates from stated assumptions (below),
not measurements.
Usage: bench/cluster_plan.py path/to/tally > table.md"""
import json
import subprocess
import sys

TALLY = sys.argv[1] if len(sys.argv) > 1 else "build/tally"
B, T = 8, 1024                 # per GPU
PEAK = 989e12                  # H100 SXM dense bf16 FLOP/s
MFU = 0.40                     # assumed model FLOPs utilisation of the compute
BUSBW = {8: 360e9, 64: 40e9}   # assumed ring bus bandwidth per GPU: NVLink 4 in one node; 400 Gb/s InfiniBand
LATENCY = {8: 15e-6, 64: 40e-6}  # assumed time of a small collective: within a node; across 8 nodes


def plan(model, world, zero, reduce_dtype):
    out = subprocess.run([TALLY, "memory", "--model", model, "--world", str(world), "--zero", str(zero),
                          "--batch", str(B), "--seq", str(T), "--dtype", "bf16", "--optimizer", "adamw,came",
                          "--reduce-dtype", reduce_dtype, "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def wire_and_time(o, world, zero):
    # Ring collectives move (N-1)/N of the buffer per GPU, twice (reduce-scatter + all-gather, or the all-reduce's
    # two halves); each collective also costs a latency, which the many small ones of a sharded CAME or Adafactor step
    # (its sums over the ranks: a few vectors per tensor) pay in full. (Those small sums are all-reduces counted once
    # here at ZeRO 1: 9 MB a step for gpt2-xl, nothing beside its 6 GB of gradients.)
    wire = o["comm_bytes_per_step"] * (world - 1) / world * (1 if zero == 1 else 2)
    return wire, wire / BUSBW[world] + o["collectives_per_step"] * LATENCY[world]


print("| model | GPUs | ZeRO | optimizer | state / GPU | peak / GPU | collectives / step | comm / step "
      "| est. step (compute + comm) | bf16 sums: comm / step | est. step |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for model, (L, C) in {"gpt2": (12, 768), "gpt2-medium": (24, 1024), "gpt2-large": (36, 1280),
                      "gpt2-xl": (48, 1600)}.items():
    for world in (8, 64):
        for zero in (0, 1):
            d, h = plan(model, world, zero, "f32"), plan(model, world, zero, "bf16")
            n = d["parameters"]["count"]
            flops = (6 * n + 6 * L * C * T) * B * T  # per GPU and step (llm.c's count)
            compute = flops / (PEAK * MFU)
            for opt in ("adamw", "came"):
                o = d["optimizers"][opt]
                wire, comm = wire_and_time(o, world, zero)
                wire16, comm16 = wire_and_time(h["optimizers"][opt], world, zero)
                print(f"| {model} | {world} | {zero} | {opt} | {o['state_bytes'] / 2**30:.2f} GiB | "
                      f"{o['total'] / 2**30:.1f} GiB | {o['collectives_per_step']} | {wire / 1e9:.2f} GB | "
                      f"{(compute + comm) * 1e3:.0f} ms ({compute * 1e3:.0f} + {comm * 1e3:.0f}) | "
                      f"{wire16 / 1e9:.2f} GB | {(compute + comm16) * 1e3:.0f} ms ({compute * 1e3:.0f} + "
                      f"{comm16 * 1e3:.0f}) |")
