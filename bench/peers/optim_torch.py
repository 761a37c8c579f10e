#!/usr/bin/env python3
"""Peer timings for bench/bench_optim.cpp: one optimizer step of came-pytorch (CAME), torch.optim.AdamW and
transformers' Adafactor (scale_parameter=False, relative_step=False, warmup_init=False; with and without beta1)
on the same parameter sets and thread count, on the CPU. Prints one JSON object on stdout:
  {"threads": N, "torch": "...", "results": {"<optimizer>": {"<set>": {"s_per_step": ..., "params": ...}}}}
Usage: optim_torch.py --threads 2 --steps 5 --sets 4096x4096,768x3072,gpt2-124M [--optimizers came,adamw,...]
"""
import argparse
import json
import time

import torch


def gpt2_shapes():
    # GPT-2 small (124M): tied token embedding, learned positions, 12 blocks, Linear weights as (out, in).
    C, L, V, T = 768, 12, 50257, 1024
    shapes = [(V, C), (T, C)]
    for _ in range(L):
        shapes += [(C,), (C,), (3 * C, C), (3 * C,), (C, C), (C,), (C,), (C,), (4 * C, C), (4 * C,), (C, 4 * C), (C,)]
    shapes += [(C,), (C,)]
    return shapes


def shape_set(name):
    if name == "gpt2-124M":
        return gpt2_shapes()
    n, m = name.split("x")
    return [(int(n), int(m))]


def make_optimizer(kind, params):
    if kind == "came":
        from came_pytorch import CAME

        return CAME(params, lr=1e-4, weight_decay=0.0)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    if kind in ("adafactor", "adafactor_beta1"):
        from transformers.optimization import Adafactor

        beta1 = 0.9 if kind == "adafactor_beta1" else None
        return Adafactor(params, lr=1e-4, beta1=beta1, scale_parameter=False, relative_step=False, warmup_init=False)
    raise ValueError(kind)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sets", default="4096x4096,768x3072,gpt2-124M")
    ap.add_argument("--optimizers", default="came,adamw,adafactor,adafactor_beta1")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    for kind in args.optimizers.split(","):
        results[kind] = {}
        for set_name in args.sets.split(","):
            params = []
            for s in shape_set(set_name):
                p = torch.nn.Parameter(torch.randn(s) * 0.02)
                p.grad = torch.randn(s)
                params.append(p)
            opt = make_optimizer(kind, params)
            for _ in range(args.warmup):
                opt.step()
            dt = float("inf")
            for _ in range(args.steps):  # best of the timed steps, as bench_optim reports
                t0 = time.perf_counter()
                opt.step()
                dt = min(dt, time.perf_counter() - t0)
            results[kind][set_name] = {"s_per_step": dt, "params": sum(p.numel() for p in params)}
            del opt, params
    print(json.dumps({"threads": args.threads, "torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
