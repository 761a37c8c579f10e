#!/usr/bin/env python3
"""Golden data for tally's GPT-2 training test (tests/models/training_golden.cpp): 10 training steps of the tiny
Hugging Face GPT-2 (the committed tests/reference/gpt2_tiny/, made by make_gpt2_reference.py; not regenerated here)
with each reference optimizer, on a fixed sequence of 10 batches.

Writes gpt2_training_golden.safetensors, next to this script:
  batches                        (STEPS, B, T+1) int32: batch k is seq = batches[k]; idx = seq[:, :-1], targets =
                                 seq[:, 1:], loss = mean cross-entropy over all B*T positions (llm.c's convention,
                                 as make_gpt2_reference.py)
  <opt>/loss                     (STEPS,) f64: the loss of batch k with the parameters after k updates (before the
                                 update that batch's gradient drives)
  <opt>/grad_norm                (STEPS,) f64: the global gradient norm before clipping
  <opt>/final_loss               () f64: the loss of batch 0 after the last update
  <opt>/delta_norm               (P,) f64: ||p_final - p_initial||_2 of every parameter, in the order of metadata
                                 "params" (HF names, wte once)
  <opt>/param/<hf name>          the final values of a few tensors (FINAL_TENSORS), HF layout (Conv1D (in, out)), f32
Optimizers (metadata "optimizers" holds each one's hyperparameters as JSON, "tally_settings" the tally settings of
the same step, tests/reference/tally_settings.py):
  came       came_pytorch.CAME 0.1.3, package defaults but lr, weight decay WD on tensors of 2+ dims only
  adamw      torch.optim.AdamW, default betas/eps, weight decay WD on tensors of 2+ dims only
  adafactor  transformers' Adafactor(scale_parameter=False, relative_step=False, warmup_init=False, beta1=0.9) (the
             CAME paper's baseline), no weight decay
  sgd        torch.optim.SGD(momentum=0.9), no weight decay
  sm3        pytorch_optimizer 4.1.0's SM3(momentum=0.9), no weight decay (the reference has none)
  lamb       pytorch_optimizer 4.1.0's Lamb, default betas/eps/clamp, weight decay WD on tensors of 2+ dims only
Two param groups where weight decay is used: [decay (dim >= 2), no decay], in named_parameters() order within each,
exactly tally's optim::decay_groups(params, config, DecayRule::matrices). The learning rate is constant. Every step
clips the global gradient norm to CLIP (0.65) with torch.nn.utils.clip_grad_norm_ (the norm over the deduplicated parameter
list: the tied wte/lm_head weight counted once with both shares of its gradient) before the optimizer step.
The key third of every c_attn.bias gradient is set to zero after each backward (see zero_key_bias_grad: its exact
value; what backprop leaves there is rounding noise that the normalised optimizers would amplify).

Tied head: HF's lm_head.weight is the same Parameter as transformer.wte.weight; model.named_parameters() deduplicates
it, so every optimizer sees (and updates, and clips) it exactly once, with the embedding's and the head's gradient
summed, as tally's GPT2 (one wte tensor used twice).

Precision: the model, its gradients and the optimizers run in float64 from the float32 weights, so the golden
trajectory is the exact-arithmetic one that tally's float32 run approaches. For scale, the script also runs the same
10 steps with PyTorch in float32 and stores in metadata "torch_f32_spread" how far PyTorch's own float32 run lands from
the float64 one (max relative loss difference, max relative delta_norm difference, max |difference| of the final
tensors over each tensor's max |value|): about as far as any careful float32 run can be expected to land, and the
scale the test's tolerances are set against.

Run: python3 tests/reference/make_gpt2_training_reference.py   (torch, transformers, came-pytorch==0.1.3,
pytorch_optimizer==4.1.0, safetensors, numpy; CPU only; deterministic)
"""
import json
import os
from importlib.metadata import version

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from came_pytorch import CAME
from pytorch_optimizer import SM3, Lamb
from safetensors.torch import save_file
from transformers import GPT2LMHeadModel
from transformers.optimization import Adafactor

from tally_settings import tally_settings

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.join(HERE, "gpt2_tiny")
OUT = os.path.join(HERE, "gpt2_training_golden.safetensors")
SEED = 20240611
STEPS, B, T = 10, 4, 32
CLIP = 0.65  # inside the range of the gradient norms seen (about 0.59..0.71): it fires on some steps, not others
WD = 0.1
OPTIMIZERS = {
    # The package starts its confidence factors at zero, which multiplies the first steps of every matrix by
    # about 1/sqrt(k (1 - beta3)) (x100 at step 1): a tenth of AdamW's lr gives steps of a comparable size.
    "came": dict(lr=2e-4, weight_decay=WD),
    "adamw": dict(lr=2e-3, weight_decay=WD),
    "adafactor": dict(lr=2e-3, beta1=0.9),
    "sgd": dict(lr=0.1, momentum=0.9),
    # SM3's first step is sign(g) per element (v = g^2 while the accumulators are zero); its momentum (an EMA of the
    # update) makes that a tenth of lr.
    "sm3": dict(lr=1e-2, momentum=0.9),
    # Lamb divides its step size by 1 - beta1^t: step 1 moves each tensor by about 10 lr of its norm.
    "lamb": dict(lr=1e-3, weight_decay=WD),
}
FINAL_TENSORS = ["transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_proj.bias", "transformer.ln_f.weight",
                 "transformer.wpe.weight"]


def make_batches():
    """STEPS batches of (B, T+1) tokens from a fixed random Markov chain (each token has a few likely successors),
    so there is something to learn and the loss falls visibly within 10 steps."""
    rng = np.random.default_rng(SEED)
    V = 500
    successors = rng.integers(0, V, size=(V, 4))
    out = np.empty((STEPS, B, T + 1), dtype=np.int64)
    for k in range(STEPS):
        for b in range(B):
            tok = rng.integers(0, V)
            for t in range(T + 1):
                out[k, b, t] = tok
                tok = successors[tok, rng.integers(0, 4)] if rng.random() < 0.9 else rng.integers(0, V)
    return torch.from_numpy(out)


def load_model(dtype):
    model = GPT2LMHeadModel.from_pretrained(MODEL_DIR, attn_implementation="eager").to(dtype).train()
    assert model.config.activation_function == "gelu_new" and model.config._attn_implementation == "eager"
    assert model.lm_head.weight is model.transformer.wte.weight, "head must be tied"
    return model


def make_optimizer(kind, named, hyper):
    decay = [p for _, p in named if p.dim() >= 2]
    no_decay = [p for _, p in named if p.dim() < 2]
    if kind == "came":
        wd = hyper["weight_decay"]
        h = {k: v for k, v in hyper.items() if k != "weight_decay"}
        return CAME([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], **h)
    if kind == "adamw":
        wd = hyper["weight_decay"]
        h = {k: v for k, v in hyper.items() if k != "weight_decay"}
        return torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                                 **h)
    if kind == "lamb":
        wd = hyper["weight_decay"]
        h = {k: v for k, v in hyper.items() if k != "weight_decay"}
        return Lamb([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], **h)
    params = [p for _, p in named]
    if kind == "adafactor":
        return Adafactor(params, scale_parameter=False, relative_step=False, warmup_init=False, **hyper)
    if kind == "sgd":
        return torch.optim.SGD(params, **hyper)
    if kind == "sm3":
        return SM3(params, **hyper)
    raise ValueError(kind)


def batch_loss(model, seq):
    idx, targets = seq[:, :-1], seq[:, 1:]
    logits = model(idx).logits  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def zero_key_bias_grad(model):
    """The key third of each c_attn.bias has zero gradient in exact arithmetic: adding q.b_k to every score of a
    softmax row changes nothing. Backprop leaves rounding noise there (~1e-12 in float32, ~1e-20 in float64), which
    updates normalised by sqrt(v) (CAME, Adafactor, AdamW while |g| >> eps) turn into steps of full size in random
    directions; through the tensor-wide RMS clip of CAME and Adafactor that noise then rescales the query and value
    biases too. Setting that slice to its exact value (zero) makes the trajectory a function of the mathematics, not
    of the rounding; tests/models/training_golden.cpp does the same."""
    C = model.config.n_embd
    for block in model.transformer.h:
        block.attn.c_attn.bias.grad[C:2 * C].zero_()


def train(kind, dtype, batches):
    model = load_model(dtype)
    named = list(model.named_parameters())  # deduplicated: wte once (the tied lm_head is the same Parameter)
    assert not any(n.startswith("lm_head") for n, _ in named)
    init = {n: p.detach().clone() for n, p in named}
    params = [p for _, p in named]
    opt = make_optimizer(kind, named, OPTIMIZERS[kind])
    losses, norms = [], []
    for k in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = batch_loss(model, batches[k])
        loss.backward()
        zero_key_bias_grad(model)
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, CLIP)))
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final_loss = batch_loss(model, batches[0]).item()
    delta = [float((p.detach().double() - init[n].double()).norm()) for n, p in named]
    final = {n: p.detach().float().contiguous() for n, p in named if n in FINAL_TENSORS}
    return [n for n, _ in named], losses, norms, final_loss, delta, final


def main():
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    assert version("came-pytorch") == "0.1.3", version("came-pytorch")
    assert version("pytorch_optimizer") == "4.1.0", version("pytorch_optimizer")
    batches = make_batches()
    out = {"batches": batches.to(torch.int32).contiguous()}
    spread = {}
    names = None
    for kind in OPTIMIZERS:
        names, losses, norms, final_loss, delta, final = train(kind, torch.float64, batches)
        _, losses32, _, _, delta32, final32 = train(kind, torch.float32, batches)
        out[f"{kind}/loss"] = torch.tensor(losses, dtype=torch.float64)
        out[f"{kind}/grad_norm"] = torch.tensor(norms, dtype=torch.float64)
        out[f"{kind}/final_loss"] = torch.tensor(final_loss, dtype=torch.float64)
        out[f"{kind}/delta_norm"] = torch.tensor(delta, dtype=torch.float64)
        for n, t in final.items():
            out[f"{kind}/param/{n}"] = t
        spread[kind] = {
            "loss_rel": max(abs(a - b) / b for a, b in zip(losses32, losses)),
            "delta_norm_rel": max(abs(a - b) / b for a, b in zip(delta32, delta)),
            "final_values_of_max": max(float((final32[n].double() - t.double()).abs().max() / t.abs().max())
                                       for n, t in final.items()),
        }
        print(f"{kind:10s} loss {losses[0]:.6f} -> {losses[-1]:.6f} (final {final_loss:.6f}); grad norms "
              f"{min(norms):.3f}..{max(norms):.3f}; torch f32 vs f64: loss {spread[kind]['loss_rel']:.2e}, "
              f"delta_norm {spread[kind]['delta_norm_rel']:.2e}, "
              f"final values {spread[kind]['final_values_of_max']:.2e}")
    meta = {
        "generator": "tests/reference/make_gpt2_training_reference.py",
        "seed": str(SEED),
        "steps": str(STEPS),
        "clip_grad_norm": str(CLIP),
        "optimizers": json.dumps(OPTIMIZERS, sort_keys=True),
        "tally_settings": json.dumps({k: tally_settings(k, h) for k, h in OPTIMIZERS.items()}, sort_keys=True),
        "params": json.dumps(names),
        "torch_f32_spread": json.dumps(spread, sort_keys=True),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "came_pytorch": version("came-pytorch"),
        "pytorch_optimizer": version("pytorch_optimizer"),
        "loss_convention": "mean cross-entropy of logits[b, t] vs targets[b, t] = seq[b, t+1] over B*T",
    }
    save_file(out, OUT, metadata=meta)
    print(f"wrote {OUT}: {len(out)} tensors, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
