#!/usr/bin/env python3
"""Golden data for tally's GPT-2 parity test (tests/models/parity.cpp), from Hugging Face transformers.

Writes, next to this script:
  gpt2_tiny/model.safetensors, gpt2_tiny/config.json   a small GPT-2 saved by save_pretrained (the real HF file
                                                        conventions: "transformer." prefix, Conv1D weights (in, out),
                                                        no lm_head.weight because the head is tied)
  gpt2_tiny_golden.safetensors                          idx, targets (B, T) int32; logits (B, T, V), loss () and
                                                        "grad.<hf name>" for every parameter (HF layout), all float64

The weights are float32 (as saved). The golden values are computed by the same HF model in float64 from exactly those
float32 weights, so they are the truth that tally's float32 model approaches (~1e-6 relative) and its float64 model
matches to rounding (~1e-12). The model: n_layer 2, n_head 4, n_embd 48, n_positions 64, vocab 500 (padded to 512 when
tally loads it with the default padding: covers the padded head), GELU tanh approximation ("gelu_new"), eager
attention, no dropout. HF's random init is perturbed (LayerNorm and biases made non-trivial) so every gradient is
exercised.

Loss convention: tally's (llm.c's) explicit targets. The batch is a random (B, T+1) token sequence; idx is [:, :-1],
targets is [:, 1:], and loss = mean over all B*T positions of cross_entropy(logits, targets). This equals HF's own
`model(seq, labels=seq).loss` on the (B, T+1) sequence (HF shifts internally; it computes that loss in float32, so
the script asserts agreement to 1e-6 relative).

Run: python3 tests/reference/make_gpt2_reference.py   (torch, transformers, safetensors; CPU only; deterministic)
"""
import json
import os
import shutil

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20240326
B, T = 4, 20


def main():
    torch.manual_seed(SEED)
    cfg = GPT2Config(vocab_size=500, n_positions=64, n_embd=48, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, activation_function="gelu_new", layer_norm_epsilon=1e-5, bos_token_id=499,
                     eos_token_id=499, tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.add_(0.05 * torch.randn_like(p))
            elif ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "head must be tied"

    out_dir = os.path.join(HERE, "gpt2_tiny")
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    for extra in os.listdir(out_dir):  # keep only the weights and config.json
        if extra not in ("model.safetensors", "config.json"):
            os.remove(os.path.join(out_dir, extra))

    seq = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(SEED + 1))
    idx, targets = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()

    ref = GPT2LMHeadModel.from_pretrained(out_dir, attn_implementation="eager").double().eval()
    assert ref.config.activation_function == "gelu_new" and ref.config._attn_implementation == "eager"
    logits = ref(idx).logits  # (B, T, V)
    loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1))
    hf_loss = ref(seq, labels=seq).loss
    # HF's loss casts logits to float32 before the cross-entropy, hence the float32-sized tolerance.
    assert abs(hf_loss.item() - loss.item()) < 1e-6 * loss.item(), (hf_loss.item(), loss.item())
    loss.backward()

    golden = {"idx": idx.to(torch.int32), "targets": targets.to(torch.int32), "logits": logits.detach().contiguous(),
              "loss": loss.detach().reshape(())}
    for name, p in ref.named_parameters():  # wte's gradient includes the tied head's share
        golden["grad." + name] = p.grad.detach().contiguous()
    meta = {"seed": str(SEED), "torch": torch.__version__, "config": json.dumps(cfg.to_diff_dict(), sort_keys=True),
            "loss_convention": "mean cross-entropy of logits[b, t] vs targets[b, t] = seq[b, t+1] over B*T"}
    save_file(golden, os.path.join(HERE, "gpt2_tiny_golden.safetensors"), metadata=meta)
    print(f"loss {loss.item():.10f}; {len(golden)} tensors; params {sum(p.numel() for p in ref.parameters())}")


if __name__ == "__main__":
    main()
