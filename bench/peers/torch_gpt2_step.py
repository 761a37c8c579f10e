#!/usr/bin/env python3
"""Peer benchmark: one GPT-2 training step (forward, backward, optimizer) in PyTorch eager on the CPU or a GPU.

Same model as tally's (Hugging Face GPT2LMHeadModel: tied embeddings, tanh GELU, eager attention, no dropout),
same batch, threads and optimizer (torch.optim.AdamW or came_pytorch.CAME). Prints one JSON object:
{"ms_per_step": (median), "best_ms": ..., "tokens_per_s": (at the median), "peak_rss_mb": ..., ...}.
Used by bench/ to report ratios; never part of the build or the tests.
"""
import argparse
import json
import resource
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--optimizer", choices=["adamw", "came", "adafactor", "none"], default="adamw")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "tf32", "bf16"], default="fp32")
    args = ap.parse_args()

    try:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        print(json.dumps({"skipped": f"torch/transformers not installed: {e}"}))
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if args.dtype == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=args.vocab, n_positions=args.block, n_embd=args.width, n_layer=args.layers,
                     n_head=args.heads, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg).to(dev)
    model.train()
    if args.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    elif args.optimizer == "came":
        try:
            from came_pytorch import CAME
        except ImportError as e:
            print(json.dumps({"skipped": f"came-pytorch not installed: {e}"}))
            return 0
        opt = CAME(model.parameters(), lr=1e-4)
    elif args.optimizer == "adafactor":
        from transformers.optimization import Adafactor
        opt = Adafactor(model.parameters(), lr=1e-4, scale_parameter=False, relative_step=False, warmup_init=False)
    else:
        opt = None
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(dev)
    y = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(dev)
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if args.dtype == "bf16" else None

    def step():
        if autocast:
            with autocast:
                logits = model(x).logits
        else:
            logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(args.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    times, cpu = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    times.sort()
    ms = 1000 * times[len(times) // 2]
    out = {
        "peer": "pytorch-eager", "torch": torch.__version__, "device": str(dev), "dtype": args.dtype,
        "threads": torch.get_num_threads(), "optimizer": args.optimizer,
        "params": sum(p.numel() for p in model.parameters()),
        "batch": args.batch, "seq": args.seq, "ms_per_step": ms, "best_ms": 1000 * times[0],
        "cpu_ms": 1000 * min(cpu),
        "tokens_per_s": args.batch * args.seq / (ms / 1000),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if dev.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
