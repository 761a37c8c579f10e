#!/usr/bin/env python3
"""Peer benchmark: GPT-2 training steps in PyTorch the fast way, on one GPU or on the CPU.

A compact GPT-2 (pre-norm blocks, fused QKV projection, tanh GELU, tied token embedding and LM head, no dropout)
with F.scaled_dot_product_attention (flash attention on the GPU), bf16 autocast over f32 parameters, the whole
forward and loss under torch.compile, torch.optim.AdamW(fused=True) or came_pytorch.CAME, gradient clipping at 1.0
(as tally's trainer and llm.c's CUDA trainer do; --grad-clip 0 for none, as bench_gpt2_step and llm.c's CPU trainer
time their steps). On the CPU (--device cpu --dtype fp32 --threads N) the compiled forward and backward are
Inductor's C++/OpenMP kernels: the fastest PyTorch a CPU user would pick; scripts/bench.sh runs it so. The vocabulary is padded to a multiple of 64 (50257 -> 50304) for the matrix units,
as nanoGPT and llm.c do; the padded rows never receive a target.

Several optimizers can share one process (--optimizer adamw,came): the model is compiled once and each optimizer
starts from the same initial weights. Random tokens, fixed seeds, the same batch every step.

Timing: each step is synchronized and timed alone; ms_per_step is the median over the timed steps (best_ms the
fastest), tokens_per_s is at the median, as in bench/peers/torch_gpt2_step.py. compile_s is the first step's wall
time (tracing and compiling included). cpu_ms is the least process CPU time (all threads) of a timed step.
peak_cuda_mb is torch.cuda.max_memory_allocated() from the optimizer's model up (reset before each optimizer);
peak_rss_mb is the process's peak resident memory, the compiler's included (on the CPU, the only memory figure).

MFU as llm.c computes it: flops per token = 6 N + 6 L C T, with N every parameter counted once (token embedding
tied with the LM head, position embedding, layer norms and biases included) at the unpadded vocabulary, so that
the same N serves every implementation (124,439,808 for gpt2 124M); against --peak-tflops (dense bf16; H100/H200
SXM: 989).

Prints one JSON object per optimizer with --json, else a readable line per optimizer.
Used by scripts/gpu_check.sh and scripts/bench.sh; never part of the build or the tests.
  torch_compile_gpt2.py --batch 8 --seq 1024 --optimizer adamw,came --steps 10 --warmup 3 --json
  torch_compile_gpt2.py --device cpu --dtype fp32 --threads 2 --grad-clip 0 --batch 4 --seq 64 --json
  torch_compile_gpt2.py --device cpu --layers 2 --width 64 --heads 2 --seq 64 --batch 2 --steps 3 --no-compile
"""
import argparse
import json
import math
import resource
import sys
import time


def build_model(torch, nn, F, V, block, L, H, C):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(self.ln_1(x)).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn_proj(a.transpose(1, 2).reshape(B, T, C))
            return x + self.mlp_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(block, C)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)
            self.head = nn.Linear(C, V, bias=False)
            self.head.weight = self.wte.weight
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif p.dim() >= 2:  # GPT-2's init: N(0, 0.02), residual projections scaled by 1/sqrt(2L)
                    std = 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, idx, targets):
            pos = torch.arange(idx.size(1), device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for b in self.blocks:
                x = b(x)
            logits = self.head(self.ln_f(x))
            return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))

    return GPT()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--pad-vocab", type=int, default=64, help="pad the vocabulary to a multiple of this (1: none)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--optimizer", default="adamw", help="adamw, came, or a comma list sharing one compile")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm at this (0: no clipping)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first one compiles)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="bf16: autocast over f32 parameters")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode (default, max-autotune, ...)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100/H200 SXM: 989)")
    ap.add_argument("--json", action="store_true", help="one JSON object per optimizer")
    args = ap.parse_args()

    def emit(obj):
        if args.json:
            print(json.dumps(obj), flush=True)
        elif "skipped" in obj or "error" in obj:
            print(f"torch_compile_gpt2: {obj.get('skipped') or obj.get('error')}", flush=True)
        else:
            print("%-7s B=%d T=%d %s compile=%s: %.2f ms/step (median), %.0f tok/s, MFU %.1f%%, peak %.0f MiB, "
                  "first step %.1f s, loss %.4f" % (obj["optimizer"], obj["batch"], obj["seq"], obj["dtype"],
                  obj["compile"], obj["ms_per_step"], obj["tokens_per_s"], 100 * obj["mfu"],
                  obj.get("peak_cuda_mb", obj["peak_rss_mb"]), obj["compile_s"], obj["loss"]), flush=True)

    peer = "pytorch-compile" if args.compile else "pytorch-sdpa"
    try:
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
    except ImportError as e:
        emit({"peer": peer, "skipped": f"torch not installed: {e}"})
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        emit({"peer": peer, "skipped": "no CUDA device"})
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True  # any f32 product left outside autocast
    torch.backends.cudnn.allow_tf32 = True

    V, C, L, H, T = args.vocab, args.width, args.layers, args.heads, args.seq
    Vp = -(-V // args.pad_vocab) * args.pad_vocab
    N = V * C + args.block * C + L * (12 * C * C + 13 * C) + 2 * C  # every parameter once, unpadded vocabulary
    flops_per_token = 6 * N + 6 * L * C * T
    torch.manual_seed(0)
    model = build_model(torch, nn, F, Vp, args.block, L, H, C).to(dev)
    initial = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}  # off the GPU's peak
    step_fn = torch.compile(model, mode=args.compile_mode, dynamic=False) if args.compile else model
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (args.batch, T), generator=g).to(dev)
    y = torch.randint(0, V, (args.batch, T), generator=g).to(dev)
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for name in args.optimizer.split(","):
        model.load_state_dict(initial)  # in place: the compiled graph stays valid
        params = list(model.parameters())
        if name == "adamw":
            try:
                opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, fused=True)
            except (RuntimeError, TypeError):  # no fused kernel for this device in this PyTorch
                opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        elif name == "came":
            try:
                from came_pytorch import CAME
            except ImportError as e:
                emit({"peer": peer, "optimizer": name, "batch": args.batch, "skipped": f"came-pytorch not installed: {e}"})
                continue
            opt = CAME(params, lr=args.lr, weight_decay=0.0)
        else:
            emit({"peer": peer, "optimizer": name, "error": f"unknown optimizer '{name}'"})
            return 2
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

        def step():
            with autocast:
                loss = step_fn(x, y)
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        try:
            t0 = time.perf_counter()
            loss = step()
            sync()
            compile_s = time.perf_counter() - t0
            for _ in range(args.warmup - 1):
                step()
            sync()
            times, cpu = [], []
            for _ in range(args.steps):
                t0, c0 = time.perf_counter(), time.process_time()
                loss = step()
                sync()
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        except torch.cuda.OutOfMemoryError as e:
            emit({"peer": peer, "optimizer": name, "batch": args.batch, "seq": T, "error": f"out of memory: {e}"[:300]})
            del opt
            continue
        times.sort()
        ms = 1000 * times[len(times) // 2]
        tokens_per_s = args.batch * T / (ms / 1000)
        out = {
            "peer": peer, "torch": torch.__version__, "device": str(dev), "dtype": args.dtype,
            "compile": args.compile, "compile_mode": args.compile_mode if args.compile else None,
            "optimizer": name, "fused": bool(getattr(opt, "defaults", {}).get("fused")),
            "params": N, "params_padded": sum(p.numel() for p in params), "layers": L, "width": C, "vocab": V,
            "vocab_padded": Vp, "batch": args.batch, "seq": T, "steps": args.steps, "warmup": args.warmup,
            "ms_per_step": ms, "best_ms": 1000 * times[0], "mean_ms": 1000 * sum(times) / len(times),
            "tokens_per_s": tokens_per_s, "flops_per_token": flops_per_token,
            "mfu": tokens_per_s * flops_per_token / (args.peak_tflops * 1e12), "peak_tflops": args.peak_tflops,
            "cpu_ms": 1000 * min(cpu), "threads": torch.get_num_threads(), "grad_clip": args.grad_clip,
            "compile_s": compile_s, "loss": float(loss.item()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if dev.type == "cuda":
            out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["gpu"] = torch.cuda.get_device_name()
        emit(out)
        del opt
        model.zero_grad(set_to_none=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
